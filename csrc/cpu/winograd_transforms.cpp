// The Winograd route's transforms (declared, with their layouts, in
// winograd_transforms.h).
#include "winograd_transforms.h"
#include "per_level.h"

#include <algorithm>
#include <vector>

namespace custom_conv {
namespace winograd {

// Every transform is compiled per instruction-set level (per_level.h); the
// helpers they call are inlined into each.

// ---- The plane layout ----

namespace {

// Row y of a plane split into even and odd columns of the zero-padded row:
// even[k] = row[2k - pad], odd[k] = row[2k + 1 - pad], for k < count; zero
// outside the row (or everywhere, for a row outside the plane).
CUSTOM_CONV_INLINE void load_even_odd(const float* plane, int64_t h, int64_t w, int64_t y, int64_t pad, int64_t count,
                                      float* __restrict even, float* __restrict odd) {
  if (y < 0 || y >= h) {
    std::fill(even, even + count, 0.f);
    std::fill(odd, odd + count, 0.f);
    return;
  }
  const float* row = plane + y * w;
  // Columns 2k - pad and 2k + 1 - pad both inside the row for k in [lo, hi).
  const int64_t lo = std::min(count, (pad + 1) / 2), hi = std::max(lo, std::min(count, (w - 1 + pad) / 2));
  for (int64_t k = 0; k < lo; ++k) {
    const int64_t x = 2 * k - pad;
    even[k] = x >= 0 && x < w ? row[x] : 0.f;
    odd[k] = x + 1 >= 0 && x + 1 < w ? row[x + 1] : 0.f;
  }
  const float* from = row + 2 * lo - pad;
  for (int64_t k = lo; k < hi; ++k) {
    even[k] = from[2 * (k - lo)];
    odd[k] = from[2 * (k - lo) + 1];
  }
  for (int64_t k = hi; k < count; ++k) {
    const int64_t x = 2 * k - pad;
    even[k] = x >= 0 && x < w ? row[x] : 0.f;
    odd[k] = x + 1 >= 0 && x + 1 < w ? row[x + 1] : 0.f;
  }
}

// The four rows of B^T d from the four rows of d (n values each): the
// row pass of the input transform.
CUSTOM_CONV_INLINE void input_rows(const float* __restrict d0, const float* __restrict d1, const float* __restrict d2,
                                   const float* __restrict d3, int64_t n, float* __restrict t0, float* __restrict t1,
                                   float* __restrict t2, float* __restrict t3) {
  for (int64_t k = 0; k < n; ++k) {
    t0[k] = d0[k] - d2[k];
    t1[k] = d1[k] + d2[k];
    t2[k] = d2[k] - d1[k];
    t3[k] = d1[k] - d3[k];
  }
}

// One row i of B^T d, as even and odd columns, times B for n tiles: tile j
// reads columns 2j .. 2j + 3, that is even[j], odd[j], even[j + 1], odd[j + 1].
CUSTOM_CONV_INLINE void input_columns(const float* __restrict even, const float* __restrict odd, int64_t n,
                                      float* __restrict v0, float* __restrict v1, float* __restrict v2,
                                      float* __restrict v3) {
  for (int64_t j = 0; j < n; ++j) {
    v0[j] = even[j] - even[j + 1];
    v1[j] = odd[j] + even[j + 1];
    v2[j] = even[j + 1] - odd[j];
    v3[j] = odd[j] - odd[j + 1];
  }
}

}  // namespace

// V[xi][c][t] = (B^T d B)[xi] for every channel c and every tile t of tile
// rows [r0, r1); V holds T = (r1 - r0) * tiles_w tiles per (xi, c), and
// each xi's values start point_stride values after the previous xi's.
CUSTOM_CONV_PER_LEVEL(void, transform_input_planes, (const Problem& p, const float* input, int64_t r0, int64_t r1,
                                                     int64_t point_stride, float* V),
                      (p, input, r0, r1, point_stride, V)) {
  const int64_t tw = p.tiles_w(), th = p.tiles_h(), T = (r1 - r0) * tw, C = p.in_channels;
  const int64_t n = tw + 1;  // even (odd) columns a row of tiles reads
  std::vector<float> buffer(16 * n);
  float* e = buffer.data();           // 4 rows of d, even columns
  float* o = e + 4 * n;               // and odd
  float* te = buffer.data() + 8 * n;  // B^T d
  float* to = te + 4 * n;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t y0 = 2 * (r % th) - p.pad_h;
      const float* plane = input + (r / th * C + c) * p.in_h * p.in_w;
      for (int i = 0; i < 4; ++i) {
        load_even_odd(plane, p.in_h, p.in_w, y0 + i, p.pad_w, n, e + i * n, o + i * n);
      }
      input_rows(e, e + n, e + 2 * n, e + 3 * n, n, te, te + n, te + 2 * n, te + 3 * n);
      input_rows(o, o + n, o + 2 * n, o + 3 * n, n, to, to + n, to + 2 * n, to + 3 * n);
      float* v = V + c * T + (r - r0) * tw;
      const int64_t step = point_stride;
      for (int i = 0; i < 4; ++i) {
        float* vi = v + 4 * i * step;
        input_columns(te + i * n, to + i * n, tw, vi, vi + step, vi + 2 * step, vi + 3 * step);
      }
    }
  }
}

