"""The CPU backend: Numba kernels on CPU threads.

    render.py    fused elementwise/reduce nodes (kernel.LoopKernel) as Numba loop source; the preludes
    spelling.py  how generated code spells the scalar vocabulary (tracejit/scalar.py) the op table's exprs use
    capabilities.py  supports(pattern, attrs): the window/GEMM patterns its kernels run (the passes ask)
    segment.py   runs of nodes as ONE generated function (a step costs one dispatch)
    program.py   the Program: steps in order, loaded through the disk cache (../cache.py)
    ahead.py     what a program's first run will compile (a dry run), so several processes can compile it
    vecmath.py   vectorizable float32/float64 exp, log, tanh, ... that generated loops call
    views.py     array headers for generated code (views, empty, address tables)
    index.py     gather/scatter/argmax/uniform helpers and the index checks
    threads.py   the threading layer (TBB, else OpenMP) and thread count
    blas/        GEMM: tracejit's own float32 kernel (gemm.py), the BLAS entry (calls.py), thread control
                 (control.py), GEMMs for generated segments (segment.py)
    eager.py     kernels for eager ops (window kernels, GEMM thread policy): `eager_kernels()`
    kernel_pack.py  prebuilt machine code of the package's own kernels per ISA (packs/), so fresh installs skip
                 compiling them
    window/      conv2d/pooling kernels and their backward (conv, backward, weight_grad, im2col, pool) and the
                 steps that call them for window nodes (steps.py)

`CpuBackend` (below) is the backend object (compiler/backends: the protocol); its buffers are NumPy arrays.
"""

import threading

from .. import Backend, numba_cache
from . import kernel_pack
from .capabilities import LOOP_FEATURES
from .capabilities import supports as _supports
from .spelling import SPELLING

_EAGER_LOCK = threading.Lock()
numba_cache.install()  # before any cached Numba function is compiled or loaded: damaged cache files are misses
kernel_pack.register()  # a miss on one of the package's kernels takes its prebuilt code when a pack fits


