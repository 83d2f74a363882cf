"""max_pool2d: values, indices and gradients equal torch.nn.functional's."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from custom_conv import functional as CF
from conftest import assert_matches_torch

CASES = {
    "2x2 stride 2": ((2, 3, 8, 8), dict(kernel_size=2)),
    "3x3 stride 2 padding 1": ((2, 3, 9, 9), dict(kernel_size=3, stride=2, padding=1)),
    "overlapping windows": ((2, 2, 7, 7), dict(kernel_size=3, stride=1)),
    "ceil mode keeps partial last window": ((2, 2, 7, 7), dict(kernel_size=2, ceil_mode=True)),
    "ceil mode drops window starting in padding": ((1, 2, 6, 6), dict(kernel_size=3, stride=3, padding=1,
                                                                      ceil_mode=True)),
    "asymmetric kernel stride padding": ((2, 3, 10, 9), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    "dilation": ((1, 3, 11, 11), dict(kernel_size=3, stride=2, padding=1, dilation=2)),
    "dilation with ceil mode": ((1, 2, 10, 10), dict(kernel_size=2, stride=3, dilation=(2, 3), ceil_mode=True)),
    "window covers whole input": ((2, 3, 4, 5), dict(kernel_size=(4, 5))),
    "stride larger than kernel": ((2, 2, 9, 9), dict(kernel_size=2, stride=4)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_values_indices_and_gradient_match_torch(case):
    shape, kwargs = CASES[case]
    x = torch.randn(shape, dtype=torch.float64)
    out, idx = CF.max_pool2d(x, return_indices=True, **kwargs)
    ref, ref_idx = F.max_pool2d(x, return_indices=True, **kwargs)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.equal(idx, ref_idx)
    assert_matches_torch(lambda x: CF.max_pool2d(x, **kwargs), lambda x: F.max_pool2d(x, **kwargs), [x])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reduced_precision_is_exact(dtype):
    # A maximum involves no arithmetic, so every dtype must agree bit for bit.
    x = torch.randn(2, 3, 9, 9).to(dtype)
    out, idx = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert out.dtype == dtype
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


def test_ties_go_to_first_element_in_row_major_order():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)  # every window is one big tie
    x[0, 0, 3, 3] = -1.0
    _, idx = CF.max_pool2d(x, 3, stride=1, return_indices=True)
    _, ref_idx = F.max_pool2d(x, 3, stride=1, return_indices=True)
    assert idx.flatten().tolist() == [0, 1, 4, 5]
    assert torch.equal(idx, ref_idx)


def test_overlapping_windows_that_share_a_maximum_add_their_gradients():
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 1, 1] = 5.0  # the centre is in all four 2x2 windows
    x.requires_grad_()
    CF.max_pool2d(x, 2, stride=1).backward(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64))
    assert x.grad[0, 0, 1, 1] == 10.0 and x.grad.sum() == 10.0


@pytest.mark.parametrize("nan_positions", [[(0, 0)], [(1, 2)], [(0, 1), (2, 2)], [(0, 0), (0, 1), (1, 0)]])
def test_nan_propagates_with_the_same_value_and_index_as_torch(nan_positions):
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    for h, w in nan_positions:
        x[0, 0, h, w] = math.nan
    out, idx = CF.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(idx, ref_idx)


def test_window_of_minus_infinity_points_at_its_first_real_element():
    x = torch.full((1, 1, 4, 4), -math.inf, dtype=torch.float64)
    out, idx = CF.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)


def test_unbatched_input_and_empty_batch():
    x3 = torch.randn(3, 6, 6, dtype=torch.float64)
    out, idx = CF.max_pool2d(x3, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(x3, 2, return_indices=True)
    assert out.shape == (3, 3, 3) and torch.equal(out, ref) and torch.equal(idx, ref_idx)
    x0 = torch.randn(0, 3, 6, 6, dtype=torch.float64)
    assert_matches_torch(lambda x: CF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), [x0])


def test_non_contiguous_and_channels_last_inputs():
    base = torch.randn(2, 9, 10, 3, dtype=torch.float64)
    for x in (base.permute(0, 3, 1, 2)[:, :, ::2],
              torch.randn(2, 3, 8, 8, dtype=torch.float64).to(memory_format=torch.channels_last)):
        out, idx = CF.max_pool2d(x, 2, return_indices=True)
        ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
        assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
        assert_matches_torch(lambda x: CF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2), [x])


def test_stride_none_or_empty_means_stride_equals_kernel():
    x = torch.randn(1, 2, 9, 9)
    for stride in (None, []):
        assert torch.equal(CF.max_pool2d(x, 3, stride), F.max_pool2d(x, 3, stride))


@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 13))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 13))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    return shape, dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                       ceil_mode=draw(st.booleans()))


@settings(max_examples=80, deadline=None)
@given(pool_configs(), st.booleans())
def test_random_configurations_match_torch(config, with_ties):
    shape, kwargs = config
    # Small integers make ties common, which exercises the tie rule.
    x = torch.randint(-3, 3, shape).double() if with_ties else torch.randn(shape, dtype=torch.float64)
    out, idx = CF.max_pool2d(x, return_indices=True, **kwargs)
    ref, ref_idx = F.max_pool2d(x, return_indices=True, **kwargs)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    if not out.isinf().any():  # windows of padding only: see the test below
        assert_matches_torch(lambda x: CF.max_pool2d(x, **kwargs), lambda x: F.max_pool2d(x, **kwargs), [x])


def test_window_of_padding_only_gives_minus_infinity_and_no_gradient():
    # With dilation 2 and padding 1, the first window of a 1-row input covers
    # rows -1 and 1: padding and past the end. torch returns -inf with an
    # index past the plane (1), and we return the same; but torch's backward
    # then adds that output's gradient to the next plane's element, while
    # ours, correctly, sends it nowhere: the output depends on no input.
    x = torch.randn(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    out, idx = CF.max_pool2d(x, (2, 1), 1, (1, 0), (2, 1), return_indices=True)
    ref, ref_idx = F.max_pool2d(x, (2, 1), 1, (1, 0), (2, 1), return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    assert out.isinf().all() and (idx == 1).all()
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("case", ["3x3 stride 2 padding 1", "overlapping windows", "dilation with ceil mode"])
def test_gradcheck_and_gradgradcheck(case):
    shape, kwargs = CASES[case]
    # Distinct, well-separated values: the maximum must not switch under the
    # finite-difference perturbation (1e-6), or the numerical Jacobian jumps.
    x = (torch.randperm(math.prod(shape)).reshape(shape).double() / 10).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: CF.max_pool2d(x, **kwargs), (x,))
    assert torch.autograd.gradgradcheck(lambda x: CF.max_pool2d(x, **kwargs), (x,))
