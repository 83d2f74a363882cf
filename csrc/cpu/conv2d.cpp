// conv2d on the CPU: the forward and the three backward ops, side by side.
// Each op checks its arguments (../geometry.cpp), asks the chooser
// (../conv2d_algorithm.cpp) which algorithm runs this pass of this layer, and
// hands contiguous tensors to that route (conv2d_routes.h):
//   direct     conv2d_direct.cpp, with the vector kernels in direct/
//   depthwise  conv2d_depthwise.cpp
//   im2col     conv2d_im2col.cpp (im2col.h + our GEMM, gemm/)
//   winograd   conv2d_winograd.cpp (F(2x2, 3x3) transforms + our GEMM)
#include "../conv2d_algorithm.h"
#include "../geometry.h"
#include "../memory_format.h"
#include "conv2d_routes.h"
#include "per_level.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace custom_conv {
namespace {

// The route the chooser picks for this pass, its contract checked on entry.
const CpuRoute& enter(const Conv2dGeometry& g, Conv2dPass pass, const at::Tensor& like) {
  const Conv2dAlgorithm algorithm = choose_conv2d_algorithm(g, pass, like.scalar_type(), c10::DeviceType::CPU);
  const CpuRoute& r = cpu_route(algorithm);
  check_route_supports(r.refusal(g, pass, like.scalar_type()), algorithm_name(algorithm), pass);
  return r;
}

at::Tensor conv2d_forward_cpu(
    const at::Tensor& input_,
    const at::Tensor& weight_,
    const c10::optional<at::Tensor>& bias,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  const Conv2dGeometry g = checked_conv2d_forward(input_, weight_, bias, stride, padding, dilation, groups);
  const at::Tensor input = input_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor bias_c = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  enter(g, Conv2dPass::kForward, input).forward(g, input, weight, bias_c, output);
  return in_memory_format(output, conv2d_memory_format(input_, weight_));
}

at::Tensor conv2d_backward_input_cpu(
    const at::Tensor& grad_output_,
    const at::Tensor& weight_,
    c10::IntArrayRef input_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  const Conv2dGeometry g =
      checked_conv2d_backward_input(grad_output_, weight_, input_size, stride, padding, dilation, groups);
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::MemoryFormat format = conv2d_gradient_memory_format(weight_);
  at::Tensor grad_input = at::empty(input_size, weight.options());
  if (grad_input.numel() == 0) {
    return in_memory_format(grad_input, format);
  }
  enter(g, Conv2dPass::kBackwardInput, weight).backward_input(g, grad_output, weight, grad_input);
  return in_memory_format(grad_input, format);
}

at::Tensor conv2d_backward_weight_cpu(
    const at::Tensor& grad_output_,
    const at::Tensor& input_,
    c10::IntArrayRef weight_size,
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  const Conv2dGeometry g =
      checked_conv2d_backward_weight(grad_output_, input_, weight_size, stride, padding, dilation, groups);
  const at::Tensor input = input_.contiguous();
  const at::Tensor grad_output = grad_output_.contiguous();
  const at::MemoryFormat format = conv2d_gradient_memory_format(input_);
  at::Tensor grad_weight = at::empty(weight_size, input.options());
  if (grad_weight.numel() == 0) {  // no input channels
    return in_memory_format(grad_weight, format);
  }
  if (g.batch == 0) {
    return in_memory_format(grad_weight.zero_(), format);
  }
  enter(g, Conv2dPass::kBackwardWeight, input).backward_weight(g, input, grad_output, grad_weight);
  return in_memory_format(grad_weight, format);
}

// One channel's bias gradient: the sum of its N planes of L values, in
// double so that it does not drift with large batches or images. Value i of
// a plane adds into partial sum i % kBiasLanes (the last, partial group of a
// plane into the first sums), and the partial sums are added in order at the
// end: a fixed order, whatever the threads, whose additions do not wait on
// one another and vectorise. (One running sum waited on each addition: 4
// cycles a value, 5 ms for a 25.7 MB gradient that takes 1 ms to read.)
constexpr int64_t kBiasLanes = 8;

template <typename scalar_t>
CUSTOM_CONV_INLINE double bias_gradient_sum(const scalar_t* planes, int64_t N, int64_t stride, int64_t L) {
  double sums[kBiasLanes] = {};
  const int64_t whole = L / kBiasLanes * kBiasLanes;
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* plane = planes + n * stride;
    for (int64_t i = 0; i < whole; i += kBiasLanes) {
      for (int64_t j = 0; j < kBiasLanes; ++j) {
        sums[j] += static_cast<double>(plane[i + j]);
      }
    }
    for (int64_t i = whole; i < L; ++i) {
      sums[i - whole] += static_cast<double>(plane[i]);
    }
  }
  double sum = 0.0;
  for (int64_t j = 0; j < kBiasLanes; ++j) {
    sum += sums[j];
  }
  return sum;
}

