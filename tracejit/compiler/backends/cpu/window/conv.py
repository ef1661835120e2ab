"""Numba kernels for conv2d forward: direct convolution with fused bias, ReLU and max-pool(+uint8 argmax)
epilogues. The CPU backend calls the Python functions below; they write preallocated outputs and pass only
int shape parameters, so one compiled kernel per dtype serves every shape. Backward: ``window.backward``;
standalone pooling: ``window.pool``.

Measured (benchmarks/bench_window.py, 2 cores AVX-512, TBB, float32, median of 30, load < 1.7; NumPy
im2col reference in brackets; floor at 205 GFLOP/s): conv+bias+ReLU+2x2 pool+argmax on
  LeNet conv1 x[64,3,32,32] w[6,3,5,5]        0.51-0.55 ms  [11.5-14.4 ms]  floor 0.22 ms
  LeNet conv2 x[64,6,14,14] w[16,6,5,5]       0.79-0.86 ms  [3.6-4.1 ms]    floor 0.15 ms
  conv block x[32,16,32,32] w[32,16,3,3] p1   2.1-2.7 ms    [35-37 ms]      floor 1.47 ms
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import helper, host_avx512

try:  # TBB layer and thread count before the first parallel launch (see threads.py)
    from .. import threads as _threads

    _threads.configure()
except ImportError:  # pragma: no cover - the backend's threading module is optional here
    _threads = None

__all__ = ["conv2d_forward", "conv2d_pool_forward", "conv_out_hw", "pad_into", "padded_input"]

# fastmath without nnan/ninf: max pooling pads with -inf and propagates NaN like NumPy, which those flags
# would license LLVM to drop; "contract" (FMA) and "reassoc" (vectorized sums) are what the speed needs.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_serial = helper(cache=True, fastmath=FASTMATH, error_model="numpy")
_parallel = helper(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=True)
_NO_ARGMAX = np.zeros((1, 1, 1, 1), np.uint8)  # placeholder, never written, when a kernel stores no argmax
# loops whose fastest form differs between 16- and 8-wide vectors read it (frozen into the code as a constant)
_WIDE_VECTORS = host_avx512()


# ------------------------------------------------------------------------------------ padding / layout
@_parallel
def pad_into(src, top, left, sh, sw, dst):
    """dst[n, c, top + r*sh, left + q*sw] = src[n, c, r, q] where that lands inside dst, zeros elsewhere.

    Pads (top/left >= 0), crops (< 0) and dilates (sh/sw > 1, for the stride>1 input gradient) in one pass."""
    n_, c_, h, w = src.shape
    hd, wd = dst.shape[2], dst.shape[3]
    zero = dst.dtype.type(0)
    q0 = max(0, (-left + sw - 1) // sw)  # first source column landing at or right of dst column 0
    q1 = min(w, (wd - left + sw - 1) // sw)
    for p in prange(n_ * c_):
        d = dst[p // c_, p % c_]
        s = src[p // c_, p % c_]
        if sh == 1 and sw == 1:
            # each element written once, copies as plain loops over views (vectorized; zero-then-copy with
            # slice assignment ran at 7 GB/s)
            for rr in range(hd):
                drow = d[rr]
                r = rr - top
                if r < 0 or r >= h or q1 <= q0:
                    for q in range(wd):
                        drow[q] = zero
                    continue
                for q in range(left + q0):
                    drow[q] = zero
                dseg = drow[left + q0:]
                sseg = s[r, q0:]
                for q in range(q1 - q0):
                    dseg[q] = sseg[q]
                for q in range(left + q1, wd):
                    drow[q] = zero
            continue
        d[:, :] = zero
        for r in range(h):
            rr = top + r * sh
            if rr < 0 or rr >= hd or q1 <= q0:
                continue
            drow = d[rr, left + q0 * sw:]
            srow = s[r, q0:q1]
            for q in range(q1 - q0):
                drow[q * sw] = srow[q]


# ------------------------------------------------------------------------------------ conv accumulate
@_serial
def _row_span(i, dh, band_lo, band_hi, pitch, oh, ow):
    """[start, stop) of the flat output run that kernel row i reads from input rows [band_lo, band_hi)
    (the rows that are not zero padding): skipping the rest saves up to half the work of a full
    correlation (the input gradient of an unpadded 5x5 conv)."""
    r0 = max(0, band_lo - i * dh)
    r1 = min(oh, band_hi - i * dh)
    if r1 <= r0:
        return 0, 0
    return r0 * pitch, (r1 - 1) * pitch + ow


@_serial
def _acc_pair(xf, wa, wb, pitch, dh, dw, oh, ow, band_lo, band_hi, acc_a, acc_b):
    """acc_a/b[q] += sum over taps (i, j) of wa/wb[i, j] * xf[q + i*dh*pitch + j*dw], q < (oh-1)*pitch + ow.

    Two output channels share every input load (the loads, not the FMAs, bound this loop); 3x3 sums all
    nine taps per store and kw 3/5 the taps of one kernel row, so acc is loaded and stored once per group.
    Every loop indexes views by its bare counter: `xf[off + q]` would make Numba's negative-index
    wraparound turn the loads into gathers (11.5 ms instead of 1.6 ms for LeNet's first layer)."""
    L = (oh - 1) * pitch + ow
    kh, kw = wa.shape
    if kh == 3 and kw == 3:
        r = dh * pitch
        x0, x1, x2 = xf[0:], xf[dw:], xf[2 * dw:]
        x3, x4, x5 = xf[r:], xf[r + dw:], xf[r + 2 * dw:]
        x6, x7, x8 = xf[2 * r:], xf[2 * r + dw:], xf[2 * r + 2 * dw:]
        a0, a1, a2, a3, a4, a5, a6, a7, a8 = (wa[0, 0], wa[0, 1], wa[0, 2], wa[1, 0], wa[1, 1], wa[1, 2],
                                              wa[2, 0], wa[2, 1], wa[2, 2])
        b0, b1, b2, b3, b4, b5, b6, b7, b8 = (wb[0, 0], wb[0, 1], wb[0, 2], wb[1, 0], wb[1, 1], wb[1, 2],
                                              wb[2, 0], wb[2, 1], wb[2, 2])
        for q in range(L):
            y0, y1, y2, y3, y4, y5, y6, y7, y8 = x0[q], x1[q], x2[q], x3[q], x4[q], x5[q], x6[q], x7[q], x8[q]
            acc_a[q] += (a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3 + a4 * y4 + a5 * y5
                         + a6 * y6 + a7 * y7 + a8 * y8)
            acc_b[q] += (b0 * y0 + b1 * y1 + b2 * y2 + b3 * y3 + b4 * y4 + b5 * y5
                         + b6 * y6 + b7 * y7 + b8 * y8)
        return
    for i in range(kh):
        start, stop = _row_span(i, dh, band_lo, band_hi, pitch, oh, ow)
        x0 = xf[i * dh * pitch + start:]
        ya = acc_a[start:]
        yb = acc_b[start:]
        m = stop - start
        if kw == 5:
            x1, x2, x3, x4 = x0[dw:], x0[2 * dw:], x0[3 * dw:], x0[4 * dw:]
            a0, a1, a2, a3, a4 = wa[i, 0], wa[i, 1], wa[i, 2], wa[i, 3], wa[i, 4]
            b0, b1, b2, b3, b4 = wb[i, 0], wb[i, 1], wb[i, 2], wb[i, 3], wb[i, 4]
            for q in range(m):
                y0, y1, y2, y3, y4 = x0[q], x1[q], x2[q], x3[q], x4[q]
                ya[q] += a0 * y0 + a1 * y1 + a2 * y2 + a3 * y3 + a4 * y4
                yb[q] += b0 * y0 + b1 * y1 + b2 * y2 + b3 * y3 + b4 * y4
        elif kw == 3:
            x1, x2 = x0[dw:], x0[2 * dw:]
            a0, a1, a2 = wa[i, 0], wa[i, 1], wa[i, 2]
            b0, b1, b2 = wb[i, 0], wb[i, 1], wb[i, 2]
            for q in range(m):
                y0, y1, y2 = x0[q], x1[q], x2[q]
                ya[q] += a0 * y0 + a1 * y1 + a2 * y2
                yb[q] += b0 * y0 + b1 * y1 + b2 * y2
        else:
            for j in range(kw):
                xs = x0[j * dw:]
                va, vb = wa[i, j], wb[i, j]
                for q in range(m):
                    y = xs[q]
                    ya[q] += va * y
                    yb[q] += vb * y


@_serial
def _acc_strided(xp, w, sh, sw, dh, dw, acc):
    """acc[r*ow + q] += conv at (r, q) for one output channel; xp is [C/groups, Hp, Wp] padded input.
    Strided loads do not vectorize well: the slow general path for stride > 1."""
    cg, kh, kw = w.shape
    oh, ow = acc.shape
    for c in range(cg):
        for i in range(kh):
            for j in range(kw):
                v = w[c, i, j]
                for r in range(oh):
                    xs = xp[c, r * sh + i * dh, j * dw:]
                    a = acc[r]
                    for q in range(ow):
                        a[q] += v * xs[q * sw]


# ------------------------------------------------------------------------------------ epilogues
@_serial
def _bias_relu(acc, b, relu):
    zero = acc.dtype.type(0)
    for q in range(acc.shape[0]):
        v = acc[q] + b
        if relu and v < zero:  # NaN stays NaN, as np.maximum(x, 0)
            v = zero
        acc[q] = v


@_serial
def _store_plane(acc, pitch, out):
    oh, ow = out.shape
    for r in range(oh):
        a = acc[r * pitch:]
        o = out[r]
        for q in range(ow):
            o[q] = a[q]


@_serial
def _pool_plane(acc, pitch, k, s, pooled, argmax):
    """k x k max pool (stride s, no padding) of the plane acc[r*pitch + q]; argmax = a*k + b of the first
    maximum in window order. A value replaces the running maximum m when it is larger or the first NaN
    (np.argmax's rule); that test is written out in place: as an njit helper it ran 4.7x slower."""
    ph, pw = pooled.shape
    if k == 2 and s == 2:
        # literal offsets: 0.08 ms for LeNet's 384 planes of 28x28 vs 0.35 ms through the general loop. The
        # first maximum (NaN first) as a tree of selects: pairs (v0, v1), (v2, v3), then the two winners, the
        # earlier kept on ties or when it is NaN -- the same values and codes as replacing the running maximum
        # in window order, without a data-dependent branch per element (one thread, rows of 14 (LeNet conv1) and
        # 5 (conv2) outputs: 1.8x faster; rows of 16 the same)
        for p in range(ph):
            r0 = acc[2 * p * pitch:]
            r1 = acc[(2 * p + 1) * pitch:]
            best = pooled[p]
            idx = argmax[p]
            if _WIDE_VECTORS:
                for q in range(pw):
                    v0, v1, v2, v3 = r0[2 * q], r0[2 * q + 1], r1[2 * q], r1[2 * q + 1]
                    k01 = (v0 >= v1) | (v0 != v0)
                    m01 = v0 if k01 else v1
                    k23 = (v2 >= v3) | (v2 != v2)
                    m23 = v2 if k23 else v3
                    first = (m01 >= m23) | (m01 != m01)
                    best[q] = m01 if first else m23
                    c01 = np.uint8(0) if k01 else np.uint8(1)
                    c23 = np.uint8(2) if k23 else np.uint8(3)
                    idx[q] = c01 if first else c23
                continue
            # Without AVX-512, LLVM leaves the loop above scalar and branchy (4.2 ms for 1024 planes of 32x32, 30x
            # its AVX-512 time): the maxima in one loop, then the codes as the first position equal to the maximum
            # (or the first NaN where it is NaN) in a second loop, 3.3x faster there
            for q in range(pw):
                v0, v1, v2, v3 = r0[2 * q], r0[2 * q + 1], r1[2 * q], r1[2 * q + 1]
                k01 = (v0 >= v1) | (v0 != v0)
                m01 = v0 if k01 else v1
                k23 = (v2 >= v3) | (v2 != v2)
                m23 = v2 if k23 else v3
                first = (m01 >= m23) | (m01 != m01)
                best[q] = m01 if first else m23
            for q in range(pw):
                v0, v1, v2, v3 = r0[2 * q], r0[2 * q + 1], r1[2 * q], r1[2 * q + 1]
                m = best[q]
                nan = m != m
                c = np.uint8(3)
                c = np.uint8(2) if (v2 == m) | (nan & (v2 != v2)) else c
                c = np.uint8(1) if (v1 == m) | (nan & (v1 != v1)) else c
                c = np.uint8(0) if (v0 == m) | (nan & (v0 != v0)) else c
                idx[q] = c
        return
    for p in range(ph):
        best = pooled[p]
        idx = argmax[p]
        for a in range(k):
            row = acc[(p * s + a) * pitch:]
            for b in range(k):
                rb = row[b:]
                code = np.uint8(a * k + b)
                for q in range(pw):  # window positions outermost: each output sees them in order
                    v = rb[q * s]
                    m = best[q]
                    if (a == 0 and b == 0) or v > m or (v != v and m == m):
                        best[q] = v
                        idx[q] = code


@_serial
def _epilogue(acc, pitch, bias, o, relu, pool_k, pool_s, out, argmax, n):
    b = bias[o] if bias.shape[0] > 0 else acc.dtype.type(0)
    _bias_relu(acc, b, relu)
    if pool_k > 0:
        _pool_plane(acc, pitch, pool_k, pool_s, out[n, o], argmax[n, o])
    else:
        _store_plane(acc, pitch, out[n, o])


# ------------------------------------------------------------------------------------ conv kernels
@_parallel
def conv_s1_kernel(xp, w, bias, oh, ow, dh, dw, groups, band_lo, band_hi, relu, pool_k, pool_s, out, argmax):
    """Stride-1 conv of the padded input xp [N, C, Hp, Wp] (padding already applied) with w [O, C/g, kh, kw],
    + bias (length O, or empty), ReLU if `relu`, then a pool_k x pool_s max pool with argmax (pool_k > 0) or
    the plain [N, O, oh, ow] output. Rows outside [band_lo, band_hi) of xp must be zero (padding) and are
    skipped where the loop structure allows. One task per (image, pair of output channels)."""
    n_, c_, hp, wp = xp.shape
    o_, cg, kh, kw = w.shape
    og = o_ // groups
    npair = (og + 1) // 2
    # Rows are computed at the input's pitch: output (r, q) sits at acc[r*wp + q], so every tap is one
    # contiguous run over all rows; the (wp - ow) columns per row past ow are computed and discarded.
    L = (oh - 1) * wp + ow
    x2 = xp.reshape((n_ * c_, hp * wp))
    for t in prange(n_ * groups * npair):
        n = t // (groups * npair)
        r = t - n * groups * npair
        g = r // npair
        oa = g * og + 2 * (r - g * npair)
        ob = min(oa + 1, g * og + og - 1)  # odd og: the last pair computes its channel twice
        acc_a = np.zeros(L, xp.dtype)
        acc_b = np.zeros(L, xp.dtype)
        for c in range(cg):
            _acc_pair(x2[n * c_ + g * cg + c], w[oa, c], w[ob, c], wp, dh, dw, oh, ow, band_lo, band_hi,
                      acc_a, acc_b)
        _epilogue(acc_a, wp, bias, oa, relu, pool_k, pool_s, out, argmax, n)
        if ob != oa:
            _epilogue(acc_b, wp, bias, ob, relu, pool_k, pool_s, out, argmax, n)


@_parallel
def conv_strided_kernel(xp, w, bias, oh, ow, sh, sw, dh, dw, groups, relu, pool_k, pool_s, out, argmax):
    """conv_s1_kernel for any stride (slower: strided loads); one task per (image, output channel)."""
    n_ = xp.shape[0]
    o_, cg = w.shape[0], w.shape[1]
    og = o_ // groups
    for t in prange(n_ * o_):
        n = t // o_
        o = t - n * o_
        g = o // og
        acc = np.zeros((oh, ow), xp.dtype)
        _acc_strided(xp[n, g * cg:(g + 1) * cg], w[o], sh, sw, dh, dw, acc)
        _epilogue(acc.reshape(oh * ow), ow, bias, o, relu, pool_k, pool_s, out, argmax, n)


# ------------------------------------------------------------------------------------ Python API
def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _check(name: str, arr: np.ndarray, shape: tuple, dtype) -> None:
    """Outputs must be exactly right (kernels write through them); inputs go through np.ascontiguousarray
    first, so any strided view works."""
    if arr.shape != tuple(shape) or arr.dtype != dtype or not arr.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous {np.dtype(dtype).name}{list(shape)} array, got "
                         f"{arr.dtype.name}{list(arr.shape)} (contiguous={arr.flags.c_contiguous})")


