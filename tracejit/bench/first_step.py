"""The `first-step` section of `python -m tracejit bench`: how long until the first compiled training step, each
case in a fresh process with the caches it names.

    python -m tracejit bench --sections first-step            # LeNet at batch 64, then batch 40
    python -m tracejit bench --sections steady,first-step     # both tables

The step is the LeNet example's (the CIFAR-10 tutorial network, cross-entropy, SGD with momentum): one eager
step creates the optimizer's state, then the first compiled call (trace, passes, kernel compilation or cache
load, one run) is timed, then a call with a new batch size (an epoch's partial last batch) on the
already-compiled step. The cases, in order, each one process:

- fresh install: Numba's cache for the package's own kernels empty (a new NUMBA_CACHE_DIR) and the kernel
  cache empty (a new TRACEJIT_CACHE_DIR); the package's prebuilt kernels come from its kernel pack where one fits
  this CPU (compiler/backends/cpu/kernel_pack.py; the row says which);
- fresh install, no kernel pack: the same with TRACEJIT_KERNEL_PACK=0, every package kernel compiled here;
- after warmup: a new NUMBA_CACHE_DIR filled by `python -m tracejit warmup` (a process of its own, timed
  apart), then an empty kernel cache;
- package warm, kernels cold: the fresh-install case's NUMBA_CACHE_DIR again, an empty kernel cache;
- warm: both caches of the previous case.

Python's bytecode cache is kept under the run's root for all cases (PYTHONPYCACHEPREFIX; the first case fills
it), as for an installed package, whatever PYTHONDONTWRITEBYTECODE says.

Each case runs once per mode (`modes`), with caches of its own: default (`compile()` as a user writes it: the
package's choice, tiered or blocking; the table says which), blocking (`compile(tiered=False)`: the first call
compiles before it returns), process (`compile(tiered=True)`: calls run on the reference backend until the
kernels, compiled in a child process into the disk caches, are loaded) and thread (TRACEJIT_TIERED=thread, only
when asked for: the same with the compile in a thread of the process). The table gives both "first call
returned" and "first compiled step" (the end of the first call that ran the compiled kernels), and the time to N
steps from the first call's start.

`workload="gpt"` times the gpt benchmark's step (a 4-layer Transformer, AdamW) instead of LeNet's.

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
GPT_BATCH, GPT_NEW_BATCH = 16, 12
QUICK_BATCH, QUICK_NEW_BATCH = 2, 3
STEPS, QUICK_STEPS = (1, 10, 100, 1000), (1, 3)
MODES = ("default", "blocking", "process")  # and "thread" (TRACEJIT_TIERED=thread), when asked for
# default: compile(tiered=None) with TRACEJIT_TIERED unset, what a user gets; thread: TRACEJIT_TIERED=thread
TIERED = {"default": None, "blocking": False, "process": True, "tiered": True, "thread": None}
CASES = ("fresh install", "fresh install, no kernel pack", "after warmup", "package warm, kernels cold", "warm")


def probe(batch: int, new_batch: int, backend: str = "cpu", mode: str = "blocking", steps=STEPS,
          workload: str = "lenet") -> dict:
    """In this (fresh) process: the first compiled step of `workload` ("lenet" or "gpt") at `batch`, steps up to
    max(`steps`) at that batch (the time to each N in `steps`, from the first call's start), then a call at
    `new_batch`. `mode`: "blocking" (the first call compiles the kernels before it returns), "process" (calls run
    on the reference backend until the kernels, compiled in a child process, are loaded) or "thread" (the same
    with the compile in a thread)."""
    t_start = time.perf_counter()
    compiles = _count_compiles()
    if mode == "thread":
        os.environ["TRACEJIT_TIERED"] = "thread"
    import numpy as np

    import tracejit as tj
    import tracejit.nn as nn
    import tracejit.nn.functional as F

    import_s = time.perf_counter() - t_start
    rng = np.random.default_rng(0)
    if workload == "gpt":
        from .seq_workloads import gpt_config, gpt_model

        cfg = gpt_config(False)
        tj.manual_seed(0)
        net = gpt_model(cfg)
        opt = tj.optim.AdamW(net.parameters(), lr=cfg["lr"])
        vocab, context = cfg["vocab"], cfg["context"]

        def train_step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(net(x).view(-1, vocab), y.view(-1))
            loss.backward()
            opt.step()
            return loss

        def batch_of(n):
            return (tj.from_numpy(rng.integers(0, vocab, (n, context)).astype(np.int64)),
                    tj.from_numpy(rng.integers(0, vocab, (n, context)).astype(np.int64)))
    else:
        from .workloads import LeNet

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

        def batch_of(n):
            return (
                tj.from_numpy(rng.standard_normal((n, 3, 32, 32), dtype=np.float32)),
                tj.from_numpy(rng.integers(0, 10, n).astype(np.int64)),
            )

    step = tj.compile(train_step, backend=backend, tiered=TIERED[mode])

    def compiled_ran() -> bool:  # whether the call that just returned ran the compiled program
        tier = getattr(step.history[-1], "tier", None)
        return tier is None or tier.switched

    train_step(*batch_of(batch))  # eager: creates the optimizer's state, as the example's eager steps do
    out = {"import_s": import_s, "mode": mode}
    x, y = batch_of(batch)
    n0, cpu_compile0 = compiles()
    c0, t0 = time.process_time(), time.perf_counter()
    float(step(x, y).item())
    out["first_s"] = time.perf_counter() - t0
    out["first_cpu_s"] = time.process_time() - c0
    n1, cpu_compile1 = compiles()
    out["first_compiles"] = n1 - n0
    out["first_compile_cpu_s"] = cpu_compile1 - cpu_compile0
    # the time to the end of the first call that ran the compiled program, and to N steps (same batch)
    compiled_at = out["first_s"] if compiled_ran() else None
    out["first_compiled_step"] = 1 if compiled_at is not None else None
    to_n = {1: out["first_s"]}
    for k in range(2, max(steps) + 1):
        float(step(x, y).item())
        now = time.perf_counter() - t0
        if compiled_at is None and compiled_ran():
            compiled_at, out["first_compiled_step"] = now, k
        if k in steps:
            to_n[k] = now
    out["first_compiled_s"] = compiled_at
    out["to_steps_s"] = {str(k): v for k, v in to_n.items()}
    out["steps_cpu_s"] = time.process_time() - c0  # (a background compile's CPU included)
    out["steps_compiles"] = compiles()[0] - n0
    tier = getattr(step.history[-1], "tier", None)
    out["reference_calls"] = tier.reference_calls if tier is not None else 0
    out["tier"] = tier.mode if tier is not None else None
    out["tier_how"] = getattr(getattr(tier, "child", None), "how", None)
    out["tier_loaded"] = tier.loaded if tier is not None else None
    out["tier_error"] = repr(tier.error) if tier is not None and tier.error is not None else None
    child = getattr(tier, "child", None)
    out["tier_child"] = {k: v for k, v in child.result.items() if k != "fallbacks"} if child is not None else None
    x, y = batch_of(new_batch)
    n0, cpu_compile0 = compiles()
    t0 = time.perf_counter()
    float(step(x, y).item())
    out["new_batch_s"] = time.perf_counter() - t0
    out["new_batch_compiles"] = compiles()[0] - n0
    x, y = batch_of(batch)
    step(x, y)
    t0 = time.perf_counter()
    for _ in range(3):
        step(x, y).item()
    out["steady_ms"] = (time.perf_counter() - t0) / 3 * 1e3
    out["variants"] = len(step.history)
    from tracejit.compiler.backends import get_backend

    out["kernel_pack"] = get_backend(backend).prebuilt()
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
    """Entry point of a case's process: `probe_main([batch, new_batch, backend, mode, steps, workload])` prints
    one JSON line (steps: comma-separated N)."""
    backend = argv[2] if argv[2:] else "cpu"
    mode = argv[3] if argv[3:] else "blocking"
    steps = tuple(int(n) for n in argv[4].split(",")) if argv[4:] else STEPS
    workload = argv[5] if argv[5:] else "lenet"
    print("FIRSTSTEP " + json.dumps(probe(int(argv[0]), int(argv[1]), backend, mode, steps, workload)))
    return 0


def _subprocess(args: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", *args], env=env, capture_output=True, text=True, timeout=timeout)
    return res, time.perf_counter() - t0


def _case(env: dict, batch: int, new_batch: int, backend: str, timeout: float, mode: str, steps,
          workload: str = "lenet") -> dict:
    code = "import sys; from tracejit.bench.first_step import probe_main; sys.exit(probe_main(sys.argv[1:]))"
    try:
        res, wall = _subprocess([code, str(batch), str(new_batch), backend, mode, ",".join(map(str, steps)),
                                 workload], env, timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"ran longer than {timeout:.0f} s"}
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
    modes=MODES,
    steps=None,
    workload: str = "lenet",
) -> dict:
    """Run the cases (each a fresh process, in CASES order; each case once per mode, with caches of that mode's
    own) and return the section's report. `workload`: "lenet" or "gpt"."""
    batch, new_batch = (QUICK_BATCH, QUICK_NEW_BATCH) if quick else (BATCH, NEW_BATCH)
    if workload == "gpt" and not quick:
        batch, new_batch = GPT_BATCH, GPT_NEW_BATCH
    steps = tuple(steps or (QUICK_STEPS if quick else STEPS))
    own = root is None
    root = root or tempfile.mkdtemp(prefix="tracejit-first-step-")
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "TRACEJIT_CACHE_DIR",
                                                               "TRACEJIT_TIERED", "PYTHONDONTWRITEBYTECODE",
                                                               "TRACEJIT_KERNEL_PACK")}
    # Python's own cache, as an installed package has it (pip writes .pyc files; an editable install's first
    # import does): with PYTHONDONTWRITEBYTECODE set, every process would compile tracejit's ~100 modules from
    # source (~0.3 s of `import tracejit`, ~50 ms of the first compiled call's preparation). The cases' processes
    # write and read it under the run's root (the first case fills it).
    base["PYTHONPYCACHEPREFIX"] = os.path.join(root, "pycache")

    def env(numba_dir, kernels_dir, **more):
        return dict(
            base, NUMBA_CACHE_DIR=os.path.join(root, numba_dir), TRACEJIT_CACHE_DIR=os.path.join(root, kernels_dir),
            **more,
        )

    def plan(mode):
        return {
            "fresh install": (env(f"numba-{mode}", f"kernels-1-{mode}"),
                              "new NUMBA_CACHE_DIR, new TRACEJIT_CACHE_DIR, the package's kernel pack"),
            "fresh install, no kernel pack": (
                env(f"numba-nopack-{mode}", f"kernels-0-{mode}", TRACEJIT_KERNEL_PACK="0"),
                "new NUMBA_CACHE_DIR, new TRACEJIT_CACHE_DIR, TRACEJIT_KERNEL_PACK=0",
            ),
            "after warmup": (
                env(f"numba-warmup-{mode}", f"kernels-2-{mode}", TRACEJIT_KERNEL_PACK="0"),
                "new NUMBA_CACHE_DIR filled by `python -m tracejit warmup` (no kernel pack), new TRACEJIT_CACHE_DIR",
            ),
            "package warm, kernels cold": (
                env(f"numba-{mode}", f"kernels-3-{mode}"),
                "fresh install's NUMBA_CACHE_DIR, new TRACEJIT_CACHE_DIR",
            ),
            "warm": (env(f"numba-{mode}", f"kernels-3-{mode}"),
                     "the previous case's NUMBA_CACHE_DIR and TRACEJIT_CACHE_DIR"),
        }

    rows = []
    try:
        for name in CASES:
            if name not in cases:
                continue
            for mode in modes:
                e, caches = plan(mode)[name]
                row = {"case": name, "caches": caches}
                if name == "after warmup":
                    if progress:
                        print(f"first-step: {name}, {mode}: running python -m tracejit warmup", file=sys.stderr,
                              flush=True)
                    res, wall = _subprocess(["import tracejit.warmup as w; w.warmup(verbose=False)"], e, timeout)
                    row["warmup_s"] = wall
                    if res.returncode:
                        row["error"] = f"warmup exited with {res.returncode}"
                        rows.append(row)
                        continue
                if progress:
                    print(f"first-step: {name}, {mode}", file=sys.stderr, flush=True)
                row["loadavg"] = _loadavg()
                row.update(_case(e, batch, new_batch, backend, timeout, mode, steps, workload))
                row["mode"] = mode
                rows.append(row)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    what = "gpt step (the gpt benchmark's)" if workload == "gpt" else "LeNet step (the example's)"
    return {
        "workload": f"{what}, batch {batch} for {max(steps)} steps, then batch {new_batch}",
        "backend": backend,
        "batch": batch,
        "new_batch": new_batch,
        "steps": list(steps),
        "rows": rows,
        "machine": _machine(),
    }


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


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


