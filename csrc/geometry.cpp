#include "geometry.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>

namespace custom_conv {
namespace {

void check_pair(c10::IntArrayRef v, const char* op, const char* name) {
  TORCH_CHECK(v.size() == 2, op, ": expected ", name,
              " to have 2 values (height, width), got ", v.size());
}

}  // namespace

int64_t Conv2dGeometry::batch_chunk(int64_t column_budget) const {
  const int64_t per_sample =
      std::max<int64_t>(1, groups * col_rows_per_group() * output_plane());
  return std::max<int64_t>(1, std::min(batch, column_budget / per_sample));
}

Conv2dGeometry conv2d_geometry(
    c10::IntArrayRef input_sizes,
    c10::IntArrayRef weight_sizes,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups,
    const c10::optional<c10::IntArrayRef>& bias_sizes) {
  TORCH_CHECK(input_sizes.size() == 4,
              "conv2d: expected a 4-D input (N, C, H, W), got ",
              input_sizes.size(), "-D input of size ", input_sizes);
  // torch's words, in torch's order, so that code written against torch's
  // errors meets the same first error.
  TORCH_CHECK(weight_sizes.size() >= 3, "weight should have at least three dimensions");
  TORCH_CHECK(groups > 0, "non-positive groups is not supported");
  check_pair(stride, "conv2d", "stride");
  TORCH_CHECK(weight_sizes.size() == 4, "expected stride to be a single integer value or a list of ",
              weight_sizes.size() - 2, " values to match the convolution dimensions, but got stride=", stride);
  check_pair(padding, "conv2d", "padding");
  check_pair(dilation, "conv2d", "dilation");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "negative padding is not supported");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "non-positive stride is not supported");
  TORCH_CHECK(dilation[0] >= 0 && dilation[1] >= 0, "dilation should be greater than zero");

  Conv2dGeometry g{};
  g.batch = input_sizes[0];
  g.in_channels = input_sizes[1];
  g.in_h = input_sizes[2];
  g.in_w = input_sizes[3];
  g.out_channels = weight_sizes[0];
  g.kernel_h = weight_sizes[2];
  g.kernel_w = weight_sizes[3];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.groups = groups;

  TORCH_CHECK(g.out_channels >= groups, "Given groups=", groups, ", expected weight to be at least ", groups,
              " at dimension 0, but got weight of size ", weight_sizes, " instead");
  // torch's message prints the sizes inside a second pair of brackets.
  TORCH_CHECK(g.out_channels % groups == 0, "Given groups=", groups, ", expected weight to be divisible by ",
              groups, " at dimension 0, but got weight of size [", weight_sizes, "] instead");
  TORCH_CHECK(g.in_channels == weight_sizes[1] * groups,
              "Given groups=", groups, ", weight of size ", weight_sizes,
              ", expected input", input_sizes, " to have ", weight_sizes[1] * groups,
              " channels, but got ", g.in_channels, " channels instead");
  TORCH_CHECK(!bias_sizes.has_value() || (bias_sizes->size() == 1 && (*bias_sizes)[0] == g.out_channels),
              "Given weight of size ", weight_sizes, ", expected bias to be 1-dimensional with ", g.out_channels,
              " elements, but got bias of size ", bias_sizes.value_or(c10::IntArrayRef{}), " instead");

  // The kernel's extent once dilated (a dilation of zero, rejected below as
  // torch does, would make it one element).
  const int64_t padded_h = g.in_h + 2 * g.pad_h;
  const int64_t padded_w = g.in_w + 2 * g.pad_w;
  const int64_t span_h = g.dilation_h * (g.kernel_h - 1) + 1;
  const int64_t span_w = g.dilation_w * (g.kernel_w - 1) + 1;
  TORCH_CHECK(span_h <= padded_h && span_w <= padded_w,
              "Calculated padded input size per channel: (", padded_h, " x ", padded_w,
              "). Kernel size: (", span_h, " x ", span_w,
              "). Kernel size can't be greater than actual input size");
  TORCH_CHECK(g.batch == 0 || g.in_channels == 0 || (g.in_h > 0 && g.in_w > 0),
              "Only zero batch or zero channel inputs are supported, but got input shape: ", input_sizes);
  // (torch's float64 path words this "dilation should be greater than zero,
  // but got [...]"; these are the words of its float32 path.)
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "non-positive dilation is not supported");
  // No input channels is allowed, as in torch: every output is an empty sum
  // (zero) plus the bias. An empty kernel is not (torch's own message there
  // comes from inside oneDNN).
  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0,
              "conv2d: weight must have no zero-sized dimension other than its input channels, got ",
              weight_sizes);
  g.out_h = output_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, false);
  g.out_w = output_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, false);
  return g;
}

