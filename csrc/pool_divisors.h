// What the pooling code divides by, written once for the CPU and the GPU: a
// pool's sizes and strides as divisor objects. The window helpers
// (max_pool2d_window.h, avg_pool2d_window.h) divide with them to find which
// windows hold an element and where an adaptive window lies, and the GPU
// kernels to split a flat index into (n, c, h, w). The CPU passes
// WideDivisors; the GPU kernels pass Divisors (cuda/divisor.cuh: a
// multiply-high each, 32-bit indices) where every index of the call fits in
// 32 bits, else WideDivisors. Either way the quotients are the same, so the
// windows, and the sums over them, are the same on both backends.
#pragma once

#include "geometry.h"

#include <c10/macros/Macros.h>

#include <cstdint>

namespace custom_conv {

// Division by the processor's own 64-bit instruction: on a CPU one
// instruction, on a GPU a subroutine of some seventy (the reason for
// cuda/divisor.cuh's Divisor, which has the same div and mod).
struct WideDivisor {
  using index_t = int64_t;
  int64_t divisor = 1;

  WideDivisor() = default;
  explicit WideDivisor(int64_t d) : divisor(d) {}
  C10_HOST_DEVICE int64_t div(int64_t n) const { return n / divisor; }
  C10_HOST_DEVICE int64_t mod(int64_t n, int64_t quotient) const { return n - quotient * divisor; }
};

// A pool's sizes and strides as divisors of type D (sizes of 0, which leave
// nothing to divide, taken as 1). Arithmetic on the quotients is done in
// D::index_t.
template <typename D>
struct PoolDivisors {
  D out_plane, out_w, out_h, in_plane, in_w, in_h, channels, stride_h, stride_w;

  explicit PoolDivisors(const Pool2dGeometry& g)
      : out_plane(at_least_1(g.out_h * g.out_w)), out_w(at_least_1(g.out_w)), out_h(at_least_1(g.out_h)),
        in_plane(at_least_1(g.in_h * g.in_w)), in_w(at_least_1(g.in_w)), in_h(at_least_1(g.in_h)),
        channels(at_least_1(g.channels)), stride_h(g.stride_h), stride_w(g.stride_w) {}
  static int64_t at_least_1(int64_t n) { return n > 0 ? n : 1; }
};

}  // namespace custom_conv
