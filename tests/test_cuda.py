"""The CUDA kernels (csrc/cuda), checked against torch.nn.functional (cuDNN)
on the GPU and against our own CPU kernels. Skipped without a CUDA GPU."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import custom_conv
from custom_conv import functional as CF

ops = torch.ops.custom_conv

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = "cuda"


@pytest.fixture(autouse=True)
def no_tf32():
    """cuDNN and cuBLAS may use TF32 (10-bit mantissa) for float32 by default;
    our kernels compute in full float32, so compare against full float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tol(dtype):
    # float64: both sides sum the same products in different orders; float32
    # likewise, over at most a few thousand terms of size ~1.
    return {torch.float64: dict(rtol=1e-10, atol=1e-10),
            torch.float32: dict(rtol=1e-4, atol=1e-4)}[dtype]


# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, bias)
CONV_CASES = [
    (2, 3, 4, 8, 8, 3, 1, 0, 1, 1, True),
    (2, 3, 4, 8, 8, 3, 1, 1, 1, 1, False),
    (2, 4, 6, 9, 7, (3, 2), (2, 1), (1, 0), 1, 2, True),
    (3, 4, 4, 10, 10, 3, 2, 2, 2, 1, True),
    (2, 6, 6, 7, 7, 3, 1, 1, 1, 6, True),       # depthwise
    (2, 4, 8, 7, 7, 3, 2, 1, 1, 4, False),      # depthwise multiplier 2
    (1, 3, 5, 5, 5, 5, 1, 0, 1, 1, True),       # one output pixel
    (2, 3, 4, 6, 6, 1, 1, 0, 1, 1, True),       # 1x1
    (0, 3, 4, 8, 8, 3, 1, 1, 1, 1, True),       # empty batch
    (4, 2, 3, 5, 5, 3, 3, 2, (2, 1), 1, True),  # stride > kernel reach
    (2, 70, 65, 9, 9, 3, 1, 1, 1, 1, True),     # several GEMM tiles, ragged edges
]


def conv_case(case, dtype, device=DEVICE, seed=0):
    n, cin, cout, h, w, k, stride, padding, dilation, groups, bias = case
    k = (k, k) if isinstance(k, int) else k
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
    wt = torch.randn(cout, cin // groups, *k, generator=gen, dtype=torch.float64)
    b = torch.randn(cout, generator=gen, dtype=torch.float64) if bias else None
    to = dict(device=device, dtype=dtype)
    x, wt = x.to(**to), wt.to(**to)
    b = b.to(**to) if b is not None else None
    return x, wt, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_grads(fn, x, w, b, kw, grad_out=None):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = fn(x, w, b, **kw)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64).to(y)
    inputs = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(y, inputs, grad_out)
    return y.detach(), grads, grad_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_matches_torch(case, dtype):
    x, w, b, kw = conv_case(case, dtype)
    y, grads, go = conv_grads(CF.conv2d, x, w, b, kw)
    y_ref, grads_ref, _ = conv_grads(F.conv2d, x, w, b, kw, go)
    torch.testing.assert_close(y, y_ref, **tol(dtype))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **tol(dtype))


def test_conv2d_several_batch_chunks():
    """64 x 9 rows x 32 x 32 columns per sample: Conv2dGeometry::batch_chunk()
    splits a batch of 20 into several chunks, so the weight gradient is
    accumulated across GEMM calls."""
    x, w, b, kw = conv_case((20, 64, 16, 32, 32, 3, 1, 1, 1, 1, True), torch.float32)
    y, grads, go = conv_grads(CF.conv2d, x, w, b, kw)
    y_ref, grads_ref, _ = conv_grads(F.conv2d, x, w, b, kw, go)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for g, g_ref in zip(grads, grads_ref):
        # Sums over 20 * 1024 positions: the absolute error grows with them.
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-2)


