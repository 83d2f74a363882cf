// The Winograd route: 3x3 stride-1 convolutions (float32) by minimal
// filtering, F(2x2, 3x3). A 2x2 block of outputs needs a 4x4 tile of input
// d; with the 3x3 kernel w it is
//   Y = A^T [ (G w G^T) (.) (B^T d B) ] A       ((.): element by element)
// so the 16 products of the bracket replace the 36 multiply-adds of the
// direct sum (2.25x fewer). Across channels, each of the 16 positions xi of
// the bracket is a matrix product:
//   forward          M[xi] (C_out, T) = U[xi] (C_out, C_in) @ V[xi] (C_in, T)
// with U = G w G^T per (c_out, c_in), V = B^T d B per (c_in, tile), T tiles:
// 16 products batched into one call of our GEMM (gemm/).
// The input gradient of a stride-1 convolution is the convolution
// of the padded output gradient with the kernel rotated by 180 degrees, so it
// runs the same forward with U taken from the rotated, channel-swapped kernel.
// The weight gradient is the forward's transpose in the Winograd domain:
//   dU[xi] (C_out, C_in) = sum over tiles of dM[xi] (C_out, T) @ V[xi]^T,
//   dM = A dY A^T per (c_out, tile),  dW = G^T dU G.
//
// Why F(2x2, 3x3) and not F(4x4, 3x3) (4x fewer products): with float32,
// F(4x4, 3x3) was 10-11x torch's own error on VGG's 256-channel layer (with
// the points 0, +-1, 1/2, -2; 30x with Lavin's 0, +-1, +-2), and still 10x
// with every transform in float64, so the loss is in the products, not the
// transforms; F(2x2, 3x3) is 1.5x (results/benchmarks/ records it per layer).
// Its transforms only add and subtract, exactly as written here:
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
//
// Two layouts (winograd_transforms.h). Wide planes are transformed in place,
// (N, C, H, W), with loops along rows of tiles; the Winograd domain is then
// (xi, channel, tile) and the products M = U @ V. Deep layers have planes of
// 14x14 down to 4x4, too short for those loops to vectorise, so there the
// input (and output gradient) is first copied channels-last by a vectorised
// transpose, the transforms run along the channels, the domain is (xi, tile,
// channel) with M = V @ U^T, and the output is transposed back. The copies
// cost a pass over memory each, which the wide planes' loops do not need.
// Tiles are numbered over (sample, tile row, tile column) and processed in
// blocks of about kBlockValues values, one block per task: a thread
// transforms a block, multiplies it and transforms the result back while it
// is in cache.
#include "conv2d_routes.h"
#include "gemm/gemm.h"
#include "parallel.h"
#include "scratch.h"
#include "transpose.h"
#include "winograd_transforms.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace custom_conv {
namespace {

using winograd::Problem;

constexpr int64_t kPoints = 16;  // 4x4 positions of the Winograd domain

// Planes at least this many tiles wide (outputs 2x as many) are transformed
// in their own layout; narrower ones channels-last. (With 8, the 16x16
// planes of VGG-16 and ResNet-20 ran 1.05-1.3x slower in the plane layout.)
constexpr int64_t kMinPlaneTiles = 12;
// The weight gradient switches wider: its plane-layout products (C_out x
// C_in over a block's tiles, both operands with the tiles innermost) need both
// operands repacked, while the channel layout's are read as they lie (the
// GEMM reads B in place). Measured with 64 and 128 channels at batch 32, the
// channel layout was 8-14% faster on 14- and 16-tile planes (28x28 and 32x32
// outputs) and 20% slower on 28-tile ones (56x56).
constexpr int64_t kMinPlaneTilesWeightGrad = 20;

// The weight gradient's tasks split the output channels when there are
// fewer partial sums than threads, and the forward's by channels, into
// ranges of at least this many.
constexpr int64_t kMinSplitChannels = 16;

// The forward's split by channels (Split::kByChannels) while each thread's
// transformed input and output, 16 * tiles * (C_in + C_out / threads)
// values, stay within this (3 MiB). Past it, each thread's copy of the whole
// transformed input costs more in memory traffic than the split saves. At
// batch 32 on two threads (Zen 4), VGG's 256-512 @4 (4 MiB) forward took
// 4.3-5.2 ms by channels against 3.8-4.3 by position, and 512-512 @4 (6 MiB)
// input gradient 9.5-10.1 against 8.2-8.9; at batch 1, ResNet-18's 128-128
// @28 (2.4 MB) 0.89-0.94 ms by channels against 1.05-1.06 in blocks of tiles.
constexpr int64_t kByChannelsValues = int64_t{3} << 18;

// Blocks: a block's transformed input and output (16 * (C_in + C_out) values
// per tile) should stay within about half a core's L2 (kBlockValues floats),
// but a block has at least kMinBlockTiles tiles: the 16 products of a block
// read all of U (16 * C_in * C_out values), which thin products would read
// for too little work.
constexpr int64_t kBlockValues = int64_t{1} << 17;
constexpr int64_t kMinBlockTiles = 256;
// ...unless U is small enough to stay in cache from one block to the next
// (up to 4 MiB, 256 channels each way), where the forward and input gradient
// in the channel layout take blocks of kBlockValues, down to
// kMinBlockTilesSmallKernel tiles. Measured on a Zen 4 (1 MiB of L2 a core),
// forward and input gradient alternating in one process for minutes,
// median / 90th percentile ms, 256 against 64 tiles: ResNet-20's 64-64 @8 at
// batch 32 1.25 / 2.42 against 1.18 / 1.56 (the blocks of 256 tiles, 2 MiB,
// ran 2x slower whenever the shared machine was busy; the direct kernels
// 1.53 / 1.63), 128-128 @16 15.8 / 17.7 against 14.9 / 16.2, 256-256 @8
// 14.6 / 19.1 against 13.1 / 15.3. With 512 channels (U of 16 MiB, read
// again by every block) 64 tiles ran 7% slower.
constexpr int64_t kMinBlockTilesSmallKernel = 64;
constexpr int64_t kSmallKernelValues = int64_t{1} << 20;
// The weight gradient's products reduce over a block's tiles and write all
// of dU each time: in the channel layout, longer blocks (up to
// kMaxWeightBlockTiles, within kWeightBlockValues) ran up to 1.4x faster on
// VGG's 16x16 and ResNet-18's 14x14 layers; in the plane layout they ran
// slower (measured with benchmarks/bench.py on an AVX-512 CPU).
constexpr int64_t kWeightBlockValues = int64_t{1} << 22;
constexpr int64_t kMaxWeightBlockTiles = 1024;
// ...but a block need not be longer than it takes for dU (16 * C_in * C_out
// values, read and written by every block) to weigh at most half its
// transformed input and output gradient (16 * (C_in + C_out) per tile), and
// not less than kMinWeightBlockTiles: beyond that a block's data only
// overflows L2. Measured on a Zen 4 (1 MiB of L2 a core) at batch 32, 2
// threads, the weight gradient alternating in one process, min / median ms,
// these blocks against kWeightBlockValues' (1024 tiles but as the tiles
// allow): ResNet-20's 32-32 @16 0.84 / 0.86 (64 tiles) against 1.33 / 1.91,
// 64-64 @8 0.83 / 0.89 against 0.97 / 1.11 (256), VGG's 64-64 @32 8.9 / 9.1
// against 11.1 / 11.2, 128-128 @16 8.5-8.9 / 9.0 (128) against 8.4 / 11.1;
// 256 channels (256 tiles against 512) as fast in the median.
constexpr int64_t kMinWeightBlockTiles = 64;

int64_t weight_block_tiles(int64_t in_channels, int64_t out_channels) {
  const int64_t per_tile = kPoints * (in_channels + out_channels);
  const int64_t longest = std::clamp(kWeightBlockValues / per_tile, kMinBlockTiles, kMaxWeightBlockTiles);
  const int64_t enough = 2 * in_channels * out_channels / (in_channels + out_channels);
  return std::clamp(enough, kMinWeightBlockTiles, longest);
}

Problem forward_problem(const Conv2dGeometry& g) {
  return {g.batch, g.in_channels, g.out_channels, g.in_h, g.in_w, g.pad_h, g.pad_w, g.out_h, g.out_w};
}

Problem input_grad_problem(const Conv2dGeometry& g) {
  return {g.batch, g.out_channels, g.in_channels, g.out_h, g.out_w, 2 - g.pad_h, 2 - g.pad_w, g.in_h, g.in_w};
}

bool planes_layout(const Problem& p, bool weight_grad = false) {
  return p.tiles_w() >= (weight_grad ? kMinPlaneTilesWeightGrad : kMinPlaneTiles);
}

// How the threads share a problem's tiles. Blocks of `size` consecutive
// tiles (whole rows of tiles in the plane layout), at least as many blocks as
// threads, a block per task. When that would make blocks thinner than
// kMinBlockTiles (a deep layer's few tiles, a small batch), instead:
enum class Split {
  kBlocks,
  // The forward (and input gradient): `count` ranges of the output channels,
  // each running all tiles in blocks of `size` (forward_by_channels), while
  // each thread's transformed input and output fit in kByChannelsValues.
  kByChannels,
  // Beyond that, and for the weight gradient, in the channel layout: all
  // tiles as one block, whose transforms are spread over the threads by
  // tiles and whose 16 products by position: each thread then reads its part
  // of U rather than all of it.
  kWhole,
};

struct Blocks {
  int64_t size, count;
  Split split;
};

Blocks blocks_for(const Problem& p, bool weight_grad = false) {
  const int64_t per_tile = kPoints * (p.in_channels + p.out_channels), threads = at::get_num_threads();
  const bool planes = planes_layout(p, weight_grad);
  const bool small_kernel = kPoints * p.in_channels * p.out_channels <= kSmallKernelValues;
  const int64_t min_tiles = !planes && !weight_grad && small_kernel ? kMinBlockTilesSmallKernel : kMinBlockTiles;
  const int64_t wanted = weight_grad && !planes ? weight_block_tiles(p.in_channels, p.out_channels)
                                                : std::max(min_tiles, kBlockValues / per_tile);
  const bool few = ceil_div(p.tiles(), threads) < kMinBlockTiles && threads > 1;
  const int64_t by_channels_values = kPoints * p.tiles() * (p.in_channels + p.out_channels / threads);
  if (few && !weight_grad && p.out_channels >= 2 * kMinSplitChannels && by_channels_values <= kByChannelsValues) {
    // Blocks of whole rows of tiles within about half a core's L2 (all tiles
    // in one, channels-last), for a range's share of the output channels.
    const int64_t ranges = std::min(p.out_channels / kMinSplitChannels, threads);
    const int64_t share = ceil_div(p.out_channels, ranges);
    const int64_t tiles = std::max(kMinBlockTiles, kBlockValues / (kPoints * (p.in_channels + share)));
    const int64_t size = planes ? std::min(p.tiles(), ceil_div(tiles, p.tiles_w()) * p.tiles_w()) : p.tiles();
    return {size, ranges, Split::kByChannels};
  }
  if (few && !planes) {
    return {p.tiles(), 1, Split::kWhole};
  }
  // The plane layout cuts whole rows of tiles. As many blocks as it takes to
  // keep them within `wanted`, rounded up to a multiple of the threads, and
  // then of equal size, so that every thread gets the same share.
  const int64_t unit = planes ? p.tiles_w() : 1, units = p.tiles() / unit;
  const int64_t count = std::min(units, ceil_div(ceil_div(units * unit, wanted), threads) * threads);
  const int64_t size = ceil_div(units, count) * unit;
  return {size, ceil_div(p.tiles(), size), Split::kBlocks};
}

// Tiles [0, T) cut into ranges for the threads' transforms of a whole block.
constexpr int64_t kTransformGrain = 16;

// V, M and dM, (16, T, C) in the channel layout or (16, C, T) in the plane
// layout, over a buffer of kPoints * point_stride(T * C) values: each
// point's matrix starts a cache line after the previous one's end. Back to
// back, the 16 points of a block (128 tiles of 32 channels, 64 of 64, 256
// of 64) lay a multiple of 4 KiB apart, in one set of the L1 cache, and the
// transforms read or write a value of each per tile and channel.
constexpr int64_t kPointSlack = 16;

int64_t point_stride(int64_t values) {
  return values + kPointSlack;
}

at::Tensor points_of(const at::Tensor& buffer, int64_t rows, int64_t cols, int64_t stride) {
  return buffer.as_strided({kPoints, rows, cols}, {stride, cols, 1});
}

// (N, C, H, W) as a contiguous (N, H, W, C) tensor, and back into a
// contiguous (N, C, H, W) `out`: per sample, a (C, H * W) matrix transposed
// in vector registers (transpose.h). ATen's permuted copy moved 4-5 GB/s
// there, a seventh of a 128-channel 16x16 layer's forward.
at::Tensor channels_last(const at::Tensor& t) {
  const int64_t N = t.size(0), C = t.size(1), L = t.size(2) * t.size(3);
  at::Tensor out = scratch_empty({N, t.size(2), t.size(3), C}, t.options());
  const float* src = t.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, N, plane_grain(C * L), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) transpose(src + n * C * L, C, L, L, dst + n * L * C, C);
  });
  return out;
}

