"""Timing harness: warm-up (compile) timed apart, interleaved modes, several passes, median and IQR, and
the share of CPU that other processes took while each loop ran (a shared machine can slow a run 2x).

`run_benchmarks(...)` returns a JSON-ready report; `format_table(report)` renders it for people.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import peers as peers_mod
from .workloads import TRACEJIT_MODES, WORKLOADS, Built, build_tracejit

EAGER_KERNELS_WAIT_S = 600.0  # eager mode: how long the warm-up waits for the eager kernels (a cold compile)
WARMUP_CALLS = 3  # tracejit: call 1 runs eagerly (the optimizer creates its state), call 2 compiles
TARGET_LOOP_S = 0.5  # each timed loop lasts about this long when --reps is not given
MIN_REPS, MAX_REPS = 5, 200
LOAD_THRESHOLD = 0.25
MIN_LOAD_WINDOW_S = 0.1  # CPU-seconds of machine capacity (wall time x CPUs) needed to measure load
CHECK_RTOL = 1e-3  # warm-up losses of every mode must agree with the first mode's to this tolerance
LABELS = {"eager": "tracejit eager", "reference": "tracejit reference", "cpu": "tracejit cpu",
          "cuda": "tracejit cuda", "torch": "torch eager", "torch.compile": "torch.compile",
          "jax.jit": "jax.jit"}
CACHED_MODES = ("cpu", "cuda", "torch.compile", "jax.jit")  # modes with a compile cache worth probing


# ------------------------------------------------------------------------------------ machine load
def cpu_snapshot() -> tuple[float, float, float, float] | None:
    """(busy_s, total_s) of the whole machine from /proc/stat, and this process's own CPU seconds and the
    wall clock; None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]
    total = sum(ticks)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return (total - idle) / hz, total / hz, usage.ru_utime + usage.ru_stime, time.perf_counter()


def other_load(before, after) -> float | None:
    """Share of the machine's CPU capacity that processes other than this one used between two
    `cpu_snapshot()`s, in [0, 1]; steal time (another VM on the same host) counts as other load."""
    if before is None or after is None:
        return None
    busy, total, own = after[0] - before[0], after[1] - before[1], after[2] - before[2]
    if total < MIN_LOAD_WINDOW_S:
        return None  # /proc/stat counts in 10 ms ticks: a shorter window says nothing
    # ticks and rusage round differently, hence the clamp
    return min(1.0, max(0.0, (busy - own) / total))


def measure_load(fn: Callable[[], object]) -> float | None:
    """Run `fn` once and return the other-process CPU share during it (see `other_load`)."""
    before = cpu_snapshot()
    fn()
    return other_load(before, cpu_snapshot())


