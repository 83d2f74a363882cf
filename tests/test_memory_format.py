"""Outputs and gradients come back in the memory format torch's would have:
channels_last exactly when an input (or the conv's weight) suggests it, as
torch decides from strides alone, and with torch's strides."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from custom_conv import functional as CF
from custom_conv.functional import _suggests_channels_last

INPUTS = {
    "NCHW": lambda: torch.randn(4, 8, 10, 10),
    "channels_last": lambda: torch.randn(4, 8, 10, 10).to(memory_format=torch.channels_last),
    "channels_last, every other channel": lambda: torch.randn(4, 16, 10, 10).to(
        memory_format=torch.channels_last)[:, ::2],
    "H and W transposed": lambda: torch.randn(4, 8, 10, 10).transpose(2, 3),
    "one channel, channels_last": lambda: torch.randn(4, 1, 10, 10).to(memory_format=torch.channels_last),
}
WEIGHTS = {  # (weight maker, groups); input channels 8 (or 1 for the one-channel input)
    "NCHW": (lambda c: torch.randn(8, c, 3, 3), 1),
    "channels_last": (lambda c: torch.randn(8, c, 3, 3).to(memory_format=torch.channels_last), 1),
    "depthwise, channels_last": (lambda c: torch.randn(8, 1, 3, 3).to(memory_format=torch.channels_last), "c"),
    "one output channel": (lambda c: torch.randn(1, c, 3, 3), 1),
}


def strides(*tensors):
    return [t.stride() for t in tensors]


@pytest.mark.parametrize("weight_layout", list(WEIGHTS))
@pytest.mark.parametrize("input_layout", list(INPUTS))
def test_conv2d_output_and_gradients_have_torchs_strides(input_layout, weight_layout):
    x = INPUTS[input_layout]().requires_grad_()
    make_weight, groups = WEIGHTS[weight_layout]
    channels = x.shape[1]
    groups = channels if groups == "c" else groups
    w = make_weight(channels // groups).requires_grad_()
    ref = F.conv2d(x, w, groups=groups)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, w], grad)
    ours = CF.conv2d(x, w, groups=groups)
    our_grads = torch.autograd.grad(ours, [x, w], grad)
    assert strides(ours, *our_grads) == strides(ref, *ref_grads)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_layout", list(INPUTS))
def test_max_pool2d_output_indices_and_gradient_have_torchs_strides(input_layout):
    x = INPUTS[input_layout]().requires_grad_()
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    grad = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    ours, idx = CF.max_pool2d(x, 2, return_indices=True)
    (our_grad,) = torch.autograd.grad(ours, x, grad)
    assert strides(ours, idx, our_grad) == strides(ref, ref_idx, ref_grad)
    assert torch.equal(idx, ref_idx)


def test_the_channels_last_rule_is_torchs():
    """Against torch's own (private) suggest_memory_format, over every order
    of the strides, with size-1 dimensions and slices."""
    from torch._prims_common import suggest_memory_format
    base = torch.randn(3 * 4 * 5 * 6)
    for sizes in [(2, 3, 4, 5), (2, 1, 4, 5), (1, 3, 1, 1), (2, 3, 1, 5), (1, 1, 1, 1)]:
        for order in itertools.permutations(range(4)):
            t = base[:torch.Size(sizes).numel()].view([sizes[d] for d in order]).permute(
                [order.index(d) for d in range(4)])
            for view in (t, t[:, ::2] if sizes[1] > 1 else t):
                assert _suggests_channels_last(view) == (suggest_memory_format(view) == torch.channels_last), \
                    (view.shape, view.stride())
