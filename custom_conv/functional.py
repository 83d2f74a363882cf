"""Drop-in replacements for torch.nn.functional's conv1d, conv2d,
conv_transpose1d, conv_transpose2d, max_pool2d, avg_pool2d,
adaptive_avg_pool2d and adaptive_max_pool2d.

These functions only normalise arguments the way torch.nn.functional does
(ints or pairs, 'same'/'valid' padding, unbatched input), after checking
them with torch's rules (arguments.py); the arithmetic
happens in our kernels, behind torch.ops.custom_conv, which also give
results and gradients torch's memory format (csrc/memory_format.h).

The other convolutions are the 2-D one's ops put to another use. A
transposed convolution is the adjoint of a convolution, so its forward is
conv2d_backward_input (the output gradient's rule, read forward), and its
own gradients are conv2d_forward and conv2d_backward_weight, which
custom_conv.autograd already gives that op to any order. A 1-D convolution
is a 2-D one of height 1, run on views of its tensors (unsqueeze, no copy
but of an input that is not contiguous: torch's 1-D layouts follow the
weight's alone).
"""
import torch
import torch.nn.functional as F

from . import autograd as ops  # our ops, differentiable by autograd and torch.func
from .arguments import (adaptive_pool2d_arguments, avg_pool2d_arguments, conv2d_arguments,
                        conv_transpose_arguments, max_pool2d_arguments)
from .arguments import _traced_sizes as _sizes  # sizes as ints while tracing too
from .autograd import _conv2d_memory_format, _in_memory_format

__all__ = ["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "max_pool2d", "max_pool2d_with_indices",
           "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"]


_EMPTY_PLANE = "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:"


def _batched(input, op, dims=2):
    """Accepts unbatched input ((C, H, W), or (C, L) for dims=1) like torch
    does, treating it as a batch of one. Errors carry torch's type and words."""
    rank = input.dim()
    if rank not in (dims + 1, dims + 2):
        if op not in ("max_pool2d", "avg_pool2d"):
            raise RuntimeError(f"Expected {dims + 1}D (unbatched) or {dims + 2}D (batched) input to {op}, but got "
                               f"input of size: {list(input.shape)}")
        if op == "max_pool2d":
            raise RuntimeError("non-empty 3D or 4D (batch mode) tensor expected for input")
        if rank < 3:  # torch's avg_pool2d reads the size of the third dimension from the end first
            raise IndexError(f"Dimension out of range (expected to be in range of [{-max(rank, 1)}, "
                             f"{max(rank, 1) - 1}], but got -3)")
        raise RuntimeError(f"{_EMPTY_PLANE}{list(input.shape)}")
    return rank == dims + 1, (input.unsqueeze(0) if rank == dims + 1 else input)


def _as_given(error, input):
    """`error` of a pooling kernel, which words an empty plane with the sizes
    it sees: for an unbatched input, worded with the caller's, as torch's is."""
    if input.dim() == 3 and str(error).startswith(_EMPTY_PLANE):
        return RuntimeError(f"{_EMPTY_PLANE}{list(input.shape)}")
    return error


