"""conv2d: forward values and all three gradients equal torch.nn.functional's,
for every case of tests/cases.py on every device; then what the table cannot say."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import custom_conv
from cases import CONV2D_CASES, LONG_SUMS, conv
from custom_conv import functional as CF
from helpers import (DEVICES, assert_conv2d_matches_torch, assert_matches_torch, assert_within_eps_of_exact,
                     conv_tensors, dtypes, num_threads, tolerance)

pytestmark = pytest.mark.usefixtures("no_tf32")  # on CUDA, torch's reference in full float32


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("case", list(CONV2D_CASES))
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
@pytest.mark.parametrize("device", DEVICES)
def test_values_and_gradients_match_torch(device, dtype, case, bias):
    """float64: equal but for summation order. float32: within rounding (helpers.tolerance)."""
    spec = CONV2D_CASES[case]
    assert_conv2d_matches_torch(spec, conv_tensors(spec, dtype, device, bias),
                                **tolerance(dtype, device, long_sums=LONG_SUMS in spec.tags))


# Half and bfloat16 on the CPU: there are no direct kernels for them, so every
# layer takes the im2col route or, one input channel per group, the depthwise
# route. Each case has enough (sample, channel) planes that a thread runs
# several in a row through the same scratch buffers (col2im's, the depthwise
# loops').
REDUCED_PRECISION_CASES = {
    # 16 x 9 x 32 x 32 = 147K column values a sample: the 2^18-value im2col
    # chunks hold one sample each, so the weight gradient adds 16 chunks in
    # 8 blocks of 2 (csrc/cpu/conv2d_im2col.cpp).
    "im2col, 16 chunks in 8 blocks": conv((16, 16, 32, 32), (16, 16, 3, 3), padding=1),
    "im2col, groups": CONV2D_CASES["groups with asymmetric kernel, stride and padding"],
    "im2col, sums of 630 products": CONV2D_CASES["several GEMM tiles, ragged edges"],
    # A 2x2 plane whose windows read mostly padding, at a batch that gives each
    # group of positions im2col.min_group_columns columns: a product per tap
    # (forward, input gradient) or per group of positions (weight gradient).
    "im2col, tiny plane by taps": conv((16, 24, 2, 2), (20, 24, 3, 3), padding=1),
    # Weight-gradient sums over 8 samples x 32 rows x 32 columns.
    "depthwise, 32x32 planes": conv((8, 16, 32, 32), (16, 1, 3, 3), padding=1, groups=16),
    "depthwise, multiplier 2, stride 2": CONV2D_CASES["depthwise multiplier 2, stride 2"],
}
# How many eps from exact each route may be (helpers.assert_within_eps_of_exact).
# The depthwise loops sum in float and round once. The im2col route rounds
# intermediates: the GEMM's columns before col2im adds them (the input
# gradient, up to 0.75 eps measured on positive numbers), and the weight
# gradient's partial sums, after each chunk and as the blocks are added (up
# to 1.5 eps over 16 chunks in 8 blocks).
ROUTE_EPS = {"depthwise": 1, "im2col": 2}


@pytest.mark.parametrize("positive", [False, True], ids=["signed", "positive"])
@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16"))
@pytest.mark.parametrize("case", list(REDUCED_PRECISION_CASES))
def test_half_and_bfloat16_values_and_gradients_are_within_eps_of_exact(case, dtype, positive):
    """Forward, input and weight gradients, against float64 on the same
    rounded numbers, within ROUTE_EPS of their route."""
    spec = REDUCED_PRECISION_CASES[case]
    route = case.split(",")[0]  # each name starts with its route
    tensors = conv_tensors(spec, dtype)
    plan = custom_conv.explain_conv2d(*tensors, **spec.kwargs)
    assert {choice.algorithm for choice in plan.values()} == {route}, plan
    assert_within_eps_of_exact(lambda x, w, b: CF.conv2d(x, w, b, **spec.kwargs),
                               lambda x, w, b: F.conv2d(x, w, b, **spec.kwargs), tensors,
                               eps_factor=ROUTE_EPS[route], positive=positive)


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_input_gives_unbatched_output(device):
    x = torch.randn(3, 8, 8, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    out = CF.conv2d(x, w, padding=1)
    assert out.shape == (4, 8, 8)
    assert_matches_torch(lambda x, w: CF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), [x, w])


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_gives_empty_output_and_zero_weight_gradient(device):
    # The table's "empty batch" compares with torch; this pins the values themselves.
    x, w = torch.randn(0, 3, 8, 8, device=device), torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    out = CF.conv2d(x, w)
    assert out.shape == (0, 4, 6, 6)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("device", DEVICES)
def test_no_input_channels_gives_the_bias_and_its_gradient(device, bias, groups):
    """With no input channels every output is an empty sum, zero, plus the
    bias; the bias gradient is the sum of the output gradient, and the input
    and weight gradients are empty. torch 2.14.1 returns an output with no
    channels here, (2, 0, 3, 3), and a zero bias gradient, against its own
    shape rule (its test of this case does not check the size), so the
    reference is the arithmetic itself, in float64."""
    x = torch.randn(2, 0, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 0, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True) if bias else None
    out = CF.conv2d(x, w, b, stride=(1, 2), padding=1, groups=groups)
    expected = b.detach().view(1, 4, 1, 1).expand(2, 4, 5, 3) if bias else torch.zeros(2, 4, 5, 3)
    torch.testing.assert_close(out, expected.to(out), rtol=0, atol=0)
    grad_output = torch.randn_like(out)
    out.backward(grad_output)
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    if bias:
        torch.testing.assert_close(b.grad, grad_output.sum((0, 2, 3)), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_match_torch(device):
    x = torch.randn(2, 8, 10, 3, dtype=torch.float64, device=device).permute(0, 3, 2, 1)[:, :, ::2]  # (2, 3, 5, 8)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64, device=device).transpose(0, 1)  # (4, 3, 3, 3) transposed
    assert not x.is_contiguous() and not w.is_contiguous()
    assert_matches_torch(lambda x, w: CF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), [x, w])


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_input_gives_channels_last_output(device):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device).to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    assert CF.conv2d(x, w, padding=1).is_contiguous(memory_format=torch.channels_last)
    if device == "cpu":  # like torch there; on CUDA, torch keeps float64 in NCHW (cuDNN's NHWC is for float32 and less)
        assert F.conv2d(x, w, padding=1).is_contiguous(memory_format=torch.channels_last)
    assert_matches_torch(lambda x, w: CF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), [x, w])


# 48 input channels x 5x5 taps = 1200 reduction steps, past the direct
# forward's 1152 (and 24 output channels x 25 = 600, past the other passes'
# 576), so every pass takes the im2col route; 1200 x 32 x 32 = 1.2M column
# values a sample, so the 2^18-value chunks hold one sample each: a batch of
# 16 is 16 chunks, which the weight gradient sums in 8 blocks of 2.
SEVERAL_IM2COL_CHUNKS = conv((16, 48, 32, 32), (24, 48, 5, 5), padding=2, tags=[LONG_SUMS])
GEMM = "custom_conv::gemm"  # our GEMM, one profiler event a product


@pytest.mark.parametrize("threads", [1, 2, 4], ids=lambda n: f"{n} threads")
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
def test_large_batch_in_several_im2col_chunks_matches_torch(dtype, threads):
    spec = SEVERAL_IM2COL_CHUNKS
    x, w, b = conv_tensors(spec, dtype)
    plan = custom_conv.explain_conv2d(x, w, **spec.kwargs)
    assert {choice.algorithm for choice in plan.values()} == {"im2col"}, plan
    with num_threads(threads):
        # The premise: more GEMMs (one per chunk) than weight-gradient blocks.
        grad_output = torch.ones(16, 24, 32, 32, dtype=dtype)
        with torch.profiler.profile() as prof:
            torch.ops.custom_conv.conv2d_backward_weight(grad_output, x, list(w.shape), [1, 1], [2, 2], [1, 1], 1)
        assert sum(event.name == GEMM for event in prof.events()) > 8
        # float32: the weight gradient sums 16 x 32 x 32 products a value, values of
        # ~128 whose rounding in another order differs by ~1e-3.
        tol = tolerance(dtype, "cpu", long_sums=True)
        assert_conv2d_matches_torch(spec, (x, w, b), **tol,
                                    grad_tolerances=dict(tol, atol=1e-2) if dtype == torch.float32 else tol)


# Batches that do not divide into the im2col route's chunks (the CPU route cuts
# the batch by cache budget and thread count): the last chunk holds fewer
# samples than the others, and must neither read nor write past the batch.
@pytest.mark.parametrize("threads", [1, 2], ids=lambda n: f"{n} threads")
@pytest.mark.parametrize("batch", [3, 5, 7])
def test_a_short_last_im2col_chunk_matches_torch(batch, threads):
    spec = conv((batch, 32, 16, 16), (32, 32, 3, 3), padding=1)
    tensors = conv_tensors(spec, torch.float64)
    with num_threads(threads), custom_conv.forced_algorithm("im2col"):
        plan = custom_conv.explain_conv2d(*tensors[:2], **spec.kwargs)
        assert {choice.algorithm for choice in plan.values()} == {"im2col"}, plan
        assert_conv2d_matches_torch(spec, tensors, **tolerance(torch.float64, "cpu"))


def test_only_requested_gradients_are_computed():
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4)
    with torch.profiler.profile() as prof:
        CF.conv2d(x, w, b).sum().backward()
    names = {e.name for e in prof.events()}
    assert "custom_conv::conv2d_backward_weight" in names
    assert "custom_conv::conv2d_backward_input" not in names
    assert "custom_conv::conv2d_backward_bias" not in names


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    # Input at least as large as the dilated kernel minus the padding.
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 12))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 12))
    n = draw(st.integers(0, 10))  # past the 8 weight-gradient blocks
    bias = draw(st.booleans())
    return (n, c_in, h, w), (c_out, c_in // groups, kh, kw), bias, \
        dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)


@settings(max_examples=60, deadline=None)
@given(conv_configs())
def test_random_configurations_match_torch(config):
    input_shape, weight_shape, bias, kwargs = config
    x = torch.randn(input_shape, dtype=torch.float64)
    w = torch.randn(weight_shape, dtype=torch.float64)
    b = torch.randn(weight_shape[0], dtype=torch.float64) if bias else None
    assert_matches_torch(lambda x, w, b: CF.conv2d(x, w, b, **kwargs),
                         lambda x, w, b: F.conv2d(x, w, b, **kwargs), [x, w, b])


GRADCHECK_CASES = ["plain 3x3", "asymmetric kernel, stride, padding and dilation", "groups",
                   "depthwise multiplier 2, stride 2", "same padding, even kernel and dilation"]


def _leaves(case, device):
    return [t.requires_grad_() for t in conv_tensors(CONV2D_CASES[case], torch.float64, device)]


@pytest.mark.parametrize("case", GRADCHECK_CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, case):
    kwargs = CONV2D_CASES[case].kwargs
    assert torch.autograd.gradcheck(lambda x, w, b: CF.conv2d(x, w, b, **kwargs), _leaves(case, device))


@pytest.mark.parametrize("case", GRADCHECK_CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_gradgradcheck(device, case):
    kwargs = CONV2D_CASES[case].kwargs
    assert torch.autograd.gradgradcheck(lambda x, w, b: CF.conv2d(x, w, b, **kwargs), _leaves(case, device))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_batch_gives_the_same_results_as_its_samples_one_by_one(threads):
    # The CPU kernels cut the batch into chunks (by cache size and thread
    # count); how it is cut must not change any sample's result.
    with num_threads(threads):
        x = torch.randn(7, 6, 20, 20, dtype=torch.float64)
        w = torch.randn(8, 3, 3, 3, dtype=torch.float64)
        gy = torch.randn(7, 8, 10, 10, dtype=torch.float64)
        ops, args = torch.ops.custom_conv, ([2, 2], [1, 1], [1, 1], 2)
        whole = ops.conv2d_forward(x, w, None, *args)
        gx = ops.conv2d_backward_input(gy, w, list(x.shape), *args)
        gw = ops.conv2d_backward_weight(gy, x, list(w.shape), *args)
        for n in range(7):
            torch.testing.assert_close(whole[n:n + 1], ops.conv2d_forward(x[n:n + 1], w, None, *args))
            torch.testing.assert_close(gx[n:n + 1], ops.conv2d_backward_input(gy[n:n + 1], w, [1, 6, 20, 20], *args))
        per_sample = sum(ops.conv2d_backward_weight(gy[n:n + 1], x[n:n + 1], list(w.shape), *args) for n in range(7))
        torch.testing.assert_close(gw, per_sample)


def test_weight_gradient_is_bitwise_reproducible():
    x, gy = torch.randn(16, 8, 16, 16), torch.randn(16, 4, 16, 16)
    grads = [torch.ops.custom_conv.conv2d_backward_weight(gy, x, [4, 8, 3, 3], [1, 1], [1, 1], [1, 1], 1)
             for _ in range(3)]
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_cpu_autocast_runs_conv_in_bfloat16_like_torch():
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = CF.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1)
    assert out.dtype == ref.dtype == torch.bfloat16
    # Both round the same bfloat16 inputs and sum in float: a few bfloat16 steps.
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=5e-2)
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32  # the cast is differentiated back to the parameter's dtype
