"""LeNet-5 (LeCun et al. 1998), with ReLU and max-pooling as is usual today
(pool="avg" for average pooling, closer to the original's subsampling)."""
import warnings

import torch
import torch.nn.functional as F

from ._layers import layers

__all__ = ["LeNet5", "lenet5", "POOLS"]

POOLS = ("max", "avg")


class LeNet5(torch.nn.Module):
    """conv 5x5 (6) - pool - conv 5x5 (16) - pool - fc 120 - fc 84 - fc num_classes.

    The architecture is defined on 32x32 images. Smaller ones (MNIST's 28x28)
    are zero-padded to 32x32 in forward, as LeCun did, so that one model (and
    one checkpoint) serves both sizes with the classic 16x5x5 = 400 features.
    """

    input_size = 32

    def __init__(self, in_channels=1, num_classes=10, backend="custom", pool="max"):
        super().__init__()
        L = layers(backend)
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        Pool = L.MaxPool2d if pool == "max" else L.AvgPool2d
        self.backend, self.pool = backend, pool
        self.features = torch.nn.Sequential(
            L.Conv2d(in_channels, 6, kernel_size=5), torch.nn.ReLU(inplace=True), Pool(2),
            L.Conv2d(6, 16, kernel_size=5), torch.nn.ReLU(inplace=True), Pool(2),
        )
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(16 * 5 * 5, 120), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(120, 84), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(84, num_classes),
        )

    def forward(self, x):
        h, w = _image_size(x)
        if h > self.input_size or w > self.input_size:
            raise ValueError(f"LeNet5 takes images of at most {self.input_size}x{self.input_size}, got {h}x{w}")
        if (h, w) != (self.input_size, self.input_size):
            top, left = (self.input_size - h) // 2, (self.input_size - w) // 2
            x = F.pad(x, (left, self.input_size - w - left, top, self.input_size - h - top))
        return self.classifier(torch.flatten(self.features(x), 1))


def _image_size(x):
    """The image's (height, width) as ints. torch.jit.trace sees sizes as
    tensors and warns when they decide a branch; here the trace keeping the
    padding of the size it traced is what is meant, so it is not warned about."""
    if not torch.jit.is_tracing():
        return tuple(x.shape[-2:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(s) for s in x.shape[-2:])


def lenet5(in_channels=1, num_classes=10, backend="custom", pool="max"):
    return LeNet5(in_channels=in_channels, num_classes=num_classes, backend=backend, pool=pool)
