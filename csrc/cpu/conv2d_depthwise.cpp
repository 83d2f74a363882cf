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
#include <vector>

namespace custom_conv {
namespace {

// Strided layers. With stride s the loops below would read every s-th
// input value, which does not vectorise. So a strided layer first copies
// each input plane into its phase planes (phase_planes.h), read as one plane of
// s_h * s_w * Hq rows of Wq: tap (ki, kj) of output (oh, ow) then lies at
// position oh * Wq + ow + offset(ki, kj) of it, a stride-1 read that needs no
// clipping. The loops then treat the output as one flat row with a pitch of
// Wq, not out_w: output (oh, ow) at oh * Wq + ow. A tap is then one run of
// (out_h - 1) * Wq + out_w values, not out_h runs of out_w (a strided layer's
// rows are short: 14 values, under one AVX-512 vector), at the price of
// Wq - out_w unused values per row, which the callers drop or hold at zero.
// Stride 1 reads the input planes directly.
struct PlaneLayout {
  Conv2dGeometry g;       // the loops' geometry: the phase planes', with stride 1 and one flat output row
  std::vector<Tap> taps;  // offsets into the planes the loops read
  Phases phases;
  bool strided;
  int64_t pitch;          // output row (oh, 0) lies at oh * pitch in the loops' output-shaped buffers
};

PlaneLayout plane_layout(const Conv2dGeometry& g) {
  const Phases phases = phases_of(g.in_h, g.in_w, g.pad_h, g.pad_w, g.stride_h, g.stride_w);
  if (g.stride_h == 1 && g.stride_w == 1) {
    return {g, kernel_taps(g), phases, false, g.out_w};
  }
  PlaneLayout m{g, {}, phases, true, phases.w};
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

// Between a plane of out_h x out_w values and the loops' flat layout of
// `pitch` values per row: copies the rows, leaving (to) or dropping (from)
// the columns past out_w. A stride-1 layout has pitch out_w: a plain copy.
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

// Correlates one input plane with one kernel into one output plane (already
// holding the bias), tap by tap: for each tap, each output row adds the
// weight times an input row. Rows are clipped once per tap so the innermost
// loop has no bounds checks and vectorises.
template <typename src_t, typename scalar_t, typename acc_t>
CUSTOM_CONV_INLINE void depthwise_plane_forward(const src_t* in, const scalar_t* kernel, const PlaneLayout& m,
                                                acc_t* out) {
  const Conv2dGeometry& g = m.g;
  for (const Tap& tap : m.taps) {
    const acc_t w = static_cast<acc_t>(kernel[tap.index]);
    for (int64_t oh = tap.rows.lo; oh < tap.rows.hi; ++oh) {
      const src_t* src = in + (oh + tap.dy) * g.in_w + tap.dx;
      acc_t* dst = out + oh * g.out_w;
      for (int64_t ow = tap.cols.lo; ow < tap.cols.hi; ++ow) {
        dst[ow] += w * static_cast<acc_t>(src[ow]);
      }
    }
  }
}

// One output channel's share of an input plane's gradient: weight times
// grad_output, scattered back along the same clipped rows as the forward.
template <typename scalar_t, typename acc_t>
CUSTOM_CONV_INLINE void depthwise_plane_backward_input(const scalar_t* go, const scalar_t* kernel,
                                                       const PlaneLayout& m, int64_t out_w, acc_t* acc) {
  for (const Tap& tap : m.taps) {
    const acc_t w = static_cast<acc_t>(kernel[tap.index]);
    for (int64_t oh = tap.rows.lo; oh < tap.rows.hi; ++oh) {
      const scalar_t* src = go + oh * out_w;
      acc_t* dst = acc + (oh + tap.dy) * m.g.in_w + tap.dx;
      for (int64_t ow = tap.cols.lo; ow < tap.cols.hi; ++ow) {
        dst[ow] += w * static_cast<acc_t>(src[ow]);
      }
    }
  }
}

// One sample's share of an output channel's weight gradient: per tap, per
// output column, the products of grad_output with the shifted input plane.
template <typename src_t, typename scalar_t, typename acc_t>
CUSTOM_CONV_INLINE void depthwise_plane_backward_weight(const src_t* plane, const scalar_t* go,
                                                        const PlaneLayout& m, int64_t out_w, acc_t* column_sums) {
  for (const Tap& tap : m.taps) {
    acc_t* sums = column_sums + tap.index * out_w;
    for (int64_t oh = tap.rows.lo; oh < tap.rows.hi; ++oh) {
      const src_t* src = plane + (oh + tap.dy) * m.g.in_w + tap.dx;
      const scalar_t* grad = go + oh * out_w;
      for (int64_t ow = tap.cols.lo; ow < tap.cols.hi; ++ow) {
        sums[ow] += static_cast<acc_t>(grad[ow]) * static_cast<acc_t>(src[ow]);
      }
    }
  }
}

// The three plane loops for float and double at the process's instruction-set
// level (per_level.h); half and bfloat16 (summed in float) at the baseline.
#define CUSTOM_CONV_DEPTHWISE_LEVELS(T, suffix)                                                            \
  CUSTOM_CONV_PER_LEVEL(void, plane_forward_##suffix,                                                    \
                        (const T* in, const T* kernel, const PlaneLayout& m, T* out), (in, kernel, m, out)) { \
    depthwise_plane_forward(in, kernel, m, out);                                                         \
  }                                                                                                      \
  CUSTOM_CONV_PER_LEVEL(void, plane_backward_input_##suffix,                                             \
                        (const T* go, const T* kernel, const PlaneLayout& m, int64_t out_w, T* acc),      \
                        (go, kernel, m, out_w, acc)) {                                                   \
    depthwise_plane_backward_input(go, kernel, m, out_w, acc);                                           \
  }                                                                                                      \
  CUSTOM_CONV_PER_LEVEL(void, plane_backward_weight_##suffix,                                            \
                        (const T* plane, const T* go, const PlaneLayout& m, int64_t out_w, T* sums),     \
                        (plane, go, m, out_w, sums)) {                                                   \
    depthwise_plane_backward_weight(plane, go, m, out_w, sums);                                          \
  }
CUSTOM_CONV_DEPTHWISE_LEVELS(float, float)
CUSTOM_CONV_DEPTHWISE_LEVELS(double, double)
#undef CUSTOM_CONV_DEPTHWISE_LEVELS

void plane_forward(const float* in, const float* kernel, const PlaneLayout& m, float* out) {
  plane_forward_float(in, kernel, m, out);
}
void plane_forward(const double* in, const double* kernel, const PlaneLayout& m, double* out) {
  plane_forward_double(in, kernel, m, out);
}
template <typename src_t, typename scalar_t, typename acc_t>
void plane_forward(const src_t* in, const scalar_t* kernel, const PlaneLayout& m, acc_t* out) {
  depthwise_plane_forward(in, kernel, m, out);
}
void plane_backward_input(const float* go, const float* kernel, const PlaneLayout& m, int64_t out_w, float* acc) {
  plane_backward_input_float(go, kernel, m, out_w, acc);
}
void plane_backward_input(const double* go, const double* kernel, const PlaneLayout& m, int64_t out_w,
                          double* acc) {
  plane_backward_input_double(go, kernel, m, out_w, acc);
}
template <typename scalar_t, typename acc_t>
void plane_backward_input(const scalar_t* go, const scalar_t* kernel, const PlaneLayout& m, int64_t out_w,
                          acc_t* acc) {
  depthwise_plane_backward_input(go, kernel, m, out_w, acc);
}
void plane_backward_weight(const float* plane, const float* go, const PlaneLayout& m, int64_t out_w, float* sums) {
  plane_backward_weight_float(plane, go, m, out_w, sums);
}
void plane_backward_weight(const double* plane, const double* go, const PlaneLayout& m, int64_t out_w,
                           double* sums) {
  plane_backward_weight_double(plane, go, m, out_w, sums);
}
template <typename src_t, typename scalar_t, typename acc_t>
void plane_backward_weight(const src_t* plane, const scalar_t* go, const PlaneLayout& m, int64_t out_w,
                           acc_t* sums) {
  depthwise_plane_backward_weight(plane, go, m, out_w, sums);
}

template <typename scalar_t>
void forward_planes(const scalar_t* input, const scalar_t* weight, const scalar_t* bias, const Conv2dGeometry& g,
                    scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const PlaneLayout m = plane_layout(g);
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.output_plane();
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.batch * g.out_channels, plane_grain(taps * out_plane), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(g.out_h * m.pitch), phased(m.strided ? m.phases.values() : 0);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.out_channels, co = p % g.out_channels;
      const scalar_t* in = input + (n * g.in_channels + co / multiplier) * in_plane;
      std::fill(acc.begin(), acc.end(), bias ? static_cast<acc_t>(bias[co]) : acc_t(0));
      if (m.strided) {
        to_phases(in, m.phases, phased.data());
        plane_forward(phased.data(), weight + co * taps, m, acc.data());
      } else {
        plane_forward(in, weight + co * taps, m, acc.data());
      }
      from_pitch(acc.data(), g, m.pitch, output + p * out_plane);
    }
  });
}

