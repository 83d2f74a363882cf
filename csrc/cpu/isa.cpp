// Detects the CPU's instruction-set level (isa.h).
#include "isa.h"

#include <c10/util/Exception.h>

#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include <cstdlib>

namespace custom_conv {
namespace {

// The vector code is compiled per level with `#pragma GCC target`, which
// needs GCC on x86-64; other builds run the baseline code only.
CpuLevel best_level() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  // libgcc's checks include the operating system's support for the wider
  // register state (XCR0), not only the CPUID bits.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return CpuLevel::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuLevel::kAvx2;
#endif
  return CpuLevel::kBaseline;
}

}  // namespace

const char* cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::kAvx512: return "avx512";
    case CpuLevel::kAvx2: return "avx2";
    default: return "baseline";
  }
}

CpuLevel cpu_level() {
  static const CpuLevel level = [] {
    const CpuLevel best = best_level();
    const char* env = std::getenv("CUSTOM_CONV_CPU_KERNELS");
    const std::string want = env ? env : "";
    if (want.empty()) return best;
    TORCH_CHECK(want == "avx512" || want == "avx2" || want == "baseline",
                "CUSTOM_CONV_CPU_KERNELS must be avx512, avx2 or baseline, got '", want, "'");
    const CpuLevel asked = want == "avx512" ? CpuLevel::kAvx512 : want == "avx2" ? CpuLevel::kAvx2
                                                                                 : CpuLevel::kBaseline;
    TORCH_CHECK(static_cast<int>(asked) <= static_cast<int>(best),
                "CUSTOM_CONV_CPU_KERNELS=", want, ", but this CPU does not support it");
    return asked;
  }();
  return level;
}

std::string cpu_kernels() {
  return cpu_level_name(cpu_level());
}

bool cpu_avx512_half_rate() {
  static const bool half = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
    const bool amd = ebx == 0x68747541 && edx == 0x69746e65 && ecx == 0x444d4163;  // "AuthenticAMD"
    if (!amd || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    const unsigned base = (eax >> 8) & 0xf, family = base == 0xf ? base + ((eax >> 20) & 0xff) : base;
    return family == 0x19 && best_level() == CpuLevel::kAvx512;
#else
    return false;
#endif
  }();
  return half;
}

CpuCaches cpu_caches() {
  static const CpuCaches c = [] {
    const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return CpuCaches{l1 > 0 ? l1 : 32 * 1024, l2 > 0 ? l2 : 512 * 1024};
  }();
  return c;
}

}  // namespace custom_conv
