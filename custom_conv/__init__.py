"""custom_conv: 2-D convolution, max-pooling and average pooling written from scratch.

    import custom_conv
    y = custom_conv.functional.conv2d(x, w, b, stride=2, padding=1)
    layer = custom_conv.nn.Conv2d(3, 16, 3, padding=1)
    model = custom_conv.convert(torchvision.models.resnet18())  # custom_conv.to_torch(model) undoes it
    with custom_conv.enabled():  # every conv/pooling call in here, F.* included, runs on ours
        loss = model(x).sum()
    custom_conv.explain_conv2d(x, w, stride=2, padding=1)  # which algorithm, and why
    with custom_conv.disabled_algorithms("direct"): y = model(x)  # the chooser passes over it meanwhile
    print(custom_conv.__version__); custom_conv.info()  # or `python -m custom_conv`
"""
import torch

from . import _ops  # noqa: F401  (loads the kernels; must come first)
from . import autograd  # noqa: F401  (registers every op's derivatives)
from ._ops import has_cuda_kernels
from . import functional, nn
from .convert import ConvertWarning, convert, to_torch
from .explain import Conv2dChoice, disabled_algorithms, explain_conv2d, forced_algorithm
from ._info import __version__, info
from .mode import FallbackWarning, enabled
from . import models, onnx

onnx.register_symbolics()  # torch.onnx.export(..., dynamo=False) finds our ops' translations


def cpu_kernels() -> str:
    """The instruction-set level every vectorised CPU kernel runs at:
    "avx512", "avx2" or "baseline" (any x86-64, or another CPU), the best
    this CPU has. It picks the GEMM's micro-kernels and the direct kernels
    (which need avx2 or avx512; at the baseline level those layers take
    another route). Set CUSTOM_CONV_CPU_KERNELS=avx2|baseline before the
    first convolution to run a lesser level, e.g. to compare them."""
    return torch.ops.custom_conv.cpu_kernels()


def release_cpu_scratch() -> int:
    """Frees the scratch memory the CPU kernels keep between calls, and
    returns how many bytes that was. Their temporaries (Winograd's
    transformed blocks, im2col's columns, padded copies) come from a pool
    that keeps them for the next call, as re-allocating megabytes each call
    cost page faults; it never keeps more than the most the process's
    kernels had in use at once. A call running meanwhile in another thread
    keeps its buffers and gives them back to the pool when it ends."""
    return torch.ops.custom_conv.release_cpu_scratch()


__all__ = ["functional", "nn", "convert", "to_torch", "ConvertWarning", "enabled", "models", "onnx",
           "FallbackWarning", "cpu_kernels", "release_cpu_scratch", "has_cuda_kernels", "explain_conv2d",
           "Conv2dChoice", "disabled_algorithms", "forced_algorithm", "info", "__version__"]
