"""PyTorch's own test inputs for these modules, run on ours.

torch ships the constructor arguments and inputs its module tests
(test_modules.py) use for every nn module (ModuleInfo, in
torch.testing._internal.common_modules), with reference functions and the
bad constructions and calls each module must reject. Here each input of each
module we replace builds torch's module and ours from the same seed and
checks what test_modules.py checks of a module, against torch's module: the
same initial parameters, the reference function, forward values and every
gradient (in float64 to rounding), in training and evaluation mode;
gradcheck and gradgradcheck through the parameters too; noncontiguous
inputs and parameters; channels_last in and out with torch's strides;
factory arguments (dtype, device); repr; a save/load round trip; the errors.
torch's own module under custom_conv.enabled() must agree as well, having
run our ops only. test_pytorch_samples.py does the same for the functions.
"""
import io
import re

import pytest
import torch
# torch's test inputs import expecttest, which requirements.txt installs; a
# GPU machine's own torch may come without it.
pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
from torch.utils._pytree import tree_leaves

import custom_conv
from helpers import OpLog, assert_only_ours_ran

MODULES = {info.module_cls: info for info in module_db
           if info.module_cls in (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
                                  torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d,
                                  torch.nn.AdaptiveMaxPool2d)}
assert len(MODULES) == len(custom_conv.nn.__all__), "torch's module database no longer has one of our modules"
OURS = {cls: getattr(custom_conv.nn, cls.__name__) for cls in MODULES}

TIGHT = dict(rtol=1e-10, atol=1e-10)  # float64: the same products summed in another order


def _inputs(cls, training, dtype=torch.float64):
    info = MODULES[cls]
    inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)
    inputs = [i for i in inputs if i.forward_input is not None]
    assert inputs
    return inputs


def _pair(cls, module_input, training, dtype=torch.float64):
    """torch's module and ours, each built from seed 0 (so with the same
    initial parameters if ours initialises as torch's does)."""
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    modules = []
    for make in (cls, OURS[cls]):
        torch.manual_seed(0)
        modules.append(make(*args, **kwargs).to(dtype).train(training))
    return modules


def _forward_and_grads(module, args, kwargs, seed=1):
    """The module's outputs and the gradients of its tensor arguments and
    parameters for an output gradient drawn from `seed`."""
    args = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    out = module(*args, **kwargs)
    first = out[0] if isinstance(out, tuple) else out
    leaves = [a for a in args if isinstance(a, torch.Tensor)] + list(module.parameters())
    grad_output = torch.randn(first.shape, generator=torch.Generator().manual_seed(seed), dtype=first.dtype)
    return out, torch.autograd.grad(first, leaves, grad_output)


def _assert_same(got, expected, **tolerances):
    for g, e in zip(tree_leaves(got), tree_leaves(expected), strict=True):
        torch.testing.assert_close(g, e, **(tolerances or TIGHT))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls", list(MODULES), ids=lambda cls: cls.__name__)
def test_forward_and_gradients_match_torchs_module(cls, training):
    for module_input in _inputs(cls, training):
        theirs, ours = _pair(cls, module_input, training)
        _assert_same(dict(ours.named_parameters()), dict(theirs.named_parameters()), rtol=0, atol=0)
        args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        expected = _forward_and_grads(theirs, args, kwargs)
        with OpLog() as log:
            got = _forward_and_grads(ours, args, kwargs)
        assert_only_ours_ran(log.names)
        _assert_same(got, expected)
        with custom_conv.enabled(), OpLog() as log:  # torch's own module, ours swapped in
            swapped = _forward_and_grads(theirs, args, kwargs)
        assert_only_ours_ran(log.names)
        _assert_same(swapped, expected)
        if module_input.reference_fn is not None:
            # (ModuleInput wraps it to pass the module's parameters itself)
            _assert_same(ours(*args, **kwargs), module_input.reference_fn(ours, *args, **kwargs))


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda cls: cls.__name__)
def test_gradcheck_and_gradgradcheck_through_inputs_and_parameters(cls):
    for module_input in _inputs(cls, training=True):
        _, ours = _pair(cls, module_input, training=True)
        args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        names = [name for name, _ in ours.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_() for p in ours.parameters())
        tensors = tuple(a.detach().clone().requires_grad_() for a in args)

        def fn(*flat):
            values = dict(zip(names, flat[:len(names)]))
            out = torch.func.functional_call(ours, values, flat[len(names):], kwargs)
            return out[0] if isinstance(out, tuple) else out
        assert torch.autograd.gradcheck(fn, params + tensors, check_forward_ad=True, check_batched_grad=True)
        assert torch.autograd.gradgradcheck(fn, params + tensors, check_fwd_over_rev=True, check_batched_grad=True)


