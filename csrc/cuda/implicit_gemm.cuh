// The three convolution passes as implicit GEMMs: the products of the im2col
// route (conv2d.cu), run by gemm.cuh's kernels on operands that gather each
// receptive field from the tensors as the tiles load, so that no column
// matrix is written to or read from global memory, the whole batch is one
// product, and each pass is one launch (two where the reduction is split).
// Per group z, with a position q = (b, oh, ow) of the output, a tap
// t = (c, ki, kj) of a receptive field, and K = C_in / groups * kH * kW:
//
//   forward          out (C_out/g, N*L)  = W (C_out/g, K) @ X (K, N*L)
//   backward input   dX  (C_in/g, N*H*W) = W' (C_in/g, C_out/g*kH*kW) @ dY' (.., N*H*W)
//   backward weight  dW  (C_out/g, K)    = dY (C_out/g, N*L) @ X (K, N*L)^T
//
// X (t, q) is input[b][c][oh*stride - pad + ki*dilation][...] (zero in the
// padding): the lecture's replicated patches, never stored. The input
// gradient is the lecture's rule as a gather: input pixel (ih, iw) of
// channel c sums dY[b][co][oh][ow] * W[co][c][ki][kj] over the output
// positions whose window holds it, oh * stride = ih + pad - ki * dilation;
// dY' (co, ki, kj; b, ih, iw) is that output gradient or zero, so the kernel
// is rotated by 180 degrees through the indexing, with no scatter and no
// atomics. With a stride, the input pixels are taken a phase at a time (the
// pixels of one remainder modulo the stride, GradPhase), each with only the
// taps that reach it: no product is spent on the taps that fall between
// two strided windows (3 in 4 at stride 2). The weight gradient sums over all N*L positions in one reduction,
// split into slices in a fixed order where the output tiles are few
// (gemm_splits): bitwise reproducible, as every route here.
//
// On the tensor cores, where the channels a pass gathers along are whole
// 16-byte chunks (cuda_conv_gathers_channels_last), the same products read
// tensors in channels-last memory with the taps ordered (ki, kj, c), channel
// fastest (ChannelsLastTaps and its two operands, below): a tap's channels
// at one pixel are then contiguous, so the tiles load by cp.async as from a
// stored matrix. The weight's taps are reordered to match by a small copy.
//
// Indices of positions and taps are 32-bit, divided by Divisors made on the
// host (divisor.cuh: a multiply-high, an add and a shift, where a GPU's own
// integer division is a subroutine of about twenty instructions, and of far
// more for 64 bits); tensor offsets are 64-bit. cuda_implicit_gemm_supports()
// says when a layer's indices fit, and each pass checks it on entry
// (ConvIndex's constructor).
#pragma once

#include "../conv2d_algorithm.h"
#include "../geometry.h"
#include "common.cuh"
#include "divisor.cuh"
#include "gemm.cuh"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

namespace custom_conv {
namespace gpu {

// Positions in a batch of planes of rows x cols, and the divisors that split
// their indices.
struct Planes {
  int32_t rows = 0, cols = 0;
  Divisor plane, col;  // rows * cols, cols

  Planes() = default;
  Planes(int64_t rows_, int64_t cols_)
      : rows(static_cast<int32_t>(rows_)), cols(static_cast<int32_t>(cols_)), plane(rows_ * cols_), col(cols_) {}
};

// The geometry in the 32-bit numbers the operands divide by.
struct ConvIndex : ConvSizes {
  int32_t in_per_group, out_per_group;
  Planes outputs, inputs, samples;  // output positions, input positions, output positions as (b, 0, p)
  Divisor taps, kernel_col;         // kernel_h * kernel_w, kernel_w
  // The input gradient's taps, for one phase of it at a time (GradPhase): tap
  // (ki, kj) takes input position (b, y, x) of the phase to output row
  // y + grad_row0 - ki * grad_row_step, column likewise. kernel_h, kernel_w,
  // taps, kernel_col and inputs then describe the phase's taps and positions.
  int32_t grad_row0, grad_col0, grad_row_step, grad_col_step;
  Divisor channel, out_channel;     // in_per_group, out_per_group

  explicit ConvIndex(const Conv2dGeometry& g)
      : ConvSizes(g),
        in_per_group(static_cast<int32_t>(g.in_channels_per_group())),
        out_per_group(static_cast<int32_t>(g.out_channels_per_group())), grad_row0(pad_h), grad_col0(pad_w),
        grad_row_step(dilation_h), grad_col_step(dilation_w) {
    TORCH_CHECK(cuda_implicit_gemm_supports(g), "conv2d implicit GEMM: position or tap indices beyond 32 bits (",
                g.batch, " samples of ", g.in_h, " x ", g.in_w, ")");
    outputs = Planes(g.out_h, g.out_w);
    inputs = Planes(g.in_h, g.in_w);
    samples = Planes(1, g.out_h * g.out_w);
    taps = Divisor(g.kernel_h * g.kernel_w);
    kernel_col = Divisor(g.kernel_w);
    // (A layer without channels has no taps to split: any divisor will do.)
    channel = Divisor(std::max<int64_t>(1, g.in_channels_per_group()));
    out_channel = Divisor(std::max<int64_t>(1, g.out_channels_per_group()));
  }
  ConvIndex() = default;
};

// A position (b, y, x) in a batch of planes of rows x cols: from its index
// q = (b * rows + y) * cols + x by two divisions, then from one index to the
// next by an increment (run()'s chunks are consecutive positions).
struct Position {
  int32_t b, y, x;

