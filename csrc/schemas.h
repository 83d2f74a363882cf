// The schemas of the twelve kernel ops, which every backend implements. ops.cpp
// declares them in the custom_conv library; the CUDA emulator's test build
// (tests/emulator) declares the same ones in its own library, for the CUDA
// sources compiled for the CPU.
#pragma once

#include <torch/library.h>

namespace custom_conv {

inline void define_kernel_ops(torch::Library& m) {
  // Cross-correlation of an (N, C_in, H, W) input with (C_out, C_in/groups,
  // kH, kW) weights, plus an optional bias of (C_out,).
  m.def("conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups) -> Tensor");
  // Gradient with respect to the input: the output gradient convolved with
  // the 180°-rotated kernel. input_size is needed because the forward's
  // floor division makes it ambiguous from grad_output alone.
  m.def("conv2d_backward_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  // Gradient with respect to the weight: the input correlated with the
  // output gradient.
  m.def("conv2d_backward_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  // Gradient with respect to the bias: grad_output summed over N, H and W.
  m.def("conv2d_backward_bias(Tensor grad_output) -> Tensor");
  // Max pooling; returns the maxima and, per output, the flat index
  // (h * W + w) of the maximum within its input plane.
  m.def("max_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride, "
        "int[2] padding, int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  // Routes each output gradient to the input element its index names. The
  // window geometry lets the kernels check the shapes and lets the GPU
  // gather, per input element, from just the windows that contain it.
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  // Average pooling: each output the mean of its window (torch's
  // count_include_pad and divisor_override decide what it divides by).
  m.def("avg_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  // Each output gradient spread evenly over its window (divided by the
  // forward's divisor), gathered per input element.
  m.def("avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size, int[2] kernel_size, int[2] stride, "
        "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  // The same with torch's adaptive windows, for an output of output_size.
  m.def("adaptive_avg_pool2d_forward(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size) -> Tensor");
  // Max pooling over the adaptive windows: the maxima and their flat
  // in-plane indices, as max_pool2d_forward gives them; the backward routes
  // each gradient to the element its index names.
  m.def("adaptive_max_pool2d_forward(Tensor input, int[2] output_size) -> (Tensor, Tensor)");
  m.def("adaptive_max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size) -> Tensor");
}

}  // namespace custom_conv
