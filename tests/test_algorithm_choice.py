"""One function picks each pass's algorithm (csrc/conv2d_algorithm.cpp);
custom_conv.explain_conv2d reports its choice. These tests pin the choice for
the layers each algorithm is meant for, at the thresholds it is made by, and
check that every algorithm so chosen gives torch's values and gradients."""
import functools
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

import custom_conv
from custom_conv import functional as CF
from helpers import cudnn_tf32, dtypes, num_threads

KERNELS = custom_conv.cpu_kernels()


def layer(cin, cout, size, k, groups=1, batch=2, dtype=torch.float32):
    return torch.randn(batch, cin, size, size, dtype=dtype), torch.randn(cout, cin // groups, k, k, dtype=dtype)


# name: (input channels, output channels, plane size, kernel, conv kwargs,
#        forward, backward_input, backward_weight as chosen with the AVX-512 kernels)
LAYERS = {
    "LeNet conv1: one input channel": (1, 6, 32, 5, {}, "direct", "im2col", "direct"),
    "LeNet conv2: few channels, 5x5": (6, 16, 14, 5, {}, "direct", "direct", "direct"),
    "ResNet-20 stride 2": (16, 32, 32, 3, dict(stride=2, padding=1), "direct", "direct", "direct"),
    # Dilated, so that Winograd (3x3 stride 1 without dilation) leaves them to the direct kernels' limits.
    "64-64 dilated: 576 reduction steps, the direct limit": (64, 64, 16, 3, dict(padding=2, dilation=2), "direct",
                                                             "direct", "direct"),
    "65 input channels on a 12x12 plane: one step past the limit": (
        65, 64, 12, 3, dict(padding=2, dilation=2), "im2col", "direct", "im2col"),
    "128 input channels, 14x14 plane: the direct forward's longer limit": (
        128, 128, 14, 3, dict(padding=2, dilation=2), "direct", "im2col", "im2col"),
    "129 input channels: one step past the direct forward's longer limit": (
        129, 128, 14, 3, dict(padding=2, dilation=2), "im2col", "im2col", "im2col"),
    "128-256: too many output channels for the direct forward's longer limit": (
        128, 256, 14, 3, dict(padding=2, dilation=2), "im2col", "im2col", "im2col"),
    "128 output channels: the most the direct weight gradient takes": (
        64, 128, 16, 3, dict(padding=2, dilation=2), "direct", "im2col", "direct"),
    "129 output channels: too many for the direct weight gradient": (
        64, 129, 16, 3, dict(padding=2, dilation=2), "direct", "im2col", "im2col"),
    "VGG 3x3 stride 1, 128 channels": (128, 128, 12, 3, dict(padding=1), "winograd", "winograd", "winograd"),
    "VGG 64-128 @16 at batch 1: too few tiles for Winograd's forward to beat the direct kernels": (
        64, 128, 16, 3, dict(padding=1), "direct", "winograd", "winograd"),
    "64-64 @24: the fewest channels Winograd takes": (64, 64, 24, 3, dict(padding=1), "winograd", "winograd",
                                                     "winograd"),
    "64-64 @8 at batch 32 (ResNet-20): with 64 channels too few tiles to beat the direct kernels": (
        64, 64, 8, 3, dict(padding=1), "direct", "direct", "winograd"),
    "64-64 @8 at batch 8: 128 tiles, too few to beat the direct kernels at half rate too": (
        64, 64, 8, 3, dict(padding=1), "direct", "direct", "winograd"),
    "63 channels: too few for Winograd": (63, 64, 24, 3, dict(padding=1), "direct", "direct", "direct"),
    "64-64 @40: Winograd's weight gradient in its plane layout leaves it to the direct kernels": (
        64, 64, 40, 3, dict(padding=1), "winograd", "winograd", "direct"),
    "ResNet-20 32-32 @16": (32, 32, 16, 3, dict(padding=1), "direct", "direct", "direct"),
    "ResNet-20 32-32 @16 at batch 8: 512 tiles, enough for a 32-channel weight gradient at half rate": (
        32, 32, 16, 3, dict(padding=1), "direct", "direct", "direct"),
    "ResNet-20 32-32 @16 at batch 32: 2048 tiles, enough for 32-channel Winograd at half rate": (
        32, 32, 16, 3, dict(padding=1), "direct", "direct", "direct"),
    "31 channels": (31, 32, 16, 3, dict(padding=1), "direct", "direct", "direct"),
    "deep 3x3 layer on a 2x2 plane: too few tiles for Winograd": (256, 256, 2, 3, dict(padding=1), "im2col",
                                                                 "im2col", "im2col"),
    "ResNet-18 256-256 @14 at batch 1: 49 tiles, too few for Winograd at full rate": (
        256, 256, 14, 3, dict(padding=1), "im2col", "im2col", "im2col"),
    "1x1 projection": (64, 128, 8, 1, {}, "im2col", "im2col", "im2col"),
    # A strided input gradient counts the taps of its largest phase: 4 of a
    # 4x4 kernel at stride 2, so 144 output channels make the 576 steps of the limit.
    "4x4/2, 144 output channels: 576 steps in each phase of the input gradient, the direct limit": (
        32, 144, 16, 4, dict(stride=2, padding=1), "direct", "direct", "im2col"),
    "4x4/2, 145 output channels: one phase step past the limit": (
        32, 145, 16, 4, dict(stride=2, padding=1), "direct", "im2col", "im2col"),
    "ResNet-20 stride 2, one sample: the input gradient to im2col": (
        16, 32, 32, 3, dict(stride=2, padding=1), "direct", "im2col", "direct"),
    "3 input channels: the input gradient's 3 channels fill few lanes": (3, 16, 32, 3, dict(padding=1), "direct",
                                                                         "im2col", "direct"),
    "2x2 plane: most lanes would compute nothing": (16, 16, 2, 3, dict(padding=1), "im2col", "im2col", "direct"),
    "depthwise": (32, 32, 14, 3, dict(padding=1, groups=32), "depthwise", "depthwise", "depthwise"),
    "depthwise, stride 2": (32, 64, 14, 3, dict(stride=2, padding=1, groups=32), "depthwise", "depthwise",
                            "depthwise"),
}


# The batch where it is not 2 (the choice test's): Winograd's forward and
# input gradient take a layer from 256 output tiles of 2x2 (1024 with 64
# channels each way) at the AVX-512 level, where the direct kernels can run it.
BATCH = {
    "VGG 3x3 stride 1, 128 channels": 8,  # 288 tiles
    # 64 tiles; the input gradient's 1152 steps are more than the direct kernels take
    "VGG 64-128 @16 at batch 1: too few tiles for Winograd's forward to beat the direct kernels": 1,
    "64-64 @24: the fewest channels Winograd takes": 8,  # 1152 tiles
    "64-64 @8 at batch 32 (ResNet-20): with 64 channels too few tiles to beat the direct kernels": 32,  # 512 tiles
    "64-64 @8 at batch 8: 128 tiles, too few to beat the direct kernels at half rate too": 8,
    "ResNet-20 32-32 @16 at batch 8: 512 tiles, enough for a 32-channel weight gradient at half rate": 8,
    "ResNet-20 32-32 @16 at batch 32: 2048 tiles, enough for 32-channel Winograd at half rate": 32,
    # 288 and 256 tiles, too few for a weight gradient of fewer than 64 channels on Winograd at half rate
    # (at batch 17 they would have enough)
    "63 channels: too few for Winograd": 2,
    "ResNet-20 32-32 @16": 4,
    "64-64 @40: Winograd's weight gradient in its plane layout leaves it to the direct kernels": 4,  # 1600 tiles
    "ResNet-18 256-256 @14 at batch 1: 49 tiles, too few for Winograd at full rate": 1,
    "deep 3x3 layer on a 2x2 plane: too few tiles for Winograd": 32,  # 32 tiles, VGG's 512 @2 at batch 32
    "ResNet-20 stride 2, one sample: the input gradient to im2col": 1,
}


# The AVX2 kernels' blocks of 8 and 16 channels and tiles of 12 and 6 outputs
# use a different share of their lanes on these layers; Winograd's forward
# and input gradient take layers from 32 channels there, not 64. Their runs
# of 8 outputs by 4 channels waste a quarter of a block on 3 channels, not
# AVX-512's half of 6.
AVX2_DIFFERENCES = {
    "64-64 @40: Winograd's weight gradient in its plane layout leaves it to the direct kernels":
        ["winograd", "winograd", "winograd"],
    "3 input channels: the input gradient's 3 channels fill few lanes": ["direct", "direct", "direct"],
    "63 channels: too few for Winograd": ["winograd", "winograd", "direct"],
    "ResNet-20 32-32 @16": ["winograd", "winograd", "direct"],
    "ResNet-20 32-32 @16 at batch 8: 512 tiles, enough for a 32-channel weight gradient at half rate":
        ["winograd", "winograd", "direct"],
    "ResNet-20 32-32 @16 at batch 32: 2048 tiles, enough for 32-channel Winograd at half rate":
        ["winograd", "winograd", "direct"],
    "VGG 64-128 @16 at batch 1: too few tiles for Winograd's forward to beat the direct kernels": ["winograd"] * 3,
    "64-64 @8 at batch 32 (ResNet-20): with 64 channels too few tiles to beat the direct kernels": ["winograd"] * 3,
    "64-64 @8 at batch 8: 128 tiles, too few to beat the direct kernels at half rate too": ["winograd"] * 3,
    "2x2 plane: most lanes would compute nothing": ["direct", "direct", "direct"],
}


# Where AVX-512 runs at half rate (AMD Zen 4: csrc/cpu/isa.h), multiply-adds
# cost twice as much against Winograd's transforms: Winograd takes layers
# from 48 tiles, not 64, and leaves passes to the direct kernels only with
# 64 channels each way, below 256 tiles (not 1024); its weight gradient
# takes 32 channels from 512 tiles (2 samples of ResNet-20's 32-32 @16 have 128),
# its forward and input gradient from 1024.
HALF_RATE = KERNELS == "avx512" and torch.ops.custom_conv.cpu_avx512_half_rate()
HALF_RATE_DIFFERENCES = {
    "ResNet-20 32-32 @16 at batch 8: 512 tiles, enough for a 32-channel weight gradient at half rate":
        ["direct", "direct", "winograd"],
    "ResNet-20 32-32 @16 at batch 32: 2048 tiles, enough for 32-channel Winograd at half rate": ["winograd"] * 3,
    "64-64 @8 at batch 32 (ResNet-20): with 64 channels too few tiles to beat the direct kernels": ["winograd"] * 3,
    "VGG 64-128 @16 at batch 1: too few tiles for Winograd's forward to beat the direct kernels": ["winograd"] * 3,
    "64-64 @40: Winograd's weight gradient in its plane layout leaves it to the direct kernels":
        ["winograd"] * 3,
    "ResNet-18 256-256 @14 at batch 1: 49 tiles, too few for Winograd at full rate": ["winograd"] * 3,
}


# Layers Winograd takes but leaves a pass of to the direct kernels, where there are some.
LEFT_TO_THE_DIRECT_KERNELS = {name for name in LAYERS if "the direct kernels" in name}


def expected_choice(name):
    cin, _, _, _, kwargs, *expected = LAYERS[name]
    if KERNELS == "avx2":
        return AVX2_DIFFERENCES.get(name, expected)
    if HALF_RATE:
        return HALF_RATE_DIFFERENCES.get(name, expected)
    if KERNELS == "baseline":  # no direct kernels: grouped single input channels go depthwise, the rest im2col
        if name in LEFT_TO_THE_DIRECT_KERNELS:  # with no direct kernels to leave it to, Winograd keeps it
            return ["winograd"] * 3
        fallback = "depthwise" if cin // kwargs.get("groups", 1) == 1 and kwargs.get("groups", 1) > 1 else "im2col"
        return [fallback if algorithm == "direct" else algorithm for algorithm in expected]
    return expected


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_each_layer_gets_the_algorithm_meant_for_it(name):
    cin, cout, size, k, kwargs, *_ = LAYERS[name]
    expected = expected_choice(name)
    x, w = layer(cin, cout, size, k, kwargs.get("groups", 1), batch=BATCH.get(name, 2))
    plan = custom_conv.explain_conv2d(x, w, **kwargs)
    assert [plan[p].algorithm for p in custom_conv.explain.PASSES] == expected, plan


@functools.lru_cache(maxsize=1)  # the parameters vary the thread count fastest
def torch_reference(name, dtype):
    """A layer's input, weight, bias (batch 17, or the batch its choice is
    pinned at), an output gradient, and torch's output and gradients, which
    do not depend on our thread count."""
    cin, cout, size, k, kwargs, *_ = LAYERS[name]
    torch.manual_seed(0)
    x, w = layer(cin, cout, size, k, kwargs.get("groups", 1), batch=BATCH.get(name, 17), dtype=dtype)
    leaves = [t.requires_grad_() for t in (x, w, torch.randn(cout, dtype=dtype))]
    ref = F.conv2d(*leaves, **kwargs)
    grad = torch.randn_like(ref)
    return [t.detach() for t in leaves], grad, ref.detach(), torch.autograd.grad(ref, leaves, grad)


@pytest.mark.parametrize("threads", [1, 2, 4], ids=lambda n: f"{n} threads")
@pytest.mark.parametrize("dtype", dtypes("float32", "float64"))
@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_every_chosen_algorithm_matches_torch(name, dtype, threads):
    """Batch 17 spans all 8 weight-gradient blocks (csrc/cpu/conv2d_routes.h):
    the direct route sums blocks of 2 or 3 samples; the im2col route cuts
    the batch into chunks (by cache budget, and so that each thread gets
    one: how many depends on the thread count) and sums each block's chunks,
    e.g. 9 chunks of 2 samples in 8 blocks for the 65-input-channel layer."""
    kwargs = LAYERS[name][4]
    inputs, grad, ref, ref_grads = torch_reference(name, dtype)
    leaves = [t.clone().requires_grad_() for t in inputs]
    with num_threads(threads):
        if dtype == torch.float32:  # LAYERS' choices; float64 fills half as many lanes, and AVX2 may choose otherwise
            plan = custom_conv.explain_conv2d(*inputs[:2], **kwargs)
            assert [plan[p].algorithm for p in custom_conv.explain.PASSES] == expected_choice(name), plan
        ours = CF.conv2d(*leaves, **kwargs)
        ours_grads = torch.autograd.grad(ours, leaves, grad)
    # float32: sums of up to 17 * 32 * 32 products of unit size, in another order.
    tol = dict(rtol=1e-4, atol=2e-3) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours, ref, **tol)
    for g, r in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g, r, **tol)


