"""The CUDA kernels, run on the CPU: csrc/cuda/*.cu compiled a second time, as
C++, against tests/emulator/cuda_emulator.h, which emulates CUDA's execution
model (blocks of threads as fibers, __syncthreads() a real barrier, shared
memory per block) and checks every access the kernels make, as
compute-sanitizer's memcheck and racecheck would. Their host code runs
unchanged (launch plans, split-K, batch chunks, launch splits), registered as
torch.ops.custom_conv_emulated on CPU tensors.

What this proves: every line of the kernels and of their launch planning ran,
gave torch's results for every case of tests/cases.py, and touched no memory
outside its buffers, with no shared-memory race, on the paths small shapes
reach with small limits (LaunchLimits). What only a GPU shows: speed, the
hardware's scheduling of warps and blocks, its memory model, and the
rounding of fused multiply-adds (test_cuda.py, benchmarks/gpu_check.sh).

The extension builds on first use (about a minute, into build/cuda-emulator).
"""
import contextlib
import os
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils import cpp_extension

from cases import (ADAPTIVE_AVG_POOL2D_CASES, AVG_POOL2D_CASES, CONV2D_CASES, LONG_SUMS, MAX_POOL2D_CASES,
                   MAX_POOL2D_PADDING_ONLY_CASES, conv)
from custom_conv import functional as CF
from custom_conv.autograd import _suggests_channels_last
from helpers import (assert_matches_torch, assert_within_eps_of_exact, conv_tensors, cudnn_tf32, dtypes, pool_input,
                     tolerance)

# Float32 on the exact CUDA-core kernels, the bound of its table; TF32 has
# tests of its own (torch allows it for convolutions by default).
pytestmark = pytest.mark.usefixtures("no_tf32")

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMULATOR = ROOT / "tests" / "emulator"
BUILD = ROOT / "build" / "cuda-emulator"

# Plausible one-line bugs in csrc/cuda/gemm.cuh, each compiled into a broken
# copy of it (tests/emulator/mutants.cpp), which the emulator must catch.
MUTANTS = {
    # One stage for every slab: with one barrier a slab, the next slab's
    # stores overwrite the tiles while other threads still read them.
    "core_stage_reused_early": ("k0 += kTileK, stage ^= 1) {", "k0 += kTileK) {"),
    # The store's bound: writes one column past C.
    "store_off_by_one": ("\n      if (m < p.m && n < p.n) {", "\n      if (m < p.m && n <= p.n) {"),
    # A load's bound along k: reads a row past B.
    "load_off_by_one": ("  if (fixed < (Operand::kKContiguous ? mn_size : k_end)) {",
                        "  if (fixed <= (Operand::kKContiguous ? mn_size : k_end)) {"),
    # A tile one row too short for the 64 rows it holds.
    "shared_tile_too_small": ("shared_array<acc_t, 2, kTileK, kM + 4> a_tiles",
                              "shared_array<acc_t, 2, kTileK, kM - 1> a_tiles"),
    # The tensor-core kernel (half): an accumulator element stored to the
    # row of its neighbour in the fragment layout.
    "mma_fragment_row": ("const int64_t m = m0 + warp_m + i * 16 + g + 8 * (e / 2);",
                         "const int64_t m = m0 + warp_m + i * 16 + g + 8 * (e % 2);"),
    # No wait for the copies: the tensor cores read a stage still in flight.
    "mma_missing_wait": ("    cp_async_wait<kMmaStages - 2>();\n", ""),
    # No barrier before a step's copies: they start while other warps still
    # read their stage in the previous step.
    "mma_stage_reused_early": ("previous step too, done reading the stage it read: this step refills it.\n"
                               "    __syncthreads();\n",
                               "previous step too, done reading the stage it read: this step refills it.\n"),
    # A's copies one stage behind: a step refills the stage the next step
    # reads, not the one the previous step read, onto copies still in flight.
    "mma_fill_next_stage": ("auto a_fill = a_at.in(kMmaStages - 1);", "auto a_fill = a_at.in(kMmaStages - 2);"),
    # The tiles launched without their dynamic shared memory.
    "mma_no_dynamic_shared": ("\n        .with_dynamic_shared(sizeof(MmaTilesOf<Problem, Shape>))", ""),
}


def _write_mutants():
    gemm = (ROOT / "csrc" / "cuda" / "gemm.cuh").read_text()
    for name, (old, new) in MUTANTS.items():
        assert gemm.count(old) == 1, f"mutant {name}: its line is not in gemm.cuh exactly once"
        path = BUILD / f"gemm_{name}.cuh"
        text = gemm.replace(old, new)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


@pytest.fixture(scope="module")
def emu():
    """The emulated ops, with every CPU allocation recorded (so that the
    kernels' pointers know their bounds) and a GPU of 2 multiprocessors."""
    BUILD.mkdir(parents=True, exist_ok=True)
    _write_mutants()
    cpp_extension.load(
        name="custom_conv_cuda_emulator",
        # Each .cu file of csrc/cuda, as the real build compiles them, through the .cpp of its name in
        # tests/emulator.
        sources=[str(EMULATOR / f"{cu.stem}.cpp") for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu"))]
        + [str(EMULATOR / f) for f in ("cuda_emulator.cpp", "mutants.cpp", "warps.cpp")]
        + [str(ROOT / "csrc" / f) for f in ("geometry.cpp", "conv2d_algorithm_cuda.cpp")],
        extra_cflags=["-O2", "-DCUSTOM_CONV_EMULATE_CUDA"],
        extra_include_paths=[str(EMULATOR), str(ROOT / "csrc" / "cuda"), str(BUILD)],
        build_directory=str(BUILD),
        is_python_module=False,
        verbose=bool(os.environ.get("CUSTOM_CONV_VERBOSE_BUILD")),
    )
    ops = torch.ops.custom_conv_emulated
    saved = ops.set_limits(2, 65535, 1 << 22, 1 << 30)
    ops.track_allocations(True)
    yield ops
    ops.track_allocations(False)
    ops.set_limits(*saved)


@contextlib.contextmanager
def limits(emu, multiprocessors=2, max_grid_yz=65535, column_budget=1 << 22, narrow_index_limit=1 << 30):
    """What the launch plans see as the GPU's size and limits, meanwhile."""
    saved = emu.set_limits(multiprocessors, max_grid_yz, column_budget, narrow_index_limit)
    emu.take_launch_log()
    try:
        yield
    finally:
        emu.set_limits(*saved)


def emulated_conv2d(emu, grad_layout=torch.Tensor.contiguous):
    """conv2d with F.conv2d's arguments, differentiable, on the emulated ops;
    the backward ops get grad_layout(output gradient)."""
    class Conv2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, stride, padding, dilation, groups):
            ctx.save_for_backward(x, w)
            ctx.geometry = stride, padding, dilation, groups
            ctx.has_bias = b is not None
            return emu.conv2d_forward(x, w, b, stride, padding, dilation, groups)

        @staticmethod
        def backward(ctx, grad_output):
            x, w = ctx.saved_tensors
            go = grad_layout(grad_output)
            return (emu.conv2d_backward_input(go, w, x.shape, *ctx.geometry),
                    emu.conv2d_backward_weight(go, x, w.shape, *ctx.geometry),
                    emu.conv2d_backward_bias(go) if ctx.has_bias else None, None, None, None, None)

    def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        _, x, stride, padding, dilation, groups = CF._conv2d_arguments(x, w, b, stride, padding, dilation, groups)
        return Conv2d.apply(x, w, b, stride, padding, dilation, groups)
    return conv2d


def op_geometry(case, x, w):
    """A conv case's stride, padding, dilation and groups as the ops take them."""
    kwargs = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **case.kwargs}
    return CF._conv2d_arguments(x, w, None, **kwargs)[2:]


def pool_arguments(kwargs):
    """F.max_pool2d's keyword arguments as the ops take them."""
    pair = lambda v: (v[0], v[-1]) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    kernel = pair(kwargs["kernel_size"])
    return (kernel, pair(kwargs.get("stride") or kernel), pair(kwargs.get("padding", 0)),
            pair(kwargs.get("dilation", 1)), kwargs.get("ceil_mode", False))


# ---------------------------------------------------------------- the case table

@contextlib.contextmanager
def switched_off(emu, name, off=True):
    """The tensor cores ("tensor_cores"), the implicit GEMM ("implicit_gemm")
    or the depthwise kernels ("depthwise") off, meanwhile, as
    custom_conv.disabled_algorithms switches them off on a GPU."""
    previous = emu.set_switched_off(name, off)
    try:
        yield
    finally:
        emu.set_switched_off(name, previous)


# The GPU's two ways of running im2col's products: the implicit GEMM (the
# default), and a column matrix in memory (im2col, col2im), which the
# implicit one falls back to and which stays selectable.
ROUTES = ["implicit GEMM", "column matrix"]
ROUTE_KERNELS = {"implicit GEMM": set(), "column matrix": {"im2col_kernel", "col2im_kernel"}}


