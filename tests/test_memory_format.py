"""Outputs and gradients come back in the memory format torch's would have:
channels_last exactly when an input (or the conv's weight) suggests it, as
torch decides from strides alone, and with torch's strides. The rule lives
in one place (csrc/memory_format.h): the ops follow it whether called
directly or through custom_conv.functional, and so do their Meta kernels,
which torch.compile traces with."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from torch._subclasses.fake_tensor import FakeTensorMode

from custom_conv import functional as CF
from custom_conv.autograd import _suggests_channels_last

ops = torch.ops.custom_conv

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


# The two ways in: custom_conv.functional, and the op itself.
CONV2D = {
    "functional": lambda x, w, groups: CF.conv2d(x, w, groups=groups),
    "raw op": lambda x, w, groups: ops.conv2d_forward(x, w, None, [1, 1], [0, 0], [1, 1], groups),
}
MAX_POOL2D = {
    "functional": lambda x: CF.max_pool2d(x, 2, return_indices=True),
    "raw op": lambda x: ops.max_pool2d_forward(x, [2, 2], [2, 2], [0, 0], [1, 1], False),
}
# The gradient of the output: one in the output's layout, and the expanded
# ones of .sum(), which suggests no layout: torch's gradients follow the
# forward's tensors, not grad_output.
GRADS = {
    "like the output": torch.randn_like,
    "of a sum": lambda out: torch.ones(()).expand(out.shape),
}


@pytest.mark.parametrize("grad_kind", list(GRADS))
@pytest.mark.parametrize("way", list(CONV2D))
@pytest.mark.parametrize("weight_layout", list(WEIGHTS))
@pytest.mark.parametrize("input_layout", list(INPUTS))
def test_conv2d_output_and_gradients_have_torchs_strides(input_layout, weight_layout, way, grad_kind):
    x = INPUTS[input_layout]().requires_grad_()
    make_weight, groups = WEIGHTS[weight_layout]
    channels = x.shape[1]
    groups = channels if groups == "c" else groups
    w = make_weight(channels // groups).requires_grad_()
    ref = F.conv2d(x, w, groups=groups)
    grad = GRADS[grad_kind](ref)
    ref_grads = torch.autograd.grad(ref, [x, w], grad)
    ours = CONV2D[way](x, w, groups)
    our_grads = torch.autograd.grad(ours, [x, w], grad)
    assert strides(ours, *our_grads) == strides(ref, *ref_grads)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grad_kind", list(GRADS))
@pytest.mark.parametrize("way", list(MAX_POOL2D))
@pytest.mark.parametrize("input_layout", list(INPUTS))
def test_max_pool2d_output_indices_and_gradient_have_torchs_strides(input_layout, way, grad_kind):
    x = INPUTS[input_layout]().requires_grad_()
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    grad = GRADS[grad_kind](ref)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    ours, idx = MAX_POOL2D[way](x)
    (our_grad,) = torch.autograd.grad(ours, x, grad)
    assert strides(ours, idx, our_grad) == strides(ref, ref_idx, ref_grad)
    assert torch.equal(idx, ref_idx)


def _every_order_of_the_strides():
    """Views of one buffer with every order of the strides, with size-1
    dimensions and slices: the cases where judging channels_last from
    strides has tie-breaks."""
    base = torch.randn(3 * 4 * 5 * 6)
    for sizes in [(2, 3, 4, 5), (2, 1, 4, 5), (1, 3, 1, 1), (2, 3, 1, 5), (1, 1, 1, 1)]:
        for order in itertools.permutations(range(4)):
            t = base[:torch.Size(sizes).numel()].view([sizes[d] for d in order]).permute(
                [order.index(d) for d in range(4)])
            yield from (t, t[:, ::2]) if sizes[1] > 1 else (t,)


def test_channels_last_gradients_under_vmap_for_batched_gradients():
    """gradcheck's batched gradients run the backward under vmap, where the
    gradient's move to channels_last must be an op vmap takes: the C++
    reverse modes of conv2d and max_pool2d once wrote it as empty + copy_,
    which vmap refuses."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: CF.conv2d(x, w, padding=1), (x, w), check_batched_grad=True)
    assert torch.autograd.gradcheck(lambda x: CF.max_pool2d(x, 2), (x,), check_batched_grad=True)


