"""The math functions generated CUDA kernels call as `M.exp(x)`, `M.tanh(x)`, ...

On a GPU `M` is Python's `math` module, which numba-cuda compiles to libdevice (`expf` for float32, `exp` for
float64). In the simulator kernels run as Python, where `math.log(0.0)` raises and returns Python floats: there
`M` holds NumPy's scalar functions instead, with IEEE results (inf, NaN) and no warnings, so the simulated kernels
keep the vocabulary's NaN/inf rules and float32 arithmetic.
"""

from __future__ import annotations

import math
import types

import numpy as np

from .driver import simulated


def _quiet(fn):
    def f(x):
        with np.errstate(all="ignore"):
            return fn(x)
    f.__name__ = fn.__name__
    return f


def _quiet2(fn):
    def f(x, y):
        with np.errstate(all="ignore"):
            return fn(x, y)
    f.__name__ = fn.__name__
    return f


def _erf(x):
    return type(x)(math.erf(x)) if isinstance(x, np.floating) else math.erf(x)


def _numpy_math():
    return types.SimpleNamespace(exp=_quiet(np.exp), log=_quiet(np.log), sqrt=_quiet(np.sqrt), tanh=_quiet(np.tanh),
                                 sin=_quiet(np.sin), cos=_quiet(np.cos), erf=_erf,
                                 trunc=_quiet(np.trunc), fmod=_quiet2(np.fmod))


M = _numpy_math() if simulated() else math
