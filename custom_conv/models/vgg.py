"""VGG (Simonyan & Zisserman 2014) adapted to CIFAR's 32x32 images.

The convolutional part is the paper's configurations A, B, D and E (3x3
convolutions, ReLU, five 2x2 max-pools). The paper's three 4096-wide fully
connected layers are for 224x224 ImageNet; for CIFAR the five pools leave a
1x1x512 map, so, as is common for CIFAR, a single linear layer classifies
it. Average pooling to 1x1 first lets larger inputs through too.

Five 2x2 pools need at least 32x32 pixels: a 28x28 image (MNIST,
Fashion-MNIST) would shrink to 14, 7, 3, 1 and then nothing. Smaller
images are zero-padded to 32x32 (centred) in forward, as LeNet-5 pads
MNIST, so that every pool sees the map it was designed for.
"""
import torch
import torch.nn.functional as F

from ._layers import layers

__all__ = ["VGG", "CONFIGS", "vgg11", "vgg13", "vgg16", "vgg19"]

# Numbers are output channels of 3x3 convolutions, "M" a 2x2 max-pool.
CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class VGG(torch.nn.Module):
    # 2^5: one halving per pool.
    min_input_size = 32

    def __init__(self, depth=16, in_channels=3, num_classes=10, batch_norm=False, backend="custom"):
        super().__init__()
        if depth not in CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
        L = layers(backend)
        self.backend = backend
        modules, channels = [], in_channels
        for item in CONFIGS[depth]:
            if item == "M":
                modules.append(L.MaxPool2d(kernel_size=2, stride=2))
                continue
            # The bias is kept even before batch norm (which cancels it) so that
            # parameter counts are the published ones, as in torchvision's vgg*_bn.
            modules.append(L.Conv2d(channels, item, kernel_size=3, padding=1))
            if batch_norm:
                modules.append(torch.nn.BatchNorm2d(item))
            modules.append(torch.nn.ReLU(inplace=True))
            channels = item
        self.features = torch.nn.Sequential(*modules)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Linear(channels, num_classes)
        for m in self.modules():
            # He initialisation: VGG's deeper configurations do not train from
            # torch's default (uniform, gain 1/sqrt(3)) without batch norm.
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)

    def forward(self, x):
        h, w = x.shape[-2:]
        pad_h, pad_w = max(0, self.min_input_size - h), max(0, self.min_input_size - w)
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _factory(depth):
    def build(in_channels=3, num_classes=10, batch_norm=False, backend="custom"):
        return VGG(depth, in_channels=in_channels, num_classes=num_classes, batch_norm=batch_norm,
                   backend=backend)
    build.__name__ = f"vgg{depth}"
    build.__doc__ = (f"VGG-{depth} for 32x32 images, smaller ones zero-padded to 32x32 "
                     "(batch_norm=True adds BatchNorm after each conv).")
    return build


vgg11, vgg13, vgg16, vgg19 = (_factory(d) for d in (11, 13, 16, 19))
