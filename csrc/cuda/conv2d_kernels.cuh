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

// The column-matrix route's sizes and scratch for one call: per group, the
// GEMM's K (column rows) and M (output channels); how many samples a chunk
// unrolls (Conv2dGeometry::batch_chunk); the column buffer for one chunk; and,
// where a chunk holds several samples, a buffer for the output or its
// gradient in the (C_out, B, L) layout the GEMM works in, while tensors are
// (B, C_out, L). With a single sample per chunk (large layers) the two
// layouts coincide and no copy is made.
struct ColumnChunks {
  const Conv2dGeometry& g;
  int64_t L, K, M, chunk;
  at::Tensor cols, channel_major;

  ColumnChunks(const Conv2dGeometry& g_, const at::TensorOptions& options)
      : g(g_),
        L(g.output_plane()),
        K(g.col_rows_per_group()),
        M(g.out_channels_per_group()),
        chunk(g.batch_chunk(launch_limits().column_budget)),
        cols(at::empty({g.groups * K * chunk * L}, options)),
        channel_major(chunk > 1 ? at::empty({g.out_channels * chunk * L}, options) : at::Tensor()) {}

  // f(n0, B) for each chunk of B samples from n0 on, in order.
  template <typename F>
  void for_each(F&& f) const {
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      f(n0, std::min(chunk, g.batch - n0));
    }
  }

  // Samples [n0, n0 + B) of an NCHW input unrolled into `cols` (im2col).
  template <typename T>
  void unroll(const at::Tensor& input, int64_t n0, int64_t B) const {
    im2col(input.const_data_ptr<T>() + sample_offset(n0), g, B, cols.mutable_data_ptr<T>());
  }

  // `cols` folded back into samples [n0, n0 + B) of an NCHW input gradient,
  // overwriting them (col2im: each pixel the sum of the columns that hold it).
  template <typename T>
  void fold(at::Tensor& grad_input, int64_t n0, int64_t B) const {
    col2im(cols.const_data_ptr<T>(), g, B, grad_input.mutable_data_ptr<T>() + sample_offset(n0));
  }

  // The channel-major buffer's first chunk of B samples, (C_out, B, L).
  at::Tensor channel_major_view(int64_t B) const {
    return channel_major.narrow(0, 0, g.out_channels * B * L).view({g.out_channels, B, L});
  }

  // Samples [n0, n0 + B) of grad_output channel-major: copied into the
  // buffer, or, when B == 1, as they are.
  at::Tensor channel_major_chunk(const at::Tensor& grad_output, int64_t n0, int64_t B) const {
    const at::Tensor samples = grad_output.narrow(0, n0, B);
    if (B == 1) {
      return samples;
    }
    at::Tensor dst = channel_major_view(B);
    dst.copy_(samples.view({B, g.out_channels, L}).transpose(0, 1));
    return dst;
  }

 private:
  // Where sample n starts in an NCHW input (or its gradient).
  int64_t sample_offset(int64_t n) const { return n * g.in_channels * g.in_h * g.in_w; }
};

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
      const ColumnChunks c(g, input.options());
      c.for_each([&](int64_t n0, int64_t B) {
        at::Tensor out_chunk = output.narrow(0, n0, B);
        c.unroll<T>(input, n0, B);

        GemmParams<T> p;
        p.tensor_cores = cuda_gemm_uses_tensor_cores(input.scalar_type());
        p.batch = g.groups;
        p.m = c.M;
        p.n = B * c.L;
        p.k = c.K;
        p.a = weight.const_data_ptr<T>();
        p.lda = c.K;
        p.batch_stride_a = c.M * c.K;
        p.b = c.cols.const_data_ptr<T>();
        p.ldb = B * c.L;
        p.batch_stride_b = c.K * B * c.L;
        p.c = B == 1 ? out_chunk.mutable_data_ptr<T>() : c.channel_major.mutable_data_ptr<T>();
        p.ldc = B * c.L;
        p.batch_stride_c = c.M * B * c.L;
        // The bias is added in the GEMM's epilogue rather than in a second pass.
        if (bias.defined()) {
          p.bias = bias.const_data_ptr<T>();
          p.batch_stride_bias = c.M;
        }
        gemm(p);

        if (B > 1) {
          out_chunk.view({B, g.out_channels, c.L}).copy_(c.channel_major_view(B).transpose(0, 1));
        }
      });
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
      const ColumnChunks c(g, weight.options());
      c.for_each([&](int64_t n0, int64_t B) {
        const at::Tensor go = c.channel_major_chunk(grad_output, n0, B);

        // cols_g = W_g^T @ grad_out_g. W_g is stored (C_out/g, K), so op(A) =
        // A^T is read in place (trans_a) instead of materialising W^T.
        GemmParams<T> p;
        p.tensor_cores = cuda_gemm_uses_tensor_cores(grad_output.scalar_type());
        p.batch = g.groups;
        p.m = c.K;
        p.n = B * c.L;
        p.k = c.M;
        p.a = weight.const_data_ptr<T>();
        p.lda = c.K;
        p.batch_stride_a = c.M * c.K;
        p.trans_a = true;
        p.b = go.const_data_ptr<T>();
        p.ldb = B * c.L;
        p.batch_stride_b = c.M * B * c.L;
        p.c = c.cols.mutable_data_ptr<T>();
        p.ldc = B * c.L;
        p.batch_stride_c = c.K * B * c.L;
        gemm(p);

        c.fold<T>(grad_input, n0, B);
      });
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
      const ColumnChunks c(g, input.options());
      // dW_g (+)= grad_out_g @ cols_g^T, reading cols_g (K, B*L) in place as
      // the transposed operand, into `sum` of type out_t. The first chunk writes
      // the sum (beta = 0: the uninitialised output is never read); later
      // chunks add onto it in the same GEMM, always in chunk order.
      auto accumulate_chunks = [&](auto* sum) {
        using out_t = std::remove_pointer_t<decltype(sum)>;
        c.for_each([&](int64_t n0, int64_t B) {
          c.unroll<T>(input, n0, B);
          const at::Tensor go = c.channel_major_chunk(grad_output, n0, B);
          GemmParams<T, out_t> p;
          p.tensor_cores = cuda_gemm_uses_tensor_cores(input.scalar_type());
          p.batch = g.groups;
          p.m = c.M;
          p.n = c.K;
          p.k = B * c.L;
          p.a = go.const_data_ptr<T>();
          p.lda = B * c.L;
          p.batch_stride_a = c.M * B * c.L;
          p.b = c.cols.const_data_ptr<T>();
          p.ldb = B * c.L;
          p.batch_stride_b = c.K * B * c.L;
          p.trans_b = true;
          p.c = sum;
          p.ldc = c.K;
          p.batch_stride_c = c.M * c.K;
          p.beta = n0 == 0 ? 0 : 1;
          gemm(p);
        });
      };
      // Half and bfloat16 sum in float within a chunk; across chunks too, so
      // that the gradient is rounded to 16 bits once, at the end, however many
      // chunks the batch takes.
      using acc_t = at::opmath_type<T>;
      if (!std::is_same_v<T, acc_t> && c.chunk < g.batch) {
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