def on_route(emu, route):
    return switched_off(emu, "implicit_gemm", route == "column matrix")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
@pytest.mark.parametrize("case", list(CONV2D_CASES))
def test_conv2d_matches_torch_and_our_cpu_ops(emu, case, dtype, route):
    """Forward and all three gradients, against torch and against our CPU
    ops, with test_conv2d.py's tolerances for CUDA, on either route; the
    launch log shows which ran."""
    c = CONV2D_CASES[case]
    tensors = conv_tensors(c, dtype)
    conv2d = emulated_conv2d(emu)
    tol = tolerance(dtype, "cuda", LONG_SUMS in c.tags)
    with on_route(emu, route):
        emu.take_launch_log()
        assert_matches_torch(lambda x, w, b: conv2d(x, w, b, **c.kwargs),
                             lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), tensors, **tol)
        assert_matches_torch(lambda x, w, b: conv2d(x, w, b, **c.kwargs),
                             lambda x, w, b: CF.conv2d(x, w, b, **c.kwargs), tensors, **tol)
        ran = {entry.split("<")[0] for entry in emu.take_launch_log()}
    if not _depthwise(c) and c.input[0] > 0 and c.input[1] > 0:
        assert ran & {"im2col_kernel", "col2im_kernel"} == ROUTE_KERNELS[route], ran


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("cores", ["tensor cores", "CUDA cores"])
@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16"))
@pytest.mark.parametrize("case", [name for name, c in CONV2D_CASES.items() if c.input[0] > 0])
def test_conv2d_in_half_and_bfloat16_is_within_2_eps_of_exact(emu, case, dtype, cores, route):
    """The bound test_cuda.py states for the GPU (see helpers), with either
    GEMM kernel, on either route."""
    c = CONV2D_CASES[case]
    conv2d = emulated_conv2d(emu)
    with switched_off(emu, "tensor_cores", cores != "tensor cores"), on_route(emu, route):
        emu.take_launch_log()
        assert_within_eps_of_exact(lambda x, w, b: conv2d(x, w, b, **c.kwargs),
                                   lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), conv_tensors(c, dtype))
        kernels = {entry.split("<")[0] for entry in emu.take_launch_log()}
    gemms = kernels & {"gemm_mma_kernel", "gemm_tile_kernel"}
    expected = "gemm_mma_kernel" if cores == "tensor cores" else "gemm_tile_kernel"
    assert gemms == (set() if _depthwise(c) else {expected}), gemms


@pytest.mark.parametrize("case", [name for name, c in CONV2D_CASES.items() if c.input[0] > 0])
def test_conv2d_in_tf32_where_torch_allows_it(emu, case):
    """With torch.backends.cudnn.allow_tf32 (torch's default) float32 runs on
    the tensor cores in TF32: within 2 TF32 eps (2^-10) of the exact result
    relative to the terms' magnitudes, as half is; depthwise layers keep
    their exact kernels."""
    c = CONV2D_CASES[case]
    conv2d = emulated_conv2d(emu)
    with cudnn_tf32(True):
        emu.take_launch_log()
        assert_within_eps_of_exact(lambda x, w, b: conv2d(x, w, b, **c.kwargs),
                                   lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), conv_tensors(c, torch.float32),
                                   eps_factor=2 * 2 ** 13)  # 2 * 2^-10 in units of float's 2^-23
        kernels = {entry.split("<")[0] for entry in emu.take_launch_log()}
    assert kernels & {"gemm_mma_kernel", "gemm_tile_kernel"} == (set() if _depthwise(c) else {"gemm_mma_kernel"})


