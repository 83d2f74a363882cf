// The taps of a kernel, as every CPU loop over them needs them: for each tap,
// the output rows and columns whose input lies inside the image.
#pragma once

#include "../geometry.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace custom_conv {

// For kernel tap offset `offset` (= k * dilation - pad) the output positions
// o in [lo, hi) read input index o * stride + offset inside [0, size); the
// others read zero padding. Computing the range once keeps the inner loops
// free of bounds checks, so the compiler can vectorise them.
struct ValidRange {
  int64_t lo, hi;
};

inline ValidRange valid_outputs(int64_t offset, int64_t stride, int64_t size,
                                int64_t out_size) {
  const int64_t lo = std::min(std::max<int64_t>(0, ceil_div(-offset, stride)), out_size);
  const int64_t hi = std::min(std::max(lo, ceil_div(size - offset, stride)), out_size);
  return {lo, hi};
}

// One kernel tap (ki, kj) as every loop over taps needs it: its index
// ki * kW + kj, the offsets (dy, dx) it adds to an output position's scaled
// coordinates to find its input, and the output rows and columns whose input
// then lies inside the image (the rest read zero padding).
struct Tap {
  int64_t index, dy, dx;
  ValidRange rows, cols;
};

template <typename F>
void for_each_tap(const Conv2dGeometry& g, F body) {
  for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
    const int64_t dy = ki * g.dilation_h - g.pad_h;
    const ValidRange rows = valid_outputs(dy, g.stride_h, g.in_h, g.out_h);
    for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
      const int64_t dx = kj * g.dilation_w - g.pad_w;
      body(Tap{ki * g.kernel_w + kj, dy, dx, rows, valid_outputs(dx, g.stride_w, g.in_w, g.out_w)});
    }
  }
}

// The taps in order, computed once per call rather than once per plane.
inline std::vector<Tap> kernel_taps(const Conv2dGeometry& g) {
  std::vector<Tap> taps;
  taps.reserve(g.kernel_h * g.kernel_w);
  for_each_tap(g, [&](const Tap& tap) { taps.push_back(tap); });
  return taps;
}

}  // namespace custom_conv
