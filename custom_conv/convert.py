"""Swap torch's conv and pooling layers for ours in an existing model
(convert), and back (to_torch)."""
import warnings

import torch
from torch.nn.utils import parametrize

from . import nn

__all__ = ["convert", "to_torch", "ConvertWarning"]


class ConvertWarning(UserWarning):
    """convert() left a conv or pooling layer on torch's kernels; the message says which and why."""


# torch's layer class: ours. to_torch reads it the other way.
OURS = {
    torch.nn.Conv1d: nn.Conv1d,
    torch.nn.Conv2d: nn.Conv2d,
    torch.nn.ConvTranspose1d: nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d: nn.ConvTranspose2d,
    torch.nn.MaxPool2d: nn.MaxPool2d,
    torch.nn.AvgPool2d: nn.AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
    torch.nn.AdaptiveMaxPool2d: nn.AdaptiveMaxPool2d,
}


def _swapped(module, twin_class):
    """A `twin_class` twin of a conv or pooling layer, sharing its parameters
    and parametrizations."""
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        # Built on the meta device (no memory, no initialisation), then given
        # the original's parameters: the new layer shares them, so optimisers
        # and weight tying that hold references keep working.
        kwargs = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
                      bias=module.bias is not None, padding_mode=module.padding_mode, device="meta")
        if module.transposed:
            kwargs["output_padding"] = module.output_padding
        twin = twin_class(module.in_channels, module.out_channels, module.kernel_size, **kwargs)
        if parametrize.is_parametrized(module):
            # weight norm, spectral norm...: register the same parametrizations
            # (which makes the twin compute its weight from them), then share
            # the original's, state included (spectral norm's power iteration).
            for name, parametrizations in module.parametrizations.items():
                for parametrization in parametrizations:
                    parametrize.register_parametrization(twin, name, parametrization, unsafe=True)
            twin.parametrizations = module.parametrizations
        for name in ("weight", "bias"):
            if not parametrize.is_parametrized(module, name):
                setattr(twin, name, getattr(module, name))
    else:
        # A pooling layer's constructor arguments are its constants.
        twin = twin_class(**{name: getattr(module, name) for name in type(module).__constants__})
    twin.train(module.training)
    return twin


def _base_class(module):
    """The layer class a module is, seen through torch's parametrization (which subclasses it)."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


def _walk(module, swap):
    replacement = swap(module)
    if replacement is not None:
        return replacement
    for name, child in module.named_children():
        converted = _walk(child, swap)
        if converted is not child:
            setattr(module, name, converted)
    return module


def convert(module):
    """Returns `module` with every layer of torch's that custom_conv has
    (the keys of OURS: Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d,
    MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d) replaced by custom_conv's, parameters kept (shared, not
    copied), parametrizations too (weight norm, spectral norm).

    Like torch.nn.SyncBatchNorm.convert_sync_batchnorm, containers are updated
    in place and returned; a bare layer yields a new module.
    Left alone, with a ConvertWarning that names them: subclasses of those
    layers (their forward may differ) and lazy layers not yet materialised
    (run one forward first: they then become plain Conv2d).
    """
    left_alone = []

    def swap(child):
        cls = _base_class(child)
        if cls in OURS:
            return _swapped(child, OURS[cls])
        theirs = tuple(OURS)
        if isinstance(child, torch.nn.modules.lazy.LazyModuleMixin) and isinstance(child, theirs):
            left_alone.append(f"{type(child).__name__} (not materialised yet: run a forward first, then convert)")
        elif isinstance(child, theirs) and not isinstance(child, tuple(OURS.values())):
            left_alone.append(f"{type(child).__name__} (a subclass of {cls.__mro__[1].__name__}, whose forward "
                              f"may differ)")
        return None

    result = _walk(module, swap)
    if left_alone:
        warnings.warn(f"custom_conv.convert left these layers on torch's kernels: {', '.join(left_alone)}",
                      ConvertWarning, stacklevel=2)
    return result


def to_torch(module):
    """The inverse of convert: every custom_conv.nn layer replaced by torch's,
    parameters and parametrizations shared. For code that wants torch's own
    layers back (quantisation, other exporters, ...)."""
    theirs = {ours: torch_class for torch_class, ours in OURS.items()}

    def swap(child):
        cls = _base_class(child)
        if cls in theirs:
            return _swapped(child, theirs[cls])
        return None
    return _walk(module, swap)
