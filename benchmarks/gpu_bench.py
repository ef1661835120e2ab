"""GPU benchmarks of the CUDA backend (issue 14), for a machine with an NVIDIA GPU: run by gpu_check.sh.

    python benchmarks/gpu_bench.py --batch 256 --json out.json
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_bench.py --batch 2 --reps 1 --passes 1 --ew-log2 8 \
        --mlp 16,8,10 --json /tmp/smoke.json      # a smoke run of this script in the simulator (times mean nothing)

LeNet (CIFAR-10 tutorial, SGD momentum) and the MLP 784-512-512-10 (Adam) training steps at the given batch, each
from the same initial weights and data, in: tracejit compiled on the CPU, tracejit compiled on the GPU, PyTorch
CUDA eager and torch.compile (default mode) on the GPU. Also the ewchain forward+backward (tanh(x)*sigmoid(x) +
exp(-x*x), 2**24 floats) against the measured device-to-device copy bandwidth. GPU times are taken over `reps`
steps between two synchronizations. Writes a JSON report and prints a table with the ratios the issue's targets
name (cuda vs torch eager, vs torch.compile, vs tracejit cpu; ewchain's share of copy bandwidth; launches per step).
The JSON report is rewritten after each measurement, so a run cut short by a time limit still leaves its numbers;
a part that fails is recorded in the report and the next part still runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np


def _median_ms(run, sync, reps: int, passes: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(passes):
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        sync()
        samples.append((time.perf_counter() - t0) / reps * 1e3)
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return statistics.median(samples), q[0], q[2]


# ------------------------------------------------------------------------------------------- tracejit


def tracejit_step(workload: str, batch: int, device: str, mlp_sizes=(784, 512, 512, 10)):
    import tracejit as tj
    import tracejit.nn.functional as F
    from tracejit.bench import workloads as W

    tj.manual_seed(0)
    rng = np.random.default_rng(0)
    if workload == "lenet":
        model = W.LeNet()
        x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
        y = rng.integers(0, 10, batch).astype(np.int64)
        params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        model = model.to(device)
        opt = tj.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    else:
        model = W.mlp_model(mlp_sizes)
        x = rng.standard_normal((batch, mlp_sizes[0]), dtype=np.float32)
        y = rng.integers(0, 10, batch).astype(np.int64)
        params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        model = model.to(device)
        opt = tj.optim.Adam(model.parameters(), lr=1e-3)

    @tj.compile
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    xt, yt = tj.from_numpy(x).to(device), tj.from_numpy(y).to(device)
    return step, (lambda: step(xt, yt)), params, (x, y)


def torch_step(workload: str, params: dict, data, compiled: bool, mlp_sizes=(784, 512, 512, 10)):
    import torch

    from tracejit.bench import peers

    if workload == "lenet":
        model = peers._torch_lenet_module()
    else:
        import torch.nn as nn

        layers = []
        for i, (a, b) in enumerate(zip(mlp_sizes[:-1], mlp_sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(mlp_sizes) - 2 else [])
        model = nn.Sequential(*layers)
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in params.items()})
    model = model.cuda()
    opt = (torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9) if workload == "lenet"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    x, y = (torch.from_numpy(a).cuda() for a in data)

    def train_step(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(train_step) if compiled else train_step
    return lambda: fn(x, y)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--workloads", default="lenet,mlp,ewchain")
    ap.add_argument("--mlp", default="784,512,512,10", help="the MLP's layer sizes")
    ap.add_argument("--ew-log2", type=int, default=24, help="ewchain on 2**N floats")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    ap.add_argument("--json", default=None)
    ns = ap.parse_args(argv)
    mlp_sizes = tuple(int(s) for s in ns.mlp.split(","))
    wanted = ns.workloads.split(",")

    import tracejit as tj

    report = {"machine": platform.node(), "python": sys.version.split()[0], "batch": ns.batch, "results": [],
              "errors": []}

    def save():
        if ns.json:
            with open(ns.json, "w") as fh:
                json.dump(report, fh, indent=1, default=str)

    def failed(what, e):
        report["errors"].append(f"{what}: {type(e).__name__}: {e}")
        print(f"{what} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        save()

    sync_gpu = tj.cuda.synchronize
    from tracejit.compiler.backends import get_backend

    report["gpu"] = get_backend("cuda").describe()
    save()
    rows = report["results"]
    for wl in [w for w in ("lenet", "mlp") if w in wanted]:
        res = {"workload": wl}
        rows.append(res)
        params = data = None
        for device in ("cpu", "cuda"):
            try:
                step, run, params, data = tracejit_step(wl, ns.batch, device, mlp_sizes)
                t0 = time.perf_counter()
                for _ in range(3):
                    loss = run()
                res[f"tracejit {device} loss"] = loss.item()
                res[f"tracejit {device} warm-up s"] = time.perf_counter() - t0
                reps = ns.reps if device == "cuda" else max(3, ns.reps // 10)
                res[f"tracejit {device} ms"] = _median_ms(run, sync_gpu if device == "cuda" else (lambda: None),
                                                          reps, ns.passes)
                if device == "cuda":
                    prog = step.latest().program
                    res["launches per step"] = prog.launches_per_call()
                    res["graph nodes"] = len(step.latest().graph.nodes)
                    res["host fallbacks"] = list(prog.fallbacks)
                    res["describe"] = prog.describe()
                save()
            except Exception as e:  # noqa: BLE001 -- recorded; the next part still runs
                failed(f"{wl} tracejit {device}", e)
        if ns.no_torch or params is None:
            continue
        for compiled in (False, True):
            name = "torch.compile cuda" if compiled else "torch cuda eager"
            try:
                import torch

                run = torch_step(wl, params, data, compiled, mlp_sizes)
                t0 = time.perf_counter()
                for _ in range(3):
                    loss = run()
                res[f"{name} loss"] = float(loss)
                res[f"{name} warm-up s"] = time.perf_counter() - t0
                res[f"{name} ms"] = _median_ms(run, torch.cuda.synchronize, ns.reps, ns.passes)
                save()
            except Exception as e:  # noqa: BLE001 -- a peer that cannot run is reported, not fatal
                failed(f"{wl} {name}", e)

    if "ewchain" in wanted:
        try:
            ewchain(tj, report, ns, sync_gpu)
        except Exception as e:  # noqa: BLE001
            failed("ewchain", e)
    save()

    print(f"GPU: {report['gpu'].get('device')}; batch {ns.batch}")
    for r in rows:
        if "tracejit cuda ms" not in r:
            print(f"{r['workload']:6s} no tracejit cuda time (see errors)")
            continue
        cu = r["tracejit cuda ms"][0]
        line = [f"{r['workload']:6s} tracejit cuda {cu:8.3f} ms"]
        for k in ("tracejit cpu", "torch cuda eager", "torch.compile cuda"):
            if f"{k} ms" in r:
                line.append(f"{k} {r[f'{k} ms'][0]:8.3f} ms ({r[f'{k} ms'][0] / cu:5.2f}x)")
        line.append(f"launches/step {r['launches per step']} for {r['graph nodes']} nodes")
        print("  ".join(line))
        if r["host fallbacks"]:
            print("   host fallbacks:", r["host fallbacks"])
    e = report.get("ewchain")
    if e:
        print(f"ewchain 2**{ns.ew_log2}: {e['ms'][0]:.3f} ms, {e['launches']} launches; copy bandwidth "
              f"{e['copy GB/s'] or float('nan'):.0f} GB/s -> {100 * (e['share of copy bandwidth'] or 0):.0f}% of it")
    for err in report["errors"]:
        print("error:", err)
    return 1 if report["errors"] else 0


def ewchain(tj, report, ns, sync_gpu) -> None:
    """ewchain forward + backward against the device copy bandwidth (PyTorch's copy, else a CuPy one)."""
    from tracejit.bench.workloads import ewchain_fn

    n = 1 << ns.ew_log2
    x = tj.from_numpy(np.random.default_rng(2).standard_normal(n, dtype=np.float32)).cuda().requires_grad_()
    f = tj.compile(ewchain_fn)
    for _ in range(3):
        f(x)
    ew = _median_ms(lambda: f(x), sync_gpu, ns.reps, ns.passes)
    report["ewchain"] = {"n": n, "ms": ew, "launches": f.latest().program.launches_per_call()}
    bw = None
    try:
        import torch

        a = torch.empty(n * 4, dtype=torch.float32, device="cuda")
        b = torch.empty_like(a)
        ms = _median_ms(lambda: b.copy_(a), torch.cuda.synchronize, ns.reps, ns.passes)[0]
        bw = 2 * a.numel() * 4 / (ms / 1e3)  # bytes read + written per second
    except Exception as e:  # noqa: BLE001
        report["copy bandwidth error"] = f"{type(e).__name__}: {e}"
    # fully fused, forward + backward reads x once and writes its gradient once: 8 bytes per element
    floor_ms = (n * 8) / bw * 1e3 if bw else None
    report["ewchain"].update({"copy GB/s": bw / 1e9 if bw else None, "floor ms": floor_ms,
                              "share of copy bandwidth": floor_ms / ew[0] if floor_ms else None})


if __name__ == "__main__":
    raise SystemExit(main())
