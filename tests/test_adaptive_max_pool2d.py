"""adaptive_max_pool2d: max-pooling over the adaptive windows of
tests/cases.py's ADAPTIVE_AVG_POOL2D_CASES. Values and indices equal torch's
bit for bit (a maximum involves no arithmetic), gradients torch's, to any
order; then ties, NaN, layouts, errors, the module and enabled()."""
import pytest
import torch
import torch.nn.functional as F

import custom_conv
from cases import ADAPTIVE_AVG_POOL2D_CASES as CASES
from custom_conv import functional as CF
from helpers import DEVICES, dtypes, forward_and_grads, pool_input


def assert_values_and_indices_match_torch(x, output_size):
    out, idx = CF.adaptive_max_pool2d(x, output_size, return_indices=True)
    ref, ref_idx = F.adaptive_max_pool2d(x, output_size, return_indices=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, ref_idx)
    return out, idx


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", dtypes("float64", "float32", "float16", "bfloat16"))
@pytest.mark.parametrize("device", DEVICES)
def test_values_indices_and_gradient_match_torch(device, dtype, case):
    output_size = CASES[case].kwargs["output_size"]
    x = pool_input(CASES[case], dtype, device)
    assert_values_and_indices_match_torch(x, output_size)
    # Gradients added in float and rounded once: the reference adds them in float64.
    _, (grad,), grad_output = forward_and_grads(lambda x: CF.adaptive_max_pool2d(x, output_size), [x])
    _, (ref,), _ = forward_and_grads(lambda x: F.adaptive_max_pool2d(x, output_size), [x.double()],
                                     grad_output.double())
    torch.testing.assert_close(grad, ref.to(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_first_element_and_nan_wins_as_in_torch(device):
    x = torch.zeros(1, 2, 7, 7, dtype=torch.float64, device=device)
    x[0, 1, 2, 3] = float("nan")
    x[0, 1, 5, 1] = float("nan")
    assert_values_and_indices_match_torch(x, 3)
    assert_values_and_indices_match_torch(x, (5, 2))


@pytest.mark.parametrize("case", ["7 -> 3", "3 -> 5, more outputs than inputs", "None keeps the input's width"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device, case):
    output_size = CASES[case].kwargs["output_size"]
    # Distinct, well-separated values: the maximum must not switch under the finite-difference step.
    x = pool_input(CASES[case], torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: CF.adaptive_max_pool2d(x, output_size), (x,))
    assert torch.autograd.gradgradcheck(lambda x: CF.adaptive_max_pool2d(x, output_size), (x,))


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_in_gives_channels_last_values_indices_and_gradient(channels):
    x = torch.randn(2, channels, 7, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    results = []
    for fn in (CF.adaptive_max_pool2d, F.adaptive_max_pool2d):
        leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        out, idx = fn(leaf, (3, 4), return_indices=True)
        out.backward(torch.ones_like(out))
        results.append((out, idx, leaf.grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert ours.stride() == theirs.stride()


def test_torch_func_and_compile_match_torch():
    x = pool_input(CASES["5x5 -> (2, 4)"])
    ours, theirs = (lambda x: CF.adaptive_max_pool2d(x, (2, 4))), (lambda x: F.adaptive_max_pool2d(x, (2, 4)))
    batch = torch.stack([x, x.flip(-1)])
    torch.testing.assert_close(torch.func.vmap(ours)(batch), torch.func.vmap(theirs)(batch))
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(transform(ours)(x[:1]), transform(theirs)(x[:1]))
    torch.testing.assert_close(torch.compile(ours, fullgraph=True, backend="eager")(x), theirs(x))


x4 = torch.randn(1, 2, 5, 5)

ERRORS = {
    "2-D input": (lambda f: f.adaptive_max_pool2d(torch.randn(5, 5), 2),
                  r"adaptive_max_pool2d\(\): Expected 3D or 4D tensor"),
    "zero-sized plane": (lambda f: f.adaptive_max_pool2d(torch.randn(1, 2, 0, 5), 2),
                         r"Expected input to have non-zero size for non-batch dimensions"),
    "three sizes": (lambda f: f.adaptive_max_pool2d(x4, (1, 2, 3)), r"output_size.* must be 2"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_a_bad_input_is_rejected_as_torch_does(case):
    call, pattern = ERRORS[case]
    for f in (F, CF):
        with pytest.raises(RuntimeError, match=pattern):
            call(f)
    with pytest.raises(TypeError, match=r"failed to unpack the object at pos 2"):
        CF.adaptive_max_pool2d(x4, (2, 2.0))


@pytest.mark.parametrize("return_indices", [False, True])
def test_module_matches_torchs_and_convert_and_enabled_route_it(return_indices):
    ours = custom_conv.nn.AdaptiveMaxPool2d((3, None), return_indices=return_indices)
    theirs = torch.nn.AdaptiveMaxPool2d((3, None), return_indices=return_indices)
    assert repr(ours) == repr(theirs)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    for a, b in zip(*(torch.utils._pytree.tree_leaves(m(x)) for m in (ours, theirs))):
        assert torch.equal(a, b)
    assert type(custom_conv.convert(torch.nn.Sequential(theirs))[0]) is custom_conv.nn.AdaptiveMaxPool2d
    calls = [lambda x: theirs(x), lambda x: F.adaptive_max_pool2d(x, 3, return_indices),
             lambda x: torch._C._nn.adaptive_max_pool2d(x, [3, 2]),
             lambda x: torch.ops.aten.adaptive_max_pool2d(x, [3, 2])]
    for call in calls:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            with custom_conv.enabled():
                out = call(x)
        names = {event.name for event in prof.events()}
        for a, b in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(call(x))):
            assert torch.equal(a, b)
        assert "custom_conv::adaptive_max_pool2d_forward" in names, names
        assert not [n for n in names if n.startswith("aten::") and "pool" in n], names
