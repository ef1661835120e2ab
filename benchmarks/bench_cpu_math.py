"""Benchmarks for the CPU backend's math library and threading setup (a script, not a test):
a fused tanh*sigmoid+exp chain (vecmath vs libm vs NumPy), launch overhead and GEMM -> kernel -> GEMM per
threading layer, each layer in its own interpreter. Run: python benchmarks/bench_cpu_math.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import prange

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracejit.compiler.backends.cpu import threads  # noqa: E402
from tracejit.compiler.backends.cpu.vecmath import exp_f32, sigmoid_f32, tanh_f32  # noqa: E402

F1 = np.float32(1.0)
JIT = dict(parallel=True, fastmath=True, error_model="numpy")


@numba.njit(**JIT)
def chain_cpu_math(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = tanh_f32(v) * sigmoid_f32(v) + exp_f32(-v * v)


@numba.njit(**JIT)
def chain_libm(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = math.tanh(v) * (F1 / (F1 + math.exp(-v))) + math.exp(-v * v)


@numba.njit(fastmath=True, error_model="numpy")
def chain_cpu_math_serial(x, y):
    for i in range(x.size):
        v = x[i]
        y[i] = tanh_f32(v) * sigmoid_f32(v) + exp_f32(-v * v)


@numba.njit(**JIT)
def copy(x, y):
    for i in prange(x.size):
        y[i] = x[i]


def chain_numpy(x, y):
    np.add(np.tanh(x) * (F1 / (F1 + np.exp(-x))), np.exp(-x * x), out=y)


@numba.njit(**JIT)
def tiny(x):
    for i in prange(x.size):
        x[i] += 1.0


@numba.njit(**JIT)
def tanh_inplace(x):
    for i in prange(x.size):
        x[i] = tanh_f32(x[i])


def best_ms(fn, *args, repeat=30, inner=1):
    fn(*args)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(inner):
            fn(*args)
        times.append((time.perf_counter() - t) / inner)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def bench_chain(n: int) -> None:
    threads.configure()
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 3
    y = np.empty_like(x)
    ref = np.empty_like(x)
    chain_numpy(x, ref)
    nbytes = 2 * x.nbytes
    print(f"y = tanh(x)*sigmoid(x) + exp(-x*x), {n} float32, {threads.get_num_threads()} threads "
          f"({threads.info()['layer']}); median / best of 30")
    for label, fn in [("parallel copy (bandwidth floor)", copy), ("njit parallel + vecmath", chain_cpu_math),
                      ("njit serial + vecmath", chain_cpu_math_serial),
                      ("njit parallel + math.tanh/exp", chain_libm), ("NumPy", chain_numpy)]:
        med, best = best_ms(fn, x, y)
        if fn is not copy:
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
        print(f"  {label:32s} {med:8.2f} ms (best {best:6.2f})  {nbytes / med / 1e6:6.1f} GB/s")


def bench_layer(quick: bool) -> dict:
    """Runs in a child interpreter whose layer is forced through TRACEJIT_THREADING_LAYER."""
    info = threads.configure()
    small = np.zeros(16)
    launch_us = 1e3 * best_ms(tiny, small, repeat=20, inner=200 if quick else 2000)[1]
    idle = []
    for _ in range(20):
        time.sleep(0.005)
        t = time.perf_counter()
        tiny(small)
        idle.append(time.perf_counter() - t)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 512)).astype(np.float32)
    w1, w2 = (rng.standard_normal((512, 512)).astype(np.float32) / 23 for _ in range(2))

    def gemm_kernel_gemm():
        h = a @ w1
        tanh_inplace(h.reshape(-1))
        return h @ w2

    seq_ms = best_ms(gemm_kernel_gemm, repeat=20 if quick else 100, inner=5)
    gemm_ms = best_ms(lambda: (a @ w1) @ w2, repeat=20 if quick else 100, inner=5)
    t = time.perf_counter()
    for _ in range(1000):
        threads.configure()
    return dict(layer=info["layer"], spin=info["gomp_spincount"], launch_us=launch_us,
                idle_launch_us=1e6 * float(np.median(idle)), seq_ms=seq_ms, gemm_only_ms=gemm_ms,
                configure_us=(time.perf_counter() - t) * 1e3)


def bench_layers(quick: bool) -> None:
    print("\nthreading layers: tiny prange launch (best back to back / median after 5 ms idle), "
          "GEMM 256x512@512x512 -> tanh kernel -> GEMM (median of 5-call means)")
    variants = [("tbb", {}), ("omp", {}), ("omp", {"GOMP_SPINCOUNT": "300000"}), ("workqueue", {})]
    for layer, extra in variants:
        env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
        env.update(extra, TRACEJIT_THREADING_LAYER=layer, PYTHONPATH=str(ROOT))
        args = [sys.executable, __file__, "--child-layer"] + (["--quick"] if quick else [])
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"  {layer}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        name = r["layer"] + (f" (GOMP_SPINCOUNT={r['spin']})" if r["spin"] else "")
        (seq_med, seq_best), (gemm_med, gemm_best) = r["seq_ms"], r["gemm_only_ms"]
        print(f"  {name:28s} launch {r['launch_us']:6.1f} us, after idle {r['idle_launch_us']:6.1f} us; "
              f"GEMM->kernel->GEMM {seq_med:6.2f} ms (best {seq_best:5.2f}), GEMMs alone {gemm_med:5.2f} "
              f"(best {gemm_best:5.2f}); configure() again {r['configure_us']:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--n", type=int, default=2**22)
    parser.add_argument("--child-layer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_layer:
        print(json.dumps(bench_layer(args.quick)))
        return
    bench_chain(args.n)
    bench_layers(args.quick)


if __name__ == "__main__":
    main()
