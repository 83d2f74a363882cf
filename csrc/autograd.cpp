// conv2d_forward's reverse-mode derivative in C++ (and max_pool2d_forward's,
// below, in the same way), for the case training
// runs nearly always: plain autograd (backward, to any order), no torch.func
// transform, no forward-mode AD. It is the same rule as custom_conv/autograd.py's
// _Conv2dForward (gx = BI(gy, w), gw = BW(gy, x), gb = gy summed), which stays
// the op's Autograd kernel and handles every other case; this one is the
// Autograd kernel of conv2d_reverse_mode, the same op with only this
// derivative, which autograd.py's entry point for conv2d_forward calls where
// it may. The Python Function costs tens of microseconds a layer per training
// step in the interpreter (forward, setup_context, backward and the backward
// ops' Python kernels; a forward and backward of a 3x3 conv too small to
// compute anything took 1.4x as long through it), as much as a small
// layer's arithmetic at a small batch.
//
// The backward calls the backward ops through the dispatcher: where the
// graph of the backward is recorded (create_graph=True) they pass through
// their Python Autograd kernels, which record them for the next derivative;
// otherwise they go straight to the backend kernels.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "conv2d_algorithm.h"
#include "geometry.h"
#include "memory_format.h"

namespace custom_conv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ConvForward = at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                               c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t);
using ConvBackward = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::IntArrayRef,
                                c10::IntArrayRef, c10::IntArrayRef, int64_t);
using ConvBackwardBias = at::Tensor(const at::Tensor&);

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Calls `f` below autograd unless the backward's own graph is being recorded.
template <typename F>
at::Tensor differentiable_if_recording(F f) {
  if (at::GradMode::is_enabled()) {
    return f();
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return f();
}

// A gradient in the forward's layout (memory_format.h's rule, the strides of
// at::empty in that format), written as a contiguous copy of the NHWC view,
// which vmap takes (batched gradients run the backward under it; at::empty
// and copy_ into it fail there): autograd.py's _in_memory_format.
at::Tensor gradient_in_memory_format(const at::Tensor& t, bool channels_last) {
  if (!t.defined() || !channels_last) {
    return t;
  }
  const c10::SymIntArrayRef s = t.sym_sizes();
  const std::vector<c10::SymInt> strides = {s[1] * s[2] * s[3], c10::SymInt(1), s[3] * s[1], s[1]};
  if (t.sym_strides() == c10::SymIntArrayRef(strides)) {
    return t;
  }
  return t.permute({0, 2, 3, 1}).clone(at::MemoryFormat::Contiguous).permute({0, 3, 1, 2});
}

// The output gradient as both backward passes are to read it: where each
// would gather from a channels-last copy of it (the GPU's tensor cores, given
// an NCHW gradient: cuda_conv_backward_shares_channels_last), that copy, made
// once here instead of once in each pass. The CPU's kernels read NCHW.
at::Tensor grad_output_for_both_passes(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                       int64_t groups) {
  if (grad.is_cpu() || grad.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return grad;
  }
  const Conv2dGeometry g = conv2d_geometry(input.sizes(), weight.sizes(), stride, padding, dilation, groups);
  const bool shared = cuda_conv_backward_shares_channels_last(g, grad.scalar_type());
  return shared ? grad.contiguous(at::MemoryFormat::ChannelsLast) : grad;
}

struct Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, int64_t groups) {
    static const auto conv = op<ConvForward>("custom_conv::conv2d_forward");
    at::Tensor output;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = conv.call(input, weight, bias, stride, padding, dilation, groups);
    }
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["channels_last"] = conv2d_memory_format(input, weight) == at::MemoryFormat::ChannelsLast;
    ctx->set_materialize_grads(false);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_input = op<ConvBackward>("custom_conv::conv2d_backward_input");
    static const auto backward_weight = op<ConvBackward>("custom_conv::conv2d_backward_weight");
    static const auto backward_bias = op<ConvBackwardBias>("custom_conv::conv2d_backward_bias");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &grad = grads[0];
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector(),
                               padding = ctx->saved_data["padding"].toIntVector(),
                               dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool channels_last = ctx->saved_data["channels_last"].toBool();
    at::Tensor grad_input, grad_weight, grad_bias;
    if (grad.defined()) {
      // The context numbers only the tensors among forward's arguments: the bias is the third if given.
      const bool both = ctx->needs_input_grad(0) && ctx->needs_input_grad(1);
      const at::Tensor grad_output =
          both ? grad_output_for_both_passes(grad, input, weight, stride, padding, dilation, groups) : grad;
      if (ctx->needs_input_grad(0)) {
        grad_input = differentiable_if_recording([&] {
          return backward_input.call(grad_output, weight, input.sym_sizes(), stride, padding, dilation, groups);
        });
      }
      if (ctx->needs_input_grad(1)) {
        grad_weight = differentiable_if_recording([&] {
          return backward_weight.call(grad_output, input, weight.sym_sizes(), stride, padding, dilation, groups);
        });
      }
      if (has_bias && ctx->needs_input_grad(2)) {
        grad_bias = differentiable_if_recording([&] { return backward_bias.call(grad); });
      }
    }
    return {gradient_in_memory_format(grad_input, channels_last), gradient_in_memory_format(grad_weight, channels_last),
            grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv2d_forward_reverse_mode(const at::Tensor& input, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

// Below autograd (inference tensors, or a graph that recorded this op and
// runs without autograd), it is conv2d_forward itself.
at::Tensor conv2d_forward_reverse_mode_below_autograd(const at::Tensor& input, const at::Tensor& weight,
                                                      const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                                      c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                                      int64_t groups) {
  static const auto conv = op<ConvForward>("custom_conv::conv2d_forward");
  return conv.call(input, weight, bias, stride, padding, dilation, groups);
}

using MaxPoolForward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
                                                          c10::IntArrayRef, c10::IntArrayRef, bool);
using MaxPoolBackward = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::IntArrayRef,
                                   c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, bool);