void from_channels_last(const at::Tensor& t, at::Tensor& out) {
  const int64_t N = out.size(0), C = out.size(1), L = out.size(2) * out.size(3);
  const float* src = t.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, N, plane_grain(C * L), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) transpose(src + n * L * C, L, C, C, dst + n * C * L, L);
  });
}

// out[xi] = a[xi] @ b[xi] for the 16 positions of a whole block, spread over
// the threads by position: each thread reads its own operands once.
void products_by_position(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  parallel_items(kPoints, a.size(1) * a.size(2) * b.size(2), [&](int64_t begin, int64_t end) {
    for (int64_t xi = begin; xi < end; ++xi) {
      gemm::matmul(out[xi], a[xi], b[xi]);
    }
  });
}

// Columns of the (c_out, c_in * 9) kernels per task of permuted_kernels: a
// task writes this many rows of c_out values, within a core's L2.
constexpr int64_t kKernelStrip = 64;

// The (c_out, c_in, 3, 3) kernels permuted to (c_out, tap, c_in) (a (c_in, 9)
// transpose per output channel) or to (c_in, tap, c_out) (the transpose of
// the (c_out, c_in * 9) matrix, in strips of columns), in vector registers
// (transpose.h). ATen's permuted copy took 2.7 ms for the second on 512 x 512
// kernels, a quarter of VGG's 512-512 @4 forward at batch 32.
at::Tensor permuted_kernels(const at::Tensor& weight, bool out_major) {
  const at::Tensor w = weight.contiguous();
  const int64_t co = w.size(0), ci = w.size(1), taps = 9;
  at::Tensor k = scratch_empty({co * ci * taps}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = k.mutable_data_ptr<float>();
  if (out_major) {
    at::parallel_for(0, co, plane_grain(ci * taps), [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) transpose(src + o * ci * taps, ci, taps, taps, dst + o * taps * ci, ci);
    });
  } else {
    const int64_t cols = ci * taps;
    at::parallel_for(0, ceil_div(cols, kKernelStrip), plane_grain(kKernelStrip * co), [&](int64_t begin, int64_t end) {
      for (int64_t strip = begin; strip < end; ++strip) {
        const int64_t j0 = strip * kKernelStrip, n = std::min(kKernelStrip, cols - j0);
        transpose(src + j0, co, n, cols, dst + j0 * co, co);
      }
    });
  }
  return k;
}

