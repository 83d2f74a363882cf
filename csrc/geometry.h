// Shape math and argument checks for conv2d, max_pool2d and avg_pool2d, shared by every
// kernel (CPU and CUDA). Each op validates its arguments exactly once, here,
// so the messages a user sees are the same whichever backend runs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>

namespace custom_conv {

// Ceiling of a / b for b > 0 and any sign of a.
inline int64_t ceil_div(int64_t a, int64_t b) {
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

// Floor of a / b for b > 0 and any sign of a: output sizes need it when the
// padded input is shorter than the kernel's reach.
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// The same for a size that torch.compile may have made symbolic (the Meta
// kernels, meta.cpp): a symbolic SymInt divides as Python's //, a concrete
// one as above.
inline c10::SymInt floor_div(const c10::SymInt& a, int64_t b) {
  if (const auto concrete = a.maybe_as_int()) {
    return floor_div(*concrete, b);
  }
  return a / b;
}

// Output length along one dimension, for conv2d and max_pool2d alike: the
// number of windows of `kernel` taps, `dilation` apart, that start every
// `stride` positions and fit in the input padded by `pad` on both sides.
// With ceil_mode (pooling only) a last window that hangs over the far edge
// counts too, provided it starts inside the input or the near padding, never
// in the far padding. The one formula for every output size: the kernels
// call it on int64_t (conv2d_geometry, max_pool2d_geometry), the Meta
// kernels on c10::SymInt. Their checks reject results below 1.
template <typename Int>
Int output_size(const Int& size, const Int& kernel, int64_t stride, int64_t pad, int64_t dilation,
                bool ceil_mode) {
  const Int reach = size + 2 * pad - dilation * (kernel - 1) - 1;
  Int out = floor_div(ceil_mode ? reach + (stride - 1) : reach, stride) + 1;
  if (ceil_mode && (out - 1) * stride >= size + pad) {
    out = out - 1;
  }
  return out;
}

// Everything needed to walk a 2-D convolution: the input and kernel sizes,
// the hyper-parameters, and the output size they imply. Sizes are int64_t
// throughout so that index arithmetic never overflows on large tensors.
struct Conv2dGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups;
  int64_t out_h, out_w;

  int64_t in_channels_per_group() const { return in_channels / groups; }
  int64_t out_channels_per_group() const { return out_channels / groups; }
  // Rows of one group's im2col matrix: one per (input channel, kernel tap).
  int64_t col_rows_per_group() const {
    return in_channels_per_group() * kernel_h * kernel_w;
  }
  int64_t output_plane() const { return out_h * out_w; }

  // How many samples im2col unrolls at once. The column buffer holds
  // groups * col_rows_per_group() * output_plane() values per sample; we stop
  // adding samples once it would exceed `column_budget` values, so scratch
  // memory is bounded whatever the batch size, yet small layers still get
  // one large GEMM. The default (4 Mi values) suits GPUs; the CPU kernels
  // pass a budget sized for cache.
  int64_t batch_chunk(int64_t column_budget = int64_t{1} << 22) const;
};

// Validates a convolution's sizes and returns its geometry. `input_sizes`
// is (N, C_in, H, W), `weight_sizes` (C_out, C_in / groups, kH, kW) and
// `bias_sizes`, where there is a bias, (C_out).
Conv2dGeometry conv2d_geometry(
    c10::IntArrayRef input_sizes,
    c10::IntArrayRef weight_sizes,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups,
    const c10::optional<c10::IntArrayRef>& bias_sizes = c10::nullopt);

// Validates a forward convolution call, its tensors' dtypes and devices as
// well as its sizes, in torch's order, and returns its geometry.
Conv2dGeometry checked_conv2d_forward(
    const at::Tensor& input,
    const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups);

// Validates a backward convolution call and returns its geometry: the tensor
// beside grad_output (the weight for the input gradient, the input for the
// weight gradient) floating-point and 4-D, the sizes as for the forward, and
// grad_output (N, C_out, out_h, out_w) in that tensor's dtype and device.
Conv2dGeometry checked_conv2d_backward_input(
    const at::Tensor& grad_output,
    const at::Tensor& weight,
    c10::IntArrayRef input_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups);
Conv2dGeometry checked_conv2d_backward_weight(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    c10::IntArrayRef weight_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups);

struct Pool2dGeometry {
  int64_t batch, channels, in_h, in_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t out_h, out_w;

  int64_t planes() const { return batch * channels; }
};

// Validates a max-pooling call on an (N, C, H, W) input.
Pool2dGeometry max_pool2d_geometry(
    c10::IntArrayRef input_sizes,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode);

// Checks an input tensor for a floating-point dtype and a 4-D shape.
void check_floating_4d(const at::Tensor& t, const char* op, const char* name);

// Validates a max_pool2d_backward call and returns the forward's geometry:
// grad_output must be floating-point and of the pooled size of input_size,
// and indices int64, of the same shape and on the same device.
Pool2dGeometry max_pool2d_backward_geometry(
    const at::Tensor& grad_output,
    const at::Tensor& indices,
    c10::IntArrayRef input_size,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    bool ceil_mode);

// The fixed windows (kernel, stride, padding; dilation 1 in `pool`) with
// count_include_pad and divisor_override (0: none), or, when `adaptive`,
// torch's adaptive windows of pool.out_h x pool.out_w (the other window
// fields are then unused).
struct AvgPool2dGeometry {
  Pool2dGeometry pool;
  bool count_include_pad;
  int64_t divisor_override;
  bool adaptive;
};

// Validates an avg_pool2d call on an (N, C, H, W) input (divisor_override
// 0 for none).
AvgPool2dGeometry avg_pool2d_geometry(
    c10::IntArrayRef input_sizes,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    bool ceil_mode,
    bool count_include_pad,
    c10::optional<int64_t> divisor_override);

// Validates an adaptive pooling call on an (N, C, H, W) input (op:
// "adaptive_avg_pool2d" or "adaptive_max_pool2d", for the messages).
AvgPool2dGeometry adaptive_avg_pool2d_geometry(c10::IntArrayRef input_sizes, c10::IntArrayRef output_size,
                                               const char* op = "adaptive_avg_pool2d");

// Validates an avg_pool2d_backward call and returns the forward's geometry:
// grad_output must be floating-point and of the pooled size of input_size.
AvgPool2dGeometry avg_pool2d_backward_geometry(
    const at::Tensor& grad_output,
    c10::IntArrayRef input_size,
    c10::IntArrayRef kernel_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    bool ceil_mode,
    bool count_include_pad,
    c10::optional<int64_t> divisor_override);

// Validates an adaptive pooling backward call and returns the forward's
// geometry: grad_output 4-D, floating-point, and its height and width the
// output size the forward pooled input_size to (op names the backward,
// "adaptive_avg_pool2d_backward" or "adaptive_max_pool2d_backward", in the
// messages).
AvgPool2dGeometry adaptive_pool2d_backward_geometry(const at::Tensor& grad_output, c10::IntArrayRef input_size,
                                                    const char* op);

// The same for adaptive_max_pool2d_backward, whose indices must also be
// int64, of grad_output's size and on its device.
AvgPool2dGeometry adaptive_max_pool2d_backward_geometry(const at::Tensor& grad_output, const at::Tensor& indices,
                                                        c10::IntArrayRef input_size);

}  // namespace custom_conv
