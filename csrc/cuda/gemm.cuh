// Our own matrix product for the CUDA kernels: a tiled shared-memory GEMM,
//   C[z] = alpha * op(A[z]) @ op(B[z]) + beta * C[z] + bias[z] (per row),
// batched over z (the convolution groups), with op(X) = X or X^T. The three
// convolution products need NN (forward), TN (backward input) and NT
// (backward weight); the transposes are template parameters, so each variant
// reads its operands in their stored layout with no copy.
//
// Each block computes a 64 x 64 tile of C. Per step it stages a 64 x 16 slab
// of op(A) and a 16 x 64 slab of op(B) in shared memory, converted to the
// accumulation type, and each of its 256 threads accumulates a 4 x 4 piece of
// the tile in registers. Half and bfloat16 accumulate in float
// (at::opmath_type): summing thousands of products in 16 bits would lose most
// of their digits.
//
// When there are too few output tiles to fill the GPU but a long reduction
// (the weight gradient of a small layer: a 6 x 25 result summed over 50 000
// positions), the reduction is split into slices computed by separate blocks.
// Each slice writes its partial sum to a workspace and a second kernel adds
// the slices in a fixed order. Atomics would be simpler but would make the
// summation order, and thus the rounding, change from run to run.
#pragma once

#include "common.cuh"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

