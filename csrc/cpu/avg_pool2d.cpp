// avg_pool2d and adaptive_avg_pool2d on the CPU: forward and backward, one
// pair of kernels for both (the adaptive windows are per-output windows of
// the same walk, avg_pool2d_window.h).
//
// The forward is a linear map A from input to output: row o of A holds
// 1 / divisor(o) on window o's elements. The backward multiplies by A^T:
// each input element gathers the output gradients of the windows that hold
// it, each divided by that window's divisor. A gather, not a scatter, so
// that the CPU and the GPU kernels add the same terms in the same order.
#include "../avg_pool2d_window.h"
#include "../geometry.h"
#include "../memory_format.h"
#include "parallel.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace custom_conv {
namespace {

// Planes whose windows are summed side by side (window_means).
constexpr int64_t kSidePlanes = 8;

// One window's means in kSidePlanes planes `in_plane` apart: each plane's sum
// is window_mean's sequence of additions (the same bits), but the planes'
// sums do not wait on each other. One plane at a time, each addition waited
// on the one before it: a ResNet head's 7x7 -> 1 forward (49 additions in a
// row per plane) took 0.19 ms where torch takes 0.06, side by side 0.09; a
// 2x2/2 pooling of 64 channels at 56x56, batch 32, 3.2 -> 1.3 ms.
template <typename acc_t, typename scalar_t>
void window_means(const scalar_t* in, int64_t in_plane, int64_t in_w, const AvgWindow& w,
                  acc_t (&sums)[kSidePlanes]) {
  for (acc_t& sum : sums) sum = acc_t(0);
  if (w.rows.empty() || w.cols.empty()) {
    return;  // as window_mean: 0, not divided
  }
  for (int64_t ih = w.rows.first; ih < w.rows.end; ++ih) {
    for (int64_t iw = w.cols.first; iw < w.cols.end; ++iw) {
      const scalar_t* at = in + ih * in_w + iw;
      for (int64_t j = 0; j < kSidePlanes; ++j) sums[j] += static_cast<acc_t>(at[j * in_plane]);
    }
  }
  for (acc_t& sum : sums) sum /= static_cast<acc_t>(w.divisor);
}

// Threads over planes (N * C), kSidePlanes at a time; half and bfloat16 add
// in float and round once per output.
at::Tensor avg_pool2d_forward_impl(const at::Tensor& input_, const AvgPool2dGeometry& a) {
  const Pool2dGeometry& g = a.pool;
  const at::Tensor input = input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options());
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  if (output.numel() > 0) {
    // Every plane has the same windows: computed once, not once per plane.
    const PoolDivisors<WideDivisor> d(g);
    std::vector<AvgWindow> windows(out_plane);
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        windows[oh * g.out_w + ow] = avg_window(a, d, oh, ow);
      }
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "avg_pool2d_forward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* in = input.const_data_ptr<scalar_t>();
      scalar_t* out = output.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, g.planes(), plane_grain(in_plane + out_plane), [&](int64_t begin, int64_t end) {
        int64_t p = begin;
        for (; p + kSidePlanes <= end; p += kSidePlanes) {
          for (int64_t o = 0; o < out_plane; ++o) {
            acc_t means[kSidePlanes];
            window_means(in + p * in_plane, in_plane, g.in_w, windows[o], means);
            for (int64_t j = 0; j < kSidePlanes; ++j) {
              out[(p + j) * out_plane + o] = static_cast<scalar_t>(means[j]);
            }
          }
        }
        for (; p < end; ++p) {
          for (int64_t o = 0; o < out_plane; ++o) {
            out[p * out_plane + o] = static_cast<scalar_t>(window_mean<acc_t>(in + p * in_plane, g.in_w, windows[o]));
          }
        }
      });
    });
  }
  return in_memory_format(output, max_pool2d_memory_format(input_));
}