# Layers whose channels per group are whole 16-byte chunks of half (8) and of float (4): the passes on
# the tensor cores gather from channels-last memory, the input gradient where the output channels are,
# the forward and the weight gradient where the input channels are.
CHANNELS_LAST_CASES = {
    "3x3, padding 1, 16 channels": conv((2, 16, 7, 9), (24, 16, 3, 3), padding=1),
    "strided, dilated, 8 channels, non-square": conv((1, 8, 9, 12), (10, 8, 3, 2), stride=(2, 1), padding=(2, 1),
                                                      dilation=(2, 3)),
    "2 groups of 8 channels": conv((2, 16, 6, 6), (6, 16 // 2, 3, 3), padding=1, groups=2),
    "2 groups of 8 channels, 8 outputs each": conv((2, 16, 5, 7), (16, 16 // 2, 3, 3), padding=(1, 0), groups=2),
    "1x1, 32 channels, 130 outputs": conv((2, 32, 5, 5), (130, 32, 1, 1)),
    # The input gradient alone: strided windows leave taps with no output position.
    "3 channels to 8, stride 2": conv((2, 3, 9, 8), (8, 3, 3, 3), stride=2, padding=1),
    "stride (2, 3), dilated, 8 to 16": conv((1, 8, 11, 13), (16, 8, 2, 3), stride=(2, 3), padding=(1, 2),
                                          dilation=(2, 1)),
    # 1 600 positions: the weight gradient's reduction split in two.
    "8 to 16 channels, 1 600 positions": conv((4, 8, 20, 20), (16, 8, 3, 3), padding=1),
    # Groups of channels that neither divide a stage's 32 taps nor are divided by them: stages that start
    # in the middle of a tap (the forward over 40 channels, the input gradient over 48).
    "40 channels to 48": conv((1, 40, 5, 6), (48, 40, 3, 3), padding=1),
}


@pytest.mark.parametrize("layout", ["channels-last, aligned", "channels-last, misaligned", "NCHW"])
@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16", "float32"))
@pytest.mark.parametrize("case", list(CHANNELS_LAST_CASES))
def test_conv2d_gathers_channels_last_tensors(emu, case, dtype, layout):
    """The tensor cores' passes from channels-last memory (taps ordered
    (ki, kj, c), 16-byte chunks of channels by cp.async; element by element
    in the padding, and everywhere when a tensor is misaligned), with the
    input and the output gradient in the layout under test (and the weight
    channels-last with them, as a channels-last network's): the forward and
    both gradients within 2 eps of exact (float32 in TF32: 2^-10), and the
    passes that gather NCHW (switched off: channels_last_gather) within the
    same bound; the output and the gradients in torch's layout."""
    c = CHANNELS_LAST_CASES[case]

    def placed(x):
        """x in the layout under test (a differentiable copy)."""
        if layout == "NCHW":
            return x.contiguous()
        x = x.contiguous(memory_format=torch.channels_last)
        if layout.endswith("misaligned"):  # the same values one element into a buffer: no 16-byte chunks
            x = torch.empty(x.numel() + 1, dtype=x.dtype)[1:].as_strided(x.shape, x.stride()).copy_(x)
            assert x.data_ptr() % 16 != 0 and x.is_contiguous(memory_format=torch.channels_last)
        return x

    eps_factor = 2 * 2 ** 13 if dtype == torch.float32 else 2  # TF32: 2^-10 in units of float's 2^-23
    def laid(w):
        """The weight channels-last where the layout under test is, as a channels-last network's are."""
        return w.contiguous() if layout == "NCHW" else w.contiguous(memory_format=torch.channels_last)

    conv2d = emulated_conv2d(emu, grad_layout=placed)
    for gather_nhwc in (True, False):
        with cudnn_tf32(True), \
                switched_off(emu, "channels_last_gather", not gather_nhwc):
            emu.take_launch_log()
            assert_within_eps_of_exact(lambda x, w, b: conv2d(placed(x), laid(w), b, **c.kwargs),
                                       lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), conv_tensors(c, dtype),
                                       eps_factor=eps_factor)
            kernels = {entry.split("<")[0] for entry in emu.take_launch_log()}
            # The output in torch's layout (the GEMM stores channels-last results in place), and the
            # gradients channels-last where the forward's weight or input shows the forward was: the
            # input's gradient stored so in place, the weight's as the channels-last GEMM computes it.
            x, w, b = conv_tensors(c, dtype)
            y = conv2d(placed(x), laid(w), b, **c.kwargs)
            assert y.stride() == F.conv2d(placed(x.double()), w.double(), b.double(), **c.kwargs).stride()
            go, args = placed(torch.randn_like(y)), op_geometry(c, x, w)

            def strides(t, forward_tensor):
                """t's strides in the layout forward_tensor suggests."""
                channels_last = _suggests_channels_last(forward_tensor)
                return torch.empty(t.shape, memory_format=torch.channels_last if channels_last
                                   else torch.contiguous_format).stride()
            assert emu.conv2d_backward_input(go, laid(w), x.shape, *args).stride() == strides(x, laid(w))
            assert emu.conv2d_backward_weight(go, placed(x), w.shape, *args).stride() == strides(w, placed(x))
            # An NCHW weight's forward was NCHW (its input too), whatever the output gradient's layout.
            assert emu.conv2d_backward_input(go, w, x.shape, *args).is_contiguous()
        assert kernels & {"gemm_mma_kernel", "gemm_tile_kernel"} == {"gemm_mma_kernel"}, kernels


# Strided layers whose input gradient runs a phase at a time (the input pixels of one remainder modulo
# the stride, with only the taps that reach them), chosen for phases without taps (zeros), phases with
# different tap counts, and fewer rows than the stride. 8 output channels: whole chunks of half, so
# the tensor cores' input gradient gathers them channels-last unless switched off.
PHASE_CASES = {
    "1x1 stride 2: 3 of 4 phases without taps": conv((2, 3, 7, 6), (8, 3, 1, 1), stride=2),
    "3x3 stride 2 dilation 2: odd rows and columns without taps": conv((1, 4, 9, 9), (8, 4, 3, 3), stride=2,
                                                                       padding=1, dilation=2),
    "4x4 stride 3 padding 1: 1 or 2 taps a phase": conv((2, 2, 11, 10), (8, 2, 4, 4), stride=3, padding=1),
    "2x2 stride 3: phases without taps": conv((1, 3, 8, 9), (8, 3, 2, 2), stride=3),
    "2 rows under stride 3, stride (3, 2), dilation (1, 2)": conv((2, 2, 2, 9), (8, 2, 1, 3), stride=(3, 2),
                                                                  padding=(0, 1), dilation=(1, 2)),
    "7x7 stride 2, 2 groups": conv((1, 4, 13, 12), (16, 2, 7, 7), stride=2, padding=3, groups=2),
}


@pytest.mark.parametrize("kernels", ["float64, CUDA cores", "half, tensor cores, channels-last",
                                     "half, tensor cores, NCHW", "float64, CUDA cores, channels-last gradients",
                                     "half, tensor cores, channels-last gradients"])
@pytest.mark.parametrize("case", list(PHASE_CASES))
def test_the_input_gradient_a_phase_at_a_time(emu, case, kernels):
    """The forward and every gradient against torch (half within 2 eps of
    exact), the input gradient by phases on each of its kernels, stored NCHW
    or, for a channels-last network (weight and output gradient so),
    channels-last."""
    c = PHASE_CASES[case]
    conv2d = emulated_conv2d(emu)
    if kernels.endswith("channels-last gradients"):  # a channels-last network's: its weight channels-last too
        to_channels_last = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
        conv2d_cl = emulated_conv2d(emu, grad_layout=to_channels_last)
        conv2d = lambda x, w, b, **kwargs: conv2d_cl(x, to_channels_last(w), b, **kwargs)  # noqa: E731
    with switched_off(emu, "channels_last_gather", kernels.endswith("NCHW")):
        if kernels.startswith("float64"):
            assert_matches_torch(lambda x, w, b: conv2d(x, w, b, **c.kwargs),
                                 lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), conv_tensors(c, torch.float64),
                                 **tolerance(torch.float64, "cuda"))
        else:
            assert_within_eps_of_exact(lambda x, w, b: conv2d(x, w, b, **c.kwargs),
                                       lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), conv_tensors(c, torch.half))


@pytest.mark.parametrize("case, multiprocessors, grids", [
    # 4 phases of 2 x 4 x 4 positions, a tile each: one launch, z the phase. (Forward, input gradient,
    # weight gradient.)
    (conv((2, 3, 8, 8), (4, 3, 3, 3), stride=2, padding=1), 2, ["(1, 1, 1)", "(1, 1, 4)", "(1, 1, 1)"]),
    # 2 groups: z = (phase, group)
    (conv((2, 4, 8, 8), (4, 2, 3, 3), stride=2, padding=1, groups=2), 2, ["(1, 1, 2)", "(1, 1, 8)", "(1, 1, 2)"]),
    # 9 phases of a tap each at stride 3: launches of 4, 4 and 1
    (conv((1, 2, 9, 9), (4, 2, 3, 3), stride=3), 2, ["(1, 1, 1)", "(1, 1, 4)", "(1, 1, 4)", "(1, 1, 1)",
                                                     "(1, 1, 1)"]),
    # phases of 2 x 10 x 10 positions, 4 tiles each, on 1 multiprocessor: each fills it alone
    (conv((2, 3, 20, 20), (4, 3, 3, 3), stride=2, padding=1), 1, ["(4, 1, 1)"] * 5 + ["(1, 1, 1)"]),
    # 1x1/2: the phase with the tap alone, the three without one in one launch that stores zeros
    (conv((2, 3, 20, 20), (4, 3, 1, 1), stride=2), 1, ["(4, 1, 1)", "(4, 1, 1)", "(4, 1, 3)", "(1, 1, 1)"]),
])
def test_input_gradient_phases_share_a_launch_where_alone_they_would_not_fill_the_gpu(emu, case, multiprocessors,
                                                                                     grids):
    """Up to four phases a launch (a ProblemSet), one gather of their taps
    of the weight for them all; a phase with blocks enough for the GPU on
    its own runs alone. Values and every gradient against torch."""
    log = _check_float64_against_torch(emu, case, multiprocessors=multiprocessors)
    assert _grids(log, "gemm_tile_kernel") == grids
    assert not _grids(log, "gemm_split_reduce_kernel")
    assert len(_grids(log, "phase_taps_kernel")) == (3 if case.kwargs["stride"] == 3 else 1)


def test_a_set_of_phases_splits_its_reduction_and_its_launches_along_z(emu):
    """4 phases of 2 x 3 x 3, 2 x 3 x 2, 2 x 2 x 3 and 2 x 2 x 2 positions,
    reducing over 512 channels times 1, 2, 2 and 4 taps, on 8
    multiprocessors: slices of 512 steps of k (the longest phase's 2048 in
    4; the shorter phases' later slices empty), and with gridDim.z at most
    8, launches of 2 phases of 4 slices each; then one reduction over the
    whole set, which stores each phase's positions only."""
    log = _check_float64_against_torch(emu, conv((2, 2, 5, 5), (512, 2, 3, 3), stride=2, padding=1),
                                       multiprocessors=8, max_grid_yz=8)
    assert _grids(log, "gemm_tile_kernel") == ["(1, 8, 1)", "(1, 1, 8)", "(1, 1, 8)", "(1, 8, 1)"]
    assert len(_grids(log, "gemm_split_reduce_kernel")) == 1


def _depthwise(case):
    """The layers the GPU's chooser sends to the depthwise kernels."""
    groups = case.kwargs.get("groups", 1)
    return groups > 1 and case.weight[1] == 1


DEPTHWISE_CASES = [name for name, c in CONV2D_CASES.items() if _depthwise(c)]


@pytest.mark.parametrize("kernels", ["depthwise", "im2col"])
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
@pytest.mark.parametrize("case", DEPTHWISE_CASES)
def test_depthwise_layers_take_the_depthwise_kernels_or_im2col_when_switched_off(emu, case, dtype, kernels):
    """Every depthwise case of the table (multipliers, strides, dilation,
    padding, empty batches) on the depthwise kernels, and on im2col with
    them switched off: forward and all gradients against torch, and the
    launch log shows which ran."""
    c = CONV2D_CASES[case]
    with switched_off(emu, "depthwise", kernels == "im2col"):
        emu.take_launch_log()
        assert_matches_torch(lambda x, w, b: emulated_conv2d(emu)(x, w, b, **c.kwargs),
                             lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), conv_tensors(c, dtype),
                             **tolerance(dtype, "cuda"))
        ran = {entry.split("<")[0] for entry in emu.take_launch_log()}
    if c.input[0] == 0:
        return
    depthwise = {"depthwise_forward_tile_kernel", "depthwise_backward_input_tile_kernel",
                 "depthwise_backward_weight_taps_kernel"}
    if kernels == "depthwise":
        assert depthwise <= ran and not ran & {"gemm_tile_kernel", "gemm_mma_kernel"}, ran
    else:
        assert not {k for k in ran if k.startswith("depthwise")} and "gemm_tile_kernel" in ran, ran


def test_enough_depthwise_cases():
    assert len(DEPTHWISE_CASES) >= 3, DEPTHWISE_CASES


# Depthwise layers beyond the table's, with the kernels each pass should take: the tiles (planes of
# several tiles, or several planes a block), which hold the taps of 3 x 3, 5 x 5 and 7 x 7 kernels in
# registers, as the weight gradient does (split into slices of the batch where the channels are few),
# and the general kernels where a patch would not fit the block's shared memory or the weight
# gradient's kernel has another size. The forward's tiles give a thread four values of a row where
# their patches fit (3 x 3 planes, 9 x 9, 3 x 5), else two (5 x 5, 7 x 7, 1 x 1 planes), else one
# (dilation 24).
TILES = {"depthwise_forward_tile_kernel", "depthwise_backward_input_tile_kernel",
         "depthwise_backward_weight_taps_kernel"}
