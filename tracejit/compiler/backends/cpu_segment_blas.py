"""GEMM for generated segment code, where every operand's layout is known when the code is rendered.

A segment's matmul operands are C-contiguous arrays or transposes of them, so the renderer passes the BLAS
transpose flags and leading dimensions as constants and `gemm_nt` is one BLAS call: no layout checks and no
np.dot fallback. That is a compile-time matter: Numba links a callee's whole code into each caller and
optimizes it again there, and the fallback path of `cpu_blas.gemm` (np.dot, slice assignment with formatted
error messages) cost every LeNet segment that called it ~0.6-0.8 s of LLVM time on a cold cache.
"""

from __future__ import annotations

import numba
import numpy as np

from .cpu_blas import _ptr, _xxgemm  # Numba's BLAS helper and the data-pointer intrinsic, declared once


@numba.njit(cache=True)
def gemm_nt(ta, tb, m, n, k, a, lda, b, ldb, out):
    """out (C-contiguous m x n) = op(a) @ op(b), with op(a) m x k and op(b) k x n.

    `ta`/`tb` = 1 when the operand is the transpose of a C-contiguous array (F-contiguous), 0 when it is
    C-contiguous; `lda`/`ldb` are the leading dimensions of the underlying C-contiguous buffers. m, n, k >= 1.
    """
    scal = np.empty(2, out.dtype)
    scal[0] = 1
    scal[1] = 0
    kind = np.int8(115) if out.itemsize == 4 else np.int8(100)  # 's' / 'd'
    # column-major view: out^T (n x m) = b^T (n x k) @ a^T (k x m); a C-order array is its own transpose there
    _xxgemm(kind, np.int8(84 if tb else 78), np.int8(84 if ta else 78), n, m, k,
            _ptr(scal[0:1]), _ptr(b), ldb, _ptr(a), lda, _ptr(scal[1:2]), _ptr(out), n)
