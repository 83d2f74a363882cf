// The depthwise route: direct loops for layers whose groups have one input
// channel each ("depthwise", with any channel multiplier; LeNet's first layer,
// with one input channel, is one too). Each output channel then reads a single input plane, so im2col
// would copy every input value kH * kW times to feed GEMMs with a reduction
// dimension of only kH * kW. Looping over the taps directly touches each
// value once per tap from cache instead.
//
// Output channel co reads input channel co / multiplier, where multiplier =
// out_channels / in_channels.
#include "conv2d_routes.h"
#include "isa.h"
#include "parallel.h"
#include "per_level.h"
#include "phase_planes.h"
#include "taps.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <emmintrin.h>
#endif

namespace custom_conv {
namespace {

// The planes the loops read. A strided layer's loops would read every s-th
// input value, which does not vectorise; and in any layer, clipping each tap
// to the plane would cut the rows into short runs that differ per tap. So
// every input plane is first copied into its zero-padded phase planes
// (phase_planes.h; with stride 1 a single phase: the padded plane), read as
// one plane of s_h * s_w * Hq rows of Wq: tap (ki, kj) of output (oh, ow)
// then lies at position oh * Wq + ow + offset(ki, kj) of it, a stride-1 read
// that needs no clipping. The loops treat the output as one flat row with a
// pitch of Wq, not out_w: output (oh, ow) at oh * Wq + ow. A tap is then one
// run of (out_h - 1) * Wq + out_w values, not out_h runs of out_w (a strided
// layer's rows are short: 14 values, under one AVX-512 vector), at the price
// of Wq - out_w unused values per row, which the callers drop or hold at
// zero, and of copying each plane once (the loops then read it kH * kW
// times, from cache). Each thread's phase planes start as zeros and each
// copy writes only the input's values over them (to_phases): the padding
// stays zero from plane to plane.
struct PlaneLayout {
  Conv2dGeometry g_outer;  // the convolution whose planes these are
  Conv2dGeometry g;        // the loops' geometry: the phase planes', with stride 1 and one flat output row
  std::vector<Tap> taps;  // offsets into the planes the loops read, in the kernel's order
  Phases phases;
  int64_t pitch;          // output row (oh, 0) lies at oh * pitch in the loops' output-shaped buffers
};

PlaneLayout plane_layout(const Conv2dGeometry& g) {
  const Phases phases = phases_of(g.in_h, g.in_w, g.pad_h, g.pad_w, g.stride_h, g.stride_w);
  PlaneLayout m{g, g, {}, phases, phases.w};
  const int64_t run = (g.out_h - 1) * phases.w + g.out_w;
  m.g.in_h = 1;
  m.g.in_w = phases.values();
  m.g.out_h = 1;
  m.g.out_w = run;
  m.g.stride_h = m.g.stride_w = 1;
  for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
    for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
      const int64_t at = phases.offset(ki * g.dilation_h, kj * g.dilation_w);
      m.taps.push_back(Tap{ki * g.kernel_w + kj, 0, at, {0, 1}, {0, run}});
    }
  }
  return m;
}

// Stride 1: the input gradient is a convolution of the output gradient,
// zero-padded by dil * (k - 1) - pad, with the kernel rotated by 180
// degrees, so the forward's loops (a gather, in registers) compute it. The
// layout of that convolution, its taps naming the rotated kernel's weights;
// its geometry has the output gradient's planes as input. Only where that
// padding is not negative (pad <= dil * (k - 1): every "same" or "valid"
// layer).
bool input_gradient_as_convolution(const Conv2dGeometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.pad_h <= g.dilation_h * (g.kernel_h - 1) &&
         g.pad_w <= g.dilation_w * (g.kernel_w - 1);
}

PlaneLayout rotated_layout(const Conv2dGeometry& g) {
  Conv2dGeometry t = g;
  t.in_h = g.out_h;
  t.in_w = g.out_w;
  t.out_h = g.in_h;
  t.out_w = g.in_w;
  t.pad_h = g.dilation_h * (g.kernel_h - 1) - g.pad_h;
  t.pad_w = g.dilation_w * (g.kernel_w - 1) - g.pad_w;
  PlaneLayout m = plane_layout(t);
  const int64_t taps = g.kernel_h * g.kernel_w;
  for (Tap& tap : m.taps) {
    tap.index = taps - 1 - tap.index;  // (ki, kj) reads weight (kH - 1 - ki, kW - 1 - kj)
  }
  return m;
}

