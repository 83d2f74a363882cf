"""nn.Module versions of our layers.

They subclass torch.nn.Conv2d and torch.nn.MaxPool2d, so constructor
arguments, parameters, initialisation, state_dict keys, repr and isinstance
checks are torch's own; only the forward runs our kernels.
"""
import torch
import torch.nn.functional as F

from . import functional

__all__ = ["Conv2d", "MaxPool2d"]


def _not_scriptable(self):
    # torch.jit.script calls this on every module before compiling it.
    raise RuntimeError(
        f"custom_conv.nn.{type(self).__name__} cannot be compiled by torch.jit.script: TorchScript is "
        f"deprecated and does not know our ops' Python entry points. Use torch.jit.trace, torch.compile or "
        f"torch.export, or custom_conv.to_torch(model) to script torch's own layers.")


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d computed by custom_conv's kernels."""
    __prepare_scriptable__ = _not_scriptable

    def forward(self, input):
        if self.padding_mode != "zeros":
            # reflect / replicate / circular: pad explicitly, then a 'valid' conv.
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return functional.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return functional.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                 self.groups)


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by custom_conv's kernels."""
    __prepare_scriptable__ = _not_scriptable

    def forward(self, input):
        return functional.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                                     ceil_mode=self.ceil_mode, return_indices=self.return_indices)
