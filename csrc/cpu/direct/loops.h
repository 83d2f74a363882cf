// The register-blocked loops behind kernels.h, written once over a
// small vector interface V (zero, load, store, add, broadcast, fused
// multiply-add on V::lanes values of V::scalar) and compiled per instruction
// set: avx512.cpp and avx2.cpp include this file
// between `#pragma GCC push_options / target(...)` and `pop_options`, with V
// defined on that instruction set's intrinsics.
//
// Only plain C++ appears here, no library headers: every function in this
// file is compiled for the including file's instruction set, and an inline
// library function compiled that way could be picked by the linker for
// callers that run on CPUs without it.
#pragma once

#include "kernels.h"
#include "../transpose_8x8.h"

namespace custom_conv {
namespace direct {
namespace loops {

// One forward tile: P consecutive extended outputs (starting at x = xp + e0)
// times NV vectors of output channels, over reduction steps [k0, k1). Each
// step k (input channel, tap) loads NV weight vectors and broadcasts each of
// the P input values against them. The P x NV accumulators stay in
// registers for the steps and are written to `tile` at the end; with
// `resume`, added to what `tile` holds (the sum of the steps before k0):
// summed chunk by chunk, a 1152-step reduction (128 input channels) rounds
// like one of a chunk's length plus the chunks' count, not like 1152 in a row
// (whose float32 error was 4.3x torch's on VGG's 128-128 @16).
template <class V, int P, int NV>
void forward_tile(const ForwardArgs<typename V::scalar>& a, const typename V::scalar* x,
                  const typename V::scalar* w, typename V::scalar* tile, int64_t k0, int64_t k1, bool resume) {
  using T = typename V::scalar;
  constexpr int NB = NV * V::lanes;
  typename V::reg acc[P][NV];
#pragma GCC unroll 32
  for (int j = 0; j < P; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[j][v] = V::zero();
  }
  for (int64_t k = k0; k < k1; ++k) {
    const T* xk = x + a.koff[k];
    const T* wk = w + k * NB;
    typename V::reg wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = V::load(wk + v * V::lanes);
#pragma GCC unroll 32
    for (int j = 0; j < P; ++j) {
      const typename V::reg b = V::broadcast(xk + j);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[j][v] = V::fma(b, wv[v], acc[j][v]);
    }
  }
#pragma GCC unroll 32
  for (int j = 0; j < P; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      T* at = tile + j * NB + v * V::lanes;
      V::store(at, resume ? V::add(V::load(at), acc[j][v]) : acc[j][v]);
    }
  }
}

// A block's weights for this many bytes of steps at most stay in L1 while a
// group of kGroupTiles tiles runs over them (see forward_tiles).
constexpr int64_t kWeightChunkBytes = 24 * 1024;
constexpr int64_t kGroupTiles = 16;

// Eight outputs of eight channels from a tile (src[j * src_stride + c]) to
// their channels' rows (dst[c * ld + j]), plus each channel's bias: the
// 8 x 8 transpose in registers (../transpose_8x8.h), then one vector store
// per channel. Value by value, the copy out of a 32-channel tile of 8
// outputs took 256 loads and stores, a tenth of the tile's time. A template
// on V only so that each level's copy stays its own.
template <class V>
inline __attribute__((always_inline)) void store_transposed_8x8(const float* src, int64_t src_stride,
                                                               const float* bias, float* dst, int64_t ld) {
  vectorised::Floats8 r[8], t[8];
  for (int j = 0; j < 8; ++j) __builtin_memcpy(&r[j], src + j * src_stride, sizeof(r[j]));
  vectorised::transpose_8x8(r, t);
  for (int c = 0; c < 8; ++c) {
    const vectorised::Floats8 v = t[c] + (bias != nullptr ? bias[c] : 0.0f);
    __builtin_memcpy(dst + c * ld, &v, sizeof(v));
  }
}

// Tiles [tile_begin, tile_end) of one sample and group, all channel blocks.
// A tile's outputs are scattered from the (output, channel) tile buffer into
// the (channel, oh, ow) output, skipping the extended positions past a row.
// Where a block's weights (steps x NB values) overflow L1, the steps run in
// chunks of kWeightChunkBytes, each over a group of kGroupTiles tiles whose
// partial sums wait in `tiles` between chunks: whole, a 64-channel layer's
// 72 KiB of weights streamed from L2 into every tile (ResNet-18's 64-128 /2
// @56 forward at 1.25x torch's time). Each output sums its chunks in order.
template <class V, int P, int NV>
void forward_tiles(const ForwardArgs<typename V::scalar>& a, int64_t tile_begin, int64_t tile_end) {
  using T = typename V::scalar;
  constexpr int NB = NV * V::lanes;
  alignas(64) T tiles[kGroupTiles][P * NB];
  int64_t pixel[kGroupTiles][P];  // output index oh * out_w + ow of each extended position, or -1
  int64_t start[kGroupTiles];     // the tile's first extended output
  const int64_t L = a.out_h * a.out_w;
  const int64_t extended = (a.out_h - 1) * a.wp + a.out_w;
  const int64_t blocks = (a.cout + NB - 1) / NB;
  const int64_t chunk_steps = kWeightChunkBytes / static_cast<int64_t>(NB * sizeof(T));
  for (int64_t g0 = tile_begin; g0 < tile_end; g0 += kGroupTiles) {
    const int64_t group = tile_end - g0 < kGroupTiles ? tile_end - g0 : kGroupTiles;
    for (int64_t i = 0; i < group; ++i) {
      const int64_t t = g0 + i;
      if (a.row_tiles == 0) {
        start[i] = t * P;
        for (int j = 0; j < P; ++j) {
          const int64_t e = start[i] + j, oh = e / a.wp, ow = e - oh * a.wp;
          pixel[i][j] = (e < extended && ow < a.out_w) ? oh * a.out_w + ow : -1;
        }
      } else {
        const int64_t oh = t / a.row_tiles, ow0 = (t - oh * a.row_tiles) * P;
        start[i] = oh * a.wp + ow0;
        for (int j = 0; j < P; ++j) {
          pixel[i][j] = ow0 + j < a.out_w ? oh * a.out_w + ow0 + j : -1;
        }
      }
    }
    for (int64_t cb = 0; cb < blocks; ++cb) {
      const T* w = a.wpack + cb * a.steps * NB;
      for (int64_t k0 = 0; k0 < a.steps; k0 += chunk_steps) {
        const int64_t k1 = a.steps - k0 < chunk_steps ? a.steps : k0 + chunk_steps;
        for (int64_t i = 0; i < group; ++i) {
          forward_tile<V, P, NV>(a, a.xp + start[i], w, tiles[i], k0, k1, /*resume=*/k0 > 0);
        }
      }
      const int64_t co0 = cb * NB, count = a.cout - co0 < NB ? a.cout - co0 : NB;
      for (int64_t i = 0; i < group; ++i) {
        const T* tile = tiles[i];
        const int64_t* px = pixel[i];
        // A whole tile of one row writes P consecutive outputs per channel: a
        // plain strided copy, without the per-output test (strided layers'
        // forwards 3-5% faster).
        const bool row = px[0] >= 0 && px[P - 1] == px[0] + P - 1;
        int64_t c = 0;
        if constexpr (sizeof(T) == 4 && P % 8 == 0 && NB % 8 == 0) {
          if (row) {
            for (; c + 8 <= count; c += 8) {
              for (int j = 0; j < P; j += 8) {
                store_transposed_8x8<V>(tile + j * NB + c, NB, a.bias ? a.bias + co0 + c : nullptr,
                                        a.out + (co0 + c) * L + px[0] + j, L);
              }
            }
          }
        }
        for (; c < count; ++c) {
          T* out = a.out + (co0 + c) * L;
          const T bias = a.bias ? a.bias[co0 + c] : T(0);
          if (row) {
            T* o = out + px[0];
            for (int j = 0; j < P; ++j) o[j] = tile[j * NB + c] + bias;
            continue;
          }
          for (int j = 0; j < P; ++j) {
            if (px[j] >= 0) out[px[j]] = tile[j * NB + c] + bias;
          }
        }
      }
    }
  }
}

// The forward with the outputs along the vector lanes instead (what
// ForwardBlocking::run_lanes selects): each output row is cut into runs of
// V::lanes consecutive outputs (the row's last run shorter), and a tile is
// NR consecutive runs, which may lie in different rows, times CO output
// channels. Each step of the reduction loads one vector of inputs per run,
// where the run's outputs read their (channel, tap) values side by side, and
// broadcasts each of the CO weights against all NR of them: NR + CO loads
// per CO x NR multiply-adds, where the channel-vectorised tiles above need
// P + NV per P x NV, about one load per multiply-add for layers with one
// vector of output channels (16). The lanes of a short run past the row's
// end read the padded plane on (xp has a tile of slack past its last
// plane) and are not stored. The accumulators are the outputs' own rows, so
// they are stored straight into (channel, oh, ow).
//
// runs_tile computes NR runs from `first`, all of them outputs. The
// reduction runs in chunks of kRunChunkSteps, each summed in registers and
// added to the outputs in order, for the rounding forward_tile's chunks
// give: in one run of 1152 steps, VGG's 128-128 @16 forward had 4.5x
// torch's float32 error.
constexpr int64_t kRunChunkSteps = 192;

template <class V, int CO, int NR>
void runs_tile(const ForwardArgs<typename V::scalar>& a, int64_t first, int64_t per_row) {
  using T = typename V::scalar;
  constexpr int lanes = V::lanes;
  const int64_t L = a.out_h * a.out_w, blocks = (a.cout + CO - 1) / CO;
  int64_t xoff[NR], ooff[NR];
  int count[NR];
  for (int i = 0; i < NR; ++i) {
    const int64_t r = first + i, oh = r / per_row, ow0 = (r - oh * per_row) * lanes;
    xoff[i] = oh * a.wp + ow0;
    ooff[i] = oh * a.out_w + ow0;
    count[i] = static_cast<int>(a.out_w - ow0 < lanes ? a.out_w - ow0 : lanes);
  }
  for (int64_t cb = 0; cb < blocks; ++cb) {
    const int64_t co0 = cb * CO;
    const T* w = a.wpack + cb * a.steps * CO;
    for (int64_t k0 = 0; k0 < a.steps; k0 += kRunChunkSteps) {
      const int64_t k1 = a.steps - k0 < kRunChunkSteps ? a.steps : k0 + kRunChunkSteps;
      typename V::reg acc[CO][NR];
#pragma GCC unroll 32
      for (int c = 0; c < CO; ++c) {
#pragma GCC unroll 8
        for (int i = 0; i < NR; ++i) acc[c][i] = V::zero();
      }
      for (int64_t k = k0; k < k1; ++k, w += CO) {
        const T* xk = a.xp + a.koff[k];
        typename V::reg xv[NR];
#pragma GCC unroll 8
        for (int i = 0; i < NR; ++i) xv[i] = V::load(xk + xoff[i]);
#pragma GCC unroll 32
        for (int c = 0; c < CO; ++c) {
          const typename V::reg wc = V::broadcast(w + c);
#pragma GCC unroll 8
          for (int i = 0; i < NR; ++i) acc[c][i] = V::fma(wc, xv[i], acc[c][i]);
        }
      }
      // The first chunk's sums plus the bias, then each chunk added on.
#pragma GCC unroll 32
      for (int c = 0; c < CO; ++c) {
        if (co0 + c >= a.cout) break;
        const T zero = T(0);
        const typename V::reg bias = V::broadcast(a.bias ? a.bias + co0 + c : &zero);
        T* out = a.out + (co0 + c) * L;
#pragma GCC unroll 8
        for (int i = 0; i < NR; ++i) {
          if (count[i] == lanes) {
            V::store(out + ooff[i], V::add(acc[c][i], k0 == 0 ? bias : V::load(out + ooff[i])));
          } else {
            const typename V::reg before = k0 == 0 ? bias : V::load_first(out + ooff[i], count[i]);
            V::store_first(out + ooff[i], V::add(acc[c][i], before), count[i]);
          }
        }
      }
    }
  }
}

// The `left` (< NR) runs from `first` that end the plane: a tile of just
// those, not NR runs with the rest computed and dropped (ResNet-20's 16-16
// @32, 64 runs in tiles of 3, computed 66).
template <class V, int CO, int NR>
void runs_tail(const ForwardArgs<typename V::scalar>& a, int64_t first, int64_t per_row, int64_t left) {
  if constexpr (NR > 1) {
    if (left == NR - 1) {
      runs_tile<V, CO, NR - 1>(a, first, per_row);
    } else {
      runs_tail<V, CO, NR - 1>(a, first, per_row, left);
    }
  }
}

template <class V, int CO, int NR>
void forward_runs(const ForwardArgs<typename V::scalar>& a, int64_t tile_begin, int64_t tile_end) {
  const int64_t per_row = (a.out_w + V::lanes - 1) / V::lanes, runs = a.out_h * per_row;
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    if (runs - t * NR >= NR) {
      runs_tile<V, CO, NR>(a, t * NR, per_row);
    } else if (runs > t * NR) {
      runs_tail<V, CO, NR>(a, t * NR, per_row, runs - t * NR);
    }
  }
}

// One weight-gradient tile: R input channels (from c0) of one tap times NV
// vectors of output channels (from the block at `got`), summed over every
// output pixel of the sample, then added into dwt.
template <class V, int R, int NV>
void weight_grad_tile(const WeightGradArgs<typename V::scalar>& a, int64_t tap, int64_t c0,
                      int64_t block, int64_t oh0, int64_t oh1) {
  using T = typename V::scalar;
  constexpr int NB = NV * V::lanes;
  typename V::reg acc[R][NV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  }
  const int64_t x_step = a.stride_w * a.cpad;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const T* x = a.xn + (oh * a.stride_h * a.wp + a.toff[tap]) * a.cpad + c0;
    const T* g = a.got + oh * a.out_w * a.copad + block * NB;
    for (int64_t ow = 0; ow < a.out_w; ++ow, x += x_step, g += a.copad) {
      typename V::reg gv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) gv[v] = V::load(g + v * V::lanes);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const typename V::reg b = V::broadcast(x + r);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(b, gv[v], acc[r][v]);
      }
    }
  }
  T* d = a.dwt + (tap * a.cpad + c0) * a.copad + block * NB;
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      T* dst = d + r * a.copad + v * V::lanes;
      V::store(dst, V::add(V::load(dst), acc[r][v]));
    }
  }
}

