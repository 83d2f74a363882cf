// The GEMM's register-blocked micro-kernel, written once over a small vector
// interface V (../vectors_*.h) and compiled per instruction set: avx512.cpp,
// avx2.cpp and baseline.cpp include this file under their own target. Plain
// C++ only, no library headers (see ../direct/loops.h for why).
//
// It computes one tile of C: M rows by NR = NV * V::lanes columns, over kc
// steps of the reduction. A's micro-panel holds the tile's M rows packed
// column by column (a[k * M + i]), B's micro-panel its NR columns row by row
// (b[k * ldb + j]: packed, ldb = NR; or B itself where its rows are
// contiguous, ldb = its row stride), so that every step of the
// reduction loads NV vectors of B and broadcasts M values of A against them
// into M x NV accumulators that stay in registers for the whole reduction:
// the "serialisation" product (the README's "The ideas"), one register tile at a time.
//
// Then C = alpha * sum + beta * C + bias, row by row (ldc apart, columns
// contiguous); with beta == 0, C is not read.
#pragma once

#include "kernels.h"

namespace custom_conv {
namespace gemm {
namespace micro {

// B's values this many steps ahead are prefetched into L1 while the
// current step's multiply-adds run. Packed, B streams from L2 and the
// hardware prefetchers mostly keep up; read in place (gemm.cpp), its steps
// lie a row of B apart, often in another page, which they do not follow
// (a 128 x 1152 x 512 product on B in place ran 1.2x faster with it; 4
// steps ahead gained less, 16 no more).
constexpr int kPrefetchSteps = 8;

template <class V, int M, int NV>
void kernel(int64_t kc, const typename V::scalar* a, const typename V::scalar* b, int64_t ldb,
            typename V::scalar* c, int64_t ldc, const typename V::scalar* bias, typename V::scalar alpha,
            typename V::scalar beta) {
  using T = typename V::scalar;
  using R = typename V::reg;
  R acc[M][NV];
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  }
  for (int64_t k = 0; k < kc; ++k, a += M, b += ldb) {
    R bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      // once per cache line (64 bytes)
      if (v * V::lanes * sizeof(T) % 64 == 0) __builtin_prefetch(b + kPrefetchSteps * ldb + v * V::lanes);
      bv[v] = V::load(b + v * V::lanes);
    }
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
      const R ai = V::broadcast(a + i);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(ai, bv[v], acc[i][v]);
    }
  }
  const R va = V::broadcast(&alpha), vb = V::broadcast(&beta);
#pragma GCC unroll 16
  for (int i = 0; i < M; ++i) {
    T* ci = c + i * ldc;
    const R bi = bias != nullptr ? V::broadcast(bias + i) : V::zero();
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      R r = V::fma(acc[i][v], va, bi);
      if (beta != T(0)) r = V::fma(V::load(ci + v * V::lanes), vb, r);
      V::store(ci + v * V::lanes, r);
    }
  }
}

// The table of kernels for 1 .. MR rows (index = rows), NV vectors wide.
template <class V, int MR, int NV, int... Rows>
constexpr MicroKernels<typename V::scalar> table_of(std::integer_sequence<int, Rows...>) {
  return MicroKernels<typename V::scalar>{MR, NV * V::lanes, {nullptr, &kernel<V, Rows + 1, NV>...}};
}

template <class V, int MR, int NV>
constexpr MicroKernels<typename V::scalar> table() {
  static_assert(MR <= kMaxRows, "raise kMaxRows");
  return table_of<V, MR, NV>(std::make_integer_sequence<int, MR>());
}

}  // namespace micro
}  // namespace gemm
}  // namespace custom_conv
