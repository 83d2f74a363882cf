import pytest
import torch
import torchvision

import custom_conv
from custom_conv import models

# Parameter counts from the papers: LeNet-5 with every C3 map connected to
# every S2 map (LeCun et al. 1998, with a 10-way output), and He et al. 2015,
# Table 6 (0.27M, 0.46M, 0.66M, 0.85M, 1.7M).
RESNET_PUBLISHED_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_lenet5_parameter_count():
    assert count(models.lenet5()) == 61_706


@pytest.mark.parametrize("depth", sorted(RESNET_PUBLISHED_M))
def test_resnet_parameter_counts_match_the_paper(depth):
    model = models.get_model(f"resnet{depth}", in_channels=3, num_classes=10)
    n = count(model)
    assert round(n / 1e6, 2 if depth < 100 else 1) == RESNET_PUBLISHED_M[depth]
    # 6n + 2 weighted layers: conv1, 3 stages of n blocks of 2 convs, and the fc.
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("bn", [False, True])
def test_vgg_convolutions_are_the_published_configurations(depth, bn):
    # torchvision's VGG is the paper's; its convolutional part must match ours
    # parameter for parameter (built on the meta device: no memory, no time).
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"vgg{depth}{'_bn' if bn else ''}")().features
    name = f"vgg{depth}{'_bn' if bn else ''}"
    model = models.get_model(name, in_channels=3, num_classes=10)
    assert [tuple(p.shape) for p in model.features.parameters()] == \
        [tuple(p.shape) for p in reference.parameters()]
    assert count(model) == count(reference) + 512 * 10 + 10
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features) == 5


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_lenet5_takes_28_and_32_pixel_images(size, in_channels):
    model = models.lenet5(in_channels=in_channels, num_classes=7)
    assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


def test_lenet5_refuses_images_it_cannot_hold():
    with pytest.raises(ValueError, match="at most 32x32"):
        models.lenet5()(torch.randn(1, 1, 36, 36))


