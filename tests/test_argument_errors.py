"""Every argument torch rejects by its type or its length, ours rejects with
the same exception type and the same leading words: torch's and ours are
called with each bad argument and their errors compared. (The values, such
as a zero stride, are test_bad_input.py's.)"""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import custom_conv
from custom_conv import functional as CF

x = torch.randn(1, 2, 8, 8)
w = torch.randn(3, 2, 3, 3)
b = torch.randn(3)

CONV2D = {  # name: keyword arguments of conv2d besides input and weight, or a call of (functional, x, w)
    "float stride": dict(stride=1.5),
    "float padding": dict(padding=1.7),
    "float dilation": dict(dilation=1.5),
    "bool stride": dict(stride=True),
    "NumPy bool stride": dict(stride=np.bool_(True)),
    "NumPy float stride": dict(stride=np.float64(2.0)),
    "string stride": dict(stride="2"),
    "None stride": dict(stride=None),
    "None padding": dict(padding=None),
    "None dilation": dict(dilation=None),
    "float groups": dict(groups=1.5),
    "bool groups": dict(groups=True),
    "None groups": dict(groups=None),
    "string groups": dict(groups="1"),
    "1-D tensor stride": dict(stride=torch.tensor([1, 1])),
    "float tensor stride": dict(stride=torch.tensor(1.0)),
    "tuple starting with a float": dict(stride=(1.5, 1)),
    "tuple starting with a bool": dict(stride=(True, 1)),
    "list with a float second": dict(stride=[2, 2.0]),
    "tuple with None second": dict(padding=(1, None)),
    "three strides": dict(stride=(1, 2, 3)),
    "no strides": dict(stride=()),
    "three paddings": dict(padding=(1, 1, 1)),
    "no dilations": dict(dilation=[]),
    "unknown padding string": dict(padding="foo"),
    "upper-case padding string": dict(padding="SAME"),
    "same padding with a stride": dict(padding="same", stride=2),
    "same padding with a stride on one axis": dict(padding="same", stride=(1, 2)),
    "None weight": lambda f, x, w: f.conv2d(x, None),
    "list weight": lambda f, x, w: f.conv2d(x, [1.0]),
    "float bias": lambda f, x, w: f.conv2d(x, w, 1.0),
    "None input": lambda f, x, w: f.conv2d(None, w),
    "positional float stride": lambda f, x, w: f.conv2d(x, w, None, 1.5),
}

MAX_POOL2D = {  # name: positional and keyword arguments after the input
    "float kernel": ((2.5,), {}),
    "float stride": ((2, 1.5), {}),
    "float padding": ((2,), dict(padding=0.5)),
    "float dilation": ((2,), dict(dilation=1.5)),
    "bool kernel": ((True,), {}),
    "bool stride": ((2, True), {}),
    "None kernel": ((None,), {}),
    "None padding": ((2,), dict(padding=None)),
    "string kernel": (("2",), {}),
    "NumPy float kernel": ((np.float64(2),), {}),
    "1-D tensor kernel": ((torch.tensor([2, 2]),), {}),
    "tuple starting with a float": (((1.5, 2),), {}),
    "tuple starting with a bool": (((True, 2),), {}),
    "tuple starting with None": (((None, 2),), {}),
    "list with a float second": (([2, 2.0],), {}),
    "three kernel sizes": (((2, 2, 2),), {}),
    "no kernel size": (((),), {}),
    "three strides": ((2, (1, 2, 3)), {}),
    "three paddings": ((2,), dict(padding=(1, 1, 1))),
    "no paddings": ((2,), dict(padding=())),
    "three dilations": ((2,), dict(dilation=(1, 1, 1))),
    "float ceil_mode": ((2,), dict(ceil_mode=1.5)),
    "int ceil_mode": ((2,), dict(ceil_mode=1)),
    "None ceil_mode": ((2,), dict(ceil_mode=None)),
    "string ceil_mode": ((2,), dict(ceil_mode="yes")),
}

