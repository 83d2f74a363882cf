// Our own matrix product for the CUDA kernels: a tiled shared-memory GEMM,
//   C[z] = alpha * op(A[z]) @ op(B[z]) + beta * C[z] + bias[z] (per row),
// batched over z (the convolution groups), with op(X) = X or X^T. The three
// convolution products of the column-matrix route need NN (forward), TN
// (backward input) and NT (backward weight); which dimension of an operand is
// contiguous is a template parameter (the operand's type, below), so each
// variant reads its operands in their stored layout with no copy.
//
// On the CUDA cores (gemm_tile_kernel), each block of 256 threads computes a
// tile of C: 64 x 64, 64 x 128 or 128 x 128 (CoreTile, tile_for: the
// largest that the product fills and that still gives every multiprocessor
// a block). Per step it stages a slab of 16 steps of k of op(A) and of op(B)
// in shared memory (two stages, in turn), converted to the accumulation
// type, and each thread accumulates a 4 x 4, 4 x 8 or 8 x 8 piece of the
// tile in registers: the larger the piece, the more products each value
// read from shared memory feeds. Half and bfloat16 accumulate in float (at::opmath_type): summing
// thousands of products in 16 bits would lose most of their digits. With
// GemmParams::tensor_cores they, and float in TF32, run on the tensor cores
// instead (gemm_mma_kernel, below: the same tiles, TF32 up to 64 x 128).
//
// When there are too few output tiles to fill the GPU but a long reduction
// (the weight gradient of a small layer: a 6 x 25 result summed over 50 000
// positions), the reduction is split into slices computed by separate blocks.
// Each slice writes its partial sum to a workspace and a second kernel adds
// the slices in a fixed order. Atomics would be simpler but would make the
// summation order, and thus the rounding, change from run to run.
//
// The kernels read their operands, and write C, only through a problem
// (GemmProblem, below): a matrix product's reads stored matrices (gemm());
// implicit_gemm.cuh's gather a convolution's receptive fields from its
// tensors while the tiles load, so that no column matrix is ever stored.
#pragma once

#include "common.cuh"
#include "tensor_core.cuh"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace custom_conv {
namespace gpu {

// The tensor-core kernel's tile, the CUDA-core kernel's smallest, and the
// steps of k of one slab of the CUDA-core kernel.
constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;

// A tile of the CUDA-core kernel: kM x kN outputs for 256 threads in a
// 16 x 16 grid. Thread (ty, tx) owns rows ty * 4 + {0..3} (and those plus
// 64 where kM is 128) and columns tx * 4 + {0..3} (plus 64 where kN is 128):
// groups of 4 adjacent values, so that a step of k reads each group from
// shared memory in one 16-byte load. Each thread loads one run of adjacent
// elements of each operand per slab, along the dimension it is stored along
// (the problem's chunks, below): 4 elements per 64 rows of the tile.
template <int kM, int kN>
struct CoreTile {
  static constexpr int kTileM = kM, kTileN = kN;
  static constexpr int kMicroM = kM / 16, kMicroN = kN / 16;
  static constexpr int kRunA = kM * kTileK / kThreads, kRunB = kN * kTileK / kThreads;
  static_assert((kM == 64 || kM == 128) && (kN == 64 || kN == 128), "groups of 4 rows, 64 apart");
};

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
  // On the tensor cores (gemm_mma_kernel: half, bfloat16, and float in
  // TF32), or on the CUDA cores (gemm_tile_kernel, exact float FMAs; double
  // always).
  bool tensor_cores = false;
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

// -------------------------------------------------------------- problems
//
// A problem is what a GEMM kernel multiplies: sizes batch, m, n, k; operands
// a (op(A), m x k) and b (op(B), k x n); and out, which stores each result.
// The kernels touch an operand only through these, and only at indices
// inside it:
//   kKContiguous  whether its 16-byte chunks run along k (else along m or
//                 n); the tensor-core kernel lays its tile out the same way;
//   line(z, i)    what element addresses need of the index a chunk keeps
//                 fixed (mn when kKContiguous, else k);
//   start(j)      what they need of index j along the chunk (k, or m or n):
//                 a cursor, which run() walks;
//   run(line, cursor, j_end, v)  elements j, j + 1, ... from the cursor's j
//                 into v, zero from j_end on.
//                 The tensor-core kernel keeps whichever of line and cursor
//                 depends only on m or n (the same for a thread in every step
//                 of k) from step to step, and works out the other once a step;
//   copy(line, cursor, dst)  (optional) starts cp.async of the chunk of the
//                 next 16 bytes' elements from there into shared memory at
//                 dst, where `vector` (a member beside it) says cp.async can:
//                 where such chunks lie contiguous in memory and 16-byte
//                 aligned, or are all zeros (such as the padding around an
//                 image, which cp.async writes without reading); else they
//                 go element by element, as all of an operand without copy().
//                 Chunks start at multiples of their length along the
//                 contiguous dimension.
// and out through store(z, row, col, sum), which applies everything after
// the sum (alpha, bias, beta, the rounding to the stored type).

// A stored matrix: element (mn, k) of batch entry z at
// x[z * batch_stride + mn * ld + k] when kKContiguous, else at
// x[z * batch_stride + k * ld + mn]. `vector`: chunks that start at
// multiples of their size are 16-byte aligned (chunks_aligned).
template <typename T, bool kKContiguous_>
struct MatrixOperand {
  static constexpr bool kKContiguous = kKContiguous_;
  gpu_ptr<const T> x = nullptr;
  int64_t ld = 0, batch_stride = 0;
  bool vector = false;

  __device__ __forceinline__ gpu_ptr<const T> line(int64_t z, int64_t i) const {
    return x + z * batch_stride + i * ld;
  }
  __device__ __forceinline__ int64_t start(int64_t j) const { return j; }
  template <int kCount>
  __device__ __forceinline__ void run(const gpu_ptr<const T>& line, int64_t j0, int64_t j_end,
                                      T (&v)[kCount]) const {
#pragma unroll
    for (int e = 0; e < kCount; ++e) {
      v[e] = j0 + e < j_end ? line[j0 + e] : T(0);
    }
  }
  template <typename Dst>
  __device__ __forceinline__ void copy(const gpu_ptr<const T>& line, int64_t j, Dst dst) const {
    cp_async_16(dst, line + j, false);
  }
};

// Results into the matrix GemmParams describes.
template <typename scalar_t, typename out_t>
struct MatrixOutput {
  GemmParams<scalar_t, out_t> p;

