// The custom_conv operator library: every schema, declared once. Kernels are
// attached per backend next to their code (cpu/conv2d.cpp, cpu/max_pool2d.cpp
// and cuda/*.cu), autograd in autograd.cpp, autocast in autocast.cpp; the
// fake (meta) kernels for torch.compile are registered in Python, in
// custom_conv/_ops.py.
#include <Python.h>
#include <torch/library.h>

#include "conv2d_algorithm.h"
#include "cpu/direct/kernels.h"

// `import custom_conv._C` loads this shared library, which runs the
// registrations below; the module itself has no Python attributes.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(custom_conv, m) {
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

  // Which CPU convolution kernels this process uses: "avx512" or "avx2" (the
  // direct kernels of cpu/direct/, for float and double) or "im2col".
  m.def("cpu_kernels() -> str", &custom_conv::direct::cpu_kernels);
  // Which algorithm (direct, depthwise, im2col) conv2d_forward's given pass
  // ("forward", "backward_input", "backward_weight") runs on these tensors,
  // and why: the choice of conv2d_algorithm.cpp.
  m.def("conv2d_algorithm(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str pass_name) -> (str, str)",
        &custom_conv::conv2d_algorithm_op);

  // Max pooling; returns the maxima and, per output, the flat index
  // (h * W + w) of the maximum within its input plane.
  m.def("max_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride, "
        "int[2] padding, int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  // Routes each output gradient to the input element its index names. The
  // window geometry lets the kernels check the shapes and lets the GPU
  // gather, per input element, from just the windows that contain it.
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
}
