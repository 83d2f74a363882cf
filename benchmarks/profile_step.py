"""Where a training step's time goes, ours against torch's.

bench.py says how much longer our training step takes than torch's; this
says why. It builds one model from each backend (custom_conv.models, the
same seed), runs a few training steps (forward, loss, backward, SGD step)
under torch.profiler, and prints for each:

- the step's wall time, and on a GPU the time its kernels kept the device
  busy and how many kernels it launched: a step much longer than its
  kernels is bound by the host (Python, the dispatcher, launches), one
  close to them by the kernels;
- the kernels that took the most device time, and the CPU ops that took the
  most time of their own.

    .venv/bin/python benchmarks/profile_step.py --device cuda --model resnet20 --dtype float32
    .venv/bin/python benchmarks/profile_step.py --model lenet5 --batch 8       # on the CPU: the ops only

TF32 is off on both sides unless --tf32, as in bench.py. --out writes the
numbers as JSON, with the device, torch version and date.
"""
import argparse
import datetime
import json
import time

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType

from custom_conv import models

# Each model's input (channels, height, width), as bench.py's training steps.
INPUTS = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32), "vgg16_bn": (3, 32, 32)}


def training_step(name, backend, batch, device, dtype):
    torch.manual_seed(0)
    shape = INPUTS[name]
    model = models.get_model(name, in_channels=shape[0], num_classes=10, backend=backend)
    model = model.to(device=device, dtype=dtype).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, *shape, device=device, dtype=dtype)
    target = torch.randint(0, 10, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
    return step


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def profile(step, device, steps, top):
    """The step's wall time, and what the profiler saw over `steps` steps, per step."""
    for _ in range(3):  # warm-up: allocator, cuDNN's and our plans
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    wall = (time.perf_counter() - start) / steps

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    cpu_ops = [e for e in events if e.device_type == DeviceType.CPU]
    return {
        "wall_us": wall * 1e6,
        "kernel_us": sum(e.self_device_time_total for e in kernels) / steps,
        "launches": sum(e.count for e in kernels) / steps,
        "top_kernels": [{"name": e.key, "us": e.self_device_time_total / steps, "count": e.count / steps}
                        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]],
        "top_cpu_ops": [{"name": e.key, "self_us": e.self_cpu_time_total / steps, "count": e.count / steps}
                        for e in sorted(cpu_ops, key=lambda e: -e.self_cpu_time_total)[:top]],
    }


def short(name, width=90):
    return name if len(name) <= width else name[:width - 3] + "..."


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="resnet20", choices=list(INPUTS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12, help="how many kernels and CPU ops to list")
    parser.add_argument("--tf32", action="store_true", help="let both sides use TF32 for float32")
    parser.add_argument("--out", help="write the numbers to this JSON file")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    dtype = getattr(torch, args.dtype)

    results = {}
    for backend in ("custom", "torch"):
        results[backend] = r = profile(training_step(args.model, backend, args.batch, args.device, dtype),
                                       args.device, args.steps, args.top)
        print(f"== {backend}: {args.model} training step, batch {args.batch}, {args.dtype}: "
              f"{r['wall_us']:.0f} us wall" + (f", {r['kernel_us']:.0f} us in {r['launches']:.0f} kernels"
                                                 if args.device == "cuda" else ""))
        if args.device == "cuda":
            print("   kernels by device time per step (us, launches):")
            for k in r["top_kernels"]:
                print(f"   {k['us']:9.1f} {k['count']:5.0f}  {short(k['name'])}")
        print("   CPU ops by their own time per step (us, calls):")
        for op in r["top_cpu_ops"]:
            print(f"   {op['self_us']:9.1f} {op['count']:5.0f}  {short(op['name'])}")
    ours, theirs = results["custom"], results["torch"]
    print(f"ours / torch: wall {ours['wall_us'] / theirs['wall_us']:.2f}" +
          (f", kernels {ours['kernel_us'] / max(theirs['kernel_us'], 1e-9):.2f}, "
           f"launches {ours['launches']:.0f} / {theirs['launches']:.0f}" if args.device == "cuda" else ""))
    if args.out:
        machine = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        with open(args.out, "w") as f:
            json.dump(dict(date=datetime.date.today().isoformat(), machine=machine, device=args.device,
                           torch=torch.__version__, model=args.model, dtype=args.dtype, batch=args.batch,
                           steps=args.steps, tf32=args.tf32, backends=results), f, indent=1)


if __name__ == "__main__":
    main()
