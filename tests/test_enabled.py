"""custom_conv.enabled(): unchanged code on our kernels.

convert() swaps modules, so the F.max_pool2d call inside the forward of
PyTorch's classic MNIST network stays on torch's kernels; under enabled()
every conv and max-pool call runs on ours, which the profiler shows, with the
same values and gradients as torch's. Inputs our kernels do not take go to
torch's, with one warning per kind."""
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import custom_conv
from custom_conv import mode
from helpers import torch_conv_or_pool_ops

OURS = {"custom_conv::conv2d_forward", "custom_conv::conv2d_backward_input",
        "custom_conv::conv2d_backward_weight", "custom_conv::conv2d_backward_bias",
        "custom_conv::max_pool2d_forward", "custom_conv::max_pool2d_backward"}


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees the once-per-kind warnings anew."""
    saved = set(mode._warned)
    mode._warned.clear()
    yield
    mode._warned.clear()
    mode._warned.update(saved)


def op_names(fn):
    """The names of the ops that ran (forward and backward) while fn ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


class MnistNet(nn.Module):
    """The network of PyTorch's classic MNIST example: two convolutions, then
    a max-pool called as F.max_pool2d in forward, dropout and two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


class EveryEntryPoint(nn.Module):
    """Each way torch offers to call a 2-D convolution or max-pool, in one forward."""

    def __init__(self):
        super().__init__()
        self.reflect = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.grouped = nn.Conv2d(8, 8, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2), groups=4, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.pool_indices = nn.MaxPool2d(2, return_indices=True)
        self.weight = nn.Parameter(torch.randn(8, 8, 2, 2) / 4)
        self.weight3 = nn.Parameter(torch.randn(8, 8, 3, 3) / 8)

    def forward(self, x):
        x = self.reflect(x)                                        # F.pad, then torch.conv2d
        x = F.conv2d(x, self.weight, padding="same")               # string padding, even kernel
        x = torch.relu(self.grouped(x))
        x, i1 = F.max_pool2d(x, 2, stride=1, return_indices=True)
        x = self.pool(x)
        x = torch.conv2d(x, self.weight3, None, 1, 1)
        x, i2 = F.max_pool2d_with_indices(x, (2, 1), stride=1)
        x = torch.max_pool2d(x, 2, 1, 1, 1, True)
        x = torch.convolution(x, self.weight3, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
        x, i3 = torch.ops.aten.max_pool2d_with_indices(x, [2, 2])
        x = torch.ops.aten.conv2d(x, self.weight3, None, [1, 1], [2, 2], [2, 2])
        x, i4 = self.pool_indices(x)
        unbatched = F.max_pool2d(F.conv2d(x[0], self.weight3, padding=1), 2)  # (C, H, W) input
        return x.sum((2, 3)) + unbatched.sum((1, 2)), (i1, i2, i3, i4)


def run_with_grads(model, x, seed=0):
    """Output, indices (if any) and the gradients of the input and every
    parameter, for loss = sum(output^2); dropout masks drawn from `seed`."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    out = model(x)
    out, indices = out if isinstance(out, tuple) else (out, ())
    out.pow(2).sum().backward()
    return out, indices, x.grad, {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_as_torch(model, x):
    """Runs `model` under enabled() and plain, checks that the first ran only
    our ops and the second only torch's, and that values and gradients agree."""
    results = []
    with custom_conv.enabled():
        names = op_names(lambda: results.append(run_with_grads(model, x)))
    torch_names = op_names(lambda: results.append(run_with_grads(model, x)))
    (out, idx, gx, grads), (ref, ref_idx, ref_gx, ref_grads) = results
    assert torch_conv_or_pool_ops(names) == []
    has_bias = any(isinstance(m, nn.Conv2d) and m.bias is not None for m in model.modules())
    assert OURS - (set() if has_bias else {"custom_conv::conv2d_backward_bias"}) <= names
    assert torch_conv_or_pool_ops(torch_names) and not any(n.startswith("custom_conv::") for n in torch_names)
    torch.testing.assert_close(out, ref)
    for a, b in zip(idx, ref_idx):
        assert torch.equal(a, b)
    torch.testing.assert_close(gx, ref_gx)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=lambda m: f"{name}: {m}")


