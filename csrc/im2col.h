// im2col and col2im on the CPU: the lecture's "serialisation".
//
// im2col copies every receptive field of the input into one column of a
// matrix, so that the whole convolution becomes a single matrix product
// (weight rows times input columns). col2im is its adjoint: it adds each
// column back onto the input positions it was copied from, which is how the
// gradient with respect to the input is assembled.
//
// Column layout, for a chunk of `batch` samples starting at `input`:
//   cols[(c * kH + ki) * kW + kj][b * L + oh * out_w + ow]
//     = input[b][c][oh * stride_h - pad_h + ki * dilation_h]
//                  [ow * stride_w - pad_w + kj * dilation_w]   (0 off-image)
// where L = out_h * out_w. The rows of group g are the contiguous block
// [g * K, (g + 1) * K) with K = C_in / groups * kH * kW, so each group is a
// plain (K, batch * L) matrix for the GEMM, with no copy.
#pragma once

#include "geometry.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace custom_conv {

// Ceiling of a / b for b > 0 and any sign of a.
inline int64_t ceil_div(int64_t a, int64_t b) {
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

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

// Phase planes: how a strided convolution becomes a stride-1 one. A
// zero-padded (H + 2 pad_h) x (W + 2 pad_w) plane is split into s_h * s_w
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

// Copies one (H, W) plane into its phase planes: per row of a phase, one
// (strided) copy clipped to the input, zeros elsewhere.
template <typename src_t, typename dst_t>
void to_phases(const src_t* plane, const Phases& p, dst_t* dst) {
  for (int64_t a = 0; a < p.stride_h; ++a) {
    for (int64_t b = 0; b < p.stride_w; ++b) {
      // Column j of phase b holds input column j * s_w + b - pad_w.
      const ValidRange cols = valid_outputs(b - p.pad_w, p.stride_w, p.in_w, p.w);
      for (int64_t i = 0; i < p.h; ++i, dst += p.w) {
        const int64_t h = i * p.stride_h + a - p.pad_h;
        if (h < 0 || h >= p.in_h) {
          std::fill(dst, dst + p.w, dst_t(0));
          continue;
        }
        const src_t* src = plane + h * p.in_w + b - p.pad_w;
        std::fill(dst, dst + cols.lo, dst_t(0));
        for (int64_t j = cols.lo; j < cols.hi; ++j) dst[j] = static_cast<dst_t>(src[j * p.stride_w]);
        std::fill(dst + cols.hi, dst + p.w, dst_t(0));
      }
    }
  }
}

// Reads an (H, W) plane back out of its phase planes (dropping the padding).
template <typename src_t, typename dst_t>
void from_phases(const src_t* phases, const Phases& p, dst_t* plane) {
  for (int64_t b = 0; b < p.stride_w; ++b) {
    const ValidRange cols = valid_outputs(b - p.pad_w, p.stride_w, p.in_w, p.w);
    for (int64_t h = 0; h < p.in_h; ++h) {
      const src_t* src = phases + p.offset(h + p.pad_h, b);
      dst_t* dst = plane + h * p.in_w + b - p.pad_w;
      for (int64_t j = cols.lo; j < cols.hi; ++j) dst[j * p.stride_w] = static_cast<dst_t>(src[j]);
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

// Work items (one (sample, channel) plane each) per thread chunk: enough
// planes that a task copies ~32K values, so tiny layers are not split into
// tasks that cost more to schedule than to run.
inline int64_t plane_grain(int64_t work_per_plane) {
  constexpr int64_t kValuesPerTask = 32768;
  return std::max<int64_t>(1, kValuesPerTask / std::max<int64_t>(1, work_per_plane));
}

// Unrolls one tap of one (sample, channel) plane: row[oh * out_w + ow] =
// plane[oh * stride_h + dy][ow * stride_w + dx], zero off the image.
template <typename scalar_t>
void im2col_tap(const scalar_t* plane, const Conv2dGeometry& g, const Tap& tap, scalar_t* row) {
  const int64_t H = g.in_h, W = g.in_w, out_w = g.out_w;
  std::fill(row, row + tap.rows.lo * out_w, scalar_t(0));
  std::fill(row + tap.rows.hi * out_w, row + g.output_plane(), scalar_t(0));
  if (g.stride_h == 1 && g.stride_w == 1 && out_w == W) {
    // Output and input rows have the same length, so the tap's valid rows
    // are one contiguous run of the plane shifted by dy * W + dx: one copy
    // instead of one per row (which matters for 8-pixel-wide layers), with
    // the source clipped to the plane. The columns that the shift wrapped
    // around a row edge are padding and are zeroed afterwards.
    const int64_t begin = tap.rows.lo * W, end = tap.rows.hi * W;
    const int64_t shift = tap.dy * W + tap.dx;
    const int64_t from = std::max(begin, -shift), to = std::min(end, H * W - shift);
    if (from < to) {
      std::copy(plane + from + shift, plane + to + shift, row + from);
    }
    for (int64_t oh = tap.rows.lo; oh < tap.rows.hi; ++oh) {
      scalar_t* dst = row + oh * out_w;
      for (int64_t ow = 0; ow < tap.cols.lo; ++ow) dst[ow] = scalar_t(0);
      for (int64_t ow = tap.cols.hi; ow < out_w; ++ow) dst[ow] = scalar_t(0);
    }
    return;
  }
  for (int64_t oh = tap.rows.lo; oh < tap.rows.hi; ++oh) {
    scalar_t* dst = row + oh * out_w;
    const scalar_t* src = plane + (oh * g.stride_h + tap.dy) * W;
    std::fill(dst, dst + tap.cols.lo, scalar_t(0));
    if (g.stride_w == 1) {
      std::copy(src + tap.cols.lo + tap.dx, src + tap.cols.hi + tap.dx, dst + tap.cols.lo);
    } else {
      for (int64_t ow = tap.cols.lo; ow < tap.cols.hi; ++ow) {
        dst[ow] = src[ow * g.stride_w + tap.dx];
      }
    }
    std::fill(dst + tap.cols.hi, dst + out_w, scalar_t(0));
  }
}

template <typename scalar_t>
void im2col(const scalar_t* input, const Conv2dGeometry& g, int64_t batch,
            scalar_t* cols) {
  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w;
  const int64_t L = g.output_plane();
  const int64_t row_len = batch * L;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const std::vector<Tap> all_taps = kernel_taps(g);
  at::parallel_for(0, batch * C, plane_grain(taps * L), [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      const scalar_t* plane = input + bc * H * W;
      for (const Tap& tap : all_taps) {
        im2col_tap(plane, g, tap, cols + (c * taps + tap.index) * row_len + b * L);
      }
    }
  });
}

// Adds the columns back onto a (batch, C, H, W) tensor, overwriting it. Each
// thread owns whole (sample, channel) planes, so the scatter needs no atomics
// and its summation order is fixed: the result is deterministic. Reduced
// precision types accumulate in float and round once at the end.
template <typename scalar_t>
void col2im(const scalar_t* cols, const Conv2dGeometry& g, int64_t batch,
            scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kDirect = std::is_same<acc_t, scalar_t>::value;
  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w;
  const int64_t out_w = g.out_w, L = g.output_plane();
  const int64_t row_len = batch * L;
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, batch * C, plane_grain(taps * L), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(kDirect ? 0 : H * W);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      acc_t* plane = kDirect ? reinterpret_cast<acc_t*>(output + bc * H * W) : scratch.data();
      std::fill(plane, plane + H * W, acc_t(0));
      for_each_tap(g, [&](const Tap& tap) {
        const scalar_t* row = cols + (c * taps + tap.index) * row_len + b * L;
        for (int64_t oh = tap.rows.lo; oh < tap.rows.hi; ++oh) {
          const scalar_t* src = row + oh * out_w;
          acc_t* dst = plane + (oh * g.stride_h + tap.dy) * W;
          for (int64_t ow = tap.cols.lo; ow < tap.cols.hi; ++ow) {
            dst[ow * g.stride_w + tap.dx] += static_cast<acc_t>(src[ow]);
          }
        }
      });
      if constexpr (!kDirect) {
        std::copy(plane, plane + H * W, output + bc * H * W);
      }
    }
  });
}

}  // namespace custom_conv