// Computed in NCHW, answered in the layout the output gradient suggests
// (../memory_format.h), as the GPU's.
at::Tensor avg_pool2d_backward_impl(const at::Tensor& grad_output_, c10::IntArrayRef input_size,
                                    const AvgPool2dGeometry& a) {
  const Pool2dGeometry& g = a.pool;
  const at::Tensor grad_output = grad_output_.contiguous();
  at::Tensor grad_input = at::empty(input_size, grad_output.options());
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const at::MemoryFormat format = avg_pool2d_gradient_memory_format(grad_output_);
  if (grad_input.numel() == 0) {
    return in_memory_format(grad_input, format);
  }
  // Every plane has the same windows: their covering ranges and divisors are
  // worked out once, not once per element (integer divisions, which made a
  // ResNet head's 7x7 -> 1 backward 30x slower than its forward).
  std::vector<CandidateRange> rows(g.in_h), cols(g.in_w);
  const PoolDivisors<WideDivisor> d(g);
  for (int64_t ih = 0; ih < g.in_h; ++ih) rows[ih] = avg_covering_windows(a, d, ih, true);
  for (int64_t iw = 0; iw < g.in_w; ++iw) cols[iw] = avg_covering_windows(a, d, iw, false);
  std::vector<int64_t> divisors(out_plane);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) divisors[oh * g.out_w + ow] = avg_window(a, d, oh, ow).divisor;
  }
  struct {  // divisors.row(oh)[ow], as gather_gradient reads them
    const int64_t* table;
    int64_t out_w;
    const int64_t* row(int64_t oh) const { return table + oh * out_w; }
  } divisor_rows{divisors.data(), g.out_w};
  // Where no two windows share an input element (global and evenly divided
  // adaptive pooling, kernel == stride without padding), each input's
  // gradient is one term: its window's gradient over the divisor, worked out
  // once per window and copied to the window's elements (the ResNet head's
  // 7x7 -> 1 backward 8x faster than gathering it per element). The same
  // sum as gather_gradient's, 0 + term, so the same bits.
  const auto single = [](const CandidateRange& r) { return r.first >= r.last; };
  const bool disjoint = std::all_of(rows.begin(), rows.end(), single) && std::all_of(cols.begin(), cols.end(), single);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_output.scalar_type(), "avg_pool2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
    if (disjoint) {
      at::parallel_for(0, g.planes(), plane_grain(in_plane + out_plane), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> terms(out_plane);
        for (int64_t p = begin; p < end; ++p) {
          for (int64_t o = 0; o < out_plane; ++o) {
            terms[o] = static_cast<scalar_t>(acc_t(0) + static_cast<acc_t>(go[p * out_plane + o]) /
                                                            static_cast<acc_t>(divisors[o]));
          }
          for (int64_t ih = 0; ih < g.in_h; ++ih) {
            scalar_t* row = gi + p * in_plane + ih * g.in_w;
            if (rows[ih].first > rows[ih].last) {  // in no window
              std::fill(row, row + g.in_w, scalar_t(0));
              continue;
            }
            const scalar_t* window_row = terms.data() + rows[ih].first * g.out_w;
            for (int64_t iw = 0; iw < g.in_w; ++iw) {
              row[iw] = cols[iw].first > cols[iw].last ? scalar_t(0) : window_row[cols[iw].first];
            }
          }
        }
      });
      return;
    }
    at::parallel_for(0, g.planes(), plane_grain(in_plane + out_plane), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        for (int64_t ih = 0; ih < g.in_h; ++ih) {
          for (int64_t iw = 0; iw < g.in_w; ++iw) {
            gi[p * in_plane + ih * g.in_w + iw] = static_cast<scalar_t>(
                gather_gradient<acc_t>(go + p * out_plane, g.out_w, rows[ih], cols[iw], divisor_rows));
          }
        }
      }
    });
  });
  return in_memory_format(grad_input, format);
}

at::Tensor avg_pool2d_forward_cpu(const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                  c10::optional<int64_t> divisor_override) {
  check_floating_4d(input, "avg_pool2d", "input");
  return avg_pool2d_forward_impl(input, avg_pool2d_geometry(input.sizes(), kernel_size, stride, padding, ceil_mode,
                                                            count_include_pad, divisor_override));
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, c10::IntArrayRef input_size,
                                   c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad, c10::optional<int64_t> divisor_override) {
  const AvgPool2dGeometry a = avg_pool2d_backward_geometry(grad_output, input_size, kernel_size, stride, padding,
                                                           ceil_mode, count_include_pad, divisor_override);
  return avg_pool2d_backward_impl(grad_output, input_size, a);
}

at::Tensor adaptive_avg_pool2d_forward_cpu(const at::Tensor& input, c10::IntArrayRef output_size) {
  check_floating_4d(input, "adaptive_avg_pool2d", "input");
  return avg_pool2d_forward_impl(input, adaptive_avg_pool2d_geometry(input.sizes(), output_size));
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, c10::IntArrayRef input_size) {
  const AvgPool2dGeometry a =
      adaptive_pool2d_backward_geometry(grad_output, input_size, "adaptive_avg_pool2d_backward");
  return avg_pool2d_backward_impl(grad_output, input_size, a);
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, CPU, m) {
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
  m.impl("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward_cpu);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cpu);
}

}  // namespace custom_conv