  __device__ __forceinline__ void store(int64_t z, int64_t row, int64_t col, at::opmath_type<scalar_t> sum) const {
    gemm_store(p, z, row, col, sum);
  }
};

template <typename scalar_t_, typename OperandA, typename OperandB, typename Output>
struct GemmProblem {
  using scalar_t = scalar_t_;
  using acc_t = at::opmath_type<scalar_t>;
  int64_t batch = 1, m = 0, n = 0, k = 0;
  OperandA a;
  OperandB b;
  Output out;
};

// Up to kMax products of one kind in one launch, where each alone would
// leave most of the GPU idle (the input gradient's stride phases,
// implicit_gemm.cuh): they share m, their batch and their operands' types;
// each has its own n, k and operands. The launch is planned as one product
// (batch, m, n, k: the whole set's batch entries and the largest n and k),
// and the block of batch entry z works on problem z / batch_each, at its
// entry z % batch_each (problem_at). A block past its own problem's n has
// nothing to do; a problem with less k than the launch has empty slices of
// a split reduction, or, with no k at all, only zeros to store.
template <typename Problem, int kMax>
struct ProblemSet {
  using scalar_t = typename Problem::scalar_t;
  using acc_t = typename Problem::acc_t;
  int64_t batch = 0, m = 0, n = 0, k = 0;
  int64_t batch_each = 0;
  int count = 0;
  Problem problems[kMax];
#ifdef __CUDACC__
  static_assert(sizeof(Problem) * kMax <= 3 * 1024, "a launch's parameters stay within the 4 KiB every driver takes");
#endif