// The kernels' transform for a problem: U (16, C_out, C_in) of the plane
// layout or U^T (16, C_in, C_out) of the channel layout, C_in and C_out being
// the problem's (swapped for the input gradient, whose kernel is rotated).
// In layer terms that is (16, c_out, c_in) or (16, c_in, c_out), and the
// transform, which works on each (c_out, c_in) pair alike, writes either
// from the kernels permuted to (c_out, tap, c_in) or to (c_in, tap, c_out).
// Written in the order the products read it, U is packed by
// the GEMM with plain copies: as a transposed view, every block's product
// transposed all of it again (a sixth of a 128-channel 16x16 layer's time).
at::Tensor transform_weight(const at::Tensor& weight, bool input_grad, bool planes) {
  const bool out_major = planes != input_grad;
  const int64_t co = weight.size(0), ci = weight.size(1);
  const int64_t rows = out_major ? co : ci, cols = out_major ? ci : co;
  const at::Tensor k = permuted_kernels(weight, out_major);
  at::Tensor U = scratch_empty({kPoints, rows, cols}, weight.options());
  const float* kp = k.const_data_ptr<float>();
  float* u = U.mutable_data_ptr<float>();
  at::parallel_for(0, rows, plane_grain(16 * cols), [&](int64_t begin, int64_t end) {
    winograd::transform_kernels(kp, begin, end, rows, cols, input_grad, u);
  });
  return U;
}

