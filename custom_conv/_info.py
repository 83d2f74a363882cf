"""What a bug report needs: `python -m custom_conv`, or custom_conv.info()."""
import importlib.metadata
import os
import platform
import sys

import torch

from ._ops import build_info, has_cuda_kernels, ops

__all__ = ["__version__", "info"]


def _version():
    if build_info is not None:  # written by setup.py from pyproject.toml's version
        return build_info.VERSION
    try:
        return importlib.metadata.version("custom_conv")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


__version__ = _version()


def info():
    """The version, the torch it was built against and the one running, the
    CPU kernel set in use and whether CUDA kernels are compiled in, as a dict
    of strings (`python -m custom_conv` prints it)."""
    if build_info is None:
        built = "unknown (a build from before setup.py recorded it: rebuild)"
    else:
        built = build_info.TORCH_VERSION + (f" (CUDA {build_info.TORCH_CUDA_VERSION})"
                                            if build_info.TORCH_CUDA_VERSION else "")
    if has_cuda_kernels():
        archs = getattr(build_info, "CUDA_ARCHS", None)
        cuda = "compiled in" + (f" (archs {archs})" if archs else "")
    else:
        cuda = "not compiled in"
    kernels = ops.cpu_kernels()
    if os.environ.get("CUSTOM_CONV_CPU_KERNELS"):
        kernels += f" (CUSTOM_CONV_CPU_KERNELS={os.environ['CUSTOM_CONV_CPU_KERNELS']})"
    return {
        "custom_conv": __version__,
        "location": os.path.dirname(os.path.abspath(__file__)),
        "built against torch": built,
        "torch": str(torch.__version__) + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""),
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu kernels": kernels,
        "cpu threads": str(torch.get_num_threads()),
        "cuda kernels": cuda,
        "cuda device": torch.cuda.get_device_name() if torch.cuda.is_available() else "none available",
    }
