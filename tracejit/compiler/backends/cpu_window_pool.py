"""Numba kernels for standalone max and avg pooling (ops max_pool2d, avg_pool2d and their gradients):
any kernel, stride, padding, dilation and ceil_mode, one parallel task per (image, channel) plane.
Pooling fused behind a conv lives in ``cpu_window`` (re-exported from there).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ...ref_kernels import pool_out_hw as _ref_pool_out_hw
from .cpu_window import _NO_ARGMAX, FASTMATH, _check, _pair

__all__ = [
    "avg_pool2d_backward", "avg_pool2d_forward", "max_pool2d_backward", "max_pool2d_forward",
    "max_pool2d_grad_argmax", "pool_out_hw",
]

_serial = numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
_parallel = numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=True)

@_parallel
def max_pool_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, out, argmax, store_argmax):
    """Max pool with -inf padding; argmax[n,c,r,q] = i*kw + j of the first maximum in window order
    (positions in the padding count, as the reference's padded argmax)."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    ninf = x.dtype.type(-np.inf)
    for p in prange(n_ * c_):
        xs = x[p // c_, p % c_]
        os_ = out[p // c_, p % c_]
        for r in range(oh):
            for q in range(ow):
                best = ninf
                code = 0
                for i in range(kh):
                    ih = r * sh - ph + i * dh
                    for j in range(kw):
                        iw = q * sw - pw + j * dw
                        v = xs[ih, iw] if 0 <= ih < h and 0 <= iw < w else ninf
                        if (i == 0 and j == 0) or v > best or (v != v and best == best):
                            best = v
                            code = i * kw + j
                os_[r, q] = best
                if store_argmax:
                    argmax[p // c_, p % c_, r, q] = code


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
def _avg_divisor(o, size, k, s, p, include_pad):
    start = o * s - p
    end = min(start + k, size + p)
    if include_pad:
        return end - start
    return min(end, size) - max(start, 0)


@_parallel
def avg_pool_kernel(x, kh, kw, sh, sw, ph, pw, include_pad, out):
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for p in prange(n_ * c_):
        xs = x[p // c_, p % c_]
        os_ = out[p // c_, p % c_]
        for r in range(oh):
            h0, h1 = max(r * sh - ph, 0), min(r * sh - ph + kh, h)
            dr = _avg_divisor(r, h, kh, sh, ph, include_pad)
            for q in range(ow):
                w0, w1 = max(q * sw - pw, 0), min(q * sw - pw + kw, w)
                s = xs.dtype.type(0)
                for i in range(h0, h1):
                    for j in range(w0, w1):
                        s += xs[i, j]
                os_[r, q] = s / xs.dtype.type(dr * _avg_divisor(q, w, kw, sw, pw, include_pad))


@_parallel
def avg_pool_grad_kernel(g, kh, kw, sh, sw, ph, pw, include_pad, dx):
    n_, c_, h, w = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    zero = dx.dtype.type(0)
    for p in prange(n_ * c_):
        d = dx[p // c_, p % c_]
        gs = g[p // c_, p % c_]
        d[:, :] = zero
        for r in range(oh):
            h0, h1 = max(r * sh - ph, 0), min(r * sh - ph + kh, h)
            dr = _avg_divisor(r, h, kh, sh, ph, include_pad)
            for q in range(ow):
                w0, w1 = max(q * sw - pw, 0), min(q * sw - pw + kw, w)
                v = gs[r, q] / gs.dtype.type(dr * _avg_divisor(q, w, kw, sw, pw, include_pad))
                for i in range(h0, h1):
                    for j in range(w0, w1):
                        d[i, j] += v


# ------------------------------------------------------------------------------------ Python API
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
    (uint8, kernel area <= 256) is given, it gets the window index of the first maximum.

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
        _check("max_pool2d_forward out_argmax", out_argmax, (n, c, oh, ow), np.uint8)
        if kernel[0] * kernel[1] > 256:
            raise ValueError(f"max_pool2d_forward: uint8 argmax needs kernel area <= 256, got {kernel}")
    max_pool_kernel(np.ascontiguousarray(x), *kernel, *stride, *padding, *dilation, out,
                    out_argmax if store else _NO_ARGMAX, store)


def max_pool2d_backward(x, g, out_dx, kernel, stride=None, padding=0, dilation=1, ceil_mode=False,
                        argmax=None) -> None:
    """out_dx[...] = max_pool2d_grad(x, g) (ops.MAX_POOL2D_GRAD: g routed to each window's first maximum).
    Pass the forward's `argmax` to skip recomputing it from x."""
    kernel, stride, padding, dilation = _pool_attrs(kernel, stride, padding, dilation)
    _check("max_pool2d_backward out_dx", out_dx, x.shape, x.dtype)
    g = np.ascontiguousarray(g)
    if argmax is None:
        argmax = np.empty(g.shape, np.uint8)
        scratch = np.empty(g.shape, x.dtype)
        max_pool_kernel(np.ascontiguousarray(x), *kernel, *stride, *padding, *dilation, scratch, argmax, True)
    argmax = np.ascontiguousarray(argmax)
    _check("max_pool2d_backward argmax", argmax, g.shape, np.uint8)
    max_pool_grad_kernel(g, argmax, *kernel, *stride, *padding, *dilation, out_dx)


def max_pool2d_grad_argmax(g, argmax, out_dx, kernel, stride=None, padding=0, dilation=1, ceil_mode=False) -> None:
    """out_dx[...] = max_pool2d_grad_argmax(g, argmax) (ops.MAX_POOL2D_GRAD_ARGMAX): g routed to the window
    positions in argmax (from `max_pool2d_forward`'s out_argmax); out_dx has the pooled input's shape."""
    kernel, stride, padding, dilation = _pool_attrs(kernel, stride, padding, dilation)
    n, c, h, w = out_dx.shape
    oh, ow = pool_out_hw((h, w), kernel, stride, padding, dilation, ceil_mode)
    g, argmax = np.ascontiguousarray(g), np.ascontiguousarray(argmax)
    _check("max_pool2d_grad_argmax g", g, (n, c, oh, ow), out_dx.dtype)
    _check("max_pool2d_grad_argmax argmax", argmax, (n, c, oh, ow), np.uint8)
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