// The forward of a problem with few tiles (`Split::kByChannels`): each
// thread runs all of it for its own range of the output channels, from its
// share of the kernels' transform to its channels of the output, and
// transforms the whole input itself (work of 1 / (its channels) of its
// products). So no step reads what another thread's core wrote, in this call
// or the one before (the pool hands each thread its own buffers back). A
// split by tiles for the transforms and by position for the products had
// every step read the other core's writes of the step before (U, V, M and the
// channels-last copies, 1-4 MiB a call), and a split by blocks of tiles has
// every thread read all of U, which both wrote: on a shared VM in the state
// where such reads run 8x slower than usual, VGG's 128-128 @16 forward at
// batch 1 then took 0.60-0.66 ms on two threads against 0.48 on one (0.29-0.32
// in the usual state), ResNet-18's 256-256 @14 1.7-4 ms against 1.5 (0.8).
void forward_by_channels(const Problem& p, const Blocks& blocks, const at::Tensor& input, const at::Tensor& weight,
                         bool input_grad, const float* bias, at::Tensor& output) {
  const int64_t Ci = p.in_channels, Co = p.out_channels, T = p.tiles(), L = p.out_h * p.out_w, tw = p.tiles_w();
  const int64_t tasks = blocks.count, size = blocks.size;
  const bool planes = planes_layout(p);
  float* out = output.mutable_data_ptr<float>();
  parallel_items(tasks, kPoints * T * Ci * Co / tasks, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      // Whole multiples of kMinSplitChannels (a vector of floats at AVX-512).
      const int64_t c0 = unit_range_bound(task, tasks, Co, kMinSplitChannels);
      const int64_t c1 = unit_range_bound(task + 1, tasks, Co, kMinSplitChannels), n = c1 - c0;
      const int64_t sv = point_stride(size * Ci), sm = point_stride(size * n);
      // The layer's output channels for the forward, its input channels for
      // the input gradient: U's rows (planes) or columns (channels-last).
      const at::Tensor U = transform_weight(weight.narrow(input_grad ? 1 : 0, c0, n), input_grad, planes);
      const at::Tensor xs = planes ? input : channels_last(input);
      const at::Tensor V_buf = scratch_empty({kPoints * sv}, input.options());
      const at::Tensor M_buf = scratch_empty({kPoints * sm}, input.options());
      for (int64_t t0 = 0; t0 < T; t0 += size) {
        const int64_t t1 = std::min(t0 + size, T);
        if (planes) {
          at::Tensor V = points_of(V_buf, Ci, t1 - t0, sv), M = points_of(M_buf, n, t1 - t0, sm);
          winograd::transform_input_planes(p, input.const_data_ptr<float>(), t0 / tw, t1 / tw, sv,
                                           V.mutable_data_ptr<float>());
          gemm::matmul(M, U, V);
          winograd::transform_output_planes(p, M.const_data_ptr<float>(), c0, c1, t0 / tw, t1 / tw, sm, bias, out);
          continue;
        }
        // One block: the channels-last output is this task's own (N, L, n).
        const at::Tensor zeros = scratch_zeros({Ci}, input.options());
        at::Tensor V = points_of(V_buf, T, Ci, sv), M = points_of(M_buf, T, n, sm);
        winograd::transform_input_channels(p, xs.const_data_ptr<float>(), zeros.const_data_ptr<float>(), 0, T, sv,
                                           V.mutable_data_ptr<float>());
        gemm::matmul(M, V, U);
        Problem part = p;
        part.out_channels = n;
        at::Tensor ys = scratch_empty({p.batch, L, n}, input.options());
        std::vector<float> sink(n);
        winograd::transform_output_channels(part, M.const_data_ptr<float>(), 0, T, sm, bias ? bias + c0 : nullptr,
                                            sink.data(), ys.mutable_data_ptr<float>());
        for (int64_t s = 0; s < p.batch; ++s) {
          transpose(ys.const_data_ptr<float>() + s * L * n, L, n, n, out + (s * Co + c0) * L, L);
        }
      }
    }
  });
}

