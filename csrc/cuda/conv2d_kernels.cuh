// conv2d's launches for one dtype, by route (conv2d_kernels.h), instantiated
// once per dtype by conv2d_kernels_<dtype>.cu. The column-matrix route is
// the same structure as the CPU im2col route (../cpu/conv2d_im2col.cpp), per
// group, with K = C_in / groups * kH * kW and a chunk of B samples
// (L = out_h * out_w):
//   forward          out_g  (C_out/g, B*L) = W_g (C_out/g, K) @ cols_g (K, B*L)
//   backward input   cols_g (K, B*L)       = W_g^T @ grad_out_g, then col2im
//   backward weight  dW_g   (C_out/g, K)  += grad_out_g @ cols_g^T
// im2col/col2im are in im2col.cuh, the products in gemm.cuh: all groups of a
// chunk are one batched GEMM launch. Chunks come from
// Conv2dGeometry::batch_chunk(), so the column buffer is bounded whatever the
// batch size, exactly as on the CPU. The weight gradient is accumulated chunk
// after chunk by the GEMM itself (beta = 1; in float for half and bfloat16).
#pragma once

#include "../conv2d_algorithm.h"
#include "common.cuh"
#include "conv2d_kernels.h"
#include "depthwise.cuh"
#include "gemm.cuh"
#include "im2col.cuh"
#include "implicit_gemm.cuh"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <type_traits>

