"""Drop-in replacements for torch.nn.functional.conv2d and max_pool2d.

These functions only normalise arguments the way torch.nn.functional does
(ints or pairs, 'same'/'valid' padding, unbatched 3-D input); the arithmetic
happens in our kernels, behind torch.ops.custom_conv, which also give
results and gradients torch's memory format (csrc/memory_format.h).
"""
import torch
import torch.nn.functional as F

from ._ops import ops

__all__ = ["conv2d", "max_pool2d", "max_pool2d_with_indices"]


def _pair(value, name):
    """An int or a sequence of one or two ints, as (height, width)."""
    if isinstance(value, (list, tuple, torch.Size)):
        if len(value) == 1:
            return (int(value[0]), int(value[0]))
        if len(value) != 2:
            raise RuntimeError(f"expected {name} to be a single int or a pair of ints, got {tuple(value)}")
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))


def _batched(input, op):
    """Accepts (C, H, W) like torch does, treating it as a batch of one.
    Errors carry torch's type and words."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): argument 'input' (position 1) must be Tensor, not {type(input).__name__}")
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
    if padding != "same":
        raise ValueError(f"Invalid padding string: {padding!r}, should be one of {{'valid', 'same'}}")
    if stride != (1, 1):
        raise ValueError("padding='same' is not supported for strided convolutions")
    if weight.dim() != 4:
        return input, (0, 0)  # the kernel reports the bad weight
    totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    extra_h, extra_w = (t % 2 for t in totals)
    if extra_h or extra_w:
        input = F.pad(input, (0, extra_w, 0, extra_h))
    return input, (totals[0] // 2, totals[1] // 2)


def _conv2d_arguments(input, weight, stride, padding, dilation):
    """F.conv2d's arguments as our op takes them: a 4-D input (and whether it
    was unbatched), and (height, width) pairs with numeric padding."""
    unbatched, x = _batched(input, "conv2d")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        x, padding = _string_padding(padding, x, weight, stride, dilation)
    else:
        padding = _pair(padding, "padding")
    return unbatched, x, stride, padding, dilation


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, with the semantics of torch.nn.functional.conv2d."""
    unbatched, x, stride, padding, dilation = _conv2d_arguments(input, weight, stride, padding, dilation)
    out = ops.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling that also returns, per output, the flat index h * W + w of
    its maximum within the input plane (the same indices torch returns)."""
    unbatched, x = _batched(input, "max_pool2d")
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) \
        else _pair(stride, "stride")
    out, indices = ops.max_pool2d_forward(x, kernel, stride, _pair(padding, "padding"),
                                          _pair(dilation, "dilation"), bool(ceil_mode))
    if unbatched:
        return out.squeeze(0), indices.squeeze(0)
    return out, indices


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling, with the semantics of torch.nn.functional.max_pool2d."""
    out, indices = max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)
    return (out, indices) if return_indices else out
