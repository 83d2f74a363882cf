"""conv1d, conv_transpose1d and conv_transpose2d, and their modules: the
2-D convolution's ops put to other uses (custom_conv/functional.py). Values
and every gradient equal torch's in float64 over generated tables of
geometries (stride, padding, output_padding, dilation and groups, each
also asymmetric; with and without bias; unbatched input), gradcheck and
gradgradcheck, torch.func, the modules against torch's sharing state_dicts
(output_size too), channels_last, torch's errors; and convert() and
enabled() route torch's layers and functions to our ops, which the profiler
shows."""
import copy
import itertools
import random
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrizations

import custom_conv
from custom_conv import functional as CF
from custom_conv.models import conv_autoencoder
from helpers import assert_matches_torch, assert_within_eps_of_exact, dtypes, tolerance

TIGHT = tolerance(torch.float64, "cpu")
FUNCTIONS = {"conv1d": 1, "conv_transpose1d": 1, "conv_transpose2d": 2}  # name: spatial dimensions


def _axes(value, dims):
    return (value,) * dims if isinstance(value, int) else value


def _transpose_table(dims):
    """Every stride, dilation, padding and groups below (the asymmetric ones
    on one axis at a time), with and without bias, each with no output
    padding and with the largest torch allows on each axis (below the stride
    or the dilation, whichever is larger: so at least the stride where the
    dilation is larger, which our code computes another way)."""
    asymmetric = dims == 2
    strides = [1, 2, 3] + ([(2, 3)] if asymmetric else [])
    dilations = [1, 2] + ([(3, 1)] if asymmetric else [])
    paddings = [0, 1] + ([(2, 0)] if asymmetric else [2])
    cases = {}
    for stride, dilation, padding, groups, bias in itertools.product(strides, dilations, paddings, [1, 2],
                                                                     [True, False]):
        largest = tuple(max(s, d) - 1 for s, d in zip(_axes(stride, dims), _axes(dilation, dims)))
        for output_padding in {(0,) * dims, largest}:
            kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                          output_padding=output_padding if dims == 2 else output_padding[0])
            name = ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ("" if bias else ", no bias")
            cases[name] = (kwargs, bias)
    return cases


def _conv1d_table():
    cases = {}
    for stride, dilation, padding, groups, bias, kernel in itertools.product(
            [1, 2, 3], [1, 2], [0, 2, "same", "valid"], [1, 2], [True, False], [3, 4]):
        if padding == "same" and stride != 1:
            continue
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        name = f"kernel {kernel}, " + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ("" if bias else ", no bias")
        cases[name] = (kwargs, bias, kernel)
    return cases


TRANSPOSE2D = _transpose_table(2)
TRANSPOSE1D = _transpose_table(1)
CONV1D = _conv1d_table()


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def transpose_tensors(dims, groups, bias, batch=(2,), channels=4, kernel=(3, 2), seed=0):
    """Input (4 channels, 4 x 5 or 5 long), weight (4, 3, *kernel) and bias
    (3 * groups) or None; output channels 3 per group."""
    sizes = (4, 5)[-dims:]
    x = _randn(*batch, channels, *sizes, seed=seed)
    w = _randn(channels, 3, *kernel[-dims:], seed=seed + 1)
    b = _randn(3 * groups, seed=seed + 2) if bias else None
    return [x, w, b]


@pytest.mark.parametrize("case", list(TRANSPOSE2D))
def test_conv_transpose2d_matches_torch(case):
    kwargs, bias = TRANSPOSE2D[case]
    tensors = transpose_tensors(2, kwargs["groups"], bias)
    assert_matches_torch(lambda x, w, b: CF.conv_transpose2d(x, w, b, **kwargs),
                         lambda x, w, b: F.conv_transpose2d(x, w, b, **kwargs), tensors, **TIGHT)


@pytest.mark.parametrize("case", list(TRANSPOSE1D))
def test_conv_transpose1d_matches_torch(case):
    kwargs, bias = TRANSPOSE1D[case]
    tensors = transpose_tensors(1, kwargs["groups"], bias)
    assert_matches_torch(lambda x, w, b: CF.conv_transpose1d(x, w, b, **kwargs),
                         lambda x, w, b: F.conv_transpose1d(x, w, b, **kwargs), tensors, **TIGHT)


