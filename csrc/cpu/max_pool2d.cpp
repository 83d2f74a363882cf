// max_pool2d on the CPU: forward with indices, and backward, side by side.
//
// The forward remembers, for every output, where in its (H, W) input plane
// the maximum came from (flat index h * W + w, as torch reports it). That
// index tensor is a matrix G in compressed form, the pooling's Jacobian: G
// has a single 1 per output, at that position. The backward multiplies by G^T,
// i.e. routes each output gradient to that one input element.
#include "../geometry.h"
#include "../max_pool2d_window.h"
#include "../memory_format.h"
#include "max_pool_gradient.h"
#include "parallel.h"
#include "per_level.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace custom_conv {
namespace {

// The forward of one plane. An output row's interior windows (their columns
// all inside the input; edge and ceil_mode windows go through window_max) are
// found tap by tap in the window's row-major order, each tap one pass over
// the row that the compiler vectorises: a strided load, a compare and two
// blends per output. The rule is window_max's (strict >, so ties keep the
// first maximum; a NaN always wins), so both give the same values and
// indices. The stride is a constant where the compiler can then load a row
// of windows with plain vector loads (1, 2), else read at run time.
// `where` is a scratch row of out_w in-plane indices.
template <int64_t kStride, typename T>
CUSTOM_CONV_INLINE void max_pool_plane(const T* plane, const Pool2dGeometry& g, const WindowSpan* rows,
                                       const WindowSpan* cols, int64_t lo, int64_t hi, T* out,
                                       int64_t* idx, int32_t* where) {
  const int64_t stride = kStride > 0 ? kStride : g.stride_w;
  const int32_t in_w = static_cast<int32_t>(g.in_w);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    T* best = out + oh * g.out_w;
    int64_t* row_idx = idx + oh * g.out_w;
    const WindowSpan r = rows[oh];
    for (int64_t ow = 0; ow < lo; ++ow) {
      const WindowMax<T> m = window_max<T>(plane, g, r, cols[ow]);
      best[ow] = m.value;
      row_idx[ow] = m.index;
    }
    for (int64_t ow = lo; ow < hi; ++ow) {
      best[ow] = -std::numeric_limits<T>::infinity();
      where[ow] = static_cast<int32_t>(r.first * in_w + cols[ow].first);
    }
    for (int64_t ih = r.first; ih < r.end; ih += g.dilation_h) {
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int32_t at = static_cast<int32_t>(ih * in_w + kw * g.dilation_w - g.pad_w);
        const T* src = plane + at;
        for (int64_t ow = lo; ow < hi; ++ow) {
          const T v = src[ow * stride];
          const bool take = v > best[ow] || v != v;
          best[ow] = take ? v : best[ow];
          where[ow] = take ? at + static_cast<int32_t>(ow * stride) : where[ow];
        }
      }
    }
    for (int64_t ow = lo; ow < hi; ++ow) {
      row_idx[ow] = where[ow];
    }
    for (int64_t ow = hi; ow < g.out_w; ++ow) {
      const WindowMax<T> m = window_max<T>(plane, g, r, cols[ow]);
      best[ow] = m.value;
      row_idx[ow] = m.index;
    }
  }
}