  Position() = default;
  __device__ __forceinline__ Position(int64_t q64, const Planes& planes) {
    const int32_t q = static_cast<int32_t>(q64);
    b = planes.plane.div(q);
    const int32_t p = planes.plane.mod(q, b);
    y = planes.col.div(p);
    x = planes.col.mod(p, y);
  }
  __device__ __forceinline__ void next(int32_t rows, int32_t cols) {
    if (++x == cols) {
      x = 0;
      if (++y == rows) {
        y = 0;
        ++b;
      }
    }
  }
};

// The cursor of operands whose chunks run along positions: index j and its
// position, worked out once (the divisions), then walked.
struct PositionCursor {
  int64_t j;
  Position q;
};

// One row of a plane, read at columns x * stride + offset: zero outside
// [0, width), and everywhere where the row itself lies outside the plane
// (in the padding). Its address is worked out even there, and never read:
// choosing a harmless one instead cost the 128 x 128 CUDA-core tile spills.
template <typename T>
struct PlaneRow {
  gpu_ptr<const T> row;  // its column 0
  bool inside;
  int32_t offset, stride, width;

  // The same row, read at columns (x + dx) * stride + offset.
  __device__ __forceinline__ PlaneRow shifted(int32_t dx) const {
    return {row, inside, offset + dx * stride, stride, width};
  }
  __device__ __forceinline__ T at(int32_t x) const {
    const int32_t c = x * stride + offset;
    return inside && static_cast<uint32_t>(c) < static_cast<uint32_t>(width) ? row[c] : T(0);
  }
  // at(0), ..., at(kCount - 1) into v. At column stride 1, as nearly every
  // layer reads, their addresses are at(0)'s plus constants: worked out once,
  // not one 64-bit address per element. (The output gradient's rows have
  // stride 1 as a constant; the input's patches learn theirs at run time.)
  template <int kCount>
  __device__ __forceinline__ void run(T (&v)[kCount]) const {
    if (stride == 1) {
      const gpu_ptr<const T> first = row + offset;
#pragma unroll
      for (int e = 0; e < kCount; ++e) {
        v[e] = inside && static_cast<uint32_t>(e + offset) < static_cast<uint32_t>(width) ? first[e] : T(0);
      }
      return;
    }
#pragma unroll
    for (int e = 0; e < kCount; ++e) {
      v[e] = at(e);
    }
  }
};

// Elements j, j + 1, ... of a chunk along positions into v (zero from j_end
// on), from a cursor at j: d.row(line, q) is the row that position q reads,
// at column q.x. A run that stays in one row of positions finds that row
// once. So does one that goes on into the next row, as some run of nearly
// every warp does where the rows are not a whole number of runs long (28,
// 14 or 7 columns), and every run where they are half a run long (4 columns
// for runs of 8, 2 for runs of 4): it finds both rows once, and picks each
// element's by a select, where finding the row is some twenty instructions.
// Only a run that reaches a third row, on planes narrower still, finds the
// row element by element.
template <typename T, int kCount, typename Operand, typename Line>
__device__ __forceinline__ void run_positions(const Operand& d, const Line& line, const PositionCursor& at,
                                              int64_t j_end, const Planes& planes, T (&v)[kCount]) {
  const int32_t x = at.q.x, cols = planes.cols;
  if (x + kCount <= cols && at.j + kCount <= j_end) {
    d.row(line, at.q).shifted(x).run(v);
    return;
  }
  if (x + kCount <= 2 * cols) {  // it ends by column 2 * cols - 1: in the next row at the latest
    // Element e lies in this row while x + e < cols, else at column x + e - cols of the next.
    Position next = at.q;
    next.x = cols - 1;
    next.next(planes.rows, cols);
    const PlaneRow<T> first = d.row(line, at.q).shifted(x), second = d.row(line, next).shifted(x - cols);
    const int32_t left = at.j + kCount <= j_end ? kCount : static_cast<int32_t>(j_end - at.j);
    // At column stride 1 (the operand's, so both rows'), as PlaneRow::run but with an address per row. The
    // column test is written out here as there: through one shared helper, the loops compiled 2-5% longer
    // (results/benchmarks/sass-loops-sm90.txt).
    if (first.stride == 1) {
      const gpu_ptr<const T> a = first.row + first.offset, b = second.row + second.offset;
#pragma unroll
      for (int e = 0; e < kCount; ++e) {
        const bool here = x + e < cols;  // in the first row
        const PlaneRow<T> r = here ? first : second;
        v[e] = e < left && r.inside && static_cast<uint32_t>(e + r.offset) < static_cast<uint32_t>(r.width)
                   ? (here ? a : b)[e] : T(0);
      }
      return;
    }
#pragma unroll
    for (int e = 0; e < kCount; ++e) {
      const PlaneRow<T> r = x + e < cols ? first : second;
      v[e] = e < left ? r.at(e) : T(0);
    }
    return;
  }
  Position q = at.q;
#pragma unroll
  for (int e = 0; e < kCount; ++e) {
    v[e] = at.j + e < j_end ? d.row(line, q).at(q.x) : T(0);
    q.next(planes.rows, cols);
  }
}

// One tap of a receptive field: its channel's plane in a sample, and the
// offsets that place it relative to an output position.
struct Tap {
  int64_t plane;   // (channel) * rows * columns
  int32_t dh, dw;  // for the input: ki * dilation - pad; for the output gradient: grad_row0 - ki * grad_row_step
};

// Tap index t = (channel c within its group, ki, kj) split.
struct TapIndex {
  int32_t c, ki, kj;

