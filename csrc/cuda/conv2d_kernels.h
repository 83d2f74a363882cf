// What conv2d's passes launch on the GPU, for one dtype, once conv2d.cu's ops
// have checked their arguments, laid out their tensors and chosen the route.
// The kernels of all routes, tile sizes and operands are most of the
// extension's compile time, so each dtype's are compiled in a translation
// unit of its own (conv2d_kernels_<dtype>.cu, which instantiate
// conv2d_kernels.cuh), and a build compiles the four side by side.
#pragma once

#include "../geometry.h"

#include <ATen/ATen.h>

namespace custom_conv {
namespace gpu {

// How a pass runs, in the chooser's order of precedence (conv2d_route).
enum class Conv2dRoute {
  kDepthwise,           // depthwise.cuh: a depthwise layer's taps summed in place
  kChannelsLastGather,  // implicit_gemm.cuh on the tensor cores, from channels-last tensors
  kImplicitGemm,        // implicit_gemm.cuh, from NCHW tensors
  kColumnMatrix,        // im2col.cuh or col2im and gemm.cuh, through a column matrix in memory
};

// Each pass writes its result into the tensor it is given, allocated by the
// op: NCHW or channels-last where the route stores either (the implicit
// GEMM), NCHW otherwise; for the weight gradient of kChannelsLastGather, the
// gradient permuted to (C_out, kH, kW, C_in / groups). The inputs are
// contiguous in the layout the route reads (channels-last for
// kChannelsLastGather, else NCHW), the bias undefined where there is none.
template <typename T>
struct Conv2dKernels {
  static void forward(Conv2dRoute route, const Conv2dGeometry& g, const at::Tensor& input,
                      const at::Tensor& weight, const at::Tensor& bias, at::Tensor& output);
  static void backward_input(Conv2dRoute route, const Conv2dGeometry& g, const at::Tensor& grad_output,
                             const at::Tensor& weight, at::Tensor& grad_input);
  static void backward_weight(Conv2dRoute route, const Conv2dGeometry& g, const at::Tensor& grad_output,
                              const at::Tensor& input, at::Tensor& grad_weight);
};

}  // namespace gpu
}  // namespace custom_conv
