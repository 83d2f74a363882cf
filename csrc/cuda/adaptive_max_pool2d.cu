// adaptive_max_pool2d on the GPU, with the CPU version's results
// (../cpu/adaptive_max_pool2d.cpp) bit for bit: the same window_max over the
// same adaptive windows, and a backward that gathers, one thread per input
// element, the gradients of the outputs whose index names it, from the
// windows that hold it (avg_covering_windows), in the order the CPU kernel
// scatters them: deterministic, without atomics.
#include "../avg_pool2d_window.h"
#include "../geometry.h"
#include "../max_pool2d_window.h"
#include "../memory_format.h"
#include "common.cuh"
#include "pool_index.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
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
__global__ void adaptive_max_pool2d_forward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                                   const AvgPool2dGeometry a, const PoolDivisors<D> d,
                                                   gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output,
                                                   gpu_ptr<int64_t> CUSTOM_CONV_RESTRICT indices) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.channels * g.out_h * g.out_w) {
    const PlaneElement<I> o(static_cast<I>(e64), d.out_plane, d.out_w);
    const AvgWindow w = avg_window(a, d, o.h, o.w);
    const WindowMax<acc_t> best =
        window_max<acc_t>(input + static_cast<int64_t>(o.plane) * g.in_h * g.in_w, g, w.rows, w.cols);
    output[e64] = static_cast<scalar_t>(best.value);
    indices[e64] = best.index;
  }
}

// Channels-last input and outputs, one thread per output element in their
// memory order (the channel fastest): no layout copy before or after, the
// same windows, values and indices as the NCHW kernel.
template <typename scalar_t, typename D>
__global__ void adaptive_max_pool2d_forward_channels_last_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                                                 const AvgPool2dGeometry a, const PoolDivisors<D> d,
                                                                 gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output,
                                                                 gpu_ptr<int64_t> CUSTOM_CONV_RESTRICT indices) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.out_h * g.out_w * g.channels) {
    const ChannelsLastElement<I> o(static_cast<I>(e64), d.channels, d.out_w, d.out_h);
    const AvgWindow w = avg_window(a, d, o.h, o.w);
    const WindowMax<acc_t> best =
        window_max<acc_t>(o.plane_in(input, g.in_h * g.in_w, g.channels), g, w.rows, w.cols);
    output[e64] = static_cast<scalar_t>(best.value);
    indices[e64] = best.index;
  }
}

// The gradient of input element (ih, iw), position i = ih * in_w + iw of
// its plane, from the windows that hold it (every adaptive window holds
// input, so each routes what its index names).
template <typename acc_t, typename D, typename Indices, typename Grads, typename I = typename D::index_t>
__device__ __forceinline__ acc_t adaptive_max_pool2d_gradient(const Indices& idx, const Grads& go,
                                                              const AvgPool2dGeometry& a, const PoolDivisors<D>& d,
                                                              I i, I ih, I iw) {
  return routed_gradient<acc_t>(idx, go, avg_covering_windows(a, d, ih, true), avg_covering_windows(a, d, iw, false),
                                a.pool.out_w, i, [](I, I) { return true; });
}

template <typename scalar_t, typename D>
__global__ void adaptive_max_pool2d_backward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output,
                                                    gpu_ptr<const int64_t> CUSTOM_CONV_RESTRICT indices,
                                                    const AvgPool2dGeometry a, const PoolDivisors<D> d,
                                                    gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.channels * g.in_h * g.in_w) {
    const PlaneElement<I> i(static_cast<I>(e64), d.in_plane, d.in_w);
    const int64_t first = static_cast<int64_t>(i.plane) * g.out_h * g.out_w;
    grad_input[e64] = static_cast<scalar_t>(
        adaptive_max_pool2d_gradient<acc_t>(indices + first, grad_output + first, a, d, i.i, i.h, i.w));
  }
}

