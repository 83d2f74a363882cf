"""Classic CNNs whose convolutions and max-pools are custom_conv's (or torch's).

    from custom_conv.models import get_model
    model = get_model("resnet20", num_classes=10, backend="custom")

Every builder takes in_channels, num_classes and backend ("custom" | "torch");
with the same seed both backends build the same weights. ConvAutoencoder
(conv_autoencoder) is not a classifier, so it is not among MODELS.
"""
from ._layers import BACKENDS, layers
from .autoencoder import ConvAutoencoder, conv_autoencoder
from .lenet import LeNet5, lenet5
from .resnet import ResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from .vgg import VGG, vgg11, vgg13, vgg16, vgg19

MODELS = {
    "lenet5": lenet5,
    "vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg19": vgg19,
    "vgg11_bn": lambda **kw: vgg11(batch_norm=True, **kw),
    "vgg13_bn": lambda **kw: vgg13(batch_norm=True, **kw),
    "vgg16_bn": lambda **kw: vgg16(batch_norm=True, **kw),
    "vgg19_bn": lambda **kw: vgg19(batch_norm=True, **kw),
    "resnet20": resnet20, "resnet32": resnet32, "resnet44": resnet44, "resnet56": resnet56,
    "resnet110": resnet110,
}


def get_model(name, in_channels=3, num_classes=10, backend="custom", **options):
    """Builds the model called `name` (a key of MODELS); `options` go to its
    builder (LeNet-5's pool="max" | "avg")."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, backend=backend, **options)


__all__ = ["BACKENDS", "MODELS", "get_model", "layers", "LeNet5", "lenet5", "VGG", "vgg11", "vgg13",
           "vgg16", "vgg19", "ResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
           "ConvAutoencoder", "conv_autoencoder"]