  void add(const Problem& p) {
    TORCH_CHECK(count < kMax && (count == 0 || (p.m == m && p.batch == batch_each)),
                "custom_conv gemm: a set holds up to ", kMax, " problems of the same m and batch");
    problems[count++] = p;
    batch_each = p.batch;
    batch = batch_each * count;
    m = p.m;
    n = std::max(n, p.n);
    k = std::max(k, p.k);
  }
};

// The problem a launch (a problem, or a ProblemSet) runs, and its type.
template <typename Launch>
struct ProblemOf {
  using type = Launch;
};
template <typename Problem, int kMax>
struct ProblemOf<ProblemSet<Problem, kMax>> {
  using type = Problem;
};

// The problem batch entry z of a launch belongs to, with z made the entry
// within it.
template <typename Problem>
__device__ __forceinline__ const Problem& problem_at(const Problem& p, int64_t& /*z*/) {
  return p;
}
template <typename Problem, int kMax>
__device__ __forceinline__ const Problem& problem_at(const ProblemSet<Problem, kMax>& set, int64_t& z) {
  const int64_t i = z / set.batch_each;
  z -= i * set.batch_each;
  return set.problems[i];
}

// Where this thread's run of a slab lies in the slab, stored as the operand
// is (the tile transposes it on the way into shared memory): line (m or n
// where k is contiguous, else k) and the run's first index along it.
template <bool kKContiguous, int kTileMN, int kRun>
__device__ __forceinline__ void core_run(int& line, int& along) {
  constexpr int kRunsPerLine = (kKContiguous ? kTileK : kTileMN) / kRun;
  line = threadIdx.x / kRunsPerLine;
  along = threadIdx.x % kRunsPerLine * kRun;
}

// Loads this thread's run of an operand's slab: rows [mn0, mn0 + kTileMN)
// of m (or n) and [k0, k0 + 16) of k of batch entry z, zero outside
// [0, mn_size) x [k0, k_end). (Unlike the tensor-core kernel's loads, it
// works out the run's line and cursor afresh each slab: kept from slab to
// slab beside the 8 x 8 accumulators, they spilled registers.)
template <int kTileMN, int kRun, typename Operand, typename T>
__device__ __forceinline__ void core_load(const Operand& x, int64_t z, int64_t mn0, int64_t mn_size, int64_t k0,
                                          int64_t k_end, T (&v)[kRun]) {
  int line, along;
  core_run<Operand::kKContiguous, kTileMN, kRun>(line, along);
  const int64_t fixed = Operand::kKContiguous ? mn0 + line : k0 + line;
  if (fixed < (Operand::kKContiguous ? mn_size : k_end)) {
    if constexpr (Operand::kKContiguous) {
      x.run(x.line(z, fixed), x.start(k0 + along), k_end, v);
    } else {
      x.run(x.line(z, fixed), x.start(mn0 + along), mn_size, v);
    }
  } else {
#pragma unroll
    for (int e = 0; e < kRun; ++e) {
      v[e] = T(0);
    }
  }
}

// Writes a run core_load read into the slab's tile, stored k-major:
// tile[k][m or n].
template <typename acc_t, bool kKContiguous, int kTileMN, typename Tile, typename T, int kRun>
__device__ __forceinline__ void core_store(Tile& tile, const T (&v)[kRun]) {
  int line, along;
  core_run<kKContiguous, kTileMN, kRun>(line, along);
#pragma unroll
  for (int e = 0; e < kRun; ++e) {
    if constexpr (kKContiguous) {
      tile[along + e][line] = static_cast<acc_t>(v[e]);
    } else {
      tile[line][along + e] = static_cast<acc_t>(v[e]);
    }
  }
}

// Row (or column) of value i of a thread's piece, from the thread's place
// t in the 16 x 16 grid: groups of 4 adjacent ones, 64 apart.
__device__ __forceinline__ int core_place(int t, int i) {
  return t * 4 + i % 4 + i / 4 * 64;
}

// blockIdx = (column tile, row tile, (batch - batch_offset) * splits + slice)
// of the launch (a problem, or a ProblemSet). With splits > 1 the block
// writes its partial sum to `partials`, laid out (batch, splits, m, n) as
// the launch is, instead of C.
template <typename Launch, typename Tile>
__global__ void __launch_bounds__(kThreads, 2)
gemm_tile_kernel(const Launch launch, int64_t batch_offset, int64_t splits, int64_t k_per_split,
                 gpu_ptr<typename Launch::acc_t> partials) {
  using scalar_t = typename Launch::scalar_t;
  using acc_t = typename Launch::acc_t;
  const int64_t entry = batch_offset + blockIdx.z / splits;
  int64_t z = entry;
  const auto& p = problem_at(launch, z);
  constexpr bool kKContiguousA = decltype(p.a)::kKContiguous;
  constexpr bool kKContiguousB = decltype(p.b)::kKContiguous;
  constexpr int kM = Tile::kTileM, kN = Tile::kTileN;
  // Slabs stored k-major, each row padded by one 16-byte group: the rows
  // stay aligned for the 16-byte reads, and the stores of a k-contiguous
  // operand (down a column) meet at most two to a bank. Two stages of each,
  // used in turn, so that one barrier a slab suffices (below); 33 KiB for
  // 128 x 128 floats, within the 48 KiB a block may declare statically.
  __shared__ __align__(16) shared_array<acc_t, 2, kTileK, kM + 4> a_tiles;
  __shared__ __align__(16) shared_array<acc_t, 2, kTileK, kN + 4> b_tiles;

  const int64_t slice = blockIdx.z % splits;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kN;
  if (n0 >= p.n) {
    return;
  }
  const int64_t k_begin = slice * k_per_split;
  const int64_t k_end = k_begin + k_per_split < p.k ? k_begin + k_per_split : p.k;
  // Lane l of warp w sits at (ty, tx) = (4 (w / 2) + l / 8, 8 (w % 2) + l % 8)
  // of the grid: a warp's reads of a step touch 4 groups of A and 8 of B,
  // 64 and 128 bytes, one shared-memory wavefront each.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int ty = warp / 2 * 4 + lane / 8;
  const int tx = warp % 2 * 8 + lane % 8;

  acc_t sum[Tile::kMicroM][Tile::kMicroN];
#pragma unroll
  for (int i = 0; i < Tile::kMicroM; ++i) {
#pragma unroll
    for (int j = 0; j < Tile::kMicroN; ++j) {
      sum[i][j] = acc_t(0);
    }
  }

  // Each thread's runs of a slab are read into registers one slab ahead:
  // the loads of the next slab are in flight while this one's products run,
  // and reach shared memory after them, in the other stage. The one barrier
  // of a slab both publishes its stage and tells every thread that all have
  // finished the products of the slab before, which read the stage the next
  // slab's stores overwrite.
  scalar_t a_next[Tile::kRunA], b_next[Tile::kRunB];
  const auto fetch = [&](int64_t k0) {
    core_load<kM>(p.a, z, m0, p.m, k0, k_end, a_next);
    core_load<kN>(p.b, z, n0, p.n, k0, k_end, b_next);
  };

  if (k_begin < k_end) {
    fetch(k_begin);
  }
  int stage = 0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK, stage ^= 1) {
    auto&& a_tile = a_tiles[stage];
    auto&& b_tile = b_tiles[stage];
    core_store<acc_t, kKContiguousA, kM>(a_tile, a_next);
    core_store<acc_t, kKContiguousB, kN>(b_tile, b_next);
    __syncthreads();
    if (k0 + kTileK < k_end) {
      fetch(k0 + kTileK);
    }
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t a_frag[Tile::kMicroM], b_frag[Tile::kMicroN];
#pragma unroll
      for (int i = 0; i < Tile::kMicroM; ++i) {
        a_frag[i] = a_tile[kk][core_place(ty, i)];
      }
#pragma unroll
      for (int j = 0; j < Tile::kMicroN; ++j) {
        b_frag[j] = b_tile[kk][core_place(tx, j)];
      }
#pragma unroll
      for (int i = 0; i < Tile::kMicroM; ++i) {
#pragma unroll
        for (int j = 0; j < Tile::kMicroN; ++j) {
          sum[i][j] += a_frag[i] * b_frag[j];
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < Tile::kMicroM; ++i) {
#pragma unroll
    for (int j = 0; j < Tile::kMicroN; ++j) {
      const int64_t m = m0 + core_place(ty, i);
      const int64_t n = n0 + core_place(tx, j);
      if (m < p.m && n < p.n) {
        if (partials != nullptr) {
          partials[((entry * splits + slice) * launch.m + m) * launch.n + n] = sum[i][j];
        } else {
          p.out.store(z, m, n, sum[i][j]);
        }
      }
    }
  }
}

// Adds the slices of a split reduction in slice order, then applies alpha,
// bias and beta exactly as the unsplit kernel does.
template <typename Launch>
__global__ void gemm_split_reduce_kernel(const Launch launch, int64_t splits,
                                         gpu_ptr<const typename Launch::acc_t> partials) {
  using acc_t = typename Launch::acc_t;
  const int64_t plane = launch.m * launch.n;
  CUSTOM_CONV_GRID_STRIDE_LOOP(i, launch.batch * plane) {
    const int64_t entry = i / plane;
    const int64_t mn = i % plane;
    int64_t z = entry;
    const auto& p = problem_at(launch, z);
    const int64_t n = mn % launch.n;
    if (n >= p.n) {
      continue;
    }
    acc_t sum = acc_t(0);
    for (int64_t s = 0; s < splits; ++s) {
      sum += partials[(entry * splits + s) * plane + mn];
    }
    p.out.store(z, mn / launch.n, n, sum);
  }
}

// ---------------------------------------- tensor cores (half, bfloat16, TF32)
//
// Tiles of C as on the CUDA cores, and the same split of the reduction, on
// the tensor cores (tensor_core.cuh): a block of warps (MmaShape), each warp
// a piece of the tile as 16 x 8 blocks of mma per step of k (m16n8k16 for
// half and bfloat16, m16n8k8 in TF32 for float), accumulated in float:
// 64 x 64 tiles of 4 warps of 32 x 32, and for half and bfloat16 also
// 64 x 128 tiles of 4 warps of 32 x 64 and 128 x 128 tiles of 8 warps of
// 64 x 32 (tile_for, as on the CUDA cores; a larger piece a warp does
// more mma per fragment it loads, and a larger tile more mma per value it
// copies into shared memory). The operands' tiles are
// staged in shared memory 32 steps of k at a time, each stored as its
// operand is stored in global memory (k contiguous or m, n contiguous), so
// that 16-byte chunks along the contiguous dimension copy straight in by
// cp.async; ldmatrix (.trans for a 16-bit operand with m or n contiguous)
// then gives every operand the fragment layout mma needs, and a float
// operand with m or n contiguous is read element by element. Float runs
// here only where torch allows TF32 for convolutions
// (cuda_gemm_uses_tensor_cores): its operands are rounded to 10 bits of
// mantissa.
constexpr int kMmaTileK = 32;

// Stages of 32 steps of k in shared memory: while the tensor cores work on
// one, the copies into the next kMmaStages - 1 are in flight, so a copy
// has the products of kMmaStages - 1 steps to land in. Three stages of a
// 128 x 128 half tile take 60 KiB (MmaTiles).
constexpr int kMmaStages = 3;

// A tile of the tensor-core kernel: kM x kN outputs for kWarpsM x kWarpsN
// warps, each a (kM / kWarpsM) x (kN / kWarpsN) piece, kFragsM x kFragsN
// blocks of 16 x 8.
template <int kM, int kN, int kWarpsM, int kWarpsN_>
struct MmaShape {
  static constexpr int kTileM = kM, kTileN = kN, kWarpsN = kWarpsN_;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kWarpM = kM / kWarpsM, kWarpN = kN / kWarpsN;
  static constexpr int kFragsM = kWarpM / 16, kFragsN = kWarpN / 8;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "B's fragments are loaded 16 columns at a time");
};

template <typename scalar_t>
constexpr bool kTensorCores =
    std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16> || std::is_same_v<scalar_t, float>;

// Elements in one 16-byte copy.
template <typename scalar_t>
constexpr int kVectorOf = 16 / static_cast<int>(sizeof(scalar_t));

// Steps of k per mma: m16n8k16 on 16-bit elements, m16n8k8 in TF32.
template <typename scalar_t>
constexpr int kMmaK = sizeof(scalar_t) == 2 ? 16 : 8;

// Each row padded so that the rows a warp reads at once fall in different
// shared-memory banks: by one chunk (the 8 row addresses of an ldmatrix),
// or for float rows with m or n contiguous, read as (k = t, mn = g) by lane
// 4g + t, by 8 floats.
template <typename scalar_t, bool kKContiguous>
constexpr int kMmaPad = !kKContiguous && sizeof(scalar_t) == 4 ? 8 : kVectorOf<scalar_t>;

// The stages of one operand's tile: kTileMN (m or n) x 32 (k), stored
// k-major or not, in rows of kMmaPitch elements.
template <typename scalar_t, bool kKContiguous, int kTileMN>
constexpr int kMmaPitch = (kKContiguous ? kMmaTileK : kTileMN) + kMmaPad<scalar_t, kKContiguous>;
template <typename scalar_t, bool kKContiguous, int kTileMN>
constexpr int kMmaStageElements = (kKContiguous ? kTileMN : kMmaTileK) * kMmaPitch<scalar_t, kKContiguous, kTileMN>;
template <typename scalar_t, bool kKContiguous, int kTileMN>
using MmaStages = shared_array<scalar_t, kMmaStages, kKContiguous ? kTileMN : kMmaTileK,
                               kMmaPitch<scalar_t, kKContiguous, kTileMN>>;

// Both operands' stages, in the block's dynamic shared memory: more than
// the 48 KiB a block may declare statically, and no more than the 99 KiB
// every GPU of compute capability 8.0 and later lets a block ask for.
template <typename scalar_t, bool kKContiguousA, int kM, bool kKContiguousB, int kN>
struct MmaTiles {
  MmaStages<scalar_t, kKContiguousA, kM> a;
  MmaStages<scalar_t, kKContiguousB, kN> b;
  // On the GPU (the emulator's shared arrays are larger).
  static constexpr int64_t kBytes =
      int64_t{kMmaStages} * sizeof(scalar_t) *
      (kMmaStageElements<scalar_t, kKContiguousA, kM> + kMmaStageElements<scalar_t, kKContiguousB, kN>);
  static_assert(kBytes <= 99 * 1024, "fits every GPU the tensor-core kernel runs on");
  static_assert(kMmaStageElements<scalar_t, kKContiguousA, kM> * sizeof(scalar_t) % 16 == 0,
                "B's stages start 16-byte aligned");
};
template <typename Launch, typename Shape, typename Problem = typename ProblemOf<Launch>::type>
using MmaTilesOf = MmaTiles<typename Problem::scalar_t, decltype(Problem::a)::kKContiguous, Shape::kTileM,
                            decltype(Problem::b)::kKContiguous, Shape::kTileN>;

// The chunks of a stage that one thread loads element by element (those
// cp.async cannot copy), held in registers from the loads until
// mma_stage_store writes them into shared memory: in between, the tensor
// cores work on the step's stage, so the loads' latency overlaps the
// products instead of stalling them.
template <typename scalar_t, int kTileMN, int kThreads>
struct StageRegisters {
  static constexpr int kChunks = kTileMN * kMmaTileK / kVectorOf<scalar_t> / kThreads;
  static_assert(kTileMN * kMmaTileK / kVectorOf<scalar_t> % kThreads == 0,
                "every thread copies the same number of chunks");
  scalar_t v[kChunks][kVectorOf<scalar_t>];
  bool held[kChunks];

