"""Window-op kernels (window.conv, window.backward) against the NumPy references, on LeNet's and a conv
block's layers: fused conv+bias+ReLU+2x2 max-pool forward, and the whole backward chain behind it.

    .venv/bin/python benchmarks/bench_window.py [--reps 30] [--threads N] [--json out.json]

Prints, per layer, the work (FLOPs, compulsory bytes), the floor at 205 GFLOP/s and 42.6 GB/s (2 cores
AVX-512 peak and DRAM bandwidth), then median (and min) milliseconds after warm-up. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracejit import ref_kernels as K  # noqa: E402
from tracejit.compiler.backends.cpu.blas import control as blas  # noqa: E402
from tracejit.compiler.backends.cpu.window import backward as B  # noqa: E402
from tracejit.compiler.backends.cpu.window import conv as W  # noqa: E402
from tracejit.compiler.backends.cpu.window import pool as P  # noqa: E402

PEAK_FLOPS = 205e9
PEAK_BYTES = 42.6e9

# name: (x shape, w shape, padding, whether the layer needs dx (LeNet's first layer sees the data))
LAYERS = {
    "lenet1": ((64, 3, 32, 32), (6, 3, 5, 5), 0, False),
    "lenet2": ((64, 6, 14, 14), (16, 6, 5, 5), 0, True),
    "convblock": ((32, 16, 32, 32), (32, 16, 3, 3), 1, True),
}


def timeit(fn, reps: int) -> tuple[float, float]:
    """(median, min) milliseconds of fn() over reps calls after two warm-up calls."""
    fn()
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3), float(np.min(ts) * 1e3)


def work(xs, ws, p, need_dx):
    """FLOPs and compulsory DRAM bytes (each array read or written once) of forward and backward."""
    n, c, h, w = xs
    o, _, kh, kw = ws
    oh, ow = h + 2 * p - kh + 1, w + 2 * p - kw + 1
    ph, pw = oh // 2, ow // 2
    conv = 2 * n * o * oh * ow * c * kh * kw
    f = 4
    fwd_bytes = f * (n * c * h * w + o * c * kh * kw + o) + (f + 1) * n * o * ph * pw
    bwd_bytes = (2 * f + 1) * n * o * ph * pw + f * n * c * h * w + 2 * f * o * c * kh * kw + f * o
    if need_dx:
        bwd_bytes += f * n * c * h * w
    return {"fwd_flops": conv, "fwd_bytes": fwd_bytes,
            "bwd_flops": conv * (2 if need_dx else 1), "bwd_bytes": bwd_bytes}


def ref_forward(x, w, b, p):
    y = K.conv2d(x, w, (1, 1), (p, p), (1, 1), 1) + b[None, :, None, None]
    r = np.maximum(y, np.float32(0))
    return r, K.max_pool2d(r, (2, 2), (2, 2), (0, 0))


def ref_backward(x, w, r, gp, p, need_dx):
    g = K.max_pool2d_grad(r, gp, (2, 2), (2, 2), (0, 0)) * (r > 0)
    dx = K.conv2d_grad_input(g, w, x.shape, (1, 1), (p, p), (1, 1), 1) if need_dx else None
    return dx, K.conv2d_grad_weight(x, g, w.shape, (1, 1), (p, p), (1, 1), 1), g.sum(axis=(0, 2, 3))


def bench_layer(name, xs, ws, p, need_dx, reps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32) * np.float32(0.2)
    b = rng.standard_normal(ws[0], dtype=np.float32) * np.float32(0.1)
    n, o = xs[0], ws[0]
    oh = xs[2] + 2 * p - ws[2] + 1
    pooled = np.empty((n, o, oh // 2, oh // 2), np.float32)
    argmax = np.empty(pooled.shape, np.uint8)
    conv_out = np.empty((n, o, oh, oh), np.float32)
    gconv = np.empty_like(conv_out)
    gp = rng.standard_normal(pooled.shape, dtype=np.float32)
    dx = np.empty_like(x) if need_dx else None
    dw, db = np.empty_like(w), np.empty_like(b)
    r, _ = ref_forward(x, w, b, p)

    res = {"layer": name, **work(xs, ws, p, need_dx)}
    res["fwd_floor_ms"] = max(res["fwd_flops"] / PEAK_FLOPS, res["fwd_bytes"] / PEAK_BYTES) * 1e3
    res["bwd_floor_ms"] = max(res["bwd_flops"] / PEAK_FLOPS, res["bwd_bytes"] / PEAK_BYTES) * 1e3
    print(f"{name}: x {list(xs)} w {list(ws)} padding {p}, pool 2{'' if need_dx else ' (no dx: input layer)'}")
    print(f"  forward  {res['fwd_flops'] / 1e6:7.1f} MFLOP {res['fwd_bytes'] / 1e6:5.2f} MB -> floor "
          f"{res['fwd_flops'] / PEAK_FLOPS * 1e3:.3f} ms compute, {res['fwd_bytes'] / PEAK_BYTES * 1e3:.3f} ms "
          f"memory")
    print(f"  backward {res['bwd_flops'] / 1e6:7.1f} MFLOP {res['bwd_bytes'] / 1e6:5.2f} MB -> floor "
          f"{res['bwd_flops'] / PEAK_FLOPS * 1e3:.3f} ms compute, {res['bwd_bytes'] / PEAK_BYTES * 1e3:.3f} ms "
          f"memory")

    cases = {
        "fwd fused conv+bias+relu+pool": lambda: W.conv2d_pool_forward(x, w, b, pooled, argmax, 1, p, 1, 1,
                                                                       True, 2),
        "fwd conv+bias+relu (no pool)": lambda: W.conv2d_forward(x, w, b, conv_out, 1, p, 1, 1, True),
        "fwd numpy ref (im2col+relu+pool)": lambda: ref_forward(x, w, b, p),
        "bwd fused chain": lambda: B.conv2d_pool_backward(x, w, gp, argmax, pooled, dx, dw, db, 1, p, 1, 1,
                                                          True, 2),
        "bwd  pool+relu backward": lambda: B.maxpool_relu_backward(gp, argmax, pooled, gconv, True, 2),
        "bwd  grad_weight+bias": lambda: B.conv2d_grad_weight(x, gconv, dw, db, 1, p, 1, 1),
        "bwd numpy ref chain": lambda: ref_backward(x, w, r, gp, p, need_dx),
    }
    if need_dx:
        cases["bwd  grad_input"] = lambda: B.conv2d_grad_input(gconv, w, dx, 1, p, 1, 1)
    for label, fn in cases.items():
        med, mn = timeit(fn, reps if "numpy" not in label else max(5, reps // 3))
        res[label] = {"median_ms": med, "min_ms": mn}
        print(f"  {label:34s} {med:8.3f} ms (min {mn:.3f})")
    return res


# standalone pooling: (x shape, kernel, stride, padding)
POOLS = {
    "maxpool k2 [64,6,28,28]": ((64, 6, 28, 28), 2, 2, 0),
    "maxpool k3 s2 p1 [32,32,32,32]": ((32, 32, 32, 32), 3, 2, 1),
}


def bench_pool(name, xs, k, s, p, reps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs, dtype=np.float32)
    attrs = ((k, k), (s, s), (p, p))
    y = K.max_pool2d(x, *attrs)
    pooled, idx, dx = np.empty_like(y), np.empty(y.shape, np.uint8), np.empty_like(x)
    g = rng.standard_normal(y.shape, dtype=np.float32)
    nbytes = 4 * (x.size + y.size) + y.size
    print(f"{name}: {nbytes / 1e6:.2f} MB forward -> floor {nbytes / PEAK_BYTES * 1e3:.3f} ms memory")
    cases = {
        "max_pool2d fwd (+argmax)": lambda: P.max_pool2d_forward(x, pooled, *attrs, out_argmax=idx),
        "max_pool2d fwd numpy ref": lambda: K.max_pool2d(x, *attrs),
        "max_pool2d bwd from argmax": lambda: P.max_pool2d_grad_argmax(g, idx, dx, *attrs),
        "max_pool2d bwd numpy ref": lambda: K.max_pool2d_grad(x, g, *attrs),
        "avg_pool2d fwd": lambda: P.avg_pool2d_forward(x, pooled, *attrs),
        "avg_pool2d fwd numpy ref": lambda: K.avg_pool2d(x, *attrs),
        "avg_pool2d bwd": lambda: P.avg_pool2d_backward(g, dx, *attrs),
        "avg_pool2d bwd numpy ref": lambda: K.avg_pool2d_grad(g, x.shape, *attrs),
    }
    res = {"pool": name}
    for label, fn in cases.items():
        med, mn = timeit(fn, reps if "numpy" not in label else max(5, reps // 3))
        res[label] = {"median_ms": med, "min_ms": mn}
        print(f"  {label:34s} {med:8.3f} ms (min {mn:.3f})")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--threads", type=int, help="threads for the parallel kernels (default: all)")
    args = ap.parse_args(argv)
    blas.set_threads(1)  # as compiled programs run (blas.py): 2 OpenBLAS threads spin against TBB's
    if args.threads and W._threads is not None:
        W._threads.set_num_threads(args.threads)
    info = W._threads.info() if W._threads is not None else {}
    print(f"threads: {info.get('layer')} x {info.get('threads')}, BLAS 1 thread (NumPy refs too); "
          f"load average {os.getloadavg()[0]:.2f}")
    results = [bench_layer(name, *spec, args.reps) for name, spec in LAYERS.items()]
    pools = [bench_pool(name, *spec, args.reps) for name, spec in POOLS.items()]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": info, "results": results, "pools": pools}, f, indent=1)


if __name__ == "__main__":
    main()
