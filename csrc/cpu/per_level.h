// Loops left to the compiler to vectorise, compiled once per instruction-set
// level (isa.h) and run at the process's level, the same policy the GEMM's
// and the direct kernels' hand-written vector code follows (so that
// CUSTOM_CONV_CPU_KERNELS=avx2|baseline narrows them too):
//
//   CUSTOM_CONV_PER_LEVEL(void, transform, (const float* x, int64_t n), (x, n)) {
//     ...body...
//   }
//
// defines `transform` with that body compiled for AVX-512, for AVX2 with FMA
// and for any x86-64 (with GCC on x86-64; elsewhere once), and dispatching on
// cpu_level(). The body is always inlined into each version, and so must be
// the helpers it calls (CUSTOM_CONV_INLINE), or they run at the baseline
// level. Only our own functions get a target: library code stays generic, so
// an out-of-line copy of it can never carry instructions another CPU lacks.
// The body is a template on ::custom_conv::CpuLevel kLevel, the level it is
// being compiled for; most bodies ignore it, a few need it (a register
// constraint that only fits one level's registers).
#pragma once

#include "isa.h"

#define CUSTOM_CONV_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CUSTOM_CONV_PER_LEVEL(ret, name, params, args)                                                  \
  template <::custom_conv::CpuLevel kLevel>                                                             \
  static CUSTOM_CONV_INLINE ret name##_body params;                                                     \
  __attribute__((target("avx2,fma,avx512f,avx512vl"))) static ret name##_avx512 params {               \
    return name##_body<::custom_conv::CpuLevel::kAvx512> args;                                          \
  }                                                                                                     \
  __attribute__((target("avx2,fma"))) static ret name##_avx2 params {                                  \
    return name##_body<::custom_conv::CpuLevel::kAvx2> args;                                            \
  }                                                                                                     \
  static ret name##_baseline params { return name##_body<::custom_conv::CpuLevel::kBaseline> args; }  \
  ret name params {                                                                                     \
    switch (::custom_conv::cpu_level()) {                                                              \
      case ::custom_conv::CpuLevel::kAvx512: return name##_avx512 args;                                \
      case ::custom_conv::CpuLevel::kAvx2: return name##_avx2 args;                                    \
      default: return name##_baseline args;                                                            \
    }                                                                                                   \
  }                                                                                                     \
  template <::custom_conv::CpuLevel kLevel>                                                             \
  static CUSTOM_CONV_INLINE ret name##_body params
#else
#define CUSTOM_CONV_PER_LEVEL(ret, name, params, args)                                                  \
  template <::custom_conv::CpuLevel kLevel>                                                             \
  static ret name##_body params;                                                                        \
  ret name params { return name##_body<::custom_conv::CpuLevel::kBaseline> args; }                    \
  template <::custom_conv::CpuLevel kLevel>                                                             \
  static ret name##_body params
#endif