// Between a plane of out_h x out_w values and the loops' flat layout of
// `pitch` values per row: copies the rows, leaving (to) or dropping (from)
// the columns past out_w.
template <typename src_t, typename dst_t>
void to_pitch(const src_t* plane, const Conv2dGeometry& g, int64_t pitch, dst_t* wide) {
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    std::copy(plane + oh * g.out_w, plane + (oh + 1) * g.out_w, wide + oh * pitch);
  }
}
template <typename src_t, typename dst_t>
void from_pitch(const src_t* wide, const Conv2dGeometry& g, int64_t pitch, dst_t* plane) {
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    std::copy(wide + oh * pitch, wide + oh * pitch + g.out_w, plane + oh * g.out_w);
  }
}

// A result plane written to memory past the caches (streaming stores) when
// the whole result is larger than the threads' L2 caches together: it will
// not be in cache when its reader comes, and streaming saves reading each
// line before overwriting it. On the depthwise layer with 25.7 MB of output
// (64 channels at 56x56, batch 32) that made the forward 1.3x faster; a 3.2 MB
// output (stride 2 at 28x28) ran as fast either way, so below the bound the
// plain copy stays. Only for x86-64's 16-byte streaming stores (SSE2, every
// level); elsewhere a plain copy.
bool stream_result(int64_t bytes) {
  return bytes > at::get_num_threads() * cpu_caches().l2;
}

template <typename T>
void write_plane(const T* src, T* dst, int64_t n, bool stream) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (stream) {
      constexpr int64_t kPer16 = 16 / sizeof(T);
      int64_t i = 0;
      for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 16 != 0; ++i) dst[i] = src[i];
      for (; i + kPer16 <= n; i += kPer16) {
        if constexpr (std::is_same_v<T, float>) {
          _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
        } else {
          _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
        }
      }
      std::copy(src + i, src + n, dst + i);
      return;
    }
  }
#endif
  std::copy(src, src + n, dst);
}

// Makes a thread's streaming stores visible to the others (before the
// parallel loop ends and the result is read).
void end_streaming(bool stream) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (stream) _mm_sfence();
#endif
}

// The loops on the flat layout, in a portable form (half and bfloat16, summed
// in float) and, for float and double, held in vector registers: GCC's
// generic 64-byte vectors, which each level's build (per_level.h) maps onto
// its own registers (one AVX-512 register, two AVX2 ones, four SSE ones).

// Correlates one input plane with one kernel into one output plane (already
// holding the bias), tap by tap: each output adds the weight times the input
// at the tap's offset. In the kernel's order of taps, in every form, so each
// output's sum is the same sequence of additions.
template <typename src_t, typename scalar_t, typename acc_t>
CUSTOM_CONV_INLINE void depthwise_plane_forward(const src_t* in, const scalar_t* kernel, const PlaneLayout& m,
                                                acc_t* out) {
  const int64_t run = m.g.out_w;
  for (const Tap& tap : m.taps) {
    const acc_t w = static_cast<acc_t>(kernel[tap.index]);
    const src_t* src = in + tap.dx;
    for (int64_t e = 0; e < run; ++e) {
      out[e] += w * static_cast<acc_t>(src[e]);
    }
  }
}

template <typename T>
struct BlockOf;
template <>
struct BlockOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct BlockOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Block = typename BlockOf<T>::type;
template <typename T>
constexpr int64_t kBlockLanes = 64 / sizeof(T);

