"""Times our CUDA conv2d and max_pool2d kernels against torch's (cuDNN).

For the conv layers of LeNet-5 (MNIST 28x28, batch 64), VGG-16 (CIFAR 32x32,
batch 64) and ResNet-20 (CIFAR, batch 128), and for the max-pool layers of
the first two, in float32, float16 and bfloat16, it times:
  conv: forward, backward input, backward weight, forward + full backward
  pool: forward (with indices), backward
with CUDA events after a warm-up, and prints ours / torch per case and the
geometric means. Every kernel is first checked against torch on the same
inputs; the script aborts on a mismatch rather than time a wrong kernel.
TF32 is disabled for float32, since our kernels compute in full float32.

    python benchmarks/cuda_bench.py --out bench.json
    python benchmarks/cuda_bench.py --dtypes float32 --models lenet5
"""
import argparse
import json
import math
import platform
import statistics
import sys

import torch
import torch.nn.functional as F

# (name, C_in, C_out, H=W, kernel, stride, padding)
LENET5 = [("conv1", 1, 6, 28, 5, 1, 2), ("conv2", 6, 16, 14, 5, 1, 0)]
VGG16 = [("conv1_1", 3, 64, 32, 3, 1, 1), ("conv1_2", 64, 64, 32, 3, 1, 1),
         ("conv2_1", 64, 128, 16, 3, 1, 1), ("conv2_2", 128, 128, 16, 3, 1, 1),
         ("conv3_1", 128, 256, 8, 3, 1, 1), ("conv3_x", 256, 256, 8, 3, 1, 1),
         ("conv4_1", 256, 512, 4, 3, 1, 1), ("conv4_x", 512, 512, 4, 3, 1, 1),
         ("conv5_x", 512, 512, 2, 3, 1, 1)]
RESNET20 = [("stem", 3, 16, 32, 3, 1, 1), ("stage1", 16, 16, 32, 3, 1, 1),
            ("stage2_down", 16, 32, 32, 3, 2, 1), ("stage2_short", 16, 32, 32, 1, 2, 0),
            ("stage2", 32, 32, 16, 3, 1, 1), ("stage3_down", 32, 64, 16, 3, 2, 1),
            ("stage3_short", 32, 64, 16, 1, 2, 0), ("stage3", 64, 64, 8, 3, 1, 1)]
# (name, C, H=W, kernel, stride)
LENET5_POOL = [("pool1", 6, 28, 2, 2), ("pool2", 16, 10, 2, 2)]
VGG16_POOL = [("pool1", 64, 32, 2, 2), ("pool2", 128, 16, 2, 2), ("pool3", 256, 8, 2, 2),
              ("pool4", 512, 4, 2, 2), ("pool5", 512, 2, 2, 2)]

