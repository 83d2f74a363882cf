"""What the test files share: the devices to run on, how close to torch is
close enough, the tensors of a case (tests/cases.py), the comparison of ours
with torch's, values and every gradient, the bound for half and bfloat16,
and the number of CPU threads."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from custom_conv import functional as CF

# Every behaviour that does not depend on the device is checked on each of
# these. Marked `cuda`, as test_cuda.py is: `pytest -m cuda` runs every CUDA test.
DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.cuda)] if torch.cuda.is_available() else [])


def dtypes(*names):
    """Parameters for `dtype`, shown by name: dtypes("float64", "float32")."""
    return [pytest.param(getattr(torch, name), id=name) for name in names]


def tolerance(dtype, device, long_sums=False):
    """rtol and atol between our conv2d and torch's, for float64 and float32."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)  # the same products summed in another order: ~1e-14 apart
    if device == "cpu" and not long_sums:
        return dict(rtol=1e-5, atol=1e-5)  # sums of up to ~150 products: a few ulps times sqrt(terms)
    # cuDNN may choose Winograd or FFT algorithms, which round more, and sums of hundreds of products cancel.
    return dict(rtol=1e-4, atol=1e-4)


def _randn64(shape, generator):
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def conv_tensors(case, dtype=torch.float64, device="cpu", bias=True, seed=0):
    """A conv2d case's input, weight and bias (None without bias): standard
    normal values drawn in float64 from `seed`, then rounded to `dtype` on
    `device`, so that every device and dtype starts from the same numbers."""
    generator = torch.Generator().manual_seed(seed)
    x, w, b = (_randn64(shape, generator).to(device=device, dtype=dtype)
               for shape in (case.input, case.weight, case.weight[:1]))
    return x, w, (b if bias else None)


def pool_input(case, dtype=torch.float64, device="cpu", seed=0):
    """A max_pool2d case's input: the numbers -n/2 .. n/2 - 1, divided by 8,
    in an order drawn from `seed`. They are distinct in float64 and float32
    (half and bfloat16 round some large ones together; ties go to the first),
    1/8 apart, far more than a finite-difference step, and of both signs, so
    that padding cannot pass for a maximum of zero."""
    n = math.prod(case.input)
    values = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) - n // 2).double() / 8
    return values.reshape(case.input).to(device=device, dtype=dtype)


