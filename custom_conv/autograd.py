"""Every derivative of our ops, in one place: backward (reverse mode, to any
order), jvp (forward mode) and vmap, for plain autograd and torch.func alike.

conv2d is bilinear in (input, weight), and so is each of its backward ops in
its two tensor arguments. Each backward is the adjoint of one product:

    forward          y  = F(x, w)
    backward_input   gx = BI(gy, w)    adjoint of x -> F(x, w)
    backward_weight  gw = BW(gy, x)    adjoint of w -> F(x, w)

so every derivative of a derivative, in either mode, is again one of F, BI
and BW: gradients of any order run on our own ops. Max-pooling's backward
scatters through the saved indices; its adjoint (and the forward's jvp)
gathers through them, from the windows that hold input, asked of the forward
kernel so that the rule of max_pool2d_window.h decides here too. Average
pooling (adaptive too) is linear, y = A x: its backward is A^T, and the
adjoint of that backward is A again, the forward, so its derivatives of any
order are its two ops.

Each op gets one torch.autograd.Function (setup_context style, with backward,
jvp and generate_vmap_rule, which is what torch.func needs) and an Autograd
kernel that applies it, so torch.ops.custom_conv.* differentiate however they
are reached. Each op also gets a batching rule (torch.library.register_vmap):
a vmapped batch becomes more samples where the op's other tensors are shared,
and more groups where they are not, so vmap, jacrev and jacfwd run our kernels
once per call, not once per batch element.

Gradients come back in the layout of the forward's result, torch's rule,
which the kernels follow for results (csrc/memory_format.h): a result is
channels_last when the conv's input or weight, or the pool's input, suggests
it (torch._prims_common.suggest_memory_format is eager torch's
Tensor.suggest_memory_format in Python).
"""
import torch
import torch.autograd.forward_ad as forward_ad
from torch._prims_common import suggest_memory_format

from ._ops import ops

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
           "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
           "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d_forward",
           "adaptive_max_pool2d_backward"]

# ------------------------------------------------------------ memory format


def _suggests_channels_last(t):
    """suggest_memory_format(t) == channels_last: eager torch's rule for a 4-D
    tensor's strides (c10's is_channels_last_strides_2d), in plain ints, as
    torch._prims_common's version with its symbolic-shape guards costs tens of
    microseconds a call; that version where the sizes are symbolic."""
    sizes, strides = t.shape, t.stride()
    if not all(type(v) is int for v in (*sizes, *strides)):
        return suggest_memory_format(t) == torch.channels_last
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):  # C, W, H, N: the order of channels_last's strides, smallest first
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:  # N111-like ties go to the contiguous format
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def _conv2d_memory_format(input, weight):
    channels_last = _suggests_channels_last(input) or _suggests_channels_last(weight)
    return torch.channels_last if channels_last else torch.contiguous_format


def _in_memory_format(t, memory_format):
    """`t` with torch's strides for `memory_format` (also for one channel,
    where t.contiguous(channels_last) keeps NCHW strides that torch's results
    do not have). Written as a contiguous copy of the NHWC view, as
    torch.func.vmap (which batched gradients run under) takes no other
    clone(memory_format=...); clone, unlike contiguous(), always gives
    standard strides, those of size-1 dimensions too."""
    if t is None or memory_format != torch.channels_last:
        return t
    n, c, h, w = t.shape
    if t.stride() == (h * w * c, 1, w * c, c):
        return t
    return t.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).permute(0, 3, 1, 2)


def _below_autograd():
    """Where a Function's forward calls its op: straight to the kernels (grad
    mode is off there, and a torch.func transform has unwrapped the inputs)."""
    return torch._C._AutoDispatchBelowAutograd()


def _sum(*terms):
    """The sum of the terms that are not None (None if all are)."""
    present = [t for t in terms if t is not None]
    return None if not present else sum(present[1:], present[0])


# ------------------------------------------------------------ conv2d


