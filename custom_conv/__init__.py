"""custom_conv: 2-D convolution and max-pooling written from scratch.

    import custom_conv
    y = custom_conv.functional.conv2d(x, w, b, stride=2, padding=1)
    layer = custom_conv.nn.Conv2d(3, 16, 3, padding=1)
    model = custom_conv.convert(torchvision.models.resnet18())
"""
from . import _ops  # noqa: F401  (loads the kernels; must come first)
from . import functional, nn
from .convert import convert

__all__ = ["functional", "nn", "convert"]
