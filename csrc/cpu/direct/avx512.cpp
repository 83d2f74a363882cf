// The direct convolution kernels (loops.h) compiled for AVX-512: 16 floats
// or 8 doubles per register, 32 registers. Only select.cpp hands them out,
// after checking that the CPU has AVX-512.
#include "kernels.h"  // first: its inline functions must stay generic x86-64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl")

#include "loops.h"

namespace custom_conv {
namespace direct {
namespace {

struct Avx512Float {
  using scalar = float;
  using reg = __m512;
  static constexpr int lanes = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
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
  static reg broadcast(const float* p) { return _mm256_set1_ps(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
};

struct Avx512Double {
  using scalar = double;
  using reg = __m512d;
  static constexpr int lanes = 8;
  static reg zero() { return _mm512_setzero_pd(); }
  static reg load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static reg broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
};

// The blockings, one row each: output channels per block (nb), outputs per
// forward tile, and the kernel instantiated for them. Forward tiles of 16
// outputs x 1 register or 8 x 2 give 16 accumulators, enough to keep both FMA
// units busy, and 8 and 16 divide most layers' output rows, so row-aligned
// tiles compute no padding. The 8-float block runs on the lower halves of
// the registers (AVX-512VL), so layers with few output channels (LeNet's 6)
// do not waste three quarters of each. Weight-gradient tiles hold r input
// channels x 1 or 2 registers.
constexpr ForwardBlocking<float> kFloatForward[] = {
    {8, 16, &loops::forward_tiles<Avx512Float8, 16, 1>},
    {16, 16, &loops::forward_tiles<Avx512Float, 16, 1>},
    {32, 8, &loops::forward_tiles<Avx512Float, 8, 2>},
};
constexpr WeightGradBlocking<float> kFloatWeightGrad[] = {
    {8, 4, &loops::weight_grad_tiles<Avx512Float8, 4, 1>},
    {8, 8, &loops::weight_grad_tiles<Avx512Float8, 8, 1>},
    {8, 16, &loops::weight_grad_tiles<Avx512Float8, 16, 1>},
    {16, 4, &loops::weight_grad_tiles<Avx512Float, 4, 1>},
    {16, 8, &loops::weight_grad_tiles<Avx512Float, 8, 1>},
    {16, 16, &loops::weight_grad_tiles<Avx512Float, 16, 1>},
    {32, 4, &loops::weight_grad_tiles<Avx512Float, 4, 2>},
    {32, 8, &loops::weight_grad_tiles<Avx512Float, 8, 2>},
};
constexpr ForwardBlocking<double> kDoubleForward[] = {
    {8, 16, &loops::forward_tiles<Avx512Double, 16, 1>},
    {16, 8, &loops::forward_tiles<Avx512Double, 8, 2>},
};
constexpr WeightGradBlocking<double> kDoubleWeightGrad[] = {
    {8, 4, &loops::weight_grad_tiles<Avx512Double, 4, 1>},
    {8, 8, &loops::weight_grad_tiles<Avx512Double, 8, 1>},
    {8, 16, &loops::weight_grad_tiles<Avx512Double, 16, 1>},
    {16, 4, &loops::weight_grad_tiles<Avx512Double, 4, 2>},
    {16, 8, &loops::weight_grad_tiles<Avx512Double, 8, 2>},
};

// Built at compile time (constexpr): no code of this file runs, not even at
// load time, until a caller has checked the CPU.
constexpr Kernels<float> kFloat{"avx512", kFloatForward, 3, kFloatWeightGrad, 8,
                                 &loops::fma_peak_loop<Avx512Float>};
constexpr Kernels<double> kDouble{"avx512", kDoubleForward, 2, kDoubleWeightGrad, 5,
                                  &loops::fma_peak_loop<Avx512Double>};

}  // namespace
}  // namespace direct
}  // namespace custom_conv

#pragma GCC pop_options

namespace custom_conv {
namespace direct {
const Kernels<float>* avx512_float_kernels() { return &kFloat; }
const Kernels<double>* avx512_double_kernels() { return &kDouble; }
}  // namespace direct
}  // namespace custom_conv

#else

namespace custom_conv {
namespace direct {
const Kernels<float>* avx512_float_kernels() { return nullptr; }
const Kernels<double>* avx512_double_kernels() { return nullptr; }
}  // namespace direct
}  // namespace custom_conv

#endif