def _fmt_load(x) -> str:
    return "?" if x is None else f"{x:.1f}"


def format_first_step(report: dict) -> str:
    """The section as a markdown table. "first call returned" is when the first call's result was there (in
    tiered mode from the reference backend); "first compiled step" is the end of the first call that ran the
    compiled kernels; "to N steps" counts from the first call's start."""
    m = report["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg"]) if m.get("loadavg") else "?"
    steps = report.get("steps") or []
    lines = [
        f"first step: {report['workload']}, backend {report['backend']}; {m['cpu']}, {m['cores']} cores, "
        f"load average {load}",
        "",
        "| case | mode | load | first call returned s (CPU s) | Numba compiles (CPU s) in it | "
        "first compiled step s (call) | "
        + "".join(f"to {n} steps s | " for n in steps)
        + "new batch size s (compiles) | process s | steady ms |",
        "|---|---|---|---|---|---|" + "---|" * len(steps) + "---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r.get('mode', '')} | | {r['error']} |" + " |" * (6 + len(steps)))
            continue
        case = r["case"] + (f" (warmup {r['warmup_s']:.1f} s)" if "warmup_s" in r else "")
        if r.get("kernel_pack"):
            case += f" (pack {r['kernel_pack']})"
        mode = r.get("mode", "blocking")
        if mode in ("default", "process"):  # what it did: tiered with a forked or spawned child, or blocking
            chose = r.get("tier_how") or r.get("tier") or ("blocking" if r.get("first_compiles") else "cached")
            mode = f"{mode} ({chose})"
        fc = r.get("first_compiled_s")
        fcs = (f"{fc:.2f} ({r['first_compiled_step']})" if fc is not None
               else f"not yet ({r['reference_calls']} ref calls)")
        to_n = r.get("to_steps_s", {})
        lines.append(
            f"| {case} | {mode} | {_fmt_load(r.get('loadavg'))} | "
            f"{r['first_s']:.2f} ({r['first_cpu_s']:.2f}) | "
            f"{r['first_compiles']} ({r['first_compile_cpu_s']:.2f}) | {fcs} | "
            + "".join(f"{to_n[str(n)]:.2f} | " if str(n) in to_n else "- | " for n in steps)
            + f"{r['new_batch_s']:.2f} ({r['new_batch_compiles']}) | {r['process_s']:.1f} | {r['steady_ms']:.2f} |"
        )
    lines.append("")
    seen = []
    for r in report["rows"]:
        if r["case"] not in seen:
            seen.append(r["case"])
            lines.append(f"- {r['case']}: {r['caches']}")
    lines.append("- default: compile() as a user writes it (in parentheses what it chose: a forked or spawned "
                 "compile process, blocking, or cached kernels); "
                 "process: compile(tiered=True): calls run on the reference backend (NumPy) until the kernels, "
                 "compiled in a child process (fork or spawn) into the disk caches, are loaded; thread: the same "
                 "with the compile in a thread of the process (TRACEJIT_TIERED=thread); the first compiled step is "
                 "the first call that ran them. Each mode has caches of its own; load is the 1-minute load "
                 "average when the case began.")
    return "\n".join(lines)
