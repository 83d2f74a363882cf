// avg_pool2d and adaptive_avg_pool2d on the GPU, with the same results as the
// CPU version (../cpu/avg_pool2d.cpp), bitwise: both call window_mean and
// input_gradient (../avg_pool2d_window.h), which add the same terms in the
// same order. The backward is a gather, one thread per input element, so it
// needs no atomics and gives the same gradient on every run.
#include "../avg_pool2d_window.h"
#include "../geometry.h"
#include "../memory_format.h"
#include "common.cuh"
#include "pool_index.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <type_traits>

namespace custom_conv {
namespace gpu {
namespace {

// One thread per output element.
template <typename scalar_t, typename D>
__global__ void avg_pool2d_forward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                          const AvgPool2dGeometry a, const PoolDivisors<D> d,
                                          gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.channels * g.out_h * g.out_w) {
    const PlaneElement<I> o(static_cast<I>(e64), d.out_plane, d.out_w);
    output[e64] = static_cast<scalar_t>(window_mean<acc_t>(input + static_cast<int64_t>(o.plane) * g.in_h * g.in_w,
                                                           g.in_w, avg_window(a, d, o.h, o.w)));
  }
}

// Channels-last input and output, one thread per output element in their
// memory order (the channel fastest), so that neighbouring threads read
// neighbouring channels, with no layout copy before or after: the same
// windows and sums as the NCHW kernel.
template <typename scalar_t, typename D>
__global__ void avg_pool2d_forward_channels_last_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                                        const AvgPool2dGeometry a, const PoolDivisors<D> d,
                                                        gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.out_h * g.out_w * g.channels) {
    const ChannelsLastElement<I> o(static_cast<I>(e64), d.channels, d.out_w, d.out_h);
    output[e64] = static_cast<scalar_t>(window_mean<acc_t>(o.plane_in(input, g.in_h * g.in_w, g.channels), g.in_w,
                                                           avg_window(a, d, o.h, o.w)));
  }
}

// One thread per input element.
template <typename scalar_t, typename D>
__global__ void avg_pool2d_backward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output,
                                           const AvgPool2dGeometry a, const PoolDivisors<D> d,
                                           gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.channels * g.in_h * g.in_w) {
    const PlaneElement<I> i(static_cast<I>(e64), d.in_plane, d.in_w);
    grad_input[e64] = static_cast<scalar_t>(
        input_gradient<acc_t>(grad_output + static_cast<int64_t>(i.plane) * g.out_h * g.out_w, a, d, i.h, i.w));
  }
}

// Channels-last output gradient and input gradient, one thread per input
// element in their memory order, as the channels-last forward.
template <typename scalar_t, typename D>
__global__ void avg_pool2d_backward_channels_last_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output,
                                                         const AvgPool2dGeometry a, const PoolDivisors<D> d,
                                                         gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  using I = typename D::index_t;
  const Pool2dGeometry& g = a.pool;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e64, g.batch * g.in_h * g.in_w * g.channels) {
    const ChannelsLastElement<I> i(static_cast<I>(e64), d.channels, d.in_w, d.in_h);
    grad_input[e64] = static_cast<scalar_t>(
        input_gradient<acc_t>(i.plane_in(grad_output, g.out_h * g.out_w, g.channels), a, d, i.h, i.w));
  }
}

// The forward reads a channels-last input in its own layout where it is
// laid out so (a slice of one is copied to NCHW first), and answers in
// torch's layout (../memory_format.h).
at::Tensor forward(const at::Tensor& input_, const AvgPool2dGeometry& a) {
  const Pool2dGeometry& g = a.pool;
  const DeviceGuard device_guard(input_.device());
  const at::MemoryFormat format = max_pool2d_memory_format(input_);
  const bool channels_last = pools_channels_last_in_place(input_);
  const at::Tensor input = channels_last ? input_ : input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w},
                                input.options().memory_format(channels_last ? format : at::MemoryFormat::Contiguous));
  if (output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "avg_pool2d_forward_cuda", [&] {
      with_divisors(a, [&](const auto& d) {
        using D = std::decay_t<decltype(d.out_w)>;
        const unsigned int grid = grid_for(output.numel());
        if (channels_last) {
          CUSTOM_CONV_LAUNCH(grid, kThreads, avg_pool2d_forward_channels_last_kernel<scalar_t, D>)(
              input.const_data_ptr<scalar_t>(), a, d, output.mutable_data_ptr<scalar_t>());
        } else {
          CUSTOM_CONV_LAUNCH(grid, kThreads, avg_pool2d_forward_kernel<scalar_t, D>)(
              input.const_data_ptr<scalar_t>(), a, d, output.mutable_data_ptr<scalar_t>());
        }
      });
    });
  }
  return in_memory_format(output, format);
}

// The gradient in the layout the output gradient suggests
// (avg_pool2d_gradient_memory_format), read and written in it.
at::Tensor backward(const at::Tensor& grad_output_, c10::IntArrayRef input_size, const AvgPool2dGeometry& a) {
  const DeviceGuard device_guard(grad_output_.device());
  const at::MemoryFormat format = avg_pool2d_gradient_memory_format(grad_output_);
  const at::Tensor grad_output = grad_output_.contiguous(format);
  at::Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(format));
  if (grad_input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "avg_pool2d_backward_cuda",
                                    [&] {
      with_divisors(a, [&](const auto& d) {
        using D = std::decay_t<decltype(d.out_w)>;
        const unsigned int grid = grid_for(grad_input.numel());
        if (format == at::MemoryFormat::ChannelsLast) {
          CUSTOM_CONV_LAUNCH(grid, kThreads, avg_pool2d_backward_channels_last_kernel<scalar_t, D>)(
              grad_output.const_data_ptr<scalar_t>(), a, d, grad_input.mutable_data_ptr<scalar_t>());
        } else {
          CUSTOM_CONV_LAUNCH(grid, kThreads, avg_pool2d_backward_kernel<scalar_t, D>)(
              grad_output.const_data_ptr<scalar_t>(), a, d, grad_input.mutable_data_ptr<scalar_t>());
        }
      });
    });
  }
  return grad_input;
}

at::Tensor avg_pool2d_forward_cuda(const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   c10::optional<int64_t> divisor_override) {
  check_floating_4d(input, "avg_pool2d", "input");
  return forward(input, avg_pool2d_geometry(input.sizes(), kernel_size, stride, padding, ceil_mode,
                                            count_include_pad, divisor_override));
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, c10::IntArrayRef input_size,
                                    c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    bool ceil_mode, bool count_include_pad, c10::optional<int64_t> divisor_override) {
  const AvgPool2dGeometry a = avg_pool2d_backward_geometry(grad_output, input_size, kernel_size, stride, padding,
                                                           ceil_mode, count_include_pad, divisor_override);
  return backward(grad_output, input_size, a);
}

at::Tensor adaptive_avg_pool2d_forward_cuda(const at::Tensor& input, c10::IntArrayRef output_size) {
  check_floating_4d(input, "adaptive_avg_pool2d", "input");
  return forward(input, adaptive_avg_pool2d_geometry(input.sizes(), output_size));
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, c10::IntArrayRef input_size) {
  const AvgPool2dGeometry a =
      adaptive_pool2d_backward_geometry(grad_output, input_size, "adaptive_avg_pool2d_backward");
  return backward(grad_output, input_size, a);
}

}  // namespace

CUSTOM_CONV_GPU_LIBRARY_IMPL(m) {
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_cuda);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cuda);
  m.impl("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward_cuda);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cuda);
}

}  // namespace gpu
}  // namespace custom_conv