def conv_out_hw(h: int, w: int, kh: int, kw: int, stride, padding, dilation) -> tuple[int, int]:
    return ((h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1,
            (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1)


def padded_input(x: np.ndarray, padding, width: int | None = None) -> np.ndarray:
    """x zero-padded by `padding` (and on the right up to `width` columns); x itself when nothing to add."""
    n, c, h, w = x.shape
    wp = w + 2 * padding[1] if width is None else width
    if padding == (0, 0) and wp == w:
        return x
    xp = np.empty((n, c, h + 2 * padding[0], wp), x.dtype)
    pad_into(x, padding[0], padding[1], 1, 1, xp)
    return xp


def _bias_arg(bias, o: int, dtype, name: str) -> np.ndarray:
    if bias is None:
        return np.zeros(0, dtype)
    bias = np.ascontiguousarray(bias)
    _check(name + " bias", bias, (o,), dtype)
    return bias


def _conv(x, w, bias, out, argmax, stride, padding, dilation, groups, relu, pool_k, pool_s, oh, ow):
    xp = padded_input(x, padding)
    if stride == (1, 1):
        conv_s1_kernel(xp, w, bias, oh, ow, dilation[0], dilation[1], groups, padding[0], padding[0] + x.shape[2],
                       relu, pool_k, pool_s, out, argmax)
    else:
        conv_strided_kernel(xp, w, bias, oh, ow, stride[0], stride[1], dilation[0], dilation[1], groups,
                            relu, pool_k, pool_s, out, argmax)


def conv2d_forward(x, w, bias, out, stride=1, padding=0, dilation=1, groups=1, relu=False) -> None:
    """out[...] = conv2d(x, w) (+ bias[o]) (then ReLU if `relu`), the semantics of ops.CONV2D.

    x [N, C, H, W], w [O, C/groups, kh, kw], bias [O] or None, out [N, O, OH, OW]; all C-contiguous, one
    float dtype. Direct convolution (no im2col): one parallel task per (image, output-channel pair).

    >>> x = np.ones((1, 1, 4, 4), np.float32); w = np.ones((1, 1, 3, 3), np.float32)
    >>> out = np.empty((1, 1, 2, 2), np.float32); conv2d_forward(x, w, None, out); out[0, 0].tolist()
    [[9.0, 9.0], [9.0, 9.0]]
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = conv_out_hw(h, wd, kh, kw, stride, padding, dilation)
    _check("conv2d_forward out", out, (n, o, oh, ow), x.dtype)
    w = np.ascontiguousarray(w)
    _check("conv2d_forward w", w, (o, c // groups, kh, kw), x.dtype)
    _conv(np.ascontiguousarray(x), w, _bias_arg(bias, o, x.dtype, "conv2d_forward"), out, _NO_ARGMAX,
          stride, padding, dilation, groups, bool(relu), 0, 1, oh, ow)


def conv2d_pool_forward(x, w, bias, out_pooled, out_argmax, stride=1, padding=0, dilation=1, groups=1,
                        relu=True, pool_k=2, pool_s=None) -> None:
    """The fused conv2d -> +bias -> ReLU (if `relu`) -> max_pool2d(pool_k, pool_s, no padding) forward.

    out_pooled [N, O, PH, PW] gets the pooled values; out_argmax (uint8, same shape) the index a*pool_k + b
    of the first maximum inside each window (as np.argmax / PyTorch), which `maxpool_relu_backward` takes.
    The conv output never goes to memory: each task pools its plane while it is in cache.

    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4); w = np.ones((1, 1, 1, 1), np.float32)
    >>> p = np.empty((1, 1, 2, 2), np.float32); a = np.empty((1, 1, 2, 2), np.uint8)
    >>> conv2d_pool_forward(x, w, None, p, a); p[0, 0].tolist(), a[0, 0].tolist()
    ([[5.0, 7.0], [13.0, 15.0]], [[3, 3], [3, 3]])
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    pool_s = pool_k if pool_s is None else int(pool_s)
    if not 1 <= pool_k <= 16 or pool_s < 1:
        raise ValueError(f"conv2d_pool_forward: pool kernel {pool_k} must be 1..16 (uint8 argmax), stride >= 1")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = conv_out_hw(h, wd, kh, kw, stride, padding, dilation)
    ph, pw = (oh - pool_k) // pool_s + 1, (ow - pool_k) // pool_s + 1
    _check("conv2d_pool_forward out_pooled", out_pooled, (n, o, ph, pw), x.dtype)
    _check("conv2d_pool_forward out_argmax", out_argmax, (n, o, ph, pw), np.uint8)
    w = np.ascontiguousarray(w)
    _check("conv2d_pool_forward w", w, (o, c // groups, kh, kw), x.dtype)
    _conv(np.ascontiguousarray(x), w, _bias_arg(bias, o, x.dtype, "conv2d_pool_forward"), out_pooled,
          out_argmax, stride, padding, dilation, groups, bool(relu), int(pool_k), pool_s, oh, ow)


_POOLING = ("avg_pool2d_backward", "avg_pool2d_forward", "max_pool2d_backward", "max_pool2d_forward",
            "max_pool2d_grad_argmax", "pool_out_hw")


def __getattr__(name: str):
    """Standalone pooling lives in cpu_window_pool (which imports this module's helpers, so it cannot be
    imported at the top); its entry points stay reachable as cpu_window.<name>."""
    if name in _POOLING:
        from . import pool as cpu_window_pool

        return getattr(cpu_window_pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
