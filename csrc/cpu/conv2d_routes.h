// The CPU's convolution algorithms ("routes"), each as the three functions
// that the ops in conv2d.cpp call once the chooser (../conv2d_algorithm.h)
// has picked it:
//   im2col     conv2d_im2col.cpp     unroll receptive fields, multiply (gemm/)
//   direct     conv2d_direct.cpp     register-blocked vector kernels (direct/)
//   depthwise  conv2d_depthwise.cpp  one input plane per output channel
//   winograd   conv2d_winograd.cpp   3x3 stride 1 by F(2x2, 3x3), products by gemm/
// Every function takes the layer's geometry and contiguous tensors, and
// writes every element of its (pre-allocated) result.
//
// Each route also states what it can compute, as `<route>_refusal`: null
// when it supports this pass of the layer in this dtype, else the reason it
// cannot. Its three functions check that on entry, and the chooser asks it
// before weighing costs, so a route's limits are written once, here beside
// its code. (Whether a supported route is *worth* running is the chooser's
// business: ../conv2d_algorithm.cpp.)
#pragma once

#include "../conv2d_algorithm.h"
#include "../geometry.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace custom_conv {

// A route's refusal, checked on entry: an error naming the route, the pass
// and the reason (a caller bug: the chooser never sends a route what it
// refuses).
void check_route_supports(const char* refusal, const char* route, Conv2dPass pass);

// The constants that cut a route's work into blocks (tiles, channel blocks,
// batch chunks, partial sums), by name, for the tests that sweep every
// remainder of every blocking (the op custom_conv::cpu_route_constants). A
// name may repeat: a table of blockings gives one entry per row.
using RouteConstants = std::vector<std::pair<std::string, int64_t>>;
std::tuple<std::vector<std::string>, std::vector<int64_t>> cpu_route_constants();
void append_im2col_constants(RouteConstants& out);
void append_direct_constants(RouteConstants& out);
void append_winograd_constants(RouteConstants& out);

// The weight gradient is summed over the batch. Each of at most
// kWeightPartials blocks of samples accumulates its own partial gradient, and
// the partials are then added in block order, so the result is the same on
// every run and for every thread count. Their memory is bounded by
// kPartialsBudget values. (Shared by the im2col and direct routes.)
constexpr int64_t kWeightPartials = 8;
constexpr int64_t kPartialsBudget = int64_t{1} << 22;

// Every layer, pass and dtype: the fallback.
const char* conv2d_im2col_refusal(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype);
void conv2d_im2col_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, at::Tensor& output);
void conv2d_im2col_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                  const at::Tensor& weight, at::Tensor& grad_input);
void conv2d_im2col_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                   const at::Tensor& grad_output, at::Tensor& grad_weight);

// float32 and float64 on CPUs with direct kernels (the avx2 and avx512
// levels); every geometry, the input gradient phase by phase.
const char* conv2d_direct_refusal(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype);
void conv2d_direct_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, at::Tensor& output);
// The forward kernel run on the output gradient, phase by phase for strides.
void conv2d_direct_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                  const at::Tensor& weight, at::Tensor& grad_input);
void conv2d_direct_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                   const at::Tensor& grad_output, at::Tensor& grad_weight);

// One input channel per group, any dtype.
const char* conv2d_depthwise_refusal(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype);
void conv2d_depthwise_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& bias, at::Tensor& output);
void conv2d_depthwise_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                     const at::Tensor& weight, at::Tensor& grad_input);
void conv2d_depthwise_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                      const at::Tensor& grad_output, at::Tensor& grad_weight);

// float32, 3x3, stride 1, no dilation, one group, padding at most 2.
const char* conv2d_winograd_refusal(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype);
void conv2d_winograd_forward(const Conv2dGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& bias, at::Tensor& output);
void conv2d_winograd_backward_input(const Conv2dGeometry& g, const at::Tensor& grad_output,
                                    const at::Tensor& weight, at::Tensor& grad_input);
void conv2d_winograd_backward_weight(const Conv2dGeometry& g, const at::Tensor& input,
                                     const at::Tensor& grad_output, at::Tensor& grad_weight);
// Whether the weight gradient runs in the plane layout (wide planes: both
// operands of its products repacked), for the chooser's costs.
bool conv2d_winograd_weight_grad_in_planes(const Conv2dGeometry& g);

// A route as the ops call it: its contract and its three passes.
struct CpuRoute {
  const char* (*refusal)(const Conv2dGeometry&, Conv2dPass, at::ScalarType);
  void (*forward)(const Conv2dGeometry&, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                  at::Tensor& output);
  void (*backward_input)(const Conv2dGeometry&, const at::Tensor& grad_output, const at::Tensor& weight,
                         at::Tensor& grad_input);
  void (*backward_weight)(const Conv2dGeometry&, const at::Tensor& input, const at::Tensor& grad_output,
                          at::Tensor& grad_weight);
};
const CpuRoute& cpu_route(Conv2dAlgorithm algorithm);

// What the chooser needs to know about the direct route.
// Whether direct kernels exist for this dtype on this CPU (float32 and
// float64 on x86-64 CPUs with AVX2+FMA or AVX-512, in GCC builds).
bool direct_kernels_available(at::ScalarType dtype);
// How much of the direct forward kernel's work on this layer (or, with
// input_grad, on its input gradient) computes outputs: the rest fills the
// unused lanes of output-channel blocks and the positions of row-crossing
// tiles that are not outputs. Needs direct_kernels_available(dtype).
struct DirectWork {
  double useful, computed;
};
DirectWork direct_forward_work(const Conv2dGeometry& g, at::ScalarType dtype, bool input_grad);

}  // namespace custom_conv
