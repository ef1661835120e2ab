"""Numba kernels for conv2d's backward chain: max-pool/ReLU backward, input, weight and bias gradients.

The chain writes one zero-padded output gradient G: the input gradient is a stride-1 conv of G with the
flipped, transposed weight (``window.conv``'s forward kernel), or GEMM + col2im where that would mostly
multiply padding; the weight gradient dots G against the padded input at the same row pitch.

Measured (benchmarks/bench_window.py, as in window.conv): pool/ReLU backward + dw + db (+ dx) from the
pooled gradient, vs the NumPy references (max_pool2d_grad * mask, conv2d_grad_input/weight, sum):
  LeNet conv1 (no dx)   0.66-0.73 ms  [9.5-10.5 ms]  floor 0.22 ms
  LeNet conv2           1.4-1.8 ms    [5.2-6.0 ms]   floor 0.30 ms
  conv block 16->32 k3  5.3-5.8 ms    [44-51 ms]     floor 2.95 ms
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..blas import control as blas
from ..jit import helper
from .conv import _NO_ARGMAX, FASTMATH, _check, _pair, conv_out_hw, conv_s1_kernel, pad_into, padded_input
from .weight_grad import _DW_BATCH_BLOCK, bias_grad_kernel, conv_dw_s1_kernel, conv_dw_strided_kernel

__all__ = [
    "conv2d_backward", "conv2d_grad_bias", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_pool_backward",
    "maxpool_relu_backward", "relu_backward",
]

_parallel = helper(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=True)


# ------------------------------------------------------------------------------------ elementwise parts
@_parallel
def pool_relu_grad_into(gp, argmax, pooled, relu, k, s, top, left, dst):
    """dst = zeros; dst[n, o, top + p*s + a, left + q*s + b] += gp[n, o, p, q] * (pooled > 0 if relu) at
    each window's argmax a*k + b: max_pool2d's backward and ReLU's mask (relu'(y) at the argmax is
    pooled > 0) written straight into the padded layout the conv gradients read."""
    n_, o_, ph, pw = gp.shape
    hd, wd = dst.shape[2], dst.shape[3]
    zero = dst.dtype.type(0)
    for t in prange(n_ * o_):
        d = dst[t // o_, t % o_]
        gs = gp[t // o_, t % o_]
        am = argmax[t // o_, t % o_]
        ps = pooled[t // o_, t % o_]
        if k != s:  # overlapping (or gapped) windows: clear, then accumulate
            d[:, :] = zero
            for p in range(ph):
                for q in range(pw):
                    if relu and not ps[p, q] > zero:
                        continue
                    code = np.int64(am[p, q])
                    d[top + p * s + code // k, left + q * s + code % k] += gs[p, q]
            continue
        # disjoint windows tile [top, top + ph*k) x [left, left + pw*k): write every element once
        for rr in range(hd):
            p = (rr - top) // k
            a = rr - top - p * k
            drow = d[rr]
            if rr < top or p >= ph:
                for q in range(wd):
                    drow[q] = zero
                continue
            for q in range(left):
                drow[q] = zero
            for q in range(left + pw * k, wd):
                drow[q] = zero
            seg = drow[left:]
            grow, arow, prow = gs[p], am[p], ps[p]
            if k == 2:  # literal offsets vectorize (runtime k ran at ~2 GB/s)
                for q in range(pw):
                    code = np.int64(arow[q]) - 2 * a  # column of the maximum if it sits in this row
                    v = grow[q] if not relu or prow[q] > zero else zero
                    seg[2 * q] = v if code == 0 else zero
                    seg[2 * q + 1] = v if code == 1 else zero
                continue
            for q in range(pw):
                code = np.int64(arow[q]) - a * k
                v = grow[q] if not relu or prow[q] > zero else zero
                for b in range(k):
                    seg[q * k + b] = v if b == code else zero


@_parallel
def relu_mask_into(g, y, top, left, dst):
    """dst = zeros; dst[n, o, top + r, left + q] = g * (y > 0): ReLU's backward into the padded layout,
    each element written once."""
    n_, o_, oh, ow = g.shape
    hd, wd = dst.shape[2], dst.shape[3]
    zero = dst.dtype.type(0)
    for t in prange(n_ * o_):
        d = dst[t // o_, t % o_]
        gs = g[t // o_, t % o_]
        ys = y[t // o_, t % o_]
        for rr in range(hd):
            drow = d[rr]
            r = rr - top
            if r < 0 or r >= oh:
                for q in range(wd):
                    drow[q] = zero
                continue
            for q in range(left):
                drow[q] = zero
            for q in range(left + ow, wd):
                drow[q] = zero
            seg = drow[left:]
            grow = gs[r]
            yrow = ys[r]
            for q in range(ow):
                seg[q] = grow[q] if yrow[q] > zero else zero


# ------------------------------------------------------------------------------------ input gradient (GEMM)
@_parallel
def col2im_kernel(dcols, kh, kw, sh, sw, ph, pw, dh, dw, dx):
    """dx[n, c, r*sh + i*dh - ph, q*sw + j*dw - pw] += dcols[(c*kh + i)*kw + j, n, r, q] where that lands
    inside dx: the scatter half of the BLAS input gradient. One task per (image, channel) plane."""
    n_, c_, h, w = dx.shape
    oh, ow = dcols.shape[2], dcols.shape[3]
    zero = dx.dtype.type(0)
    for t in prange(n_ * c_):
        n = t // c_
        c = t - n * c_
        d = dx[n, c]
        d[:, :] = zero
        for i in range(kh):
            for j in range(kw):
                src = dcols[(c * kh + i) * kw + j, n]
                # output columns q whose input column q*sw + j*dw - pw lies in [0, w)
                q0 = max(0, (pw - j * dw + sw - 1) // sw)
                q1 = min(ow, (w - 1 + pw - j * dw) // sw + 1)
                for r in range(oh):
                    hh = r * sh + i * dh - ph
                    if hh < 0 or hh >= h or q1 <= q0:
                        continue
                    srow = src[r, q0:]
                    if sw == 1:
                        drow = d[hh, q0 + j * dw - pw:]
                        for q in range(q1 - q0):
                            drow[q] += srow[q]
                    else:
                        for q in range(q1 - q0):
                            d[hh, (q0 + q) * sw + j * dw - pw] += srow[q]


@_parallel
def relu_backward_kernel(g, y, out):
    zero = out.dtype.type(0)
    n = g.shape[0]
    for i in prange(n):
        out[i] = g[i] if y[i] > zero else zero


# ------------------------------------------------------------------------------------ Python API
def _flipped_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """[C, O/groups, kh, kw]: the weight of the convolution that computes conv2d's input gradient."""
    o, cg, kh, kw = w.shape
    og = o // groups
    wt = w.reshape(groups, og, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(wt).reshape(groups * cg, og, kh, kw)


class _Geometry:
    """Shapes of one conv and of the zero-padded gradient buffer G = [N, O, hg, pitch] holding g at rows
    top.., columns left... With the input gradient needed, G is g padded by (k-1)*dilation - padding, so
    dx is a plain stride-1 conv of G; otherwise G is g at the padded input's pitch, without the frame."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, need_dx=True):
        self.n, self.c, self.h, self.w = x_shape
        self.o, self.cg, self.kh, self.kw = w_shape
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.oh, self.ow = conv_out_hw(self.h, self.w, self.kh, self.kw, stride, padding, dilation)
        if need_dx:  # (negative offsets crop: padding > (k-1)*dilation)
            self.top = (self.kh - 1) * dilation[0] - padding[0]
            self.left = (self.kw - 1) * dilation[1] - padding[1]
            self.hg = self.h + (self.kh - 1) * dilation[0]
        else:
            self.top, self.left, self.hg = 0, 0, self.oh
        # one row pitch for G and the padded input, so the weight gradient can dot them as flat runs
        self.pitch = max(self.w + (self.kw - 1) * dilation[1] if need_dx else 0, self.w + 2 * padding[1])
        # the shared layout needs stride 1 and g fully inside G
        self.shared = stride == (1, 1) and self.top >= 0 and self.left >= 0

    def g_buffer(self, dtype) -> np.ndarray:
        return np.empty((self.n, self.o, self.hg, self.pitch), dtype)


def _grad_input_from(G, w, out_dx, geo: _Geometry, groups: int) -> None:
    # G is zero outside rows [top, top + oh) (clipped when top < 0: cropped rows are gone)
    band_lo, band_hi = max(geo.top, 0), min(geo.top + (geo.oh - 1) * geo.stride[0] + 1, geo.hg)
    conv_s1_kernel(G, _flipped_weight(w, groups), np.zeros(0, w.dtype), geo.h, geo.w, geo.dilation[0],
                   geo.dilation[1], groups, band_lo, band_hi, False, 0, 1, out_dx, _NO_ARGMAX)


def _grad_input_blas(g, w, out_dx, geo: _Geometry, groups: int) -> None:
    """dx by GEMM + col2im: dcols[C*kh*kw, N*oh*ow] = w^T @ g (per group), then scattered back. g may be
    any strided view of the output gradient."""
    og, cg, kk = geo.o // groups, geo.cg, geo.kh * geo.kw
    gt = np.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(geo.o, -1)
    dcols = np.empty((geo.c * kk, gt.shape[1]), g.dtype)
    blas.set_threads(blas.threads_for(2.0 * dcols.size * og))  # the backend's policy against TBB spinning
    for gi in range(groups):
        wt = w[gi * og:(gi + 1) * og].reshape(og, cg * kk).T
        np.matmul(wt, gt[gi * og:(gi + 1) * og], out=dcols[gi * cg * kk:(gi + 1) * cg * kk])
    col2im_kernel(dcols.reshape(geo.c * kk, geo.n, geo.oh, geo.ow), geo.kh, geo.kw, *geo.stride, *geo.padding,
                  *geo.dilation, out_dx)


def _dx_by_blas(geo: _Geometry) -> bool:
    """The direct input gradient multiplies every output row of a band ~oh tall at a row pitch of
    w + (kw-1)*dilation, dilated by the stride, against oh*ow useful products per tap: where that
    wastes over half the work (unpadded 5x5 at small sizes, any stride > 1), GEMM + col2im wins
    (LeNet's second layer: 0.67 ms vs 1.25 ms on one thread); dcols must stay modest (<= 32 MB)."""
    band_rows = (geo.oh - 1) * geo.stride[0] + 1
    pitch = geo.w + (geo.kw - 1) * geo.dilation[1]
    dcols_bytes = geo.c * geo.kh * geo.kw * geo.n * geo.oh * geo.ow * 4
    return band_rows * pitch > 1.5 * geo.oh * geo.ow and dcols_bytes <= 32 << 20


def _grad_weight_from(x, G, out_dw, out_db, geo: _Geometry, groups: int) -> None:
    xp = padded_input(x, geo.padding, width=geo.pitch)
    db = out_db if out_db is not None else np.zeros(geo.o, x.dtype)
    conv_dw_s1_kernel(xp, G, geo.top, geo.left, geo.oh, geo.ow, geo.dilation[0], geo.dilation[1], groups,
                      _DW_BATCH_BLOCK, out_dw, db, out_db is not None)


def _norm(stride, padding, dilation):
    return _pair(stride), _pair(padding), _pair(dilation)


def conv2d_grad_input(g, w, out_dx, stride=1, padding=0, dilation=1, groups=1) -> None:
    """out_dx[...] = conv2d_grad_input(g, w, input_shape=out_dx.shape) (ops.CONV2D_GRAD_INPUT).

    Direct: a stride-1 convolution of g, zero-padded (and dilated by the stride), with the flipped
    transposed weight. Where that would mostly multiply padding (see `_dx_by_blas`): GEMM + col2im."""
    stride, padding, dilation = _norm(stride, padding, dilation)
    geo = _Geometry(out_dx.shape, w.shape, stride, padding, dilation)
    g, w = np.ascontiguousarray(g), np.ascontiguousarray(w)
    _check("conv2d_grad_input g", g, (geo.n, geo.o, geo.oh, geo.ow), out_dx.dtype)
    _check("conv2d_grad_input out_dx", out_dx, out_dx.shape, w.dtype)
    if _dx_by_blas(geo):
        _grad_input_blas(g, w, out_dx, geo, groups)
        return
    G = np.empty((geo.n, geo.o, geo.hg, geo.w + (geo.kw - 1) * dilation[1]), g.dtype)
    pad_into(g, geo.top, geo.left, stride[0], stride[1], G)
    _grad_input_from(G, w, out_dx, geo, groups)


def conv2d_grad_weight(x, g, out_dw, out_db=None, stride=1, padding=0, dilation=1, groups=1) -> None:
    """out_dw[...] = conv2d_grad_weight(x, g, weight_shape=out_dw.shape) (ops.CONV2D_GRAD_WEIGHT) and, if
    out_db is given, out_db[o] = g[:, o].sum() (the bias gradient) from the same pass over g.

    >>> x = np.ones((2, 1, 3, 3), np.float32); g = np.ones((2, 1, 2, 2), np.float32)
    >>> dw, db = np.empty((1, 1, 2, 2), np.float32), np.empty(1, np.float32)
    >>> conv2d_grad_weight(x, g, dw, db); dw[0, 0].tolist(), db.tolist()
    ([[8.0, 8.0], [8.0, 8.0]], [8.0])
    """
    stride, padding, dilation = _norm(stride, padding, dilation)
    geo = _Geometry(x.shape, out_dw.shape, stride, padding, dilation, need_dx=False)
    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)
    _check("conv2d_grad_weight g", g, (geo.n, geo.o, geo.oh, geo.ow), x.dtype)
    _check("conv2d_grad_weight out_dw", out_dw, out_dw.shape, x.dtype)
    if out_db is not None:
        _check("conv2d_grad_weight out_db", out_db, (geo.o,), x.dtype)
    if geo.shared:
        G = geo.g_buffer(g.dtype)
        pad_into(g, 0, 0, 1, 1, G)
        _grad_weight_from(x, G, out_dw, out_db, geo, groups)
    else:
        conv_dw_strided_kernel(padded_input(x, padding), g, stride[0], stride[1], dilation[0], dilation[1],
                               groups, out_dw, out_db if out_db is not None else np.zeros(geo.o, x.dtype),
                               out_db is not None)


def conv2d_grad_bias(g, out_db) -> None:
    """out_db[o] = g[:, o].sum() over batch and space (the gradient of conv2d's bias)."""
    _check("conv2d_grad_bias out_db", out_db, (g.shape[1],), g.dtype)
    bias_grad_kernel(np.ascontiguousarray(g), out_db)


def relu_backward(g, y, out) -> None:
    """out[...] = g * (y > 0), y being ReLU's output (ops.RELU's gradient)."""
    _check("relu_backward out", out, g.shape, g.dtype)
    relu_backward_kernel(np.ascontiguousarray(g).reshape(-1), np.ascontiguousarray(y).reshape(-1),
                         out.reshape(-1))


def maxpool_relu_backward(g_pooled, argmax, pooled, out_grad, relu=True, pool_k=2, pool_s=None) -> None:
    """out_grad[...] = gradient at the conv output (pre-activation) of conv -> ReLU -> max_pool2d(pool_k,
    pool_s): g_pooled routed to each window's argmax (from `conv2d_pool_forward`), masked by pooled > 0 if
    `relu`. out_grad has the conv output's shape; positions no window covers get 0.

    >>> g = np.full((1, 1, 1, 1), 5, np.float32); am = np.full((1, 1, 1, 1), 2, np.uint8)
    >>> out = np.empty((1, 1, 2, 2), np.float32)
    >>> maxpool_relu_backward(g, am, np.ones_like(g), out); out[0, 0].tolist()
    [[0.0, 0.0], [5.0, 0.0]]
    """
    pool_s = pool_k if pool_s is None else int(pool_s)
    g_pooled, argmax, pooled = (np.ascontiguousarray(a) for a in (g_pooled, argmax, pooled))
    _check("maxpool_relu_backward argmax", argmax, g_pooled.shape, np.uint8)
    _check("maxpool_relu_backward pooled", pooled, g_pooled.shape, out_grad.dtype)
    _check("maxpool_relu_backward out_grad", out_grad, out_grad.shape, g_pooled.dtype)
    pool_relu_grad_into(g_pooled, argmax, pooled, bool(relu), int(pool_k), pool_s, 0, 0,
                        out_grad)


def _backward(x, w, fill_G, out_dx, out_dw, out_db, stride, padding, dilation, groups) -> None:
    """dx, dw, db from one padded gradient buffer that fill_G(G, top, left) writes (or the unfused ops)."""
    dx_blas = out_dx is not None and _dx_by_blas(_Geometry(x.shape, w.shape, stride, padding, dilation))
    geo = _Geometry(x.shape, w.shape, stride, padding, dilation, need_dx=out_dx is not None and not dx_blas)
    if not geo.shared:
        g = np.empty((geo.n, geo.o, geo.oh, geo.ow), x.dtype)
        fill_G(g, 0, 0)
        if out_dx is not None:
            conv2d_grad_input(g, w, out_dx, stride, padding, dilation, groups)
        conv2d_grad_weight(x, g, out_dw, out_db, stride, padding, dilation, groups)
        return
    G = geo.g_buffer(x.dtype)
    fill_G(G, geo.top, geo.left)
    if out_dx is not None:
        _check("conv2d backward out_dx", out_dx, x.shape, x.dtype)
        if dx_blas:
            g = G[:, :, geo.top:geo.top + geo.oh, geo.left:geo.left + geo.ow]
            _grad_input_blas(g, w, out_dx, geo, groups)
        else:
            _grad_input_from(G, w, out_dx, geo, groups)
    _check("conv2d backward out_dw", out_dw, w.shape, x.dtype)
    if out_db is not None:
        _check("conv2d backward out_db", out_db, (geo.o,), x.dtype)
    _grad_weight_from(x, G, out_dw, out_db, geo, groups)


def conv2d_pool_backward(x, w, g_pooled, argmax, pooled, out_dx, out_dw, out_db=None, stride=1, padding=0,
                         dilation=1, groups=1, relu=True, pool_k=2, pool_s=None) -> None:
    """Backward of `conv2d_pool_forward`: out_dx (None to skip, e.g. for the network's input), out_dw and
    out_db (None without bias) from the pooled gradient, its argmax and the pooled output (ReLU mask).

    The pool/ReLU backward writes straight into the padded gradient that both conv gradients read, so
    the [N, O, OH, OW] gradient of the conv output is never stored on its own."""
    stride, padding, dilation = _norm(stride, padding, dilation)
    pool_s = pool_k if pool_s is None else int(pool_s)
    x, w, g_pooled, argmax, pooled = (np.ascontiguousarray(a) for a in (x, w, g_pooled, argmax, pooled))
    _check("conv2d_pool_backward argmax", argmax, g_pooled.shape, np.uint8)
    _check("conv2d_pool_backward pooled", pooled, g_pooled.shape, x.dtype)

    def fill(G, top, left):
        pool_relu_grad_into(g_pooled, argmax, pooled, bool(relu), int(pool_k), pool_s, top, left, G)

    _backward(x, w, fill, out_dx, out_dw, out_db, stride, padding, dilation, groups)


def conv2d_backward(x, w, g, out_dx, out_dw, out_db=None, stride=1, padding=0, dilation=1, groups=1,
                    relu_out=None) -> None:
    """Backward of `conv2d_forward`: out_dx (None to skip), out_dw, out_db (None to skip) from the output
    gradient g; with relu_out (the forward's ReLU output) g is first masked by relu_out > 0."""
    stride, padding, dilation = _norm(stride, padding, dilation)
    x, w, g = np.ascontiguousarray(x), np.ascontiguousarray(w), np.ascontiguousarray(g)
    if relu_out is not None:
        relu_out = np.ascontiguousarray(relu_out)
        _check("conv2d_backward relu_out", relu_out, g.shape, g.dtype)

    def fill(G, top, left):
        if relu_out is None:
            pad_into(g, top, left, 1, 1, G)
        else:
            relu_mask_into(g, relu_out, top, left, G)

    _backward(x, w, fill, out_dx, out_dw, out_db, stride, padding, dilation, groups)
