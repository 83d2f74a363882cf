// adaptive_max_pool2d on the GPU, with the CPU version's results
// (../cpu/adaptive_max_pool2d.cpp) bit for bit: the same window_max over the
// same adaptive windows, and a backward that gathers, one thread per input
// element, the gradients of the outputs whose index names it, from the
// windows that hold it (avg_covering_windows), in the order the CPU kernel
// scatters them: deterministic, without atomics.
#include "../avg_pool2d_window.h"
#include "../geometry.h"
#include "../max_pool2d_window.h"
#include "../memory_format.h"
#include "common.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <tuple>

namespace custom_conv {
namespace gpu {
namespace {

template <typename scalar_t>
__global__ void adaptive_max_pool2d_forward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                                   const AvgPool2dGeometry a,
                                                   gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output,
                                                   gpu_ptr<int64_t> CUSTOM_CONV_RESTRICT indices) {
  using acc_t = at::opmath_type<scalar_t>;
  const Pool2dGeometry& g = a.pool;
  const int64_t out_plane = g.out_h * g.out_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, g.batch * g.channels * out_plane) {
    const int64_t ow = e % g.out_w;
    const int64_t oh = (e / g.out_w) % g.out_h;
    const int64_t p = e / out_plane;
    const AvgWindow w = avg_window(a, oh, ow);
    const WindowMax<acc_t> best = window_max<acc_t>(input + p * g.in_h * g.in_w, g, w.rows, w.cols);
    output[e] = static_cast<scalar_t>(best.value);
    indices[e] = best.index;
  }
}

template <typename scalar_t>
__global__ void adaptive_max_pool2d_backward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output,
                                                    gpu_ptr<const int64_t> CUSTOM_CONV_RESTRICT indices,
                                                    const AvgPool2dGeometry a,
                                                    gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const Pool2dGeometry& g = a.pool;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, g.batch * g.channels * in_plane) {
    const int64_t i = e % in_plane;
    const int64_t p = e / in_plane;
    const CandidateRange rows = avg_covering_windows(a, i / g.in_w, true);
    const CandidateRange cols = avg_covering_windows(a, i % g.in_w, false);
    const gpu_ptr<const int64_t> idx = indices + p * out_plane;
    const gpu_ptr<const scalar_t> go = grad_output + p * out_plane;
    acc_t sum = acc_t(0);
    for (int64_t oh = rows.first; oh <= rows.last; ++oh) {
      for (int64_t ow = cols.first; ow <= cols.last; ++ow) {
        const int64_t o = oh * g.out_w + ow;
        if (idx[o] == i) {
          sum += static_cast<acc_t>(go[o]);
        }
      }
    }
    grad_input[e] = static_cast<scalar_t>(sum);
  }
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_forward_cuda(const at::Tensor& input_,
                                                                    c10::IntArrayRef output_size) {
  check_floating_4d(input_, "adaptive_max_pool2d", "input");
  const AvgPool2dGeometry a = adaptive_avg_pool2d_geometry(input_.sizes(), output_size, "adaptive_max_pool2d");
  const Pool2dGeometry& g = a.pool;
  const DeviceGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options());
  at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options().dtype(at::kLong));
  const int64_t total = output.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "adaptive_max_pool2d_forward_cuda",
                                    [&] {
      CUSTOM_CONV_LAUNCH(grid_for(total), kThreads, adaptive_max_pool2d_forward_kernel<scalar_t>)(
          input.const_data_ptr<scalar_t>(), a, output.mutable_data_ptr<scalar_t>(),
          indices.mutable_data_ptr<int64_t>());
    });
  }
  const at::MemoryFormat format = max_pool2d_memory_format(input_);
  return {in_memory_format(output, format), in_memory_format(indices, format)};
}

at::Tensor adaptive_max_pool2d_backward_cuda(const at::Tensor& grad_output_, const at::Tensor& indices_,
                                             c10::IntArrayRef input_size) {
  TORCH_CHECK(grad_output_.dim() == 4, "adaptive_max_pool2d_backward: expected a 4-D grad_output, got ",
              grad_output_.dim(), "-D");
  const AvgPool2dGeometry a = adaptive_avg_pool2d_geometry(
      input_size, {grad_output_.size(2), grad_output_.size(3)}, "adaptive_max_pool2d_backward");
  check_avg_pool2d_grad_output(grad_output_, a, "adaptive_max_pool2d_backward");
  TORCH_CHECK(indices_.scalar_type() == at::kLong && indices_.sizes() == grad_output_.sizes() &&
                  indices_.device() == grad_output_.device(),
              "adaptive_max_pool2d_backward: expected int64 indices of grad_output's size and device");
  const DeviceGuard device_guard(grad_output_.device());
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor indices = indices_.contiguous();
  at::Tensor grad_input = at::empty(input_size, grad_output.options());
  const int64_t total = grad_input.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                    "adaptive_max_pool2d_backward_cuda", [&] {
      CUSTOM_CONV_LAUNCH(grid_for(total), kThreads, adaptive_max_pool2d_backward_kernel<scalar_t>)(
          grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), a,
          grad_input.mutable_data_ptr<scalar_t>());
    });
  }
  return grad_input;
}

}  // namespace

CUSTOM_CONV_GPU_LIBRARY_IMPL(m) {
  m.impl("adaptive_max_pool2d_forward", &adaptive_max_pool2d_forward_cuda);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward_cuda);
}

}  // namespace gpu
}  // namespace custom_conv