def test_reduced_precision_never_takes_the_direct_kernels():
    x, w = layer(6, 16, 14, 5, dtype=torch.bfloat16)
    plan = custom_conv.explain_conv2d(x, w)
    assert {c.algorithm for c in plan.values()} == {"im2col"}
    assert "no direct kernels" in plan["forward"].reason


def test_the_gpu_kernels_have_one_algorithm():
    x, w = (t.to("meta") for t in layer(6, 16, 14, 5))
    plan = custom_conv.explain_conv2d(x, w)
    assert {c.algorithm for c in plan.values()} == {"im2col"}


@pytest.mark.skipif(KERNELS == "baseline", reason="no direct kernels to refuse")
def test_the_reason_names_the_threshold():
    x, w = layer(65, 64, 12, 3)
    reason = custom_conv.explain_conv2d(x, w, padding=2, dilation=2)["forward"].reason
    assert reason.startswith("im2col") and "585 > 576" in reason
    x, w = layer(129, 128, 14, 3)
    reason = custom_conv.explain_conv2d(x, w, padding=2, dilation=2)["forward"].reason
    assert reason.startswith("im2col") and "1161 > 1152" in reason


def test_explain_takes_the_arguments_conv2d_takes():
    x, w = layer(3, 4, 8, 3)
    unbatched = custom_conv.explain_conv2d(x[0], w, torch.zeros(4), 1, "same", (1,), 1)
    assert unbatched == custom_conv.explain_conv2d(x, w, padding=1)


