"""Run unchanged code on our kernels: `with custom_conv.enabled(): ...`.

convert() swaps modules, but a model whose forward calls
torch.nn.functional.conv2d or max_pool2d itself (PyTorch's classic MNIST
example does) would still reach torch's kernels. Under enabled(), a
torch.overrides.TorchFunctionMode sees every call of torch's Python API and
sends the convolutions and poolings we have to custom_conv.functional, whoever
makes them: torch.nn's layers (their forward calls the functional API),
third-party code, torch.conv2d itself. Nothing is patched;
leaving the block restores torch's behaviour, and other threads are not
affected (torch keeps the mode stack per thread).

What the mode intercepts (what torch.nn.functional and torch.nn call):
  torch.conv2d (= F.conv2d, what nn.Conv2d calls in every padding mode),
  torch.conv1d, torch.conv_transpose1d and torch.conv_transpose2d (= F.*),
  torch.convolution and torch._convolution when they are a 1-D or 2-D one,
  F.max_pool2d (what nn.MaxPool2d calls), F.max_pool2d_with_indices (with
  return_indices=True), torch.max_pool2d, torch._C._nn.max_pool2d_with_indices,
  F.avg_pool2d (= torch._C._nn.avg_pool2d, what nn.AvgPool2d calls),
  F.adaptive_avg_pool2d (what nn.AdaptiveAvgPool2d calls) and
  torch._C._nn.adaptive_avg_pool2d, F.adaptive_max_pool2d (and the two
  functions it dispatches to) and torch._C._nn.adaptive_max_pool2d, and the
  same ATen ops called as torch.ops.aten.* (aten._adaptive_avg_pool2d too).

Inputs our kernels do not take go to torch's, with one warning per kind
(FallbackWarning): dtypes other than float16/bfloat16/float32/float64,
quantized and sparse (any non-strided layout) tensors, devices for which the
extension has no kernels (it always has CPU, and CUDA when compiled with it),
and tensor subclasses that handle torch functions themselves. torch.func
transforms and forward-mode AD run on ours (custom_conv/autograd.py).
"""
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import functional
from ._ops import has_kernels

__all__ = ["enabled", "FallbackWarning"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class FallbackWarning(UserWarning):
    """A conv or pooling call under custom_conv.enabled() ran on torch's
    kernels, because custom_conv's do not take its inputs."""


# ------------------------------------------------------------ which inputs

_warned = set()  # kinds of input already warned about, once per process


# Whether every op of ours has a kernel for a device type, asked of the
# dispatcher once (CUDA counts only when the build compiled it in); worked out
# here, not during a call, so that torch.compile can trace the check.
_HAS_KERNELS = {device: has_kernels(key) for device, key in
                (("cpu", "CPU"), ("cuda", "CUDA"), ("meta", "Meta"), ("mps", "MPS"), ("xpu", "XPU"))}


def _has_kernels(device_type):
    return _HAS_KERNELS.get(device_type, False)


def _handles_torch_functions(cls):
    method = getattr(cls.__torch_function__, "__func__", cls.__torch_function__)
    return method not in (torch.Tensor.__torch_function__.__func__, torch._C._disabled_torch_function_impl)


def _unsupported(tensors):
    """None when our kernels take these tensors, else the kind that they are not."""
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if type(t) is not torch.Tensor and _handles_torch_functions(type(t)):
            return f"tensors of subclass {type(t).__name__}"
        if t.is_quantized:
            return "quantized tensors"
        if t.layout != torch.strided:
            return f"{t.layout} tensors"
        if t.dtype not in SUPPORTED_DTYPES:
            return f"{t.dtype} tensors"
        if not _has_kernels(t.device.type):
            return f"tensors on device type {t.device.type!r}"
    return None


def _user_stacklevel():
    """The stacklevel, for warnings.warn called from _warn_once, of the first
    frame outside torch and this file: the code that made the call."""
    internal = (os.path.dirname(torch.__file__) + os.sep, __file__)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    return level


def _warn_once(kind, what):
    if kind not in _warned:
        _warned.add(kind)
        devices = ", ".join(d for d in ("cpu", "cuda") if _has_kernels(d))
        dtypes = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        warnings.warn(
            f"custom_conv.enabled(): {kind} are not for custom_conv's kernels (they take strided {dtypes} "
            f"tensors on {devices}), so this {what} and every other convolution or pooling call on them run "
            f"on torch's. Said once.",
            FallbackWarning, stacklevel=_user_stacklevel())


# ------------------------------------------------------------ the handlers
# Each takes the arguments of the function it stands in for, with its names
# and defaults, and returns what that function returns; None means "not ours:
# call torch's".

def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return functional.conv2d(input, weight, bias, stride, padding, dilation, groups)


def _convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups,
                 *_flags):
    # torch._convolution's extra flags (benchmark, deterministic, cudnn, tf32) choose among torch's kernels.
    if weight.dim() not in (3, 4) or input.dim() != weight.dim():
        return None  # a 3-D convolution, or unbatched input (which torch.convolution does not take)
    if transposed:
        function = functional.conv_transpose2d if weight.dim() == 4 else functional.conv_transpose1d
        return function(input, weight, bias, stride, padding, output_padding, groups, dilation)
    function = functional.conv2d if weight.dim() == 4 else functional.conv1d
    return function(input, weight, bias, stride, padding, dilation, groups)


def _conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return functional.conv1d(input, weight, bias, stride, padding, dilation, groups)