def forward_and_grads(fn, tensors, grad_output=None):
    """Runs fn on fresh leaf copies of `tensors`, backpropagates `grad_output`
    (when None, standard normal values drawn from a fixed seed) and returns
    (output, grads, grad_output)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None
              for t in tensors]
    out = fn(*leaves)
    if isinstance(out, tuple):
        out = out[0]
    if grad_output is None:
        grad_output = _randn64(out.shape, torch.Generator().manual_seed(1)).to(out)
    out.backward(grad_output)
    return out.detach(), [t.grad if t is not None else None for t in leaves], grad_output


def assert_matches_torch(ours, theirs, tensors, grad_tolerances=None, **tolerances):
    """Forward values and every input gradient of `ours` equal `theirs`'s,
    within `tolerances` (the gradients within `grad_tolerances` if given)."""
    out, grads, grad_output = forward_and_grads(ours, tensors)
    ref, ref_grads, _ = forward_and_grads(theirs, tensors, grad_output)
    torch.testing.assert_close(out, ref, **tolerances)
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None
        else:
            torch.testing.assert_close(g, r, **(tolerances if grad_tolerances is None else grad_tolerances))


def assert_conv2d_matches_torch(case, tensors, **tolerances):
    """Our conv2d with `case`'s arguments against torch's, as assert_matches_torch."""
    assert_matches_torch(lambda x, w, b: CF.conv2d(x, w, b, **case.kwargs),
                         lambda x, w, b: F.conv2d(x, w, b, **case.kwargs), tensors, **tolerances)


def assert_within_eps_of_exact(ours, exact, tensors, eps_factor=2, positive=False, scale_inputs=torch.abs):
    """Half and bfloat16 kernels accumulate in float and round at the end, so
    each value of `ours` (the forward and every input gradient) is within a
    few units in the last place (eps = 2^-10 for half, 2^-7 for bfloat16) of
    `exact` run in float64 on the same rounded numbers. As terms of both
    signs cancel, "the last place" is relative to the sum of the terms'
    absolute values: `exact` run on scale_inputs(tensors) and |grad_output|
    (for products |x| and |w|; max_pool2d passes its input unchanged, so that
    the same maxima are chosen). The bound is eps_factor * eps times that:
    1 where the result is rounded once (eps / 2) after a float sum (its error,
    ~terms * 2^-24, is far below eps / 2); 2 where a route also rounds
    intermediates (as the im2col route does) or, as test_cuda.py allows, for
    slack.

    With `positive`, the tensors and the output gradient are made
    non-negative: nothing cancels, the scale is the exact value itself and
    the bound is relative, so a sum accumulated in half or bfloat16 (which
    stalls once the sum outgrows the terms), or a scratch buffer that still
    holds the previous plane, cannot hide in the bound."""
    sign = torch.abs if positive else (lambda t: t)
    tensors = [sign(t) if t is not None else None for t in tensors]
    dtype = tensors[0].dtype
    tensors64 = [t.double() if t is not None else None for t in tensors]
    grad_output = sign(_randn64(exact(*tensors64).shape, torch.Generator().manual_seed(1))).to(tensors[0].device, dtype)
    out, grads, _ = forward_and_grads(ours, tensors, grad_output)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads if g is not None)
    grad_output = grad_output.double()  # the same rounded numbers for the reference
    ref, ref_grads, _ = forward_and_grads(exact, tensors64, grad_output)
    scale, scale_grads, _ = forward_and_grads(
        exact, [scale_inputs(t) if t is not None else None for t in tensors64], grad_output.abs())
    eps = torch.finfo(dtype).eps
    names = ["output"] + [f"gradient of input {i}" for i in range(len(grads))]
    for name, value, exact_value, s in zip(names, [out, *grads], [ref, *ref_grads], [scale, *scale_grads]):
        if value is None:
            continue
        s = s.abs()  # a maximum taken on the signed input may be negative
        err = (value.double() - exact_value).abs()
        bound = eps_factor * eps * s + 1e-6
        worst = (err / (eps * s + 1e-30)).max().item()
        assert bool((err <= bound).all()), \
            f"{name}: {int((err > bound).sum())} values beyond {eps_factor} eps, up to {worst:.1f} eps"


@contextlib.contextmanager
def num_threads(n):
    """Runs the block with torch (and so our CPU kernels) on `n` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cudnn_tf32(allowed):
    """Runs the block with torch.backends.cudnn.allow_tf32 set to `allowed`
    (the flag our GPU convolutions follow too), cuDNN's other flags kept.
    Through cuDNN's context manager: the only way once torch's test utilities
    (which test_pytorch_samples.py imports) froze the flags."""
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=allowed)


class OpLog(TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher while it is
    entered: `with OpLog() as log: ...; log.names`."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def torch_conv_or_pool_ops(names):
    """torch's convolution and pooling ops among `names`: any ATen op with
    conv, max_pool, avg_pool or adaptive in its name, and any oneDNN
    (mkldnn), NNPACK, THNN or cuDNN op (torch.compile's query
    mkldnn::_is_mkldnn_acl_supported aside)."""
    return sorted(n for n in names
                  if (n.startswith("aten::") and any(word in n for word in ("conv", "max_pool", "avg_pool",
                                                                             "adaptive")))
                  or (any(word in n.lower() for word in ("mkldnn", "nnpack", "thnn", "cudnn"))
                      and not n.startswith("mkldnn::_is_")))


def assert_only_ours_ran(names):
    """Among the ops that ran, `names` (the profiler's or OpLog's), some are
    ours and none is torch's convolution or pooling."""
    assert any(n.startswith("custom_conv::") for n in names), sorted(names)
    assert torch_conv_or_pool_ops(names) == [], sorted(names)
