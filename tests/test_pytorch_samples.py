"""PyTorch's own test inputs for these operators, run with ours swapped in.

torch ships the inputs its own operator tests use (OpInfo, in
torch.testing._internal.common_methods_invocations): for every operator,
sample inputs, "reference" inputs (more of them, at the edges) and the bad
calls with the exception each must raise. Here every sample of every
operator we replace runs twice, on torch's kernels and under
custom_conv.enabled(), where a log of the dispatched ops shows that ours ran
and none of torch's convolutions or poolings did. The two must agree as
test_ops.py asks of an operator: values and max-pool indices, every gradient
(float64 to rounding; float32, half and bfloat16 within a rounding bound of
the exact result), gradcheck and gradgradcheck (with forward-mode and batched
gradients) on each float64 sample, noncontiguous copies of each sample, and
every error input's exception type and the message pattern torch's tests
expect. test_pytorch_modules.py does the same for the modules.
"""
import re

import pytest
import torch
# torch's test inputs import expecttest, which requirements.txt installs; a
# GPU machine's own torch may come without it.
pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
from torch.testing._internal.common_methods_invocations import op_db
from torch.utils._pytree import tree_flatten, tree_unflatten

import custom_conv
from helpers import OpLog, assert_only_ours_ran, assert_within_eps_of_exact

# The operators of torch.nn.functional that custom_conv.enabled() takes over
# (the 3-D ones, fractional max pooling and max_unpool2d stay torch's).
NAMES = ["nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.conv_transpose1d",
         "nn.functional.conv_transpose2d", "nn.functional.max_pool2d", "nn.functional.avg_pool2d",
         "nn.functional.adaptive_avg_pool2d", "nn.functional.adaptive_max_pool2d"]
OPS = {op.name.removeprefix("nn.functional."): op for op in op_db if op.name in NAMES and not op.variant_test_name}
assert len(OPS) == len(NAMES), "torch's op database no longer has one of these operators"


def _as_function(op, sample):
    """(fn, tensors): fn(*tensors) calls `op` on the sample with `tensors`
    in place of its tensors (input, weight, bias: wherever they are)."""
    leaves, spec = tree_flatten((sample.input, sample.args, sample.kwargs))
    where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    def fn(*tensors):
        filled = list(leaves)
        for i, t in zip(where, tensors):
            filled[i] = t
        input, args, kwargs = tree_unflatten(filled, spec)
        return op.op(input, *args, **kwargs)
    return fn, [leaves[i].detach() for i in where]


def _ours(fn):
    def run(*tensors):
        with custom_conv.enabled():
            return fn(*tensors)
    return run


def _first_output(fn):
    """fn with only its first output (the pooled values, not the indices)."""
    def first(*tensors):
        out = fn(*tensors)
        return out[0] if isinstance(out, tuple) else out
    return first


def _run_and_backward(fn, tensors, seed=1):
    """fn's outputs and the gradients of every tensor input, for an output
    gradient drawn from `seed`; the ops dispatched meanwhile."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    with OpLog() as log:
        outputs = fn(*leaves)
        first = outputs[0] if isinstance(outputs, tuple) else outputs
        grad_output = torch.randn(first.shape, generator=torch.Generator().manual_seed(seed),
                                  dtype=torch.float64).to(first.dtype)
        grads = torch.autograd.grad(first, leaves, grad_output, allow_unused=True)
    return outputs, grads, log.names


def _samples(name, dtype):
    op = OPS[name]
    return list(op.reference_inputs("cpu", dtype, requires_grad=True))


def _checked_against_torch(name, sample):
    """Our outputs and gradients for `sample` equal torch's (to rounding in
    float64: the same products summed in another order), and only our ops ran."""
    fn, tensors = _as_function(OPS[name], sample)
    out, grads, names = _run_and_backward(_ours(fn), tensors)
    ref, ref_grads, _ = _run_and_backward(fn, tensors)
    assert_only_ours_ran(names)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)  # indices exactly: they are integers
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    return fn, tensors


@pytest.mark.parametrize("name", list(OPS))
def test_reference_inputs_match_torch_with_gradcheck_and_gradgradcheck(name):
    samples = _samples(name, torch.float64)
    assert samples
    # max_pool2d's database is every combination of its arguments (1440
    # samples): each is compared, and a spread of every 8th is gradchecked.
    every = 8 if len(samples) > 200 else 1
    for i, sample in enumerate(samples):
        fn, tensors = _checked_against_torch(name, sample)
        if i % every:
            continue
        tensors = [t.clone().requires_grad_() for t in tensors]
        ours = _first_output(_ours(fn))
        assert torch.autograd.gradcheck(ours, tensors, check_forward_ad=True, check_batched_grad=True)
        assert torch.autograd.gradgradcheck(ours, tensors, check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize("name", list(OPS))
def test_noncontiguous_samples_match_torch(name):
    for sample in _samples(name, torch.float64):
        _checked_against_torch(name, sample.noncontiguous())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(OPS))
def test_lower_precision_samples_are_within_rounding_of_exact(name, dtype):
    """Each value and gradient within 2 eps of the exact result (float64 on
    the same rounded numbers) relative to the terms' magnitudes: one rounding
    of a float sum to the dtype, one more where a route rounds an
    intermediate (as the transposed convolution's bias addition does)."""
    op = OPS[name]
    if dtype not in op.supported_dtypes("cpu"):
        pytest.skip(f"torch's {name} has no {dtype} on the CPU")
    max_pool = "max_pool" in name
    for sample in _samples(name, dtype):
        fn, tensors = _as_function(op, sample)
        assert_within_eps_of_exact(_first_output(_ours(fn)), _first_output(fn), tensors,
                                   # max pooling picks among its inputs: the scale is the chosen value's
                                   scale_inputs=(lambda t: t) if max_pool else torch.abs)
        if max_pool:  # the same maxima, so the same indices, ties going to the first as torch's do
            torch.testing.assert_close(_ours(fn)(*tensors), fn(*tensors), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in OPS if OPS[n].error_inputs_func is not None])
def test_error_inputs_raise_torchs_exception(name):
    op = OPS[name]
    errors = list(op.error_inputs("cpu"))
    assert errors
    for error in errors:
        sample = error.sample_input
        with pytest.raises(error.error_type) as raised:
            with custom_conv.enabled():
                op.op(sample.input, *sample.args, **sample.kwargs)
        assert re.search(error.error_regex, str(raised.value)), (sample, error.error_regex, str(raised.value))
