"""max_pool2d: values, indices and gradients equal torch.nn.functional's, for
every case of tests/cases.py on every device; then ties, NaN, infinities and
layouts, which the table cannot say."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from cases import MAX_POOL2D_CASES, MAX_POOL2D_PADDING_ONLY_CASES, pool
from custom_conv import functional as CF
from helpers import DEVICES, assert_matches_torch, assert_within_eps_of_exact, dtypes, forward_and_grads, pool_input


def assert_values_and_indices_match_torch(x, *args, **kwargs):
    """A maximum involves no arithmetic: values and indices equal torch's bit for bit."""
    out, idx = CF.max_pool2d(x, *args, return_indices=True, **kwargs)
    ref, ref_idx = F.max_pool2d(x, *args, return_indices=True, **kwargs)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, ref_idx)
    return out, idx


@pytest.mark.parametrize("case", list(MAX_POOL2D_CASES))
@pytest.mark.parametrize("dtype", dtypes("float64", "float32", "float16", "bfloat16"))
@pytest.mark.parametrize("device", DEVICES)
def test_values_indices_and_gradient_match_torch(device, dtype, case):
    kwargs = MAX_POOL2D_CASES[case].kwargs
    x = pool_input(MAX_POOL2D_CASES[case], dtype, device)
    assert_values_and_indices_match_torch(x, **kwargs)
    # An input's gradient is the sum of the output gradients it is the maximum
    # for. We add in float (for half and bfloat16 too) and round once, as torch
    # does on CUDA; on the CPU torch adds half and bfloat16 in that dtype. So
    # the reference adds the same gradients in float64 and rounds once.
    _, (grad,), grad_output = forward_and_grads(lambda x: CF.max_pool2d(x, **kwargs), [x])
    _, (ref,), _ = forward_and_grads(lambda x: F.max_pool2d(x, **kwargs), [x.double()], grad_output.double())
    torch.testing.assert_close(grad, ref.to(dtype))


# Gradients that pile up: windows of 8 rows at stride 1 pick each plane's
# maximum up to 64 (8x8) or 48 (8x6) times, and the 32 planes of a case pass
# one after another through a thread's scratch plane.
PILED_UP_GRADIENTS = {
    "8x8 windows, stride 1": pool((4, 8, 16, 16), kernel_size=8, stride=1),
    "8x6 windows, stride 1, padding and dilation":
        pool((4, 8, 15, 17), kernel_size=(8, 6), stride=1, padding=(4, 3), dilation=(1, 2), ceil_mode=True),
}


@pytest.mark.parametrize("positive", [False, True], ids=["signed", "positive"])
@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16"))
@pytest.mark.parametrize("case", list(PILED_UP_GRADIENTS))
def test_half_and_bfloat16_gradients_are_within_eps_of_exact(case, dtype, positive):
    """An input's gradient is the sum of its output gradients, added in float
    and rounded once: within eps of the float64 sum of the same rounded
    numbers, relative to the sum of their absolute values
    (helpers.assert_within_eps_of_exact; the scale is taken on the input
    itself, so that the same maxima are chosen). Added in the dtype itself,
    the positive gradients of these cases drift 1.2 to 2.4 eps."""
    kwargs = PILED_UP_GRADIENTS[case].kwargs
    assert_within_eps_of_exact(lambda x: CF.max_pool2d(x, **kwargs), lambda x: F.max_pool2d(x, **kwargs),
                               [pool_input(PILED_UP_GRADIENTS[case], dtype)], eps_factor=1, positive=positive,
                               scale_inputs=lambda x: x)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_first_element_in_row_major_order(device):
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, device=device)  # every window is one big tie
    x[0, 0, 3, 3] = -1.0
    _, idx = assert_values_and_indices_match_torch(x, 3, stride=1)
    assert idx.flatten().tolist() == [0, 1, 4, 5]


@pytest.mark.parametrize("device", DEVICES)
def test_overlapping_windows_that_share_a_maximum_add_their_gradients(device):
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64, device=device)
    x[0, 0, 1, 1] = 5.0  # the centre is in all four 2x2 windows
    x.requires_grad_()
    CF.max_pool2d(x, 2, stride=1).backward(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64,
                                                        device=device))
    assert x.grad[0, 0, 1, 1] == 10.0 and x.grad.sum() == 10.0


@pytest.mark.parametrize("nan_positions", [[(0, 0)], [(1, 2)], [(0, 1), (2, 2)], [(0, 0), (0, 1), (1, 0)]])
@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates_with_the_same_value_and_index_as_torch(device, nan_positions):
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64, device=device)
    for h, w in nan_positions:
        x[0, 0, h, w] = math.nan
    assert_values_and_indices_match_torch(x, 3, stride=2, padding=1)


@pytest.mark.parametrize("device", DEVICES)
def test_window_of_minus_infinity_points_at_its_first_real_element(device):
    x = torch.full((1, 1, 4, 4), -math.inf, dtype=torch.float64, device=device)
    assert_values_and_indices_match_torch(x, 3, stride=2, padding=1)


