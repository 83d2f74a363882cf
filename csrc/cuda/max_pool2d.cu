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
#include "pool_index.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

namespace custom_conv {
namespace gpu {
namespace {

// One thread per output element.
template <typename scalar_t, typename D>
__global__ void max_pool2d_forward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                          const Pool2dGeometry g, const PoolDivisors<D> d,
                                          gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output,
                                          gpu_ptr<int64_t> CUSTOM_CONV_RESTRICT indices) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.channels * g.out_h * g.out_w) {
    const PlaneElement<I> o(static_cast<I>(e64), d.out_plane, d.out_w);
    const WindowMax<acc_t> best = window_max<acc_t>(input + static_cast<int64_t>(o.plane) * g.in_h * g.in_w, g, o.h,
                                                    o.w);
    output[e64] = static_cast<scalar_t>(best.value);
    indices[e64] = best.index;
  }
}

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
    const WindowMax<acc_t> best = window_max<acc_t>(o.plane_in(input, g.in_h * g.in_w, g.channels), g, o.h, o.w);
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
  if (pools_channels_last_in_place(input_)) {
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

// The gradient of input element (ih, iw), position i = ih * in_w + iw of
// its plane, from the windows that cover it.
template <typename acc_t, typename D, typename Indices, typename Grads, typename I = typename D::index_t>
__device__ __forceinline__ acc_t max_pool2d_gradient(const Indices& idx, const Grads& go, const Pool2dGeometry& g,
                                                     const PoolDivisors<D>& d, I i, I ih, I iw) {
  // A window of padding only reports an index that is not in it, and
  // routes nothing (see ../max_pool2d_window.h).
  return routed_gradient<acc_t>(idx, go, covering_windows(ih, d.stride_h, g.pad_h, g.kernel_h, g.dilation_h, g.out_h),
                                covering_windows(iw, d.stride_w, g.pad_w, g.kernel_w, g.dilation_w, g.out_w), g.out_w,
                                i, [&](I oh, I ow) { return window_holds_input(g, oh, ow); });
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
    const PlaneElement<I> i(static_cast<I>(e64), d.in_plane, d.in_w);
    const int64_t first = static_cast<int64_t>(i.plane) * out_plane;
    grad_input[e64] = static_cast<scalar_t>(
        max_pool2d_gradient<acc_t>(indices + first, grad_output + first, g, d, i.i, i.h, i.w));
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
    const int64_t out_plane = g.out_h * g.out_w;
    grad_input[e64] = static_cast<scalar_t>(max_pool2d_gradient<acc_t>(
        i.plane_in(indices, out_plane, g.channels), i.plane_in(grad_output, out_plane, g.channels), g, d,
        i.h * static_cast<I>(g.in_w) + i.w, i.h, i.w));
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
