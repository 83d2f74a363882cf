"""Every set of CPU kernels this CPU can run gives torch's results.

The process picks its kernels once (custom_conv.cpu_kernels()), so each set
runs the conv2d and max_pool2d tests in a child process with
CUSTOM_CONV_CPU_KERNELS set.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import custom_conv
from custom_conv import functional as CF
from helpers import assert_matches_torch, num_threads

ORDER = ["baseline", "avx2", "avx512"]  # each level can run where the next one can
TESTS = Path(__file__).parent


def test_the_default_is_the_best_set_for_this_cpu():
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if "CUSTOM_CONV_CPU_KERNELS" in os.environ or not flags:
        pytest.skip("kernels chosen by the environment, or CPU flags unknown")
    expected = ("avx512" if {"avx512f", "avx512vl"} <= set(flags)
                else "avx2" if {"avx2", "fma"} <= set(flags) else "baseline")
    assert custom_conv.cpu_kernels() == expected


def test_the_environment_variable_chooses_the_set():
    wanted = os.environ.get("CUSTOM_CONV_CPU_KERNELS")
    if wanted is None:
        pytest.skip("run by test_each_kernel_set_matches_torch in a child process")
    assert custom_conv.cpu_kernels() == wanted


@pytest.mark.parametrize("kernels", ORDER)
def test_each_kernel_set_matches_torch(kernels):
    if "CUSTOM_CONV_CPU_KERNELS" in os.environ:
        pytest.skip("already in a child process")
    best = custom_conv.cpu_kernels()
    if ORDER.index(kernels) > ORDER.index(best):
        pytest.skip(f"this CPU runs at most {best}")
    if kernels == best:
        pytest.skip("the default set: every other test runs it")
    env = dict(os.environ, CUSTOM_CONV_CPU_KERNELS=kernels)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         *(str(TESTS / name) for name in ("test_conv2d.py", "test_max_pool2d.py", "test_cpu_kernels.py",
                                          "test_algorithm_choice.py", "test_route_sweep.py", "test_gemm.py"))],
        env=env, cwd=TESTS.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_an_unknown_set_is_refused():
    if "CUSTOM_CONV_CPU_KERNELS" in os.environ:
        pytest.skip("already in a child process")
    env = dict(os.environ, CUSTOM_CONV_CPU_KERNELS="sse9")
    code = "import custom_conv; custom_conv.cpu_kernels()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "CUSTOM_CONV_CPU_KERNELS must be avx512, avx2 or baseline, got 'sse9'" in result.stderr


# Shapes that steer the direct kernels (csrc/cpu/direct/) through each of
# their blockings and tilings; under CUSTOM_CONV_CPU_KERNELS=baseline the same
# shapes test the im2col route.
DIRECT_CASES = {
    "rows of 16, one register of channels": ((2, 5, 16, 16), (16, 5, 3, 3), dict(padding=1)),
    "rows of 8, two registers of channels": ((2, 8, 8, 8), (32, 8, 3, 3), dict(padding=1)),
    # One row: runs of 16 outputs along the lanes would leave 3 of a tile's 4 runs empty.
    "a row of 16, in one tile of 16 outputs": ((2, 5, 3, 16), (16, 5, 3, 3), dict(padding=(0, 1))),
    "channels past the last block": ((2, 4, 8, 8), (40, 4, 3, 3), dict(padding=1)),
    "tiles across rows of 10 (LeNet conv2)": ((2, 6, 14, 14), (16, 6, 5, 5), {}),
    "one input channel, six output channels (LeNet conv1)": ((2, 1, 32, 32), (6, 1, 5, 5), {}),
    "three input channels": ((2, 3, 12, 12), (16, 3, 3, 3), dict(padding=1)),
    "two input channels, dilation": ((2, 2, 12, 12), (8, 2, 3, 3), dict(padding=2, dilation=2)),
    "groups": ((2, 8, 10, 10), (16, 4, 3, 3), dict(padding=1, groups=2)),
    "stride 2 (phase planes)": ((2, 8, 9, 9), (16, 8, 3, 3), dict(stride=2, padding=1)),
    "stride 2 with dilation 2": ((2, 8, 11, 10), (16, 8, 3, 3), dict(stride=2, padding=2, dilation=2)),
    "strides 3 and 2, 3x5 kernel": ((2, 4, 13, 12), (16, 4, 3, 5), dict(stride=(3, 2), padding=(1, 2))),
    "one sample: tiles spread over threads": ((1, 8, 16, 16), (16, 8, 3, 3), dict(padding=1)),
    "asymmetric kernel, padding and dilation": ((2, 4, 11, 13), (16, 4, 3, 2), dict(padding=(2, 1), dilation=(2, 1))),
    "padding beyond the kernel's reach": ((2, 4, 6, 6), (8, 4, 3, 3), dict(padding=3)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", list(DIRECT_CASES), ids=list(DIRECT_CASES))
def test_direct_kernel_shapes_match_torch(case, dtype):
    input_shape, weight_shape, kwargs = DIRECT_CASES[case]
    x = torch.randn(input_shape, dtype=dtype)
    w = torch.randn(weight_shape, dtype=dtype)
    b = torch.randn(weight_shape[0], dtype=dtype)
    # float32: the weight gradient sums up to 2 * 32 * 32 products per entry in
    # a different order from oneDNN; a few ulps times sqrt(terms) of values ~10.
    tolerances = {} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    assert_matches_torch(lambda x, w, b: CF.conv2d(x, w, b, **kwargs),
                         lambda x, w, b: F.conv2d(x, w, b, **kwargs), [x, w, b], **tolerances)


# A strided input gradient of fewer samples than threads runs the tiles of
# all its phases on the threads at once, then spreads the phases by channels.
# The chooser sends a single sample to im2col, so the direct route is forced;
# the 2x3 kernel with strides (3, 2) leaves a phase of rows no tap reaches.
ONE_SAMPLE_STRIDED = {
    "3x3 stride 2": ((1, 8, 15, 15), (16, 8, 3, 3), dict(stride=2, padding=1)),
    "4x4 stride 2": ((1, 8, 16, 16), (16, 8, 4, 4), dict(stride=2, padding=1)),
    "2x3 strides 3 and 2": ((1, 4, 13, 12), (8, 4, 2, 3), dict(stride=(3, 2), padding=(0, 1))),
}


@pytest.mark.skipif(custom_conv.cpu_kernels() == "baseline", reason="no direct kernels at the baseline level")
@pytest.mark.parametrize("case", list(ONE_SAMPLE_STRIDED), ids=list(ONE_SAMPLE_STRIDED))
def test_one_sample_strided_input_gradient_on_more_threads(case):
    input_shape, weight_shape, kwargs = ONE_SAMPLE_STRIDED[case]
    x, w = torch.randn(input_shape, dtype=torch.float64), torch.randn(weight_shape, dtype=torch.float64)
    gy = torch.randn_like(F.conv2d(x, w, **kwargs))
    expected = torch.nn.grad.conv2d_input(x.shape, w, gy, **kwargs)
    grads = []
    for threads in (1, 2):
        with num_threads(threads), custom_conv.forced_algorithm("direct"):
            xr = x.clone().requires_grad_()
            grads.append(torch.autograd.grad(CF.conv2d(xr, w, **kwargs), xr, gy)[0])
    torch.testing.assert_close(grads[1], expected, rtol=1e-12, atol=1e-12)
    # The tiles' split changes no sum: the same bits as the one-thread route.
    assert torch.equal(grads[0], grads[1])


def test_infinities_reach_only_the_outputs_and_gradients_they_touch():
    # The direct kernels also compute positions that are not outputs (past
    # the end of a row); those must never be stored or multiplied into a sum,
    # or an inf in the last column would turn unrelated entries into nan.
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    x[0, 1, 3, 7] = float("inf")
    x[1, 2, 7, 0] = -float("inf")
    w = torch.randn(16, 4, 3, 3, dtype=torch.float64)
    ours, theirs = CF.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)
    torch.testing.assert_close(ours, theirs, equal_nan=True)
    gy = torch.randn_like(theirs)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    gx, gw = torch.autograd.grad(CF.conv2d(xr, wr, padding=1), (xr, wr), gy)
    rx, rw = torch.autograd.grad(F.conv2d(xr, wr, padding=1), (xr, wr), gy)
    torch.testing.assert_close(gx, rx, equal_nan=True)
    torch.testing.assert_close(gw, rw, equal_nan=True)
    assert torch.isfinite(gw[:, 0]).all()  # channel 0 saw no inf


def test_the_fma_peak_measurement_runs_the_chosen_kernels():
    """benchmarks/bench.py's peak (the number, not its speed, which no test
    times): positive with direct kernels, 0 without."""
    peak = torch.ops.custom_conv.cpu_fma_peak_gflops(0.02)
    if custom_conv.cpu_kernels() == "baseline":
        assert peak == 0.0
    else:
        assert peak > 0.0