@pytest.mark.parametrize("case", list(CONV1D))
def test_conv1d_matches_torch(case):
    kwargs, bias, kernel = CONV1D[case]
    groups = kwargs["groups"]
    tensors = [_randn(2, 4, 11), _randn(6, 4 // groups, kernel, seed=1), _randn(6, seed=2) if bias else None]
    assert_matches_torch(lambda x, w, b: CF.conv1d(x, w, b, **kwargs),
                         lambda x, w, b: F.conv1d(x, w, b, **kwargs), tensors, **TIGHT)


# name: (function, its tensors, keyword arguments): the shapes the tables do not vary.
SHAPES = {
    "conv_transpose2d, unbatched": ("conv_transpose2d", lambda: transpose_tensors(2, 1, True, batch=()),
                                    dict(stride=2, padding=1, output_padding=1)),
    "conv_transpose2d, empty batch": ("conv_transpose2d", lambda: transpose_tensors(2, 1, True, batch=(0,)),
                                      dict(stride=2)),
    "conv_transpose2d, depthwise": ("conv_transpose2d", lambda: [_randn(2, 4, 5, 5), _randn(4, 1, 3, 3, seed=1),
                                                                 _randn(4, seed=2)],
                                    dict(groups=4, stride=2, padding=1, output_padding=1)),
    "conv_transpose2d, 1x1 kernel, stride 2": ("conv_transpose2d", lambda: transpose_tensors(2, 1, False,
                                                                                             kernel=(1, 1)),
                                               dict(stride=2, output_padding=1)),
    "conv_transpose2d, padding crops all but one pixel": ("conv_transpose2d",
                                                          lambda: [_randn(1, 2, 2, 2), _randn(2, 3, 3, 3, seed=1),
                                                                   None], dict(padding=(1, 1))),
    "conv_transpose2d, positional arguments": ("conv_transpose2d", lambda: transpose_tensors(2, 2, True),
                                               dict()),
    "conv_transpose1d, unbatched": ("conv_transpose1d", lambda: transpose_tensors(1, 1, True, batch=()),
                                    dict(stride=3, output_padding=2, dilation=2)),
    "conv1d, unbatched": ("conv1d", lambda: [_randn(4, 9), _randn(5, 4, 3, seed=1), _randn(5, seed=2)],
                          dict(padding="same", dilation=2)),
    "conv1d, one-element tuples": ("conv1d", lambda: [_randn(2, 4, 9), _randn(5, 4, 3, seed=1), None],
                                   dict(stride=(2,), padding=[1], dilation=(1,))),
    "conv1d, empty batch": ("conv1d", lambda: [_randn(0, 4, 9), _randn(5, 4, 3, seed=1), None], dict()),
}


@pytest.mark.parametrize("case", list(SHAPES))
def test_other_shapes_match_torch(case):
    name, make, kwargs = SHAPES[case]
    tensors = make()
    if case.endswith("positional arguments"):  # bias, stride, padding, output_padding, groups, dilation
        args = (2, 1, 1, 2, (1, 2))
        ours, theirs = (lambda x, w, b: CF.conv_transpose2d(x, w, b, *args),
                        lambda x, w, b: F.conv_transpose2d(x, w, b, *args))
    else:
        ours, theirs = (lambda x, w, b: getattr(CF, name)(x, w, b, **kwargs),
                        lambda x, w, b: getattr(F, name)(x, w, b, **kwargs))
    assert_matches_torch(ours, theirs, tensors, **TIGHT)


LOW_PRECISION = {  # name: (function, its tensors, keyword arguments)
    "conv_transpose2d": ("conv_transpose2d", lambda: transpose_tensors(2, 2, True),
                         dict(stride=(2, 3), padding=1, output_padding=(1, 2), groups=2)),
    "conv_transpose2d, output padding past the stride": ("conv_transpose2d",
                                                         lambda: transpose_tensors(2, 1, True),
                                                         dict(dilation=2, output_padding=1)),
    "conv_transpose1d": ("conv_transpose1d", lambda: transpose_tensors(1, 1, True), dict(stride=2, dilation=2)),
    "conv1d": ("conv1d", lambda: [_randn(2, 4, 11), _randn(6, 4, 4, seed=1), _randn(6, seed=2)],
               dict(padding="same")),
}


@pytest.mark.parametrize("dtype", dtypes("float32", "float16", "bfloat16"))
@pytest.mark.parametrize("case", list(LOW_PRECISION))
def test_float32_half_and_bfloat16_are_within_eps_of_exact(case, dtype):
    name, make, kwargs = LOW_PRECISION[case]
    tensors = [t.to(dtype) if t is not None else None for t in make()]
    assert_within_eps_of_exact(lambda *t: getattr(CF, name)(*t, **kwargs),
                               lambda *t: getattr(F, name)(*t, **kwargs), tensors)


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16 weight"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_under_autocast_the_family_runs_in_its_dtype_as_torchs_does(name, weight_dtype):
    _, make, kwargs = GRADCHECK[name]
    x, w, b = (t.float() for t in make())
    w = w.to(weight_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = getattr(CF, name)(x, w, b, **kwargs), getattr(F, name)(x, w, b, **kwargs)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=2 ** -6, atol=2 ** -6)  # both round to bfloat16, in their own order
    grad, ref_grad = (torch.autograd.grad(y.float().sum(), w)[0] for y in (out, ref))
    assert grad.dtype == ref_grad.dtype == weight_dtype


# ------------------------------------------------------------ gradcheck, torch.func

GRADCHECK = {  # name: (function, tensors, keyword arguments)
    "conv_transpose2d": ("conv_transpose2d", lambda: transpose_tensors(1 + 1, 2, True, batch=(1,), channels=4),
                         dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2))),
    "conv_transpose2d, output padding past the stride": (
        "conv_transpose2d", lambda: transpose_tensors(2, 1, False, batch=(1,)),
        dict(stride=1, dilation=3, output_padding=2, padding=1)),
    "conv_transpose2d, unbatched": ("conv_transpose2d", lambda: transpose_tensors(2, 1, True, batch=()),
                                    dict(stride=2)),
    "conv_transpose1d": ("conv_transpose1d", lambda: transpose_tensors(1, 2, True, batch=(2,)),
                         dict(stride=2, padding=1, output_padding=1, groups=2, dilation=2)),
    "conv1d": ("conv1d", lambda: [_randn(2, 4, 7), _randn(6, 2, 3, seed=1), _randn(6, seed=2)],
               dict(stride=2, padding=1, dilation=2, groups=2)),
    "conv1d, same padding, even kernel": ("conv1d", lambda: [_randn(1, 2, 6), _randn(3, 2, 4, seed=1), None],
                                          dict(padding="same")),
}


