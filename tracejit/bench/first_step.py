"""The `first-step` section of `python -m tracejit bench`: how long until the first compiled training step, each
case in a fresh process with the caches it names.

    python -m tracejit bench --sections first-step            # LeNet at batch 64, then batch 40
    python -m tracejit bench --sections steady,first-step     # both tables

The step is the LeNet example's (the CIFAR-10 tutorial network, cross-entropy, SGD with momentum): one eager
step creates the optimizer's state, then the first compiled call (trace, passes, kernel compilation or cache
load, one run) is timed, then a call with a new batch size (an epoch's partial last batch) on the
already-compiled step. The cases, in order, each one process:

- fresh install: Numba's cache for the package's own kernels empty (a new NUMBA_CACHE_DIR) and the kernel
  cache empty (a new TRACEJIT_CACHE_DIR);
- after warmup: a new NUMBA_CACHE_DIR filled by `python -m tracejit warmup` (a process of its own, timed
  apart), then an empty kernel cache;
- package warm, kernels cold: the fresh-install case's NUMBA_CACHE_DIR again, an empty kernel cache;
- warm: both caches of the previous case.

Wall seconds depend on the machine's load: each case also reports the process's CPU seconds for the first
call and the Numba compilations it ran (count and CPU seconds), which do not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BATCH, NEW_BATCH = 64, 40
QUICK_BATCH, QUICK_NEW_BATCH = 2, 3
CASES = ("fresh install", "after warmup", "package warm, kernels cold", "warm")


def probe(batch: int, new_batch: int, backend: str = "cpu") -> dict:
    """In this (fresh) process: the first compiled LeNet step at `batch`, then at `new_batch`."""
    t_start = time.perf_counter()
    compiles = _count_compiles()
    import numpy as np

    import tracejit as tj
    import tracejit.nn as nn

    from .workloads import LeNet

    import_s = time.perf_counter() - t_start
    tj.manual_seed(0)
    net = LeNet()
    opt = tj.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    criterion = nn.CrossEntropyLoss()

    def train_step(x, y):
        opt.zero_grad()
        loss = criterion(net(x), y)
        loss.backward()
        opt.step()
        return loss

    step = tj.compile(train_step, backend=backend)
    rng = np.random.default_rng(0)

    def batch_of(n):
        return (
            tj.from_numpy(rng.standard_normal((n, 3, 32, 32), dtype=np.float32)),
            tj.from_numpy(rng.integers(0, 10, n).astype(np.int64)),
        )

    train_step(*batch_of(batch))  # eager: creates the optimizer's state, as the example's eager steps do
    out = {"import_s": import_s}
    for name, n in (("first", batch), ("new_batch", new_batch)):
        x, y = batch_of(n)
        n0, cpu_compile0 = compiles()
        c0, t0 = time.process_time(), time.perf_counter()
        loss = step(x, y)
        float(loss.item())
        out[f"{name}_s"] = time.perf_counter() - t0
        out[f"{name}_cpu_s"] = time.process_time() - c0
        n1, cpu_compile1 = compiles()
        out[f"{name}_compiles"] = n1 - n0
        out[f"{name}_compile_cpu_s"] = cpu_compile1 - cpu_compile0
    x, y = batch_of(batch)
    step(x, y)
    t0 = time.perf_counter()
    for _ in range(3):
        step(x, y).item()
    out["steady_ms"] = (time.perf_counter() - t0) / 3 * 1e3
    out["variants"] = len(step.history)
    out["to_first_step_s"] = time.perf_counter() - t_start
    return out


def _count_compiles():
    """A Numba listener: () -> (compilations so far, their CPU seconds, outermost only)."""
    from numba.core import event

    state = {"n": 0, "cpu": 0.0, "depth": 0, "t0": 0.0}

    class Listener(event.Listener):
        def on_start(self, ev):
            if state["depth"] == 0:
                state["t0"] = time.thread_time()
            state["depth"] += 1
            state["n"] += 1

        def on_end(self, ev):
            state["depth"] -= 1
            if state["depth"] == 0:
                state["cpu"] += time.thread_time() - state["t0"]

    event.register("numba:compile", Listener())
    return lambda: (state["n"], state["cpu"])


def probe_main(argv: list[str]) -> int:
    """Entry point of a case's process: `probe_main([batch, new_batch, backend])` prints one JSON line."""
    print("FIRSTSTEP " + json.dumps(probe(int(argv[0]), int(argv[1]), argv[2] if argv[2:] else "cpu")))
    return 0