namespace custom_conv {
namespace gpu {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
// The 256 threads of a block form a 16 x 16 grid; each owns the 4 x 4 outputs
// (ty + 16 i, tx + 16 j). Interleaving (rather than 4 adjacent values) makes
// neighbouring threads read neighbouring shared-memory words and write
// neighbouring elements of C.
constexpr int kThreadGrid = 16;
constexpr int kMicroM = kTileM / kThreadGrid;
constexpr int kMicroN = kTileN / kThreadGrid;
static_assert(kThreadGrid * kThreadGrid == kThreads, "one thread per grid cell");
static_assert(kTileM * kTileK % kThreads == 0 && kTileN * kTileK % kThreads == 0,
              "every thread loads the same number of slab elements");

// Operands are row-major with leading dimensions lda, ldb, ldc: A is stored
// (m, k), or (k, m) when trans_a; B is stored (k, n), or (n, k) when trans_b.
// C is stored as out_t: the operands' type, or the accumulation type for a
// sum that later products add onto (beta = 1) and that is rounded once, at
// the end, by the caller.
template <typename scalar_t, typename out_t = scalar_t>
struct GemmParams {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t batch = 1, m = 0, n = 0, k = 0;
  gpu_ptr<const scalar_t> a = nullptr;
  int64_t lda = 0, batch_stride_a = 0;
  bool trans_a = false;
  gpu_ptr<const scalar_t> b = nullptr;
  int64_t ldb = 0, batch_stride_b = 0;
  bool trans_b = false;
  gpu_ptr<out_t> c = nullptr;
  int64_t ldc = 0, batch_stride_c = 0;
  // Optional: bias[z * batch_stride_bias + row] is added to every row.
  gpu_ptr<const scalar_t> bias = nullptr;
  int64_t batch_stride_bias = 0;
  acc_t alpha = acc_t(1);
  // With beta == 0, C is not read, so it may be uninitialised memory.
  acc_t beta = acc_t(0);
};

template <typename scalar_t, typename out_t, typename acc_t>
__device__ __forceinline__ void gemm_store(const GemmParams<scalar_t, out_t>& p, int64_t z,
                                           int64_t row, int64_t col, acc_t sum) {
  acc_t v = p.alpha * sum;
  if (p.bias != nullptr) {
    v += static_cast<acc_t>(p.bias[z * p.batch_stride_bias + row]);
  }
  const gpu_ptr<out_t> c = p.c + z * p.batch_stride_c + row * p.ldc + col;
  if (p.beta != acc_t(0)) {
    v += p.beta * static_cast<acc_t>(*c);
  }
  *c = static_cast<out_t>(v);
}

// blockIdx = (column tile, row tile, (batch - batch_offset) * splits + slice).
// With splits > 1 the block writes its partial sum to `partials`, laid out
// (batch, splits, m, n), instead of C.
template <typename scalar_t, typename out_t, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads)
gemm_tile_kernel(const GemmParams<scalar_t, out_t> p, int64_t batch_offset, int64_t splits,
                 int64_t k_per_split, gpu_ptr<at::opmath_type<scalar_t>> partials) {
  using acc_t = at::opmath_type<scalar_t>;
  // One padding column keeps the transposing stores (slab element (row, k)
  // to tile[k][row]) from landing in the same bank.
  __shared__ shared_array<acc_t, kTileK, kTileM + 1> a_tile;
  __shared__ shared_array<acc_t, kTileK, kTileN + 1> b_tile;

  const int64_t z = batch_offset + blockIdx.z / splits;
  const int64_t slice = blockIdx.z % splits;
  const gpu_ptr<const scalar_t> a = p.a + z * p.batch_stride_a;
  const gpu_ptr<const scalar_t> b = p.b + z * p.batch_stride_b;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int64_t k_begin = slice * k_per_split;
  const int64_t k_end = k_begin + k_per_split < p.k ? k_begin + k_per_split : p.k;
  const int tx = threadIdx.x % kThreadGrid;
  const int ty = threadIdx.x / kThreadGrid;

  acc_t sum[kMicroM][kMicroN];
#pragma unroll
  for (int i = 0; i < kMicroM; ++i) {
#pragma unroll
    for (int j = 0; j < kMicroN; ++j) {
      sum[i][j] = acc_t(0);
    }
  }

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
    // Consecutive threads take consecutive elements along whichever dimension
    // of the operand is contiguous in memory, so global loads coalesce.
#pragma unroll
    for (int r = 0; r < kTileM * kTileK / kThreads; ++r) {
      const int e = threadIdx.x + r * kThreads;
      const int row = kTransA ? e % kTileM : e / kTileK;
      const int kk = kTransA ? e / kTileM : e % kTileK;
      const int64_t m = m0 + row, k = k0 + kk;
      acc_t v = acc_t(0);
      if (m < p.m && k < k_end) {
        v = static_cast<acc_t>(kTransA ? a[k * p.lda + m] : a[m * p.lda + k]);
      }
      a_tile[kk][row] = v;
    }
#pragma unroll
    for (int r = 0; r < kTileN * kTileK / kThreads; ++r) {
      const int e = threadIdx.x + r * kThreads;
      const int col = kTransB ? e / kTileK : e % kTileN;
      const int kk = kTransB ? e % kTileK : e / kTileN;
      const int64_t n = n0 + col, k = k0 + kk;
      acc_t v = acc_t(0);
      if (n < p.n && k < k_end) {
        v = static_cast<acc_t>(kTransB ? b[n * p.ldb + k] : b[k * p.ldb + n]);
      }
      b_tile[kk][col] = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t a_frag[kMicroM], b_frag[kMicroN];
#pragma unroll
      for (int i = 0; i < kMicroM; ++i) {
        a_frag[i] = a_tile[kk][ty + i * kThreadGrid];
      }
#pragma unroll
      for (int j = 0; j < kMicroN; ++j) {
        b_frag[j] = b_tile[kk][tx + j * kThreadGrid];
      }
#pragma unroll
      for (int i = 0; i < kMicroM; ++i) {
#pragma unroll
        for (int j = 0; j < kMicroN; ++j) {
          sum[i][j] += a_frag[i] * b_frag[j];
        }
      }
    }
    // The next iteration overwrites the tiles; wait until all have read them.
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kMicroM; ++i) {
#pragma unroll
    for (int j = 0; j < kMicroN; ++j) {
      const int64_t m = m0 + ty + i * kThreadGrid;
      const int64_t n = n0 + tx + j * kThreadGrid;
      if (m < p.m && n < p.n) {
        if (partials != nullptr) {
          partials[((z * splits + slice) * p.m + m) * p.n + n] = sum[i][j];
        } else {
          gemm_store(p, z, m, n, sum[i][j]);
        }
      }
    }
  }
}

// Adds the slices of a split reduction in slice order, then applies alpha,
// bias and beta exactly as the unsplit kernel does.
template <typename scalar_t, typename out_t>
__global__ void gemm_split_reduce_kernel(const GemmParams<scalar_t, out_t> p, int64_t splits,
                                         gpu_ptr<const at::opmath_type<scalar_t>> partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = p.m * p.n;
  CUSTOM_CONV_GRID_STRIDE_LOOP(i, p.batch * plane) {
    const int64_t z = i / plane;
    const int64_t mn = i % plane;
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) {
      sum += partials[(z * splits + s) * plane + mn];
    }
    gemm_store(p, z, mn / p.n, mn % p.n, sum);
  }
}

