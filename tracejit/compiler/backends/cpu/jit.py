"""`njit` for the package's own kernels and helpers: one compiled specialization per argument *kind*, not per
constant.

Numba types a constant argument in jitted code as a literal (``Literal[int](64)``) and compiles the callee
again for every distinct literal combination it is called with: generated segments pass their shapes, transpose
flags and leading dimensions as constants, so on a cold cache the LeNet step compiled `blas.calls.gemm_at` for
14 signatures and `blas.segment.gemm_bias_act_par` (a parallel function) for 3 -- ~10 s of Numba time for code
that is the same each time. A `helper` dispatcher types each call with literals dropped and narrow signed
integers widened to intp, so a helper compiles once per array dtype/layout and is found in Numba's disk cache
by any later segment whatever its shapes (`python -m tracejit warmup` can fill it ahead of time).
"""

from __future__ import annotations

import numba
from llvmlite import binding as llvm
from numba.core import types
from numba.core.registry import CPUDispatcher


def host_avx512() -> bool:
    """Whether LLVM targets AVX-512 on this host: the features Numba compiles the package's kernels for (and keys
    its cache on; tests/isa's TRACEJIT_FAKE_ISA turns them off). Kernels whose best form differs between 16- and
    8-wide vectors freeze it into their code as a constant. NUMBA_CPU_FEATURES, when set, is what Numba compiles
    for (a kernel pack's build, kernel_pack.py), so it decides."""
    from numba.core import config

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


def _normal(t):
    t = types.unliteral(t)
    if isinstance(t, types.Integer) and t.signed and t.bitwidth < types.intp.bitwidth:
        return types.intp
    return t


class HelperDispatcher(CPUDispatcher):
    """CPUDispatcher whose calls from jitted code compile (and look up) normalized argument types."""

    def get_call_template(self, args, kws):
        return super().get_call_template(tuple(_normal(a) for a in args), {k: _normal(v) for k, v in kws.items()})


def helper(**options):
    """Decorator: ``numba.njit(**options)`` with a `HelperDispatcher` (the same options, caching included)."""

    def decorate(fn):
        disp = numba.njit(**options)(fn)
        disp.__class__ = HelperDispatcher
        return disp

    return decorate
