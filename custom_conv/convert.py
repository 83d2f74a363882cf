"""Swap torch's conv and max-pool layers for ours in an existing model."""
import torch

from . import nn

__all__ = ["convert"]


def _as_ours(module):
    if type(module) is torch.nn.Conv2d:
        # Built on the meta device (no memory, no initialisation), then given
        # the original's parameters: the new layer shares them, so optimisers
        # and weight tying that hold references keep working.
        ours = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                         module.padding, module.dilation, module.groups, module.bias is not None,
                         module.padding_mode, device="meta")
        ours.weight = module.weight
        ours.bias = module.bias
    elif type(module) is torch.nn.MaxPool2d:
        ours = nn.MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                            module.return_indices, module.ceil_mode)
    else:
        return None
    ours.train(module.training)
    return ours


def convert(module):
    """Returns `module` with every torch.nn.Conv2d and torch.nn.MaxPool2d
    replaced by custom_conv's, parameters kept (shared, not copied).

    Like torch.nn.SyncBatchNorm.convert_sync_batchnorm, containers are updated
    in place and returned; a bare Conv2d or MaxPool2d yields a new module.
    Subclasses of those layers are left alone, since their forward may differ.
    """
    replacement = _as_ours(module)
    if replacement is not None:
        return replacement
    for name, child in module.named_children():
        converted = convert(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
