// The max-pooling window, written once for the CPU and the GPU kernels: where
// a window lies in its input plane, whether it holds any input at all, and
// which element is its maximum. Both backends call window_max, so they agree
// on values, indices, ties and NaN; both backward kernels ask
// window_holds_input which windows route a gradient, and so, through the
// forward, does the double backward (custom_conv/autograd.py).
#pragma once

#include "geometry.h"
#include "pool_divisors.h"

#include <ATen/NumericUtils.h>
#include <c10/macros/Macros.h>

#include <limits>

namespace custom_conv {

// First input row (or column) of a window that is not padding, and the end of
// the window clipped to the input. Rows before `first` are padding; stepping
// by the dilation keeps `first` on the window's grid.
struct WindowSpan {
  int64_t first, end;

  // A span of padding only (possible with dilation, or with ceil_mode's last
  // window): its window holds no input element.
  C10_HOST_DEVICE bool empty() const { return first >= end; }
};

C10_HOST_DEVICE inline WindowSpan window_span(int64_t out_pos, int64_t stride, int64_t pad,
                                              int64_t kernel, int64_t dilation, int64_t size) {
  const int64_t start = out_pos * stride - pad;
  const int64_t reach = start + (kernel - 1) * dilation + 1;
  int64_t first = start;
  if (first < 0) {
    first += (-first + dilation - 1) / dilation * dilation;
  }
  return {first, reach < size ? reach : size};
}

// Whether window (oh, ow) holds an input element. A window of padding only
// (possible with dilation) holds none: its
// maximum is -inf, it depends on no input, and its gradient goes nowhere,
// whatever its index says (see window_max).
C10_HOST_DEVICE inline bool window_holds_input(const Pool2dGeometry& g, int64_t oh, int64_t ow) {
  return !window_span(oh, g.stride_h, g.pad_h, g.kernel_h, g.dilation_h, g.in_h).empty() &&
         !window_span(ow, g.stride_w, g.pad_w, g.kernel_w, g.dilation_w, g.in_w).empty();
}

// The output positions along one dimension whose window covers input
// position `pos`: window o spans [o * stride - pad, o * stride - pad +
// (kernel - 1) * dilation]. An empty range has first > last. The GPU
// backward gathers from them, and so does average pooling's backward on both
// backends (avg_pool2d_window.h). `stride` is a divisor object
// (pool_divisors.h), and the arithmetic is done in its index type.
struct CandidateRange {
  int64_t first, last;
};

template <typename D>
C10_HOST_DEVICE inline CandidateRange covering_windows(typename D::index_t pos, const D& stride, int64_t pad,
                                                      int64_t kernel, int64_t dilation, int64_t out_size) {
  using I = typename D::index_t;
  const I lowest_start = static_cast<I>(pos + pad - (kernel - 1) * dilation);
  const I first = lowest_start <= 0 ? I(0) : stride.div(static_cast<I>(lowest_start + stride.divisor - 1));
  const I last_start = stride.div(static_cast<I>(pos + pad));  // pos + pad >= 0
  return {first, last_start < out_size - 1 ? last_start : out_size - 1};
}

template <typename acc_t>
struct WindowMax {
  acc_t value;
  int64_t index;  // h * W + w within the plane, as torch reports it
};

// The maximum of window (oh, ow) of one input plane. Ties keep the first
// maximum in row-major order (strict >). A NaN always wins, and so does every
// later NaN, so the result is NaN with the index of the window's last NaN, as
// in torch. A window holding only -inf points at its first element inside
// the input.
//
// A window of padding only (rows.empty() or cols.empty()) has the value
// -inf and depends on no input. Its index is torch's, first row * W + first
// column, computed as if the window had an element there: it names no element
// of the window (it lies past the plane, or, when only the columns are
// padding, in the next row). The backward kernels therefore decide from the
// window (window_holds_input), not from the index, that its gradient goes
// nowhere.
// `plane` is a pointer to the plane's first element (a const scalar_t*, or
// on the GPU a gpu_ptr<const scalar_t>).
template <typename acc_t, typename Plane>
C10_HOST_DEVICE inline WindowMax<acc_t> window_max(const Plane& plane, const Pool2dGeometry& g,
                                                   const WindowSpan& rows, const WindowSpan& cols) {
  WindowMax<acc_t> best{-std::numeric_limits<acc_t>::infinity(), rows.first * g.in_w + cols.first};
  for (int64_t ih = rows.first; ih < rows.end; ih += g.dilation_h) {
    for (int64_t iw = cols.first; iw < cols.end; iw += g.dilation_w) {
      const acc_t v = static_cast<acc_t>(plane[ih * g.in_w + iw]);
      if (v > best.value || at::_isnan(v)) {
        best = {v, ih * g.in_w + iw};
      }
    }
  }
  return best;
}

template <typename acc_t, typename Plane>
C10_HOST_DEVICE inline WindowMax<acc_t> window_max(const Plane& plane, const Pool2dGeometry& g,
                                                   int64_t oh, int64_t ow) {
  return window_max<acc_t>(plane, g, window_span(oh, g.stride_h, g.pad_h, g.kernel_h, g.dilation_h, g.in_h),
                           window_span(ow, g.stride_w, g.pad_w, g.kernel_w, g.dilation_w, g.in_w));
}

}  // namespace custom_conv