def test_explain_rejects_what_conv2d_rejects():
    x, w = layer(3, 4, 8, 3)
    with pytest.raises(RuntimeError, match="to have 6 channels, but got 3 channels"):
        custom_conv.explain_conv2d(x, w.repeat(1, 2, 1, 1))
    with pytest.raises(RuntimeError, match="pass must be forward"):
        torch.ops.custom_conv.conv2d_algorithm(x, w, [1, 1], [0, 0], [1, 1], 1, "sideways")


@pytest.mark.skipif(KERNELS == "baseline", reason="no direct kernels to switch off")
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
def test_switching_direct_off_gives_the_next_algorithm_and_the_same_results(dtype):
    """LeNet's conv2 takes the direct kernels in every pass; with them off,
    im2col runs it, to torch's values and gradients, and the reason says why.
    Afterwards the choice is back."""
    x, w = layer(6, 16, 14, 5, dtype=dtype)
    before = custom_conv.explain_conv2d(x, w)
    assert before["forward"].algorithm == "direct"
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    with custom_conv.disabled_algorithms("direct"):
        plan = custom_conv.explain_conv2d(x, w)
        assert {c.algorithm for c in plan.values()} == {"im2col"}
        assert "switched off by the user" in plan["forward"].reason
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = CF.conv2d(xg, wg)
        y.backward(torch.ones_like(y))
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = F.conv2d(xr, wr)
    ref.backward(torch.ones_like(ref))
    for ours, theirs in [(y, ref), (xg.grad, xr.grad), (wg.grad, wr.grad)]:
        torch.testing.assert_close(ours, theirs, **tol)
    assert custom_conv.explain_conv2d(x, w) == before


