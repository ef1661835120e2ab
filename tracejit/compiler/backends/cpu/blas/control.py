"""BLAS thread control for compiled programs.

On 2 cores, OpenBLAS's own threads and Numba's TBB workers spin against each other: a 64x400x120
GEMM took 24 ms right after a parallel kernel with 2 BLAS threads and 0.07 ms with 1. Compiled steps
therefore run small GEMMs on one BLAS thread and give big ones (where 2 threads pay) all of them:
on a quiet machine the MLP step (128x784x512 GEMMs) took 5.7 ms with two threads for GEMMs above 40 MFLOP
and 9.0 ms with one, but on a machine loaded by other processes two BLAS threads made it 10x slower.
TRACEJIT_BLAS_2T_FLOPS moves the threshold (`inf`: always one thread).

Generated segments go one step further (SPLIT_GEMM_FLOPS): a big GEMM is split into one block per thread,
each a one-thread BLAS call inside Numba's pool, so OpenBLAS's threads never wake. MLP step, fresh process
each, alternated 6 times: 2.88-3.21 ms split, 2.87-4.94 ms with 2 BLAS threads (the Adam kernel after the
GEMMs: 0.28-0.31 ms vs 0.38-0.49 ms, when OpenBLAS's spinning thread shared its core).

Which kernels the BLAS runs matters as much: `describe()` says which library the compiled GEMMs call and
with which core kernels, and `pinned_note()` warns when OPENBLAS_CORETYPE holds OpenBLAS to older ones than
the CPU supports (on a 2-core AVX-512 EPYC, `OPENBLAS_CORETYPE=Haswell` made 128x784 @ 784x512 take 1.13 ->
1.68 ms on one thread and the MLP benchmark step 1.5 -> 2.4 ms). On such CPUs compiled float32 GEMMs run
tracejit's own kernel anyway (`blas.calls.sgemm_choice`); float64 ones and NumPy's do not.
"""

from __future__ import annotations

import os

_setters: list | None = None
_max = 1
_current = None
BIG_GEMM_FLOPS = float(os.environ.get("TRACEJIT_BLAS_2T_FLOPS", "40e6"))  # see module doc
# Generated segments split GEMMs this big over Numba's pool, one BLAS thread per block
# (blas.segment.gemm_nt_par); `inf` gives them all BLAS threads above BIG_GEMM_FLOPS instead.
# 4 MFLOP: LeNet's fully connected layers (64x400x120, 6 MFLOP) split too, its three segments 0.39 -> 0.31 ms;
# 1 MFLOP measured the same.
SPLIT_GEMM_FLOPS = float(os.environ.get("TRACEJIT_SPLIT_GEMM_FLOPS", "4e6"))


def _init():
    global _setters, _max
    try:
        from threadpoolctl import ThreadpoolController

        ctls = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    except Exception:  # threadpoolctl missing or a BLAS it does not know: leave BLAS alone
        ctls = []
    _setters = [c.set_num_threads for c in ctls]
    _max = max([c.num_threads for c in ctls] or [1])


def set_threads(n: int) -> None:
    """Set every loaded BLAS library to `n` threads (a no-op when it already is)."""
    global _current
    if _setters is None:
        _init()
    n = max(1, min(n, _max))
    if n != _current:
        for s in _setters:
            s(n)
        _current = n


def describe() -> list[dict]:
    """The BLAS libraries loaded in this process: ``{"library", "version", "kernels", "threads", "used"}``
    each, ``used`` True for the one compiled GEMMs call (SciPy's, through Numba). Loads SciPy's BLAS if it
    is not loaded yet (the first compiled GEMM would)."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (what Numba's GEMMs call; loads its OpenBLAS)
        from threadpoolctl import threadpool_info
    except Exception:  # no SciPy, no threadpoolctl: nothing to say
        return []
    out = []
    for i in threadpool_info():
        if i.get("user_api") != "blas":
            continue
        path = i.get("filepath") or ""
        out.append({"library": f"{i.get('internal_api')} {i.get('version')}", "kernels": i.get("architecture"),
                    "threads": i.get("num_threads"), "path": path,
                    "used": "scipy" in os.path.basename(os.path.dirname(path)).lower()})
    return out


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# OpenBLAS core names whose kernels use AVX-512 (what OpenBLAS picks itself on such a CPU)
_AVX512_CORES = {"skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5"}


def pinned_note(libs: list[dict] | None = None, flags: set[str] | None = None) -> str | None:
    """A warning when OPENBLAS_CORETYPE makes the BLAS that compiled GEMMs call run kernels older than the CPU
    supports (AVX2 kernels on an AVX-512 CPU); None otherwise."""
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    if not pinned:
        return None
    libs = describe() if libs is None else libs
    flags = _cpu_flags() if flags is None else flags
    used = [b for b in libs if b["used"] and "openblas" in b["library"].lower()]
    if not used or "avx512f" not in flags or str(used[0]["kernels"]).lower() in _AVX512_CORES:
        return None
    return (f"OPENBLAS_CORETYPE={pinned} holds OpenBLAS to its {used[0]['kernels']} kernels on a CPU with AVX-512 "
            f"(GEMMs ~1.7x slower): compiled float32 GEMMs run tracejit's own kernel, but float64 ones and "
            f"NumPy's run the held-back kernels; unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE where your OpenBLAS "
            f"is recent enough for this CPU")


def threads_for(flops: float) -> int:
    if _setters is None:
        _init()
    return _max if flops >= BIG_GEMM_FLOPS else 1
