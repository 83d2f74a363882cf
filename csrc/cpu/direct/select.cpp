// Picks the direct convolution kernels for this CPU (see kernels.h).
#include "kernels.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace custom_conv {
namespace direct {

const Kernels<float>* avx512_float_kernels();
const Kernels<double>* avx512_double_kernels();
const Kernels<float>* avx2_float_kernels();
const Kernels<double>* avx2_double_kernels();

namespace {

enum class Isa { kNone, kAvx2, kAvx512 };

Isa cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  // libgcc's checks include the operating system's support for the wider
  // register state (XCR0), not only the CPUID bits.
  __builtin_cpu_init();
  // The AVX-512 kernels also use AVX-512VL (8-float blocks in the upper 16
  // registers), which every AVX-512 CPU but the Xeon Phi has.
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kNone;
}

// The best the CPU has, unless CUSTOM_CONV_CPU_KERNELS asks for less.
Isa chosen_isa() {
  static const Isa isa = [] {
    const Isa best = cpu_isa();
    const char* env = std::getenv("CUSTOM_CONV_CPU_KERNELS");
    const std::string want = env ? env : "";
    if (want.empty()) return best;
    TORCH_CHECK(want == "avx512" || want == "avx2" || want == "im2col",
                "CUSTOM_CONV_CPU_KERNELS must be avx512, avx2 or im2col, got '", want, "'");
    const Isa asked = want == "avx512" ? Isa::kAvx512 : want == "avx2" ? Isa::kAvx2 : Isa::kNone;
    TORCH_CHECK(static_cast<int>(asked) <= static_cast<int>(best),
                "CUSTOM_CONV_CPU_KERNELS=", want, ", but this CPU does not support it");
    return asked;
  }();
  return isa;
}

}  // namespace

std::string cpu_kernels() {
  switch (chosen_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "im2col";
  }
}

const Kernels<float>* float_kernels() {
  switch (chosen_isa()) {
    case Isa::kAvx512: return avx512_float_kernels();
    case Isa::kAvx2: return avx2_float_kernels();
    default: return nullptr;
  }
}

double cpu_fma_peak_gflops(double seconds) {
  const Kernels<float>* k = float_kernels();
  if (k == nullptr) {
    return 0.0;
  }
  using clock = std::chrono::steady_clock;
  const auto elapsed = [](clock::time_point start) {
    return std::chrono::duration<double>(clock::now() - start).count();
  };
  const int64_t threads = at::get_num_threads();
  std::vector<float> sinks(threads * 16);  // a cache line per thread
  // Calibrate on one thread, then run every thread for about seconds / 3,
  // three times, and keep the fastest.
  int64_t iterations = 1 << 16;
  for (;;) {
    const auto start = clock::now();
    k->fma_peak_loop(iterations, sinks.data());
    const double t = elapsed(start);
    if (t > 0.01) {
      iterations = std::max<int64_t>(1, static_cast<int64_t>(iterations * seconds / 3 / t));
      break;
    }
    iterations *= 4;
  }
  double best = 0.0;
  for (int round = 0; round < 3; ++round) {
    std::vector<int64_t> flops(threads, 0);
    const auto start = clock::now();
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        flops[t] = k->fma_peak_loop(iterations, &sinks[t * 16]);
      }
    });
    const double t = elapsed(start);
    int64_t total = 0;
    for (const int64_t f : flops) {
      total += f;
    }
    best = std::max(best, total / t / 1e9);
  }
  return best;
}

const Kernels<double>* double_kernels() {
  switch (chosen_isa()) {
    case Isa::kAvx512: return avx512_double_kernels();
    case Isa::kAvx2: return avx2_double_kernels();
    default: return nullptr;
  }
}

}  // namespace direct
}  // namespace custom_conv
