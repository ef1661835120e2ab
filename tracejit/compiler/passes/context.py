"""The target the passes run for: fusion passes ask it which patterns it runs natively, instead of knowing any
backend's limits themselves (passes import no backend).

`run_pipeline(g, target=backend)` sets it while the passes run; `supports(pattern, attrs)` answers True or the
reason the target gives. With no target (pass tests, graphs written by hand) every pattern whose structure matches
is fused: a backend handed a pattern it does not run natively runs its body op by op (the CPU backend notes it
among its fallbacks), so no target means "structural rules only" -- fusion the reference backend would run --
never a wrong result.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

_TARGET: ContextVar = ContextVar("tracejit_pass_target", default=None)


@contextmanager
def targeting(backend):
    """Run the passes inside for `backend` (None: no target)."""
    token = _TARGET.set(backend)
    try:
        yield
    finally:
        _TARGET.reset(token)


def target():
    return _TARGET.get()


def target_name() -> str:
    t = _TARGET.get()
    if t is None:
        return "no"
    name = getattr(t, "name", None) or getattr(t, "__name__", None) or type(t).__name__
    return str(name).rpartition(".")[2]


def supports(pattern, attrs: dict) -> bool | str:
    """True when the target runs `pattern` natively with these attrs (always, with no target), else why not."""
    t = _TARGET.get()
    if t is None:
        return True
    answer = t.supports(pattern, attrs)
    if answer is True:
        return True
    return str(answer) if answer else f"pattern {pattern.value} is not supported"


def reorders_sums() -> bool:
    """May the passes compute a float sum in another order than eager code (one GEMM over the concatenated time
    steps for a sum of per-step GEMMs)? Yes with no target; a backend that is an exact oracle says no."""
    t = _TARGET.get()
    return t is None or bool(getattr(t, "reorders_sums", True))


def has_loop_feature(name: str) -> bool:
    """Does the target's loop kernel lowering render extension `name` ("strided", "rows")? Yes with no target."""
    t = _TARGET.get()
    return t is None or name in getattr(t, "loop_features", ())
