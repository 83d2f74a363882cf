"""Thousands of calls leave the process's resident memory where it was: no
op keeps a buffer, a tensor or an autograd graph alive after its call, but
for the CPU routes' scratch pool, which keeps its buffers for the next call
within its bounds, and frees them when asked."""
import os
from pathlib import Path

import pytest
import torch

import custom_conv
from custom_conv import functional as CF
from helpers import conv_tensors, forward_and_grads, pool_input
from test_threads import CONVS, DTYPES, POOL

STATM = Path("/proc/self/statm")  # Linux: sizes in pages; the second is the resident set


def resident_bytes():
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def calls():
    """For each layer of test_threads.py (every route, float32 and float64)
    and its max-pool: a forward and backward call on tensors made once."""
    fns = []
    for dtype in DTYPES:
        for case in CONVS.values():
            tensors = [t.requires_grad_() for t in conv_tensors(case, dtype)]
            fns.append(lambda case=case, tensors=tensors: CF.conv2d(*tensors, **case.kwargs).sum().backward())
        x = pool_input(POOL, dtype).requires_grad_()
        fns.append(lambda x=x: CF.max_pool2d(x, **POOL.kwargs).sum().backward())
    return fns


@pytest.mark.skipif(not STATM.exists(), reason="reads the resident set size from /proc/self/statm (Linux)")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer holds freed memory in quarantine: resident memory grows by design")
def test_ten_thousand_calls_leave_resident_memory_flat():
    fns = calls()

    def run(rounds):
        for _ in range(rounds):
            for fn in fns:
                fn()

    # Warm-up: the thread pools, BLAS's and oneDNN's buffers and the malloc
    # arenas of each thread grow to what these calls need, once.
    run(100)
    before = resident_bytes()
    run(10_000 // len(fns))
    growth = resident_bytes() - before
    # After the warm-up the allocator serves every call from memory it already
    # holds: measured growth is ~50 KB (a few pages of Python objects). 2 MiB
    # over 10,000 calls is 200 bytes a call, less than any leaked tensor
    # (its TensorImpl and storage alone, before its data) or autograd node.
    assert growth < 2 << 20, f"resident memory grew by {growth / 2**20:.1f} MiB over 10,000 calls"


# ------------------------------------------------------------ the scratch pool
# The CPU routes take their temporaries of a quarter MiB and more from a pool
# (csrc/cpu/scratch.h) that keeps them for the next call.

SCRATCH = torch.ops.custom_conv.cpu_scratch_stats  # (kept free, in use, peak since last asked, allocations)


def scratch_layers():
    """Layers whose temporaries the pool serves, one or more per CPU route
    (test_threads.py's, in float32 and float64): im2col, Winograd in both
    layouts, direct in float64."""
    return [(case, dtype) for dtype in DTYPES for name, case in CONVS.items()
            if name.startswith(("im2col", "winograd"))]


def fwd_bwd(case, dtype):
    out, grads, _ = forward_and_grads(lambda x, w, b: CF.conv2d(x, w, b, **case.kwargs),
                                      conv_tensors(case, dtype))
    return [out, *grads]


@pytest.fixture
def empty_pool():
    custom_conv.release_cpu_scratch()
    SCRATCH()  # resets the peak
    yield
    custom_conv.release_cpu_scratch()


def test_scratch_is_kept_and_reused_and_no_result_lives_in_it(empty_pool):
    first = [fwd_bwd(case, dtype) for case, dtype in scratch_layers()]
    kept, in_use, _, _ = SCRATCH()
    assert kept > 0, "the pool kept nothing: every call allocates its temporaries again"
    # Every output and gradient is alive here: none may sit on pooled memory,
    # which the next call would overwrite.
    assert in_use == 0, f"{in_use} bytes of scratch still held by tensors the ops returned"
    # The pool settles within the second round (the first one's high water
    # bounds what it keeps while it still grows); after that, the same calls
    # take no new buffers.
    [fwd_bwd(case, dtype) for case, dtype in scratch_layers()]
    allocations = SCRATCH()[3]
    third = [fwd_bwd(case, dtype) for case, dtype in scratch_layers()]
    assert SCRATCH()[3] == allocations, "a round of the same calls took new buffers"
    for a, b in zip(first, third):  # the same values from reused memory
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_pool_keeps_no_more_than_was_in_use_at_once(empty_pool):
    peak = 0
    for case, dtype in scratch_layers() + scratch_layers()[::-1]:
        fwd_bwd(case, dtype)
        peak = max(peak, SCRATCH()[2])
    kept = SCRATCH()[0]
    assert 0 < kept <= peak


def test_release_frees_what_the_pool_keeps(empty_pool):
    case, dtype = scratch_layers()[0]
    expected = fwd_bwd(case, dtype)
    kept = SCRATCH()[0]
    assert custom_conv.release_cpu_scratch() == kept > 0
    assert SCRATCH()[:2] == [0, 0]
    for x, y in zip(fwd_bwd(case, dtype), expected):  # and the next call allocates afresh
        assert torch.equal(x, y)