void check_floating_4d(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": expected ", name,
              " to be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 4, op, ": expected ", name,
              " to be 4-D (N, C, H, W), got ", t.dim(), "-D tensor of size ",
              t.sizes());
}

Pool2dGeometry max_pool2d_backward_geometry(
    const at::Tensor& grad_output,
    const at::Tensor& indices,
    c10::IntArrayRef input_size,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode) {
  check_floating_4d(grad_output, "max_pool2d_backward", "grad_output");
  TORCH_CHECK(indices.scalar_type() == at::kLong,
              "max_pool2d_backward: expected int64 indices, got ", indices.scalar_type());
  TORCH_CHECK(indices.sizes() == grad_output.sizes(),
              "max_pool2d_backward: indices of size ", indices.sizes(),
              " do not match grad_output of size ", grad_output.sizes());
  const Pool2dGeometry g =
      max_pool2d_geometry(input_size, kernel_size, stride, padding, dilation, ceil_mode);
  const std::array<int64_t, 4> expected{g.batch, g.channels, g.out_h, g.out_w};
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected),
              "max_pool2d_backward: expected grad_output of size ", c10::IntArrayRef(expected),
              " for an input of size ", input_size, ", got ", grad_output.sizes());
  // Only reachable on the GPU: the dispatcher sends a call with any CUDA
  // tensor to the CUDA kernel, so the CPU kernel only ever sees CPU tensors.
  TORCH_CHECK(indices.device() == grad_output.device(),
              "max_pool2d_backward: indices (", indices.device(),
              ") must be on the same device as grad_output (", grad_output.device(), ")");
  return g;
}

namespace {

// torch's name for a tensor's type in its messages: torch.FloatTensor,
// torch.cuda.HalfTensor, ...
std::string tensor_type_name(const at::Tensor& t) {
  return std::string("torch.") + (t.is_cuda() ? "cuda." : "") + c10::toString(t.scalar_type()) + "Tensor";
}

}  // namespace

Conv2dGeometry checked_conv2d_forward(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(input, "conv2d", "input");
  const bool has_bias = bias.has_value() && bias->defined();
  // torch checks the bias's dtype first, the weight's after the sizes.
  TORCH_CHECK(!has_bias || bias->scalar_type() == input.scalar_type(),
              "Input type (", input.dtype(), ") and bias type (", bias->dtype(), ") should be the same");
  const Conv2dGeometry g = conv2d_geometry(input.sizes(), weight.sizes(), stride, padding, dilation, groups,
                                           has_bias ? c10::optional<c10::IntArrayRef>(bias->sizes())
                                                    : c10::nullopt);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "Input type (", tensor_type_name(input),
              ") and weight type (", tensor_type_name(weight), ") should be the same",
              input.is_cpu() ? " or input should be a MKLDNN tensor and weight is a dense tensor" : "");
  TORCH_CHECK(weight.device() == input.device(), "conv2d: input (", input.device(), ") and weight (",
              weight.device(), ") must be on the same device");
  TORCH_CHECK(!has_bias || bias->device() == input.device(), "conv2d: input (", input.device(), ") and bias (",
              bias->device(), ") must be on the same device");
  return g;
}

namespace {

// grad_output (N, C_out, out_h, out_w) for this geometry, in `like`'s dtype
// and device.
void check_conv2d_grad_output(const at::Tensor& grad_output, const Conv2dGeometry& g, const at::Tensor& like) {
  TORCH_CHECK(grad_output.scalar_type() == like.scalar_type(),
              "conv2d backward: grad_output (", grad_output.scalar_type(),
              ") must have dtype ", like.scalar_type());
  TORCH_CHECK(grad_output.device() == like.device(),
              "conv2d backward: grad_output (", grad_output.device(),
              ") must be on device ", like.device());
  const std::array<int64_t, 4> expected{g.batch, g.out_channels, g.out_h,
                                        g.out_w};
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected),
              "conv2d backward: expected grad_output of size ",
              c10::IntArrayRef(expected), ", got ", grad_output.sizes());
}

}  // namespace