// The forward of a problem (the layer's, or its input gradient's): per
// block, V, the 16 products with U, and back.
void run_forward(const Problem& p, const at::Tensor& input, const at::Tensor& weight, bool input_grad,
                 const float* bias, at::Tensor& output) {
  const Blocks blocks = blocks_for(p);
  if (blocks.split == Split::kByChannels) {
    forward_by_channels(p, blocks, input, weight, input_grad, bias, output);
    return;
  }
  const int64_t Ci = p.in_channels, Co = p.out_channels, tw = p.tiles_w();
  const bool planes = planes_layout(p);
  const at::Tensor U = transform_weight(weight, input_grad, planes);
  const at::Tensor xs = planes ? input : channels_last(input);
  at::Tensor ys = planes ? output : scratch_empty({p.batch, p.out_h, p.out_w, Co}, input.options());
  const at::Tensor zeros = scratch_zeros({Ci}, input.options());
  if (blocks.split == Split::kWhole) {
    const int64_t T = p.tiles(), sv = point_stride(T * Ci), sm = point_stride(T * Co);
    const at::Tensor V = points_of(scratch_empty({kPoints * sv}, input.options()), T, Ci, sv);
    at::Tensor M = points_of(scratch_empty({kPoints * sm}, input.options()), T, Co, sm);
    at::parallel_for(0, T, kTransformGrain, [&](int64_t t0, int64_t t1) {
      winograd::transform_input_channels(p, xs.const_data_ptr<float>(), zeros.const_data_ptr<float>(), t0, t1, sv,
                                         V.mutable_data_ptr<float>() + t0 * Ci);
    });
    products_by_position(M, V, U);
    at::parallel_for(0, T, kTransformGrain, [&](int64_t t0, int64_t t1) {
      std::vector<float> sink(Co);
      winograd::transform_output_channels(p, M.const_data_ptr<float>() + t0 * Co, t0, t1, sm, bias, sink.data(),
                                          ys.mutable_data_ptr<float>());
    });
    from_channels_last(ys, output);
    return;
  }
  const int64_t sv = point_stride(blocks.size * Ci), sm = point_stride(blocks.size * Co);
  parallel_items(blocks.count, kPoints * Ci * Co * blocks.size, [&](int64_t begin, int64_t end) {
    const at::Tensor V_buf = scratch_empty({kPoints * sv}, input.options());
    const at::Tensor M_buf = scratch_empty({kPoints * sm}, input.options());
    std::vector<float> sink(Co);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t t0 = b * blocks.size, t1 = std::min(t0 + blocks.size, p.tiles());
      if (planes) {
        at::Tensor V = points_of(V_buf, Ci, t1 - t0, sv), M = points_of(M_buf, Co, t1 - t0, sm);
        winograd::transform_input_planes(p, xs.const_data_ptr<float>(), t0 / tw, t1 / tw, sv,
                                         V.mutable_data_ptr<float>());
        gemm::matmul(M, U, V);
        winograd::transform_output_planes(p, M.const_data_ptr<float>(), 0, Co, t0 / tw, t1 / tw, sm, bias,
                                          ys.mutable_data_ptr<float>());
      } else {
        at::Tensor V = points_of(V_buf, t1 - t0, Ci, sv), M = points_of(M_buf, t1 - t0, Co, sm);
        winograd::transform_input_channels(p, xs.const_data_ptr<float>(), zeros.const_data_ptr<float>(), t0, t1,
                                           sv, V.mutable_data_ptr<float>());
        gemm::matmul(M, V, U);
        winograd::transform_output_channels(p, M.const_data_ptr<float>(), t0, t1, sm, bias, sink.data(),
                                            ys.mutable_data_ptr<float>());
      }
    }
  });
  if (!planes) {
    from_channels_last(ys, output);
  }
}

