// Autograd for the two forward ops, in C++: conv2d_forward and
// max_pool2d_forward, for every backend. A training step calls them for
// every layer, so their autograd runs in C++ rather than as a Python
// torch.autograd.Function, which cost about 80 µs per conv layer and step.
//
// Each backward calls our backward ops through the dispatcher. Those have
// their own autograd (custom_conv/_ops.py), so when the engine runs this
// backward with create_graph=True the result is differentiable again: double
// backward works. (Without create_graph they are called below autograd.)
// Fake kernels and autocast rules stay in _ops.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace custom_conv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// In a backward that is not itself being differentiated (create_graph is
// false, so grad mode is off) the backward ops' own autograd has nothing to
// record: call their kernels directly, past the (Python) autograd layer.
struct BelowAutogradUnlessCreatingGraph {
  c10::optional<at::AutoDispatchBelowADInplaceOrView> guard;
  BelowAutogradUnlessCreatingGraph() {
    if (!at::GradMode::is_enabled()) guard.emplace();
  }
};

// A typed handle on one of our ops, looked up once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Conv2dForward = at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                 c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t);
using Conv2dBackwardInput = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                                       c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t);
using Conv2dBackwardBias = at::Tensor(const at::Tensor&);
using MaxPool2dForward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
                                                            c10::IntArrayRef, c10::IntArrayRef, bool);
using MaxPool2dBackward = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::IntArrayRef,
                                     c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, bool);

// y = conv(x, w) + b. The gradients are the adjoints of the bilinear map:
// gx = conv2d_backward_input(gy, w), gw = conv2d_backward_weight(gy, x), and
// gb = gy summed over batch and space. Only the requested ones are computed.
struct Conv2dFunction : torch::autograd::Function<Conv2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
    static const auto conv = op<Conv2dForward>("custom_conv::conv2d_forward");
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv.call(input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto backward_input = op<Conv2dBackwardInput>("custom_conv::conv2d_backward_input");
    static const auto backward_weight = op<Conv2dBackwardInput>("custom_conv::conv2d_backward_weight");
    static const auto backward_bias = op<Conv2dBackwardBias>("custom_conv::conv2d_backward_bias");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const BelowAutogradUnlessCreatingGraph dispatch;
    at::Tensor grad_input, grad_weight, grad_bias;
    if (grad.defined() && ctx->needs_input_grad(0)) {
      grad_input = backward_input.call(grad, weight, input.sym_sizes(), stride, padding, dilation, groups);
    }
    if (grad.defined() && ctx->needs_input_grad(1)) {
      grad_weight = backward_weight.call(grad, input, weight.sym_sizes(), stride, padding, dilation, groups);
    }
    if (grad.defined() && ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = backward_bias.call(grad);
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// (y, indices) = max_pool2d(x): each output gradient goes back to the one
// input its index names. The indices are not differentiable.
struct MaxPool2dFunction : torch::autograd::Function<MaxPool2dFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, c10::IntArrayRef kernel_size,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               bool ceil_mode) {
    static const auto pool = op<MaxPool2dForward>("custom_conv::max_pool2d_forward");
    ctx->saved_data["input_size"] = input.sym_sizes().vec();
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, indices] = pool.call(input, kernel_size, stride, padding, dilation, ceil_mode);
    ctx->mark_non_differentiable({indices});
    ctx->save_for_backward({indices});
    return {output, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto pool_backward = op<MaxPool2dBackward>("custom_conv::max_pool2d_backward");
    const at::Tensor indices = ctx->get_saved_variables()[0];
    const BelowAutogradUnlessCreatingGraph dispatch;
    at::Tensor grad_input;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      const std::vector<c10::SymInt> input_size = ctx->saved_data["input_size"].toSymIntVector();
      grad_input = pool_backward.call(grads[0], indices, input_size, ctx->saved_data["kernel_size"].toIntVector(),
                                      ctx->saved_data["stride"].toIntVector(),
                                      ctx->saved_data["padding"].toIntVector(),
                                      ctx->saved_data["dilation"].toIntVector(),
                                      ctx->saved_data["ceil_mode"].toBool());
    }
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv2d_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_autograd(
    const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, bool ceil_mode) {
  const variable_list out = MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, Autograd, m) {
  m.impl("conv2d_forward", &conv2d_forward_autograd);
  m.impl("max_pool2d_forward", &max_pool2d_forward_autograd);
}

}  // namespace custom_conv
