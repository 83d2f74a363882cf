"""Times custom_conv against torch.nn.functional, in the same process.

    .venv/bin/python benchmarks/bench.py                 # the GPU if there is one, else the CPU
    .venv/bin/python benchmarks/bench.py --device cuda --dtype float32 float16 bfloat16
    .venv/bin/python benchmarks/bench.py --quick         # a few shapes, for a smoke run
    .venv/bin/python benchmarks/bench.py --batch 32      # one batch size, everything timed at it

On the GPU torch's side is cuDNN, with TF32 off so that float32 means float32
on both sides; torch.utils.benchmark synchronises the device around timings.
Both sides run on torch.get_num_threads() threads (recorded as "threads").

Batch sizes (--batches, default 1,32,128): inference latency, training at a
typical batch, training throughput. At the main one (32, else the middle one given; --batch N: N alone, with
everything) it times, for every conv layer shape, forward, backward-input,
backward-weight and forward+backward (autograd, with the bias gradient) for
both implementations; for max-pool, forward and forward+backward; and a whole
training step (forward, loss, backward, SGD step) of LeNet-5, ResNet-20 and
VGG-16-BN (CIFAR-shaped input) built from each backend, on the CPU also on
one thread. At a smaller batch it
times the conv forward alone (inference latency), at a larger one conv
forward+backward (training throughput), there without ResNet-18's 224x224
stem (printed and stored as "skipped"). Each case is first checked against
torch's result in float64 on the same (rounded) inputs; if ours is off, the
run aborts instead of timing a wrong kernel. Prints a table per batch of
times, GFLOP/s, the ratio ours/torch (below 1 is faster), both sides' errors
and the algorithm our chooser ran for each pass (custom_conv.explain_conv2d),
the geometric means per batch and mode (and per network at the main batch),
and writes everything, with machine, threads, torch version and date, as
JSON.

GFLOP/s counts a direct convolution's work, 2 * outputs * C_in/groups * k * k
per pass, on both sides. Our Winograd F(2x2, 3x3) does 2.25x fewer
multiply-adds, so where a pass ran it that overstates the arithmetic done
(the share of the peak can pass 100%); such rows also get the rate of what it
did ("ours_true_gflops", column "wino GF/s"): 16 multiply-adds per 2x2 tile
of the pass's result plane (the input plane for the input gradient) per input
and output channel pair, transforms not counted, plus the direct work of the
mode's other passes.

On the CPU in float32 it first measures the machine's peak (fused
multiply-adds on every thread, custom_conv::cpu_fma_peak_gflops) and reports
each layer's GFLOP/s, ours and torch's, as a share of it; again at the end,
as a shared or virtual machine's speed drifts. benchmarks/chart.py draws a result against it.
With it, before and after the layers, how dear it is for one thread to take
over data another thread's core holds ("core_to_core", core_to_core_probe):
on a shared 2-vCPU virtual machine that ratio has read ~1.6 most of the
time and ~8 for minutes at a time (the two vCPUs' cores then apparently on
different L3 slices), and in those minutes routes that pass data between
threads (the Winograd products split by position, im2col's column matrix)
ran up to 2x slower while oneDNN's direct kernels barely moved
(benchmarks/README.md has the figures).
There it also measures, for every conv shape at the main batch and every
pass, the float32 error of each algorithm the chooser can reach (switching
off the one it took with custom_conv.disabled_algorithms until it reaches
im2col) and torch's, against torch in float64 on the same inputs: a table,
each algorithm's worst ratio to torch's error, and "algorithm_errors" in the
JSON.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils import benchmark

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import custom_conv  # noqa: E402
from custom_conv import functional as CF  # noqa: E402
from custom_conv.explain import ALGORITHMS, PASSES  # noqa: E402
from gemm import cpu_description, gemm_rows  # noqa: E402
from shapes import CONV_SHAPES, FAMILY_SHAPES, POOL_SHAPES  # noqa: E402

ops = torch.ops.custom_conv

MODES = ("forward", "backward-input", "backward-weight", "forward+backward")
# The chooser's passes (custom_conv.explain_conv2d) that each timed mode runs.
MODE_PASSES = {"forward": ("forward",), "backward-input": ("backward_input",),
               "backward-weight": ("backward_weight",), "forward+backward": PASSES}
# Off the main batch, only what that batch is for: below it the forward alone
# (inference latency), above it forward+backward (training throughput).
SMALL_BATCH_MODES = ("forward",)
LARGE_BATCH_MODES = ("forward+backward",)
# Not timed above the main batch: ResNet-18's 224x224 stem is 90 GFLOP per
# forward+backward at batch 128, run several times on each side plus the
# float64 check, minutes on a small CPU for a shape the main batch covers.
LARGE_BATCH_SKIP = ("resnet18 stem",)


def measure(fn, min_run_time):
    """Seconds per call: the fastest of the timed blocks. On a shared (virtual)
    machine other work only ever adds time, so the minimum is the most
    repeatable estimate; the median can move by 2x between runs."""
    fn()  # warm-up (and, on the GPU, lazy initialisation)
    # Timer runs on one thread unless told otherwise; the peak and a user's
    # model run on all of them.
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return min(timer.blocked_autorange(min_run_time=min_run_time).times)


def core_to_core_probe(values=1 << 18, repeats=200):
    """Microseconds to copy a 1 MiB buffer on two threads, then again into
    a second buffer (same: each thread reads back the half it wrote; cross:
    reversed, so each reads the half the other thread's core just wrote),
    and their ratio. Needs at least two threads; None otherwise."""
    if torch.get_num_threads() < 2:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        src, x, y = torch.randn(values), torch.empty(values), torch.empty(values)

        def time_it(second_copy):
            x.copy_(src)
            second_copy()
            start = time.perf_counter()
            for _ in range(repeats):
                x.copy_(src)
                second_copy()
            return (time.perf_counter() - start) / repeats * 1e6

        same = time_it(lambda: y.copy_(x))
        cross = time_it(lambda: y.copy_(x.flip(0)))
        return dict(same_us=same, cross_us=cross, ratio=cross / same)
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def single_thread(active):
    """Runs the block on one thread (both sides: torch's and our kernels
    follow torch.get_num_threads()) when `active`."""
    threads = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def measure_pair(ours, theirs, min_run_time, rounds=3):
    """Both sides' times, measured in alternation (ours, torch, ours, ...),
    each the minimum over its rounds: a shared machine's speed drifts over
    seconds, and timing one side after the other would let that drift into
    the ratio."""
    t_ours, t_torch = float("inf"), float("inf")
    for _ in range(rounds):
        t_ours = min(t_ours, measure(ours, min_run_time / rounds))
        t_torch = min(t_torch, measure(theirs, min_run_time / rounds))
    return t_ours, t_torch


def relative_error(result, reference):
    """Largest difference relative to the largest reference value: reductions
    here run over up to 10^5 terms, so element-wise relative tolerances would
    flag the rounding of near-zero sums."""
    result = result if isinstance(result, (tuple, list)) else (result,)
    reference = reference if isinstance(reference, (tuple, list)) else (reference,)
    error = 0.0
    for a, b in zip(result, reference):
        if a is None or b is None or not b.numel():
            continue
        a, b = a.double(), b.double()
        error = max(error, ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
    return error


def check(name, ours, theirs, reference, tol):
    """Both sides' errors against torch in float64 on the same (rounded)
    inputs. Ours must be within tol, or the case is not timed; torch's is
    only reported: cuDNN may pick FFT or Winograd algorithms whose float32
    error is well above plain summation's."""
    exact = reference()
    ours_error, torch_error = relative_error(ours(), exact), relative_error(theirs(), exact)
    if not ours_error <= tol:
        raise SystemExit(f"{name}: our result differs from the float64 reference by {ours_error:.3g} of its "
                         f"largest value (torch's by {torch_error:.3g}); not timing a wrong kernel")
    return ours_error, torch_error


def conv_cases(shape, batch, device, dtype):
    """mode: (ours, torch's, FLOPs, torch's in float64 on the same values)."""
    name, cin, cout, h, w, k, s, p, groups = shape
    x = torch.randn(batch, cin, h, w, device=device, dtype=dtype)
    weight = torch.randn(cout, cin // groups, k, k, device=device, dtype=dtype) / math.sqrt(cin // groups * k * k)
    bias = torch.randn(cout, device=device, dtype=dtype)
    gy = torch.randn_like(F.conv2d(x, weight, bias, s, p, 1, groups))
    flops = 2 * gy.numel() * (cin // groups) * k * k  # one multiply-add per tap per output

    def callables(x, weight, bias, gy):
        args = ([s, s], [p, p], [1, 1], groups)

        def aten_backward(mask):
            return lambda: torch.ops.aten.convolution_backward(
                gy, x, weight, [cout], [s, s], [p, p], [1, 1], False, [0, 0], groups, mask)

        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]

        def train(conv):
            def run():
                out = conv(*leaves, s, p, 1, groups)
                return torch.autograd.grad(out, leaves, gy)
            return run

        return {
            "forward": (lambda: ops.conv2d_forward(x, weight, bias, *args),
                        lambda: F.conv2d(x, weight, bias, s, p, 1, groups)),
            "backward-input": (lambda: ops.conv2d_backward_input(gy, weight, x.shape, *args),
                               lambda: aten_backward([True, False, False])()[0]),
            "backward-weight": (lambda: ops.conv2d_backward_weight(gy, x, weight.shape, *args),
                                lambda: aten_backward([False, True, False])()[1]),
            "forward+backward": (train(CF.conv2d), train(F.conv2d)),
        }

    timed = callables(x, weight, bias, gy)
    exact = callables(*(t.double() for t in (x, weight, bias, gy)))
    work = {"forward": flops, "backward-input": flops, "backward-weight": flops, "forward+backward": 3 * flops}
    return {mode: (ours, theirs, work[mode], exact[mode][1]) for mode, (ours, theirs) in timed.items()}


def conv_algorithms(shape, batch, device, dtype):
    """Pass -> the algorithm our chooser takes for it, under whatever
    custom_conv.disabled_algorithms block is open. It looks at shapes only,
    so empty tensors do."""
    name, cin, cout, h, w, k, s, p, groups = shape
    x = torch.empty(batch, cin, h, w, device=device, dtype=dtype)
    weight = torch.empty(cout, cin // groups, k, k, device=device, dtype=dtype)
    return {pass_: choice.algorithm
            for pass_, choice in custom_conv.explain_conv2d(x, weight, None, s, p, 1, groups).items()}


def winograd_flops(shape, batch):
    """Pass -> FLOPs of the products our Winograd F(2x2, 3x3) runs for it: 16
    multiply-adds per 2x2 tile of the result plane per (C_in, C_out) pair. The
    input gradient runs as a forward of the output gradient, so its tiles
    cover the input plane; the weight gradient's cover the output plane."""
    name, cin, cout, h, w, k, s, p, groups = shape
    out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def products(plane_h, plane_w):
        return 2 * 16 * math.ceil(plane_h / 2) * math.ceil(plane_w / 2) * batch * cin * cout

    return {"forward": products(out_h, out_w), "backward_input": products(h, w),
            "backward_weight": products(out_h, out_w)}


def algorithm_errors(shape, batch, device, dtype):
    """For every pass of the layer, the error of each algorithm our chooser
    can reach and torch's, against torch in float64 on the same inputs. The
    chooser's order is fixed, so switching off the algorithm it just took,
    until it falls back to im2col, visits each reachable one once."""
    cases = conv_cases(shape, batch, device, dtype)
    entries = []
    for mode in ("forward", "backward-input", "backward-weight"):
        (pass_,) = MODE_PASSES[mode]
        ours, theirs, _, reference = cases[mode]
        exact = reference()
        torch_error = relative_error(theirs(), exact)
        disabled = []
        while True:
            with custom_conv.disabled_algorithms(*disabled):
                algorithm = conv_algorithms(shape, batch, device, dtype)[pass_]
                error = relative_error(ours(), exact)
            entries.append({"layer": shape[0], "pass": pass_, "algorithm": algorithm, "error": error,
                            "torch_error": torch_error,
                            "ratio_to_torch": error / torch_error if torch_error else None})
            if algorithm == "im2col":
                break
            disabled.append(algorithm)
    return entries


def pool_cases(shape, batch, device, dtype):
    name, c, h, w, k, s, p = shape
    x = torch.randn(batch, c, h, w, device=device, dtype=dtype)
    gy = torch.randn_like(F.max_pool2d(x, k, s, p))

    def callables(x, gy):
        leaf = x.clone().requires_grad_()

        def train(pool):
            return lambda: torch.autograd.grad(pool(leaf, k, s, p), leaf, gy)

        return {
            "forward": (lambda: CF.max_pool2d(x, k, s, p), lambda: F.max_pool2d(x, k, s, p)),
            "forward+backward": (train(CF.max_pool2d), train(F.max_pool2d)),
        }

    timed, exact = callables(x, gy), callables(x.double(), gy.double())
    return {mode: (ours, theirs, None, exact[mode][1]) for mode, (ours, theirs) in timed.items()}


def family_cases(shape, batch, device, dtype):
    """A layer of FAMILY_SHAPES: forward, and forward+backward (every
    gradient), against torch.nn.functional's function of the same name."""
    name, function, input_shape, weight_shape, kwargs = shape
    ours_f, torch_f = getattr(CF, function), getattr(F, function)
    x = torch.randn(batch, *input_shape, device=device, dtype=dtype)
    w = torch.randn(weight_shape, device=device, dtype=dtype) if weight_shape else None
    gy = torch.randn_like(torch_f(*([x] if w is None else [x, w]), **kwargs))

    def callables(tensors, gy):
        leaves = [t.clone().requires_grad_() for t in tensors]

        def train(f):
            return lambda: torch.autograd.grad(f(*leaves, **kwargs), leaves, gy)

        return {
            "forward": (lambda: ours_f(*tensors, **kwargs), lambda: torch_f(*tensors, **kwargs)),
            "forward+backward": (train(ours_f), train(torch_f)),
        }

    tensors = [x] if w is None else [x, w]
    timed, exact = callables(tensors, gy), callables([t.double() for t in tensors], gy.double())
    return {mode: (ours, theirs, None, exact[mode][1]) for mode, (ours, theirs) in timed.items()}


def training_step_cases(batch, device, dtype):
    try:
        from custom_conv import models
    except ImportError:
        return {}
    cases = {}
    for name, input_shape in (("lenet5", (1, 28, 28)), ("resnet20", (3, 32, 32)), ("vgg16_bn", (3, 32, 32))):
        x = torch.randn(batch, *input_shape, device=device, dtype=dtype)
        target = torch.randint(0, 10, (batch,), device=device)
        steps = []
        for backend in ("custom", "torch"):
            torch.manual_seed(0)
            model = models.get_model(name, in_channels=input_shape[0], num_classes=10, backend=backend)
            model = model.to(device=device, dtype=dtype).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def step(model=model, optimizer=optimizer, x=x, target=target):
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), target)
                loss.backward()
                optimizer.step()
                return loss.detach()
            steps.append(step)
        cases[f"{name} training step"] = {"step": (steps[0], steps[1], None, None)}
    return cases


def scratch_bytes(shape, batch, device, dtype):
    """Memory our forward allocates beyond its output (the im2col and GEMM
    buffers): what the profiler records of at::empty, and on the CPU the
    most the scratch pool (csrc/cpu/scratch.h) had in use at once."""
    fwd = conv_cases(shape, batch, device, dtype)["forward"][0]
    if device == "cpu":
        ops.cpu_scratch_stats()  # resets its peak
    with torch.profiler.profile(profile_memory=True) as prof:
        out = fwd()
    allocated = sum(e.cpu_memory_usage if device == "cpu" else e.device_memory_usage
                    for e in prof.events() if e.name == "aten::empty")
    pooled = ops.cpu_scratch_stats()[2] if device == "cpu" else 0
    return allocated + pooled - out.numel() * out.element_size()


def print_algorithm_errors(entries):
    """One line per layer and pass, a column per algorithm ("-" where the
    chooser cannot reach it), then each algorithm's worst ratio to torch."""
    print("\nfloat32 error per algorithm: max |result - float64 reference| / max |reference|")
    print(f"{'layer':<40} {'pass':<16}" + "".join(f" {name:>9}" for name in ALGORITHMS + ("torch",)))
    lines = {}
    for e in entries:
        lines.setdefault((e["layer"], e["pass"]), {"torch": e["torch_error"]})[e["algorithm"]] = e["error"]
    for (layer, pass_), errors in lines.items():
        print(f"{layer:<40} {pass_:<16}" + "".join(f" {errors[name]:9.1e}" if name in errors else f" {'-':>9}"
                                                  for name in ALGORITHMS + ("torch",)))
    print("worst error relative to torch's, per algorithm:")
    for name in ALGORITHMS:
        measured = [e for e in entries if e["algorithm"] == name and e["ratio_to_torch"] is not None]
        if measured:
            worst = max(measured, key=lambda e: e["ratio_to_torch"])
            print(f"  {name:<10} {worst['ratio_to_torch']:6.2f}  ({worst['layer']}, {worst['pass']}; "
                  f"{len(measured)} passes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", nargs="+", default=["float32"],
                        choices=["float32", "float64", "float16", "bfloat16"])
    batch_sizes = parser.add_mutually_exclusive_group()
    batch_sizes.add_argument("--batches", default="1,32,128",
                             help="comma-separated batch sizes: everything at the main one (32, else the middle "
                                  "one), the conv forward below it, conv forward+backward above it")
    batch_sizes.add_argument("--batch", type=int, help="only this batch size, everything timed at it")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="only a few shapes")
    parser.add_argument("--filter", default="", help="only shapes whose name contains this")
    parser.add_argument("--out", help="JSON file (default: results/benchmarks/<device>-<dtype>-<date>.json)")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.batches = [args.batch] if args.batch else sorted({int(b) for b in args.batches.split(",")})
    if min(args.batches) < 1:
        parser.error("batch sizes must be positive")
    args.main_batch = 32 if 32 in args.batches else args.batches[len(args.batches) // 2]

    for dtype in args.dtype:
        run(args, dtype)


def run(args, dtype_name):
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no GPU visible")
        # Compare against cuDNN's true float32 arithmetic, not TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    dtype = getattr(torch, dtype_name)
    main_batch = args.main_batch
    # The main batch first: it is what most targets are stated at, and a run
    # cut short still has it.
    batches = [main_batch] + [b for b in args.batches if b != main_batch]
    print(f"\n{args.device}, {dtype_name}, batches {', '.join(map(str, args.batches))} (main {main_batch}), "
          f"{torch.get_num_threads()} threads")
    # float32: weight gradients sum up to 4e5 products (ResNet-18's stem), whose
    # rounding grows like sqrt(terms) * 6e-8, about 4e-5 of the largest value.
    tol = {torch.float64: 1e-12, torch.float32: 1e-4}.get(dtype, 2e-2)

    conv_shapes = [s for s in CONV_SHAPES if args.filter in s[0]]
    pool_shapes = [s for s in POOL_SHAPES if args.filter in s[0]]
    family_shapes = [s for s in FAMILY_SHAPES if args.filter in s[0]]
    if args.quick:
        conv_shapes, pool_shapes = conv_shapes[:2] + conv_shapes[11:13], pool_shapes[:1]
        family_shapes = family_shapes[:1]

    def skipped_at(shape, batch):
        return batch > main_batch and shape[0].startswith(LARGE_BATCH_SKIP)

    skipped = [dict(layer=shape[0], batch=batch) for batch in batches for shape in conv_shapes
               if skipped_at(shape, batch)]

    def timed_groups(batch):
        """(kind, name, shape, cases) to time at this batch, built as they are
        timed: a shape's tensors and their float64 copies reach 1 GB at
        batch 128, too much to hold for every shape at once."""
        modes = MODES if batch == main_batch else SMALL_BATCH_MODES if batch < main_batch else LARGE_BATCH_MODES
        for shape in conv_shapes:
            if not skipped_at(shape, batch):
                cases = conv_cases(shape, batch, args.device, dtype)
                yield "conv", shape[0], shape, {mode: cases[mode] for mode in modes}
        if batch == main_batch:
            for shape in pool_shapes:
                yield "maxpool", shape[0], shape, pool_cases(shape, batch, args.device, dtype)
            for shape in family_shapes:
                yield "family", shape[0], shape, family_cases(shape, batch, args.device, dtype)
            if not args.filter:
                steps = training_step_cases(batch, args.device, dtype)
                for name, cases in steps.items():
                    yield "train", name, None, cases
                # One process per core is common too (DataLoader workers,
                # torchrun): the same steps on one thread.
                if args.device == "cpu" and torch.get_num_threads() > 1:
                    for name, cases in steps.items():
                        yield "train", f"{name}, 1 thread", None, cases

    rows = []
    peak = []
    core_to_core = []  # core_to_core_probe() before and after the layers (CPU)
    machine = (torch.cuda.get_device_name() if args.device == "cuda"
               else f"{cpu_description()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    date = datetime.date.today().isoformat()
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
                                   "benchmarks", f"{args.device}-{dtype_name}-{date}.json")
    if args.out and len(args.dtype) > 1:
        out = out.replace(".json", f"-{dtype_name}.json")

    def write(rows, complete, **totals):
        """The JSON file, rewritten after every timed group, so that a run cut
        short (a GPU lease, a time limit) still leaves what it measured, marked
        "complete": false and without the totals of the end."""
        result = dict(date=date, machine=machine, device=args.device, torch=torch.__version__, dtype=dtype_name,
                      threads=torch.get_num_threads(), batches=args.batches, batch=main_batch, skipped=skipped,
                      cpu_kernels=custom_conv.cpu_kernels(), peak_gflops=peak or None,
                      core_to_core=core_to_core or None, complete=complete,
                      rows=rows, **totals)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        if complete:
            print(f"\nwritten to {out}")

    if args.device == "cpu":
        print(f"custom_conv CPU kernels: {custom_conv.cpu_kernels()}")
        if dtype == torch.float32 and ops.cpu_fma_peak_gflops(0.01) > 0:
            peak.append(ops.cpu_fma_peak_gflops(1.0))
            print(f"float32 FMA peak on {torch.get_num_threads()} threads: {peak[0]:.1f} GFLOP/s")
        probe = core_to_core_probe()
        if probe:
            core_to_core.append(probe)
            print(f"core to core: {probe['same_us']:.0f} us a 1 MiB copy pair on one side, {probe['cross_us']:.0f} "
                  f"across ({probe['ratio']:.1f}x)")
    # Winograd, and so its own arithmetic rate, exists on the CPU in float32 only.
    winograd_column = args.device == "cpu" and dtype == torch.float32
    header = (f"{'layer':<40} {'pass':<17} {'ours ms':>9} {'torch ms':>9} {'GFLOP/s':>8}"
              + (f" {'wino GF/s':>9}" if winograd_column else "")
              + f" {'ratio':>6} {'ours err':>9} {'torch err':>9}"
              + (f" {'%peak':>6} {'torch':>6}" if peak else "") + "  algorithm")
    for batch in batches:
        what = ("every conv pass, max-pool, the rest of the family and training steps" if batch == main_batch
                else "conv forward (inference latency)" if batch < main_batch
                else "conv forward+backward (training throughput)")
        skips = [s["layer"] for s in skipped if s["batch"] == batch]
        print(f"\nbatch {batch}: {what}" + (f"; skipped: {', '.join(skips)}" if skips else ""))
        print(header)
        for kind, name, shape, cases in timed_groups(batch):
            chosen = conv_algorithms(shape, batch, args.device, dtype) if kind == "conv" else None
            for mode, (ours, theirs, flops, reference) in cases.items():
                errors = check(f"{name} {mode}", ours, theirs, reference, tol) if reference else (None, None)
                # A training step takes 5 ms-1 s on the CPU: give it enough
                # alternating rounds that one slow stretch of the machine cannot
                # decide the ratio. On a GPU a step takes milliseconds, and a
                # second holds hundreds of them.
                step_time = max(args.min_run_time, 3.0 if args.device == "cpu" else 1.0)
                with single_thread(name.endswith(", 1 thread")):
                    t_ours, t_torch = (measure_pair(ours, theirs, step_time, rounds=6)
                                       if kind == "train" else measure_pair(ours, theirs, args.min_run_time))
                gflops = flops / t_ours / 1e9 if flops else None
                torch_gflops = flops / t_torch / 1e9 if flops else None
                row = dict(kind=kind, layer=name, batch=batch, mode=mode, ours_s=t_ours, torch_s=t_torch,
                           ratio=t_ours / t_torch, ours_gflops=gflops, torch_gflops=torch_gflops,
                           ours_error=errors[0], torch_error=errors[1])
                if chosen:
                    passes = MODE_PASSES[mode]
                    row["algorithm"] = "/".join(chosen[p] for p in passes)
                    if any(chosen[p] == "winograd" for p in passes):
                        products = winograd_flops(shape, batch)
                        # flops is the direct work of the mode, the same for each of its passes.
                        work = sum(products[p] if chosen[p] == "winograd" else flops / len(passes) for p in passes)
                        row["ours_true_gflops"] = work / t_ours / 1e9
                rows.append(row)
                true_rate = (f" {row['ours_true_gflops']:9.1f}" if "ours_true_gflops" in row
                             else f" {'':9}" if winograd_column else "")
                shares = (f" {100 * gflops / peak[0]:6.1f} {100 * torch_gflops / peak[0]:6.1f}"
                          if peak and flops else "")
                print(f"{name:<40} {mode:<17} {t_ours * 1e3:9.3f} {t_torch * 1e3:9.3f} "
                      f"{(f'{gflops:8.1f}' if gflops else '       -')}{true_rate} {t_ours / t_torch:6.2f} "
                      + " ".join(f"{e:9.1e}" if e is not None else f"{'-':>9}" for e in errors) + shares
                      + f"  {row.get('algorithm', '')}", flush=True)
            write(rows, complete=False)

    def geomean(values):
        values = list(values)
        return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None

    summary = {}
    for batch in batches:
        for kind in ("conv", "maxpool", "family"):
            for mode in MODES:
                ratios = [r["ratio"] for r in rows if (r["kind"], r["mode"], r["batch"]) == (kind, mode, batch)]
                if ratios:
                    summary[f"{kind} {mode} (batch {batch})"] = dict(geomean=geomean(ratios), worst=max(ratios),
                                                                     count=len(ratios))
    for r in rows:
        if r["kind"] == "train":
            summary[r["layer"]] = dict(geomean=r["ratio"], worst=r["ratio"], count=1)
    print("\nratio ours/torch (below 1: ours faster)")
    # Per network too (the first word of the layer name), for targets stated
    # per model; at the main batch, where every network's layers are timed.
    main_rows = [r for r in rows if r["kind"] == "conv" and r["mode"] == "forward+backward"
                 and r["batch"] == main_batch]
    for family in sorted({r["layer"].split()[0].split(".")[0] for r in main_rows}):
        ratios = [r["ratio"] for r in main_rows if r["layer"].split()[0].split(".")[0] == family]
        summary[f"conv forward+backward {family}"] = dict(geomean=geomean(ratios), worst=max(ratios),
                                                          count=len(ratios))
    width = max(map(len, summary), default=0)
    for key, s in summary.items():
        print(f"  {key:<{width}} geometric mean {s['geomean']:.2f}   worst {s['worst']:.2f}   ({s['count']} shapes)")

    scratch = {}
    if conv_shapes:
        largest = max(conv_shapes, key=lambda s: s[1] * s[5] ** 2 * s[3] * s[4])
        for batch in (main_batch, 4 * main_batch):
            scratch[batch] = scratch_bytes(largest, batch, args.device, dtype)
        print(f"\nscratch memory of our forward on '{largest[0]}': "
              + ", ".join(f"batch {b}: {v / 2**20:.1f} MiB" for b, v in scratch.items()))

    if peak:
        peak.append(ops.cpu_fma_peak_gflops(1.0))
        print(f"\nfloat32 FMA peak: {peak[0]:.1f} GFLOP/s before the layers, {peak[1]:.1f} after")
    if core_to_core:
        core_to_core.append(core_to_core_probe())
        print(f"core to core: {core_to_core[0]['ratio']:.1f}x before the layers, {core_to_core[1]['ratio']:.1f}x after")

    # Our GEMM alone next to torch's matrix product (benchmarks/gemm.py), on
    # 1 thread and all of them.
    gemm = gemm_rows(dtype, min_run_time=args.min_run_time) if args.device == "cpu" and dtype in (
        torch.float32, torch.float64) and not args.filter else []

    algorithm_error_entries = []
    if args.device == "cpu" and dtype == torch.float32:
        for shape in conv_shapes:
            algorithm_error_entries += algorithm_errors(shape, main_batch, args.device, dtype)
        if algorithm_error_entries:
            print_algorithm_errors(algorithm_error_entries)

    write(rows, complete=True, summary=summary, scratch_bytes=scratch, gemm=gemm or None,
          algorithm_errors=algorithm_error_entries or None)


if __name__ == "__main__":
    main()
