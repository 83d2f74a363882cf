// The 8 x 8 float transpose in registers that transpose.h's blocks and the
// direct forward's copy out of its tiles (direct/loops.h) share: plain C++
// and the compiler's vector extensions only, no library headers, so that
// loops.h can include it under each level's target. Always inlined: each
// caller's copy is compiled for its own level.
#pragma once

namespace custom_conv {
namespace vectorised {

typedef float Floats8 __attribute__((vector_size(32)));
typedef int Ints8 __attribute__((vector_size(32)));

// out[c][j] = r[j][c]: constant shuffles, which become the level's unpack
// and permute instructions.
inline __attribute__((always_inline)) void transpose_8x8(const Floats8 (&r)[8], Floats8 (&out)[8]) {
  Floats8 a[8];
  for (int i = 0; i < 8; i += 2) {  // pairs of lines, interleaved
    a[i] = __builtin_shuffle(r[i], r[i + 1], Ints8{0, 8, 1, 9, 4, 12, 5, 13});
    a[i + 1] = __builtin_shuffle(r[i], r[i + 1], Ints8{2, 10, 3, 11, 6, 14, 7, 15});
  }
  const Ints8 lo2{0, 1, 8, 9, 4, 5, 12, 13}, hi2{2, 3, 10, 11, 6, 7, 14, 15};
  const Floats8 b[8] = {__builtin_shuffle(a[0], a[2], lo2), __builtin_shuffle(a[0], a[2], hi2),
                        __builtin_shuffle(a[1], a[3], lo2), __builtin_shuffle(a[1], a[3], hi2),
                        __builtin_shuffle(a[4], a[6], lo2), __builtin_shuffle(a[4], a[6], hi2),
                        __builtin_shuffle(a[5], a[7], lo2), __builtin_shuffle(a[5], a[7], hi2)};
  const Ints8 lo4{0, 1, 2, 3, 8, 9, 10, 11}, hi4{4, 5, 6, 7, 12, 13, 14, 15};
  for (int k = 0; k < 4; ++k) {  // b[k] holds columns k and k + 4 of lines 0-3, b[k + 4] of lines 4-7
    out[k] = __builtin_shuffle(b[k], b[k + 4], lo4);
    out[k + 4] = __builtin_shuffle(b[k], b[k + 4], hi4);
  }
}

}  // namespace vectorised
}  // namespace custom_conv