Conv2dGeometry checked_conv2d_backward_input(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::IntArrayRef input_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(weight, "conv2d_backward_input", "weight");
  const Conv2dGeometry g = conv2d_geometry(input_size, weight.sizes(), stride, padding, dilation, groups);
  check_conv2d_grad_output(grad_output, g, weight);
  return g;
}

Conv2dGeometry checked_conv2d_backward_weight(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::IntArrayRef weight_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(input, "conv2d_backward_weight", "input");
  const Conv2dGeometry g = conv2d_geometry(input.sizes(), weight_size, stride, padding, dilation, groups);
  check_conv2d_grad_output(grad_output, g, input);
  return g;
}

namespace {

// The argument checks and sizes that max_pool2d and avg_pool2d share, in
// torch's words and order, in two halves: the ranks of the arguments, then
// (after any check of the op's own) their values and the output size.
void check_pool2d_ranks(const char* op, c10::IntArrayRef input_sizes, c10::IntArrayRef kernel_size,
                        c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  TORCH_CHECK(input_sizes.size() == 4,
              op, ": expected a 4-D input (N, C, H, W), got ",
              input_sizes.size(), "-D input of size ", input_sizes);
  check_pair(kernel_size, op, "kernel_size");
  check_pair(stride, op, "stride");
  check_pair(padding, op, "padding");
  check_pair(dilation, op, "dilation");
}

Pool2dGeometry checked_pool2d_geometry(c10::IntArrayRef input_sizes, c10::IntArrayRef kernel_size,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                       bool ceil_mode) {
  // As for conv2d, torch's words, in torch's order.
  // The stride first: it defaults to the kernel size, and torch reports a
  // zero kernel size without a stride as a zero stride.
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "stride should not be zero");
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, "kernel size should be greater than zero, but got kH: ",
              kernel_size[0], " kW: ", kernel_size[1]);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "dilation should be greater than zero, but got dilationH: ",
              dilation[0], " dilationW: ", dilation[1]);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "pad must be non-negative, but got pad: ",
              padding[0] < 0 ? padding[0] : padding[1]);
  // A window made only of padding would have no input element to take the
  // maximum (or, without count_include_pad, the mean) of; torch forbids it
  // by bounding the padding by half the kernel, in two checks (the first
  // by the dilated kernel, the second, which binds, by the kernel).
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(padding[d] <= ((kernel_size[d] - 1) * dilation[d] + 1) / 2,
                "pad should be at most half of effective kernel size, but got pad=", padding[d],
                ", kernel_size=", kernel_size[d], " and dilation=", dilation[d]);
  }
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2,
              "pad should be smaller than or equal to half of kernel size, but got padW = ", padding[1],
              ", padH = ", padding[0], ", kW = ", kernel_size[1], ", kH = ", kernel_size[0]);
  TORCH_CHECK(input_sizes[1] > 0 && input_sizes[2] > 0 && input_sizes[3] > 0,
              "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:",
              input_sizes);

  Pool2dGeometry g{};
  g.batch = input_sizes[0];
  g.channels = input_sizes[1];
  g.in_h = input_sizes[2];
  g.in_w = input_sizes[3];
  g.kernel_h = kernel_size[0];
  g.kernel_w = kernel_size[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.out_h = output_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, ceil_mode);
  g.out_w = output_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, ceil_mode);
  TORCH_CHECK(g.out_h >= 1 && g.out_w >= 1, "Given input size: (", g.channels, "x", g.in_h, "x",
              g.in_w, "). Calculated output size: (", g.channels, "x", g.out_h, "x", g.out_w,
              "). Output size is too small");
  return g;
}

}  // namespace

Pool2dGeometry max_pool2d_geometry(
    c10::IntArrayRef input_sizes,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode) {
  check_pool2d_ranks("max_pool2d", input_sizes, kernel_size, stride, padding, dilation);
  return checked_pool2d_geometry(input_sizes, kernel_size, stride, padding, dilation, ceil_mode);
}

