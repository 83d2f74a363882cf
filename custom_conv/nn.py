"""nn.Module versions of our layers.

Each subclasses torch's module of the same name, so constructor
arguments, parameters, initialisation, state_dict keys, repr and isinstance
checks are torch's own; only the forward runs our kernels.
"""
import torch
import torch.nn.functional as F

from . import functional

__all__ = ["Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "AdaptiveMaxPool2d"]


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


class Conv1d(torch.nn.Conv1d):
    """torch.nn.Conv1d computed by custom_conv's kernels (as a 2-D convolution of height 1)."""
    __prepare_scriptable__ = _not_scriptable

    def forward(self, input):
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return functional.conv1d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return functional.conv1d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                 self.groups)


class _ConvTranspose:
    """The forward of torch's transposed convolution modules, on our functions."""
    __prepare_scriptable__ = _not_scriptable
    _dims = 2

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        # torch's own rule for the output_padding that gives `output_size` (and its errors).
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              self._dims, self.dilation)
        # Every argument by position, as torch's forward passes them (which its errors show).
        return functional._conv_transpose(f"conv_transpose{self._dims}d", self._dims, input, self.weight, self.bias,
                                          self.stride, self.padding, output_padding, self.groups, self.dilation,
                                          positional=8)


class ConvTranspose2d(_ConvTranspose, torch.nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d computed by custom_conv's kernels."""
    _dims = 2


class ConvTranspose1d(_ConvTranspose, torch.nn.ConvTranspose1d):
    """torch.nn.ConvTranspose1d computed by custom_conv's kernels."""
    _dims = 1


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by custom_conv's kernels."""
    __prepare_scriptable__ = _not_scriptable

    def forward(self, input):
        return functional.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                                     ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d computed by custom_conv's kernels."""
    __prepare_scriptable__ = _not_scriptable

    def forward(self, input):
        return functional.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                     self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d computed by custom_conv's kernels."""
    __prepare_scriptable__ = _not_scriptable

    def forward(self, input):
        return functional.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    """torch.nn.AdaptiveMaxPool2d computed by custom_conv's kernels."""
    __prepare_scriptable__ = _not_scriptable

    def forward(self, input):
        return functional.adaptive_max_pool2d(input, self.output_size, self.return_indices)