// The weight gradient from its Winograd-domain partial sums, dW = G^T (sum
// of the partials) G, summed and transformed in double. dU is (partials,
// 16, C_out, C_in) or, with channels-last sums, (partials, 16, C_in, C_out).
void kernel_gradient(const at::Tensor& dU, bool planes, at::Tensor& grad_weight) {
  const int64_t partials = dU.size(0), rows = dU.size(2), cols = dU.size(3);
  const float* du = dU.const_data_ptr<float>();
  float* gw = grad_weight.mutable_data_ptr<float>();
  at::parallel_for(0, rows, plane_grain(kPoints * partials * cols), [&](int64_t r0, int64_t r1) {
    winograd::transform_kernel_gradient(du, partials, rows, cols, planes, r0, r1, gw);
  });
}

}  // namespace

const char* conv2d_winograd_refusal(const Conv2dGeometry& g, Conv2dPass, at::ScalarType dtype) {
  if (g.kernel_h != 3 || g.kernel_w != 3 || g.stride_h != 1 || g.stride_w != 1 || g.dilation_h != 1 ||
      g.dilation_w != 1) {
    return "winograd is for 3x3 kernels with stride 1 and no dilation";
  }
  if (dtype != at::kFloat) {
    return "winograd runs in float32 only (float64 keeps the exact sum over the taps)";
  }
  if (g.groups != 1) {
    return "winograd is for ungrouped layers";
  }
  if (g.pad_h > 2 || g.pad_w > 2) {
    return "padding wider than the kernel's reach";
  }
  return nullptr;
}

