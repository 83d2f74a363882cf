// Division by a number known before the launch, without a divide
// instruction. A GPU has none for integers: n / d by a 32-bit d is a
// subroutine of about twenty instructions, and the implicit GEMM's index
// arithmetic (positions, taps, strides) divides several times per value it
// loads. A Divisor, made once on the host, divides by a multiply-high, an
// add and a shift (the round-up method of Granlund and Montgomery, "Division
// by invariant integers using multiplication", 1994; PyTorch's IntDivider
// uses the same):
//
//   shift = ceil(log2 d),  magic = floor(2^32 (2^shift - d) / d) + 1,
//   n / d = (mulhi(n, magic) + n) >> shift   for every 0 <= n < 2^32,
//
// the addition done in 64 bits so that it cannot overflow.
#pragma once

#include "../geometry.h"

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace custom_conv {
namespace gpu {

// The pooling kernels take it or, for tensors too large for 32-bit indices,
// a WideDivisor (../pool_divisors.h), which has the same div and mod, as a
// template parameter, and index in its index_t.
struct Divisor {
  using index_t = int32_t;
  uint32_t divisor = 1, magic = 1, shift = 0;

  Divisor() = default;
  explicit Divisor(int64_t d) : divisor(static_cast<uint32_t>(d)) {
    TORCH_CHECK(d >= 1 && d <= INT32_MAX, "Divisor: ", d, " is not a positive 32-bit number");
    while ((uint64_t{1} << shift) < divisor) {
      ++shift;
    }
    const uint64_t m = (uint64_t{1} << 32) * ((uint64_t{1} << shift) - divisor) / divisor + 1;
    magic = static_cast<uint32_t>(m);  // < 2^32: 2^shift - d < d
  }

  // n / d and n % d for 0 <= n < 2^31.
  C10_HOST_DEVICE int32_t div(int32_t n) const {
    const uint32_t u = static_cast<uint32_t>(n);
#ifdef __CUDA_ARCH__
    const uint32_t high = __umulhi(u, magic);
#else
    const uint32_t high = static_cast<uint32_t>((uint64_t{u} * magic) >> 32);
#endif
    return static_cast<int32_t>((uint64_t{high} + u) >> shift);
  }
  C10_HOST_DEVICE int32_t mod(int32_t n, int32_t quotient) const {
    return n - quotient * static_cast<int32_t>(divisor);
  }
};

// A layer's sizes in the 32-bit numbers that kernels indexing in 32 bits
// compute with (the implicit GEMM's ConvIndex, the depthwise kernels'
// DepthwiseIndex); whoever makes one has checked that they fit.
struct ConvSizes {
  int32_t in_channels = 0, in_h = 0, in_w = 0, out_channels = 0, out_h = 0, out_w = 0;
  int32_t kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1,
          dilation_w = 1;

  ConvSizes() = default;
  explicit ConvSizes(const Conv2dGeometry& g)
      : in_channels(static_cast<int32_t>(g.in_channels)), in_h(static_cast<int32_t>(g.in_h)),
        in_w(static_cast<int32_t>(g.in_w)), out_channels(static_cast<int32_t>(g.out_channels)),
        out_h(static_cast<int32_t>(g.out_h)), out_w(static_cast<int32_t>(g.out_w)),
        kernel_h(static_cast<int32_t>(g.kernel_h)), kernel_w(static_cast<int32_t>(g.kernel_w)),
        stride_h(static_cast<int32_t>(g.stride_h)), stride_w(static_cast<int32_t>(g.stride_w)),
        pad_h(static_cast<int32_t>(g.pad_h)), pad_w(static_cast<int32_t>(g.pad_w)),
        dilation_h(static_cast<int32_t>(g.dilation_h)), dilation_w(static_cast<int32_t>(g.dilation_w)) {}
};

}  // namespace gpu
}  // namespace custom_conv
