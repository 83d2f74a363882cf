"""Our CPU GEMM alone (csrc/cpu/gemm/) next to torch's matrix product (MKL
or OpenBLAS behind at::mm / at::bmm), in the same process: square products
and the shapes the convolution routes hand it, on 1 thread and on all of
them, as GFLOP/s and as a share of the FMA peak measured on as many threads.

    .venv/bin/python benchmarks/gemm.py                  # float32, a table
    .venv/bin/python benchmarks/gemm.py --dtype float64

benchmarks/bench.py runs the same (gemm_rows) on the CPU in float32 and stores
it in its JSON under "gemm".
"""
import argparse
import os
import platform
import sys

import torch
from torch.utils import benchmark

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import custom_conv  # noqa: E402,F401  (loads the ops)

ops = torch.ops.custom_conv

# (name, batch, m, n, k, b transposed): the products the routes run, at the
# sizes ResNet-18's and VGG-16's layers give them at batch 32.
SQUARES = [(f"square {n}", 1, n, n, n, False) for n in (256, 512, 1024, 2048)]
CONV_PRODUCTS = [
    ("im2col forward, 64 ch, K 576, 1024 columns", 1, 64, 1024, 576, False),
    ("im2col forward, 128 ch, K 1152, 512 columns", 1, 128, 512, 1152, False),
    ("im2col forward, VGG 512 @2: K 4608, 128 columns", 1, 512, 128, 4608, False),
    ("im2col input gradient, K 1152 rows, 128 ch", 1, 1152, 784, 128, False),
    ("im2col weight gradient, 128 x 1152 over 6272 (B^T)", 1, 128, 1152, 6272, True),
    ("winograd, 16 x 256 ch, 256 tiles", 16, 256, 256, 256, False),
    ("winograd channels-last, 16 x 512 tiles, 128 ch (B^T)", 16, 512, 128, 128, True),
    ("winograd weight gradient, 16 x 128 x 128 over 1024 tiles (B^T)", 16, 128, 128, 1024, True),
]


def cpu_description():
    """The CPU's model and family as /proc/cpuinfo names them (the speed of the
    same VM type changes with the CPU it lands on: record it with every
    figure), else what Python knows."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    return platform.processor() or platform.machine()


def operands(batch, m, n, k, b_transposed, dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(batch, m, k, generator=g, dtype=dtype)
    b = (torch.randn(batch, n, k, generator=g, dtype=dtype).transpose(1, 2) if b_transposed
         else torch.randn(batch, k, n, generator=g, dtype=dtype))
    return (a[0], b[0]) if batch == 1 else (a, b)


def seconds(fn, min_run_time):
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return min(timer.blocked_autorange(min_run_time=min_run_time).times)


def gemm_rows(dtype=torch.float32, thread_counts=None, min_run_time=0.3, print_table=True):
    """One row per product and thread count: both sides' GFLOP/s, their
    ratio, and each as a share of the float32 FMA peak on that many threads
    (float64's is half of it)."""
    thread_counts = thread_counts or sorted({1, torch.get_num_threads()})
    mr, nr, kc, nc, l1, l2 = ops.cpu_gemm_blocking(dtype)
    rows = []
    before = torch.get_num_threads()
    if print_table:
        print(f"\nGEMM on {cpu_description()}, {dtype}: micro-tile {mr}x{nr}, kc {kc}, nc {nc} "
              f"(L1 {l1 // 1024} KiB, L2 {l2 // 1024} KiB), level {custom_conv.cpu_kernels()}")
        print(f"{'product':<60} {'threads':>7} {'ours GF/s':>9} {'torch GF/s':>10} {'ratio':>6} "
              f"{'%peak':>6} {'torch':>6}")
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            peak = ops.cpu_fma_peak_gflops(0.5) / (2 if dtype == torch.float64 else 1)
            for name, batch, m, n, k, b_t in SQUARES + CONV_PRODUCTS:
                a, b = operands(batch, m, n, k, b_t, dtype)
                torch_mm = torch.bmm if batch > 1 else torch.mm
                ours_s, torch_s = float("inf"), float("inf")
                for _ in range(3):  # alternating, as bench.py does: the machine's speed drifts
                    ours_s = min(ours_s, seconds(lambda: ops.cpu_gemm(a, b), min_run_time / 3))
                    torch_s = min(torch_s, seconds(lambda: torch_mm(a, b), min_run_time / 3))
                flops = 2 * batch * m * n * k
                row = dict(product=name, batch=batch, m=m, n=n, k=k, b_transposed=b_t, threads=threads,
                           ours_gflops=flops / ours_s / 1e9, torch_gflops=flops / torch_s / 1e9,
                           ratio=ours_s / torch_s, peak_gflops=peak)
                row["ours_peak_share"] = row["ours_gflops"] / peak if peak else None
                row["torch_peak_share"] = row["torch_gflops"] / peak if peak else None
                rows.append(row)
                if print_table:
                    shares = (f" {100 * row['ours_peak_share']:6.1f} {100 * row['torch_peak_share']:6.1f}"
                              if peak else "")
                    print(f"{name:<60} {threads:>7} {row['ours_gflops']:9.1f} {row['torch_gflops']:10.1f} "
                          f"{row['ratio']:6.2f}{shares}", flush=True)
    finally:
        torch.set_num_threads(before)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    args = parser.parse_args()
    gemm_rows(getattr(torch, args.dtype), min_run_time=args.min_run_time)


if __name__ == "__main__":
    main()
