import pytest
import torch

import custom_conv  # noqa: F401  (fails loudly if the extension is not built)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def forward_and_grads(fn, tensors, grad_output=None):
    """Runs fn on fresh leaf copies of `tensors`, backpropagates `grad_output`
    (random, seeded by the caller, when None) and returns (output, grads)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None
              for t in tensors]
    out = fn(*leaves)
    if isinstance(out, tuple):
        out = out[0]
    if grad_output is None:
        grad_output = torch.randn_like(out)
    out.backward(grad_output)
    return out.detach(), [t.grad if t is not None else None for t in leaves], grad_output


def assert_matches_torch(ours, theirs, tensors, **tolerances):
    """Forward values and every input gradient of `ours` equal `theirs`'s."""
    out, grads, grad_output = forward_and_grads(ours, tensors)
    ref, ref_grads, _ = forward_and_grads(theirs, tensors, grad_output)
    torch.testing.assert_close(out, ref, **tolerances)
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None
        else:
            torch.testing.assert_close(g, r, **tolerances)