  __device__ __forceinline__ TapIndex(int64_t t64, const ConvIndex& s) {
    const int32_t t = static_cast<int32_t>(t64);
    c = s.taps.div(t);
    const int32_t r = s.taps.mod(t, c);
    ki = s.kernel_col.div(r);
    kj = s.kernel_col.mod(r, ki);
  }
};

// What an operand that gathers taps at positions has besides line() and
// row(tap, position): positions are the index along its chunks (the
// ConvIndex field kPlanes), read a run() at a time, never by cp.async.
template <typename T, typename Derived, Planes ConvIndex::*kPlanes>
struct TapsAtPositions {
  __device__ __forceinline__ PositionCursor start(int64_t j) const {
    const Derived& d = static_cast<const Derived&>(*this);
    return {j, Position(j, d.s.*kPlanes)};
  }
  template <int kCount>
  __device__ __forceinline__ void run(const Tap& tap, const PositionCursor& at, int64_t j_end, T (&v)[kCount]) const {
    const Derived& d = static_cast<const Derived&>(*this);
    run_positions(d, tap, at, j_end, d.s.*kPlanes, v);
  }
};

// X (t, q) of the forward and the weight gradient: tap t = (c, ki, kj) of
// group z's receptive field over input channels, at output position
// q = (b, oh, ow). The tap is the index a chunk keeps fixed (k of the
// forward, whose chunks run along positions; n of the weight gradient, whose
// chunks run along its k, the positions), so kKContiguous says which.
template <typename T, bool kKContiguous_>
struct InputPatches
    : TapsAtPositions<T, InputPatches<T, kKContiguous_>, &ConvIndex::outputs> {
  static constexpr bool kKContiguous = kKContiguous_;
  gpu_ptr<const T> input = nullptr;  // (N, C_in, H, W)
  ConvIndex s;

  __device__ __forceinline__ Tap line(int64_t z, int64_t t) const {
    const TapIndex i(t, s);
    return {(z * s.in_per_group + i.c) * static_cast<int64_t>(s.in_h) * s.in_w, i.ki * s.dilation_h - s.pad_h,
            i.kj * s.dilation_w - s.pad_w};
  }
  // The input row the tap reads at output position q = (b, oh, ow), by ow.
  __device__ __forceinline__ PlaneRow<T> row(const Tap& tap, const Position& q) const {
    const int32_t ih = q.y * s.stride_h + tap.dh;
    const bool inside = static_cast<uint32_t>(ih) < static_cast<uint32_t>(s.in_h);
    return {input + (static_cast<int64_t>(q.b) * s.in_channels * s.in_h + ih) * s.in_w + tap.plane, inside, tap.dw,
            s.stride_w, s.in_w};
  }
};

// Taps ordered t = (ki, kj, c), channel fastest, of tensors in
// channels-last memory, where a tap's consecutive channels at one pixel lie
// contiguous: what ChannelsLastPatches and ChannelsLastOutputGradPatches
// share. A line is the pixel a window starts from (TapPixel, from
// Derived::line()), a cursor a tap (TapCursor: its index j and its place
// from that pixel, in rows and columns and in elements), so that an element's
// address is the sum of the two, and its bounds two tests of a row and a
// column; Derived::grid() gives the tensor's pixels and channels and each
// tap's step. Where the tensor is 16-byte aligned and each group's channels
// (the ConvIndex field kChannels divides by) are whole chunks, each chunk
// goes by cp.async (the tensor cores' kernel), one that reads nothing as a
// chunk of zeros; else element by element.
struct TapCursor {
  int64_t j;
  int32_t dh, dw;   // the tap's place from a window's first pixel: (ki, kj) times the steps
  int64_t offset;   // and in elements: (dh * cols + dw) * channels + c
};

// A window's first pixel: its address in the tensor, and its row and
// column. The pixel itself may lie in the padding, and its address outside
// the tensor: only the taps find() says are inside are read.
template <typename T>
struct TapPixel {
  gpu_ptr<const T> at;
  int32_t h, w;
};

// The pixels a tensor's taps read (rows x cols of `channels` elements each),
// and how far apart a tap's rows and columns put consecutive taps
// (negative where the kernel is read rotated, in the input gradient).
struct TapGrid {
  int32_t rows, cols, channels, step_h, step_w;
};

template <typename T, typename Derived, Divisor ConvIndex::*kChannels>
struct ChannelsLastTaps {
  __device__ __forceinline__ TapCursor start(int64_t j) const {
    const Derived& d = static_cast<const Derived&>(*this);
    const int32_t t = static_cast<int32_t>(j);
    const int32_t r = (d.s.*kChannels).div(t), c = (d.s.*kChannels).mod(t, r);
    const int32_t ki = d.s.kernel_col.div(r), kj = d.s.kernel_col.mod(r, ki);
    const TapGrid g = d.grid();
    const int32_t dh = ki * g.step_h, dw = kj * g.step_w;
    return {j, dh, dw, (static_cast<int64_t>(dh) * g.cols + dw) * g.channels + c};
  }
  // The pixel (h, w) of the image that starts at element `image` (a sample
  // and a group's first channel).
  __device__ __forceinline__ TapPixel<T> pixel(int64_t image, int32_t h, int32_t w) const {
    const Derived& d = static_cast<const Derived&>(*this);
    const TapGrid g = d.grid();
    return {d.tensor + image + (static_cast<int64_t>(h) * g.cols + w) * g.channels, h, w};
  }
  // Whether tap t of the window at `at` reads the tensor (else it lies in
  // the padding, or between strided windows), and where.
  __device__ __forceinline__ bool find(const TapPixel<T>& at, const TapCursor& t, gpu_ptr<const T>& p) const {
    const TapGrid g = static_cast<const Derived&>(*this).grid();
    p = at.at + t.offset;
    return static_cast<uint32_t>(at.h + t.dh) < static_cast<uint32_t>(g.rows) &&
           static_cast<uint32_t>(at.w + t.dw) < static_cast<uint32_t>(g.cols);
  }
  // A run never leaves its tap: the kernels' runs are chunks, and each
  // group's channels are whole chunks (cuda_conv_gathers_channels_last).
  template <int kCount>
  __device__ __forceinline__ void run(const TapPixel<T>& at, const TapCursor& t, int64_t j_end,
                                      T (&v)[kCount]) const {
    gpu_ptr<const T> p;
    const bool inside = find(at, t, p);
#pragma unroll
    for (int e = 0; e < kCount; ++e) {
      v[e] = inside && t.j + e < j_end ? p[e] : T(0);
    }
  }
  // A tap that reads nothing: a chunk of zeros, from any valid address.
  template <typename Dst>
  __device__ __forceinline__ void copy(const TapPixel<T>& at, const TapCursor& t, Dst dst) const {
    gpu_ptr<const T> p;
    const bool inside = find(at, t, p);
    cp_async_16(dst, inside ? p : static_cast<const Derived&>(*this).tensor, !inside);
  }
};

// X' (t, q) from a channels-last input: the receptive fields of X (above)
// with the taps ordered t = (ki, kj, c), at output position q. For the
// forward, whose chunks run along k (the taps) at a fixed position, and for
// the weight gradient, whose B = X'^T has its chunks along n (the taps) at a
// fixed k (the position): kKContiguous says which.
template <typename T, bool kKContiguous_>
struct ChannelsLastPatches
    : ChannelsLastTaps<T, ChannelsLastPatches<T, kKContiguous_>, &ConvIndex::channel> {
  static constexpr bool kKContiguous = kKContiguous_;
  gpu_ptr<const T> tensor = nullptr;  // the input, (N, H, W, C_in) in memory
  ConvIndex s;
  bool vector = false;  // the input 16-byte aligned, and each group's channels whole chunks

  __device__ __forceinline__ TapGrid grid() const {
    return {s.in_h, s.in_w, s.in_channels, s.dilation_h, s.dilation_w};
  }
  // Output position q's window: in its sample and group, from (oh * stride - pad, ow * stride - pad).
  __device__ __forceinline__ TapPixel<T> line(int64_t z, int64_t q) const {
    const Position p(q, s.outputs);
    return this->pixel(static_cast<int64_t>(p.b) * s.in_h * s.in_w * s.in_channels + z * s.in_per_group,
                       p.y * s.stride_h - s.pad_h, p.x * s.stride_w - s.pad_w);
  }
};

// dY'' (t, q) of the input gradient from a channels-last output gradient:
// dY' (below) with the taps ordered t = (ki, kj, co), output channel
// fastest, at input position q = (b, y, x) of a phase. Chunks run along k,
// the taps: a tap's consecutive output channels at the one output position
// whose window puts (ki, kj) on the input pixel, or zeros off the output.
template <typename T>
struct ChannelsLastOutputGradPatches
    : ChannelsLastTaps<T, ChannelsLastOutputGradPatches<T>, &ConvIndex::out_channel> {
  static constexpr bool kKContiguous = true;
  gpu_ptr<const T> tensor = nullptr;  // the output gradient, (N, out_h, out_w, C_out) in memory
  ConvIndex s;
  bool vector = false;  // the tensor 16-byte aligned, and each group's output channels whole chunks

  // Tap (ki, kj) reads output row oh = y + grad_row0 - ki * grad_row_step, column likewise.
  __device__ __forceinline__ TapGrid grid() const {
    return {s.out_h, s.out_w, s.out_channels, -s.grad_row_step, -s.grad_col_step};
  }
  // Input position q: in its sample and group, the output pixel its first tap reads.
  __device__ __forceinline__ TapPixel<T> line(int64_t z, int64_t q) const {
    const Position p(q, s.inputs);
    return this->pixel(static_cast<int64_t>(p.b) * s.out_h * s.out_w * s.out_channels + z * s.out_per_group,
                       p.y + s.grad_row0, p.x + s.grad_col0);
  }
};

// dY' (t, q) of the input gradient: tap t = (co, ki, kj) over group z's
// output channels, at input position q = (b, y, x) of a phase (GradPhase):
// the output gradient at the output position whose window puts tap (ki, kj)
// on that pixel, or zero off the output. A phase holds the input pixels of
// one remainder modulo the stride and only the taps that reach them, so no
// tap falls between two strided windows.
template <typename T>
struct OutputGradPatches : TapsAtPositions<T, OutputGradPatches<T>, &ConvIndex::inputs> {
  static constexpr bool kKContiguous = false;  // chunks run along input positions
  gpu_ptr<const T> grad_output = nullptr;      // (N, C_out, out_h, out_w)
  ConvIndex s;

