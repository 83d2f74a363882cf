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
#include "isa.h"
#include "parallel.h"
#include "scratch.h"
#include "transpose.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace custom_conv {
namespace {

// Scheduling. The batch is cut into chunks whose im2col columns fit in a
// core's cache (kChunkColumns values, about 1 MiB of float32), and the chunks
// are spread over the threads: each thread unrolls its chunk and multiplies
// it with one GEMM while the columns are still in cache, instead of writing a
// large column matrix out to memory and reading it back. That matters most
// for layers with few output channels, whose GEMMs do little work per column.
// Deep layers have small output planes, though, and one sample would make a
// GEMM too thin to run well, so a chunk spans at least kMinGemmWidth output
// columns (half as many where that evens out the threads' chunks); those
// GEMMs do enough work per column that the columns need not stay in cache.
// Chunks have at most ceil(N / threads) samples so that every thread gets
// one; a single chunk runs on the calling thread and the GEMM spreads itself
// over the threads. When the batch is too small to give
// every thread a chunk kMinGemmWidth wide (deep layers' 2x2 planes), the
// whole batch is one chunk, if its columns fit in kMaxBatchColumns values:
// one GEMM spread over the threads, each reading part of the weights,
// instead of thin GEMMs on every thread each reading all of them.
constexpr int64_t kChunkColumns = int64_t{1} << 18;
constexpr int64_t kMinGemmWidth = 512;
constexpr int64_t kMaxBatchColumns = int64_t{1} << 23;

// A lone sample's forward (batch 1) is split by output channels instead,
// in ranges of at least this many: every thread unrolls the whole sample
// itself and multiplies its own rows of the weights
// (conv2d_im2col_forward).
constexpr int64_t kMinSplitChannels = 16;

struct Chunks {
  int64_t size, count;

  // Chunk c's first sample, and how many it holds of a batch of `batch`.
  int64_t first(int64_t c) const { return c * size; }
  int64_t samples(int64_t c, int64_t batch) const { return std::min(size, batch - c * size); }
};

// `partial_sums`: the weight gradient's, whose chunks each add one more
// partial sum of the whole gradient; its chunks keep their full width.
Chunks chunks_for(const Conv2dGeometry& g, bool partial_sums = false) {
  const int64_t per_thread = ceil_div(std::max<int64_t>(g.batch, 1), at::get_num_threads());
  const int64_t wide_enough = ceil_div(kMinGemmWidth, std::max<int64_t>(g.output_plane(), 1));
  if (g.batch > 0 && per_thread < wide_enough &&
      g.groups * g.col_rows_per_group() * g.batch * g.output_plane() <= kMaxBatchColumns) {
    return {g.batch, 1};
  }
  int64_t size = std::min(std::max(g.batch_chunk(kChunkColumns), wide_enough), per_thread);
  // Then as many chunks as a multiple of the threads, where the chunks stay
  // wide enough: 3 chunks on 2 threads left one idle for a third of the
  // time (ResNet-20's 32-64/2 input gradient). Half of kMinGemmWidth is
  // wide enough for that: ResNet-18's 256-512 /2 @14 at batch 32, 4 chunks
  // of 8 samples (392 columns) instead of 3 of 11, forward 27 -> 21-23 ms,
  // input gradient 27 -> 21-22; its weight gradient, with 4 partial sums
  // instead of 3, 26 -> 29, so there the chunks stay full width.
  const int64_t threads = at::get_num_threads();
  if (g.batch > 0) {
    const int64_t balanced = ceil_div(g.batch, ceil_div(ceil_div(g.batch, size), threads) * threads);
    if ((partial_sums ? balanced : 2 * balanced) >= wide_enough) size = balanced;
  }
  return {size, ceil_div(g.batch, size)};
}

int64_t macs_per_chunk(const Conv2dGeometry& g, const Chunks& c) {
  return c.size * g.out_channels * g.col_rows_per_group() * g.output_plane();
}

// One task's scratch for its chunks: the column matrices of a chunk and,
// where a chunk holds several samples, room for the output (or its gradient)
// in the (C_out, B * L) layout of the GEMM's result (or operand).
struct ChunkScratch {
  at::Tensor cols, channel_major;

