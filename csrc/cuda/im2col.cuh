// im2col and col2im on the GPU, with the same column layout as the CPU
// version (see ../cpu/im2col.h):
//   cols[(c * kH + ki) * kW + kj][b * L + oh * out_w + ow]
//     = input[b][c][oh * stride_h - pad_h + ki * dilation_h]
//                  [ow * stride_w - pad_w + kj * dilation_w]   (0 off-image)
// so the group blocks of rows are plain matrices for the GEMM (gemm.cuh).
#pragma once

#include "../geometry.h"
#include "common.cuh"

#include <ATen/OpMathType.h>

#include <cstdint>

namespace custom_conv {
namespace gpu {

// One thread per column element: consecutive threads write consecutive
// elements of a row, so the writes (the bigger side: every input value is
// copied kH * kW times) coalesce, and reads of one input row are adjacent
// too when the stride is 1.
template <typename scalar_t>
__global__ void im2col_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input, const Conv2dGeometry g,
                              int64_t batch, gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT cols) {
  const int64_t L = g.out_h * g.out_w;
  const int64_t row_len = batch * L;
  const int64_t total = g.in_channels * g.kernel_h * g.kernel_w * row_len;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, total) {
    const int64_t row = e / row_len, col = e % row_len;
    const int64_t b = col / L, l = col % L;
    const int64_t oh = l / g.out_w, ow = l % g.out_w;
    const int64_t kj = row % g.kernel_w;
    const int64_t ki = (row / g.kernel_w) % g.kernel_h;
    const int64_t c = row / (g.kernel_w * g.kernel_h);
    const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
    const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
    const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
    cols[e] = inside ? input[((b * g.in_channels + c) * g.in_h + ih) * g.in_w + iw]
                     : scalar_t(0);
  }
}

// The adjoint of im2col: input pixel (ih, iw) receives the sum of every
// column entry that was copied from it. This is a gather, one thread per
// input pixel walking the (at most kH * kW) taps that can reach it, rather
// than a scatter from the columns: several columns hit the same pixel
// whenever windows overlap, and a scatter would then need atomic adds, whose
// order (and so the rounding) varies from run to run. Here every sum is
// formed by one thread in a fixed order, in the accumulation type, and
// written once, which also makes zero-filling the output unnecessary.
template <typename scalar_t>
__global__ void col2im_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT cols, const Conv2dGeometry g,
                              int64_t batch, gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t L = g.out_h * g.out_w;
  const int64_t row_len = batch * L;
  const int64_t total = batch * g.in_channels * g.in_h * g.in_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, total) {
    const int64_t iw = e % g.in_w;
    const int64_t ih = (e / g.in_w) % g.in_h;
    const int64_t bc = e / (g.in_w * g.in_h);
    const int64_t b = bc / g.in_channels, c = bc % g.in_channels;
    acc_t sum = acc_t(0);
    // Tap ki reads this row from output row oh when
    // oh * stride_h = ih + pad_h - ki * dilation_h; that offset only shrinks
    // as ki grows, so the first negative one ends the loop.
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t h = ih + g.pad_h - ki * g.dilation_h;
      if (h < 0) {
        break;
      }
      if (h % g.stride_h != 0 || h / g.stride_h >= g.out_h) {
        continue;
      }
      const int64_t oh = h / g.stride_h;
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t w = iw + g.pad_w - kj * g.dilation_w;
        if (w < 0) {
          break;
        }
        if (w % g.stride_w != 0 || w / g.stride_w >= g.out_w) {
          continue;
        }
        const int64_t ow = w / g.stride_w;
        const int64_t row = (c * g.kernel_h + ki) * g.kernel_w + kj;
        sum += static_cast<acc_t>(cols[row * row_len + b * L + oh * g.out_w + ow]);
      }
    }
    output[e] = static_cast<scalar_t>(sum);
  }
}

// Unrolls `batch` samples of a contiguous (N, C, H, W) input into `cols`.
template <typename scalar_t>
void im2col(const scalar_t* input, const Conv2dGeometry& g, int64_t batch, scalar_t* cols) {
  const int64_t total = g.in_channels * g.kernel_h * g.kernel_w * batch * g.out_h * g.out_w;
  if (total == 0) {
    return;
  }
  CUSTOM_CONV_LAUNCH(grid_for(total), kThreads, im2col_kernel<scalar_t>)(input, g, batch, cols);
}

// Folds `cols` back into `batch` samples of a contiguous (N, C, H, W) tensor,
// overwriting it.
template <typename scalar_t>
void col2im(const scalar_t* cols, const Conv2dGeometry& g, int64_t batch, scalar_t* output) {
  const int64_t total = batch * g.in_channels * g.in_h * g.in_w;
  if (total == 0) {
    return;
  }
  CUSTOM_CONV_LAUNCH(grid_for(total), kThreads, col2im_kernel<scalar_t>)(cols, g, batch, output);
}

}  // namespace gpu
}  // namespace custom_conv
