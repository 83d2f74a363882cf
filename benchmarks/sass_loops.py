"""What the GEMM kernels' inner loops cost in machine instructions, without a GPU.

Compiles conv2d's kernels for one dtype (csrc/cuda/conv2d_kernels_<dtype>.cu)
with nvcc for one architecture (ptxas -v for registers and spills), disassembles it with nvdisasm, and prints for each
instantiation of the GEMM kernels (gemm_tile_kernel on the CUDA cores,
gemm_mma_kernel on the tensor cores; "(set)" where a launch runs a
ProblemSet) and of the depthwise kernels
(--filter depthwise): the instructions of its main loop (the
largest loop that holds the multiply-adds), how many of them are the
multiply-adds (FFMA, DFMA; HMMA, one mma.sync), the shared- and
global-memory loads, and the registers and spills. A loop with fewer
instructions per multiply-add leaves more issue slots to the arithmetic: a
proxy for speed to compare kernel changes by, not a measurement of it
(latency, memory and occupancy are not in it). The loop holds every path
through a step; for the tensor-core kernels whose operands both copy their
chunks by cp.async, the column `step` counts the path nearly every step
takes, where they all do (copy_step), from the loop's head through its
closing branch.

    .venv/bin/python benchmarks/sass_loops.py                         # float32, sm_90
    .venv/bin/python benchmarks/sass_loops.py --dtype half --arch sm_80
    .venv/bin/python benchmarks/sass_loops.py --filter InputPatches   # the forward's kernels only
    .venv/bin/python benchmarks/sass_loops.py --source /tmp/old/csrc/cuda   # an older tree's

Needs nvcc (CUDA_HOME, or the one on the PATH), nvdisasm (the toolkit's, or
the nvidia-cuda-nvdisasm wheel of requirements.txt) and a minute or two.
"""
import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "csrc", "cuda")
DTYPES = {"float": "float", "double": "double", "half": "c10::Half", "bfloat16": "c10::BFloat16"}
TORCH_NAMES = {"float": "float32", "double": "float64", "half": "float16", "bfloat16": "bfloat16"}
MATH = ("FFMA", "DFMA", "HMMA")


def cuda_home():
    """CUDA_HOME, else the toolkit the nvcc on the PATH runs from (as the Makefile finds it)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    dry = subprocess.run(["nvcc", "-dryrun", "-E", "-x", "cu", "/dev/null"], capture_output=True, text=True)
    here = re.search(r"^#\$ _HERE_=(.*?)/bin/*$", dry.stderr, re.M)
    if not here:
        sys.exit("sass_loops.py: no CUDA toolkit found (set CUDA_HOME)")
    return here.group(1)


def nvdisasm(home):
    """The toolkit's nvdisasm, else one on the PATH, else the nvidia-cuda-nvdisasm wheel's."""
    candidates = [os.path.join(home, "bin", "nvdisasm"), shutil.which("nvdisasm") or ""]
    candidates += glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu*", "bin", "nvdisasm"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    sys.exit("sass_loops.py: no nvdisasm (pip install nvidia-cuda-nvdisasm, or a CUDA toolkit that has it)")


def source_of(folder, dtype):
    """The file of `folder` (a csrc/cuda) that compiles conv2d's kernels for `dtype`: its own translation
    unit, or, in an older tree that has none, conv2d.cu, which compiled every dtype's."""
    own = os.path.join(folder, f"conv2d_kernels_{TORCH_NAMES[dtype]}.cu")
    return own if os.path.exists(own) else os.path.join(folder, "conv2d.cu")