// Always inlined, so no call passes a vector by value: the warning that the
// ABI of such a call differs between levels does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T>
CUSTOM_CONV_INLINE Block<T> load_block(const T* p) {
  Block<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
CUSTOM_CONV_INLINE void store_block(T* p, Block<T> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// The next plane a loop's caller will read, fetched into the cache a few
// lines per block of work while this plane is computed: each plane is a
// short run of memory (a few pages), which the hardware prefetchers only
// pick up after its first misses; all its lines at once would overflow the
// requests the core can have in flight.
struct NextPlane {
  const char* at = nullptr;
  int64_t bytes = 0;

  CUSTOM_CONV_INLINE void fetch(int lines) {
    for (int i = 0; i < lines && bytes > 0; ++i, at += 64, bytes -= 64) {
      __builtin_prefetch(at);
    }
  }
};

// The forward with kOutBlocks vectors of outputs in registers while every tap
// adds onto them: one load per multiply-add, one store per vector of outputs
// (the loop above loads and stores the output once per tap).
template <typename T>
CUSTOM_CONV_INLINE void depthwise_plane_forward_blocked(const T* in, const T* kernel, const PlaneLayout& m, T* out,
                                                        NextPlane next) {
  constexpr int64_t L = kBlockLanes<T>;
  constexpr int kOutBlocks = 4;
  const int64_t run = m.g.out_w;
  int64_t e = 0;
  for (; e + kOutBlocks * L <= run; e += kOutBlocks * L) {
    next.fetch(kOutBlocks);  // as many lines as this block's outputs fill
    Block<T> acc[kOutBlocks];
#pragma GCC unroll 4
    for (int b = 0; b < kOutBlocks; ++b) acc[b] = load_block(out + e + b * L);
    for (const Tap& tap : m.taps) {
      const T w = kernel[tap.index];
      const T* src = in + tap.dx + e;
#pragma GCC unroll 4
      for (int b = 0; b < kOutBlocks; ++b) acc[b] += w * load_block(src + b * L);
    }
#pragma GCC unroll 4
    for (int b = 0; b < kOutBlocks; ++b) store_block(out + e + b * L, acc[b]);
  }
  for (; e + L <= run; e += L) {
    Block<T> acc = load_block(out + e);
    for (const Tap& tap : m.taps) acc += kernel[tap.index] * load_block(in + tap.dx + e);
    store_block(out + e, acc);
  }
  for (; e < run; ++e) {
    T acc = out[e];
    for (const Tap& tap : m.taps) acc += kernel[tap.index] * in[tap.dx + e];
    out[e] = acc;
  }
}

// One output channel's share of an input plane's gradient: weight times
// grad_output, scattered back to each tap's offset (the transpose of the
// forward's gather).
template <typename scalar_t, typename acc_t>
CUSTOM_CONV_INLINE void depthwise_plane_backward_input(const scalar_t* go, const scalar_t* kernel,
                                                       const PlaneLayout& m, acc_t* acc) {
  const int64_t run = m.g.out_w;
  for (const Tap& tap : m.taps) {
    const acc_t w = static_cast<acc_t>(kernel[tap.index]);
    acc_t* dst = acc + tap.dx;
    for (int64_t e = 0; e < run; ++e) {
      dst[e] += w * static_cast<acc_t>(go[e]);
    }
  }
}

// The weight gradient's running sums for one output channel, per tap: one
// per lane of a 64-byte vector of acc_t (output e, among the run's whole
// vectors, adds into lane e % lanes) and one more for the run's last,
// partial vector; kept across the batch, added up at the end
// (weight_sum).
template <typename acc_t>
constexpr int64_t kSumsPerTap = kBlockLanes<acc_t> + 1;

template <typename acc_t>
acc_t weight_sum(const acc_t* sums) {
  return std::accumulate(sums, sums + kSumsPerTap<acc_t>, acc_t(0));
}

// One sample's share of an output channel's weight gradient: per tap, the
// products of grad_output with the input at the tap's offset.
template <typename src_t, typename scalar_t, typename acc_t>
CUSTOM_CONV_INLINE void depthwise_plane_backward_weight(const src_t* plane, const scalar_t* go,
                                                        const PlaneLayout& m, acc_t* sums) {
  constexpr int64_t L = kBlockLanes<acc_t>;
  const int64_t run = m.g.out_w, whole = run / L * L;
  for (const Tap& tap : m.taps) {
    acc_t* s = sums + tap.index * kSumsPerTap<acc_t>;
    const src_t* src = plane + tap.dx;
    for (int64_t e = 0; e < whole; e += L) {
      for (int64_t l = 0; l < L; ++l) {
        s[l] += static_cast<acc_t>(go[e + l]) * static_cast<acc_t>(src[e + l]);
      }
    }
    for (int64_t e = whole; e < run; ++e) {
      s[L] += static_cast<acc_t>(go[e]) * static_cast<acc_t>(src[e]);
    }
  }
}

// The same sums with kTaps taps' vectors in registers while the run streams
// past once: per vector of outputs, one load of grad_output and one of the
// input per tap, against the loop above's extra load and store of the sum.
template <int kTaps, typename T>
CUSTOM_CONV_INLINE void weight_taps_blocked(const T* plane, const T* go, const Tap* taps, int64_t run, T* sums,
                                            NextPlane& next_input, NextPlane& next_go) {
  constexpr int64_t L = kBlockLanes<T>;
  const int64_t whole = run / L * L;
  Block<T> acc[kTaps];
#pragma GCC unroll 16
  for (int t = 0; t < kTaps; ++t) acc[t] = load_block(sums + taps[t].index * kSumsPerTap<T>);
  for (int64_t e = 0; e < whole; e += L) {
    next_input.fetch(1);
    next_go.fetch(1);
    const Block<T> g = load_block(go + e);
#pragma GCC unroll 16
    for (int t = 0; t < kTaps; ++t) acc[t] += g * load_block(plane + taps[t].dx + e);
  }
#pragma GCC unroll 16
  for (int t = 0; t < kTaps; ++t) {
    T* s = sums + taps[t].index * kSumsPerTap<T>;
    store_block(s, acc[t]);
    for (int64_t e = whole; e < run; ++e) s[L] += go[e] * plane[taps[t].dx + e];
  }
}

// Taps in groups of up to 9: a 3x3 kernel in one pass, its 9 sums and the
// vector of grad_output in 10 of AVX-512's 32 registers (at the AVX2 level
// each 64-byte block takes two of 16, and some sums spill to the stack).
// next_input, next_go: the planes of the next sample, fetched while the
// first group streams past.
template <typename T>
CUSTOM_CONV_INLINE void depthwise_plane_backward_weight_blocked(const T* plane, const T* go, const PlaneLayout& m,
                                                                T* sums, NextPlane next_input, NextPlane next_go) {
  const int64_t taps = static_cast<int64_t>(m.taps.size()), run = m.g.out_w;
  for (int64_t t0 = 0; t0 < taps; t0 += 9) {
    const Tap* group = m.taps.data() + t0;
    switch (std::min<int64_t>(9, taps - t0)) {
      case 1: weight_taps_blocked<1>(plane, go, group, run, sums, next_input, next_go); break;
      case 2: weight_taps_blocked<2>(plane, go, group, run, sums, next_input, next_go); break;
      case 3: weight_taps_blocked<3>(plane, go, group, run, sums, next_input, next_go); break;
      case 4: weight_taps_blocked<4>(plane, go, group, run, sums, next_input, next_go); break;
      case 5: weight_taps_blocked<5>(plane, go, group, run, sums, next_input, next_go); break;
      case 6: weight_taps_blocked<6>(plane, go, group, run, sums, next_input, next_go); break;
      case 7: weight_taps_blocked<7>(plane, go, group, run, sums, next_input, next_go); break;
      case 8: weight_taps_blocked<8>(plane, go, group, run, sums, next_input, next_go); break;
      default: weight_taps_blocked<9>(plane, go, group, run, sums, next_input, next_go); break;
    }
  }
}

// The three plane loops for float and double at the process's instruction-set
// level (per_level.h); half and bfloat16 (summed in float) at the baseline.
#define CUSTOM_CONV_DEPTHWISE_LEVELS(T, suffix)                                                            \
  CUSTOM_CONV_PER_LEVEL(void, plane_forward_##suffix,                                                    \
                        (const T* in, const T* kernel, const PlaneLayout& m, T* out, NextPlane next),     \
                        (in, kernel, m, out, next)) {                                                    \
    depthwise_plane_forward_blocked(in, kernel, m, out, next);                                           \
  }                                                                                                      \
  CUSTOM_CONV_PER_LEVEL(void, plane_backward_input_##suffix,                                             \
                        (const T* go, const T* kernel, const PlaneLayout& m, T* acc), (go, kernel, m, acc)) { \
    depthwise_plane_backward_input(go, kernel, m, acc);                                                  \
  }                                                                                                      \
  CUSTOM_CONV_PER_LEVEL(void, plane_backward_weight_##suffix,                                            \
                        (const T* plane, const T* go, const PlaneLayout& m, T* sums, NextPlane a, NextPlane b), \
                        (plane, go, m, sums, a, b)) {                                                    \
    depthwise_plane_backward_weight_blocked(plane, go, m, sums, a, b);                                   \
  }
CUSTOM_CONV_DEPTHWISE_LEVELS(float, float)
CUSTOM_CONV_DEPTHWISE_LEVELS(double, double)
#undef CUSTOM_CONV_DEPTHWISE_LEVELS

void plane_forward(const float* in, const float* kernel, const PlaneLayout& m, float* out, NextPlane next) {
  plane_forward_float(in, kernel, m, out, next);
}
void plane_forward(const double* in, const double* kernel, const PlaneLayout& m, double* out, NextPlane next) {
  plane_forward_double(in, kernel, m, out, next);
}
template <typename src_t, typename scalar_t, typename acc_t>
void plane_forward(const src_t* in, const scalar_t* kernel, const PlaneLayout& m, acc_t* out, NextPlane) {
  depthwise_plane_forward(in, kernel, m, out);
}
void plane_backward_input(const float* go, const float* kernel, const PlaneLayout& m, float* acc) {
  plane_backward_input_float(go, kernel, m, acc);
}
void plane_backward_input(const double* go, const double* kernel, const PlaneLayout& m, double* acc) {
  plane_backward_input_double(go, kernel, m, acc);
}
template <typename scalar_t, typename acc_t>
void plane_backward_input(const scalar_t* go, const scalar_t* kernel, const PlaneLayout& m, acc_t* acc) {
  depthwise_plane_backward_input(go, kernel, m, acc);
}
void plane_backward_weight(const float* plane, const float* go, const PlaneLayout& m, float* sums, NextPlane a,
                           NextPlane b) {
  plane_backward_weight_float(plane, go, m, sums, a, b);
}
void plane_backward_weight(const double* plane, const double* go, const PlaneLayout& m, double* sums, NextPlane a,
                           NextPlane b) {
  plane_backward_weight_double(plane, go, m, sums, a, b);
}
template <typename src_t, typename scalar_t, typename acc_t>
void plane_backward_weight(const src_t* plane, const scalar_t* go, const PlaneLayout& m, acc_t* sums, NextPlane,
                           NextPlane) {
  depthwise_plane_backward_weight(plane, go, m, sums);
}

// Plane `index` of planes of plane_values values each.
template <typename scalar_t>
NextPlane plane_at(const scalar_t* planes, int64_t index, int64_t plane_values) {
  return {reinterpret_cast<const char*>(planes + index * plane_values),
          plane_values * static_cast<int64_t>(sizeof(scalar_t))};
}

// The plane a thread reads after plane `from`, when its task [.., end) goes on
// past p and the plane changes every per_plane items; else none.
template <typename scalar_t>
NextPlane next_plane(const scalar_t* planes, int64_t p, int64_t end, int64_t per_plane, int64_t plane_values,
                     int64_t from) {
  if (p + 1 >= end || (p + 1) % per_plane != 0) {
    return {};
  }
  return plane_at(planes, from + 1, plane_values);
}

template <typename scalar_t>
void forward_planes(const scalar_t* input, const scalar_t* weight, const scalar_t* bias, const Conv2dGeometry& g,
                    scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const PlaneLayout m = plane_layout(g);
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.output_plane();
  const int64_t taps = g.kernel_h * g.kernel_w;
  const bool stream = stream_result(g.batch * g.out_channels * out_plane * static_cast<int64_t>(sizeof(scalar_t)));
  at::parallel_for(0, g.batch * g.out_channels, plane_grain(taps * out_plane), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(g.out_h * m.pitch), phased(m.phases.values());
    std::vector<scalar_t> plane(out_plane);
    int64_t phased_from = -1;  // the input plane `phased` holds
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.out_channels, co = p % g.out_channels;
      const int64_t from = n * g.in_channels + co / multiplier;
      if (from != phased_from) {  // output channels of one group read one input plane
        to_phases(input + from * in_plane, m.phases, phased.data());
        phased_from = from;
      }
      std::fill(acc.begin(), acc.end(), bias ? static_cast<acc_t>(bias[co]) : acc_t(0));
      plane_forward(phased.data(), weight + co * taps, m, acc.data(),
                    next_plane(input, p, end, multiplier, in_plane, from));
      from_pitch(acc.data(), g, m.pitch, plane.data());
      write_plane(plane.data(), output + p * out_plane, out_plane, stream);
    }
    end_streaming(stream);
  });
}

