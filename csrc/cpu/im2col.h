// im2col and col2im on the CPU: "serialisation" (the README's "The ideas").
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

#include "parallel.h"
#include "taps.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace custom_conv {

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