class _Conv2dForward(torch.autograd.Function):
    """y = F(x, w) + b. gx = BI(gy, w), gw = BW(gy, x), gb = gy summed over
    batch and space; the tangent is F(dx, w) + F(x, dw) + db."""
    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        with _below_autograd():
            return ops.conv2d_forward(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, *ctx.args = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.has_bias = bias is not None
        ctx.output_size = output.shape
        ctx.memory_format = _conv2d_memory_format(input, weight)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None
        if grad is not None and needs_input:
            grad_input = conv2d_backward_input(grad, weight, input.shape, *ctx.args)
        if grad is not None and needs_weight:
            grad_weight = conv2d_backward_weight(grad, input, weight.shape, *ctx.args)
        if grad is not None and ctx.has_bias and needs_bias:
            grad_bias = conv2d_backward_bias(grad)
        return (_in_memory_format(grad_input, ctx.memory_format), _in_memory_format(grad_weight, ctx.memory_format),
                grad_bias, None, None, None, None)

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        input, weight = ctx.saved_tensors
        return _sum(None if input_t is None else conv2d_forward(input_t, weight, None, *ctx.args),
                    None if weight_t is None else conv2d_forward(input, weight_t, None, *ctx.args),
                    None if bias_t is None else bias_t.view(1, -1, 1, 1).expand(ctx.output_size))


class _Conv2dBackwardInput(torch.autograd.Function):
    """gx = BI(gy, w): its adjoint in gy is F(., w), its adjoint in w is BW(gy, .).
    It is also the forward of a transposed convolution (functional.py), whose
    gradients torch gives in the layout gy (its input) or w suggest."""
    @staticmethod
    def forward(grad_output, weight, input_size, stride, padding, dilation, groups):
        with _below_autograd():
            return ops.conv2d_backward_input(grad_output, weight, input_size, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, weight, ctx.input_size, *ctx.args = inputs
        ctx.save_for_backward(grad_output, weight)
        ctx.save_for_forward(grad_output, weight)
        ctx.memory_format = _conv2d_memory_format(grad_output, weight)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg):
        grad_output, weight = ctx.saved_tensors
        d_grad_output = d_weight = None
        if gg is not None and ctx.needs_input_grad[0]:
            d_grad_output = conv2d_forward(gg, weight, None, *ctx.args)
        if gg is not None and ctx.needs_input_grad[1]:
            d_weight = conv2d_backward_weight(grad_output, gg, weight.shape, *ctx.args)
        return (_in_memory_format(d_grad_output, ctx.memory_format), _in_memory_format(d_weight, ctx.memory_format),
                None, None, None, None, None)

    @staticmethod
    def jvp(ctx, grad_output_t, weight_t, *_):
        grad_output, weight = ctx.saved_tensors
        return _sum(
            None if grad_output_t is None else
            conv2d_backward_input(grad_output_t, weight, ctx.input_size, *ctx.args),
            None if weight_t is None else conv2d_backward_input(grad_output, weight_t, ctx.input_size, *ctx.args))


class _Conv2dBackwardWeight(torch.autograd.Function):
    """gw = BW(gy, x): its adjoint in gy is F(x, .), its adjoint in x is BI(gy, .)."""
    @staticmethod
    def forward(grad_output, input, weight_size, stride, padding, dilation, groups):
        with _below_autograd():
            return ops.conv2d_backward_weight(grad_output, input, weight_size, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, input, ctx.weight_size, *ctx.args = inputs
        ctx.save_for_backward(grad_output, input)
        ctx.save_for_forward(grad_output, input)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg):
        grad_output, input = ctx.saved_tensors
        d_grad_output = d_input = None
        if gg is not None and ctx.needs_input_grad[0]:
            d_grad_output = conv2d_forward(input, gg, None, *ctx.args)
        if gg is not None and ctx.needs_input_grad[1]:
            d_input = conv2d_backward_input(grad_output, gg, input.shape, *ctx.args)
        return d_grad_output, d_input, None, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_output_t, input_t, *_):
        grad_output, input = ctx.saved_tensors
        return _sum(
            None if grad_output_t is None else
            conv2d_backward_weight(grad_output_t, input, ctx.weight_size, *ctx.args),
            None if input_t is None else conv2d_backward_weight(grad_output, input_t, ctx.weight_size, *ctx.args))


