// Depthwise layers on the GPU (one input channel per group, any channel
// multiplier): output channel co reads input channel co / multiplier only, so
// each output is a sum of kH * kW products read straight from one input
// plane. im2col would copy every input value kH * kW times to feed a GEMM
// whose reduction is only kH * kW long; these kernels read the planes in
// place.
//
// - Forward: a block computes a tile of one or more output planes, from the
//   patch of each input plane behind its tile, staged in shared memory once
//   (each input value is read from memory once per tile, not once per tap);
//   each value is the bias, then the taps in the kernel's order. A thread
//   computes kDepthwiseColumns adjacent values of a row where the tiles fit
//   so (else half as many, else one): it loads the taps' weights once for
//   all of them, and at stride and dilation 1 reads a patch value once for
//   all the values whose windows hold it, not once per tap.
// - Input gradient: the same tiles over input planes, from patches of the
//   output gradient: each input value gathers from every output whose window
//   holds it (output channel by output channel, taps in the kernel's order),
//   the lecture's convolution of the output gradient with the rotated
//   kernel written as a gather, so no two threads add into the same value
//   and nothing needs atomics. At column stride 1 a thread computes
//   adjacent values of a row as the forward's do, and for the same gains.
// - Both tiles are unrolled instances for square kernels of 3, 5 and 7, with
//   the taps' weights in registers; other kernels loop over their taps.
// - Weight gradient: a block per output channel (and slice of the batch's
//   positions, where the channels alone are too few blocks): each thread
//   sums every tap of its positions' products in registers (kernels of
//   3 x 3, 5 x 5 and 7 x 7), then warps add their threads' sums by shuffles
//   and the block the warps' in a fixed order, and a second kernel the
//   slices in slice order: bitwise the same on every run.
// Indices within the kernels are 32-bit, divided by Divisors made on the
// host; tensor offsets 64-bit. Layers beyond what the tiles take (patches
// larger than the block's shared memory, other kernel sizes for the weight
// gradient, indices beyond 32 bits) run on the general kernels at the end:
// one thread per value, 64-bit indices, a block per (output channel, tap).
// Sums run in the accumulation type (float for half and bfloat16).
#pragma once

#include "../geometry.h"
#include "common.cuh"
#include "divisor.cuh"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace custom_conv {
namespace gpu {

constexpr int kDepthwiseThreads = 256;
// Adjacent values of a row a thread of the tiles computes (at most).
constexpr int kDepthwiseColumns = 4;
// Values of the read tensor a block stages: 16 KiB of float.
constexpr int kDepthwisePatch = 4096;

// A depthwise layer's geometry in 32-bit numbers, with the divisors its
// indices need.
struct DepthwiseIndex : ConvSizes {
  Divisor out_channels_of, in_channels_of, multiplier, stride_row, stride_col, out_plane, out_col;

  explicit DepthwiseIndex(const Conv2dGeometry& g)
      : ConvSizes(g),
        out_channels_of(g.out_channels), in_channels_of(g.in_channels), multiplier(g.out_channels / g.in_channels),
        stride_row(g.stride_h), stride_col(g.stride_w), out_plane(std::max<int64_t>(1, g.output_plane())),
        out_col(std::max<int64_t>(1, g.out_w)) {}
};

// Whether a layer's indices fit DepthwiseIndex: planes, positions of the
// batch, and every plane's values below 2^31.
inline bool depthwise_indices_fit(const Conv2dGeometry& g) {
  // (A thread's loop over positions steps a block's width past its last.)
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max() - kDepthwiseThreads;
  return g.batch * g.out_channels <= kMax && g.batch * g.output_plane() <= kMax &&
         g.in_h * g.in_w <= kMax && g.in_channels >= 1 && g.out_channels >= 1;
}

// The tiles of a forward or input-gradient pass: a block computes tile_h x
// tile_w values (powers of two: the smallest that hold the plane, at most
// 32 wide and no narrower than a thread's columns) of planes_per_block
// planes, 2^log_columns adjacent ones of a row per thread, from a patch_h x
// patch_w patch of each plane it reads.
struct DepthwiseTiles {
  int32_t tile_h = 1, tile_w = 1, log_w = 0, log_area = 0, log_columns = 0, planes_per_block = 1;
  int32_t patch_h = 0, patch_w = 0;
  int64_t blocks = 0;
  Divisor tiles, tiles_w, patch_col;  // tiles per plane, tiles per row of tiles, patch_w
};

inline int32_t depthwise_side(int64_t n, int32_t cap) {
  int32_t side = 1;
  while (side < n && side < cap) {
    side *= 2;
  }
  return side;
}

inline int32_t depthwise_log2(int32_t power) {
  int32_t log = 0;
  while ((1 << log) < power) {
    ++log;
  }
  return log;
}

// Tiles over `planes` planes of rows x cols, `columns` values of a row a
// thread (a power of two); patch(tile_h, tile_w) gives the patch behind a
// tile. Whether they fit: the patches in the block's shared memory, the
// blocks in a grid.
template <typename Patch>
bool plan_depthwise_tiles(int64_t planes, int64_t rows, int64_t cols, const Patch& patch, DepthwiseTiles& t,
                          int32_t columns = 1) {
  const int32_t values = kDepthwiseThreads * columns;
  t.tile_w = std::max(columns, depthwise_side(cols, 32));
  t.tile_h = depthwise_side(rows, values / t.tile_w);
  t.log_w = depthwise_log2(t.tile_w);
  t.log_area = depthwise_log2(t.tile_w * t.tile_h);
  t.log_columns = depthwise_log2(columns);
  t.planes_per_block = values / (t.tile_w * t.tile_h);
  const std::pair<int64_t, int64_t> hw = patch(t.tile_h, t.tile_w);
  if (t.planes_per_block * hw.first * hw.second > kDepthwisePatch) {
    return false;
  }
  t.patch_h = static_cast<int32_t>(hw.first);
  t.patch_w = static_cast<int32_t>(hw.second);
  const int64_t tiles_w = (cols + t.tile_w - 1) / t.tile_w;
  const int64_t tiles = tiles_w * ((rows + t.tile_h - 1) / t.tile_h);
  t.blocks = (planes + t.planes_per_block - 1) / t.planes_per_block * tiles;
  if (t.blocks > std::numeric_limits<int32_t>::max()) {
    return false;
  }
  t.tiles = Divisor(tiles);
  t.tiles_w = Divisor(tiles_w);
  t.patch_col = Divisor(t.patch_w);
  return true;
}

// This block's planes and the origin of its tile in them; this thread's
// plane (among the block's), row and (first) column in the tile.
struct DepthwiseTile {
  int32_t first_plane, row0, col0;
  int32_t plane, row, col;

