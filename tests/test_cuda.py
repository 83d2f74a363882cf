"""What only a GPU shows about the CUDA kernels (csrc/cuda): that they agree
with our CPU kernels, the paths only large problems take, the bounds of
reduced precision, autocast, determinism, and the ops' registration on CUDA.
Every case of tests/cases.py also runs on CUDA against torch (cuDNN) in
test_conv2d.py and test_max_pool2d.py. Skipped without a CUDA GPU."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import custom_conv
from cases import CONV2D_CASES, MAX_POOL2D_CASES, conv, pool
from custom_conv import functional as CF
from helpers import (assert_conv2d_matches_torch, assert_within_eps_of_exact, conv_tensors, cudnn_tf32, dtypes,
                     forward_and_grads, pool_input)

ops = torch.ops.custom_conv

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("no_tf32"),
]

DEVICE = "cuda"

# im2col's products on the GPU: gathered as the GEMM's tiles load (the
# default), or through a column matrix in memory, in batch chunks.
ROUTES = ["implicit GEMM", "column matrix"]


def on_route(route):
    return custom_conv.disabled_algorithms("implicit_gemm") if route == "column matrix" else contextlib.nullcontext()


# 64 x 9 rows x 32 x 32 columns per sample: Conv2dGeometry::batch_chunk()
# splits a batch of 20 into several chunks, so the weight gradient is
# accumulated across GEMM calls.
SEVERAL_BATCH_CHUNKS = conv((20, 64, 32, 32), (16, 64, 3, 3), padding=1)
# A tiny output (6 x 25 weights) with a long reduction (64 x 28 x 28): the
# weight-gradient GEMM splits the reduction across blocks.
SPLIT_REDUCTION = conv((64, 1, 28, 28), (6, 1, 5, 5))
# Cases of tests/cases.py, by name.
AGREEMENT_CASES = ["plain 3x3", "padding keeps size", "groups with asymmetric kernel, stride and padding",
                   "asymmetric kernel, stride, padding and dilation", "depthwise", "depthwise multiplier 2, stride 2"]
REDUCED_PRECISION_CASES = ["plain 3x3", "groups with asymmetric kernel, stride and padding", "depthwise",
                           "several GEMM tiles, ragged edges", "backward-input split-K", "groups with split-K",
                           "last chunk of one sample"]


def _pair(v):
    return (v[0], v[-1]) if isinstance(v, (tuple, list)) else (v, v)


def conv_geometry(kwargs):
    """F.conv2d's keyword arguments as the ops take them: stride, padding, dilation, groups."""
    return (_pair(kwargs.get("stride", 1)), _pair(kwargs.get("padding", 0)), _pair(kwargs.get("dilation", 1)),
            kwargs.get("groups", 1))


def pool_window(kwargs):
    """F.max_pool2d's keyword arguments as the ops take them: kernel, stride, padding, dilation, ceil mode."""
    kernel = _pair(kwargs["kernel_size"])
    return (kernel, _pair(kwargs.get("stride") or kernel), _pair(kwargs.get("padding", 0)),
            _pair(kwargs.get("dilation", 1)), kwargs.get("ceil_mode", False))


