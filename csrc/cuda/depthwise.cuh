// Depthwise layers on the GPU (one input channel per group, any channel
// multiplier): output channel co reads input channel co / multiplier only, so
// each output is a sum of kH * kW products read straight from one input
// plane. im2col would copy every input value kH * kW times to feed a GEMM
// whose reduction is only kH * kW long; these kernels read the planes in
// place, the neighbouring threads of a warp reading neighbouring values.
//
// - Forward: one thread per output, the sum over the taps (bias first, then
//   the taps in the kernel's order).
// - Input gradient: one thread per input value, gathering from every output
//   whose window holds it (output channel by output channel, taps in the
//   kernel's order): the lecture's convolution of the output gradient with
//   the rotated kernel, written as a gather, so no two threads add into the
//   same value and nothing needs atomics.
// - Weight gradient: one block per (output channel, tap); its threads sum
//   strided shares of the batch's products, then a tree in shared memory
//   adds the shares in a fixed order: bitwise the same on every run.
// Sums run in the accumulation type (float for half and bfloat16).
#pragma once

#include "../geometry.h"
#include "common.cuh"

#include <ATen/OpMathType.h>

#include <cstdint>

namespace custom_conv {
namespace gpu {

template <typename scalar_t>
__global__ void depthwise_forward_kernel(gpu_ptr<const scalar_t> input, gpu_ptr<const scalar_t> weight,
                                         gpu_ptr<const scalar_t> bias, const Conv2dGeometry g,
                                         gpu_ptr<scalar_t> output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(i, g.batch * g.out_channels * g.out_h * g.out_w) {
    const int64_t ow = i % g.out_w;
    const int64_t oh = i / g.out_w % g.out_h;
    const int64_t plane = i / (g.out_w * g.out_h);  // n * C_out + co
    const int64_t co = plane % g.out_channels, n = plane / g.out_channels;
    const gpu_ptr<const scalar_t> x = input + (n * g.in_channels + co / multiplier) * g.in_h * g.in_w;
    const gpu_ptr<const scalar_t> w = weight + co * taps;
    acc_t sum = bias != nullptr ? static_cast<acc_t>(bias[co]) : acc_t(0);
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) {
        continue;
      }
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
        if (iw >= 0 && iw < g.in_w) {
          sum += static_cast<acc_t>(w[ki * g.kernel_w + kj]) * static_cast<acc_t>(x[ih * g.in_w + iw]);
        }
      }
    }
    output[i] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
__global__ void depthwise_backward_input_kernel(gpu_ptr<const scalar_t> grad_output, gpu_ptr<const scalar_t> weight,
                                                const Conv2dGeometry g, gpu_ptr<scalar_t> grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  CUSTOM_CONV_GRID_STRIDE_LOOP(i, g.batch * g.in_channels * g.in_h * g.in_w) {
    const int64_t iw = i % g.in_w;
    const int64_t ih = i / g.in_w % g.in_h;
    const int64_t plane = i / (g.in_w * g.in_h);  // n * C_in + ci
    const int64_t ci = plane % g.in_channels, n = plane / g.in_channels;
    acc_t sum = acc_t(0);
    for (int64_t co = ci * multiplier; co < (ci + 1) * multiplier; ++co) {
      const gpu_ptr<const scalar_t> gy = grad_output + (n * g.out_channels + co) * g.out_h * g.out_w;
      const gpu_ptr<const scalar_t> w = weight + co * taps;
      for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
        // Output row oh reads input row oh * s - p + ki * d: this one when
        // that lands here exactly.
        const int64_t h = ih + g.pad_h - ki * g.dilation_h;
        if (h < 0 || h % g.stride_h != 0 || h / g.stride_h >= g.out_h) {
          continue;
        }
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const int64_t v = iw + g.pad_w - kj * g.dilation_w;
          if (v >= 0 && v % g.stride_w == 0 && v / g.stride_w < g.out_w) {
            sum += static_cast<acc_t>(w[ki * g.kernel_w + kj]) *
                   static_cast<acc_t>(gy[h / g.stride_h * g.out_w + v / g.stride_w]);
          }
        }
      }
    }
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

constexpr int kDepthwiseWeightThreads = 256;

// blockIdx.x = co * taps + tap.
template <typename scalar_t>
__global__ void __launch_bounds__(kDepthwiseWeightThreads)
depthwise_backward_weight_kernel(gpu_ptr<const scalar_t> grad_output, gpu_ptr<const scalar_t> input,
                                 const Conv2dGeometry g, gpu_ptr<scalar_t> grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ shared_array<acc_t, kDepthwiseWeightThreads> shares;
  const int64_t multiplier = g.out_channels / g.in_channels;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t co = blockIdx.x / taps, tap = blockIdx.x % taps;
  const int64_t ki = tap / g.kernel_w, kj = tap % g.kernel_w;
  const int64_t outputs = g.out_h * g.out_w;
  acc_t sum = acc_t(0);
  for (int64_t j = threadIdx.x; j < g.batch * outputs; j += kDepthwiseWeightThreads) {
    const int64_t n = j / outputs, o = j % outputs;
    const int64_t ih = o / g.out_w * g.stride_h - g.pad_h + ki * g.dilation_h;
    const int64_t iw = o % g.out_w * g.stride_w - g.pad_w + kj * g.dilation_w;
    if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) {
      sum += static_cast<acc_t>(grad_output[(n * g.out_channels + co) * outputs + o]) *
             static_cast<acc_t>(input[((n * g.in_channels + co / multiplier) * g.in_h + ih) * g.in_w + iw]);
    }
  }
  shares[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kDepthwiseWeightThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      shares[threadIdx.x] = shares[threadIdx.x] + shares[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    grad_weight[co * taps + tap] = static_cast<scalar_t>(static_cast<acc_t>(shares[0]));
  }
}

}  // namespace gpu
}  // namespace custom_conv