class CpuBackend(Backend):
    """Numba kernels on CPU threads; buffers are plain NumPy arrays (the CPU device)."""

    name = "cpu"
    scalar_spelling = SPELLING  # how its generated code spells the op table's scalar expressions
    loop_features = LOOP_FEATURES  # strided loads / cat stores and row kernels (render.py)
    _eager = None  # eager_kernels(), once loaded

    def __init__(self):
        super().__init__()
        from .prepare import start

        start()  # import the program machinery and initialize Numba while the user's code runs on

    def size_reuse(self):
        from ..sizes import SizeReuse

        return SizeReuse()

    def compile(self, graph, dumper=None, timings=None, sizes=None):
        from .prepare import wait

        wait()  # never import the program machinery in two threads at once
        from . import heap
        from .program import compile_graph

        heap.configure()  # a step's freed arrays stay in the heap for the next step (heap.py)

        return compile_graph(graph, dumper=dumper, timings=timings, backend=self, sizes=sizes)

    def warm_helpers(self, dtypes) -> None:
        """Compile (or load) the helpers `python -m tracejit warmup`'s tiny steps do not reach: the multi-tensor
        kernels' argument tables at both tuple sizes."""
        import numpy as np

        from . import views

        for dt in dtypes:
            views.addresses([np.zeros(1, dt)] * (views.CHUNKS[0] + 1))
            views.addresses([np.zeros(1, dt)])

    # tiered execution's compile process (compiler/background.py): see tiering.py
    def tier_unusable(self, program) -> str | None:
        from . import tiering

        return tiering.unusable(program)

    def compile_work(self, program, inputs) -> list:
        """The generated functions the first run will compile, each with the argument types it will see (a dry
        run with their nodes on the reference backend: ahead.py); they compile into Numba's disk cache."""
        if getattr(program, "decisions", None) is None:
            return []  # (not a CPU program)
        from . import ahead

        return ahead.work(program, inputs)

    def tier_fork_unsafe(self) -> str | None:
        """Why a compile process forked from the calling thread now would be unsafe (None: it is safe)."""
        from . import threads

        return threads.fork_unsafe()

    def tier_job(self, program) -> dict:
        from . import tiering

        return tiering.job(program)

    def tier_rebuild(self, job: dict):
        from .prepare import wait

        wait()
        from . import tiering

        return tiering.rebuild(job, self)

    def tier_loads(self, program) -> tuple[int, int]:
        from . import tiering

        return tiering.loads(program)

    def tier_reference_calls(self):
        """A context for the reference calls that run while the compile process works: one BLAS thread."""
        from . import tiering

        return tiering.one_blas_thread()

    def supports(self, pattern, attrs) -> bool | str:
        return _supports(pattern, attrs)  # its kernels' limits: capabilities.py

    def eager_kernels(self) -> dict:
        """Shape-generic window kernels, GEMM thread policy for eager ops (eager.py), warmed up and checked
        against the refs on first use."""
        with _EAGER_LOCK:  # (a background load and a caller of run_eager may ask at once)
            if self._eager is None:
                from .prepare import wait

                wait()  # (the backend's own preparation thread imports the same BLAS/Numba machinery)
                from . import eager

                eager.warm_up()
                self._eager = dict(eager.KERNELS)
        return self._eager

    def prebuilt(self) -> str | None:
        """The kernel pack (kernel_pack.py) whose machine code serves the package's kernels here, or None."""
        pack, _ = kernel_pack.choose()
        return pack.target if pack is not None else None

    def build_prebuilt(self, targets, out_dir=None, dtypes=("float32",)) -> list:
        """Kernel packs for LLVM targets (x86-64-v3, x86-64-v4), each built in a fresh process."""
        return [kernel_pack.build(t, out_dir or kernel_pack.PACK_DIR, tuple(dtypes)) for t in targets]

    def describe(self) -> dict:
        import os
        import platform

        from . import threads
        from .blas import calls, control

        th = threads.configure()
        libs = control.describe()
        used = next((b for b in libs if b["used"]), None)
        sgemm, why = calls.sgemm_choice()
        used_s = used and f"{used['library']} ({used['kernels']} kernels)"
        f32 = "tracejit's own" if sgemm == "tracejit" else used_s
        note = control.pinned_note(libs)
        lines = [f"threads: {th.get('threads')} ({th.get('layer')} threading layer); set TRACEJIT_NUM_THREADS to "
                 f"change"]
        lines += [f"BLAS for compiled GEMMs: {b['library']}, {b['kernels']} kernels ({b['path']})"
                  for b in libs if b["used"]]
        lines.append(f"float32 GEMMs: {calls.sgemm_description()}; set {calls.ENV_SGEMM}=tracejit or openblas to "
                     f"choose")
        from . import heap

        lines.append(f"heap: {heap.configure()}; set {heap.ENV}=system to leave "
                     f"malloc alone")
        pack, notes = kernel_pack.choose()
        lines.append(f"kernel pack (the package's kernels prebuilt): {pack.target if pack else 'none'} ("
                     + "; ".join(notes) + f"); set {kernel_pack.ENV}=0 to compile them here")
        return {"device": f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
                "threads": f"{th.get('threads')} ({th.get('layer')})", "threading": th,
                "lines": lines, "warnings": [note] if note else [],
                "blas": {"libraries": libs, "used": used_s, "sgemm": sgemm, "sgemm_why": why,
                         "summary": f"float32 {f32}, float64 {used_s}",
                         "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "warning": note}}


def __getattr__(name):
    # importing a helper (cpu.threads, cpu.vecmath) must not load the program machinery and the GEMM it
    # registers: the backend's entry points load on first use
    if name in ("compile_graph", "CpuProgram"):
        from . import program

        return getattr(program, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
