"""The CPU backend: Numba kernels on CPU threads.

    render.py    fused elementwise/reduce nodes (kernel.LoopKernel) as Numba loop source; the preludes
    spelling.py  how generated code spells the scalar vocabulary (tracejit/scalar.py) the op table's exprs use
    capabilities.py  supports(pattern, attrs): the window/GEMM patterns its kernels run (the passes ask)
    segment.py   runs of nodes as ONE generated function (a step costs one dispatch)
    program.py   the Program: steps in order, loaded through the disk cache (../cache.py)
    vecmath.py   vectorizable float32/float64 exp, log, tanh, ... that generated loops call
    views.py     array headers for generated code (views, empty, address tables)
    index.py     gather/scatter/argmax/uniform helpers and the index checks
    threads.py   the threading layer (TBB, else OpenMP) and thread count
    blas/        GEMM: tracejit's own float32 kernel (gemm.py), the BLAS entry (calls.py), thread control
                 (control.py), GEMMs for generated segments (segment.py)
    window/      conv2d/pooling kernels and their backward (conv, backward, weight_grad, im2col, pool) and the
                 steps that call them for window nodes (steps.py)
"""

from .capabilities import supports  # noqa: F401 (the fusion passes ask the compile target)
from .spelling import SPELLING as SCALAR_SPELLING  # noqa: F401


def __getattr__(name):
    # importing a helper (cpu.threads, cpu.vecmath) must not load the program machinery and the GEMM it
    # registers: the backend's entry points load on first use
    if name in ("compile_graph", "CpuProgram"):
        from . import program

        return getattr(program, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