  // Whether any chunk is held: in most tiles none is, and the kernel skips
  // the stores, whose predicated instructions would otherwise all issue.
  __device__ __forceinline__ bool any() const {
    bool any = false;
#pragma unroll
    for (int r = 0; r < kChunks; ++r) {
      any = any || held[r];
    }
    return any;
  }
};

// Where chunk r of this thread's share lies in a stage's tile.
template <typename scalar_t, bool kKContiguous, int kTileMN, int kThreads>
__device__ __forceinline__ void stage_chunk(int r, int& row, int& col) {
  constexpr int kVector = kVectorOf<scalar_t>;
  constexpr int kChunksPerRow = (kKContiguous ? kMmaTileK : kTileMN) / kVector;
  const int chunk = threadIdx.x + r * kThreads;
  row = chunk / kChunksPerRow;
  col = chunk % kChunksPerRow * kVector;
}

// Loads an operand's rows [mn0, mn0 + kTileMN) of m (or n) and [k0, k0 + 32)
// of k of batch entry z into a stage, zero outside [0, mn_size) x
// [k0, k0 + k_left), except that where k is contiguous, rows past mn_size hold
// row mn0's values: those rows reach only rows (or columns) of C that the
// kernel never stores, and so a tile wider than a small m (or n) loads
// them like any other. A chunk goes by cp.async when it lies whole inside
// (so) and the operand can copy it; the others into registers
// (StageRegisters), for mma_stage_store. A thread's chunks keep their m (or
// n) from stage to stage, so what the operand needs of it is worked out
// once: the lines of their rows where k is contiguous, else the cursor of
// their columns (all of a thread's chunks start at the same column). In
// nearly every stage all of a thread's chunks go by cp.async: the loader
// tests that once, and then starts the copies with no test of their own,
// each to its place a fixed distance from the first.
template <typename scalar_t, int kTileMN, int kThreads, typename Operand>
struct MmaLoader {
  static constexpr bool kKContiguous = Operand::kKContiguous;
  static constexpr int kVector = kVectorOf<scalar_t>;
  static constexpr int kChunks = StageRegisters<scalar_t, kTileMN, kThreads>::kChunks;
  static_assert(kThreads % ((kKContiguous ? kMmaTileK : kTileMN) / kVector) == 0,
                "a thread's chunks all start at the same column");
  using Line = decltype(std::declval<Operand>().line(0, 0));
  using Cursor = decltype(std::declval<Operand>().start(0));
  // A thread's chunks lie kRowStep rows of a stage's tile apart, in the same column.
  static constexpr int kRowStep = kThreads / ((kKContiguous ? kMmaTileK : kTileMN) / kVector);
  static constexpr int kRowStepElements = kRowStep * kMmaPitch<scalar_t, kKContiguous, kTileMN>;
  Line lines[kKContiguous ? kChunks : 1];  // kKContiguous: of each chunk's row (a row inside, where past mn_size)
  Cursor cursor;                           // otherwise: of the chunks' column
  int64_t z, mn0, mn_size;
  bool mn_whole;  // where m or n is contiguous, the chunks' column lies whole inside [0, mn_size)

