"""Fixtures only; what test files import lives in helpers.py and cases.py."""
import pytest
import torch

import custom_conv  # noqa: F401  (fails loudly if the extension is not built)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_tf32():
    """cuDNN and cuBLAS may use TF32 (10-bit mantissa) for float32 by default;
    our kernels compute in full float32, so compare against full float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
