"""Loads the compiled ops and registers what only Python can: the fake (meta)
kernels, for torch.compile and shape propagation. Everything else (kernels,
autograd of every op, autocast) is registered in C++ (csrc/)."""
import torch

REBUILD_HINT = (
    "Rebuild it against the torch you have: `make build` in the repository, "
    "`pip install --no-build-isolation --no-deps --force-reinstall .` from a clone or an sdist, "
    "or a wheel made with `pip wheel --no-build-isolation --no-deps .` in this environment."
)

try:
    # Written by setup.py next to the compiled module (see BuildExt there).
    from . import _build_info as build_info
except ImportError:  # a build from before setup.py wrote it: nothing to check against
    build_info = None


def _check_built_against_this_torch():
    """A C++ extension runs only with the torch it was compiled against; with
    any other, loading it fails with an undefined symbol (or worse, seems to
    work). Compare before loading, so the message says what to do."""
    if build_info is None:
        return
    built = (build_info.TORCH_VERSION, build_info.TORCH_GIT_VERSION)
    running = (str(torch.__version__), torch.version.git_version)
    if built != running:
        detail = "" if built[0] != running[0] else f" (commit {built[1][:12]}, this one is {running[1][:12]})"
        raise ImportError(
            f"custom_conv {build_info.VERSION}: its compiled kernels were built against torch {built[0]}, "
            f"but this is torch {running[0]}{detail}. A C++ extension only runs with the torch it was built "
            f"against. {REBUILD_HINT}")


_check_built_against_this_torch()

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
