"""GEMM for generated segment code, where every operand's layout is known when the code is rendered.

A segment's matmul operands are C-contiguous arrays or transposes of them, so the renderer passes the BLAS
transpose flags and leading dimensions as constants and `gemm_nt` is one BLAS call: no layout checks and no
np.dot fallback. That is a compile-time matter: Numba links a callee's whole code into each caller and
optimizes it again there, and the fallback path of `blas.calls.gemm` (np.dot, slice assignment with formatted
error messages) cost every LeNet segment that called it ~0.6-0.8 s of LLVM time on a cold cache.
"""

from __future__ import annotations

import numba
import numpy as np

from ..jit import helper
from .calls import gemm_at  # the one BLAS call, declared once


@helper(cache=True)
def gemm_nt(ta, tb, m, n, k, a, lda, b, ldb, out):
    """out (C-contiguous m x n) = op(a) @ op(b), with op(a) m x k and op(b) k x n.

    `ta`/`tb` = 1 when the operand is the transpose of a C-contiguous array (F-contiguous), 0 when it is
    C-contiguous; `lda`/`ldb` are the leading dimensions of the underlying C-contiguous buffers. m, n, k >= 1.
    """
    gemm_at(ta, tb, m, n, k, a, 0, lda, b, 0, ldb, out, 0, n, out.dtype.type(0))


@helper(cache=True, fastmath=True, error_model="numpy")
def _bias_act(out, n, i0, i1, j0, j1, bias, relu):
    """out[i, j] = relu?(out[i, j] + bias[j]) on rows [i0, i1) and columns [j0, j1) of the C-contiguous m x n out
    (relu as the op table's: NaN stays NaN); relu < 0: no epilogue at all."""
    if relu < 0:
        return
    flat = out.reshape(-1)
    zero = out.dtype.type(0)
    for i in range(i0, i1):
        row = i * n
        if relu:
            for j in range(j0, j1):
                v = flat[row + j] + bias[j]
                flat[row + j] = zero if v < zero else v
        else:
            for j in range(j0, j1):
                flat[row + j] += bias[j]


@helper(cache=True)
def gemm_bias_act(ta, tb, m, n, k, a, lda, b, ldb, bias, relu, out):
    """A linear layer: out = op(a) @ op(b) + bias (then relu), the epilogue run while out is in cache."""
    gemm_at(ta, tb, m, n, k, a, 0, lda, b, 0, ldb, out, 0, n, out.dtype.type(0))
    _bias_act(out, n, 0, m, 0, n, bias, relu)


@helper(parallel=True, cache=True)
def gemm_bias_act_par(ta, tb, m, n, k, a, lda, b, ldb, bias, relu, out, parts):
    """`gemm_bias_act` split into `parts` blocks (one per thread), each a one-thread GEMM call inside Numba's
    (TBB) pool followed by its block's epilogue on the same thread (relu < 0: none, see gemm_nt_par).

    The caller has set BLAS to one thread and passes numba.get_num_threads() (read inside, it would make
    this function and its callers uncacheable). Big GEMMs then share the pool that runs every other kernel:
    OpenBLAS's own threads spin ~0.1 s after each call and, on 2 cores, halved the speed of the TBB
    kernels that came next (MLP Adam 0.12 ms alone, 0.35-0.5 ms after a 2-thread GEMM). The split is
    along the larger of m and n, so the operand every block packs again is the smaller one."""
    if m >= n:
        for p in numba.prange(parts):
            lo = p * m // parts
            hi = (p + 1) * m // parts
            if hi > lo:
                gemm_at(ta, tb, hi - lo, n, k, a, lo if ta else lo * lda, lda, b, 0, ldb, out, lo * n, n,
                        out.dtype.type(0))
                _bias_act(out, n, lo, hi, 0, n, bias, relu)
    else:
        for p in numba.prange(parts):
            lo = p * n // parts
            hi = (p + 1) * n // parts
            if hi > lo:
                gemm_at(ta, tb, m, hi - lo, k, a, 0, lda, b, lo * ldb if tb else lo, ldb, out, lo, n,
                        out.dtype.type(0))
                _bias_act(out, n, 0, m, lo, hi, bias, relu)


@helper(cache=True)
def gemm_nt_par(ta, tb, m, n, k, a, lda, b, ldb, out, parts):
    """gemm_nt split over the pool: `gemm_bias_act_par` without an epilogue."""
    gemm_bias_act_par(ta, tb, m, n, k, a, lda, b, ldb, np.empty(0, out.dtype), -1, out, parts)