def test_the_ops_layout_rule_is_torchs_for_every_order_of_the_strides():
    for view in _every_order_of_the_strides():
        ours, idx = ops.max_pool2d_forward(view, [1, 1], [1, 1], [0, 0], [1, 1], False)
        ref, ref_idx = F.max_pool2d(view, 1, return_indices=True)
        assert strides(ours, idx) == strides(ref, ref_idx), (view.shape, view.stride())
        # The view as the input, then as the weight.
        for x, w in ((view, torch.ones(2, view.shape[1], 1, 1)), (torch.ones(1, *view.shape[1:]), view)):
            got = ops.conv2d_forward(x, w, None, [1, 1], [0, 0], [1, 1], 1)
            assert got.stride() == F.conv2d(x, w).stride(), (x.shape, x.stride(), w.shape, w.stride())


def like_and_expanded(out):
    """Output gradients for `out`: one in its layout, and the expanded one of a sum."""
    return [GRADS[kind](out) for kind in GRADS]


@pytest.mark.parametrize("input_layout", list(INPUTS))
def test_the_meta_kernels_give_the_kernels_layout(input_layout):
    """torch.compile traces with fake tensors, through our Meta kernels: they
    must expect what the kernels return, the gradient ops' included."""
    window = [3, 3], [2, 2], [1, 1], [1, 1], True
    pooled = lambda x: ops.max_pool2d_forward(x, *window)  # noqa: E731

    def results(x, w, go):
        geometry = [2, 2], [0, 0], [1, 1], 1
        avg_window = [3, 3], [2, 2], [1, 1], True, False, None
        averaged = ops.avg_pool2d_forward(x, *avg_window)
        adaptive = ops.adaptive_avg_pool2d_forward(x, [4, 2])
        adaptive_max, adaptive_indices = ops.adaptive_max_pool2d_forward(x, [4, 2])
        pools = [averaged, adaptive, adaptive_max, adaptive_indices,
                 *[ops.avg_pool2d_backward(g, x.shape, *avg_window) for g in like_and_expanded(averaged)],
                 *[ops.adaptive_avg_pool2d_backward(g, x.shape) for g in like_and_expanded(adaptive)],
                 *[ops.adaptive_max_pool2d_backward(g, adaptive_indices, x.shape)
                   for g in like_and_expanded(adaptive_max)]]
        return pools + [ops.conv2d_forward(x, w, None, [1, 1], [1, 1], [1, 1], 1),
                ops.conv2d_forward(x, w.contiguous(), None, *geometry),
                ops.conv2d_backward_input(go, w, x.shape, *geometry),
                ops.conv2d_backward_input(go.contiguous(), w.contiguous(), x.shape, *geometry),
                ops.conv2d_backward_weight(go, x, w.shape, *geometry),
                ops.conv2d_backward_weight(go.contiguous(), x, w.shape, *geometry),
                *pooled(x),
                ops.max_pool2d_backward(torch.ones_like(pooled(x)[0]), pooled(x)[1], x.shape, *window),
                ops.max_pool2d_backward(torch.ones(()).expand(pooled(x)[0].shape), pooled(x)[1], x.shape, *window)]

    x = INPUTS[input_layout]()
    w = WEIGHTS["channels_last"][0](x.shape[1])
    go = torch.randn_like(ops.conv2d_forward(x, w, None, [2, 2], [0, 0], [1, 1], 1))
    real = results(x, w, go)
    with FakeTensorMode() as mode:
        fake = results(*[mode.from_tensor(t) for t in (x, w, go)])
    assert [(t.shape, t.stride(), t.dtype) for t in fake] == [(t.shape, t.stride(), t.dtype) for t in real]


