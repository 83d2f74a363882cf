"""ResNet for CIFAR-10, as in He et al. 2015 ("Deep Residual Learning for
Image Recognition", section 4.2): a 3x3 conv with 16 filters, then three
stages of n BasicBlocks with 16, 32 and 64 filters on 32x32, 16x16 and 8x8
maps, global average pooling and one linear layer; 6n + 2 weighted layers.

Shortcuts are the paper's option A for CIFAR: identity, and where the shape
changes, a parameter-free one that subsamples by 2 and zero-pads the new
channels. That is what gives the published parameter counts (0.27M for
ResNet-20 ... 1.7M for ResNet-110).
"""
import torch
import torch.nn.functional as F

from ._layers import layers

__all__ = ["BasicBlock", "ResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class PadShortcut(torch.nn.Module):
    """Option A: x[:, :, ::stride, ::stride], zero-padded to `extra` more channels."""

    def __init__(self, stride, extra):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        front = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, front, self.extra - front))


class BasicBlock(torch.nn.Module):
    def __init__(self, in_planes, planes, stride=1, backend="custom"):
        super().__init__()
        L = layers(backend)
        self.conv1 = L.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = L.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.relu = torch.nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(stride, planes - in_planes)
        else:
            self.shortcut = torch.nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(torch.nn.Module):
    def __init__(self, depth=20, in_channels=3, num_classes=10, backend="custom"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has 6n + 2 layers (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        L = layers(backend)
        self.backend = backend
        self.conv1 = L.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.relu = torch.nn.ReLU(inplace=True)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, backend=backend))
                in_planes = planes
            stages.append(torch.nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(64, num_classes)
        for m in self.modules():
            # The paper initialises convolutions as in He et al. 2015b (fan-in
            # would be equally faithful; fan_out is what torchvision uses).
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _factory(depth):
    def build(in_channels=3, num_classes=10, backend="custom"):
        return ResNet(depth, in_channels=in_channels, num_classes=num_classes, backend=backend)
    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for CIFAR ({(depth - 2) // 6} BasicBlocks per stage)."
    return build


resnet20, resnet32, resnet44, resnet56, resnet110 = (_factory(d) for d in (20, 32, 44, 56, 110))