bool conv2d_winograd_weight_grad_in_planes(const Conv2dGeometry& g) {
  return planes_layout(forward_problem(g), /*weight_grad=*/true);
}

void append_winograd_constants(RouteConstants& out) {
  out.emplace_back("winograd.min_plane_tiles", kMinPlaneTiles);
  out.emplace_back("winograd.min_plane_tiles_weight_grad", kMinPlaneTilesWeightGrad);
  out.emplace_back("winograd.block_values", kBlockValues);
  out.emplace_back("winograd.min_block_tiles", kMinBlockTiles);
  out.emplace_back("winograd.weight_block_values", kWeightBlockValues);
  out.emplace_back("winograd.max_weight_block_tiles", kMaxWeightBlockTiles);
  out.emplace_back("winograd.transform_grain", kTransformGrain);
  out.emplace_back("winograd.min_split_channels", kMinSplitChannels);
  out.emplace_back("winograd.by_channels_values", kByChannelsValues);
}

void conv2d_winograd_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& bias, at::Tensor& output) {
  run_forward(forward_problem(g), input, weight, false, bias.defined() ? bias.const_data_ptr<float>() : nullptr,
              output);
}

void conv2d_winograd_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                    const at::Tensor& weight, at::Tensor& grad_input) {
  run_forward(input_grad_problem(g), grad_output, weight, true, nullptr, grad_input);
}

