// The interface between the GEMM (gemm.cpp: blocking, packing, threads) and
// its micro-kernels (micro_kernel.h), which are compiled once per
// instruction set (avx512.cpp, avx2.cpp, baseline.cpp) and chosen by the
// CPU's level (../isa.h). Plain data only.
#pragma once

#include <cstdint>
#include <utility>

namespace custom_conv {
namespace gemm {

constexpr int kMaxRows = 16;

// One instruction set's micro-kernels for T: tiles of up to `mr` rows by
// `nr` columns. rows[m] (1 <= m <= mr) computes a tile of m rows from an A
// micro-panel packed m rows at a time and nr columns of B, each step of the
// reduction `ldb` values after the last (nr when packed; see micro_kernel.h).
template <typename T>
struct MicroKernels {
  using Fn = void (*)(int64_t kc, const T* a, const T* b, int64_t ldb, T* c, int64_t ldc, const T* bias, T alpha,
                      T beta);
  int mr, nr;
  Fn rows[kMaxRows + 1];
};

// Each instruction set's tables, or null where the build cannot compile it
// (only GCC on x86-64 compiles AVX2 and AVX-512 code per function).
const MicroKernels<float>* avx512_float_kernels();
const MicroKernels<double>* avx512_double_kernels();
const MicroKernels<float>* avx2_float_kernels();
const MicroKernels<double>* avx2_double_kernels();
const MicroKernels<float>* baseline_float_kernels();
const MicroKernels<double>* baseline_double_kernels();

}  // namespace gemm
}  // namespace custom_conv
