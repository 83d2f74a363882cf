"""Every CPU route our chooser could take, timed on every pass of the
benchmark's layers: the measurements the chooser's cost thresholds
(csrc/conv2d_algorithm.cpp) are derived from. Each route is forced in turn
(custom_conv.forced_algorithm) where it can run the pass; the fastest is
marked, next to the route the chooser takes today.

    .venv/bin/python benchmarks/route_sweep.py                # float32, batch 32
    .venv/bin/python benchmarks/route_sweep.py --batch 1 --dtype float64
    .venv/bin/python benchmarks/route_sweep.py --out results/benchmarks/route-sweep-cpu-float32.json
    .venv/bin/python benchmarks/route_sweep.py --shapes strided --batch 8   # strided layers' input gradients

With --device cuda, the GPU's kernels instead: im2col's products as the
implicit GEMM (each pass also gathering from NCHW tensors where it would take
channels-last copies, disabled_algorithms("channels_last_gather")) and
through a column matrix (disabled_algorithms("implicit_gemm")),
each against cuDNN's own pass (TF32 off, as bench.py), in float32, float16 or
bfloat16; "chosen" is then what runs by default. --channels-last gives every
tensor, ours and cuDNN's, channels-last memory (a network converted by
model.to(memory_format=torch.channels_last)).

    python3 benchmarks/route_sweep.py --device cuda --dtype float16
    python3 benchmarks/route_sweep.py --device cuda --dtype float16 --channels-last

A row per (layer, pass): milliseconds per route ("-" where the route cannot
run it), the fastest, the chooser's choice, and how much slower the choice is
than the fastest. Rerun it when a kernel changes, and move the thresholds to
where the measurements cross.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import sys

import torch
from torch.utils import benchmark

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import custom_conv  # noqa: E402
from gemm import cpu_description  # noqa: E402
from shapes import CONV_SHAPES, STRIDED_SHAPES  # noqa: E402

ops = torch.ops.custom_conv
PASSES = custom_conv.explain.PASSES


def seconds(fn, min_run_time):
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return min(timer.blocked_autorange(min_run_time=min_run_time).times)


def pass_callables(shape, batch, dtype, device="cpu", memory_format=torch.contiguous_format):
    name, cin, cout, h, w, k, s, p, groups = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, h, w, generator=g).to(device, dtype, memory_format=memory_format)
    weight = (torch.randn(cout, cin // groups, k, k, generator=g) / math.sqrt(cin // groups * k * k)).to(
        device, dtype, memory_format=memory_format)
    args = ([s, s], [p, p], [1, 1], groups)
    y = ops.conv2d_forward(x, weight, None, *args)
    gy = torch.randn(y.shape, generator=g).to(device, dtype, memory_format=memory_format)
    return x, weight, {
        "forward": lambda: ops.conv2d_forward(x, weight, None, *args),
        "backward_input": lambda: ops.conv2d_backward_input(gy, weight, list(x.shape), *args),
        "backward_weight": lambda: ops.conv2d_backward_weight(gy, x, list(weight.shape), *args),
    }


def torch_pass_callables(x, weight, shape):
    """torch's own passes (cuDNN on a GPU) on the same tensors."""
    s, p, groups = shape[6], shape[7], shape[8]
    y = torch.nn.functional.conv2d(x, weight, None, s, p, 1, groups)
    gy = torch.randn_like(y)

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(gy, x, weight, None, [s, s], [p, p], [1, 1], False,
                                                           [0, 0], groups, mask)
    return {"forward": lambda: torch.nn.functional.conv2d(x, weight, None, s, p, 1, groups),
            "backward_input": backward([True, False, False]),
            "backward_weight": backward([False, True, False])}


def cuda_sweep(shapes, batch, dtype, min_run_time, memory_format=torch.contiguous_format):
    """The GPU's routes for im2col's products, and cuDNN's, per pass;
    "nchw" is the implicit GEMM gathering from NCHW tensors where the chooser
    would gather from channels-last copies (disabled_algorithms(
    "channels_last_gather")), timed only there."""
    routes = {"implicit": contextlib.nullcontext,
              "nchw": lambda: custom_conv.disabled_algorithms("channels_last_gather"),
              "columns": lambda: custom_conv.disabled_algorithms("implicit_gemm"),
              "cudnn": contextlib.nullcontext}
    rows = []
    print(f"{'layer':<40} {'pass':<16}" + "".join(f" {r:>9}" for r in routes) + "   fastest    chosen  slower")
    for shape in shapes:
        x, weight, calls = pass_callables(shape, batch, dtype, "cuda", memory_format)
        theirs = torch_pass_callables(x, weight, shape)
        reasons = {pass_: choice.reason for pass_, choice in
                   custom_conv.explain_conv2d(x, weight, stride=shape[6], padding=shape[7], groups=shape[8]).items()}
        chosen = "implicit" if "implicit GEMM" in reasons["forward"] else "columns"
        for pass_ in PASSES:
            times = {}
            for route, context in routes.items():
                if route == "nchw" and "channels-last" not in reasons[pass_]:
                    continue
                with context():
                    times[route] = seconds(theirs[pass_] if route == "cudnn" else calls[pass_], min_run_time)
            ours = {r: t for r, t in times.items() if r != "cudnn"}
            fastest = min(ours, key=ours.get)
            row = dict(layer=shape[0], batch=batch, pass_=pass_, ms={r: t * 1e3 for r, t in times.items()},
                       fastest=fastest, chosen=chosen, chosen_over_fastest=times[chosen] / times[fastest],
                       chosen_over_cudnn=times[chosen] / times["cudnn"])
            rows.append(row)
            print(f"{shape[0]:<40} {pass_:<16}"
                  + "".join(f" {row['ms'][r]:9.3f}" if r in row["ms"] else f" {'-':>9}" for r in routes)
                  + f" {fastest:>9} {chosen:>9} {row['chosen_over_fastest']:6.2f}", flush=True)
    return rows