namespace custom_conv {
namespace gpu {

// The GEMM works on (C_out, B, L) while tensors are (B, C_out, L): one
// transposing copy per chunk. With a single sample per chunk (large layers)
// the two layouts coincide and the copy is skipped.
inline at::Tensor as_channel_major(const at::Tensor& batch_major) {
  return batch_major.transpose(0, 1);
}

// Copies a chunk of grad_output (B, C_out, L) into the channel-major layout
// (C_out, B, L) the GEMM reads, or returns it as is when B == 1.
inline at::Tensor channel_major_chunk(const at::Tensor& grad_output, int64_t n0, int64_t B, const Conv2dGeometry& g,
                                      const at::Tensor& buf) {
  const at::Tensor chunk = grad_output.narrow(0, n0, B);
  if (B == 1) {
    return chunk;
  }
  const int64_t L = g.output_plane();
  at::Tensor dst = buf.narrow(0, 0, g.out_channels * B * L).view({g.out_channels, B, L});
  dst.copy_(as_channel_major(chunk.view({B, g.out_channels, L})));
  return dst;
}

// A result the implicit GEMM stores in either layout: which one it was given.
// (Where a tensor is contiguous in both, both place every element alike.)
inline bool stored_channels_last(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

template <typename T>
void Conv2dKernels<T>::forward(Conv2dRoute route, const Conv2dGeometry& g, const at::Tensor& input,
                               const at::Tensor& weight, const at::Tensor& bias, at::Tensor& output) {
  const gpu_ptr<const T> bias_data = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  switch (route) {
    case Conv2dRoute::kDepthwise:
      depthwise_forward<T>(g, input.const_data_ptr<T>(), weight.const_data_ptr<T>(), bias_data,
                           output.mutable_data_ptr<T>());
      return;
    case Conv2dRoute::kChannelsLastGather:
      if constexpr (kTensorCores<T>) {
        // The weight's taps ordered (kH, kW, C_in / groups), as the input's are.
        const at::Tensor weight_permuted = weight.permute({0, 2, 3, 1}).contiguous();
        implicit_conv2d_forward_channels_last<T>(g, input.const_data_ptr<T>(), weight_permuted.const_data_ptr<T>(),
                                                 bias_data, output.mutable_data_ptr<T>(),
                                                 stored_channels_last(output));
        return;
      }
      break;
    case Conv2dRoute::kImplicitGemm:
      implicit_conv2d_forward<T>(g, input.const_data_ptr<T>(), weight.const_data_ptr<T>(), bias_data,
                                 output.mutable_data_ptr<T>(), stored_channels_last(output),
                                 cuda_gemm_uses_tensor_cores(input.scalar_type()));
      return;
    case Conv2dRoute::kColumnMatrix: {
      const int64_t L = g.output_plane();
      const int64_t K = g.col_rows_per_group();
      const int64_t M = g.out_channels_per_group();
      const int64_t chunk = g.batch_chunk(launch_limits().column_budget);
      at::Tensor cols_buf = at::empty({g.groups * K * chunk * L}, input.options());
      at::Tensor out_buf = chunk > 1 ? at::empty({g.out_channels * chunk * L}, input.options()) : at::Tensor();
      for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
        const int64_t B = std::min(chunk, g.batch - n0);
        at::Tensor out_chunk = output.narrow(0, n0, B);
        T* out = B == 1 ? out_chunk.mutable_data_ptr<T>() : out_buf.mutable_data_ptr<T>();
        im2col(input.const_data_ptr<T>() + n0 * g.in_channels * g.in_h * g.in_w, g, B,
               cols_buf.mutable_data_ptr<T>());

        GemmParams<T> p;
        p.tensor_cores = cuda_gemm_uses_tensor_cores(input.scalar_type());
        p.batch = g.groups;
        p.m = M;
        p.n = B * L;
        p.k = K;
        p.a = weight.const_data_ptr<T>();
        p.lda = K;
        p.batch_stride_a = M * K;
        p.b = cols_buf.const_data_ptr<T>();
        p.ldb = B * L;
        p.batch_stride_b = K * B * L;
        p.c = out;
        p.ldc = B * L;
        p.batch_stride_c = M * B * L;
        // The bias is added in the GEMM's epilogue rather than in a second pass.
        if (bias.defined()) {
          p.bias = bias.const_data_ptr<T>();
          p.batch_stride_bias = M;
        }
        gemm(p);

        if (B > 1) {
          out_chunk.view({B, g.out_channels, L})
              .copy_(as_channel_major(out_buf.narrow(0, 0, g.out_channels * B * L).view({g.out_channels, B, L})));
        }
      }
      return;
    }
  }
  TORCH_CHECK(false, "conv2d: no tensor cores for ", input.scalar_type());
}

template <typename T>
void Conv2dKernels<T>::backward_input(Conv2dRoute route, const Conv2dGeometry& g, const at::Tensor& grad_output,
                                      const at::Tensor& weight, at::Tensor& grad_input) {
  switch (route) {
    case Conv2dRoute::kDepthwise:
      depthwise_backward_input<T>(g, grad_output.const_data_ptr<T>(), weight.const_data_ptr<T>(),
                                  grad_input.mutable_data_ptr<T>());
      return;
    case Conv2dRoute::kChannelsLastGather:
      if constexpr (kTensorCores<T>) {
        implicit_conv2d_backward_input_channels_last<T>(g, weight, grad_output.const_data_ptr<T>(), grad_input);
        return;
      }
      break;
    case Conv2dRoute::kImplicitGemm:
      implicit_conv2d_backward_input<T>(g, weight, grad_output.const_data_ptr<T>(), grad_input,
                                        cuda_gemm_uses_tensor_cores(weight.scalar_type()));
      return;
    case Conv2dRoute::kColumnMatrix: {
      const int64_t L = g.output_plane();
      const int64_t K = g.col_rows_per_group();
      const int64_t M = g.out_channels_per_group();
      const int64_t chunk = g.batch_chunk(launch_limits().column_budget);
      at::Tensor cols_buf = at::empty({g.groups * K * chunk * L}, weight.options());
      at::Tensor go_buf = chunk > 1 ? at::empty({g.out_channels * chunk * L}, weight.options()) : at::Tensor();
      for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
        const int64_t B = std::min(chunk, g.batch - n0);
        const at::Tensor go = channel_major_chunk(grad_output, n0, B, g, go_buf);

        // cols_g = W_g^T @ grad_out_g. W_g is stored (C_out/g, K), so op(A) =
        // A^T is read in place (trans_a) instead of materialising W^T.
        GemmParams<T> p;
        p.tensor_cores = cuda_gemm_uses_tensor_cores(grad_output.scalar_type());
        p.batch = g.groups;
        p.m = K;
        p.n = B * L;
        p.k = M;
        p.a = weight.const_data_ptr<T>();
        p.lda = K;
        p.batch_stride_a = M * K;
        p.trans_a = true;
        p.b = go.const_data_ptr<T>();
        p.ldb = B * L;
        p.batch_stride_b = M * B * L;
        p.c = cols_buf.mutable_data_ptr<T>();
        p.ldc = B * L;
        p.batch_stride_c = K * B * L;
        gemm(p);

        col2im(cols_buf.const_data_ptr<T>(), g, B,
               grad_input.mutable_data_ptr<T>() + n0 * g.in_channels * g.in_h * g.in_w);
      }
      return;
    }
  }
  TORCH_CHECK(false, "conv2d: no tensor cores for ", weight.scalar_type());
}

template <typename T>
void Conv2dKernels<T>::backward_weight(Conv2dRoute route, const Conv2dGeometry& g, const at::Tensor& grad_output,
                                       const at::Tensor& input, at::Tensor& grad_weight) {
  switch (route) {
    case Conv2dRoute::kDepthwise:
      depthwise_backward_weight<T>(g, grad_output.const_data_ptr<T>(), input.const_data_ptr<T>(),
                                   grad_weight.mutable_data_ptr<T>());
      return;
    case Conv2dRoute::kChannelsLastGather:
      if constexpr (kTensorCores<T>) {
        implicit_conv2d_backward_weight_channels_last<T>(g, grad_output.const_data_ptr<T>(),
                                                         input.const_data_ptr<T>(), grad_weight.mutable_data_ptr<T>());
        return;
      }
      break;
    case Conv2dRoute::kImplicitGemm:
      implicit_conv2d_backward_weight<T>(g, grad_output.const_data_ptr<T>(), input.const_data_ptr<T>(),
                                         grad_weight.mutable_data_ptr<T>(),
                                         cuda_gemm_uses_tensor_cores(input.scalar_type()));
      return;
    case Conv2dRoute::kColumnMatrix: {
      const int64_t L = g.output_plane();
      const int64_t K = g.col_rows_per_group();
      const int64_t M = g.out_channels_per_group();
      const int64_t chunk = g.batch_chunk(launch_limits().column_budget);
      at::Tensor cols_buf = at::empty({g.groups * K * chunk * L}, input.options());
      at::Tensor go_buf = chunk > 1 ? at::empty({g.out_channels * chunk * L}, input.options()) : at::Tensor();
      // dW_g (+)= grad_out_g @ cols_g^T, reading cols_g (K, B*L) in place as
      // the transposed operand, into `sum` of type out_t. The first chunk writes
      // the sum (beta = 0: the uninitialised output is never read); later
      // chunks add onto it in the same GEMM, always in chunk order.
      auto accumulate_chunks = [&](auto* sum) {
        using out_t = std::remove_pointer_t<decltype(sum)>;
        for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
          const int64_t B = std::min(chunk, g.batch - n0);
          im2col(input.const_data_ptr<T>() + n0 * g.in_channels * g.in_h * g.in_w, g, B,
                 cols_buf.mutable_data_ptr<T>());
          const at::Tensor go = channel_major_chunk(grad_output, n0, B, g, go_buf);
          GemmParams<T, out_t> p;
          p.tensor_cores = cuda_gemm_uses_tensor_cores(input.scalar_type());
          p.batch = g.groups;
          p.m = M;
          p.n = K;
          p.k = B * L;
          p.a = go.const_data_ptr<T>();
          p.lda = B * L;
          p.batch_stride_a = M * B * L;
          p.b = cols_buf.const_data_ptr<T>();
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
      using acc_t = at::opmath_type<T>;
      if (!std::is_same_v<T, acc_t> && chunk < g.batch) {
        at::Tensor sum = at::empty(grad_weight.sizes(), input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        accumulate_chunks(sum.mutable_data_ptr<acc_t>());
        grad_weight.copy_(sum);
      } else {
        accumulate_chunks(grad_weight.mutable_data_ptr<T>());
      }
      return;
    }
  }
  TORCH_CHECK(false, "conv2d: no tensor cores for ", input.scalar_type());
}

}  // namespace gpu
}  // namespace custom_conv
