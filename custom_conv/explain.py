"""Which algorithm our kernels run for a convolution, and why.

    >>> custom_conv.explain_conv2d(torch.randn(32, 64, 16, 16), torch.randn(64, 64, 3, 3), padding=1)
    {'forward': Conv2dChoice(algorithm='direct', reason='direct: the forward fits ...'), ...}

The choice is made by one C++ function (csrc/conv2d_algorithm.cpp) for each
pass of a layer, from its shape, dtype and device; this asks that function.
"""
from typing import NamedTuple

from ._ops import ops
from .functional import _conv2d_arguments

__all__ = ["Conv2dChoice", "explain_conv2d", "PASSES"]

PASSES = ("forward", "backward_input", "backward_weight")


class Conv2dChoice(NamedTuple):
    algorithm: str  # "direct", "depthwise" or "im2col"
    reason: str


def explain_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """For each pass of custom_conv.functional.conv2d with these arguments (the
    same as torch.nn.functional.conv2d's), the algorithm that runs it and why:
    a dict from "forward", "backward_input", "backward_weight" to Conv2dChoice.
    Under torch.autocast the op runs in the autocast dtype: pass tensors of
    that dtype to see its choice."""
    del bias  # the bias does not change the algorithm
    _, x, stride, padding, dilation = _conv2d_arguments(input, weight, stride, padding, dilation)
    return {name: Conv2dChoice(*ops.conv2d_algorithm(x, weight, stride, padding, dilation, groups, name))
            for name in PASSES}
