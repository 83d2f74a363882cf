// adaptive_max_pool2d on the CPU: max-pooling's window_max over average
// pooling's adaptive windows (both window headers), and max-pooling's
// backward: each output gradient routed to the element its index names, one
// thread per plane so that overlapping windows add up in a fixed order
// without atomics. Adaptive windows always hold input, so every index names
// an element of its window.
#include "../avg_pool2d_window.h"
#include "../geometry.h"
#include "../max_pool2d_window.h"
#include "../memory_format.h"
#include "max_pool_gradient.h"
#include "parallel.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace custom_conv {
namespace {

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_forward_cpu(const at::Tensor& input_,
                                                                   c10::IntArrayRef output_size) {
  check_floating_4d(input_, "adaptive_max_pool2d", "input");
  const AvgPool2dGeometry a = adaptive_avg_pool2d_geometry(input_.sizes(), output_size, "adaptive_max_pool2d");
  const Pool2dGeometry& g = a.pool;
  const at::Tensor input = input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options());
  at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().dtype(at::kLong));
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  if (output.numel() > 0) {
    const PoolDivisors<WideDivisor> d(g);
    std::vector<AvgWindow> windows(out_plane);
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        windows[oh * g.out_w + ow] = avg_window(a, d, oh, ow);
      }
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "adaptive_max_pool2d_forward_cpu",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* in = input.const_data_ptr<scalar_t>();
      scalar_t* out = output.mutable_data_ptr<scalar_t>();
      int64_t* idx = indices.mutable_data_ptr<int64_t>();
      at::parallel_for(0, g.planes(), plane_grain(in_plane + out_plane), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          for (int64_t o = 0; o < out_plane; ++o) {
            const WindowMax<acc_t> best = window_max<acc_t>(in + p * in_plane, g, windows[o].rows, windows[o].cols);
            out[p * out_plane + o] = static_cast<scalar_t>(best.value);
            idx[p * out_plane + o] = best.index;
          }
        }
      });
    });
  }
  const at::MemoryFormat format = max_pool2d_memory_format(input_);
  return {in_memory_format(output, format), in_memory_format(indices, format)};
}

at::Tensor adaptive_max_pool2d_backward_cpu(const at::Tensor& grad_output_, const at::Tensor& indices_,
                                            c10::IntArrayRef input_size) {
  const AvgPool2dGeometry a = adaptive_max_pool2d_backward_geometry(grad_output_, indices_, input_size);
  const Pool2dGeometry& g = a.pool;
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor indices = indices_.contiguous();
  // Adaptive windows always hold input: every output routes its gradient.
  // Answered in the indices' layout, as max_pool2d's gradient (../memory_format.h).
  return in_memory_format(route_max_pool_gradients(grad_output, indices, input_size, g.planes(), g.in_h * g.in_w,
                                                   g.out_h * g.out_w, nullptr),
                          max_pool2d_gradient_memory_format(indices_));
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, CPU, m) {
  m.impl("adaptive_max_pool2d_forward", &adaptive_max_pool2d_forward_cpu);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward_cpu);
}

}  // namespace custom_conv
