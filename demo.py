"""A short tour: our layers next to torch's on the same inputs.

Runs conv2d and max_pool2d through custom_conv and torch.nn.functional and
prints how far apart their outputs and gradients are, then does the same for
a whole torchvision ResNet-18 converted to our layers.
"""
import copy
import time

import torch
import torch.nn.functional as F
import torchvision

import custom_conv
from custom_conv import functional as CF


def max_diff(a, b):
    return (a - b).abs().max().item()


def compare(name, ours, theirs, *tensors):
    leaves = [[t.detach().clone().requires_grad_() for t in tensors] for _ in range(2)]
    outs = [ours(*leaves[0]), theirs(*leaves[1])]
    grad = torch.randn_like(outs[0])
    for out in outs:
        out.backward(grad)
    grad_diffs = ", ".join(f"{max_diff(a.grad, b.grad):.1e}" for a, b in zip(*leaves))
    print(f"{name:<42} output {max_diff(*outs):.1e}   gradients {grad_diffs}")


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}; largest absolute difference, ours vs torch.nn.functional (float32)")
    x = torch.randn(8, 16, 32, 32)
    w = torch.randn(32, 16, 3, 3) / 12
    b = torch.randn(32)
    compare("conv2d 3x3, padding 1", lambda x, w, b: CF.conv2d(x, w, b, padding=1),
            lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, b)
    compare("conv2d 3x3, stride 2, dilation 2, groups 4",
            lambda x, w, b: CF.conv2d(x, w, b, stride=2, dilation=2, groups=4),
            lambda x, w, b: F.conv2d(x, w, b, stride=2, dilation=2, groups=4), x, w[:, :4], b)
    compare("max_pool2d 3x3, stride 2, padding 1", lambda x: CF.max_pool2d(x, 3, 2, 1),
            lambda x: F.max_pool2d(x, 3, 2, 1), x)
    _, idx = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
    _, ref_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    print(f"{'max_pool2d indices identical':<42} {torch.equal(idx, ref_idx)}")

    model = torchvision.models.resnet18(num_classes=10).eval()
    ours = custom_conv.convert(copy.deepcopy(model))
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        timings = {}
        for name, net in (("torch", model), ("custom_conv", ours)):
            start = time.perf_counter()
            logits = net(images)
            timings[name] = (time.perf_counter() - start, logits)
    print(f"{'resnet18 logits (convert)':<42} output {max_diff(timings['torch'][1], timings['custom_conv'][1]):.1e}"
          f"   forward {timings['custom_conv'][0] * 1e3:.0f} ms ours, {timings['torch'][0] * 1e3:.0f} ms torch")


if __name__ == "__main__":
    main()