// The weight gradient sums over every tile of the batch. The tiles are cut
// into at most kWeightPartials fixed ranges, each summed into its own dU,
// and the output channels into ranges too when there are fewer partials than
// threads (each task then transforms the whole input for its channels). The
// partials are added in range order in double: the same result on every run.
void conv2d_winograd_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                     const at::Tensor& grad_output, at::Tensor& grad_weight) {
  const Problem p = forward_problem(g);
  const int64_t Ci = p.in_channels, Co = p.out_channels, tw = p.tiles_w(), threads = at::get_num_threads();
  const bool planes = planes_layout(p, true);
  const Blocks blocks = blocks_for(p, true);
  const at::Tensor xs = planes ? input : channels_last(input);
  const at::Tensor gs = planes ? grad_output : channels_last(grad_output);
  const at::Tensor zeros = scratch_zeros({std::max(Ci, Co)}, input.options());
  if (blocks.split == Split::kWhole) {
    // One block, one sum: dU^T = V^T dM, the transforms spread over the
    // threads by tiles, the products by position.
    const int64_t T = p.tiles(), sv = point_stride(T * Ci), sm = point_stride(T * Co);
    const at::Tensor V = points_of(scratch_empty({kPoints * sv}, input.options()), T, Ci, sv);
    const at::Tensor dM = points_of(scratch_empty({kPoints * sm}, input.options()), T, Co, sm);
    at::parallel_for(0, T, kTransformGrain, [&](int64_t t0, int64_t t1) {
      winograd::transform_input_channels(p, xs.const_data_ptr<float>(), zeros.const_data_ptr<float>(), t0, t1, sv,
                                         V.mutable_data_ptr<float>() + t0 * Ci);
      winograd::transform_grad_output_channels(p, gs.const_data_ptr<float>(), zeros.const_data_ptr<float>(), 0,
                                               Co, t0, t1, sm, dM.mutable_data_ptr<float>() + t0 * Co);
    });
    const at::Tensor dUT = scratch_empty({1, kPoints, Ci, Co}, input.options());
    products_by_position(dUT[0], V.transpose(1, 2), dM);
    kernel_gradient(dUT, false, grad_weight);
    return;
  }
  const int64_t per_partial = kPoints * Ci * Co;
  const int64_t partials = std::max<int64_t>(
      1, std::min({blocks.count, kWeightPartials, kPartialsBudget / per_partial}));
  const int64_t splits = partials >= threads ? 1
                                             : std::max<int64_t>(1, std::min(ceil_div(threads, partials),
                                                                             Co / kMinSplitChannels));
  // Per partial: dU (16, C_out, C_in) in the plane layout, dU^T (16, C_in,
  // C_out) in the channel layout.
  const at::Tensor dU = planes ? scratch_empty({partials, kPoints, Co, Ci}, input.options())
                               : scratch_empty({partials, kPoints, Ci, Co}, input.options());
  const int64_t task_macs = per_partial / splits * blocks.size * ceil_div(blocks.count, partials);
  const int64_t split_channels = ceil_div(Co, splits);
  const int64_t sv = point_stride(blocks.size * Ci), sm = point_stride(blocks.size * split_channels);
  parallel_items(partials * splits, task_macs, [&](int64_t begin, int64_t end) {
    const at::Tensor V_buf = scratch_empty({kPoints * sv}, input.options());
    const at::Tensor dM_buf = scratch_empty({kPoints * sm}, input.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t part = task / splits, split = task % splits;
      const int64_t c0 = split * Co / splits, c1 = (split + 1) * Co / splits;
      const int64_t first = part * blocks.count / partials, last = (part + 1) * blocks.count / partials;
      at::Tensor sum = dU[part].narrow(planes ? 1 : 2, c0, c1 - c0);
      for (int64_t b = first; b < last; ++b) {
        const int64_t t0 = b * blocks.size, t1 = std::min(t0 + blocks.size, p.tiles());
        // The range's first block writes its sum (beta = 0), later ones add.
        const double beta = b == first ? 0.0 : 1.0;
        if (planes) {
          at::Tensor V = points_of(V_buf, Ci, t1 - t0, sv), dM = points_of(dM_buf, c1 - c0, t1 - t0, sm);
          winograd::transform_input_planes(p, xs.const_data_ptr<float>(), t0 / tw, t1 / tw, sv,
                                           V.mutable_data_ptr<float>());
          winograd::transform_grad_output_planes(p, gs.const_data_ptr<float>(), c0, c1, t0 / tw, t1 / tw, sm,
                                                 dM.mutable_data_ptr<float>());
          gemm::matmul(sum, dM, V.transpose(1, 2), beta);  // dU += dM V^T
        } else {
          at::Tensor V = points_of(V_buf, t1 - t0, Ci, sv), dM = points_of(dM_buf, t1 - t0, c1 - c0, sm);
          winograd::transform_input_channels(p, xs.const_data_ptr<float>(), zeros.const_data_ptr<float>(), t0,
                                             t1, sv, V.mutable_data_ptr<float>());
          winograd::transform_grad_output_channels(p, gs.const_data_ptr<float>(), zeros.const_data_ptr<float>(),
                                                   c0, c1, t0, t1, sm, dM.mutable_data_ptr<float>());
          gemm::matmul(sum, V.transpose(1, 2), dM, beta);  // dU^T += V^T dM
        }
      }
    }
  });
  kernel_gradient(dU, planes, grad_weight);
}

}  // namespace custom_conv
