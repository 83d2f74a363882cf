"""What the GEMM kernels' inner loops cost in instructions, without a GPU.

Compiles csrc/cuda/conv2d.cu with nvcc for one architecture, to PTX and to
a cubin (ptxas -v), and prints for each instantiation of the GEMM kernels
(gemm_tile_kernel on the CUDA cores, gemm_mma_kernel on the tensor cores):
the instructions of its main loop (the largest loop that holds the
multiply-adds), how many of them are the multiply-adds (fma.rn / mma.sync),
the integer divisions among the rest (each several dozen machine
instructions), the 16-byte shared-memory loads, and the registers and spills
ptxas reports. A loop with fewer instructions per multiply-add leaves more
issue slots to the arithmetic: a proxy for speed, not a measurement of it
(the PTX is before ptxas's scheduling; latency and memory are not in it).

    .venv/bin/python benchmarks/ptx_loops.py                         # float32, sm_90
    .venv/bin/python benchmarks/ptx_loops.py --dtype half --arch sm_80
    .venv/bin/python benchmarks/ptx_loops.py --filter InputPatches   # the forward's kernels only

Needs nvcc (CUDA_HOME, or the one on the PATH) and about 1.5 minutes.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "csrc", "cuda", "conv2d.cu")
DTYPES = {"float": "float", "double": "double", "half": "c10::Half", "bfloat16": "c10::BFloat16"}


def cuda_home():
    """CUDA_HOME, else the toolkit the nvcc on the PATH runs from (as the Makefile finds it)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    dry = subprocess.run(["nvcc", "-dryrun", "-E", "-x", "cu", "/dev/null"], capture_output=True, text=True)
    here = re.search(r"^#\$ _HERE_=(.*?)/bin/*$", dry.stderr, re.M)
    if not here:
        sys.exit("ptx_loops.py: no CUDA toolkit found (set CUDA_HOME)")
    return here.group(1)


def compile_kernels(arch, workdir):
    """(PTX text, ptxas's report) of conv2d.cu for `arch` (e.g. sm_90)."""
    home = cuda_home()
    torch_includes = cpp_extension.include_paths()
    flags = ["-O3", "-std=c++20", "-DCUSTOM_CONV_WITH_CUDA", "--expt-relaxed-constexpr",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             *(f"-I{p}" for p in [*torch_includes, os.path.join(home, "include"), sysconfig.get_paths()["include"]])]
    nvcc = os.path.join(home, "bin", "nvcc")
    ptx, cubin = os.path.join(workdir, "conv2d.ptx"), os.path.join(workdir, "conv2d.cubin")
    compute = arch.replace("sm_", "compute_")
    subprocess.run([nvcc, *flags, f"-arch={compute}", "-ptx", SOURCE, "-o", ptx], check=True)
    report = subprocess.run([nvcc, *flags, f"-arch={arch}", "-cubin", "-Xptxas", "-v", SOURCE, "-o", cubin],
                            check=True, capture_output=True, text=True).stderr
    with open(ptx) as f:
        return f.read(), report


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return dict(zip(names, out))


def short(name):
    """The kernel, its problem's operands and its tile, from a demangled name."""
    name = name.replace("custom_conv::gpu::", "").replace("c10::", "").split("(", 1)[0]  # no parameter list
    kernel = name.split("<", 1)[0].replace("void ", "")
    operands = re.findall(r"(MatrixOperand<[^>]*>|InputPatches<[^>]*>|OutputGradPatches|OutputGradRows|"
                          r"MatrixOutput<[^>]*>|PlaneOutput)", name)
    tile = re.search(r"(?:CoreTile|MmaShape)<(\d+), (\d+)(?:, (\d+), (\d+))?>", name)
    shape = f"tile {tile.group(1)}x{tile.group(2)}" if tile else ""
    if tile and tile.group(3):
        shape += f" ({tile.group(3)}x{tile.group(4)} warps)"
    return " ".join([kernel, *operands] + ([shape] if shape else []))


def opcode(line):
    op = line.split()[1] if line.startswith("@") else line.split()[0]
    parts = op.split(".")
    if parts[0] in ("ld", "st"):
        return parts[0] + "." + parts[1] + (".v" if any(p.startswith("v") for p in parts) else "")
    return parts[0] + ("." + parts[-1] if parts[0] in ("div", "rem") else "")


def main_loop(body):
    """The instructions of the largest backward branch's loop that holds a multiply-add."""
    lines = [line.strip() for line in body.split("\n")]
    labels = {line[:-1]: i for i, line in enumerate(lines) if re.match(r"^\$L\w+:$", line)}
    best = []
    for i, line in enumerate(lines):
        branch = re.search(r"bra(?:\.uni)?\s+(\$L\w+);", line)
        if branch and labels.get(branch.group(1), i) < i:
            loop = [x for x in lines[labels[branch.group(1)]:i + 1]
                    if x and not x.startswith((".", "//", "{", "}", "$")) and not x.endswith(":")]
            if any(x.startswith(("fma.rn", "mma.sync")) for x in loop) and len(loop) > len(best):
                best = loop
    return collections.Counter(opcode(x) for x in best)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float")
    parser.add_argument("--filter", default="", help="only kernels whose short name matches this regex")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        ptx, report = compile_kernels(args.arch, workdir)
    entries = {m.group(1): m.group(0) for m in re.finditer(r"\.visible \.entry (\w+)\(.*?\n\}\n", ptx, re.S)}
    names = demangle(list(entries))
    resources = {m.group(1): (int(m.group(3)), int(m.group(2)))
                 for m in re.finditer(r"Function properties for (\w+)\n.*?(\d+) bytes spill stores.*?\n"
                                      r".*?Used (\d+) registers", report)}
    print(f"{'kernel (problem: operands, output; tile)':<78} {'loop':>5} {'fma/mma':>7} {'per op':>6} {'div':>4} "
          f"{'ld.v':>5} {'regs':>4} {'spill':>5}")
    for mangled, body in sorted(entries.items(), key=lambda e: short(names[e[0]])):
        name = names[mangled]
        if not re.search(r"gemm_(tile|mma)_kernel<GemmProblem<" + re.escape(DTYPES[args.dtype]) + ",",
                         name.replace("custom_conv::gpu::", "")):
            continue
        label = short(name)
        if not re.search(args.filter, label):
            continue
        ops = main_loop(body)
        total = sum(ops.values())
        arithmetic = sum(n for op, n in ops.items() if op in ("fma", "mma"))
        divisions = sum(n for op, n in ops.items() if op.startswith(("div.", "rem.")) and not op.endswith("f32"))
        regs, spills = resources.get(mangled, (0, 0))
        print(f"{label:<78} {total:>5} {arithmetic:>7} {total / max(arithmetic, 1):>6.2f} {divisions:>4} "
              f"{ops['ld.shared.v']:>5} {regs:>4} {spills:>5}")


if __name__ == "__main__":
    main()