# ------------------------------------------------------------------------------------- bandwidth
def copy_bandwidth(nbytes: int = 1 << 28, threads: int | None = None, reps: int = 5) -> float:
    """Best copy bandwidth in bytes/s (bytes read + bytes written) of np.copyto over `threads` threads,
    each copying its own slice (NumPy releases the GIL for large copies)."""
    threads = threads or usable_cpus()
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(lambda p: np.copyto(*p), parts))
            best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One (workload, mode) pair: how it was built, its warm-up, and its timed samples per pass."""

    workload: str
    mode: str
    built: Built | None = None
    skipped: str | None = None
    error: str | None = None
    warmup_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    reps: int = 0
    passes: list[list[float]] = field(default_factory=list)
    loads: list[float | None] = field(default_factory=list)
    compile_warm_s: float | None = None
    warm_note: str | None = None

    @property
    def ok(self) -> bool:
        return self.built is not None and self.error is None and self.skipped is None


def _describe(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]


def _cuda_note() -> str | None:
    from ..compiler.backends import get_backend

    try:
        get_backend("cuda")
    except Exception as e:  # the backend says why it cannot run here (no GPU, numba-cuda missing, not written)
        return _describe(e)
    return None


def mode_note(mode: str) -> str | None:
    """None when `mode` (tracejit mode or peer) can run here, else why not."""
    if mode in peers_mod.PEERS:
        return peers_mod.availability(mode)
    if mode == "cuda":
        return _cuda_note()
    if mode not in TRACEJIT_MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(TRACEJIT_MODES + peers_mod.PEERS)}")
    return None


def build(workload: str, mode: str, quick: bool) -> Built:
    w = WORKLOADS[workload]
    cfg = w.config(quick)
    arrays = w.arrays(cfg)
    if mode in peers_mod.PEERS:
        return peers_mod.build_peer(w, cfg, arrays, mode)
    return build_tracejit(w, cfg, arrays, mode)


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def warm_up(case: Case, quick: bool, reps: int | None) -> None:
    """Build, run the warm-up calls (timed: they include compilation) and choose the repetitions."""
    try:
        case.built = build(case.workload, case.mode, quick)
        for _ in range(WARMUP_CALLS):
            dt, out = _timed(case.built.run)
            case.warmup_s.append(dt)
            case.losses.append(case.built.value(out))
        if case.mode == "eager":  # the CPU's eager kernels load in the background while the first steps run
            from ..compiler import backends

            backends.wait_eager_kernels(EAGER_KERNELS_WAIT_S)
        calib = min(_timed(case.built.run)[0] for _ in range(2))
    except Exception as e:
        case.error = _describe(e)
        case.built = None
        return
    if reps:
        case.reps = reps
    elif quick:
        case.reps = 3
    else:
        case.reps = int(min(MAX_REPS, max(MIN_REPS, math.ceil(TARGET_LOOP_S / max(calib, 1e-9)))))


# Before each timed loop: let the previous mode's worker threads (OpenBLAS, OpenMP, Eigen, TBB spin-wait up to
# ~0.1 s after their last task) go to sleep, then make one untimed call. Modes share this process: without it
# the MLP's compiled step measured 3.4 or 5.5 ms depending on which peer had just run.
SETTLE_S = 0.15


def time_pass(case: Case) -> None:
    """One timed loop of `case.reps` calls, each timed on its own, with the machine's other load."""
    run = case.built.run
    samples = []
    try:
        time.sleep(SETTLE_S)
        run()
        before = cpu_snapshot()
        for _ in range(case.reps):
            t0 = time.perf_counter()
            run()
            samples.append(time.perf_counter() - t0)
        case.loads.append(other_load(before, cpu_snapshot()))
        case.passes.append(samples)
    except Exception as e:
        case.error = _describe(e)


# ------------------------------------------------------------------------------- warm-cache probe
def probe(workload: str, mode: str, quick: bool) -> dict:
    """In this (fresh) process: build, time the warm-up calls and a few steady calls."""
    built = build(workload, mode, quick)
    warm = [_timed(built.run)[0] for _ in range(WARMUP_CALLS)]
    steady = [_timed(built.run)[0] for _ in range(MIN_REPS)]
    return {"warmup_s": warm, "steady_s": steady}


def probe_main(argv: list[str]) -> int:
    """Entry point of the probe subprocess: `probe_main([workload, mode, '--quick'?])` prints JSON."""
    result = probe(argv[0], argv[1], "--quick" in argv[2:])
    print("PROBE " + json.dumps(result))
    return 0


def probe_subprocess(workload: str, mode: str, quick: bool, env: dict, timeout: float = 900) -> dict:
    """Run `probe` in a new interpreter that shares this run's compile cache directories."""
    code = "import sys; from tracejit.bench.harness import probe_main; sys.exit(probe_main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, workload, mode] + (["--quick"] if quick else [])
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    for line in res.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"probe exited with {res.returncode}: {tail}")