  __device__ __forceinline__ MmaLoader(const Operand& x, int64_t z_, int64_t mn0_, int64_t mn_size_)
      : z(z_), mn0(mn0_), mn_size(mn_size_), mn_whole(false) {
    if constexpr (kKContiguous) {
#pragma unroll
      for (int r = 0; r < kChunks; ++r) {
        int row, col;
        stage_chunk<scalar_t, kKContiguous, kTileMN, kThreads>(r, row, col);
        lines[r] = x.line(z, mn0 + row < mn_size ? mn0 + row : mn0);
      }
    } else {
      int row, col;
      stage_chunk<scalar_t, kKContiguous, kTileMN, kThreads>(0, row, col);
      cursor = x.start(mn0 + col);
      mn_whole = mn0 + col + kVector <= mn_size;
    }
  }

  // `first`: where this thread's first chunk lies in the stage (stage_addresses).
  template <typename Address>
  __device__ __forceinline__ void load(const Operand& x, Address first, int64_t k0, int k_left,
                                       StageRegisters<scalar_t, kTileMN, kThreads>& regs) const {
    int first_row, first_col;
    stage_chunk<scalar_t, kKContiguous, kTileMN, kThreads>(0, first_row, first_col);
    // Where k is contiguous, the chunks' cursor in this stage: the same column for each.
    const Cursor along = kKContiguous ? x.start(k0 + first_col) : cursor;
    // k inside [k0, k0 + k_left) for chunk r: where k is contiguous, the whole
    // chunk (the same for all of a thread's chunks); else its row.
    const auto k_inside = [&](int r) {
      return kKContiguous ? first_col + kVector <= k_left : first_row + r * kRowStep < k_left;
    };
    const auto line_of = [&](int r) { return kKContiguous ? lines[r] : x.line(z, k0 + first_row + r * kRowStep); };
    // Each chunk whole inside: all by cp.async, with no test of their own.
    if (copies(x) && k_inside(kChunks - 1) && (kKContiguous || mn_whole)) {
#pragma unroll
      for (int r = 0; r < kChunks; ++r) {
        copy(x, line_of(r), along, first + r * kRowStepElements);
        regs.held[r] = false;
      }
      return;
    }
#pragma unroll
    for (int r = 0; r < kChunks; ++r) {
      const bool inside = k_inside(r);
      Line line{};
      if (kKContiguous || inside) {
        line = line_of(r);
      }
      if (copies(x) && inside && (kKContiguous || mn_whole)) {
        copy(x, line, along, first + r * kRowStepElements);
        regs.held[r] = false;
        continue;
      }
      // The chunk's elements one by one: zeros past k0 + k_left, and where m or n
      // is contiguous past mn_size (where k is, its rows lie inside).
      regs.held[r] = true;
      if (kKContiguous || inside) {
        x.run(line, along, kKContiguous ? k0 + k_left : mn_size, regs.v[r]);
      } else {
#pragma unroll
        for (int e = 0; e < kVector; ++e) {
          regs.v[r][e] = scalar_t(0);
        }
      }
    }
  }

 private:
  // Whether the operand has copy() (and its flag `vector`).
  static constexpr bool kCopies = requires(const Operand& x) { x.vector; };
  __device__ __forceinline__ static bool copies(const Operand& x) {
    if constexpr (kCopies) {
      return x.vector;
    }
    return false;
  }
  template <typename Dst>
  __device__ __forceinline__ static void copy(const Operand& x, const Line& line, const Cursor& along, Dst dst) {
    if constexpr (kCopies) {
      x.copy(line, along, dst);
    }
  }
};

// Writes the chunks MmaLoader::load left in registers into `stage`.
template <bool kKContiguous, typename Tile, typename scalar_t, int kTileMN, int kThreads>
__device__ __forceinline__ void mma_stage_store(Tile& tile, int stage,
                                                const StageRegisters<scalar_t, kTileMN, kThreads>& regs) {
#pragma unroll
  for (int r = 0; r < StageRegisters<scalar_t, kTileMN, kThreads>::kChunks; ++r) {
    if (regs.held[r]) {
      int row, col;
      stage_chunk<scalar_t, kKContiguous, kTileMN, kThreads>(r, row, col);
#pragma unroll
      for (int e = 0; e < kVectorOf<scalar_t>; ++e) {
        tile[stage][row][col + e] = regs.v[r][e];
      }
    }
  }
}

// Which 8 rows of m (or n), and which half of a step of k, matrix (or
// register) i of a fragment covers: A's go down m first, B's along k first
// (tensor_core.cuh: A's registers are rows 0-7 then 8-15 of the first half
// of k, then of the second; B's, two blocks of 8 columns, are the first
// block's halves of k, then the second's).
template <bool kA>
__device__ __forceinline__ int fragment_mn(int i) {
  return (kA ? i % 2 : i / 2) * 8;
}
template <bool kA>
__device__ __forceinline__ int fragment_k(int i, int half_k) {
  return (kA ? i / 2 : i % 2) * half_k;
}

// Where a thread's share of a stage lies in shared memory: its first chunk
// (MmaLoader::load), and its lane's ldmatrix row for the warp's first
// fragment (mma_fragment). The kernel keeps them for the stage a step reads
// and moves them on from step to step: worked out from the block's shared
// memory in each step, they took 20 to 25 of a step's instructions (ptxas
// works out again, rather than holds, what no step changes).
template <typename Address, int kStageElements>
struct StageAddresses {
  Address first, rows;
  // The same places `stage` stages on.
  __device__ __forceinline__ StageAddresses in(int stage) const {
    return {first + stage * kStageElements, rows + stage * kStageElements};
  }
  // The same places in the next stage: the first after the last (`last`).
  __device__ __forceinline__ StageAddresses following(bool last) const {
    return in(last ? 1 - kMmaStages : 1);
  }
};

// Lane l names row l % 8 of matrix l / 8 for ldmatrix; the warp's piece
// starts at mn (m for A, n for B).
template <typename scalar_t, bool kA, bool kKContiguous, int kTileMN, int kThreads, typename Tile>
__device__ __forceinline__ auto stage_addresses(Tile& tile, int mn) {
  constexpr int kHalfK = kMmaK<scalar_t> / 2;
  int row, col;
  stage_chunk<scalar_t, kKContiguous, kTileMN, kThreads>(0, row, col);
  const int j = threadIdx.x % 32 / 8, r = threadIdx.x % 8;
  const auto rows = kKContiguous ? shared_address(tile[0][mn + fragment_mn<kA>(j) + r][fragment_k<kA>(j, kHalfK)])
                                 : shared_address(tile[0][fragment_k<kA>(j, kHalfK) + r][mn + fragment_mn<kA>(j)]);
  return StageAddresses<std::remove_const_t<decltype(rows)>, kMmaStageElements<scalar_t, kKContiguous, kTileMN>>{
      shared_address(tile[0][row][col]), rows};
}

// A's fragment of rows [mn0 + mn, mn0 + mn + 16) (kA), or B's of two blocks
// of 8 columns, for the step of k at kk of a stage, whose addresses are `at`
// (the warp's piece starting at mn0): by ldmatrix (.trans where the tile is
// stored with m or n contiguous), a fixed number of elements from the
// lane's row. TF32 operands are rounded on the way, and read element by
// element from a tile with m or n contiguous (ldmatrix cannot transpose
// 32-bit elements).
template <typename scalar_t, bool kA, bool kKContiguous, int kTileMN, typename Tile, typename Addresses>
__device__ __forceinline__ void mma_fragment(uint32_t (&f)[4], Tile& tile, int stage, const Addresses& at, int mn0,
                                             int mn, int kk) {
  constexpr bool kTf32 = sizeof(scalar_t) == 4;
  constexpr int kHalfK = kMmaK<scalar_t> / 2;
  constexpr int kPitch = kMmaPitch<scalar_t, kKContiguous, kTileMN>;
  if constexpr (kTf32 && !kKContiguous) {
    const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[i] = to_tf32(tile[stage][kk + fragment_k<kA>(i, kHalfK) + t][mn0 + mn + fragment_mn<kA>(i) + g]);
    }
  } else {
    if constexpr (kKContiguous) {
      ldmatrix<4>(f, at.rows + (mn * kPitch + kk));
    } else {
      ldmatrix<4, true>(f, at.rows + (kk * kPitch + mn));
    }
    if constexpr (kTf32) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        f[i] = tf32_bits(f[i]);
      }
    }
  }
}