  ChunkScratch(const Conv2dGeometry& g, const Chunks& chunks, const at::TensorOptions& options)
      : cols(scratch_empty({g.groups * g.col_rows_per_group() * chunks.size * g.output_plane()}, options)),
        channel_major(chunks.size > 1 ? scratch_empty({g.out_channels * chunks.size * g.output_plane()}, options)
                                      : at::Tensor()) {}
};

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

// Samples [n0, n0 + count) of an (N, C, H, W) contiguous tensor and the
// (C, count, L) matrices the chunk's GEMMs use, one row of count * L values
// per channel: copied from the tensor (to_rows) or back into it. Each is a
// memcpy per (channel, sample) plane; ATen's permuted copy took 9% of a 1x1
// layer's weight gradient.
void planes_to_rows(const at::Tensor& t, int64_t n0, int64_t count, int64_t L, const at::Tensor& rows,
                    bool to_rows) {
  const int64_t C = t.size(1), bytes = L * static_cast<int64_t>(t.element_size());
  char* tensor = static_cast<char*>(t.data_ptr()) + n0 * C * bytes;
  char* matrix = static_cast<char*>(rows.data_ptr());
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t n = 0; n < count; ++n) {
      char* plane = tensor + (n * C + c) * bytes;
      char* row = matrix + (c * count + n) * bytes;
      std::memcpy(to_rows ? row : plane, to_rows ? plane : row, bytes);
    }
  }
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
  planes_to_rows(grad_output, n0, B, L, go, /*to_rows=*/true);
  return go;
}

// Tiny planes: a deep layer's 2x2 output plane with padding 1 reads
// padding with 5 of a 3x3 kernel's 9 taps, and im2col multiplies those
// zeros like any other value. There, output positions are grouped by the
// taps that reach the image (a 2x2 plane: four groups of one position, four
// taps each), and only those pairs are multiplied: 2.25x fewer multiply-adds
// on VGG's 512-channel 2x2 layers. Used where the padding makes up more than
// 1 - kMaxGroupedUseful of the column values, the groups are few, and the
// whole batch's columns fit in kMaxBatchColumns. The weight gradient runs a
// product per group; the forward and the input gradient a product per tap
// (tap_positions), so that the weights, which dominate these layers (9.4 MB
// against 0.3 MB of activations), are read once and in place.
constexpr double kMaxGroupedUseful = 0.6;
constexpr int64_t kMaxTapGroups = 16;
// Each group's product reads its weights, gathered for it, once per column:
// with fewer columns than this (batch 1), gathering them costs more than
// the padding's multiply-adds, and the plain product reads them once.
constexpr int64_t kMinGroupColumns = 16;

// Output positions that read the image through the same taps.
struct TapGroup {
  std::vector<int64_t> taps;       // ki * kW + kj
  std::vector<int64_t> positions;  // oh * out_w + ow
  at::Tensor input_index;          // (taps x positions): the input pixel h * W + w each pair reads
};

std::vector<TapGroup> tap_groups(const Conv2dGeometry& g) {
  std::vector<TapGroup> groups;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      std::vector<int64_t> taps;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
        for (int64_t kj = 0; kj < g.kernel_w && ih >= 0 && ih < g.in_h; ++kj) {
          const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
          if (iw >= 0 && iw < g.in_w) taps.push_back(ki * g.kernel_w + kj);
        }
      }
      auto same = std::find_if(groups.begin(), groups.end(), [&](const TapGroup& t) { return t.taps == taps; });
      if (same == groups.end()) same = groups.insert(groups.end(), TapGroup{taps, {}, {}});
      same->positions.push_back(oh * g.out_w + ow);
    }
  }
  for (TapGroup& t : groups) {
    t.input_index = at::empty({static_cast<int64_t>(t.taps.size()), static_cast<int64_t>(t.positions.size())},
                              at::kLong);
    int64_t* index = t.input_index.mutable_data_ptr<int64_t>();
    for (const int64_t tap : t.taps) {
      for (const int64_t p : t.positions) {
        const int64_t ih = p / g.out_w * g.stride_h - g.pad_h + tap / g.kernel_w * g.dilation_h;
        const int64_t iw = p % g.out_w * g.stride_w - g.pad_w + tap % g.kernel_w * g.dilation_w;
        *index++ = ih * g.in_w + iw;
      }
    }
  }
  return groups;
}