  __device__ __forceinline__ explicit DepthwiseTile(const DepthwiseTiles& t) {
    const int32_t block = static_cast<int32_t>(blockIdx.x);
    const int32_t group = t.tiles.div(block), tile = t.tiles.mod(block, group);
    const int32_t tile_row = t.tiles_w.div(tile);
    first_plane = group * t.planes_per_block;
    row0 = tile_row * t.tile_h;
    col0 = t.tiles_w.mod(tile, tile_row) * t.tile_w;
    const int32_t i = static_cast<int32_t>(threadIdx.x);
    plane = i >> (t.log_area - t.log_columns);
    row = (i >> (t.log_w - t.log_columns)) & (t.tile_h - 1);
    col = (i & ((t.tile_w >> t.log_columns) - 1)) << t.log_columns;
  }
};

// Stages patch p of the block (rows r0 .., columns c0 .. of a rows x cols
// plane at `source`; zero outside it) into patch[p * patch_h * patch_w ..].
template <typename scalar_t, typename Patch>
__device__ __forceinline__ void stage_depthwise_patch(Patch& patch, int32_t p, const DepthwiseTiles& t,
                                                      gpu_ptr<const scalar_t> source, int32_t rows, int32_t cols,
                                                      int32_t r0, int32_t c0) {
  using acc_t = at::opmath_type<scalar_t>;
  const int32_t size = t.patch_h * t.patch_w;
  for (int32_t e = static_cast<int32_t>(threadIdx.x); e < size; e += kDepthwiseThreads) {
    const int32_t r = t.patch_col.div(e);
    const int32_t h = r0 + r, w = c0 + t.patch_col.mod(e, r);
    patch[p * size + e] = static_cast<uint32_t>(h) < static_cast<uint32_t>(rows) &&
                                  static_cast<uint32_t>(w) < static_cast<uint32_t>(cols)
                              ? static_cast<acc_t>(source[static_cast<int64_t>(h) * cols + w])
                              : acc_t(0);
  }
}

// A kSide x kSide kernel's weights at w into registers, in the accumulation type.
template <int kSide, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_depthwise_taps(gpu_ptr<const scalar_t> w, acc_t (&taps)[kSide * kSide]) {
#pragma unroll
  for (int i = 0; i < kSide * kSide; ++i) {
    taps[i] = static_cast<acc_t>(w[i]);
  }
}

// Adds one kernel row's taps (tap_row[0 .. kSide)) into kColumns adjacent
// values whose windows overlap, the patch's kColumns + kSide - 1 values from
// patch[at] read once into registers: value c's tap kj reads value c + kj,
// or c + kSide - 1 - kj with the kernel rotated (the input gradient's).
template <int kSide, bool kRotated, int kColumns, typename Patch, typename acc_t>
__device__ __forceinline__ void add_overlapping_windows(Patch& patch, int32_t at, const acc_t* tap_row,
                                                        acc_t (&sum)[kColumns]) {
  acc_t v[kColumns + kSide - 1];
#pragma unroll
  for (int e = 0; e < kColumns + kSide - 1; ++e) {
    v[e] = patch[at + e];
  }
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
#pragma unroll
    for (int kj = 0; kj < kSide; ++kj) {
      sum[c] += tap_row[kj] * v[kRotated ? c + kSide - 1 - kj : c + kj];
    }
  }
}

