// max_pool2d on the GPU: forward with indices, and backward, side by side,
// with the same results as the CPU version (../max_pool2d.cpp): the forward
// calls the same window_max (../max_pool2d_window.h), so windows, ties, NaN
// and initial indices agree; the backward adds the same sums in the same order.
// The forward reads a channels-last input in its own layout (no copy before
// or after); the backward answers in NCHW, as the Meta kernel says.
#include "../geometry.h"
#include "../max_pool2d_window.h"
#include "../memory_format.h"
#include "common.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <tuple>

namespace custom_conv {
namespace gpu {
namespace {

// One thread per output element.
template <typename scalar_t>
__global__ void max_pool2d_forward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                          const Pool2dGeometry g, gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output,
                                          gpu_ptr<int64_t> CUSTOM_CONV_RESTRICT indices) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t total = g.batch * g.channels * out_plane;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, total) {
    const int64_t ow = e % g.out_w;
    const int64_t oh = (e / g.out_w) % g.out_h;
    const int64_t p = e / out_plane;
    const WindowMax<acc_t> best = window_max<acc_t>(input + p * g.in_h * g.in_w, g, oh, ow);
    output[e] = static_cast<scalar_t>(best.value);
    indices[e] = best.index;
  }
}

// One plane of a channels-last tensor, indexed as an NCHW plane is (ih * W +
// iw): its elements lie `channels` apart.
template <typename T>
struct ChannelsLastPlane {
  gpu_ptr<T> first;  // element (n, c, 0, 0)
  int64_t channels;
  C10_HOST_DEVICE T& operator[](int64_t i) const { return first[i * channels]; }
};

// Channels-last input and outputs, one thread per output element in their
// memory order (the channel fastest): neighbouring threads read neighbouring
// channels, and no layout copy is needed before or after. The same windows,
// values and indices (positions within the plane) as the NCHW kernel.
template <typename scalar_t>
__global__ void max_pool2d_forward_channels_last_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT input,
                                                        const Pool2dGeometry g,
                                                        gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT output,
                                                        gpu_ptr<int64_t> CUSTOM_CONV_RESTRICT indices) {
  using acc_t = at::opmath_type<scalar_t>;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, g.batch * g.out_h * g.out_w * g.channels) {
    const int64_t c = e % g.channels;
    const int64_t ow = e / g.channels % g.out_w;
    const int64_t oh = e / (g.channels * g.out_w) % g.out_h;
    const int64_t n = e / (g.channels * g.out_w * g.out_h);
    const ChannelsLastPlane<const scalar_t> plane{input + n * g.in_h * g.in_w * g.channels + c, g.channels};
    const WindowMax<acc_t> best = window_max<acc_t>(plane, g, oh, ow);
    output[e] = static_cast<scalar_t>(best.value);
    indices[e] = best.index;
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cuda(
    const at::Tensor& input_,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode) {
  check_floating_4d(input_, "max_pool2d", "input");
  const Pool2dGeometry g = max_pool2d_geometry(
      input_.sizes(), kernel_size, stride, padding, dilation, ceil_mode);
  const DeviceGuard device_guard(input_.device());
  const at::MemoryFormat format = max_pool2d_memory_format(input_);
  if (format == at::MemoryFormat::ChannelsLast && input_.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    const at::Tensor& input = input_;
    const auto options = input.options().memory_format(at::MemoryFormat::ChannelsLast);
    at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, options);
    at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w}, options.dtype(at::kLong));
    if (output.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_forward_cuda", [&] {
        CUSTOM_CONV_LAUNCH(grid_for(output.numel()), kThreads, max_pool2d_forward_channels_last_kernel<scalar_t>)(
            input.const_data_ptr<scalar_t>(), g, output.mutable_data_ptr<scalar_t>(),
            indices.mutable_data_ptr<int64_t>());
      });
    }
    return {output, indices};
  }
  const at::Tensor input = input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options());
  at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w},
                                 input.options().dtype(at::kLong));
  const int64_t total = output.numel();
  if (total == 0) {
    return {in_memory_format(output, format), in_memory_format(indices, format)};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_forward_cuda", [&] {
    CUSTOM_CONV_LAUNCH(grid_for(total), kThreads, max_pool2d_forward_kernel<scalar_t>)(
        input.const_data_ptr<scalar_t>(), g, output.mutable_data_ptr<scalar_t>(),
        indices.mutable_data_ptr<int64_t>());
  });
  return {in_memory_format(output, format), in_memory_format(indices, format)};
}

// ---------------------------------------------------------------- backward
//
// Each input element's gradient is the sum of the output gradients whose
// index names it. We compute it as a gather, one thread per input element
// adding up those outputs itself: a scatter from the outputs would need
// atomic adds wherever windows overlap, and atomics add in whatever order
// the hardware runs them, so the result would change from run to run. The
// candidates are the outputs whose window covers the element; the gather
// visits them in row-major order, the order in which the CPU kernel adds
// them, so both give bitwise the same gradients.

template <typename scalar_t>
__global__ void max_pool2d_backward_kernel(gpu_ptr<const scalar_t> CUSTOM_CONV_RESTRICT grad_output,
                                           gpu_ptr<const int64_t> CUSTOM_CONV_RESTRICT indices,
                                           const Pool2dGeometry g, gpu_ptr<scalar_t> CUSTOM_CONV_RESTRICT grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, g.batch * g.channels * in_plane) {
    const int64_t i = e % in_plane;
    const int64_t p = e / in_plane;
    const CandidateRange rows = covering_windows(i / g.in_w, g.stride_h, g.pad_h, g.kernel_h, g.dilation_h, g.out_h);
    const CandidateRange cols = covering_windows(i % g.in_w, g.stride_w, g.pad_w, g.kernel_w, g.dilation_w, g.out_w);
    const gpu_ptr<const int64_t> idx = indices + p * out_plane;
    const gpu_ptr<const scalar_t> go = grad_output + p * out_plane;
    acc_t sum = acc_t(0);
    for (int64_t oh = rows.first; oh <= rows.last; ++oh) {
      for (int64_t ow = cols.first; ow <= cols.last; ++ow) {
        const int64_t o = oh * g.out_w + ow;
        // A window of padding only reports an index that is not in it, and
        // routes nothing (see ../max_pool2d_window.h).
        if (idx[o] == i && window_holds_input(g, oh, ow)) {
          sum += static_cast<acc_t>(go[o]);
        }
      }
    }
    grad_input[e] = static_cast<scalar_t>(sum);
  }
}

at::Tensor max_pool2d_backward_cuda(
    const at::Tensor& grad_output_,
    const at::Tensor& indices_,
    c10::IntArrayRef input_size,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode) {
  const Pool2dGeometry g = max_pool2d_backward_geometry(
      grad_output_, indices_, input_size, kernel_size, stride, padding, dilation, ceil_mode);
  const DeviceGuard device_guard(grad_output_.device());
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor indices = indices_.contiguous();
  at::Tensor grad_input = at::empty(input_size, grad_output.options());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "max_pool2d_backward_cuda", [&] {
    CUSTOM_CONV_LAUNCH(grid_for(grad_input.numel()), kThreads, max_pool2d_backward_kernel<scalar_t>)(
        grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), g,
        grad_input.mutable_data_ptr<scalar_t>());
  });
  return grad_input;
}

}  // namespace

CUSTOM_CONV_GPU_LIBRARY_IMPL(m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
}

}  // namespace gpu
}  // namespace custom_conv