// Whether this layer runs by tap groups, and if so the groups.
std::vector<TapGroup> grouped_plan(const Conv2dGeometry& g) {
  const int64_t L = g.output_plane(), taps = g.kernel_h * g.kernel_w;
  if (g.batch == 0 || L * taps > 256 ||
      g.groups * g.col_rows_per_group() * g.batch * L > kMaxBatchColumns) {
    return {};
  }
  std::vector<TapGroup> groups = tap_groups(g);
  int64_t useful = 0, fewest = L;
  for (const TapGroup& t : groups) {
    useful += static_cast<int64_t>(t.taps.size() * t.positions.size());
    fewest = std::min(fewest, static_cast<int64_t>(t.positions.size()));
  }
  if (static_cast<int64_t>(groups.size()) > kMaxTapGroups || useful > kMaxGroupedUseful * L * taps ||
      g.batch * fewest < kMinGroupColumns) {
    return {};
  }
  // Taps of no group (every position reads padding there) get no gradient
  // from any group: they stay zero, as they should.
  return groups;
}

// A group's columns, (groups, taps * C_in/g, N * positions): row s * Ci +
// ci of a group holds, at column n * P + p, the input pixel index[s][p] of
// sample n, channel ci, the value tap s reads for position p.
template <typename scalar_t>
void gather_columns(const Conv2dGeometry& g, const scalar_t* input, const int64_t* index, int64_t S, int64_t P,
                    scalar_t* cols) {
  const int64_t plane = g.in_h * g.in_w, N = g.batch, Ci = g.in_channels_per_group();
  at::parallel_for(0, g.in_channels * S, plane_grain(N * P), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r / S, s = r % S, grp = c / Ci;
      scalar_t* row = cols + ((grp * S + s) * Ci + c % Ci) * N * P;
      const int64_t* at = index + s * P;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* x = input + (n * g.in_channels + c) * plane;
        for (int64_t p = 0; p < P; ++p) row[n * P + p] = x[at[p]];
      }
    }
  });
}

// The reverse for the weight gradient: a group's (groups, C_out/g, taps *
// C_in/g) product added into the gradient's taps, in the weight's layout.
void add_group_weights(const Conv2dGeometry& g, const TapGroup& t, const at::Tensor& part, at::Tensor& grad_weight) {
  const int64_t Ci = g.in_channels_per_group(), taps = g.kernel_h * g.kernel_w;
  const int64_t S = static_cast<int64_t>(t.taps.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, part.scalar_type(), "add_group_weights", [&] {
    const scalar_t* src = part.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.out_channels, plane_grain(S * Ci), [&](int64_t begin, int64_t end) {
      for (int64_t co = begin; co < end; ++co) {
        for (int64_t ci = 0; ci < Ci; ++ci) {  // an input channel's taps written together
          scalar_t* kernel = gw + (co * Ci + ci) * taps;
          for (int64_t s = 0; s < S; ++s) kernel[t.taps[s]] += src[(co * S + s) * Ci + ci];
        }
      }
    });
  });
}

// A group's columns as a tensor (see gather_columns).
at::Tensor group_columns(const Conv2dGeometry& g, const at::Tensor& input, const TapGroup& t) {
  const int64_t S = t.input_index.size(0), P = t.input_index.size(1);
  at::Tensor cols = scratch_empty({g.groups, S * g.in_channels_per_group(), g.batch * P}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "gather_columns", [&] {
    gather_columns(g, input.const_data_ptr<scalar_t>(), t.input_index.const_data_ptr<int64_t>(), S, P,
                   cols.mutable_data_ptr<scalar_t>());
  });
  return cols;
}

// An (N, C, L) tensor's positions of the group, as (groups, C/g, N * positions).
at::Tensor group_positions(const at::Tensor& t, int64_t groups, const TapGroup& tg) {
  const int64_t N = t.size(0), C = t.size(1), P = static_cast<int64_t>(tg.positions.size());
  at::Tensor out = scratch_empty({groups, C / groups, N * P}, t.options());
  const at::Tensor view = t.reshape({N, C, -1});
  for (int64_t j = 0; j < P; ++j) {  // few positions: one strided copy each
    out.view({C, N, P}).select(2, j).copy_(view.select(2, tg.positions[j]).t());
  }
  return out;
}

