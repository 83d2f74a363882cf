"""Drop-in replacements for torch.nn.functional.conv2d and max_pool2d.

These functions only normalise arguments the way torch.nn.functional does
(ints or pairs, 'same'/'valid' padding, unbatched 3-D input), after checking
them with torch's rules (arguments.py); the arithmetic
happens in our kernels, behind torch.ops.custom_conv, which also give
results and gradients torch's memory format (csrc/memory_format.h).
"""
import torch
import torch.nn.functional as F

from . import autograd as ops  # our ops, differentiable by autograd and torch.func
from .arguments import conv2d_arguments, max_pool2d_arguments

__all__ = ["conv2d", "max_pool2d", "max_pool2d_with_indices"]


def _batched(input, op):
    """Accepts (C, H, W) like torch does, treating it as a batch of one.
    Errors carry torch's type and words."""
    if input.dim() not in (3, 4):
        expected = ("Expected 3D (unbatched) or 4D (batched) input to conv2d" if op == "conv2d"
                    else "non-empty 3D or 4D (batch mode) tensor expected for input to max_pool2d")
        raise RuntimeError(f"{expected}, but got input of size: {list(input.shape)}")
    return input.dim() == 3, (input.unsqueeze(0) if input.dim() == 3 else input)


def _string_padding(padding, input, weight, stride, dilation):
    """Turns padding='valid'|'same' into symmetric numbers for the kernel.

    'same' needs dilation * (k - 1) zeros in total along each dimension. When
    that is odd the extra zero goes on the bottom/right, as in torch; our
    kernel pads symmetrically, so that one zero is added to the input first.
    """
    if padding == "valid":
        return input, (0, 0)
    if weight.dim() != 4:
        return input, (0, 0)  # the kernel reports the bad weight
    totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
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
        x, padding = _string_padding(padding, x, weight, stride, dilation)
    return unbatched, x, stride, padding, dilation, groups


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, with the semantics of torch.nn.functional.conv2d."""
    unbatched, x, stride, padding, dilation, groups = _conv2d_arguments(input, weight, bias, stride, padding,
                                                                        dilation, groups)
    out = ops.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def _max_pool2d(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    window = max_pool2d_arguments(op, input, kernel_size, stride, padding, dilation, ceil_mode)
    unbatched, x = _batched(input, "max_pool2d")
    out, indices = ops.max_pool2d_forward(x, *window, bool(ceil_mode))
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
