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
    int64_t groups) {
  TORCH_CHECK(input_sizes.size() == 4,
              "conv2d: expected a 4-D input (N, C, H, W), got ",
              input_sizes.size(), "-D input of size ", input_sizes);
  TORCH_CHECK(weight_sizes.size() == 4,
              "conv2d: expected a 4-D weight (C_out, C_in / groups, kH, kW), got ",
              weight_sizes.size(), "-D weight of size ", weight_sizes);
  check_pair(stride, "conv2d", "stride");
  check_pair(padding, "conv2d", "padding");
  check_pair(dilation, "conv2d", "dilation");
  // Messages start with torch's words, so that code matching torch's
  // errors matches ours; our details follow.
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0,
              "conv2d: non-positive stride is not supported (stride ", stride, ")");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0,
              "conv2d: negative padding is not supported (padding ", padding, ")");
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0,
              "conv2d: non-positive dilation is not supported (dilation ", dilation, ")");
  TORCH_CHECK(groups > 0, "conv2d: non-positive groups is not supported (groups ", groups, ")");

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

  // No input channels is allowed, as in torch: every output is an empty sum
  // (zero) plus the bias. No output channels or an empty kernel is not.
  TORCH_CHECK(g.out_channels > 0 && g.kernel_h > 0 && g.kernel_w > 0 && weight_sizes[1] >= 0,
              "conv2d: weight must have no zero-sized dimension other than its input channels, got ",
              weight_sizes);
  TORCH_CHECK(g.out_channels % groups == 0,
              "conv2d: Given groups=", groups, ", expected weight to be divisible by ", groups,
              " at dimension 0, but got weight of size ", weight_sizes, " instead (out_channels (",
              g.out_channels, ") must be divisible by groups (", groups, "))");
  TORCH_CHECK(g.in_channels == weight_sizes[1] * groups,
              "conv2d: Given groups=", groups, ", weight of size ", weight_sizes,
              ", expected input", input_sizes, " to have ", weight_sizes[1] * groups,
              " channels, but got ", g.in_channels, " channels instead");

  const int64_t padded_h = g.in_h + 2 * g.pad_h;
  const int64_t padded_w = g.in_w + 2 * g.pad_w;
  const int64_t span_h = g.dilation_h * (g.kernel_h - 1) + 1;
  const int64_t span_w = g.dilation_w * (g.kernel_w - 1) + 1;
  TORCH_CHECK(span_h <= padded_h && span_w <= padded_w,
              "conv2d: Calculated padded input size per channel: (", padded_h, " x ", padded_w,
              "). Kernel size: (", span_h, " x ", span_w,
              "). Kernel size can't be greater than actual input size (the kernel size is dilated)");
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

void check_conv2d_tensors(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias) {
  check_floating_4d(input, "conv2d", "input");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(),
              "conv2d: Input type (", input.scalar_type(), ") and weight type (",
              weight.scalar_type(), ") should be the same (they must have the same dtype)");
  TORCH_CHECK(weight.device() == input.device(), "conv2d: input (",
              input.device(), ") and weight (", weight.device(),
              ") must be on the same device");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(),
                "conv2d: Input type (", input.scalar_type(), ") and bias type (",
                bias->scalar_type(), ") should be the same (they must have the same dtype)");
    TORCH_CHECK(bias->device() == input.device(), "conv2d: input (",
                input.device(), ") and bias (", bias->device(),
                ") must be on the same device");
    TORCH_CHECK(bias->dim() == 1 && weight.dim() > 0 &&
                    bias->size(0) == weight.size(0),
                "conv2d: Given weight of size ", weight.sizes(), ", expected bias to be 1-dimensional with ",
                weight.size(0), " elements, but got bias of size ", bias->sizes(), " instead");
  }
}

void check_conv2d_grad_output(
    const at::Tensor& grad_output,
    const Conv2dGeometry& g,
    const at::Tensor& like) {
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

Pool2dGeometry checked_pool2d_geometry(const char* op, c10::IntArrayRef input_sizes, c10::IntArrayRef kernel_size,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                       bool ceil_mode) {
  // As for conv2d, torch's words first.
  // The stride first: it defaults to the kernel size, and torch reports a
  // zero kernel size without a stride as a zero stride.
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0,
              op, ": stride should not be zero (stride must be positive, got ", stride, ")");
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0,
              op, ": kernel size should be greater than zero (kernel_size ", kernel_size, ")");
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0,
              op, ": dilation should be greater than zero (dilation ", dilation, ")");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0,
              op, ": pad must be non-negative (padding ", padding, ")");
  // A window made only of padding would have no input element to take the
  // maximum (or, without count_include_pad, the mean) of; torch forbids it
  // by bounding the padding by half the kernel.
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 &&
                  padding[1] <= kernel_size[1] / 2,
              op, ": pad should be at most half of effective kernel size (padding ", padding,
              ", kernel_size ", kernel_size, ")");
  TORCH_CHECK(input_sizes[1] > 0 && input_sizes[2] > 0 && input_sizes[3] > 0,
              op, ": Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, "
              "but got: ", input_sizes, " (non-zero channels, height and width)");

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
  TORCH_CHECK(g.out_h >= 1 && g.out_w >= 1, op, ": Given input size: (", g.channels, "x", g.in_h, "x",
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
  return checked_pool2d_geometry("max_pool2d", input_sizes, kernel_size, stride, padding, dilation, ceil_mode);
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
  a.pool = checked_pool2d_geometry("avg_pool2d", input_sizes, kernel_size, stride, padding, no_dilation, ceil_mode);
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
              op, ": elements of output_size must be greater than or equal to 0 but received ",
              output_size);
  for (int d = 1; d < 4; ++d) {
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

void check_avg_pool2d_grad_output(const at::Tensor& grad_output, const AvgPool2dGeometry& a, const char* op) {
  check_floating_4d(grad_output, op, "grad_output");
  const Pool2dGeometry& g = a.pool;
  const std::array<int64_t, 4> expected{g.batch, g.channels, g.out_h, g.out_w};
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected), op, ": expected grad_output of size ",
              c10::IntArrayRef(expected), ", got ", grad_output.sizes());
}

}  // namespace custom_conv