@pytest.mark.parametrize("kernel", [2, 3, (2, 3)])
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
@pytest.mark.parametrize("device", DEVICES)
def test_windows_that_tile_the_plane_keep_the_rules_for_ties_nan_and_infinity(device, dtype, kernel):
    """Windows with kernel == stride and no padding tile the plane; the CPU
    compares them tap by tap over the whole plane (csrc/cpu/max_pool2d.cpp,
    max_pool_tiles), not window by window. Planes with rows and columns left
    over past the last window; windows of ties, of one NaN, of several NaNs,
    of -inf alone and of -inf with NaN, side by side."""
    x = torch.randn(3, 4, 11, 13, dtype=dtype, device=device).round()  # rounded: many ties
    x[0, 0, :6, :6] = 0.0
    x[0, 1, 0, 1] = math.nan
    x[0, 1, 3:5, 3:6] = math.nan
    x[0, 2] = -math.inf
    x[0, 2, 4, 4] = math.nan
    x[1, :, :, 1::2] = -math.inf
    assert_values_and_indices_match_torch(x, kernel)
    assert_values_and_indices_match_torch(x[:, :, :10, :12], kernel)


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_input_gives_unbatched_output(device):
    out, _ = assert_values_and_indices_match_torch(torch.randn(3, 6, 6, dtype=torch.float64, device=device), 2)
    assert out.shape == (3, 3, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_channels_last_inputs(device):
    base = torch.randn(2, 9, 10, 3, dtype=torch.float64, device=device)
    for x in (base.permute(0, 3, 1, 2)[:, :, ::2],
              torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device).to(memory_format=torch.channels_last)):
        assert_values_and_indices_match_torch(x, 2)
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
    shape = (draw(st.integers(1, 10)), draw(st.integers(1, 3)), h, w)
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


@pytest.mark.parametrize("device", DEVICES)
def test_window_of_padding_only_gives_minus_infinity_and_no_gradient(device):
    # With dilation 2 and padding 1, the first window of a 1-row input covers
    # rows -1 and 1: padding and past the end. torch returns -inf with an
    # index past the plane (1), and we return the same; but torch's backward
    # then adds that output's gradient to the next plane's element, while
    # ours, correctly, sends it nowhere: the output depends on no input.
    x = torch.randn(1, 2, 1, 1, dtype=torch.float64, device=device, requires_grad=True)
    out, idx = assert_values_and_indices_match_torch(x, (2, 1), 1, (1, 0), (2, 1))
    assert out.isinf().all() and (idx == 1).all()
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad, torch.zeros_like(x))


# Windows whose columns (or rows) are all padding, while their rows (columns)
# are inside: the index torch reports, first row * W + first column, then
# lies inside the plane, in the next row, though the window holds nothing.
PADDING_ONLY_COLUMNS = [(c.input, c.kwargs) for c in MAX_POOL2D_PADDING_ONLY_CASES.values()]


@pytest.mark.parametrize("shape, kwargs", PADDING_ONLY_COLUMNS, ids=list(MAX_POOL2D_PADDING_ONLY_CASES))
@pytest.mark.parametrize("device", DEVICES)
def test_window_of_padding_only_columns_routes_no_gradient_into_the_next_row(device, shape, kwargs):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    out, idx = assert_values_and_indices_match_torch(x, **kwargs)
    # The windows that hold input: their taps, computed independently here.
    def holds(out_size, k, s, p, d, size):
        return [any(0 <= o * s - p + j * d < size for j in range(k)) for o in range(out_size)]
    rows = holds(out.shape[2], kwargs["kernel_size"][0], kwargs["stride"][0], kwargs["padding"][0],
                 kwargs["dilation"][0], shape[2])
    cols = holds(out.shape[3], kwargs["kernel_size"][1], kwargs["stride"][1], kwargs["padding"][1],
                 kwargs["dilation"][1], shape[3])
    mask = torch.tensor([[r and c for c in cols] for r in rows], device=device)
    assert not mask.all(), "the case must contain windows of padding only"
    grad_output = torch.randn_like(out, requires_grad=True)
    (grad,) = torch.autograd.grad(out, x, grad_output, create_graph=True)
    # Each input gets the gradients of the windows that hold it and chose it.
    expected = torch.zeros_like(x).flatten(2)
    expected.scatter_add_(2, (idx * mask).flatten(2), (grad_output * mask).flatten(2))
    torch.testing.assert_close(grad, expected.view_as(x), rtol=0, atol=0)
    # Double backward: the adjoint gathers through the same windows only.
    v = torch.randn_like(x)
    (d_grad_output,) = torch.autograd.grad((grad * v).sum(), grad_output)
    torch.testing.assert_close(d_grad_output, v.flatten(2).gather(2, (idx * mask).flatten(2)).view_as(idx) * mask,
                               rtol=0, atol=0)


@pytest.mark.parametrize("case", ["3x3 stride 2 padding 1", "overlapping windows", "dilation with ceil mode"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device, case):
    kwargs = MAX_POOL2D_CASES[case].kwargs
    # Distinct, well-separated values (helpers.pool_input): the maximum must not switch under the
    # finite-difference perturbation (1e-6), or the numerical Jacobian jumps.
    x = pool_input(MAX_POOL2D_CASES[case], torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: CF.max_pool2d(x, **kwargs), (x,))
    assert torch.autograd.gradgradcheck(lambda x: CF.max_pool2d(x, **kwargs), (x,))
