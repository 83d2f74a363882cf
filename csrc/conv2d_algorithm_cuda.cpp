// The GPU's side of the one chooser (conv2d_algorithm.h), and the switches
// both sides read. Kept apart from conv2d_algorithm.cpp, which depends on the
// CPU routes, so that the CUDA sources need only this file: the CUDA emulator
// of the tests (tests/emulator/) compiles them with it and no CPU route.
#include "conv2d_algorithm.h"

#include <ATen/Context.h>
#include <c10/util/StringUtil.h>

#include <atomic>
#include <cstdint>
#include <limits>

namespace custom_conv {
namespace {

std::atomic<unsigned> switched_off_algorithms{0};
std::atomic<bool> switched_off_tensor_cores{false};
std::atomic<bool> switched_off_implicit_gemm{false};
std::atomic<bool> switched_off_channels_last_gather{false};

constexpr const char* kSwitchedOff = "switched off by the user (custom_conv.disabled_algorithms)";

bool depthwise_layer(const Conv2dGeometry& g) {
  return g.in_channels_per_group() == 1 && g.groups > 1;
}

bool takes_depthwise_kernels(const Conv2dGeometry& g) {
  return depthwise_layer(g) && !algorithm_switched_off(Conv2dAlgorithm::kDepthwise);
}

}  // namespace

bool algorithm_switched_off(Conv2dAlgorithm algorithm) {
  return (switched_off_algorithms.load(std::memory_order_relaxed) >> static_cast<unsigned>(algorithm)) & 1u;
}

bool tensor_cores_switched_off() {
  return switched_off_tensor_cores.load(std::memory_order_relaxed);
}

Switches switched_off() {
  return {switched_off_algorithms.load(std::memory_order_relaxed), tensor_cores_switched_off(),
          switched_off_implicit_gemm.load(std::memory_order_relaxed),
          switched_off_channels_last_gather.load(std::memory_order_relaxed)};
}

Switches set_switched_off(Switches switches) {
  Switches previous;
  previous.algorithms = switched_off_algorithms.exchange(switches.algorithms);
  previous.tensor_cores = switched_off_tensor_cores.exchange(switches.tensor_cores);
  previous.implicit_gemm = switched_off_implicit_gemm.exchange(switches.implicit_gemm);
  previous.channels_last_gather = switched_off_channels_last_gather.exchange(switches.channels_last_gather);
  return previous;
}

// Float only where torch lets its own convolutions use TF32
// (torch.backends.cudnn.allow_tf32, or the newer fp32_precision settings
// for cuDNN's convolutions): the same rounding, under the same switch.
bool cuda_gemm_uses_tensor_cores(at::ScalarType dtype) {
  if (tensor_cores_switched_off()) {
    return false;
  }
  return dtype == at::kHalf || dtype == at::kBFloat16 ||
         (dtype == at::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::CONV));
}

bool cuda_implicit_gemm_supports(const Conv2dGeometry& g) {
  // The GEMM's last tile reaches up to a tile past the end (at most 128:
  // gemm.cuh's CoreTile) before its bounds check, with the index already
  // formed.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max() - 128;
  const int64_t taps = g.kernel_h * g.kernel_w;
  return g.batch * g.output_plane() <= kMax && g.batch * g.in_h * g.in_w <= kMax &&
         g.in_channels * taps <= kMax && g.out_channels * taps <= kMax;
}

bool cuda_conv_uses_implicit_gemm(const Conv2dGeometry& g) {
  return !switched_off_implicit_gemm.load(std::memory_order_relaxed) && cuda_implicit_gemm_supports(g);
}

bool cuda_conv_gathers_channels_last(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype) {
  if (switched_off_channels_last_gather.load(std::memory_order_relaxed) || !cuda_conv_uses_implicit_gemm(g) ||
      !cuda_gemm_uses_tensor_cores(dtype) || takes_depthwise_kernels(g)) {
    return false;
  }
  // The channels a chunk runs along: the input gradient's taps are output channels.
  const int64_t channels = pass == Conv2dPass::kBackwardInput ? g.out_channels_per_group() : g.in_channels_per_group();
  const int64_t chunk = 16 / static_cast<int64_t>(c10::elementSize(dtype));
  return channels > 0 && channels % chunk == 0;
}
bool cuda_conv_backward_shares_channels_last(const Conv2dGeometry& g, at::ScalarType dtype) {
  return cuda_conv_gathers_channels_last(g, Conv2dPass::kBackwardInput, dtype) &&
         cuda_conv_gathers_channels_last(g, Conv2dPass::kBackwardWeight, dtype);
}

// Depthwise layers read one input plane per output channel: a sum of kH * kW
// products per output, read in place (cuda/depthwise.cuh), against im2col's
// kH * kW copies of the input feeding a GEMM only kH * kW deep. Every pass.
Conv2dAlgorithm choose_cuda_conv2d_algorithm(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype,
                                             std::string* why) {
  if (takes_depthwise_kernels(g)) {
    if (why) *why = "depthwise: one input channel per group, each output's taps summed from its input plane";
    return Conv2dAlgorithm::kDepthwise;
  }
  if (why) {
    const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
    const bool tf32_allowed = dtype == at::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
    const bool implicit = cuda_conv_uses_implicit_gemm(g);
    const std::string route =
        implicit ? "im2col as an implicit GEMM (receptive fields gathered as the tiles load, no column matrix)"
        : cuda_implicit_gemm_supports(g) ? c10::str("im2col through a column matrix (implicit GEMM ", kSwitchedOff, ")")
                                         : std::string("im2col through a column matrix (indices beyond 32 bits)");
    if (cuda_gemm_uses_tensor_cores(dtype)) {
      *why = c10::str(route, dtype == at::kFloat
                                 ? ", our GEMM on the tensor cores in TF32, float sums (torch.backends.cudnn.allow_tf32)"
                                 : ", our GEMM on the tensor cores (mma.sync, float sums)");
    } else {
      *why = c10::str(route, ", our tiled GEMM on the CUDA cores",
                      reduced || tf32_allowed ? c10::str(" (tensor cores ", kSwitchedOff, ")")
                      : dtype == at::kFloat   ? std::string(" (TF32 not allowed: torch.backends.cudnn.allow_tf32)")
                                              : std::string());
    }
    if (cuda_conv_gathers_channels_last(g, pass, dtype)) {
      *why += pass == Conv2dPass::kForward
                  ? "; the receptive fields gathered from a channels-last copy of the input"
              : pass == Conv2dPass::kBackwardInput
                  ? "; the output gradient's taps gathered from a channels-last copy of it"
                  : "; the receptive fields and the output gradient read from channels-last copies";
      *why += ", 16-byte chunks of channels by cp.async";
      if (pass != Conv2dPass::kForward && cuda_conv_backward_shares_channels_last(g, dtype)) {
        *why += " (in a training step one copy of the output gradient serves both backward passes)";
      }
    }
    if (depthwise_layer(g)) {
      *why += c10::str("; depthwise ", kSwitchedOff);
    }
  }
  return Conv2dAlgorithm::kIm2col;
}

}  // namespace custom_conv
