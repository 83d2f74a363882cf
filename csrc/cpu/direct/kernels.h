// Direct (implicit-GEMM) convolution kernels for float and double on x86
// CPUs with AVX-512 or AVX2: the interface between ../conv2d_direct.cpp,
// which owns the tensors, threads and scratch buffers, and the vector code
// (loops.h), which is compiled once per instruction set (avx512.cpp,
// avx2.cpp) and chosen at run time (select.cpp), so the build still runs on
// any x86-64 CPU.
//
// The im2col route (../im2col.h) writes every input value kH * kW times into a
// column matrix before the GEMM reads it back. These kernels read the receptive
// fields straight from a zero-padded copy of the sample instead, holding a
// block of outputs in vector registers while the reduction runs:
//
// Forward (stride 1). The padded plane of channel ci is Hp x Wp. Number the
// outputs by their top-left input position e = oh * Wp + ow ("extended"
// numbering: Wp - out_w positions per row are not outputs). Then
//     out[co][e] = sum over ci, taps (ki, kj) of
//                  w[co][ci][ki][kj] * xp[ci][e + ki * dil_h * Wp + kj * dil_w]
// so the P outputs e0 .. e0 + P - 1 of a tile read P *consecutive* values of
// each padded plane for every (ci, tap), wherever rows end. A tile keeps P x
// NB accumulators (NB output channels, one or two vector registers), and each
// step of the reduction broadcasts P input values against one vector of NB
// weights: weight sharing, visibly. Outputs with ow >= out_w are computed and
// dropped; that costs (kW - 1) * dil_w / Wp of the work.
//
// The input gradient of a stride-1 convolution is the same kernel run on the
// output gradient, padded by dil * (k - 1) - pad, with the kernel rotated by
// 180 degrees and its channel axes swapped (the README's "The ideas").
//
// Weight gradient (any stride). With the padded sample stored channels-last,
// xn[pos][ci], and the output gradient pixel-major, goT[pixel][co],
//     dw[co][ci][tap] = sum over output pixels of
//                       goT[pixel][co] * xn[pixel's input position + tap][ci]
// A tile keeps R input channels x NB output channels of one tap in
// registers and walks the pixels: per pixel, NB/lanes vector loads of goT and
// R broadcasts of consecutive xn values.
//
// This header holds plain data only: no ATen, no vector types.
#pragma once

#include <cstdint>