// The whole weight gradient of one sample (and group), tile by tile. Every
// tile walks the whole output plane, so a plane too large for the cache
// (ImageNet's first layer) is walked chunk_rows output rows at a time, each
// chunk by every tile while its rows are in the cache.
template <class V, int R, int NV>
void weight_grad_tiles(const WeightGradArgs<typename V::scalar>& a) {
  constexpr int NB = NV * V::lanes;
  for (int64_t oh0 = 0; oh0 < a.out_h; oh0 += a.chunk_rows) {
    const int64_t oh1 = oh0 + a.chunk_rows < a.out_h ? oh0 + a.chunk_rows : a.out_h;
    for (int64_t tap = 0; tap < a.taps; ++tap) {
      for (int64_t c0 = 0; c0 < a.cpad; c0 += R) {
        for (int64_t block = 0; block < a.copad / NB; ++block) {
          weight_grad_tile<V, R, NV>(a, tap, c0, block, oh0, oh1);
        }
      }
    }
  }
}

// Keeps a loaded vector in a register. Without it GCC folds the load into
// each multiply-add that uses it, as a memory operand: K loads instead of
// one, and weight_grad_runs bound by loads again (1.4x slower).
template <class R>
inline void in_register(R& v) {
  __asm__("" : "+v"(v));
}