# Paths of the CUDA kernels that only large or odd problems take (gemm.cuh's
# split reduction and launch split, conv2d.cu's batch chunks of at most
# 4 Mi column values), with the arithmetic that reaches them.
GPU_PATHS = {
    # Backward input: cols (72 x 2*16) = W^T (72 x 512) @ grad_out: 2 output
    # tiles, a reduction of 512 = 2 slices of 256.
    "backward-input split-K": conv((2, 8, 4, 4), (512, 8, 3, 3), padding=1),
    # Weight gradient per group: 3 x 25 outputs summed over 64 * 576 positions.
    "groups with split-K": conv((64, 2, 28, 28), (6, 1, 5, 5), groups=2),
    # A batched GEMM of 70,000 groups: gridDim.z is at most 65,535.
    "70,000 groups: the GEMM launch splits along z": conv((1, 70000, 3, 3), (70000, 1, 2, 2), groups=70000),
    # 576 rows x 4096 columns = 2.4 Mi values per sample: one sample per chunk.
    "one sample per chunk, batch 3": conv((3, 64, 64, 64), (8, 64, 3, 3), padding=1),
    # 144 x 10816 = 1.6 Mi values per sample: chunks of 2, 2 and a last one of 1.
    "last chunk of one sample": conv((5, 16, 104, 104), (4, 16, 3, 3), padding=1),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", list(GPU_PATHS))
def test_conv2d_on_large_problem_paths_matches_torch(case, route):
    with on_route(route):
        assert_conv2d_matches_torch(GPU_PATHS[case], conv_tensors(GPU_PATHS[case], torch.float64, DEVICE),
                                    rtol=1e-10, atol=1e-9)


def test_conv2d_runs_on_the_current_stream():
    """Kernels are queued on the caller's stream, not the default one: a
    result read on that stream, before any device-wide synchronisation, is
    complete."""
    case = CONV2D_CASES["several GEMM tiles, ragged edges"]
    x, w, b = conv_tensors(case, torch.float64, DEVICE)
    expected = F.conv2d(x, w, b, **case.kwargs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(10_000_000)  # keep the stream busy, so a kernel on another one would run first
        y = CF.conv2d(x, w, b, **case.kwargs)
        copy = y.clone()
    stream.synchronize()
    torch.testing.assert_close(copy, expected, rtol=1e-10, atol=1e-10)


def test_conv2d_backward_ops_take_non_contiguous_tensors():
    case = CONV2D_CASES["groups"]
    x, w, b = conv_tensors(case, torch.float64, DEVICE)
    geo = conv_geometry(case.kwargs)
    go = torch.randn(F.conv2d(x, w, b, **case.kwargs).shape, dtype=torch.float64, device=DEVICE)
    # The same values, laid out transposed in memory.
    go_t, w_t, x_t = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (go, w, x))
    b_t = torch.stack([b, b], 1)[:, 0]
    assert not any(t.is_contiguous() for t in (go_t, w_t, x_t, b_t))
    torch.testing.assert_close(ops.conv2d_forward(x_t, w_t, b_t, *geo), ops.conv2d_forward(x, w, b, *geo))
    torch.testing.assert_close(ops.conv2d_backward_input(go_t, w_t, x.shape, *geo),
                               ops.conv2d_backward_input(go, w, x.shape, *geo))
    torch.testing.assert_close(ops.conv2d_backward_weight(go_t, x_t, w.shape, *geo),
                               ops.conv2d_backward_weight(go, x, w.shape, *geo))
    torch.testing.assert_close(ops.conv2d_backward_bias(go_t), ops.conv2d_backward_bias(go))


@pytest.mark.parametrize("route", ROUTES)
def test_conv2d_over_several_batch_chunks_matches_torch(route):
    # Sums over 20 * 1024 positions: the gradients' absolute error grows with them.
    with on_route(route):
        assert_conv2d_matches_torch(SEVERAL_BATCH_CHUNKS, conv_tensors(SEVERAL_BATCH_CHUNKS, torch.float32, DEVICE),
                                    rtol=1e-4, atol=1e-4, grad_tolerances=dict(rtol=1e-4, atol=1e-2))


def test_conv2d_with_split_reduction_matches_torch():
    assert_conv2d_matches_torch(SPLIT_REDUCTION, conv_tensors(SPLIT_REDUCTION, torch.float64, DEVICE),
                                rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("case", AGREEMENT_CASES)
def test_conv2d_cpu_and_cuda_agree(case, bias):
    """Our CPU and CUDA ops, op by op (float64: only summation order differs)."""
    x, w, b = conv_tensors(CONV2D_CASES[case], torch.float64, "cpu", bias)
    geo = conv_geometry(CONV2D_CASES[case].kwargs)
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


ALL_CASES = {**CONV2D_CASES, **GPU_PATHS}


@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16"))
@pytest.mark.parametrize("case", REDUCED_PRECISION_CASES)
def test_conv2d_in_half_and_bfloat16_is_within_2_eps_of_exact(case, dtype):
    """Half and bfloat16 accumulate in float and round once: within 2 eps of
    float64 on the same rounded numbers (helpers.assert_within_eps_of_exact;
    the factor 2 is slack over the single rounding's eps / 2)."""
    kw = ALL_CASES[case].kwargs
    assert_within_eps_of_exact(lambda x, w, b: CF.conv2d(x, w, b, **kw), lambda x, w, b: F.conv2d(x, w, b, **kw),
                               conv_tensors(ALL_CASES[case], dtype, DEVICE))


@pytest.mark.parametrize("case", REDUCED_PRECISION_CASES)
def test_float32_runs_in_tf32_where_torch_allows_it(case):
    """With torch.backends.cudnn.allow_tf32 (torch's default; this module
    turns it off elsewhere) float32 products run on the tensor cores in TF32:
    within 2 TF32 eps (2^-10, in units of float's eps 2^-23) of float64 on
    the same numbers, relative to the terms' magnitudes, as half is."""
    kw = ALL_CASES[case].kwargs
    with cudnn_tf32(True):
        assert_within_eps_of_exact(lambda x, w, b: CF.conv2d(x, w, b, **kw), lambda x, w, b: F.conv2d(x, w, b, **kw),
                                   conv_tensors(ALL_CASES[case], torch.float32, DEVICE), eps_factor=2 * 2 ** 13)


# 576 rows x 4096 columns = 2.4 Mi column values a sample: conv2d.cu's chunks
# of at most 4 Mi values hold one sample each, so the weight gradient of a
# batch of 8 is the sum of 8 GEMMs.
EIGHT_CHUNKS = conv((8, 64, 64, 64), (8, 64, 3, 3), padding=1)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16"))
def test_half_and_bfloat16_weight_gradient_over_many_chunks_is_rounded_once(dtype, route):
    """The chunks' GEMMs add onto one float sum, rounded to 16 bits at the
    end. On non-negative numbers nothing cancels, so the bound is relative:
    within 1 eps (twice the single rounding's eps / 2) of float64 on the same
    rounded numbers. Rounding the running sum after every chunk, as the GEMM
    did when it added onto a half or bfloat16 gradient, strays further (each
    of the 8 roundings costs up to eps / 2)."""
    kw = EIGHT_CHUNKS.kwargs
    with on_route(route):
        assert_within_eps_of_exact(lambda x, w, b: CF.conv2d(x, w, b, **kw),
                                   lambda x, w, b: F.conv2d(x, w, b, **kw),
                                   conv_tensors(EIGHT_CHUNKS, dtype, DEVICE), eps_factor=1, positive=True)


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


@pytest.mark.parametrize("dtype", dtypes("float32", "float64"))
@pytest.mark.parametrize("case", list(MAX_POOL2D_CASES))
def test_max_pool2d_backward_bitwise_equals_cpu(case, dtype):
    """The gather adds each input's gradients in output row-major order, the
    same order as the CPU kernel, so the two agree bit for bit."""
    x = pool_input(MAX_POOL2D_CASES[case], dtype)
    _, idx = CF.max_pool2d(x, return_indices=True, **MAX_POOL2D_CASES[case].kwargs)
    go = torch.randn(idx.shape, dtype=dtype)
    window = pool_window(MAX_POOL2D_CASES[case].kwargs)
    g_cpu = ops.max_pool2d_backward(go, idx, x.shape, *window)
    g_gpu = ops.max_pool2d_backward(go.to(DEVICE), idx.to(DEVICE), x.shape, *window)
    assert torch.equal(g_gpu.cpu(), g_cpu)


def test_every_op_passes_opcheck():
    spec = CONV2D_CASES["depthwise, strides 2 and 3, dilation 2"]  # every geometry argument other than 1
    x, w, b = conv_tensors(spec, torch.float32, DEVICE)
    geo = conv_geometry(spec.kwargs)
    y = ops.conv2d_forward(x, w, b, *geo)
    go = torch.randn_like(y)
    req = lambda t: t.clone().requires_grad_()  # noqa: E731
    torch.library.opcheck(ops.conv2d_forward, (req(x), req(w), req(b), *geo))
    torch.library.opcheck(ops.conv2d_forward, (x, w, None, *geo))
    torch.library.opcheck(ops.conv2d_backward_input, (req(go), req(w), list(x.shape), *geo))
    torch.library.opcheck(ops.conv2d_backward_weight, (req(go), req(x), list(w.shape), *geo))
    torch.library.opcheck(ops.conv2d_backward_bias, (req(go),))
    pool_spec = MAX_POOL2D_CASES["ceil mode adds nothing where the windows fit exactly"]
    xp = pool_input(pool_spec, torch.float32, DEVICE)
    window = pool_window(pool_spec.kwargs)
    torch.library.opcheck(ops.max_pool2d_forward, (req(xp), *window))
    out, idx = ops.max_pool2d_forward(xp, *window)
    torch.library.opcheck(ops.max_pool2d_backward, (req(torch.randn_like(out)), idx, list(xp.shape), *window))


def test_torch_compile_fullgraph_gives_the_eager_results():
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


@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16"))
def test_autocast_runs_in_autocast_dtype(dtype):
    spec = CONV2D_CASES["padding keeps size"]
    kw = spec.kwargs
    x, w, b = conv_tensors(spec, torch.float32, DEVICE)
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
    x64, w64, b64 = conv_tensors(spec, torch.float64, DEVICE)
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


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", dtypes("float32", "float16"))
def test_two_runs_give_the_same_bits(dtype, route):
    """No atomics anywhere: two runs give the same bits. The cases cover
    overlapping col2im, split-reduction weight gradients, several batch
    chunks, the bias reduction and overlapping pooling windows."""
    convs = [SPLIT_REDUCTION, SEVERAL_BATCH_CHUNKS, conv((8, 8, 15, 15), (8, 1, 3, 3), padding=1, groups=8)]
    overlapping_pool = pool((4, 8, 33, 33), kernel_size=3, stride=1, padding=1)

    def run():
        out = []
        for case in convs:
            y, grads, _ = forward_and_grads(lambda x, w, b: CF.conv2d(x, w, b, **case.kwargs),
                                            conv_tensors(case, dtype, DEVICE))
            out += [y, *grads]
        y, grads, _ = forward_and_grads(lambda x: CF.max_pool2d(x, **overlapping_pool.kwargs),
                                        [pool_input(overlapping_pool, dtype, DEVICE)])
        return out + [y, *grads]

    with deterministic(), on_route(route):
        first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
