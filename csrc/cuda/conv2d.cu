// conv2d on the GPU: forward, and the three backward ops side by side. Each
// op checks its arguments, lays out its tensors, allocates its result and
// chooses the route (conv2d_route: the chooser of conv2d_algorithm.h); the
// launches of each route, per dtype, are in conv2d_kernels.cuh. Every layer
// but a depthwise one (depthwise.cuh) is im2col's product: normally the
// implicit GEMM of implicit_gemm.cuh, which gathers the receptive fields as
// its tiles load, else through a column matrix in memory.
//
// Nothing here uses atomics, so every result is bitwise reproducible: the
// weight gradient is a GEMM's fixed-order reduction, and the bias gradient
// is a fixed-order block reduction.
#include "../conv2d_algorithm.h"
#include "../geometry.h"
#include "../memory_format.h"
#include "common.cuh"
#include "conv2d_kernels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace custom_conv {
namespace gpu {
namespace {

// The route of a pass, in the chooser's order of precedence.
Conv2dRoute conv2d_route(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype) {
  if (choose_cuda_conv2d_algorithm(g, pass, dtype) == Conv2dAlgorithm::kDepthwise) {
    return Conv2dRoute::kDepthwise;
  }
  if (cuda_conv_gathers_channels_last(g, pass, dtype)) {
    return Conv2dRoute::kChannelsLastGather;
  }
  return cuda_conv_uses_implicit_gemm(g) ? Conv2dRoute::kImplicitGemm : Conv2dRoute::kColumnMatrix;
}

// The layout a route reads its operands in: the tensor cores' gather from
// channels-last memory takes them so (no copy where they already are), every
// other route NCHW.
at::MemoryFormat read_format(Conv2dRoute route) {
  return route == Conv2dRoute::kChannelsLastGather ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The layout a route's result is allocated in: the op's where the route
// stores either (the implicit GEMM), else NCHW (in_op_format then copies).
at::MemoryFormat stored_format(Conv2dRoute route, at::MemoryFormat format) {
  const bool either = route == Conv2dRoute::kChannelsLastGather || route == Conv2dRoute::kImplicitGemm;
  return either ? format : at::MemoryFormat::Contiguous;
}

// A pass's result in the op's layout: as it is where the route stored it so.
at::Tensor in_op_format(const at::Tensor& result, Conv2dRoute route, at::MemoryFormat format) {
  return stored_format(route, format) == format ? result : in_memory_format(result, format);
}

at::Tensor conv2d_forward_cuda(
    const at::Tensor& input_,
    const at::Tensor& weight_,
    const c10::optional<at::Tensor>& bias,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  const Conv2dGeometry g = checked_conv2d_forward(input_, weight_, bias, stride, padding, dilation, groups);
  const DeviceGuard device_guard(input_.device());
  const Conv2dRoute route = conv2d_route(g, Conv2dPass::kForward, input_.scalar_type());
  const at::Tensor input = input_.contiguous(read_format(route));
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor bias_c = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const at::MemoryFormat format = conv2d_memory_format(input_, weight_);
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().memory_format(stored_format(route, format)));
  if (output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_forward_cuda", [&] {
      Conv2dKernels<scalar_t>::forward(route, g, input, weight, bias_c, output);
    });
  }
  return in_op_format(output, route, format);
}

at::Tensor conv2d_backward_input_cuda(
    const at::Tensor& grad_output_,
    const at::Tensor& weight_,
    c10::IntArrayRef input_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  const Conv2dGeometry g =
      checked_conv2d_backward_input(grad_output_, weight_, input_size, stride, padding, dilation, groups);
  const DeviceGuard device_guard(weight_.device());
  const Conv2dRoute route = conv2d_route(g, Conv2dPass::kBackwardInput, weight_.scalar_type());
  const at::Tensor grad_output = grad_output_.contiguous(read_format(route));
  const at::Tensor weight = weight_.contiguous();
  const at::MemoryFormat format = conv2d_gradient_memory_format(weight_);
  at::Tensor grad_input = at::empty(input_size, weight.options().memory_format(stored_format(route, format)));
  if (grad_input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "conv2d_backward_input_cuda", [&] {
      Conv2dKernels<scalar_t>::backward_input(route, g, grad_output, weight, grad_input);
    });
  }
  return in_op_format(grad_input, route, format);
}