@pytest.mark.parametrize("case", list(GRADCHECK))
def test_gradcheck_and_gradgradcheck_with_forward_ad_and_batched_gradients(case):
    name, make, kwargs = GRADCHECK[case]
    tensors = [t.requires_grad_() for t in make() if t is not None]
    function = lambda *t: getattr(CF, name)(*t, **kwargs)
    assert torch.autograd.gradcheck(function, tensors, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(function, tensors, check_fwd_over_rev=True, check_batched_grad=True)


def _op_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def torch_conv_ops(names):
    """torch's convolutions among `names` (aten::convolution, aten::conv1d,
    aten::conv_transpose2d, aten::slow_conv_transpose2d, ...), and any
    oneDNN, NNPACK, THNN or cuDNN op."""
    return sorted(n for n in names if (n.startswith("aten::") and "conv" in n)
                  or (any(word in n.lower() for word in ("mkldnn", "nnpack", "thnn", "cudnn"))
                      and not n.startswith("mkldnn::_is_")))


TRANSFORMS = {
    "grad": lambda f: torch.func.grad(f, argnums=(0, 1, 2)),
    "hessian of the weight": lambda f: torch.func.jacfwd(torch.func.jacrev(f, argnums=1), argnums=1),
    "reverse over reverse, the input": lambda f: torch.func.jacrev(torch.func.jacrev(f, argnums=0), argnums=0),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_torch_func_transforms_match_torch_and_run_on_our_ops(name, transform):
    dims = FUNCTIONS[name]
    if name == "conv2d":
        dilation = tuple(max(d, 1) for d in dilation)
    if name in ("conv1d", "conv2d"):
        x, w, b = _randn(1, 2, 6), _randn(3, 2, 2, seed=1), _randn(3, seed=2)
        kwargs = dict(stride=2, padding=1)
    else:
        x, w, b = transpose_tensors(dims, 1, True, batch=(1,), channels=2, kernel=(2, 2))
        kwargs = dict(stride=2, padding=1, output_padding=1)

    def loss(function):
        return lambda x, w, b: function(x, w, b, **kwargs).pow(3).sum()
    expected = TRANSFORMS[transform](loss(getattr(F, name)))(x, w, b)
    got = []
    names = _op_names(lambda: got.append(TRANSFORMS[transform](loss(getattr(CF, name)))(x, w, b)))
    assert torch_conv_ops(names) == [] and any(n.startswith("custom_conv::") for n in names)
    torch.testing.assert_close(got[0], expected, **TIGHT)


@pytest.mark.parametrize("in_dims", [(0, None, None), (None, 0, None), (None, None, 0), (1, 2, 0)],
                         ids=["over the input", "over the weight", "over the bias", "over everything"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_vmap_and_its_gradients_match_a_loop_of_torchs(name, in_dims):
    if name == "conv2d":
        dilation = tuple(max(d, 1) for d in dilation)
    if name in ("conv1d", "conv2d"):
        tensors, kwargs = [_randn(2, 4, 7), _randn(6, 2, 3, seed=1), _randn(6, seed=2)], dict(groups=2, stride=2)
    else:
        tensors = transpose_tensors(FUNCTIONS[name], 2, True)
        kwargs = dict(groups=2, stride=2, output_padding=1, padding=1)
    batch = 3
    stacked = [t if d is None else torch.stack([t * (k + 1) for k in range(batch)], d)
               for t, d in zip(tensors, in_dims)]
    ours, theirs = (lambda *t: getattr(CF, name)(*t, **kwargs)), (lambda *t: getattr(F, name)(*t, **kwargs))
    values = torch.func.vmap(ours, in_dims=in_dims)(*stacked)
    grads = torch.func.vmap(torch.func.grad(lambda *t: ours(*t).sin().sum(), argnums=(0, 1, 2)),
                            in_dims=in_dims)(*stacked)
    for k in range(batch):
        args = [t if d is None else t.select(d, k) for t, d in zip(stacked, in_dims)]
        torch.testing.assert_close(values[k], theirs(*args), **TIGHT)
        for g, r in zip(grads, torch.func.grad(lambda *t: theirs(*t).sin().sum(), argnums=(0, 1, 2))(*args)):
            torch.testing.assert_close(g[k], r, **TIGHT)


# ------------------------------------------------------------ memory format


@pytest.mark.parametrize("layout", ["input", "weight", "both", "neither"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_conv_transpose2d_channels_last_gives_torchs_values_and_layout(layout, dtype):
    x, w, b = (t.to(dtype) for t in transpose_tensors(2, 2, True, batch=(2,)))
    if layout in ("input", "both"):
        x = x.contiguous(memory_format=torch.channels_last)
    if layout in ("weight", "both"):
        w = w.contiguous(memory_format=torch.channels_last)
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2)
    x, w = x.requires_grad_(), w.requires_grad_()
    out, ref = CF.conv_transpose2d(x, w, b, **kwargs), F.conv_transpose2d(x, w, b, **kwargs)
    assert out.stride() == ref.stride()
    torch.testing.assert_close(out, ref, **tolerance(dtype, "cpu"))
    # Gradients in torch's layout, for an output gradient in the output's and for one of no layout (a sum's).
    for grad in (torch.randn_like(ref), torch.ones(()).expand(ref.shape)):
        ours = torch.autograd.grad(out, [x, w], grad, retain_graph=True)
        theirs = torch.autograd.grad(ref, [x, w], grad, retain_graph=True)
        assert [g.stride() for g in ours] == [g.stride() for g in theirs]
    x, w = x.detach(), w.detach()
    assert_matches_torch(lambda x, w, b: CF.conv_transpose2d(x, w, b, **kwargs),
                         lambda x, w, b: F.conv_transpose2d(x, w, b, **kwargs), [x, w, b], **tolerance(dtype, "cpu"))


def _length_first(t):
    """t with the same values, laid out (N, L, C) in memory: a 2-D view of it suggests channels_last."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("layout", ["input", "weight", "both"])
@pytest.mark.parametrize("name", ["conv1d", "conv_transpose1d"])
def test_1d_results_and_gradients_have_torchs_layout_which_follows_the_weights_alone(name, layout):
    x = _randn(2, 4, 7)
    w = _randn(3, 4, 3, seed=1) if name == "conv1d" else _randn(4, 3, 3, seed=1)
    x, w = (_length_first(t) if layout in (which, "both") else t for t, which in ((x, "input"), (w, "weight")))
    x, w = x.requires_grad_(), w.requires_grad_()
    out, ref = getattr(CF, name)(x, w), getattr(F, name)(x, w)
    torch.testing.assert_close(out, ref, **TIGHT)
    for grad in (torch.randn_like(ref), torch.ones(()).expand(ref.shape)):
        ours = torch.autograd.grad(out, [x, w], grad, retain_graph=True)
        theirs = torch.autograd.grad(ref, [x, w], grad, retain_graph=True)
        assert [t.stride() for t in (out, *ours)] == [t.stride() for t in (ref, *theirs)]


# ------------------------------------------------------------ modules


MODULES = {  # name: (class name, constructor arguments, input shape, forward's keyword arguments)
    "ConvTranspose2d": ("ConvTranspose2d", dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 3),
                                                padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2)),
                        (2, 4, 5, 4), {}),
    "ConvTranspose2d, no bias, unbatched": ("ConvTranspose2d", dict(in_channels=4, out_channels=2, kernel_size=3,
                                                                    stride=2, bias=False), (4, 5, 5), {}),
    "ConvTranspose2d, output_size": ("ConvTranspose2d", dict(in_channels=4, out_channels=3, kernel_size=3, stride=2,
                                                             padding=1), (2, 4, 5, 5), dict(output_size=[10, 9])),
    "ConvTranspose1d": ("ConvTranspose1d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=3, padding=1,
                                                output_padding=1, groups=2, dilation=2), (2, 4, 7), {}),
    "ConvTranspose1d, output_size": ("ConvTranspose1d", dict(in_channels=2, out_channels=3, kernel_size=4, stride=3),
                                     (2, 2, 5), dict(output_size=[18])),
    "Conv1d": ("Conv1d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2,
                              groups=2), (2, 4, 11), {}),
    "Conv1d, same padding, unbatched": ("Conv1d", dict(in_channels=4, out_channels=2, kernel_size=4,
                                                       padding="same"), (4, 9), {}),
    "Conv1d, reflect padding": ("Conv1d", dict(in_channels=4, out_channels=6, kernel_size=3, padding=2,
                                               padding_mode="reflect"), (2, 4, 9), {}),
    "Conv1d, circular padding, same": ("Conv1d", dict(in_channels=4, out_channels=3, kernel_size=4, padding="same",
                                                      padding_mode="circular"), (2, 4, 9), {}),
}


@pytest.mark.parametrize("case", list(MODULES))
def test_modules_match_torchs_sharing_their_state_dicts(case):
    cls, kwargs, shape, forward_kwargs = MODULES[case]
    torch.manual_seed(1)
    ours = getattr(custom_conv.nn, cls)(**kwargs, dtype=torch.float64)
    torch.manual_seed(1)
    theirs = getattr(torch.nn, cls)(**kwargs, dtype=torch.float64)
    # Same initialisation from the same seed, the same keys and repr: ours is torch's class.
    assert isinstance(ours, getattr(torch.nn, cls)) and repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    theirs.load_state_dict({k: v * 2 for k, v in ours.state_dict().items()})
    ours.load_state_dict(theirs.state_dict())
    x = _randn(*shape, seed=3)
    assert_matches_torch(lambda x, *p: ours(x, **forward_kwargs), lambda x, *p: theirs(x, **forward_kwargs), [x],
                         **TIGHT)
    out, ref = ours(x, **forward_kwargs), theirs(x, **forward_kwargs)
    params = list(ours.parameters())
    for g, r in zip(torch.autograd.grad(out.pow(2).sum(), params),
                    torch.autograd.grad(ref.pow(2).sum(), list(theirs.parameters()))):
        torch.testing.assert_close(g, r, **TIGHT)
    if "output_size" in forward_kwargs:
        assert list(out.shape[2:]) == forward_kwargs["output_size"]


@pytest.mark.parametrize("cls", ["ConvTranspose2d", "ConvTranspose1d"])
def test_an_output_size_out_of_reach_is_refused_as_torch_refuses_it(cls):
    layers = [getattr(module, cls)(2, 3, 3, stride=2) for module in (torch.nn, custom_conv.nn)]
    x = torch.randn((1, 2, 5, 5) if cls.endswith("2d") else (1, 2, 5))
    size = [20] * (x.dim() - 2)
    errors = []
    for layer in layers:
        with pytest.raises(ValueError) as info:
            layer(x, output_size=size)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


# ------------------------------------------------------------ errors


x4, w4 = torch.randn(1, 4, 5, 5), torch.randn(4, 3, 3, 3)
x3, w3, w3c = torch.randn(1, 4, 7), torch.randn(4, 3, 3), torch.randn(3, 4, 3)
ERRORS = {  # name: call taking torch.nn.functional or ours
    "transpose2d, output padding not below stride or dilation": lambda f: f.conv_transpose2d(
        x4, w4, stride=2, output_padding=2),
    "transpose2d, output padding too large on one axis": lambda f: f.conv_transpose2d(x4, w4, output_padding=(1, 0)),
    "transpose2d, negative output padding": lambda f: f.conv_transpose2d(x4, w4, output_padding=-1),
    "transpose1d, output padding not below stride": lambda f: f.conv_transpose1d(x3, w3, stride=2, output_padding=2),
    "transpose2d, float stride": lambda f: f.conv_transpose2d(x4, w4, stride=1.5),
    "transpose2d, bool stride": lambda f: f.conv_transpose2d(x4, w4, stride=True),
    "transpose2d, None stride": lambda f: f.conv_transpose2d(x4, w4, stride=None),
    "transpose2d, float groups": lambda f: f.conv_transpose2d(x4, w4, groups=1.5),
    "transpose2d, bool groups": lambda f: f.conv_transpose2d(x4, w4, groups=True),
    "transpose2d, float output padding": lambda f: f.conv_transpose2d(x4, w4, output_padding=1.5),
    "transpose2d, string padding": lambda f: f.conv_transpose2d(x4, w4, padding="same"),
    "transpose2d, None second padding": lambda f: f.conv_transpose2d(x4, w4, padding=(1, None)),
    "transpose2d, float second stride": lambda f: f.conv_transpose2d(x4, w4, stride=[2, 2.0]),
    "transpose2d, tuple starting with a bool": lambda f: f.conv_transpose2d(x4, w4, stride=(True, 1)),
    "transpose2d, three strides": lambda f: f.conv_transpose2d(x4, w4, stride=(1, 2, 3)),
    "transpose2d, three output paddings": lambda f: f.conv_transpose2d(x4, w4, output_padding=(1, 2, 3)),
    "transpose2d, no dilations": lambda f: f.conv_transpose2d(x4, w4, dilation=()),
    "transpose1d, two strides": lambda f: f.conv_transpose1d(x3, w3, stride=(1, 2)),
    "transpose1d, float in a padding list": lambda f: f.conv_transpose1d(x3, w3, padding=[1.0]),
    "transpose2d, None input": lambda f: f.conv_transpose2d(None, w4),
    "ConvTranspose2d, float stride": lambda f: _layer(f, "ConvTranspose2d", 4, 3, 3, stride=1.5)(x4),
    "ConvTranspose2d, float padding": lambda f: _layer(f, "ConvTranspose2d", 4, 3, 3, padding=(0.5, 1))(x4),
    "ConvTranspose2d, float output_padding": lambda f: _layer(f, "ConvTranspose2d", 4, 3, 3, stride=2,
                                                              output_padding=0.5)(x4),
    "ConvTranspose2d, None input": lambda f: _layer(f, "ConvTranspose2d", 4, 3, 3)(None),
    "ConvTranspose1d, float dilation": lambda f: _layer(f, "ConvTranspose1d", 4, 3, 3, dilation=1.5)(x3),
    "ConvTranspose1d, output_size out of reach": lambda f: _layer(f, "ConvTranspose1d", 4, 3, 3)(x3, [20]),
    "Conv1d, float stride": lambda f: _layer(f, "Conv1d", 4, 3, 3, stride=1.5)(x3),
    "Conv1d, float dilation, reflect padding": lambda f: _layer(f, "Conv1d", 4, 3, 3, padding=1, dilation=1.5,
                                                                 padding_mode="reflect")(x3),
    "transpose2d, None weight": lambda f: f.conv_transpose2d(x4, None),
    "transpose2d, float bias": lambda f: f.conv_transpose2d(x4, w4, 1.0),
    "transpose2d, zero stride": lambda f: f.conv_transpose2d(x4, w4, stride=0),
    "transpose2d, negative padding": lambda f: f.conv_transpose2d(x4, w4, padding=-1),
    "transpose2d, zero dilation": lambda f: f.conv_transpose2d(x4, w4, dilation=0),
    "transpose1d, zero dilation": lambda f: f.conv_transpose1d(x3, w3, dilation=0),
    "transpose2d, zero groups": lambda f: f.conv_transpose2d(x4, w4, groups=0),
    "transpose2d, groups do not divide the weight": lambda f: f.conv_transpose2d(x4, w4, groups=3),
    "transpose2d, channel mismatch": lambda f: f.conv_transpose2d(torch.randn(1, 3, 5, 5), w4),
    "transpose2d, bias of wrong size": lambda f: f.conv_transpose2d(x4, w4, torch.randn(4)),
    "transpose2d, 2-D bias": lambda f: f.conv_transpose2d(x4, w4, torch.randn(3, 1)),
    "transpose2d, output too small": lambda f: f.conv_transpose2d(x4, w4, padding=5),
    "transpose1d, output too small": lambda f: f.conv_transpose1d(x3, w3, padding=5),
    "transpose2d, 2-D input": lambda f: f.conv_transpose2d(x4[0, 0], w4),
    "transpose1d, 1-D input": lambda f: f.conv_transpose1d(x3[0, 0], w3),
    "transpose2d, empty plane": lambda f: f.conv_transpose2d(torch.randn(1, 4, 0, 5), w4),
    "transpose2d, dtype mismatch": lambda f: f.conv_transpose2d(x4, w4.double()),
    "conv1d, float stride": lambda f: f.conv1d(x3, w3c, stride=1.5),
    "conv1d, two strides": lambda f: f.conv1d(x3, w3c, stride=(1, 2)),
    "conv1d, same padding with a stride": lambda f: f.conv1d(x3, w3c, padding="same", stride=2),
    "conv1d, unknown padding string": lambda f: f.conv1d(x3, w3c, padding="foo"),
    "conv1d, None input": lambda f: f.conv1d(None, w3c),
    "conv1d, channel mismatch": lambda f: f.conv1d(x3, torch.randn(3, 3, 3)),
    "conv1d, bias of wrong size": lambda f: f.conv1d(x3, w3c, torch.randn(2)),
    "conv1d, 4-D weight": lambda f: f.conv1d(x3, torch.randn(3, 4, 3, 3)),
    "conv1d, 4-D input": lambda f: f.conv1d(x4, w3c),
    "conv1d, 1-D input": lambda f: f.conv1d(x3[0, 0], w3c),
    "conv1d, groups do not divide the weight": lambda f: f.conv1d(x3, w3c, groups=2),
    "conv1d, kernel larger than input": lambda f: f.conv1d(x3, torch.randn(3, 4, 9)),
    "conv1d, kernel larger than input, valid padding": lambda f: f.conv1d(x3, torch.randn(3, 4, 4), dilation=3,
                                                                         padding="valid"),
    "conv1d, empty length": lambda f: f.conv1d(torch.randn(1, 4, 0), w3c, padding=2),
    "conv1d, same padding's odd zero, then a channel mismatch": lambda f: f.conv1d(x3, torch.randn(3, 3, 2),
                                                                                   padding="same"),
    "conv1d, more groups than filters": lambda f: f.conv1d(x3, torch.randn(2, 1, 3), groups=4),
    "transpose2d, more groups than weight's first dimension": lambda f: f.conv_transpose2d(x4, w4, groups=8),
    "transpose1d, empty length": lambda f: f.conv_transpose1d(torch.randn(1, 4, 0), w3),
    "conv1d, zero stride": lambda f: f.conv1d(x3, w3c, stride=0),
    "conv1d, negative padding": lambda f: f.conv1d(x3, w3c, padding=-1),
}


def _layer(functional, name, *args, **kwargs):
    """torch's layer `name` for torch.nn.functional, ours for custom_conv.functional."""
    return getattr(custom_conv.nn if functional is CF else torch.nn, name)(*args, **kwargs)


def _error(call):
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


def _leading_words(message):
    """As tests/test_argument_errors.py compares them: up to where torch lists what it got."""
    return re.split(r" - got|\n|,? but got", message)[0]


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_arguments_raise_torchs_exception_and_words(case):
    (expected_type, expected), (got_type, got) = _error(lambda: ERRORS[case](F)), _error(lambda: ERRORS[case](CF))
    assert got_type is expected_type, (got, expected)
    assert _leading_words(got) == _leading_words(expected), (got, expected)
    if "invalid combination" not in expected:  # whose list of what it got shows only what was passed
        assert got == expected, (got, expected)


# The family, and conv2d for its errors (torch's words in torch's order).
# conv2d's dilations stay positive: torch words a zero dilation differently
# in float32 and float64 (its backends differ), and ours says what float32's
# says (test_bad_input.py).
RANDOM_CALLS = {**FUNCTIONS, "conv2d": 2}


def _random_call(rng):
    """One of RANDOM_CALLS on a random geometry, valid or not: sizes,
    kernels, strides, paddings (numeric and string), output paddings,
    dilations and groups, each sometimes out of range, channels sometimes
    mismatched. The batch is never empty: there torch skips its kernels'
    checks (returning an empty result or failing on a reshape), where ours
    still check the arguments."""
    name = rng.choice(list(RANDOM_CALLS))
    dims = RANDOM_CALLS[name]
    groups, in_channels, per_group = rng.choice([1, 1, 2, 3]), rng.choice([1, 2, 3, 4, 6]), rng.choice([1, 2, 3])
    pick = lambda *values: tuple(rng.choice(values) for _ in range(dims))  # noqa: E731
    kernel, sizes = pick(1, 2, 3, 4), pick(0, 1, 2, 3, 5, 7)
    stride, padding, dilation, output_padding = pick(0, 1, 2, 3), pick(-1, 0, 1, 2, 4), pick(0, 1, 2, 3), \
        pick(-1, 0, 1, 2, 3)
    x = torch.randn(rng.choice([1, 2]), in_channels, *sizes, dtype=torch.float64)
    mismatched = rng.random() < 0.1
    if name == "conv2d":
        dilation = tuple(max(d, 1) for d in dilation)
    if name in ("conv1d", "conv2d"):
        w = torch.randn(per_group * groups, in_channels + 1 if mismatched else max(in_channels // groups, 1), *kernel,
                        dtype=torch.float64)
        kwargs = dict(stride=stride, padding=rng.choice([padding, "same", "valid"]), dilation=dilation, groups=groups)
    else:
        w = torch.randn(in_channels + mismatched, per_group, *kernel, dtype=torch.float64)
        kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    bias = torch.randn(per_group * groups, dtype=torch.float64) if rng.random() < 0.5 else None
    return name, (x, w, bias), kwargs


def test_random_configurations_give_torchs_values_or_torchs_error():
    rng = random.Random(0)
    failures, values = [], 0
    for _ in range(1500):
        name, tensors, kwargs = _random_call(rng)
        results = []
        for functional in (F, CF):
            try:
                results.append(("value", getattr(functional, name)(*tensors, **kwargs)))
            except Exception as error:  # noqa: BLE001  (any error torch raises, ours must raise alike)
                results.append(("error", (type(error), str(error))))
        (kind, expected), (got_kind, got) = results
        values += kind == "value"
        if kind != got_kind or kind == "error" and got != expected or kind == "value" and not (
                got.shape == expected.shape and torch.allclose(got, expected, **TIGHT)):
            said = [result if kind == "error" else "a value" for kind, result in results]
            failures.append(f"{name}{[tuple(t.shape) for t in tensors if t is not None]} {kwargs}: torch {said[0]}, "
                            f"ours {said[1]}")
    assert failures == []
    assert values > 100  # enough valid geometries among them to compare values too


# ------------------------------------------------------------ convert() and enabled()


class Family(torch.nn.Module):
    """An encoder-decoder over images and one over sequences: each layer of
    the family, with output_size, unbatched calls and torch's functions."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.up_sized = torch.nn.ConvTranspose2d(6, 2, (3, 2), stride=(2, 1), dilation=(1, 2), bias=False)
        self.encode = torch.nn.Conv1d(2, 4, 3, padding="same", padding_mode="reflect")
        self.decode = torch.nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1)
        self.weight = torch.nn.Parameter(torch.randn(2, 2, 3) / 4)

    def forward(self, x):
        y = torch.relu(self.down(x))
        y = torch.relu(self.up(y))
        y = self.up_sized(y, output_size=[2 * y.shape[2] + 2, y.shape[3] + 2])
        s = y.flatten(2)                                              # (N, 2, L): a sequence
        s = self.decode(torch.tanh(self.encode(s)))
        s = F.conv1d(s, self.weight, padding=1) + torch.conv_transpose1d(s, self.weight.transpose(0, 1), None, 1, 1)
        s = torch.convolution(s, self.weight, None, [2], [1], [1], True, [1], 1)
        s = torch.ops.aten.conv1d(s, self.weight, None, [1], [1])
        w2 = self.up_sized.weight.transpose(0, 1)[:, :2, :2, :2]
        unbatched = F.conv_transpose2d(y[0], w2, stride=2)
        aten = torch.ops.aten.conv_transpose2d(y, w2, None, [1, 2], [0, 1], [0, 1])
        return s.sum(2) + unbatched.sum((1, 2)) + aten.sum((2, 3))


OURS = {"custom_conv::conv2d_forward", "custom_conv::conv2d_backward_input", "custom_conv::conv2d_backward_weight"}


def _run_with_grads(model, x):
    model.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = model(x)
    out.pow(2).sum().backward()
    return out, x.grad, {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_same(results, references):
    (out, gx, grads), (ref, ref_gx, ref_grads) = results, references
    torch.testing.assert_close(out, ref, **TIGHT)
    torch.testing.assert_close(gx, ref_gx, **TIGHT)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=lambda m: f"{name}: {m}", **TIGHT)


def _family():
    torch.manual_seed(0)
    return Family().double(), _randn(2, 3, 8, 6, seed=5)


def test_under_enabled_every_layer_and_function_of_the_family_runs_on_our_ops():
    model, x = _family()
    got = []
    with custom_conv.enabled():
        names = _op_names(lambda: got.append(_run_with_grads(model, x)))
    reference = []
    torch_names = _op_names(lambda: reference.append(_run_with_grads(model, x)))
    assert torch_conv_ops(names) == [], torch_conv_ops(names)
    assert OURS <= names
    assert {"aten::conv1d", "aten::conv_transpose1d", "aten::conv_transpose2d"} <= set(torch_conv_ops(torch_names))
    _assert_same(got[0], reference[0])


def test_convert_and_to_torch_swap_every_layer_of_the_family_sharing_parameters():
    model, x = _family()
    reference = _run_with_grads(model, x)
    weights = [p for p in model.parameters()]
    converted = custom_conv.convert(model)
    assert [type(m).__name__ for m in converted.children()] == ["Conv2d", "ConvTranspose2d", "ConvTranspose2d",
                                                                 "Conv1d", "ConvTranspose1d"]
    assert all(type(m).__module__ == "custom_conv.nn" for m in converted.children())
    assert converted.up.output_padding == (1, 1) and converted.encode.padding_mode == "reflect"
    assert all(p is q for p, q in zip(converted.parameters(), weights))
    # The model's forward calls F.conv1d, torch.conv_transpose1d and
    # torch.convolution itself, which convert() cannot reach: only enabled() does.
    names = _op_names(lambda: converted.up(torch.randn(1, 4, 3, 3, dtype=torch.float64)).sum().backward())
    assert torch_conv_ops(names) == [] and OURS - {"custom_conv::conv2d_forward"} <= names
    layers = torch.nn.Sequential(converted.down, converted.up, converted.up_sized)
    seq = torch.nn.Sequential(converted.encode, converted.decode)
    names = _op_names(lambda: (layers(x).sum() + seq(torch.randn(2, 2, 9, dtype=torch.float64)).sum()).backward())
    assert torch_conv_ops(names) == [] and OURS <= names
    _assert_same(_run_with_grads(converted, x), reference)
    back = custom_conv.to_torch(converted)
    assert all(type(m).__module__ == "torch.nn.modules.conv" for m in back.children())
    assert all(p is q for p, q in zip(back.parameters(), weights))


def test_convert_names_subclasses_and_lazy_layers_of_the_family_it_leaves_alone():
    class Special(torch.nn.ConvTranspose2d):
        pass

    model = torch.nn.Sequential(torch.nn.LazyConvTranspose1d(3, 3), Special(2, 2, 1), torch.nn.Conv1d(3, 3, 1))
    with pytest.warns(custom_conv.ConvertWarning,
                      match=r"LazyConvTranspose1d \(not materialised.*Special \(a subclass of ConvTranspose2d"):
        custom_conv.convert(model)
    assert type(model[2]) is custom_conv.nn.Conv1d and type(model[1]) is Special


def test_jit_trace_of_the_family_gives_no_tracer_warning_and_records_our_ops():
    model = custom_conv.convert(torch.nn.Sequential(
        torch.nn.ConvTranspose2d(4, 3, 3, stride=2, output_padding=1), torch.nn.Flatten(2),
        torch.nn.Conv1d(3, 2, 3, padding="same"), torch.nn.ConvTranspose1d(2, 2, 3, stride=2, dilation=2,
                                                                            output_padding=1))).eval()
    x = torch.randn(2, 4, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)
    assert [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)] == []
    graph = str(traced.inlined_graph)
    assert "custom_conv::conv2d_backward_input" in graph and "custom_conv::conv2d_forward" in graph
    torch.testing.assert_close(traced(x), model(x))


def test_meta_tensors_run_on_our_shape_functions_under_enabled():
    x, w = torch.empty(2, 4, 5, 5, device="meta"), torch.empty(4, 3, 3, 3, device="meta")
    layer = torch.nn.ConvTranspose1d(4, 2, 3, device="meta")
    got = []
    with custom_conv.enabled():
        names = _op_names(lambda: got.extend([F.conv_transpose2d(x, w, stride=2, output_padding=1),
                                              layer(torch.empty(4, 7, device="meta"))]))
    assert got[0].shape == (2, 3, 12, 12) and got[1].shape == (2, 9)
    assert "custom_conv::conv2d_backward_input" in names and torch_conv_ops(names) == []


@pytest.mark.slow
def test_torch_compile_of_the_autoencoder_runs_our_ops_without_a_graph_break():
    torch._dynamo.reset()
    model = conv_autoencoder(in_channels=1).eval()
    x = torch.randn(2, 1, 13, 18)
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled = torch.compile(model, fullgraph=True)
        names = _op_names(lambda: compiled(x).sum().backward())
    assert torch_conv_ops(names) == []
    assert {"custom_conv::conv2d_backward_input", "custom_conv::conv2d_backward_weight"} <= names
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_convert_takes_a_weight_normed_transposed_layer_sharing_its_parametrization():
    torch.manual_seed(0)
    model = torch.nn.Sequential(parametrizations.weight_norm(torch.nn.ConvTranspose2d(2, 3, 3, stride=2)),
                                parametrizations.weight_norm(torch.nn.Conv1d(3, 2, 3), dim=1)).double()
    shared = [model[0].parametrizations, model[1].parametrizations]
    reference = copy.deepcopy(model)
    converted = custom_conv.convert(model)
    assert [type(m).__bases__[0] for m in converted] == [custom_conv.nn.ConvTranspose2d, custom_conv.nn.Conv1d]
    assert [m.parametrizations for m in converted] == shared
    x = _randn(2, 2, 4, 4, seed=7)
    run = lambda m: m[1](m[0](x).flatten(2))  # noqa: E731
    out, ref = run(converted), run(reference)
    torch.testing.assert_close(out, ref, **TIGHT)
    out.pow(2).sum().backward()
    ref.pow(2).sum().backward()
    for (name, p), q in zip(converted.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}: {m}", **TIGHT)
    names = _op_names(lambda: run(converted))
    assert "custom_conv::conv2d_backward_input" in names and torch_conv_ops(names) == []


@pytest.mark.parametrize("cls", ["Conv1d", "ConvTranspose1d", "ConvTranspose2d"])
def test_jit_script_of_the_new_layers_says_torchscript_is_not_supported(cls):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's own deprecation
        with pytest.raises(RuntimeError, match="torch.jit.script: TorchScript is deprecated.*torch.jit.trace"):
            torch.jit.script(getattr(custom_conv.nn, cls)(2, 2, 3))


@pytest.mark.parametrize("backend", ["torch", "custom"])
def test_the_autoencoder_runs_no_torch_convolution_under_enabled(backend):
    """Built from torch's layers or ours, the autoencoder's forward and
    backward under enabled() run our convolutions, transposed ones included,
    and none of torch's."""
    torch.manual_seed(0)
    model = conv_autoencoder(in_channels=1, backend=backend)
    x = torch.rand(2, 1, 15, 13)
    with custom_conv.enabled():
        names = _op_names(lambda: model(x).sum().backward())
    assert torch_conv_ops(names) == []
    assert {"custom_conv::conv2d_forward", "custom_conv::conv2d_backward_input",
            "custom_conv::conv2d_backward_weight"} <= names