// The forward's patch: the input rows and columns under a tile of outputs.
inline std::pair<int64_t, int64_t> depthwise_forward_patch(const Conv2dGeometry& g, int64_t tile_h, int64_t tile_w) {
  return {(tile_h - 1) * g.stride_h + (g.kernel_h - 1) * g.dilation_h + 1,
          (tile_w - 1) * g.stride_w + (g.kernel_w - 1) * g.dilation_w + 1};
}

// blockIdx.x = (group of planes, tile); a plane is (n, co). kSide: the
// size of a square kernel (3, 5 or 7: with_depthwise_kernel_side), whose
// weights each thread then holds in registers, its loops over the taps
// unrolled; 0 for any other, read at run time. kColumns: the adjacent values
// of a row each thread computes (t.log_columns).
template <typename scalar_t, int kSide, int kColumns>
__global__ void __launch_bounds__(kDepthwiseThreads)
depthwise_forward_tile_kernel(gpu_ptr<const scalar_t> input, gpu_ptr<const scalar_t> weight,
                              gpu_ptr<const scalar_t> bias, const DepthwiseIndex d, int32_t planes,
                              const DepthwiseTiles t, gpu_ptr<scalar_t> output) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ shared_array<acc_t, kDepthwisePatch> patch;
  const DepthwiseTile tile(t);
  const int32_t h0 = tile.row0 * d.stride_h - d.pad_h, w0 = tile.col0 * d.stride_w - d.pad_w;
  for (int32_t p = 0; p < t.planes_per_block && tile.first_plane + p < planes; ++p) {
    const int32_t plane = tile.first_plane + p;  // n * C_out + co
    const int32_t n = d.out_channels_of.div(plane), co = d.out_channels_of.mod(plane, n);
    const int64_t source = (static_cast<int64_t>(n) * d.in_channels + d.multiplier.div(co)) * d.in_h * d.in_w;
    stage_depthwise_patch<scalar_t>(patch, p, t, input + source, d.in_h, d.in_w, h0, w0);
  }
  __syncthreads();
  const int32_t plane = tile.first_plane + tile.plane;
  const int32_t oh = tile.row0 + tile.row, ow = tile.col0 + tile.col;  // of the thread's first value
  if (plane >= planes || oh >= d.out_h || ow >= d.out_w) {
    return;
  }
  const int32_t co = d.out_channels_of.mod(plane, d.out_channels_of.div(plane));
  const gpu_ptr<const scalar_t> w = weight + static_cast<int64_t>(co) * d.kernel_h * d.kernel_w;
  const int32_t origin = tile.plane * t.patch_h * t.patch_w + tile.row * d.stride_h * t.patch_w + tile.col * d.stride_w;
  // Value c (column ow + c) reads patch[row + c * stride_w + kj * dilation_w] for tap (ki, kj).
  acc_t sum[kColumns];
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    sum[c] = bias != nullptr ? static_cast<acc_t>(bias[co]) : acc_t(0);
  }
  if constexpr (kSide > 0) {
    acc_t taps[kSide * kSide];
    load_depthwise_taps<kSide>(w, taps);
    if (kColumns > 1 && d.stride_w == 1 && d.dilation_w == 1) {
      // The values' windows overlap: a kernel row's patch values, each read once.
#pragma unroll
      for (int ki = 0; ki < kSide; ++ki) {
        add_overlapping_windows<kSide, false>(patch, origin + ki * d.dilation_h * t.patch_w, taps + ki * kSide, sum);
      }
    } else {
#pragma unroll
      for (int ki = 0; ki < kSide; ++ki) {
        const int32_t row = origin + ki * d.dilation_h * t.patch_w;
#pragma unroll
        for (int c = 0; c < kColumns; ++c) {
#pragma unroll
          for (int kj = 0; kj < kSide; ++kj) {
            sum[c] += taps[ki * kSide + kj] * patch[row + c * d.stride_w + kj * d.dilation_w];
          }
        }
      }
    }
  } else {
    for (int32_t ki = 0; ki < d.kernel_h; ++ki) {
      const int32_t row = origin + ki * d.dilation_h * t.patch_w;
      for (int32_t kj = 0; kj < d.kernel_w; ++kj) {
        const acc_t tap = static_cast<acc_t>(w[ki * d.kernel_w + kj]);
#pragma unroll
        for (int c = 0; c < kColumns; ++c) {
          sum[c] += tap * patch[row + c * d.stride_w + kj * d.dilation_w];
        }
      }
    }
  }
  const gpu_ptr<scalar_t> out = output + static_cast<int64_t>(plane) * d.out_h * d.out_w +
                                static_cast<int64_t>(oh) * d.out_w + ow;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    if (ow + c < d.out_w) {
      out[c] = static_cast<scalar_t>(sum[c]);
    }
  }
}