def test_switching_depthwise_off_sends_depthwise_layers_to_im2col():
    x, w = layer(32, 32, 14, 3, groups=32)
    with custom_conv.disabled_algorithms("depthwise"):
        plan = custom_conv.explain_conv2d(x, w, padding=1, groups=32)
        y = CF.conv2d(x, w, padding=1, groups=32)
    assert {c.algorithm for c in plan.values()} == {"im2col"}
    assert plan["forward"].reason == "im2col: depthwise switched off by the user (custom_conv.disabled_algorithms)"
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1, groups=32), rtol=1e-5, atol=1e-5)
    assert custom_conv.explain_conv2d(x, w, padding=1, groups=32)["forward"].algorithm == "depthwise"


def test_switched_off_blocks_nest_and_restore():
    x, w = layer(64, 64, 24, 3, batch=8)  # Winograd, else direct, else im2col
    with custom_conv.disabled_algorithms("winograd"):
        with custom_conv.disabled_algorithms("direct"):
            assert custom_conv.explain_conv2d(x, w, padding=1)["forward"].algorithm == "im2col"
        assert custom_conv.explain_conv2d(x, w, padding=1)["forward"].algorithm == (
            "im2col" if KERNELS == "baseline" else "direct")
    assert custom_conv.explain_conv2d(x, w, padding=1)["forward"].algorithm == expected_choice(
        "64-64 @24: the fewest channels Winograd takes")[0]


