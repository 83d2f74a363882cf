// Autograd for every op, in C++, for every backend.
//
// conv2d is bilinear in (input, weight), and so is each of its backward ops
// in its two tensor arguments. Each backward is the adjoint of one product:
//   forward          y  = F(x, w)
//   backward_input   gx = BI(gy, w)   adjoint of x -> F(x, w)
//   backward_weight  gw = BW(gy, x)   adjoint of w -> F(x, w)
// so every derivative of a derivative is again one of F, BI, BW, and
// gradients of any order are computed by our own ops. The same holds for
// max-pooling: its backward scatters through the saved indices, and the
// adjoint of that scatter is a gather through them.
//
// Each backward calls our ops through the dispatcher. When the engine runs it
// with create_graph=True (grad mode on), those calls are recorded, so the
// result is differentiable again; otherwise they go straight to the kernels.
#include "memory_format.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

namespace custom_conv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// In a backward that is not itself being differentiated (create_graph is
// false, so grad mode is off) our ops' autograd has nothing to record: call
// their kernels directly, below the autograd layer.
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
// conv2d_backward_input and conv2d_backward_weight have the same signature.
using Conv2dBackward = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                                  c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t);
using Conv2dBackwardBias = at::Tensor(const at::Tensor&);
using MaxPool2dForward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
                                                            c10::IntArrayRef, c10::IntArrayRef, bool);
using MaxPool2dBackward = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, c10::IntArrayRef,
                                     c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, bool);

at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                          int64_t groups) {
  static const auto handle = op<Conv2dForward>("custom_conv::conv2d_forward");
  return handle.call(input, weight, bias, stride, padding, dilation, groups);
}

at::Tensor conv2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 c10::SymIntArrayRef input_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                 c10::IntArrayRef dilation, int64_t groups) {
  static const auto handle = op<Conv2dBackward>("custom_conv::conv2d_backward_input");
  return handle.call(grad_output, weight, input_size, stride, padding, dilation, groups);
}

at::Tensor conv2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  c10::SymIntArrayRef weight_size, c10::IntArrayRef stride,
                                  c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  static const auto handle = op<Conv2dBackward>("custom_conv::conv2d_backward_weight");
  return handle.call(grad_output, input, weight_size, stride, padding, dilation, groups);
}

at::Tensor conv2d_backward_bias(const at::Tensor& grad_output) {
  static const auto handle = op<Conv2dBackwardBias>("custom_conv::conv2d_backward_bias");
  return handle.call(grad_output);
}

// Memory format (memory_format.h): the forward kernels return torch's
// layout; the backward functions below give the gradients the layout of the
// forward's result, as torch does, whatever the layout of grad_output.
void save_memory_format(AutogradContext* ctx, at::MemoryFormat format) {
  ctx->saved_data["memory_format"] = static_cast<int64_t>(format);
}

at::MemoryFormat saved_memory_format(AutogradContext* ctx) {
  return static_cast<at::MemoryFormat>(ctx->saved_data["memory_format"].toInt());
}

// stride, padding, dilation and groups of a convolution, kept in the context.
struct ConvArgs {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
  }
  static ConvArgs load(AutogradContext* ctx) {
    return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt()};
  }
};

// The window geometry of a max-pooling, kept in the context.
struct PoolArgs {
  std::vector<c10::SymInt> input_size;
  std::vector<int64_t> kernel_size, stride, padding, dilation;
  bool ceil_mode;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["input_size"] = input_size;
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["ceil_mode"] = ceil_mode;
  }
  static PoolArgs load(AutogradContext* ctx) {
    return {ctx->saved_data["input_size"].toSymIntVector(), ctx->saved_data["kernel_size"].toIntVector(),
            ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["ceil_mode"].toBool()};
  }
  at::Tensor backward(const at::Tensor& grad_output, const at::Tensor& indices) const {
    static const auto handle = op<MaxPool2dBackward>("custom_conv::max_pool2d_backward");
    return handle.call(grad_output, indices, input_size, kernel_size, stride, padding, dilation, ceil_mode);
  }
  // Which windows hold an input element: an (out_h, out_w) mask on the
  // device of `options`, as the kernels decide it (window_holds_input in
  // max_pool2d_window.h): pooling a plane of zeros gives 0 in those windows
  // and -inf in windows of padding only. Through the forward op, not a host
  // loop, so that it also traces under torch.compile.
  at::Tensor windows_holding_input(const at::TensorOptions& options) const {
    static const auto pool = op<MaxPool2dForward>("custom_conv::max_pool2d_forward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const at::Tensor zeros = at::zeros_symint({1, 1, input_size[2], input_size[3]}, options);
    const at::Tensor pooled = std::get<0>(pool.call(zeros, kernel_size, stride, padding, dilation, ceil_mode));
    return pooled[0][0].isfinite();
  }
};

