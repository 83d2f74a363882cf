"""Every call torch.nn.functional rejects, ours rejects too, with a message
that names the problem; direct op calls with bad arguments raise, never crash."""
import re

import pytest
import torch
import torch.nn.functional as F

from custom_conv import functional as CF

ops = torch.ops.custom_conv
x4 = torch.randn(2, 4, 8, 8)
w = torch.randn(6, 4, 3, 3)

# name: (call taking a functional module, pattern our message must match,
#        whether torch's message matches it too). Where torch's does, ours is
# torch's message itself, so code written against torch's errors works with
# ours, and the first of several faults is the one torch reports.
CONV_CASES = {
    "2-D input": (lambda f: f.conv2d(torch.randn(8, 8), w), r"Expected 3D \(unbatched\) or 4D", True),
    "5-D input": (lambda f: f.conv2d(torch.randn(1, 2, 4, 8, 8), w), r"Expected 3D \(unbatched\) or 4D", True),
    "3-D weight": (lambda f: f.conv2d(x4, torch.randn(6, 4, 3)),
                   r"expected stride to be a single integer value or a list of 1 values", True),
    "2-D weight": (lambda f: f.conv2d(x4, torch.randn(6, 4)), r"weight should have at least three dimensions", True),
    "3-D weight, 'same' padding": (lambda f: f.conv2d(x4, torch.randn(6, 4, 3), padding="same"),
                                   r"Expected 3-dimensional input for 3-dimensional weight\[6, 4, 3\]", True),
    "channel mismatch": (lambda f: f.conv2d(x4, torch.randn(6, 3, 3, 3)),
                         r"Given groups=1, weight of size \[6, 3, 3, 3\], expected input\[2, 4, 8, 8\] to have 3 "
                         r"channels, but got 4 channels instead", True),
    "groups do not divide out_channels": (lambda f: f.conv2d(x4, torch.randn(5, 2, 3, 3), groups=2),
                                          r"Given groups=2, expected weight to be divisible by 2 at dimension 0",
                                          True),
    "groups do not match in_channels": (lambda f: f.conv2d(x4, torch.randn(6, 4, 3, 3), groups=2),
                                        r"expected input\[2, 4, 8, 8\] to have 8 channels, but got 4", True),
    "zero groups": (lambda f: f.conv2d(x4, w, groups=0), r"non-positive groups is not supported", True),
    "zero stride": (lambda f: f.conv2d(x4, w, stride=0), r"non-positive stride is not supported", True),
    "negative stride": (lambda f: f.conv2d(x4, w, stride=(1, -1)), r"non-positive stride is not supported", True),
    "negative padding": (lambda f: f.conv2d(x4, w, padding=-1), r"negative padding is not supported", True),
    "zero dilation": (lambda f: f.conv2d(x4, w, dilation=0), r"non-positive dilation is not supported", True),
    "negative dilation": (lambda f: f.conv2d(x4, w, dilation=(1, -2)), r"dilation should be greater than zero", True),
    "more groups than filters": (lambda f: f.conv2d(x4, torch.randn(2, 2, 3, 3), groups=3),
                                 r"Given groups=3, expected weight to be at least 3 at dimension 0", True),
    "kernel larger than padded input": (
        lambda f: f.conv2d(torch.randn(1, 4, 1, 1), torch.randn(6, 4, 10, 10)),
        r"Calculated padded input size per channel: \(1 x 1\). Kernel size: \(10 x 10\). Kernel size can't be "
        r"greater than actual input size", True),
    "dilated kernel larger than input": (lambda f: f.conv2d(x4, w, dilation=4),
                                         r"Kernel size: \(9 x 9\). Kernel size can't be greater", True),
    "dtype mismatch": (lambda f: f.conv2d(x4, w.double()), r"Input type .* and weight type .* should be the same",
                       True),
    "bias dtype mismatch": (lambda f: f.conv2d(x4, w, torch.randn(6, dtype=torch.float64)),
                            r"Input type \(float\) and bias type \(double\) should be the same", True),
    "bias of wrong size": (lambda f: f.conv2d(x4, w, torch.randn(5)),
                           r"expected bias to be 1-dimensional with 6 elements, but got bias of size \[5\]", True),
    "same padding with stride": (lambda f: f.conv2d(x4, w, stride=2, padding="same"),
                                 r"padding='same' is not supported for strided convolutions", True),
    "unknown padding string": (lambda f: f.conv2d(x4, w, padding="full"), r"Invalid padding string: 'full'", True),
}

