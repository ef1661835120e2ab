"""The CUDA backend: numba.cuda kernels generated from the same fused nodes as the CPU's, on device buffers.

    driver.py        whether CUDA runs here (numba-cuda, driver, GPU, or the simulator) and what it is
    memory.py        CudaBuffer (flat device array + shape) and the caching pool that recycles device memory
    spelling.py      the scalar vocabulary spelled for numba.cuda; devmath.py the `M` math it calls
    launch.py        launch configurations from shapes (small ones in the simulator)
    render.py        loop kernels: fused elementwise, block-tree reductions (+ a second pass), multi-tensor
    templates.py     movement copies, fills, GEMM + epilogue, index/random kernels
    window.py        conv2d and its gradients, conv+relu+pool forward with its argmax, unpool, plain pooling
    blas.py          cuBLAS through CuPy where installed (zero-copy), else templates.gemm
    capabilities.py  supports(pattern, attrs): the window/GEMM patterns its kernels take
    program.py       CudaProgram: a step per node (steps.py), index checks, in-place optimizer state
    eager.py         eager ops on CUDA tensors through the same kernels

`CudaBackend` (below) is the backend object. Making it raises BackendUnavailable, with the reason and how to
check, where CUDA cannot run (no numba-cuda, no driver, no GPU); under NUMBA_ENABLE_CUDASIM=1 it runs in Numba's
simulator. Parameters, gradients, optimizer state and BatchNorm statistics of a model moved with `.to("cuda")`
stay on the GPU between compiled calls: only arguments come in and only what the user reads goes out. A compiled
step's intermediates live in the runtime's arena (compiler/runtime.py), as the CPU backend's do: `alloc` gives it
raw device bytes, `view` the typed buffers its steps write into, `copied_out` copies a returned view of it.
"""

from __future__ import annotations

import numpy as np

from ....devices import device as _device
from .. import Backend, BackendUnavailable
from . import driver
from .capabilities import supports as _supports
from .spelling import SPELLING


class CudaBackend(Backend):
    """Generated numba.cuda kernels on one GPU (`cuda:0`); buffers are memory.CudaBuffer."""

    name = "cuda"
    scalar_spelling = SPELLING

    def __init__(self):
        why = driver.probe()  # cheap (no Numba import): is_available() asks this
        if why is not None:
            raise BackendUnavailable(why)
        self.device = _device("cuda", 0)
        self._mem = self._eager = None
        self.host_eager_ops: dict[str, int] = {}  # eager ops that took the host round trip, by name (counts)

    @property
    def cuda(self):
        """numba.cuda, imported on first use (BackendUnavailable if that fails)."""
        return driver.cuda()

    @property
    def mem(self):
        if self._mem is None:
            from .memory import Memory

            self._mem = Memory(self.cuda)
        return self._mem

    @property
    def simulated(self) -> bool:
        return driver.simulated()

    # ---- compiling
    def compile(self, graph, dumper=None, timings=None):
        from .program import compile_graph

        return compile_graph(graph, self, dumper=dumper, timings=timings)

    def supports(self, pattern, attrs) -> bool | str:
        return _supports(pattern, attrs)

    # ---- memory
    def alloc(self, shape, dtype):
        return self.mem.empty(shape, dtype.np)

    def view(self, buffer, shape, np_dtype):
        return self.mem.view(buffer, shape, np_dtype)

    def copied_out(self, value, buffers):
        """`value` itself, or a copy when it is a view of one of the runtime arena's `buffers` (a returned value
        must not share memory with the arena, which the next call overwrites)."""
        base = value.block.base
        return self.mem.copy(value) if base is not None and any(base is b.block for b in buffers) else value

    def to_device(self, array: np.ndarray):
        return self.mem.to_device(array)

    def to_host(self, buffer) -> np.ndarray:
        return self.mem.to_host(buffer)

    def synchronize(self) -> None:
        self.cuda.synchronize()

    def empty_cache(self) -> None:
        self.mem.pool.clear()

    # ---- eager ops
    def run_eager(self, op, buffers: list, attrs: dict, out_type):
        """Elementwise ops, reductions, movement, matmul and conv run on the GPU through the same kernels as
        compiled code (one small cached program per op and shapes); the rest (index ops, pooling, random) take
        the host round trip of the default, with the op's exact eager errors."""
        if self._eager is None:
            from .eager import Eager

            self._eager = Eager(self)
        r = self._eager.run(op, buffers, attrs, out_type)
        if r is not None:
            return r
        self.host_eager_ops[op.name] = self.host_eager_ops.get(op.name, 0) + 1
        r = op.ref(*[b if isinstance(b, np.ndarray) else self.to_host(b) for b in buffers], **attrs)
        if not isinstance(r, np.ndarray) or r.dtype != out_type.dtype.np:
            r = np.asarray(r, dtype=out_type.dtype.np)
        return self.to_device(r)

    # ---- what runs
    def describe(self) -> dict:
        info = driver.device_info()
        from . import blas

        lines = [f"GPU: {info.get('name')}" + (f", {info['memory_gb']} GB, compute capability "
                                                f"{info.get('compute_capability')}, {info.get('sms')} SMs"
                                                if "memory_gb" in info else ""),
                 f"driver {info.get('driver')}, CUDA runtime {info.get('runtime')}, numba-cuda {info.get('numba_cuda')}"
                 if not info.get("simulator") else f"numba-cuda {info.get('numba_cuda')} (NUMBA_ENABLE_CUDASIM=1)",
                 f"GEMMs: {blas.describe()}"]
        return {"device": str(self.device) + (f" ({info.get('name')})" if info.get("name") else ""),
                "threads": None, "lines": lines, "warnings": [], "gpu": info}