// The input gradient of one input plane: every output channel that read it
// scatters weight * grad_output back along the same clipped rows as the
// forward (into the phase planes, for strided layers). A thread owns whole input
// planes, so no two threads add into the same element and the order of the
// sums is fixed.
template <typename scalar_t>
void backward_input_planes(const scalar_t* grad_output, const scalar_t* weight, const Conv2dGeometry& g,
                           scalar_t* grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const PlaneLayout m = plane_layout(g);
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.output_plane();
  const int64_t taps = g.kernel_h * g.kernel_w, acc_plane = m.g.in_h * m.g.in_w;
  at::parallel_for(0, g.batch * g.in_channels, plane_grain(multiplier * taps * out_plane),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(acc_plane);
    std::vector<scalar_t> wide(m.strided ? g.out_h * m.pitch : 0);  // its columns past out_w stay zero
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.in_channels, ci = p % g.in_channels;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t co = ci * multiplier; co < (ci + 1) * multiplier; ++co) {
        const scalar_t* go = grad_output + (n * g.out_channels + co) * out_plane;
        if (m.strided) {
          to_pitch(go, g, m.pitch, wide.data());
          go = wide.data();
        }
        plane_backward_input(go, weight + co * taps, m, m.g.out_w, acc.data());
      }
      if (m.strided) {
        from_phases(acc.data(), m.phases, grad_input + p * in_plane);
      } else {
        std::copy(acc.begin(), acc.end(), grad_input + p * in_plane);
      }
    }
  });
}