// The input gradient's patch: the output-gradient rows (and columns) whose
// windows reach a tile of inputs. Tile rows i0 .. i0 + tile_h - 1 are reached
// from output rows (i0 + pad - (kH - 1) * dilation) / stride (rounded down)
// to (i0 + tile_h - 1 + pad) / stride: at most this many.
inline std::pair<int64_t, int64_t> depthwise_input_grad_patch(const Conv2dGeometry& g, int64_t tile_h,
                                                              int64_t tile_w) {
  return {(tile_h - 1 + (g.kernel_h - 1) * g.dilation_h) / g.stride_h + 2,
          (tile_w - 1 + (g.kernel_w - 1) * g.dilation_w) / g.stride_w + 2};
}

// Output row (or column) o with o * stride = h exactly, h + lift * stride
// >= 0 (lift >= (k - 1) * dilation / stride makes every h of a window
// non-negative): o + lift, or -1 where stride does not divide h. (At stride
// 1, the same branch for every thread, no division.)
__device__ __forceinline__ int32_t depthwise_lifted_quotient(int32_t h, int32_t lift, int32_t stride,
                                                             const Divisor& by_stride) {
  const int32_t lifted = h + lift * stride;
  if (stride == 1) {
    return lifted;
  }
  const int32_t q = by_stride.div(lifted);
  return q * stride == lifted ? q : -1;
}

// blockIdx.x = (group of planes, tile); a plane is (n, ci). kSide as the
// forward's: for a square kernel of 3, 5 or 7, each thread also finds the
// output rows and columns its taps reach once, not once per channel of the
// multiplier and tap. kColumns: the adjacent values of a row each thread
// computes (t.log_columns), more than one only at column stride 1, where
// value c's windows are the first value's moved c columns on.
template <typename scalar_t, int kSide, int kColumns>
__global__ void __launch_bounds__(kDepthwiseThreads)
depthwise_backward_input_tile_kernel(gpu_ptr<const scalar_t> grad_output, gpu_ptr<const scalar_t> weight,
                                     const DepthwiseIndex d, int32_t planes, int32_t lift_h, int32_t lift_w,
                                     const DepthwiseTiles t, gpu_ptr<scalar_t> grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ shared_array<acc_t, kDepthwisePatch> patch;
  const DepthwiseTile tile(t);
  // The first output row and column of the patches (their lifted quotients: see above).
  const int32_t oh0 = d.stride_row.div(tile.row0 + d.pad_h - (d.kernel_h - 1) * d.dilation_h + lift_h * d.stride_h);
  const int32_t ow0 = d.stride_col.div(tile.col0 + d.pad_w - (d.kernel_w - 1) * d.dilation_w + lift_w * d.stride_w);
  const int32_t multiplier = static_cast<int32_t>(d.multiplier.divisor);
  const int32_t plane = tile.first_plane + tile.plane;
  const int32_t ih = tile.row0 + tile.row, iw = tile.col0 + tile.col;  // of the thread's first value
  const bool mine = plane < planes && ih < d.in_h && iw < d.in_w;
  // kSide > 0: tap (ki, kj)'s place in a patch for the first value, row
  // rows[ki], column cols[kj], or -1 where its window misses this input
  // (between strides).
  int32_t rows[kSide > 0 ? kSide : 1], cols[kSide > 0 ? kSide : 1];
  if constexpr (kSide > 0) {
#pragma unroll
    for (int k = 0; k < kSide; ++k) {
      const int32_t oh = depthwise_lifted_quotient(ih + d.pad_h - k * d.dilation_h, lift_h, d.stride_h, d.stride_row);
      const int32_t ow = depthwise_lifted_quotient(iw + d.pad_w - k * d.dilation_w, lift_w, d.stride_w, d.stride_col);
      rows[k] = oh < 0 ? -1 : oh - oh0;
      cols[k] = ow < 0 ? -1 : ow - ow0;
    }
  }
  acc_t sum[kColumns];
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    sum[c] = acc_t(0);
  }
  for (int32_t j = 0; j < multiplier; ++j) {
    if (j > 0) {
      __syncthreads();  // every thread done with the previous channel's patches
    }
    for (int32_t p = 0; p < t.planes_per_block && tile.first_plane + p < planes; ++p) {
      const int32_t staged = tile.first_plane + p;  // n * C_in + ci
      const int32_t n = d.in_channels_of.div(staged), ci = d.in_channels_of.mod(staged, n);
      const int64_t source = (static_cast<int64_t>(n) * d.out_channels + ci * multiplier + j) * d.out_h * d.out_w;
      stage_depthwise_patch<scalar_t>(patch, p, t, grad_output + source, d.out_h, d.out_w, oh0 - lift_h,
                                      ow0 - lift_w);
    }
    __syncthreads();
    if (!mine) {
      continue;
    }
    const int32_t co = d.in_channels_of.mod(plane, d.in_channels_of.div(plane)) * multiplier + j;
    const gpu_ptr<const scalar_t> w = weight + static_cast<int64_t>(co) * d.kernel_h * d.kernel_w;
    const int32_t base = tile.plane * t.patch_h * t.patch_w;
    if constexpr (kSide > 0) {
      acc_t taps[kSide * kSide];
      load_depthwise_taps<kSide>(w, taps);
      if (kColumns > 1 && d.dilation_w == 1) {
        // Value c's tap kj reads column cols[kSide - 1] + c + kSide - 1 - kj
        // (the kernel rotated): a kernel row's patch values, each read once.
#pragma unroll
        for (int ki = 0; ki < kSide; ++ki) {
          if (rows[ki] >= 0) {
            add_overlapping_windows<kSide, true>(patch, base + rows[ki] * t.patch_w + cols[kSide - 1],
                                                 taps + ki * kSide, sum);
          }
        }
      } else {
#pragma unroll
        for (int ki = 0; ki < kSide; ++ki) {
#pragma unroll
          for (int kj = 0; kj < kSide; ++kj) {
            if (rows[ki] >= 0 && cols[kj] >= 0) {
              const int32_t at = base + rows[ki] * t.patch_w + cols[kj];
#pragma unroll
              for (int c = 0; c < kColumns; ++c) {
                sum[c] += taps[ki * kSide + kj] * patch[at + c];
              }
            }
          }
        }
      }
    } else {
      for (int32_t ki = 0; ki < d.kernel_h; ++ki) {
        // Output row oh reads input row oh * stride - pad + ki * dilation: this one when that lands here.
        const int32_t oh =
            depthwise_lifted_quotient(ih + d.pad_h - ki * d.dilation_h, lift_h, d.stride_h, d.stride_row);
        if (oh < 0) {
          continue;
        }
        const int32_t row = base + (oh - oh0) * t.patch_w;
        for (int32_t kj = 0; kj < d.kernel_w; ++kj) {
          const int32_t ow =
              depthwise_lifted_quotient(iw + d.pad_w - kj * d.dilation_w, lift_w, d.stride_w, d.stride_col);
          if (ow >= 0) {
            const acc_t tap = static_cast<acc_t>(w[ki * d.kernel_w + kj]);
#pragma unroll
            for (int c = 0; c < kColumns; ++c) {
              sum[c] += tap * patch[row + ow - ow0 + c];
            }
          }
        }
      }
    }
  }
  if (mine) {
    const gpu_ptr<scalar_t> in = grad_input + static_cast<int64_t>(plane) * d.in_h * d.in_w +
                                 static_cast<int64_t>(ih) * d.in_w + iw;
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
      if (iw + c < d.in_w) {
        in[c] = static_cast<scalar_t>(sum[c]);
      }
    }
  }
}

