// conv2d on the GPU: forward, and the three backward ops side by side. Every
// layer but a depthwise one (depthwise.cuh) is im2col's product; the chooser
// (choose_cuda_conv2d_algorithm, cuda_conv_uses_implicit_gemm) says which
// kernels. Normally the implicit GEMM of implicit_gemm.cuh, which gathers the
// receptive fields as its tiles load. Otherwise, as below, the same structure
// as the CPU im2col route (../cpu/conv2d_im2col.cpp), per group, with
// K = C_in / groups * kH * kW and a chunk of B samples (L = out_h * out_w):
//   forward          out_g  (C_out/g, B*L) = W_g (C_out/g, K) @ cols_g (K, B*L)
//   backward input   cols_g (K, B*L)       = W_g^T @ grad_out_g, then col2im
//   backward weight  dW_g   (C_out/g, K)  += grad_out_g @ cols_g^T
// im2col/col2im are in im2col.cuh, the products in gemm.cuh: all groups of a
// chunk are one batched GEMM launch. Chunks come from
// Conv2dGeometry::batch_chunk(), so the column buffer is bounded whatever the
// batch size, exactly as on the CPU.
//
// Nothing here uses atomics, so every result is bitwise reproducible: the
// weight gradient is accumulated chunk after chunk by the GEMM itself
// (beta = 1; in float for half and bfloat16), and the bias gradient is a
// fixed-order block reduction.
#include "../conv2d_algorithm.h"
#include "../geometry.h"
#include "../memory_format.h"
#include "common.cuh"
#include "depthwise.cuh"
#include "gemm.cuh"
#include "im2col.cuh"
#include "implicit_gemm.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <type_traits>

namespace custom_conv {
namespace gpu {
namespace {

// The GEMM works on (C_out, B, L) while tensors are (B, C_out, L): one
// transposing copy per chunk. With a single sample per chunk (large layers)
// the two layouts coincide and the copy is skipped.
at::Tensor as_channel_major(const at::Tensor& batch_major) {
  return batch_major.transpose(0, 1);
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
  // The tensor cores' forward that gathers from channels-last memory takes
  // the input so (no copy where it already is); every other route NCHW.
  const bool gathers_channels_last = cuda_conv_gathers_channels_last(g, Conv2dPass::kForward, input_.scalar_type());
  const at::Tensor input =
      gathers_channels_last ? input_.contiguous(at::MemoryFormat::ChannelsLast) : input_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();

  const at::MemoryFormat format = conv2d_memory_format(input_, weight_);
  // The implicit GEMM stores its results in either layout, the other routes NCHW.
  const bool depthwise =
      choose_cuda_conv2d_algorithm(g, Conv2dPass::kForward, input.scalar_type()) == Conv2dAlgorithm::kDepthwise;
  const bool implicit = !depthwise && cuda_conv_uses_implicit_gemm(g);
  const at::MemoryFormat output_format = implicit ? format : at::MemoryFormat::Contiguous;
  const bool output_channels_last = output_format == at::MemoryFormat::ChannelsLast;
  at::Tensor output =
      at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(output_format));
  const int64_t L = g.output_plane();
  const int64_t K = g.col_rows_per_group();
  const int64_t M = g.out_channels_per_group();
  const int64_t chunk = g.batch_chunk(launch_limits().column_budget);
  if (output.numel() == 0) {
    return in_memory_format(output, format);
  }
  if (depthwise) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_forward_cuda", [&] {
      depthwise_forward<scalar_t>(g, input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                  has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr,
                                  output.mutable_data_ptr<scalar_t>());
    });
    return in_memory_format(output, format);
  }
  if (gathers_channels_last) {
    // The weight's taps ordered (kH, kW, C_in / groups), as the input's are.
    const at::Tensor weight_permuted = weight.permute({0, 2, 3, 1}).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_forward_cuda", [&] {
      if constexpr (kTensorCores<scalar_t>) {
        implicit_conv2d_forward_channels_last<scalar_t>(
            g, input.const_data_ptr<scalar_t>(), weight_permuted.const_data_ptr<scalar_t>(),
            has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr, output.mutable_data_ptr<scalar_t>(),
            output_channels_last);
      } else {
        TORCH_CHECK(false, "conv2d: no tensor cores for ", input.scalar_type());
      }
    });
    return in_memory_format(output, format);
  }
  if (implicit) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_forward_cuda", [&] {
      implicit_conv2d_forward<scalar_t>(g, input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                        has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr,
                                        output.mutable_data_ptr<scalar_t>(), output_channels_last,
                                        cuda_gemm_uses_tensor_cores(input.scalar_type()));
    });
    return in_memory_format(output, format);
  }
  at::Tensor cols_buf = at::empty({groups * K * chunk * L}, input.options());
  at::Tensor out_buf = chunk > 1 ? at::empty({g.out_channels * chunk * L}, input.options())
                                 : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_forward_cuda", [&] {
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t B = std::min(chunk, g.batch - n0);
      at::Tensor out_chunk = output.narrow(0, n0, B);
      scalar_t* out = B == 1 ? out_chunk.mutable_data_ptr<scalar_t>()
                             : out_buf.mutable_data_ptr<scalar_t>();
      im2col(input.const_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w,
             g, B, cols_buf.mutable_data_ptr<scalar_t>());

      GemmParams<scalar_t> p;
      p.tensor_cores = cuda_gemm_uses_tensor_cores(input.scalar_type());
      p.batch = groups;
      p.m = M;
      p.n = B * L;
      p.k = K;
      p.a = weight.const_data_ptr<scalar_t>();
      p.lda = K;
      p.batch_stride_a = M * K;
      p.b = cols_buf.const_data_ptr<scalar_t>();
      p.ldb = B * L;
      p.batch_stride_b = K * B * L;
      p.c = out;
      p.ldc = B * L;
      p.batch_stride_c = M * B * L;
      // The bias is added in the GEMM's epilogue rather than in a second pass.
      if (has_bias) {
        p.bias = bias_c.const_data_ptr<scalar_t>();
        p.batch_stride_bias = M;
      }
      gemm(p);

      if (B > 1) {
        out_chunk.view({B, g.out_channels, L})
            .copy_(as_channel_major(out_buf.narrow(0, 0, g.out_channels * B * L)
                                        .view({g.out_channels, B, L})));
      }
    }
  });
  return in_memory_format(output, format);
}

