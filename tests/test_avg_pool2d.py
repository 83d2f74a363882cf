"""avg_pool2d and adaptive_avg_pool2d: values and gradients equal
torch.nn.functional's for every case of tests/cases.py on every device;
then gradients of gradients, half and bfloat16, layouts, errors and the
modules, which the table cannot say."""
import re

import pytest
import torch
import torch.nn.functional as F

import custom_conv
from cases import ADAPTIVE_AVG_POOL2D_CASES, AVG_POOL2D_CASES
from custom_conv import functional as CF
from helpers import DEVICES, assert_matches_torch, assert_within_eps_of_exact, dtypes, pool_input, tolerance

CASES = {**{f"avg: {k}": ("avg_pool2d", v) for k, v in AVG_POOL2D_CASES.items()},
         **{f"adaptive: {k}": ("adaptive_avg_pool2d", v) for k, v in ADAPTIVE_AVG_POOL2D_CASES.items()}}


def functions(case):
    """Ours and torch's function for a case of CASES, arguments bound."""
    name, c = CASES[case]
    return (lambda x: getattr(CF, name)(x, **c.kwargs)), (lambda x: getattr(F, name)(x, **c.kwargs))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
@pytest.mark.parametrize("device", DEVICES)
def test_values_and_gradient_match_torch(device, dtype, case):
    ours, theirs = functions(case)
    assert_matches_torch(ours, theirs, [pool_input(CASES[case][1], dtype, device)], **tolerance(dtype, device))


@pytest.mark.parametrize("positive", [False, True], ids=["signed", "positive"])
@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16"))
@pytest.mark.parametrize("case", [k for k, (_, c) in CASES.items() if c.input[0] > 0])
def test_half_and_bfloat16_are_within_eps_of_exact(case, dtype, positive):
    """Sums and gradients added in float and rounded once: within eps of the
    float64 result on the same rounded numbers (helpers)."""
    ours, theirs = functions(case)
    assert_within_eps_of_exact(ours, theirs, [pool_input(CASES[case][1], dtype)], eps_factor=1, positive=positive)


