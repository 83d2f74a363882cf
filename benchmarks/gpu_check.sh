#!/usr/bin/env bash
# Everything a GPU machine should check about the CUDA kernels, in one go:
# build against that machine's torch, the CUDA tests, the CUDA benchmark,
# compute-sanitizer's memcheck and racecheck over the CUDA tests, then the
# whole suite. On an H200 the steps up to memcheck take about twelve minutes
# (build 90 s when conv2d's kernels were fewer; now its half, bfloat16 and
# float32 files take about 3 minutes of one core each, which --split-compile
# below spreads over the cores; CUDA tests 70 s, about 100 s per benchmarked dtype, the route
# sweep up to 90 s, memcheck up to 200 s, which covered about half the CUDA
# tests in 135 s); the training-step profile, racecheck and the whole suite need a longer lease. A lease
# of 15 minutes, its machine's start included, takes everything up to
# memcheck; where one command may run for less than the steps want, set
# DEADLINE a little below that limit (seconds from the script's start): each
# step then ends by it, cut short where it must, and is packed, its logs and
# the JSON its benchmark rewrites as it goes, before the limit kills the run.
# Steps that would get less than 20 s are skipped and say so.
# Logs and benchmark JSON go to $OUT/gpu-check.tar.gz (default OUT: .), renewed
# after every step so that a run cut short still returns what it did. Each step has its
# own time limit, so a slow one cannot starve the rest; the order is the
# order of importance.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   STEPS="build bench" OUT=/tmp/gpu bash benchmarks/gpu_check.sh   # only these steps
#   DEADLINE=570 OUT=/tmp/gpu bash benchmarks/gpu_check.sh          # all done within 570 s
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
LOGS=${TMPDIR:-/tmp}/gpu-check
mkdir -p "$LOGS"
STEPS=${STEPS:-build errors tests-cuda bench routes memcheck profile racecheck tests-all}
DEADLINE=${DEADLINE:-0}  # 0: none
export PYTHONUNBUFFERED=1
# The GPU in hand only, with line numbers for the sanitizer's reports.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  export TORCH_CUDA_ARCH_LIST
fi
export NVCC_APPEND_FLAGS="-lineinfo"
# nvcc's device compilation of one file on several threads (CUDA 12.1 on):
# the build runs a file per core, but conv2d's four dtype files are the
# last to finish, long after the rest.
if nvcc --help 2>/dev/null | grep -q -- "--split-compile "; then
  NVCC_APPEND_FLAGS="$NVCC_APPEND_FLAGS --split-compile=0"
fi
# Build with the system compiler, as torch's own wheels expect. setuptools
# takes the compiler Python was built with, and some GPU images set CXX to a
# compiler of their own (e.g. /opt/gcc/bin/g++); linked that way, _C.so held
# its own copy of parts of libstdc++ and crashed (SIGSEGV in std::ostream,
# under c10::str) the first time a TORCH_CHECK message was formatted. So the
# system compiler wins over CXX from the environment (GPU_CHECK_KEEP_CXX=1
# keeps it); the step "errors" below checks that a bad argument raises.
if [ -x /usr/bin/g++ ] && [ -z "${GPU_CHECK_KEEP_CXX:-}" ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ LDSHARED="/usr/bin/g++ -shared"
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

pack() {
  tar czf "$OUT/gpu-check.tar.gz" -C "$(dirname "$LOGS")" gpu-check
}

step() {  # step NAME SECONDS COMMAND...: runs, logs to $OUT/NAME.log, reports the exit code
  local name=$1 limit=$2; shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  if (( DEADLINE > 0 )); then  # what is left before the deadline, less the packing (and the kill's 10 s)
    local left=$(( DEADLINE - SECONDS - 20 ))
    if (( left < 20 )); then
      echo "== $name: skipped, ${left}s left before the deadline" | tee -a "$LOGS/summary.log"
      pack
      return 124
    fi
    (( limit > left )) && limit=$left
  fi
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$LOGS/summary.log"
  tail -n 15 "$LOGS/$name.log"
  pack
  return $rc
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nvcc --version | tail -n 2
  compute-sanitizer --version | head -n 2
} 2>&1 | tee -a "$LOGS/summary.log"

step build 240 python3 -m pip install -v --no-build-isolation --no-deps -e . || exit 1
# A bad argument must raise a RuntimeError, not crash the interpreter.
step errors 60 python3 -c 'import glob, subprocess, torch, custom_conv
so = glob.glob("custom_conv/_C*.so")[0]
print("libstdc++ linked dynamically:", "libstdc++.so" in subprocess.run(["ldd", so], capture_output=True, text=True).stdout)
try:
    torch.ops.custom_conv.conv2d_forward(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3), None, [1, 1], [0, 0], [1, 1], 1)
except RuntimeError as e:
    print("raised as it should:", e)'
step tests-cuda 240 python3 -m pytest -q -rf --tb=short -p no:cacheprovider -m cuda tests
# Batch 32 only (bench.py's default adds batches 1 and 128), one step per
# dtype: a step cut short still leaves its JSON (bench.py rewrites it after
# every layer), and the next dtype gets its own time.
for dtype in ${BENCH_DTYPES:-float32 float16 bfloat16}; do
  [[ " $STEPS " == *" bench "* ]] || break
  STEPS="$STEPS bench-$dtype" step bench-$dtype ${BENCH_LIMIT:-150} python3 benchmarks/bench.py --device cuda \
    --dtype "$dtype" --batch 32 --min-run-time ${BENCH_MIN_RUN_TIME:-0.05} --out "$LOGS/cuda-$dtype.json"
done
# The implicit GEMM against the column matrix and cuDNN, per layer and pass,
# in float16: what the GPU's chooser should take where.
step routes ${ROUTES_LIMIT:-90} python3 benchmarks/route_sweep.py --device cuda --dtype float16 --min-run-time 0.02 \
  --out "$LOGS/routes-cuda-float16.json"
# Only our kernels are instrumented (their names all live in namespace custom_conv).
SANITIZE=(compute-sanitizer --kernel-name kns=custom_conv --print-limit 20 --error-exitcode 9)
step memcheck ${MEMCHECK_LIMIT:-200} "${SANITIZE[@]}" --tool memcheck python3 -m pytest -q -p no:cacheprovider -m cuda tests
# Where a training step's time goes, ours against torch's, for the two models the targets name: the
# host or the kernels, and which kernels (about 15 s each).
step profile ${PROFILE_LIMIT:-60} bash -c 'for model in resnet20 vgg16_bn; do
  python3 benchmarks/profile_step.py --device cuda --model $model --out "$0/profile-$model.json" || exit 1
  done' "$LOGS"
step racecheck ${RACECHECK_LIMIT:-240} "${SANITIZE[@]}" --tool racecheck --racecheck-report hazard \
  python3 -m pytest -q -p no:cacheprovider -m cuda tests
# With pytest-xdist (if there), a test that crashes the interpreter fails alone
# instead of ending the run. Two threads per worker: 16 workers of 16 threads
# each stalled the run on a 16-core machine. -v names every failure as it
# happens, so a run cut short by its limit still says which tests failed.
XDIST=$(python3 -c 'import xdist' 2>/dev/null && echo "-n $(( $(nproc) / 2 ))")
OMP_NUM_THREADS=2 step tests-all ${TESTS_ALL_LIMIT:-150} python3 -m pytest -v -rf --tb=short -p no:cacheprovider $XDIST tests
exit 0
