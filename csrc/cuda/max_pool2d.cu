// max_pool2d on the GPU: forward with indices, and backward, side by side,
// with the same results as the CPU version (../max_pool2d.cpp): the forward
// calls the same window_max (../max_pool2d_window.h), so windows, ties, NaN
// and initial indices agree; the backward adds the same sums in the same order.
// The forward reads a channels-last input in its own layout (no copy before
// or after); so does the backward, whose gradient takes the layout of the
// forward's results (the indices'), as the Meta kernel says.
#include "../geometry.h"
#include "../max_pool2d_window.h"
#include "../memory_format.h"
#include "common.cuh"
#include "divisor.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

namespace custom_conv {
namespace gpu {
namespace {

// What the kernels divide their flat indices by, as Divisors (32-bit indices,
// a multiply-high each) where every index and window bound of the call stays
// below LaunchLimits::narrow_index_limit (2^30), else as WideDivisors (64-bit
// division).
template <typename D>
struct PoolDivisors {
  D out_plane, out_w, out_h, in_plane, in_w, in_h, channels, stride_h, stride_w;

  // Sizes of 0 (no element for a kernel to divide) taken as 1.
  explicit PoolDivisors(const Pool2dGeometry& g)
      : out_plane(at_least_1(g.out_h * g.out_w)), out_w(at_least_1(g.out_w)), out_h(at_least_1(g.out_h)),
        in_plane(at_least_1(g.in_h * g.in_w)), in_w(at_least_1(g.in_w)), in_h(at_least_1(g.in_h)),
        channels(at_least_1(g.channels)), stride_h(g.stride_h), stride_w(g.stride_w) {}
  static int64_t at_least_1(int64_t n) { return n > 0 ? n : 1; }
};

bool indices_fit_32_bits(const Pool2dGeometry& g) {
  const int64_t limit = launch_limits().narrow_index_limit;
  const auto reach = [](int64_t size, int64_t pad, int64_t stride, int64_t kernel, int64_t dilation) {
    return size + pad + stride + (kernel - 1) * dilation;
  };
  return g.batch * g.channels * std::max(g.in_h * g.in_w, g.out_h * g.out_w) < limit &&
         reach(g.in_h, g.pad_h, g.stride_h, g.kernel_h, g.dilation_h) < limit &&
         reach(g.in_w, g.pad_w, g.stride_w, g.kernel_w, g.dilation_w) < limit;
}

// Runs launch(PoolDivisors<D>{g}) with D the narrowest that fits the call.
template <typename Launch>
void with_divisors(const Pool2dGeometry& g, const Launch& launch) {
  if (indices_fit_32_bits(g)) {
    launch(PoolDivisors<Divisor>(g));
  } else {
    launch(PoolDivisors<WideDivisor>(g));
  }
}

// One thread per output element.
template <typename scalar_t, typename D>
__global__ void max_pool2d_forward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                          const Pool2dGeometry g, const PoolDivisors<D> d,
                                          gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output,
                                          gpu_ptr<int64_t> CUSTOM_CONV_RESTRICT indices) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.channels * g.out_h * g.out_w) {
    const I e = static_cast<I>(e64);
    const I p = d.out_plane.div(e), o = d.out_plane.mod(e, p);
    const I oh = d.out_w.div(o), ow = d.out_w.mod(o, oh);
    const WindowMax<acc_t> best = window_max<acc_t>(input + static_cast<int64_t>(p) * g.in_h * g.in_w, g, oh, ow);
    output[e64] = static_cast<scalar_t>(best.value);
    indices[e64] = best.index;
  }
}

// One plane of a channels-last tensor, indexed as an NCHW plane is (ih * W +
// iw): its elements lie `channels` apart.
template <typename T>
struct ChannelsLastPlane {
  gpu_ptr<T> first;  // element (n, c, 0, 0)
  int64_t channels;
  C10_HOST_DEVICE T& operator[](int64_t i) const { return first[i * channels]; }
};

// Element e of a channels-last (N, C, H, W) tensor, in memory order (the
// channel fastest), as (n, h, w, c), by Divisors of C, W and H.
template <typename I>
struct ChannelsLastElement {
  I n, h, w, c;

  template <typename D>
  __device__ __forceinline__ ChannelsLastElement(I e, const D& channels, const D& cols, const D& rows) {
    const I pixel = channels.div(e);  // (n, h, w)
    c = channels.mod(e, pixel);
    const I row = cols.div(pixel);    // (n, h)
    w = cols.mod(pixel, row);
    n = rows.div(row);
    h = rows.mod(row, n);
  }
};

