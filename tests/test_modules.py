"""custom_conv.nn layers and convert(): drop-in for torch's, in real models."""
import copy

import pytest
import torch
import torchvision

import custom_conv
from custom_conv.nn import Conv2d, MaxPool2d
from helpers import assert_matches_torch


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 1), "same"])
def test_conv2d_module_matches_torch_in_every_padding_mode(padding_mode, padding):
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding=padding, dilation=(1, 2),
                  groups=2, padding_mode=padding_mode, dtype=torch.float64)
    torch.manual_seed(1)
    ours = Conv2d(**kwargs)
    torch.manual_seed(1)
    theirs = torch.nn.Conv2d(**kwargs)
    # Same initialisation from the same seed: ours inherits torch's reset_parameters.
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64, requires_grad=True)
    out, ref = ours(x), theirs(x)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.sum(), (x, ours.weight, ours.bias))
    ref_grads = torch.autograd.grad(ref.sum(), (x, theirs.weight, theirs.bias))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_conv2d_module_is_a_torch_conv2d_with_the_same_state_dict_keys_and_repr():
    ours = Conv2d(3, 8, 3, stride=2, bias=False)
    theirs = torch.nn.Conv2d(3, 8, 3, stride=2, bias=False)
    assert isinstance(ours, torch.nn.Conv2d)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    assert repr(ours) == repr(theirs)


def test_state_dict_round_trips_between_ours_and_torchs():
    theirs = torch.nn.Conv2d(3, 5, 3, padding=1)
    ours = Conv2d(3, 5, 3, padding=1)
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.Conv2d(3, 5, 3, padding=1)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), theirs.state_dict().values()))


def test_conv2d_module_respects_device_and_dtype_arguments():
    layer = Conv2d(2, 3, 3, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.weight.device.type == "cpu"
    assert layer(torch.randn(1, 2, 5, 5, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                                    dict(kernel_size=(3, 2), dilation=2, return_indices=True)])
def test_max_pool2d_module_matches_torch(kwargs):
    ours, theirs = MaxPool2d(**kwargs), torch.nn.MaxPool2d(**kwargs)
    assert isinstance(ours, torch.nn.MaxPool2d) and repr(ours) == repr(theirs)
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64)
    out, ref = ours(x), theirs(x)
    if kwargs.get("return_indices"):
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    else:
        assert torch.equal(out, ref)
        assert_matches_torch(ours, theirs, [x])


def _count(model, cls):
    return sum(type(m) is cls for m in model.modules())


MODELS = {
    # residual connections, 7x7/2 stem, 3x3/2 max-pool with padding
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    # depthwise convolutions and dropout
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    # ceil-mode max-pooling, dropout, 1x1 convs as the classifier
    "squeezenet1_1": lambda: torchvision.models.squeezenet1_1(num_classes=10),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_convert_torchvision_model_gives_same_logits_and_gradients(name):
    torch.manual_seed(0)
    original = MODELS[name]().double().train()
    converted = custom_conv.convert(copy.deepcopy(original))
    assert _count(converted, torch.nn.Conv2d) == 0 and _count(converted, torch.nn.MaxPool2d) == 0
    assert _count(converted, Conv2d) == _count(original, torch.nn.Conv2d) > 0
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    logits = []
    for model in (original, converted):
        torch.manual_seed(123)  # the same dropout masks for both
        out = model(x)
        out.pow(2).sum().backward()
        logits.append(out)
    torch.testing.assert_close(logits[1], logits[0])
    for (n, p), (_, q) in zip(original.named_parameters(), converted.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=lambda m: f"{n}: {m}")


def test_convert_shares_parameters_and_keeps_training_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(2)).eval()
    weight = model[0].weight
    converted = custom_conv.convert(model)
    assert type(converted[0]) is Conv2d and type(converted[1]) is MaxPool2d
    assert converted[0].weight is weight
    assert not converted[0].training and not converted[1].training


def test_convert_leaves_subclasses_of_torch_layers_alone():
    class Special(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(Special(3, 4, 3))
    assert type(custom_conv.convert(model)[0]) is Special