@pytest.mark.parametrize("grad_layout", ["like the output", "channels_last"])
@pytest.mark.parametrize("weight_layout", list(WEIGHTS))
@pytest.mark.parametrize("input_layout", list(INPUTS))
def test_the_gradient_ops_answer_in_torchs_layout_where_their_forward_tensor_shows_it(input_layout, weight_layout,
                                                                                    grad_layout):
    """conv2d's gradient ops answer channels-last where the forward's tensor
    they are given (the weight, for the input's gradient; the input, for the
    weight's) suggests it, which makes torch's gradient channels-last: then
    in torch's layout, with no copy left for autograd; else NCHW, whatever
    the output gradient's layout (a training step hands an NCHW network's
    gradient ops a channels-last copy of it on the GPU)."""
    x = INPUTS[input_layout]().requires_grad_()
    make_weight, groups = WEIGHTS[weight_layout]
    groups = x.shape[1] if groups == "c" else groups
    w = make_weight(x.shape[1] // groups).requires_grad_()
    ref = F.conv2d(x, w, groups=groups, padding=1)
    go = torch.randn_like(ref)
    gx, gw = torch.autograd.grad(ref, [x, w], go)
    if grad_layout == "channels_last":
        go = go.contiguous(memory_format=torch.channels_last)
    geometry = [1, 1], [1, 1], [1, 1], groups
    ours = {"input": (ops.conv2d_backward_input(go, w, x.shape, *geometry), gx, w),
            "weight": (ops.conv2d_backward_weight(go, x, w.shape, *geometry), gw, x)}
    for name, (got, torchs, forward_tensor) in ours.items():
        expected = torchs.stride() if _suggests_channels_last(forward_tensor) else torch.empty(got.shape).stride()
        assert got.stride() == expected, name


@pytest.mark.parametrize("grad_kind", list(GRADS))
@pytest.mark.parametrize("input_layout", list(INPUTS))
def test_max_pool2ds_gradient_op_answers_in_the_layout_of_torchs_gradient(input_layout, grad_kind):
    """The layout of the indices it is given, the forward result's, whatever
    the output gradient's: so autograd has no copy to make."""
    x = INPUTS[input_layout]().requires_grad_()
    ref = F.max_pool2d(x, 3, 2, 1)
    grad = GRADS[grad_kind](ref)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    _, indices = ops.max_pool2d_forward(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    assert ops.max_pool2d_backward(grad, indices, x.shape, [3, 3], [2, 2], [1, 1], [1, 1], False).stride() == \
        ref_grad.stride()


AVG_POOLS = {  # torch's functional, ours, and our gradient op called as our functional's backward calls it
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1), lambda x: CF.avg_pool2d(x, 3, 2, 1),
                   lambda go, x: ops.avg_pool2d_backward(go, x.shape, [3, 3], [2, 2], [1, 1], False, True, None)),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (4, 3)), lambda x: CF.adaptive_avg_pool2d(x, (4, 3)),
                            lambda go, x: ops.adaptive_avg_pool2d_backward(go, x.shape)),
}


@pytest.mark.parametrize("grad_kind", list(GRADS))
@pytest.mark.parametrize("pool", list(AVG_POOLS))
@pytest.mark.parametrize("input_layout", list(INPUTS))
def test_avg_pool2ds_gradient_ops_answer_in_the_output_gradients_layout(input_layout, pool, grad_kind):
    """Given no forward tensor, the layout the output gradient suggests
    (csrc/memory_format.h): torch's gradient's for an output gradient in the
    output's layout, so a channels-last network's gradient needs no copy;
    NCHW for the expanded one of a sum, which suggests none: autograd then
    copies it into the forward's layout, torch's."""
    forward, ours, gradient_op = AVG_POOLS[pool]
    x = INPUTS[input_layout]().requires_grad_()
    ref = forward(x)
    grad = GRADS[grad_kind](ref)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    expected = ref_grad.stride() if grad_kind == "like the output" else torch.empty(x.shape).stride()
    assert gradient_op(grad, x).stride() == expected
    (our_grad,) = torch.autograd.grad(ours(x), x, grad)
    assert our_grad.stride() == ref_grad.stride()  # through autograd, torch's layout either way
