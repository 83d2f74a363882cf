"""The registered ops as PyTorch sees them: opcheck, their Meta kernels and
torch.compile (static and symbolic sizes), proof (through the profiler) that
no ATen convolution or pooling runs, and the message a missing build gives."""
import os
import subprocess
import sys

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import custom_conv
from cases import CONV2D_CASES, MAX_POOL2D_CASES, MAX_POOL2D_PADDING_ONLY_CASES
from custom_conv import functional as CF
from helpers import conv_tensors, pool_input

ops = torch.ops.custom_conv
ARGS = ([2, 1], [1, 0], [1, 2], 2)  # stride, padding, dilation, groups
POOL_CASES = {**MAX_POOL2D_CASES, **{f"padding only: {k}": v for k, v in MAX_POOL2D_PADDING_ONLY_CASES.items()}}


def _conv_samples():
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    y = ops.conv2d_forward(x, w, b, *ARGS)
    gy = torch.randn_like(y, requires_grad=True)
    return x, w, b, gy


def _opcheck_cases():
    x, w, b, gy = _conv_samples()
    xp = torch.randn(2, 3, 9, 8, requires_grad=True)
    out, idx = ops.max_pool2d_forward(xp, [3, 2], [2, 2], [1, 1], [1, 2], True)
    return {
        "conv2d_forward": (ops.conv2d_forward, (x, w, b, *ARGS)),
        "conv2d_forward without bias": (ops.conv2d_forward, (x, w, None, *ARGS)),
        "conv2d_reverse_mode": (ops.conv2d_reverse_mode, (x, w, b, *ARGS)),
        "conv2d_reverse_mode without bias": (ops.conv2d_reverse_mode, (x, w, None, *ARGS)),
        "conv2d_backward_input": (ops.conv2d_backward_input, (gy, w, list(x.shape), *ARGS)),
        "conv2d_backward_weight": (ops.conv2d_backward_weight, (gy, x, list(w.shape), *ARGS)),
        "conv2d_backward_bias": (ops.conv2d_backward_bias, (gy,)),
        "max_pool2d_forward": (ops.max_pool2d_forward, (xp, [3, 2], [2, 2], [1, 1], [1, 2], True)),
        "max_pool2d_reverse_mode": (ops.max_pool2d_reverse_mode, (xp, [3, 2], [2, 2], [1, 1], [1, 2], True)),
        "max_pool2d_backward": (ops.max_pool2d_backward,
                                (torch.randn_like(out, requires_grad=True), idx, list(xp.shape),
                                 [3, 2], [2, 2], [1, 1], [1, 2], True)),
        "avg_pool2d_forward": (ops.avg_pool2d_forward, (xp, [3, 2], [2, 2], [1, 1], True, False, None)),
        "avg_pool2d_forward with divisor": (ops.avg_pool2d_forward, (xp, [3, 3], [2, 1], [1, 0], False, True, 4)),
        "avg_pool2d_backward": (ops.avg_pool2d_backward,
                                (torch.randn_like(out, requires_grad=True), list(xp.shape),
                                 [3, 2], [2, 2], [1, 1], True, False, None)),
        "adaptive_avg_pool2d_forward": (ops.adaptive_avg_pool2d_forward, (xp, [4, 3])),
        "adaptive_avg_pool2d_backward": (ops.adaptive_avg_pool2d_backward,
                                         (torch.randn(2, 3, 4, 3, requires_grad=True), list(xp.shape))),
        "adaptive_max_pool2d_forward": (ops.adaptive_max_pool2d_forward, (xp, [4, 3])),
        "adaptive_max_pool2d_backward": (ops.adaptive_max_pool2d_backward,
                                         (torch.randn(2, 3, 4, 3, requires_grad=True),
                                          ops.adaptive_max_pool2d_forward(xp, [4, 3])[1], list(xp.shape))),
    }


@pytest.mark.parametrize("name", list(_opcheck_cases()))
def test_opcheck(name):
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("name", list(CONV2D_CASES) + [f"pool: {n}" for n in POOL_CASES])
def test_the_meta_kernels_give_the_kernels_sizes(name):
    """torch.compile traces with fake tensors, through our Meta kernels
    (csrc/meta.cpp); they size their results with the kernels' own formula
    (geometry.h), so every case gets the sizes the kernels give it."""
    if name.startswith("pool: "):
        case = POOL_CASES[name[len("pool: "):]]
        tensors, op = [pool_input(case, torch.float32)], lambda x: CF.max_pool2d(x, return_indices=True,
                                                                                   **case.kwargs)
    else:
        case = CONV2D_CASES[name]
        tensors, op = conv_tensors(case, torch.float32), lambda x, w, b: CF.conv2d(x, w, b, **case.kwargs)
    real = op(*tensors)
    with FakeTensorMode() as mode:
        fake = op(*[mode.from_tensor(t) for t in tensors])
    real, fake = (r if isinstance(r, tuple) else (r,) for r in (real, fake))
    assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            custom_conv.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), custom_conv.nn.MaxPool2d(2),
            custom_conv.nn.Conv2d(8, 8, 3, groups=2, stride=2, padding=1), torch.nn.ReLU(),
            custom_conv.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True))
        self.head = torch.nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager_forward_and_backward():
    torch._dynamo.reset()
    model = SmallNet()
    x = torch.randn(4, 3, 12, 12)
    compiled = torch.compile(model, fullgraph=True)
    # Inductor's on-disk caches outlive a rebuild of our ops: a graph cached
    # before a schema change would call the op with its old arguments.
    with torch._inductor.config.patch(force_disable_caches=True):
        out_c = compiled(x)
        out_c.sum().backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e = model(x)
    out_e.sum().backward()
    torch.testing.assert_close(out_c, out_e)
    for gc, ge in zip(grads_c, (p.grad for p in model.parameters())):
        torch.testing.assert_close(gc, ge)