@pytest.mark.parametrize("case", ["avg: ceil mode, last window past the padding, padding counted",
                                  "avg: asymmetric kernel stride padding, padding not counted",
                                  "avg: divisor_override with ceil mode", "adaptive: 7 -> 3",
                                  "adaptive: 3 -> 5, more outputs than inputs"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device, case):
    ours, _ = functions(case)
    x = pool_input(CASES[case][1], torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(ours, (x,))
    assert torch.autograd.gradgradcheck(ours, (x,))


@pytest.mark.parametrize("case", ["avg: 3x3 stride 2 padding 1, padding counted", "avg: divisor_override",
                                  "adaptive: 5x5 -> (2, 4)", "adaptive: global, 1x1"])
@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_in_gives_channels_last_out_and_gradient(case, channels):
    """torch's layout rule (csrc/memory_format.h), forward and gradient, with
    one channel too, where both layouts are contiguous."""
    ours, theirs = functions(case)
    n, _, h, w = CASES[case][1].input
    x = torch.randn(n, channels, h, w, dtype=torch.float64).to(memory_format=torch.channels_last)
    results = []
    for fn in (ours, theirs):
        leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        out = fn(leaf)
        out.backward(torch.ones_like(out))
        results.append((out, leaf.grad))
    (out, grad), (ref, ref_grad) = results
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)
    assert out.stride() == ref.stride() and grad.stride() == ref_grad.stride()


def test_backward_is_deterministic_and_the_ops_take_meta_tensors():
    c = AVG_POOL2D_CASES["overlapping windows"]
    x = pool_input(c).requires_grad_()
    grads = [torch.autograd.grad(CF.avg_pool2d(x, **c.kwargs).sum(), x)[0] for _ in range(2)]
    assert torch.equal(*grads)
    meta = torch.empty(2, 3, 9, 9, device="meta").to(memory_format=torch.channels_last)
    out = torch.ops.custom_conv.avg_pool2d_forward(meta, [3, 3], [2, 2], [1, 1], True, False, None)
    ref = F.avg_pool2d(torch.empty(2, 3, 9, 9).to(memory_format=torch.channels_last), 3, 2, 1, True)
    assert out.shape == ref.shape and out.stride() == ref.stride()
    out = torch.ops.custom_conv.adaptive_avg_pool2d_forward(meta, [4, 2])
    assert out.shape == (2, 3, 4, 2)


@pytest.mark.parametrize("case", ["avg: ceil mode, last window past the padding, padding not counted",
                                  "adaptive: 5x5 -> (2, 4)"])
def test_torch_func_and_compile_match_torch(case):
    """vmap, jacrev, jacfwd (through the ops' vmap rules and jvps) and
    torch.compile (through the Meta kernels) give torch's results."""
    ours, theirs = functions(case)
    x = pool_input(CASES[case][1])
    batch = torch.stack([x, x.flip(-1)])
    torch.testing.assert_close(torch.func.vmap(ours)(batch), torch.func.vmap(theirs)(batch))
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(transform(ours)(x[:1]), transform(theirs)(x[:1]))
    torch.testing.assert_close(torch.compile(ours, fullgraph=True, backend="eager")(x), theirs(x))


# ---------------------------------------------------------------- errors

x4 = torch.randn(1, 2, 5, 5)


def leading_words(message):
    """A message up to where torch starts listing what it got."""
    return re.split(r" - got|\n|,? but got", message)[0]


def error_of(call):
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


# Argument types and lengths, which torch's parser checks: the same type and
# words. Given by position: torch names the position then (by keyword it does
# not, which custom_conv.functional cannot tell apart; arguments.py).
ARGUMENT_ERRORS = {
    "float kernel": lambda f: f.avg_pool2d(x4, 2.0),
    "float in a later place": lambda f: f.avg_pool2d(x4, (2, 2.0)),
    "float first in a tuple": lambda f: f.avg_pool2d(x4, (2.0, 2)),
    "None padding": lambda f: f.avg_pool2d(x4, 2, 2, None),
    "three kernel sizes": lambda f: f.avg_pool2d(x4, (1, 2, 3)),
    "three strides": lambda f: f.avg_pool2d(x4, 2, (1, 2, 3)),
    "empty padding": lambda f: f.avg_pool2d(x4, 2, 2, []),
    "int ceil_mode": lambda f: f.avg_pool2d(x4, 2, 2, 0, 1),
    "None count_include_pad": lambda f: f.avg_pool2d(x4, 2, 2, 0, False, None),
    "bool divisor": lambda f: f.avg_pool2d(x4, 2, 2, 0, False, True, True),
    "float divisor": lambda f: f.avg_pool2d(x4, 2, 2, 0, False, True, 2.5),
    "list input": lambda f: f.avg_pool2d([1.0], 2),
    "adaptive, float in a later place": lambda f: f.adaptive_avg_pool2d(x4, (2, 2.0)),
    "adaptive, three sizes": lambda f: f.adaptive_avg_pool2d(x4, (1, 2, 3)),
    "adaptive, one size in a tuple": lambda f: f.adaptive_avg_pool2d(x4, (1,)),
    "adaptive, a string": lambda f: f.adaptive_avg_pool2d(x4, "a"),
}


@pytest.mark.parametrize("case", list(ARGUMENT_ERRORS))
def test_a_bad_argument_is_rejected_as_torch_does(case):
    expected_type, expected = error_of(lambda: ARGUMENT_ERRORS[case](F))
    got_type, got = error_of(lambda: ARGUMENT_ERRORS[case](CF))
    assert got_type is expected_type, (got, expected)
    assert leading_words(got) == leading_words(expected), (got, expected)


# Values, which the kernels check (csrc/geometry.cpp): torch's type and words, prefixed by the op.
VALUE_ERRORS = {
    "zero kernel": (lambda f: f.avg_pool2d(x4, 0), r"stride should not be zero"),
    "zero stride": (lambda f: f.avg_pool2d(x4, 3, stride=0), r"stride should not be zero"),
    "zero kernel with a stride": (lambda f: f.avg_pool2d(x4, 0, stride=1), r"kernel size should be greater than zero"),
    "negative padding": (lambda f: f.avg_pool2d(x4, 3, padding=-1), r"pad must be non-negative"),
    "padding over half the kernel": (lambda f: f.avg_pool2d(x4, 3, padding=2),
                                     r"pad should be at most half of effective kernel size"),
    "zero divisor": (lambda f: f.avg_pool2d(x4, 3, divisor_override=0), r"divisor must be not zero"),
    "empty output": (lambda f: f.avg_pool2d(x4, 7), r"Output size is too small"),
    "5-D input": (lambda f: f.avg_pool2d(torch.randn(1, 2, 3, 5, 5), 2),
                  r"3D or 4D \(batch mode\) tensor"),
    "adaptive, negative size": (lambda f: f.adaptive_avg_pool2d(x4, -1),
                                r"elements of output_size must be greater than or equal to 0"),
    "adaptive, 2-D input": (lambda f: f.adaptive_avg_pool2d(torch.randn(5, 5), 2),
                            r"adaptive_avg_pool2d\(\): Expected 3D or 4D tensor"),
    "adaptive, zero-sized plane": (lambda f: f.adaptive_avg_pool2d(torch.randn(1, 2, 0, 5), 2),
                                   r"Expected input to have non-zero size for non-batch dimensions"),
}


@pytest.mark.parametrize("case", list(VALUE_ERRORS))
def test_a_bad_value_is_rejected_with_torchs_words(case):
    call, pattern = VALUE_ERRORS[case]
    with pytest.raises(RuntimeError, match=pattern):
        call(F)
    with pytest.raises(RuntimeError, match=pattern):
        call(CF)


def test_integer_tensors_are_rejected_with_a_clear_message():
    with pytest.raises(RuntimeError, match=r"expected input to be a floating-point tensor, got Long"):
        CF.avg_pool2d(x4.long(), 2)
    with pytest.raises(RuntimeError, match=r"expected input to be a floating-point tensor, got Long"):
        CF.adaptive_avg_pool2d(x4.long(), 2)


# ---------------------------------------------------------------- modules

MODULES = {
    "AvgPool2d": lambda nn: nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    "AvgPool2d with divisor": lambda nn: nn.AvgPool2d((3, 2), divisor_override=4),
    "AdaptiveAvgPool2d": lambda nn: nn.AdaptiveAvgPool2d((3, None)),
    "AdaptiveAvgPool2d, global": lambda nn: nn.AdaptiveAvgPool2d(1),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_modules_match_torchs_and_convert_and_enabled_route_them(name):
    ours, theirs = MODULES[name](custom_conv.nn), MODULES[name](torch.nn)
    assert isinstance(ours, type(theirs)) and repr(ours) == repr(theirs)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    assert_matches_torch(ours, theirs, [x], **tolerance(torch.float64, "cpu"))
    converted = custom_conv.convert(torch.nn.Sequential(MODULES[name](torch.nn)))
    assert type(converted[0]) is type(ours)
    assert type(custom_conv.to_torch(converted)[0]) is type(theirs)
    ops_run = set()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with custom_conv.enabled():
            out = theirs(x)
    ops_run = {event.name for event in prof.events()}
    torch.testing.assert_close(out, theirs(x))
    assert any(op.startswith("custom_conv::") and "avg_pool2d_forward" in op for op in ops_run), ops_run
    assert not any(op.startswith("aten::") and ("avg_pool" in op or op == "aten::mean") for op in ops_run), ops_run


@pytest.mark.parametrize("call", [
    lambda x: torch._C._nn.avg_pool2d(x, [3, 3], [2, 2], [1, 1], True, False, 3),
    lambda x: torch.ops.aten.avg_pool2d(x, [3, 3], [], [1, 1]),
    lambda x: torch._C._nn.adaptive_avg_pool2d(x, [3, 2]),
    lambda x: torch.ops.aten._adaptive_avg_pool2d(x, [3, 2]),
    lambda x: torch.ops.aten.adaptive_avg_pool2d.default(x, [3, 2]),
], ids=["_nn.avg_pool2d", "aten.avg_pool2d", "_nn.adaptive_avg_pool2d", "aten._adaptive_avg_pool2d",
        "aten.adaptive_avg_pool2d.default"])
def test_enabled_routes_torchs_entry_points(call):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with custom_conv.enabled():
            out = call(x)
    names = {event.name for event in prof.events()}
    torch.testing.assert_close(out, call(x))
    assert any("avg_pool2d_forward" in n for n in names if n.startswith("custom_conv::")), names
