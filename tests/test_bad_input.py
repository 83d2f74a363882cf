"""Every call torch.nn.functional rejects, ours rejects too, with a message
that names the problem; direct op calls with bad arguments raise, never crash."""
import pytest
import torch
import torch.nn.functional as F

from custom_conv import functional as CF

ops = torch.ops.custom_conv
x4 = torch.randn(2, 4, 8, 8)
w = torch.randn(6, 4, 3, 3)

# name: (call taking a functional module, pattern our message must match)
CONV_CASES = {
    "2-D input": (lambda f: f.conv2d(torch.randn(8, 8), w), r"3D \(unbatched\) or 4D"),
    "5-D input": (lambda f: f.conv2d(torch.randn(1, 2, 4, 8, 8), w), r"3D \(unbatched\) or 4D"),
    "3-D weight": (lambda f: f.conv2d(x4, torch.randn(6, 4, 3)), r"4-D weight"),
    "channel mismatch": (lambda f: f.conv2d(x4, torch.randn(6, 3, 3, 3)), r"input has 4 channels"),
    "groups do not divide out_channels": (lambda f: f.conv2d(x4, torch.randn(5, 2, 3, 3), groups=2),
                                          r"out_channels \(5\) must be divisible by groups"),
    "groups do not match in_channels": (lambda f: f.conv2d(x4, torch.randn(6, 4, 3, 3), groups=2),
                                        r"expects 8 input channels"),
    "zero groups": (lambda f: f.conv2d(x4, w, groups=0), r"groups must be positive"),
    "zero stride": (lambda f: f.conv2d(x4, w, stride=0), r"stride must be positive"),
    "negative stride": (lambda f: f.conv2d(x4, w, stride=(1, -1)), r"stride must be positive"),
    "negative padding": (lambda f: f.conv2d(x4, w, padding=-1), r"padding must be non-negative"),
    "zero dilation": (lambda f: f.conv2d(x4, w, dilation=0), r"dilation must be positive"),
    "kernel larger than padded input": (lambda f: f.conv2d(torch.randn(1, 4, 2, 8), w),
                                        r"can't be greater than the padded input size"),
    "dilated kernel larger than input": (lambda f: f.conv2d(x4, w, dilation=4),
                                         r"can't be greater than the padded input size"),
    "dtype mismatch": (lambda f: f.conv2d(x4, w.double()), r"must have the same dtype"),
    "bias dtype mismatch": (lambda f: f.conv2d(x4, w, torch.randn(6, dtype=torch.float64)),
                            r"must have the same dtype"),
    "bias of wrong size": (lambda f: f.conv2d(x4, w, torch.randn(5)), r"bias of shape \(6,\)"),
    "same padding with stride": (lambda f: f.conv2d(x4, w, stride=2, padding="same"),
                                 r"not supported for strided convolutions"),
    "unknown padding string": (lambda f: f.conv2d(x4, w, padding="full"), r"Invalid padding string"),
}

POOL_CASES = {
    "2-D input": (lambda f: f.max_pool2d(torch.randn(8, 8), 2), r"3D \(unbatched\) or 4D"),
    "5-D input": (lambda f: f.max_pool2d(torch.randn(1, 2, 3, 8, 8), 2), r"3D \(unbatched\) or 4D"),
    "zero kernel": (lambda f: f.max_pool2d(x4, 0), r"kernel_size must be positive"),
    "zero stride": (lambda f: f.max_pool2d(x4, 2, stride=0), r"stride must be positive"),
    "negative padding": (lambda f: f.max_pool2d(x4, 3, padding=-1), r"padding must be non-negative"),
    "padding over half the kernel": (lambda f: f.max_pool2d(x4, 2, padding=2), r"at most half of kernel_size"),
    "zero dilation": (lambda f: f.max_pool2d(x4, 2, dilation=0), r"dilation must be positive"),
    "empty output": (lambda f: f.max_pool2d(x4, 9), r"output size is too small"),
    "dilated window larger than input": (lambda f: f.max_pool2d(x4, 3, dilation=4), r"output size is too small"),
    "zero-sized plane": (lambda f: f.max_pool2d(torch.randn(2, 3, 0, 8), 2), r"non-zero channels, height"),
}


@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_rejects_what_torch_rejects(case):
    call, pattern = CONV_CASES[case]
    with pytest.raises((RuntimeError, ValueError)):
        call(F)
    with pytest.raises((RuntimeError, ValueError), match=pattern):
        call(CF)


@pytest.mark.parametrize("case", list(POOL_CASES), ids=list(POOL_CASES))
def test_max_pool2d_rejects_what_torch_rejects(case):
    call, pattern = POOL_CASES[case]
    with pytest.raises((RuntimeError, ValueError)):
        call(F)
    with pytest.raises((RuntimeError, ValueError), match=pattern):
        call(CF)


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