// max_pool2d_forward's reverse mode, autograd.py's _MaxPool2dForward rule:
// each output gradient goes back to the one input its index names (the
// indices are saved, the input only by its sizes); the indices are not
// differentiable. A max-pool of LeNet-5's first layer at batch 1 took 72 us
// forward and backward through the Python Function, torch's own 30 us.
struct MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, c10::IntArrayRef kernel_size,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               bool ceil_mode) {
    static const auto pool = op<MaxPoolForward>("custom_conv::max_pool2d_forward");
    at::Tensor output, indices;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(output, indices) = pool.call(input, kernel_size, stride, padding, dilation, ceil_mode);
    }
    ctx->mark_non_differentiable({indices});
    ctx->save_for_backward({indices});
    ctx->saved_data["input_size"] = input.sym_sizes();
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["channels_last"] = max_pool2d_memory_format(input) == at::MemoryFormat::ChannelsLast;
    ctx->set_materialize_grads(false);
    return {output, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto pool_backward = op<MaxPoolBackward>("custom_conv::max_pool2d_backward");
    const at::Tensor& grad = grads[0];
    at::Tensor grad_input;
    if (grad.defined() && ctx->needs_input_grad(0)) {
      const at::Tensor indices = ctx->get_saved_variables()[0];
      const std::vector<c10::SymInt> input_size = ctx->saved_data["input_size"].toSymIntVector();
      grad_input = differentiable_if_recording([&] {
        return pool_backward.call(grad, indices, input_size, ctx->saved_data["kernel_size"].toIntVector(),
                                  ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
                                  ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["ceil_mode"].toBool());
      });
      grad_input = gradient_in_memory_format(grad_input, ctx->saved_data["channels_last"].toBool());
    }
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_reverse_mode(const at::Tensor& input,
                                                                   c10::IntArrayRef kernel_size,
                                                                   c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                                   c10::IntArrayRef dilation, bool ceil_mode) {
  const variable_list out = MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_reverse_mode_below_autograd(
    const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, bool ceil_mode) {
  static const auto pool = op<MaxPoolForward>("custom_conv::max_pool2d_forward");
  return pool.call(input, kernel_size, stride, padding, dilation, ceil_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, Autograd, m) {
  m.impl("conv2d_reverse_mode", &conv2d_forward_reverse_mode);
  m.impl("max_pool2d_reverse_mode", &max_pool2d_forward_reverse_mode);
}

TORCH_LIBRARY_IMPL(custom_conv, CompositeExplicitAutograd, m) {
  m.impl("conv2d_reverse_mode", &conv2d_forward_reverse_mode_below_autograd);
  m.impl("max_pool2d_reverse_mode", &max_pool2d_forward_reverse_mode_below_autograd);
}

}  // namespace custom_conv
