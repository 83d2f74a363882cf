// phase_planes.h's copy into phase planes for float and double, compiled per
// level (per_level.h). Every pass on the direct kernels copies each sample
// this way. Compiled for the baseline level, a stride-2 layer's copy took a
// sixth of its direct forward (ResNet-20's 16-32 /2 and 32-64 /2 at batch
// 32); per level, each input row read once into both its column phases,
// those forwards ran 8% and 4% faster (stride 1 unchanged). And the copy
// back out of phase planes, which the depthwise loops' strided input
// gradient ends with: as strided stores of each column phase in turn it was
// 2.5 times that pass's arithmetic; row by row, both phases merged by
// permutes, the pass runs 1.7 times faster (3x3 /2, 128 channels at 28x28).
#include "phase_planes.h"
#include "per_level.h"

#include <algorithm>

namespace custom_conv {
namespace {

// Pairs [m, m + lanes) of a row: its values 2 m .. 2 (m + lanes) read as two
// vectors and split into even and odd by constant shuffles (the level's
// permutes). As a loop GCC left this element by element on rows of under 16
// pairs (a 28-wide plane's 14), which made the copy 43% of the strided
// depthwise layer's forward.
template <typename T>
CUSTOM_CONV_INLINE void split_pairs(const T* src, int64_t m, T* even, T* odd) {
  if constexpr (sizeof(T) == 4) {
    using V = float __attribute__((vector_size(32)));
    using I = int __attribute__((vector_size(32)));
    V lo, hi;
    __builtin_memcpy(&lo, src + 2 * m, sizeof(V));
    __builtin_memcpy(&hi, src + 2 * m + 8, sizeof(V));
    const V e = __builtin_shuffle(lo, hi, I{0, 2, 4, 6, 8, 10, 12, 14});
    const V o = __builtin_shuffle(lo, hi, I{1, 3, 5, 7, 9, 11, 13, 15});
    __builtin_memcpy(even + m, &e, sizeof(V));
    __builtin_memcpy(odd + m, &o, sizeof(V));
  } else {
    using V = double __attribute__((vector_size(32)));
    using I = long long __attribute__((vector_size(32)));
    V lo, hi;
    __builtin_memcpy(&lo, src + 2 * m, sizeof(V));
    __builtin_memcpy(&hi, src + 2 * m + 4, sizeof(V));
    const V e = __builtin_shuffle(lo, hi, I{0, 2, 4, 6});
    const V o = __builtin_shuffle(lo, hi, I{1, 3, 5, 7});
    __builtin_memcpy(even + m, &e, sizeof(V));
    __builtin_memcpy(odd + m, &o, sizeof(V));
  }
}

// Input row `src` into the row of each column phase it feeds (phase b's row
// at dst + b * phase_values), over zeros already there: input column x goes
// to phase b = (x + pad_w) mod s_w, column (x + pad_w) / s_w. S is the
// column stride when known at compile time (0: at run time); with 2 the row
// is read once and its even and odd values split by permutes.
template <int64_t S, typename T>
CUSTOM_CONV_INLINE void phase_rows(const T* src, const Phases& p, int64_t phase_values, T* dst) {
  if constexpr (S == 2) {
    // x = 2 m + e lands in phase (e + pad_w) mod 2 at column m + (e + pad_w) / 2
    const int64_t pairs = p.in_w / 2;
    T* even = dst + p.pad_w % 2 * phase_values + p.pad_w / 2;
    T* odd = dst + (1 + p.pad_w) % 2 * phase_values + (1 + p.pad_w) / 2;
    constexpr int64_t kLanes = 32 / sizeof(T);
    if (pairs >= kLanes) {
      // Whole vectors of pairs, the last one ending at the last pair (it
      // may write some pairs again, with the same values).
      for (int64_t m = 0; m < pairs; m += kLanes) split_pairs(src, std::min(m, pairs - kLanes), even, odd);
    } else {
      for (int64_t m = 0; m < pairs; ++m) {
        even[m] = src[2 * m];
        odd[m] = src[2 * m + 1];
      }
    }
    if (p.in_w % 2 != 0) even[pairs] = src[2 * pairs];
  } else {
    const int64_t s = S > 0 ? S : p.stride_w;
    for (int64_t b = 0; b < s; ++b) {
      const ValidRange cols = valid_outputs(b - p.pad_w, s, p.in_w, p.w);
      const T* from = src + cols.lo * s + b - p.pad_w;
      T* row = dst + b * phase_values + cols.lo;
      for (int64_t j = 0; j < cols.hi - cols.lo; ++j) row[j] = from[j * s];
    }
  }
}

template <int64_t S, typename T>
CUSTOM_CONV_INLINE void phase_planes_of(const T* plane, const Phases& p, T* dst) {
  const int64_t phase_values = p.h * p.w;
  // By phase row, not by input row: a division per input row to find its
  // phase cost more than the copy.
  for (int64_t a = 0; a < p.stride_h; ++a) {
    // Row i of phase a holds input row i * s_h + a - pad_h.
    const ValidRange rows = valid_outputs(a - p.pad_h, p.stride_h, p.in_h, p.h);
    T* phase = dst + a * p.stride_w * phase_values;
    for (int64_t i = rows.lo; i < rows.hi; ++i) {
      phase_rows<S>(plane + (i * p.stride_h + a - p.pad_h) * p.in_w, p, phase_values, phase + i * p.w);
    }
  }
}

// `count` consecutive (H, W) planes into their phase planes, one after the
// other; the common column strides as constants, so that the copies
// vectorise.
template <typename T>
CUSTOM_CONV_INLINE void copy_to_phases_body(const T* planes, const Phases& p, int64_t count, T* dst) {
  for (int64_t c = 0; c < count; ++c, planes += p.in_h * p.in_w, dst += p.values()) {
    switch (p.stride_w) {
      case 1: phase_planes_of<1>(planes, p, dst); break;
      case 2: phase_planes_of<2>(planes, p, dst); break;
      default: phase_planes_of<0>(planes, p, dst); break;
    }
  }
}

// The reverse: pairs [m, m + lanes) of a row put back together from its even
// and odd values, by the same level's permutes.
template <typename T>
CUSTOM_CONV_INLINE void merge_pairs(const T* even, const T* odd, int64_t m, T* dst) {
  if constexpr (sizeof(T) == 4) {
    using V = float __attribute__((vector_size(32)));
    using I = int __attribute__((vector_size(32)));
    V e, o;
    __builtin_memcpy(&e, even + m, sizeof(V));
    __builtin_memcpy(&o, odd + m, sizeof(V));
    const V lo = __builtin_shuffle(e, o, I{0, 8, 1, 9, 2, 10, 3, 11});
    const V hi = __builtin_shuffle(e, o, I{4, 12, 5, 13, 6, 14, 7, 15});
    __builtin_memcpy(dst + 2 * m, &lo, sizeof(V));
    __builtin_memcpy(dst + 2 * m + 8, &hi, sizeof(V));
  } else {
    using V = double __attribute__((vector_size(32)));
    using I = long long __attribute__((vector_size(32)));
    V e, o;
    __builtin_memcpy(&e, even + m, sizeof(V));
    __builtin_memcpy(&o, odd + m, sizeof(V));
    const V lo = __builtin_shuffle(e, o, I{0, 4, 1, 5});
    const V hi = __builtin_shuffle(e, o, I{2, 6, 3, 7});
    __builtin_memcpy(dst + 2 * m, &lo, sizeof(V));
    __builtin_memcpy(dst + 2 * m + 4, &hi, sizeof(V));
  }
}

// The reverse of phase_rows: input row `dst` read back out of the row of
// each column phase (phase b's row at src + b * phase_values), dropping the
// padding.
template <int64_t S, typename T>
CUSTOM_CONV_INLINE void rows_from_phases(const T* src, const Phases& p, int64_t phase_values, T* dst) {
  if constexpr (S == 2) {
    const int64_t pairs = p.in_w / 2;
    const T* even = src + p.pad_w % 2 * phase_values + p.pad_w / 2;
    const T* odd = src + (1 + p.pad_w) % 2 * phase_values + (1 + p.pad_w) / 2;
    constexpr int64_t kLanes = 32 / sizeof(T);
    if (pairs >= kLanes) {
      for (int64_t m = 0; m < pairs; m += kLanes) merge_pairs(even, odd, std::min(m, pairs - kLanes), dst);
    } else {
      for (int64_t m = 0; m < pairs; ++m) {
        dst[2 * m] = even[m];
        dst[2 * m + 1] = odd[m];
      }
    }
    if (p.in_w % 2 != 0) dst[2 * pairs] = even[pairs];
  } else {
    const int64_t s = S > 0 ? S : p.stride_w;
    for (int64_t b = 0; b < s; ++b) {
      const ValidRange cols = valid_outputs(b - p.pad_w, s, p.in_w, p.w);
      const T* from = src + b * phase_values + cols.lo;
      T* row = dst + cols.lo * s + b - p.pad_w;
      for (int64_t j = 0; j < cols.hi - cols.lo; ++j) row[j * s] = from[j];
    }
  }
}

// One plane out of its phase planes, by phase row as phase_planes_of.
template <int64_t S, typename T>
CUSTOM_CONV_INLINE void plane_from_phases(const T* phases, const Phases& p, T* plane) {
  const int64_t phase_values = p.h * p.w;
  for (int64_t a = 0; a < p.stride_h; ++a) {
    const ValidRange rows = valid_outputs(a - p.pad_h, p.stride_h, p.in_h, p.h);
    const T* phase = phases + a * p.stride_w * phase_values;
    for (int64_t i = rows.lo; i < rows.hi; ++i) {
      rows_from_phases<S>(phase + i * p.w, p, phase_values, plane + (i * p.stride_h + a - p.pad_h) * p.in_w);
    }
  }
}

template <typename T>
CUSTOM_CONV_INLINE void copy_from_phases_body(const T* phases, const Phases& p, T* plane) {
  switch (p.stride_w) {
    case 1: plane_from_phases<1>(phases, p, plane); break;
    case 2: plane_from_phases<2>(phases, p, plane); break;
    default: plane_from_phases<0>(phases, p, plane); break;
  }
}

CUSTOM_CONV_PER_LEVEL(void, copy_to_phases_float, (const float* planes, const Phases& p, int64_t count, float* dst),
                      (planes, p, count, dst)) {
  copy_to_phases_body(planes, p, count, dst);
}
CUSTOM_CONV_PER_LEVEL(void, copy_to_phases_double,
                      (const double* planes, const Phases& p, int64_t count, double* dst), (planes, p, count, dst)) {
  copy_to_phases_body(planes, p, count, dst);
}

CUSTOM_CONV_PER_LEVEL(void, copy_from_phases_float, (const float* phases, const Phases& p, float* plane),
                      (phases, p, plane)) {
  copy_from_phases_body(phases, p, plane);
}
CUSTOM_CONV_PER_LEVEL(void, copy_from_phases_double, (const double* phases, const Phases& p, double* plane),
                      (phases, p, plane)) {
  copy_from_phases_body(phases, p, plane);
}

}  // namespace

void copy_to_phases(const float* planes, const Phases& p, int64_t count, float* dst) {
  copy_to_phases_float(planes, p, count, dst);
}
void copy_to_phases(const double* planes, const Phases& p, int64_t count, double* dst) {
  copy_to_phases_double(planes, p, count, dst);
}

void copy_from_phases(const float* phases, const Phases& p, float* plane) {
  copy_from_phases_float(phases, p, plane);
}
void copy_from_phases(const double* phases, const Phases& p, double* plane) {
  copy_from_phases_double(phases, p, plane);
}

}  // namespace custom_conv
