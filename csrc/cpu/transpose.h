// Transposes in vector registers, for the loops compiled per level
// (per_level.h): the GEMM's packing of an operand stored across its
// micro-panels, and the direct weight gradient's change of layout.
//
// transpose_body(src, rows, cols, src_stride, dst, dst_stride) writes
// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols.
// Scalar, a transpose moves one value per load and store; here blocks of 8
// rows by 8 columns (floats; 4 by 4 doubles) are read as one vector per row
// and transposed in registers with the compiler's vector extensions, whose
// constant shuffles become the level's unpack and permute instructions,
// then stored as one vector per column. A last block of fewer rows reads
// zeros for the missing ones and stores only its own; the last columns, and
// blocks of fewer than half their rows, are copied one by one.
#pragma once

#include "per_level.h"
#include "transpose_8x8.h"

#include <algorithm>
#include <cstdint>

namespace custom_conv {
namespace vectorised {

using F8 = Floats8;
using D4 = double __attribute__((vector_size(32)));
using L4 = int64_t __attribute__((vector_size(32)));

// The first n (1 <= n <= K) values of v to dst. Each size is a copy of
// constant size, which the compiler turns into a few moves: one of variable
// size is a call to memcpy, once per line of every block (a twelfth of a
// Winograd layer's time went to those calls).
template <int K, typename V, typename T>
CUSTOM_CONV_INLINE void store_first(T* dst, const V& v, int64_t n) {
  if constexpr (K > 0) {
    if (n == K) {
      __builtin_memcpy(dst, &v, K * sizeof(T));
      return;
    }
    store_first<K - 1>(dst, v, n);
  }
}

// kFull: all 8 (4) lines present, known at compile time: the vectors then
// go straight to their stores, where the variable count kept them on the
// stack (a third of a direct weight gradient's change of layout).
template <bool kFull>
CUSTOM_CONV_INLINE void transpose_block(const float* src, int64_t along, int64_t n, float* dst, int64_t w) {
  F8 r[8];
  for (int i = 0; i < 8; ++i) {
    if (kFull || i < n) {
      __builtin_memcpy(&r[i], src + i * along, sizeof(F8));
    } else {
      r[i] = F8{};
    }
  }
  F8 t[8];
  transpose_8x8(r, t);
  for (int k = 0; k < 8; ++k) {
    if constexpr (kFull) {
      __builtin_memcpy(dst + k * w, &t[k], sizeof(F8));
    } else {
      store_first<8>(dst + k * w, t[k], n);
    }
  }
}

template <bool kFull>
CUSTOM_CONV_INLINE void transpose_block(const double* src, int64_t along, int64_t n, double* dst, int64_t w) {
  D4 r[4];
  for (int i = 0; i < 4; ++i) {
    if (kFull || i < n) {
      __builtin_memcpy(&r[i], src + i * along, sizeof(D4));
    } else {
      r[i] = D4{};
    }
  }
  const L4 lo{0, 4, 2, 6}, hi{1, 5, 3, 7}, lo2{0, 1, 4, 5}, hi2{2, 3, 6, 7};
  const D4 a[4] = {__builtin_shuffle(r[0], r[1], lo), __builtin_shuffle(r[0], r[1], hi),
                   __builtin_shuffle(r[2], r[3], lo), __builtin_shuffle(r[2], r[3], hi)};
  const D4 c[4] = {__builtin_shuffle(a[0], a[2], lo2), __builtin_shuffle(a[1], a[3], lo2),
                   __builtin_shuffle(a[0], a[2], hi2), __builtin_shuffle(a[1], a[3], hi2)};
  for (int k = 0; k < 4; ++k) {
    if constexpr (kFull) {
      __builtin_memcpy(dst + k * w, &c[k], sizeof(D4));
    } else {
      store_first<4>(dst + k * w, c[k], n);
    }
  }
}

template <typename T>
CUSTOM_CONV_INLINE void transpose_body(const T* src, int64_t rows, int64_t cols, int64_t src_stride, T* dst,
                                       int64_t dst_stride) {
  constexpr int64_t kBlock = 32 / sizeof(T);
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    const int64_t n = std::min(kBlock, rows - i0);
    const T* lines = src + i0 * src_stride;
    int64_t j0 = 0;
    // A block of fewer than half its rows (a first layer's 1 or 3 input
    // channels) would shuffle mostly zeros: there, values one by one.
    if (n == kBlock) {
      for (; j0 + kBlock <= cols; j0 += kBlock) {
        transpose_block<true>(lines + j0, src_stride, n, dst + j0 * dst_stride + i0, dst_stride);
      }
    }
    for (; 2 * n >= kBlock && j0 + kBlock <= cols; j0 += kBlock) {
      transpose_block<false>(lines + j0, src_stride, n, dst + j0 * dst_stride + i0, dst_stride);
    }
    for (; j0 < cols; ++j0) {
      for (int64_t i = 0; i < n; ++i) dst[j0 * dst_stride + i0 + i] = lines[i * src_stride + j0];
    }
  }
}

}  // namespace vectorised

// The same, out of line and at the process's level (transpose.cpp): for
// routes that change a whole tensor's layout.
void transpose(const float* src, int64_t rows, int64_t cols, int64_t src_stride, float* dst, int64_t dst_stride);
void transpose(const double* src, int64_t rows, int64_t cols, int64_t src_stride, double* dst, int64_t dst_stride);

}  // namespace custom_conv
