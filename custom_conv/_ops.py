"""Loads the compiled ops, after checking that they were built for this torch.
The kernels per backend, the Meta kernels that torch.compile traces with and
autocast are registered in C++ (csrc/); every op's derivatives in Python
(autograd.py), where torch.func can see them."""
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

# The ops with a kernel per backend (csrc/schemas.h).
KERNEL_OPS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
              "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
              "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d_forward",
              "adaptive_max_pool2d_backward")


def has_kernels(dispatch_key):
    """Whether every kernel op has a kernel for `dispatch_key` ("CPU", "CUDA",
    "Meta", ...), asked of torch's dispatcher, which knows what the compiled
    module registered."""
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"custom_conv::{op}", dispatch_key)
               for op in KERNEL_OPS)


def has_cuda_kernels():
    """Whether this build has our CUDA kernels (setup.py compiles them where a
    GPU is visible or FORCE_CUDA=1)."""
    return has_kernels("CUDA")

