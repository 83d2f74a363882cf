// The im2col route: "serialisation" (the README's "The ideas"). Per group g, with
// K = C_in / groups * kH * kW rows per group and a chunk of B samples
// (L = out_h * out_w):
//   forward          out_g  (C_out/g, B*L) = W_g (C_out/g, K) @ cols_g (K, B*L)
//   backward input   cols_g (K, B*L)       = W_g^T @ grad_out_g, then col2im
//   backward weight  dW_g   (C_out/g, K)  += grad_out_g @ cols_g^T
// The backward-input product followed by col2im is exactly the rule
// "convolve the zero-padded output gradient with the kernel rotated by 180°":
// column (oh, ow) of W_g^T @ grad_out_g holds, for every tap (ki, kj), the
// contribution of output (oh, ow) to the input pixel that tap touched, and
// col2im adds them up per input pixel. Gathered per input pixel instead,
// that sum runs over the taps in reverse order, i.e. over the flipped kernel.
// im2col and col2im are in im2col.h, the matrix products in gemm/.
#include "conv2d_routes.h"
#include "gemm/gemm.h"
#include "im2col.h"
#include "parallel.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>

namespace custom_conv {
namespace {

// Scheduling. The batch is cut into chunks whose im2col columns fit in a
// core's cache (kChunkColumns values, about 1 MiB of float32), and the chunks
// are spread over the threads: each thread unrolls its chunk and multiplies
// it with one GEMM while the columns are still in cache, instead of writing a
// large column matrix out to memory and reading it back. That matters most
// for layers with few output channels, whose GEMMs do little work per column.
// Deep layers have small output planes, though, and one sample would make a
// GEMM too thin to run well, so a chunk always spans at least kMinGemmWidth
// output columns; those GEMMs do enough work per column that the columns need
// not stay in cache. Chunks have at most ceil(N / threads) samples so that
// every thread gets one; a single chunk runs on the calling thread and the
// GEMM spreads itself over the threads. When the batch is too small to give
// every thread a chunk kMinGemmWidth wide (deep layers' 2x2 planes), the
// whole batch is one chunk, if its columns fit in kMaxBatchColumns values:
// one GEMM spread over the threads, each reading part of the weights,
// instead of thin GEMMs on every thread each reading all of them.
constexpr int64_t kChunkColumns = int64_t{1} << 18;
constexpr int64_t kMinGemmWidth = 512;
constexpr int64_t kMaxBatchColumns = int64_t{1} << 23;

struct Chunks {
  int64_t size, count;
};

Chunks chunks_for(const Conv2dGeometry& g) {
  const int64_t per_thread = ceil_div(std::max<int64_t>(g.batch, 1), at::get_num_threads());
  const int64_t wide_enough = ceil_div(kMinGemmWidth, std::max<int64_t>(g.output_plane(), 1));
  if (g.batch > 0 && per_thread < wide_enough &&
      g.groups * g.col_rows_per_group() * g.batch * g.output_plane() <= kMaxBatchColumns) {
    return {g.batch, 1};
  }
  const int64_t size = std::min(std::max(g.batch_chunk(kChunkColumns), wide_enough), per_thread);
  return {size, ceil_div(g.batch, size)};
}

int64_t macs_per_chunk(const Conv2dGeometry& g, const Chunks& c) {
  return c.size * g.out_channels * g.col_rows_per_group() * g.output_plane();
}

// The first groups * rows * cols values of a flat scratch buffer, as matrices.
at::Tensor as_matrices(const at::Tensor& buffer, int64_t groups, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, groups * rows * cols).view({groups, rows, cols});
}

// im2col of samples [n0, n0 + count) of an (N, C, H, W) contiguous input,
// as (groups, K, count * L) matrices.
at::Tensor unroll(const at::Tensor& input, int64_t n0, int64_t count, const Conv2dGeometry& g,
                  const at::Tensor& buffer) {
  at::Tensor cols = as_matrices(buffer, g.groups, g.col_rows_per_group(), count * g.output_plane());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "im2col", [&] {
    im2col(input.const_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w, g, count,
           cols.mutable_data_ptr<scalar_t>());
  });
  return cols;
}

// col2im into samples [n0, n0 + count) of an (N, C, H, W) contiguous tensor.
void fold(const at::Tensor& cols, int64_t n0, int64_t count, const Conv2dGeometry& g, at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cols.scalar_type(), "col2im", [&] {
    col2im(cols.const_data_ptr<scalar_t>(), g, count,
           grad_input.mutable_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w);
  });
}

// out[grp] = a[grp] @ b[grp] (+ beta * out[grp]) for every group, plus the
// bias per row when given: the bias rides in the GEMM's store, not in a
// second pass.
void multiply(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = {},
              double beta = 0.0) {
  gemm::matmul(out, a, b, beta, bias);
}

// Samples [n0, n0 + count) of an (N, C, H, W) tensor as the (C, count, L)
// view that the chunk's GEMMs use: one row of count * L values per channel.
at::Tensor channel_major(const at::Tensor& t, int64_t n0, int64_t count, int64_t L) {
  return t.narrow(0, n0, count).view({count, t.size(1), L}).transpose(0, 1);
}

// grad_output of samples [n0, n0 + B) as (groups, C_out/g, B * L) matrices:
// a view of sample n0 when B is 1, else a channel-major copy into `buffer`.
at::Tensor grad_output_matrices(const Conv2dGeometry& g, const at::Tensor& grad_output, int64_t n0, int64_t B,
                                const at::Tensor& buffer) {
  const int64_t Co = g.out_channels_per_group(), L = g.output_plane();
  if (B == 1) {
    return grad_output[n0].view({g.groups, Co, L});
  }
  at::Tensor go = as_matrices(buffer, g.groups, Co, B * L);
  go.view({g.out_channels, B, L}).copy_(channel_major(grad_output, n0, B, L));
  return go;
}

}  // namespace

