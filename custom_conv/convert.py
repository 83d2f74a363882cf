"""Swap torch's conv and max-pool layers for ours in an existing model
(convert), and back (to_torch)."""
import warnings

import torch
from torch.nn.utils import parametrize

from . import nn

__all__ = ["convert", "to_torch", "ConvertWarning"]


class ConvertWarning(UserWarning):
    """convert() left a conv or max-pool layer on torch's kernels; the message says which and why."""


def _swapped(module, conv_class, pool_class):
    """A `conv_class` or `pool_class` twin of a Conv2d or MaxPool2d, sharing
    its parameters and parametrizations."""
    if isinstance(module, torch.nn.Conv2d):
        # Built on the meta device (no memory, no initialisation), then given
        # the original's parameters: the new layer shares them, so optimisers
        # and weight tying that hold references keep working.
        twin = conv_class(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                          module.padding, module.dilation, module.groups, module.bias is not None,
                          module.padding_mode, device="meta")
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
        twin = pool_class(module.kernel_size, module.stride, module.padding, module.dilation,
                          module.return_indices, module.ceil_mode)
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
    """Returns `module` with every torch.nn.Conv2d and torch.nn.MaxPool2d
    replaced by custom_conv's, parameters kept (shared, not copied),
    parametrizations too (weight norm, spectral norm).

    Like torch.nn.SyncBatchNorm.convert_sync_batchnorm, containers are updated
    in place and returned; a bare Conv2d or MaxPool2d yields a new module.
    Left alone, with a ConvertWarning that names them: subclasses of those
    layers (their forward may differ) and lazy layers not yet materialised
    (run one forward first: they then become plain Conv2d).
    """
    left_alone = []

    def swap(child):
        cls = _base_class(child)
        if cls in (torch.nn.Conv2d, torch.nn.MaxPool2d):
            return _swapped(child, nn.Conv2d, nn.MaxPool2d)
        if isinstance(child, torch.nn.modules.lazy.LazyModuleMixin) and isinstance(child, torch.nn.Conv2d):
            left_alone.append(f"{type(child).__name__} (not materialised yet: run a forward first, then convert)")
        elif isinstance(child, (torch.nn.Conv2d, torch.nn.MaxPool2d)) and not isinstance(child, (nn.Conv2d,
                                                                                                   nn.MaxPool2d)):
            left_alone.append(f"{type(child).__name__} (a subclass of {cls.__mro__[1].__name__}, whose forward "
                              f"may differ)")
        return None

    result = _walk(module, swap)
    if left_alone:
        warnings.warn(f"custom_conv.convert left these layers on torch's kernels: {', '.join(left_alone)}",
                      ConvertWarning, stacklevel=2)
    return result


def to_torch(module):
    """The inverse of convert: every custom_conv.nn.Conv2d and MaxPool2d
    replaced by torch's, parameters and parametrizations shared. For code
    that wants torch's own layers back (quantisation, other exporters, ...)."""
    def swap(child):
        if _base_class(child) in (nn.Conv2d, nn.MaxPool2d):
            return _swapped(child, torch.nn.Conv2d, torch.nn.MaxPool2d)
        return None
    return _walk(module, swap)