// Per tap, the output positions it reaches (those of every group that
// holds it, in order) and the input pixel it reads for each.
struct TapPositions {
  int64_t tap;
  std::vector<int64_t> positions, input;
};

std::vector<TapPositions> tap_positions(const Conv2dGeometry& g, const std::vector<TapGroup>& plan) {
  std::vector<TapPositions> out;
  for (int64_t tap = 0; tap < g.kernel_h * g.kernel_w; ++tap) {
    TapPositions t{tap, {}, {}};
    for (const TapGroup& group : plan) {
      if (std::find(group.taps.begin(), group.taps.end(), tap) != group.taps.end()) {
        t.positions.insert(t.positions.end(), group.positions.begin(), group.positions.end());
      }
    }
    std::sort(t.positions.begin(), t.positions.end());
    for (const int64_t p : t.positions) {
      const int64_t ih = p / g.out_w * g.stride_h - g.pad_h + tap / g.kernel_w * g.dilation_h;
      const int64_t iw = p % g.out_w * g.stride_w - g.pad_w + tap % g.kernel_w * g.dilation_w;
      t.input.push_back(ih * g.in_w + iw);
    }
    if (!t.positions.empty()) out.push_back(std::move(t));
  }
  return out;
}

// For one tap: from an (N, C, L) tensor, the values at its positions (or its
// input pixels) as (groups, C/g, P * N) rows, position-major: row c, column
// j * N + n holds t[n][c][at[j]].
template <typename T>
at::Tensor gather_tap(const at::Tensor& t, int64_t groups, const std::vector<int64_t>& at_) {
  const int64_t N = t.size(0), C = t.size(1), L = t.numel() / std::max<int64_t>(1, N * C);
  const int64_t P = static_cast<int64_t>(at_.size());
  at::Tensor out = scratch_empty({groups, C / groups, P * N}, t.options());
  const T* src = t.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  at::parallel_for(0, C, plane_grain(P * N), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t j = 0; j < P; ++j) {
        for (int64_t n = 0; n < N; ++n) dst[(c * P + j) * N + n] = src[(n * C + c) * L + at_[j]];
      }
    }
  });
  return out;
}

// The reverse, adding: t[n][c][at[j]] += rows[c][j * N + n], for a tap's
// (C, P * N) product and an (N, C, L) view t of its channels. Called by one
// thread per block of channels, a tap after the other.
template <typename T>
void add_tap(const at::Tensor& rows, const std::vector<int64_t>& at_, const at::Tensor& t) {
  const int64_t N = t.size(0), C = t.size(1), P = static_cast<int64_t>(at_.size());
  const int64_t sn = t.stride(0), sc = t.stride(1);
  const T* src = rows.const_data_ptr<T>();
  T* dst = t.data_ptr<T>();
  for (int64_t n = 0; n < N; ++n) {  // t's sample after sample (rows is in L1)
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t j = 0; j < P; ++j) dst[n * sn + c * sc + at_[j]] += src[(c * P + j) * N + n];
    }
  }
}

// Blocks of channels for the products per tap (below): as many channels as
// have their kernels, per_channel values each, fill half of L2.
int64_t tap_block_bytes() {
  return cpu_caches().l2 / 2;
}

template <typename T>
int64_t tap_block_channels(int64_t channels, int64_t per_channel) {
  return std::clamp<int64_t>(tap_block_bytes() / (per_channel * int64_t{sizeof(T)}), 1, channels);
}

