"""The Winograd route (csrc/cpu/conv2d_winograd.cpp): F(2x2, 3x3) for 3x3
stride-1 float32 layers. It rounds differently from a sum over the taps, so
these tests hold it to a bound: on every pass, its float32 error against a
float64 reference is at most 10x torch's own float32 error on the same inputs
(and below 2e-6 of the result's largest value). F(2x2, 3x3) stays near 2x;
the larger tiles of F(4x4, 3x3) broke the bound on VGG's 256-channel layer. Errors are
measured as in benchmarks/bench.py: the largest difference relative to the
largest reference value."""
import pytest
import torch
import torch.nn.functional as F

import custom_conv
from custom_conv import functional as CF
from helpers import num_threads

PASSES = custom_conv.explain.PASSES

# (batch, C_in, C_out, H, W, padding): both layouts of the route (planes at
# least 12 tiles wide are transformed in place, narrower ones channels-last),
# odd sizes whose last tiles hang over the edge, every padding it takes, tile
# counts that leave the last block short, and more blocks of tiles (256 each
# in the plane layout, 1,024 channels-last for the weight gradient) than the
# weight gradient's 8 partial sums, so that a partial sums several blocks.
LAYERS = {
    "wide planes, odd sizes": (3, 64, 72, 25, 27, 1),
    "narrow planes, channels-last": (17, 72, 64, 7, 9, 1),
    "no padding": (6, 64, 128, 16, 16, 0),
    "padding 2": (5, 64, 64, 16, 16, 2),
    "rows padded only": (4, 64, 64, 14, 26, (1, 0)),
    "deep, 4x4 planes": (32, 128, 256, 4, 4, 1),
    "more blocks than partial sums, planes": (9, 64, 64, 32, 32, 1),
    "more blocks than partial sums, channels-last": (520, 32, 32, 8, 8, 1),
}


def tensors(name, seed=0):
    n, cin, cout, h, w, padding = LAYERS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5
    bias = torch.randn(cout, generator=g)
    pad = padding if isinstance(padding, tuple) else (padding, padding)
    grad = torch.randn(n, cout, h + 2 * pad[0] - 2, w + 2 * pad[1] - 2, generator=g)
    return x, weight, bias, grad, pad


def passes(conv, x, weight, bias, grad, pad):
    """Output, input gradient and weight gradient of conv, from grad."""
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    out = conv(*leaves, bias, padding=pad)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad)]


def relative_error(result, reference):
    return ((result.double() - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("threads", [1, 3], ids=lambda n: f"{n} threads")
@pytest.mark.parametrize("name", list(LAYERS))
def test_winograd_is_within_10x_of_torchs_float32_error(name, threads):
    x, weight, bias, grad, pad = tensors(name)
    exact = passes(F.conv2d, *(t.double() for t in (x, weight, bias, grad)), pad)
    theirs = passes(F.conv2d, x, weight, bias, grad, pad)
    # Forced: the route itself is under test, wherever the chooser's cost
    # thresholds put these layers.
    with custom_conv.forced_algorithm("winograd"), num_threads(threads):
        plan = custom_conv.explain_conv2d(x, weight, padding=pad)
        assert [plan[p].algorithm for p in PASSES] == ["winograd"] * 3, plan
        ours = passes(CF.conv2d, x, weight, bias, grad, pad)
    for what, o, t, e in zip(("output", "input gradient", "weight gradient"), ours, theirs, exact):
        ours_error, torch_error = relative_error(o, e), relative_error(t, e)
        assert ours_error <= max(10 * torch_error, 1e-7) and ours_error < 2e-6, \
            f"{what}: ours {ours_error:.2e}, torch's {torch_error:.2e}"


def test_winograd_is_bitwise_reproducible():
    """Fixed blocks, partial sums added in a fixed order: the same bits on
    every run, as every other route gives."""
    x, weight, bias, grad, pad = tensors("narrow planes, channels-last")
    with custom_conv.forced_algorithm("winograd"):
        first = passes(CF.conv2d, x, weight, bias, grad, pad)
        for _ in range(3):
            again = passes(CF.conv2d, x, weight, bias, grad, pad)
            assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_winograd_is_for_3x3_stride_1_float32_only():
    """float64 keeps the exact sum over the taps, which gradcheck relies on;
    other kernels, strides, dilations and groups are not Winograd's."""
    x, weight, *_ = tensors("no padding")
    assert custom_conv.explain_conv2d(x, weight)["forward"].algorithm == "winograd"
    for dtype in (torch.float64, torch.bfloat16):
        plan = custom_conv.explain_conv2d(x.to(dtype), weight.to(dtype))
        assert "winograd" not in {c.algorithm for c in plan.values()}, plan
    for kwargs in (dict(stride=2), dict(dilation=2)):
        plan = custom_conv.explain_conv2d(x, weight, **kwargs)
        assert "winograd" not in {c.algorithm for c in plan.values()}, plan
    plan = custom_conv.explain_conv2d(x, weight[:, :32], groups=2)
    assert plan["forward"].algorithm != "winograd" and "ungrouped" in plan["forward"].reason


def test_winograd_needs_enough_tiles_to_pay_for_its_kernel_transform():
    """ResNet-20's 64-channel 8x8 layer: at batch 1 (16 tiles) too few for
    Winograd at all; at batch 32 (512 tiles) Winograd's, but for the forward
    and input gradient on full-width AVX-512, where the direct kernels are
    faster on it (below 1024 tiles with 64 channels each way; 256 where
    AVX-512 runs at half rate), and with 128 channels, where 256 tiles are
    enough (and fewer at half rate: test_algorithm_choice.py)."""
    weight = torch.randn(64, 64, 3, 3)
    plan = custom_conv.explain_conv2d(torch.randn(1, 64, 8, 8), weight, padding=1)
    assert plan["forward"].algorithm != "winograd" and "too few output tiles" in plan["forward"].reason
    plan = custom_conv.explain_conv2d(torch.randn(32, 64, 8, 8), weight, padding=1)
    assert plan["backward_weight"].algorithm == "winograd"
    if custom_conv.cpu_kernels() == "avx512" and not torch.ops.custom_conv.cpu_avx512_half_rate():
        for p in ("forward", "backward_input"):
            assert plan[p].algorithm == "direct" and "to beat the direct kernels" in plan[p].reason, plan
        wide = custom_conv.explain_conv2d(torch.randn(32, 128, 8, 8), torch.randn(128, 128, 3, 3), padding=1)
        assert {c.algorithm for c in wide.values()} == {"winograd"}, wide
    else:
        assert {c.algorithm for c in plan.values()} == {"winograd"}, plan


def test_switching_winograd_off_gives_the_sum_over_the_taps():
    x, weight, bias, grad, pad = tensors("no padding")
    with custom_conv.disabled_algorithms("winograd"):
        plan = custom_conv.explain_conv2d(x, weight)
        ours = passes(CF.conv2d, x, weight, bias, grad, pad)
    assert "winograd" not in {c.algorithm for c in plan.values()}
    assert "winograd switched off by the user" in plan["forward"].reason
    for o, t in zip(ours, passes(F.conv2d, x, weight, bias, grad, pad)):
        torch.testing.assert_close(o, t, rtol=1e-4, atol=1e-4)
    assert custom_conv.explain_conv2d(x, weight)["forward"].algorithm == "winograd"