// Output channels [c0, c1) of tile rows [r0, r1) of a Winograd-domain M
// (xi, c1 - c0, T) back to the output: Y = A^T M A, plus the bias.
CUSTOM_CONV_PER_LEVEL(void, transform_output_planes, (const Problem& p, const float* M, int64_t c0, int64_t c1,
                                                      int64_t r0, int64_t r1, int64_t point_stride,
                                                      const float* bias, float* output),
                      (p, M, c0, c1, r0, r1, point_stride, bias, output)) {
  const int64_t tw = p.tiles_w(), th = p.tiles_h(), T = (r1 - r0) * tw, C = p.out_channels;
  std::vector<float> buffer(8 * tw + 4 * tw);
  float* s = buffer.data();  // M A: 4 rows x 2 columns, tw tiles each
  float* row = s + 8 * tw;   // two output rows of 2 * tw values
  for (int64_t c = c0; c < c1; ++c) {
    const float b = bias ? bias[c] : 0.f;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t step = point_stride;
      const float* m = M + (c - c0) * T + (r - r0) * tw;
      for (int i = 0; i < 4; ++i) {  // M A: the columns
        const float* __restrict m0 = m + 4 * i * step;
        const float* __restrict m1 = m0 + step;
        const float* __restrict m2 = m1 + step;
        const float* __restrict m3 = m2 + step;
        float* __restrict s0 = s + 2 * i * tw;
        float* __restrict s1 = s0 + tw;
        for (int64_t j = 0; j < tw; ++j) {
          s0[j] = m0[j] + m1[j] + m2[j];
          s1[j] = m1[j] - m2[j] - m3[j];
        }
      }
      // A^T (M A): the rows; output row q of the tile, columns 2j and 2j + 1.
      for (int q = 0; q < 2; ++q) {
        const float* __restrict a = s + q * tw;  // column q of rows 0 .. 3
        const float* __restrict b1 = a + 2 * tw;
        const float* __restrict b2 = b1 + 2 * tw;
        const float* __restrict b3 = b2 + 2 * tw;
        float* __restrict y0 = row + 2 * q * tw;  // tile row 0, column q
        float* __restrict y1 = y0 + tw;           // tile row 1, column q
        for (int64_t j = 0; j < tw; ++j) {
          y0[j] = a[j] + b1[j] + b2[j] + b;
          y1[j] = b1[j] - b2[j] - b3[j] + b;
        }
      }
      const int64_t oy = 2 * (r % th);
      float* plane = output + (r / th * C + c) * p.out_h * p.out_w;
      for (int q = 0; q < 2 && oy + q < p.out_h; ++q) {
        const float* __restrict left = row + q * tw;        // column 0 of tile row q
        const float* __restrict right = row + (2 + q) * tw;  // column 1
        float* __restrict out = plane + (oy + q) * p.out_w;
        const int64_t pairs = p.out_w / 2;
        for (int64_t j = 0; j < pairs; ++j) {
          out[2 * j] = left[j];
          out[2 * j + 1] = right[j];
        }
        if (p.out_w % 2) out[2 * pairs] = left[pairs];
      }
    }
  }
}