def test_convert_alone_leaves_functional_calls_on_torchs_kernels():
    # The reason enabled() exists: modules are swapped, F.max_pool2d is not.
    model = custom_conv.convert(MnistNet())
    names = op_names(lambda: model(torch.randn(2, 1, 28, 28)).sum().backward())
    assert "custom_conv::conv2d_forward" in names
    assert "aten::max_pool2d" in names and "custom_conv::max_pool2d_forward" not in names


def test_mnist_example_network_runs_entirely_on_our_ops_with_torchs_gradients():
    assert_same_as_torch(MnistNet().double().train(), torch.randn(3, 1, 28, 28, dtype=torch.float64))


# ResNet in eval mode: in training mode, its batch norm over 2 images of 1x1
# pixels in the last stage cancels so much that float64 gradients keep ~1e-9.
@pytest.mark.parametrize("name, train", [("resnet18", False), ("squeezenet1_1", True)])
def test_torchvision_model_runs_entirely_on_our_ops_with_torchs_gradients(name, train):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).double().train(train)
    assert_same_as_torch(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_resnet18_head_pools_on_our_ops():
    """ResNet's head is an AdaptiveAvgPool2d to 1x1, which torch computes as
    a mean: under enabled() neither that nor any other pooling op of torch's
    runs, forward or backward, and ours do."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with custom_conv.enabled():
        names = op_names(lambda: run_with_grads(model, x))
    assert not [n for n in names if n.startswith("aten::") and ("pool" in n or n == "aten::mean")], names
    assert {"custom_conv::adaptive_avg_pool2d_forward", "custom_conv::adaptive_avg_pool2d_backward"} <= names


def test_every_entry_point_runs_on_our_ops_with_torchs_values_indices_and_gradients():
    assert_same_as_torch(EveryEntryPoint().double(), torch.randn(2, 3, 40, 38, dtype=torch.float64))


def test_float32_model_matches_torch_and_autocast_keeps_its_dtype():
    model = MnistNet().eval()
    x = torch.randn(2, 1, 28, 28)
    with custom_conv.enabled():
        out = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv_bf16 = model.conv1(x)
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    assert conv_bf16.dtype == torch.bfloat16  # our conv, like torch's, runs in the autocast dtype


def test_leaving_the_block_restores_torchs_kernels():
    x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    with custom_conv.enabled():
        with custom_conv.enabled():  # nesting is harmless
            inner = op_names(lambda: F.max_pool2d(F.conv2d(x, w), 2))
        middle = op_names(lambda: F.max_pool2d(F.conv2d(x, w), 2))
    after = op_names(lambda: F.max_pool2d(F.conv2d(x, w), 2))
    assert {"custom_conv::conv2d_forward", "custom_conv::max_pool2d_forward"} <= inner & middle
    assert torch_conv_or_pool_ops(inner | middle) == []
    assert "aten::convolution" in after and "aten::max_pool2d" in after
    assert not any(n.startswith("custom_conv::") for n in after)


def test_a_backward_run_after_the_block_is_still_ours():
    model = MnistNet().eval()
    with custom_conv.enabled():
        loss = model(torch.randn(2, 1, 28, 28)).sum()
    names = op_names(loss.backward)
    assert {"custom_conv::conv2d_backward_weight", "custom_conv::max_pool2d_backward"} <= names
    assert torch_conv_or_pool_ops(names) == []


def test_our_own_layers_under_the_mode_run_once_on_our_ops():
    model = nn.Sequential(custom_conv.nn.Conv2d(2, 3, 3), custom_conv.nn.MaxPool2d(2))
    x = torch.randn(1, 2, 8, 8)
    with custom_conv.enabled():
        with torch.profiler.profile() as prof:
            out = model(x)
    name = "custom_conv::conv2d_forward"

    def outermost(event):  # not the call of the op's autograd Function to its kernel, below autograd
        parent = event.cpu_parent
        while parent is not None and parent.name != name:
            parent = parent.cpu_parent
        return parent is None
    assert len([e for e in prof.events() if e.name == name and outermost(e)]) == 1
    torch.testing.assert_close(out, F.max_pool2d(F.conv2d(x, model[0].weight, model[0].bias), 2))


def _quantized(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensor creation; still supported
        return torch.quantize_per_tensor(x, 0.1, 0, torch.quint8)


FALLBACKS = {
    # kind named in the warning: (call, its inputs)
    "torch.int64": (lambda x, w: F.conv2d(x, w), lambda: (torch.randint(-5, 5, (1, 2, 7, 7)),
                                                          torch.randint(-2, 2, (3, 2, 3, 3)))),
    "torch.int32": (lambda x: F.max_pool2d(x, 2), lambda: (torch.randint(-9, 9, (1, 2, 7, 7), dtype=torch.int32),)),
    "torch.complex64": (lambda x, w: F.conv2d(x, w, padding=1),
                        lambda: (torch.randn(1, 2, 5, 5, dtype=torch.complex64),
                                 torch.randn(3, 2, 3, 3, dtype=torch.complex64))),
    "quantized": (lambda x: nn.MaxPool2d(2)(x), lambda: (_quantized(torch.randn(1, 2, 6, 6)),)),
    "torch.sparse_coo": (lambda x, w: F.conv2d(x, w), lambda: (torch.randn(1, 2, 6, 6).to_sparse(),
                                                               torch.randn(3, 2, 3, 3))),
}


def _run(call, inputs):
    try:
        return call(*inputs), None
    except Exception as error:  # torch's own error, e.g. for sparse input
        return None, f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("kind", list(FALLBACKS))
def test_inputs_our_kernels_do_not_take_go_to_torch_with_one_warning_per_kind(kind):
    call, make_inputs = FALLBACKS[kind]
    inputs = make_inputs()
    expected = _run(call, inputs)
    got = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with custom_conv.enabled():
            names = op_names(lambda: got.extend(_run(call, inputs) for _ in range(2)))
    ours = [w for w in caught if issubclass(w.category, custom_conv.FallbackWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert kind in str(ours[0].message) and "torch's" in str(ours[0].message)
    assert ours[0].filename == __file__  # points at the code that made the call
    assert not any(n.startswith("custom_conv::") for n in names)
    ref, ref_error = expected
    for value, error in got:
        assert error == ref_error
        if ref is not None:
            assert torch.equal(*(t.dequantize() if t.is_quantized else t for t in (value, ref)))


def _forward_mode_tangent(x, w, t):
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        return fwAD.unpack_dual(F.max_pool2d(F.conv2d(fwAD.make_dual(x, t), w), 2)).tangent


TRANSFORMS = {  # name: (what runs on x, w and a tangent t of x)
    "forward-mode AD": _forward_mode_tangent,
    "torch.func.vmap": lambda x, w, t: torch.func.vmap(lambda s: F.conv2d(s, w))(x.unsqueeze(1)),
    "torch.func.jacrev": lambda x, w, t: torch.func.jacrev(lambda v: F.max_pool2d(F.conv2d(v, w), 2))(x),
    "torch.func.jacfwd": lambda x, w, t: torch.func.jacfwd(lambda v: F.max_pool2d(F.conv2d(v, w), 2))(x),
    "torch.func.grad": lambda x, w, t: torch.func.grad(lambda v: F.conv2d(x, v).pow(2).sum())(w),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_torch_func_and_forward_mode_ad_run_on_ours_with_torchs_results(transform):
    x, w, t = (torch.randn(s, dtype=torch.float64) for s in ((1, 2, 6, 6), (3, 2, 3, 3), (1, 2, 6, 6)))
    expected = TRANSFORMS[transform](x, w, t)
    got = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", custom_conv.FallbackWarning)
        with custom_conv.enabled():
            names = op_names(lambda: got.append(TRANSFORMS[transform](x, w, t)))
    assert "custom_conv::conv2d_forward" in names and torch_conv_or_pool_ops(names) == []
    torch.testing.assert_close(got[0], expected)


def test_meta_tensors_run_on_our_shape_functions():
    x, w = torch.empty(2, 3, 9, 9, device="meta"), torch.empty(4, 3, 3, 3, device="meta")
    with custom_conv.enabled():
        assert F.max_pool2d(F.conv2d(x, w, stride=2), 2, ceil_mode=True).shape == (2, 4, 2, 2)


@pytest.mark.slow
def test_torch_compile_traces_the_mode_without_a_graph_break():
    torch._dynamo.reset()
    model = MnistNet().eval()
    x = torch.randn(2, 1, 28, 28)
    with custom_conv.enabled(), torch._inductor.config.patch(force_disable_caches=True):
        compiled = torch.compile(model, fullgraph=True)
        names = op_names(lambda: compiled(x).sum().backward())
    assert torch_conv_or_pool_ops(names) == []
    assert {"custom_conv::conv2d_forward", "custom_conv::max_pool2d_forward"} <= names
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
