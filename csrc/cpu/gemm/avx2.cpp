// The GEMM's micro-kernels compiled for AVX2 with FMA: 16 registers, so
// tiles of 6 rows by 2 registers (12 accumulators, 2 for B, 1 for A's
// broadcast): 6 x 16 floats or 6 x 8 doubles. Only gemm.cpp hands them out,
// at the avx2 level.
#include "kernels.h"  // first: its inline functions must stay generic x86-64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "../vectors_avx2.h"
#include "micro_kernel.h"

namespace custom_conv {
namespace gemm {
namespace {
constexpr MicroKernels<float> kFloat = micro::table<vectors::Avx2Float, 6, 2>();
constexpr MicroKernels<double> kDouble = micro::table<vectors::Avx2Double, 6, 2>();
}  // namespace
}  // namespace gemm
}  // namespace custom_conv

#pragma GCC pop_options

namespace custom_conv {
namespace gemm {
const MicroKernels<float>* avx2_float_kernels() { return &kFloat; }
const MicroKernels<double>* avx2_double_kernels() { return &kDouble; }
}  // namespace gemm
}  // namespace custom_conv

#else

namespace custom_conv {
namespace gemm {
const MicroKernels<float>* avx2_float_kernels() { return nullptr; }
const MicroKernels<double>* avx2_double_kernels() { return nullptr; }
}  // namespace gemm
}  // namespace custom_conv

#endif