def compile_kernels(arch, workdir, source):
    """(SASS text, ptxas's report) of the CUDA file `source` for `arch` (e.g. sm_90)."""
    home = cuda_home()
    flags = ["-O3", "-std=c++20", "-DCUSTOM_CONV_WITH_CUDA", "--expt-relaxed-constexpr",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             *(f"-I{p}" for p in [*cpp_extension.include_paths(), os.path.join(home, "include"),
                                  sysconfig.get_paths()["include"]])]
    cubin = os.path.join(workdir, "conv2d.cubin")
    built = subprocess.run([os.path.join(home, "bin", "nvcc"), *flags, f"-arch={arch}", "-cubin", "-Xptxas", "-v",
                            source, "-o", cubin], capture_output=True, text=True)
    if built.returncode:
        sys.exit(f"sass_loops.py: nvcc failed:\n{built.stderr}")
    report = built.stderr
    sass = subprocess.run([nvdisasm(home), "-c", cubin], check=True, capture_output=True, text=True).stdout
    return sass, report


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return dict(zip(names, out))


def short(name):
    """The kernel, its problem's operands and output, and its tile, from a demangled name."""
    name = name.replace("custom_conv::gpu::", "").replace("c10::", "").split("(", 1)[0]  # no parameter list
    kernel = name.split("<", 1)[0].replace("void ", "")
    operands = re.findall(r"(MatrixOperand<[^>]*>|InputPatches<[^>]*>|ChannelsLastOutputGradPatches|"
                          r"(?<!ChannelsLast)OutputGradPatches|OutputGradRows|ChannelsLastPatches<[^>]*>|"
                          r"MatrixOutput<[^>]*>|PlaneOutput|PhaseOutput)", name)
    tile = re.search(r"(?:CoreTile|MmaShape)<(\d+), (\d+)(?:, (\d+), (\d+))?>", name)
    shape = f"tile {tile.group(1)}x{tile.group(2)}" if tile else ""
    if "ProblemSet<" in name:  # several problems a launch, each block picking its own
        kernel += " (set)"
    taps = re.search(r"kernel<[^,<>]+, (\d+)(?:, (\d+))?>", name)  # a depthwise kernel's size (0: any)
    if taps and kernel in ("depthwise_forward_tile_kernel", "depthwise_backward_input_tile_kernel"):
        # <scalar_t, side, columns a thread>
        side = "any size" if taps.group(1) == "0" else f"{taps.group(1)}x{taps.group(1)}"
        shape = f"{side}, {taps.group(2)} a thread"
    elif taps:
        shape = "any size" if taps.group(1) == "0" else f"{taps.group(1)}x{taps.group(2) or taps.group(1)}"
    if tile and tile.group(3):
        shape += f" ({tile.group(3)}x{tile.group(4)} warps)"
    return " ".join([kernel, *operands] + ([shape] if shape else []))


def parse(body):
    """The instructions of a function's SASS, as (guard predicate or "", opcode, operands), and its labels."""
    instructions, labels = [], {}
    for line in body.split("\n"):
        label = re.match(r"^(\.L_x_\d+):", line.strip())
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        ins = re.match(r"^\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*)", line)
        if ins:
            instructions.append((ins.group(1) or "", ins.group(2), ins.group(3)))
    return instructions, labels


def branch_target(instruction, labels):
    target = re.search(r"`\((\.L_x_\d+)\)", instruction[2])
    return labels.get(target.group(1)) if instruction[1].startswith("BRA") and target else None


def loop_range(instructions, labels):
    """(first, last) of the largest loop (a backward branch's range) that holds a multiply-add, or None."""
    best = None
    for i, instruction in enumerate(instructions):
        head = branch_target(instruction, labels)
        if head is not None and head <= i and any(op.startswith(MATH) for _, op, _ in instructions[head:i + 1]):
            if best is None or i - head > best[1] - best[0]:
                best = (head, i)
    return best


def main_loop(body):
    """Opcode counts of the main loop."""
    instructions, labels = parse(body)
    found = loop_range(instructions, labels)
    if found is None:
        return collections.Counter()
    return collections.Counter(op for _, op, _ in instructions[found[0]:found[1] + 1] if op != "NOP")


