// conv2d on the direct kernels (direct_conv2d.h): the tensors, scratch
// buffers, threads and the choice of when to use them. conv2d.cpp tries these
// first and takes its im2col route when they return false.
#pragma once

#include "geometry.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace custom_conv {

// The weight gradient is summed over the batch, on either route. Each of at
// most kWeightPartials blocks of samples accumulates its own partial
// gradient, and the partials are then added in block order, so the result is
// the same on every run. Their memory is bounded by kPartialsBudget values.
constexpr int64_t kWeightPartials = 8;
constexpr int64_t kPartialsBudget = int64_t{1} << 22;

// The forward (rotate = false) or, for stride 1, the input gradient (rotate =
// true: `in` is then grad_output) into `out`, when the direct kernels fit
// the layer; false otherwise. Tensors are contiguous.
bool try_direct(const Conv2dGeometry& g, const at::Tensor& in, const at::Tensor& weight,
                const at::Tensor& bias, bool rotate, at::Tensor& out);

// The weight gradient into grad_weight when the direct kernels fit; false
// otherwise. Tensors are contiguous.
bool try_direct_weight_grad(const Conv2dGeometry& g, const at::Tensor& input,
                            const at::Tensor& grad_output, at::Tensor& grad_weight);

}  // namespace custom_conv
