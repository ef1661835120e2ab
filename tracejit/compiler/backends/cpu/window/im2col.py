"""Stride-1 ungrouped conv2d forward and backward as one small GEMM per image ("im2col at the input's pitch").

For image n the task copies the K = C*kh*kw shifted runs of the zero-padded input xp[n] (row pitch Wp) into
cols [K, L], L = (oh-1)*Wp + ow: output (r, q) sits at r*Wp + q, so every tap is ONE contiguous run (no
per-row im2col), and the (Wp - ow) columns past ow in each row are computed and discarded. Then:

  forward   acc [O, L]   = w [O, K] @ cols            -> bias, ReLU, max-pool + uint8 argmax (or store)
  backward  dyp [O, L]   = the output gradient at the same pitch, zero in the discarded columns (written
                           straight from the pooled gradient and its argmax, masked by ReLU, or from g)
            dw_t^T [K, O] += cols @ dyp^T              (dot products read straight from xp, no cols copy;
                                                        per-task partials, summed in task order)
            dcols [K, L] = w^T @ dyp  -> col2im: K contiguous adds into the padded input-gradient plane

Where the float32 products run tracejit's own GEMM (`_rows_at_ok`) no cols matrix exists at all: the forward's
product reads the K runs where they lie in xp (blas.gemm.gemm_rows_at: B's rows at an offset table); the weight
gradient sums a task's images in vector lanes (blas.gemm.dots_block, DW_VEC); the input gradient is one full
correlation per image, w with its first two axes swapped times the output gradient's runs between zero margins
(dx_full). One-thread CPU, compiled LeNet step: 4.4 -> 3.4 ms.

Each thread owns its scratch buffers (L2-sized for LeNet) and calls single-threaded BLAS (OpenBLAS's small
matrix kernels at these sizes); BLAS threads must be 1 while these kernels run (the steps set it), as
OpenBLAS's own threads would spin against the TBB workers.

Why: the direct kernels (window.conv, window.weight_grad) run their taps over the output rows, and on short rows
that is mostly loop overhead; these per-image GEMMs run at 130-200 GFLOP/s on 2 cores (205 peak). Best of
30 calls, 2 cores, float32, two runs (direct kernels in brackets):
  LeNet conv2 x[64,6,14,14] w[16,6,5,5]  forward+pool 0.29-0.36 ms [0.50-0.75]; backward dx, dw, db
                                          0.68-0.91 ms [1.29-1.93]
  LeNet conv1 x[64,3,32,32] w[6,3,5,5]   forward+pool 0.52-0.57 ms [0.44-0.51]: the direct kernel stays
  conv block x[32,16,32,32] w[32,16,3,3] forward+pool 2.6-3.3 ms [2.0-2.7]: the direct kernel stays
which is what `prefer` encodes (MAX_RUN).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..blas import control as blas
from ..blas.calls import MIXED_OWN_ROWS, gemm_beta, sgemm_choice
from ..blas.gemm import DOT_R, V, dots_block, gemm_rows_at
from ..jit import helper
from .conv import FASTMATH, _epilogue, padded_input

__all__ = ["conv_backward", "conv_forward", "prefer"]

_parallel = helper(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=True)
_serial = helper(cache=True, fastmath=FASTMATH, error_model="numpy")

MODE_PLAIN, MODE_POOL, MODE_RELU = 0, 1, 2  # how the output gradient arrives (see _fill_dy)
DW_DOTS, DW_GEMM, DW_VEC = 0, 1, 2  # how conv_bwd_kernel sums the weight gradient


@_serial
def _im2col(x2, kh, kw, dh, dw, wp, cols):
    """cols[(c*kh + i)*kw + j, q] = x2[c, i*dh*wp + j*dw + q] for q < L (x2 = one padded image [C, Hp*Wp])."""
    L = cols.shape[1]
    for c in range(x2.shape[0]):
        src_c = x2[c]
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                src = src_c[i * dh * wp + j * dw:]
                for q in range(L):
                    row[q] = src[q]


@_parallel
def conv_fwd_kernel(xp, w2, bias, kh, kw, dh, dw, oh, ow, relu, pool_k, pool_s, out, argmax, ntask, ws):
    """out (pooled, with argmax, when pool_k > 0) = [max_pool](relu(conv(xp, w) + bias)); ws [threads, K+O, L]
    (each thread's scratch: tasks are image chunks, many per thread for balance)."""
    n_, c_, hp, wp = xp.shape
    o_, k_ = w2.shape
    x3 = xp.reshape((n_, c_, hp * wp))
    zero = xp.dtype.type(0)
    for t in prange(ntask):
        tid = numba.get_thread_id()
        cols = ws[tid, :k_]
        acc = ws[tid, k_:k_ + o_]
        for n in range(t, n_, ntask):
            _im2col(x3[n], kh, kw, dh, dw, wp, cols)
            gemm_beta(w2, cols, acc, zero)
            for o in range(o_):
                _epilogue(acc[o], wp, bias, o, relu, pool_k, pool_s, out, argmax, n)


@_parallel
def conv_fwd_rows_kernel(xp, w2, bias, kh, kw, dh, dw, oh, ow, relu, pool_k, pool_s, out, argmax, ntask, ws):
    """conv_fwd_kernel for float32 where tracejit's own GEMM runs (`_rows_at_ok`): the product reads the im2col
    rows where they lie in the padded planes (blas.gemm.gemm_rows_at: B's row (c, i, j) is the run at tap
    offset c*Hp*Wp + i*dh*Wp + j*dw of image n), so no cols copy is made and the rows come from a few KB of input
    in L1 rather than a K x L matrix in L2. ws [threads, O*L]: each thread's product. One-thread CPU ms, 64
    images, im2col + GEMM -> rows in place (same sums, same bits): LeNet conv1 0.86 -> 0.61, conv2 0.61 -> 0.52."""
    n_, c_, hp, wp = xp.shape
    o_, k_ = w2.shape
    L = (oh - 1) * wp + ow
    xf = xp.reshape(n_ * c_ * hp * wp)
    wf = w2.reshape(o_ * k_)
    offs = _tap_offsets(c_, hp, wp, kh, kw, dh, dw)
    for t in prange(ntask):
        tid = numba.get_thread_id()
        accf = ws[tid]
        acc = accf.reshape((o_, L))
        for n in range(t, n_, ntask):
            gemm_rows_at(o_, k_, L, wf, xf, n * c_ * hp * wp, offs, accf)
            for o in range(o_):
                _epilogue(acc[o], wp, bias, o, relu, pool_k, pool_s, out, argmax, n)


def _rows_at_ok(dtype, rows: int) -> bool:
    """Whether the float32 products run tracejit's own GEMM kernels (which `gemm_rows_at` is made of) for `rows`
    output channels: TRACEJIT_SGEMM=openblas (or a failed self-check) keeps the im2col copy and the BLAS call."""
    which = sgemm_choice()[0]
    return dtype == np.float32 and (which == "tracejit" or (which == "mixed" and rows <= MIXED_OWN_ROWS))


@_serial
def _fill_dy(g, mode, argmax, aux, relu, pool_k, pool_s, wp, ow, n, dyp):
    """dyp[o, r*wp + q] = the gradient at conv output (r, q) of image n, 0 in the discarded columns:
    MODE_POOL: g is the pooled gradient, routed to each window's argmax, masked by aux (pooled) > 0 if relu;
    MODE_RELU: g masked by aux (the ReLU output) > 0; MODE_PLAIN: g itself."""
    o_, L = dyp.shape
    zero = dyp.dtype.type(0)
    for o in range(o_):
        d = dyp[o]
        for q in range(L):
            d[q] = zero
        gs = g[n, o]
        if mode == MODE_POOL:
            # branch-free: the ReLU mask as a select and the 2x2 window's (a, b) by bit operations (a
            # data-dependent `continue` and an integer division per element made this pass 2x slower)
            am = argmax[n, o]
            ps = aux[n, o]
            for p in range(gs.shape[0]):
                for q in range(gs.shape[1]):
                    v = gs[p, q]
                    if relu:
                        v = v if ps[p, q] > zero else zero
                    code = np.int64(am[p, q])
                    if pool_k == 2:
                        a = code >> 1
                        b = code & 1
                    else:
                        a = code // pool_k
                        b = code - a * pool_k
                    d[(p * pool_s + a) * wp + q * pool_s + b] += v
        elif mode == MODE_RELU:
            ys = aux[n, o]
            for r in range(gs.shape[0]):
                dr = d[r * wp:]
                gr = gs[r]
                yr = ys[r]
                for q in range(ow):
                    dr[q] = gr[q] if yr[q] > zero else zero
        else:
            for r in range(gs.shape[0]):
                dr = d[r * wp:]
                gr = gs[r]
                for q in range(ow):
                    dr[q] = gr[q]


@_serial
def _tap_offsets(c_, hp, wp, kh, kw, dh, dw):
    """Where row (c*kh + i)*kw + j of one image's im2col matrix starts in its flat padded planes [C*Hp*Wp]."""
    offs = np.empty(c_ * kh * kw, np.int64)
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                offs[(c * kh + i) * kw + j] = c * hp * wp + i * dh * wp + j * dw
    return offs


@_serial
def _dw_dots(x, offs, dyp, dwt):
    """dwt[kk, o] += sum_q x[offs[kk] + q] * dyp[o, q]: the weight gradient of one image straight from its
    padded planes (x flat), no im2col copy. Dot products along the run, 2 taps x 3 channels at a time (5 loads
    per 6 multiply-adds): LeNet conv1 7.0 vs 12.5 us per image for im2col + GEMM, conv2 9.4 vs 12.2."""
    u = np.uint64
    k_ = offs.shape[0]
    o_, L = dyp.shape
    uL = u(L)
    zero = dwt.dtype.type(0)
    kk = 0
    while kk + 1 < k_:
        a0 = u(offs[kk])
        a1 = u(offs[kk + 1])
        o = 0
        while o + 2 < o_:
            y0 = dyp[o]
            y1 = dyp[o + 1]
            y2 = dyp[o + 2]
            s00 = s01 = s02 = s10 = s11 = s12 = zero
            for q in range(uL):
                x0 = x[a0 + q]
                x1 = x[a1 + q]
                s00 += x0 * y0[q]
                s01 += x0 * y1[q]
                s02 += x0 * y2[q]
                s10 += x1 * y0[q]
                s11 += x1 * y1[q]
                s12 += x1 * y2[q]
            dwt[kk, o] += s00
            dwt[kk, o + 1] += s01
            dwt[kk, o + 2] += s02
            dwt[kk + 1, o] += s10
            dwt[kk + 1, o + 1] += s11
            dwt[kk + 1, o + 2] += s12
            o += 3
        while o < o_:
            y0 = dyp[o]
            s00 = s10 = zero
            for q in range(uL):
                s00 += x[a0 + q] * y0[q]
                s10 += x[a1 + q] * y0[q]
            dwt[kk, o] += s00
            dwt[kk + 1, o] += s10
            o += 1
        kk += 2
    if kk < k_:
        a0 = u(offs[kk])
        for o in range(o_):
            y0 = dyp[o]
            s = zero
            for q in range(uL):
                s += x[a0 + q] * y0[q]
            dwt[kk, o] += s


@_parallel
def conv_bwd_kernel(xp, w2, g, mode, argmax, aux, relu, pool_k, pool_s, kh, kw, dh, dw, oh, ow, need_dx,
                    need_dw, dw_how, dot_s, top, left, dx, ntask, ws, plane, dw_part, db_part, out_dw, out_db,
                    dx_full, wt2, qbuf):
    """dw (out_dw [O, K]) and db (out_db [O], or empty) as per-task partials (dw_part [T, K, O] = dw^T, db_part
    [T, O]) added in task order, and, if need_dx, dx [N, C, H, W] (each thread's padded
    plane buffer [C, Hp*Wp] is cropped by top/left into it). ws [threads, O (+ K with dx or DW_GEMM), L] and
    plane are each thread's scratch. dw_how: DW_DOTS, the dot products of _dw_dots per image; DW_GEMM,
    dw^T += cols @ dyp^T (im2col into the dcols rows, one GEMM per image); DW_VEC (float32): each image's output
    gradient is kept (ws [threads, I*Op (+ K with dx), L] for the I images of a task, channels padded to dot_s)
    and blas.gemm.dots_block sums over all of the task's images in vector lanes, once per task (dw_part
    [T, Kp, Op], taps padded to DOT_R; padded rows and columns are computed from real memory and never read).
    dx_full (float32): dx as the full correlation of the output gradient with the flipped kernel, one
    blas.gemm.gemm_rows_at per image: wt2 [C, O*kh*kw] (w with its first two axes swapped) times rows of the
    gradient kept at pitch Wp between zero margins in qbuf [threads, O*Lq] (Lq = margin + Hp*Wp): the row of tap
    (o, i, j) starts margin - i*dh*Wp - j*dw before the plane, and positions outside the output (the margins, the
    columns past ow in each row) read zeros. No dcols product and no col2im adds."""
    n_ = g.shape[0]
    c_, hp, wp = xp.shape[1], xp.shape[2], xp.shape[3]
    o_, k_ = w2.shape
    h, w = dx.shape[2], dx.shape[3]
    x2 = xp.reshape((xp.shape[0], c_ * hp * wp))
    x3 = xp.reshape((xp.shape[0], c_, hp * wp))
    offs = _tap_offsets(c_, hp, wp, kh, kw, dh, dw)
    zero = xp.dtype.type(0)
    one = xp.dtype.type(1)
    wt = w2.T
    L = ws.shape[2]
    img = c_ * hp * wp
    xf = xp.reshape(xp.shape[0] * img)
    vec = need_dw and dw_how == DW_VEC
    kp = (k_ + DOT_R - 1) // DOT_R * DOT_R
    op_ = (o_ + dot_s - 1) // dot_s * dot_s
    offp = np.empty(kp, np.int64)  # taps past K repeat the last one (read, never stored)
    for kk in range(kp):
        offp[kk] = offs[min(kk, k_ - 1)]
    d0 = ((n_ + ntask - 1) // ntask) * op_ if vec else o_  # where dcols starts in ws[tid]
    mg = (kh - 1) * dh * wp + (kw - 1) * dw  # dx_full: zeros before each gradient row
    lq = mg + hp * wp
    kx = o_ * kh * kw
    offx = np.empty(kx, np.int64)
    for o in range(o_):
        for i in range(kh):
            for j in range(kw):
                offx[(o * kh + i) * kw + j] = o * lq + mg - i * dh * wp - j * dw
    wt2f = wt2.reshape(wt2.shape[0] * wt2.shape[1])
    dxf = dx.reshape(dx.shape[0] * dx.shape[1] * h * w)
    in_place = top == 0 and left == 0 and hp == h and wp == w  # the product's rows are dx's planes
    for t in prange(ntask):
        tid = numba.get_thread_id()
        dcols = ws[tid, d0:]
        wsf = ws[tid].reshape(ws.shape[1] * L)
        pl = plane[tid]
        dwt = dw_part[t]
        dbt = db_part[t]
        dwt[:, :] = zero
        dbt[:] = zero
        qb = qbuf[tid]
        if dx_full:
            qb[:] = zero
        mt = 0  # images of this task so far
        for n in range(t, n_, ntask):
            y0 = mt * op_ if vec else 0
            dyp = ws[tid, y0:y0 + o_]
            mt += 1
            if vec:  # channel rows past O that dot blocks read: zeros (their sums are never used)
                for o in range(o_, op_):
                    ws[tid, y0 + o, :] = zero
            _fill_dy(g, mode, argmax, aux, relu, pool_k, pool_s, wp, ow, n, dyp)
            for o in range(o_):
                s = zero
                d = dyp[o]
                for q in range(d.shape[0]):
                    s += d[q]
                dbt[o] += s
            if need_dw and not vec:  # (DW_VEC: after the task's last image)
                if dw_how == DW_GEMM:  # dcols holds this image's im2col matrix until dx overwrites it
                    _im2col(x3[n], kh, kw, dh, dw, wp, dcols)
                    gemm_beta(dcols, dyp.T, dwt, one)
                else:
                    _dw_dots(x2[n], offs, dyp, dwt)
            if need_dx and dx_full:
                for o in range(o_):
                    src = dyp[o]
                    dst = qb[o * lq + mg:]
                    for q in range(L):
                        dst[q] = src[q]
                plf = pl.reshape(pl.shape[0] * pl.shape[1])
                # one call site: each inlined copy of the product costs seconds of Numba compile on a fresh install
                gemm_rows_at(c_, kx, h * wp, wt2f, qb, top * wp, offx, dxf[n * c_ * h * w:] if in_place else plf)
                if not in_place:
                    for c in range(c_):
                        dxc = dx[n, c]
                        for r in range(h):
                            src = plf[(c * h + r) * wp + left:]
                            dr = dxc[r]
                            for q in range(w):
                                dr[q] = src[q]
            elif need_dx:
                gemm_beta(wt, dyp, dcols, zero)
                for c in range(c_):
                    pc = pl[c]
                    for q in range(pc.shape[0]):
                        pc[q] = zero
                    for i in range(kh):
                        for j in range(kw):
                            row = dcols[(c * kh + i) * kw + j]
                            dst = pc[i * dh * wp + j * dw:]
                            for q in range(L):
                                dst[q] += row[q]
                    dxc = dx[n, c]
                    for r in range(h):
                        src = pc[(r + top) * wp + left:]
                        dr = dxc[r]
                        for q in range(w):
                            dr[q] = src[q]
        if vec and mt > 0:
            dwf = dw_part[t].reshape(kp * op_)
            for kb in range(0, kp, DOT_R):
                ob = offp[kb:]
                for o0 in range(0, op_, dot_s):
                    dots_block(dot_s, L, xf, t * img, ntask * img, ob, wsf, o0 * L, op_ * L, L, mt, dwf,
                               kb * op_ + o0, op_)
    # the partials in task order (as np.sum over the first axis): the same bits at any thread count
    if need_dw:
        for o in range(o_):
            for kk in range(k_):
                acc = zero
                for t in range(ntask):
                    acc += dw_part[t, kk, o]
                out_dw[o, kk] = acc
    for o in range(out_db.shape[0]):
        acc = zero
        for t in range(ntask):
            acc += db_part[t, o]
        out_db[o] = acc


# ------------------------------------------------------------------------------------ Python API
_pool: dict = {}


def _take(shape, dtype) -> np.ndarray:
    """A scratch array from a small free list (reused across calls; the caller gives it back)."""
    free = _pool.get((shape, dtype))
    return free.pop() if free else np.empty(shape, dtype)


def _give(a: np.ndarray) -> None:
    _pool.setdefault((a.shape, a.dtype), []).append(a)


def _tasks(n: int) -> int:
    """Parallel tasks (image chunks): TASKS_PER_THREAD per thread, so that a worker that wakes late still
    finds work left; never more than images."""
    return max(1, min(n, TASKS_PER_THREAD * numba.get_num_threads()))


TASKS_PER_THREAD = 8


def _threads() -> int:
    """Scratch buffers per thread id (numba.get_thread_id() ranges over the pool, not the current count)."""
    return max(numba.config.NUMBA_NUM_THREADS, numba.get_num_threads())


# Output runs (L = (oh-1)*Wp + ow) up to this long go through GEMM: the direct kernels' inner loops run
# over L, and short runs are mostly loop overhead and scalar tails (LeNet conv2, L = 136: GEMM 0.41 vs
# 0.81 ms forward, 1.1 vs 2.0 ms backward); on long runs with few output channels they win (LeNet conv1, L = 892,
# O = 6: 0.53 vs 0.59 ms), where OpenBLAS leaves its small-matrix kernels.
MAX_RUN = 512
# Up to this long: the forward with tracejit's own float32 GEMM (blas.gemm), which reads a short-row weight matrix
# and the im2col runs where they lie (2-core Zen 5, ms, GEMM vs direct: LeNet conv1 L = 892 0.37 vs 0.39; the
# 32x32 conv block, L = 1086, 1.33 vs 1.70), and with OpenBLAS where there are FORWARD_MIN_CHANNELS output
# channels or more; every backward (its weight gradient by GEMM where there are DW_GEMM_MIN_CHANNELS). One-thread
# CPU ms, GEMM vs direct, tracejit's GEMM (AVX-512) / OpenBLAS (TRACEJIT_FAKE_ISA=avx2, the same VM):
#   conv block x[32,16,32,32] w[32,16,3,3] p1 (L = 1086, O = 32): forward 3.9 vs 4.2 / 6.7 vs 7.8;
#                                     backward dx, dw, db 8.6 vs 9.4 (fused direct) / 9.4 vs 16.3
#   LeNet conv1 (L = 892, O = 6):     forward 1.0 vs 0.85 / 1.13 vs 1.03 (direct with OpenBLAS; with tracejit's
#                                     GEMM the direct forward kernel would cost ~5 s more compile on a fresh
#                                     install); backward dw, db 0.81 vs 0.9 / 0.84 vs 1.66
# and the GEMM backward needs no direct backward kernels at all, whose Numba compile on a fresh install was ~18 s
# of the LeNet example's first call.
MAX_RUN_LONG = 2048
FORWARD_MIN_CHANNELS = 16
# The weight gradient as im2col + one GEMM per image (cols @ dy^T) where there are this many output channels, else
# _dw_dots: one-thread CPU ms, the conv block (O = 32, L = 1086) 3.7 by GEMM vs 4.7 by dots; LeNet conv2 (O = 16,
# L = 136) 0.84 vs 0.74 and conv1 (O = 6, L = 892) 0.96 vs 0.65.
DW_GEMM_MIN_CHANNELS = 32


# DW_VEC keeps the output gradients of a task's images (I x O x L floats per thread) up to this many bytes
# (LeNet conv1 at one thread: 8 x 6 x 892 x 4 = 171 KB). AVX-512 only: with LLVM held to AVX2 on the Zen 5 (2 taps
# x 3-4 channels of ymm accumulators), one-thread CPU ms, dots -> lanes: LeNet conv1 backward (L = 892) 0.78 ->
# 0.84, conv2 (L = 136) 1.29 -> 1.19 alone but the compiled LeNet step 4.22 -> 4.29 ms (8 alternating rounds)
DW_VEC_MAX_BYTES = 512 * 1024
# The input gradient as one full correlation per image (conv_bwd_kernel's dx_full) where the float32 products run
# tracejit's GEMM, rather than dcols = w^T @ dy and col2im adds. AVX-512 only: with LLVM held to AVX2 on the Zen 5
# (its 6 x 16 kernel on 6 input channels) the compiled LeNet step was 1.4% slower with it (one thread, 8 alternating
# rounds: 4.31 -> 4.38 ms), though the conv block's backward alone gained (9.08 -> 8.63 ms)
DX_FULL = V == 16


def _dw_how(dtype, o: int, k: int, images: int, run: int = 0) -> tuple[int, int]:
    """(how conv_bwd_kernel sums the weight gradient, the output channels per dot block) for `images` per task."""
    if o >= DW_GEMM_MIN_CHANNELS:
        return DW_GEMM, 4
    dot_s = 3 if o % 4 and o % 3 == 0 else 4
    kept = images * -(-o // dot_s) * dot_s * run * 4
    if V == 16 and _rows_at_ok(dtype, o) and kept <= DW_VEC_MAX_BYTES:
        return DW_VEC, dot_s
    return DW_DOTS, 4


def prefer(x_shape, w_shape, stride, padding, dilation, groups, backward=False) -> bool:
    """Whether this path runs the conv (forward, or backward when `backward`): stride 1, groups 1 (any
    padding and dilation) and runs up to MAX_RUN, or MAX_RUN_LONG where the GEMM wins on long runs too."""
    if tuple(stride) != (1, 1) or groups != 1:
        return False
    run = _geometry(x_shape, w_shape, padding, dilation)[4]
    if run <= MAX_RUN:
        return True
    long_ok = backward or sgemm_choice()[0] == "tracejit" or w_shape[0] >= FORWARD_MIN_CHANNELS
    return long_ok and run <= MAX_RUN_LONG


def _geometry(x_shape, w_shape, padding, dilation):
    n, c, h, w = x_shape
    o, _, kh, kw = w_shape
    hp, wp = h + 2 * padding[0], w + 2 * padding[1]
    oh, ow = hp - dilation[0] * (kh - 1), wp - dilation[1] * (kw - 1)
    return hp, wp, oh, ow, (oh - 1) * wp + ow


def conv_forward(x, w, bias, out, argmax, padding, dilation, relu, pool_k, pool_s) -> None:
    """out[...] = conv2d (stride 1, groups 1) + bias (None: none) -> ReLU if relu -> max-pool(pool_k,
    pool_s) with uint8 argmax when pool_k > 0 (argmax ignored otherwise). x, w C-contiguous."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    if pool_k > 0 and (pool_k > 16 or argmax.dtype != np.uint8):  # positions 0 .. pool_k**2 - 1 must fit uint8
        raise ValueError(f"conv_forward: a {pool_k}x{pool_k} pool needs a uint8 argmax and pool_k <= 16, got "
                         f"{argmax.dtype.name}")
    hp, wp, oh, ow, L = _geometry(x.shape, w.shape, padding, dilation)
    xp = padded_input(x, padding)
    b = np.zeros(0, x.dtype) if bias is None else bias
    if _rows_at_ok(x.dtype, o):
        ws = _take((_threads(), o * L), x.dtype)
        try:
            conv_fwd_rows_kernel(xp, w.reshape(o, c * kh * kw), b, kh, kw, dilation[0], dilation[1], oh, ow, relu,
                                 pool_k, pool_s, out, argmax, _tasks(n), ws)
        finally:
            _give(ws)
        return
    ws = _take((_threads(), c * kh * kw + o, L), x.dtype)
    blas.set_threads(1)
    try:
        conv_fwd_kernel(xp, w.reshape(o, c * kh * kw), b, kh, kw, dilation[0], dilation[1], oh, ow, relu,
                        pool_k, pool_s, out, argmax, _tasks(n), ws)
    finally:
        _give(ws)


def conv_backward(x, w, g, mode, argmax, aux, padding, dilation, out_dx, out_dw, out_db, relu=False,
                  pool_k=0, pool_s=1) -> None:
    """Gradients of a stride-1 ungrouped conv2d from its output gradient g (see _fill_dy for `mode`):
    out_dx [N, C, H, W], out_dw [O, C, kh, kw], out_db [O], each None to skip. x, w, g, argmax, aux
    C-contiguous (argmax/aux may be dummies where the mode does not read them). Sums run in task order,
    so the bits depend on the thread count only through the task count."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    hp, wp, oh, ow, L = _geometry(x.shape, w.shape, padding, dilation)
    k = c * kh * kw
    need_dx, need_dw = out_dx is not None, out_dw is not None
    # without dw the kernel never reads x: a one-image placeholder carries the padded geometry
    xp = padded_input(x, padding) if need_dw else np.empty((1, c, hp, wp), x.dtype)
    ntask = _tasks(n)
    nthr = _threads()
    dw_how, dot_s = _dw_how(x.dtype, o, k, -(-n // ntask), L) if need_dw else (DW_DOTS, 4)
    dx_full = need_dx and _rows_at_ok(x.dtype, c) and DX_FULL
    dcols = k if (need_dx and not dx_full) or dw_how == DW_GEMM else 0
    if dw_how == DW_VEC:  # each task's images' output gradients, then dcols
        rows = -(-n // ntask) * -(-o // dot_s) * dot_s + dcols
        dw_part = _take((ntask, -(-k // DOT_R) * DOT_R, -(-o // dot_s) * dot_s), x.dtype)
    else:
        rows = o + dcols
        dw_part = _take((ntask, k, o), x.dtype)
    ws = _take((nthr, rows, L), x.dtype)
    plane = _take((nthr, c, hp * wp) if need_dx else (nthr, 1, 1), x.dtype)
    lq = (kh - 1) * dilation[0] * wp + (kw - 1) * dilation[1] + hp * wp
    qbuf = _take((nthr, o * lq) if dx_full else (nthr, 1), x.dtype)
    wt2 = np.ascontiguousarray(w.transpose(1, 0, 2, 3)).reshape(c, o * kh * kw) if dx_full else \
        np.empty((1, 1), x.dtype)
    db_part = _take((ntask, o), x.dtype)
    dx = out_dx if need_dx else np.empty((1, 1, 1, 1), x.dtype)
    dw2 = out_dw.reshape(o, k) if need_dw else np.empty((1, 1), x.dtype)
    db = out_db if out_db is not None else np.empty(0, x.dtype)
    blas.set_threads(1)
    try:
        conv_bwd_kernel(xp, w.reshape(o, k), g, mode, argmax, aux, relu, pool_k, pool_s, kh, kw, dilation[0],
                        dilation[1], oh, ow, need_dx, need_dw, dw_how, dot_s, padding[0], padding[1], dx, ntask, ws,
                        plane, dw_part, db_part, dw2, db, dx_full, wt2, qbuf)
    finally:
        for a in (ws, plane, dw_part, db_part, qbuf):
            _give(a)