def test_symbolic_sizes_trace_to_the_kernels_sizes_and_layouts():
    """With dynamic shapes torch.compile traces the forward and backward on
    sizes that are symbols, through our Meta kernels and autograd: the
    traced graphs must give the sizes, layouts and values the kernels give,
    at sizes they were not traced at (odd and even planes, ceil_mode's
    partial window, a channels_last input)."""
    torch._dynamo.reset()
    counters.clear()

    def forward(x, w):
        return CF.max_pool2d(torch.relu(CF.conv2d(x, w, padding=1, stride=2)), 3, stride=2, ceil_mode=True)

    def step(forward, x, w):
        y = forward(x, w)
        return (y, *torch.autograd.grad(y.sum(), (x, w)))

    compiled = torch.compile(forward, backend="aot_eager", dynamic=True, fullgraph=True)
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    for size in (17, 20, 23):
        x = torch.randn(2, 3, size, size + 3).to(memory_format=torch.channels_last).requires_grad_()
        for got, want in zip(step(compiled, x, w), step(forward, x, w)):
            assert (got.shape, got.stride()) == (want.shape, want.stride())
            torch.testing.assert_close(got, want)
    assert counters["stats"]["unique_graphs"] == 1  # traced once: the sizes were symbols


def test_no_aten_convolution_pooling_or_unfold_runs_in_forward_or_backward():
    model = SmallNet()
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x).sum().backward()
    names = {event.name for event in prof.events()}
    forbidden = ("conv", "pool", "im2col", "col2im", "unfold", "fold", "mkldnn", "nnpack")
    offenders = sorted(n for n in names
                       if n.startswith("aten::") and any(word in n.lower() for word in forbidden))
    assert offenders == []
    ours = {n for n in names if n.startswith("custom_conv::")}
    assert ours - {"custom_conv::gemm"} == {
        "custom_conv::conv2d_reverse_mode", "custom_conv::conv2d_forward", "custom_conv::conv2d_backward_input",
        "custom_conv::conv2d_backward_weight", "custom_conv::conv2d_backward_bias",
        "custom_conv::max_pool2d_reverse_mode", "custom_conv::max_pool2d_forward", "custom_conv::max_pool2d_backward"}


MATMULS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::matmul", "aten::addmm_",
           "aten::baddbmm_", "aten::mm_out", "aten::bmm_out", "aten::addmv", "aten::dot", "aten::mv"}


def _inside_our_ops(event):
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("custom_conv::"):
            return True
        parent = parent.cpu_parent
    return False


@pytest.mark.parametrize("route", custom_conv.explain.ALGORITHMS)
def test_no_aten_matrix_product_runs_inside_our_ops(route):
    """Every product of every route is our own GEMM (csrc/cpu/gemm/): the
    profiler sees no ATen (BLAS) matrix product under any of our ops, each
    route forced in turn on layers it runs, float32 and float64. (The
    model's Linear layer is torch's and multiplies outside our ops.)"""
    layers = [(torch.randn(2, 32, 10, 10), torch.randn(32, 32, 3, 3), dict(padding=1)),  # winograd, direct, im2col
              (torch.randn(2, 16, 9, 9), torch.randn(16, 16, 1, 1), {}),  # a 1x1 kernel
              (torch.randn(2, 8, 9, 9), torch.randn(8, 1, 3, 3), dict(groups=8, padding=1))]  # depthwise
    with custom_conv.forced_algorithm(route), \
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for dtype in (torch.float32, torch.float64):
            for x, w, kwargs in layers:
                x, w = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
                CF.conv2d(x, w, torch.zeros(w.shape[0], dtype=dtype), **kwargs).sum().backward()
            model = SmallNet().to(dtype)
            model(torch.randn(2, 3, 12, 12, dtype=dtype)).sum().backward()
    events = list(prof.events())
    assert any(e.name == "custom_conv::conv2d_forward" for e in events)
    if route in ("im2col", "winograd"):  # their products: our GEMM, inside our ops
        assert any(e.name == "custom_conv::gemm" and _inside_our_ops(e) for e in events)
    assert sorted({e.name for e in events if e.name in MATMULS and _inside_our_ops(e)}) == []
    assert {e.name for e in events if e.name in MATMULS}  # the profiler does see torch's own (the Linear's)