// The input gradient of one input plane: every output channel that read it
// scatters weight * grad_output back to the taps' offsets in the phase
// planes. A thread owns whole input planes, so no two threads add into the
// same element and the order of the sums is fixed.
template <typename scalar_t>
void backward_input_planes(const scalar_t* grad_output, const scalar_t* weight, const Conv2dGeometry& g,
                           scalar_t* grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const PlaneLayout m = plane_layout(g);
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.output_plane();
  const int64_t taps = g.kernel_h * g.kernel_w, acc_plane = m.g.in_h * m.g.in_w;
  if (input_gradient_as_convolution(g)) {
    const PlaneLayout r = rotated_layout(g);
    const bool stream = stream_result(g.batch * g.in_channels * in_plane * static_cast<int64_t>(sizeof(scalar_t)));
    at::parallel_for(0, g.batch * g.in_channels, plane_grain(multiplier * taps * out_plane),
                     [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(g.in_h * r.pitch), phased(r.phases.values());
      std::vector<scalar_t> plane(in_plane);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.in_channels, ci = p % g.in_channels;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t co = ci * multiplier; co < (ci + 1) * multiplier; ++co) {
          const int64_t from = n * g.out_channels + co;
          to_phases(grad_output + from * out_plane, r.phases, phased.data());
          plane_forward(phased.data(), weight + co * taps, r, acc.data(),
                        co + 1 == (ci + 1) * multiplier ? next_plane(grad_output, p, end, 1, out_plane, from)
                                                        : NextPlane{});
        }
        from_pitch(acc.data(), r.g_outer, r.pitch, plane.data());
        write_plane(plane.data(), grad_input + p * in_plane, in_plane, stream);
      }
      end_streaming(stream);
    });
    return;
  }
  at::parallel_for(0, g.batch * g.in_channels, plane_grain(multiplier * taps * out_plane),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(acc_plane);
    std::vector<scalar_t> wide(g.out_h * m.pitch);  // its columns past out_w stay zero
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.in_channels, ci = p % g.in_channels;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t co = ci * multiplier; co < (ci + 1) * multiplier; ++co) {
        to_pitch(grad_output + (n * g.out_channels + co) * out_plane, g, m.pitch, wide.data());
        plane_backward_input(wide.data(), weight + co * taps, m, acc.data());
      }
      from_phases(acc.data(), m.phases, grad_input + p * in_plane);
    }
  });
}