def copy_step(body):
    """Instructions of one pass through the main loop, from its head through its closing branch, along the
    shortest path that starts the most cp.async copies (LDGSTS) and loads nothing into registers (LDG) or stores
    to shared memory (STS): a tensor-core step in which every chunk goes by cp.async, whatever the kernel does
    before its products and after them. The loop body less its closing branch is acyclic, so this is a pass over
    it in order, keeping per instruction the fewest instructions before it for each count of copies. None where
    no such path starts a copy."""
    instructions, labels = parse(body)
    found = loop_range(instructions, labels)
    if found is None:
        return None
    first, last = found
    reach = {first: {0: 0}}  # instruction -> {copies started: fewest instructions issued before it}
    for i in range(first, last + 1):
        states = reach.pop(i, None)
        guard, op, operands = instructions[i]
        if not states or op.startswith("STS") or (op.startswith("LDG") and not op.startswith(("LDGSTS", "LDGDEPBAR"))):
            continue
        issued = {copies + op.startswith("LDGSTS"): n + (op != "NOP") for copies, n in states.items()}
        if i == last:
            most = max(issued)
            return issued[most] if most > 0 else None
        target = branch_target(instructions[i], labels)
        conditional = bool(guard) or re.match(r"\s*!?U?P\d", operands)
        ends = (target is not None and not conditional) or (op == "EXIT" and not guard)
        following = [] if ends else [i + 1]
        if target is not None and i < target <= last:
            following.append(target)
        for j in following:
            best = reach.setdefault(j, {})
            for copies, n in issued.items():
                best[copies] = min(best.get(copies, n), n)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float")
    parser.add_argument("--filter", default="", help="only kernels whose short name matches this regex")
    parser.add_argument("--source", default=SOURCE, help="the csrc/cuda folder whose kernels to compile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        sass, report = compile_kernels(args.arch, workdir, source_of(args.source, args.dtype))
    bodies = {m.group(1): m.group(2) for m in
              re.finditer(r"^\s*\.type\s+(\w+),@function\n(.*?)(?=^//-----|\Z)", sass, re.S | re.M)}
    names = demangle(list(bodies))
    resources = {m.group(1): (int(m.group(3)), int(m.group(2)))
                 for m in re.finditer(r"Function properties for (\w+)\n.*?(\d+) bytes spill stores.*?\n"
                                      r".*?Used (\d+) registers", report)}
    print(f"{args.arch}, {args.dtype}: the main loop's instructions, its multiply-adds (FFMA/DFMA, or HMMA: one "
          f"mma.sync each), instructions per multiply-add, shared and global loads; registers; spilled bytes; "
          f"on the tensor cores, the instructions of a step where all its chunks go by cp.async")
    print(f"{'kernel (problem: operands, output; tile)':<84} {'loop':>5} {'math':>5} {'per':>6} {'LDS':>4} "
          f"{'LDG':>4} {'regs':>4} {'spill':>5} {'step':>5}")
    rows = []
    for mangled, body in bodies.items():
        name = names[mangled].replace("custom_conv::gpu::", "")
        dtype = re.escape(DTYPES[args.dtype])
        if not re.search(r"gemm_(tile|mma)_kernel<(ProblemSet<)?GemmProblem<" + dtype + ",", name) and \
                not re.search(r"depthwise_\w+_kernel<" + dtype + "[,>]", name):
            continue
        label = short(names[mangled])
        if re.search(args.filter, label):
            # (A step is counted where both operands copy chunks: not the gathers along positions, whose
            # elements always load one by one.)
            gathers = re.search(r"InputPatches|(?<!ChannelsLast)OutputGradPatches", label)
            step = copy_step(body) if "gemm_mma_kernel" in label and not gathers else None
            rows.append((label, main_loop(body), resources.get(mangled, (0, 0)), step))
    for label, ops, (regs, spills), step in sorted(rows):
        total = sum(ops.values())
        math = sum(n for op, n in ops.items() if op.startswith(MATH))
        shared = sum(n for op, n in ops.items() if op.startswith(("LDS", "LDSM")))
        glob_loads = sum(n for op, n in ops.items() if op.startswith(("LDG", "LDGSTS")))
        print(f"{label:<84} {total:>5} {math:>5} {total / max(math, 1):>6.2f} {shared:>4} {glob_loads:>4} "
              f"{regs:>4} {spills:>5} {step if step is not None else '-':>5}")


if __name__ == "__main__":
    main()
