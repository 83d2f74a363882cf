// Our GEMM (gemm.h): blocking, packing and threads around the micro-kernels.
//
//   for each task (a batch entry, a block of rows, a block of nc columns):
//     for each slice of kc reduction steps:
//       pack B's block (kc x nc) into micro-panels of nr columns  -> L2
//       pack A's block (rows x kc) into micro-panels of mr rows
//       for each A micro-panel (held in L1):
//         for each B micro-panel: the micro-kernel on one tile of C
//
// The first slice applies beta and the bias; later slices add onto C
// (beta = 1), so every element of C is summed in the same order, slice after
// slice, whatever the tasks and threads.
#include "gemm.h"

#include "../isa.h"
#include "../per_level.h"
#include "../transpose.h"
#include "kernels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <memory>
#include <type_traits>

namespace custom_conv {
namespace gemm {
namespace {

template <typename Acc>
const MicroKernels<Acc>& micro_kernels() {
  static const MicroKernels<Acc>* const chosen = [] {
    const bool f = std::is_same_v<Acc, float>;
    const void* k = nullptr;
    switch (cpu_level()) {
      case CpuLevel::kAvx512:
        k = f ? static_cast<const void*>(avx512_float_kernels()) : avx512_double_kernels();
        break;
      case CpuLevel::kAvx2:
        k = f ? static_cast<const void*>(avx2_float_kernels()) : avx2_double_kernels();
        break;
      default: break;
    }
    if (k == nullptr) k = f ? static_cast<const void*>(baseline_float_kernels()) : baseline_double_kernels();
    return static_cast<const MicroKernels<Acc>*>(k);
  }();
  return *chosen;
}

// kc: an A micro-panel (mr x kc) fills three quarters of L1, the rest left
// for the B values streaming through and C's tile (half and a quarter ran
// 3-10% slower on 2048^2, a full L1 up to 20%). nc: a packed block of B (kc
// x nc) fills half of L2. Both at least a few steps / panels, kc a multiple
// of 8 (whole cache lines of the panels), nc of nr.
struct Blocking {
  int64_t mr, nr, kc, nc;
};

template <typename Acc>
Blocking blocking() {
  const MicroKernels<Acc>& k = micro_kernels<Acc>();
  const CpuCaches c = cpu_caches();
  const int64_t kc = std::clamp<int64_t>(c.l1 * 3 / 4 / (k.mr * int64_t{sizeof(Acc)}) / 8 * 8, 64, 1024);
  const int64_t nc = std::max<int64_t>(4, c.l2 / 2 / (kc * int64_t{sizeof(Acc)}) / k.nr) * k.nr;
  return {k.mr, k.nr, kc, nc};
}

// Rows of A packed per task at most (its packed block: kMaxBlockRows x kc).
constexpr int64_t kMaxBlockRows = 1024;
// Tasks of at most this many micro-panels of rows read B in place where
// they can (run_block): a packed panel of B serves every micro-panel of the
// task's rows, so with fewer of them packing costs more than it saves (up
// up to 1.25x faster on products of 64 to 196 rows; measured on an AVX-512
// CPU with 48 KiB of L1).
constexpr int64_t kMaxRowsForBInPlace = 16;
// ... unless B's rows lie a multiple of a page apart: then the reduction's
// steps all fall in a few sets of the L1 cache and evict each other (1.5x
// slower at 4 and 8 KiB, no slower at 1 or 2 KiB), which a packed,
// contiguous panel does not.
constexpr int64_t kAliasingBytes = 4096;
// Rows of a task's block come in multiples of this (see run).
constexpr int64_t kRowBlockGrain = 4;
// C^T = B^T A^T is computed instead of C (see run) where its tiles compute
// less than this share of C's: its tiles of C go through a buffer (C^T's
// rows are C's columns), so a near tie is not worth it; and where C^T has at
// least this many panels of columns.
constexpr double kMaxTransposedWork = 0.9;
constexpr int64_t kMinTransposedPanels = 4;
// A task whose tiles the micro-kernel cannot write into C itself (C^T's,
// C of another type than the sums') keeps its sums in a buffer of the
// accumulation type across the slices of the reduction, up to this many
// values, and stores them into C once at the end. Stored slice by slice,
// one value at a time, the transposed tiles of ResNet-18's 512-channel 7x7
// forward at batch 1 (4,608 steps, 11 slices) took a tenth of its time;
// half and bfloat16 C would also be rounded to their type after each slice.
constexpr int64_t kMaxTaskSums = int64_t{1} << 18;
// Multiply-adds below which a product runs on one thread: waking the others
// costs more.
constexpr int64_t kMinParallelMacs = int64_t{1} << 20;

// The reduction's slices: as few as kc allows, of about equal length, in
// multiples of 8 steps like kc itself (the packing transposes 8 x 8 blocks;
// slices of 342 steps left a remainder in every one, and the Winograd
// weight gradient's product ran 3 points of the peak slower). Slices of kc
// and a remainder left the last one short, while each slice loads and
// stores every tile of C once: im2col's 64 x 576 x 1024 forward product ran
// 432 steps and then 144.
inline int64_t slice_steps(int64_t k, int64_t kc) {
  const int64_t slices = (k + kc - 1) / kc;
  return std::min(k, ((k + slices - 1) / slices + 7) / 8 * 8);
}

// 64-byte aligned scratch for one thread's packed blocks, kept between calls
// (the threads of torch's pool live as long as the process).
template <typename Acc>
Acc* scratch(int64_t values) {
  struct Free {
    void operator()(Acc* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<Acc, Free> buffer;
  thread_local int64_t size = 0;
  if (values > size) {
    const int64_t bytes = (values * int64_t{sizeof(Acc)} + 63) / 64 * 64;
    buffer.reset(static_cast<Acc*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(buffer != nullptr, "custom_conv gemm: out of memory for ", bytes, " bytes of packing scratch");
    size = values;
  }
  return buffer.get();
}

// Packing an operand stored across the micro-panel (A row-major, B
// column-major) reads its rows (columns) a cache line at a time: rows of
// operands whose length is a multiple of 4 KiB (1,024 floats: Winograd's
// blocks of tiles) map to the same cache set, and reading all of a
// panel's rows at once, step by step, evicted each line before its next
// value was read.
constexpr int64_t kStepsPerLine = 16;

template <typename Acc, typename T>
inline Acc to_acc(T v) {
  return static_cast<Acc>(v);
}

// Packing an operand whose steps are contiguous along its lines (a
// row-major A, a B stored transposed: the weight gradients' products) is a
// transpose: ../transpose.h's, in vector registers, per level. Its blocks
// read each line's two halves of a cache line one after the other, so lines
// a multiple of 4 KiB apart (Winograd's blocks of 1,024 tiles), which share
// one set of the L1 cache, do not evict each other in between: copying them
// first into a block of lines that do not share sets made the 16 x 128 x 128
// x 1,024 weight-gradient product slower (68-77% of the FMA peak on one
// thread against 76-80%, slower in every alternating pair; 64 x 64 and
// 256 x 256 alike).
CUSTOM_CONV_PER_LEVEL(void, pack_transposed_float, (const float* panel, int64_t along, int64_t count, int64_t kc,
                                                    int64_t w, float* dst),
                      (panel, along, count, kc, w, dst)) {
  vectorised::transpose_body(panel, count, kc, along, dst, w);
}
CUSTOM_CONV_PER_LEVEL(void, pack_transposed_double, (const double* panel, int64_t along, int64_t count,
                                                     int64_t kc, int64_t w, double* dst),
                      (panel, along, count, kc, w, dst)) {
  vectorised::transpose_body(panel, count, kc, along, dst, w);
}
inline void pack_transposed(const float* panel, int64_t along, int64_t count, int64_t kc, int64_t w, float* dst) {
  pack_transposed_float(panel, along, count, kc, w, dst);
}
inline void pack_transposed(const double* panel, int64_t along, int64_t count, int64_t kc, int64_t w,
                            double* dst) {
  pack_transposed_double(panel, along, count, kc, w, dst);
}

// A panel stored across its micro-panel, line by line, a cache line of steps
// at a time (see kStepsPerLine).
template <typename T, typename Acc>
void pack_across(const T* panel, int64_t along, int64_t step, int64_t count, int64_t kc, int64_t w, Acc* dst) {
  for (int64_t k0 = 0; k0 < kc; k0 += kStepsPerLine) {
    const int64_t steps = std::min(kStepsPerLine, kc - k0);
    for (int64_t i = 0; i < count; ++i) {
      const T* line = panel + i * along + k0 * step;
      for (int64_t k = 0; k < steps; ++k) dst[(k0 + k) * w + i] = to_acc<Acc>(line[k * step]);
    }
  }
}

// A panel's lines [count, w) as zeros, every step: the columns past B's end
// in its last panel, which the micro-kernel multiplies (and never stores).
// Left as whatever the scratch held, they were at times denormal floats (old
// bytes of other objects), and each multiply-add on one took a microcode
// assist: ResNet-18's 64-64 @56 forward at batch 1 ran in 0.8, 1.7 or 9.9 ms
// from one process to the next.
template <typename Acc>
void zero_padding(int64_t count, int64_t kc, int64_t w, Acc* dst) {
  if (count == w) return;
  for (int64_t k = 0; k < kc; ++k) {
    for (int64_t i = count; i < w; ++i) dst[k * w + i] = Acc(0);
  }
}

// An operand's lines [0, lines) (A's rows, B's columns; `along` apart) and
// steps [0, kc) (`step` apart) into micro-panels of `width` lines, each
// step-major (dst[k * w + i]) as micro_kernel.h reads it. The last panel is
// narrower: w = its own lines for A (the edge kernels read exactly those),
// w = width for B, whose extra columns are computed but never stored.
template <typename T, typename Acc>
void pack_panels(const T* src, int64_t along, int64_t step, int64_t lines, int64_t kc, int64_t width,
                 bool pad_last, Acc* dst) {
  if (along == 1) {
    // A step's values contiguous (B's rows, or a column-major A's columns):
    // copy them step after step across all the panels, so that each step's
    // line is read front to back. Panel by panel, every step would read a
    // few cache lines and jump to the next step, often a page or more away:
    // no hardware prefetcher follows that, and packing a block of im2col's
    // columns cost a quarter of the product's time.
    for (int64_t k = 0; k < kc; ++k) {
      const T* line = src + k * step;
      for (int64_t i0 = 0; i0 < lines; i0 += width) {
        const int64_t count = std::min(width, lines - i0), w = pad_last ? width : count;
        Acc* d = dst + i0 * kc + k * w;  // the panels before it are all `width` wide
        for (int64_t i = 0; i < count; ++i) d[i] = to_acc<Acc>(line[i0 + i]);
        for (int64_t i = count; i < w; ++i) d[i] = Acc(0);  // see zero_padding
      }
    }
    return;
  }
  for (int64_t i0 = 0; i0 < lines; i0 += width) {
    const int64_t count = std::min(width, lines - i0), w = pad_last ? width : count;
    const T* panel = src + i0 * along;
    if (std::is_same_v<T, Acc> && step == 1) {
      // float, double, steps contiguous: a transpose (see pack_transposed)
      if constexpr (std::is_same_v<T, Acc>) pack_transposed(panel, along, count, kc, w, dst);
    } else {
      pack_across(panel, along, step, count, kc, w, dst);
    }
    zero_padding(count, kc, w, dst);
    dst += w * kc;
  }
}

// C's tile at c (rows x cols) = alpha * tile + beta * C + bias, from a tile
// of sums computed into a buffer (ld nr): for edge columns, C of another
// type than the sums', or C not stored row by row. The bias is per row of
// the tile, or per column (`bias_per_column`: a transposed product's, whose
// rows are the caller's columns).
template <typename T, typename Acc>
void store_tile(const Acc* tile, int64_t nr, int64_t rows, int64_t cols, T* c, int64_t rs_c, int64_t cs_c,
                const T* bias, Acc alpha, Acc beta, bool bias_per_column = false) {
  const auto store = [&](int64_t i, int64_t j) {
    T& out = c[i * rs_c + j * cs_c];
    const Acc b = bias == nullptr ? Acc(0) : to_acc<Acc>(bias[bias_per_column ? j : i]);
    Acc v = alpha * tile[i * nr + j] + b;
    if (beta != Acc(0)) v += beta * to_acc<Acc>(out);
    out = static_cast<T>(v);
  };
  // Along C's rows, whichever way the tile lies in it.
  if (cs_c == 1 || rs_c != 1) {
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) store(i, j);
    }
  } else {
    for (int64_t j = 0; j < cols; ++j) {
      for (int64_t i = 0; i < rows; ++i) store(i, j);
    }
  }
}

// One task: rows [i0, i1) and columns [j0, j1) of C[z], the whole
// reduction. Per slice of kc steps, the task's rows of A are packed once
// and each block of nc columns of B in turn, so that A is packed once per
// slice however wide the task.
template <typename T, typename Acc>
void run_block(const Problem<T, Acc>& p, const Blocking& bl, int64_t z, int64_t i0, int64_t i1, int64_t j0,
               int64_t j1) {
  const MicroKernels<Acc>& mk = micro_kernels<Acc>();
  const int64_t rows = i1 - i0, cols = j1 - j0;
  const int64_t kc_max = slice_steps(p.k, bl.kc), nc_max = std::min(bl.nc, (cols + bl.nr - 1) / bl.nr * bl.nr);
  constexpr bool kSameType = std::is_same_v<T, Acc>;
  const bool rows_of_c = p.cs_c == 1 && !p.transposed;
  // The task's sums in a buffer across the slices (see kMaxTaskSums), whole
  // tiles wide (ld_sums), where there is more than one slice to sum.
  const int64_t ld_sums = (cols + bl.nr - 1) / bl.nr * bl.nr;
  const bool sums_apart = (!kSameType || !rows_of_c) && p.k > bl.kc && rows * ld_sums <= kMaxTaskSums;
  Acc* packed_a = scratch<Acc>(kc_max * rows + kc_max * nc_max + bl.mr * bl.nr + (sums_apart ? rows * ld_sums : 0));
  Acc* packed_b = packed_a + kc_max * rows;
  Acc* tile = packed_b + kc_max * nc_max;
  Acc* sums = tile + bl.mr * bl.nr;
  const T* a = p.a.data + z * p.a.batch_stride + i0 * p.a.rs;
  const T* b = p.b.data + z * p.b.batch_stride + j0 * p.b.cs;
  T* c = p.c + z * p.batch_stride_c + i0 * p.rs_c + j0 * p.cs_c;
  const T* bias = p.bias != nullptr ? p.bias + z * p.batch_stride_bias + (p.transposed ? j0 : i0) : nullptr;
  // The micro-kernel writes C itself where it can: float and double C
  // stored row by row, whole tiles.
  // B read in place, its whole panels: where its rows are contiguous and
  // the task has too few rows of A to pay for packing B (each packed panel
  // would serve only a few micro-tiles).
  const bool b_in_place = kSameType && p.b.cs == 1 && rows <= kMaxRowsForBInPlace * bl.mr &&
                          (p.b.rs * int64_t{sizeof(T)}) % kAliasingBytes != 0;
  for (int64_t k0 = 0; k0 < p.k; k0 += kc_max) {
    const int64_t kc = std::min(kc_max, p.k - k0);
    const bool first = k0 == 0;
    const Acc beta = first ? p.beta : Acc(1);
    pack_panels(a + k0 * p.a.cs, p.a.rs, p.a.cs, rows, kc, bl.mr, /*pad_last=*/false, packed_a);
    for (int64_t jb = 0; jb < cols; jb += bl.nc) {
      const int64_t nc = std::min(bl.nc, cols - jb), panels = (nc + bl.nr - 1) / bl.nr;
      // Panels [0, in_place) are read from B itself; the rest (a last,
      // partial one at least, whose loads would run past B) are packed.
      const int64_t in_place = b_in_place ? nc / bl.nr : 0;
      if (in_place < panels) {
        pack_panels(b + k0 * p.b.rs + (jb + in_place * bl.nr) * p.b.cs, p.b.cs, p.b.rs, nc - in_place * bl.nr, kc,
                    bl.nr, /*pad_last=*/true, packed_b);
      }
      const Acc* pa = packed_a;
      for (int64_t i = 0; i < rows; i += bl.mr) {
        const int64_t pr = std::min<int64_t>(bl.mr, rows - i);
        const auto kernel = mk.rows[pr];
        const T* bias_i = first && bias != nullptr && !p.transposed ? bias + i : nullptr;
        for (int64_t jp = 0; jp < panels; ++jp) {
          const int64_t j = jb + jp * bl.nr, pc = std::min<int64_t>(bl.nr, cols - j);
          const Acc* pb = packed_b + (jp - in_place) * kc * bl.nr;
          int64_t ldb = bl.nr;
          T* cij = c + i * p.rs_c + j * p.cs_c;
          if constexpr (kSameType) {
            if (jp < in_place) {
              pb = b + k0 * p.b.rs + j;
              ldb = p.b.rs;
            }
          }
          if (sums_apart) {
            kernel(kc, pa, pb, ldb, sums + i * ld_sums + j, ld_sums, nullptr, p.alpha, first ? Acc(0) : Acc(1));
            continue;
          }
          if constexpr (kSameType) {
            if (rows_of_c && pc == bl.nr) {
              kernel(kc, pa, pb, ldb, cij, p.rs_c, bias_i, p.alpha, beta);
              continue;
            }
          }
          kernel(kc, pa, pb, ldb, tile, bl.nr, nullptr, Acc(1), Acc(0));
          const T* bias_ij = !p.transposed ? bias_i : first && bias != nullptr ? bias + j : nullptr;
          store_tile(tile, bl.nr, pr, pc, cij, p.rs_c, p.cs_c, bias_ij, p.alpha, beta, p.transposed);
        }
        pa += pr * kc;
      }
    }
  }
  if (sums_apart) {  // alpha is in the sums; beta and the bias apply once
    store_tile(sums, ld_sums, rows, cols, c, p.rs_c, p.cs_c, bias, Acc(1), p.beta, p.transposed);
  }
}

// C = beta * C + bias, for a product with nothing to sum (k == 0).
template <typename T, typename Acc>
void scale_only(const Problem<T, Acc>& p) {
  for (int64_t z = 0; z < p.batch; ++z) {
    for (int64_t i = 0; i < p.m; ++i) {
      const Acc b = p.bias != nullptr ? to_acc<Acc>(p.bias[z * p.batch_stride_bias + i]) : Acc(0);
      for (int64_t j = 0; j < p.n; ++j) {
        T& out = p.c[z * p.batch_stride_c + i * p.rs_c + j * p.cs_c];
        out = static_cast<T>(b + (p.beta != Acc(0) ? p.beta * to_acc<Acc>(out) : Acc(0)));
      }
    }
  }
}

// A product with very few columns (a deep layer's tiny plane at batch 1:
// 4 columns against 512 x 4608 weights) does a handful of multiply-adds per
// value of A, so it runs at the speed A streams from memory; packing A would
// read and write it twice more. There, each row of A (stored row by row) is
// read once, as dot products with B's columns, copied contiguous first
// (bt, n x k). The sums run in kDotLanes interleaved partial sums, added up
// at the end: a fixed order. (Up to 16 columns: a deep layer's 4x4 plane at
// batch 1 ran 2x torch's time through the packed path.)
constexpr int64_t kMaxDotColumns = 16;
constexpr int64_t kDotLanes = 16;

// The rows go in tiles of kDotRows rows by kDotTileColumns columns, 24
// vectors of partial sums (registers at AVX-512), so that each column's
// values are loaded once for all the tile's rows. Row by row, with all 16
// columns' sums at once, VGG's 256-512 and 512-512 @4 at batch 1 took 505
// and 927 us; in tiles, 363 and 689 (torch: 160-180 and 330-370); with bt
// aligned, blocked over the steps and the lanes added by a tree (below),
// 222 and 402 (torch 165 and 350). Every sum is the same expression in the
// same order, whatever the rows' task or thread.
constexpr int64_t kDotRows = 3;
constexpr int64_t kDotTileColumns = 8;
// Rows per call of dot_rows (a task's share is cut into these), and steps
// per block (see dot_rows_body): the block's 16 columns (16 KiB of floats)
// and the partial sums of its 12 rows (12 KiB) fit in L1 together.
constexpr int64_t kDotTaskRows = 4 * kDotRows;
constexpr int64_t kDotBlockSteps = 256;

// The kDotLanes partial sums of each of a tile's kDotTileColumns columns
// added down to two, lanes[2 j] and lanes[2 j + 1] for column j, by halves
// across pairs of vectors: 7 pairs of shuffles and adds in place of 120
// scalar additions, which took a third of the loop's time on a 2304-step
// reduction. A fixed tree: the same order for every row and column.
template <typename Lanes, typename T>
CUSTOM_CONV_INLINE void add_lanes(const Lanes (&v)[kDotTileColumns], T* lanes) {
  static_assert(kDotTileColumns == 8 && kDotLanes == 16, "the tree below halves 8 vectors of 16 lanes");
  using Index = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef Index Indices __attribute__((vector_size(kDotLanes * sizeof(Index))));
  // w[j]: v[2j]'s lanes l + (l + 8) in lanes 0-7, v[2j + 1]'s in 8-15.
  const Indices lo8{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const Indices hi8{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  Lanes w[4];
  for (int j = 0; j < 4; ++j) w[j] = __builtin_shuffle(v[2 * j], v[2 * j + 1], lo8) +
                                     __builtin_shuffle(v[2 * j], v[2 * j + 1], hi8);
  // x[i]: groups of 4 lanes, one per column 4i .. 4i + 3.
  const Indices lo4{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const Indices hi4{4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  Lanes x[2];
  for (int i = 0; i < 2; ++i) x[i] = __builtin_shuffle(w[2 * i], w[2 * i + 1], lo4) +
                                     __builtin_shuffle(w[2 * i], w[2 * i + 1], hi4);
  // y: pairs of lanes, one pair per column.
  const Indices lo2{0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
  const Indices hi2{2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
  const Lanes y = __builtin_shuffle(x[0], x[1], lo2) + __builtin_shuffle(x[0], x[1], hi2);
  __builtin_memcpy(lanes, &y, sizeof(y));
}

template <CpuLevel kLevel, typename T>
CUSTOM_CONV_INLINE void dot_rows_body(const T* a, int64_t lda, const T* bt, int64_t ldb, int64_t n, int64_t k,
                                      int64_t i0, int64_t i1, T* sums) {
  // kDotLanes values as one vector of the compiler's (a register at AVX-512
  // for float, two or four below), lane l summing the steps k = l mod 16.
  typedef T Lanes __attribute__((vector_size(kDotLanes * sizeof(T))));
  constexpr int64_t kTiles = kDotTaskRows / kDotRows, kColumnTiles = kMaxDotColumns / kDotTileColumns;
  Lanes part[kTiles][kColumnTiles][kDotRows][kDotTileColumns];
  const T* row[kTiles][kDotRows];
  for (int64_t t = 0; t < kTiles; ++t) {
    for (int64_t r = 0; r < kDotRows; ++r) {
      row[t][r] = a + std::min(i0 + t * kDotRows + r, i1 - 1) * lda;  // past i1: not stored
    }
  }
  const int64_t tiles = (i1 - i0 + kDotRows - 1) / kDotRows;
  const int64_t column_tiles = (n + kDotTileColumns - 1) / kDotTileColumns;
  const int64_t whole = k / kDotLanes * kDotLanes;
  // The steps in blocks of kDotBlockSteps, each block over all the rows:
  // the block's columns of bt stay in L1 for all of them. Whole, bt's 16
  // columns of a 2304-step product streamed from L2 for every tile of rows,
  // and the loop ran at half the FMA peak. Each lane still adds its steps
  // in order, the tiles' partial sums kept in `part` between blocks.
  for (int64_t kb = 0; kb < std::max<int64_t>(whole, 1); kb += kDotBlockSteps) {
    const int64_t kb_end = std::min(whole, kb + kDotBlockSteps);
    for (int64_t t = 0; t < tiles; ++t) {
      for (int64_t c = 0; c < column_tiles; ++c) {  // bt holds whole tiles of columns (zeros past n)
        Lanes acc[kDotRows][kDotTileColumns];
        for (int64_t r = 0; r < kDotRows; ++r) {
          for (int64_t j = 0; j < kDotTileColumns; ++j) acc[r][j] = kb == 0 ? Lanes{} : part[t][c][r][j];
        }
        const T* col0 = bt + c * kDotTileColumns * ldb;
        for (int64_t k0 = kb; k0 < kb_end; k0 += kDotLanes) {
          Lanes rows[kDotRows];
          for (int64_t r = 0; r < kDotRows; ++r) __builtin_memcpy(&rows[r], row[t][r] + k0, sizeof(Lanes));
          for (int64_t j = 0; j < kDotTileColumns; ++j) {
            Lanes col;
            __builtin_memcpy(&col, col0 + j * ldb + k0, sizeof(Lanes));
            // Kept in a register where one holds it (float at AVX-512): else
            // GCC folds the load into each row's multiply-add, kDotRows loads
            // of it where one will do (perf: the loop bound by its loads).
            if constexpr (kLevel == CpuLevel::kAvx512 && sizeof(Lanes) == 64) __asm__("" : "+v"(col));
            for (int64_t r = 0; r < kDotRows; ++r) acc[r][j] += rows[r] * col;
          }
        }
        for (int64_t r = 0; r < kDotRows; ++r) {
          for (int64_t j = 0; j < kDotTileColumns; ++j) part[t][c][r][j] = acc[r][j];
        }
      }
    }
  }
  for (int64_t t = 0; t < tiles; ++t) {
    for (int64_t c = 0; c < column_tiles; ++c) {
      for (int64_t r = 0; r < std::min(kDotRows, i1 - i0 - t * kDotRows); ++r) {
        T lanes[2 * kDotTileColumns];
        add_lanes(part[t][c][r], lanes);
        for (int64_t j = 0; j < std::min(kDotTileColumns, n - c * kDotTileColumns); ++j) {
          const T* col = bt + (c * kDotTileColumns + j) * ldb;
          T sum = lanes[2 * j] + lanes[2 * j + 1];
          for (int64_t kk = whole; kk < k; ++kk) sum += row[t][r][kk] * col[kk];
          sums[(t * kDotRows + r) * kMaxDotColumns + c * kDotTileColumns + j] = sum;
        }
      }
    }
  }
}

CUSTOM_CONV_PER_LEVEL(void, dot_rows_float,
                      (const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t n, int64_t k, int64_t i0,
                       int64_t i1, float* sums),
                      (a, lda, bt, ldb, n, k, i0, i1, sums)) {
  dot_rows_body<kLevel>(a, lda, bt, ldb, n, k, i0, i1, sums);
}
CUSTOM_CONV_PER_LEVEL(void, dot_rows_double,
                      (const double* a, int64_t lda, const double* bt, int64_t ldb, int64_t n, int64_t k,
                       int64_t i0, int64_t i1, double* sums),
                      (a, lda, bt, ldb, n, k, i0, i1, sums)) {
  dot_rows_body<kLevel>(a, lda, bt, ldb, n, k, i0, i1, sums);
}
void dot_rows(const float* a, int64_t lda, const float* bt, int64_t ldb, int64_t n, int64_t k, int64_t i0,
              int64_t i1, float* sums) {
  dot_rows_float(a, lda, bt, ldb, n, k, i0, i1, sums);
}
void dot_rows(const double* a, int64_t lda, const double* bt, int64_t ldb, int64_t n, int64_t k, int64_t i0,
              int64_t i1, double* sums) {
  dot_rows_double(a, lda, bt, ldb, n, k, i0, i1, sums);
}

template <typename T>
void run_few_columns(const Problem<T, T>& p) {
  constexpr int64_t kRowsPerTask = kDotTaskRows;
  // B's columns contiguous (bt, whole tiles of columns, zeros past n), each
  // starting on a cache line: from unaligned columns every load of the dot
  // loop spanned two lines, and the loop ran at a third of the FMA peak.
  const int64_t ldb = (p.k + 15) / 16 * 16;
  const int64_t columns = (p.n + kDotTileColumns - 1) / kDotTileColumns * kDotTileColumns;
  T* bt = scratch<T>(columns * ldb);
  std::fill(bt + p.n * ldb, bt + columns * ldb, T(0));
  for (int64_t z = 0; z < p.batch; ++z) {
    const T* b = p.b.data + z * p.b.batch_stride;
    if (p.b.cs == 1) {
      transpose(b, p.k, p.n, p.b.rs, bt, ldb);
    } else {
      for (int64_t j = 0; j < p.n; ++j) {
        for (int64_t kk = 0; kk < p.k; ++kk) bt[j * ldb + kk] = b[kk * p.b.rs + j * p.b.cs];
      }
    }
    const T* a = p.a.data + z * p.a.batch_stride;
    T* c = p.c + z * p.batch_stride_c;
    const T* bias = p.bias != nullptr ? p.bias + z * p.batch_stride_bias : nullptr;
    const int64_t grain = at::in_parallel_region() || p.m * p.n * p.k < kMinParallelMacs ? p.m : kRowsPerTask;
    at::parallel_for(0, p.m, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t r0 = i0; r0 < i1; r0 += kRowsPerTask) {
        const int64_t r1 = std::min(i1, r0 + kRowsPerTask);
        T sums[kRowsPerTask * kMaxDotColumns];
        dot_rows(a, p.a.rs, bt, ldb, p.n, p.k, r0, r1, sums);
        store_tile(sums, kMaxDotColumns, r1 - r0, p.n, c + r0 * p.rs_c, p.rs_c, p.cs_c,
                   bias != nullptr ? bias + r0 : nullptr, p.alpha, p.beta);
      }
    });
  }
}

}  // namespace

template <typename T, typename Acc>
void run(const Problem<T, Acc>& p) {
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  if (p.k == 0) return scale_only(p);
  if constexpr (std::is_same_v<T, Acc>) {
    if (p.n <= kMaxDotColumns && p.a.cs == 1 && !p.transposed) return run_few_columns(p);
  }
  const Blocking bl = blocking<Acc>();
  // Columns run along the vector lanes, nr at a time, and a tile at the
  // edge computes all its lanes (a tile at the bottom edge computes only its
  // rows): of the two ways to run the product, C or C^T = B^T A^T, take the
  // one that wastes fewer lanes. ResNet-18's 512-channel 7x7 layer at batch
  // 1, 512 x 49 x 4608: 49 columns in two tiles of 32 lanes waste 23%, C^T
  // none (1.15x faster). But C^T reads A^T as its B, which cannot be read in
  // place and which each thread packs whole when the threads split C^T's
  // rows: with only a few panels of C^T's columns that costs more than the
  // lanes save (64 x 49 x 576: 1.3x slower), unless C has fewer columns than
  // one tile.
  const auto computed = [&](int64_t rows, int64_t cols) { return rows * ((cols + bl.nr - 1) / bl.nr * bl.nr); };
  if (!p.transposed && (p.n < bl.nr || p.m >= kMinTransposedPanels * bl.nr) &&
      computed(p.n, p.m) < kMaxTransposedWork * computed(p.m, p.n)) {
    Problem<T, Acc> t = p;
    std::swap(t.m, t.n);
    t.a = {p.b.data, p.b.cs, p.b.rs, p.b.batch_stride};
    t.b = {p.a.data, p.a.cs, p.a.rs, p.a.batch_stride};
    std::swap(t.rs_c, t.cs_c);
    t.transposed = true;
    return run(t);
  }
  // Tasks: blocks of C of at most kMaxBlockRows rows and all the columns,
  // cut into more (in whole micro-tiles, along the wider dimension) until
  // every thread has one, where the product is large enough to be spread at
  // all. A task packs its rows of A once per slice and each column of B
  // once per slice, so fewer, larger tasks pack less.
  const int64_t macs = p.batch * p.m * p.n * p.k;
  const int64_t threads = macs < kMinParallelMacs || at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t row_tiles = (p.m + bl.mr - 1) / bl.mr, col_tiles = (p.n + bl.nr - 1) / bl.nr;
  int64_t row_blocks = (p.m + kMaxBlockRows - 1) / kMaxBlockRows, col_blocks = 1;
  while (p.batch * row_blocks * col_blocks < threads && (row_blocks < row_tiles || col_blocks < col_tiles)) {
    if (col_tiles * row_blocks >= row_tiles * col_blocks && col_blocks < col_tiles) {
      ++col_blocks;
    } else if (row_blocks < row_tiles) {
      ++row_blocks;
    } else {
      ++col_blocks;
    }
  }
  // Blocks as equal as they can be: of whole micro-tiles of columns (a
  // partial one computes all its columns and copies some out), and of rows
  // in multiples of kRowBlockGrain, which may end in a partial micro-tile
  // (its edge kernel does only its rows): whole tiles of rows split 256
  // rows over two threads as 10 and 8.3 tiles of 14, where 128 and 128
  // run 9.15 each.
  const int64_t grains = row_blocks * kRowBlockGrain;
  const int64_t rows_per = std::min((p.m + grains - 1) / grains * kRowBlockGrain,
                                    (row_tiles + row_blocks - 1) / row_blocks * bl.mr);
  const int64_t cols_per = (col_tiles + col_blocks - 1) / col_blocks * bl.nr;
  row_blocks = (p.m + rows_per - 1) / rows_per;
  col_blocks = (p.n + cols_per - 1) / cols_per;
  const int64_t tasks = p.batch * row_blocks * col_blocks;
  const auto body = [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t z = t / (row_blocks * col_blocks), r = t / col_blocks % row_blocks, c = t % col_blocks;
      run_block(p, bl, z, r * rows_per, std::min(p.m, (r + 1) * rows_per), c * cols_per,
                std::min(p.n, (c + 1) * cols_per));
    }
  };
  if (threads == 1) {
    body(0, tasks);
  } else {
    at::parallel_for(0, tasks, 1, body);
  }
}

template void run(const Problem<float, float>&);
template void run(const Problem<double, double>&);
template void run(const Problem<c10::Half, float>&);
template void run(const Problem<c10::BFloat16, float>&);

void matmul(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, double beta, const at::Tensor& bias,
            double alpha) {
  const bool batched = c.dim() == 3;
  TORCH_CHECK((c.dim() == 2 || batched) && a.dim() == c.dim() && b.dim() == c.dim(),
              "custom_conv gemm: 2-D matrices or 3-D batches, got ", a.sizes(), " @ ", b.sizes(), " -> ", c.sizes());
  const int64_t d = batched ? 1 : 0;
  TORCH_CHECK(a.size(d) == c.size(d) && b.size(d + 1) == c.size(d + 1) && a.size(d + 1) == b.size(d) &&
                  (!batched || (a.size(0) == c.size(0) && b.size(0) == c.size(0))),
              "custom_conv gemm: shapes ", a.sizes(), " @ ", b.sizes(), " -> ", c.sizes(), " do not match");
  TORCH_CHECK(a.scalar_type() == c.scalar_type() && b.scalar_type() == c.scalar_type() &&
                  (!bias.defined() || bias.scalar_type() == c.scalar_type()),
              "custom_conv gemm: operands of one dtype");
  TORCH_CHECK(!bias.defined() || bias.size(-1) == c.size(d), "custom_conv gemm: a bias value per row of c");
  // Seen by torch.profiler as one event per product, inside the op that asked.
  RECORD_FUNCTION("custom_conv::gemm", std::vector<c10::IValue>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "custom_conv_gemm", [&] {
    using Acc = at::opmath_type<scalar_t>;
    Problem<scalar_t, Acc> p;
    p.batch = batched ? c.size(0) : 1;
    p.m = c.size(d);
    p.n = c.size(d + 1);
    p.k = a.size(d + 1);
    p.a = {a.const_data_ptr<scalar_t>(), a.stride(d), a.stride(d + 1), batched ? a.stride(0) : 0};
    p.b = {b.const_data_ptr<scalar_t>(), b.stride(d), b.stride(d + 1), batched ? b.stride(0) : 0};
    p.c = c.mutable_data_ptr<scalar_t>();
    p.rs_c = c.stride(d);
    p.cs_c = c.stride(d + 1);
    p.batch_stride_c = batched ? c.stride(0) : 0;
    if (bias.defined()) {
      p.bias = bias.const_data_ptr<scalar_t>();
      // One value may have any stride: contiguous() keeps it, as torch
      // counts a dimension of size 1 as contiguous whatever its stride.
      TORCH_CHECK(bias.size(-1) <= 1 || bias.stride(-1) == 1, "custom_conv gemm: a contiguous bias");
      p.batch_stride_bias = batched && bias.dim() == 2 ? bias.stride(0) : 0;
    }
    p.alpha = static_cast<Acc>(alpha);
    p.beta = static_cast<Acc>(beta);
    run(p);
  });
}

at::Tensor gemm_op(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& c, double alpha,
                   double beta, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "custom_conv.cpu_gemm: CPU tensors");
  std::vector<int64_t> size = a.sizes().vec();
  size.back() = b.size(-1);
  const bool has_c = c.has_value() && c->defined();
  at::Tensor out = has_c ? c->clone() : at::empty(size, a.options());
  TORCH_CHECK(out.sizes() == c10::IntArrayRef(size), "custom_conv.cpu_gemm: c must be ", c10::IntArrayRef(size),
              ", got ", out.sizes());
  matmul(out, a, b, has_c ? beta : 0.0, bias.has_value() ? *bias : at::Tensor(), alpha);
  return out;
}

std::vector<int64_t> blocking_for(at::ScalarType dtype) {
  const Blocking bl = dtype == at::kDouble ? blocking<double>() : blocking<float>();
  return {bl.mr, bl.nr, bl.kc, bl.nc, cpu_caches().l1, cpu_caches().l2};
}

}  // namespace gemm
}  // namespace custom_conv