// The forward and the input gradient, a product per tap. Tap t's kernels
// form a (C_out/g, C_in/g) matrix W_t; its outputs are
//   Y_t (C_out/g, P * N) = W_t @ X_t (C_in/g, P * N),
// X_t holding the input pixel the tap reads for each of its P positions and
// each sample, added into those positions of the output; the input gradient
// is the same with the roles swapped,
//   D_t (P * N, C_in/g) = G_t (P * N, C_out/g) @ W_t,
// G_t the output gradient at the tap's positions, D_t added into the input
// pixels the tap read. The weights dominate these layers (9.4 MB against
// 0.3 MB of activations on VGG's 512-channel 2x2 layer), so each thread
// takes blocks of channels (output channels in the forward, input channels
// in the input gradient) whose kernels fit in half of L2, reorders them
// there tap-major (transpose.h) and runs every tap's product on them: the
// weights are read from memory once. (Reordered whole, then multiplied,
// they went out to memory and back; grouped per group of positions, once
// more per group.) A block's taps are added in order, and a channel belongs
// to one block: the sums do not depend on the threads. Half and bfloat16
// run in float, rounded once at the end.
template <typename T>
void taps_forward(const Conv2dGeometry& g, const std::vector<TapGroup>& plan, const at::Tensor& input,
                  const at::Tensor& weight, const at::Tensor& bias, at::Tensor& output) {
  const int64_t Co = g.out_channels_per_group(), Ci = g.in_channels_per_group(), taps = g.kernel_h * g.kernel_w;
  const std::vector<TapPositions> tp = tap_positions(g, plan);
  std::vector<at::Tensor> xs;  // X_t per tap, (groups, C_in/g, P * N)
  for (const TapPositions& t : tp) xs.push_back(gather_tap<T>(input, g.groups, t.input));
  const at::Tensor out = output.view({g.batch, g.out_channels, g.output_plane()});
  if (bias.defined()) {
    out.copy_(bias.view({1, g.out_channels, 1}).expand_as(out));
  } else {
    out.zero_();
  }
  const int64_t block = tap_block_channels<T>(Co, taps * Ci), blocks = ceil_div(Co, block);
  const T* w = weight.const_data_ptr<T>();
  parallel_items(g.groups * blocks, block * taps * Ci * g.batch, [&](int64_t begin, int64_t end) {
    const at::Tensor wb = scratch_empty({block, taps, Ci}, weight.options());
    for (int64_t b = begin; b < end; ++b) {
      const int64_t grp = b / blocks, c0 = b % blocks * block, n = std::min(block, Co - c0);
      const int64_t co0 = grp * Co + c0;
      for (int64_t c = 0; c < n; ++c) {
        transpose(w + (co0 + c) * Ci * taps, Ci, taps, taps, wb.mutable_data_ptr<T>() + c * taps * Ci, Ci);
      }
      for (size_t i = 0; i < tp.size(); ++i) {
        const at::Tensor x = xs[i][grp];
        const at::Tensor y = scratch_empty({n, x.size(1)}, input.options());
        gemm::matmul(y, wb.narrow(0, 0, n).select(1, tp[i].tap), x);
        add_tap<T>(y, tp[i].positions, out.narrow(1, co0, n));
      }
    }
  });
}

template <typename T>
void taps_backward_input(const Conv2dGeometry& g, const std::vector<TapGroup>& plan, const at::Tensor& grad_output,
                         const at::Tensor& weight, at::Tensor& grad_input) {
  const int64_t Co = g.out_channels_per_group(), Ci = g.in_channels_per_group(), taps = g.kernel_h * g.kernel_w;
  const std::vector<TapPositions> tp = tap_positions(g, plan);
  std::vector<at::Tensor> gs;  // G_t^T per tap, (groups, C_out/g, P * N)
  for (const TapPositions& t : tp) gs.push_back(gather_tap<T>(grad_output, g.groups, t.positions));
  grad_input.zero_();
  const at::Tensor gi = grad_input.view({g.batch, g.in_channels, g.in_h * g.in_w});
  const int64_t block = tap_block_channels<T>(Ci, taps * Co), blocks = ceil_div(Ci, block);
  const T* w = weight.const_data_ptr<T>();
  parallel_items(g.groups * blocks, block * taps * Co * g.batch, [&](int64_t begin, int64_t end) {
    const at::Tensor wb = scratch_empty({Co, taps, block}, weight.options());
    for (int64_t b = begin; b < end; ++b) {
      const int64_t grp = b / blocks, c0 = b % blocks * block, n = std::min(block, Ci - c0);
      for (int64_t co = 0; co < Co; ++co) {  // kernels [c0, c0 + n) of each output channel, tap-major
        transpose(w + ((grp * Co + co) * Ci + c0) * taps, n, taps, taps, wb.mutable_data_ptr<T>() + co * taps * block,
                  block);
      }
      for (size_t i = 0; i < tp.size(); ++i) {
        const at::Tensor go = gs[i][grp];
        const at::Tensor d = scratch_empty({n, go.size(1)}, weight.options());
        // D_t^T (n, P * N) = W_t^T @ G_t^T
        gemm::matmul(d, wb.select(1, tp[i].tap).narrow(1, 0, n).t(), go);
        add_tap<T>(d, tp[i].input, gi.narrow(1, grp * Ci + c0, n));
      }
    }
  });
}

