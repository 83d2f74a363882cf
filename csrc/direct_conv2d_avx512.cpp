// The direct convolution kernels (direct_conv2d_kernels.h) compiled for
// AVX-512: 16 floats or 8 doubles per register, 32 registers. Only
// direct_conv2d.cpp calls them, after checking that the CPU has AVX-512.
#include "direct_conv2d.h"  // first: its inline functions must stay generic x86-64

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f")

#include "direct_conv2d_kernels.h"

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

// Forward tiles of 24 outputs x 1 vector or 12 x 2 vectors (24 accumulators);
// weight-gradient tiles of 16 channels x 1 vector or 8 x 2 vectors.
using FloatBlocking = loops::Blocking<Avx512Float, 24, 12, 16, 8>;
using DoubleBlocking = loops::Blocking<Avx512Double, 24, 12, 16, 8>;

// Constant-initialised tables of function addresses: no code of this file
// runs until a caller has checked the CPU.
const Kernels<float> kFloat = {"avx512", &FloatBlocking::forward_block, &FloatBlocking::forward_tile,
                               &FloatBlocking::forward, &FloatBlocking::weight_grad_channels,
                               &FloatBlocking::weight_grad};
const Kernels<double> kDouble = {"avx512", &DoubleBlocking::forward_block, &DoubleBlocking::forward_tile,
                                 &DoubleBlocking::forward, &DoubleBlocking::weight_grad_channels,
                                 &DoubleBlocking::weight_grad};

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
