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

// Whether the CPU runs each 512-bit instruction as two 256-bit halves, as
// AMD's Zen 4 (family 0x19) does: AVX-512's 32 registers and masks, but the
// multiply-adds per cycle of AVX2. Arithmetic then costs twice as much
// against memory traffic as on a CPU with full-width units, and the
// chooser (../conv2d_algorithm.cpp) weighs Winograd's saved multiply-adds
// against its transforms by it. Read from CPUID (vendor and family), so
// every process on a machine answers the same; the kernels do not depend
// on it, only which route runs a layer. Also the op of that name.
bool cpu_avx512_half_rate();

// The cache sizes in bytes that blockings are derived from: a core's L1 data
// cache and its L2, as the operating system reports them, or typical sizes
// where it does not.
struct CpuCaches {
  int64_t l1, l2;
};
CpuCaches cpu_caches();

}  // namespace custom_conv
