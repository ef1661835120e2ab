"""Backends: each turns an optimized Graph into a Program (`program.run(arrays) -> arrays`).

`reference` interprets with the op table's NumPy refs (the oracle); `cpu` renders Numba kernels.
"""

from __future__ import annotations

import importlib

from . import numba_cache

numba_cache.install()  # before any cached Numba function is compiled or loaded: damaged cache files are misses

_BACKENDS = {
    "reference": "tracejit.compiler.backends.reference",
    "cpu": "tracejit.compiler.backends.cpu",
    "cuda": "tracejit.compiler.backends.cuda",
}


def get_backend(name: str):
    """The backend module for `name`; it provides `compile_graph(graph, dumper=None, timings=None)`."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_BACKENDS)}")
    try:
        return importlib.import_module(_BACKENDS[name])
    except ImportError as e:
        raise RuntimeError(f"backend {name!r} is not available: {e}") from e


def available() -> list[str]:
    out = []
    for name in _BACKENDS:
        try:
            get_backend(name)
            out.append(name)
        except RuntimeError:
            pass
    return out
