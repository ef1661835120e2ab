"""What tiered execution's compile process (compiler/background.py) needs of a CPU program, behind the backend
object (CpuBackend.tier_*): whether a child process can compile its kernels for it (`unusable`), what the child
rebuilds it from (`job`: its graph, the size-dependent choices its rendering made, each generated step's final
source, the thread count), the rebuild itself (`rebuild`: the same steps, the same sources -- cache hits on the
same files, so Numba's index stays valid for the parent), how many kernels Numba found in its disk cache
(`loads`), and one BLAS thread for the reference steps that run meanwhile (`one_blas_thread`)."""

from __future__ import annotations

import contextlib
import os

from .. import cache


def unusable(program, steps=None) -> str | None:
    """Why a child process cannot compile `program`'s kernels (or those of its generated `steps`) for this one
    (None: it can): both reach them through the kernel cache's files and Numba's disk cache."""
    if getattr(program, "decisions", None) is None or not hasattr(program, "_generated"):
        return "not a CPU program"
    steps = program._generated() if steps is None else steps
    if not steps:
        return "no generated kernels"
    home = cache.configured_dir()
    for s in steps:
        fn = s.fn
        filename = getattr(getattr(getattr(fn, "py_func", None), "__code__", None), "co_filename", "")
        if os.path.dirname(filename) != home:
            return "the kernel cache is not writable (kernels compile in memory or a private directory)"
        if type(getattr(fn, "_cache", None)).__name__ == "NullCache":
            return "Numba cannot cache the kernels"
    return None


def loads(program) -> tuple[int, int]:
    """(kernel compilations Numba found in its disk cache, ones it compiled) for `program`'s generated kernels."""
    hits = misses = 0
    for s in program._generated():
        hits += sum(getattr(s.fn, "_cache_hits", {}).values())
        misses += sum(getattr(s.fn, "_cache_misses", {}).values())
    return hits, misses


def job(program) -> dict:
    from . import threads

    return {"graph": program.graph, "decisions": program.decisions, "segments": program.segments,
            "steps": [(type(s).__name__, s.source, s.sz) for s in program._generated()],
            "threads": threads.get_num_threads()}


def rebuild(job: dict, backend):
    """The parent's program, from its graph, decisions and final sources (the kernels load from the cache)."""
    from ..sizes import Decisions
    from . import threads
    from .program import CpuProgram, KernelStep, SegmentStep, _build, _load_generated

    threads.configure()
    if threads.get_num_threads() != job["threads"]:
        threads.set_num_threads(job["threads"])  # (segments pass it and split GEMMs by it)
    graph = job["graph"]
    decide = Decisions(job["decisions"])
    fallbacks: list = []
    make_step, units = _build(graph, job["segments"], decide, fallbacks)
    if units is None:
        units = [(make_step(n), n.inputs, n.outputs) for n in graph.nodes]
    generated = [s for s, *_ in units if isinstance(s, (KernelStep, SegmentStep))]
    kinds = [type(s).__name__ for s in generated]
    if kinds != [k for k, _, _ in job["steps"]] or decide.made != job["decisions"]:
        raise RuntimeError(f"the rebuilt program differs from the parent's: steps {kinds} vs "
                           f"{[k for k, _, _ in job['steps']]}")
    for s, (_, source, sz) in zip(generated, job["steps"]):
        s.source, s.sz = source, sz
    _load_generated(generated, None, None, job["segments"])
    prog = CpuProgram(graph, units=units, backend=backend)
    prog.fallbacks = fallbacks
    return prog


@contextlib.contextmanager
def one_blas_thread():
    """NumPy's GEMMs on two OpenBLAS threads spin on both cores against the compile (LeNet's reference step at
    load ~7 on 2 cores: 0.45-0.64 s wall and 0.18-0.28 CPU s with two threads, 0.09-0.11 s and 0.04 CPU s with
    one). Compiled steps set their own thread counts; others get the count back."""
    from .blas import control as blas

    before = blas._current
    blas.set_threads(1)
    try:
        yield
    finally:
        blas.set_threads(before if before is not None else blas._max)  # (None: the library's default, all)