// Channels-last input and outputs, one thread per output element in their
// memory order (the channel fastest): neighbouring threads read neighbouring
// channels, and no layout copy is needed before or after. The same windows,
// values and indices (positions within the plane) as the NCHW kernel.
template <typename scalar_t, typename D>
__global__ void max_pool2d_forward_channels_last_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                                        const Pool2dGeometry g, const PoolDivisors<D> d,
                                                        gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output,
                                                        gpu_ptr<int64_t> CUSTOM_CONV_RESTRICT indices) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.out_h * g.out_w * g.channels) {
    const ChannelsLastElement<I> o(static_cast<I>(e64), d.channels, d.out_w, d.out_h);
    const ChannelsLastPlane<const scalar_t> plane{
        input + static_cast<int64_t>(o.n) * g.in_h * g.in_w * g.channels + o.c, g.channels};
    const WindowMax<acc_t> best = window_max<acc_t>(plane, g, o.h, o.w);
    output[e64] = static_cast<scalar_t>(best.value);
    indices[e64] = best.index;
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cuda(
    const at::Tensor& input_,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode) {
  check_floating_4d(input_, "max_pool2d", "input");
  const Pool2dGeometry g = max_pool2d_geometry(
      input_.sizes(), kernel_size, stride, padding, dilation, ceil_mode);
  const DeviceGuard device_guard(input_.device());
  const at::MemoryFormat format = max_pool2d_memory_format(input_);
  if (format == at::MemoryFormat::ChannelsLast && input_.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    const at::Tensor& input = input_;
    const auto options = input.options().memory_format(at::MemoryFormat::ChannelsLast);
    at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, options);
    at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w}, options.dtype(at::kLong));
    if (output.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_forward_cuda", [&] {
        with_divisors(g, [&](const auto& d) {
          using D = std::decay_t<decltype(d.out_w)>;
          CUSTOM_CONV_LAUNCH(grid_for(output.numel()), kThreads, max_pool2d_forward_channels_last_kernel<scalar_t, D>)(
              input.const_data_ptr<scalar_t>(), g, d, output.mutable_data_ptr<scalar_t>(),
              indices.mutable_data_ptr<int64_t>());
        });
      });
    }
    return {output, indices};
  }
  const at::Tensor input = input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options());
  at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w},
                                 input.options().dtype(at::kLong));
  const int64_t total = output.numel();
  if (total == 0) {
    return {in_memory_format(output, format), in_memory_format(indices, format)};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_forward_cuda", [&] {
    with_divisors(g, [&](const auto& d) {
      using D = std::decay_t<decltype(d.out_w)>;
      CUSTOM_CONV_LAUNCH(grid_for(total), kThreads, max_pool2d_forward_kernel<scalar_t, D>)(
          input.const_data_ptr<scalar_t>(), g, d, output.mutable_data_ptr<scalar_t>(),
          indices.mutable_data_ptr<int64_t>());
    });
  });
  return {in_memory_format(output, format), in_memory_format(indices, format)};
}

// ---------------------------------------------------------------- backward
//
// Each input element's gradient is the sum of the output gradients whose
// index names it. We compute it as a gather, one thread per input element
// adding up those outputs itself: a scatter from the outputs would need
// atomic adds wherever windows overlap, and atomics add in whatever order
// the hardware runs them, so the result would change from run to run. The
// candidates are the outputs whose window covers the element; the gather
// visits them in row-major order, the order in which the CPU kernel adds
// them, so both give bitwise the same gradients.

// covering_windows (../max_pool2d_window.h) with the stride's division by a
// Divisor: the output positions along one dimension whose window covers
// input position `pos`.
template <typename D, typename I = typename D::index_t>
__device__ __forceinline__ CandidateRange covering_windows_by(I pos, const D& stride, int64_t pad, int64_t kernel,
                                                              int64_t dilation, int64_t out_size) {
  const I lowest_start = static_cast<I>(pos + pad - (kernel - 1) * dilation);
  const I first = lowest_start <= 0 ? I(0) : stride.div(static_cast<I>(lowest_start + stride.divisor - 1));
  const I last_start = stride.div(static_cast<I>(pos + pad));  // pos + pad >= 0
  return {first, last_start < out_size - 1 ? last_start : out_size - 1};
}

