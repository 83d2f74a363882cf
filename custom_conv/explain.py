"""Which algorithm our kernels run for a convolution, and why; and switching
algorithms off.

    >>> custom_conv.explain_conv2d(torch.randn(32, 64, 16, 16), torch.randn(64, 64, 3, 3), padding=1)
    {'forward': Conv2dChoice(algorithm='winograd', reason='winograd: a 3x3 stride-1 layer in float32 ...'), ...}
    >>> with custom_conv.disabled_algorithms("winograd"):
    ...     y = custom_conv.functional.conv2d(x, w)   # the next algorithm wherever winograd was chosen

The choice is made by one C++ function (csrc/conv2d_algorithm.cpp) for each
pass of a layer, from its shape, dtype and device; this asks that function.
"""
import contextlib
from typing import NamedTuple

from ._ops import ops
from .functional import _conv2d_arguments

__all__ = ["Conv2dChoice", "explain_conv2d", "disabled_algorithms", "forced_algorithm", "PASSES"]

# Every algorithm, in the order the CPU chooser tries them (the fallback,
# im2col, last): the chooser's own list.
ALGORITHMS = tuple(ops.conv2d_algorithms())

PASSES = ("forward", "backward_input", "backward_weight")


class Conv2dChoice(NamedTuple):
    algorithm: str  # one of ALGORITHMS
    reason: str


def explain_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """For each pass of custom_conv.functional.conv2d with these arguments (the
    same as torch.nn.functional.conv2d's), the algorithm that runs it and why:
    a dict from "forward", "backward_input", "backward_weight" to Conv2dChoice.
    Under torch.autocast the op runs in the autocast dtype: pass tensors of
    that dtype to see its choice."""
    _, x, stride, padding, dilation, groups = _conv2d_arguments(input, weight, bias, stride, padding, dilation,
                                                                groups)  # the bias does not change the algorithm
    return {name: Conv2dChoice(*ops.conv2d_algorithm(x, weight, stride, padding, dilation, groups, name))
            for name in PASSES}


@contextlib.contextmanager
def disabled_algorithms(*names):
    """Within the block, the CPU convolutions pass over the algorithms named
    (any of ALGORITHMS but the last): each pass takes the next one the
    chooser would, in the order of ALGORITHMS, and explain_conv2d says so.
    To compare algorithms, or to rule one out when hunting a numerical
    difference. The last, every layer's fallback, cannot be switched off (a
    ValueError, as for an unknown name); CUSTOM_CONV_CPU_KERNELS=baseline
    removes the direct kernels for a whole process instead.

    Three more names are taken, for the GPU's kernels: "tensor_cores" sends
    half and bfloat16 products (and TF32's) from the tensor-core kernel back
    to the CUDA-core one (float sums in both), "implicit_gemm" sends
    im2col's products through a column matrix in memory instead of gathering
    the receptive fields as the GEMM's tiles load, and "channels_last_gather"
    keeps the tensor cores' passes gathering from NCHW tensors rather than
    from channels-last copies (taken where each group's channels that a
    pass gathers along are whole 16-byte chunks); for comparing them, or
    ruling the newer one out.

    The setting is process-wide, like torch.backends flags: it applies to
    every thread until the block ends, when the previous one returns. Blocks
    nest (the inner one adds to the outer's)."""
    previous = ops.set_disabled_conv2d_algorithms([])
    try:
        ops.set_disabled_conv2d_algorithms(sorted(set(previous) | set(names)))  # checks the names
        yield
    finally:
        ops.set_disabled_conv2d_algorithms(previous)


@contextlib.contextmanager
def forced_algorithm(name):
    """Within the block, every CPU convolution pass runs on the algorithm
    named ("winograd", "direct", "depthwise" or "im2col") wherever that route
    can compute it, whatever its cost; passes it cannot run (the direct
    kernels in float16, Winograd on a 5x5 kernel)
    take the chooser's choice, and explain_conv2d says which happened. To
    compare one route with another on the same layers, as the test sweep
    does. Process-wide, like disabled_algorithms; the previous setting
    returns when the block ends."""
    if name not in ALGORITHMS:
        raise ValueError(f"no conv2d algorithm called {name!r} (one of {', '.join(ALGORITHMS)})")
    previous = ops.set_forced_conv2d_algorithm(name)
    try:
        yield
    finally:
        ops.set_forced_conv2d_algorithm(previous)
