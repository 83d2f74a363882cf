"""The CPU ops called from many Python threads at once (a data loader's
workers, a server's requests) give the results of one thread alone, bit for
bit: no scratch buffer, cache or one-time choice is shared between calls
unsafely. The first calls of a process race too, in a fresh process, where
they are the ones that pick the instruction set and start the thread pools.

Run as a script, this file races the first calls of its own process."""
import subprocess
import sys
import threading
from pathlib import Path

import torch

import custom_conv
from cases import conv, pool
from custom_conv import functional as CF
from helpers import conv_tensors, forward_and_grads, pool_input

THREADS = 8
# One layer for each route (tests/test_algorithm_choice.py says why each
# takes it); with the im2col kernel set, the direct ones take im2col too.
CONVS = {
    "direct": conv((4, 8, 12, 12), (16, 8, 3, 3), padding=1),
    "direct, one sample: its tiles spread over threads": conv((1, 8, 16, 16), (16, 8, 3, 3), padding=1),
    "depthwise": conv((4, 8, 12, 12), (16, 1, 3, 3), padding=1, stride=2, groups=8),
    "im2col: 65 x 9 reduction steps": conv((4, 65, 8, 8), (16, 65, 3, 3), padding=1),
    "winograd (float32), channels-last": conv((4, 64, 12, 12), (64, 64, 3, 3), padding=1),
    "winograd (float32), wide planes": conv((2, 64, 24, 24), (64, 64, 3, 3), padding=1),
}
POOL = pool((4, 8, 13, 13), kernel_size=3, stride=2, padding=1, ceil_mode=True)
DTYPES = (torch.float32, torch.float64)


def workload():
    """Each conv2d of CONVS and the max_pool2d of POOL, forward and backward,
    in float32 and float64: the list of every output and gradient. Inputs and
    output gradients come from their own seeded generators (helpers), not
    from torch's global one, which the threads would share."""
    results = []
    for dtype in DTYPES:
        for case in CONVS.values():
            out, grads, _ = forward_and_grads(lambda x, w, b: CF.conv2d(x, w, b, **case.kwargs),
                                              conv_tensors(case, dtype))
            results += [out, *grads]
        out, grads, _ = forward_and_grads(lambda x: CF.max_pool2d(x, **POOL.kwargs), [pool_input(POOL, dtype)])
        results += [out, *grads]
    return results


def race(threads=THREADS):
    """Runs workload() on `threads` Python threads released together; their results."""
    start = threading.Barrier(threads)
    results, errors = [None] * threads, []

    def run(i):
        try:
            start.wait()
            results[i] = workload()
        except BaseException as error:  # noqa: B036  (reported by the caller)
            errors.append(error)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers), "a thread is stuck (deadlock?)"
    if errors:
        raise errors[0]
    return results


def differences(expected, results):
    """Which results of which threads differ from `expected` in any bit."""
    return [f"thread {i}, result {j} of {len(expected)}"
            for i, got in enumerate(results)
            for j, (e, g) in enumerate(zip(expected, got)) if not torch.equal(e, g)]


def test_the_workload_takes_every_route():
    chosen = set()
    for dtype in DTYPES:
        for case in CONVS.values():
            x, w, _ = conv_tensors(case, dtype)
            chosen |= {choice.algorithm for choice in custom_conv.explain_conv2d(x, w, **case.kwargs).values()}
    assert chosen == ({"winograd", "depthwise", "im2col"} if custom_conv.cpu_kernels() == "baseline"
                      else {"winograd", "direct", "depthwise", "im2col"})


def test_threads_racing_get_the_results_of_one_thread_bit_for_bit():
    expected = workload()
    for _ in range(3):
        assert differences(expected, race()) == []


def main():
    """The first calls of this process, from THREADS threads at once, then
    the same calls from this thread alone: exits 1 if any bit differs."""
    raced = race()
    mismatches = differences(workload(), raced)
    print("\n".join(mismatches) or f"{THREADS} racing threads: the results of one thread")
    sys.exit(1 if mismatches else 0)


def test_the_first_calls_of_a_process_racing_get_the_results_of_one_thread():
    # A fresh process: the racing calls are the first ones, which choose the
    # direct kernels (a function-local static, csrc/cpu/direct/select.cpp)
    # and start torch's OpenMP and BLAS thread pools.
    script = Path(__file__)
    result = subprocess.run([sys.executable, str(script)], cwd=script.parent.parent, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


if __name__ == "__main__":
    main()
