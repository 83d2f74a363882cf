// The one place that decides which algorithm runs a convolution (see
// conv2d_algorithm.h). The CPU has four (cpu/conv2d_routes.h), tried in the
// order winograd, direct, depthwise, im2col; the GPU two, depthwise and
// im2col with our own GEMM (conv2d_algorithm_cuda.cpp).
// The thresholds were measured with benchmarks/route_sweep.py and
// benchmarks/bench.py on x86-64 CPUs (results/benchmarks/), at the
// AVX-512 level unless they say otherwise.
#include "conv2d_algorithm.h"

#include "cpu/conv2d_routes.h"
#include "cpu/isa.h"

#include <c10/util/StringUtil.h>

#include <algorithm>
#include <atomic>

namespace custom_conv {
namespace {

// Direct kernels pay off where im2col costs as much as the GEMM it feeds:
// short reductions. Beyond this many steps (C_in/groups * kH * kW) our GEMM runs
// near the processor's peak, which the unblocked direct loops do not reach.
constexpr int64_t kMaxDirectSteps = 576;
// ... but the direct forward runs reductions of up to 128 input channels
// (1152 steps of a 3x3 kernel) faster than im2col's GEMM where it writes at
// most 128 output channels on planes of at least 14x14 (ms, direct / im2col,
// AVX-512): 128-128 @16 dilated 2 at batch 32 6.4 / 8.1, 128-128 /2 @32
// 7.4 / 10.0, 128-128 @14, @16, @28 at batch 1 0.264 / 0.314, 0.291 /
// 0.328, 0.786 / 0.869; not on a 12x12 plane (0.228 / 0.215) nor with 256
// output channels (128-256 /2 @32 at batch 1: 0.658 / 0.595).
constexpr int64_t kMaxDirectForwardSteps = 1152;
constexpr int64_t kMaxDirectForwardStepsOutChannels = 128;
constexpr int64_t kMinDirectForwardStepsPlane = 14 * 14;
// A 1x1 kernel needs no im2col at all, so the GEMM on the input itself wins.
constexpr int64_t kMinDirectTaps = 2;
// A strided layer's input gradient runs phase by phase; with a single
// sample on two threads, the phases' tiles shared out ran 0.85-2.0x
// im2col's time on the layers the direct kernels take at larger batches
// (route_sweep.py --shapes strided --batch 1: 3x3/2 64-64 @32 0.31 against
// 0.16 ms, 64-128 @56 1.31 against 0.72, 4x4/2 32-64 @64 0.41 against
// 0.48); on one thread the direct kernels ran 0.8-1.02x im2col's time
// there. The route must not depend on the thread count (results stay the
// same bits on any), and im2col's product is the one that spreads over
// more threads, so one sample takes im2col.
constexpr int64_t kMinDirectStridedInputGradBatch = 2;
// The direct forward kernel computes whole blocks of output channels and
// whole tiles of outputs; below this share of useful work (planes of 2x2,
// few output channels) im2col is faster.
constexpr double kMinDirectLaneUse = 0.6;
// The direct weight gradient keeps a tile of output channels in registers per
// input channel; for more output channels than this, im2col + GEMM is faster.
// Measured at batch 32 (AVX-512), direct against im2col: 1.03-1.24x faster
// from 96 to 160 output channels (ResNet-18's 64-128/2 @56: 18.5 against
// 19.9 ms), mixed at 192 (0.86-1.06x), 2x slower at 256 (64-256/2 @28).
constexpr int64_t kMaxDirectWeightGradOutChannels = 128;

// Winograd F(2x2, 3x3) does 2.25x fewer multiply-adds than the sum over the
// taps but pays for transforms (about 4x the input's and the output's size
// per pass) and runs its products as 16 thin matrix products; it wins where
// both channel counts are at least kMinWinogradChannels and the batch holds
// at least kMinWinogradTiles 2x2 output tiles (below that the kernel's
// transform, 16 * C_out * C_in values per call, and the fixed costs of a
// call dominate: ResNet-20's 64-channel 8x8 layer at batch 1, 16 tiles, ran
// 2x slower than the direct kernels). With 32
// channels (ResNet-20's 16x16 layer) the direct kernels ran 1.2-1.5x
// faster at the AVX-512 level; from 64 on (VGG's and ResNet's) Winograd.
// At the AVX2 level the direct kernels hold 12 accumulators in 16 registers,
// not up to 28 in 32, and there Winograd's forward and input gradient were
// already 8-16% faster on that 32-channel layer, its weight gradient still
// 1.2x slower (as fast at 16 channels: left to the direct kernels).
// With AVX-512 at half rate (below) Winograd's weight gradient wins from 32
// channels, in the channel layout, from 512 tiles (ms, Winograd / direct, 2
// and 1 threads): ResNet-20's 32-32 @16 at batch 32 0.73 / 0.80 and 1.37 /
// 1.54, at batch 8 (512 tiles) 0.26 / 0.34 and 0.37 / 0.41; 32-32 @8 at
// batch 32 0.22 / 0.23 and 0.37 / 0.42; @28 at batch 8 0.52 / 0.60. Not at
// batch 4 of the 16x16 plane (256 tiles: 0.33 / 0.23 on 2 threads) nor in the
// plane layout (32-32 @56 at batch 2: 0.95 / 0.61). That holds with its
// blocks of 64 tiles (cpu/conv2d_winograd.cpp: weight_block_tiles): in
// blocks of 1024, 4 MiB a thread, the 32-32 @16 weight gradient ran 1.2-1.3
// ms whenever the shared machine was busy.
// At half rate its forward and input gradient win from 32 channels too, on
// enough tiles (kMinWinogradTilesOverDirect32HalfRate), since its transforms
// no longer evict their own lines from L1 (cpu/conv2d_winograd.cpp:
// point_stride); at full rate that has not been measured since.
constexpr int64_t kMinWinogradChannels = 64;
constexpr int64_t kMinWinogradChannelsAvx2 = 32;
constexpr int64_t kMinWinogradChannelsHalfRate = 32;
constexpr int64_t kMinWinogradWeightGradChannelsHalfRate = 32;
constexpr int64_t kMinWinogradWeightGradTilesFewChannels = 512;

// AVX-512 on half-width units (cpu/isa.h: AMD's Zen 4) or on full-width ones,
// where the rules below differ.
bool half_rate_avx512() {
  return cpu_level() == CpuLevel::kAvx512 && cpu_avx512_half_rate();
}
bool full_rate_avx512() {
  return cpu_level() == CpuLevel::kAvx512 && !cpu_avx512_half_rate();
}

int64_t min_winograd_channels(Conv2dPass pass) {
  if (pass == Conv2dPass::kBackwardWeight) {
    return half_rate_avx512() ? kMinWinogradWeightGradChannelsHalfRate : kMinWinogradChannels;
  }
  if (cpu_level() == CpuLevel::kAvx2) return kMinWinogradChannelsAvx2;
  return half_rate_avx512() ? kMinWinogradChannelsHalfRate : kMinWinogradChannels;
}

constexpr int64_t kMinWinogradTiles = 64;
// Where AVX-512 runs at half rate (cpu/isa.h: AMD's Zen 4), multiply-adds
// cost twice as much against Winograd's transforms as on full-width units,
// and Winograd wins on fewer tiles: ResNet-18's 256-256 @14 at batch 1 (49
// tiles) in 1.17 ms against im2col's 1.70 and the direct kernels' 1.60. Not
// on 32 (VGG's 512-512 @2 at batch 32, 3.6-3.8 ms against 2.7-3.0: im2col
// skips the padding's taps there, as many multiply-adds as Winograd saves)
// nor on 16 (ResNet-18's 512-512 @7 at batch 1: 2-4x slower).
constexpr int64_t kMinWinogradTilesHalfRate = 48;

int64_t min_winograd_tiles() {
  return half_rate_avx512() ? kMinWinogradTilesHalfRate : kMinWinogradTiles;
}

// Against the direct kernels on full-width AVX-512 (where those take the
// pass), Winograd's forward and input gradient need more tiles: its 16
// products are thin and its transforms cost the same per tile, while the
// direct kernels run 55-75% of peak from 32 to 128 channels. Measured
// (ms, Winograd / direct; an Intel Xeon): at batch 1, 128-128 @16 (64 tiles) 0.337 / 0.276,
// @28 (196) 0.835 / 0.778, @32 (256) 0.795 / 0.931; with 64 channels each
// way Winograd needs more still: ResNet-20's 64-64 @8 at batch 32 (512
// tiles) 0.495 / 0.434, 64-64 @28 at batch 2 (392) 0.458 / 0.356, @56 at
// batch 1 (784) 0.742 / 0.669 (once the direct forward ran its steps in
// L1-sized chunks), @16 at batch 32 (2048) 1.69 / 1.64, VGG's @32 at batch
// 32 (8192) 5.7 / 6.5.
// At AVX2 Winograd won all of these but the 64-channel layers at batch 32.
// With AVX-512 at half rate (AMD Zen 4) it won with more channels (64-128
// @16 at batch 1, 64 tiles, 0.38 / 0.41; 128-128 @28, 196 tiles, 1.19 /
// 1.31), and with 64 channels each way from 256 tiles (ms, Winograd /
// direct, forward): ResNet-20's 64-64 @8 at batch 32 (512 tiles) 0.58 /
// 0.74, at batch 16 0.31 / 0.38, at batch 8 (128) 0.195 / 0.20-0.24, at
// batch 4 (64) 0.12 / 0.115; 64-64 @56 at batch 1 (784) 0.86 / 1.14.
// (Winograd's times there swing more than the direct kernels' while the
// machine is shared: the same forward ran 0.71-0.90 ms in a busy minute.)
// With fewer than 64 channels either way (half rate only: kMinWinogradChannelsHalfRate),
// Winograd needs more tiles again (ms, direct / Winograd, forward, 1 and 2
// threads; input gradients alike): ResNet-20's 32-32 @16 at batch 32 (2048
// tiles) 1.39 / 1.27 and 0.71 / 0.69, at batch 8 (512) 0.357 / 0.333 and
// 0.192 / 0.198, at batch 4 (256) 0.184 / 0.177 and 0.104 / 0.125; 32-32
// @32 at batch 8 (2048) 1.37 / 1.17 and 0.73 / 0.68; 32-64 @16 at batch 32
// 2.70 / 2.23 and 1.40 / 1.37. (32-32 @8 at batch 32, 512 tiles, also won,
// 0.38 / 0.33 and 0.225 / 0.201: the threshold is the cautious side.)
constexpr int64_t kMinWinogradTilesOverDirect = 256;
constexpr int64_t kMinWinogradTilesOverDirect64 = 1024;
constexpr int64_t kMinWinogradTilesOverDirect64HalfRate = 256;
constexpr int64_t kMinWinogradTilesOverDirect32HalfRate = 1024;
constexpr int64_t kFewWinogradChannelProduct = 64 * 64;
// Winograd's weight gradient in its plane layout (wide planes) reads both
// operands of its products repacked; on full-width AVX-512 the direct kernels were
// faster there on layers of up to this many channels each way, at batch 32:
// ResNet-18's 64-64 @56 25.4 against 29.7 ms, 64-64 @40 12.1 / 14.1, 48-64
// @56 18.3 / 25.6 (but 64-48 @40, whose 48 output channels fill 3/4 of the
// direct tiles, 12.9 / 11.7). At AVX2, with half the registers, the direct
// kernels were 1.1-1.3x slower on the same layers; with AVX-512 at half
// rate too (64-64 @56: Winograd 32.1 ms, direct 37.7).
constexpr int64_t kMaxWinogradPlaneWeightGradDirectChannels = 64;

bool is_disabled(Conv2dAlgorithm algorithm) {
  return algorithm_switched_off(algorithm);
}

constexpr const char* kSwitchedOff = "switched off by the user (custom_conv.disabled_algorithms)";

// Along one axis, the most taps of a kernel that reach one phase of a
// strided input gradient: input position i takes tap k from output (i + pad
// - k * dil) / stride where that divides evenly, so the phases i mod stride
// share the taps out between them (3 taps with stride 2: 2 and 1).
int64_t most_phase_taps(int64_t kernel, int64_t dil, int64_t pad, int64_t stride) {
  int64_t most = 0;
  for (int64_t a = 0; a < stride; ++a) {
    int64_t taps = 0;
    for (int64_t k = 0; k < kernel; ++k) taps += (a + pad - k * dil) % stride == 0;
    most = std::max(most, taps);
  }
  return most;
}

// The layer as seen by the pass's product: the input gradient of a stride-1
// layer is a convolution of the output gradient, with C_in and C_out swapped.
// A strided layer's input gradient is one such convolution per phase (the
// direct kernels compute it so), each over that phase's taps only: its
// largest phase counts. Counting all the taps sent the input gradients of
// 4x4/2 layers of 64-128 output channels to im2col, 1.15-1.35x slower
// there at batch 8 and 32 (AVX-512), and ResNet-18's 64-128 3x3/2 @56
// (1.04-1.16x).
int64_t reduction_steps(const Conv2dGeometry& g, Conv2dPass pass) {
  if (pass != Conv2dPass::kBackwardInput) {
    return g.in_channels_per_group() * g.kernel_h * g.kernel_w;
  }
  return g.out_channels_per_group() * most_phase_taps(g.kernel_h, g.dilation_h, g.pad_h, g.stride_h) *
         most_phase_taps(g.kernel_w, g.dilation_w, g.pad_w, g.stride_w);
}

// Why the direct kernels should not run this pass of the layer (the route
// itself says what it cannot run), or null when they should.
const char* direct_refusal(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype, std::string* detail) {
  if (is_disabled(Conv2dAlgorithm::kDirect)) {
    return "direct kernels switched off by the user (custom_conv.disabled_algorithms)";
  }
  if (const char* cannot = conv2d_direct_refusal(g, pass, dtype)) {
    return cannot;
  }
  if (g.kernel_h * g.kernel_w < kMinDirectTaps) {
    return "a 1x1 kernel needs no im2col: the GEMM reads the input as it is";
  }
  if (pass == Conv2dPass::kBackwardInput && g.batch < kMinDirectStridedInputGradBatch &&
      (g.stride_h > 1 || g.stride_w > 1)) {
    return "a single sample's strided input gradient: im2col's product spreads over the threads better";
  }
  const bool long_forward = pass == Conv2dPass::kForward &&
                            g.out_channels_per_group() <= kMaxDirectForwardStepsOutChannels &&
                            g.out_h * g.out_w >= kMinDirectForwardStepsPlane;
  const int64_t max_steps = long_forward ? kMaxDirectForwardSteps : kMaxDirectSteps;
  if (reduction_steps(g, pass) > max_steps) {
    if (detail) *detail = c10::str(" (", reduction_steps(g, pass), " > ", max_steps, ")");
    return "the reduction is long enough for the GEMM to run near peak";
  }
  if (pass == Conv2dPass::kBackwardWeight) {
    if (g.out_channels_per_group() > kMaxDirectWeightGradOutChannels) {
      return "too many output channels for the direct weight-gradient tiles";
    }
    return nullptr;
  }
  const DirectWork work = direct_forward_work(g, dtype, pass == Conv2dPass::kBackwardInput);
  if (!(work.useful >= kMinDirectLaneUse * work.computed)) {
    if (detail) {
      *detail = c10::str(" (", static_cast<int>(100 * work.useful / work.computed), "% useful, below ",
                         static_cast<int>(100 * kMinDirectLaneUse), "%)");
    }
    return "too many vector lanes or tile positions would compute nothing";
  }
  if (detail) {
    *detail = c10::str(", ", static_cast<int>(100 * work.useful / work.computed), "% of the work useful");
  }
  return nullptr;
}

// Why Winograd should not run this pass of the layer (the route itself says
// what it cannot run), or null when it should.
const char* winograd_refusal(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype) {
  if (is_disabled(Conv2dAlgorithm::kWinograd)) {
    return "winograd switched off by the user (custom_conv.disabled_algorithms)";
  }
  if (const char* cannot = conv2d_winograd_refusal(g, pass, dtype)) {
    return cannot;
  }
  if (std::min(g.in_channels, g.out_channels) < min_winograd_channels(pass)) {
    return "too few channels for winograd's products";
  }
  const int64_t tiles = g.batch * ceil_div(g.out_h, 2) * ceil_div(g.out_w, 2);
  if (tiles < min_winograd_tiles()) {
    return "too few output tiles to pay for winograd's kernel transform";
  }
  const bool few_channels = g.in_channels * g.out_channels <= kFewWinogradChannelProduct;
  const bool under_64 = half_rate_avx512() && std::min(g.in_channels, g.out_channels) < kMinWinogradChannels;
  const int64_t min_tiles_over_direct =
      under_64 ? kMinWinogradTilesOverDirect32HalfRate
               : (!few_channels ? kMinWinogradTilesOverDirect
                                : (half_rate_avx512() ? kMinWinogradTilesOverDirect64HalfRate
                                                      : kMinWinogradTilesOverDirect64));
  if (pass != Conv2dPass::kBackwardWeight && cpu_level() == CpuLevel::kAvx512 &&
      (few_channels || under_64 || full_rate_avx512()) && tiles < min_tiles_over_direct &&
      direct_refusal(g, pass, dtype, nullptr) == nullptr) {
    return "too few output tiles for winograd to beat the direct kernels";
  }
  if (pass == Conv2dPass::kBackwardWeight && std::min(g.in_channels, g.out_channels) < kMinWinogradChannels &&
      (tiles < kMinWinogradWeightGradTilesFewChannels || conv2d_winograd_weight_grad_in_planes(g)) &&
      direct_refusal(g, pass, dtype, nullptr) == nullptr) {
    return "too few channels for winograd's weight gradient on so few tiles, or on wide planes";
  }
  if (pass == Conv2dPass::kBackwardWeight && full_rate_avx512() &&
      std::max(g.in_channels, g.out_channels) <= kMaxWinogradPlaneWeightGradDirectChannels &&
      conv2d_winograd_weight_grad_in_planes(g) && direct_refusal(g, pass, dtype, nullptr) == nullptr) {
    return "its weight gradient on wide planes is slower than the direct kernels' up to 64 channels";
  }
  return nullptr;
}

// The algorithm forced by the user (custom_conv.forced_algorithm), or -1.
std::atomic<int> forced_algorithm{-1};

// Every algorithm, in the order the CPU chooser tries them; the last, im2col,
// takes every layer and so cannot be switched off.
constexpr Conv2dAlgorithm kAlgorithms[] = {Conv2dAlgorithm::kWinograd, Conv2dAlgorithm::kDirect,
                                          Conv2dAlgorithm::kDepthwise, Conv2dAlgorithm::kIm2col};
constexpr Conv2dAlgorithm kFallback = Conv2dAlgorithm::kIm2col;

Conv2dAlgorithm algorithm_named(const std::string& name) {
  for (const Conv2dAlgorithm a : kAlgorithms) {
    if (name == algorithm_name(a)) return a;
  }
  TORCH_CHECK_VALUE(false, "no conv2d algorithm called '", name, "' (one of ", c10::Join(", ", conv2d_algorithms()),
                    ")");
}

}  // namespace

const char* conv2d_pass_name(Conv2dPass pass) {
  switch (pass) {
    case Conv2dPass::kForward: return "forward";
    case Conv2dPass::kBackwardInput: return "backward-input";
    default: return "backward-weight";
  }
}

const char* algorithm_name(Conv2dAlgorithm algorithm) {
  switch (algorithm) {
    case Conv2dAlgorithm::kDirect: return "direct";
    case Conv2dAlgorithm::kDepthwise: return "depthwise";
    case Conv2dAlgorithm::kWinograd: return "winograd";
    default: return "im2col";
  }
}

namespace {

// The chooser proper: the first algorithm, in the order winograd, direct,
// depthwise, im2col, that can run the pass and is worth running.
Conv2dAlgorithm choose_by_cost(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype, std::string* why) {
  const char* not_winograd = winograd_refusal(g, pass, dtype);
  if (not_winograd == nullptr) {
    if (why) *why = "winograd: a 3x3 stride-1 layer in float32 with enough channels and tiles (F(2x2, 3x3))";
    return Conv2dAlgorithm::kWinograd;
  }
  // Why not Winograd, where the layer has its shape: worth saying (when asked).
  const std::string winograd_note =
      why && g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dilation_h == 1 &&
              g.dilation_w == 1
          ? c10::str("; not winograd: ", not_winograd)
          : std::string();
  // Groups of one input channel each: separate planes, which the depthwise
  // loops handle and the direct kernels would reduce over a single channel.
  // One group of one channel (a grayscale first layer) is an ordinary
  // convolution: the direct kernels, else im2col (its input gradient ran
  // 1.7x faster there than the depthwise loops).
  const bool depthwise_layer = g.in_channels_per_group() == 1 && g.groups > 1;
  std::string detail;
  const char* refusal = depthwise_layer ? "depthwise layers take the depthwise loops"
                                        : direct_refusal(g, pass, dtype, why ? &detail : nullptr);
  if (refusal == nullptr) {
    if (why) *why = c10::str("direct: the ", conv2d_pass_name(pass), " fits the direct kernels (", c10::toString(dtype),
                             ", ", reduction_steps(g, pass), " reduction steps", detail, ")", winograd_note);
    return Conv2dAlgorithm::kDirect;
  }
  if (depthwise_layer) {
    if (is_disabled(Conv2dAlgorithm::kDepthwise)) {
      if (why) *why = c10::str("im2col: depthwise ", kSwitchedOff);
      return Conv2dAlgorithm::kIm2col;
    }
    if (why) *why = c10::str("depthwise: one input channel per group; not direct: ", refusal, detail, winograd_note);
    return Conv2dAlgorithm::kDepthwise;
  }
  if (why) *why = c10::str("im2col: not direct: ", refusal, detail, winograd_note);
  return Conv2dAlgorithm::kIm2col;
}

}  // namespace

Conv2dAlgorithm choose_conv2d_algorithm(const Conv2dGeometry& g, Conv2dPass pass, at::ScalarType dtype,
                                        c10::DeviceType device, std::string* why) {
  if (device != c10::DeviceType::CPU) {
    return choose_cuda_conv2d_algorithm(g, pass, dtype, why);
  }
  const int forced = forced_algorithm.load(std::memory_order_relaxed);
  if (forced < 0) {
    return choose_by_cost(g, pass, dtype, why);
  }
  const auto algorithm = static_cast<Conv2dAlgorithm>(forced);
  const char* cannot = cpu_route(algorithm).refusal(g, pass, dtype);
  if (cannot == nullptr) {
    if (why) *why = c10::str(algorithm_name(algorithm), ": forced by the user (custom_conv.forced_algorithm)");
    return algorithm;
  }
  const Conv2dAlgorithm chosen = choose_by_cost(g, pass, dtype, why);
  if (why) *why += c10::str("; forced ", algorithm_name(algorithm), " cannot run it: ", cannot);
  return chosen;
}

std::string set_forced_conv2d_algorithm(const std::string& name) {
  const int wanted = name.empty() ? -1 : static_cast<int>(algorithm_named(name));
  const int previous = forced_algorithm.exchange(wanted);
  return previous < 0 ? std::string() : std::string(algorithm_name(static_cast<Conv2dAlgorithm>(previous)));
}

std::vector<std::string> conv2d_algorithms() {
  std::vector<std::string> names;
  for (const Conv2dAlgorithm a : kAlgorithms) {
    names.emplace_back(algorithm_name(a));
  }
  return names;
}

std::vector<std::string> set_disabled_conv2d_algorithms(const std::vector<std::string>& names) {
  unsigned mask = 0;
  bool tensor_cores = false, implicit_gemm = false, channels_last_gather = false;
  for (const std::string& name : names) {
    if (name == kTensorCores) {
      tensor_cores = true;
      continue;
    }
    if (name == kImplicitGemm) {
      implicit_gemm = true;
      continue;
    }
    if (name == kChannelsLastGather) {
      channels_last_gather = true;
      continue;
    }
    const Conv2dAlgorithm algorithm = algorithm_named(name);
    TORCH_CHECK_VALUE(algorithm != kFallback, algorithm_name(kFallback),
                      " is every layer's fallback and cannot be switched off");
    mask |= 1u << static_cast<unsigned>(algorithm);
  }
  const Switches previous = set_switched_off({mask, tensor_cores, implicit_gemm, channels_last_gather});
  std::vector<std::string> before;
  for (const Conv2dAlgorithm a : kAlgorithms) {
    if ((previous.algorithms >> static_cast<unsigned>(a)) & 1u) {
      before.emplace_back(algorithm_name(a));
    }
  }
  if (previous.tensor_cores) {
    before.emplace_back(kTensorCores);
  }
  if (previous.implicit_gemm) {
    before.emplace_back(kImplicitGemm);
  }
  if (previous.channels_last_gather) {
    before.emplace_back(kChannelsLastGather);
  }
  return before;
}

std::tuple<std::string, std::string> conv2d_algorithm_op(
    const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::string_view pass) {
  const Conv2dGeometry g = checked_conv2d_forward(input, weight, c10::nullopt, stride, padding, dilation, groups);
  Conv2dPass p;
  if (pass == "forward") {
    p = Conv2dPass::kForward;
  } else if (pass == "backward_input") {
    p = Conv2dPass::kBackwardInput;
  } else {
    TORCH_CHECK(pass == "backward_weight", "conv2d_algorithm: pass must be forward, backward_input or ",
                "backward_weight, got '", std::string(pass), "'");
    p = Conv2dPass::kBackwardWeight;
  }
  std::string why;
  const Conv2dAlgorithm algorithm = choose_conv2d_algorithm(g, p, input.scalar_type(), input.device().type(), &why);
  return {algorithm_name(algorithm), why};
}

}  // namespace custom_conv
