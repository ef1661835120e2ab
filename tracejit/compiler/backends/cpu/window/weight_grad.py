"""Numba kernels for conv2d's weight and bias gradients: dw[o, c, i, j] as dot products of the output
gradient G against the padded input at one shared row pitch, two output channels per pass so each input
load feeds both; partial sums over fixed batch blocks keep the bits independent of the thread count.
Called through ``window.backward`` (timings there).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import helper
from .conv import FASTMATH

_serial = helper(cache=True, fastmath=FASTMATH, error_model="numpy")
_parallel = helper(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=True)

# Images per weight-gradient task: partial sums over fixed blocks of the batch, added in block order, so dw
# has the same bits at any thread count while a small O still splits into enough tasks for the threads.
_DW_BATCH_BLOCK = 16


@_serial
def _dots_pair(ga, gb, xf, pitch, dh, dw, out_a, out_b):
    """out_a/b[i, j] += sum_q ga/gb[q] * xf[q + i*dh*pitch + j*dw]: two output channels share each input
    load and every tap of a row (all nine for 3x3) runs in one pass, so the sums stay in registers."""
    kh, kw = out_a.shape
    L = ga.shape[0]
    z = ga.dtype.type(0)
    if kh == 3 and kw == 3:
        r = dh * pitch
        x0, x1, x2 = xf[0:], xf[dw:], xf[2 * dw:]
        x3, x4, x5 = xf[r:], xf[r + dw:], xf[r + 2 * dw:]
        x6, x7, x8 = xf[2 * r:], xf[2 * r + dw:], xf[2 * r + 2 * dw:]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = z
        b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = z
        for q in range(L):
            u = ga[q]
            v = gb[q]
            y = x0[q]
            a0 += u * y
            b0 += v * y
            y = x1[q]
            a1 += u * y
            b1 += v * y
            y = x2[q]
            a2 += u * y
            b2 += v * y
            y = x3[q]
            a3 += u * y
            b3 += v * y
            y = x4[q]
            a4 += u * y
            b4 += v * y
            y = x5[q]
            a5 += u * y
            b5 += v * y
            y = x6[q]
            a6 += u * y
            b6 += v * y
            y = x7[q]
            a7 += u * y
            b7 += v * y
            y = x8[q]
            a8 += u * y
            b8 += v * y
        out_a[0, 0] += a0
        out_a[0, 1] += a1
        out_a[0, 2] += a2
        out_a[1, 0] += a3
        out_a[1, 1] += a4
        out_a[1, 2] += a5
        out_a[2, 0] += a6
        out_a[2, 1] += a7
        out_a[2, 2] += a8
        out_b[0, 0] += b0
        out_b[0, 1] += b1
        out_b[0, 2] += b2
        out_b[1, 0] += b3
        out_b[1, 1] += b4
        out_b[1, 2] += b5
        out_b[2, 0] += b6
        out_b[2, 1] += b7
        out_b[2, 2] += b8
    elif kw == 5:
        for i in range(kh):
            x0 = xf[i * dh * pitch:]
            x1, x2, x3, x4 = x0[dw:], x0[2 * dw:], x0[3 * dw:], x0[4 * dw:]
            a0 = a1 = a2 = a3 = a4 = z
            b0 = b1 = b2 = b3 = b4 = z
            for q in range(L):
                u = ga[q]
                v = gb[q]
                y = x0[q]
                a0 += u * y
                b0 += v * y
                y = x1[q]
                a1 += u * y
                b1 += v * y
                y = x2[q]
                a2 += u * y
                b2 += v * y
                y = x3[q]
                a3 += u * y
                b3 += v * y
                y = x4[q]
                a4 += u * y
                b4 += v * y
            out_a[i, 0] += a0
            out_a[i, 1] += a1
            out_a[i, 2] += a2
            out_a[i, 3] += a3
            out_a[i, 4] += a4
            out_b[i, 0] += b0
            out_b[i, 1] += b1
            out_b[i, 2] += b2
            out_b[i, 3] += b3
            out_b[i, 4] += b4
    else:
        for i in range(kh):
            for j in range(kw):
                xs = xf[i * dh * pitch + j * dw:]
                a0 = b0 = z
                for q in range(L):
                    y = xs[q]
                    a0 += ga[q] * y
                    b0 += gb[q] * y
                out_a[i, j] += a0
                out_b[i, j] += b0


@_serial
def _plane_sum(a):
    s = a.dtype.type(0)
    for q in range(a.shape[0]):
        s += a[q]
    return s


@_parallel
def conv_dw_s1_kernel(xp, G, top, left, oh, ow, dh, dw, groups, nb, out_dw, out_db, has_db):
    """Stride-1 weight (and bias) gradient. xp: padded input [N, C, Hp, P]; G: [N, O, Hg, P] holding the
    output gradient at rows top.., columns left.. and zeros around it (same pitch P as xp)."""
    n_, c_, hp, pitch = xp.shape
    o_, hg = G.shape[1], G.shape[2]
    cg, kh, kw = out_dw.shape[1], out_dw.shape[2], out_dw.shape[3]
    og = o_ // groups
    npair = (og + 1) // 2
    nchunk = (n_ + nb - 1) // nb
    L = (oh - 1) * pitch + ow
    off = top * pitch + left
    x2 = xp.reshape((n_ * c_, hp * pitch))
    g2 = G.reshape((n_ * o_, hg * pitch))
    part = np.zeros((nchunk, o_, cg, kh, kw), out_dw.dtype)
    part_b = np.zeros((nchunk, o_), out_dw.dtype)
    for t in prange(nchunk * groups * npair):
        ch = t // (groups * npair)
        r = t - ch * groups * npair
        g = r // npair
        oa = g * og + 2 * (r - g * npair)
        ob = min(oa + 1, g * og + og - 1)
        acc = np.zeros((2, cg, kh, kw), out_dw.dtype)
        sa = sb = out_dw.dtype.type(0)
        for n in range(ch * nb, min(n_, ch * nb + nb)):
            ga = g2[n * o_ + oa, off:off + L]
            gb = g2[n * o_ + ob, off:off + L]
            for c in range(cg):
                _dots_pair(ga, gb, x2[n * c_ + g * cg + c], pitch, dh, dw, acc[0, c], acc[1, c])
            if has_db:
                sa += _plane_sum(ga)
                sb += _plane_sum(gb)
        part[ch, oa] = acc[0]
        part[ch, ob] = acc[1]  # ob == oa (odd og) writes the same sums twice
        part_b[ch, oa] = sa
        part_b[ch, ob] = sb
    out_dw[:] = part[0]
    for ch in range(1, nchunk):  # fixed block order: the same bits at any thread count
        out_dw += part[ch]
    if has_db:
        out_db[:] = part_b[0]
        for ch in range(1, nchunk):
            out_db += part_b[ch]


@_parallel
def conv_dw_strided_kernel(xp, g, sh, sw, dh, dw, groups, out_dw, out_db, has_db):
    """Weight/bias gradient for any stride (strided loads: the slow general path); xp is padded."""
    n_, o_, oh, ow = g.shape
    cg, kh, kw = out_dw.shape[1], out_dw.shape[2], out_dw.shape[3]
    og = o_ // groups
    for t in prange(o_ * cg):
        o = t // cg
        c = (o // og) * cg + t % cg
        for i in range(kh):
            for j in range(kw):
                s = out_dw.dtype.type(0)
                for n in range(n_):
                    for r in range(oh):
                        xs = xp[n, c, r * sh + i * dh, j * dw:]
                        gr = g[n, o, r]
                        for q in range(ow):
                            s += gr[q] * xs[q * sw]
                out_dw[o, t % cg, i, j] = s
    if has_db:
        for o in prange(o_):
            s = out_db.dtype.type(0)
            for n in range(n_):
                s += _plane_sum(g[n, o].reshape(oh * ow))
            out_db[o] = s


@_parallel
def bias_grad_kernel(g, out_db):
    n_, o_, oh, ow = g.shape
    for o in prange(o_):
        s = out_db.dtype.type(0)
        for n in range(n_):
            s += _plane_sum(g[n, o].reshape(oh * ow))
        out_db[o] = s
