// max_pool2d on the GPU: forward with indices, and backward, side by side,
// with the same results as the CPU version (../max_pool2d.cpp): the forward
// calls the same window_max (../max_pool2d_window.h), so windows, ties, NaN
// and initial indices agree; the backward adds the same sums in the same order.
#include "../geometry.h"
#include "../max_pool2d_window.h"
#include "common.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

namespace custom_conv {
namespace gpu {
namespace {

// One thread per output element.
template <typename scalar_t>
__global__ void max_pool2d_forward_kernel(const scalar_t* __restrict__ input, const Pool2dGeometry g,
                                          scalar_t* __restrict__ output, int64_t* __restrict__ indices) {
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
  const c10::cuda::CUDAGuard device_guard(input_.device());
  const at::Tensor input = input_.contiguous();
  at::Tensor output = at::empty({g.batch, g.channels, g.out_h, g.out_w}, input.options());
  at::Tensor indices = at::empty({g.batch, g.channels, g.out_h, g.out_w},
                                 input.options().dtype(at::kLong));
  const int64_t total = output.numel();
  if (total == 0) {
    return {output, indices};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool2d_forward_cuda", [&] {
    max_pool2d_forward_kernel<scalar_t>
        <<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            input.const_data_ptr<scalar_t>(), g, output.mutable_data_ptr<scalar_t>(),
            indices.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, indices};
}

// ---------------------------------------------------------------- backward
//
// Each input element's gradient is the sum of the output gradients whose
// index names it. We compute it as a gather, one thread per input element
// adding up those outputs itself: a scatter from the outputs would need
// atomic adds wherever windows overlap, and atomics add in whatever order
// the hardware runs them, so the result would change from run to run.
//
// A gather has to know which outputs can point at an element, and the op
// is not given the window geometry (kernel, stride, padding, dilation): only
// grad_output, indices and the input size. So the windows are recovered from
// the indices themselves, in two small passes:
//   1. extents: for every output row oh, the lowest and highest input row
//      that any index in that output row points at (over all planes and
//      columns); the same for every output column;
//   2. ranges: for every input row ih, the first and last output row whose
//      extent contains ih; the same for every input column.
// An output that points at (ih, iw) lies in row and column ranges that by
// construction contain it, so the gather over range(ih) x range(iw) finds
// every one of them, while each range is only as wide as the overlap of the
// windows (one or two rows for usual pooling). Both passes take minima and
// maxima, which are exact whatever the order, so they are deterministic too.
//
// The gather visits outputs in row-major order, the order in which the CPU
// kernel adds them, so both give bitwise the same gradients.

// Blocks [0, out_h) do the output rows, blocks [out_h, out_h + out_w) the
// output columns. extent_lo/extent_hi are indexed the same way.
__global__ void __launch_bounds__(kThreads)
index_extent_kernel(const int64_t* __restrict__ indices, int64_t planes, int64_t out_h, int64_t out_w,
                    int64_t in_h, int64_t in_w, int64_t* __restrict__ extent_lo,
                    int64_t* __restrict__ extent_hi) {
  __shared__ int64_t lo_part[kThreads];
  __shared__ int64_t hi_part[kThreads];
  const bool by_row = blockIdx.x < out_h;
  const int64_t line = by_row ? blockIdx.x : blockIdx.x - out_h;
  const int64_t across = by_row ? out_w : out_h;  // outputs per plane on this line
  const int64_t count = planes * across;
  int64_t lo = std::numeric_limits<int64_t>::max();
  int64_t hi = -1;
  for (int64_t j = threadIdx.x; j < count; j += kThreads) {
    const int64_t p = j / across, t = j % across;
    const int64_t o = by_row ? line * out_w + t : t * out_w + line;
    const int64_t i = indices[p * out_h * out_w + o];
    if (i < 0 || i >= in_h * in_w) {
      continue;  // a window of padding only: no input to route to (see the CPU kernel)
    }
    const int64_t pos = by_row ? i / in_w : i % in_w;
    lo = pos < lo ? pos : lo;
    hi = pos > hi ? pos : hi;
  }
  lo_part[threadIdx.x] = lo;
  hi_part[threadIdx.x] = hi;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) {
      const int64_t other_lo = lo_part[threadIdx.x + width];
      const int64_t other_hi = hi_part[threadIdx.x + width];
      lo_part[threadIdx.x] = other_lo < lo_part[threadIdx.x] ? other_lo : lo_part[threadIdx.x];
      hi_part[threadIdx.x] = other_hi > hi_part[threadIdx.x] ? other_hi : hi_part[threadIdx.x];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    extent_lo[blockIdx.x] = lo_part[0];
    extent_hi[blockIdx.x] = hi_part[0];
  }
}

// One thread per input row (then per input column): the outputs along that
// dimension whose extent contains it. An empty range is first > last.
__global__ void candidate_range_kernel(const int64_t* __restrict__ extent_lo,
                                       const int64_t* __restrict__ extent_hi, int64_t out_h,
                                       int64_t out_w, int64_t in_h, int64_t in_w,
                                       int64_t* __restrict__ first, int64_t* __restrict__ last) {
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, in_h + in_w) {
    const bool by_row = e < in_h;
    const int64_t pos = by_row ? e : e - in_h;
    const int64_t base = by_row ? 0 : out_h;
    const int64_t n = by_row ? out_h : out_w;
    int64_t lo = n, hi = -1;
    for (int64_t o = 0; o < n; ++o) {
      if (extent_lo[base + o] <= pos && pos <= extent_hi[base + o]) {
        lo = o < lo ? o : lo;
        hi = o;
      }
    }
    first[e] = lo;
    last[e] = hi;
  }
}

template <typename scalar_t>
__global__ void max_pool2d_backward_kernel(const scalar_t* __restrict__ grad_output,
                                           const int64_t* __restrict__ indices,
                                           const int64_t* __restrict__ first,
                                           const int64_t* __restrict__ last, int64_t planes,
                                           int64_t out_h, int64_t out_w, int64_t in_h, int64_t in_w,
                                           scalar_t* __restrict__ grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t in_plane = in_h * in_w, out_plane = out_h * out_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(e, planes * in_plane) {
    const int64_t i = e % in_plane;
    const int64_t p = e / in_plane;
    const int64_t ih = i / in_w, iw = i % in_w;
    const int64_t* idx = indices + p * out_plane;
    const scalar_t* go = grad_output + p * out_plane;
    acc_t sum = acc_t(0);
    for (int64_t oh = first[ih]; oh <= last[ih]; ++oh) {
      for (int64_t ow = first[in_h + iw]; ow <= last[in_h + iw]; ++ow) {
        const int64_t o = oh * out_w + ow;
        if (idx[o] == i) {
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
    c10::IntArrayRef input_size) {
  check_max_pool2d_backward(grad_output_, indices_, input_size);
  const c10::cuda::CUDAGuard device_guard(grad_output_.device());
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor indices = indices_.contiguous();
  at::Tensor grad_input = at::empty(input_size, grad_output.options());
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t planes = input_size[0] * input_size[1];
  const int64_t in_h = input_size[2], in_w = input_size[3];
  const int64_t out_h = grad_output.size(2), out_w = grad_output.size(3);
  if (grad_output.numel() == 0) {
    return grad_input.zero_();
  }
  TORCH_CHECK(out_h + out_w <= 0x7fffffff, "max_pool2d_backward: output too large");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  // extent_lo, extent_hi: out_h + out_w each; first, last: in_h + in_w each.
  at::Tensor scratch = at::empty({2 * (out_h + out_w) + 2 * (in_h + in_w)},
                                 indices.options());
  int64_t* extent_lo = scratch.mutable_data_ptr<int64_t>();
  int64_t* extent_hi = extent_lo + (out_h + out_w);
  int64_t* first = extent_hi + (out_h + out_w);
  int64_t* last = first + (in_h + in_w);

  index_extent_kernel<<<static_cast<unsigned int>(out_h + out_w), kThreads, 0, stream>>>(
      indices.const_data_ptr<int64_t>(), planes, out_h, out_w, in_h, in_w, extent_lo, extent_hi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  candidate_range_kernel<<<grid_for(in_h + in_w), kThreads, 0, stream>>>(
      extent_lo, extent_hi, out_h, out_w, in_h, in_w, first, last);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "max_pool2d_backward_cuda", [&] {
    max_pool2d_backward_kernel<scalar_t><<<grid_for(grad_input.numel()), kThreads, 0, stream>>>(
        grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), first, last,
        planes, out_h, out_w, in_h, in_w, grad_input.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, CUDA, m) {
  m.impl("max_pool2d_forward", &max_pool2d_forward_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
}

}  // namespace gpu
}  // namespace custom_conv