// gemm_tile_kernel's grid and outputs, on the tensor cores, in tiles of Shape.
template <typename Launch, typename Shape>
__global__ void __launch_bounds__(Shape::kThreads)
gemm_mma_kernel(const Launch launch, int64_t batch_offset, int64_t splits, int64_t k_per_split,
                gpu_ptr<float> partials) {
  using scalar_t = typename Launch::scalar_t;
  const int64_t entry = batch_offset + blockIdx.z / splits;
  int64_t z = entry;
  const auto& p = problem_at(launch, z);
  constexpr bool kKContiguousA = decltype(p.a)::kKContiguous;
  constexpr bool kKContiguousB = decltype(p.b)::kKContiguous;
  constexpr int kM = Shape::kTileM, kN = Shape::kTileN, kThreads = Shape::kThreads;
  constexpr int kFragsM = Shape::kFragsM, kFragsN = Shape::kFragsN;
  auto& tiles = dynamic_shared<MmaTilesOf<Launch, Shape>>();
  auto& a_tile = tiles.a;
  auto& b_tile = tiles.b;

  const int64_t slice = blockIdx.z % splits;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kN;
  if (n0 >= p.n) {
    return;
  }
  const int64_t k_begin = slice * k_per_split;
  const int64_t k_end = k_begin + k_per_split < p.k ? k_begin + k_per_split : p.k;
  // (32-bit: a reduction of 2^36 steps of k would not fit any GPU's memory.)
  const int steps = k_end > k_begin ? static_cast<int>((k_end - k_begin + kMmaTileK - 1) / kMmaTileK) : 0;
  const int warp = threadIdx.x / 32;
  // Warp w's piece: row w / kWarpsN, column w % kWarpsN of the tile's pieces.
  const int warp_m = warp / Shape::kWarpsN * Shape::kWarpM;
  const int warp_n = warp % Shape::kWarpsN * Shape::kWarpN;

  StageRegisters<scalar_t, kM, kThreads> a_regs;
  StageRegisters<scalar_t, kN, kThreads> b_regs;
  const MmaLoader<scalar_t, kM, kThreads, decltype(p.a)> a_loader(p.a, z, m0, p.m);
  const MmaLoader<scalar_t, kN, kThreads, decltype(p.b)> b_loader(p.b, z, n0, p.n);
  // Where this thread's copies and ldmatrix rows lie in stage 0.
  const auto a_at = stage_addresses<scalar_t, true, kKContiguousA, kM, kThreads>(a_tile, warp_m);
  const auto b_at = stage_addresses<scalar_t, false, kKContiguousB, kN, kThreads>(b_tile, warp_n);
  // Steps of k the last step's stage holds; every other holds kMmaTileK.
  const int last_k = static_cast<int>(k_end - k_begin - static_cast<int64_t>(steps - 1) * kMmaTileK);
  // Loads step `step`'s 32 steps of k into the stage whose addresses are a_stage, b_stage.
  const auto load = [&](const auto& a_stage, const auto& b_stage, int step) {
    const int64_t k0 = k_begin + static_cast<int64_t>(step) * kMmaTileK;
    const int k_left = step + 1 < steps ? kMmaTileK : last_k;
    a_loader.load(p.a, a_stage.first, k0, k_left, a_regs);
    b_loader.load(p.b, b_stage.first, k0, k_left, b_regs);
  };
  const auto store = [&](int stage) {
    if (a_regs.any()) {
      mma_stage_store<kKContiguousA>(a_tile, stage, a_regs);
    }
    if (b_regs.any()) {
      mma_stage_store<kKContiguousB>(b_tile, stage, b_regs);
    }
  };

  float acc[kFragsM][kFragsN][4];
#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc[i][j][e] = 0.0f;
      }
    }
  }

  // Step s reads stage s % kMmaStages. The first kMmaStages - 1 are loaded
  // before the loop, and each step loads the one kMmaStages - 1 steps on;
  // a group of copies for each, empty or not.
