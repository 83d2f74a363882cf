// Vector types for AVX-512, as the register-blocked loops use them (zero,
// load, store, add, mul, broadcast, fused multiply-add on `lanes` values).
// Include only between `#pragma GCC push_options / target(...)` with
// avx512f and avx512vl and `pop_options` (direct/avx512.cpp, gemm/avx512.cpp):
// the functions are compiled for that instruction set.
#pragma once

#include <immintrin.h>

namespace custom_conv {
namespace vectors {
namespace {

struct Avx512Float {
  using scalar = float;
  using reg = __m512;
  static constexpr int lanes = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_first(const float* p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static void store_first(float* p, reg v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
};

struct Avx512Float8 {  // 8 floats in the lower half (AVX-512VL: 32 of them)
  using scalar = float;
  using reg = __m256;
  static constexpr int lanes = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg broadcast(const float* p) { return _mm256_set1_ps(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
};

struct Avx512Double {
  using scalar = double;
  using reg = __m512d;
  static constexpr int lanes = 8;
  static reg zero() { return _mm512_setzero_pd(); }
  static reg load(const double* p) { return _mm512_loadu_pd(p); }
  static reg load_first(const double* p, int n) { return _mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p); }
  static void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static void store_first(double* p, reg v, int n) { _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), v); }
  static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static reg broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
};

}  // namespace
}  // namespace vectors
}  // namespace custom_conv
