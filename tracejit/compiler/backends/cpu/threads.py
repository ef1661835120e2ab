"""Threading setup for parallel Numba kernels: the TBB layer (libtbb from the PyPI ``tbb`` wheel, loaded by
path before the first launch), else OpenMP with a short spin, workqueue only as a last resort.
The backend calls ``configure()`` before loading parallel kernels; ``info()`` says what was chosen.

Measured (shared 2-core AVX-512 machine, numba 0.68, OpenBLAS 0.3.31, benchmarks/bench_cpu_math.py):
  launch of a tiny prange kernel back to back: tbb 1.5-2.5 us, omp 1.3-1.9 us, workqueue 50-70 us; after
  5 ms idle: tbb 30-100 us, omp 110 us, workqueue 60-180 us.
  GEMM -> parallel tanh kernel -> GEMM (256x512 @ 512x512 float32 twice; the GEMMs alone take 1.45 ms):
  tbb 1.52 ms, omp with GOMP_SPINCOUNT=1000 1.55 ms (best; medians are noisier), omp with libgomp's
  default spin (300000) 7.2-8.0 ms: its idle workers spin against OpenBLAS's threads on 2 cores.
  ``configure()`` when already configured: 4-16 us.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import warnings

import numba
from numba.core import config as _numba_config

__all__ = ["configure", "get_num_threads", "info", "max_threads", "set_num_threads"]

ENV_THREADS = "TRACEJIT_NUM_THREADS"
ENV_LAYER = "TRACEJIT_THREADING_LAYER"  # force "tbb", "omp" or "workqueue" (benchmarks, debugging)
GOMP_SPINCOUNT = "1000"  # libgomp's default (300000 spins) starves OpenBLAS on small machines

_LAYERS = ("tbb", "omp", "workqueue")
_TBB_NAMES = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}

# Process-wide facts: Numba's threading layer can be chosen once per process, so this is global by nature.
_state: dict = {"layer": None, "tbb_library": None, "threads": None, "launched_by": None}
_local = threading.local()  # .defer: configure() in this thread chooses nothing and starts no pool


@contextlib.contextmanager
def no_launch():
    """configure() calls in this block (this thread) leave the pool alone: the backend's preparation thread imports
    modules that configure at import time, and the pool's starting thread matters -- Numba's TBB layer survives a
    fork only when it comes from the thread that started the pool (tiered compiles fork from the caller's)."""
    before = getattr(_local, "defer", False)
    _local.defer = True
    try:
        yield
    finally:
        _local.defer = before


def fork_unsafe() -> str | None:
    """Why a child forked from the calling thread now could not run parallel kernels (None: it can): Numba's TBB
    pool stops its workers before a fork and starts them again after only when the fork comes from the thread that
    started it; GNU OpenMP never survives one."""
    layer = _layer_launched()
    if layer is None or layer == "workqueue":
        return None
    if layer == "tbb" and _state["launched_by"] == threading.get_ident():
        return None
    if layer == "tbb":
        return "Numba's TBB pool was started by another thread"
    return f"Numba's {layer} pool does not survive a fork"


def max_threads() -> int:
    """Size of Numba's thread pool (NUMBA_NUM_THREADS, all cores by default); fixed when numba is imported."""
    return int(_numba_config.NUMBA_NUM_THREADS)


def _layer_launched() -> str | None:
    try:
        return numba.threading_layer()
    except ValueError:  # raised while no parallel kernel has launched the pool
        return None


def _tbb_candidates() -> list[str]:
    name = _TBB_NAMES.get(sys.platform, "libtbb.so.12")
    found = [name]  # a system, conda or LD_LIBRARY_PATH install resolves by name
    lib_dir = "Library/bin" if sys.platform == "win32" else "lib"
    for prefix in dict.fromkeys((sys.prefix, sys.exec_prefix, sys.base_prefix)):
        found.append(os.path.join(prefix, lib_dir, name))
    try:  # the wheel's own record of where it put the library
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            dist = distribution("tbb")
            found += [str(dist.locate_file(f)) for f in dist.files or () if f.name == name]
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return list(dict.fromkeys(found))


def _load_tbb() -> str | None:
    """dlopen libtbb by path. Numba's tbbpool links libtbb by soname, and the wheel installs it in
    <prefix>/lib, which is not on the loader path; once loaded, the soname resolves to this copy."""
    for path in _tbb_candidates():
        if os.path.sep in path and not os.path.exists(path):
            continue
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return path
        except OSError:
            continue
    return None


def _gomp_already_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return "libgomp" in maps.read()
    except OSError:
        return False


def _launch(layer: str) -> bool:
    """Start Numba's pool on `layer`; False (pool not started) if that layer cannot be loaded."""
    if layer == "tbb":
        _state["tbb_library"] = _load_tbb()
        if _state["tbb_library"] is None:
            return False
    if layer == "omp":
        # libgomp reads GOMP_SPINCOUNT once, when it is loaded by the first omp launch; a user's value wins.
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
        if _gomp_already_loaded():
            warnings.warn("libgomp was loaded before tracejit configured threads: GOMP_SPINCOUNT is not "
                          "applied, and parallel kernels may spin against BLAS threads", stacklevel=3)
    _numba_config.THREADING_LAYER = layer
    try:
        numba.get_num_threads()  # launches the pool: the layer is fixed from here on
    except ValueError:
        return False
    return True


def _forced_layer() -> str:
    """The layer TRACEJIT_THREADING_LAYER (or Numba's own variable) names, lower-case; "" for none or "default"."""
    forced = (os.environ.get(ENV_LAYER) or os.environ.get("NUMBA_THREADING_LAYER") or "").strip().lower()
    return "" if forced == "default" else forced


def _ready_layers() -> None:
    """What `_launch` prepares, without starting the pool: libtbb loaded by path (and the layer a user forces set),
    so that a pool Numba starts by itself -- a cached parallel function's reload hook starts it in whichever thread
    loads that function first -- gets the layer configure() would choose."""
    forced = _forced_layer()
    if forced:
        if forced in _LAYERS:
            _numba_config.THREADING_LAYER = forced
        if forced != "tbb":
            if forced == "omp":
                os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
            return
    if _state["tbb_library"] is None:
        _state["tbb_library"] = _load_tbb()
    if _state["tbb_library"] is None:  # (Numba will fall back to OpenMP: with a short spin, as _launch sets it)
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)


