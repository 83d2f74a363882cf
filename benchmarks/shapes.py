"""The layer shapes the benchmarks time: the conv and max-pool layers of
LeNet-5, VGG-16 (CIFAR), ResNet-20 (CIFAR) and ResNet-18 (ImageNet), plus a
few shapes that stress particular paths. Batch size is applied by the caller.

A conv shape is (name, C_in, C_out, H, W, kernel, stride, padding, groups);
a pool shape is (name, C, H, W, kernel, stride, padding).
"""

CONV_SHAPES = [
    # LeNet-5 on 32x32 MNIST-like input (no padding, as in the original).
    ("lenet5.conv1 1-6 5x5 @32", 1, 6, 32, 32, 5, 1, 0, 1),
    ("lenet5.conv2 6-16 5x5 @14", 6, 16, 14, 14, 5, 1, 0, 1),
    # VGG-16 for CIFAR: 3x3 pad 1 throughout; one line per distinct shape.
    ("vgg16 3-64 @32", 3, 64, 32, 32, 3, 1, 1, 1),
    ("vgg16 64-64 @32", 64, 64, 32, 32, 3, 1, 1, 1),
    ("vgg16 64-128 @16", 64, 128, 16, 16, 3, 1, 1, 1),
    ("vgg16 128-128 @16", 128, 128, 16, 16, 3, 1, 1, 1),
    ("vgg16 128-256 @8", 128, 256, 8, 8, 3, 1, 1, 1),
    ("vgg16 256-256 @8", 256, 256, 8, 8, 3, 1, 1, 1),
    ("vgg16 256-512 @4", 256, 512, 4, 4, 3, 1, 1, 1),
    ("vgg16 512-512 @4", 512, 512, 4, 4, 3, 1, 1, 1),
    ("vgg16 512-512 @2", 512, 512, 2, 2, 3, 1, 1, 1),
    # ResNet-20 for CIFAR (option-A shortcuts have no convolution).
    ("resnet20 3-16 @32", 3, 16, 32, 32, 3, 1, 1, 1),
    ("resnet20 16-16 @32", 16, 16, 32, 32, 3, 1, 1, 1),
    ("resnet20 16-32 /2 @32", 16, 32, 32, 32, 3, 2, 1, 1),
    ("resnet20 32-32 @16", 32, 32, 16, 16, 3, 1, 1, 1),
    ("resnet20 32-64 /2 @16", 32, 64, 16, 16, 3, 2, 1, 1),
    ("resnet20 64-64 @8", 64, 64, 8, 8, 3, 1, 1, 1),
    # ResNet-18 (ImageNet, 224x224): the 7x7/2 stem, the 3x3 stages and the
    # 1x1/2 projections of the downsampling shortcuts.
    ("resnet18 stem 3-64 7x7/2 @224", 3, 64, 224, 224, 7, 2, 3, 1),
    ("resnet18 64-64 @56", 64, 64, 56, 56, 3, 1, 1, 1),
    ("resnet18 64-128 /2 @56", 64, 128, 56, 56, 3, 2, 1, 1),
    ("resnet18 128-128 @28", 128, 128, 28, 28, 3, 1, 1, 1),
    ("resnet18 256-256 @14", 256, 256, 14, 14, 3, 1, 1, 1),
    ("resnet18 512-512 @7", 512, 512, 7, 7, 3, 1, 1, 1),
    ("resnet18 proj 64-128 1x1/2 @56", 64, 128, 56, 56, 1, 2, 0, 1),
    ("resnet18 proj 256-512 1x1/2 @14", 256, 512, 14, 14, 1, 2, 0, 1),
    # Paths worth timing on their own.
    ("1x1 projection 128-256 @28", 128, 256, 28, 28, 1, 1, 0, 1),
    ("depthwise 3x3 64ch @56", 64, 64, 56, 56, 3, 1, 1, 64),
    ("depthwise 3x3/2 128ch @28", 128, 128, 28, 28, 3, 2, 1, 128),
]

# Strided layers beyond the benchmark's, for route_sweep.py --shapes strided:
# their input gradients, which the direct kernels compute phase by phase, are
# the measurements behind the chooser's counting of a phase's taps (4x4/2 as
# in DCGAN's generator and discriminator, 3x3/2 and 5x5/2 of several widths,
# the 7x7/2 stem).
STRIDED_SHAPES = [
    ("4x4/2 32-64 @64", 32, 64, 64, 64, 4, 2, 1, 1),
    ("4x4/2 64-64 @32", 64, 64, 32, 32, 4, 2, 1, 1),
    ("4x4/2 64-128 @32", 64, 128, 32, 32, 4, 2, 1, 1),
    ("4x4/2 128-256 @16", 128, 256, 16, 16, 4, 2, 1, 1),
    ("4x4/2 256-512 @8", 256, 512, 8, 8, 4, 2, 1, 1),
    ("3x3/2 32-64 @16", 32, 64, 16, 16, 3, 2, 1, 1),
    ("3x3/2 64-64 @32", 64, 64, 32, 32, 3, 2, 1, 1),
    ("3x3/2 64-128 @56", 64, 128, 56, 56, 3, 2, 1, 1),
    ("3x3/2 128-256 @14", 128, 256, 14, 14, 3, 2, 1, 1),
    ("3x3/2 128-256 @28", 128, 256, 28, 28, 3, 2, 1, 1),
    ("3x3/2 256-512 @14", 256, 512, 14, 14, 3, 2, 1, 1),
    ("5x5/2 64-64 @32", 64, 64, 32, 32, 5, 2, 2, 1),
    ("7x7/2 3-64 @224", 3, 64, 224, 224, 7, 2, 3, 1),
]

POOL_SHAPES = [
    ("maxpool 2x2/2 64ch @32 (vgg)", 64, 32, 32, 2, 2, 0),
    ("maxpool 2x2/2 6ch @28 (lenet)", 6, 28, 28, 2, 2, 0),
    ("maxpool 3x3/2 pad1 64ch @112 (resnet18)", 64, 112, 112, 3, 2, 1),
]

# The rest of the family, timed like max-pool (forward, forward+backward;
# convT: a transposed convolution): (name, the function's name in torch.nn.functional and custom_conv.functional,
# the input's shape without the batch, the weight's shape or None, keyword
# arguments).
FAMILY_SHAPES = [
    ("convT 32-16 3x3/2 @7 (autoencoder)", "conv_transpose2d", (32, 7, 7), (32, 16, 3, 3),
     dict(stride=2, padding=1, output_padding=1)),
    ("convT 128-64 4x4/2 @16 (dcgan)", "conv_transpose2d", (128, 16, 16), (128, 64, 4, 4),
     dict(stride=2, padding=1)),
    ("conv1d 64-64 k3 @1000 (audio)", "conv1d", (64, 1000), (64, 64, 3), dict(padding=1)),
    ("avgpool 2x2/2 64ch @56", "avg_pool2d", (64, 56, 56), None, dict(kernel_size=2)),
    ("avgpool 3x3/1 pad1 64ch @28", "avg_pool2d", (64, 28, 28), None, dict(kernel_size=3, stride=1, padding=1)),
    ("adaptive avgpool 512ch 7x7->1 (resnet)", "adaptive_avg_pool2d", (512, 7, 7), None, dict(output_size=1)),
    ("adaptive maxpool 512ch 7x7->1", "adaptive_max_pool2d", (512, 7, 7), None, dict(output_size=1)),
]
