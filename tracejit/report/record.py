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

from ..compiler import api

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
        return self

    def __exit__(self, *exc) -> None:
        CF = api.CompiledFunction
        CF.__init__, CF.__call__, CF._run = self._saved


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
        if args is None:
            r.profiles[v.number] = "not profiled: it never ran"
            continue
        with _mode_of(v):
            why = _guard_failure(v, args)
        if why:
            r.profiles[v.number] = f"not profiled: {why}"
            continue
        try:
            r.profiles[v.number] = v.program.profile(v.inputs(args), repeat)
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


def most_run_variant(r: Record, number: int | None = None):
    """The variant to time: `number` if the user named one that exists, else the one that ran most often."""
    by_number = {v.number: v for v in r.cf.history}
    if number is not None and number in by_number:
        return by_number[number]
    ran = [v for v in r.cf.history if r.variant_runs.get(v.number)]
    return max(ran, key=lambda v: (r.variant_runs[v.number], v.number)) if ran else None


@contextlib.contextmanager
def _mode_of(v):
    """Modules in the train/eval mode and grad mode the variant was compiled for (and ran in), restored after:
    a script that ends in model.eval() must not make the report time an eval step."""
    from .. import autograd

    mods = [(m, m.training) for m, _, _ in v.state_guard.mods]
    for m, training in zip([m for m, _ in mods], [t for _, t, _ in v.state_guard.mods]):
        object.__setattr__(m, "training", training)
    try:
        with autograd.set_grad_enabled(bool(v.key[0])):
            yield
    finally:
        for m, training in mods:
            object.__setattr__(m, "training", training)


def _mode_words(v) -> str:
    modes = sorted({"train" if t else "eval" for _, t, _ in v.state_guard.mods})
    return (f"{'/'.join(modes)} mode" if modes else "no modules") + (", grad mode off" if not v.key[0] else "")


def time_steps(r: Record, repeat: int, variant: int | None = None) -> None:
    """Compiled calls vs eager `cf.fn` calls, interleaved (both mutate state), for the variant that ran most
    (or the one named), with the arguments of its last run and in the mode it ran in."""
    cf = r.cf
    v = most_run_variant(r, variant)
    args = r.variant_args.get(v.number) if v is not None else r.last_args
    if args is None:
        return
    n_before = len(cf.history)
    compiled, eager = [], []
    mode = _mode_of(v) if v is not None else contextlib.nullcontext()
    try:
        with mode:
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
    notes = []
    if v is None:
        notes.append("no variant ran compiled (every call ran eagerly), so both rows time eager code")
    else:
        runs = r.variant_runs.get(v.number, 0)
        total = sum(r.variant_runs.values())
        chosen = "the variant you named" if variant == v.number else "the variant that ran most"
        notes.append(f"timing variant {v.number}, {chosen} ({runs} of {total} compiled calls), in {_mode_words(v)}, "
                     f"with the arguments of its last run")
    if len(cf.history) > n_before:
        notes.append(f"timing compiled {len(cf.history) - n_before} new variant(s): {cf.history[-1].reason}")
    r.steps = {"compiled": compiled, "eager": eager, "variant": v.number if v else None, "note": "; ".join(notes)}