const char* conv2d_im2col_refusal(const Conv2dGeometry&, Conv2dPass, at::ScalarType) {
  return nullptr;
}

void append_im2col_constants(RouteConstants& out) {
  out.emplace_back("weight_partials", kWeightPartials);
  out.emplace_back("partials_budget", kPartialsBudget);
  out.emplace_back("min_task_macs", kMinTaskMacs);
  out.emplace_back("im2col.chunk_columns", kChunkColumns);
  out.emplace_back("im2col.min_gemm_width", kMinGemmWidth);
  out.emplace_back("im2col.max_batch_columns", kMaxBatchColumns);
}

void conv2d_im2col_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight_,
                           const at::Tensor& bias, at::Tensor& output) {
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group(), L = g.output_plane();
  const at::Tensor weight = weight_.view({g.groups, Co, K});
  const at::Tensor bias_rows = bias.defined() ? bias.view({g.groups, Co}) : at::Tensor();
  const Chunks chunks = chunks_for(g);
  parallel_for_with_state(chunks.count, macs_per_chunk(g, chunks), [&](int64_t begin, int64_t end) {
    const at::Tensor cols_buf = at::empty({g.groups * K * chunks.size * L}, input.options());
    const at::Tensor out_buf = chunks.size > 1 ? at::empty({g.out_channels * chunks.size * L}, input.options())
                                               : at::Tensor();
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = c * chunks.size, B = std::min(chunks.size, g.batch - n0);
      const at::Tensor cols = unroll(input, n0, B, g, cols_buf);
      if (B == 1) {
        multiply(output[n0].view({g.groups, Co, L}), weight, cols, bias_rows);
      } else {
        // The GEMM yields (C_out, B * L); the output wants (B, C_out, L).
        const at::Tensor out = as_matrices(out_buf, g.groups, Co, B * L);
        multiply(out, weight, cols, bias_rows);
        channel_major(output, n0, B, L).copy_(out.view({g.out_channels, B, L}));
      }
    }
  });
}

void conv2d_im2col_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                  const at::Tensor& weight, at::Tensor& grad_input) {
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group(), L = g.output_plane();
  // W_g^T: (K, C_out/g), a transposed view; the GEMM reads it without a copy.
  const at::Tensor weight_t = weight.view({g.groups, Co, K}).transpose(1, 2);
  const Chunks chunks = chunks_for(g);
  parallel_for_with_state(chunks.count, macs_per_chunk(g, chunks), [&](int64_t begin, int64_t end) {
    const at::Tensor cols_buf = at::empty({g.groups * K * chunks.size * L}, weight.options());
    const at::Tensor go_buf = chunks.size > 1 ? at::empty({g.out_channels * chunks.size * L}, weight.options())
                                              : at::Tensor();
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = c * chunks.size, B = std::min(chunks.size, g.batch - n0);
      const at::Tensor go = grad_output_matrices(g, grad_output, n0, B, go_buf);
      const at::Tensor cols = as_matrices(cols_buf, g.groups, K, B * L);
      multiply(cols, weight_t, go);
      fold(cols, n0, B, g, grad_input);
    }
  });
}

void conv2d_im2col_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                   const at::Tensor& grad_output, at::Tensor& grad_weight) {
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group(), L = g.output_plane();
  const Chunks chunks = chunks_for(g);
  const int64_t blocks = std::max<int64_t>(
      1, std::min({chunks.count, kWeightPartials, kPartialsBudget / (g.out_channels * K)}));
  // Each block's partial holds dW_g (C_out/g, K) = grad_out_g @ cols_g^T,
  // in the weight's own layout; the GEMM reads cols_g^T in place.
  const at::Tensor partials = at::empty({blocks, g.groups, Co, K}, input.options());
  const int64_t block_macs = macs_per_chunk(g, chunks) * ceil_div(chunks.count, blocks);
  parallel_for_with_state(blocks, block_macs, [&](int64_t begin, int64_t end) {
    const at::Tensor cols_buf = at::empty({g.groups * K * chunks.size * L}, input.options());
    const at::Tensor go_buf = chunks.size > 1 ? at::empty({g.out_channels * chunks.size * L}, input.options())
                                              : at::Tensor();
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * chunks.count / blocks, last = (block + 1) * chunks.count / blocks;
      for (int64_t c = first; c < last; ++c) {
        const int64_t n0 = c * chunks.size, B = std::min(chunks.size, g.batch - n0);
        const at::Tensor cols = unroll(input, n0, B, g, cols_buf);
        const at::Tensor go = grad_output_matrices(g, grad_output, n0, B, go_buf);
        // The block's first chunk writes its partial (beta = 0, so no
        // zero-fill is needed); later chunks add onto it inside the GEMM.
        multiply(partials[block], go, cols.transpose(1, 2), {}, c == first ? 0.0 : 1.0);
      }
    }
  });
  // The partials added in block order.
  at::Tensor gw = grad_weight.view({g.groups, Co, K});
  if (blocks == 1) {
    gw.copy_(partials[0]);
    return;
  }
  at::add_out(gw, partials[0], partials[1]);
  for (int64_t block = 2; block < blocks; ++block) {
    gw.add_(partials[block]);
  }
}

}  // namespace custom_conv
