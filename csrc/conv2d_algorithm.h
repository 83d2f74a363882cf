// Which algorithm runs a convolution: one function decides, for every layer,
// pass, dtype and device, and every threshold it uses is a named constant in
// conv2d_algorithm.cpp. The ops call it; users can ask it too, through the
// op custom_conv::conv2d_algorithm (custom_conv.explain_conv2d in Python).
#pragma once

#include "geometry.h"

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>
#include <vector>

namespace custom_conv {

enum class Conv2dPass { kForward, kBackwardInput, kBackwardWeight };

enum class Conv2dAlgorithm {
  kIm2col,     // unroll receptive fields, one matrix product (our GEMM)
  kDirect,     // register-blocked vector kernels on the padded input (CPU, float/double)
  kDepthwise,  // direct loops over the taps, one input plane per output channel (CPU)
  kWinograd,   // 3x3 stride 1 by minimal filtering F(2x2, 3x3), products by our GEMM (CPU, float32)
};

const char* algorithm_name(Conv2dAlgorithm algorithm);
// "forward", "backward-input" or "backward-weight", for messages.
const char* conv2d_pass_name(Conv2dPass pass);

// The algorithm for this pass of the layer `g` on tensors of `dtype` on
// `device`. When `why` is given, it receives the reason in a sentence (the
// ops pass none: building it costs more than the choice).
Conv2dAlgorithm choose_conv2d_algorithm(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype,
                                        c10::DeviceType device, std::string* why = nullptr);

// The op custom_conv::conv2d_algorithms: every algorithm's name, in the order
// the CPU chooser tries them, the fallback (im2col) last
// (custom_conv.explain.ALGORITHMS in Python).
std::vector<std::string> conv2d_algorithms();

// The op custom_conv::set_disabled_conv2d_algorithms: the chooser passes over
// the algorithms named ("winograd", "direct", "depthwise") in every process
// thread from now on, until the next call; returns the names disabled before.
// im2col, every layer's fallback, cannot be switched off; an unknown name or
// im2col raises ValueError and changes nothing. (custom_conv.disabled_algorithms
// in Python.) Three more names are taken, kernels of the GPU rather than
// algorithms: kTensorCores, the CUDA GEMM's tensor-core kernel
// (cuda_gemm_uses_tensor_cores), kImplicitGemm, the GPU's im2col without a
// column matrix (cuda_conv_uses_implicit_gemm), and kChannelsLastGather, its
// passes on the tensor cores from channels-last tensors
// (cuda_conv_gathers_channels_last).
std::vector<std::string> set_disabled_conv2d_algorithms(const std::vector<std::string>& names);

constexpr const char* kTensorCores = "tensor_cores";
constexpr const char* kImplicitGemm = "implicit_gemm";
constexpr const char* kChannelsLastGather = "channels_last_gather";

// The switches set_disabled_conv2d_algorithms sets, read by both choosers
// (conv2d_algorithm_cuda.cpp holds them): whether an algorithm, or the
// tensor cores or the implicit GEMM, are switched off. set_switched_off
// replaces them all and returns the previous ones.
bool algorithm_switched_off(Conv2dAlgorithm algorithm);
bool tensor_cores_switched_off();
struct Switches {
  unsigned algorithms = 0;  // bit (1 << algorithm): switched off
  bool tensor_cores = false;
  bool implicit_gemm = false;
  bool channels_last_gather = false;
};
Switches switched_off();
Switches set_switched_off(Switches switches);

// The GPU's side of choose_conv2d_algorithm (conv2d_algorithm_cuda.cpp),
// which the CUDA ops call: depthwise layers take the depthwise kernels,
// every other layer im2col and our GEMM, implicit or not
// (cuda_conv_uses_implicit_gemm).
Conv2dAlgorithm choose_cuda_conv2d_algorithm(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype,
                                             std::string* why = nullptr);

// Whether the CUDA GEMM (cuda/gemm.cuh) runs products in `dtype` on the
// tensor cores: half and bfloat16 do, unless kTensorCores is switched off;
// then, as float32 and float64 always, on the CUDA cores' tiled kernel.
bool cuda_gemm_uses_tensor_cores(at::ScalarType dtype);

// What the implicit GEMM (cuda/implicit_gemm.cuh) supports: layers whose
// position and tap indices fit in 32 bits.
bool cuda_implicit_gemm_supports(const Conv2dGeometry& g);

// Whether the GPU's im2col route runs as an implicit GEMM (the receptive
// fields gathered as the GEMM's tiles load) rather than through a column
// matrix in memory: wherever it is supported, unless kImplicitGemm is
// switched off.
bool cuda_conv_uses_implicit_gemm(const Conv2dGeometry& g);

// Whether a pass of the implicit GEMM gathers from channels-last copies of
// its tensors (cuda/implicit_gemm.cuh, ChannelsLastPatches,
// ChannelsLastOutputGradPatches): on the tensor cores, where each group's
// channels that a tap's chunks run along (the input's; the output's for the
// input gradient) are whole 16-byte chunks of `dtype`, so that the tiles
// load by cp.async; unless kChannelsLastGather is switched off.
bool cuda_conv_gathers_channels_last(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype);

// Whether both backward passes of a layer gather from channels-last copies
// of its output gradient (cuda_conv_gathers_channels_last for each): then a
// training step's backward (csrc/autograd.cpp) makes that copy once, for
// both, where each pass would otherwise make its own.
bool cuda_conv_backward_shares_channels_last(const Conv2dGeometry& g, at::ScalarType dtype);

// The op custom_conv::set_forced_conv2d_algorithm: from now on, every CPU
// convolution pass runs on the algorithm named wherever that route can
// compute it (elsewhere the chooser decides as usual), until the next call;
// "" ends it. Returns the name forced before, or "". For tests that sweep
// each route over shapes the chooser would send elsewhere, and for comparing
// routes. (custom_conv.forced_algorithm in Python.)
std::string set_forced_conv2d_algorithm(const std::string& name);

// The op custom_conv::conv2d_algorithm: (algorithm, reason) for one pass
// ("forward", "backward_input" or "backward_weight") of conv2d_forward on
// these tensors, as the kernels would choose it.
std::tuple<std::string, std::string> conv2d_algorithm_op(
    const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view pass);

}  // namespace custom_conv
