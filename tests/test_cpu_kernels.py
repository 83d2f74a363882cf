"""Every set of CPU convolution kernels this CPU can run gives torch's results.

The process picks its kernels once (custom_conv.cpu_kernels()), so each set
runs the conv2d tests in a child process with CUSTOM_CONV_CPU_KERNELS set.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import custom_conv

ORDER = ["im2col", "avx2", "avx512"]  # each set can run where the next one can
TESTS = Path(__file__).parent


def test_the_default_is_the_best_set_for_this_cpu():
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if "CUSTOM_CONV_CPU_KERNELS" in os.environ or not flags:
        pytest.skip("kernels chosen by the environment, or CPU flags unknown")
    expected = "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= set(flags) else "im2col"
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
         str(TESTS / "test_conv2d.py"), str(TESTS / "test_cpu_kernels.py")],
        env=env, cwd=TESTS.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_an_unknown_set_is_refused():
    if "CUSTOM_CONV_CPU_KERNELS" in os.environ:
        pytest.skip("already in a child process")
    env = dict(os.environ, CUSTOM_CONV_CPU_KERNELS="sse9")
    code = "import custom_conv; custom_conv.cpu_kernels()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "CUSTOM_CONV_CPU_KERNELS must be avx512, avx2 or im2col, got 'sse9'" in result.stderr