// Copies a chunk of grad_output (B, C_out, L) into the channel-major layout
// (C_out, B, L) the GEMM reads, or returns it as is when B == 1.
at::Tensor channel_major_chunk(const at::Tensor& grad_output, int64_t n0, int64_t B,
                               const Conv2dGeometry& g, const at::Tensor& buf) {
  const at::Tensor chunk = grad_output.narrow(0, n0, B);
  if (B == 1) {
    return chunk;
  }
  const int64_t L = g.output_plane();
  at::Tensor dst = buf.narrow(0, 0, g.out_channels * B * L).view({g.out_channels, B, L});
  dst.copy_(as_channel_major(chunk.view({B, g.out_channels, L})));
  return dst;
}

at::Tensor conv2d_backward_input_cuda(
    const at::Tensor& grad_output_,
    const at::Tensor& weight_,
    c10::IntArrayRef input_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(weight_, "conv2d_backward_input", "weight");
  const Conv2dGeometry g = conv2d_geometry(
      input_size, weight_.sizes(), stride, padding, dilation, groups);
  check_conv2d_grad_output(grad_output_, g, weight_);
  const DeviceGuard device_guard(weight_.device());
  // As the forward: the tensor cores' gather from channels-last memory takes
  // the output gradient so, every other route NCHW.
  const bool gathers_channels_last =
      cuda_conv_gathers_channels_last(g, Conv2dPass::kBackwardInput, weight_.scalar_type());
  const at::Tensor grad_output = gathers_channels_last ? grad_output_.contiguous(at::MemoryFormat::ChannelsLast)
                                                       : grad_output_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  // The implicit GEMM stores the gradient in either layout, the other routes NCHW.
  const at::MemoryFormat format = conv2d_gradient_memory_format(weight_);
  const bool depthwise = choose_cuda_conv2d_algorithm(g, Conv2dPass::kBackwardInput, weight.scalar_type()) ==
                         Conv2dAlgorithm::kDepthwise;
  const bool implicit = !depthwise && (gathers_channels_last || cuda_conv_uses_implicit_gemm(g));
  at::Tensor grad_input =
      at::empty(input_size, weight.options().memory_format(implicit ? format : at::MemoryFormat::Contiguous));
  if (grad_input.numel() == 0) {
    return in_memory_format(grad_input, format);
  }
  if (depthwise) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "conv2d_backward_input_cuda", [&] {
      depthwise_backward_input<scalar_t>(g, grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                         grad_input.mutable_data_ptr<scalar_t>());
    });
    return in_memory_format(grad_input, format);
  }
  if (gathers_channels_last) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "conv2d_backward_input_cuda", [&] {
      if constexpr (kTensorCores<scalar_t>) {
        implicit_conv2d_backward_input_channels_last<scalar_t>(g, weight, grad_output.const_data_ptr<scalar_t>(),
                                                               grad_input);
      } else {
        TORCH_CHECK(false, "conv2d: no tensor cores for ", weight.scalar_type());
      }
    });
    return grad_input;
  }
  if (implicit) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "conv2d_backward_input_cuda", [&] {
      implicit_conv2d_backward_input<scalar_t>(g, weight, grad_output.const_data_ptr<scalar_t>(), grad_input,
                                               cuda_gemm_uses_tensor_cores(weight.scalar_type()));
    });
    return grad_input;
  }
  const int64_t L = g.output_plane();
  const int64_t K = g.col_rows_per_group();
  const int64_t M = g.out_channels_per_group();
  const int64_t chunk = g.batch_chunk(launch_limits().column_budget);
  at::Tensor cols_buf = at::empty({groups * K * chunk * L}, weight.options());
  at::Tensor go_buf = chunk > 1 ? at::empty({g.out_channels * chunk * L}, weight.options())
                                : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "conv2d_backward_input_cuda", [&] {
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t B = std::min(chunk, g.batch - n0);
      const at::Tensor go = channel_major_chunk(grad_output, n0, B, g, go_buf);

      // cols_g = W_g^T @ grad_out_g. W_g is stored (C_out/g, K), so op(A) =
      // A^T is read in place (trans_a) instead of materialising W^T.
      GemmParams<scalar_t> p;
      p.tensor_cores = cuda_gemm_uses_tensor_cores(grad_output.scalar_type());
      p.batch = groups;
      p.m = K;
      p.n = B * L;
      p.k = M;
      p.a = weight.const_data_ptr<scalar_t>();
      p.lda = K;
      p.batch_stride_a = M * K;
      p.trans_a = true;
      p.b = go.const_data_ptr<scalar_t>();
      p.ldb = B * L;
      p.batch_stride_b = M * B * L;
      p.c = cols_buf.mutable_data_ptr<scalar_t>();
      p.ldc = B * L;
      p.batch_stride_c = K * B * L;
      gemm(p);

      col2im(cols_buf.const_data_ptr<scalar_t>(), g, B,
             grad_input.mutable_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w);
    }
  });
  return in_memory_format(grad_input, format);
}