// Windows that tile the plane (kernel == stride, no padding or dilation,
// every window inside: LeNet's and VGG's 2x2/2 pools), whose output rows of
// 5 to 16 are too short for max_pool_plane's row-wise vector loops: their
// scalar remainders branch on every compare (LeNet's 10x10 planes took
// 5 ns an input element). Here the plane is first split by tap: tap (i, j)
// of every window side by side in output order (one pass of copies); then
// each tap is one compare pass over the whole output plane, consecutive
// loads, in the windows' row-major tap order, window_max's rule again (the
// first tap stands for its -inf start: it replaces -inf unless it is -inf
// itself, at the same index). `corner` holds each window's first in-plane
// index (the same for every plane); `where` and `taps` are scratch of
// out_h * out_w and kernel_h * kernel_w times as many values. The kernel's
// width is a constant where the split is then plain code (2), else read at
// run time.
template <int64_t kWidth, typename T>
CUSTOM_CONV_INLINE void max_pool_tiles(const T* __restrict plane, const Pool2dGeometry& g,
                                       const int32_t* __restrict corner, T* __restrict out,
                                       int64_t* __restrict idx, int32_t* __restrict where, T* __restrict taps) {
  const int64_t width = kWidth > 0 ? kWidth : g.kernel_w, out_plane = g.out_h * g.out_w;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const T* row = plane + (oh * g.kernel_h + i) * g.in_w;
      for (int64_t j = 0; j < width; ++j) {
        T* tap = taps + (i * width + j) * out_plane + oh * g.out_w;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          tap[ow] = row[ow * width + j];
        }
      }
    }
  }
  for (int64_t o = 0; o < out_plane; ++o) {
    out[o] = taps[o];
    where[o] = corner[o];
  }
  for (int64_t t = 1; t < g.kernel_h * width; ++t) {
    const T* tap = taps + t * out_plane;
    const int32_t offset = static_cast<int32_t>(t / width * g.in_w + t % width);
    for (int64_t o = 0; o < out_plane; ++o) {
      const T v = tap[o];
      const bool take = v > out[o] || v != v;
      out[o] = take ? v : out[o];
      where[o] = take ? corner[o] + offset : where[o];
    }
  }
  for (int64_t o = 0; o < out_plane; ++o) {
    idx[o] = where[o];
  }
}

#define CUSTOM_CONV_MAX_POOL_LEVELS(T)                                                                 \
  CUSTOM_CONV_PER_LEVEL(void, max_pool_plane_##T,                                                      \
                        (const T* plane, const Pool2dGeometry& g, const WindowSpan* rows,               \
                         const WindowSpan* cols, int64_t lo, int64_t hi, T* out, int64_t* idx,          \
                         int32_t* where),                                                               \
                        (plane, g, rows, cols, lo, hi, out, idx, where)) {                              \
    switch (g.stride_w) {                                                                              \
      case 1: return max_pool_plane<1>(plane, g, rows, cols, lo, hi, out, idx, where);                 \
      case 2: return max_pool_plane<2>(plane, g, rows, cols, lo, hi, out, idx, where);                 \
      default: return max_pool_plane<0>(plane, g, rows, cols, lo, hi, out, idx, where);                \
    }                                                                                                  \
  }                                                                                                    \
  CUSTOM_CONV_PER_LEVEL(void, max_pool_tiles_##T,                                                      \
                        (const T* plane, const Pool2dGeometry& g, const int32_t* corner, T* out,        \
                         int64_t* idx, int32_t* where, T* taps),                                        \
                        (plane, g, corner, out, idx, where, taps)) {                                    \
    if (g.kernel_w == 2) return max_pool_tiles<2>(plane, g, corner, out, idx, where, taps);            \
    return max_pool_tiles<0>(plane, g, corner, out, idx, where, taps);                                  \
  }
CUSTOM_CONV_MAX_POOL_LEVELS(float)
CUSTOM_CONV_MAX_POOL_LEVELS(double)
#undef CUSTOM_CONV_MAX_POOL_LEVELS

void max_pool_plane_vectorised(const float* plane, const Pool2dGeometry& g, const WindowSpan* rows,
                               const WindowSpan* cols, int64_t lo, int64_t hi, float* out, int64_t* idx,
                               int32_t* where) {
  max_pool_plane_float(plane, g, rows, cols, lo, hi, out, idx, where);
}
void max_pool_plane_vectorised(const double* plane, const Pool2dGeometry& g, const WindowSpan* rows,
                               const WindowSpan* cols, int64_t lo, int64_t hi, double* out, int64_t* idx,
                               int32_t* where) {
  max_pool_plane_double(plane, g, rows, cols, lo, hi, out, idx, where);
}