// blockIdx.x = co * slices + slice: output channel co's kH x kW weight
// gradient over positions [slice * per_slice, (slice + 1) * per_slice) of
// the batch's N * out_h * out_w, into grad_weight (one slice) or partials
// (co, slice, tap) for depthwise_weight_slices_kernel.
template <typename scalar_t, int kKernelH, int kKernelW>
__global__ void __launch_bounds__(kDepthwiseThreads)
depthwise_backward_weight_taps_kernel(gpu_ptr<const scalar_t> grad_output, gpu_ptr<const scalar_t> input,
                                      const DepthwiseIndex d, int32_t positions, int32_t slices, int32_t per_slice,
                                      gpu_ptr<at::opmath_type<scalar_t>> partials, gpu_ptr<scalar_t> grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kTaps = kKernelH * kKernelW;
  constexpr int kWarps = kDepthwiseThreads / 32;
  __shared__ shared_array<acc_t, kWarps, kTaps> warp_sums;
  const int32_t co = static_cast<int32_t>(blockIdx.x) / slices, slice = static_cast<int32_t>(blockIdx.x) % slices;
  const int32_t ci = d.multiplier.div(co);
  const int32_t end = std::min(positions, (slice + 1) * per_slice);
  acc_t sum[kTaps];
#pragma unroll
  for (int t = 0; t < kTaps; ++t) {
    sum[t] = acc_t(0);
  }
  for (int32_t q = slice * per_slice + static_cast<int32_t>(threadIdx.x); q < end; q += kDepthwiseThreads) {
    const int32_t n = d.out_plane.div(q), o = d.out_plane.mod(q, n);
    const int32_t oh = d.out_col.div(o), ow = d.out_col.mod(o, oh);
    const acc_t gy =
        static_cast<acc_t>(grad_output[(static_cast<int64_t>(n) * d.out_channels + co) * d.out_h * d.out_w + o]);
    const gpu_ptr<const scalar_t> x = input + (static_cast<int64_t>(n) * d.in_channels + ci) * d.in_h * d.in_w;
    const int32_t h0 = oh * d.stride_h - d.pad_h, w0 = ow * d.stride_w - d.pad_w;
#pragma unroll
    for (int ki = 0; ki < kKernelH; ++ki) {
      const int32_t ih = h0 + ki * d.dilation_h;
      const bool row_inside = static_cast<uint32_t>(ih) < static_cast<uint32_t>(d.in_h);
#pragma unroll
      for (int kj = 0; kj < kKernelW; ++kj) {
        const int32_t iw = w0 + kj * d.dilation_w;
        if (row_inside && static_cast<uint32_t>(iw) < static_cast<uint32_t>(d.in_w)) {
          sum[ki * kKernelW + kj] += gy * static_cast<acc_t>(x[static_cast<int64_t>(ih) * d.in_w + iw]);
        }
      }
    }
  }
  // Each tap's 256 sums: a warp's by shuffles (lane 0 ends with them, in a
  // fixed order), then the warps' in warp order.
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
#pragma unroll
  for (int t = 0; t < kTaps; ++t) {
    acc_t v = sum[t];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    if (lane == 0) {
      warp_sums[warp][t] = v;
    }
  }
  __syncthreads();
  const int t = static_cast<int>(threadIdx.x);
  if (t < kTaps) {
    acc_t total = acc_t(0);
    for (int w = 0; w < kWarps; ++w) {
      total += warp_sums[w][t];
    }
    if (slices == 1) {
      grad_weight[static_cast<int64_t>(co) * kTaps + t] = static_cast<scalar_t>(total);
    } else {
      partials[(static_cast<int64_t>(co) * slices + slice) * kTaps + t] = total;
    }
  }
}