  __device__ __forceinline__ Tap line(int64_t z, int64_t t) const {
    const TapIndex i(t, s);  // i.c: an output channel of the group
    return {(z * s.out_per_group + i.c) * static_cast<int64_t>(s.out_h) * s.out_w,
            s.grad_row0 - i.ki * s.grad_row_step, s.grad_col0 - i.kj * s.grad_col_step};
  }
  // The output-gradient row the tap reads at position q = (b, y, x) of the phase, by x.
  __device__ __forceinline__ PlaneRow<T> row(const Tap& tap, const Position& q) const {
    const int32_t oh = q.y + tap.dh;
    const bool inside = static_cast<uint32_t>(oh) < static_cast<uint32_t>(s.out_h);
    return {grad_output + (static_cast<int64_t>(q.b) * s.out_channels * s.out_h + oh) * s.out_w + tap.plane, inside,
            tap.dw, 1, s.out_w};
  }
};

// dY (co, q) of the weight gradient: channel co of group z of the output
// gradient at output position q = (b, oh, ow). Positions are contiguous
// within a sample, so a chunk that stays in one sample and is 16-byte aligned
// goes by cp.async.
template <typename T>
struct OutputGradRows {
  static constexpr bool kKContiguous = true;  // chunks run along positions (the reduction)
  gpu_ptr<const T> grad_output = nullptr;     // (N, C_out, out_h, out_w)
  ConvIndex s;
  bool vector = false;  // the tensor 16-byte aligned and its planes whole chunks