POOL_CASES = {
    "2-D input": (lambda f: f.max_pool2d(torch.randn(8, 8), 2), r"non-empty 3D or 4D \(batch mode\) tensor expected",
                  True),
    "5-D input": (lambda f: f.max_pool2d(torch.randn(1, 2, 3, 8, 8), 2),
                  r"non-empty 3D or 4D \(batch mode\) tensor expected", True),
    "zero kernel": (lambda f: f.max_pool2d(x4, 0), r"stride should not be zero", True),
    "zero kernel with a stride": (lambda f: f.max_pool2d(x4, 0, stride=1), r"kernel size should be greater than zero",
                                  True),
    "zero stride": (lambda f: f.max_pool2d(x4, 2, stride=0), r"stride should not be zero", True),
    "negative padding": (lambda f: f.max_pool2d(x4, 3, padding=-1), r"pad must be non-negative", True),
    "padding over half the kernel": (lambda f: f.max_pool2d(x4, 2, padding=2),
                                     r"pad should be at most half of effective kernel size", True),
    "zero dilation": (lambda f: f.max_pool2d(x4, 2, dilation=0), r"dilation should be greater than zero", True),
    "empty output": (lambda f: f.max_pool2d(x4, 9),
                     r"Given input size: \(4x8x8\). Calculated output size: \(4x0x0\). Output size is too small",
                     True),
    "dilated window larger than input": (lambda f: f.max_pool2d(x4, 3, dilation=4), r"Output size is too small",
                                         True),
    "zero-sized plane": (lambda f: f.max_pool2d(torch.randn(2, 3, 0, 8), 2),
                         r"Expected 3D or 4D \(batch mode\) tensor with optional 0 dim batch size", True),
}


@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def _rejects_as_torch_does(call, pattern, torch_says_it_too):
    with pytest.raises((RuntimeError, ValueError), match=pattern if torch_says_it_too else None) as theirs:
        call(F)
    with pytest.raises((RuntimeError, ValueError), match=pattern) as ours:
        call(CF)
    if torch_says_it_too:
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_rejects_what_torch_rejects(case):
    _rejects_as_torch_does(*CONV_CASES[case])


@pytest.mark.parametrize("case", list(POOL_CASES), ids=list(POOL_CASES))
def test_max_pool2d_rejects_what_torch_rejects(case):
    _rejects_as_torch_does(*POOL_CASES[case])