// How many slices to cut the reduction into. Only when the output tiles
// alone would leave most of the GPU idle, and never into slices shorter than
// kMinSliceK (the partial sums would cost more to write than to compute). The
// choice depends only on the shapes and the GPU, so a given call on a given
// device always sums in the same order.
inline int64_t gemm_splits(int64_t tiles, int64_t batch, int64_t m, int64_t n, int64_t k,
                           int64_t multiprocessors) {
  constexpr int64_t kMinSliceK = 256;
  // Partial sums held at once, in accumulator values (16 Mi = 64 MiB of float).
  constexpr int64_t kWorkspaceBudget = int64_t{1} << 24;
  const int64_t wanted_blocks = 2 * multiprocessors;
  if (tiles >= wanted_blocks) {
    return 1;
  }
  int64_t splits = std::min((wanted_blocks + tiles - 1) / tiles, k / kMinSliceK);
  splits = std::min(splits, kWorkspaceBudget / std::max<int64_t>(1, batch * m * n));
  return std::max<int64_t>(1, splits);
}

// How a GEMM is launched: a grid of (tiles_n, tiles_m, batches * splits)
// blocks, in launches of at most batches_per_launch batch entries.
struct GemmPlan {
  int64_t tiles_m, tiles_n;
  int64_t splits, k_per_split;
  int64_t batches_per_launch;
};

inline GemmPlan plan_gemm(int64_t batch, int64_t m, int64_t n, int64_t k, const LaunchLimits& limits) {
  GemmPlan plan;
  plan.tiles_m = (m + kTileM - 1) / kTileM;
  plan.tiles_n = (n + kTileN - 1) / kTileN;
  TORCH_CHECK(plan.tiles_m <= limits.max_grid_yz && plan.tiles_n <= 0x7fffffff,
              "custom_conv gemm: matrix of ", m, " x ", n, " is too large");
  plan.splits = gemm_splits(plan.tiles_m * plan.tiles_n * batch, batch, m, n, k, limits.multiprocessors);
  // Slices are whole multiples of the K tile; recount them after rounding.
  plan.k_per_split = std::max<int64_t>(k, 1);
  if (plan.splits > 1) {
    plan.k_per_split = ((k + plan.splits - 1) / plan.splits + kTileK - 1) / kTileK * kTileK;
    plan.splits = (k + plan.k_per_split - 1) / plan.k_per_split;
  }
  // gridDim.z is limited, so large batches take several launches.
  plan.batches_per_launch = std::max<int64_t>(1, limits.max_grid_yz / plan.splits);
  return plan;
}

template <typename scalar_t, typename out_t, bool kTransA, bool kTransB>
void launch_gemm_tiles(const GemmParams<scalar_t, out_t>& p, const GemmPlan& plan,
                       gpu_ptr<at::opmath_type<scalar_t>> partials) {
  for (int64_t z0 = 0; z0 < p.batch; z0 += plan.batches_per_launch) {
    const int64_t nz = std::min(plan.batches_per_launch, p.batch - z0);
    const dim3 grid(static_cast<unsigned int>(plan.tiles_n), static_cast<unsigned int>(plan.tiles_m),
                    static_cast<unsigned int>(nz * plan.splits));
    CUSTOM_CONV_LAUNCH(grid, kThreads, gemm_tile_kernel<scalar_t, out_t, kTransA, kTransB>)(
        p, z0, plan.splits, plan.k_per_split, partials);
  }
}

// Runs C = alpha * op(A) @ op(B) + beta * C (+ bias) on the current stream.
template <typename scalar_t, typename out_t>
void gemm(const GemmParams<scalar_t, out_t>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  if (p.batch == 0 || p.m == 0 || p.n == 0) {
    return;
  }
  const GemmPlan plan = plan_gemm(p.batch, p.m, p.n, p.k, launch_limits());
  at::Tensor workspace;
  gpu_ptr<acc_t> partials = nullptr;
  if (plan.splits > 1) {
    // Freed when this function returns; the caching allocator keeps it from
    // being reused until the kernels queued on this stream have run.
    workspace = at::empty({p.batch * plan.splits * p.m * p.n},
                          device_options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    partials = workspace.mutable_data_ptr<acc_t>();
  }

  if (p.trans_a) {
    if (p.trans_b) {
      launch_gemm_tiles<scalar_t, out_t, true, true>(p, plan, partials);
    } else {
      launch_gemm_tiles<scalar_t, out_t, true, false>(p, plan, partials);
    }
  } else {
    if (p.trans_b) {
      launch_gemm_tiles<scalar_t, out_t, false, true>(p, plan, partials);
    } else {
      launch_gemm_tiles<scalar_t, out_t, false, false>(p, plan, partials);
    }
  }

  if (plan.splits > 1) {
    CUSTOM_CONV_LAUNCH(grid_for(p.batch * p.m * p.n), kThreads, gemm_split_reduce_kernel<scalar_t, out_t>)(
        p, plan.splits, partials);
  }
}

}  // namespace gpu
}  // namespace custom_conv