  __device__ __forceinline__ int64_t line(int64_t z, int64_t co) const {
    return (z * s.out_per_group + co) * static_cast<int64_t>(s.out_h) * s.out_w;
  }
  // Positions as (b, 0, p): one row per sample.
  __device__ __forceinline__ PositionCursor start(int64_t j) const { return {j, Position(j, s.samples)}; }
  template <int kCount>
  __device__ __forceinline__ void run(int64_t plane, const PositionCursor& at, int64_t j_end, T (&v)[kCount]) const {
    run_positions(*this, plane, at, j_end, s.samples, v);
  }
  // Channel `plane` of sample q.b, by position in the plane.
  __device__ __forceinline__ PlaneRow<T> row(int64_t plane, const Position& q) const {
    return {grad_output + static_cast<int64_t>(q.b) * s.out_channels * s.samples.cols + plane, true, 0, 1,
            s.samples.cols};
  }
  template <typename Dst>
  __device__ __forceinline__ void copy(int64_t plane, const PositionCursor& at, Dst dst) const {
    // With planes of whole chunks, a chunk starting at a multiple of its size
    // never crosses into the next sample.
    cp_async_16(dst, row(plane, at.q).row + at.q.x, false);
  }
};

// Results into a (N, C, plane) tensor: row j is channel j of group z, column
// q = (b, p) a position; plus bias[z * channels_per_group + j] where given.
// The tensor is NCHW, or channels-last in memory (element (q, channel) at
// q * C + channel, with no division).
template <typename T>
struct PlaneOutput {
  gpu_ptr<T> y = nullptr;
  gpu_ptr<const T> bias = nullptr;
  int32_t channels = 0, channels_per_group = 0, plane = 0;
  Divisor planes;  // by plane
  bool channels_last = false;

  __device__ __forceinline__ void store(int64_t z, int64_t j, int64_t q64, at::opmath_type<T> sum) const {
    const int64_t channel = z * channels_per_group + j;
    if (bias != nullptr) {
      sum += static_cast<at::opmath_type<T>>(bias[channel]);
    }
    if (channels_last) {
      y[q64 * channels + channel] = static_cast<T>(sum);
      return;
    }
    const int32_t q = static_cast<int32_t>(q64);
    const int32_t b = planes.div(q), p = planes.mod(q, b);
    y[(static_cast<int64_t>(b) * channels + channel) * plane + p] = static_cast<T>(sum);
  }
};

// The forward's product, output (N, C_out, out_h, out_w) = weight @ B + bias,
// for receptive fields B whose taps come in the order of the weight's
// (C_out, K) rows, into an output NCHW or channels-last in memory; B's
// tensor is the caller's to set.
template <typename B, typename T>
GemmProblem<T, MatrixOperand<T, true>, B, PlaneOutput<T>> forward_problem(const Conv2dGeometry& g,
                                                                        gpu_ptr<const T> weight,
                                                                        gpu_ptr<const T> bias, gpu_ptr<T> output,
                                                                        bool output_channels_last) {
  const int64_t K = g.col_rows_per_group();
  GemmProblem<T, MatrixOperand<T, true>, B, PlaneOutput<T>> p;
  p.batch = g.groups;
  p.m = g.out_channels_per_group();
  p.n = g.batch * g.output_plane();
  p.k = K;
  p.a = {weight, K, p.m * K, chunks_aligned(weight, K, p.m * K, g.groups)};
  p.b.s = ConvIndex(g);
  p.out = {output,
           bias,
           p.b.s.out_channels,
           p.b.s.out_per_group,
           static_cast<int32_t>(g.output_plane()),
           Divisor(g.output_plane()),
           output_channels_last};
  return p;
}

// output (N, C_out, out_h, out_w) = conv2d(input, weight) + bias, all
// contiguous but the output, channels-last in memory where asked.
template <typename T>
void implicit_conv2d_forward(const Conv2dGeometry& g, gpu_ptr<const T> input, gpu_ptr<const T> weight,
                             gpu_ptr<const T> bias, gpu_ptr<T> output, bool output_channels_last,
                             bool tensor_cores) {
  auto p = forward_problem<InputPatches<T, false>>(g, weight, bias, output, output_channels_last);
  p.b.input = input;
  run_gemm(p, tensor_cores);
}

// output (N, C_out, out_h, out_w) = conv2d(input, weight) + bias with the
// input channels-last in memory and the weight permuted to
// (C_out, kH, kW, C_in / groups), on the tensor cores (the 16-byte chunks of
// a tap's channels go by cp.async); the output NCHW or channels-last.
template <typename T>
void implicit_conv2d_forward_channels_last(const Conv2dGeometry& g, gpu_ptr<const T> input_nhwc,
                                           gpu_ptr<const T> weight_permuted, gpu_ptr<const T> bias,
                                           gpu_ptr<T> output, bool output_channels_last) {
  auto p = forward_problem<ChannelsLastPatches<T, true>>(g, weight_permuted, bias, output, output_channels_last);
  p.b.tensor = input_nhwc;
  p.b.vector = chunks_aligned(input_nhwc, g.in_channels, g.in_channels_per_group(), g.groups);
  if (p.m > 0 && p.n > 0) {
    run_tensor_core_gemm(p, launch_limits());
  }
}

// One phase of the input gradient along one dimension: the input rows
// r, r + stride, ... (`rows` of them) and the taps k = first, first + step,
// ... (`count`) whose windows reach them: the a-th takes row r + stride * y
// to output row y + row0 - a * row_step. Every other tap puts those rows
// between two windows. (count is 0 where no tap reaches them: their gradient
// is zero.)
struct GradPhase {
  int64_t rows = 0, first = 0, step = 1, count = 0, row0 = 0, row_step = 0;