at::Tensor conv2d_backward_weight_cuda(
    const at::Tensor& grad_output_,
    const at::Tensor& input_,
    c10::IntArrayRef weight_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(input_, "conv2d_backward_weight", "input");
  const Conv2dGeometry g = conv2d_geometry(
      input_.sizes(), weight_size, stride, padding, dilation, groups);
  check_conv2d_grad_output(grad_output_, g, input_);
  const DeviceGuard device_guard(input_.device());
  // Both tensors channels-last for the tensor cores' gather from them, else NCHW.
  const bool gathers_channels_last =
      cuda_conv_gathers_channels_last(g, Conv2dPass::kBackwardWeight, input_.scalar_type());
  const at::MemoryFormat layout = gathers_channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor input = input_.contiguous(layout);
  const at::Tensor grad_output = grad_output_.contiguous(layout);
  const at::MemoryFormat format = conv2d_gradient_memory_format(input_);

  at::Tensor grad_weight = at::empty(weight_size, input.options());
  if (grad_weight.numel() == 0) {  // no input channels
    return in_memory_format(grad_weight, format);
  }
  if (g.batch == 0) {
    return in_memory_format(grad_weight.zero_(), format);
  }
  if (choose_cuda_conv2d_algorithm(g, Conv2dPass::kBackwardWeight, input.scalar_type()) ==
      Conv2dAlgorithm::kDepthwise) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_backward_weight_cuda", [&] {
      depthwise_backward_weight<scalar_t>(g, grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                          grad_weight.mutable_data_ptr<scalar_t>());
    });
    return in_memory_format(grad_weight, format);
  }
  if (gathers_channels_last) {
    // The gradient with its taps ordered (kH, kW, C_in / groups), as the input's are.
    at::Tensor permuted = at::empty({g.out_channels, g.kernel_h, g.kernel_w, g.in_channels_per_group()},
                                    input.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_backward_weight_cuda", [&] {
      if constexpr (kTensorCores<scalar_t>) {
        implicit_conv2d_backward_weight_channels_last<scalar_t>(g, grad_output.const_data_ptr<scalar_t>(),
                                                                input.const_data_ptr<scalar_t>(),
                                                                permuted.mutable_data_ptr<scalar_t>());
      } else {
        TORCH_CHECK(false, "conv2d: no tensor cores for ", input.scalar_type());
      }
    });
    // (C_out, C_in / groups, kH, kW) with channels-last strides exactly.
    const at::Tensor taps_last = permuted.permute({0, 3, 1, 2});
    return format == at::MemoryFormat::ChannelsLast ? taps_last : grad_weight.copy_(taps_last);
  }
  if (cuda_conv_uses_implicit_gemm(g)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_backward_weight_cuda", [&] {
      implicit_conv2d_backward_weight<scalar_t>(g, grad_output.const_data_ptr<scalar_t>(),
                                                input.const_data_ptr<scalar_t>(),
                                                grad_weight.mutable_data_ptr<scalar_t>(),
                                                cuda_gemm_uses_tensor_cores(input.scalar_type()));
    });
    return in_memory_format(grad_weight, format);
  }
  const int64_t L = g.output_plane();
  const int64_t K = g.col_rows_per_group();
  const int64_t M = g.out_channels_per_group();
  const int64_t chunk = g.batch_chunk(launch_limits().column_budget);
  at::Tensor cols_buf = at::empty({groups * K * chunk * L}, input.options());
  at::Tensor go_buf = chunk > 1 ? at::empty({g.out_channels * chunk * L}, input.options())
                                : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_backward_weight_cuda", [&] {
    // dW_g (+)= grad_out_g @ cols_g^T, reading cols_g (K, B*L) in place as
    // the transposed operand, into `sum` of type out_t. The first chunk writes
    // the sum (beta = 0: the uninitialised output is never read); later
    // chunks add onto it in the same GEMM, always in chunk order.
    auto accumulate_chunks = [&](auto* sum) {
      using out_t = std::remove_pointer_t<decltype(sum)>;
      for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
        const int64_t B = std::min(chunk, g.batch - n0);
        im2col(input.const_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w,
               g, B, cols_buf.mutable_data_ptr<scalar_t>());
        const at::Tensor go = channel_major_chunk(grad_output, n0, B, g, go_buf);
        GemmParams<scalar_t, out_t> p;
        p.tensor_cores = cuda_gemm_uses_tensor_cores(input.scalar_type());
        p.batch = groups;
        p.m = M;
        p.n = K;
        p.k = B * L;
        p.a = go.const_data_ptr<scalar_t>();
        p.lda = B * L;
        p.batch_stride_a = M * B * L;
        p.b = cols_buf.const_data_ptr<scalar_t>();
        p.ldb = B * L;
        p.batch_stride_b = K * B * L;
        p.trans_b = true;
        p.c = sum;
        p.ldc = K;
        p.batch_stride_c = M * K;
        p.beta = n0 == 0 ? 0 : 1;
        gemm(p);
      }
    };
    // Half and bfloat16 sum in float within a chunk; across chunks too, so
    // that the gradient is rounded to 16 bits once, at the end, however many
    // chunks the batch takes.
    using acc_t = at::opmath_type<scalar_t>;
    if (!std::is_same_v<scalar_t, acc_t> && chunk < g.batch) {
      at::Tensor sum = at::empty(weight_size, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      accumulate_chunks(sum.mutable_data_ptr<acc_t>());
      grad_weight.copy_(sum);
    } else {
      accumulate_chunks(grad_weight.mutable_data_ptr<scalar_t>());
    }
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