// The weight gradient with the output pixels along the lanes (see
// WeightGradRunsArgs), for inputs of a few channels: the tiles above pad
// them to r = 4 or 8 broadcasts per pixel, and need both operands
// transposed (channels-last input, pixel-major output gradient) first, a
// quarter of the time of a 3-to-64-channel layer. Here a tile of CO output
// channels x K reduction steps walks the output rows a run of lanes outputs
// at a time: K input vectors
// (each step's values for those outputs, side by side in its padded plane)
// against each channel's output-gradient vector, CO + K loads per CO x K
// multiply-adds, both operands read as they lie. A row's short last run is
// loaded masked (lanes past it read as zero). The lanes' sums carry on
// across the samples of a block in `sums`; conv2d_direct.cpp adds the lanes
// up at the end, in order.
template <class V, int CO, int K>
void weight_grad_runs(const WeightGradRunsArgs<typename V::scalar>& a) {
  using T = typename V::scalar;
  using R = typename V::reg;
  constexpr int lanes = V::lanes;
  const int64_t full = a.out_w / lanes, tail = a.out_w - full * lanes, L = a.out_h * a.out_w;
  const int64_t co_blocks = (a.cout + CO - 1) / CO, k_blocks = (a.steps + K - 1) / K;
  for (int64_t cb = 0; cb < co_blocks; ++cb) {
    const T* g[CO];
    for (int c = 0; c < CO; ++c) {
      const int64_t co = cb * CO + c < a.cout ? cb * CO + c : a.cout - 1;
      g[c] = a.go + co * L;
    }
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      const T* x[K];
      for (int j = 0; j < K; ++j) {
        const int64_t k = kb * K + j < a.steps ? kb * K + j : a.steps - 1;
        x[j] = a.xp + a.koff[k];
      }
      T* s = a.sums + (cb * k_blocks + kb) * CO * K * lanes;
      R acc[CO][K];
#pragma GCC unroll 16
      for (int c = 0; c < CO; ++c) {
#pragma GCC unroll 8
        for (int j = 0; j < K; ++j) acc[c][j] = V::load(s + (c * K + j) * lanes);
      }
      for (int64_t oh = 0; oh < a.out_h; ++oh) {
        const int64_t xrow = oh * a.wp, grow = oh * a.out_w;
        for (int64_t r = 0; r < full; ++r) {
          R xv[K];
#pragma GCC unroll 8
          for (int j = 0; j < K; ++j) xv[j] = V::load(x[j] + xrow + r * lanes);
#pragma GCC unroll 16
          for (int c = 0; c < CO; ++c) {
            R gv = V::load(g[c] + grow + r * lanes);
            in_register(gv);
#pragma GCC unroll 8
            for (int j = 0; j < K; ++j) acc[c][j] = V::fma(gv, xv[j], acc[c][j]);
          }
        }
        if (tail > 0) {
          const int n = static_cast<int>(tail);
          R xv[K];
#pragma GCC unroll 8
          for (int j = 0; j < K; ++j) xv[j] = V::load_first(x[j] + xrow + full * lanes, n);
#pragma GCC unroll 16
          for (int c = 0; c < CO; ++c) {
            R gv = V::load_first(g[c] + grow + full * lanes, n);
            in_register(gv);
#pragma GCC unroll 8
            for (int j = 0; j < K; ++j) acc[c][j] = V::fma(gv, xv[j], acc[c][j]);
          }
        }
      }
#pragma GCC unroll 16
      for (int c = 0; c < CO; ++c) {
#pragma GCC unroll 8
        for (int j = 0; j < K; ++j) V::store(s + (c * K + j) * lanes, acc[c][j]);
      }
    }
  }
}