// The gradient of input element (ih, iw), position i = ih * in_w + iw of
// its plane: the sum of the plane's output gradients `go` whose indices
// `idx` name it (planes indexed as NCHW ones are: pointers, or
// ChannelsLastPlane), in row-major order of the windows that cover it.
template <typename acc_t, typename D, typename Indices, typename Grads, typename I = typename D::index_t>
__device__ __forceinline__ acc_t routed_gradient(const Indices& idx, const Grads& go, const Pool2dGeometry& g,
                                                 const PoolDivisors<D>& d, I i, I ih, I iw) {
  const CandidateRange rows = covering_windows_by(ih, d.stride_h, g.pad_h, g.kernel_h, g.dilation_h, g.out_h);
  const CandidateRange cols = covering_windows_by(iw, d.stride_w, g.pad_w, g.kernel_w, g.dilation_w, g.out_w);
  acc_t sum = acc_t(0);
  for (I oh = static_cast<I>(rows.first); oh <= rows.last; ++oh) {
    for (I ow = static_cast<I>(cols.first); ow <= cols.last; ++ow) {
      const I o = oh * static_cast<I>(g.out_w) + ow;
      // A window of padding only reports an index that is not in it, and
      // routes nothing (see ../max_pool2d_window.h).
      if (idx[o] == i && window_holds_input(g, oh, ow)) {
        sum += static_cast<acc_t>(go[o]);
      }
    }
  }
  return sum;
}

template <typename scalar_t, typename D>
__global__ void max_pool2d_backward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output,
                                           gpu_ptr<const int64_t> CUSTOM_CONV_RESTRICT indices,
                                           const Pool2dGeometry g, const PoolDivisors<D> d,
                                           gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const int64_t out_plane = g.out_h * g.out_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.channels * g.in_h * g.in_w) {
    const I e = static_cast<I>(e64);
    const I p = d.in_plane.div(e), i = d.in_plane.mod(e, p);
    const I ih = d.in_w.div(i), iw = d.in_w.mod(i, ih);
    const int64_t first = static_cast<int64_t>(p) * out_plane;
    grad_input[e64] = static_cast<scalar_t>(routed_gradient<acc_t>(indices + first, grad_output + first, g, d, i,
                                                                   ih, iw));
  }
}

// Channels-last output gradient, indices and input gradient, one thread per
// input element in memory order (the channel fastest), as the channels-last
// forward: no layout copy before or after, the same sums in the same order.
template <typename scalar_t, typename D>
__global__ void max_pool2d_backward_channels_last_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output,
                                                         gpu_ptr<const int64_t> CUSTOM_CONV_RESTRICT indices,
                                                         const Pool2dGeometry g, const PoolDivisors<D> d,
                                                         gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.in_h * g.in_w * g.channels) {
    const ChannelsLastElement<I> i(static_cast<I>(e64), d.channels, d.in_w, d.in_h);
    const int64_t first = static_cast<int64_t>(i.n) * g.out_h * g.out_w * g.channels + i.c;
    const ChannelsLastPlane<const int64_t> idx{indices + first, g.channels};
    const ChannelsLastPlane<const scalar_t> go{grad_output + first, g.channels};
    grad_input[e64] = static_cast<scalar_t>(routed_gradient<acc_t>(idx, go, g, d, i.h * static_cast<I>(g.in_w) + i.w,
                                                                   i.h, i.w));
  }
}

at::Tensor max_pool2d_backward_cuda(
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
  const DeviceGuard device_guard(grad_output_.device());
  // The gradient in its result's layout (the indices'), read and written in it.
  const at::MemoryFormat format = max_pool2d_gradient_memory_format(indices_);
  const at::Tensor grad_output = grad_output_.contiguous(format);
  const at::Tensor indices = indices_.contiguous(format);
  at::Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(format));
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "max_pool2d_backward_cuda", [&] {
    with_divisors(g, [&](const auto& d) {
      using D = std::decay_t<decltype(d.out_w)>;
      const unsigned int grid = grid_for(grad_input.numel());
      if (format == at::MemoryFormat::ChannelsLast) {
        CUSTOM_CONV_LAUNCH(grid, kThreads, max_pool2d_backward_channels_last_kernel<scalar_t, D>)(
            grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), g, d,
            grad_input.mutable_data_ptr<scalar_t>());
      } else {
        CUSTOM_CONV_LAUNCH(grid, kThreads, max_pool2d_backward_kernel<scalar_t, D>)(
            grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), g, d,
            grad_input.mutable_data_ptr<scalar_t>());
      }
    });
  });
  return grad_input;
}

}  // namespace

CUSTOM_CONV_GPU_LIBRARY_IMPL(m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
}

}  // namespace gpu
}  // namespace custom_conv