// grad_weight (co, tap) = the slices' partial sums, added in slice order.
template <typename scalar_t>
__global__ void depthwise_weight_slices_kernel(gpu_ptr<const at::opmath_type<scalar_t>> partials, int64_t weights,
                                               int32_t taps, int32_t slices, gpu_ptr<scalar_t> grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  CUSTOM_CONV_GRID_STRIDE_LOOP(i, weights) {
    const int64_t co = i / taps, t = i % taps;
    acc_t total = acc_t(0);
    for (int32_t s = 0; s < slices; ++s) {
      total += partials[(co * slices + s) * taps + t];
    }
    grad_weight[i] = static_cast<scalar_t>(total);
  }
}

// ------------------------------------------------------- the general kernels

template <typename scalar_t>
__global__ void depthwise_forward_kernel(gpu_ptr<const scalar_t> input, gpu_ptr<const scalar_t> weight,
                                         gpu_ptr<const scalar_t> bias, const Conv2dGeometry g,
                                         gpu_ptr<scalar_t> output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(i, g.batch * g.out_channels * g.out_h * g.out_w) {
    const int64_t ow = i % g.out_w;
    const int64_t oh = i / g.out_w % g.out_h;
    const int64_t plane = i / (g.out_w * g.out_h);  // n * C_out + co
    const int64_t co = plane % g.out_channels, n = plane / g.out_channels;
    const gpu_ptr<const scalar_t> x = input + (n * g.in_channels + co / multiplier) * g.in_h * g.in_w;
    const gpu_ptr<const scalar_t> w = weight + co * taps;
    acc_t sum = bias != nullptr ? static_cast<acc_t>(bias[co]) : acc_t(0);
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) {
        continue;
      }
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
        if (iw >= 0 && iw < g.in_w) {
          sum += static_cast<acc_t>(w[ki * g.kernel_w + kj]) * static_cast<acc_t>(x[ih * g.in_w + iw]);
        }
      }
    }
    output[i] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
__global__ void depthwise_backward_input_kernel(gpu_ptr<const scalar_t> grad_output, gpu_ptr<const scalar_t> weight,
                                                const Conv2dGeometry g, gpu_ptr<scalar_t> grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(i, g.batch * g.in_channels * g.in_h * g.in_w) {
    const int64_t iw = i % g.in_w;
    const int64_t ih = i / g.in_w % g.in_h;
    const int64_t plane = i / (g.in_w * g.in_h);  // n * C_in + ci
    const int64_t ci = plane % g.in_channels, n = plane / g.in_channels;
    acc_t sum = acc_t(0);
    for (int64_t co = ci * multiplier; co < (ci + 1) * multiplier; ++co) {
      const gpu_ptr<const scalar_t> gy = grad_output + (n * g.out_channels + co) * g.out_h * g.out_w;
      const gpu_ptr<const scalar_t> w = weight + co * taps;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        // Output row oh reads input row oh * s - p + ki * d: this one when
        // that lands here exactly.
        const int64_t h = ih + g.pad_h - ki * g.dilation_h;
        if (h < 0 || h % g.stride_h != 0 || h / g.stride_h >= g.out_h) {
          continue;
        }
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t v = iw + g.pad_w - kj * g.dilation_w;
          if (v >= 0 && v % g.stride_w == 0 && v / g.stride_w < g.out_w) {
            sum += static_cast<acc_t>(w[ki * g.kernel_w + kj]) *
                   static_cast<acc_t>(gy[h / g.stride_h * g.out_w + v / g.stride_w]);
          }
        }
      }
    }
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

