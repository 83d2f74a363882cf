// The transforms of the Winograd route (conv2d_winograd.cpp explains
// F(2x2, 3x3)), in two layouts:
//   planes    the tensors' own (N, C, H, W): loops run along a row of tiles,
//             with each input row split into its even and odd columns, so
//             that every loop reads and writes consecutive values.
//             V (16, C_in, T), M (16, C_out, T). For wide planes.
//   channels  channels-last copies (N, H, W, C): loops run along the
//             channels, whatever the plane's size. V (16, T, C_in),
//             M (16, T, C_out).
// Tiles are numbered over (sample, tile row, tile column); the plane layout
// works on whole rows of tiles [r0, r1), the channel layout on any range of
// tiles [t0, t1). Only the transforms of B (input), A (output) and G
// (kernel) are here: they add and subtract, nothing more.
#pragma once

#include "../geometry.h"

#include <cstdint>

namespace custom_conv {
namespace winograd {

// A convolution as the Winograd route sees it: 3x3, stride 1, no dilation, one
// group; the forward pass, or the input gradient (the output gradient as
// input, C_in and C_out swapped, padding 2 - pad).
struct Problem {
  int64_t batch, in_channels, out_channels, in_h, in_w, pad_h, pad_w, out_h, out_w;
  int64_t tiles_h() const { return ceil_div(out_h, 2); }
  int64_t tiles_w() const { return ceil_div(out_w, 2); }
  int64_t tiles() const { return batch * tiles_h() * tiles_w(); }
};

// Where tile t lies: sample n, and its top-left output (oy, ox).
struct TilePos {
  int64_t n, oy, ox;
};

inline TilePos tile_pos(const Problem& p, int64_t t) {
  const int64_t per_sample = p.tiles_h() * p.tiles_w();
  const int64_t in_sample = t % per_sample;
  return {t / per_sample, 2 * (in_sample / p.tiles_w()), 2 * (in_sample % p.tiles_w())};
}

// The plane layout, on tile rows [r0, r1) (T = (r1 - r0) * tiles_w tiles);
// each xi's (C, T) values start point_stride values after the previous xi's.
// V[xi][c][t] = (B^T d B)[xi] from the (N, C_in, H, W) input.
void transform_input_planes(const Problem& p, const float* input, int64_t r0, int64_t r1, int64_t point_stride,
                            float* V);
// Y = A^T M A plus the bias (or none) for output channels [c0, c1) (M holds
// c1 - c0 channels), into the (N, C_out, out_h, out_w) output.
void transform_output_planes(const Problem& p, const float* M, int64_t c0, int64_t c1, int64_t r0, int64_t r1,
                             int64_t point_stride, const float* bias, float* output);
// dM[xi][c - c0][t] = (A dY A^T)[xi] for channels [c0, c1) of the output gradient.
void transform_grad_output_planes(const Problem& p, const float* grad_output, int64_t c0, int64_t c1,
                                  int64_t r0, int64_t r1, int64_t point_stride, float* dM);

// The channel layout, on tiles [t0, t1), from and to channels-last tensors;
// V (M, dM) points at tile t0's values, and each xi's tiles start
// point_stride values after the previous xi's. `zeros`
// holds at least C zeros (read for the padding), `sink` C values (written
// for outputs past the plane's edge).
void transform_input_channels(const Problem& p, const float* xs, const float* zeros, int64_t t0, int64_t t1,
                              int64_t point_stride, float* V);
void transform_output_channels(const Problem& p, const float* M, int64_t t0, int64_t t1, int64_t point_stride,
                               const float* bias, float* sink, float* ys);
void transform_grad_output_channels(const Problem& p, const float* gs, const float* zeros, int64_t c0,
                                    int64_t c1, int64_t t0, int64_t t1, int64_t point_stride, float* dM);

// U[xi][row][col] = (G w G^T)[xi] for rows [r0, r1) of 3x3 kernels k laid
// out (row, tap, col), rows * cols kernels; `rotate` turns each by 180
// degrees (the input gradient's kernel).
void transform_kernels(const float* k, int64_t r0, int64_t r1, int64_t rows, int64_t cols, bool rotate, float* u);

// The way back, for the weight gradient: dW = G^T dU G for rows [r0, r1) of
// dU's partial sums du (partials, 16, rows, cols), the partials added in
// order, all in double. Element (r, c) is the kernel (r, c) of the (c_out,
// c_in, 3, 3) gradient gw where `rows_out` (rows = c_out), else (c, r).
void transform_kernel_gradient(const float* du, int64_t partials, int64_t rows, int64_t cols, bool rows_out,
                               int64_t r0, int64_t r1, float* gw);

}  // namespace winograd
}  // namespace custom_conv
