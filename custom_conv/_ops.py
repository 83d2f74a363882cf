"""Loads the compiled ops and gives them what the C++ side leaves to Python:
fake (meta) kernels, for torch.compile and shape propagation, and autograd.

Every op's backward is itself built from our ops, each with its own autograd
formula, so gradients of gradients (gradgradcheck, double backward) work too.
"""
import torch

try:
    from . import _C  # noqa: F401  (loading it registers the ops)
except ImportError as error:  # tested in tests/test_ops.py
    raise ImportError(
        "custom_conv: the compiled kernels (custom_conv._C) are missing or failed to load "
        f"({error}). Build them from the repository root with `make build`, or with "
        "`pip install --no-build-isolation -e .` against the torch you have."
    ) from error

ops = torch.ops.custom_conv


def conv2d_output_size(size, kernel, stride, padding, dilation):
    """Output length along one dimension: the number of kernel placements."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def max_pool2d_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Like conv2d_output_size, but with ceil_mode the last window may hang over
    the far edge, provided it starts inside the input or the near padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


# ---------------------------------------------------------------- fake kernels
# Shapes only; the C++ kernels are the single place where arguments are
# validated (see csrc/geometry.cpp). Outputs are contiguous, as in C++.

@torch.library.register_fake("custom_conv::conv2d_forward")
def _(input, weight, bias, stride, padding, dilation, groups):
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "conv2d: expected 4-D input and weight")
    out_h, out_w = (conv2d_output_size(input.shape[d], weight.shape[d], stride[d - 2], padding[d - 2],
                                       dilation[d - 2]) for d in (2, 3))
    return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))


@torch.library.register_fake("custom_conv::conv2d_backward_input")
def _(grad_output, weight, input_size, stride, padding, dilation, groups):
    return grad_output.new_empty(input_size)


@torch.library.register_fake("custom_conv::conv2d_backward_weight")
def _(grad_output, input, weight_size, stride, padding, dilation, groups):
    return grad_output.new_empty(weight_size)


@torch.library.register_fake("custom_conv::conv2d_backward_bias")
def _(grad_output):
    return grad_output.new_empty((grad_output.shape[1],))


@torch.library.register_fake("custom_conv::max_pool2d_forward")
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    torch._check(input.dim() == 4, lambda: "max_pool2d: expected a 4-D input")
    out_h, out_w = (max_pool2d_output_size(input.shape[d], kernel_size[d - 2], stride[d - 2],
                                           padding[d - 2], dilation[d - 2], ceil_mode) for d in (2, 3))
    shape = (input.shape[0], input.shape[1], out_h, out_w)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.long)


@torch.library.register_fake("custom_conv::max_pool2d_backward")
def _(grad_output, indices, input_size, kernel_size, stride, padding, dilation, ceil_mode):
    return grad_output.new_empty(input_size)


# -------------------------------------------------------------------- autograd
# conv2d is bilinear in (input, weight), and so is each of its backward ops in
# its two tensor arguments. Each backward below is the adjoint of one product:
#   forward          y  = F(x, w)
#   backward_input   gx = BI(gy, w)   adjoint of x -> F(x, w)
#   backward_weight  gw = BW(gy, x)   adjoint of w -> F(x, w)
# so every derivative of a derivative is again one of F, BI, BW.

# conv2d_forward and max_pool2d_forward, which every training step calls, have
# their autograd in C++ (csrc/autograd.cpp); the backward ops below, which
# only double backward differentiates, keep theirs here.

def _backward_input_setup(ctx, inputs, output):
    grad_output, weight, input_size, ctx.stride, ctx.padding, ctx.dilation, ctx.groups = inputs
    ctx.save_for_backward(grad_output, weight)


def _backward_input_backward(ctx, gg_input):
    # gx = BI(gy, w): adjoint in gy is F(., w); adjoint in w is BW(gy, .).
    grad_output, weight = ctx.saved_tensors
    args = (ctx.stride, ctx.padding, ctx.dilation, ctx.groups)
    d_grad_output = d_weight = None
    if ctx.needs_input_grad[0]:
        d_grad_output = ops.conv2d_forward(gg_input, weight, None, *args)
    if ctx.needs_input_grad[1]:
        d_weight = ops.conv2d_backward_weight(grad_output, gg_input, weight.shape, *args)
    return d_grad_output, d_weight, None, None, None, None, None


def _backward_weight_setup(ctx, inputs, output):
    grad_output, input, weight_size, ctx.stride, ctx.padding, ctx.dilation, ctx.groups = inputs
    ctx.save_for_backward(grad_output, input)


def _backward_weight_backward(ctx, gg_weight):
    # gw = BW(gy, x): adjoint in gy is F(x, .); adjoint in x is BI(gy, .).
    grad_output, input = ctx.saved_tensors
    args = (ctx.stride, ctx.padding, ctx.dilation, ctx.groups)
    d_grad_output = d_input = None
    if ctx.needs_input_grad[0]:
        d_grad_output = ops.conv2d_forward(input, gg_weight, None, *args)
    if ctx.needs_input_grad[1]:
        d_input = ops.conv2d_backward_input(grad_output, gg_weight, input.shape, *args)
    return d_grad_output, d_input, None, None, None, None, None


def _backward_bias_setup(ctx, inputs, output):
    ctx.grad_output_shape = inputs[0].shape


def _backward_bias_backward(ctx, gg_bias):
    return gg_bias.view(1, -1, 1, 1).expand(ctx.grad_output_shape)


def _pool_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _pool_backward_backward(ctx, gg_input):
    # The backward is linear in grad_output: it scatters through the indices,
    # so its adjoint gathers through them.
    (indices,) = ctx.saved_tensors
    # Indices past the plane (windows of padding only) read nothing: clamp
    # them for the gather and zero what they read.
    plane = gg_input.flatten(2)
    flat = indices.flatten(2)
    inside = (flat >= 0) & (flat < plane.shape[2])
    d_grad_output = plane.gather(2, flat.clamp(0, plane.shape[2] - 1)) * inside
    return d_grad_output.view_as(indices), None, None, None, None, None, None, None


torch.library.register_autograd("custom_conv::conv2d_backward_input", _backward_input_backward,
                                setup_context=_backward_input_setup)
torch.library.register_autograd("custom_conv::conv2d_backward_weight", _backward_weight_backward,
                                setup_context=_backward_weight_setup)
torch.library.register_autograd("custom_conv::conv2d_backward_bias", _backward_bias_backward,
                                setup_context=_backward_bias_setup)
torch.library.register_autograd("custom_conv::max_pool2d_backward", _pool_backward_backward,
                                setup_context=_pool_backward_setup)


# -------------------------------------------------------------------- autocast
# Under torch.autocast, torch runs conv2d in the autocast dtype that is in
# effect for the device (float16 or bfloat16 on GPUs, bfloat16 on CPUs), and
# so do we. torch.library.register_autocast is not enough: it casts to one
# dtype fixed at registration. So the kernels below do what register_autocast
# installs, except that they read the active dtype on every call. Like torch's
# cast policy they convert only floating-point tensors of that device type
# other than float64, then rerun the op with autocast excluded, so the call
# reaches the backend kernel (and autograd sees the casts and returns
# gradients in the original dtypes). max_pool2d needs no rule: like torch's,
# it runs in its input's dtype.

def _register_autocast(device_type, dispatch_key):
    excluded = torch._C.DispatchKeySet(dispatch_key)

    def cast(value, dtype):
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and value.device.type == device_type and value.dtype is not torch.float64:
            return value.to(dtype)
        return value

    @torch.library.impl("custom_conv::conv2d_forward", dispatch_key.name)
    def _(input, weight, bias, stride, padding, dilation, groups):
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return ops.conv2d_forward(cast(input, dtype), cast(weight, dtype), cast(bias, dtype),
                                      stride, padding, dilation, groups)


_register_autocast("cuda", torch._C.DispatchKey.AutocastCUDA)
_register_autocast("cpu", torch._C.DispatchKey.AutocastCPU)