def _conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return functional.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)


def _conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return functional.conv_transpose1d(input, weight, bias, stride, padding, output_padding, groups, dilation)


def _max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return functional.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                             return_indices=True):
    # F.max_pool2d_with_indices returns the indices whatever return_indices says.
    return functional.max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)


def _aten_max_pool2d(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    return functional.max_pool2d(self, kernel_size, stride, padding, dilation, ceil_mode)


def _aten_max_pool2d_with_indices(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    return functional.max_pool2d_with_indices(self, kernel_size, stride, padding, dilation, ceil_mode)


def _avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
    # aten.avg_pool2d's stride defaults to [], which means the kernel size, as None does.
    return functional.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _adaptive_avg_pool2d(input, output_size):
    return functional.adaptive_avg_pool2d(input, output_size)


def _adaptive_max_pool2d(input, output_size, return_indices=False):
    return functional.adaptive_max_pool2d(input, output_size, return_indices)


def _adaptive_max_pool2d_with_indices(input, output_size, return_indices=False):
    # Like torch's function of that name (and the ATen op), the indices whatever return_indices says.
    return functional.adaptive_max_pool2d_with_indices(input, output_size)


def _aten_conv2d(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    return functional.conv2d(input, weight, bias, stride, padding, dilation, groups)


aten = torch.ops.aten
_HANDLERS = {
    torch.conv2d: ("conv2d", _conv2d),  # F.conv2d is torch.conv2d
    torch.conv1d: ("conv1d", _conv1d),
    torch.conv_transpose2d: ("conv_transpose2d", _conv_transpose2d),
    torch.conv_transpose1d: ("conv_transpose1d", _conv_transpose1d),
    torch.convolution: ("convolution", _convolution),
    torch._convolution: ("convolution", _convolution),
    F.max_pool2d: ("max_pool2d", _max_pool2d),
    F.max_pool2d_with_indices: ("max_pool2d", _max_pool2d_with_indices),
    torch.max_pool2d: ("max_pool2d", _aten_max_pool2d),
    torch._C._nn.max_pool2d_with_indices: ("max_pool2d", _aten_max_pool2d_with_indices),
    F.avg_pool2d: ("avg_pool2d", _avg_pool2d),  # F.avg_pool2d is torch._C._nn.avg_pool2d
    F.adaptive_avg_pool2d: ("adaptive_avg_pool2d", _adaptive_avg_pool2d),
    torch._C._nn.adaptive_avg_pool2d: ("adaptive_avg_pool2d", _adaptive_avg_pool2d),
    # F.adaptive_max_pool2d dispatches on return_indices to these two, which
    # hand the mode F.adaptive_max_pool2d or themselves.
    F.adaptive_max_pool2d: ("adaptive_max_pool2d", _adaptive_max_pool2d),
    F.adaptive_max_pool2d_with_indices: ("adaptive_max_pool2d", _adaptive_max_pool2d_with_indices),
    F._adaptive_max_pool2d: ("adaptive_max_pool2d", _adaptive_max_pool2d),
    torch._C._nn.adaptive_max_pool2d: ("adaptive_max_pool2d", _adaptive_max_pool2d_with_indices),
}
for _packet, _entry in ((aten.conv2d, ("conv2d", _aten_conv2d)),
                        (aten.conv1d, ("conv1d", _conv1d)),
                        (aten.conv_transpose2d, ("conv_transpose2d", _conv_transpose2d)),
                        (aten.conv_transpose1d, ("conv_transpose1d", _conv_transpose1d)),
                        (aten.convolution, ("convolution", _convolution)),
                        (aten._convolution, ("convolution", _convolution)),
                        (aten.max_pool2d, ("max_pool2d", _aten_max_pool2d)),
                        (aten.max_pool2d_with_indices, ("max_pool2d", _aten_max_pool2d_with_indices)),
                        (aten.avg_pool2d, ("avg_pool2d", _avg_pool2d)),
                        (aten.adaptive_avg_pool2d, ("adaptive_avg_pool2d", _adaptive_avg_pool2d)),
                        (aten._adaptive_avg_pool2d, ("adaptive_avg_pool2d", _adaptive_avg_pool2d)),
                        (aten.adaptive_max_pool2d, ("adaptive_max_pool2d", _adaptive_max_pool2d_with_indices))):
    _HANDLERS[_packet] = _entry
    for _name in _packet.overloads():
        _HANDLERS[getattr(_packet, _name)] = _entry


class _CustomConvMode(TorchFunctionMode):
    # torch pops the mode while __torch_function__ runs, so the calls made
    # here (our ops, F.pad, torch's own kernels as the fallback) are not seen again.
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = _HANDLERS.get(func)
        if entry is not None:
            what, handler = entry
            kind = _unsupported((*args[:3], *kwargs.values()))
            if kind is None:
                result = handler(*args, **kwargs)
                if result is not None:
                    return result
            else:
                _warn_once(kind, what)
        return func(*args, **kwargs)


def enabled():
    """A context manager under which every call of a convolution or pooling
    that custom_conv has runs on its kernels: functional, module or inside
    third-party code, with no change to that code.

        with custom_conv.enabled():
            loss = criterion(model(x), y)   # forward on our kernels
            loss.backward()                 # and so the backward

    Inputs our kernels do not take run on torch's (see FallbackWarning).
    The mode is per thread and can be nested."""
    return _CustomConvMode()