DEPTHWISE_TILE_CASES = {
    "3x3, planes of 3 x 3 tiles, slices": (conv((4, 3, 20, 70), (3, 1, 3, 3), groups=3, padding=1),
                                           TILES | {"depthwise_weight_slices_kernel"}),
    "5x5, stride 2, multiplier 2": (conv((2, 2, 19, 23), (4, 1, 5, 5), groups=2, stride=2, padding=2), TILES),
    "7x7, dilation 2, padding (3, 1)": (conv((1, 4, 17, 15), (4, 1, 7, 7), groups=4, padding=(3, 1), dilation=2),
                                        TILES),
    "1x1 planes, 16 to a block": (conv((3, 16, 1, 1), (32, 1, 3, 3), groups=16, padding=1), TILES),
    "9x9: the general weight kernel": (conv((1, 2, 12, 12), (2, 1, 9, 9), groups=2, padding=4),
                                       {"depthwise_forward_tile_kernel", "depthwise_backward_input_tile_kernel",
                                        "depthwise_backward_weight_kernel"}),
    # The tiles unroll 3 x 3, 5 x 5 and 7 x 7 kernels; others, as 9 x 9 above, read their size at run time.
    "3x5, stride (1, 2), multiplier 2": (conv((2, 3, 10, 13), (6, 1, 3, 5), groups=3, stride=(1, 2), padding=(1, 2)),
                                         {"depthwise_forward_tile_kernel", "depthwise_backward_input_tile_kernel",
                                          "depthwise_backward_weight_kernel"}),
    # The forward's 16 x 16 tile needs 64 x 64 inputs, the most a block stages; the input gradient's
    # 32 x 8 tile would need 57 x 81 output gradients.
    "dilation 24: the general input-gradient kernel": (
        conv((1, 2, 64, 64), (2, 1, 3, 3), groups=2, dilation=24),
        {"depthwise_forward_tile_kernel", "depthwise_backward_input_kernel", "depthwise_backward_weight_taps_kernel"}),
    "dilation 8, stride 4: the general forward kernel": (
        conv((1, 2, 60, 60), (2, 1, 5, 5), groups=2, stride=4, dilation=8),
        {"depthwise_forward_kernel", "depthwise_backward_input_tile_kernel", "depthwise_backward_weight_taps_kernel"}),
}


@pytest.mark.parametrize("dtype", dtypes("float64", "float32", "float16"))
@pytest.mark.parametrize("case", list(DEPTHWISE_TILE_CASES))
def test_depthwise_tiles_and_their_limits(emu, case, dtype):
    """The forward and all gradients against torch (half within 2 eps of
    exact), on a GPU of 64 multiprocessors (so that few channels split the
    weight gradient's positions), and the kernels each pass took."""
    c, expected = DEPTHWISE_TILE_CASES[case]
    conv2d = emulated_conv2d(emu)
    with limits(emu, multiprocessors=64):
        if dtype == torch.float16:
            assert_within_eps_of_exact(lambda x, w, b: conv2d(x, w, b, **c.kwargs),
                                       lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), conv_tensors(c, dtype))
        else:
            assert_matches_torch(lambda x, w, b: conv2d(x, w, b, **c.kwargs),
                                 lambda x, w, b: F.conv2d(x, w, b, **c.kwargs), conv_tensors(c, dtype),
                                 **tolerance(dtype, "cuda"))
        ran = {entry.split("<")[0] for entry in emu.take_launch_log()}
    assert {k for k in ran if k.startswith("depthwise")} == expected, ran


POOL_CASES = {**MAX_POOL2D_CASES, **{f"padding only: {k}": v for k, v in MAX_POOL2D_PADDING_ONLY_CASES.items()}}


# The pooling kernels index in 32 bits (divisor.cuh) below LaunchLimits::narrow_index_limit, in 64 above.
INDEX_LIMITS = {"32-bit": 1 << 30, "64-bit": 1}


