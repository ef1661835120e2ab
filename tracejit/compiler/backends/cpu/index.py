"""Numba helpers for the index/random/reduction-by-position ops, called from generated program code.

Each works on arrays viewed as [pre, n, post] around the op's axis, so one compiled specialization per
dtype serves every rank. Semantics are those of the op table's NumPy refs: indices must lie in [0, n).
An index outside its range raises IndexCheckFailed(check number, value) -- `check_index` for the check_index
op, and gather3/scatter_add3 themselves, so that no index reaches memory unchecked -- which the segment's
step turns into the op's own error (ops.index_error) before any state is written back.
"""

from __future__ import annotations

import numpy as np

from .jit import helper

# a helper dispatcher (cpu/jit.py): generated code passes constants (copy_block's offsets, check numbers), and a
# plain njit function compiled -- and linked into the caller -- once per distinct literal: an LSTM segment held 35
# versions of copy_block, one per piece of its cat
_jit = helper(cache=True, error_model="numpy")


class IndexCheckFailed(Exception):
    """args: (the check's number within its generated segment, the offending index value)."""


@_jit
def check_index(idx, low, high, ignore, has_ignore, k):
    """Raise IndexCheckFailed(k, first value of idx outside [low, high) that is not `ignore`). A branchless
    counting pass first (it vectorizes); the search for the first bad value only runs on failure."""
    nbad = 0
    keep = 1 if has_ignore else 0
    for i in range(idx.shape[0]):
        v = idx[i]
        out = (v < low) | (v >= high)
        nbad += out & ((v != ignore) | (keep == 0))
    if nbad:
        for i in range(idx.shape[0]):
            v = idx[i]
            if (v < low or v >= high) and not (has_ignore and v == ignore):
                raise IndexCheckFailed(k, v)


@_jit
def gather3(x, idx, out, k):
    """out[p, m, q] = x[p, idx[p, m, q], q]; x [P, N, Q], idx/out [P, M, Q]. An index outside [0, N) raises
    IndexCheckFailed(k, index) (never read out of bounds, even if no check_index ran before)."""
    n = x.shape[1]
    for p in range(idx.shape[0]):
        for m in range(idx.shape[1]):
            for q in range(idx.shape[2]):
                j = idx[p, m, q]
                if j < 0 or j >= n:
                    raise IndexCheckFailed(k, j)
                out[p, m, q] = x[p, j, q]


@_jit
def scatter_add3(idx, src, out, k):
    """out (zeroed here) [P, N, Q]; out[p, idx[p, m, q], q] += src[p, m, q]; an index outside [0, N) raises
    IndexCheckFailed(k, index) before anything is written out of bounds."""
    out[...] = 0
    n = out.shape[1]
    for p in range(idx.shape[0]):
        for m in range(idx.shape[1]):
            for q in range(idx.shape[2]):
                j = idx[p, m, q]
                if j < 0 or j >= n:
                    raise IndexCheckFailed(k, j)
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


@_jit
def copy_block(dst, dst_row, dst_at, src, src_row, rows):
    """dst[r * dst_row + dst_at + j] = src[r * src_row + j] for r < rows, j < src_row (flat C-contiguous buffers):
    one piece of a cat into its place (a cat of 35 time steps is 35 calls to this one function, not 35 loop
    nests for Numba to compile)."""
    for r in range(rows):
        d = r * dst_row + dst_at
        s = r * src_row
        for j in range(src_row):
            dst[d + j] = src[s + j]