// y = conv(x, w) + b. The gradients are the adjoints of the bilinear map:
// gx = conv2d_backward_input(gy, w), gw = conv2d_backward_weight(gy, x), and
// gb = gy summed over batch and space. Only the requested ones are computed.
struct Conv2dFunction : torch::autograd::Function<Conv2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
    ctx->save_for_backward({input, weight});
    ConvArgs{stride.vec(), padding.vec(), dilation.vec(), groups}.save(ctx);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    save_memory_format(ctx, conv2d_memory_format(input, weight));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv2d_forward(input, weight, bias, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];
    const ConvArgs a = ConvArgs::load(ctx);
    const BelowAutogradUnlessCreatingGraph dispatch;
    at::Tensor grad_input, grad_weight, grad_bias;
    if (grad.defined() && ctx->needs_input_grad(0)) {
      grad_input = conv2d_backward_input(grad, weight, input.sym_sizes(), a.stride, a.padding, a.dilation, a.groups);
    }
    if (grad.defined() && ctx->needs_input_grad(1)) {
      grad_weight = conv2d_backward_weight(grad, input, weight.sym_sizes(), a.stride, a.padding, a.dilation,
                                           a.groups);
    }
    if (grad.defined() && ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = conv2d_backward_bias(grad);
    }
    const at::MemoryFormat format = saved_memory_format(ctx);
    grad_input = in_memory_format(grad_input, format);
    grad_weight = in_memory_format(grad_weight, format);
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// gx = BI(gy, w). Its adjoint in gy is F(., w); its adjoint in w is BW(gy, .).
struct Conv2dBackwardInputFunction : torch::autograd::Function<Conv2dBackwardInputFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& weight,
                            c10::SymIntArrayRef input_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, int64_t groups) {
    ctx->save_for_backward({grad_output, weight});
    ConvArgs{stride.vec(), padding.vec(), dilation.vec(), groups}.save(ctx);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& gg = grads[0];
    const ConvArgs a = ConvArgs::load(ctx);
    const BelowAutogradUnlessCreatingGraph dispatch;
    at::Tensor d_grad_output, d_weight;
    if (gg.defined() && ctx->needs_input_grad(0)) {
      d_grad_output = conv2d_forward(gg, weight, c10::nullopt, a.stride, a.padding, a.dilation, a.groups);
    }
    if (gg.defined() && ctx->needs_input_grad(1)) {
      d_weight = conv2d_backward_weight(grad_output, gg, weight.sym_sizes(), a.stride, a.padding, a.dilation,
                                        a.groups);
    }
    return {d_grad_output, d_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// gw = BW(gy, x). Its adjoint in gy is F(x, .); its adjoint in x is BI(gy, .).
struct Conv2dBackwardWeightFunction : torch::autograd::Function<Conv2dBackwardWeightFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                            c10::SymIntArrayRef weight_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation, int64_t groups) {
    ctx->save_for_backward({grad_output, input});
    ConvArgs{stride.vec(), padding.vec(), dilation.vec(), groups}.save(ctx);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv2d_backward_weight(grad_output, input, weight_size, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& input = saved[1];
    const at::Tensor& gg = grads[0];
    const ConvArgs a = ConvArgs::load(ctx);
    const BelowAutogradUnlessCreatingGraph dispatch;
    at::Tensor d_grad_output, d_input;
    if (gg.defined() && ctx->needs_input_grad(0)) {
      d_grad_output = conv2d_forward(input, gg, c10::nullopt, a.stride, a.padding, a.dilation, a.groups);
    }
    if (gg.defined() && ctx->needs_input_grad(1)) {
      d_input = conv2d_backward_input(grad_output, gg, input.sym_sizes(), a.stride, a.padding, a.dilation,
                                      a.groups);
    }
    return {d_grad_output, d_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// gb = gy summed over batch and space; its adjoint spreads gb back over them.
struct Conv2dBackwardBiasFunction : torch::autograd::Function<Conv2dBackwardBiasFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output) {
    ctx->saved_data["grad_output_size"] = grad_output.sym_sizes().vec();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv2d_backward_bias(grad_output);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::vector<c10::SymInt> size = ctx->saved_data["grad_output_size"].toSymIntVector();
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return {at::Tensor()};
    return {grads[0].view({1, -1, 1, 1}).expand_symint(size)};
  }
};

// (y, indices) = max_pool2d(x): each output gradient goes back to the one
// input its index names. The indices are not differentiable.
struct MaxPool2dFunction : torch::autograd::Function<MaxPool2dFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, c10::IntArrayRef kernel_size,
                               c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                               bool ceil_mode) {
    static const auto pool = op<MaxPool2dForward>("custom_conv::max_pool2d_forward");
    PoolArgs{input.sym_sizes().vec(), kernel_size.vec(), stride.vec(), padding.vec(), dilation.vec(), ceil_mode}
        .save(ctx);
    save_memory_format(ctx, max_pool2d_memory_format(input));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, indices] = pool.call(input, kernel_size, stride, padding, dilation, ceil_mode);
    ctx->mark_non_differentiable({indices});
    ctx->save_for_backward({indices});
    return {output, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor indices = ctx->get_saved_variables()[0];
    const BelowAutogradUnlessCreatingGraph dispatch;
    at::Tensor grad_input;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      grad_input = PoolArgs::load(ctx).backward(grads[0], indices);
      grad_input = in_memory_format(grad_input, saved_memory_format(ctx));
    }
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// gx = P(gy, indices), the scatter of each output gradient to the input its
// index names. It is linear in gy; its adjoint gathers through the indices,
// from the windows that hold an input.
struct MaxPool2dBackwardFunction : torch::autograd::Function<MaxPool2dBackwardFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& indices,
                            c10::SymIntArrayRef input_size, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode) {
    const PoolArgs args{input_size.vec(), kernel_size.vec(), stride.vec(), padding.vec(), dilation.vec(), ceil_mode};
    args.save(ctx);
    ctx->save_for_backward({indices});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return args.backward(grad_output, indices);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor indices = ctx->get_saved_variables()[0];
    const at::Tensor& gg = grads[0];
    at::Tensor d_grad_output;
    if (gg.defined() && ctx->needs_input_grad(0)) {
      // As in the kernels, indices outside the plane (which max_pool2d_forward
      // never gives) read nothing either.
      const at::Tensor plane = gg.flatten(2);
      const int64_t size = plane.size(2);
      const at::Tensor holds = PoolArgs::load(ctx).windows_holding_input(gg.options());
      const at::Tensor inside = indices.ge(0).logical_and(indices.lt(size)).logical_and(holds);
      const at::Tensor flat = indices.clamp(0, std::max<int64_t>(size - 1, 0)).flatten(2);
      d_grad_output = plane.gather(2, flat).view_as(indices).mul(inside);
    }
    return {d_grad_output, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor conv2d_forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

at::Tensor conv2d_backward_input_autograd(const at::Tensor& grad_output, const at::Tensor& weight,
                                          c10::SymIntArrayRef input_size, c10::IntArrayRef stride,
                                          c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  return Conv2dBackwardInputFunction::apply(grad_output, weight, input_size, stride, padding, dilation, groups);
}

at::Tensor conv2d_backward_weight_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                           c10::SymIntArrayRef weight_size, c10::IntArrayRef stride,
                                           c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  return Conv2dBackwardWeightFunction::apply(grad_output, input, weight_size, stride, padding, dilation, groups);
}

at::Tensor conv2d_backward_bias_autograd(const at::Tensor& grad_output) {
  return Conv2dBackwardBiasFunction::apply(grad_output);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_autograd(
    const at::Tensor& input, c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, bool ceil_mode) {
  const variable_list out = MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode);
  return {out[0], out[1]};
}

at::Tensor max_pool2d_backward_autograd(const at::Tensor& grad_output, const at::Tensor& indices,
                                        c10::SymIntArrayRef input_size, c10::IntArrayRef kernel_size,
                                        c10::IntArrayRef stride, c10::IntArrayRef padding,
                                        c10::IntArrayRef dilation, bool ceil_mode) {
  return MaxPool2dBackwardFunction::apply(grad_output, indices, input_size, kernel_size, stride, padding, dilation,
                                          ceil_mode);
}

}  // namespace

TORCH_LIBRARY_IMPL(custom_conv, Autograd, m) {
  m.impl("conv2d_forward", &conv2d_forward_autograd);
  m.impl("conv2d_backward_input", &conv2d_backward_input_autograd);
  m.impl("conv2d_backward_weight", &conv2d_backward_weight_autograd);
  m.impl("conv2d_backward_bias", &conv2d_backward_bias_autograd);
  m.impl("max_pool2d_forward", &max_pool2d_forward_autograd);
  m.impl("max_pool2d_backward", &max_pool2d_backward_autograd);
}

}  // namespace custom_conv