// The machine's peak, for the benchmark to measure against: `iterations`
// rounds of kChains independent fused multiply-adds on full registers, enough
// chains to hide the FMA latency on every port (4 cycles x 2 ports) within
// the register file. Returns the floating-point operations done; the result
// goes to *sink so the loop is not optimised away.
template <class V>
int64_t fma_peak_loop(int64_t iterations, typename V::scalar* sink) {
  constexpr int kChains = 12;
  using T = typename V::scalar;
  const T scale = T(0.999999), shift = T(1e-7);
  const typename V::reg a = V::broadcast(&scale), b = V::broadcast(&shift);
  typename V::reg acc[kChains];
  for (int c = 0; c < kChains; ++c) {
    const T start = T(c);
    acc[c] = V::broadcast(&start);
  }
  for (int64_t i = 0; i < iterations; ++i) {
    for (int c = 0; c < kChains; ++c) {
      acc[c] = V::fma(acc[c], a, b);
    }
  }
  typename V::reg total = acc[0];
  for (int c = 1; c < kChains; ++c) {
    total = V::add(total, acc[c]);
  }
  T lanes[V::lanes];
  V::store(lanes, total);
  *sink = lanes[0];
  return iterations * kChains * V::lanes * 2;
}

}  // namespace loops
}  // namespace direct
}  // namespace custom_conv