def test_conv2d_split_reduction():
    """A tiny output (6 x 25 weights) with a long reduction (64 x 28 x 28):
    the weight-gradient GEMM splits the reduction across blocks."""
    x, w, b, kw = conv_case((64, 1, 6, 28, 28, 5, 1, 0, 1, 1, True), torch.float64)
    _, grads, go = conv_grads(CF.conv2d, x, w, b, kw)
    _, grads_ref, _ = conv_grads(F.conv2d, x, w, b, kw, go)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-9)


def test_conv2d_non_contiguous_and_channels_last():
    x, w, b, kw = conv_case((2, 4, 6, 9, 9, 3, 1, 1, 1, 1, True), torch.float32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(CF.conv2d(x_cl, w, b, **kw), F.conv2d(x, w, b, **kw), rtol=1e-4, atol=1e-4)
    x_t = x.transpose(2, 3)
    torch.testing.assert_close(CF.conv2d(x_t, w, b, **kw), F.conv2d(x_t, w, b, **kw), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CONV_CASES[:6], ids=str)
def test_conv2d_cpu_and_cuda_agree(case):
    """Our CPU and CUDA ops, op by op (float64: only summation order differs)."""
    x, w, b, kw = conv_case(case, torch.float64, device="cpu")
    stride, padding, dilation = (_pair(kw[k]) for k in ("stride", "padding", "dilation"))
    geo = (stride, padding, dilation, kw["groups"])
    y = ops.conv2d_forward(x, w, b, *geo)
    go = torch.randn_like(y)
    cpu = [y, ops.conv2d_backward_input(go, w, x.shape, *geo),
           ops.conv2d_backward_weight(go, x, w.shape, *geo), ops.conv2d_backward_bias(go)]
    c = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    cuda = [ops.conv2d_forward(c(x), c(w), c(b), *geo),
            ops.conv2d_backward_input(c(go), c(w), x.shape, *geo),
            ops.conv2d_backward_weight(c(go), c(x), w.shape, *geo),
            ops.conv2d_backward_bias(c(go))]
    for a, e in zip(cuda, cpu):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-10, atol=1e-10)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[4], CONV_CASES[10]], ids=str)
def test_conv2d_reduced_precision(case, dtype):
    """Half and bfloat16 accumulate in float and round once, so each result
    is within a couple of units in the last place (eps = 2^-10 for half,
    2^-7 for bfloat16) of the exact value computed from the same rounded
    inputs. Since terms of both signs cancel, "the last place" is relative
    to the sum of absolute values, obtained by running the same op on |x|
    and |w| in float64. The factor 2 covers the final rounding (eps / 2) and
    float accumulation error (~K * 2^-24, negligible here)."""
    x, w, b, kw = conv_case(case, dtype)
    eps = torch.finfo(dtype).eps
    x64, w64 = x.double(), w.double()
    b64 = b.double() if b is not None else None
    y, grads, go = conv_grads(CF.conv2d, x, w, b, kw)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    go64 = go.double()
    y_ref, grads_ref, _ = conv_grads(F.conv2d, x64, w64, b64, kw, go64)
    scale_y = F.conv2d(x64.abs(), w64.abs(), b64.abs() if b64 is not None else None, **kw)
    _, scale_grads, _ = conv_grads(F.conv2d, x64.abs(), w64.abs(),
                                   b64.abs() if b64 is not None else None, kw, go64.abs())
    for ours, ref, scale in zip([y, *grads], [y_ref, *grads_ref], [scale_y, *scale_grads]):
        err = (ours.double() - ref).abs()
        bound = 2 * eps * scale + 1e-6
        assert bool((err <= bound).all()), f"max excess {(err - bound).max().item()}"


# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    (2, 3, 8, 8, 2, 2, 0, 1, False),
    (2, 3, 9, 9, 3, 2, 1, 1, False),
    (2, 3, 9, 9, 3, 2, 1, 1, True),
    (2, 2, 10, 7, (3, 2), (2, 1), (1, 0), 1, True),
    (1, 2, 11, 11, 3, 1, 1, 2, False),   # overlapping, dilated
    (2, 2, 7, 7, 3, 3, 1, (1, 2), True),
    (1, 1, 5, 5, 5, 1, 2, 1, False),
    (0, 3, 8, 8, 2, 2, 0, 1, False),     # empty batch
    (3, 4, 32, 32, 3, 2, 1, 1, True),
]