@pytest.mark.parametrize("index_bits", list(INDEX_LIMITS))
@pytest.mark.parametrize("dtype", dtypes("float64", "float32", "float16", "bfloat16"))
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool2d_matches_torch_and_equals_our_cpu_ops_bitwise(emu, case, dtype, index_bits):
    with limits(emu, narrow_index_limit=INDEX_LIMITS[index_bits]):
        c = POOL_CASES[case]
        x = pool_input(c, dtype)
        args = pool_arguments(c.kwargs)
        out, indices = emu.max_pool2d_forward(x, *args)
        ref, ref_indices = F.max_pool2d(x, **c.kwargs, return_indices=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        assert torch.equal(indices, ref_indices)
        cpu, cpu_indices = torch.ops.custom_conv.max_pool2d_forward(x, *args)
        assert torch.equal(out, cpu) and torch.equal(indices, cpu_indices)

        go = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
        grad = emu.max_pool2d_backward(go, indices, x.shape, *args)
        # The GPU gathers per input element, adding the outputs in the order the
        # CPU kernel scatters them: the same sums, bit for bit.
        assert torch.equal(grad, torch.ops.custom_conv.max_pool2d_backward(go, indices, x.shape, *args))
        if not out.isinf().any():  # torch routes the gradient of a window of padding only into the plane
            # Added in float64 and rounded once, as ours adds in float (torch's
            # CPU kernel adds half and bfloat16 in that dtype; test_max_pool2d.py).
            x64 = x.double().requires_grad_()
            F.max_pool2d(x64, **c.kwargs).backward(go.double())
            torch.testing.assert_close(grad, x64.grad.to(dtype))


@pytest.mark.parametrize("index_bits", list(INDEX_LIMITS))
@pytest.mark.parametrize("dtype", dtypes("float64", "float16"))
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool2d_reads_and_writes_channels_last_in_place(emu, case, dtype, index_bits):
    """A channels-last input takes the kernels that work in its own layout
    (no copy into NCHW and back), forward and backward: the same values,
    indices and gradients, bit for bit, as the NCHW kernels, returned
    channels-last as torch returns them; the gradient so for an output
    gradient of any layout (an expanded one suggests none)."""
    c = POOL_CASES[case]
    x = pool_input(c, dtype)
    args = pool_arguments(c.kwargs)
    xl = x.contiguous(memory_format=torch.channels_last)
    with limits(emu, narrow_index_limit=INDEX_LIMITS[index_bits]):
        out, indices = emu.max_pool2d_forward(xl, *args)
        ran = {entry.split("<")[0] for entry in emu.take_launch_log()}
        go = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
        grad = emu.max_pool2d_backward(go.contiguous(memory_format=torch.channels_last), indices, x.shape, *args)
        grad_of_expanded = emu.max_pool2d_backward(go[:1, :1, :1, :1].expand(go.shape), indices, x.shape, *args)
        ran_backward = {entry.split("<")[0] for entry in emu.take_launch_log()}
        ref, ref_indices = emu.max_pool2d_forward(x, *args)
        ref_grad = emu.max_pool2d_backward(go, ref_indices, x.shape, *args)
        ref_grad_of_expanded = emu.max_pool2d_backward(go[:1, :1, :1, :1].expand(go.shape), ref_indices, x.shape,
                                                       *args)
    assert torch.equal(out, ref) and torch.equal(indices, ref_indices)
    assert torch.equal(grad, ref_grad) and torch.equal(grad_of_expanded, ref_grad_of_expanded)
    torch_out = F.max_pool2d(xl, **c.kwargs)
    assert out.stride() == torch_out.stride() and indices.stride() == torch_out.stride()
    # The gradient's layout: our CPU op's, which test_memory_format.py holds to torch's gradient's.
    cpu_grad = torch.ops.custom_conv.max_pool2d_backward(go, indices, x.shape, *args)
    assert grad.stride() == grad_of_expanded.stride() == cpu_grad.stride()
    if out.numel() > 0:  # (one channel, or 1x1 planes: both layouts are NCHW's, and so are the kernels)
        layouts_differ = xl.stride() != x.stride()
        assert ran == {"max_pool2d_forward_channels_last_kernel" if layouts_differ else "max_pool2d_forward_kernel"}
        assert ran_backward == {"max_pool2d_backward_channels_last_kernel" if layouts_differ
                                else "max_pool2d_backward_kernel"}, ran_backward


def avg_pool_arguments(kwargs):
    """F.avg_pool2d's keyword arguments as the ops take them."""
    pair = lambda v: (v[0], v[-1]) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    kernel = pair(kwargs["kernel_size"])
    return (kernel, pair(kwargs.get("stride") or kernel), pair(kwargs.get("padding", 0)),
            kwargs.get("ceil_mode", False), kwargs.get("count_include_pad", True), kwargs.get("divisor_override"))


def adaptive_arguments(kwargs, x):
    size = kwargs["output_size"]
    size = (size, size) if isinstance(size, int) else size
    return ([s if s is not None else x.shape[2 + i] for i, s in enumerate(size)],)


# The ops take batches; the unbatched cases are test_avg_pool2d.py's.
AVG_POOL_CASES = {**{f"avg: {k}": ("avg_pool2d", c) for k, c in AVG_POOL2D_CASES.items() if len(c.input) == 4},
                  **{f"adaptive: {k}": ("adaptive_avg_pool2d", c) for k, c in ADAPTIVE_AVG_POOL2D_CASES.items()
                     if len(c.input) == 4}}


def avg_pool_op_arguments(name, c, x):
    """The forward's and the backward's window arguments of avg_pool2d's case c (name "avg_pool2d") or of an
    adaptive pooling's."""
    if name == "avg_pool2d":
        return avg_pool_arguments(c.kwargs), avg_pool_arguments(c.kwargs)
    return adaptive_arguments(c.kwargs, x), ()


@pytest.mark.parametrize("index_bits", list(INDEX_LIMITS))
@pytest.mark.parametrize("dtype", dtypes("float64", "float32", "float16", "bfloat16"))
@pytest.mark.parametrize("case", list(AVG_POOL_CASES))
def test_avg_pool2d_matches_torch_and_equals_our_cpu_ops_bitwise(emu, case, dtype, index_bits):
    """Both backends call the same window_mean and input_gradient
    (csrc/avg_pool2d_window.h): the same sums in the same order, bit for bit,
    whether the GPU divides by Divisors (32-bit) or in 64 bits; and torch's
    values and gradients, within float64 and float32's tolerance, or for
    half and bfloat16 the rounding of the float64 result."""
    name, c = AVG_POOL_CASES[case]
    x = pool_input(c, dtype)
    args, input_size_args = avg_pool_op_arguments(name, c, x)
    with limits(emu, narrow_index_limit=INDEX_LIMITS[index_bits]):
        out = getattr(emu, f"{name}_forward")(x, *args)
        go = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
        grad = getattr(emu, f"{name}_backward")(go, x.shape, *input_size_args)
    assert torch.equal(out, getattr(torch.ops.custom_conv, f"{name}_forward")(x, *args))
    assert torch.equal(grad, getattr(torch.ops.custom_conv, f"{name}_backward")(go, x.shape, *input_size_args))
    x64 = x.double().requires_grad_()
    ref = getattr(F, name)(x64, **c.kwargs)
    ref.backward(go.double())
    tol = tolerance(dtype, "cuda") if dtype in (torch.float64, torch.float32) else {}
    torch.testing.assert_close(out, ref.detach().to(dtype), **tol)
    torch.testing.assert_close(grad, x64.grad.to(dtype), **tol)


@pytest.mark.parametrize("index_bits", list(INDEX_LIMITS))
@pytest.mark.parametrize("dtype", dtypes("float64", "float32", "float16", "bfloat16"))
@pytest.mark.parametrize("case", [k for k, c in ADAPTIVE_AVG_POOL2D_CASES.items() if len(c.input) == 4])
def test_adaptive_max_pool2d_matches_torch_and_equals_our_cpu_ops_bitwise(emu, case, dtype, index_bits):
    c = ADAPTIVE_AVG_POOL2D_CASES[case]
    x = pool_input(c, dtype)
    args = adaptive_arguments(c.kwargs, x)
    with limits(emu, narrow_index_limit=INDEX_LIMITS[index_bits]):
        out, indices = emu.adaptive_max_pool2d_forward(x, *args)
        go = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
        grad = emu.adaptive_max_pool2d_backward(go, indices, x.shape)
    ref, ref_indices = F.adaptive_max_pool2d(x, c.kwargs["output_size"], return_indices=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.equal(indices, ref_indices)
    cpu, cpu_indices = torch.ops.custom_conv.adaptive_max_pool2d_forward(x, *args)
    assert torch.equal(out, cpu) and torch.equal(indices, cpu_indices)
    # The GPU gathers in the order the CPU kernel scatters: the same sums, bit for bit.
    assert torch.equal(grad, torch.ops.custom_conv.adaptive_max_pool2d_backward(go, indices, x.shape))
    x64 = x.double().requires_grad_()
    F.adaptive_max_pool2d(x64, c.kwargs["output_size"]).backward(go.double())
    torch.testing.assert_close(grad, x64.grad.to(dtype))


def _run_avg_or_adaptive_pool(ops, name, c, x, go_layout):
    """An average or adaptive pooling op's forward results on `ops` (the emulated ones, or our CPU ops), its
    gradients for an output gradient in go_layout and for an expanded one (of a sum, which suggests no layout),
    and the first of those output gradients."""
    args, input_size_args = avg_pool_op_arguments(name, c, x)
    results = getattr(ops, f"{name}_forward")(x, *args)
    out, *indices = results if name == "adaptive_max_pool2d" else (results,)
    go = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    go = go.contiguous(memory_format=go_layout)
    grads = [getattr(ops, f"{name}_backward")(g, *indices, x.shape, *input_size_args)
             for g in (go, go[:1, :1, :1, :1].expand(go.shape))]
    return [out, *indices], grads, go


AVG_OR_ADAPTIVE_CASES = {
    **{f"avg_pool2d: {k}": ("avg_pool2d", c) for k, c in AVG_POOL2D_CASES.items() if len(c.input) == 4},
    **{f"{op}: {k}": (op, c) for op in ("adaptive_avg_pool2d", "adaptive_max_pool2d")
       for k, c in ADAPTIVE_AVG_POOL2D_CASES.items() if len(c.input) == 4}}


@pytest.mark.parametrize("index_bits", list(INDEX_LIMITS))
@pytest.mark.parametrize("dtype", dtypes("float64", "float16"))
@pytest.mark.parametrize("case", list(AVG_OR_ADAPTIVE_CASES))
def test_avg_and_adaptive_pooling_read_and_write_channels_last_in_place(emu, case, dtype, index_bits):
    """As max_pool2d's: a channels-last input takes the kernels that work in
    its layout (no copy into NCHW and back), forward and backward, with the
    NCHW kernels' values, indices and gradients bit for bit, and results in
    our CPU ops' layout (test_memory_format.py holds them to torch's). The
    backward runs channels-last where the forward was (adaptive max: its
    indices) or, for average pooling, given no forward tensor, where the
    output gradient is (csrc/memory_format.h)."""
    name, c = AVG_OR_ADAPTIVE_CASES[case]
    x = pool_input(c, dtype)
    xl = x.contiguous(memory_format=torch.channels_last)
    with limits(emu, narrow_index_limit=INDEX_LIMITS[index_bits]):
        outs, grads, go = _run_avg_or_adaptive_pool(emu, name, c, xl, torch.channels_last)
        ran = {entry.split("<")[0] for entry in emu.take_launch_log()}
        ref_outs, ref_grads, _ = _run_avg_or_adaptive_pool(emu, name, c, x, torch.contiguous_format)
        emu.take_launch_log()
    cpu_outs, cpu_grads, _ = _run_avg_or_adaptive_pool(torch.ops.custom_conv, name, c, xl, torch.channels_last)
    for got, ref, cpu in zip(outs + grads, ref_outs + ref_grads, cpu_outs + cpu_grads):
        assert torch.equal(got, ref) and got.stride() == cpu.stride()
    if outs[0].numel() > 0 and xl.stride() != x.stride():  # (one channel, or 1x1 planes: both layouts are NCHW's)
        prefix = "avg_pool2d" if name == "adaptive_avg_pool2d" else name
        expected = {f"{prefix}_forward_channels_last_kernel", f"{prefix}_backward_channels_last_kernel"}
        if name != "adaptive_max_pool2d":
            # Average pooling's backward follows the output gradient: the expanded one suggests no layout, nor
            # does an N x C x 1 x 1 one (contiguous both ways, with NCHW's strides).
            expected.add(f"{prefix}_backward_kernel")
            if not _suggests_channels_last(go):
                expected.remove(f"{prefix}_backward_channels_last_kernel")
        assert ran == expected, ran


def test_adaptive_windows_whose_bounds_pass_32_bits_are_found_in_64(emu):
    """An adaptive window's bounds multiply a position by a size (o * in,
    csrc/avg_pool2d_window.h): for a row of 80000 pooled to 60000, up to
    4.8e9, past 32 bits though the tensors are small, so the kernels must
    take 64-bit indices (csrc/cuda/pool_index.cuh) to find torch's windows."""
    x = torch.randn(1, 1, 1, 80000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    go = torch.randn(1, 1, 1, 60000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = emu.adaptive_avg_pool2d_forward(x, [1, 60000])
    torch.testing.assert_close(out, F.adaptive_avg_pool2d(x, (1, 60000)), rtol=0, atol=1e-15)
    x64 = x.clone().requires_grad_()
    F.adaptive_avg_pool2d(x64, (1, 60000)).backward(go)
    torch.testing.assert_close(emu.adaptive_avg_pool2d_backward(go, x.shape), x64.grad, rtol=0, atol=1e-15)
    top, indices = emu.adaptive_max_pool2d_forward(x, [1, 60000])
    ref, ref_indices = F.adaptive_max_pool2d(x, (1, 60000), return_indices=True)
    assert torch.equal(top, ref) and torch.equal(indices, ref_indices)
    x64 = x.clone().requires_grad_()
    F.adaptive_max_pool2d(x64, (1, 60000)).backward(go)
    assert torch.equal(emu.adaptive_max_pool2d_backward(go, indices, x.shape), x64.grad)


# ------------------------------------------- paths only large problems take on a GPU

def _grids(log, kernel):
    """The grids of `kernel`'s launches in a launch log."""
    return [line.split(" grid ")[1].split(" block")[0] for line in log if line.startswith(kernel)]


def _check_float64_against_torch(emu, case, route="implicit GEMM", **device_limits):
    """Forward and every gradient of `case` in float64 on the emulated ops,
    against torch, under these device limits; returns the launch log."""
    with limits(emu, **device_limits), on_route(emu, route):
        assert_matches_torch(lambda x, w, b: emulated_conv2d(emu)(x, w, b, **case.kwargs),
                             lambda x, w, b: F.conv2d(x, w, b, **case.kwargs), conv_tensors(case),
                             **tolerance(torch.float64, "cuda"))
        return emu.take_launch_log()


@pytest.mark.parametrize("route", ROUTES)
def test_weight_gradient_splits_its_reduction(emu, route):
    """6 x 9 weight-gradient entries summed over 2 * 256 positions on a GPU
    of 2 multiprocessors: one tile, its reduction cut into 2 slices of 256,
    then the reduce kernel. (Forward and backward input have 8 tiles each:
    512 positions.)"""
    log = _check_float64_against_torch(emu, conv((2, 1, 16, 16), (6, 1, 3, 3), padding=1), route,
                                       multiprocessors=2)
    assert _grids(log, "gemm_tile_kernel") == ["(8, 1, 1)", "(8, 1, 1)", "(1, 1, 2)"]
    assert len(_grids(log, "gemm_split_reduce_kernel")) == 1


@pytest.mark.parametrize("route, grid", [
    # cols (18 x 32) = W^T (18 x 512) @ grad_out: a reduction over 512
    # output channels, in 2 slices of at least 256
    ("column matrix", "(1, 1, 2)"),
    # dX (2 x 32) = W' (2 x 512 * 9) @ dY': over 512 channels times 9 taps, in
    # 4 slices (2 blocks per multiprocessor)
    ("implicit GEMM", "(1, 1, 4)")])
def test_backward_input_splits_its_reduction(emu, route, grid):
    """The input gradient of a layer of 512 output channels and 2 input
    channels: one tile, its long reduction split."""
    log = _check_float64_against_torch(emu, conv((2, 2, 4, 4), (512, 2, 3, 3), padding=1), route,
                                       multiprocessors=2)
    # forward (512 x 32: 8 row tiles), backward input (split), backward weight (512 x 18)
    assert _grids(log, "gemm_tile_kernel") == ["(1, 8, 1)", grid, "(1, 8, 1)"]
    assert len(_grids(log, "gemm_split_reduce_kernel")) == 1


@pytest.mark.parametrize("case, split", [
    # The forward's k (512 channels x 9 taps) for one tile of 8 x 9: split.
    (conv((1, 512, 3, 3), (8, 512, 3, 3), padding=1), "forward"),
    # The input gradient's k (512 output channels x 9 taps) for one tile of 8 x 32: split.
    (conv((2, 8, 4, 4), (512, 8, 3, 3), padding=1), "input gradient")])
def test_channels_last_gathers_with_split_reductions_match_exact(emu, case, split):
    """The tensor cores' channels-last gathers in the slices of a split
    reduction: each stage's taps found from where its slice starts (half,
    within 2 eps of exact)."""
    to_channels_last = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    conv2d = emulated_conv2d(emu, grad_layout=to_channels_last)
    with limits(emu, multiprocessors=2):
        assert_within_eps_of_exact(
            lambda x, w, b: conv2d(to_channels_last(x), to_channels_last(w), b, **case.kwargs),
            lambda x, w, b: F.conv2d(x, w, b, **case.kwargs), conv_tensors(case, torch.half))
        log = emu.take_launch_log()
    # The products in order: forward, input gradient, weight gradient; the split one in 4 slices along z.
    assert _grids(log, "gemm_mma_kernel")[0 if split == "forward" else 1] == "(1, 1, 4)"
    assert _grids(log, "gemm_split_reduce_kernel"), "no split reduction ran"


def test_batch_in_chunks_with_a_last_chunk_of_one_sample(emu):
    """18 x 36 column values per sample and a budget of 1,500: chunks of 2, 2
    and 1 samples, the weight gradient accumulated across them."""
    log = _check_float64_against_torch(emu, conv((5, 2, 6, 6), (3, 2, 3, 3), padding=1), "column matrix",
                                       column_budget=1500)
    # 3 chunks each: forward and backward weight unroll the input (im2col),
    # backward input folds the columns back (col2im)
    assert len(_grids(log, "im2col_kernel")) == 6 and len(_grids(log, "col2im_kernel")) == 3


def test_grouped_gemm_launch_splits_along_z(emu):
    """10 groups where gridDim.z may be at most 4: launches of 4, 4 and 2.
    Two input channels per group: a depthwise layer would take the depthwise
    kernels instead of the GEMM."""
    case = conv((1, 20, 5, 5), (10, 2, 3, 3), groups=10)
    with limits(emu, max_grid_yz=4):
        y = emulated_conv2d(emu)(*conv_tensors(case), **case.kwargs)
        torch.testing.assert_close(y, F.conv2d(*conv_tensors(case), **case.kwargs), **tolerance(torch.float64, "cuda"))
        assert _grids(emu.take_launch_log(), "gemm_tile_kernel") == ["(1, 1, 4)", "(1, 1, 4)", "(1, 1, 2)"]


@pytest.mark.parametrize("dtype", dtypes("float16", "bfloat16"))
def test_half_weight_gradient_over_chunks_and_slices_is_rounded_once(emu, dtype):
    """Several chunks, each with a split reduction: the float sum across them
    is rounded to 16 bits once (the bound of test_cuda.py's version)."""
    case = conv((8, 1, 16, 16), (6, 1, 3, 3), padding=1)
    conv2d = emulated_conv2d(emu)
    with limits(emu, multiprocessors=2, column_budget=9 * 512), on_route(emu, "column matrix"):
        assert_within_eps_of_exact(lambda x, w, b: conv2d(x, w, b, **case.kwargs),
                                   lambda x, w, b: F.conv2d(x, w, b, **case.kwargs), conv_tensors(case, dtype),
                                   eps_factor=1, positive=True)
        log = emu.take_launch_log()
    assert len(_grids(log, "im2col_kernel")) == 2 * 4  # forward and weight gradient, 4 chunks each
    assert len(_grids(log, "gemm_split_reduce_kernel")) == 4  # a split reduction in every chunk


# ---------------------------------------- every remainder of every split, swept

def _gemm_products(case, batch, route):
    """The products conv2d.cu's passes run on a chunk of `batch` samples, as
    gemm_plan takes them, (groups, m, n, k): see the tables atop conv2d.cu
    and implicit_gemm.cuh."""
    cout, cin_g, kh, kw = case.weight
    out = F.conv2d(torch.empty(case.input, device="meta"), torch.empty(case.weight, device="meta"), **case.kwargs)
    groups, K, L = case.kwargs.get("groups", 1), cin_g * kh * kw, out.shape[2] * out.shape[3]
    M = cout // groups
    backward_input = ((groups, cin_g, batch * case.input[2] * case.input[3], M * kh * kw) if route == "implicit GEMM"
                      else (groups, K, batch * L, M))
    return {"forward": (groups, M, batch * L, K), "backward_input": backward_input,
            "backward_weight": (groups, M, K, batch * L)}


def _ragged_split(plan, k, groups=1):
    """The reduction cut into slices, the last one shorter."""
    _, _, splits, k_per_split, _ = plan
    return splits > 1 and k % k_per_split != 0


def _ragged_launches(plan, groups):
    """The groups' products launched along z in several launches, the last one shorter."""
    return groups > plan[4] and groups % plan[4] != 0


# name: (device limits, the pass whose product must leave the remainder,
#        candidate layers in order, what the product's plan must show)
SPLIT_SWEEP = {
    "weight gradient: a reduction over positions in ragged slices":
        (dict(multiprocessors=2), "backward_weight",
         [conv((1, 1, h, 25), (6, 1, 3, 3)) for h in range(20, 60)], _ragged_split),
    "forward: a reduction over input channels in ragged slices":
        (dict(multiprocessors=2), "forward",
         [conv((1, c, 6, 6), (5, c, 3, 3)) for c in range(50, 120)], _ragged_split),
    "input gradient: a reduction over output channels in ragged slices":
        (dict(multiprocessors=2), "backward_input",
         [conv((1, 2, 4, 4), (c, 2, 3, 3), padding=1) for c in range(500, 900, 3)], _ragged_split),
    "groups launched along z in ragged launches, each with ragged slices":
        (dict(multiprocessors=4, max_grid_yz=4), "backward_weight",
         [conv((1, 2 * g, h, 25), (2 * g, 2, 3, 3), groups=g) for g in (3, 5, 7) for h in range(20, 60)],
         lambda plan, k, groups: _ragged_split(plan, k) and _ragged_launches(plan, groups)),
}


def _pick(emu, limits_, target, candidates, wanted, chunks=None, route="column matrix"):
    """The first candidate whose `target` product, under these limits, has
    the remainder `wanted` looks for, wanted(plan, k, groups); with
    `chunks`, in the product of a chunk of each of these many samples."""
    with limits(emu, **limits_):
        for case in candidates:
            products = [_gemm_products(case, b, route)[target] for b in (chunks or [case.input[0]])]
            if all(wanted(emu.gemm_plan(groups, m, n, k), k, groups) for groups, m, n, k in products):
                return case
    raise AssertionError(f"no candidate layer gives {target} the remainder wanted: widen the candidates")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", dtypes("float64", "float32"))
@pytest.mark.parametrize("name", list(SPLIT_SWEEP))
def test_split_reductions_with_remainders_match_torch(emu, name, dtype, route):
    """Layers picked through the GEMM's own plan (gemm_plan) so that each
    split leaves a remainder: a last slice of the reduction shorter than the
    others, a last launch with fewer groups. A slice count rounded down, or
    a slice end clipped wrong, drops the remainder's terms."""
    limits_, target, candidates, wanted = SPLIT_SWEEP[name]
    case = _pick(emu, limits_, target, candidates, wanted, route=route)
    with limits(emu, **limits_), on_route(emu, route):
        assert_matches_torch(lambda x, w, b: emulated_conv2d(emu)(x, w, b, **case.kwargs),
                             lambda x, w, b: F.conv2d(x, w, b, **case.kwargs), conv_tensors(case, dtype),
                             **tolerance(dtype, "cuda", long_sums=True))
        log = emu.take_launch_log()
    assert _grids(log, "gemm_split_reduce_kernel"), "no split reduction ran"


@pytest.mark.parametrize("batch", [3, 5, 7])
def test_chunks_with_a_short_last_chunk_and_split_slices_match_torch(emu, batch):
    """A column budget of two samples and a half: chunks of 2, the last of
    1, each chunk's weight gradient split in ragged slices and summed across
    chunks."""
    case = _pick(emu, dict(multiprocessors=2), "backward_weight",
                 [conv((batch, 1, h, 25), (6, 1, 3, 3)) for h in range(20, 60)], _ragged_split, chunks=[2, 1])
    per_sample = 9 * (case.input[2] - 2) * 23
    with limits(emu, multiprocessors=2, column_budget=per_sample * 5 // 2), on_route(emu, "column matrix"):
        assert_matches_torch(lambda x, w, b: emulated_conv2d(emu)(x, w, b, **case.kwargs),
                             lambda x, w, b: F.conv2d(x, w, b, **case.kwargs), conv_tensors(case),
                             **tolerance(torch.float64, "cuda"))
        log = emu.take_launch_log()
    chunks = (batch + 1) // 2
    assert len(_grids(log, "im2col_kernel")) == 2 * chunks and len(_grids(log, "col2im_kernel")) == chunks


# ------------------------------------------------------- what the emulator catches

@pytest.mark.parametrize("mutant, message", [
    ("core_stage_reused_early", "shared memory race on element"),
    ("store_off_by_one", "global memory access out of bounds"),
    ("load_off_by_one", "global memory access out of bounds"),
    ("shared_tile_too_small", "shared memory index 63 out of bounds of a dimension of size 63"),
])
def test_a_broken_gemm_is_caught(emu, mutant, message):
    """(8 x 40) @ (40 x 40): three K steps, the last one short, and a tile
    with unused rows and columns."""
    a = torch.randn(8, 40)
    b = torch.randn(40, 40)
    with pytest.raises(RuntimeError, match=f"error\\(s\\) in gemm_tile_kernel.*\n.*{message}"):
        emu.mutant_gemm(mutant, a, b)


@pytest.mark.parametrize("mutant, message", [
    ("mma_missing_wait", "is read while a cp.async to it \\(from thread \\d+\\) is still in flight"),
    ("mma_stage_reused_early", "shared memory race on element"),
    ("mma_fill_next_stage", "is written while a cp.async to it \\(from thread \\d+\\) is still in flight"),
    ("mma_no_dynamic_shared", "the kernel takes \\d+ bytes of dynamic shared memory; its launch gave 0"),
])
def test_a_broken_tensor_core_gemm_is_caught(emu, mutant, message):
    """(8 x 112) @ (112 x 40) in half: four steps of k (the fourth refills
    the first stage), chunks copied whole and chunks cut by the edges."""
    a = torch.randn(8, 112).half()
    b = torch.randn(112, 40).half()
    with pytest.raises(RuntimeError, match=f"error\\(s\\) in gemm_mma_kernel.*\n.*{message}"):
        emu.mutant_gemm(mutant, a, b)


def test_a_wrong_fragment_index_gives_wrong_values(emu):
    """No access goes astray, so only the values can show it."""
    a = torch.randn(8, 80).half()
    b = torch.randn(80, 40).half()
    exact = a.double() @ b.double()
    c = emu.mutant_gemm("mma_fragment_row", a, b)
    assert not torch.allclose(c.double(), exact, rtol=1e-2, atol=1e-2)


def _stored(rows, cols, transposed, dtype=torch.float32, aligned=True):
    """A rows x cols operand, stored transposed or not, in a wider buffer
    (a leading dimension of 8j + 1 where not `aligned`)."""
    if transposed:
        rows, cols = cols, rows
    width = (cols + 7) // 8 * 8 + (0 if aligned else 1)
    x = torch.randn(rows, width)[:, :cols].to(dtype)
    return x.t() if transposed else x


# (m, n): the grid of 16-bit products, and of TF32 ones (no tiles of 128 x 128), on a GPU of 2 multiprocessors
MMA_TILES = {
    (40, 60): ("(1, 1, 1)", "(1, 1, 1)"),     # 64 x 64: too few columns for wider tiles
    (70, 75): ("(1, 2, 1)", "(1, 2, 1)"),     # 64 x 128, 4 warps of 32 x 64: one tile of 128 x 128 is too few
    (200, 150): ("(2, 2, 1)", "(2, 4, 1)")}   # 128 x 128, 8 warps of 64 x 32; TF32 64 x 128


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("m, n", list(MMA_TILES))
def test_the_tensor_core_gemm_matches_float64(emu, dtype, trans_a, trans_b, aligned, m, n):
    """Every operand layout, with 16-byte chunks (cp.async) or not (a
    leading dimension of 8j + 1 forces element loads), in every tile shape
    (ragged edges), over k = 83 (a ragged last k step). The 16-bit products
    are exact in float, so their error is float accumulation only; float32
    runs in TF32, each operand rounded to 10 bits of mantissa (2^-11 of it
    at most), so each product within 2^-10 of itself."""
    k = 83
    a, b = _stored(m, k, trans_a, dtype, aligned), _stored(k, n, trans_b, dtype, aligned)
    emu.take_launch_log()
    c = emu.gemm(a, b, True)
    assert _grids(emu.take_launch_log(), "gemm_mma_kernel") == [MMA_TILES[m, n][dtype == torch.float32]]
    exact = a.double() @ b.double()
    terms = a.double().abs() @ b.double().abs()
    if dtype == torch.float32:
        # TF32 operands, float sums; the result is float.
        bound = 2.0 ** -10 * terms + k * 2.0 ** -24 * terms
        assert ((c.double() - exact).abs() <= bound).all()
        # And TF32 it is: the exact-FMA kernel is far closer.
        assert (c.double() - exact).abs().max() > 100 * (emu.gemm(a, b, False).double() - exact).abs().max()
        return
    # Rounding to 16 bits, after float sums of k exact products.
    bound = torch.finfo(dtype).eps * exact.abs() + k * 2.0 ** -24 * terms
    assert ((c.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("m, n, grid", [
    (40, 60, "(1, 1, 1)"),     # 64 x 64: too few columns for wider tiles
    (40, 300, "(3, 1, 1)"),    # 64 x 128: rows for one tile of 64, three tiles of columns
    (200, 150, "(2, 2, 1)"),   # 128 x 128: four tiles, each of 8 x 8 values a thread, ragged at both edges
    (200, 100, "(2, 4, 1)")])  # 64 x 64 again: 128 x 128 would give 2 tiles, 64 x 128 only 4 x 1 (a GPU of 8)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_the_cuda_core_gemm_matches_float64_in_every_tile(emu, m, n, grid, trans_a, trans_b):
    """Each tile of the CUDA-core kernel, as tile_for picks it (the
    largest whose tiles still give every multiprocessor a block), with every
    operand layout and a ragged last slab (k = 83, 16 steps a slab). Float
    with exact multiply-adds: each entry is k products summed in order, so
    within k roundings (2^-24 of the terms' sum each) of the float64 value."""
    k = 83
    a, b = _stored(m, k, trans_a), _stored(k, n, trans_b, aligned=False)
    multiprocessors = 8 if n == 100 else 2
    with limits(emu, multiprocessors=multiprocessors):
        c = emu.gemm(a, b, False)
        assert _grids(emu.take_launch_log(), "gemm_tile_kernel") == [grid]
    exact = a.double() @ b.double()
    terms = a.double().abs() @ b.double().abs()
    assert ((c.double() - exact).abs() <= 1.01 * k * 2.0 ** -24 * terms).all()


def _conv_on_two_multiprocessors(emu, case, dtype, route):
    """The grids of the GEMM launches of `case` in `dtype` on `route`, on a
    GPU of 2 multiprocessors, after checking its values and gradients: float32
    against torch's, half and bfloat16 within 2 eps of exact."""
    conv2d = emulated_conv2d(emu)
    with limits(emu, multiprocessors=2), on_route(emu, route):
        ours = lambda x, w, b: conv2d(x, w, b, **case.kwargs)  # noqa: E731
        theirs = lambda x, w, b: F.conv2d(x, w, b, **case.kwargs)  # noqa: E731
        if dtype == torch.float32:
            assert_matches_torch(ours, theirs, conv_tensors(case, dtype), **tolerance(dtype, "cuda"))
        else:
            assert_within_eps_of_exact(ours, theirs, conv_tensors(case, dtype))
        log = emu.take_launch_log()
    return _grids(log, "gemm_tile_kernel" if dtype == torch.float32 else "gemm_mma_kernel")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", dtypes("float32", "float16", "bfloat16"))
def test_conv2d_on_the_widest_tiles_matches_torch(emu, route, stride, dtype):
    """130 output channels: the forward and the weight gradient in tiles of
    128 x 128, the input gradient of 8 channels in tiles of 64 x 128, on a
    GPU of 2 multiprocessors; strided too, whose input gradient skips the
    taps between windows. Float32 on the CUDA cores (8 x 8 values a
    thread), half and bfloat16 on the tensor cores (8 warps of 64 x 32)."""
    case = conv((2, 8, 12, 12), (130, 8, 3, 3), stride=stride, padding=1)
    grids = _conv_on_two_multiprocessors(emu, case, dtype, route)
    # The forward (130 x 288 or 130 x 72) and the weight gradient (130 x 72) in 2 tiles of 128 rows, not 3 of 64.
    assert grids[0] == ("(3, 2, 1)" if stride == 1 else "(1, 2, 1)") and grids[-1] == "(1, 2, 1)", grids


@pytest.mark.parametrize("width", [2, 3, 4, 5, 6, 7, 12])
@pytest.mark.parametrize("dtype", dtypes("float32", "float16"))
def test_runs_of_positions_that_go_on_into_the_next_rows_match_torch(emu, width, dtype):
    """The layer above on planes a few columns wide, so that the runs of 8
    positions a thread loads in the tiles of 128 (4 in those of 64) go on
    past the end of their row of the output (the forward, the weight
    gradient) or of the input (the input gradient), and into the next
    sample. A run that ends in the next row finds both rows once; one that
    reaches a third row goes element by element. Runs start at multiples of
    their length, so runs of 8 all end in the next row where rows are 12, 7,
    6 (starting at column 0, 2 or 4) or 4 columns wide (at column 0), some
    do where they are 5 (the others, in the same warps, reach a third row),
    none where they are 3 or 2; runs of 4 all end in the next row from 2
    columns up."""
    case = conv((2, 8, 288 // (2 * width), width), (130, 8, 3, 3), padding=1)
    assert _conv_on_two_multiprocessors(emu, case, dtype, "implicit GEMM")[0] == "(3, 2, 1)"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_in_tf32_on_its_widest_tiles(emu, route, stride):
    """The layer above in TF32 (as torch allows it by default): tiles of
    64 x 128, 4 warps of 32 x 64 each, where half takes 128 x 128 (three
    stages of those would take more shared memory than some GPUs give a
    block); within 2 TF32 eps of exact."""
    case = conv((2, 8, 12, 12), (130, 8, 3, 3), stride=stride, padding=1)
    conv2d = emulated_conv2d(emu)
    with cudnn_tf32(True), \
            limits(emu, multiprocessors=2), on_route(emu, route):
        assert_within_eps_of_exact(lambda x, w, b: conv2d(x, w, b, **case.kwargs),
                                   lambda x, w, b: F.conv2d(x, w, b, **case.kwargs),
                                   conv_tensors(case, torch.float32), eps_factor=2 * 2 ** 13)
        log = emu.take_launch_log()
    grids = _grids(log, "gemm_mma_kernel")
    # The forward (130 x 288 or 130 x 72) and the weight gradient (130 x 72) in 3 tiles of 64 rows.
    assert grids[0] == ("(3, 3, 1)" if stride == 1 else "(1, 3, 1)") and grids[-1] == "(1, 3, 1)", grids


@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 9, 25, 49, 56, 224, 3136, 50176, 2 ** 16 + 1, 2 ** 30 - 1, 2 ** 30,
                               2 ** 30 + 1, 2 ** 31 - 1])
def test_a_divisor_divides_as_integer_division_does(emu, d):
    """csrc/cuda/divisor.cuh, which the implicit GEMM's index arithmetic
    divides by (kernel sizes, strides, planes of positions): every n below
    4096, 10^5 random ones below 2^31, and those on either side of each
    multiple of d near 2^31 and near 0."""
    multiples = torch.tensor([d * k for k in range(1, 6)] + [(2 ** 31 - 1) // d * d - d * k for k in range(3)],
                             dtype=torch.int64)
    n = torch.cat([torch.arange(4096), torch.randint(0, 2 ** 31 - 1, (100000,)), multiples - 1, multiples,
                   multiples + 1, torch.tensor([2 ** 31 - 1])])
    n = n[(n >= 0) & (n < 2 ** 31)]
    q, r = emu.divide(n.int(), d)
    assert torch.equal(q.long(), n // d) and torch.equal(r.long(), n % d)


def test_the_gemm_the_mutants_come_from_is_clean(emu):
    """The same product through the real GEMM: no report, the right values."""
    a, b = torch.randn(8, 40), torch.randn(40, 40)
    torch.testing.assert_close(emu.gemm(a, b, False), a @ b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- warps

def _shuffle_model(x, mode, mask, operand, width):
    """What CUDA's programming guide says each lane receives."""
    out = x.clone()
    for i in range(len(x)):
        lane = i % 32
        if not mask >> lane & 1:
            continue
        base = lane - lane % width
        source = {"index": base + operand % width,
                  "up": lane - operand if lane - operand >= base else lane,
                  "down": lane + operand if lane + operand < base + width else lane,
                  "xor": lane ^ operand if lane ^ operand < base + width else lane}[mode]
        out[i] = x[i - lane + source]
    return out


@pytest.mark.parametrize("mode, operand", [("index", 5), ("index", 37), ("up", 3), ("down", 3), ("xor", 1),
                                           ("xor", 12)])
@pytest.mark.parametrize("width", [32, 8])
def test_shuffles_follow_cudas_rules(emu, mode, operand, width):
    """Two warps of 32 lanes; and a third warp of 16, with a mask of those."""
    x = torch.randperm(1000)[:64].int()
    mask = 0xFFFFFFFF
    torch.testing.assert_close(emu.warp_shuffle(x, mode, mask, operand, width),
                               _shuffle_model(x, mode, mask, operand, width), rtol=0, atol=0)
    if mode != "index" or operand < 16:
        x = x[:48].contiguous()
        torch.testing.assert_close(emu.warp_shuffle(x, mode, 0xFFFF, operand % 16, min(width, 16)),
                                   _shuffle_model(x, mode, 0xFFFF, operand % 16, min(width, 16)), rtol=0, atol=0)


@pytest.mark.parametrize("bug, message", [
    ("exited", "lanes of warp 0 wait at __shfl_xor_sync for lanes that never arrive: lane 16 has returned"),
    ("barrier", "lanes of warp 0 wait at __syncwarp for lanes that never arrive: lane 0 waits at __syncthreads"),
    ("mixed", "lanes of one warp meet at different warp operations: __shfl_down_sync"),
    ("no_syncwarp", "shared memory race on element 0 of .* this thread reads it, and since the last barrier "
                    "thread 0 wrote it"),
    ("outside_mask", "a shuffle reads lane 20, which is not in its mask"),
    ("address_before", "shared memory address -17 elements on from element 16 of a shared array int\\[32\\]"),
    ("address_after", "shared memory address 16 elements on from element 16 of a shared array int\\[32\\]"),
])
def test_warp_bugs_are_caught(emu, bug, message):
    """Kernels with one warp-level bug each (tests/emulator/warps.cpp)."""
    with pytest.raises(RuntimeError, match=f"error\\(s\\) in warp_bug_kernel(.|\n)*{message}"):
        emu.warp_bug(bug)


def test_a_syncwarp_orders_the_lanes_of_a_warp(emu):
    """no_syncwarp with the __syncwarp(): no report."""
    emu.warp_bug("syncwarp")


def test_a_shared_address_may_go_back_inside_its_array(emu):
    """16 back from element 16 of 32 (as a pipeline's addresses wrap from
    its last stage to its first): no report."""
    emu.warp_bug("address_inside")


def test_memory_from_before_tracking_is_refused(emu):
    emu.track_allocations(False)
    try:
        x = torch.randn(1, 1, 4, 4)
    finally:
        emu.track_allocations(True)
    with pytest.raises(RuntimeError, match="pointer into no recorded allocation"):
        emu.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1), False)