void grouped_forward(const Conv2dGeometry& g, const std::vector<TapGroup>& plan, const at::Tensor& input,
                     const at::Tensor& weight, const at::Tensor& bias, at::Tensor& output) {
  if (input.scalar_type() == at::kDouble) return taps_forward<double>(g, plan, input, weight, bias, output);
  if (input.scalar_type() == at::kFloat) return taps_forward<float>(g, plan, input, weight, bias, output);
  at::Tensor out = scratch_empty(output.sizes(), output.options().dtype(at::kFloat));
  taps_forward<float>(g, plan, input.to(at::kFloat), weight.to(at::kFloat),
                      bias.defined() ? bias.to(at::kFloat) : bias, out);
  output.copy_(out);
}

void grouped_backward_input(const Conv2dGeometry& g, const std::vector<TapGroup>& plan,
                            const at::Tensor& grad_output, const at::Tensor& weight, at::Tensor& grad_input) {
  if (weight.scalar_type() == at::kDouble) {
    return taps_backward_input<double>(g, plan, grad_output, weight, grad_input);
  }
  if (weight.scalar_type() == at::kFloat) {
    return taps_backward_input<float>(g, plan, grad_output, weight, grad_input);
  }
  at::Tensor in = scratch_empty(grad_input.sizes(), grad_input.options().dtype(at::kFloat));
  taps_backward_input<float>(g, plan, grad_output.to(at::kFloat), weight.to(at::kFloat), in);
  grad_input.copy_(in);
}

// The weight gradient: each group's grad_out at its positions @ its
// columns^T, added into its taps of the gradient, group after group.
void grouped_backward_weight(const Conv2dGeometry& g, const std::vector<TapGroup>& plan, const at::Tensor& input,
                             const at::Tensor& grad_output, at::Tensor& grad_weight) {
  const int64_t Co = g.out_channels_per_group(), Ci = g.in_channels_per_group();
  grad_weight.zero_();
  for (const TapGroup& t : plan) {
    const int64_t S = static_cast<int64_t>(t.taps.size());
    at::Tensor part = scratch_empty({g.groups, Co, S * Ci}, input.options());
    gemm::matmul(part, group_positions(grad_output, g.groups, t), group_columns(g, input, t).transpose(1, 2));
    add_group_weights(g, t, part, grad_weight);
  }
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
  out.emplace_back("im2col.min_group_columns", kMinGroupColumns);
  out.emplace_back("im2col.tap_block_bytes", tap_block_bytes());
  out.emplace_back("im2col.min_split_channels", kMinSplitChannels);
}