def pool_args(case, dtype, device=DEVICE, seed=0):
    n, c, h, w, k, s, p, d, ceil = case
    gen = torch.Generator().manual_seed(seed)
    # Distinct values, so that the maximum (and its gradient) is unambiguous.
    x = torch.randperm(max(1, n * c * h * w), generator=gen)[: n * c * h * w].reshape(n, c, h, w)
    x = (x.to(torch.float64) / 8).to(device=device, dtype=dtype)
    return x, dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d_matches_torch(case, dtype):
    """Values and indices are exact (no arithmetic). So are gradients where
    windows do not overlap; where they do, sums of a few terms may round
    differently, hence the tolerance."""
    x, kw = pool_args(case, dtype)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    y, idx = CF.max_pool2d(xa, return_indices=True, **kw)
    y_ref, idx_ref = F.max_pool2d(xb, return_indices=True, **kw)
    assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref)
    go = torch.randn(y.shape, dtype=torch.float64).to(y)
    (g,) = torch.autograd.grad(y, xa, go)
    (g_ref,) = torch.autograd.grad(y_ref, xb, go)
    torch.testing.assert_close(g, g_ref)


def test_max_pool2d_ties_and_nans_match_cpu():
    """Ties: the first maximum in row-major order. NaN: the last NaN."""
    x = torch.randint(0, 3, (2, 3, 9, 9)).double()
    x[0, 0, 1, 1] = x[0, 0, 2, 3] = x[1, 2, 5, 5] = float("nan")
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=1, dilation=2),
                   dict(kernel_size=3, stride=2, ceil_mode=True)):
            xc = x.to(dtype)
            y_cpu, i_cpu = CF.max_pool2d(xc, return_indices=True, **kw)
            y_gpu, i_gpu = CF.max_pool2d(xc.to(DEVICE), return_indices=True, **kw)
            assert torch.equal(i_gpu.cpu(), i_cpu)
            torch.testing.assert_close(y_gpu.cpu(), y_cpu, equal_nan=True, rtol=0, atol=0)
            _, i_ref = F.max_pool2d(xc.to(DEVICE), return_indices=True, **kw)
            assert torch.equal(i_gpu, i_ref)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d_backward_bitwise_equals_cpu(case):
    """The gather adds each input's gradients in output row-major order, the
    same order as the CPU kernel, so the two agree bit for bit."""
    x, kw = pool_args(case, torch.float32, device="cpu")
    _, idx = CF.max_pool2d(x, return_indices=True, **kw)
    go = torch.randn(idx.shape)
    window = [kw[k] if isinstance(kw[k], (list, tuple)) else [kw[k]] * 2
              for k in ("kernel_size", "stride", "padding", "dilation")]
    g_cpu = ops.max_pool2d_backward(go, idx, x.shape, *window, kw["ceil_mode"])
    g_gpu = ops.max_pool2d_backward(go.to(DEVICE), idx.to(DEVICE), x.shape, *window, kw["ceil_mode"])
    assert torch.equal(g_gpu.cpu(), g_cpu)