at::Tensor conv2d_backward_weight_cuda(
    const at::Tensor& grad_output_,
    const at::Tensor& input_,
    c10::IntArrayRef weight_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  const Conv2dGeometry g =
      checked_conv2d_backward_weight(grad_output_, input_, weight_size, stride, padding, dilation, groups);
  const DeviceGuard device_guard(input_.device());
  const Conv2dRoute route = conv2d_route(g, Conv2dPass::kBackwardWeight, input_.scalar_type());
  const at::Tensor input = input_.contiguous(read_format(route));
  const at::Tensor grad_output = grad_output_.contiguous(read_format(route));
  const at::MemoryFormat format = conv2d_gradient_memory_format(input_);

  at::Tensor grad_weight = at::empty(weight_size, input.options());
  if (grad_weight.numel() == 0) {  // no input channels
    return in_memory_format(grad_weight, format);
  }
  if (g.batch == 0) {
    return in_memory_format(grad_weight.zero_(), format);
  }
  if (route == Conv2dRoute::kChannelsLastGather) {
    // The gradient with its taps ordered (kH, kW, C_in / groups), as the input's are.
    at::Tensor permuted = at::empty({g.out_channels, g.kernel_h, g.kernel_w, g.in_channels_per_group()},
                                    input.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_backward_weight_cuda", [&] {
      Conv2dKernels<scalar_t>::backward_weight(route, g, grad_output, input, permuted);
    });
    // (C_out, C_in / groups, kH, kW) with channels-last strides exactly.
    const at::Tensor taps_last = permuted.permute({0, 3, 1, 2});
    return format == at::MemoryFormat::ChannelsLast ? taps_last : grad_weight.copy_(taps_last);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_backward_weight_cuda", [&] {
    Conv2dKernels<scalar_t>::backward_weight(route, g, grad_output, input, grad_weight);
  });
  return in_memory_format(grad_weight, format);
}

// One block per channel sums grad_output over batch and space. Each thread
// adds a fixed, strided subset of the channel's values, then the block adds
// the 256 partial sums as a tree, so the order of every addition is fixed:
// no atomics, bitwise reproducible. The sum runs in double for every dtype,
// as on the CPU; the kernel is bound by memory traffic, not arithmetic.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
bias_grad_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output, int64_t batch, int64_t channels,
                 int64_t plane, gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_bias) {
  __shared__ shared_array<double, kThreads> partial;
  const int64_t c = blockIdx.x;
  // Sample by sample, so that no index needs a (64-bit) division.
  double sum = 0.0;
  for (int64_t n = 0; n < batch; ++n) {
    const gpu_ptr<const scalar_t> x = grad_output + (n * channels + c) * plane;
    for (int64_t i = threadIdx.x; i < plane; i += kThreads) {
      sum += static_cast<double>(x[i]);
    }
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) {
      partial[threadIdx.x] += partial[threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    grad_bias[c] = static_cast<scalar_t>(partial[0]);
  }
}

at::Tensor conv2d_backward_bias_cuda(const at::Tensor& grad_output_) {
  check_floating_4d(grad_output_, "conv2d_backward_bias", "grad_output");
  const DeviceGuard device_guard(grad_output_.device());
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t N = grad_output.size(0), C = grad_output.size(1);
  const int64_t L = grad_output.size(2) * grad_output.size(3);
  at::Tensor grad_bias = at::empty({C}, grad_output.options());
  if (C == 0) {
    return grad_bias;
  }
  TORCH_CHECK(C <= 0x7fffffff, "conv2d_backward_bias: too many channels (", C, ")");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "conv2d_backward_bias_cuda", [&] {
    CUSTOM_CONV_LAUNCH(static_cast<unsigned int>(C), kThreads, bias_grad_kernel<scalar_t>)(
        grad_output.const_data_ptr<scalar_t>(), N, C, L, grad_bias.mutable_data_ptr<scalar_t>());
  });
  return grad_bias;
}

}  // namespace

CUSTOM_CONV_GPU_LIBRARY_IMPL(m) {
  m.impl("conv2d_forward", &conv2d_forward_cuda);
  m.impl("conv2d_backward_input", &conv2d_backward_input_cuda);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight_cuda);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_cuda);
}

}  // namespace gpu
}  // namespace custom_conv
