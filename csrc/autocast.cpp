// Autocast for conv2d_forward and conv2d_reverse_mode (autograd.cpp), each
// recast into itself. Under torch.autocast, torch runs conv2d in the
// autocast dtype in effect for the device (float16 or bfloat16 on GPUs,
// bfloat16 on CPUs), and so do we: the floating-point tensors of that device
// other than float64 are cast (through autocast's cache, as torch's own conv
// does for weights), then the op is called again with autocast excluded, so
// the call reaches autograd and the backend kernel, and the gradients come
// back in the original dtypes. The dtype is read on every call, not fixed at
// registration as torch.library.register_autocast would. max_pool2d needs no
// rule: like torch's, it runs in its input's dtype.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace custom_conv {
namespace {

using Conv2dForward = at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                 c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t);

template <c10::DeviceType kDevice, c10::DispatchKey kAutocastKey, bool kReverseMode = false>
at::Tensor conv2d_forward_autocast(const at::Tensor& input, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  static const auto conv = c10::Dispatcher::singleton()
                               .findSchemaOrThrow(kReverseMode ? "custom_conv::conv2d_reverse_mode"
                                                               : "custom_conv::conv2d_forward", "")
                               .typed<Conv2dForward>();
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKey);
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(kDevice);
  const c10::optional<at::Tensor> bias_cast =
      bias.has_value() && bias->defined() ? c10::optional<at::Tensor>(at::autocast::cached_cast(dtype, *bias, kDevice))
                                          : bias;
  return conv.call(at::autocast::cached_cast(dtype, input, kDevice), at::autocast::cached_cast(dtype, weight, kDevice),
                   bias_cast, stride, padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, AutocastCPU, m) {
  m.impl("conv2d_forward", &conv2d_forward_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
  m.impl("conv2d_reverse_mode",
         &conv2d_forward_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU, true>);
}

TORCH_LIBRARY_IMPL(custom_conv, AutocastCUDA, m) {
  m.impl("conv2d_forward", &conv2d_forward_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
  m.impl("conv2d_reverse_mode",
         &conv2d_forward_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA, true>);
}

}  // namespace custom_conv