void max_pool_tiles_vectorised(const float* plane, const Pool2dGeometry& g, const int32_t* corner, float* out,
                               int64_t* idx, int32_t* where, float* taps) {
  max_pool_tiles_float(plane, g, corner, out, idx, where, taps);
}
void max_pool_tiles_vectorised(const double* plane, const Pool2dGeometry& g, const int32_t* corner, double* out,
                               int64_t* idx, int32_t* where, double* taps) {
  max_pool_tiles_double(plane, g, corner, out, idx, where, taps);
}

// Half and bfloat16 never come here (they compare in float).
template <typename T>
void max_pool_plane_vectorised(const T*, const Pool2dGeometry&, const WindowSpan*, const WindowSpan*, int64_t,
                               int64_t, T*, int64_t*, int32_t*) {
  TORCH_INTERNAL_ASSERT(false, "max_pool2d: no vectorised plane for this dtype");
}
template <typename T>
void max_pool_tiles_vectorised(const T*, const Pool2dGeometry&, const int32_t*, T*, int64_t*, int32_t*, T*) {
  TORCH_INTERNAL_ASSERT(false, "max_pool2d: no vectorised plane for this dtype");
}

// Taps of the planes max_pool_tiles takes, at most: larger planes have rows
// long enough for max_pool_plane, and would need scratch of the plane's size
// per thread.
constexpr int64_t kMaxTileTaps = int64_t{1} << 16;

// Whether the windows tile the plane (max_pool_tiles): kernel == stride, no
// padding or dilation, and every window inside the input (ceil_mode may add
// one that is not).
bool windows_tile(const Pool2dGeometry& g) {
  return g.kernel_h == g.stride_h && g.kernel_w == g.stride_w && g.pad_h == 0 && g.pad_w == 0 &&
         g.dilation_h == 1 && g.dilation_w == 1 && g.out_h * g.kernel_h <= g.in_h && g.out_w * g.kernel_w <= g.in_w &&
         g.out_h * g.out_w * g.kernel_h * g.kernel_w <= kMaxTileTaps;
}

// The output columns [lo, hi) whose windows lie inside the input's columns.
std::pair<int64_t, int64_t> interior_columns(const Pool2dGeometry& g) {
  const int64_t lo = std::min<int64_t>(g.out_w, (g.pad_w + g.stride_w - 1) / g.stride_w);
  const int64_t last = g.in_w - 1 - (g.kernel_w - 1) * g.dilation_w + g.pad_w;
  const int64_t hi = last < 0 ? 0 : std::min<int64_t>(g.out_w, last / g.stride_w + 1);
  return {lo, std::max(lo, hi)};
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cpu(
    const at::Tensor& input_,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode) {
  check_floating_4d(input_, "max_pool2d", "input");
  const Pool2dGeometry g = max_pool2d_geometry(
      input_.sizes(), kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor input = input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options());
  at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w},
                                 input.options().dtype(at::kLong));
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "max_pool2d_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    int64_t* idx = indices.mutable_data_ptr<int64_t>();
    const int64_t work = out_plane * g.kernel_h * g.kernel_w;
    // Every plane has the same windows: their row and column spans are
    // computed once, not once per output.
    std::vector<WindowSpan> rows(g.out_h), cols(g.out_w);
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      rows[oh] = window_span(oh, g.stride_h, g.pad_h, g.kernel_h, g.dilation_h, g.in_h);
    }
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      cols[ow] = window_span(ow, g.stride_w, g.pad_w, g.kernel_w, g.dilation_w, g.in_w);
    }
    // float and double (and planes whose indices fit in 32 bits, for the
    // vector lanes) take the vectorised plane, split by tap where the windows
    // tile it; half and bfloat16 compare in float, window by window.
    constexpr bool kVector = std::is_same<acc_t, scalar_t>::value;
    if (kVector && in_plane <= std::numeric_limits<int32_t>::max() && windows_tile(g)) {
      std::vector<int32_t> corner(out_plane);
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          corner[oh * g.out_w + ow] = static_cast<int32_t>(oh * g.kernel_h * g.in_w + ow * g.kernel_w);
        }
      }
      at::parallel_for(0, g.planes(), plane_grain(work), [&](int64_t begin, int64_t end) {
        std::vector<int32_t> where(out_plane);
        std::vector<scalar_t> taps(work);
        for (int64_t p = begin; p < end; ++p) {
          max_pool_tiles_vectorised(in + p * in_plane, g, corner.data(), out + p * out_plane, idx + p * out_plane,
                                    where.data(), taps.data());
        }
      });
      return;
    }
    if (kVector && in_plane <= std::numeric_limits<int32_t>::max()) {
      const auto [lo, hi] = interior_columns(g);
      at::parallel_for(0, g.planes(), plane_grain(work), [&](int64_t begin, int64_t end) {
        std::vector<int32_t> where(g.out_w);
        for (int64_t p = begin; p < end; ++p) {
          max_pool_plane_vectorised(in + p * in_plane, g, rows.data(), cols.data(), lo, hi,
                                    out + p * out_plane, idx + p * out_plane, where.data());
        }
      });
      return;
    }
    at::parallel_for(0, g.planes(), plane_grain(work), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* plane = in + p * in_plane;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const WindowMax<acc_t> best = window_max<acc_t>(plane, g, rows[oh], cols[ow]);
            out[p * out_plane + oh * g.out_w + ow] = static_cast<scalar_t>(best.value);
            idx[p * out_plane + oh * g.out_w + ow] = best.index;
          }
        }
      }
    });
  });
  const at::MemoryFormat format = max_pool2d_memory_format(input_);
  return {in_memory_format(output, format), in_memory_format(indices, format)};
}

