"""torch.func transforms and forward-mode AD on our ops: every derivative,
in either mode and to any order, matches torch's (float64, gradcheck's
finite differences and torch's own layers), runs on our kernels, and vmap
batches without a per-call warning."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import custom_conv
from custom_conv import functional as CF

CONV_CASES = {  # name: (input shape, weight shape, bias?, keyword arguments)
    "plain": ((2, 2, 5, 5), (3, 2, 3, 3), True, {}),
    "stride, padding, dilation": ((1, 2, 6, 7), (3, 2, 3, 2), True, dict(stride=(2, 1), padding=(1, 2),
                                                                           dilation=(1, 2))),
    "groups, no bias": ((1, 4, 5, 5), (6, 2, 3, 3), False, dict(groups=2, padding=1)),
    "same padding, even kernel": ((1, 2, 4, 5), (2, 2, 2, 4), True, dict(padding="same")),
    "unbatched": ((2, 4, 4), (3, 2, 3, 3), True, {}),
}
POOL_CASES = {  # name: (input shape, keyword arguments)
    "plain": ((2, 3, 6, 6), dict(kernel_size=2)),
    "overlapping, padded, ceil mode": ((1, 2, 7, 8), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "dilated": ((1, 2, 8, 8), dict(kernel_size=2, dilation=2, stride=1)),
}


def conv_inputs(case, requires_grad=True):
    x_shape, w_shape, bias, kwargs = CONV_CASES[case]
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(x_shape, generator=gen, dtype=torch.float64),
               torch.randn(w_shape, generator=gen, dtype=torch.float64)]
    if bias:
        tensors.append(torch.randn(w_shape[0], generator=gen, dtype=torch.float64))
    return [t.requires_grad_(requires_grad) for t in tensors], kwargs


def pool_input(case):
    shape, kwargs = POOL_CASES[case]
    # Distinct values, so that no window has a tie that finite differences would straddle.
    x = torch.randperm(torch.Size(shape).numel(), generator=torch.Generator().manual_seed(0)).double()
    return x.view(shape).div(7).requires_grad_(), kwargs


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_gradcheck_with_forward_ad_and_batched_gradients(case):
    inputs, kwargs = conv_inputs(case)
    conv = lambda *t: CF.conv2d(*t, **kwargs)
    assert torch.autograd.gradcheck(conv, inputs, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(conv, inputs, check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool2d_gradcheck_with_forward_ad_and_batched_gradients(case):
    x, kwargs = pool_input(case)
    pool = lambda t: CF.max_pool2d(t, **kwargs)
    assert torch.autograd.gradcheck(pool, (x,), check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(pool, (x,), check_fwd_over_rev=True, check_batched_grad=True)


# Each transform applied to a scalar function of all the inputs, ours and
# torch's; jacfwd(jacrev(...)) is a Hessian, jacfwd(jacfwd(jacrev(...))) a
# third derivative, which the cube in the loss keeps from vanishing.
TRANSFORMS = {
    "grad": lambda f, n: torch.func.grad(f, argnums=tuple(range(n))),
    "vjp": lambda f, n: lambda *a: torch.func.vjp(lambda *b: f(*b).reshape(1), *a)[1](torch.ones(1, dtype=a[0].dtype)),
    "jacrev": lambda f, n: torch.func.jacrev(f, argnums=tuple(range(n))),
    "jacfwd": lambda f, n: torch.func.jacfwd(f, argnums=tuple(range(n))),
    "hessian": lambda f, n: torch.func.jacfwd(torch.func.jacrev(f, argnums=1), argnums=1),
    "hessian, reverse over reverse": lambda f, n: torch.func.jacrev(torch.func.jacrev(f, argnums=0), argnums=0),
    "third derivative": lambda f, n: torch.func.jacfwd(torch.func.jacfwd(torch.func.jacrev(f, argnums=1), argnums=1),
                                                       argnums=1),
}


def conv_loss(conv, pool, kwargs):
    def loss(*tensors):
        y = conv(*tensors, **kwargs)
        return pool(y.pow(3) if y.dim() == 4 else y.pow(3).unsqueeze(0), 2, ceil_mode=True).sum()
    return loss


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("case", ["plain", "groups, no bias", "stride, padding, dilation"])
def test_torch_func_transforms_match_torch_and_run_on_our_ops(case, transform):
    inputs, kwargs = conv_inputs(case, requires_grad=False)
    if transform == "third derivative":  # one sample, and a weight of few elements: the result has its size cubed
        inputs[0] = inputs[0][:1]
        if kwargs.get("groups", 1) == 1:
            inputs[1] = inputs[1][:2, :, :2, :2].contiguous()
            inputs[2:] = [t[:2] for t in inputs[2:]]
    apply = TRANSFORMS[transform]
    expected = apply(conv_loss(F.conv2d, F.max_pool2d, kwargs), len(inputs))(*inputs)
    with torch.profiler.profile() as prof:
        got = apply(conv_loss(CF.conv2d, CF.max_pool2d, kwargs), len(inputs))(*inputs)
    names = {e.name for e in prof.events()}
    assert "custom_conv::conv2d_forward" in names and "custom_conv::max_pool2d_forward" in names
    assert not any(n.startswith("aten::") and ("conv" in n or "max_pool" in n) for n in names)
    torch.testing.assert_close(got, expected)


VMAPS = {  # name: (in_dims of (input, weight, bias), how the batch is stacked)
    "over the input": (0, None, None),
    "over the weight": (None, 0, None),
    "over the bias": (None, None, 0),
    "over everything, batch dims elsewhere": (1, 4, 0),
}


@pytest.mark.parametrize("in_dims", list(VMAPS))
def test_vmap_of_conv2d_and_its_gradients_matches_a_loop_without_warnings(in_dims):
    dims = VMAPS[in_dims]
    (x, w, b), kwargs = conv_inputs("groups, no bias"[:0] + "stride, padding, dilation", requires_grad=False)
    batch = 3
    stacked = [t if d is None else torch.stack([t * (k + 1) for k in range(batch)], d) for t, d in zip((x, w, b), dims)]
    one = [lambda k, t=t, d=d: t if d is None else t.select(d, k) for t, d in zip(stacked, dims)]
    loss = lambda x, w, b: CF.conv2d(x, w, b, **kwargs).sin().sum()
    torch_loss = lambda x, w, b: F.conv2d(x, w, b, **kwargs).sin().sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # vmap falling back to a loop over our ops would warn here
        warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations inside torch.func
        values = torch.func.vmap(lambda *t: CF.conv2d(*t, **kwargs), in_dims=dims)(*stacked)
        grads = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)), in_dims=dims)(*stacked)
    for k in range(batch):
        args = [o(k) for o in one]
        torch.testing.assert_close(values[k], F.conv2d(*args, **kwargs))
        for g, r in zip(grads, torch.func.grad(torch_loss, argnums=(0, 1, 2))(*args)):
            torch.testing.assert_close(g[k], r)


def test_vmap_of_max_pool2d_with_indices_and_its_gradient_matches_torch():
    x, _ = pool_input("overlapping, padded, ceil mode")
    x = x.detach()
    batched = torch.stack([x, -x, x.flip(-1)], 2)
    pool = lambda t: CF.max_pool2d(t, 3, 2, 1, ceil_mode=True, return_indices=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", FutureWarning)
        out, idx = torch.func.vmap(pool, in_dims=2)(batched)
        grad = torch.func.vmap(torch.func.grad(lambda t: pool(t)[0].pow(2).sum()), in_dims=2)(batched)
    for k in range(3):
        ref_out, ref_idx = F.max_pool2d(batched[:, :, k], 3, 2, 1, ceil_mode=True, return_indices=True)
        assert torch.equal(out[k], ref_out) and torch.equal(idx[k], ref_idx)
        torch.testing.assert_close(grad[k], torch.func.grad(
            lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True).pow(2).sum())(batched[:, :, k]))


def test_forward_mode_ad_tangents_match_torch_through_a_model():
    torch.manual_seed(0)
    torch_model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
                                      torch.nn.Conv2d(4, 3, 3, stride=2)).double()
    ours = custom_conv.convert(torch.nn.Sequential(*torch_model))
    x, t = torch.randn(2, 2, 10, 10, dtype=torch.float64), torch.randn(2, 2, 10, 10, dtype=torch.float64)
    tangents = []
    for model in (torch_model, ours):
        with fwAD.dual_level():
            tangents.append(fwAD.unpack_dual(model(fwAD.make_dual(x, t))).tangent)
    torch.testing.assert_close(tangents[1], tangents[0])


def test_the_raw_ops_inside_a_torch_func_transform_say_where_to_call_them():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    raw = lambda v: torch.ops.custom_conv.conv2d_forward(x, v, None, [1, 1], [0, 0], [1, 1], 1).sum()
    with pytest.raises(RuntimeError, match="custom_conv.functional"):
        torch.func.grad(raw)(w)
    torch.testing.assert_close(torch.func.grad(lambda v: custom_conv.autograd.conv2d_forward(
        x, v, None, [1, 1], [0, 0], [1, 1], 1).sum())(w), torch.func.grad(lambda v: F.conv2d(x, v).sum())(w))