// dM[xi][c][t] = (A dY A^T)[xi] for output channels [c0, c1) and the tiles of
// tile rows [r0, r1): the transpose of transform_output (dM holds c1 - c0
// channels).
CUSTOM_CONV_PER_LEVEL(void, transform_grad_output_planes, (const Problem& p, const float* grad_output, int64_t c0,
                                                           int64_t c1, int64_t r0, int64_t r1, int64_t point_stride,
                                                           float* dM),
                      (p, grad_output, c0, c1, r0, r1, point_stride, dM)) {
  const int64_t tw = p.tiles_w(), th = p.tiles_h(), T = (r1 - r0) * tw;
  std::vector<float> buffer(12 * tw);
  float* e = buffer.data();  // the tile rows' even and odd columns: e0, e1, o0, o1
  float* h = e + 4 * tw;     // A dY: rows 0 .. 3, even then odd columns
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t oy = 2 * (r % th);
      const float* plane = grad_output + (r / th * p.out_channels + c) * p.out_h * p.out_w;
      load_even_odd(plane, p.out_h, p.out_w, oy, 0, tw, e, e + 2 * tw);
      load_even_odd(plane, p.out_h, p.out_w, oy + 1, 0, tw, e + tw, e + 3 * tw);
      for (int half = 0; half < 2; ++half) {  // A dY = (g0, g0 + g1, g0 - g1, -g1)
        const float* __restrict g0 = e + 2 * half * tw;
        const float* __restrict g1 = g0 + tw;
        float* __restrict h0 = h + half * tw;
        float* __restrict h1 = h0 + 2 * tw;
        float* __restrict h2 = h1 + 2 * tw;
        float* __restrict h3 = h2 + 2 * tw;
        for (int64_t j = 0; j < tw; ++j) {
          h0[j] = g0[j];
          h1[j] = g0[j] + g1[j];
          h2[j] = g0[j] - g1[j];
          h3[j] = -g1[j];
        }
      }
      float* d = dM + (c - c0) * T + (r - r0) * tw;
      const int64_t step = point_stride;
      for (int i = 0; i < 4; ++i) {  // (A dY) A^T, the same along the columns
        const float* __restrict he = h + 2 * i * tw;
        const float* __restrict ho = he + tw;
        float* __restrict d0 = d + 4 * i * step;
        float* __restrict d1 = d0 + step;
        float* __restrict d2 = d1 + step;
        float* __restrict d3 = d2 + step;
        for (int64_t j = 0; j < tw; ++j) {
          d0[j] = he[j];
          d1[j] = he[j] + ho[j];
          d2[j] = he[j] - ho[j];
          d3[j] = -ho[j];
        }
      }
    }
  }
}

// ---- The channel layout ----

// V[xi][t][c] = (B^T d B)[xi] for the tiles [t0, t1) of a channels-last
// input xs (N, H, W, C); positions in the padding read `zeros`.
CUSTOM_CONV_PER_LEVEL(void, transform_input_channels, (const Problem& p, const float* xs, const float* zeros,
                                                       int64_t t0, int64_t t1, int64_t point_stride, float* V),
                      (p, xs, zeros, t0, t1, point_stride, V)) {
  const int64_t C = p.in_channels;
  const float* d[4][4];
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(p, t);
    for (int a = 0; a < 4; ++a) {
      const int64_t y = tp.oy - p.pad_h + a;
      for (int b = 0; b < 4; ++b) {
        const int64_t x = tp.ox - p.pad_w + b;
        const bool inside = y >= 0 && y < p.in_h && x >= 0 && x < p.in_w;
        d[a][b] = inside ? xs + ((tp.n * p.in_h + y) * p.in_w + x) * C : zeros;
      }
    }
    float* v = V + (t - t0) * C;
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) {
      float r[4][4];  // B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3
      for (int b = 0; b < 4; ++b) {
        const float d0 = d[0][b][c], d1 = d[1][b][c], d2 = d[2][b][c], d3 = d[3][b][c];
        r[0][b] = d0 - d2;
        r[1][b] = d1 + d2;
        r[2][b] = d2 - d1;
        r[3][b] = d1 - d3;
      }
      for (int i = 0; i < 4; ++i) {  // (B^T d) B: the same along the columns
        v[(4 * i + 0) * point_stride + c] = r[i][0] - r[i][2];
        v[(4 * i + 1) * point_stride + c] = r[i][1] + r[i][2];
        v[(4 * i + 2) * point_stride + c] = r[i][2] - r[i][1];
        v[(4 * i + 3) * point_stride + c] = r[i][1] - r[i][3];
      }
    }
  }
}