// The weight gradient: per output channel and tap, the dot product of the
// output gradient with the input plane shifted by that tap, summed over the
// batch into one partial sum per vector lane (kSumsPerTap), so that the
// innermost loop is an element-wise multiply-add that vectorises (a single
// running sum would serialise on its own additions); the lanes are added up
// at the end. A thread owns whole output channels, so the order of every sum
// is fixed.
template <typename scalar_t>
void backward_weight_planes(const scalar_t* grad_output, const scalar_t* input, const Conv2dGeometry& g,
                            scalar_t* grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const PlaneLayout m = plane_layout(g);
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.output_plane();
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.out_channels, plane_grain(g.batch * taps * out_plane), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sums(taps * kSumsPerTap<acc_t>), phased(m.phases.values());
    std::vector<scalar_t> wide(g.out_h * m.pitch);  // its columns past out_w stay zero
    for (int64_t co = begin; co < end; ++co) {
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for (int64_t n = 0; n < g.batch; ++n) {
        const int64_t from = n * g.in_channels + co / multiplier, go_from = n * g.out_channels + co;
        to_phases(input + from * in_plane, m.phases, phased.data());
        to_pitch(grad_output + go_from * out_plane, g, m.pitch, wide.data());
        const bool last = n + 1 == g.batch;  // else the next sample's planes are fetched meanwhile
        plane_backward_weight(phased.data(), wide.data(), m, sums.data(),
                              last ? NextPlane{} : plane_at(input, from + g.in_channels, in_plane),
                              last ? NextPlane{} : plane_at(grad_output, go_from + g.out_channels, out_plane));
      }
      for (int64_t tap = 0; tap < taps; ++tap) {
        grad_weight[co * taps + tap] = static_cast<scalar_t>(weight_sum(sums.data() + tap * kSumsPerTap<acc_t>));
      }
    }
  });
}

}  // namespace

const char* conv2d_depthwise_refusal(const Conv2dGeometry& g, Conv2dPass, at::ScalarType) {
  return g.in_channels_per_group() == 1 ? nullptr : "the depthwise loops take one input channel per group";
}

void conv2d_depthwise_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& bias, at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "conv2d_depthwise_forward", [&] {
    forward_planes(input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                   bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, g, output.mutable_data_ptr<scalar_t>());
  });
}

void conv2d_depthwise_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                     const at::Tensor& weight, at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "conv2d_depthwise_backward_input", [&] {
    backward_input_planes(grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), g,
                          grad_input.mutable_data_ptr<scalar_t>());
  });
}

void conv2d_depthwise_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                      const at::Tensor& grad_output, at::Tensor& grad_weight) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "conv2d_depthwise_backward_weight", [&] {
    backward_weight_planes(grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), g,
                           grad_weight.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace custom_conv
