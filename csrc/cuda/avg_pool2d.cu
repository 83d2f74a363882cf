// avg_pool2d and adaptive_avg_pool2d on the GPU, with the same results as the
// CPU version (../cpu/avg_pool2d.cpp), bitwise: both call window_mean and
// input_gradient (../avg_pool2d_window.h), which add the same terms in the
// same order. The backward is a gather, one thread per input element, so it
// needs no atomics and gives the same gradient on every run.
#include "../avg_pool2d_window.h"
#include "../geometry.h"
#include "../memory_format.h"
#include "common.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

namespace custom_conv {
namespace gpu {
namespace {

// One thread per output element.
template <typename scalar_t>
__global__ void avg_pool2d_forward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                          const AvgPool2dGeometry a, gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output) {
  using acc_t = at::opmath_type<scalar_t>;
  const Pool2dGeometry& g = a.pool;
  const int64_t out_plane = g.out_h * g.out_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, g.batch * g.channels * out_plane) {
    const int64_t ow = e % g.out_w;
    const int64_t oh = (e / g.out_w) % g.out_h;
    const int64_t p = e / out_plane;
    output[e] = static_cast<scalar_t>(window_mean<acc_t>(input + p * g.in_h * g.in_w, g.in_w, avg_window(a, oh, ow)));
  }
}

// One thread per input element.
template <typename scalar_t>
__global__ void avg_pool2d_backward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output,
                                           const AvgPool2dGeometry a,
                                           gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const Pool2dGeometry& g = a.pool;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, g.batch * g.channels * in_plane) {
    const int64_t i = e % in_plane;
    const int64_t p = e / in_plane;
    grad_input[e] = static_cast<scalar_t>(input_gradient<acc_t>(grad_output + p * out_plane, a, i / g.in_w, i % g.in_w));
  }
}

at::Tensor forward(const at::Tensor& input_, const AvgPool2dGeometry& a) {
  const Pool2dGeometry& g = a.pool;
  const DeviceGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options());
  const int64_t total = output.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "avg_pool2d_forward_cuda", [&] {
      CUSTOM_CONV_LAUNCH(grid_for(total), kThreads, avg_pool2d_forward_kernel<scalar_t>)(
          input.const_data_ptr<scalar_t>(), a, output.mutable_data_ptr<scalar_t>());
    });
  }
  return in_memory_format(output, max_pool2d_memory_format(input_));
}

at::Tensor backward(const at::Tensor& grad_output_, c10::IntArrayRef input_size, const AvgPool2dGeometry& a) {
  const DeviceGuard device_guard(grad_output_.device());
  const at::Tensor grad_output = grad_output_.contiguous();
  at::Tensor grad_input = at::empty(input_size, grad_output.options());
  const int64_t total = grad_input.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "avg_pool2d_backward_cuda", [&] {
      CUSTOM_CONV_LAUNCH(grid_for(total), kThreads, avg_pool2d_backward_kernel<scalar_t>)(
          grad_output.const_data_ptr<scalar_t>(), a, grad_input.mutable_data_ptr<scalar_t>());
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
  const AvgPool2dGeometry a =
      avg_pool2d_geometry(input_size, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
  check_avg_pool2d_grad_output(grad_output, a, "avg_pool2d_backward");
  return backward(grad_output, input_size, a);
}

at::Tensor adaptive_avg_pool2d_forward_cuda(const at::Tensor& input, c10::IntArrayRef output_size) {
  check_floating_4d(input, "adaptive_avg_pool2d", "input");
  return forward(input, adaptive_avg_pool2d_geometry(input.sizes(), output_size));
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, c10::IntArrayRef input_size) {
  TORCH_CHECK(grad_output.dim() == 4, "adaptive_avg_pool2d_backward: expected a 4-D grad_output, got ",
              grad_output.dim(), "-D");
  const AvgPool2dGeometry a = adaptive_avg_pool2d_geometry(input_size, {grad_output.size(2), grad_output.size(3)});
  check_avg_pool2d_grad_output(grad_output, a, "adaptive_avg_pool2d_backward");
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
