"""Recording for `python -m tracejit report`: run a script while noting every CompiledFunction and the
arguments of its calls, then profile each variant and time compiled against eager steps."""

from __future__ import annotations

import contextlib
import inspect
import os
import runpy
import sys
import time
import traceback
from dataclasses import dataclass, field

from ..compiler import api, runtime

# ----------------------------------------------------------------------------------------------- recording


@dataclass
class Record:
    """One CompiledFunction seen during the run and the arguments of its calls."""

    cf: api.CompiledFunction
    calls: int = 0
    last_args: tuple | None = None
    variant_args: dict = field(default_factory=dict)  # variant number -> args of its last compiled run
    variant_runs: dict = field(default_factory=dict)  # variant number -> compiled runs
    # filled in after the script ran
    steps: dict | None = None  # step timing: {"compiled": [...], "eager": [...], "variant", "note"}
    profiles: dict = field(default_factory=dict)  # variant number -> per-step seconds, or why not profiled


class Recorder:
    """While entered, patches CompiledFunction so that every instance created and every top-level call is
    recorded. It holds strong references: the report is built after the script's objects would be gone."""

    def __init__(self):
        self.records: list[Record] = []
        self._index: dict[int, Record] = {}
        self._saved = None

    def record(self, cf) -> Record:
        r = self._index.get(id(cf))
        if r is None:
            r = self._index[id(cf)] = Record(cf)
            self.records.append(r)
        return r

    def __enter__(self) -> Recorder:
        CF = api.CompiledFunction
        init0, call0, run0 = self._saved = (CF.__init__, CF.__call__, CF._run)
        rec = self

        def __init__(cf, *a, **k):
            init0(cf, *a, **k)
            rec.record(cf)

        def __call__(cf, *args, **kwargs):
            top = api.T.current_tracer() is None  # calls inlined into another trace are not steps
            out = call0(cf, *args, **kwargs)
            if top:
                r = rec.record(cf)
                r.calls += 1
                r.last_args = cf._bind(args, kwargs)
            return out

        def _run(cf, v, args):
            out = run0(cf, v, args)
            r = rec.record(cf)
            r.variant_args[v.number] = args
            r.variant_runs[v.number] = r.variant_runs.get(v.number, 0) + 1
            return out

        CF.__init__, CF.__call__, CF._run = __init__, __call__, _run

        def program_init(p, *a, **k):
            init_p(p, *a, **k)
            units = k.get("units", a[2] if len(a) > 2 else None)
            if units is not None:  # which values each step reads and writes: maps steps back to nodes
                p._report_units = [(tuple(ins), tuple(outs)) for _, ins, outs in units]

        init_p = self._saved_program = runtime.Program.__init__
        runtime.Program.__init__ = program_init
        return self

    def __exit__(self, *exc) -> None:
        CF = api.CompiledFunction
        CF.__init__, CF.__call__, CF._run = self._saved
        runtime.Program.__init__ = self._saved_program


def run_script(script: str, args: list[str], recorder: Recorder) -> tuple[int, str | None]:
    """Run `script` as __main__ with sys.argv set, recording compiled calls. Returns (exit code, traceback)."""
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script] + list(args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        with recorder:
            runpy.run_path(script, run_name="__main__")
        return 0, None
    except SystemExit as e:
        code = 0 if e.code is None else (e.code if isinstance(e.code, int) else 1)
        return code, None if code == 0 else f"SystemExit({e.code!r})"
    except Exception:
        return 1, traceback.format_exc()
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


# ----------------------------------------------------------------------------------------------- measuring


def _guard_failure(v, args) -> str | None:
    # guards that depend on the call's arguments take them (newer api.py); older ones take none
    takes_args = len(inspect.signature(v.guard_failure).parameters) > 0
    return v.guard_failure(args) if takes_args else v.guard_failure()


def profile_variants(r: Record, repeat: int) -> None:
    """Per-step time of every variant that ran, with the arguments of its last run (no state is written)."""
    for v in r.cf.history:
        args = r.variant_args.get(v.number)
        why = "it never ran" if args is None else _guard_failure(v, args)
        if why:
            r.profiles[v.number] = f"not profiled: {why}"
            continue
        try:
            arrays = [b.read(args) for b in v.bindings]
            r.profiles[v.number] = v.program.profile(arrays, repeat)
        except Exception as e:  # a report should not die on one variant
            r.profiles[v.number] = f"not profiled: {type(e).__name__}: {e}"


@contextlib.contextmanager
def _all_eager():
    """Compiled functions that the eager step calls run eagerly too (else eager time would include them)."""
    CF = api.CompiledFunction
    saved = CF.__call__
    CF.__call__ = lambda cf, *a, **k: cf.fn(*a, **k)
    try:
        yield
    finally:
        CF.__call__ = saved


def time_steps(r: Record, repeat: int) -> None:
    """Compiled calls vs eager `cf.fn` calls with the last call's arguments, interleaved (both mutate state)."""
    cf, args = r.cf, r.last_args
    if args is None:
        return
    n_before = len(cf.history)
    compiled, eager = [], []
    try:
        cf(*args)
        with _all_eager():
            cf.fn(*args)  # warm-up of both
        for _ in range(repeat):
            t0 = time.perf_counter()
            cf(*args)
            compiled.append(time.perf_counter() - t0)
            with _all_eager():
                t0 = time.perf_counter()
                cf.fn(*args)
                eager.append(time.perf_counter() - t0)
    except Exception as e:
        r.steps = {"compiled": [], "eager": [], "variant": None, "note": f"timing failed: {type(e).__name__}: {e}"}
        return
    key = cf._key(args)
    ran = next((v for v in reversed(cf.history) if v.key == key and _guard_failure(v, args) is None), None)
    notes = []
    if key in cf.eager_keys or ran is None:
        notes.append("this call runs eagerly (fallback), so both rows time eager code")
    if len(cf.history) > n_before:
        notes.append(f"timing compiled {len(cf.history) - n_before} new variant(s): {cf.history[-1].reason}")
    r.steps = {"compiled": compiled, "eager": eager, "variant": ran.number if ran else None, "note": "; ".join(notes)}
