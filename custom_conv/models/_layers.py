"""The one place where a model's backend decides whose conv, transposed conv and pooling run.

Both choices are classes with the same constructor and parameters (ours
subclass torch's), so a model written against `layers(backend)` is the same
architecture with the same initial weights either way; only the kernels that
compute conv and max-pool differ.
"""
from types import SimpleNamespace

import torch

from .. import nn as custom_nn

BACKENDS = ("custom", "torch")


def layers(backend):
    """Conv2d, ConvTranspose2d, MaxPool2d and AvgPool2d classes for `backend` ("custom" or "torch")."""
    if backend == "custom":
        return SimpleNamespace(Conv2d=custom_nn.Conv2d, ConvTranspose2d=custom_nn.ConvTranspose2d,
                               MaxPool2d=custom_nn.MaxPool2d, AvgPool2d=custom_nn.AvgPool2d)
    if backend == "torch":
        return SimpleNamespace(Conv2d=torch.nn.Conv2d, ConvTranspose2d=torch.nn.ConvTranspose2d,
                               MaxPool2d=torch.nn.MaxPool2d, AvgPool2d=torch.nn.AvgPool2d)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