def test_im2col_and_unknown_algorithms_cannot_be_switched_off():
    with pytest.raises(ValueError, match="every layer's fallback"):
        with custom_conv.disabled_algorithms("im2col"):
            pass
    with pytest.raises(ValueError, match="no conv2d algorithm called 'fft'"):
        with custom_conv.disabled_algorithms("fft"):
            pass
    with pytest.raises(ValueError, match="cannot be switched off"):
        torch.ops.custom_conv.set_disabled_conv2d_algorithms(["im2col"])


def test_the_cuda_chooser_and_its_switches():
    """The CUDA kernels' answer (any device but the CPU gets it: meta tensors
    here). Depthwise layers take the depthwise kernels, others im2col and
    our GEMM, whose half and bfloat16 products run on the tensor cores.
    Float32 runs there too, in TF32, exactly where torch allows TF32 for its
    convolutions. im2col's products gather the receptive fields as their
    tiles load (an implicit GEMM). "depthwise" switched off sends depthwise
    layers to im2col; "tensor_cores" and "implicit_gemm" (kernels, not
    algorithms: the list stays the chooser's) send the products to the
    CUDA-core kernel and through a column matrix in memory. On the tensor
    cores, the forward and the weight gradient gather from channels-last
    copies where the input channels per group are whole 16-byte chunks, the
    input gradient where the output channels are ("channels_last_gather"
    switches them off). All nest and restore like the CPU's."""
    def meta(shape, dtype=torch.half):
        return torch.empty(shape, device="meta", dtype=dtype)

    x, w = meta((2, 3, 8, 8)), meta((4, 3, 3, 3))
    xd, wd = meta((2, 4, 8, 8)), meta((8, 1, 3, 3))  # depthwise, multiplier 2
    implicit = "im2col as an implicit GEMM (receptive fields gathered as the tiles load, no column matrix)"
    by_user = "switched off by the user (custom_conv.disabled_algorithms)"
    on = implicit + ", our GEMM on the tensor cores (mma.sync, float sums)"
    off = implicit + f", our tiled GEMM on the CUDA cores (tensor cores {by_user})"
    depthwise = "depthwise: one input channel per group, each output's taps summed from its input plane"
    for dtype in (torch.half, torch.bfloat16):
        assert custom_conv.explain_conv2d(x.to(dtype), w.to(dtype))["forward"] == ("im2col", on)
    for tf32 in (True, False):
        with cudnn_tf32(tf32):
            assert custom_conv.explain_conv2d(x.float(), w.float())["forward"] == ("im2col", implicit + (
                ", our GEMM on the tensor cores in TF32, float sums (torch.backends.cudnn.allow_tf32)"
                if tf32 else
                ", our tiled GEMM on the CUDA cores (TF32 not allowed: torch.backends.cudnn.allow_tf32)"))
            assert custom_conv.explain_conv2d(x.double(), w.double())["forward"] == (
                "im2col", implicit + ", our tiled GEMM on the CUDA cores")
    for pass_, choice in custom_conv.explain_conv2d(xd, wd, groups=4).items():
        assert choice == ("depthwise", depthwise), pass_
    with custom_conv.disabled_algorithms("tensor_cores"):
        with custom_conv.disabled_algorithms("depthwise"):
            assert custom_conv.explain_conv2d(x, w)["backward_weight"] == ("im2col", off)
            assert custom_conv.explain_conv2d(xd, wd, groups=4)["backward_input"] == (
                "im2col", off + f"; depthwise {by_user}")
        assert custom_conv.explain_conv2d(x, w)["forward"] == ("im2col", off)
        assert custom_conv.explain_conv2d(xd, wd, groups=4)["forward"] == ("depthwise", depthwise)
        assert "tensor_cores" not in custom_conv.explain.ALGORITHMS
    assert custom_conv.explain_conv2d(x, w)["forward"] == ("im2col", on)
    with custom_conv.disabled_algorithms("implicit_gemm"):
        with custom_conv.disabled_algorithms("tensor_cores"):
            assert custom_conv.explain_conv2d(x, w)["backward_input"] == ("im2col", (
                f"im2col through a column matrix (implicit GEMM {by_user}), our tiled GEMM on the CUDA cores "
                f"(tensor cores {by_user})"))
        assert custom_conv.explain_conv2d(x, w)["forward"] == (
            "im2col", f"im2col through a column matrix (implicit GEMM {by_user}), our GEMM on the tensor cores "
                      "(mma.sync, float sums)")
        assert "implicit_gemm" not in custom_conv.explain.ALGORITHMS
    assert custom_conv.explain_conv2d(x, w)["forward"] == ("im2col", on)
    # 2^31 output positions and more: the implicit GEMM's 32-bit indices do
    # not reach, the column matrix takes the layer.
    huge = meta((2 ** 16, 3, 182, 182))
    assert custom_conv.explain_conv2d(huge, w)["forward"] == (
        "im2col", "im2col through a column matrix (indices beyond 32 bits), our GEMM on the tensor cores "
                  "(mma.sync, float sums)")
    assert custom_conv.explain_conv2d(meta((2 ** 16, 3, 180, 180)), w)["forward"] == ("im2col", on)
    # Channels-last gathering: 16 input channels are two chunks of half, four of float (in TF32 only).
    x16, w16 = meta((2, 16, 8, 8)), meta((4, 16, 3, 3))
    gathers = ("; the receptive fields gathered from a channels-last copy of the input, 16-byte chunks of channels "
               "by cp.async")
    assert custom_conv.explain_conv2d(x16, w16)["forward"] == ("im2col", on + gathers)
    assert custom_conv.explain_conv2d(x16, w16)["backward_input"] == ("im2col", on)  # 4 output channels
    assert custom_conv.explain_conv2d(x16, w16)["backward_weight"] == ("im2col", on + (
        "; the receptive fields and the output gradient read from channels-last copies, 16-byte chunks of channels "
        "by cp.async"))
    assert custom_conv.explain_conv2d(x, meta((16, 3, 3, 3)))["backward_input"] == ("im2col", on + (
        "; the output gradient's taps gathered from a channels-last copy of it, 16-byte chunks of channels by "
        "cp.async"))
    assert custom_conv.explain_conv2d(x, meta((16, 3, 3, 3)))["forward"] == ("im2col", on)  # 3 input channels
    # Both backward passes gathering channels-last: a training step copies the output gradient once for both.
    both = custom_conv.explain_conv2d(x16, meta((16, 16, 3, 3)))
    shared = " (in a training step one copy of the output gradient serves both backward passes)"
    assert both["backward_input"] == ("im2col", on + (
        "; the output gradient's taps gathered from a channels-last copy of it, 16-byte chunks of channels by "
        "cp.async") + shared)
    assert both["backward_weight"] == ("im2col", on + (
        "; the receptive fields and the output gradient read from channels-last copies, 16-byte chunks of channels "
        "by cp.async") + shared)
    assert both["forward"] == ("im2col", on + gathers)
    # A depthwise layer with 8 outputs per channel keeps its NCHW kernels.
    assert custom_conv.explain_conv2d(xd, meta((32, 1, 3, 3)), groups=4)["backward_input"] == ("depthwise", depthwise)
    assert custom_conv.explain_conv2d(x16[:, :12], w16[:, :12])["forward"] == ("im2col", on)  # 12: not whole chunks
    assert custom_conv.explain_conv2d(x16, w16.reshape(8, 8, 3, 3), groups=2)["forward"] == ("im2col", on + gathers)
    with cudnn_tf32(True):
        assert custom_conv.explain_conv2d(x16[:, :12].float(), w16[:, :12].float())["forward"][1].endswith(gathers)
    with custom_conv.disabled_algorithms("channels_last_gather"):
        for pass_, choice in custom_conv.explain_conv2d(x16, meta((16, 16, 3, 3))).items():
            assert choice == ("im2col", on), pass_
        assert "channels_last_gather" not in custom_conv.explain.ALGORITHMS
    with custom_conv.disabled_algorithms("tensor_cores"):
        assert custom_conv.explain_conv2d(x16, w16)["forward"] == ("im2col", off)
    assert custom_conv.explain_conv2d(x16, w16)["forward"] == ("im2col", on + gathers)
    for kernel in ("tensor_cores", "implicit_gemm", "channels_last_gather"):
        with pytest.raises(ValueError, match=f"no conv2d algorithm called '{kernel}'"):
            with custom_conv.forced_algorithm(kernel):
                pass


