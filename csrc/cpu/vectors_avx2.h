// Vector types for AVX2 with FMA (see vectors_avx512.h). Include only between
// `#pragma GCC push_options / target("avx2,fma")` and `pop_options`.
#pragma once

#include <immintrin.h>

namespace custom_conv {
namespace vectors {
namespace {

struct Avx2Float {
  using scalar = float;
  using reg = __m256;
  static constexpr int lanes = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static __m256i first(int n) {  // a mask of lanes [0, n)
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static reg load_first(const float* p, int n) { return _mm256_maskload_ps(p, first(n)); }  // lanes [0, n), the rest 0
  static void store_first(float* p, reg v, int n) { _mm256_maskstore_ps(p, first(n), v); }  // lanes [0, n)
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg broadcast(const float* p) { return _mm256_set1_ps(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
};

struct Avx2Double {
  using scalar = double;
  using reg = __m256d;
  static constexpr int lanes = 4;
  static reg zero() { return _mm256_setzero_pd(); }
  static reg load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static __m256i first(int n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static reg load_first(const double* p, int n) { return _mm256_maskload_pd(p, first(n)); }  // lanes [0, n), the rest 0
  static void store_first(double* p, reg v, int n) { _mm256_maskstore_pd(p, first(n), v); }  // lanes [0, n)
  static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static reg broadcast(const double* p) { return _mm256_set1_pd(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
};

}  // namespace
}  // namespace vectors
}  // namespace custom_conv