// The weight gradient: per output channel and tap, the dot product of the
// output gradient with the input plane shifted by that tap, summed over the
// batch. Each tap keeps one partial sum per output column, so the innermost
// loop is an element-wise multiply-add that vectorises (a single running
// sum would serialise on its own additions); the columns are added up at the
// end. A thread owns whole output channels, so the order of every sum is fixed.
template <typename scalar_t>
void backward_weight_planes(const scalar_t* grad_output, const scalar_t* input, const Conv2dGeometry& g,
                            scalar_t* grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const PlaneLayout m = plane_layout(g);
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.output_plane();
  const int64_t taps = g.kernel_h * g.kernel_w;
  at::parallel_for(0, g.out_channels, plane_grain(g.batch * taps * out_plane), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> column_sums(taps * m.g.out_w), phased(m.strided ? m.phases.values() : 0);
    std::vector<scalar_t> wide(m.strided ? g.out_h * m.pitch : 0);  // its columns past out_w stay zero
    for (int64_t co = begin; co < end; ++co) {
      std::fill(column_sums.begin(), column_sums.end(), acc_t(0));
      for (int64_t n = 0; n < g.batch; ++n) {
        const scalar_t* go = grad_output + (n * g.out_channels + co) * out_plane;
        const scalar_t* in = input + (n * g.in_channels + co / multiplier) * in_plane;
        if (m.strided) {
          to_phases(in, m.phases, phased.data());
          to_pitch(go, g, m.pitch, wide.data());
          plane_backward_weight(phased.data(), wide.data(), m, m.g.out_w, column_sums.data());
        } else {
          plane_backward_weight(in, go, m, g.out_w, column_sums.data());
        }
      }
      for (int64_t tap = 0; tap < taps; ++tap) {
        const acc_t* sums = column_sums.data() + tap * m.g.out_w;
        grad_weight[co * taps + tap] = static_cast<scalar_t>(std::accumulate(sums, sums + m.g.out_w, acc_t(0)));
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