def test_the_algorithms_listed_are_the_chooser_s_own_in_its_order():
    """custom_conv.explain.ALGORITHMS comes from the chooser (the op
    conv2d_algorithms): every algorithm the layers above reach is listed,
    each is reached, the order is the order of the fallbacks (switching one
    off gives a later one), and each but the last can be switched off."""
    listed = custom_conv.explain.ALGORITHMS
    reached = {algorithm for name in LAYERS for algorithm in expected_choice(name)}
    assert reached <= set(listed)
    if KERNELS != "baseline":  # without direct kernels, "direct" is listed but not reached
        assert reached == set(listed)
    assert listed[-1] == "im2col"
    x, w = layer(128, 128, 12, 3)  # Winograd's layer: each switched off in turn, the next one takes it
    with custom_conv.disabled_algorithms(*listed[:-1]):
        assert custom_conv.explain_conv2d(x, w, padding=1)["forward"].algorithm == listed[-1]
    order = []
    for _ in listed:
        with custom_conv.disabled_algorithms(*order):
            order.append(custom_conv.explain_conv2d(x, w, padding=1)["forward"].algorithm)
        if order[-1] == listed[-1]:
            break
    assert order == [a for a in listed if a in order]


def test_the_example_in_the_explain_module_is_what_the_chooser_answers():
    example = re.search(r">>> (custom_conv\.explain_conv2d\(.*\))\n\s+(\{.*)", custom_conv.explain.__doc__)
    plan = eval(example.group(1), {"custom_conv": custom_conv, "torch": torch})
    assert f"'forward': Conv2dChoice(algorithm='{plan['forward'].algorithm}'" in example.group(2)


@pytest.mark.skipif(KERNELS != "avx512", reason="docs/design.md shows an AVX-512 CPU's answers")
def test_the_examples_in_the_design_document_are_what_the_chooser_answers():
    design = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    examples = re.findall(r">>> (custom_conv\.explain_conv2d\(.*\).*)\n((?:(?!>>>|```).*\n)+)", design)
    assert examples
    for call, shown in examples:
        answer = eval(call, {"custom_conv": custom_conv, "torch": torch})
        assert repr(answer) == " ".join(line.strip() for line in shown.splitlines()), call
