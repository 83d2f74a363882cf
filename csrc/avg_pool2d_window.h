// The average-pooling window, written once for the CPU and the GPU kernels of
// avg_pool2d and adaptive_avg_pool2d: which rows and columns an output's
// window averages, what it divides by, and which outputs' windows hold a
// given input element. Both backends call window_mean and input_gradient, so
// they add the same terms in the same order and agree bitwise.
//
// Adaptive pooling runs on the same kernels with per-output windows (our
// choice, over separate kernels: the walk, the gather and the layouts are
// the same, only the spans differ): window o of `out` over `in` positions
// spans [floor(o * in / out), ceil((o + 1) * in / out)), torch's rule, and
// divides by its area.
#pragma once

#include "geometry.h"
#include "max_pool2d_window.h"

#include <c10/macros/Macros.h>

namespace custom_conv {

C10_HOST_DEVICE inline int64_t adaptive_start(int64_t o, int64_t in, int64_t out) {
  return o * in / out;
}

// ceil((o + 1) * in / out): floor would drop the last, partial element of a
// window whenever out does not divide in.
C10_HOST_DEVICE inline int64_t adaptive_end(int64_t o, int64_t in, int64_t out) {
  return ((o + 1) * in + out - 1) / out;
}

// The length of a fixed window counted as count_include_pad counts it: the
// padding it covers included, but clipped at the end of the far padding (so
// ceil_mode's last window, which may hang past it, counts only what it
// covers of input and padding).
C10_HOST_DEVICE inline int64_t padded_extent(int64_t out_pos, int64_t stride, int64_t pad, int64_t kernel,
                                             int64_t size) {
  const int64_t start = out_pos * stride - pad;
  const int64_t end = start + kernel < size + pad ? start + kernel : size + pad;
  return end - start;
}

struct AvgWindow {
  WindowSpan rows, cols;
  int64_t divisor;
};

C10_HOST_DEVICE inline AvgWindow avg_window(const AvgPool2dGeometry& a, int64_t oh, int64_t ow) {
  const Pool2dGeometry& g = a.pool;
  if (a.adaptive) {
    const WindowSpan rows{adaptive_start(oh, g.in_h, g.out_h), adaptive_end(oh, g.in_h, g.out_h)};
    const WindowSpan cols{adaptive_start(ow, g.in_w, g.out_w), adaptive_end(ow, g.in_w, g.out_w)};
    return {rows, cols, (rows.end - rows.first) * (cols.end - cols.first)};
  }
  const WindowSpan rows = window_span(oh, g.stride_h, g.pad_h, g.kernel_h, 1, g.in_h);
  const WindowSpan cols = window_span(ow, g.stride_w, g.pad_w, g.kernel_w, 1, g.in_w);
  int64_t divisor = a.divisor_override;
  if (divisor == 0) {
    divisor = a.count_include_pad ? padded_extent(oh, g.stride_h, g.pad_h, g.kernel_h, g.in_h) *
                                        padded_extent(ow, g.stride_w, g.pad_w, g.kernel_w, g.in_w)
                                  : (rows.end - rows.first) * (cols.end - cols.first);
  }
  return {rows, cols, divisor};
}

// The mean of one window of a plane (`plane` a const scalar_t*, or on the
// GPU a gpu_ptr<const scalar_t>), summed in row-major order in acc_t. A
// window without input (which torch's bounds on padding and ceil_mode's last
// window rule out) is 0, as in torch.
template <typename acc_t, typename Plane>
C10_HOST_DEVICE inline acc_t window_mean(const Plane& plane, int64_t in_w, const AvgWindow& w) {
  if (w.rows.empty() || w.cols.empty()) {
    return acc_t(0);
  }
  acc_t sum = acc_t(0);
  for (int64_t ih = w.rows.first; ih < w.rows.end; ++ih) {
    for (int64_t iw = w.cols.first; iw < w.cols.end; ++iw) {
      sum += static_cast<acc_t>(plane[ih * in_w + iw]);
    }
  }
  return sum / static_cast<acc_t>(w.divisor);
}

// The outputs along one dimension whose windows hold input position `pos`:
// [first, last], empty when first > last. For adaptive windows, o holds pos
// exactly when floor(pos * out / in) <= o < ceil((pos + 1) * out / in).
C10_HOST_DEVICE inline CandidateRange avg_covering_windows(const AvgPool2dGeometry& a, int64_t pos, bool along_h) {
  const Pool2dGeometry& g = a.pool;
  const int64_t in = along_h ? g.in_h : g.in_w, out = along_h ? g.out_h : g.out_w;
  if (a.adaptive) {
    return {adaptive_start(pos, out, in), adaptive_end(pos, out, in) - 1};
  }
  return along_h ? covering_windows(pos, g.stride_h, g.pad_h, g.kernel_h, 1, out)
                 : covering_windows(pos, g.stride_w, g.pad_w, g.kernel_w, 1, out);
}

// The gradient of one input element: a gather of each covering window's
// output gradient (windows [rows] x [cols]) divided by its divisor
// (divisor_of(oh, ow)), in row-major order of the windows, so deterministic
// and without atomics on the GPU.
template <typename acc_t, typename Plane, typename DivisorOf>
C10_HOST_DEVICE inline acc_t gather_gradient(const Plane& grad_plane, int64_t out_w, const CandidateRange& rows,
                                             const CandidateRange& cols, const DivisorOf& divisor_of) {
  acc_t sum = acc_t(0);
  for (int64_t oh = rows.first; oh <= rows.last; ++oh) {
    for (int64_t ow = cols.first; ow <= cols.last; ++ow) {
      sum += static_cast<acc_t>(grad_plane[oh * out_w + ow]) / static_cast<acc_t>(divisor_of(oh, ow));
    }
  }
  return sum;
}

struct WindowDivisor {
  const AvgPool2dGeometry* a;
  C10_HOST_DEVICE int64_t operator()(int64_t oh, int64_t ow) const { return avg_window(*a, oh, ow).divisor; }
};

// The gradient of input element (ih, iw) of one plane, every window worked
// out where it is needed (the GPU's thread per element). The CPU kernel
// computes the covering ranges and divisors once per call instead and calls
// gather_gradient itself: the same terms in the same order.
template <typename acc_t, typename Plane>
C10_HOST_DEVICE inline acc_t input_gradient(const Plane& grad_plane, const AvgPool2dGeometry& a, int64_t ih,
                                            int64_t iw) {
  return gather_gradient<acc_t>(grad_plane, a.pool.out_w, avg_covering_windows(a, ih, true),
                                avg_covering_windows(a, iw, false), WindowDivisor{&a});
}

}  // namespace custom_conv
