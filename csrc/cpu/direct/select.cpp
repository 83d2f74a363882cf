// Picks the direct convolution kernels for the CPU's level (../isa.h).
#include "kernels.h"

#include "../isa.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace custom_conv {
namespace direct {

const Kernels<float>* avx512_float_kernels();
const Kernels<double>* avx512_double_kernels();
const Kernels<float>* avx2_float_kernels();
const Kernels<double>* avx2_double_kernels();

const Kernels<float>* float_kernels() {
  switch (cpu_level()) {
    case CpuLevel::kAvx512: return avx512_float_kernels();
    case CpuLevel::kAvx2: return avx2_float_kernels();
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
  switch (cpu_level()) {
    case CpuLevel::kAvx512: return avx512_double_kernels();
    case CpuLevel::kAvx2: return avx2_double_kernels();
    default: return nullptr;
  }
}

}  // namespace direct
}  // namespace custom_conv