def source_fingerprint() -> str:
    """A hash of the tracejit package's source files (paths, sizes, mtimes): generated kernels depend on
    them, so a warm-cache probe after they changed would measure a recompilation."""
    import hashlib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith(".py"):
                st = os.stat(os.path.join(d, f))
                h.update(f"{os.path.relpath(os.path.join(d, f), root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def compile_overhead(warmup_s: list[float], steady_s: float) -> float:
    """Time the warm-up calls took beyond as many steady calls: tracing, passes and compilation."""
    return max(0.0, sum(warmup_s) - len(warmup_s) * steady_s)


# ------------------------------------------------------------------------------------------ progress
class Progress:
    """tqdm when installed, plain lines on stderr otherwise; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.enabled, self.total, self.n, self.bar = enabled, total, 0, None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="job", file=sys.stderr, leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def step(self, what: str) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description(what[:40])
            self.bar.update(1)
        else:
            print(f"[{self.n}/{self.total}] {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------- the run
def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import numba

    import tracejit

    info = {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "tracejit": tracejit.__version__, "platform": platform.platform()}
    info["cpus_usable"] = usable_cpus()
    return info


def _threads_info(modes: Iterable[str]) -> dict:
    out = {}
    if any(m in ("cpu", "cuda") for m in modes):
        from ..compiler.backends import get_backend

        out["tracejit"] = get_backend("cpu").describe().get("threads")
    if any(m in ("torch", "torch.compile") for m in modes) and "torch" in sys.modules:
        import torch

        out["torch"] = f"{torch.get_num_threads()} (torch {torch.__version__})"
    if "jax.jit" in modes and "jax" in sys.modules:
        import jax

        out["jax"] = jax.__version__
    return out


def _blas_info(modes: Iterable[str]) -> dict:
    """The BLAS the compiled GEMMs called and its kernels, and a warning when OPENBLAS_CORETYPE held them back."""
    if not any(m in ("cpu", "cuda") for m in modes):
        return {}
    from ..compiler.backends import get_backend

    return dict(get_backend("cpu").describe().get("blas") or {})


def _summary(case: Case, threshold: float) -> dict:
    """Median and spread over the passes whose other load stayed under `threshold` (a loop that shared the
    CPU with another process measures that process too); over all passes, flagged, when none did."""
    clean = [i for i, load in enumerate(case.loads) if load is not None and load <= threshold]
    used = clean or list(range(len(case.passes)))
    samples = [s for i in used for s in case.passes[i]]
    if not samples:
        return {}
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    loads = [case.loads[i] for i in used if case.loads[i] is not None]
    return {"median_ms": q50 * 1e3, "p25_ms": q25 * 1e3, "p75_ms": q75 * 1e3,
            "min_ms": min(samples) * 1e3, "max_ms": max(samples) * 1e3,
            "pass_medians_ms": [statistics.median(p) * 1e3 for p in case.passes],
            "samples_ms": [[round(t * 1e3, 4) for t in p] for p in case.passes], "passes_used": used,
            "samples": len(samples), "other_load": case.loads,
            "other_load_max": max(loads) if loads else None}


def run_benchmarks(workloads: Iterable[str] = tuple(WORKLOADS), modes: Iterable[str] = ("eager", "reference", "cpu"),
                   passes: int = 3, reps: int | None = None, quick: bool = False, progress: bool = True,
                   warm_probe: bool = True, cache_dir: str | None = None, bandwidth: bool = True,
                   load_threshold: float = LOAD_THRESHOLD, command: str | None = None) -> dict:
    """Time every (workload, mode) pair and return the report (see README, "Benchmarks").

    >>> r = run_benchmarks(["linreg"], ["eager"], passes=1, quick=True, progress=False)  # doctest: +SKIP
    >>> r["results"][0]["median_ms"] > 0  # doctest: +SKIP
    True
    """
    workloads, modes = list(workloads), list(dict.fromkeys(modes))
    for w in workloads:
        if w not in WORKLOADS:
            raise ValueError(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    notes = {m: mode_note(m) for m in modes}
    runnable = [m for m in modes if notes[m] is None]

    # Fresh compile caches make the warm-up a true cold start; the probe subprocess then reuses them.
    own_dir = cache_dir is None
    root = cache_dir or tempfile.mkdtemp(prefix="tracejit-bench-")
    env_keys = {"TRACEJIT_CACHE_DIR": os.path.join(root, "tracejit"),
                "TORCHINDUCTOR_CACHE_DIR": os.path.join(root, "inductor"),
                "JAX_COMPILATION_CACHE_DIR": os.path.join(root, "jax")}
    saved_env = {k: os.environ.get(k) for k in env_keys}
    os.environ.update(env_keys)
    cases = [Case(w, m, skipped=notes[m]) for w in workloads for m in modes]
    live = [c for c in cases if c.skipped is None]
    probes = [c for c in live if c.mode in CACHED_MODES] if warm_probe else []
    bar = Progress(len(live) * (passes + 1) + len(probes) + int(bandwidth), progress)
    started = time.time()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        bw = None
        if bandwidth:
            bw = copy_bandwidth(nbytes=1 << 23 if quick else 1 << 28)
            bar.step("copy bandwidth")
        for c in live:
            fingerprint = source_fingerprint()
            warm_up(c, quick, reps)
            bar.step(f"warm-up {c.workload} {c.mode}")
            if c in probes:
                # right after the cold compile, so that the library's source is still what it compiled
                _warm_probe(c, quick, fingerprint)
                bar.step(f"warm cache {c.workload} {c.mode}")
        for p in range(passes):
            for w in workloads:
                row = [c for c in live if c.workload == w]
                # rotate the order every pass so that drift and cache effects hit every mode alike
                k = p % len(row) if row else 0
                for c in row[k:] + row[:k]:
                    if c.ok:
                        time_pass(c)
                    bar.step(f"pass {p + 1} {w} {c.mode}")
    finally:
        bar.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    report = _report(cases, workloads, modes, notes, runnable, passes, quick, bw, load_threshold,
                     time.time() - started, cache_dir)
    report["command"] = command
    report["date"] = date
    return report


def _warm_probe(c: Case, quick: bool, fingerprint: str) -> None:
    if not c.ok:
        return
    if c.mode in ("cpu", "cuda") and source_fingerprint() != fingerprint:
        c.warm_note = "tracejit's source changed during its compilation, so its kernels would recompile"
        return
    try:
        r = probe_subprocess(c.workload, c.mode, quick, dict(os.environ))
        c.compile_warm_s = compile_overhead(r["warmup_s"], statistics.median(r["steady_s"]))
    except Exception as e:
        c.warm_note = _describe(e)


def _report(cases, workloads, modes, notes, runnable, passes, quick, bw, threshold, elapsed, cache_dir) -> dict:
    results = []
    for w in workloads:
        wl = WORKLOADS[w]
        cfg = wl.config(quick)
        row = [c for c in cases if c.workload == w]
        sums = {c.mode: _summary(c, threshold) for c in row}
        base = next((c for c in row if c.ok and c.losses), None)
        for c in row:
            r = {"workload": w, "mode": c.mode, "label": LABELS[c.mode], "unit": wl.unit.format(**cfg)}
            if c.skipped:
                r["skipped"] = c.skipped
            if c.error:
                r["error"] = c.error
            r.update(sums[c.mode])
            if "median_ms" in r:
                med = r["median_ms"] / 1e3
                r["reps"] = c.reps
                r["first_call_s"] = c.warmup_s[0]
                r["warmup_s"] = c.warmup_s
                r["compile_cold_s"] = compile_overhead(c.warmup_s, med)
                r["compile_warm_s"] = c.compile_warm_s
                if c.warm_note:
                    r["compile_warm_note"] = c.warm_note
                r["losses"] = c.losses
                if base is not None and base is not c:
                    r["check_vs"] = base.mode
                    r["check_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-6)
                                              for a, b in zip(c.losses, base.losses))
                r["flags"] = _flags(r, threshold)
                r["speedup"] = {m: s["median_ms"] / r["median_ms"] for m, s in sums.items() if s}
            results.append(r)
    floors = {}
    if bw:
        for w in workloads:
            fb = WORKLOADS[w].floor_bytes
            if fb:
                nbytes = fb(WORKLOADS[w].config(quick))
                floors[w] = {"bytes": nbytes, "floor_ms": nbytes / bw * 1e3}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "threads": _threads_info(runnable),
        "blas": _blas_info(runnable),
        "settings": {"workloads": workloads, "modes": modes, "passes": passes, "quick": quick,
                     "warmup_calls": WARMUP_CALLS, "load_threshold": threshold,
                     "cache_dir": cache_dir or "fresh temporary directory (cold start)"},
        "unavailable": {m: n for m, n in notes.items() if n},
        "copy_bandwidth_gbs": bw / 1e9 if bw else None,
        "floors": floors,
        "elapsed_s": elapsed,
        "results": results,
    }


def _flags(r: dict, threshold: float) -> list[str]:
    flags = []
    load = r.get("other_load_max")
    if load is not None and load > threshold:
        flags.append(f"other load {load:.0%}")
    if r.get("check_rel_diff", 0.0) > CHECK_RTOL:
        flags.append(f"loss differs from {r['check_vs']} by {r['check_rel_diff']:.1e}")
    return flags


# --------------------------------------------------------------------------------------- rendering
def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _fmt_s(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f}"


def format_table(report: dict) -> str:
    """The report as an aligned text table: ms per unit, IQR, speedup vs eager and every peer, compile
    times, other load; notes for skipped modes, errors, flags and the ewchain DRAM floor."""
    modes = report["settings"]["modes"]
    refs = [m for m in ("eager",) + peers_mod.PEERS if m in modes and m not in report["unavailable"]]
    head = ["workload", "mode", "ms/unit", "IQR (ms)"] + [f"vs {LABELS[m]}" for m in refs] + \
           ["compile cold s", "warm cache s", "other load", "passes"]
    rows, notes = [head], []
    loaded = measured = 0
    for r in report["results"]:
        if "skipped" in r:
            continue
        name = f"{r['workload']} ({r['unit']})"
        if "median_ms" not in r:
            rows.append([name, r["label"], "error"] + [""] * (len(head) - 3))
            notes.append(f"{r['workload']} / {r['label']}: {r.get('error', 'no samples')}")
            continue
        ratios = []
        for m in refs:
            s = r["speedup"].get(m)
            ratios.append("-" if s is None or m == r["mode"] else f"{s:.2f}x")
        load = r.get("other_load_max")
        mark = " !" if r["flags"] else ""
        rows.append([name, r["label"], _fmt_ms(r["median_ms"]) + mark,
                     f"{_fmt_ms(r['p25_ms'])}-{_fmt_ms(r['p75_ms'])}"] + ratios +
                    [_fmt_s(r["compile_cold_s"]) if r["mode"] not in ("eager", "torch") else "-",
                     _fmt_s(r.get("compile_warm_s")), "n/a" if load is None else f"{load:.0%}",
                     f"{len(r['passes_used'])}/{len(r['pass_medians_ms'])}"])
        loaded += any(f.startswith("other load") for f in r["flags"])
        measured += 1
        for f in r["flags"]:
            if not f.startswith("other load"):  # the load has its own column
                notes.append(f"! {r['workload']} / {r['label']}: {f}")
        if r.get("error"):
            notes.append(f"{r['workload']} / {r['label']}: stopped after {r['samples']} samples: {r['error']}")
        if r.get("compile_warm_note"):
            notes.append(f"{r['workload']} / {r['label']}: warm cache not measured: {r['compile_warm_note']}")
    if loaded:
        notes.insert(0, f"! {loaded} of {measured} results were measured while other processes used more than "
                        f"{report['settings']['load_threshold']:.0%} of the CPU in every pass (column 'other "
                        f"load'): they are slower and noisier than on a quiet machine")
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    prev = None
    for i, row in enumerate(rows):
        cells = list(row)
        if i > 0 and cells[0] == prev:
            cells[0] = ""  # print each workload's name once
        else:
            prev = cells[0] if i > 0 else None
        lines.append("  ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(cells)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += _footer(report, notes)
    return "\n".join(lines)


def _footer(report: dict, notes: list[str]) -> list[str]:
    out = [""]
    by = {(r["workload"], r["mode"]): r for r in report["results"]}
    for w, f in report["floors"].items():
        best = [(r["median_ms"], r["label"]) for (wk, _), r in by.items() if wk == w and "median_ms" in r]
        line = (f"{w} DRAM floor: {f['bytes'] / 1e6:.3g} MB that must move / {report['copy_bandwidth_gbs']:.1f} "
                f"GB/s measured copy bandwidth = {f['floor_ms']:.3g} ms")
        cpu = by.get((w, "cpu"))
        if cpu and "median_ms" in cpu:
            line += f"; tracejit cpu is {cpu['median_ms'] / f['floor_ms']:.1f}x the floor"
        elif best:
            ms, label = min(best)
            line += f"; fastest ({label}) is {ms / f['floor_ms']:.1f}x the floor"
        out.append(line)
    for m, n in report["unavailable"].items():
        out.append(f"{LABELS[m]}: skipped ({n})")
    out += notes
    b = report.get("blas") or {}
    if b.get("warning"):
        out.append(f"! {b['warning']}")
    t = report["threads"]
    s = report["settings"]
    out += textwrap.wrap(f"median and interquartile range over the passes (of {s['passes']}; modes interleaved, order "
               f"rotated each pass) in which other processes used at most {s['load_threshold']:.0%} of the CPU, "
               f"or over all passes, flagged !, when none was that quiet; 'vs X' = X's time / this row's time "
               f"(>1: this row is faster); compile = time of the first {s['warmup_calls']} calls beyond "
               f"{s['warmup_calls']} steady calls (cold: fresh caches; warm cache: a new process reusing them); "
               f"other load = largest CPU share other processes used during the timed loops counted", 110)
    m = report["machine"]
    out.append(f"{report['date']}  {m['cpu']}, {m.get('cpus_usable', m['cpus'])} CPUs, python {m['python']}, "
               f"numpy {m['numpy']}, numba {m['numba']}; threads: " +
               (", ".join(f"{k} {v}" for k, v in t.items()) or "-") +
               (f"; tracejit's GEMMs: {b['summary']}" if b.get("summary") else ""))
    return out


def plot(report: dict, path: str) -> str | None:
    """Bar chart of ms per unit (log scale, IQR whiskers) per workload and mode; returns an error message
    instead of raising when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "--plot needs matplotlib: pip install 'tracejit[plot]'"
    rows = [r for r in report["results"] if "median_ms" in r]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(workloads) * max(1, len(modes)) / 3), 4.5))
    width = 0.8 / max(1, len(modes))
    for j, m in enumerate(modes):
        xs, ys, lo, hi = [], [], [], []
        for i, w in enumerate(workloads):
            r = next((r for r in rows if r["workload"] == w and r["mode"] == m), None)
            if r:
                xs.append(i + (j - (len(modes) - 1) / 2) * width)
                ys.append(r["median_ms"])
                lo.append(r["median_ms"] - r["p25_ms"])
                hi.append(r["p75_ms"] - r["median_ms"])
        ax.bar(xs, ys, width, yerr=[lo, hi], label=LABELS[m], capsize=2)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads)
    ax.set_yscale("log")
    ax.set_ylabel("ms per unit (median, IQR)")
    ax.set_title(f"tracejit bench, {report['date']}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None