CUSTOM_CONV_PER_LEVEL(double, bias_gradient_sum_float, (const float* planes, int64_t N, int64_t stride, int64_t L),
                      (planes, N, stride, L)) {
  return bias_gradient_sum(planes, N, stride, L);
}
CUSTOM_CONV_PER_LEVEL(double, bias_gradient_sum_double,
                      (const double* planes, int64_t N, int64_t stride, int64_t L), (planes, N, stride, L)) {
  return bias_gradient_sum(planes, N, stride, L);
}

double channel_sum(const float* planes, int64_t N, int64_t stride, int64_t L) {
  return bias_gradient_sum_float(planes, N, stride, L);
}
double channel_sum(const double* planes, int64_t N, int64_t stride, int64_t L) {
  return bias_gradient_sum_double(planes, N, stride, L);
}
template <typename scalar_t>
double channel_sum(const scalar_t* planes, int64_t N, int64_t stride, int64_t L) {
  return bias_gradient_sum(planes, N, stride, L);
}

// The bias gradient: grad_output summed over batch and space, one channel
// per task.
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
        out[c] = static_cast<scalar_t>(channel_sum(go + c * L, N, C * L, L));
      }
    });
  });
  return grad_bias;
}

}  // namespace

const CpuRoute& cpu_route(Conv2dAlgorithm algorithm) {
  static const CpuRoute im2col{&conv2d_im2col_refusal, &conv2d_im2col_forward, &conv2d_im2col_backward_input,
                               &conv2d_im2col_backward_weight};
  static const CpuRoute direct{&conv2d_direct_refusal, &conv2d_direct_forward, &conv2d_direct_backward_input,
                               &conv2d_direct_backward_weight};
  static const CpuRoute depthwise{&conv2d_depthwise_refusal, &conv2d_depthwise_forward,
                                  &conv2d_depthwise_backward_input, &conv2d_depthwise_backward_weight};
  static const CpuRoute winograd{&conv2d_winograd_refusal, &conv2d_winograd_forward,
                                 &conv2d_winograd_backward_input, &conv2d_winograd_backward_weight};
  switch (algorithm) {
    case Conv2dAlgorithm::kDirect: return direct;
    case Conv2dAlgorithm::kDepthwise: return depthwise;
    case Conv2dAlgorithm::kWinograd: return winograd;
    default: return im2col;
  }
}

std::tuple<std::vector<std::string>, std::vector<int64_t>> cpu_route_constants() {
  RouteConstants constants;
  append_im2col_constants(constants);
  append_direct_constants(constants);
  append_winograd_constants(constants);
  std::tuple<std::vector<std::string>, std::vector<int64_t>> out;
  for (const auto& [name, value] : constants) {
    std::get<0>(out).push_back(name);
    std::get<1>(out).push_back(value);
  }
  return out;
}

void check_route_supports(const char* refusal, const char* route, Conv2dPass pass) {
  TORCH_CHECK(refusal == nullptr, "custom_conv: the ", route, " route cannot run the ", conv2d_pass_name(pass),
              " of this layer: ", refusal);
}

TORCH_LIBRARY_IMPL(custom_conv, CPU, m) {
  m.impl("conv2d_forward", &conv2d_forward_cpu);
  m.impl("conv2d_backward_input", &conv2d_backward_input_cpu);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight_cpu);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_cpu);
}

}  // namespace custom_conv
