// The Meta kernels: what each op returns (sizes, dtype, layout) without
// computing it. torch.compile runs them on its fake tensors to trace a graph,
// with sizes that may be symbolic (c10::SymInt), and meta tensors run them
// too. They use the kernels' own size formula (output_size in geometry.h)
// and layout rule (memory_format.h), so a traced graph expects exactly what
// the kernels return. The arguments are validated once, by the kernels
// (geometry.cpp), when they run; here only as far as the sizes need.
#include "geometry.h"
#include "memory_format.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

namespace custom_conv {
namespace {

void check_pairs(const char* op, std::initializer_list<c10::IntArrayRef> pairs) {
  for (const c10::IntArrayRef pair : pairs) {
    TORCH_CHECK(pair.size() == 2, op, ": expected (height, width) pairs, got ", pair);
  }
}

at::Tensor conv2d_forward_meta(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(input.dim() == 4 && weight.dim() == 4, "conv2d: expected 4-D input and weight");
  check_pairs("conv2d", {stride, padding, dilation});
  const c10::SymInt out_h =
      output_size(input.sym_size(2), weight.sym_size(2), stride[0], padding[0], dilation[0], false);
  const c10::SymInt out_w =
      output_size(input.sym_size(3), weight.sym_size(3), stride[1], padding[1], dilation[1], false);
  return at::empty_symint({input.sym_size(0), weight.sym_size(0), out_h, out_w},
                          input.options().memory_format(conv2d_memory_format(input, weight)));
}

// The gradients have the sizes they are asked for, in the layout their
// arguments suggest (memory_format.h).
at::Tensor conv2d_backward_input_meta(const at::Tensor& grad_output, const at::Tensor& weight,
                                      c10::SymIntArrayRef input_size, c10::IntArrayRef stride,
                                      c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  return at::empty_symint(input_size,
                          grad_output.options().memory_format(conv2d_gradient_memory_format(weight)));
}

at::Tensor conv2d_backward_weight_meta(const at::Tensor& grad_output, const at::Tensor& input,
                                       c10::SymIntArrayRef weight_size, c10::IntArrayRef stride,
                                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  return at::empty_symint(weight_size,
                          grad_output.options().memory_format(conv2d_gradient_memory_format(input)));
}

at::Tensor conv2d_backward_bias_meta(const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.dim() == 4, "conv2d_backward_bias: expected a 4-D grad_output");
  return at::empty_symint({grad_output.sym_size(1)}, grad_output.options());
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_meta(const at::Tensor& input, c10::IntArrayRef kernel_size,
                                                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                           c10::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 4, "max_pool2d: expected a 4-D input");
  check_pairs("max_pool2d", {kernel_size, stride, padding, dilation});
  const c10::SymInt out_h = output_size(input.sym_size(2), c10::SymInt(kernel_size[0]), stride[0], padding[0],
                                        dilation[0], ceil_mode);
  const c10::SymInt out_w = output_size(input.sym_size(3), c10::SymInt(kernel_size[1]), stride[1], padding[1],
                                        dilation[1], ceil_mode);
  const std::vector<c10::SymInt> size{input.sym_size(0), input.sym_size(1), out_h, out_w};
  const at::TensorOptions options = input.options().memory_format(max_pool2d_memory_format(input));
  return {at::empty_symint(size, options), at::empty_symint(size, options.dtype(at::kLong))};
}

at::Tensor max_pool2d_backward_meta(const at::Tensor& grad_output, const at::Tensor& indices,
                                    c10::SymIntArrayRef input_size, c10::IntArrayRef kernel_size,
                                    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                    bool ceil_mode) {
  return at::empty_symint(input_size,
                          grad_output.options().memory_format(max_pool2d_gradient_memory_format(indices)));
}

at::Tensor avg_pool2d_forward_meta(const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   c10::optional<int64_t> divisor_override) {
  TORCH_CHECK(input.dim() == 4, "avg_pool2d: expected a 4-D input");
  check_pairs("avg_pool2d", {kernel_size, stride, padding});
  const c10::SymInt out_h =
      output_size(input.sym_size(2), c10::SymInt(kernel_size[0]), stride[0], padding[0], 1, ceil_mode);
  const c10::SymInt out_w =
      output_size(input.sym_size(3), c10::SymInt(kernel_size[1]), stride[1], padding[1], 1, ceil_mode);
  return at::empty_symint({input.sym_size(0), input.sym_size(1), out_h, out_w},
                          input.options().memory_format(max_pool2d_memory_format(input)));
}

at::Tensor avg_pool2d_backward_meta(const at::Tensor& grad_output, c10::SymIntArrayRef input_size,
                                    c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    bool ceil_mode, bool count_include_pad, c10::optional<int64_t> divisor_override) {
  return at::empty_symint(input_size,
                          grad_output.options().memory_format(avg_pool2d_gradient_memory_format(grad_output)));
}

at::Tensor adaptive_avg_pool2d_forward_meta(const at::Tensor& input, c10::IntArrayRef output_size) {
  TORCH_CHECK(input.dim() == 4, "adaptive_avg_pool2d: expected a 4-D input");
  check_pairs("adaptive_avg_pool2d", {output_size});
  return at::empty_symint({input.sym_size(0), input.sym_size(1), c10::SymInt(output_size[0]),
                           c10::SymInt(output_size[1])},
                          input.options().memory_format(max_pool2d_memory_format(input)));
}

at::Tensor adaptive_avg_pool2d_backward_meta(const at::Tensor& grad_output, c10::SymIntArrayRef input_size) {
  return at::empty_symint(input_size,
                          grad_output.options().memory_format(avg_pool2d_gradient_memory_format(grad_output)));
}

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_forward_meta(const at::Tensor& input,
                                                                    c10::IntArrayRef output_size) {
  const at::Tensor output = adaptive_avg_pool2d_forward_meta(input, output_size);
  return {output, at::empty_like(output, output.options().dtype(at::kLong))};
}

at::Tensor adaptive_max_pool2d_backward_meta(const at::Tensor& grad_output, const at::Tensor& indices,
                                             c10::SymIntArrayRef input_size) {
  return at::empty_symint(input_size,
                          grad_output.options().memory_format(max_pool2d_gradient_memory_format(indices)));
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, Meta, m) {
  m.impl("conv2d_forward", &conv2d_forward_meta);
  m.impl("conv2d_backward_input", &conv2d_backward_input_meta);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight_meta);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_meta);
  m.impl("max_pool2d_forward", &max_pool2d_forward_meta);
  m.impl("max_pool2d_backward", &max_pool2d_backward_meta);
  m.impl("avg_pool2d_forward", &avg_pool2d_forward_meta);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_meta);
  m.impl("adaptive_avg_pool2d_forward", &adaptive_avg_pool2d_forward_meta);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_meta);
  m.impl("adaptive_max_pool2d_forward", &adaptive_max_pool2d_forward_meta);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward_meta);
}

}  // namespace custom_conv
