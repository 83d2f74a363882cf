"""Gradients of gradients with part of the inputs frozen, on every route.

gradgradcheck differentiates with every input requiring grad. Real uses
freeze some: a Hessian-vector product in the input of a trained network
(weights frozen), a frozen backbone, no bias. Each backward op decides from
"which inputs need a gradient" what to compute, so a flag read for the wrong
input returns nothing (zeros) exactly when that input is frozen, and only
then. So: every subset of {input, weight, bias} requiring grad, with the
output gradient requiring grad or not, the second derivatives against
torch's, in float64, on each CPU route forced in turn."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import custom_conv
from custom_conv import functional as CF

ROUTES = {
    # route: (input, weight, F.conv2d's keyword arguments, dtype); each layer
    # runs every pass on its route (asserted below).
    "im2col": ((2, 3, 6, 7), (4, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0)), torch.float64),
    "direct": ((2, 3, 7, 6), (5, 3, 3, 3), dict(padding=1), torch.float64),
    "depthwise": ((2, 3, 7, 7), (6, 1, 3, 3), dict(padding=1, groups=3), torch.float64),
    "winograd": ((2, 3, 6, 7), (4, 3, 3, 3), dict(padding=1), torch.float32),
}
NAMES = ("input", "weight", "bias")
SUBSETS = [s for r in range(1, 4) for s in itertools.combinations(NAMES, r)]


def second_derivatives(conv, tensors, kwargs, needs, go_needs):
    """Leaves requiring grad as `needs` says, the first derivatives with a
    graph, then the derivative of their projection on fixed directions with
    respect to every leaf requiring grad and (if go_needs) the output
    gradient. Unused leaves give zeros, as they mean."""
    x, w, b, go, *directions = tensors
    leaves = [t.clone().requires_grad_(name in needs) for name, t in zip(NAMES, (x, w, b))]
    go = go.clone().requires_grad_(go_needs)
    out = conv(*leaves, **kwargs)
    wrt = [t for t in leaves if t.requires_grad]
    first = torch.autograd.grad(out, wrt, go, create_graph=True)
    projection = sum((g * d[:g.numel()].view_as(g)).sum() for g, d in zip(first, directions))
    targets = wrt + ([go] if go_needs else [])
    if not projection.requires_grad:  # nothing of the first derivatives depends on a target
        return [torch.zeros_like(t) for t in targets]
    second = torch.autograd.grad(projection, targets, allow_unused=True)
    return [torch.zeros_like(t) if s is None else s for s, t in zip(second, targets)]


def tensors(route):
    input_shape, weight_shape, kwargs, dtype = ROUTES[route]
    g = torch.Generator().manual_seed(0)
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    x, w, b = draw(*input_shape), draw(*weight_shape) / math.sqrt(math.prod(weight_shape[1:])), draw(weight_shape[0])
    go = draw(*F.conv2d(x, w, b, **kwargs).shape)
    size = max(x.numel(), w.numel())
    return [t.to(dtype) for t in (x, w, b, go, draw(size), draw(size), draw(size))]


@pytest.mark.parametrize("go_needs", [False, True], ids=["output gradient constant", "output gradient variable"])
@pytest.mark.parametrize("needs", SUBSETS, ids=["+".join(s) for s in SUBSETS])
@pytest.mark.parametrize("route", list(ROUTES))
def test_second_derivatives_with_frozen_inputs_match_torch(route, needs, go_needs):
    _, _, kwargs, dtype = ROUTES[route]
    ts = tensors(route)
    with custom_conv.forced_algorithm(route):
        plan = custom_conv.explain_conv2d(ts[0], ts[1], **kwargs)
        assert {c.algorithm for c in plan.values()} == {route}, plan
        ours = second_derivatives(CF.conv2d, ts, kwargs, needs, go_needs)
    theirs = second_derivatives(F.conv2d, [t.double() for t in ts], kwargs, needs, go_needs)
    # float32 (Winograd): sums of a few dozen unit-sized terms.
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.double(), b, **tol)


POOL = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)


@pytest.mark.parametrize("go_needs", [False, True], ids=["output gradient constant", "output gradient variable"])
def test_max_pool_second_derivatives_match_torch(go_needs):
    """The input is max-pool's only differentiable argument; its gradient
    depends on the output gradient alone (through the saved indices)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randperm(2 * 3 * 9 * 8, generator=g).double().view(2, 3, 9, 8) / 8  # distinct: no ties
    go = torch.randn(F.max_pool2d(x, **POOL).shape, generator=g, dtype=torch.float64)
    direction = torch.randn(x.shape, generator=g, dtype=torch.float64)
    results = []
    for pool in (CF.max_pool2d, F.max_pool2d):
        xl, gol = x.clone().requires_grad_(), go.clone().requires_grad_(go_needs)
        (gx,) = torch.autograd.grad(pool(xl, **POOL), xl, gol, create_graph=True)
        targets = [xl, gol] if go_needs else [xl]
        projection = (gx * direction).sum()
        second = torch.autograd.grad(projection, targets, allow_unused=True) if projection.requires_grad else \
            [None] * len(targets)
        results.append([torch.zeros_like(t) if s is None else s for s, t in zip(second, targets)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hessian_vector_product_in_the_input_of_a_frozen_network():
    """The common case: weights frozen, second derivatives in x through
    conv, max-pool and conv (each conv's backward differentiated in its
    output gradient)."""
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(3, 4, 3, 3, generator=g,
                                                                                   dtype=torch.float64)
    x, v = (torch.randn(2, 2, 10, 10, generator=g, dtype=torch.float64) for _ in range(2))

    def net(conv, pool):
        def f(x):
            return (conv(pool(torch.tanh(conv(x, w1, padding=1)), 2), w2) ** 2).sum()
        return f

    ours = torch.autograd.functional.hvp(net(CF.conv2d, CF.max_pool2d), x, v)[1]
    theirs = torch.autograd.functional.hvp(net(F.conv2d, F.max_pool2d), x, v)[1]
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
