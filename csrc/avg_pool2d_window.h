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
#include "pool_divisors.h"

#include <c10/macros/Macros.h>

namespace custom_conv {

// Adaptive window o of `out` positions over `in` (the rule above; its end
// rounded up, as rounding down would drop the last, partial element of a
// window wherever out does not divide in), `out` a divisor object
// (pool_divisors.h), in its index type.
template <typename D>
C10_HOST_DEVICE inline WindowSpan adaptive_span(typename D::index_t o, typename D::index_t in, const D& out) {
  using I = typename D::index_t;
  return {out.div(o * in), out.div(static_cast<I>((o + 1) * in + out.divisor - 1))};
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

// Window o's extent along one dimension (its rows where along_h, else its
// columns): the input positions it spans, and how many of them its divisor
// counts (with count_include_pad, the padding it covers too). A window's
// divisor is its rows' count times its columns' (or divisor_override), so
// the backward, which needs only divisors, works out a row's count once for
// all the windows of the row.
struct WindowExtent {
  WindowSpan span;
  int64_t counted;
};

template <typename D>
C10_HOST_DEVICE inline WindowExtent avg_extent(const AvgPool2dGeometry& a, const PoolDivisors<D>& d,
                                               typename D::index_t o, bool along_h) {
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  if (a.adaptive) {
    const WindowSpan span = along_h ? adaptive_span(o, static_cast<I>(g.in_h), d.out_h)
                                    : adaptive_span(o, static_cast<I>(g.in_w), d.out_w);
    return {span, span.end - span.first};
  }
  const int64_t stride = along_h ? g.stride_h : g.stride_w, pad = along_h ? g.pad_h : g.pad_w;
  const int64_t kernel = along_h ? g.kernel_h : g.kernel_w, size = along_h ? g.in_h : g.in_w;
  const WindowSpan span = window_span(o, stride, pad, kernel, 1, size);
  return {span, a.count_include_pad ? padded_extent(o, stride, pad, kernel, size) : span.end - span.first};
}

// Window (oh, ow), its sizes divided by `d`'s divisors (pool_divisors.h).
template <typename D>
C10_HOST_DEVICE inline AvgWindow avg_window(const AvgPool2dGeometry& a, const PoolDivisors<D>& d,
                                            typename D::index_t oh, typename D::index_t ow) {
  const WindowExtent rows = avg_extent(a, d, oh, true), cols = avg_extent(a, d, ow, false);
  return {rows.span, cols.span, a.divisor_override != 0 ? a.divisor_override : rows.counted * cols.counted};
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
// exactly when floor(pos * out / in) <= o < ceil((pos + 1) * out / in): the
// adaptive span of `in` positions over `out`.
template <typename D>
C10_HOST_DEVICE inline CandidateRange avg_covering_windows(const AvgPool2dGeometry& a, const PoolDivisors<D>& d,
                                                          typename D::index_t pos, bool along_h) {
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  if (a.adaptive) {
    const WindowSpan span = along_h ? adaptive_span(pos, static_cast<I>(g.out_h), d.in_h)
                                    : adaptive_span(pos, static_cast<I>(g.out_w), d.in_w);
    return {span.first, span.end - 1};
  }
  return along_h ? covering_windows(pos, d.stride_h, g.pad_h, g.kernel_h, 1, g.out_h)
                 : covering_windows(pos, d.stride_w, g.pad_w, g.kernel_w, 1, g.out_w);
}

// The gradient of one input element: a gather of each covering window's
// output gradient (windows [rows] x [cols]) divided by its divisor
// (divisors.row(oh)[ow]), in row-major order of the windows, so
// deterministic and without atomics on the GPU.
template <typename acc_t, typename Plane, typename Divisors>
C10_HOST_DEVICE inline acc_t gather_gradient(const Plane& grad_plane, int64_t out_w, const CandidateRange& rows,
                                             const CandidateRange& cols, const Divisors& divisors) {
  acc_t sum = acc_t(0);
  for (int64_t oh = rows.first; oh <= rows.last; ++oh) {
    const auto row = divisors.row(oh);
    for (int64_t ow = cols.first; ow <= cols.last; ++ow) {
      sum += static_cast<acc_t>(grad_plane[oh * out_w + ow]) / static_cast<acc_t>(row[ow]);
    }
  }
  return sum;
}

// The windows' divisors worked out as the gather needs them: a row's count
// once for the row's windows, each column's as it comes.
template <typename D>
struct WindowDivisors {
  const AvgPool2dGeometry* a;
  const PoolDivisors<D>* d;

  struct Row {
    const WindowDivisors* of;
    int64_t counted_rows;  // (unused under divisor_override)
    C10_HOST_DEVICE int64_t operator[](int64_t ow) const {
      using I = typename D::index_t;
      return of->a->divisor_override != 0
                 ? of->a->divisor_override
                 : counted_rows * avg_extent(*of->a, *of->d, static_cast<I>(ow), false).counted;
    }
  };
  C10_HOST_DEVICE Row row(int64_t oh) const {
    using I = typename D::index_t;
    return {this, a->divisor_override != 0 ? 0 : avg_extent(*a, *d, static_cast<I>(oh), true).counted};
  }
};

// The gradient of input element (ih, iw) of one plane, every window worked
// out where it is needed (the GPU's thread per element). The CPU kernel
// computes the covering ranges and divisors once per call instead and calls
// gather_gradient itself: the same terms in the same order.
template <typename acc_t, typename Plane, typename D>
C10_HOST_DEVICE inline acc_t input_gradient(const Plane& grad_plane, const AvgPool2dGeometry& a,
                                            const PoolDivisors<D>& d, typename D::index_t ih,
                                            typename D::index_t iw) {
  return gather_gradient<acc_t>(grad_plane, a.pool.out_w, avg_covering_windows(a, d, ih, true),
                                avg_covering_windows(a, d, iw, false), WindowDivisors<D>{&a, &d});
}

}  // namespace custom_conv
