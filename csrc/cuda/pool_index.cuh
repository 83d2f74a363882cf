// The index arithmetic the GPU's pooling kernels share (max_pool2d.cu,
// avg_pool2d.cu, adaptive_max_pool2d.cu): which divisors a call takes, and
// how a thread finds its element in a channels-last tensor. Each kernel has
// one thread per element, in the memory order of the tensor it writes.
#pragma once

#include "../geometry.h"
#include "../max_pool2d_window.h"
#include "../memory_format.h"
#include "../pool_divisors.h"
#include "common.cuh"
#include "divisor.cuh"

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

namespace custom_conv {
namespace gpu {

// Whether every index and window bound of a call stays below
// LaunchLimits::narrow_index_limit (2^30), so that its kernels may index in
// 32 bits, by Divisors. Adaptive windows also multiply a position by a size
// (avg_pool2d_window.h: o * in, below (out + 1) * (in + 1)).
inline bool indices_fit_32_bits(const Pool2dGeometry& g, bool adaptive) {
  const int64_t limit = launch_limits().narrow_index_limit;
  const auto reach = [](int64_t size, int64_t pad, int64_t stride, int64_t kernel, int64_t dilation) {
    return size + pad + stride + (kernel - 1) * dilation;
  };
  return g.batch * g.channels * std::max(g.in_h * g.in_w, g.out_h * g.out_w) < limit &&
         reach(g.in_h, g.pad_h, g.stride_h, g.kernel_h, g.dilation_h) < limit &&
         reach(g.in_w, g.pad_w, g.stride_w, g.kernel_w, g.dilation_w) < limit &&
         (!adaptive || ((g.out_h + 1) * (g.in_h + 1) < limit && (g.out_w + 1) * (g.in_w + 1) < limit));
}

// Runs launch(PoolDivisors<D>{g}) with D the narrowest that fits the call:
// Divisor (32-bit indices) or WideDivisor (64-bit). Max-pooling's windows;
// the overload below takes average pooling's, adaptive ones included.
template <typename Launch>
void with_divisors(const Pool2dGeometry& g, const Launch& launch, bool adaptive = false) {
  if (indices_fit_32_bits(g, adaptive)) {
    launch(PoolDivisors<Divisor>(g));
  } else {
    launch(PoolDivisors<WideDivisor>(g));
  }
}

template <typename Launch>
void with_divisors(const AvgPool2dGeometry& a, const Launch& launch) {
  with_divisors(a.pool, launch, a.adaptive);
}

// Whether a pooling forward reads `input` channels-last in place: it
// suggests channels-last (so the results are channels-last, torch's rule)
// and is laid out so (a slice of one is copied to NCHW first).
inline bool pools_channels_last_in_place(const at::Tensor& input) {
  return max_pool2d_memory_format(input) == at::MemoryFormat::ChannelsLast &&
         input.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// One plane of a channels-last tensor, indexed as an NCHW plane is (ih * W +
// iw): its elements lie `channels` apart.
template <typename T>
struct ChannelsLastPlane {
  gpu_ptr<T> first;  // element (n, c, 0, 0)
  int64_t channels;
  C10_HOST_DEVICE T& operator[](int64_t i) const { return first[i * channels]; }
};

// Element e of a channels-last (N, C, H, W) tensor, in memory order (the
// channel fastest), as (n, h, w, c), by Divisors of C, W and H.
template <typename I>
struct ChannelsLastElement {
  I n, h, w, c;

  template <typename D>
  __device__ __forceinline__ ChannelsLastElement(I e, const D& channels, const D& cols, const D& rows) {
    const I pixel = channels.div(e);  // (n, h, w)
    c = channels.mod(e, pixel);
    const I row = cols.div(pixel);    // (n, h)
    w = cols.mod(pixel, row);
    n = rows.div(row);
    h = rows.mod(row, n);
  }

  // The plane of this element's (n, c) in a channels-last tensor of `plane`
  // positions a plane.
  template <typename T>
  __device__ __forceinline__ ChannelsLastPlane<T> plane_in(gpu_ptr<T> tensor, int64_t plane, int64_t channels) const {
    return {tensor + static_cast<int64_t>(n) * plane * channels + c, channels};
  }
};

// Element e of an NCHW tensor as its plane (n * C + c) and its position in
// the plane, (h, w) and h * W + w, by Divisors of H * W and W.
template <typename I>
struct PlaneElement {
  I plane, i, h, w;

  template <typename D>
  __device__ __forceinline__ PlaneElement(I e, const D& plane_size, const D& cols) {
    plane = plane_size.div(e);
    i = plane_size.mod(e, plane);
    h = cols.div(i);
    w = cols.mod(i, h);
  }
};

// The gradient of input element i (ih * W + iw) of one plane under max
// pooling: the sum of the plane's output gradients `go` whose indices `idx`
// name it (planes indexed as NCHW ones are: pointers, or ChannelsLastPlane),
// over the candidate windows rows x cols in row-major order, the order in
// which the CPU kernels scatter them; a window that routes(oh, ow) rejects
// adds nothing, whatever its index says.
template <typename acc_t, typename I, typename Indices, typename Grads, typename Routes>
__device__ __forceinline__ acc_t routed_gradient(const Indices& idx, const Grads& go, const CandidateRange& rows,
                                                 const CandidateRange& cols, int64_t out_w, I i,
                                                 const Routes& routes) {
  acc_t sum = acc_t(0);
  for (I oh = static_cast<I>(rows.first); oh <= rows.last; ++oh) {
    for (I ow = static_cast<I>(cols.first); ow <= cols.last; ++ow) {
      const I o = oh * static_cast<I>(out_w) + ow;
      if (idx[o] == i && routes(oh, ow)) {
        sum += static_cast<acc_t>(go[o]);
      }
    }
  }
  return sum;
}

}  // namespace gpu
}  // namespace custom_conv