MODELS = {
    "lenet5": dict(batch=64, convs=LENET5, pools=LENET5_POOL),
    "vgg16": dict(batch=64, convs=VGG16, pools=VGG16_POOL),
    "resnet20": dict(batch=128, convs=RESNET20, pools=[]),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Largest error allowed, relative to the largest magnitude of torch's result.
# float32: both sides sum the same products in different orders. Half and
# bfloat16: results are rounded to 11 and 8 significant bits.
CHECK_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


class Mismatch(RuntimeError):
    pass


def check(what, ours, ref, dtype):
    if ours.shape != ref.shape or ours.dtype != ref.dtype:
        raise Mismatch(f"{what}: got {tuple(ours.shape)} {ours.dtype}, "
                       f"torch gives {tuple(ref.shape)} {ref.dtype}")
    err = (ours.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    scale = max(ref.double().abs().max().item() if ref.numel() else 0.0, 1e-30)
    if not err <= CHECK_TOL[dtype] * scale:
        raise Mismatch(f"{what}: max error {err:.3g} exceeds {CHECK_TOL[dtype]:g} x {scale:.3g}")


def time_ms(fn, warmup, iters, repeats=5):
    """Median over `repeats` of the mean time of `iters` back-to-back calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples)


def conv_cases(model, batch, layer, dtype):
    name, cin, cout, size, k, stride, pad = layer
    ops = torch.ops.custom_conv
    x = torch.randn(batch, cin, size, size, device="cuda", dtype=dtype)
    w = torch.randn(cout, cin, k, k, device="cuda", dtype=dtype) / math.sqrt(cin * k * k)
    b = torch.randn(cout, device="cuda", dtype=dtype)
    geo = ((stride, stride), (pad, pad), (1, 1), 1)
    y_ref = F.conv2d(x, w, b, stride, pad)
    go = torch.randn_like(y_ref)

    def aten_backward(mask):
        return torch.ops.aten.convolution_backward(go, x, w, [cout], [stride] * 2, [pad] * 2, [1, 1],
                                                   False, [0, 0], 1, mask)

    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))

    def ours_train():
        ops.conv2d_forward(xr, wr, br, *geo).backward(go)

    def torch_train():
        F.conv2d(xr, wr, br, stride, pad).backward(go)

    cases = [
        ("fwd", lambda: ops.conv2d_forward(x, w, b, *geo), lambda: F.conv2d(x, w, b, stride, pad)),
        ("bwd_input", lambda: ops.conv2d_backward_input(go, w, list(x.shape), *geo),
         lambda: aten_backward([True, False, False])[0]),
        ("bwd_weight", lambda: ops.conv2d_backward_weight(go, x, list(w.shape), *geo),
         lambda: aten_backward([False, True, False])[1]),
        ("bwd_bias", lambda: ops.conv2d_backward_bias(go), lambda: aten_backward([False, False, True])[2]),
    ]
    for op, ours, ref in cases:
        check(f"{model}/{name} {op} {dtype}", ours(), ref(), dtype)
    shape = f"N{batch} {cin}->{cout} {size}x{size} k{k} s{stride} p{pad}"
    # bwd_bias is checked above but only timed as part of fwd+bwd.
    timed = [c for c in cases if c[0] != "bwd_bias"] + [("fwd+bwd", ours_train, torch_train)]
    return name, shape, timed


def pool_cases(model, batch, layer, dtype):
    name, c, size, k, s = layer
    ops = torch.ops.custom_conv
    x = torch.randn(batch, c, size, size, device="cuda", dtype=dtype)
    geo = ((k, k), (s, s), (0, 0), (1, 1), False)
    y_ref, idx_ref = F.max_pool2d(x, k, s, return_indices=True)
    go = torch.randn_like(y_ref)
    y, idx = ops.max_pool2d_forward(x, *geo)
    check(f"{model}/{name} pool fwd {dtype}", y, y_ref, dtype)
    if not torch.equal(idx, idx_ref):
        raise Mismatch(f"{model}/{name} pool fwd {dtype}: indices differ from torch's")
    cases = [
        ("pool_fwd", lambda: ops.max_pool2d_forward(x, *geo), lambda: F.max_pool2d(x, k, s, return_indices=True)),
        ("pool_bwd", lambda: ops.max_pool2d_backward(go, idx, list(x.shape)),
         lambda: torch.ops.aten.max_pool2d_with_indices_backward(go, x, [k, k], [s, s], [0, 0], [1, 1],
                                                                  False, idx_ref)),
    ]
    check(f"{model}/{name} pool bwd {dtype}", cases[1][1](), cases[1][2](), dtype)
    return name, f"N{batch} C{c} {size}x{size} k{k} s{s}", cases


def geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("cuda_bench: no CUDA GPU available; nothing to benchmark.")
        return 0
    import custom_conv  # noqa: F401  (registers the ops)
    if not torch._C._dispatch_has_kernel_for_dispatch_key("custom_conv::conv2d_forward", "CUDA"):
        print("cuda_bench: custom_conv was built without its CUDA kernels; rebuild on a GPU machine "
              "(or with FORCE_CUDA=1).")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    rows = []
    print(f"{'model':9} {'layer':13} {'op':10} {'dtype':8} {'ours ms':>9} {'torch ms':>9} {'ratio':>7}  shape")
    try:
        for model in args.models:
            spec = MODELS[model]
            for dtype_name in args.dtypes:
                dtype = DTYPES[dtype_name]
                groups = [conv_cases(model, spec["batch"], layer, dtype) for layer in spec["convs"]]
                groups += [pool_cases(model, spec["batch"], layer, dtype) for layer in spec["pools"]]
                for name, shape, cases in groups:
                    for op, ours, ref in cases:
                        ours_ms = time_ms(ours, args.warmup, args.iters)
                        torch_ms = time_ms(ref, args.warmup, args.iters)
                        row = dict(model=model, layer=name, op=op, dtype=dtype_name, shape=shape,
                                   ours_ms=ours_ms, torch_ms=torch_ms, ratio=ours_ms / torch_ms)
                        rows.append(row)
                        print(f"{model:9} {name:13} {op:10} {dtype_name:8} {ours_ms:9.4f} {torch_ms:9.4f} "
                              f"{row['ratio']:7.2f}  {shape}", flush=True)
    except Mismatch as error:
        print(f"cuda_bench: ABORTED, our kernel disagrees with torch: {error}", file=sys.stderr)
        return 2

    summary = {}
    print("\ngeometric mean of ours / torch (lower is better, 1.0 = as fast as cuDNN):")
    for key in sorted({(r["dtype"], r["op"]) for r in rows}):
        g = geomean([r["ratio"] for r in rows if (r["dtype"], r["op"]) == key])
        summary[f"{key[0]}/{key[1]}"] = g
        print(f"  {key[0]:8} {key[1]:10} {g:7.2f}")
    for dtype_name in args.dtypes:
        g = geomean([r["ratio"] for r in rows if r["dtype"] == dtype_name])
        summary[f"{dtype_name}/all"] = g
        print(f"  {dtype_name:8} {'all':10} {g:7.2f}")
    summary["all"] = geomean([r["ratio"] for r in rows])
    print(f"  {'all':19} {summary['all']:7.2f}")

    if args.out:
        result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                      python=platform.python_version(), warmup=args.warmup, iters=args.iters,
                      tf32=False, results=rows, geomean=summary)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