at::Tensor max_pool2d_backward_cpu(
    const at::Tensor& grad_output_,
    const at::Tensor& indices_,
    c10::IntArrayRef input_size,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode) {
  const Pool2dGeometry g = max_pool2d_backward_geometry(
      grad_output_, indices_, input_size, kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor indices = indices_.contiguous();
  const int64_t planes = g.planes();
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;

  // Windows of padding only route their gradient nowhere (see
  // max_pool2d_window.h); their indices name no element of them. Every plane
  // has the same windows: asked once, not once per plane.
  std::vector<char> holds_input(out_plane);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      holds_input[oh * g.out_w + ow] = window_holds_input(g, oh, ow);
    }
  }

  return in_memory_format(
      route_max_pool_gradients(grad_output, indices, input_size, planes, in_plane, out_plane, &holds_input),
      max_pool2d_gradient_memory_format(indices_));
}

}  // namespace

at::Tensor route_max_pool_gradients(const at::Tensor& grad_output, const at::Tensor& indices,
                                    c10::IntArrayRef input_size, int64_t planes, int64_t in_plane,
                                    int64_t out_plane, const std::vector<char>* holds_input) {
  at::Tensor grad_input = at::empty(input_size, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_output.scalar_type(), "max_pool_gradients_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const int64_t* idx = indices.const_data_ptr<int64_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    // One thread owns a whole plane, so overlapping windows that picked the
    // same input add up without atomics, in a fixed order.
    // float and double add straight into grad_input; reduced precision
    // types add in a float plane and round once.
    constexpr bool kDirect = std::is_same<acc_t, scalar_t>::value;
    at::parallel_for(0, planes, plane_grain(out_plane + in_plane), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(kDirect ? 0 : in_plane);
      for (int64_t p = begin; p < end; ++p) {
        acc_t* acc = kDirect ? reinterpret_cast<acc_t*>(gi + p * in_plane) : scratch.data();
        std::fill(acc, acc + in_plane, acc_t(0));
        for (int64_t o = 0; o < out_plane; ++o) {
          // The range check guards against indices that did not come from
          // the forward.
          const int64_t i = idx[p * out_plane + o];
          if ((holds_input == nullptr || (*holds_input)[o]) && i >= 0 && i < in_plane) {
            acc[i] += static_cast<acc_t>(go[p * out_plane + o]);
          }
        }
        if constexpr (!kDirect) {
          std::copy(acc, acc + in_plane, gi + p * in_plane);
        }
      }
    });
  });
  return grad_input;
}

TORCH_LIBRARY_IMPL(custom_conv, CPU, m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
}

}  // namespace custom_conv