constexpr int kDepthwiseWeightThreads = 256;

// blockIdx.x = co * taps + tap.
template <typename scalar_t>
__global__ void __launch_bounds__(kDepthwiseWeightThreads)
depthwise_backward_weight_kernel(gpu_ptr<const scalar_t> grad_output, gpu_ptr<const scalar_t> input,
                                 const Conv2dGeometry g, gpu_ptr<scalar_t> grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ shared_array<acc_t, kDepthwiseWeightThreads> shares;
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t co = blockIdx.x / taps, tap = blockIdx.x % taps;
  const int64_t ki = tap / g.kernel_w, kj = tap % g.kernel_w;
  const int64_t outputs = g.out_h * g.out_w;
  acc_t sum = acc_t(0);
  for (int64_t j = threadIdx.x; j < g.batch * outputs; j += kDepthwiseWeightThreads) {
    const int64_t n = j / outputs, o = j % outputs;
    const int64_t ih = o / g.out_w * g.stride_h - g.pad_h + ki * g.dilation_h;
    const int64_t iw = o % g.out_w * g.stride_w - g.pad_w + kj * g.dilation_w;
    if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) {
      sum += static_cast<acc_t>(grad_output[(n * g.out_channels + co) * outputs + o]) *
             static_cast<acc_t>(input[((n * g.in_channels + co / multiplier) * g.in_h + ih) * g.in_w + iw]);
    }
  }
  shares[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kDepthwiseWeightThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      shares[threadIdx.x] = shares[threadIdx.x] + shares[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    grad_weight[co * taps + tap] = static_cast<scalar_t>(static_cast<acc_t>(shares[0]));
  }
}

// ------------------------------------------------------------- the passes
//
// Each on the tiles where the layer fits them, else on the general kernels;
// every tensor contiguous.

// Calls run(std::integral_constant<int, side>{}) with side 3, 5 or 7 for a
// square kernel of that size, the kernels' unrolled instances; else with 0.
template <typename Run>
void with_depthwise_kernel_side(const Conv2dGeometry& g, const Run& run) {
  if (g.kernel_h == g.kernel_w) {
    switch (g.kernel_h) {
      case 3: return run(std::integral_constant<int, 3>{});
      case 5: return run(std::integral_constant<int, 5>{});
      case 7: return run(std::integral_constant<int, 7>{});
      default: break;
    }
  }
  run(std::integral_constant<int, 0>{});
}

// Calls plan(std::integral_constant<int, columns>{}) with kDepthwiseColumns
// values of a row a thread, then half as many, then one (only one where
// `several` is false), until it returns true: planned and launched, the
// patches fitting the block's shared memory. Whether any did.
template <typename Plan>
bool plan_depthwise_columns(bool several, const Plan& plan) {
  return (several && (plan(std::integral_constant<int, kDepthwiseColumns>{}) ||
                      plan(std::integral_constant<int, kDepthwiseColumns / 2>{}))) ||
         plan(std::integral_constant<int, 1>{});
}

template <typename scalar_t>
void depthwise_forward(const Conv2dGeometry& g, gpu_ptr<const scalar_t> input, gpu_ptr<const scalar_t> weight,
                       gpu_ptr<const scalar_t> bias, gpu_ptr<scalar_t> output) {
  const int64_t planes = g.batch * g.out_channels;
  const auto patch = [&](int64_t h, int64_t w) { return depthwise_forward_patch(g, h, w); };
  // Several values a thread where their patches fit (a 64 x 64 output of a
  // strided 3 x 3 kernel needs 65 x 65 inputs for four, 65 x 33 for two).
  const auto tiles = [&](auto columns) {
    constexpr int kColumns = decltype(columns)::value;
    DepthwiseTiles t;
    if (!plan_depthwise_tiles(planes, g.out_h, g.out_w, patch, t, kColumns)) {
      return false;
    }
    with_depthwise_kernel_side(g, [&](auto side) {
      constexpr int kSide = decltype(side)::value;
      CUSTOM_CONV_LAUNCH(static_cast<unsigned int>(t.blocks), kDepthwiseThreads,
                         depthwise_forward_tile_kernel<scalar_t, kSide, kColumns>)(
          input, weight, bias, DepthwiseIndex(g), static_cast<int32_t>(planes), t, output);
    });
    return true;
  };
  if (depthwise_indices_fit(g) && plan_depthwise_columns(true, tiles)) {
    return;
  }
  CUSTOM_CONV_LAUNCH(grid_for(planes * g.output_plane()), kThreads, depthwise_forward_kernel<scalar_t>)(
      input, weight, bias, g, output);
}

