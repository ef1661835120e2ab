#!/usr/bin/env bash
# The CUDA backend on real hardware, in one go (issue 14): for a machine with an NVIDIA GPU and numba-cuda
# (the project's GPU machine: H100, numba-cuda, CuPy, PyTorch and JAX installed, no network). Writes everything
# under $OUT (default benchmarks/gpu-out); a step that fails is recorded and the next one still runs.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# 1. nvidia-smi and `python -m tracejit info` (GPU, driver, numba-cuda, cuBLAS path)
# 2. the CUDA tests on the real target: `pytest -m cuda tests/compiler/cuda` (test_gpu.py runs the simulator's
#    kernel/training/eager tests on the GPU, with and without cuBLAS)
# 3. `python -m tracejit bench --modes cpu,cuda` (the standard workloads)
# 4. benchmarks/gpu_bench.py --batch 256: LeNet and MLP steps, tracejit cpu/cuda vs PyTorch CUDA eager and
#    torch.compile, ewchain against the device copy bandwidth, launches per step
# Then copy the numbers into benchmarks/RESULTS.md (section "CUDA").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRACEJIT_CACHE_DIR="${TRACEJIT_CACHE_DIR:-$OUT/cache}"
unset NUMBA_ENABLE_CUDASIM
status=0
run() {  # run NAME SECONDS CMD...: stdout+stderr to $OUT/NAME.txt, exit code to $OUT/NAME.rc
  local name=$1 secs=$2; shift 2
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  timeout "$secs" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$rc" >"$OUT/$name.rc"
  echo "   exit $rc; last lines:" >>"$OUT/summary.txt"
  tail -n 15 "$OUT/$name.txt" >>"$OUT/summary.txt"
  [ "$rc" = 0 ] || status=1
}
date -u >"$OUT/summary.txt"
run nvidia-smi 30 nvidia-smi
run info 120 python -m tracejit info
run pytest-cuda 420 python -m pytest -q -p no:cacheprovider -m cuda -x tests/compiler/cuda
run bench 420 python -m tracejit bench --modes cpu,cuda --workloads lenet,mlp,ewchain,convblock,linreg --passes 3 \
  --no-warm-probe --no-progress --json "$OUT/bench.json"
run gpu-bench 420 python benchmarks/gpu_bench.py --batch 256 --json "$OUT/gpu_bench.json"
cat "$OUT/summary.txt"
exit $status