def test_double_backward_through_a_model_matches_torch():
    # A gradient penalty: differentiate the norm of an input gradient.
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)

    def penalty(conv, pool):
        y = pool(torch.tanh(conv(x, w, padding=1)), 2)
        (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), (x, w))

    for ours, theirs in zip(penalty(CF.conv2d, CF.max_pool2d), penalty(F.conv2d, F.max_pool2d)):
        torch.testing.assert_close(ours, theirs)


def test_plain_training_records_the_cpp_derivative_and_the_rest_the_python_one():
    """Where only reverse mode can be asked for, a conv and a max-pool record
    the C++ nodes of conv2d_reverse_mode and max_pool2d_reverse_mode
    (csrc/autograd.cpp); under forward-mode AD, and inside a torch.func
    transform, the Python Functions, the only ones with a jvp and the ones
    torch.func can see. Both give torch's gradients (the gradient tests run
    the first, test_func.py the second)."""
    x, w = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    assert "Conv2dFunction" in CF.conv2d(x, w).grad_fn.name()
    assert "MaxPool2dFunction" in CF.max_pool2d(x, 2).grad_fn.name()
    with torch.no_grad():
        assert CF.conv2d(x, w).grad_fn is None and CF.max_pool2d(x, 2).grad_fn is None
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        assert CF.conv2d(dual, w).grad_fn.name() == "_Conv2dForwardBackward"
        assert CF.max_pool2d(dual, 2).grad_fn.name() == "_MaxPool2dForwardBackward"
    recorded = []

    def layer(x):
        y = CF.conv2d(x, w)
        z = CF.max_pool2d(x, 2)
        recorded.extend((y.grad_fn, z.grad_fn))
        return y.sum() + z.sum()
    torch.func.vjp(layer, x)
    assert all(node is None or "Conv2dFunction" not in node.name() and "MaxPool2dFunction" not in node.name()
               for node in recorded)


def test_a_training_step_copies_the_output_gradient_to_channels_last_once_for_both_passes():
    """Where both backward passes gather from a channels-last copy of the
    output gradient (the GPU's tensor cores, given an NCHW gradient whose
    groups' channels are whole 16-byte chunks), the C++ backward makes that
    copy once and hands it to both; otherwise each pass gets the gradient as
    it came. Meta tensors get the GPU's chooser (test_algorithm_choice.py).
    The bias gradient reads the gradient as it came."""
    def backward_layouts(channels, dtype=torch.half, needs=(True, True), out_channels=16):
        x = torch.empty(2, channels, 8, 8, device="meta", dtype=dtype).requires_grad_(needs[0])
        w = torch.empty(out_channels, channels, 3, 3, device="meta", dtype=dtype).requires_grad_(needs[1])
        b = torch.empty(out_channels, device="meta", dtype=dtype, requires_grad=True)
        y = CF.conv2d(x, w, b, padding=1)
        assert "Conv2dFunction" in y.grad_fn.name()

        class Layouts(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.seen = []  # (our op, whether its first tensor is channels-last)

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.namespace == "custom_conv":
                    self.seen.append((func.name().split("::")[1],
                                      args[0].is_contiguous(memory_format=torch.channels_last)))
                return func(*args, **(kwargs or {}))
        with Layouts() as log:
            torch.autograd.grad(y, [t for t in (x, w, b) if t.requires_grad], torch.empty_like(y))
        return log.seen

    shared = [("conv2d_backward_input", True), ("conv2d_backward_weight", True), ("conv2d_backward_bias", False)]
    apart = [("conv2d_backward_input", False), ("conv2d_backward_weight", False), ("conv2d_backward_bias", False)]
    assert backward_layouts(16) == shared
    assert backward_layouts(16, torch.bfloat16) == shared
    assert backward_layouts(16, torch.float64) == apart  # the CUDA cores read NCHW
    assert backward_layouts(12) == apart  # the weight gradient gathers NCHW: 12 input channels are no whole chunks
    assert backward_layouts(16, out_channels=12) == apart  # the input gradient gathers NCHW
    assert backward_layouts(16, needs=(False, True)) == apart[1:]  # one pass: it copies for itself
    with custom_conv.disabled_algorithms("channels_last_gather"):
        assert backward_layouts(16) == apart


def test_a_missing_build_says_how_to_build():
    # A fresh interpreter in which the compiled module cannot be imported.
    code = ("import sys; sys.modules['custom_conv._C'] = None\n"
            "try:\n    import custom_conv\nexcept ImportError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "compiled kernels (custom_conv._C) are missing" in result.stdout
    assert "make build" in result.stdout and "pip install --no-build-isolation -e ." in result.stdout