template <typename scalar_t>
void depthwise_backward_input(const Conv2dGeometry& g, gpu_ptr<const scalar_t> grad_output,
                              gpu_ptr<const scalar_t> weight, gpu_ptr<scalar_t> grad_input) {
  const int64_t planes = g.batch * g.in_channels;
  const auto patch = [&](int64_t h, int64_t w) { return depthwise_input_grad_patch(g, h, w); };
  // Enough whole strides that no window's row or column goes negative.
  const int64_t lift_h = ((g.kernel_h - 1) * g.dilation_h + g.stride_h - 1) / g.stride_h;
  const int64_t lift_w = ((g.kernel_w - 1) * g.dilation_w + g.stride_w - 1) / g.stride_w;
  const auto tiles = [&](auto columns) {
    constexpr int kColumns = decltype(columns)::value;
    DepthwiseTiles t;
    if (!plan_depthwise_tiles(planes, g.in_h, g.in_w, patch, t, kColumns)) {
      return false;
    }
    with_depthwise_kernel_side(g, [&](auto side) {
      constexpr int kSide = decltype(side)::value;
      CUSTOM_CONV_LAUNCH(static_cast<unsigned int>(t.blocks), kDepthwiseThreads,
                         depthwise_backward_input_tile_kernel<scalar_t, kSide, kColumns>)(
          grad_output, weight, DepthwiseIndex(g), static_cast<int32_t>(planes), static_cast<int32_t>(lift_h),
          static_cast<int32_t>(lift_w), t, grad_input);
    });
    return true;
  };
  // Several values a thread only at column stride 1 (the kernel's rule).
  if (depthwise_indices_fit(g) && plan_depthwise_columns(g.stride_w == 1, tiles)) {
    return;
  }
  CUSTOM_CONV_LAUNCH(grid_for(planes * g.in_h * g.in_w), kThreads, depthwise_backward_input_kernel<scalar_t>)(
      grad_output, weight, g, grad_input);
}

// The weight gradient with the taps of a kH x kW kernel in registers.
template <typename scalar_t, int kKernelH, int kKernelW>
void depthwise_backward_weight_taps(const Conv2dGeometry& g, gpu_ptr<const scalar_t> grad_output,
                                    gpu_ptr<const scalar_t> input, gpu_ptr<scalar_t> grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  // Slices of at least kMinSlice positions, only as many as it takes to give
  // every multiprocessor two blocks: the same for a given layer and GPU.
  constexpr int64_t kMinSlice = 2048;
  const int64_t positions = g.batch * g.output_plane();
  const int64_t wanted = (2 * launch_limits().multiprocessors + g.out_channels - 1) / g.out_channels;
  int64_t slices = std::max<int64_t>(1, std::min(wanted, positions / kMinSlice));
  const int64_t per_slice = std::max<int64_t>(1, (positions + slices - 1) / slices);
  slices = std::max<int64_t>(1, (positions + per_slice - 1) / per_slice);
  at::Tensor partials;
  gpu_ptr<acc_t> partial_sums = nullptr;
  if (slices > 1) {
    partials = at::empty({g.out_channels * slices * kKernelH * kKernelW},
                         device_options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    partial_sums = partials.mutable_data_ptr<acc_t>();
  }
  CUSTOM_CONV_LAUNCH(static_cast<unsigned int>(g.out_channels * slices), kDepthwiseThreads,
                     depthwise_backward_weight_taps_kernel<scalar_t, kKernelH, kKernelW>)(
      grad_output, input, DepthwiseIndex(g), static_cast<int32_t>(positions), static_cast<int32_t>(slices),
      static_cast<int32_t>(per_slice), partial_sums, grad_weight);
  if (slices > 1) {
    const int64_t weights = g.out_channels * kKernelH * kKernelW;
    CUSTOM_CONV_LAUNCH(grid_for(weights), kThreads, depthwise_weight_slices_kernel<scalar_t>)(
        partial_sums, weights, kKernelH * kKernelW, static_cast<int32_t>(slices), grad_weight);
  }
}

template <typename scalar_t>
void depthwise_backward_weight(const Conv2dGeometry& g, gpu_ptr<const scalar_t> grad_output,
                               gpu_ptr<const scalar_t> input, gpu_ptr<scalar_t> grad_weight) {
  with_depthwise_kernel_side(g, [&](auto side) {
    constexpr int kSide = decltype(side)::value;
    if constexpr (kSide > 0) {
      if (depthwise_indices_fit(g)) {
        return depthwise_backward_weight_taps<scalar_t, kSide, kSide>(g, grad_output, input, grad_weight);
      }
    }
    CUSTOM_CONV_LAUNCH(static_cast<unsigned int>(g.out_channels * g.kernel_h * g.kernel_w),
                       kDepthwiseWeightThreads, depthwise_backward_weight_kernel<scalar_t>)(grad_output, input, g,
                                                                                           grad_weight);
  });
}

}  // namespace gpu
}  // namespace custom_conv