def _string_padding(padding, input, weight, stride, dilation, groups):
    """Turns padding='valid'|'same' into symmetric numbers for the kernel.

    'same' needs dilation * (k - 1) zeros in total along each dimension. When
    that is odd the extra zero goes on the bottom/right, as in torch; our
    kernel pads symmetrically, so that one zero is added to the input first.
    """
    if padding == "valid":
        return input, (0, 0)
    if weight.dim() != 4:
        if weight.dim() >= 3 and groups > 0:  # what torch's 'same' path says first (the kernel checks the rest)
            raise RuntimeError(f"Expected {weight.dim()}-dimensional input for {weight.dim()}-dimensional "
                               f"weight{list(weight.shape)}, but got {input.dim()}-dimensional input of size "
                               f"{list(input.shape)} instead")
        return input, (0, 0)
    totals = [d * (k - 1) for d, k in zip(dilation, _sizes(weight)[2:])]
    extra_h, extra_w = (t % 2 for t in totals)
    if extra_h or extra_w:
        input = F.pad(input, (0, extra_w, 0, extra_h))
    return input, (totals[0] // 2, totals[1] // 2)


def _conv2d_arguments(input, weight, bias, stride, padding, dilation, groups):
    """F.conv2d's arguments, checked, as our op takes them: a 4-D input (and
    whether it was unbatched), (height, width) pairs with numeric padding."""
    stride, padding, dilation, groups = conv2d_arguments(input, weight, bias, stride, padding, dilation, groups)
    unbatched, x = _batched(input, "conv2d")
    if isinstance(padding, str):
        x, padding = _string_padding(padding, x, weight, stride, dilation, groups)
    return unbatched, x, stride, padding, dilation, groups


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, with the semantics of torch.nn.functional.conv2d."""
    unbatched, x, stride, padding, dilation, groups = _conv2d_arguments(input, weight, bias, stride, padding,
                                                                        dilation, groups)
    out = ops.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


# The device types autocast knows (torch.is_autocast_enabled raises for others, such as meta).
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps")


def _autocast_on(t):
    return t.device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(t.device.type)


# torch's names for the dtypes our kernels take, as its messages write them.
_SCALAR_TYPES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16"}


def _check_conv_tensors(x, weight, bias, groups, transposed):
    """The checks of the dtypes, weight's rank, the groups, the channels and
    the bias that our 2-D kernels would word for the 4-D tensors they see:
    for a 1-D convolution, and for a transposed one (whose input plays the
    2-D op's output gradient), worded as torch words them for the tensors
    the caller gave. Under autocast the op casts mixed dtypes itself."""
    if weight.dim() < 3:
        raise RuntimeError("weight should have at least three dimensions")
    if x.dtype != weight.dtype and not _autocast_on(x):
        raise RuntimeError(f"expected scalar type {_SCALAR_TYPES.get(x.dtype, x.dtype)} but found "
                           f"{_SCALAR_TYPES.get(weight.dtype, weight.dtype)}")
    (xs, ws), bs = (_sizes(x), _sizes(weight)), None if bias is None else _sizes(bias)
    if len(ws) != len(xs):
        raise RuntimeError(f"Expected {len(ws)}-dimensional input for {len(ws)}-dimensional weight {ws}, but got "
                           f"{len(xs)}-dimensional input of size {xs} instead")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if ws[0] < groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be at least {groups} at dimension 0, but got "
                           f"weight of size {ws} instead")
    if ws[0] % groups != 0:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                           f"but got weight of size [{ws}] instead")
    expected_channels = ws[0] if transposed else ws[1] * groups
    given = f"Given transposed=1, weight of size {ws}" if transposed else f"Given groups={groups}, weight of size {ws}"
    if xs[1] != expected_channels:
        raise RuntimeError(f"{given}, expected input{xs} to have {expected_channels} channels, but got {xs[1]} "
                           f"channels instead")
    out_channels = ws[1] * groups if transposed else ws[0]
    if bs is not None and (len(bs) != 1 or bs[0] != out_channels):
        given = given if transposed else f"Given weight of size {ws}"
        raise RuntimeError(f"{given}, expected bias to be 1-dimensional with {out_channels} elements, but got "
                           f"bias of size {bs} instead")


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation, with the semantics of torch.nn.functional.conv1d:
    our 2-D conv on a height of 1. What the 2-D kernels would reject, with
    words for two dimensions, is checked here first, with torch's words for
    one and in torch's order."""
    (stride,), padding, (dilation,), groups = conv2d_arguments(input, weight, bias, stride, padding, dilation,
                                                               groups, op="conv1d", dims=1)
    unbatched, x = _batched(input, "conv1d", dims=1)
    if isinstance(padding, str):
        # torch works string padding out first, adding the odd zero of 'same'
        # to the input's end; its checks then see the padded input.
        total = dilation * (_sizes(weight)[-1] - 1) if padding == "same" and weight.dim() == 3 else 0
        if total % 2:
            x = F.pad(x, (0, 1))
        padding = total // 2
    else:
        padding, = padding
        if padding < 0:
            raise RuntimeError("negative padding is not supported")
    if stride <= 0:
        raise RuntimeError("non-positive stride is not supported")
    _check_conv_tensors(x, weight, bias, groups, transposed=False)
    (batch, channels, length), kernel = _sizes(x), dilation * (_sizes(weight)[2] - 1) + 1
    if length + 2 * padding < kernel:
        raise RuntimeError(f"Calculated padded input size per channel: ({length + 2 * padding}). Kernel size: "
                           f"({kernel}). Kernel size can't be greater than actual input size")
    if length == 0 and batch != 0 and channels != 0:
        raise RuntimeError(f"Only zero batch or zero channel inputs are supported, but got input shape: "
                           f"[{batch}, {channels}, 1, 0]")
    if dilation <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got [1, {dilation}]")
    # x.contiguous(): torch's 1-D layouts follow the weight's alone, where the
    # 2-D view of an (N, L, C)-ordered input would suggest channels_last.
    out = ops.conv2d_forward(x.contiguous().unsqueeze(2), weight.unsqueeze(2), bias, [1, stride], [0, padding],
                             [1, dilation], groups)
    out = out.squeeze(2)
    return out.squeeze(0) if unbatched else out


def _conv_transpose(op, dims, input, weight, bias, stride, padding, output_padding, groups, dilation,
                    positional=0):
    """conv_transpose1d or 2d: conv2d_backward_input of `input` as the output
    gradient, at the input size that output_padding picks among those whose
    convolution has `input`'s size. `positional`: how many arguments the
    caller passed by position, which torch's errors show (arguments.py)."""
    stride, padding, output_padding, groups, dilation = conv_transpose_arguments(
        op, dims, input, weight, bias, stride, padding, output_padding, groups, dilation, positional)
    unbatched, x = _batched(input, op, dims)
    if _autocast_on(x):
        # Autocast runs torch's transposed convolutions in its lower precision,
        # as it does conv2d; our op (conv2d's input gradient) is not on its list.
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, bias = (t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64
                           else t for t in (x, weight, bias))
    # torch's checks, in torch's order: the arguments' signs, the tensors,
    # then its transposed kernel's own (dilation, output padding, sizes).
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if any(p < 0 for p in output_padding):
        raise RuntimeError("negative output_padding is not supported")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    _check_conv_tensors(x, weight, bias, groups, transposed=True)
    if dims == 1:  # x.contiguous(): as in conv1d
        x, weight = x.contiguous().unsqueeze(2), weight.unsqueeze(2)
        stride, padding, output_padding, dilation = ([1, *stride], [0, *padding], [0, *output_padding],
                                                     [1, *dilation])
    (batch, in_channels, *sizes), (_, channels, *kernel) = _sizes(x), _sizes(weight)
    if 0 in sizes and batch != 0 and in_channels != 0:
        raise RuntimeError(f"Only zero batch or zero channel inputs are supported, but got input shape: "
                           f"{[batch, in_channels, *sizes]}")
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, output_padding
    if dh <= 0 or dw <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got dilation_height: {dh}, "
                           f"dilation_width: {dw}")
    if (oh >= sh and oh >= dh) or (ow >= sw and ow >= dw):
        raise RuntimeError(f"output padding must be smaller than either stride or dilation, but got "
                           f"output_padding_height: {oh} output_padding_width: {ow} stride_height: {sh} "
                           f"stride_width: {sw} dilation_height: {dh} dilation_width: {dw}")
    # The whole result before cropping `padding` from each side, and the output.
    full = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(sizes, stride, dilation, kernel)]
    out = [f - 2 * p + o for f, p, o in zip(full, padding, output_padding)]
    if any(o < 1 for o in out):
        shown = " x ".join(str(v) for v in sizes)
        raise RuntimeError(f"Given input size per channel: ({shown}). Calculated output size per channel: "
                           f"({' x '.join(str(v) for v in out)}). Output size is too small")
    size = [batch, channels * groups, *out]
    if all(o < s for o, s in zip(output_padding, stride)):
        # Every output size from the smallest up to stride - 1 more convolves
        # back to the input's: output_padding picks one.
        y = ops.conv2d_backward_input(x, weight, size, stride, padding, dilation, groups)
    else:
        # An output padding of at least the stride (torch allows it below the
        # dilation) is a size whose convolution would be longer than the
        # input: compute the whole uncropped result, then crop it (or pad the
        # rows no input reaches with zeros).
        whole = ops.conv2d_backward_input(x, weight, [*size[:2], *full], stride, [0, 0], dilation, groups)
        (ph, pw), (oh, ow), (fh, fw) = padding, out, full
        y = F.pad(whole, (-pw, ow - (fw - pw), -ph, oh - (fh - ph)))
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if not torch.jit.is_tracing():  # torch's layout for the result (a trace's sizes are tensors, not ints)
        y = _in_memory_format(y, _conv2d_memory_format(x, weight))
    if dims == 1:
        y = y.squeeze(2)
    return y.squeeze(0) if unbatched else y


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution ("deconvolution"), with the semantics of
    torch.nn.functional.conv_transpose2d: weight is (C_in, C_out / groups,
    kH, kW), and the result is the input gradient of the convolution of that
    weight whose output has `input`'s size."""
    return _conv_transpose("conv_transpose2d", 2, input, weight, bias, stride, padding, output_padding, groups,
                           dilation)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """1-D transposed convolution, with the semantics of
    torch.nn.functional.conv_transpose1d: conv_transpose2d on a height of 1."""
    return _conv_transpose("conv_transpose1d", 1, input, weight, bias, stride, padding, output_padding, groups,
                           dilation)