// Y = A^T M A plus the bias for the tiles [t0, t1) of M (16 points, T, C), into a
// channels-last output ys (N, out_h, out_w, C). A tile's outputs past the
// plane's edge go to `sink`.
CUSTOM_CONV_PER_LEVEL(void, transform_output_channels, (const Problem& p, const float* M, int64_t t0, int64_t t1,
                                                        int64_t point_stride, const float* bias, float* sink,
                                                        float* ys),
                      (p, M, t0, t1, point_stride, bias, sink, ys)) {
  const int64_t C = p.out_channels;
  float* y[2][2];
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(p, t);
    for (int a = 0; a < 2; ++a) {
      for (int b = 0; b < 2; ++b) {
        const bool inside = tp.oy + a < p.out_h && tp.ox + b < p.out_w;
        y[a][b] = inside ? ys + ((tp.n * p.out_h + tp.oy + a) * p.out_w + tp.ox + b) * C : sink;
      }
    }
    const float* m = M + (t - t0) * C;
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) {
      float s[4][2];  // M A: columns m0 + m1 + m2, m1 - m2 - m3
      for (int i = 0; i < 4; ++i) {
        const float m0 = m[(4 * i) * point_stride + c], m1 = m[(4 * i + 1) * point_stride + c];
        const float m2 = m[(4 * i + 2) * point_stride + c], m3 = m[(4 * i + 3) * point_stride + c];
        s[i][0] = m0 + m1 + m2;
        s[i][1] = m1 - m2 - m3;
      }
      const float b = bias ? bias[c] : 0.f;
      for (int q = 0; q < 2; ++q) {  // A^T (M A): the same along the rows
        y[0][q][c] = s[0][q] + s[1][q] + s[2][q] + b;
        y[1][q][c] = s[1][q] - s[2][q] - s[3][q] + b;
      }
    }
  }
}

// dM[xi][t][c - c0] = (A dY A^T)[xi] for channels [c0, c1) of the tiles
// [t0, t1) of a channels-last output gradient gs (N, out_h, out_w, C_out):
// the transpose of transform_output. Outputs past the edge read `zeros`.
CUSTOM_CONV_PER_LEVEL(void, transform_grad_output_channels, (const Problem& p, const float* gs, const float* zeros,
                                                             int64_t c0, int64_t c1, int64_t t0, int64_t t1,
                                                             int64_t point_stride, float* dM),
                      (p, gs, zeros, c0, c1, t0, t1, point_stride, dM)) {
  const int64_t C = c1 - c0;
  const float* g[2][2];
  for (int64_t t = t0; t < t1; ++t) {
    const TilePos tp = tile_pos(p, t);
    for (int a = 0; a < 2; ++a) {
      for (int b = 0; b < 2; ++b) {
        const bool inside = tp.oy + a < p.out_h && tp.ox + b < p.out_w;
        g[a][b] = inside ? gs + ((tp.n * p.out_h + tp.oy + a) * p.out_w + tp.ox + b) * p.out_channels + c0
                         : zeros;
      }
    }
    float* d = dM + (t - t0) * C;
#pragma GCC ivdep
    for (int64_t c = 0; c < C; ++c) {
      float h[4][2];  // A dY: rows g0, g0 + g1, g0 - g1, -g1
      for (int q = 0; q < 2; ++q) {
        const float g0 = g[0][q][c], g1 = g[1][q][c];
        h[0][q] = g0;
        h[1][q] = g0 + g1;
        h[2][q] = g0 - g1;
        h[3][q] = -g1;
      }
      for (int i = 0; i < 4; ++i) {  // (A dY) A^T: the same along the columns
        d[(4 * i + 0) * point_stride + c] = h[i][0];
        d[(4 * i + 1) * point_stride + c] = h[i][0] + h[i][1];
        d[(4 * i + 2) * point_stride + c] = h[i][0] - h[i][1];
        d[(4 * i + 3) * point_stride + c] = -h[i][1];
      }
    }
  }
}

// ---- The kernel ----

// U[xi][row][col] = (G w G^T)[xi] of the 3x3 kernels, for rows [r0, r1) of
// the kernels k, laid out (row, tap, col) so that the transform runs along
// cols (conv2d_winograd.cpp passes row = c_out, col = c_in); with `rotate`,
// each kernel turned by 180 degrees first.
CUSTOM_CONV_PER_LEVEL(void, transform_kernels, (const float* k, int64_t r0, int64_t r1, int64_t rows, int64_t cols,
                                                bool rotate, float* u),
                      (k, r0, r1, rows, cols, rotate, u)) {
  std::vector<float> buffer(6 * cols);
  for (int64_t r = r0; r < r1; ++r) {
    const float* kr = k + r * 9 * cols;
    auto tap = [&](int a, int b) { return kr + (rotate ? 8 - (a * 3 + b) : a * 3 + b) * cols; };
    for (int b = 0; b < 3; ++b) {  // G w: rows w0, (w0 + w1 + w2) / 2, (w0 - w1 + w2) / 2, w2
      const float* __restrict w0 = tap(0, b);
      const float* __restrict w1 = tap(1, b);
      const float* __restrict w2 = tap(2, b);
      float* __restrict g1 = buffer.data() + b * cols;
      float* __restrict g2 = g1 + 3 * cols;
      for (int64_t j = 0; j < cols; ++j) {
        g1[j] = 0.5f * (w0[j] + w1[j] + w2[j]);
        g2[j] = 0.5f * (w0[j] - w1[j] + w2[j]);
      }
    }
    for (int i = 0; i < 4; ++i) {  // (G w) G^T, the same along the taps' columns
      const float* __restrict a = i == 0 ? tap(0, 0) : i == 3 ? tap(2, 0) : buffer.data() + (i - 1) * 3 * cols;
      const float* __restrict b = i == 0 ? tap(0, 1) : i == 3 ? tap(2, 1) : a + cols;
      const float* __restrict c = i == 0 ? tap(0, 2) : i == 3 ? tap(2, 2) : a + 2 * cols;
      float* __restrict u0 = u + (4 * i * rows + r) * cols;
      float* __restrict u1 = u0 + rows * cols;
      float* __restrict u2 = u1 + rows * cols;
      float* __restrict u3 = u2 + rows * cols;
      for (int64_t j = 0; j < cols; ++j) {
        u0[j] = a[j];
        u1[j] = 0.5f * (a[j] + b[j] + c[j]);
        u2[j] = 0.5f * (a[j] - b[j] + c[j]);
        u3[j] = c[j];
      }
    }
  }
}