class _Conv2dBackwardBias(torch.autograd.Function):
    """gb = gy summed over batch and space: linear; its adjoint spreads gb back over them."""
    @staticmethod
    def forward(grad_output):
        with _below_autograd():
            return ops.conv2d_backward_bias(grad_output)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.grad_output_size = inputs[0].shape
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg):
        if gg is None or not ctx.needs_input_grad[0]:
            return None
        return gg.view(1, -1, 1, 1).expand(ctx.grad_output_size)

    @staticmethod
    def jvp(ctx, grad_output_t):
        return conv2d_backward_bias(grad_output_t)


# ------------------------------------------------------------ max_pool2d


def _gather_through(indices, planes, window_args):
    """planes (N, C, H, W) read at each output's index: the adjoint of the
    pool's backward, and the forward's jvp. Windows of padding only read
    nothing; like the kernels, neither do indices outside the plane (which
    max_pool2d_forward never gives)."""
    kernel_size, stride, padding, dilation, ceil_mode = window_args
    n, c, h, w = planes.shape
    # reshape, not flatten: gradcheck's batched forward grads run this under
    # torch's older vmap, which has no rule for flatten.
    flat = planes.reshape(n, c, h * w)
    # Pooling a plane of zeros gives 0 in the windows that hold input and
    # -inf in windows of padding only: the kernels' own rule, through the
    # forward op, so that it also traces under torch.compile.
    zeros = planes.new_zeros((1, 1, h, w))
    holds = max_pool2d_forward(zeros, kernel_size, stride, padding, dilation, ceil_mode)[0][0, 0].isfinite()
    inside = indices.ge(0).logical_and(indices.lt(h * w)).logical_and(holds)
    flat_indices = indices.clamp(0, max(h * w - 1, 0)).reshape(n, c, -1)
    gathered = flat.gather(2, flat_indices).view_as(indices)
    return gathered * inside


class _MaxPool2dForward(torch.autograd.Function):
    """(y, indices) = max_pool2d(x): each output gradient goes back to the one
    input its index names; the tangent is read from there. The indices are
    not differentiable."""
    @staticmethod
    def forward(input, kernel_size, stride, padding, dilation, ceil_mode):
        with _below_autograd():
            return ops.max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, *ctx.window_args = inputs
        ctx.input_size = input.shape
        ctx.memory_format = torch.channels_last if _suggests_channels_last(input) else torch.contiguous_format
        indices = output[1]
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad, _grad_indices):
        if grad is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        indices, = ctx.saved_tensors
        grad_input = max_pool2d_backward(grad, indices, ctx.input_size, *ctx.window_args)
        return _in_memory_format(grad_input, ctx.memory_format), None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_t, *_):
        indices, = ctx.saved_tensors
        return _gather_through(indices, input_t, ctx.window_args), None


class _MaxPool2dBackward(torch.autograd.Function):
    """gx = P(gy, indices), the scatter of each output gradient to the input
    its index names: linear in gy; its adjoint gathers through the indices."""
    @staticmethod
    def forward(grad_output, indices, input_size, *window_args):
        with _below_autograd():
            return ops.max_pool2d_backward(grad_output, indices, input_size, *window_args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, indices, ctx.input_size, *ctx.window_args = inputs
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg):
        d_grad_output = None
        if gg is not None and ctx.needs_input_grad[0]:
            indices, = ctx.saved_tensors
            d_grad_output = _gather_through(indices, gg, ctx.window_args)
        return d_grad_output, None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_output_t, *_):
        indices, = ctx.saved_tensors
        return max_pool2d_backward(grad_output_t, indices, ctx.input_size, *ctx.window_args)


# ------------------------------------------------------------ avg_pool2d
# y = A x, gx = A^T gy: each Function's backward and jvp is the other op (or
# itself), with the same window arguments. The adaptive ops are the same with
# the output size (forward) or nothing (backward) as their window arguments.


def _pool_memory_format(input):
    return torch.channels_last if _suggests_channels_last(input) else torch.contiguous_format