def _subprocess(args: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", *args], env=env, capture_output=True, text=True, timeout=timeout)
    return res, time.perf_counter() - t0


def _case(env: dict, batch: int, new_batch: int, backend: str, timeout: float) -> dict:
    code = "import sys; from tracejit.bench.first_step import probe_main; sys.exit(probe_main(sys.argv[1:]))"
    res, wall = _subprocess([code, str(batch), str(new_batch), backend], env, timeout)
    for line in res.stdout.splitlines():
        if line.startswith("FIRSTSTEP "):
            r = json.loads(line[10:])
            r["process_s"] = wall
            return r
    tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exited with {res.returncode}: {tail}"}


def run_first_step(
    quick: bool = False,
    backend: str = "cpu",
    root: str | None = None,
    timeout: float = 1800,
    cases=CASES,
    progress: bool = True,
) -> dict:
    """Run the cases (each a fresh process, in CASES order) and return the section's report."""
    batch, new_batch = (QUICK_BATCH, QUICK_NEW_BATCH) if quick else (BATCH, NEW_BATCH)
    own = root is None
    root = root or tempfile.mkdtemp(prefix="tracejit-first-step-")
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "TRACEJIT_CACHE_DIR")}

    def env(numba_dir, kernels_dir):
        return dict(
            base, NUMBA_CACHE_DIR=os.path.join(root, numba_dir), TRACEJIT_CACHE_DIR=os.path.join(root, kernels_dir)
        )

    plan = {
        "fresh install": (env("numba", "kernels-1"), "new NUMBA_CACHE_DIR, new TRACEJIT_CACHE_DIR"),
        "after warmup": (
            env("numba-warmup", "kernels-2"),
            "new NUMBA_CACHE_DIR filled by `python -m tracejit warmup`, new TRACEJIT_CACHE_DIR",
        ),
        "package warm, kernels cold": (
            env("numba", "kernels-3"),
            "fresh install's NUMBA_CACHE_DIR, new TRACEJIT_CACHE_DIR",
        ),
        "warm": (env("numba", "kernels-3"), "the previous case's NUMBA_CACHE_DIR and TRACEJIT_CACHE_DIR"),
    }
    rows = []
    try:
        for name in CASES:
            if name not in cases:
                continue
            e, caches = plan[name]
            row = {"case": name, "caches": caches}
            if name == "after warmup":
                if progress:
                    print(f"first-step: {name}: running python -m tracejit warmup", file=sys.stderr, flush=True)
                res, wall = _subprocess(["import tracejit.warmup as w; w.warmup(verbose=False)"], e, timeout)
                row["warmup_s"] = wall
                if res.returncode:
                    row["error"] = f"warmup exited with {res.returncode}"
                    rows.append(row)
                    continue
            if progress:
                print(f"first-step: {name}", file=sys.stderr, flush=True)
            row.update(_case(e, batch, new_batch, backend, timeout))
            rows.append(row)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "workload": f"LeNet step (the example's), batch {batch}, then batch {new_batch}",
        "backend": backend,
        "batch": batch,
        "new_batch": new_batch,
        "rows": rows,
        "machine": _machine(),
    }


def _machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg": load}


def format_first_step(report: dict) -> str:
    """The section as a markdown table."""
    m = report["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg"]) if m.get("loadavg") else "?"
    lines = [
        f"first step: {report['workload']}, backend {report['backend']}; {m['cpu']}, {m['cores']} cores, "
        f"load average {load}",
        "",
        "| case | first call s (CPU s) | Numba compiles (CPU s) | new batch size s (compiles) | process s "
        "| steady ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['error']} | | | | |")
            continue
        case = r["case"] + (f" (warmup {r['warmup_s']:.1f} s)" if "warmup_s" in r else "")
        lines.append(
            f"| {case} | {r['first_s']:.2f} ({r['first_cpu_s']:.2f}) | {r['first_compiles']} "
            f"({r['first_compile_cpu_s']:.2f}) | {r['new_batch_s']:.2f} ({r['new_batch_compiles']}) | "
            f"{r['process_s']:.1f} | {r['steady_ms']:.2f} |"
        )
    lines.append("")
    lines += [f"- {r['case']}: {r['caches']}" for r in report["rows"]]
    return "\n".join(lines)