namespace custom_conv {
namespace direct {

template <typename T>
struct ForwardArgs {
  const T* xp;            // padded planes of this group's input channels
  const int64_t* koff;    // per reduction step k = ci * taps + tap: offset of its value in xp
  int64_t steps;          // C_in per group * taps
  const T* wpack;         // [co block][steps][NB]: weights, NB output channels contiguous
  const T* bias;          // [cout] or null
  T* out;                 // [cout][out_h * out_w] of this group
  int64_t cout, wp, out_h, out_w;
  // 0: tile t covers extended outputs [t * P, t * P + P). Otherwise tiles
  // are aligned to output rows, this many per row: tile t covers row
  // t / row_tiles from column (t % row_tiles) * P. When P divides out_w
  // (8 and 16 do for most layers) no lane computes a non-output.
  int64_t row_tiles;
};

template <typename T>
struct WeightGradArgs {
  const T* xn;            // [Hp * Wp][cpad]: padded input, channels-last
  const T* got;           // [out_h * out_w][copad]: output gradient, pixel-major
  T* dwt;                 // [taps][cpad][copad]: the gradient is added here
  const int64_t* toff;    // [taps]: ki * dil_h * Wp + kj * dil_w
  int64_t taps, cpad, copad;
  int64_t wp, stride_h, stride_w, out_h, out_w;
  int64_t chunk_rows;     // output rows walked by every tile before the next rows
};

// The weight gradient with the output pixels along the lanes
// (loops::weight_grad_runs), for one sample and group: for each output
// channel co and reduction step k = ci * taps + tap (numbered as the forward
// numbers them, read through the same padded planes and offsets), the lanes'
// partial sums of go[co][pixel] * xp[koff[k] + oh * wp + ow] are added into
// sums[co block][k block][CO][K][lanes] (blocks of the blocking's co and k;
// the channels and steps past the last are computed from the last and never
// read).
template <typename T>
struct WeightGradRunsArgs {
  const T* xp;
  const int64_t* koff;
  int64_t steps;
  const T* go;  // [cout][out_h * out_w]
  int64_t cout, wp, out_h, out_w;
  T* sums;
};

template <typename T>
struct WeightGradRunsBlocking {
  int64_t co, k, lanes;
  void (*run)(const WeightGradRunsArgs<T>& a);
};

// One register blocking of the forward kernel: output-channel blocks of nb
// (one or two vector registers), tiles of `tile` outputs, and the kernel that
// computes tiles [tile_begin, tile_end) of one sample and group, every block.
// It needs xp readable up to `tile` values past its last plane.
// `vectors`: the vector registers of a tile's row of accumulators (NV).
//
// With run_lanes > 0 the kernel is loops::forward_runs instead, the outputs
// along the lanes: a tile is `vectors` runs of run_lanes outputs of one row
// (tile = vectors * run_lanes of them, row_tiles unused) by nb channels.
template <typename T>
struct ForwardBlocking {
  int64_t nb, tile, vectors;
  void (*run)(const ForwardArgs<T>& a, int64_t tile_begin, int64_t tile_end);
  int64_t run_lanes = 0;
};

// One register blocking of the weight-gradient kernel: output-channel blocks
// of nb, tiles of r input channels (cpad is a multiple of r), and the kernel
// that adds one sample's (one group's) weight gradient into a.dwt.
template <typename T>
struct WeightGradBlocking {
  int64_t nb, r;
  void (*run)(const WeightGradArgs<T>& a);
};

// An instruction set's kernels: two tables, each sorted by nb, then r.
template <typename T>
struct Kernels {
  using Scalar = T;
  const char* isa;
  const ForwardBlocking<T>* forward;
  int64_t forward_count;
  const WeightGradBlocking<T>* weight_grad;
  int64_t weight_grad_count;
  // The peak measurement (loops::fma_peak_loop) on this instruction set's
  // widest registers: runs `iterations` rounds, returns the operations done.
  int64_t (*fma_peak_loop)(int64_t iterations, T* sink);
  // The forward blockings with the outputs along the lanes (run_lanes > 0),
  // sorted by nb.
  const ForwardBlocking<T>* runs = nullptr;
  int64_t runs_count = 0;
  // The weight gradient with the pixels along the lanes.
  const WeightGradRunsBlocking<T>* weight_grad_runs = nullptr;
};

// The forward blocking for a group of `cout` output channels: the narrowest
// block that holds them all, or else the widest.
template <typename T>
const ForwardBlocking<T>& forward_blocking(const Kernels<T>& k, int64_t cout) {
  for (int64_t i = 0; i < k.forward_count; ++i) {
    if (k.forward[i].nb >= cout) return k.forward[i];
  }
  return k.forward[k.forward_count - 1];
}

// The weight-gradient blocking for blocks of nb output channels and `cin`
// input channels: the smallest tile that covers them, or else the largest
// (so a 3-channel input does not pay for 16).
template <typename T>
const WeightGradBlocking<T>& weight_grad_blocking(const Kernels<T>& k, int64_t nb, int64_t cin) {
  const WeightGradBlocking<T>* widest = nullptr;
  for (int64_t i = 0; i < k.weight_grad_count; ++i) {
    if (k.weight_grad[i].nb != nb) continue;
    if (k.weight_grad[i].r >= cin) return k.weight_grad[i];
    widest = &k.weight_grad[i];
  }
  return *widest;
}

// The kernels of the CPU's level (../isa.h), or null at the baseline level
// (no AVX2 with FMA, or a build other than GCC on x86-64, whose per-function
// instruction sets rely on `#pragma GCC target`): callers then take another
// route.
const Kernels<float>* float_kernels();
const Kernels<double>* double_kernels();
template <typename T> const Kernels<T>* kernels();
template <> inline const Kernels<float>* kernels<float>() { return float_kernels(); }
template <> inline const Kernels<double>* kernels<double>() { return double_kernels(); }

// The op custom_conv::cpu_fma_peak_gflops: float32 multiply-adds per second
// (in GFLOP/s, 2 per FMA) on every thread torch uses, running the kernels'
// widest registers for about `seconds`; 0 when there are no direct kernels.
double cpu_fma_peak_gflops(double seconds);

}  // namespace direct
}  // namespace custom_conv
