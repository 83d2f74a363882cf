// Phase planes: the layout that turns a strided convolution into a stride-1
// one, used by the direct kernels and the depthwise loops.
#pragma once

#include "taps.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace custom_conv {

// A zero-padded (H + 2 pad_h) x (W + 2 pad_w) plane is split into s_h * s_w
// planes of every s-th row and column, each Hq x Wq, stored one after the
// other: phase (a, b) holds padded[i * s_h + a][j * s_w + b] at row
// (a * s_w + b) * Hq + i, column j. Padded position (y, x), where a tap at
// offset (y, x) = (ki * dil_h, kj * dil_w) reads for output (0, 0), sits at
// offset(y, x); output (oh, ow) reads oh * Wq + ow further on, so consecutive
// outputs read consecutive values for any stride. With stride 1 there is one
// phase: the padded plane.
struct Phases {
  int64_t in_h, in_w, pad_h, pad_w, stride_h, stride_w, h, w;  // h x w: Hq x Wq

  int64_t values() const { return stride_h * stride_w * h * w; }
  int64_t offset(int64_t y, int64_t x) const {
    return ((y % stride_h * stride_w + x % stride_w) * h + y / stride_h) * w + x / stride_w;
  }
};

inline Phases phases_of(int64_t in_h, int64_t in_w, int64_t pad_h, int64_t pad_w, int64_t stride_h,
                        int64_t stride_w) {
  return {in_h, in_w, pad_h, pad_w, stride_h, stride_w,
          ceil_div(in_h + 2 * pad_h, stride_h), ceil_div(in_w + 2 * pad_w, stride_w)};
}

// dst[j] = src[j * stride] for j in [lo, hi), or the reverse: with the
// common strides as constants, so that the copies vectorise (a stride known
// only at run time leaves them element by element, which cost the depthwise
// route more than its arithmetic).
template <bool kGather, typename src_t, typename dst_t>
void strided_copy(const src_t* src, dst_t* dst, int64_t lo, int64_t hi, int64_t stride) {
  const auto copy = [&](auto constant_stride) {
    const int64_t s = constant_stride;
    for (int64_t j = lo; j < hi; ++j) {
      if constexpr (kGather) {
        dst[j] = static_cast<dst_t>(src[j * s]);
      } else {
        dst[j * s] = static_cast<dst_t>(src[j]);
      }
    }
  };
  switch (stride) {
    case 1: copy(std::integral_constant<int64_t, 1>()); break;
    case 2: copy(std::integral_constant<int64_t, 2>()); break;
    default: copy(stride); break;
  }
}

// `count` consecutive (H, W) planes of float or double into their phase
// planes, one plane's after the other (phase_planes.cpp: per level). Like
// to_phases, it writes only the input's values.
void copy_to_phases(const float* planes, const Phases& p, int64_t count, float* dst);
void copy_to_phases(const double* planes, const Phases& p, int64_t count, double* dst);

// Copies one (H, W) plane into its phase planes: per row of a phase that
// reads the input, one (strided) copy clipped to it. Only the input's
// values: the padding is left as it is, so `dst` must hold zeros there. The
// callers zero their buffer once and then refill it plane after plane, as
// every plane of a layer writes the same positions. (Zeroing every plane's
// phases before its copy was a tenth of the strided depthwise forward, and
// filling each row's padding on its own, a call to memset per row for a
// value or two, a fifth of a strided 32-64 layer's direct forward.) Float
// and double planes take copy_to_phases.
template <typename src_t, typename dst_t>
void to_phases(const src_t* plane, const Phases& p, dst_t* dst) {
  if constexpr (std::is_same_v<src_t, dst_t> && (std::is_same_v<src_t, float> || std::is_same_v<src_t, double>)) {
    copy_to_phases(plane, p, 1, dst);
    return;
  }
  for (int64_t a = 0; a < p.stride_h; ++a) {
    // Row i of phase a holds input row i * s_h + a - pad_h.
    const ValidRange rows = valid_outputs(a - p.pad_h, p.stride_h, p.in_h, p.h);
    for (int64_t b = 0; b < p.stride_w; ++b, dst += p.h * p.w) {
      // Column j of phase b holds input column j * s_w + b - pad_w.
      const ValidRange cols = valid_outputs(b - p.pad_w, p.stride_w, p.in_w, p.w);
      for (int64_t i = rows.lo; i < rows.hi; ++i) {
        const src_t* src = plane + (i * p.stride_h + a - p.pad_h) * p.in_w + b - p.pad_w;
        strided_copy<true>(src, dst + i * p.w, cols.lo, cols.hi, p.stride_w);
      }
    }
  }
}

// One (H, W) plane of float or double read back out of its phase planes
// (phase_planes.cpp: per level).
void copy_from_phases(const float* phases, const Phases& p, float* plane);
void copy_from_phases(const double* phases, const Phases& p, double* plane);

// Reads an (H, W) plane back out of its phase planes (dropping the padding).
// Float and double planes take copy_from_phases.
template <typename src_t, typename dst_t>
void from_phases(const src_t* phases, const Phases& p, dst_t* plane) {
  if constexpr (std::is_same_v<src_t, dst_t> && (std::is_same_v<src_t, float> || std::is_same_v<src_t, double>)) {
    copy_from_phases(phases, p, plane);
    return;
  }
  for (int64_t b = 0; b < p.stride_w; ++b) {
    const ValidRange cols = valid_outputs(b - p.pad_w, p.stride_w, p.in_w, p.w);
    for (int64_t h = 0; h < p.in_h; ++h) {
      const src_t* src = phases + p.offset(h + p.pad_h, b);
      dst_t* dst = plane + h * p.in_w + b - p.pad_w;
      strided_copy<false>(src, dst, cols.lo, cols.hi, p.stride_w);
    }
  }
}

}  // namespace custom_conv