  GradPhase(int64_t r, int64_t size, int64_t stride, int64_t pad, int64_t dilation, int64_t kernel) {
    rows = r < size ? (size - r + stride - 1) / stride : 0;
    step = stride / std::gcd(stride, dilation);  // the same for every phase of the dimension
    first = -1;
    for (int64_t k = 0; k < kernel && first < 0; ++k) {
      if ((r + pad - k * dilation) % stride == 0) {
        first = k;
      }
    }
    if (first < 0) {
      return;
    }
    count = (kernel - first + step - 1) / step;
    row0 = (r + pad - first * dilation) / stride;  // exact
    row_step = step * dilation / stride;           // exact: step * dilation is a multiple of stride
  }
};

// Results of one phase of the input gradient into grad_input (N, C, H, W),
// NCHW or channels-last in memory: row j is channel j of group z, column
// q = (b, y, x) a position of the phase, input pixel (row + y * stride_h,
// col + x * stride_w).
template <typename T>
struct PhaseOutput {
  gpu_ptr<T> y = nullptr;
  int32_t channels = 0, channels_per_group = 0, in_h = 0, in_w = 0;
  int32_t row = 0, col = 0, stride_h = 1, stride_w = 1;  // the phase's first pixel, and its step
  Planes grid;                                           // the phase's positions
  bool channels_last = false;