#pragma unroll
  for (int step = 0; step < kMmaStages - 1; ++step) {
    if (step < steps) {
      load(a_at.in(step), b_at.in(step), step);
      store(step);
    }
    cp_async_commit();
  }
  // The stage this step reads, and the one it refills: the one the
  // previous step read. Their addresses move on with them.
  int stage = 0, fill = kMmaStages - 1;
  auto a_read = a_at;
  auto b_read = b_at;
  auto a_fill = a_at.in(kMmaStages - 1);
  auto b_fill = b_at.in(kMmaStages - 1);
  for (int step = 0; step < steps; ++step) {
    // Every group but the newest kMmaStages - 2 has landed: this step's
    // stage is complete, in this thread's copies ...
    cp_async_wait<kMmaStages - 2>();
    // ... and after the barrier in every thread's. Every warp is past the
    // previous step too, done reading the stage it read: this step refills it.
    __syncthreads();
    const bool next = step + kMmaStages - 1 < steps;
    if (next) {
      load(a_fill, b_fill, step + kMmaStages - 1);
    }
    cp_async_commit();
#pragma unroll
    for (int kk = 0; kk < kMmaTileK; kk += kMmaK<scalar_t>) {
      // A's fragments a block of 16 rows each, B's two blocks of 8 columns each.
      uint32_t fa[kFragsM][4], fb[kFragsN / 2][4];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        mma_fragment<scalar_t, true, kKContiguousA, kM>(fa[i], a_tile, stage, a_read, warp_m, i * 16, kk);
      }
#pragma unroll
      for (int j = 0; j < kFragsN / 2; ++j) {
        mma_fragment<scalar_t, false, kKContiguousB, kN>(fb[j], b_tile, stage, b_read, warp_n, j * 16, kk);
      }
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) {
          const uint32_t fb_j[2] = {fb[j / 2][j % 2 * 2], fb[j / 2][j % 2 * 2 + 1]};
          if constexpr (std::is_same_v<scalar_t, float>) {
            mma_m16n8k8_tf32(acc[i][j], fa[i], fb_j, acc[i][j]);
          } else {
            mma_m16n8k16<scalar_t>(acc[i][j], fa[i], fb_j, acc[i][j]);
          }
        }
      }
    }
    // The element loads have had the products' time to land. No warp reads
    // their stage before the barrier of the step that reads it.
    if (next) {
      store(fill);
    }
    const bool last = stage == kMmaStages - 1;
    fill = stage;
    a_fill = a_read;
    b_fill = b_read;
    stage = last ? 0 : stage + 1;
    a_read = a_read.following(last);
    b_read = b_read.following(last);
  }

  // Element e of acc[i][j]: row g + 8 (e / 2), column 2 t + e % 2 of the
  // 16 x 8 block (i, j) of the warp's piece (tensor_core.cuh).
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + warp_m + i * 16 + g + 8 * (e / 2);
        const int64_t n = n0 + warp_n + j * 8 + 2 * t + e % 2;
        if (m < p.m && n < p.n) {
          if (partials != nullptr) {
            partials[((entry * splits + slice) * launch.m + m) * launch.n + n] = acc[i][j][e];
          } else {
            p.out.store(z, m, n, acc[i][j][e]);
          }
        }
      }
    }
  }
}

// How many slices to cut the reduction into. Only when the output tiles
// alone would leave most of the GPU idle, and never into slices shorter than
// kMinSliceK (the partial sums would cost more to write than to compute). The
// choice depends only on the shapes and the GPU, so a given call on a given
// device always sums in the same order.
// Blocks a launch should give each multiprocessor at least.
constexpr int64_t kBlocksPerMultiprocessor = 2;

