"""Fixtures and the Hypothesis profile; what test files import lives in
helpers.py and cases.py."""
import os

import pytest
import torch
from hypothesis import settings

import custom_conv  # noqa: F401  (fails loudly if the extension is not built)
from helpers import cudnn_tf32

# Hypothesis draws the same examples on every run, so that a failure
# reproduces and a passing suite stays passing (with no example database).
# To search new examples instead, each run others:
# HYPOTHESIS_PROFILE=explore pytest tests -k random_configurations
settings.register_profile("derandomized", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_tf32():
    """cuDNN and cuBLAS may use TF32 (10-bit mantissa) for float32 by default;
    our kernels compute in full float32, so compare against full float32."""
    saved_matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    with cudnn_tf32(False):
        yield
    torch.backends.cuda.matmul.allow_tf32 = saved_matmul