def test_gradcheck_conv2d():
    x, w, b, kw = conv_case((2, 4, 4, 6, 5, 3, 2, 1, (1, 2), 2, True), torch.float64)
    inputs = [t.requires_grad_() for t in (x, w, b)]
    fn = lambda x, w, b: CF.conv2d(x, w, b, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_gradcheck_max_pool2d():
    x, kw = pool_args((2, 2, 7, 7, 3, 2, 1, 1, True), torch.float64)
    x.requires_grad_()
    fn = lambda x: CF.max_pool2d(x, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [x])
    assert torch.autograd.gradgradcheck(fn, [x])


def test_opcheck_all_ops():
    x, w, b, _ = conv_case((2, 4, 6, 7, 7, 3, 1, 1, 1, 2, True), torch.float32)
    geo = ((2, 1), (1, 1), (1, 2), 2)
    y = ops.conv2d_forward(x, w, b, *geo)
    go = torch.randn_like(y)
    req = lambda t: t.clone().requires_grad_()  # noqa: E731
    torch.library.opcheck(ops.conv2d_forward, (req(x), req(w), req(b), *geo))
    torch.library.opcheck(ops.conv2d_forward, (x, w, None, *geo))
    torch.library.opcheck(ops.conv2d_backward_input, (req(go), req(w), list(x.shape), *geo))
    torch.library.opcheck(ops.conv2d_backward_weight, (req(go), req(x), list(w.shape), *geo))
    torch.library.opcheck(ops.conv2d_backward_bias, (req(go),))
    xp, _ = pool_args((2, 3, 9, 9, 3, 2, 1, 1, True), torch.float32)
    pool = ((3, 3), (2, 2), (1, 1), (1, 1), True)
    torch.library.opcheck(ops.max_pool2d_forward, (req(xp), *pool))
    out, idx = ops.max_pool2d_forward(xp, *pool)
    torch.library.opcheck(ops.max_pool2d_backward, (req(torch.randn_like(out)), idx, list(xp.shape), *pool))


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        custom_conv.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), custom_conv.nn.MaxPool2d(2),
        custom_conv.nn.Conv2d(8, 8, 3, stride=2, groups=2), torch.nn.Flatten(), torch.nn.LazyLinear(10),
    ).to(DEVICE)
    x = torch.randn(4, 3, 16, 16, device=DEVICE)
    model(x)  # materialise the lazy layer
    compiled = torch.compile(model, fullgraph=True)
    y_eager = model(x)
    grads_eager = torch.autograd.grad(y_eager.sum(), list(model.parameters()))
    y = compiled(x)
    grads = torch.autograd.grad(y.sum(), list(model.parameters()))
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_eager):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_runs_in_autocast_dtype(dtype):
    x, w, b, kw = conv_case((2, 3, 4, 8, 8, 3, 1, 1, 1, 1, True), torch.float32)
    w.requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        y = CF.conv2d(x, w, b, **kw)
        y_ref = F.conv2d(x, w, b, **kw)
        pooled = CF.max_pool2d(y, 2)
    assert y.dtype == y_ref.dtype == dtype
    assert pooled.dtype == dtype  # max_pool2d keeps its input's dtype, as torch's does
    torch.testing.assert_close(y, y_ref, rtol=2 * torch.finfo(dtype).eps, atol=0.05)
    (g,) = torch.autograd.grad(y.float().sum(), w)
    assert g.dtype == torch.float32
    # float64 is left alone, as by torch's autocast.
    x64, w64, b64, _ = conv_case((2, 3, 4, 8, 8, 3, 1, 1, 1, 1, True), torch.float64)
    with torch.autocast("cuda", dtype=dtype):
        assert CF.conv2d(x64, w64, b64, **kw).dtype == torch.float64


@contextlib.contextmanager
def deterministic():
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bitwise_deterministic(dtype):
    """No atomics anywhere: two runs give the same bits. The cases cover
    overlapping col2im, split-reduction weight gradients, several batch
    chunks, the bias reduction and overlapping pooling windows."""
    cases = [(64, 1, 6, 28, 28, 5, 1, 0, 1, 1, True), (20, 64, 16, 32, 32, 3, 1, 1, 1, 1, True),
             (8, 8, 8, 15, 15, 3, 1, 1, 1, 8, True)]

    def run():
        out = []
        for case in cases:
            x, w, b, kw = conv_case(case, dtype)
            y, grads, _ = conv_grads(CF.conv2d, x, w, b, kw)
            out += [y, *grads]
        xp, kw = pool_args((4, 8, 33, 33, 3, 1, 1, 1, False), dtype)
        xp.requires_grad_()
        yp = CF.max_pool2d(xp, **kw)
        out += [yp, *torch.autograd.grad(yp, xp, torch.ones_like(yp))]
        return out

    with deterministic():
        first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