MODULES = {  # name: (module class taking our nn or torch.nn, input)
    "Conv2d, float stride": (lambda nn: nn.Conv2d(2, 3, 3, stride=1.5), x),
    "Conv2d, float dilation, reflect padding": (lambda nn: nn.Conv2d(2, 3, 3, padding=1, dilation=1.5,
                                                                     padding_mode="reflect"), x),
    "Conv2d, float padding": (lambda nn: nn.Conv2d(2, 3, 3, padding=0.5), x),
    "Conv2d, None input": (lambda nn: nn.Conv2d(2, 3, 3), None),
    "MaxPool2d, float kernel": (lambda nn: nn.MaxPool2d(2.5), x),
    "MaxPool2d, float stride": (lambda nn: nn.MaxPool2d(2, 1.5), x),
    "MaxPool2d, float stride, with indices": (lambda nn: nn.MaxPool2d(2, 1.5, return_indices=True), x),
    "MaxPool2d, None ceil_mode": (lambda nn: nn.MaxPool2d(2, ceil_mode=None), x),
    "MaxPool2d, three paddings": (lambda nn: nn.MaxPool2d(2, padding=(1, 1, 1)), x),
    "MaxPool2d, None input": (lambda nn: nn.MaxPool2d(2), None),
}


def leading_words(message):
    """A message up to where torch starts listing what it got."""
    return re.split(r" - got|\n|,? but got", message)[0]


def error_of(call):
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


def assert_same_error(torch_call, our_call):
    expected_type, expected = error_of(torch_call)
    got_type, got = error_of(our_call)
    assert got_type is expected_type, (got, expected)
    assert leading_words(got) == leading_words(expected), (got, expected)


def conv2d_call(case):
    spec = CONV2D[case]
    if callable(spec):
        return lambda f: spec(f, x, w)
    return lambda f: f.conv2d(x, w, b, **spec)


@pytest.mark.parametrize("case", list(CONV2D))
def test_conv2d_rejects_a_bad_argument_as_torch_does(case):
    call = conv2d_call(case)
    assert_same_error(lambda: call(F), lambda: call(CF))


@pytest.mark.parametrize("return_indices", [False, True])
@pytest.mark.parametrize("case", list(MAX_POOL2D))
def test_max_pool2d_rejects_a_bad_argument_as_torch_does(case, return_indices):
    args, kwargs = MAX_POOL2D[case]
    assert_same_error(lambda: F.max_pool2d(x, *args, return_indices=return_indices, **kwargs),
                      lambda: CF.max_pool2d(x, *args, return_indices=return_indices, **kwargs))
    if return_indices:
        assert_same_error(lambda: F.max_pool2d_with_indices(x, *args, **kwargs),
                          lambda: CF.max_pool2d_with_indices(x, *args, **kwargs))


@pytest.mark.parametrize("case", list(MODULES))
def test_modules_reject_a_bad_argument_as_torch_does(case):
    make, input = MODULES[case]
    assert_same_error(lambda: make(torch.nn)(input), lambda: make(custom_conv.nn)(input))


ACCEPTED = {  # what torch's parser takes besides ints and pairs of ints
    "conv2d, NumPy integer stride": lambda f: f.conv2d(x, w, stride=np.int64(2)),
    "conv2d, 0-dim integer tensor stride": lambda f: f.conv2d(x, w, stride=torch.tensor(2)),
    "conv2d, a bool after an int": lambda f: f.conv2d(x, w, stride=[2, True]),
    "conv2d, one padding in a tuple": lambda f: f.conv2d(x, w, padding=(1,)),
    "conv2d, NumPy integer groups": lambda f: f.conv2d(x, w, groups=np.int64(1)),
    "max_pool2d, empty stride": lambda f: f.max_pool2d(x, 2, ()),
    "max_pool2d, NumPy integer kernel": lambda f: f.max_pool2d(x, np.int32(3)),
    "max_pool2d, a bool after an int": lambda f: f.max_pool2d(x, (2, True)),
    "max_pool2d, 0-dim tensor stride": lambda f: f.max_pool2d(x, 2, torch.tensor(1)),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_what_torch_accepts_we_accept_with_the_same_result(case):
    torch.testing.assert_close(ACCEPTED[case](CF), ACCEPTED[case](F))