inline int64_t gemm_splits(int64_t tiles, int64_t batch, int64_t m, int64_t n, int64_t k,
                           int64_t multiprocessors) {
  constexpr int64_t kMinSliceK = 256;
  // Partial sums held at once, in accumulator values (16 Mi = 64 MiB of float).
  constexpr int64_t kWorkspaceBudget = int64_t{1} << 24;
  const int64_t wanted_blocks = kBlocksPerMultiprocessor * multiprocessors;
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

// The plan of a product in tiles of tile_m x tile_n.
inline GemmPlan plan_gemm(int64_t batch, int64_t m, int64_t n, int64_t k, const LaunchLimits& limits,
                          int64_t tile_m = kTileM, int64_t tile_n = kTileN) {
  GemmPlan plan;
  plan.tiles_m = (m + tile_m - 1) / tile_m;
  plan.tiles_n = (n + tile_n - 1) / tile_n;
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

// The tile for a product (rows, columns) where there is a choice (float on
// the CUDA cores, half and bfloat16 on the tensor cores): 128 along a side
// of more than 64, when the tiles still give every multiprocessor a block:
// 128 x 128, else 64 x 128; otherwise 64 x 64 (and, where those are few, a
// split reduction). A thread's 8 x 8 piece of a 128 x 128 tile on the CUDA
// cores does 64 multiply-adds per 4 loads from shared memory, its 4 x 4
// piece of a 64 x 64 tile 16 per 2; but on a GPU with idle multiprocessors
// the larger tiles would only leave more of them idle. Float64 keeps
// 64 x 64 on the CUDA cores (an 8 x 8 piece of doubles would not fit the
// registers), as do half and bfloat16 with the tensor cores switched off.
inline std::pair<int64_t, int64_t> tile_for(int64_t batch, int64_t m, int64_t n, int64_t multiprocessors) {
  const auto tiles = [&](int64_t tile_m, int64_t tile_n) {
    return batch * ((m + tile_m - 1) / tile_m) * ((n + tile_n - 1) / tile_n);
  };
  if (n > 64) {
    if (m > 64 && tiles(128, 128) >= multiprocessors) {
      return {128, 128};
    }
    if (tiles(64, 128) >= multiprocessors) {
      return {64, 128};
    }
  }
  return {64, 64};
}

// Whether a product's output tiles, in the tile tile_for picks, give every
// multiprocessor its blocks on their own (else, where it is one of several
// independent products, it had better share a launch: ProblemSet).
inline bool fills_gpu(int64_t batch, int64_t m, int64_t n, int64_t multiprocessors) {
  const auto [tile_m, tile_n] = tile_for(batch, m, n, multiprocessors);
  const int64_t tiles = batch * ((m + tile_m - 1) / tile_m) * ((n + tile_n - 1) / tile_n);
  return tiles >= kBlocksPerMultiprocessor * multiprocessors;
}

// Whether an operand's 16-byte chunks (along its contiguous dimension,
// starting at multiples of the chunk) are all 16-byte aligned.
template <typename scalar_t>
bool chunks_aligned(gpu_ptr<const scalar_t> x, int64_t ld, int64_t batch_stride, int64_t batch) {
  constexpr int kVector = kVectorOf<scalar_t>;
  return address_bits(x) % 16 == 0 && ld % kVector == 0 && (batch == 1 || batch_stride % kVector == 0);
}

// Launches a planned problem: kernel(grid, batch_offset, partials) for each
// launch along z, then the reduction of the slices where there are several.
template <typename Problem, typename Launch>
void run_planned(const Problem& p, const GemmPlan& plan, const Launch& launch) {
  using acc_t = typename Problem::acc_t;
  at::Tensor workspace;
  gpu_ptr<acc_t> partials = nullptr;
  if (plan.splits > 1) {
    // Freed when this function returns; the caching allocator keeps it from
    // being reused until the kernels queued on this stream have run.
    workspace = at::empty({p.batch * plan.splits * p.m * p.n},
                          device_options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    partials = workspace.mutable_data_ptr<acc_t>();
  }
  for (int64_t z0 = 0; z0 < p.batch; z0 += plan.batches_per_launch) {
    const int64_t nz = std::min(plan.batches_per_launch, p.batch - z0);
    launch(dim3(static_cast<unsigned int>(plan.tiles_n), static_cast<unsigned int>(plan.tiles_m),
                static_cast<unsigned int>(nz * plan.splits)),
           z0, partials);
  }
  if (plan.splits > 1) {
    CUSTOM_CONV_LAUNCH(grid_for(p.batch * p.m * p.n), kThreads, gemm_split_reduce_kernel<Problem>)(
        p, plan.splits, partials);
  }
}

// The problem on the CUDA cores in tiles of Tile.
template <typename Tile, typename Problem>
void run_core_gemm(const Problem& p, const LaunchLimits& limits) {
  const GemmPlan plan = plan_gemm(p.batch, p.m, p.n, p.k, limits, Tile::kTileM, Tile::kTileN);
  run_planned(p, plan, [&](dim3 grid, int64_t z0, gpu_ptr<typename Problem::acc_t> partials) {
    CUSTOM_CONV_LAUNCH(grid, kThreads, gemm_tile_kernel<Problem, Tile>)(p, z0, plan.splits, plan.k_per_split,
                                                                         partials);
  });
}

// The problem on the tensor cores in tiles of Shape.
template <typename Shape, typename Problem>
void run_mma_gemm(const Problem& p, const LaunchLimits& limits) {
  const GemmPlan plan = plan_gemm(p.batch, p.m, p.n, p.k, limits, Shape::kTileM, Shape::kTileN);
  run_planned(p, plan, [&](dim3 grid, int64_t z0, gpu_ptr<float> partials) {
    CUSTOM_CONV_LAUNCH(grid, Shape::kThreads, gemm_mma_kernel<Problem, Shape>)
        .with_dynamic_shared(sizeof(MmaTilesOf<Problem, Shape>))(p, z0, plan.splits, plan.k_per_split, partials);
  });
}

// The problem on the tensor cores, in the tile tile_for picks.
template <typename Problem>
void run_tensor_core_gemm(const Problem& p, const LaunchLimits& limits) {
  using scalar_t = typename Problem::scalar_t;
  static_assert(kTensorCores<scalar_t>, "half, bfloat16 or float (TF32)");
  const auto [tile_m, tile_n] = tile_for(p.batch, p.m, p.n, limits.multiprocessors);
  // TF32 stops at 64 x 128: three stages of a 128 x 128 float tile (108
  // KiB) are more than some GPUs let a block have (MmaTiles).
  if constexpr (sizeof(scalar_t) == 2) {
    if (tile_m == 128) {
      return run_mma_gemm<MmaShape<128, 128, 2, 4>>(p, limits);
    }
  }
  if (tile_n == 128) {
    return run_mma_gemm<MmaShape<64, 128, 2, 2>>(p, limits);
  }
  run_mma_gemm<MmaShape<64, 64, 2, 2>>(p, limits);
}

// Runs a problem on the current stream, on the tensor cores when
// `tensor_cores` (and its element type has them), else on the CUDA cores.
template <typename Problem>
void run_gemm(const Problem& p, bool tensor_cores) {
  using scalar_t = typename Problem::scalar_t;
  if (p.batch == 0 || p.m == 0 || p.n == 0) {
    return;
  }
  const LaunchLimits limits = launch_limits();
  if constexpr (kTensorCores<scalar_t>) {
    if (tensor_cores) {
      return run_tensor_core_gemm(p, limits);
    }
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    const auto [tile_m, tile_n] = tile_for(p.batch, p.m, p.n, limits.multiprocessors);
    if (tile_m == 128) {
      return run_core_gemm<CoreTile<128, 128>>(p, limits);
    }
    if (tile_n == 128) {
      return run_core_gemm<CoreTile<64, 128>>(p, limits);
    }
  }
  run_core_gemm<CoreTile<64, 64>>(p, limits);
}

template <bool kTransA, bool kTransB, typename scalar_t, typename out_t>
void run_matrix_gemm(const GemmParams<scalar_t, out_t>& p) {
  GemmProblem<scalar_t, MatrixOperand<scalar_t, !kTransA>, MatrixOperand<scalar_t, kTransB>,
              MatrixOutput<scalar_t, out_t>>
      problem;
  problem.batch = p.batch;
  problem.m = p.m;
  problem.n = p.n;
  problem.k = p.k;
  problem.a = {p.a, p.lda, p.batch_stride_a, chunks_aligned(p.a, p.lda, p.batch_stride_a, p.batch)};
  problem.b = {p.b, p.ldb, p.batch_stride_b, chunks_aligned(p.b, p.ldb, p.batch_stride_b, p.batch)};
  problem.out = {p};
  run_gemm(problem, p.tensor_cores);
}

// Runs C = alpha * op(A) @ op(B) + beta * C (+ bias) on the current stream.
template <typename scalar_t, typename out_t>
void gemm(const GemmParams<scalar_t, out_t>& p) {
  if (p.trans_a) {
    if (p.trans_b) {
      run_matrix_gemm<true, true>(p);
    } else {
      run_matrix_gemm<true, false>(p);
    }
  } else {
    if (p.trans_b) {
      run_matrix_gemm<false, true>(p);
    } else {
      run_matrix_gemm<false, false>(p);
    }
  }
}

}  // namespace gpu
}  // namespace custom_conv
