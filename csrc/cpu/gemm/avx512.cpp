// The GEMM's micro-kernels compiled for AVX-512: 32 registers, so tiles of
// 14 rows by 2 registers (28 accumulators, 2 for B, 1 for A's broadcast):
// 14 x 32 floats or 14 x 16 doubles. Only gemm.cpp hands them out, at the
// avx512 level.
#include "kernels.h"  // first: its inline functions must stay generic x86-64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl")

#include "../vectors_avx512.h"
#include "micro_kernel.h"

namespace custom_conv {
namespace gemm {
namespace {
constexpr MicroKernels<float> kFloat = micro::table<vectors::Avx512Float, 14, 2>();
constexpr MicroKernels<double> kDouble = micro::table<vectors::Avx512Double, 14, 2>();
}  // namespace
}  // namespace gemm
}  // namespace custom_conv

#pragma GCC pop_options

namespace custom_conv {
namespace gemm {
const MicroKernels<float>* avx512_float_kernels() { return &kFloat; }
const MicroKernels<double>* avx512_double_kernels() { return &kDouble; }
}  // namespace gemm
}  // namespace custom_conv

#else

namespace custom_conv {
namespace gemm {
const MicroKernels<float>* avx512_float_kernels() { return nullptr; }
const MicroKernels<double>* avx512_double_kernels() { return nullptr; }
}  // namespace gemm
}  // namespace custom_conv

#endif
