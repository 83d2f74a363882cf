// The CPU's instruction-set level: one policy for every vectorised route
// (the GEMM's micro-kernels, the direct kernels, the Winograd transforms).
//   avx512    AVX-512F and VL (every AVX-512 CPU but the Xeon Phi)
//   avx2      AVX2 with FMA
//   baseline  any x86-64 CPU (SSE2), or any other CPU / compiler
// The best level this CPU and build support is detected at run time, so the
// same build runs everywhere; the environment variable
// CUSTOM_CONV_CPU_KERNELS=avx512|avx2|baseline narrows it (for tests and
// benchmarks: each lesser level must give the same results). It is read
// once, on the first call.
#pragma once

#include <cstdint>
#include <string>

namespace custom_conv {

enum class CpuLevel { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

CpuLevel cpu_level();
const char* cpu_level_name(CpuLevel level);

// The op custom_conv::cpu_kernels: cpu_level()'s name.
std::string cpu_kernels();

// The cache sizes in bytes that blockings are derived from: a core's L1 data
// cache and its L2, as the operating system reports them, or typical sizes
// where it does not.
struct CpuCaches {
  int64_t l1, l2;
};
CpuCaches cpu_caches();

}  // namespace custom_conv