// Channels-last output gradient, indices and input gradient, one thread per
// input element in memory order, as the channels-last forward.
template <typename scalar_t, typename D>
__global__ void adaptive_max_pool2d_backward_channels_last_kernel(
    gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output, gpu_ptr<const int64_t> CUSTOM_CONV_RESTRICT indices,
    const AvgPool2dGeometry a, const PoolDivisors<D> d, gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.in_h * g.in_w * g.channels) {
    const ChannelsLastElement<I> i(static_cast<I>(e64), d.channels, d.in_w, d.in_h);
    const int64_t out_plane = g.out_h * g.out_w;
    grad_input[e64] = static_cast<scalar_t>(adaptive_max_pool2d_gradient<acc_t>(
        i.plane_in(indices, out_plane, g.channels), i.plane_in(grad_output, out_plane, g.channels), a, d,
        i.h * static_cast<I>(g.in_w) + i.w, i.h, i.w));
  }
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_forward_cuda(const at::Tensor& input_,
                                                                    c10::IntArrayRef output_size) {
  check_floating_4d(input_, "adaptive_max_pool2d", "input");
  const AvgPool2dGeometry a = adaptive_avg_pool2d_geometry(input_.sizes(), output_size, "adaptive_max_pool2d");
  const Pool2dGeometry& g = a.pool;
  const DeviceGuard device_guard(input_.device());
  const at::MemoryFormat format = max_pool2d_memory_format(input_);
  const bool channels_last = pools_channels_last_in_place(input_);
  const at::Tensor input = channels_last ? input_ : input_.contiguous();
  const auto options = input.options().memory_format(channels_last ? format : at::MemoryFormat::Contiguous);
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, options);
  at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w}, options.dtype(at::kLong));
  if (output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "adaptive_max_pool2d_forward_cuda",
                                    [&] {
      with_divisors(a, [&](const auto& d) {
        using D = std::decay_t<decltype(d.out_w)>;
        const unsigned int grid = grid_for(output.numel());
        if (channels_last) {
          CUSTOM_CONV_LAUNCH(grid, kThreads, adaptive_max_pool2d_forward_channels_last_kernel<scalar_t, D>)(
              input.const_data_ptr<scalar_t>(), a, d, output.mutable_data_ptr<scalar_t>(),
              indices.mutable_data_ptr<int64_t>());
        } else {
          CUSTOM_CONV_LAUNCH(grid, kThreads, adaptive_max_pool2d_forward_kernel<scalar_t, D>)(
              input.const_data_ptr<scalar_t>(), a, d, output.mutable_data_ptr<scalar_t>(),
              indices.mutable_data_ptr<int64_t>());
        }
      });
    });
  }
  return {in_memory_format(output, format), in_memory_format(indices, format)};
}

// The gradient in its indices' layout, the forward result's, as max_pool2d's
// (../memory_format.h), read and written in it.
at::Tensor adaptive_max_pool2d_backward_cuda(const at::Tensor& grad_output_, const at::Tensor& indices_,
                                             c10::IntArrayRef input_size) {
  const AvgPool2dGeometry a = adaptive_max_pool2d_backward_geometry(grad_output_, indices_, input_size);
  const DeviceGuard device_guard(grad_output_.device());
  const at::MemoryFormat format = max_pool2d_gradient_memory_format(indices_);
  const at::Tensor grad_output = grad_output_.contiguous(format);
  const at::Tensor indices = indices_.contiguous(format);
  at::Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(format));
  if (grad_input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                    "adaptive_max_pool2d_backward_cuda", [&] {
      with_divisors(a, [&](const auto& d) {
        using D = std::decay_t<decltype(d.out_w)>;
        const unsigned int grid = grid_for(grad_input.numel());
        if (format == at::MemoryFormat::ChannelsLast) {
          CUSTOM_CONV_LAUNCH(grid, kThreads, adaptive_max_pool2d_backward_channels_last_kernel<scalar_t, D>)(
              grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), a, d,
              grad_input.mutable_data_ptr<scalar_t>());
        } else {
          CUSTOM_CONV_LAUNCH(grid, kThreads, adaptive_max_pool2d_backward_kernel<scalar_t, D>)(
              grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), a, d,
              grad_input.mutable_data_ptr<scalar_t>());
        }
      });
    });
  }
  return grad_input;
}

}  // namespace

CUSTOM_CONV_GPU_LIBRARY_IMPL(m) {
  m.impl("adaptive_max_pool2d_forward", &adaptive_max_pool2d_forward_cuda);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward_cuda);
}

}  // namespace gpu
}  // namespace custom_conv