@pytest.mark.parametrize("name", ["vgg11", "vgg11_bn", "resnet20"])
def test_cifar_models_output_shapes(name):
    model = models.get_model(name, in_channels=3, num_classes=100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_model_takes_every_dataset(name):
    """MNIST and Fashion-MNIST (1 x 28 x 28), CIFAR (3 x 32 x 32)."""
    for shape in [(1, 28, 28), (3, 32, 32)]:
        model = models.get_model(name, in_channels=shape[0], num_classes=10).eval()
        with torch.no_grad():
            assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_vgg_pads_small_images_to_32_so_that_each_pool_halves_what_it_was_designed_for():
    model = models.vgg11(in_channels=1).eval()
    sizes = []
    for module in model.features:
        if isinstance(module, torch.nn.MaxPool2d):
            module.register_forward_hook(lambda m, inputs, out: sizes.append(tuple(out.shape[-2:])))
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        y = model(x)
    assert sizes == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    # Centred zero padding: the same as padding by hand (2 on every side).
    with torch.no_grad():
        torch.testing.assert_close(model(torch.nn.functional.pad(x, (2, 2, 2, 2))), y, rtol=0, atol=0)


def test_models_take_other_channel_counts():
    assert models.resnet20(in_channels=1)(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_unknown_backend_and_model_are_refused():
    with pytest.raises(ValueError, match="backend"):
        models.lenet5(backend="cudnn")
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("alexnet")


def _pair(name, seed=0, **kw):
    built = {}
    for backend in models.BACKENDS:
        torch.manual_seed(seed)
        built[backend] = models.get_model(name, backend=backend, **kw)
    return built["custom"], built["torch"]


@pytest.mark.parametrize("name", ["lenet5", "vgg11", "vgg13_bn", "resnet20"])
def test_backends_build_the_same_model_with_the_same_weights(name):
    custom, reference = _pair(name, in_channels=3)
    # Only the conv and max-pool classes differ, and the custom ones are ours.
    kinds = lambda m, cls: [n for n, x in m.named_modules() if isinstance(x, cls)]  # noqa: E731
    assert kinds(custom, torch.nn.Conv2d) == kinds(reference, torch.nn.Conv2d)
    assert kinds(custom, torch.nn.MaxPool2d) == kinds(reference, torch.nn.MaxPool2d)
    assert kinds(custom, torch.nn.Conv2d) and all(
        type(x) is custom_conv.nn.Conv2d for x in custom.modules() if isinstance(x, torch.nn.Conv2d))
    assert all(type(x) is custom_conv.nn.MaxPool2d for x in custom.modules()
               if isinstance(x, torch.nn.MaxPool2d))
    assert not any(isinstance(x, (custom_conv.nn.Conv2d, custom_conv.nn.MaxPool2d)) for x in reference.modules())
    a, b = custom.state_dict(), reference.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name,size", [("lenet5", 32), ("vgg11_bn", 32), ("resnet20", 16)])
def test_backends_compute_the_same_outputs_and_gradients(name, size):
    custom, reference = _pair(name, seed=1, in_channels=3)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    out_c, out_t = custom(x), reference(x)
    torch.testing.assert_close(out_c, out_t, rtol=1e-4, atol=1e-4)
    out_c.square().sum().backward()
    out_t.square().sum().backward()
    for (name_c, p_c), (_, p_t) in zip(custom.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p_c.grad, p_t.grad, rtol=1e-3, atol=1e-4, msg=name_c)
    # Batch norm's running statistics, updated from the convolutions' outputs.
    for (name_c, b_c), (_, b_t) in zip(custom.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b_c, b_t, rtol=1e-4, atol=1e-5, msg=name_c)


def test_backends_agree_in_eval_mode():
    custom, reference = _pair("resnet20", seed=3, in_channels=3)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(custom.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-4)


def test_different_seeds_give_different_weights():
    # Guards the equal-weights test above against a model that ignores the RNG.
    torch.manual_seed(0)
    a = models.lenet5().state_dict()
    torch.manual_seed(1)
    b = models.lenet5().state_dict()
    assert not torch.equal(a["features.0.weight"], b["features.0.weight"])


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (13, 18)])
def test_conv_autoencoder_gives_back_images_of_their_own_size_on_our_layers(size):
    model = models.conv_autoencoder(in_channels=3)
    assert [type(m) for m in model.children()] == [custom_conv.nn.Conv2d, custom_conv.nn.Conv2d,
                                                   custom_conv.nn.ConvTranspose2d, custom_conv.nn.ConvTranspose2d]
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def _train_autoencoder(backend, steps):
    """The losses of `steps` Adam steps on 16 small random images with
    structure to learn (smooth blobs: 4x4 noise upsampled to 12x12), and the
    least loss there is (binary cross-entropy of the images with themselves)."""
    torch.manual_seed(0)
    model = models.conv_autoencoder(in_channels=1, width=8, backend=backend).double()
    images = torch.sigmoid(3 * torch.nn.functional.interpolate(
        torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64), size=(12, 12),
        mode="bilinear", align_corners=False))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), images)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, torch.nn.functional.binary_cross_entropy(images, images).item()


def test_conv_autoencoder_learns_and_trains_as_torchs_layers_do():
    losses, least = _train_autoencoder("custom", 40)
    # What is left to learn falls to under a third in 40 steps (to about a fifth).
    assert losses[-1] - least < (losses[0] - least) / 3
    reference, _ = _train_autoencoder("torch", 40)
    # Same weights, same data, float64: the same steps, up to summation order.
    assert losses == pytest.approx(reference, rel=1e-7)


def test_lenet5_with_average_pooling_computes_the_same_on_both_backends():
    custom, reference = _pair("lenet5", seed=1, in_channels=1, pool="avg")
    assert sum(isinstance(m, custom_conv.nn.AvgPool2d) for m in custom.modules()) == 2
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in custom.modules())
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    out_c, out_t = custom(x), reference(x)
    torch.testing.assert_close(out_c, out_t, rtol=1e-4, atol=1e-4)
    out_c.square().sum().backward()
    out_t.square().sum().backward()
    for (name_c, p_c), (_, p_t) in zip(custom.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p_c.grad, p_t.grad, rtol=1e-3, atol=1e-4, msg=name_c)
    with pytest.raises(ValueError, match="unknown pool 'min'"):
        models.lenet5(pool="min")