def _max_pool2d(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    window = max_pool2d_arguments(op, input, kernel_size, stride, padding, dilation, ceil_mode)
    unbatched, x = _batched(input, "max_pool2d")
    try:
        out, indices = ops.max_pool2d_forward(x, *window, bool(ceil_mode))
    except RuntimeError as error:
        raise _as_given(error, input) from None
    if unbatched:
        return out.squeeze(0), indices.squeeze(0)
    return out, indices


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling that also returns, per output, the flat index h * W + w of
    its maximum within the input plane (the same indices torch returns)."""
    return _max_pool2d("max_pool2d_with_indices", input, kernel_size, stride, padding, dilation, ceil_mode)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling, with the semantics of torch.nn.functional.max_pool2d."""
    if return_indices:
        return max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)
    return _max_pool2d("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)[0]


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Average pooling, with the semantics of torch.nn.functional.avg_pool2d."""
    kernel_size, stride, padding, divisor_override = avg_pool2d_arguments(
        input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    unbatched, x = _batched(input, "avg_pool2d")
    try:
        out = ops.avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    except RuntimeError as error:
        raise _as_given(error, input) from None
    return out.squeeze(0) if unbatched else out


def adaptive_avg_pool2d(input, output_size):
    """Adaptive average pooling, with the semantics of
    torch.nn.functional.adaptive_avg_pool2d: output (i, j) averages input rows
    floor(i * H / h) to ceil((i + 1) * H / h) and the columns likewise."""
    unbatched, x, output_size = _adaptive_arguments("adaptive_avg_pool2d", input, output_size)
    out = ops.adaptive_avg_pool2d_forward(x, output_size)
    return out.squeeze(0) if unbatched else out


def _adaptive_arguments(op, input, output_size):
    output_size = adaptive_pool2d_arguments(input, output_size, op)
    unbatched, x = _batched(input, op)
    return unbatched, x, output_size


def adaptive_max_pool2d_with_indices(input, output_size, return_indices=False):
    """Adaptive max pooling over adaptive_avg_pool2d's windows, with the flat
    in-plane index of each maximum (torch's indices); returns both whatever
    return_indices says, as torch's function of that name does."""
    unbatched, x, output_size = _adaptive_arguments("adaptive_max_pool2d", input, output_size)
    out, indices = ops.adaptive_max_pool2d_forward(x, output_size)
    if unbatched:
        return out.squeeze(0), indices.squeeze(0)
    return out, indices


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """Adaptive max pooling, with the semantics of
    torch.nn.functional.adaptive_max_pool2d."""
    out, indices = adaptive_max_pool2d_with_indices(input, output_size)
    return (out, indices) if return_indices else out