// dW from dU, a run of kGradientRun columns of a row at a time: the 16
// points' partial sums read along dU's rows, the transform done across the
// run (the loops over it vectorise, eight doubles a vector at AVX-512), and
// each kernel's 9 values written together. In the channel layout (rows =
// c_in) consecutive columns are kernels a c_in * 9 values apart, and the
// rows [r0, r1) of a column run follow each other so that each kernel row of
// gw fills while its lines are in L1. (Element by element, in dU's order,
// with two divisions each, this took a quarter of VGG's 512-512 @4 weight
// gradient at batch 32.)
constexpr int64_t kGradientRun = 64;

CUSTOM_CONV_PER_LEVEL(void, transform_kernel_gradient, (const float* du, int64_t partials, int64_t rows,
                                                        int64_t cols, bool rows_out, int64_t r0, int64_t r1,
                                                        float* gw),
                      (du, partials, rows, cols, rows_out, r0, r1, gw)) {
  const int64_t plane = rows * cols;
  double s[16][kGradientRun];
  double t[12][kGradientRun];  // G^T s: row i of the 3 x 4, column j at t[4 i + j]
  float k[9][kGradientRun];
  for (int64_t c0 = 0; c0 < cols; c0 += kGradientRun) {
    const int64_t n = std::min(kGradientRun, cols - c0);
    for (int64_t r = r0; r < r1; ++r) {
      for (int xi = 0; xi < 16; ++xi) {
        const float* src = du + xi * plane + r * cols + c0;
        double* __restrict sum = s[xi];
        for (int64_t o = 0; o < n; ++o) sum[o] = src[o];
        for (int64_t part = 1; part < partials; ++part) {
          src += 16 * plane;
          for (int64_t o = 0; o < n; ++o) sum[o] += src[o];
        }
      }
      for (int j = 0; j < 4; ++j) {  // G^T s: rows s0 + (s1 + s2) / 2, (s1 - s2) / 2, (s1 + s2) / 2 + s3
        for (int64_t o = 0; o < n; ++o) {
          const double s0 = s[j][o], s1 = s[4 + j][o], s2 = s[8 + j][o], s3 = s[12 + j][o];
          t[j][o] = s0 + 0.5 * (s1 + s2);
          t[4 + j][o] = 0.5 * (s1 - s2);
          t[8 + j][o] = 0.5 * (s1 + s2) + s3;
        }
      }
      for (int i = 0; i < 3; ++i) {  // (G^T s) G, the same along the columns
        for (int64_t o = 0; o < n; ++o) {
          const double t0 = t[4 * i][o], t1 = t[4 * i + 1][o], t2 = t[4 * i + 2][o], t3 = t[4 * i + 3][o];
          k[3 * i][o] = static_cast<float>(t0 + 0.5 * (t1 + t2));
          k[3 * i + 1][o] = static_cast<float>(0.5 * (t1 - t2));
          k[3 * i + 2][o] = static_cast<float>(0.5 * (t1 + t2) + t3);
        }
      }
      const int64_t step = rows_out ? 9 : rows * 9;
      float* dst = gw + (rows_out ? r * cols + c0 : c0 * rows + r) * 9;
      for (int64_t o = 0; o < n; ++o, dst += step) {
        for (int q = 0; q < 9; ++q) dst[q] = k[q][o];
      }
    }
  }
}

}  // namespace winograd
}  // namespace custom_conv