def test_integer_tensors_are_rejected_with_a_clear_message():
    # A deliberate difference: torch's CPU kernels also accept integer
    # tensors; ours are written for floating point only, and say so.
    with pytest.raises(RuntimeError, match=r"expected input to be a floating-point tensor, got Long"):
        CF.conv2d(x4.long(), w.long())
    with pytest.raises(RuntimeError, match=r"expected input to be a floating-point tensor, got Int"):
        CF.max_pool2d(x4.int(), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for a second device")
def test_device_mismatch_is_rejected():
    with pytest.raises(RuntimeError):
        F.conv2d(x4, w.cuda())
    with pytest.raises(RuntimeError, match=r"must be on the same device"):
        CF.conv2d(x4, w.cuda())


ARGS = ([1, 1], [0, 0], [1, 1], 1)
POOL = ([2, 2], [2, 2], [0, 0], [1, 1], False)  # kernel, stride, padding, dilation, ceil_mode
DIRECT_CASES = {
    "forward with 3-D input": (lambda: ops.conv2d_forward(x4[0], w, None, *ARGS), r"4-D"),
    "forward with a 1-value stride": (lambda: ops.conv2d_forward(x4, w, None, [1], [0, 0], [1, 1], 1),
                                      r"stride to have 2 values"),
    "backward_input with grad_output of wrong size": (
        lambda: ops.conv2d_backward_input(torch.randn(2, 6, 5, 5), w, [2, 4, 8, 8], *ARGS),
        r"expected grad_output of size \[2, 6, 6, 6\]"),
    "backward_input with 3 input sizes": (
        lambda: ops.conv2d_backward_input(torch.randn(2, 6, 6, 6), w, [4, 8, 8], *ARGS), r"4-D input"),
    "backward_weight with grad_output of wrong dtype": (
        lambda: ops.conv2d_backward_weight(torch.randn(2, 6, 6, 6).double(), x4, [6, 4, 3, 3], *ARGS),
        r"grad_output \(Double\) must have dtype Float"),
    "backward_bias with 2-D grad": (lambda: ops.conv2d_backward_bias(torch.randn(2, 6)), r"4-D"),
    "pool backward with float indices": (
        lambda: ops.max_pool2d_backward(torch.randn(2, 4, 4, 4), torch.zeros(2, 4, 4, 4), [2, 4, 8, 8], *POOL),
        r"int64 indices"),
    "pool backward with mismatched indices": (
        lambda: ops.max_pool2d_backward(torch.randn(2, 4, 4, 4), torch.zeros(2, 4, 4, 3, dtype=torch.long),
                                        [2, 4, 8, 8], *POOL), r"do not match grad_output"),
    "pool backward with grad_output not of the pooled size": (
        lambda: ops.max_pool2d_backward(torch.randn(2, 4, 3, 3), torch.zeros(2, 4, 3, 3, dtype=torch.long),
                                        [2, 4, 8, 8], *POOL), r"expected grad_output of size \[2, 4, 4, 4\]"),
    "avg pool backward with grad_output not of the pooled size": (
        lambda: ops.avg_pool2d_backward(torch.randn(2, 4, 3, 3), [2, 4, 8, 8], [2, 2], [2, 2], [0, 0], False, True,
                                        None), r"avg_pool2d_backward: expected grad_output of size \[2, 4, 4, 4\]"),
    "adaptive pool backward with 3-D grad_output": (
        lambda: ops.adaptive_avg_pool2d_backward(torch.randn(4, 4, 4), [2, 4, 8, 8]),
        r"adaptive_avg_pool2d_backward: expected a 4-D grad_output"),
    "adaptive pool backward with integer grad_output": (
        lambda: ops.adaptive_avg_pool2d_backward(torch.ones(2, 4, 4, 4, dtype=torch.int32), [2, 4, 8, 8]),
        r"adaptive_avg_pool2d_backward: expected grad_output to be a floating-point"),
    "adaptive max pool backward with float indices": (
        lambda: ops.adaptive_max_pool2d_backward(torch.randn(2, 4, 4, 4), torch.zeros(2, 4, 4, 4), [2, 4, 8, 8]),
        r"adaptive_max_pool2d_backward: expected int64 indices"),
    "adaptive max pool backward with mismatched indices": (
        lambda: ops.adaptive_max_pool2d_backward(torch.randn(2, 4, 4, 4), torch.zeros(2, 4, 4, 3, dtype=torch.long),
                                                 [2, 4, 8, 8]), r"do not match grad_output"),
    "adaptive max pool backward with grad_output of another batch": (
        lambda: ops.adaptive_max_pool2d_backward(torch.randn(3, 4, 4, 4), torch.zeros(3, 4, 4, 4, dtype=torch.long),
                                                 [2, 4, 8, 8]), r"expected grad_output of size \[2, 4, 4, 4\]"),
    "pool forward with integer input": (
        lambda: ops.max_pool2d_forward(x4.int(), [2, 2], [2, 2], [0, 0], [1, 1], False), r"floating-point"),
}


@pytest.mark.parametrize("case", list(DIRECT_CASES), ids=list(DIRECT_CASES))
def test_direct_op_calls_with_bad_arguments_raise(case):
    call, pattern = DIRECT_CASES[case]
    with pytest.raises(RuntimeError, match=pattern):
        call()


@pytest.mark.parametrize("index", [-1, 64, 10**12])
def test_pool_backward_routes_out_of_plane_indices_nowhere_without_touching_memory(index):
    # Such indices mark windows made only of padding (see test_max_pool2d.py);
    # they must neither write outside the gradient nor into another plane.
    indices = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    indices[0, 0, 0, 0] = index
    grad = ops.max_pool2d_backward(torch.ones(2, 4, 4, 4), indices, [2, 4, 8, 8], *POOL)
    assert grad[0, 0, 0, 0] == 15 and grad.sum() == 2 * 4 * 16 - 1


NON_TENSOR_CALLS = {
    "conv2d": lambda F_, nn: F_.conv2d(None, w),
    "max_pool2d": lambda F_, nn: F_.max_pool2d(None, 2),
    "Conv2d": lambda F_, nn: nn.Conv2d(3, 3, 3)(None),
    "MaxPool2d": lambda F_, nn: nn.MaxPool2d(2)(None),
}


@pytest.mark.parametrize("case", list(NON_TENSOR_CALLS))
def test_a_non_tensor_input_is_a_type_error_as_in_torch(case):
    import custom_conv
    call = NON_TENSOR_CALLS[case]
    with pytest.raises(TypeError) as torchs:
        call(F, torch.nn)
    words = str(torchs.value).split(" - got")[0]  # conv2d lists the types it got
    with pytest.raises(TypeError, match=re.escape(words)):
        call(CF, custom_conv.nn)
