"""cuBLAS through CuPy, when CuPy is importable next to a real GPU (never in the simulator).

Buffers are handed to CuPy zero-copy (`__cuda_array_interface__`); CuPy's default stream is the legacy default
stream numba-cuda launches on, so the GEMM is ordered with the kernels around it. The bias/ReLU epilogue then
runs as a following generated kernel. `TRACEJIT_CUDA_GEMM=tracejit` keeps every GEMM on tracejit's own tiled
kernel (templates.gemm), which is what runs where CuPy is not installed.
"""

from __future__ import annotations

import os

from .... import dtypes as D
from .driver import simulated

ENV = "TRACEJIT_CUDA_GEMM"
_state: dict = {}


def _cupy():
    if "cupy" not in _state:
        cp = None
        why = None
        if simulated():
            why = "the simulator has no cuBLAS"
        elif os.environ.get(ENV, "").strip().lower() == "tracejit":
            why = f"{ENV}=tracejit"
        else:
            try:
                import cupy as cp  # noqa: F401
                cp.cuda.runtime.getDeviceCount()
            except Exception as e:  # noqa: BLE001 -- not installed, or no usable device for it
                cp, why = None, f"CuPy not usable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        _state["cupy"], _state["why"] = cp, why
    return _state["cupy"]


def usable(dtype) -> bool:
    return dtype in (D.float32, D.float64) and _cupy() is not None


def describe() -> str:
    cp = _cupy()
    if cp is None:
        return f"tracejit's tiled numba.cuda GEMM ({_state.get('why')})"
    try:
        import cupy_backends  # noqa: F401

        path = _library_path()
    except Exception:  # noqa: BLE001
        path = "?"
    return f"cuBLAS through CuPy {cp.__version__} ({path}); set {ENV}=tracejit for tracejit's own kernel"


def _library_path() -> str:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libcublas" in line and "Lt" not in line:
                    return line.split()[-1]
    except OSError:
        pass
    return "libcublas (path not found: loaded on first use)"


def matmul(a, b, out, batch, m, n, k, trans_a, trans_b) -> None:
    """out = a @ b (batched), a/b read transposed from their storage where the flags say so."""
    cp = _cupy()
    A = cp.asarray(a.block.arr).reshape((batch, k, m) if trans_a else (batch, m, k))
    B = cp.asarray(b.block.arr).reshape((batch, n, k) if trans_b else (batch, k, n))
    C = cp.asarray(out.block.arr).reshape((batch, m, n))
    if trans_a:
        A = A.transpose(0, 2, 1)
    if trans_b:
        B = B.transpose(0, 2, 1)
    cp.matmul(A, B, out=C)
