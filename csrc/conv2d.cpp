// conv2d on the CPU: forward, and the three backward ops side by side.
//
// All three products go through im2col (see im2col.h). Per group g, with
// K = C_in / groups * kH * kW rows per group and a chunk of B samples:
//   forward          out_g  (C_out/g, B*L) = W_g (C_out/g, K) @ cols_g (K, B*L)
//   backward input   cols_g (K, B*L)       = W_g^T @ grad_out_g, then col2im
//   backward weight  dW_g   (C_out/g, K)  += grad_out_g @ cols_g^T
// The backward-input product followed by col2im is exactly the lecture's
// "convolve the zero-padded output gradient with the kernel rotated by 180°":
// column (oh, ow) of W_g^T @ grad_out_g holds, for every tap (ki, kj), the
// contribution of output (oh, ow) to the input pixel that tap touched, and
// col2im adds them up per input pixel. Gathered per input pixel instead,
// that sum runs over the taps in reverse order, i.e. over the flipped kernel.
//
// When every group has a single input channel (depthwise), the GEMMs would
// have a reduction of only kH * kW; those layers take the direct loops of
// depthwise_conv2d.h instead.
#include "depthwise_conv2d.h"
#include "geometry.h"
#include "im2col.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace custom_conv {
namespace {

// The GEMM output is laid out (C_out, B, L); the tensor wants (B, C_out, L).
at::Tensor as_channel_major(const at::Tensor& batch_major) {
  return batch_major.transpose(0, 1);
}

at::Tensor conv2d_forward_cpu(
    const at::Tensor& input_,
    const at::Tensor& weight_,
    const c10::optional<at::Tensor>& bias,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_conv2d_tensors(input_, weight_, bias);
  const Conv2dGeometry g = conv2d_geometry(
      input_.sizes(), weight_.sizes(), stride, padding, dilation, groups);
  const at::Tensor input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous().view(
      {groups, g.out_channels_per_group(), g.col_rows_per_group()});
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_col = has_bias
      ? bias->contiguous().view({groups, g.out_channels_per_group(), 1})
      : at::Tensor();

  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options());
  if (is_depthwise(g)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "depthwise_conv2d_forward_cpu", [&] {
      depthwise_conv2d_forward(input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                               has_bias ? bias_col.const_data_ptr<scalar_t>() : nullptr, g,
                               output.mutable_data_ptr<scalar_t>());
    });
    return output;
  }
  const int64_t L = g.output_plane();
  const int64_t chunk = g.batch_chunk();
  at::Tensor cols_buf = at::empty({g.groups * g.col_rows_per_group() * chunk * L},
                                  input.options());
  at::Tensor out_buf = at::empty({g.out_channels * chunk * L}, input.options());

  for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
    const int64_t B = std::min(chunk, g.batch - n0);
    at::Tensor cols = cols_buf.narrow(0, 0, g.groups * g.col_rows_per_group() * B * L)
                          .view({groups, g.col_rows_per_group(), B * L});
    at::Tensor out = out_buf.narrow(0, 0, g.out_channels * B * L)
                         .view({groups, g.out_channels_per_group(), B * L});
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "conv2d_forward_cpu", [&] {
      im2col(input.const_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w,
             g, B, cols.mutable_data_ptr<scalar_t>());
    });
    for (int64_t grp = 0; grp < groups; ++grp) {
      at::Tensor dst = out[grp];
      if (has_bias) {
        // The bias rides in the GEMM's accumulator (beta = 1), not a second pass.
        at::addmm_out(dst, bias_col[grp].expand({-1, B * L}), weight[grp], cols[grp]);
      } else {
        at::mm_out(dst, weight[grp], cols[grp]);
      }
    }
    output.narrow(0, n0, B).view({B, g.out_channels, L})
        .copy_(as_channel_major(out.view({g.out_channels, B, L})));
  }
  return output;
}