def _noncontiguous(t):
    """A copy of t with the same values whose last dimension has stride 2."""
    spread = torch.empty(*t.shape, 2, dtype=t.dtype)[..., 0]
    spread.copy_(t.detach())
    assert not spread.is_contiguous() or t.numel() <= 1
    return spread.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda cls: cls.__name__)
def test_noncontiguous_inputs_and_parameters_give_the_same_results(cls):
    for module_input in _inputs(cls, training=True):
        _, ours = _pair(cls, module_input, training=True)
        args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        expected = _forward_and_grads(ours, args, kwargs)
        with torch.no_grad():
            for name, p in list(ours.named_parameters()):
                setattr(ours, name, torch.nn.Parameter(_noncontiguous(p)))
        got = _forward_and_grads(ours, [_noncontiguous(a) for a in args], kwargs)
        _assert_same(got, expected)


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda cls: cls.__name__)
def test_channels_last_gives_torchs_values_and_strides(cls):
    for module_input in _inputs(cls, training=True):
        args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        if args[0].dim() != 4:
            continue
        results = []
        for module in _pair(cls, module_input, training=True):
            module.to(memory_format=torch.channels_last)
            x = args[0].detach().to(memory_format=torch.channels_last).requires_grad_()
            out = module(x, *args[1:], **kwargs)
            first = out[0] if isinstance(out, tuple) else out
            first.backward(torch.ones_like(first))
            results.append((first, x.grad, [p.grad for p in module.parameters()]))
        (out, grad, param_grads), (ref, ref_grad, ref_param_grads) = reversed(results)
        _assert_same((out, grad, param_grads), (ref, ref_grad, ref_param_grads))
        assert out.stride() == ref.stride() and grad.stride() == ref_grad.stride()
        assert [g.stride() for g in param_grads] == [g.stride() for g in ref_param_grads]


@pytest.mark.parametrize("cls", list(MODULES), ids=lambda cls: cls.__name__)
def test_factory_arguments_repr_and_a_save_load_round_trip(cls):
    for module_input in _inputs(cls, training=True):
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        theirs, ours = _pair(cls, module_input, training=True)
        assert repr(ours) == repr(theirs)
        if list(theirs.parameters()):
            made = OURS[cls](*args, **kwargs, device="cpu", dtype=torch.float64)
            assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in made.parameters())
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert type(loaded) is OURS[cls]
        forward_args = module_input.forward_input.args
        _assert_same(loaded(*forward_args), ours(*forward_args))


@pytest.mark.parametrize("cls", [cls for cls in MODULES if MODULES[cls].module_error_inputs_func is not None],
                         ids=lambda cls: cls.__name__)
def test_error_inputs_raise_torchs_exception(cls):
    info = MODULES[cls]
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=False,
                                           training=True)
    assert errors
    for error in errors:
        module_input = error.module_error_input
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        with pytest.raises(error.error_type) as raised:
            module = OURS[cls](*args, **kwargs)
            assert error.error_on == ModuleErrorEnum.FORWARD_ERROR, "built what torch refuses to build"
            module(*module_input.forward_input.args, **module_input.forward_input.kwargs)
        assert re.search(error.error_regex, str(raised.value)), (error.error_regex, str(raised.value))