def sweep(shapes, batch, dtype, min_run_time, passes=PASSES):
    rows = []
    routes = custom_conv.explain.ALGORITHMS
    print(f"{'layer':<40} {'pass':<16}" + "".join(f" {r:>9}" for r in routes) + "   fastest    chosen  slower")
    for shape in shapes:
        x, weight, calls = pass_callables(shape, batch, dtype)
        kwargs = dict(stride=shape[6], padding=shape[7], groups=shape[8])
        chosen = {p: c.algorithm for p, c in custom_conv.explain_conv2d(x, weight, **kwargs).items()}
        for pass_ in passes:
            times = {}
            for route in routes:
                with custom_conv.forced_algorithm(route):
                    if custom_conv.explain_conv2d(x, weight, **kwargs)[pass_].algorithm != route:
                        continue
                    times[route] = seconds(calls[pass_], min_run_time)
            fastest = min(times, key=times.get)
            row = dict(layer=shape[0], batch=batch, pass_=pass_, ms={r: t * 1e3 for r, t in times.items()},
                       fastest=fastest, chosen=chosen[pass_], chosen_over_fastest=times[chosen[pass_]] / times[fastest])
            rows.append(row)
            print(f"{shape[0]:<40} {pass_:<16}"
                  + "".join(f" {row['ms'][r]:9.3f}" if r in row["ms"] else f" {'-':>9}" for r in routes)
                  + f" {fastest:>9} {chosen[pass_]:>9} {row['chosen_over_fastest']:6.2f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--filter", default="", help="only shapes whose name contains this")
    parser.add_argument("--shapes", default="bench", choices=["bench", "strided"],
                        help="bench.py's layers, every pass; or STRIDED_SHAPES, their input gradients (CPU)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--channels-last", action="store_true", help="(cuda) every tensor in channels-last memory")
    parser.add_argument("--out", help="JSON file for the rows")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    shapes = [s for s in (CONV_SHAPES if args.shapes == "bench" else STRIDED_SHAPES) if args.filter in s[0]]
    if args.device == "cuda":
        torch.backends.cudnn.allow_tf32 = False  # cuDNN's exact float32, as bench.py compares with
        torch.backends.cudnn.benchmark = True
        machine = torch.cuda.get_device_name()
        print(f"{machine}, {args.dtype}, batch {args.batch}" + (", channels-last" if args.channels_last else ""))
        rows = cuda_sweep(shapes, args.batch, dtype, args.min_run_time,
                          torch.channels_last if args.channels_last else torch.contiguous_format)
        ratios = [r["chosen_over_cudnn"] for r in rows]
        print(f"\nchosen / cuDNN, geometric mean over passes: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")
    else:
        if dtype not in (torch.float32, torch.float64):
            parser.error("the CPU routes run float32 and float64")
        machine = cpu_description()
        print(f"{machine}, {args.dtype}, batch {args.batch}, {torch.get_num_threads()} threads, "
              f"level {custom_conv.cpu_kernels()}")
        rows = sweep(shapes, args.batch, dtype, args.min_run_time,
                     PASSES if args.shapes == "bench" else ("backward_input",))
    slow = [r for r in rows if r["chosen_over_fastest"] > 1.1]
    print(f"\n{len(slow)} of {len(rows)} passes run a route more than 10% slower than the fastest")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(date=datetime.date.today().isoformat(), machine=machine, device=args.device,
                           threads=torch.get_num_threads(), torch=torch.__version__, dtype=args.dtype,
                           batch=args.batch, shapes=args.shapes, channels_last=args.channels_last,
                           cpu_kernels=custom_conv.cpu_kernels(), rows=rows),
                      f, indent=1)


if __name__ == "__main__":
    main()