at::Tensor conv2d_backward_input_cpu(
    const at::Tensor& grad_output_,
    const at::Tensor& weight_,
    c10::IntArrayRef input_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(weight_, "conv2d_backward_input", "weight");
  const Conv2dGeometry g = conv2d_geometry(
      input_size, weight_.sizes(), stride, padding, dilation, groups);
  check_conv2d_grad_output(grad_output_, g, weight_);
  const at::Tensor grad_output = grad_output_.contiguous();
  // W_g^T: (K, C_out/g), a transposed view; BLAS reads it without a copy.
  const at::Tensor weight_t = weight_.contiguous()
      .view({groups, g.out_channels_per_group(), g.col_rows_per_group()})
      .transpose(1, 2);

  at::Tensor grad_input = at::empty(input_size, weight_.options());
  if (is_depthwise(g)) {
    const at::Tensor weight = weight_.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "depthwise_conv2d_backward_input_cpu", [&] {
      depthwise_conv2d_backward_input(grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                      g, grad_input.mutable_data_ptr<scalar_t>());
    });
    return grad_input;
  }
  const int64_t L = g.output_plane();
  const int64_t chunk = g.batch_chunk();
  at::Tensor cols_buf = at::empty({g.groups * g.col_rows_per_group() * chunk * L},
                                  weight_.options());
  at::Tensor go_buf = at::empty({g.out_channels * chunk * L}, weight_.options());

  for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
    const int64_t B = std::min(chunk, g.batch - n0);
    at::Tensor cols = cols_buf.narrow(0, 0, g.groups * g.col_rows_per_group() * B * L)
                          .view({groups, g.col_rows_per_group(), B * L});
    at::Tensor go = go_buf.narrow(0, 0, g.out_channels * B * L)
                        .view({g.out_channels, B, L});
    go.copy_(as_channel_major(grad_output.narrow(0, n0, B).view({B, g.out_channels, L})));
    const at::Tensor go_groups = go.view({groups, g.out_channels_per_group(), B * L});
    for (int64_t grp = 0; grp < groups; ++grp) {
      at::Tensor dst = cols[grp];
      at::mm_out(dst, weight_t[grp], go_groups[grp]);
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight_.scalar_type(), "conv2d_backward_input_cpu", [&] {
      col2im(cols.const_data_ptr<scalar_t>(), g, B,
             grad_input.mutable_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w);
    });
  }
  return grad_input;
}

at::Tensor conv2d_backward_weight_cpu(
    const at::Tensor& grad_output_,
    const at::Tensor& input_,
    c10::IntArrayRef weight_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  check_floating_4d(input_, "conv2d_backward_weight", "input");
  const Conv2dGeometry g = conv2d_geometry(
      input_.sizes(), weight_size, stride, padding, dilation, groups);
  check_conv2d_grad_output(grad_output_, g, input_);
  const at::Tensor input = input_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();

  at::Tensor grad_weight = at::empty(weight_size, input.options());
  const at::Tensor gw = grad_weight.view(
      {groups, g.out_channels_per_group(), g.col_rows_per_group()});
  if (g.batch == 0) {
    return grad_weight.zero_();
  }
  if (is_depthwise(g)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "depthwise_conv2d_backward_weight_cpu", [&] {
      depthwise_conv2d_backward_weight(grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                       g, grad_weight.mutable_data_ptr<scalar_t>());
    });
    return grad_weight;
  }
  const int64_t L = g.output_plane();
  const int64_t chunk = g.batch_chunk();
  at::Tensor cols_buf = at::empty({g.groups * g.col_rows_per_group() * chunk * L},
                                  input.options());
  at::Tensor go_buf = at::empty({g.out_channels * chunk * L}, input.options());

  for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
    const int64_t B = std::min(chunk, g.batch - n0);
    at::Tensor cols = cols_buf.narrow(0, 0, g.groups * g.col_rows_per_group() * B * L)
                          .view({groups, g.col_rows_per_group(), B * L});
    at::Tensor go = go_buf.narrow(0, 0, g.out_channels * B * L)
                        .view({g.out_channels, B, L});
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "conv2d_backward_weight_cpu", [&] {
      im2col(input.const_data_ptr<scalar_t>() + n0 * g.in_channels * g.in_h * g.in_w,
             g, B, cols.mutable_data_ptr<scalar_t>());
    });
    go.copy_(as_channel_major(grad_output.narrow(0, n0, B).view({B, g.out_channels, L})));
    const at::Tensor go_groups = go.view({groups, g.out_channels_per_group(), B * L});
    // The first chunk writes the gradient (beta = 0, no zero-fill needed);
    // later chunks accumulate onto it inside the same GEMM (beta = 1).
    const double beta = n0 == 0 ? 0.0 : 1.0;
    for (int64_t grp = 0; grp < groups; ++grp) {
      gw[grp].addmm_(go_groups[grp], cols[grp].t(), beta, 1.0);
    }
  }
  return grad_weight;
}

// Sum of grad_output over batch and space, one channel per task. The sum
// runs in double so that it does not drift with large batches or images.
at::Tensor conv2d_backward_bias_cpu(const at::Tensor& grad_output_) {
  check_floating_4d(grad_output_, "conv2d_backward_bias", "grad_output");
  const at::Tensor grad_output = grad_output_.contiguous();
  const int64_t N = grad_output.size(0), C = grad_output.size(1);
  const int64_t L = grad_output.size(2) * grad_output.size(3);
  at::Tensor grad_bias = at::empty({C}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_output.scalar_type(), "conv2d_backward_bias_cpu", [&] {
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* out = grad_bias.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double sum = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* plane = go + (n * C + c) * L;
          for (int64_t i = 0; i < L; ++i) {
            sum += static_cast<double>(plane[i]);
          }
        }
        out[c] = static_cast<scalar_t>(sum);
      }
    });
  });
  return grad_bias;
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, CPU, m) {
  m.impl("conv2d_forward", &conv2d_forward_cpu);
  m.impl("conv2d_backward_input", &conv2d_backward_input_cpu);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight_cpu);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_cpu);
}

}  // namespace custom_conv
