#!/usr/bin/env bash
# The CUDA backend on real hardware, in one go (issue 14): for a machine with an NVIDIA GPU and numba-cuda
# (the project's GPU machine: H100, numba-cuda, CuPy, PyTorch and JAX installed, no network). Writes everything
# under $OUT (default benchmarks/gpu-out); a stage that fails or runs out of time is recorded and the next one
# still runs. The whole run stays within $BUDGET seconds (default 540: one device command may run 600 s).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # or, through the device tool: bash benchmarks/gpu_check.sh
#
# Stages, most important first (each gets at most its cap and what is left of the budget):
# 1. nvidia-smi, `python -m tracejit info` (GPU, driver, numba-cuda, cuBLAS path), the Python packages
# 2. the CUDA tests on the real target, `pytest -m cuda tests/compiler/cuda` (test_gpu.py: a LeNet step vs the
#    CPU, and the simulator's kernel/training/eager tests on the GPU, with cuBLAS where CuPy is installed and
#    with tracejit's own GEMM); -v, so a run cut short still lists what passed
# 3. benchmarks/gpu_bench.py --batch 256: LeNet and MLP steps, tracejit cpu/cuda vs PyTorch CUDA eager and
#    torch.compile, ewchain against the device copy bandwidth, launches per step (JSON rewritten as it goes)
# 4. `python -m tracejit bench --modes cpu,cuda` (the standard workloads)
# Then copy the numbers into benchmarks/RESULTS.md (section "CUDA").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-out}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# kernel caches shared by the stages (later ones load what earlier ones compiled), kept out of $OUT
export TRACEJIT_CACHE_DIR="${TRACEJIT_CACHE_DIR:-/tmp/tracejit-gpu-check/cache}"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-/tmp/tracejit-gpu-check/numba}"
unset NUMBA_ENABLE_CUDASIM
START=$(date +%s)
status=0
run() {  # run NAME CAP CMD...: stdout+stderr to $OUT/NAME.txt, exit code to $OUT/NAME.rc (124: out of time)
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  local secs=$((cap < left ? cap : left))
  if [ "$secs" -lt 10 ]; then
    echo "== $name: skipped (budget spent)" | tee -a "$OUT/summary.txt"; status=1; return
  fi
  echo "== $name (<= ${secs}s): $*" | tee -a "$OUT/summary.txt"
  local t0=$(date +%s)
  timeout -k 5 "$secs" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$rc" >"$OUT/$name.rc"
  echo "   exit $rc after $(($(date +%s) - t0)) s; last lines:" >>"$OUT/summary.txt"
  tail -n 25 "$OUT/$name.txt" >>"$OUT/summary.txt"
  [ "$rc" = 0 ] || status=1
}
date -u >"$OUT/summary.txt"
run nvidia-smi 20 nvidia-smi
run info 60 python -m tracejit info
run packages 20 python -m pip list
run pytest-cuda 200 python -m pytest -v -p no:cacheprovider -m cuda tests/compiler/cuda
run gpu-bench 200 python benchmarks/gpu_bench.py --batch 256 --reps 30 --passes 3 --json "$OUT/gpu_bench.json"
run bench 150 python -m tracejit bench --modes cpu,cuda --workloads lenet,mlp,ewchain,convblock,linreg --passes 2 \
  --no-warm-probe --no-progress --json "$OUT/bench.json"
echo "total $(($(date +%s) - START)) s" >>"$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $status
