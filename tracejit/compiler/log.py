"""What the compiler tells the user while it works: each recompile's reason, and a line when a compile is slow.

TRACEJIT_LOGS chooses how much: unset, "1" or "on" (the default) prints one line per recompile and one when a
compile takes more than a second (what is compiling, then how long it took and how many kernels came from the
cache); "0" or "off" prints nothing; "2" or "verbose" also prints every compile's stage times. Lines go to
stderr, or above an active tqdm progress bar (tqdm.write) so the bar is not broken.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

SLOW_COMPILE_S = 1.0  # a compile that takes longer says so while it runs

OFF, ON, VERBOSE = 0, 1, 2
_LEVELS = {"": ON, "1": ON, "on": ON, "default": ON, "0": OFF, "off": OFF, "none": OFF, "2": VERBOSE,
           "verbose": VERBOSE, "all": VERBOSE}


def level() -> int:
    """The TRACEJIT_LOGS level (read on each message: messages are rare, and tests and users may change it)."""
    raw = os.environ.get("TRACEJIT_LOGS", "").strip().lower()
    if raw not in _LEVELS:
        raise ValueError(f"TRACEJIT_LOGS={raw!r}: choose one of off, on, verbose (or 0, 1, 2)")
    return _LEVELS[raw]


def _active_tqdm():
    std = sys.modules.get("tqdm.std")
    if std is None:
        return None
    bars = [b for b in list(getattr(std.tqdm, "_instances", ())) if not getattr(b, "disable", False)]
    return std.tqdm if bars else None


def emit(message: str, at: int = ON) -> None:
    """Print `tracejit: message` when the level is at least `at`."""
    if level() < at:
        return
    line = f"tracejit: {message}"
    bar = _active_tqdm()
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


class CompileProgress:
    """Around one compile (tracing, passes, and the first run, where Numba compiles the kernels): if it is
    still running after SLOW_COMPILE_S, say what is compiling; when it ends after that, say how long it took."""

    def __init__(self, what: str):
        self.what = what
        self.announced = False
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._timer = threading.Timer(SLOW_COMPILE_S, self._announce)
        self._timer.daemon = True

    def _announce(self):
        with self._lock:
            if self._timer is None:
                return
            self.announced = True
        emit(f"compiling {self.what} ...")

    def __enter__(self):
        if level() >= ON:
            self._timer.start()
        return self

    def finish(self, summary: str) -> None:
        """Stop the timer; `summary` (kernels, cache hits) is printed if the compile was slow."""
        with self._lock:
            self._timer.cancel()
            self._timer = None
        elapsed = time.perf_counter() - self.t0
        if self.announced or elapsed > SLOW_COMPILE_S:
            emit(f"compiled {self.what} in {elapsed:.1f} s{summary}")
        release_freed_memory()

    def __exit__(self, *exc):
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        return False


def release_freed_memory() -> None:
    """Hand the heap Numba's compiler freed back to the OS (glibc keeps it otherwise): a new LeNet variant left
    ~37 MB of resident memory behind, ~13 MB after this (what the compiled kernels themselves keep)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list = []


def _malloc_trim():
    if not _TRIM:
        try:
            _TRIM.append(ctypes.CDLL(None).malloc_trim)
        except (OSError, AttributeError):  # not glibc
            _TRIM.append(None)
    return _TRIM[0]


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux), for the memory a variant's compile added."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
