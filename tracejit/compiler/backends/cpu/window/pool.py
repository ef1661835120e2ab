"""Numba kernels for standalone max and avg pooling (ops max_pool2d, avg_pool2d and their gradients):
any kernel, stride, padding, dilation and ceil_mode, one parallel task per (image, channel) plane.
Pooling fused behind a conv lives in ``window.conv``, which also re-exports these entry points.

Measured (benchmarks/bench_window.py, as in window.conv; NumPy reference in brackets):
  max_pool2d 2x2 [64,6,28,28]: forward+argmax 0.13-0.23 ms [5.4-5.9], backward 0.14-0.19 ms [2.9-3.3]
  max_pool2d 3x3/2 pad 1 [32,32,32,32]: forward 1.5-2.8 ms [29-30], backward 0.59-0.77 ms [17-19]
  avg_pool2d 3x3/2 pad 1: forward 1.1-2.2 ms [14-15], backward 2.6-2.8 ms [2.6-3.8]
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .....ref_kernels import pool_out_hw as _ref_pool_out_hw
from ..jit import helper
from .conv import _NO_ARGMAX, FASTMATH, _check, _pair

__all__ = [
    "argmax_dtype", "avg_pool2d_backward", "avg_pool2d_forward", "max_pool2d_backward", "max_pool2d_forward",
    "max_pool2d_grad_argmax", "pool_out_hw",
]

_serial = helper(cache=True, fastmath=FASTMATH, error_model="numpy")
_parallel = helper(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=True)

# Every kernel copies its plane into a buffer padded with the pad value (-inf or 0) and as wide as the
# windows reach (ceil_mode), so the window loops run without bounds checks, row by row over the outputs.
# Updates are branchless selects: with data-dependent branches random inputs mispredicted at ~4 ns per value.


@_serial
def _load_padded(src, ph, pw, fill, buf):
    """buf = fill; buf[ph:ph + h, pw:pw + w] = src, each element written once."""
    h, w = src.shape
    hb, wb = buf.shape
    for r in range(hb):
        row = buf[r]
        s = r - ph
        if s < 0 or s >= h:
            for q in range(wb):
                row[q] = fill
            continue
        for q in range(pw):
            row[q] = fill
        seg = row[pw:]
        srow = src[s]
        for q in range(w):
            seg[q] = srow[q]
        for q in range(pw + w, wb):
            row[q] = fill


@_serial
def _max_row(row, sw, code, first, best, idx):
    """best/idx[q] <- row[q*sw], code where that is the first maximum so far (NaN wins, as np.argmax).
    Literal strides 1 and 2 vectorize; a runtime stride made k3/s2 pooling 3x slower."""
    n = best.shape[0]
    if sw == 1:
        for q in range(n):
            v, m = row[q], best[q]
            t = first | (v > m) | ((v != v) & (m == m))
            best[q] = v if t else m
            idx[q] = code if t else idx[q]
    elif sw == 2:
        for q in range(n):
            v, m = row[2 * q], best[q]
            t = first | (v > m) | ((v != v) & (m == m))
            best[q] = v if t else m
            idx[q] = code if t else idx[q]
    else:
        for q in range(n):
            v, m = row[q * sw], best[q]
            t = first | (v > m) | ((v != v) & (m == m))
            best[q] = v if t else m
            idx[q] = code if t else idx[q]


@_parallel
def max_pool_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, out, argmax, store_argmax):
    """Max pool with -inf padding; argmax[n,c,r,q] = i*kw + j of the first maximum in window order
    (positions in the padding count, as the reference's padded argmax), in argmax's own integer type, which
    the caller picks wide enough (argmax_dtype); without store_argmax, argmax is a placeholder."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    hb = max(h + 2 * ph, (oh - 1) * sh + (kh - 1) * dh + 1)
    wb = max(w + 2 * pw, (ow - 1) * sw + (kw - 1) * dw + 1)
    ninf = x.dtype.type(-np.inf)
    k2 = kh == 2 and kw == 2 and sh == 2 and sw == 2 and dh == 1 and dw == 1
    codes = np.arange(kh * kw).astype(argmax.dtype)  # window positions as argmax's type (uint8 for <= 256)
    for p in prange(n_ * c_):
        n = p // c_
        c = p - n * c_
        buf = np.empty((hb, wb), x.dtype)
        _load_padded(x[n, c], ph, pw, ninf, buf)
        idx = np.empty(ow, argmax.dtype)
        for r in range(oh):
            best = out[n, c, r]
            if k2:  # the common 2x2/2 window with literal offsets: 4x faster than the general rows
                r0, r1 = buf[2 * r], buf[2 * r + 1]
                for q in range(ow):
                    v0, v1, v2, v3 = r0[2 * q], r0[2 * q + 1], r1[2 * q], r1[2 * q + 1]
                    t = (v1 > v0) | ((v1 != v1) & (v0 == v0))
                    m = v1 if t else v0
                    b = np.uint8(1) if t else np.uint8(0)
                    t = (v2 > m) | ((v2 != v2) & (m == m))
                    m = v2 if t else m
                    b = np.uint8(2) if t else b
                    t = (v3 > m) | ((v3 != v3) & (m == m))
                    best[q] = v3 if t else m
                    idx[q] = np.uint8(3) if t else b
            else:
                for i in range(kh):
                    for j in range(kw):
                        _max_row(buf[r * sh + i * dh, j * dw:], sw, codes[i * kw + j], i == 0 and j == 0,
                                 best, idx)
            if store_argmax:
                argmax[n, c, r] = idx


@_parallel
def max_pool_grad_kernel(g, argmax, kh, kw, sh, sw, ph, pw, dh, dw, dx):
    """dx = zeros; dx[window position argmax] += g (windows may overlap when stride < kernel)."""
    n_, c_, h, w = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    zero = dx.dtype.type(0)
    for p in prange(n_ * c_):
        d = dx[p // c_, p % c_]
        gs = g[p // c_, p % c_]
        am = argmax[p // c_, p % c_]
        d[:, :] = zero
        for r in range(oh):
            for q in range(ow):
                code = np.int64(am[r, q])
                ih = r * sh - ph + (code // kw) * dh
                iw = q * sw - pw + (code % kw) * dw
                if 0 <= ih < h and 0 <= iw < w:
                    d[ih, iw] += gs[r, q]


@_serial
def _avg_divisors(oc, size, k, s, p, include_pad, out):
    """out[o] = the number of window positions averaged for output o along one axis (as PyTorch: windows
    clipped to size + padding, and to the input itself unless count_include_pad)."""
    for o in range(oc):
        start = o * s - p
        end = min(start + k, size + p)
        out[o] = end - start if include_pad else min(end, size) - max(start, 0)


@_serial
def _add_row(row, sw, acc):
    """acc[q] += row[q*sw], with literal strides 1 and 2 (vectorized)."""
    n = acc.shape[0]
    if sw == 1:
        for q in range(n):
            acc[q] += row[q]
    elif sw == 2:
        for q in range(n):
            acc[q] += row[2 * q]
    else:
        for q in range(n):
            acc[q] += row[q * sw]


@_serial
def _scatter_row(src, sw, row):
    """row[q*sw] += src[q], with literal strides 1 and 2."""
    n = src.shape[0]
    if sw == 1:
        for q in range(n):
            row[q] += src[q]
    elif sw == 2:
        for q in range(n):
            row[2 * q] += src[q]
    else:
        for q in range(n):
            row[q * sw] += src[q]


@_parallel
def avg_pool_kernel(x, kh, kw, sh, sw, ph, pw, include_pad, out):
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    hb = max(h + 2 * ph, (oh - 1) * sh + kh)
    wb = max(w + 2 * pw, (ow - 1) * sw + kw)
    zero = x.dtype.type(0)
    div_h, div_w = np.empty(oh, x.dtype), np.empty(ow, x.dtype)
    _avg_divisors(oh, h, kh, sh, ph, include_pad, div_h)
    _avg_divisors(ow, w, kw, sw, pw, include_pad, div_w)
    for p in prange(n_ * c_):
        n = p // c_
        c = p - n * c_
        buf = np.empty((hb, wb), x.dtype)
        _load_padded(x[n, c], ph, pw, zero, buf)
        for r in range(oh):
            acc = out[n, c, r]
            acc[:] = zero
            for i in range(kh):
                for j in range(kw):
                    _add_row(buf[r * sh + i, j:], sw, acc)
            for q in range(ow):
                acc[q] = acc[q] / (div_h[r] * div_w[q])


@_parallel
def avg_pool_grad_kernel(g, kh, kw, sh, sw, ph, pw, include_pad, dx):
    n_, c_, h, w = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    hb = max(h + 2 * ph, (oh - 1) * sh + kh)
    wb = max(w + 2 * pw, (ow - 1) * sw + kw)
    div_h, div_w = np.empty(oh, dx.dtype), np.empty(ow, dx.dtype)
    _avg_divisors(oh, h, kh, sh, ph, include_pad, div_h)
    _avg_divisors(ow, w, kw, sw, pw, include_pad, div_w)
    for p in prange(n_ * c_):
        n = p // c_
        c = p - n * c_
        buf = np.zeros((hb, wb), dx.dtype)  # gradient of the padded plane; the padding part is dropped
        gd = np.empty(ow, dx.dtype)
        for r in range(oh):
            grow = g[n, c, r]
            for q in range(ow):
                gd[q] = grow[q] / (div_h[r] * div_w[q])
            for i in range(kh):
                for j in range(kw):
                    _scatter_row(gd, sw, buf[r * sh + i, j:])
        d = dx[n, c]
        for r in range(h):
            seg = buf[r + ph, pw:]
            drow = d[r]
            for q in range(w):
                drow[q] = seg[q]


# ------------------------------------------------------------------------------------ Python API
def argmax_dtype(kernel) -> np.dtype:
    """The narrowest unsigned type that holds every position 0 .. kh*kw - 1 of a pooling window: uint8 up
    to 16x16 (the common, fastest case), uint16 up to 65536 positions, else uint32."""
    area = int(kernel[0]) * int(kernel[1])
    return np.dtype(np.uint8 if area <= 1 << 8 else np.uint16 if area <= 1 << 16 else np.uint32)


def pool_out_hw(hw, kernel, stride, padding, dilation=(1, 1), ceil_mode=False) -> tuple[int, int]:
    """Output size of max/avg pooling, as ref_kernels.pool_out_hw."""
    return _ref_pool_out_hw(hw, kernel, stride, padding, dilation, ceil_mode)


def _pool_attrs(kernel, stride, padding, dilation):
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    return kernel, stride, _pair(padding), _pair(dilation)


def max_pool2d_forward(x, out, kernel, stride=None, padding=0, dilation=1, ceil_mode=False,
                       out_argmax=None) -> None:
    """out[...] = max_pool2d(x) with ops.MAX_POOL2D semantics (-inf padding, ceil_mode); if out_argmax
    (of type argmax_dtype(kernel): uint8 for windows up to 16x16) is given, it gets the window index of the
    first maximum.

    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4); out = np.empty((1, 1, 2, 2), np.float32)
    >>> max_pool2d_forward(x, out, 2); out[0, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """
    kernel, stride, padding, dilation = _pool_attrs(kernel, stride, padding, dilation)
    n, c, h, w = x.shape
    oh, ow = pool_out_hw((h, w), kernel, stride, padding, dilation, ceil_mode)
    _check("max_pool2d_forward out", out, (n, c, oh, ow), x.dtype)
    store = out_argmax is not None
    if store:
        _check("max_pool2d_forward out_argmax", out_argmax, (n, c, oh, ow), argmax_dtype(kernel))
    max_pool_kernel(np.ascontiguousarray(x), *kernel, *stride, *padding, *dilation, out,
                    out_argmax if store else _NO_ARGMAX, store)


def max_pool2d_backward(x, g, out_dx, kernel, stride=None, padding=0, dilation=1, ceil_mode=False,
                        argmax=None) -> None:
    """out_dx[...] = max_pool2d_grad(x, g) (ops.MAX_POOL2D_GRAD: g routed to each window's first maximum).
    Pass the forward's `argmax` (argmax_dtype(kernel)) to skip recomputing it from x."""
    kernel, stride, padding, dilation = _pool_attrs(kernel, stride, padding, dilation)
    _check("max_pool2d_backward out_dx", out_dx, x.shape, x.dtype)
    g = np.ascontiguousarray(g)
    if argmax is None:
        argmax = np.empty(g.shape, argmax_dtype(kernel))  # uint8 would wrap positions >= 256 (20x20 windows)
        scratch = np.empty(g.shape, x.dtype)
        max_pool_kernel(np.ascontiguousarray(x), *kernel, *stride, *padding, *dilation, scratch, argmax, True)
    argmax = np.ascontiguousarray(argmax)
    _check("max_pool2d_backward argmax", argmax, g.shape, argmax_dtype(kernel))
    max_pool_grad_kernel(g, argmax, *kernel, *stride, *padding, *dilation, out_dx)


def max_pool2d_grad_argmax(g, argmax, out_dx, kernel, stride=None, padding=0, dilation=1, ceil_mode=False) -> None:
    """out_dx[...] = max_pool2d_grad_argmax(g, argmax) (ops.MAX_POOL2D_GRAD_ARGMAX): g routed to the window
    positions in argmax (from `max_pool2d_forward`'s out_argmax); out_dx has the pooled input's shape."""
    kernel, stride, padding, dilation = _pool_attrs(kernel, stride, padding, dilation)
    n, c, h, w = out_dx.shape
    oh, ow = pool_out_hw((h, w), kernel, stride, padding, dilation, ceil_mode)
    g, argmax = np.ascontiguousarray(g), np.ascontiguousarray(argmax)
    _check("max_pool2d_grad_argmax g", g, (n, c, oh, ow), out_dx.dtype)
    _check("max_pool2d_grad_argmax argmax", argmax, (n, c, oh, ow), argmax_dtype(kernel))
    max_pool_grad_kernel(g, argmax, *kernel, *stride, *padding, *dilation, out_dx)


def avg_pool2d_forward(x, out, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> None:
    """out[...] = avg_pool2d(x) (ops.AVG_POOL2D: divisor counts padding if count_include_pad, windows are
    clipped to input + padding, so ceil_mode's extra windows divide by what they cover)."""
    kernel, stride, padding, _ = _pool_attrs(kernel, stride, padding, 1)
    n, c, h, w = x.shape
    _check("avg_pool2d_forward out", out, (n, c, *pool_out_hw((h, w), kernel, stride, padding, (1, 1),
                                                               ceil_mode)), x.dtype)
    avg_pool_kernel(np.ascontiguousarray(x), *kernel, *stride, *padding, bool(count_include_pad), out)


def avg_pool2d_backward(g, out_dx, kernel, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True) -> None:
    """out_dx[...] = avg_pool2d_grad(g) for an input of out_dx's shape (ops.AVG_POOL2D_GRAD)."""
    kernel, stride, padding, _ = _pool_attrs(kernel, stride, padding, 1)
    n, c, h, w = out_dx.shape
    g = np.ascontiguousarray(g)
    _check("avg_pool2d_backward g", g, (n, c, *pool_out_hw((h, w), kernel, stride, padding, (1, 1),
                                                            ceil_mode)), out_dx.dtype)
    avg_pool_grad_kernel(g, *kernel, *stride, *padding, bool(count_include_pad), out_dx)
