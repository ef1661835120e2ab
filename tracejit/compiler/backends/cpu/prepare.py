"""Getting the CPU backend ready in the background, from the moment a function is compiled for it.

A process's first compiled call paid ~1.3 s of CPU (of ~2 s with every cache warm) before tracing even mattered:
importing the program machinery and initializing Numba's CPU target (typing and lowering registries, SciPy's BLAS;
the first function Numba compiles or loads would do it). None of that depends on the step.
`tracejit.compile(fn, backend="cpu")` makes the backend object, which starts this import on a daemon thread; the
user's code between that and the first call (building the model and the data, eager steps) runs meanwhile, and a
first call that comes sooner waits for the rest (`wait`, before the backend imports anything itself), so it is never
slower than before. Most of the work is Python code holding the GIL, so it overlaps with NumPy work and I/O, not
with pure-Python work. TRACEJIT_PREPARE=0 turns it off.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _prepare() -> None:
    try:
        from . import threads

        with threads.no_launch():  # (the pool starts in the caller's thread: threads.no_launch)
            _imports()
    except Exception:  # the foreground import raises it again, where the user sees it
        pass


def _imports() -> None:
    from . import (
        program,  # noqa: F401  (blas.calls registers the float32 GEMM entry: Numba's first build)
        vecmath,  # noqa: F401  (what generated kernels import, and program does not)
    )
    from .blas import control, segment  # noqa: F401

    control.threads_for(0)  # finds the BLAS libraries (threadpoolctl, ~6 ms), as the first program would
    # Numba's CPU target: its typing and lowering registries (numba.np.arraymath, SciPy's BLAS, ...), which the
    # first function it compiles or loads from its cache would set up (~0.45 s of a warm first call otherwise)
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import cpu_target

    with global_compiler_lock:
        cpu_target.typing_context.refresh()
        cpu_target.target_context.refresh()


def start() -> threading.Thread | None:
    """Start the preparation once per process (None when it already started, or TRACEJIT_PREPARE=0)."""
    global _thread
    with _lock:
        if _thread is not None or os.environ.get("TRACEJIT_PREPARE", "1") == "0":
            return None
        _thread = threading.Thread(target=_prepare, name="tracejit-prepare", daemon=True)
        _thread.start()
        return _thread


def wait() -> None:
    """Until the preparation (if any) has finished: the compiling thread then imports nothing concurrently."""
    t = _thread
    if t is not None and t is not threading.current_thread():
        t.join()