  __device__ __forceinline__ void store(int64_t z, int64_t j, int64_t q, at::opmath_type<T> sum) const {
    const Position p(q, grid);
    const int64_t channel = z * channels_per_group + j;
    const int64_t h = row + p.y * stride_h, w = col + p.x * stride_w;
    const int64_t at = channels_last ? ((static_cast<int64_t>(p.b) * in_h + h) * in_w + w) * channels + channel
                                     : ((static_cast<int64_t>(p.b) * channels + channel) * in_h + h) * in_w + w;
    y[at] = static_cast<T>(sum);
  }
};

// Phases of the input gradient one launch takes at most (a ProblemSet):
// every phase of a stride of 2 in both dimensions, where each phase alone
// is a quarter of the positions, and some of them (a 1 x 1 kernel's three
// in four) no products at all.
constexpr int kPhasesPerLaunch = 4;

// One phase of a launch: its rows and columns (GradPhase) and remainders.
struct GradPhasePair {
  GradPhase h, w;
  int64_t r_h, r_w;
  int64_t taps() const { return h.count * w.count; }
};

// Where a launch's phases find their taps of the weight: each phase's
// block (groups, C_in / g, K'), K' = C_out / g * taps ordered (co, a, b),
// or (a, b, co) with the output channel fastest, tap (a, b) being kernel
// tap (first_h + a * step_h, first_w + b * step_w); the blocks back to back
// in phase order. Indices are 32-bit (a weight of 2^31 values would not
// fit a GPU), split by Divisors: the copy runs before every input gradient
// of the implicit GEMM, and the GPU's own division would cost it several
// times over.
struct PhaseTaps {
  int32_t offset[kPhasesPerLaunch];  // where each block starts
  Divisor columns[kPhasesPerLaunch];  // K'
  Divisor fastest[kPhasesPerLaunch], middle[kPhasesPerLaunch];  // count_w, count_h; or C_out / g, count_w
  int32_t first_h[kPhasesPerLaunch], first_w[kPhasesPerLaunch], step_h, step_w;
  int32_t phases, total, out_per_group, kernel_h, kernel_w;
  Divisor in_per_group;
};

// Copies each phase's taps of the weight (C_out, C_in / g, kH, kW) into its
// block (PhaseTaps): one launch for up to kPhasesPerLaunch phases.
template <typename T, bool kOutChannelFastest>
__global__ void phase_taps_kernel(gpu_ptr<const T> weight, gpu_ptr<T> taps, const PhaseTaps t) {
  CUSTOM_CONV_GRID_STRIDE_LOOP(i64, t.total) {
    const int32_t i = static_cast<int32_t>(i64);
    int p = 0;
    while (p + 1 < t.phases && i >= t.offset[p + 1]) {
      ++p;
    }
    const int32_t r = i - t.offset[p];
    const int32_t row = t.columns[p].div(r), k = t.columns[p].mod(r, row);  // row: z * C_in / g + c
    const int32_t rest = t.fastest[p].div(k), fastest = t.fastest[p].mod(k, rest);
    const int32_t slowest = t.middle[p].div(rest), middle = t.middle[p].mod(rest, slowest);
    // (co, a, b), or (a, b, co)
    const int32_t co = kOutChannelFastest ? fastest : slowest;
    const int32_t a = kOutChannelFastest ? slowest : middle, b = kOutChannelFastest ? middle : fastest;
    const int32_t z = t.in_per_group.div(row), c = t.in_per_group.mod(row, z);
    const int32_t ki = t.first_h[p] + a * t.step_h, kj = t.first_w[p] + b * t.step_w;
    const int64_t out_channel = static_cast<int64_t>(z) * t.out_per_group + co;
    const int64_t in_per_group = t.in_per_group.divisor;
    taps[i64] = weight[((out_channel * in_per_group + c) * t.kernel_h + ki) * t.kernel_w + kj];
  }
}

// The phases of grad_input (N, C_in, H, W), all of them, in launches of at
// most kPhasesPerLaunch. At stride 1 the one phase is the whole gradient
// with every tap; a phase that no tap reaches has count 0 (zeros).
inline std::vector<std::vector<GradPhasePair>> grad_phase_launches(const Conv2dGeometry& g) {
  std::vector<std::vector<GradPhasePair>> launches;
  for (int64_t r_h = 0; r_h < std::min(g.stride_h, g.in_h); ++r_h) {
    const GradPhase h(r_h, g.in_h, g.stride_h, g.pad_h, g.dilation_h, g.kernel_h);
    for (int64_t r_w = 0; r_w < std::min(g.stride_w, g.in_w); ++r_w) {
      if (launches.empty() || launches.back().size() == kPhasesPerLaunch) {
        launches.emplace_back();
      }
      launches.back().push_back({h, GradPhase(r_w, g.in_w, g.stride_w, g.pad_w, g.dilation_w, g.kernel_w), r_h, r_w});
    }
  }
  return launches;
}

// The taps of a launch's phases, gathered from the weight in one launch
// (phase_taps_kernel), and where each phase's block starts.
template <typename T>
std::pair<at::Tensor, PhaseTaps> gather_phase_taps(const Conv2dGeometry& g, const at::Tensor& weight,
                                                   const std::vector<GradPhasePair>& phases,
                                                   bool out_channel_fastest) {
  TORCH_CHECK(weight.numel() <= INT32_MAX, "conv2d implicit GEMM: a weight of ", weight.numel(), " values");
  // (A divisor of a phase no tap reaches, or of a layer without channels, is never used: any will do.)
  const auto divisor = [](int64_t d) { return Divisor(std::max<int64_t>(1, d)); };
  const int64_t out = g.out_channels_per_group();
  PhaseTaps t{};
  t.phases = static_cast<int32_t>(phases.size());
  t.out_per_group = static_cast<int32_t>(out);
  t.in_per_group = divisor(g.in_channels_per_group());
  t.kernel_h = static_cast<int32_t>(g.kernel_h);
  t.kernel_w = static_cast<int32_t>(g.kernel_w);
  t.step_h = static_cast<int32_t>(phases[0].h.step);
  t.step_w = static_cast<int32_t>(phases[0].w.step);
  int64_t total = 0;
  for (size_t p = 0; p < phases.size(); ++p) {
    const GradPhase &h = phases[p].h, &w = phases[p].w;
    t.offset[p] = static_cast<int32_t>(total);
    t.columns[p] = divisor(out * phases[p].taps());
    t.fastest[p] = divisor(out_channel_fastest ? out : w.count);
    t.middle[p] = divisor(out_channel_fastest ? w.count : h.count);
    t.first_h[p] = static_cast<int32_t>(std::max<int64_t>(0, h.first));
    t.first_w[p] = static_cast<int32_t>(std::max<int64_t>(0, w.first));
    total += g.groups * g.in_channels_per_group() * out * phases[p].taps();  // at most the weight's size
  }
  t.total = static_cast<int32_t>(total);
  at::Tensor taps = at::empty({total}, weight.options());
  if (t.total > 0 && out_channel_fastest) {
    CUSTOM_CONV_LAUNCH(grid_for(t.total), kThreads, phase_taps_kernel<T, true>)(weight.const_data_ptr<T>(),
                                                                                taps.mutable_data_ptr<T>(), t);
  } else if (t.total > 0) {
    CUSTOM_CONV_LAUNCH(grid_for(t.total), kThreads, phase_taps_kernel<T, false>)(weight.const_data_ptr<T>(),
                                                                                 taps.mutable_data_ptr<T>(), t);
  }
  return {taps, t};
}

// The input gradient's product for one phase, grad_input (NCHW or
// channels-last) at pixels (r_h + stride_h * y, r_w + stride_w * x) =
// W' @ B: a weight W' (C_in / g, K') of the phase's taps (its block of
// PhaseTaps, each group's two channel dimensions swapped, so that the GEMM
// loads it by cp.async), and output-gradient taps B in the order of its K'
// columns; B's tensor is the caller's to set. A phase no tap reaches has
// K' = 0: its products are empty sums, zeros, and its tap divisors unused.
template <typename B, typename T>
GemmProblem<T, MatrixOperand<T, true>, B, PhaseOutput<T>> backward_input_problem(const Conv2dGeometry& g,
                                                                               const GradPhasePair& phase,
                                                                               gpu_ptr<const T> weight,
                                                                               gpu_ptr<T> grad_input,
                                                                               bool channels_last) {
  const GradPhase &h = phase.h, &w = phase.w;
  const int64_t C = g.in_channels_per_group();
  GemmProblem<T, MatrixOperand<T, true>, B, PhaseOutput<T>> p;
  p.batch = g.groups;
  p.m = C;
  p.n = g.batch * h.rows * w.rows;
  p.k = g.out_channels_per_group() * phase.taps();
  p.a = {weight, p.k, C * p.k, chunks_aligned(weight, p.k, C * p.k, g.groups)};
  ConvIndex& s = p.b.s;
  s = ConvIndex(g);
  s.kernel_h = static_cast<int32_t>(h.count);
  s.kernel_w = static_cast<int32_t>(w.count);
  s.taps = Divisor(std::max<int64_t>(1, phase.taps()));
  s.kernel_col = Divisor(std::max<int64_t>(1, w.count));
  s.inputs = Planes(h.rows, w.rows);
  s.grad_row0 = static_cast<int32_t>(h.row0);
  s.grad_col0 = static_cast<int32_t>(w.row0);
  s.grad_row_step = static_cast<int32_t>(h.row_step);
  s.grad_col_step = static_cast<int32_t>(w.row_step);
  p.out = {grad_input, s.in_channels, s.in_per_group, s.in_h, s.in_w, static_cast<int32_t>(phase.r_h),
           static_cast<int32_t>(phase.r_w), s.stride_h, s.stride_w, s.inputs, channels_last};
  return p;
}

// grad_input (N, C_in, H, W), NCHW or channels-last, phase by phase, in
// groups of up to kPhasesPerLaunch phases: the weight's taps of a group's
// phases gathered in one copy (ordered (co, a, b), or (a, b, co) where
// `out_channel_fastest`), then run(launch) for each phase that fills the
// GPU on its own (its backward_input_problem<B>, whose B operand set_b(b)
// completes), and once for a ProblemSet of the others where there are
// several. A set's kernels find their problem's sizes and operands at a
// run-time index (up to a sixth more instructions in the GEMM's main
// loop, by sass_loops.py), so a phase with enough blocks of its own keeps
// the kernel that reads them as constants.
template <typename B, typename T, typename SetB, typename Run>
void backward_input_by_phases(const Conv2dGeometry& g, const at::Tensor& weight, at::Tensor& grad_input,
                              bool out_channel_fastest, const SetB& set_b, const Run& run) {
  using Problem = GemmProblem<T, MatrixOperand<T, true>, B, PhaseOutput<T>>;
  const bool channels_last = grad_input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const int64_t multiprocessors = launch_limits().multiprocessors;
  for (const std::vector<GradPhasePair>& phases : grad_phase_launches(g)) {
    const std::pair<at::Tensor, PhaseTaps> taps = gather_phase_taps<T>(g, weight, phases, out_channel_fastest);
    ProblemSet<Problem, kPhasesPerLaunch> set;
    for (size_t p = 0; p < phases.size(); ++p) {
      const gpu_ptr<const T> block = taps.first.const_data_ptr<T>() + taps.second.offset[p];
      Problem problem = backward_input_problem<B, T>(g, phases[p], block,
                                                     grad_input.mutable_data_ptr<T>(), channels_last);
      set_b(problem.b);
      if (phases[p].taps() > 0 && fills_gpu(problem.batch, problem.m, problem.n, multiprocessors)) {
        run(problem);
      } else {
        set.add(problem);
      }
    }
    if (set.count == 1) {  // (a set of one, at stride 1 say, would only cost the run-time index)
      run(set.problems[0]);
    } else if (set.count > 1) {
      run(set);
    }
  }
}

// grad_input (N, C_in, H, W), NCHW or channels-last in memory, from
// grad_output and weight, both contiguous. W' (c; co, ki, kj) over each
// phase's taps.
template <typename T>
void implicit_conv2d_backward_input(const Conv2dGeometry& g, const at::Tensor& weight,
                                    gpu_ptr<const T> grad_output, at::Tensor& grad_input, bool tensor_cores) {
  backward_input_by_phases<OutputGradPatches<T>, T>(
      g, weight, grad_input, false, [&](OutputGradPatches<T>& b) { b.grad_output = grad_output; },
      [&](const auto& launch) { run_gemm(launch, tensor_cores); });
}

// grad_input (N, C_in, H, W), NCHW or channels-last in memory, from a
// channels-last grad_output and a contiguous weight, on the tensor cores.
// W' (c; ki, kj, co) over each phase's taps: in the order of the output
// gradient's channels-last memory, whose 16-byte chunks of output channels
// go by cp.async.
template <typename T>
void implicit_conv2d_backward_input_channels_last(const Conv2dGeometry& g, const at::Tensor& weight,
                                                  gpu_ptr<const T> grad_output_nhwc, at::Tensor& grad_input) {
  const bool vector = chunks_aligned(grad_output_nhwc, g.out_channels, g.out_channels_per_group(), g.groups);
  backward_input_by_phases<ChannelsLastOutputGradPatches<T>, T>(
      g, weight, grad_input, true,
      [&](ChannelsLastOutputGradPatches<T>& b) {
        b.tensor = grad_output_nhwc;
        b.vector = vector;
      },
      [&](const auto& launch) {
        if (launch.batch > 0 && launch.m > 0 && launch.n > 0) {
          run_tensor_core_gemm(launch, launch_limits());
        }
      });
}

// grad_weight (C_out, C_in / groups, kH, kW) from grad_output and input, all
// contiguous, summed over the whole batch in one reduction (in float for half
// and bfloat16, rounded once).
template <typename T>
void implicit_conv2d_backward_weight(const Conv2dGeometry& g, gpu_ptr<const T> grad_output, gpu_ptr<const T> input,
                                     gpu_ptr<T> grad_weight, bool tensor_cores) {
  const ConvIndex s(g);
  const int64_t K = g.col_rows_per_group();
  const int64_t L = g.output_plane();
  GemmParams<T> c;  // where the results go: (C_out / g, K) per group
  c.c = grad_weight;
  c.ldc = K;
  c.batch_stride_c = g.out_channels_per_group() * K;
  GemmProblem<T, OutputGradRows<T>, InputPatches<T, true>, MatrixOutput<T, T>> p;
  p.batch = g.groups;
  p.m = g.out_channels_per_group();
  p.n = K;
  p.k = g.batch * L;
  p.a = {grad_output, s, chunks_aligned(grad_output, L, L, 2)};
  p.b.input = input;
  p.b.s = s;
  p.out = {c};
  run_gemm(p, tensor_cores);
}

// grad_weight permuted to (C_out, kH, kW, C_in / groups), contiguous, from
// grad_output and input both channels-last in memory, on the tensor cores:
// dW' (co, t) = dY (co, q) @ X' (t, q)^T with the taps t = (ki, kj, c). Both
// operands have their 16-byte chunks along m or n (the output gradient's
// channels; a tap's input channels), copied by cp.async and given to the
// tensor cores by ldmatrix.trans; the sum over N * L in a fixed order, as
// the NCHW weight gradient's.
template <typename T>
void implicit_conv2d_backward_weight_channels_last(const Conv2dGeometry& g, gpu_ptr<const T> grad_output_nhwc,
                                                   gpu_ptr<const T> input_nhwc, gpu_ptr<T> grad_weight_permuted) {
  const int64_t M = g.out_channels_per_group(), K = g.col_rows_per_group();
  GemmParams<T> c;  // (C_out / g, K) per group, the taps ordered (ki, kj, c)
  c.c = grad_weight_permuted;
  c.ldc = K;
  c.batch_stride_c = M * K;
  GemmProblem<T, MatrixOperand<T, false>, ChannelsLastPatches<T, false>, MatrixOutput<T, T>> p;
  p.batch = g.groups;
  p.m = M;
  p.n = K;
  p.k = g.batch * g.output_plane();
  // Element (co, q) of group z at q * C_out + z * M + co.
  p.a = {grad_output_nhwc, g.out_channels, M, chunks_aligned(grad_output_nhwc, g.out_channels, M, g.groups)};
  p.b.tensor = input_nhwc;
  p.b.s = ConvIndex(g);
  p.b.vector = chunks_aligned(input_nhwc, g.in_channels, g.in_channels_per_group(), g.groups);
  p.out = {c};
  if (p.m > 0 && p.n > 0) {
    run_tensor_core_gemm(p, launch_limits());
  }
}

}  // namespace gpu
}  // namespace custom_conv
