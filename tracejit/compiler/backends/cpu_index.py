"""Numba helpers for the index/random/reduction-by-position ops, called from generated program code.

Each works on arrays viewed as [pre, n, post] around the op's axis, so one compiled specialization per
dtype serves every rank. Semantics are those of the op table's NumPy refs (negative indices wrap).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, error_model="numpy")


@_jit
def gather3(x, idx, out):
    """out[p, m, q] = x[p, idx[p, m, q], q]; x [P, N, Q], idx/out [P, M, Q]."""
    n = x.shape[1]
    for p in range(idx.shape[0]):
        for m in range(idx.shape[1]):
            for q in range(idx.shape[2]):
                j = idx[p, m, q]
                if j < 0:
                    j += n
                out[p, m, q] = x[p, j, q]


@_jit
def scatter_add3(idx, src, out):
    """out (zeroed here) [P, N, Q]; out[p, idx[p, m, q], q] += src[p, m, q]."""
    out[...] = 0
    n = out.shape[1]
    for p in range(idx.shape[0]):
        for m in range(idx.shape[1]):
            for q in range(idx.shape[2]):
                j = idx[p, m, q]
                if j < 0:
                    j += n
                out[p, j, q] += src[p, m, q]


@_jit
def argmax3(x, out):
    """out[p, q] = first index of the maximum of x[p, :, q]."""
    for p in range(x.shape[0]):
        for q in range(x.shape[2]):
            best = x[p, 0, q]
            k = 0
            for j in range(1, x.shape[1]):
                v = x[p, j, q]
                if v > best or (v != v and best == best):
                    best = v
                    k = j
            out[p, q] = k


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_M4 = np.uint64(0xD1B54A32D192ED03)


@_jit
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M2
    z = (z ^ (z >> np.uint64(27))) * _M3
    return z ^ (z >> np.uint64(31))


@_jit
def uniform_into(state, out):
    """The counter-based stream of ref_kernels.uniform: out.flat[i] from (seed, offset + i)."""
    seed = np.uint64(state[0])
    key = _mix64(seed * _M1 + _M1)
    base = np.uint64(state[1])
    flat = out.reshape(out.size)
    scale = 1.0 / 16777216.0
    for i in range(flat.size):
        z = _mix64((base + np.uint64(i)) * _M4 + key)
        flat[i] = np.float64(z >> np.uint64(40)) * scale