def _requested_threads() -> int:
    if _state["threads"] is not None:
        return _state["threads"]
    raw = os.environ.get(ENV_THREADS, "").strip()
    if not raw:
        return max_threads()
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_THREADS}={raw!r} is not an integer number of threads") from None
    if n < 1:
        raise ValueError(f"{ENV_THREADS}={n} must be at least 1")
    if n > max_threads():
        warnings.warn(f"{ENV_THREADS}={n} exceeds Numba's pool of {max_threads()} threads "
                      f"(NUMBA_NUM_THREADS); using {max_threads()}", stacklevel=3)
        n = max_threads()
    _state["threads"] = n
    return n


def configure() -> dict:
    """Choose and start the threading layer (once), then apply the thread count to the calling thread.

    Idempotent and cheap after the first call (a few us). Numba's thread count is per calling thread, so
    a thread other than the one that configured should call it again before running kernels. Returns
    ``info()``.

    >>> configure()["layer"] in ("tbb", "omp", "workqueue")
    True
    """
    if _state["layer"] is None:
        launched = _layer_launched()
        if launched is None and getattr(_local, "defer", False):
            _ready_layers()  # (no_launch: a later configure(), or Numba itself, starts the pool)
            return info()
        if launched is None:
            _state["launched_by"] = threading.get_ident()
            # A layer named in TRACEJIT_THREADING_LAYER (or Numba's own variable) is used or fails loudly.
            forced = _forced_layer()
            if forced and forced not in _LAYERS:
                raise ValueError(f"{ENV_LAYER}={forced!r}: choose one of {', '.join(_LAYERS)}")
            for layer in (forced,) if forced else _LAYERS:
                if _launch(layer):
                    break
            else:
                raise RuntimeError(f"no Numba threading layer could be started (tried {forced or _LAYERS})")
            launched = _layer_launched()
            if launched == "workqueue" and not forced:
                warnings.warn("parallel kernels run on Numba's workqueue layer (neither TBB nor OpenMP "
                              "loaded): launches cost ~100 us and concurrent calls from two threads abort; "
                              "`pip install tbb` fixes this", stacklevel=2)
        # else: something ran a parallel kernel before us; the layer it got is final.
        _state["layer"] = launched
    numba.set_num_threads(_requested_threads())
    return info()


def set_num_threads(n: int) -> None:
    """Use `n` threads (1..max_threads()) for parallel kernels from now on, on every thread that calls
    ``configure()``. ``set_num_threads(1)`` makes parallel kernels run serially."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_threads():
        raise ValueError(f"set_num_threads({n!r}): expected an int between 1 and {max_threads()}")
    _state["threads"] = n
    configure()


def get_num_threads() -> int:
    """Number of threads parallel kernels use on the calling thread (configures threading if needed)."""
    if _state["layer"] is None:
        configure()
    return int(numba.get_num_threads())


def info() -> dict:
    """What ``configure()`` chose: ``{"layer", "threads", "max_threads", "tbb_library", "gomp_spincount"}``;
    layer is None before configuration."""
    layer = _state["layer"] or _layer_launched()
    return {
        "layer": layer,
        "threads": int(numba.get_num_threads()) if layer else _requested_threads(),
        "max_threads": max_threads(),
        "tbb_library": _state["tbb_library"],
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT") if layer == "omp" else None,
    }