AvgPool2dGeometry avg_pool2d_geometry(
    c10::IntArrayRef input_sizes,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    bool ceil_mode,
    bool count_include_pad,
    c10::optional<int64_t> divisor_override) {
  const std::array<int64_t, 2> no_dilation{1, 1};
  check_pool2d_ranks("avg_pool2d", input_sizes, kernel_size, stride, padding, no_dilation);
  // torch's words, in torch's order (the divisor before the stride).
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0,
              "avg_pool2d: divisor must be not zero");
  AvgPool2dGeometry a{};
  a.pool = checked_pool2d_geometry(input_sizes, kernel_size, stride, padding, no_dilation, ceil_mode);
  a.count_include_pad = count_include_pad;
  a.divisor_override = divisor_override.value_or(0);
  a.adaptive = false;
  return a;
}

AvgPool2dGeometry adaptive_avg_pool2d_geometry(c10::IntArrayRef input_sizes, c10::IntArrayRef output_size,
                                               const char* op) {
  TORCH_CHECK(input_sizes.size() == 4,
              op, ": expected a 4-D input (N, C, H, W), got ",
              input_sizes.size(), "-D input of size ", input_sizes);
  TORCH_CHECK(output_size.size() == 2, op, ": output_size must be 2");
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0,
              op, ": elements of output_size must be greater than or equal to 0 but received {",
              output_size[0], ", ", output_size[1], "}");
  // Channels may be none (the Python entry points check them as torch does).
  for (int d = 2; d < 4; ++d) {
    TORCH_CHECK(input_sizes[d] > 0,
                op, "(): Expected input to have non-zero size for non-batch dimensions, "
                "but input has sizes ", input_sizes, " with dimension ", d, " being empty");
  }
  AvgPool2dGeometry a{};
  Pool2dGeometry& g = a.pool;
  g.batch = input_sizes[0];
  g.channels = input_sizes[1];
  g.in_h = input_sizes[2];
  g.in_w = input_sizes[3];
  g.out_h = output_size[0];
  g.out_w = output_size[1];
  g.kernel_h = g.kernel_w = g.stride_h = g.stride_w = g.dilation_h = g.dilation_w = 1;
  a.adaptive = true;
  return a;
}

namespace {

// grad_output floating-point and of the pooled size `a` gives (op names the
// backward in the messages).
void check_avg_pool2d_grad_output(const at::Tensor& grad_output, const AvgPool2dGeometry& a, const char* op) {
  check_floating_4d(grad_output, op, "grad_output");
  const Pool2dGeometry& g = a.pool;
  const std::array<int64_t, 4> expected{g.batch, g.channels, g.out_h, g.out_w};
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected), op, ": expected grad_output of size ",
              c10::IntArrayRef(expected), ", got ", grad_output.sizes());
}

}  // namespace

AvgPool2dGeometry avg_pool2d_backward_geometry(
    const at::Tensor& grad_output,
    c10::IntArrayRef input_size,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    bool ceil_mode,
    bool count_include_pad,
    c10::optional<int64_t> divisor_override) {
  const AvgPool2dGeometry a =
      avg_pool2d_geometry(input_size, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
  check_avg_pool2d_grad_output(grad_output, a, "avg_pool2d_backward");
  return a;
}

AvgPool2dGeometry adaptive_pool2d_backward_geometry(const at::Tensor& grad_output, c10::IntArrayRef input_size,
                                                    const char* op) {
  TORCH_CHECK(grad_output.dim() == 4, op, ": expected a 4-D grad_output, got ", grad_output.dim(), "-D");
  const AvgPool2dGeometry a =
      adaptive_avg_pool2d_geometry(input_size, {grad_output.size(2), grad_output.size(3)}, op);
  check_avg_pool2d_grad_output(grad_output, a, op);
  return a;
}

AvgPool2dGeometry adaptive_max_pool2d_backward_geometry(const at::Tensor& grad_output, const at::Tensor& indices,
                                                        c10::IntArrayRef input_size) {
  const char* op = "adaptive_max_pool2d_backward";
  const AvgPool2dGeometry a = adaptive_pool2d_backward_geometry(grad_output, input_size, op);
  // As max_pool2d_backward's.
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": expected int64 indices, got ", indices.scalar_type());
  TORCH_CHECK(indices.sizes() == grad_output.sizes(), op, ": indices of size ", indices.sizes(),
              " do not match grad_output of size ", grad_output.sizes());
  TORCH_CHECK(indices.device() == grad_output.device(), op, ": indices (", indices.device(),
              ") must be on the same device as grad_output (", grad_output.device(), ")");
  return a;
}

}  // namespace custom_conv
