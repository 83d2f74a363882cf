"""The ecosystem around a model: ONNX export through both of torch's
exporters (run in onnxruntime, against torch's layers), the way back to
torch's modules (to_torch), tracing without warnings, a clear refusal of
torch.jit.script, and convert() on parametrized and lazy layers."""
import copy
import subprocess
import sys
import warnings

import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrizations

import custom_conv
from custom_conv.models import get_model

MODELS = {  # name: (builder, input)
    "lenet5": (lambda: get_model("lenet5", in_channels=1), (2, 1, 28, 28)),
    "resnet20": (lambda: get_model("resnet20"), (2, 3, 32, 32)),
    "vgg11_bn": (lambda: get_model("vgg11_bn"), (2, 3, 32, 32)),
}


class PoolWithIndices(torch.nn.Module):
    """Overlapping windows that reach into the padding, with ceil mode: indices are per plane."""

    def forward(self, x):
        return custom_conv.functional.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)


def run_onnx(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def export_quietly(model, x, path, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation and progress notes
        custom_conv.onnx.export(model, (x,), str(path), dynamo=dynamo)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_onnx_model_runs_in_onnxruntime_with_torchs_outputs(name, dynamo, tmp_path):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(shape)
    export_quietly(model, x, tmp_path / "model.onnx", dynamo)
    got, = run_onnx(tmp_path / "model.onnx", x)
    with torch.no_grad():
        expected = custom_conv.to_torch(copy.deepcopy(model))(x)
    # Both sum the same products in float32 in their own orders (VGG's deepest layer sums 4608 of them).
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_max_pool_indices_export_as_torchs_per_plane_indices(dynamo, tmp_path):
    x = torch.randn(2, 3, 9, 10)
    export_quietly(PoolWithIndices(), x, tmp_path / "pool.onnx", dynamo)
    values, indices = run_onnx(tmp_path / "pool.onnx", x)
    expected_values, expected_indices = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert torch.equal(torch.from_numpy(values), expected_values)
    assert torch.equal(torch.from_numpy(indices), expected_indices)


class TransposedFamily(torch.nn.Module):
    """Each transposed and 1-D layer: output padding, groups, dilation,
    asymmetric arguments, one output padding at least the stride, and output
    paddings from 0 to stride - 1 (ONNX's is worked out from the size)."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(0, 2),
                                           groups=2)
        self.up_dilated = torch.nn.ConvTranspose2d(6, 2, 3, stride=1, dilation=(3, 1), padding=1,
                                                   output_padding=(2, 0), bias=False)
        self.encode = torch.nn.Conv1d(2, 4, 3, stride=2, padding=2, dilation=2)
        self.decode = torch.nn.ConvTranspose1d(4, 3, 4, stride=3, padding=1, output_padding=1)

    def forward(self, x):
        y = self.up_dilated(torch.relu(self.up(x)))
        return self.decode(torch.relu(self.encode(y.flatten(2))))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_transposed_and_1d_convolutions_export_as_onnxs_conv_transpose_and_conv(dynamo, tmp_path):
    import onnx
    torch.manual_seed(0)
    model = custom_conv.convert(TransposedFamily()).eval()
    x = torch.randn(2, 4, 5, 4)
    export_quietly(model, x, tmp_path / "family.onnx", dynamo)
    op_types = {node.op_type for node in onnx.load(str(tmp_path / "family.onnx")).graph.node}
    assert {"ConvTranspose", "Conv"} <= op_types
    got, = run_onnx(tmp_path / "family.onnx", x)
    with torch.no_grad():
        expected = custom_conv.to_torch(copy.deepcopy(model))(x)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


AVERAGE_POOLS = {  # name: (layer, input shape); every one exportable
    "AvgPool2d, ceil mode past the padding, padding counted":
        (lambda: custom_conv.nn.AvgPool2d(3, 2, 1, ceil_mode=True), (2, 3, 6, 6)),
    "AvgPool2d, asymmetric, padding not counted":
        (lambda: custom_conv.nn.AvgPool2d((3, 2), (2, 1), (1, 0), count_include_pad=False), (2, 3, 10, 9)),
    "AdaptiveAvgPool2d, global": (lambda: custom_conv.nn.AdaptiveAvgPool2d(1), (2, 3, 7, 5)),
    "AdaptiveAvgPool2d, 8x6 -> 4x3": (lambda: custom_conv.nn.AdaptiveAvgPool2d((4, 3)), (2, 3, 8, 6)),
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", list(AVERAGE_POOLS))
def test_average_pooling_exports_as_onnxs_average_pool(name, dynamo, tmp_path):
    build, shape = AVERAGE_POOLS[name]
    model, x = build(), torch.randn(shape)
    export_quietly(model, x, tmp_path / "model.onnx", dynamo)
    got, = run_onnx(tmp_path / "model.onnx", x)
    torch.testing.assert_close(torch.from_numpy(got), custom_conv.to_torch(model)(x))


ADAPTIVE_MAX_POOLS = {  # name: (output size, input shape); the input's values drawn apart, so no ties
    "global": (1, (2, 3, 7, 5)),
    "8x6 -> 4x3": ((4, 3), (2, 3, 8, 6)),
    "9x4 -> 3x4": ((3, None), (1, 2, 9, 4)),
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", list(ADAPTIVE_MAX_POOLS))
def test_adaptive_max_pooling_exports_as_onnxs_max_pool_with_per_plane_indices(name, dynamo, tmp_path):
    output_size, shape = ADAPTIVE_MAX_POOLS[name]
    x = torch.randperm(torch.Size(shape).numel()).reshape(shape).float()
    export_quietly(custom_conv.nn.AdaptiveMaxPool2d(output_size, return_indices=True), x, tmp_path / "model.onnx",
                   dynamo)
    values, indices = run_onnx(tmp_path / "model.onnx", x)
    expected_values, expected_indices = F.adaptive_max_pool2d(x, output_size, return_indices=True)
    assert torch.equal(torch.from_numpy(values), expected_values)
    assert torch.equal(torch.from_numpy(indices), expected_indices)


@pytest.mark.parametrize("layer", [lambda: custom_conv.nn.AvgPool2d(2, divisor_override=3),
                                   lambda: custom_conv.nn.AdaptiveAvgPool2d(3),
                                   lambda: custom_conv.nn.AdaptiveMaxPool2d(3)], ids=["divisor", "7 -> 3", "max 7 -> 3"])
def test_pooling_onnx_cannot_express_is_refused_with_a_reason(layer, tmp_path):
    with pytest.raises(RuntimeError, match=r"divisor_override has no ONNX equivalent|windows of different sizes"):
        export_quietly(layer(), torch.randn(1, 2, 7, 7), tmp_path / "model.onnx", dynamo=False)


def test_plain_torch_onnx_export_finds_our_translations(tmp_path):
    """torch.onnx.export itself: the TorchScript exporter through our registered symbolics, the dynamo
    exporter through the translation table."""
    model = custom_conv.convert(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1, stride=2),
                                                    torch.nn.MaxPool2d(2))).eval()
    x = torch.randn(1, 2, 9, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "a.onnx"), dynamo=False)
        torch.onnx.export(model, (x,), str(tmp_path / "b.onnx"), dynamo=True,
                          custom_translation_table=custom_conv.onnx.TRANSLATION_TABLE)
    for path in ("a.onnx", "b.onnx"):
        torch.testing.assert_close(torch.from_numpy(run_onnx(tmp_path / path, x)[0]), model(x).detach(),
                                   rtol=1e-5, atol=1e-6)


def test_to_torch_undoes_convert_sharing_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding_mode="reflect", padding=1),
                                torch.nn.MaxPool2d(2, ceil_mode=True, return_indices=False)).eval()
    weight = model[0].weight
    ours = custom_conv.convert(model)
    back = custom_conv.to_torch(ours)
    assert type(back[0]) is torch.nn.Conv2d and type(back[1]) is torch.nn.MaxPool2d
    assert back[0].weight is weight and not back[0].training
    assert back[0].padding_mode == "reflect" and back[1].ceil_mode
    x = torch.randn(1, 2, 7, 7)
    torch.testing.assert_close(back(x), custom_conv.convert(copy.deepcopy(back))(x))


def parametrized_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(parametrizations.weight_norm(torch.nn.Conv2d(2, 3, 3)), torch.nn.ReLU(),
                               parametrizations.spectral_norm(torch.nn.Conv2d(3, 4, 3))).double()


def test_convert_takes_weight_norm_and_spectral_norm_layers_sharing_their_parametrizations():
    model = parametrized_model()
    reference = copy.deepcopy(model)
    shared = [model[i].parametrizations for i in (0, 2)]
    converted = custom_conv.convert(model)
    assert all(isinstance(converted[i], custom_conv.nn.Conv2d) for i in (0, 2))
    assert [converted[i].parametrizations for i in (0, 2)] == shared
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    for _ in range(2):  # training mode: spectral norm's power iteration advances in both
        out, ref = converted(x), reference(x)
        torch.testing.assert_close(out, ref)
        out.sum().backward()
        ref.sum().backward()
    for (name, p), q in zip(converted.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}: {m}")
    with torch.profiler.profile() as prof:
        converted(x)
    assert "custom_conv::conv2d_forward" in {e.name for e in prof.events()}
    assert isinstance(custom_conv.to_torch(converted)[0], torch.nn.Conv2d)
    assert not isinstance(custom_conv.to_torch(converted)[0], custom_conv.nn.Conv2d)


def test_convert_names_the_layers_it_leaves_alone_and_takes_lazy_ones_once_materialised():
    class Special(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(torch.nn.LazyConv2d(4, 3), Special(4, 4, 1))
    with pytest.warns(custom_conv.ConvertWarning, match=r"LazyConv2d \(not materialised.*Special \(a subclass"):
        custom_conv.convert(model)
    model(torch.randn(1, 2, 6, 6))  # materialises the lazy layer into a plain Conv2d
    with pytest.warns(custom_conv.ConvertWarning) as caught:
        custom_conv.convert(model)
    assert "LazyConv2d" not in str(caught[0].message)
    assert type(model[0]) is custom_conv.nn.Conv2d


def traced_warnings(trace):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace()
    return [f"{w.filename}: {w.message}" for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def test_jit_trace_and_add_graph_give_no_tracer_warning_and_record_our_ops(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    model = get_model("lenet5", in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    traced = []
    assert traced_warnings(lambda: traced.append(torch.jit.trace(model, x))) == []
    assert "custom_conv::conv2d_forward" in str(traced[0].inlined_graph)
    torch.testing.assert_close(traced[0](x), model(x))
    resnet = get_model("resnet20").eval()
    with SummaryWriter(tmp_path) as writer:
        assert traced_warnings(lambda: writer.add_graph(resnet, torch.randn(1, 3, 32, 32))) == []


def test_jit_trace_of_every_pooling_gives_no_tracer_warning():
    """Their argument checks read the input's sizes, which a trace gives as tensors."""
    pools = torch.nn.Sequential(custom_conv.nn.AdaptiveAvgPool2d((4, None)), custom_conv.nn.AdaptiveMaxPool2d(3),
                                custom_conv.nn.AvgPool2d(2, ceil_mode=True), custom_conv.nn.MaxPool2d(1))
    x = torch.randn(2, 3, 8, 6)
    traced = []
    assert traced_warnings(lambda: traced.append(torch.jit.trace(pools, x))) == []
    torch.testing.assert_close(traced[0](x), pools(x))


def test_jit_script_of_our_layers_says_torchscript_is_not_supported():
    model = torch.nn.Sequential(custom_conv.nn.Conv2d(1, 2, 3), custom_conv.nn.MaxPool2d(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's own deprecation
        with pytest.raises(RuntimeError, match="torch.jit.script: TorchScript is deprecated.*torch.jit.trace"):
            torch.jit.script(model)


def test_models_are_reachable_after_import_custom_conv():
    code = "import custom_conv; print(custom_conv.models.get_model('lenet5').__class__.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "LeNet5"


def test_torch_export_pickle_and_state_dicts_keep_working():
    """What worked with autograd in C++ and must keep working in Python:
    torch.export records our ops (and runs them), a pickled model comes back
    whole, and state_dicts pass between our layers and torch's."""
    torch.manual_seed(0)
    ours = get_model("lenet5", in_channels=1, backend="custom").eval()
    theirs = get_model("lenet5", in_channels=1, backend="torch").eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 1, 28, 28)
    expected = ours(x)
    torch.testing.assert_close(theirs(x), expected, rtol=1e-4, atol=1e-4)  # float32, other summation orders

    exported = torch.export.export(ours, (x,))
    assert "custom_conv.conv2d_forward" in str(exported.graph)
    assert "custom_conv.max_pool2d_forward" in str(exported.graph)
    assert torch.equal(exported.module()(x), expected)

    import pickle
    assert torch.equal(pickle.loads(pickle.dumps(ours))(x), expected)