def _avg_pool_functions(forward_name, backward_name, adaptive):
    """The two Functions of one average pooling. The adaptive ops' window
    argument is the forward's output size, which their backward does not
    take (it is grad_output's) and the backward's adjoint, the forward,
    needs again."""

    class Forward(torch.autograd.Function):
        @staticmethod
        def forward(input, *window_args):
            with _below_autograd():
                return getattr(ops, forward_name)(input, *window_args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, *ctx.window_args = inputs
            ctx.input_size = input.shape
            # The gradient's layout follows the input's, torch's rule, which
            # for adaptive pooling torch decides from the output: its global
            # pooling is a mean, whose gradient takes the layout of the
            # output's (an N x 1 x 1 x 1 output, so one channel, suggests
            # contiguous even for a channels_last input). Elsewhere the
            # output suggests what the input does.
            ctx.memory_format = _pool_memory_format(output if adaptive else input)
            ctx.set_materialize_grads(False)

        @staticmethod
        def backward(ctx, grad):
            nones = (None,) * len(ctx.window_args)
            if grad is None or not ctx.needs_input_grad[0]:
                return (None, *nones)
            window_args = () if adaptive else ctx.window_args
            grad_input = globals()[backward_name](grad, ctx.input_size, *window_args)
            return (_in_memory_format(grad_input, ctx.memory_format), *nones)

        @staticmethod
        def jvp(ctx, input_t, *_):
            return globals()[forward_name](input_t, *ctx.window_args)

    class Backward(torch.autograd.Function):
        @staticmethod
        def forward(grad_output, input_size, *window_args):
            with _below_autograd():
                return getattr(ops, backward_name)(grad_output, input_size, *window_args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            grad_output, ctx.input_size, *ctx.window_args = inputs
            ctx.output_size = list(grad_output.shape[-2:])
            ctx.set_materialize_grads(False)

        @staticmethod
        def backward(ctx, gg):
            nones = (None,) * (1 + len(ctx.window_args))
            if gg is None or not ctx.needs_input_grad[0]:
                return (None, *nones)
            window_args = [ctx.output_size] if adaptive else ctx.window_args
            return (globals()[forward_name](gg, *window_args), *nones)

        @staticmethod
        def jvp(ctx, grad_output_t, *_):
            return globals()[backward_name](grad_output_t, ctx.input_size, *ctx.window_args)

    Forward.__name__ = Forward.__qualname__ = "_" + "".join(w.title() for w in forward_name.split("_"))
    Backward.__name__ = Backward.__qualname__ = "_" + "".join(w.title() for w in backward_name.split("_"))
    Forward.__doc__ = f"y = {forward_name}(x), linear: its gradient is {backward_name}, its tangent itself."
    Backward.__doc__ = f"gx = {backward_name}(gy), linear: its gradient is {forward_name}, its tangent itself."
    return Forward, Backward


_AvgPool2dForward, _AvgPool2dBackward = _avg_pool_functions(
    "avg_pool2d_forward", "avg_pool2d_backward", adaptive=False)
_AdaptiveAvgPool2dForward, _AdaptiveAvgPool2dBackward = _avg_pool_functions(
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward", adaptive=True)


# ------------------------------------------------------------ adaptive_max_pool2d
# As max_pool2d, through the saved indices; adaptive windows always hold
# input, so every index names an element of its own window.


def _gather_at(indices, planes):
    """planes (N, C, H, W) read at each output's in-plane index."""
    n, c, h, w = planes.shape
    return planes.reshape(n, c, h * w).gather(2, indices.reshape(n, c, -1)).view_as(indices)


class _AdaptiveMaxPool2dForward(torch.autograd.Function):
    """(y, indices) = adaptive_max_pool2d(x): each output gradient goes back to
    the one input its index names; the tangent is read from there."""
    @staticmethod
    def forward(input, output_size):
        with _below_autograd():
            return ops.adaptive_max_pool2d_forward(input, output_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, _ = inputs
        ctx.input_size = input.shape
        ctx.memory_format = _pool_memory_format(input)
        indices = output[1]
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad, _grad_indices):
        if grad is None or not ctx.needs_input_grad[0]:
            return None, None
        indices, = ctx.saved_tensors
        grad_input = adaptive_max_pool2d_backward(grad, indices, ctx.input_size)
        return _in_memory_format(grad_input, ctx.memory_format), None

    @staticmethod
    def jvp(ctx, input_t, *_):
        indices, = ctx.saved_tensors
        return _gather_at(indices, input_t), None


class _AdaptiveMaxPool2dBackward(torch.autograd.Function):
    """gx = P(gy, indices), the scatter through the indices: linear in gy;
    its adjoint gathers through them."""
    @staticmethod
    def forward(grad_output, indices, input_size):
        with _below_autograd():
            return ops.adaptive_max_pool2d_backward(grad_output, indices, input_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, indices, ctx.input_size = inputs
        ctx.save_for_backward(indices)
        ctx.save_for_forward(indices)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg):
        if gg is None or not ctx.needs_input_grad[0]:
            return None, None, None
        indices, = ctx.saved_tensors
        return _gather_at(indices, gg), None, None

    @staticmethod
    def jvp(ctx, grad_output_t, *_):
        indices, = ctx.saved_tensors
        return adaptive_max_pool2d_backward(grad_output_t, indices, ctx.input_size)


FUNCTIONS = {
    "conv2d_forward": _Conv2dForward,
    "conv2d_backward_input": _Conv2dBackwardInput,
    "conv2d_backward_weight": _Conv2dBackwardWeight,
    "conv2d_backward_bias": _Conv2dBackwardBias,
    "max_pool2d_forward": _MaxPool2dForward,
    "max_pool2d_backward": _MaxPool2dBackward,
    "avg_pool2d_forward": _AvgPool2dForward,
    "avg_pool2d_backward": _AvgPool2dBackward,
    "adaptive_avg_pool2d_forward": _AdaptiveAvgPool2dForward,
    "adaptive_avg_pool2d_backward": _AdaptiveAvgPool2dBackward,
    "adaptive_max_pool2d_forward": _AdaptiveMaxPool2dForward,
    "adaptive_max_pool2d_backward": _AdaptiveMaxPool2dBackward,
}


# ------------------------------------------------------------ the entry points

# The ops whose reverse-mode derivative is also written in C++
# (csrc/autograd.cpp), as an op of its own: the same kernels, with that
# derivative as its Autograd kernel. The Python Functions stay the ops' own
# for torch.func, forward-mode AD and tracing.
REVERSE_MODE_OPS = {"conv2d_forward": "conv2d_reverse_mode", "max_pool2d_forward": "max_pool2d_reverse_mode"}


def _without_setup_context(function):
    """`function` as an autograd.Function of the older kind, whose forward
    takes ctx (and runs the same setup_context): the same backward and jvp,
    for the dispatcher's Autograd kernel. torch.func needs the setup_context
    kind, but Function.apply binds that kind's arguments through
    inspect.signature on every call, which cost more than a small layer's
    convolution (about 100 us a call)."""
    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output
    return type(function.__name__, (torch.autograd.Function,), {
        "__doc__": function.__doc__, "forward": staticmethod(forward),
        "backward": staticmethod(function.backward), "jvp": staticmethod(function.jvp)})


def _autograd_kernel(name, op, function):
    """The op's Autograd kernel: applies `function` where something
    differentiates (grad mode with an input that requires grad, or
    forward-mode AD); otherwise straight to the kernels below."""
    function = _without_setup_context(function)

    def kernel(keyset, *args):
        if torch._C._are_functorch_transforms_active():
            raise RuntimeError(
                f"torch.ops.custom_conv.{name} was called inside a torch.func transform, which reaches our ops "
                f"only through custom_conv.autograd.{name} (what custom_conv.functional and custom_conv.nn call): "
                f"torch.func sees an autograd.Function only when it is applied from Python")
        if ((torch.is_grad_enabled() and torch._C._any_requires_grad(*args))
                or (forward_ad._current_level >= 0 and torch._C._is_fwd_grad_enabled())):
            return function.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return kernel


def _entry_point(name, op, function, reverse_mode=None):
    """The op, differentiable everywhere: through the dispatcher (so that
    torch.compile, torch.export and torch.jit.trace record the op itself)
    unless a torch.func transform is active, which must see the Function.
    `reverse_mode`, where the op has one, is the op with only its
    reverse-mode derivative, in C++ (REVERSE_MODE_OPS): what plain
    tensors take where forward-mode AD is off and nothing traces the call
    (the common training step), as it spares the Python Function's cost."""
    def entry_point(*args):
        if torch._C._are_functorch_transforms_active():
            return function.apply(*args)
        eager = forward_ad._current_level < 0 and not torch.compiler.is_compiling()
        if eager and not torch.is_grad_enabled():
            # Nothing to record (a backward without create_graph, inference):
            # straight to the kernels, not through the Python Autograd kernel.
            with torch._C._AutoDispatchBelowAutograd():
                return op(*args)
        if (eager and reverse_mode is not None and not torch._C._has_torch_function(args)
                and not torch._C._get_tracing_state()):
            return reverse_mode(*args)
        return op(*args)
    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__doc__ = f"torch.ops.custom_conv.{name}, differentiable by autograd and torch.func alike."
    return entry_point


_library = torch.library.Library("custom_conv", "IMPL")
for _name, _function in FUNCTIONS.items():
    _op = getattr(ops, _name).default
    _library.impl(_name, _autograd_kernel(_name, _op, _function), "Autograd", with_keyset=True)
    _reverse_mode = getattr(ops, REVERSE_MODE_OPS[_name]).default if _name in REVERSE_MODE_OPS else None
    globals()[_name] = _entry_point(_name, _op, _function, _reverse_mode)


# ------------------------------------------------------------ vmap


def _batched(t, bdim, batch_size):
    """t with its vmapped dimension first (expanded if it has none)."""
    return t.expand(batch_size, *t.shape) if bdim is None else t.movedim(bdim, 0)


def _conv2d_forward_vmap(info, in_dims, input, weight, bias, stride, padding, dilation, groups):
    x_dim, w_dim, b_dim = in_dims[:3]
    if w_dim is None and b_dim is None:  # shared filters: the vmapped batch is more samples
        out = conv2d_forward(input.movedim(x_dim, 0).flatten(0, 1), weight, bias, stride, padding, dilation,
                                 groups)
        return out.unflatten(0, (info.batch_size, -1)), 0
    # Filters of their own: each vmapped element becomes `groups` more groups.
    b = info.batch_size
    x = _batched(input, x_dim, b).transpose(0, 1).flatten(1, 2)
    w = _batched(weight, w_dim, b).flatten(0, 1)
    bias = None if bias is None else _batched(bias, b_dim, b).flatten()
    out = conv2d_forward(x, w, bias, stride, padding, dilation, groups * b)
    return out.unflatten(1, (b, -1)), 1


def _conv2d_backward_input_vmap(info, in_dims, grad_output, weight, input_size, stride, padding, dilation, groups):
    g_dim, w_dim = in_dims[:2]
    b = info.batch_size
    n, c, h, w = input_size
    if w_dim is None:
        gx = conv2d_backward_input(grad_output.movedim(g_dim, 0).flatten(0, 1), weight, [b * n, c, h, w],
                                       stride, padding, dilation, groups)
        return gx.unflatten(0, (b, -1)), 0
    gy = _batched(grad_output, g_dim, b).transpose(0, 1).flatten(1, 2)
    gx = conv2d_backward_input(gy, _batched(weight, w_dim, b).flatten(0, 1), [n, b * c, h, w], stride, padding,
                                   dilation, groups * b)
    return gx.unflatten(1, (b, -1)), 1


def _conv2d_backward_weight_vmap(info, in_dims, grad_output, input, weight_size, stride, padding, dilation,
                                 groups):
    g_dim, x_dim = in_dims[:2]
    b = info.batch_size
    gy = _batched(grad_output, g_dim, b).transpose(0, 1).flatten(1, 2)
    x = _batched(input, x_dim, b).transpose(0, 1).flatten(1, 2)
    gw = conv2d_backward_weight(gy, x, [b * weight_size[0], *weight_size[1:]], stride, padding, dilation,
                                    groups * b)
    return gw.unflatten(0, (b, -1)), 0


def _conv2d_backward_bias_vmap(info, in_dims, grad_output):
    gy = grad_output.movedim(in_dims[0], 0).transpose(0, 1).flatten(1, 2)
    return conv2d_backward_bias(gy).unflatten(0, (info.batch_size, -1)), 0


def _max_pool2d_forward_vmap(info, in_dims, input, *window_args):
    out, indices = max_pool2d_forward(input.movedim(in_dims[0], 0).flatten(0, 1), *window_args)
    return (out.unflatten(0, (info.batch_size, -1)), indices.unflatten(0, (info.batch_size, -1))), (0, 0)


def _max_pool2d_backward_vmap(info, in_dims, grad_output, indices, input_size, *window_args):
    b = info.batch_size
    gy = _batched(grad_output, in_dims[0], b).flatten(0, 1)
    idx = _batched(indices, in_dims[1], b).flatten(0, 1)
    gx = max_pool2d_backward(gy, idx, [b * input_size[0], *input_size[1:]], *window_args)
    return gx.unflatten(0, (b, -1)), 0


def _avg_pool_forward_vmap(name):
    def rule(info, in_dims, input, *window_args):
        out = globals()[name](input.movedim(in_dims[0], 0).flatten(0, 1), *window_args)
        return out.unflatten(0, (info.batch_size, -1)), 0
    return rule


def _avg_pool_backward_vmap(name):
    def rule(info, in_dims, grad_output, input_size, *window_args):
        b = info.batch_size
        gy = _batched(grad_output, in_dims[0], b).flatten(0, 1)
        gx = globals()[name](gy, [b * input_size[0], *input_size[1:]], *window_args)
        return gx.unflatten(0, (b, -1)), 0
    return rule


def _adaptive_max_pool2d_forward_vmap(info, in_dims, input, output_size):
    out, indices = adaptive_max_pool2d_forward(input.movedim(in_dims[0], 0).flatten(0, 1), output_size)
    return (out.unflatten(0, (info.batch_size, -1)), indices.unflatten(0, (info.batch_size, -1))), (0, 0)


def _adaptive_max_pool2d_backward_vmap(info, in_dims, grad_output, indices, input_size):
    b = info.batch_size
    gy = _batched(grad_output, in_dims[0], b).flatten(0, 1)
    idx = _batched(indices, in_dims[1], b).flatten(0, 1)
    gx = adaptive_max_pool2d_backward(gy, idx, [b * input_size[0], *input_size[1:]])
    return gx.unflatten(0, (b, -1)), 0


VMAP_RULES = {
    "conv2d_forward": _conv2d_forward_vmap,
    "conv2d_backward_input": _conv2d_backward_input_vmap,
    "conv2d_backward_weight": _conv2d_backward_weight_vmap,
    "conv2d_backward_bias": _conv2d_backward_bias_vmap,
    "max_pool2d_forward": _max_pool2d_forward_vmap,
    "max_pool2d_backward": _max_pool2d_backward_vmap,
    "avg_pool2d_forward": _avg_pool_forward_vmap("avg_pool2d_forward"),
    "avg_pool2d_backward": _avg_pool_backward_vmap("avg_pool2d_backward"),
    "adaptive_avg_pool2d_forward": _avg_pool_forward_vmap("adaptive_avg_pool2d_forward"),
    "adaptive_avg_pool2d_backward": _avg_pool_backward_vmap("adaptive_avg_pool2d_backward"),
    "adaptive_max_pool2d_forward": _adaptive_max_pool2d_forward_vmap,
    "adaptive_max_pool2d_backward": _adaptive_max_pool2d_backward_vmap,
}

for _name, _rule in VMAP_RULES.items():
    FUNCTIONS[_name].vmap = staticmethod(_rule)