void conv2d_im2col_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight_,
                           const at::Tensor& bias, at::Tensor& output) {
  if (const std::vector<TapGroup> plan = grouped_plan(g); !plan.empty()) {
    return grouped_forward(g, plan, input, weight_, bias, output);
  }
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group(), L = g.output_plane();
  const at::Tensor weight = weight_.view({g.groups, Co, K});
  const at::Tensor bias_rows = bias.defined() ? bias.view({g.groups, Co}) : at::Tensor();
  if (g.batch == 1 && Co >= 2 * kMinSplitChannels) {
    // A lone sample: every thread unrolls it whole (K * L values, 1 / (its
    // channels) of its product's work) and multiplies its own range of
    // output channels, so that no thread reads columns another core wrote.
    // With the unrolling spread over the threads and the GEMM's tasks each
    // packing columns from all of it, ResNet-18's 512-512 @7 at batch 1 took
    // 1.77-1.80 ms instead of 1.38-1.44 in the shared VM's state where such
    // reads run 8x slower (benchmarks/README.md's core-to-core probe). Split
    // this way, VGG's batch-1 im2col layers ran as fast or up to 35% faster
    // in either state; that layer, bound by reading its 9.4 MB of weights,
    // moved with the machine more than with the change (1.48-1.89 ms against
    // torch's 1.29-1.90 in the same processes).
    const int64_t tasks = std::min(Co / kMinSplitChannels, static_cast<int64_t>(at::get_num_threads()));
    const at::Tensor out = output[0].view({g.groups, Co, L});
    parallel_items(tasks, g.groups * Co / tasks * K * L, [&](int64_t begin, int64_t end) {
      const at::Tensor cols = unroll(input, 0, 1, g, scratch_empty({g.groups * K * L}, input.options()));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c0 = unit_range_bound(task, tasks, Co, kMinSplitChannels);
        const int64_t c1 = unit_range_bound(task + 1, tasks, Co, kMinSplitChannels);
        multiply(out.narrow(1, c0, c1 - c0), weight.narrow(1, c0, c1 - c0), cols,
                 bias_rows.defined() ? bias_rows.narrow(1, c0, c1 - c0) : at::Tensor());
      }
    });
    return;
  }
  const Chunks chunks = chunks_for(g);
  parallel_items(chunks.count, macs_per_chunk(g, chunks), [&](int64_t begin, int64_t end) {
    const ChunkScratch scratch(g, chunks, input.options());
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = chunks.first(c), B = chunks.samples(c, g.batch);
      const at::Tensor cols = unroll(input, n0, B, g, scratch.cols);
      if (B == 1) {
        multiply(output[n0].view({g.groups, Co, L}), weight, cols, bias_rows);
      } else {
        // The GEMM yields (C_out, B * L); the output wants (B, C_out, L).
        const at::Tensor out = as_matrices(scratch.channel_major, g.groups, Co, B * L);
        multiply(out, weight, cols, bias_rows);
        planes_to_rows(output, n0, B, L, out, /*to_rows=*/false);
      }
    }
  });
}

void conv2d_im2col_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                  const at::Tensor& weight, at::Tensor& grad_input) {
  if (const std::vector<TapGroup> plan = grouped_plan(g); !plan.empty()) {
    return grouped_backward_input(g, plan, grad_output, weight, grad_input);
  }
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group(), L = g.output_plane();
  // W_g^T: (K, C_out/g), a transposed view; the GEMM reads it without a copy.
  const at::Tensor weight_t = weight.view({g.groups, Co, K}).transpose(1, 2);
  const Chunks chunks = chunks_for(g);
  parallel_items(chunks.count, macs_per_chunk(g, chunks), [&](int64_t begin, int64_t end) {
    const ChunkScratch scratch(g, chunks, weight.options());
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = chunks.first(c), B = chunks.samples(c, g.batch);
      const at::Tensor go = grad_output_matrices(g, grad_output, n0, B, scratch.channel_major);
      const at::Tensor cols = as_matrices(scratch.cols, g.groups, K, B * L);
      multiply(cols, weight_t, go);
      fold(cols, n0, B, g, grad_input);
    }
  });
}

void conv2d_im2col_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                   const at::Tensor& grad_output, at::Tensor& grad_weight) {
  if (const std::vector<TapGroup> plan = grouped_plan(g); !plan.empty()) {
    return grouped_backward_weight(g, plan, input, grad_output, grad_weight);
  }
  const int64_t Co = g.out_channels_per_group(), K = g.col_rows_per_group();
  const Chunks chunks = chunks_for(g, /*partial_sums=*/true);
  const int64_t blocks = std::max<int64_t>(
      1, std::min({chunks.count, kWeightPartials, kPartialsBudget / (g.out_channels * K)}));
  // Each block's partial holds dW_g (C_out/g, K) = grad_out_g @ cols_g^T,
  // in the weight's own layout; the GEMM reads cols_g^T in place.
  const at::Tensor partials = scratch_empty({blocks, g.groups, Co, K}, input.options());
  const int64_t block_macs = macs_per_chunk(g, chunks) * ceil_div(chunks.count, blocks);
  parallel_items(blocks, block_macs, [&](int64_t begin, int64_t end) {
    const ChunkScratch scratch(g, chunks, input.options());
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * chunks.count / blocks, last = (block + 1) * chunks.count / blocks;
      for (int64_t c = first; c < last; ++c) {
        const int64_t n0 = chunks.first(c), B = chunks.samples(c, g.batch);
        const at::Tensor cols = unroll(input, n0, B, g, scratch.cols);
        const at::Tensor go = grad_output_matrices(g, grad_output, n0, B, scratch.channel_major);
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
