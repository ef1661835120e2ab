"""tracejit's own float32 GEMM: packed operands and a register-blocked micro-kernel written as LLVM vector IR.

Why: OpenBLAS is only as fast as the kernels it runs, and OPENBLAS_CORETYPE (set on machines where older
OpenBLAS builds misbehave) can hold it to AVX2 kernels on an AVX-512 CPU. GFLOP/s of C = op(A) @ op(B), one
thread, median of 40-200 calls through Numba, 2-core Zen 5 VM (the VM's phases move these by 10-20%):

    M x N x K, layout            this GEMM   OpenBLAS 0.3.30, SkylakeX kernels   its Haswell kernels
    128 x 512 x 784, A @ B^T        165          181-187                             98-103
    512 x 784 x 128, A^T @ B        203-211      196-209                            110-116
    128 x 256 x 512, A @ B          180-188      167-182                             98-106
    6 x 892 x 75 (LeNet conv1)      136-152      146-171                                 26
    75 x 6 x 892, A @ B^T (dw)       78-107      113-145                              32-33
    1000 x 1000 x 1000              150-196      196-207                            111-114

Split over two threads inside a training step, where OpenBLAS's packing of each half costs it more, this GEMM
made the MLP benchmark step 10-20% faster than OpenBLAS's SkylakeX kernels, and against its Haswell kernels
2.4 -> 1.8 ms (LeNet 3.7 -> 2.0 ms). So `blas.calls` calls it for float32 on AVX-512 CPUs, and without AVX-512
for skinny products (its 6 x 16 AVX2 shape: 70-88 GFLOP/s one thread on this CPU held to AVX2, where OpenBLAS's
Haswell kernels ran 16-77 on up to 96 rows and 90-100 on big products; `blas.calls._sgemm_mixed`).

How (the Goto/BLIS scheme, in miniature): for each KC-deep slice of K, B's slice is packed into NR-wide
column panels [KC][NR] and A's rows, MC at a time, into MR-high row panels [KC][MR] (transposed operands are
packed from where they lie, so no copy of a transpose is ever made). The micro-kernel keeps an MR x NR block
of C in MR * NR / V vector registers for the whole KC loop: per k, NR / V vector loads of B, MR broadcasts of A
and MR * NR / V fused multiply-adds (8 x 32 with 16-float vectors: 16 accumulators, 19 of 32 registers).
Edge rows run on kernels of 6, 4, 2 and 1 rows, edge columns under load/store masks: nothing outside the
operands is read and nothing outside C written, and no edge block is copied.

Operands whose rows both run along k with few output columns (weight gradients: 75 x 892 @ 892 x 6) are
dot products instead (`_gemm_dots`), and small operands are read where they lie rather than packed.
`blas.calls` decides when this GEMM runs instead of OpenBLAS and how generated code reaches it.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..jit import helper, host_avx512

# Register blocking: MR rows of C by NR columns, NR = 2 vectors. AVX-512: 8 x 32 (16 zmm accumulators);
# otherwise 6 x 16 (12 of the 16 ymm registers), the classic Haswell shape.
V = 16 if host_avx512() else 8
MR = 8 if V == 16 else 6
NR = 2 * V
KC = 256  # B's micro-panel KC x NR (32 KB) stays in L1 while A's panels stream from L2
# rows of A packed at once: MC x KC (64 KB) stays in L2 beside B's packed slice; a whole number of MR-row
# blocks (60 for the 6-row AVX2 kernel), so no block of one row group reaches into the next
MC = (64 // MR) * MR
NC = 2048  # columns of B packed at once (a 50000-wide output would otherwise pack 51 MB per K slice)
PACK_B_ROWS = 4 * MR  # pack B when more rows than this reuse its panels
# pack A only when it outgrows L2 and several column panels reuse its blocks: below that, reading its rows where
# they lie was 5-15% faster on the MLP's GEMMs (each thread of a split GEMM packed all of A again)
PACK_A_PANELS = 2
PACK_A_ELEMS = 128 * 1024


def _codegen_micro(rows: int, gather: bool = False):
    """LLVM for C[0:rows, 0:ncols] (row pitch ldc, from element c_off of c) = (C if add else 0) + A @ B over
    kc steps, with A[i, p] = ap[a_off + i*rsa + p*csa] (a packed panel: rsa = 1, csa = MR; or A where it lies)
    and B's row p at bp[b_off + p*rsb] (a packed panel: rsb = NR; or B itself, row-major), ncols <= NR.
    Columns past ncols are neither read from B nor written to C (masked loads and stores, which cost AVX-512
    nothing), so edge panels need no copies. `gather`: rsb is an int64 array and B's row p is at
    bp[b_off + rsb[p]] (a conv's im2col rows read where they lie in the input planes: `gemm_rows_at`); that form
    compiles to nothing for other dtypes than float32 (float64 conv kernels type it on a path they never take)."""

    def codegen(context, builder, sig, args):
        if gather and any(sig.args[i].dtype != types.float32 for i in (1, 5, 10)):
            return context.get_dummy_value()
        kc, ap, a_off, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off, ldc, add = args
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        vt = ir.VectorType(ir.FloatType(), V)
        mt = ir.VectorType(ir.IntType(1), V)
        vp = vt.as_pointer()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{V}f32")
        mload = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vp, i32, mt, vt]),
                                               f"llvm.masked.load.v{V}f32.p0")
        mstore = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [vt, vp, i32, mt]),
                                                f"llvm.masked.store.v{V}f32.p0")

        def data(k, arr):
            return context.make_array(sig.args[k])(context, builder, arr).data

        a0 = builder.gep(data(1, ap), [a_off])
        b0 = builder.gep(data(5, bp), [b_off])
        c0 = builder.gep(data(10, c), [c_off])
        offs = data(7, rsb) if gather else None
        zero = ir.Constant(vt, [0.0] * V)
        four = ir.Constant(i32, 4)
        lanes = ir.Constant(ir.VectorType(i64, V), list(range(V)))
        masks = []
        for h in range(NR // V):  # lane j of vector h is live where h*V + j < ncols
            live = builder.sub(ncols, ir.Constant(i64, h * V))
            splat_live = builder.shuffle_vector(
                builder.insert_element(ir.Constant(ir.VectorType(i64, V), ir.Undefined), live, ir.Constant(i32, 0)),
                ir.Constant(ir.VectorType(i64, V), ir.Undefined), ir.Constant(ir.VectorType(i32, V), [0] * V))
            masks.append(builder.icmp_signed("<", lanes, splat_live))
        # accumulators as allocas: LLVM's mem2reg turns them into registers (loop-carried phis)
        acc = [[cgutils.alloca_once(builder, vt) for _ in range(NR // V)] for _ in range(rows)]
        for row in acc:
            for a in row:
                builder.store(zero, a)
        splat = ir.Constant(ir.VectorType(i32, V), [0] * V)

        def k_loop(masked: bool):
            with cgutils.for_range(builder, kc) as loop:
                k = loop.index
                if gather:
                    bk = builder.gep(b0, [builder.load(builder.gep(offs, [k]))])
                else:
                    bk = builder.gep(b0, [builder.mul(k, rsb)])
                bptr = [builder.bitcast(builder.gep(bk, [ir.Constant(i64, h * V)]), vp) for h in range(NR // V)]
                bv = [builder.call(mload, [bptr[h], four, masks[h], zero]) if masked else
                      builder.load(bptr[h], align=4) for h in range(NR // V)]
                ak = builder.gep(a0, [builder.mul(k, csa)])
                for i in range(rows):
                    x = builder.load(builder.gep(ak, [builder.mul(rsa, ir.Constant(i64, i))]))
                    xv = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(i32, 0))
                    xv = builder.shuffle_vector(xv, ir.Constant(vt, ir.Undefined), splat)
                    for h in range(NR // V):
                        builder.store(builder.call(fma, [xv, bv[h], builder.load(acc[i][h])]), acc[i][h])

        # B's rows readable NR wide (a packed, zero-padded panel, or a whole panel in place): plain loads. AVX2
        # has no mask registers: masked loads kept two masks in ymm registers beside 12 accumulators, and the
        # 6 x 16 kernel spilled its accumulators to the stack on every k step
        with builder.if_else(builder.icmp_unsigned("!=", bfull, ir.Constant(bfull.type, 0))) as (full, edge):
            with full:
                k_loop(False)
            with edge:
                k_loop(True)
        is_add = builder.icmp_unsigned("!=", add, ir.Constant(add.type, 0))
        for i in range(rows):
            ci = builder.gep(c0, [builder.mul(ldc, ir.Constant(ldc.type, i))])
            for h in range(NR // V):
                p = builder.bitcast(builder.gep(ci, [ir.Constant(ldc.type, h * V)]), vp)
                v = builder.load(acc[i][h])
                with builder.if_then(is_add):
                    builder.store(builder.fadd(builder.call(mload, [p, four, masks[h], zero]), v), acc[i][h])
                builder.call(mstore, [builder.load(acc[i][h]), p, four, masks[h]])
        return context.get_dummy_value()

    return codegen


def _micro_for(rows: int, gather: bool = False):
    @intrinsic
    def micro(typingctx, kc, ap, a_off, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off, ldc, add):
        return (types.void(kc, ap, a_off, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off, ldc, add),
                _codegen_micro(rows, gather))

    return micro


# A block of h < MR rows runs as kernels of these heights (h = 7: 6 + 1), each writing its rows in place:
# LeNet's 6-channel conv then does 12 multiply-adds per k, not 16 of which 4 are thrown away.
_micro = _micro_for(MR)
_micro6 = _micro_for(6)
_micro4 = _micro_for(4)
_micro2 = _micro_for(2)
_micro1 = _micro_for(1)


@helper(cache=True, error_model="numpy", fastmath=True)
def _micro_rows(h, kc, ap, a_off, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off, ldc, add):
    """`_micro` for any h <= MR rows."""
    i = 0
    while i < h:
        r = h - i
        if r >= MR:
            _micro(kc, ap, a_off + i * rsa, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off + i * ldc,
                   ldc, add)
            i += MR
        elif r >= 6:
            _micro6(kc, ap, a_off + i * rsa, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off + i * ldc,
                    ldc, add)
            i += 6
        elif r >= 4:
            _micro4(kc, ap, a_off + i * rsa, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off + i * ldc,
                    ldc, add)
            i += 4
        elif r >= 2:
            _micro2(kc, ap, a_off + i * rsa, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off + i * ldc,
                    ldc, add)
            i += 2
        else:
            _micro1(kc, ap, a_off + i * rsa, rsa, csa, bp, b_off, rsb, ncols, bfull, c, c_off + i * ldc,
                    ldc, add)
            i += 1


_gmicro = _micro_for(MR, True)
_gmicro6 = _micro_for(6, True)
_gmicro4 = _micro_for(4, True)
_gmicro2 = _micro_for(2, True)
_gmicro1 = _micro_for(1, True)


@helper(cache=True, error_model="numpy", fastmath=True)
def gemm_rows_at(m, k, n, a, b, b_off, offs, c):
    """c[i*n + j] = sum_p a[i*k + p] * b[b_off + offs[p] + j] for i < m, j < n (float32, flat arrays; C not
    read): a product whose right operand's row p is the run of b starting at b_off + offs[p]. A stride-1 conv's
    im2col matrix is such rows at its taps' offsets into the padded input planes (window.im2col), so the
    product reads them where they lie (a few KB, in L1) instead of copying K x n elements first. Every
    b[b_off + offs[p] + j] with j < n must lie inside b; nothing past it is read. For other dtypes than float32
    it does nothing (window.im2col's float64 kernels type it on a path they never take)."""
    u = np.uint64
    for j0 in range(0, n, NR):
        w = min(NR, n - j0)
        full = w == NR
        for pc in range(0, k, KC):
            kc = min(KC, k - pc)
            add = pc > 0
            ob = offs[pc:]
            i = 0
            while i < m:
                r = m - i
                a_off = u(i * k + pc)
                c_off = u(i * n + j0)
                if r >= MR:
                    _gmicro(kc, a, a_off, k, 1, b, u(b_off + j0), ob, w, full, c, c_off, n, add)
                    i += MR
                elif r >= 6:
                    _gmicro6(kc, a, a_off, k, 1, b, u(b_off + j0), ob, w, full, c, c_off, n, add)
                    i += 6
                elif r >= 4:
                    _gmicro4(kc, a, a_off, k, 1, b, u(b_off + j0), ob, w, full, c, c_off, n, add)
                    i += 4
                elif r >= 2:
                    _gmicro2(kc, a, a_off, k, 1, b, u(b_off + j0), ob, w, full, c, c_off, n, add)
                    i += 2
                else:
                    _gmicro1(kc, a, a_off, k, 1, b, u(b_off + j0), ob, w, full, c, c_off, n, add)
                    i += 1


# Dot-product blocks (`dots_block`): DOT_R rows of A against S = 4 or 3 rows of D, R * S vector accumulators beside
# R + S loaded vectors (16 + 8 of the 32 zmm registers; 8 + 6 of the 16 ymm ones)
DOT_R = 4 if V == 16 else 2


def _codegen_dots(S: int):
    """LLVM for out[o_off + r*ldo + s] = sum over images m < nimg and q < n of a[a_off + m*a_step + offs[r] + q] *
    d[d_off + m*d_step + s*ldd + q], for r < DOT_R, s < S: R x S dot products over several images' runs, summed
    in V-lane vectors (each lane in image and q order) whose lanes are added once at the end by a fixed tree, so
    a short run costs no horizontal sum per image. The tail q >= n - n % V of each run is read under a mask:
    nothing past a run is read. float32 only: for other dtypes (a float64 kernel that never takes this path) it
    compiles to nothing."""

    def codegen(context, builder, sig, args):
        if sig.args[1].dtype != types.float32:
            return context.get_dummy_value()
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        vt = ir.VectorType(ir.FloatType(), V)
        vp = vt.as_pointer()
        mt = ir.VectorType(ir.IntType(1), V)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{V}f32")
        mload = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vp, i32, mt, vt]),
                                               f"llvm.masked.load.v{V}f32.p0")
        n, a_off, a_step, d_off, d_step, ldd, nimg, o_off, ldo = (
            context.cast(builder, args[i], sig.args[i], types.int64) for i in (0, 2, 3, 6, 7, 8, 9, 11, 12))

        def data(k):
            return context.make_array(sig.args[k])(context, builder, args[k]).data

        ad, od, dd, outd = data(1), data(4), data(5), data(10)
        offs = [builder.load(builder.gep(od, [ir.Constant(i64, r)])) for r in range(DOT_R)]
        zero = ir.Constant(vt, [0.0] * V)
        four = ir.Constant(i32, 4)
        acc = [[cgutils.alloca_once(builder, vt) for _ in range(S)] for _ in range(DOT_R)]
        for row in acc:
            for a in row:
                builder.store(zero, a)
        nfull = builder.and_(n, ir.Constant(i64, ~(V - 1)))
        live = builder.sub(n, nfull)
        splat = builder.shuffle_vector(
            builder.insert_element(ir.Constant(ir.VectorType(i64, V), ir.Undefined), live, ir.Constant(i32, 0)),
            ir.Constant(ir.VectorType(i64, V), ir.Undefined), ir.Constant(ir.VectorType(i32, V), [0] * V))
        tail_mask = builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, V), list(range(V))), splat)
        with cgutils.for_range(builder, nimg) as img:
            m = img.index
            abase = builder.add(a_off, builder.mul(m, a_step))
            dbase = builder.add(d_off, builder.mul(m, d_step))
            arow = [builder.gep(ad, [builder.add(abase, offs[r])]) for r in range(DOT_R)]
            drow = [builder.gep(dd, [builder.add(dbase, builder.mul(ldd, ir.Constant(i64, s_)))]) for s_ in range(S)]

            def step(q, mask):
                def ld(row):
                    p = builder.bitcast(builder.gep(row, [q]), vp)
                    return builder.load(p, align=4) if mask is None else builder.call(mload, [p, four, mask, zero])

                av = [ld(r) for r in arow]
                dv = [ld(s_) for s_ in drow]
                for r in range(DOT_R):
                    for s_ in range(S):
                        builder.store(builder.call(fma, [av[r], dv[s_], builder.load(acc[r][s_])]), acc[r][s_])

            with cgutils.for_range_slice(builder, ir.Constant(i64, 0), nfull, ir.Constant(i64, V), i64) as (q, _):
                step(q, None)
            with builder.if_then(builder.icmp_signed("<", nfull, n)):
                step(nfull, tail_mask)
        for r in range(DOT_R):
            for s_ in range(S):
                v = builder.load(acc[r][s_])
                w = V
                while w > 1:  # lanes [0, w/2) + [w/2, w), halving down to one
                    w //= 2
                    lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, w), list(range(w))))
                    hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, w), list(range(w, 2 * w))))
                    v = builder.fadd(lo, hi)
                total = builder.extract_element(v, ir.Constant(i32, 0))
                off = builder.add(o_off, builder.add(builder.mul(ldo, ir.Constant(i64, r)), ir.Constant(i64, s_)))
                builder.store(total, builder.gep(outd, [off]))
        return context.get_dummy_value()

    return codegen


def _dots_for(S: int):
    @intrinsic
    def dots(typingctx, n, a, a_off, a_step, offs, d, d_off, d_step, ldd, nimg, out, o_off, ldo):
        return types.void(n, a, a_off, a_step, offs, d, d_off, d_step, ldd, nimg, out, o_off, ldo), _codegen_dots(S)

    return dots


_dots4 = _dots_for(4)
_dots3 = _dots_for(3)


@helper(cache=True, error_model="numpy", fastmath=True)
def dots_block(s, n, a, a_off, a_step, offs, d, d_off, d_step, ldd, nimg, out, o_off, ldo):
    """`_codegen_dots` for DOT_R rows of A (row r of image m at a[a_off + m*a_step + offs[r]]) against s = 4 or 3
    rows of D (row s of image m at d[d_off + m*d_step + s*ldd])."""
    if s == 4:
        _dots4(n, a, a_off, a_step, offs, d, d_off, d_step, ldd, nimg, out, o_off, ldo)
    else:
        _dots3(n, a, a_off, a_step, offs, d, d_off, d_step, ldd, nimg, out, o_off, ldo)


@intrinsic
def _tile_t(typingctx, x, x_off, ld, dst, d_off, width):
    """dst[d_off + kk*width + jj] = x[x_off + jj*ld + kk] for kk, jj < V: one V x V tile transposed in registers
    (V row loads, log2(V) rounds of V two-source shuffles, V row stores) where a scalar transposing copy makes
    one strided access per element: packing B = W^T (the LSTM's 20 x 1024 x 256 recurrent GEMM) took as long
    as the product."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        vt = ir.VectorType(ir.FloatType(), V)
        vp = vt.as_pointer()
        xo, ldv, do, wv = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 5))
        xd = context.make_array(sig.args[0])(context, builder, args[0]).data
        dd = context.make_array(sig.args[3])(context, builder, args[3]).data
        rows = []
        for jj in range(V):
            ptr = builder.gep(xd, [builder.add(xo, builder.mul(ldv, ir.Constant(i64, jj)))])
            rows.append(builder.load(builder.bitcast(ptr, vp), align=4))
        b = 1
        while b < V:  # swap the off-diagonal b x b blocks of every 2b x 2b block
            lo = [j if not j & b else V + j - b for j in range(V)]
            hi = [j + b if not j & b else V + j for j in range(V)]
            for i in range(V):
                if i & b:
                    continue
                x_, y_ = rows[i], rows[i + b]
                rows[i] = builder.shuffle_vector(x_, y_, ir.Constant(ir.VectorType(ir.IntType(32), V), lo))
                rows[i + b] = builder.shuffle_vector(x_, y_, ir.Constant(ir.VectorType(ir.IntType(32), V), hi))
            b *= 2
        for kk in range(V):
            ptr = builder.gep(dd, [builder.add(do, builder.mul(wv, ir.Constant(i64, kk)))])
            builder.store(rows[kk], builder.bitcast(ptr, vp), align=4)
        return context.get_dummy_value()

    return types.void(x, x_off, ld, dst, d_off, width), codegen


@helper(cache=True, error_model="numpy", fastmath=True)
def _pack(x, across, p0, j0, ld, kc, w, width, dst, d0):
    """dst[d0 + kk*width + jj] = X[p0 + kk, j0 + jj] for kk < kc, jj < w, and 0 for w <= jj < width, where
    X[p, j] = x[p*ld + j] (`across` = 0: each kk is a contiguous run) or x[j*ld + p] (`across` = 1: each jj is
    one). Indices are unsigned (no wraparound checks)."""
    zero = np.float32(0)
    u = np.uint64
    kt = 0
    if across and w == width and width % V == 0:  # whole V x V tiles transposed in registers (_tile_t)
        kt = kc - kc % V
        for kk in range(0, kt, V):
            for jj in range(0, width, V):
                _tile_t(x, np.int64((j0 + jj) * ld + p0 + kk), np.int64(ld), dst, np.int64(d0 + kk * width + jj),
                        np.int64(width))
    if across:  # gathers along each destination row: 0.080 vs 0.118 ms for 784 x 512 as source-ordered stores
        for kk in range(u(kt), u(kc)):
            row = u(d0) + kk * u(width)
            src = u(j0) * u(ld) + u(p0) + kk
            if w == width:
                for jj in range(u(width)):
                    dst[row + jj] = x[src + jj * u(ld)]
            else:
                for jj in range(u(w)):
                    dst[row + jj] = x[src + jj * u(ld)]
                for jj in range(u(w), u(width)):
                    dst[row + jj] = zero
    elif w == width:
        for kk in range(u(kc)):
            src = (u(p0) + kk) * u(ld) + u(j0)
            row = u(d0) + kk * u(width)
            for jj in range(u(width)):
                dst[row + jj] = x[src + jj]
    else:
        for kk in range(u(kc)):
            src = (u(p0) + kk) * u(ld) + u(j0)
            row = u(d0) + kk * u(width)
            for jj in range(u(w)):
                dst[row + jj] = x[src + jj]
            for jj in range(u(w), u(width)):
                dst[row + jj] = zero


@numba.njit(cache=True, error_model="numpy", fastmath=True, inline="always")
def _put(c, idx, v, add):
    if add:
        c[idx] += v
    else:
        c[idx] = v


@helper(cache=True, error_model="numpy", fastmath=True)
def _gemm_dots(m, n, k, a, lda, d, ldd, c, ldc, add):
    """C (+)= A @ D^T with A's rows and D's rows both contiguous along k: each C element is a dot product of
    two rows, vectorized along k, four at a time (2 x 2 rows). For a few output columns (a weight gradient
    over a long run: 75 x 892 @ 892 x 6) a packed NR-wide panel would be mostly zeros: this runs it at
    ~107 GFLOP/s one thread, the panel kernel at ~20."""
    u = np.uint64
    mm, nn, uk = u(m), u(n), u(k)
    i = u(0)
    while i + u(1) < mm:
        a0 = i * u(lda)
        a1 = a0 + u(lda)
        c0 = i * u(ldc)
        c1 = c0 + u(ldc)
        j = u(0)
        while j + u(1) < nn:
            d0 = j * u(ldd)
            d1 = d0 + u(ldd)
            s00 = s01 = s10 = s11 = np.float32(0)
            for p in range(uk):
                x0 = a[a0 + p]
                x1 = a[a1 + p]
                y0 = d[d0 + p]
                y1 = d[d1 + p]
                s00 += x0 * y0
                s01 += x0 * y1
                s10 += x1 * y0
                s11 += x1 * y1
            _put(c, c0 + j, s00, add)
            _put(c, c0 + j + u(1), s01, add)
            _put(c, c1 + j, s10, add)
            _put(c, c1 + j + u(1), s11, add)
            j += u(2)
        if j < nn:
            d0 = j * u(ldd)
            s00 = s10 = np.float32(0)
            for p in range(uk):
                y0 = d[d0 + p]
                s00 += a[a0 + p] * y0
                s10 += a[a1 + p] * y0
            _put(c, c0 + j, s00, add)
            _put(c, c1 + j, s10, add)
        i += u(2)
    if i < mm:
        a0 = i * u(lda)
        for j in range(nn):
            d0 = j * u(ldd)
            s = np.float32(0)
            for p in range(uk):
                s += a[a0 + p] * d[d0 + p]
            _put(c, i * u(ldc) + j, s, add)


@helper(cache=True, error_model="numpy", fastmath=True)
def sgemm_arrays(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta):
    """C = op(A) @ op(B) + beta * C on row-major buffers: op(A) is m x k, read as A[i, p] = a[i*lda + p], or
    a[p*lda + i] where ta = 1 (the operand is the transpose of the buffer); likewise B (k x n) with tb; C is
    m x n with row pitch ldc. With beta = 0, C is not read (it may hold NaN)."""
    if m <= 0 or n <= 0:
        return
    zero = np.float32(0)
    if beta != zero and beta != np.float32(1):
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] *= beta
    if k <= 0:
        if beta == zero:
            for i in range(m):
                for j in range(n):
                    c[i * ldc + j] = zero
        return
    if ta == 0 and tb != 0 and (n < NR or m <= 2 * MR):
        _gemm_dots(m, n, k, a, lda, b, ldb, c, ldc, beta != zero)
        return
    nb = (n + NR - 1) // NR
    kcm = min(KC, k)
    # Packing B pays when its panels serve many row blocks, and is needed where its rows are not contiguous
    # (tb); packing A pays when a large A's blocks serve several column panels. Otherwise the micro-kernel
    # reads the operands where they lie (LeNet's per-image conv GEMMs, 6 x 75 @ 75 x 892: no copies at all);
    # edge rows run on the shorter kernels and edge columns under masks, so neither is ever copied.
    pack_b = tb != 0 or m > PACK_B_ROWS
    pack_a = nb > PACK_A_PANELS and m * k > PACK_A_ELEMS
    nbc = min(nb, NC // NR)  # panels per column block: packed B stays at most KC x NC (2 MB)
    # One row group (m <= MC): each packed panel of B serves that group's row blocks once, so it is packed
    # right before them into one L1-sized buffer rather than the whole slice first (written out to L2/L3
    # and read back): the LSTM's recurrent h @ W^T, 20 x 1024 x 256, packed 1 MB per time step that way
    by_panel = pack_b and m <= MC
    bp = np.empty((NR * kcm if by_panel else nbc * NR * kcm) if pack_b else 1, np.float32)
    ap = np.empty((((min(MC, m) + MR - 1) // MR) * MR * kcm) if pack_a else 1, np.float32)
    slices = (k + KC - 1) // KC
    kcb = (k + slices - 1) // slices  # equal slices: 784 = 4 x 196, not 3 x 256 + a 16-deep tail
    for jb0 in range(0, nb, nbc):
        jb1 = min(nb, jb0 + nbc)
        for pc in range(0, k, kcb):
            kc = min(kcb, k - pc)
            add = pc > 0 or beta != zero
            if pack_b and not by_panel:  # B[pc:pc+kc, this block's columns] -> [panel][kc][NR], 0 past column n
                for jb in range(jb0, jb1):
                    _pack(b, tb, pc, jb * NR, ldb, kc, min(NR, n - jb * NR), NR, bp, (jb - jb0) * NR * kc)
            for ic in range(0, m, MC):
                mc = min(MC, m - ic)
                mb = (mc + MR - 1) // MR
                if pack_a:  # A[ic:ic+mc, pc:pc+kc] -> [mb][kc][MR], zero past row m
                    for ib in range(mb):
                        i0 = ic + ib * MR
                        _pack(a, 1 - ta, pc, i0, lda, kc, min(MR, ic + mc - i0), MR, ap, ib * MR * kc)
                for jb in range(jb0, jb1):
                    j0 = jb * NR
                    w = min(NR, n - j0)
                    bfull = pack_b or w == NR  # a packed panel is zero-padded to NR columns
                    if by_panel:
                        _pack(b, tb, pc, j0, ldb, kc, w, NR, bp, 0)
                        bsrc, boff, rsb = bp, 0, NR
                    elif pack_b:
                        bsrc, boff, rsb = bp, (jb - jb0) * NR * kc, NR
                    else:
                        bsrc, boff, rsb = b, pc * ldb + j0, ldb
                    for ib in range(mb):
                        i0 = ic + ib * MR
                        h = min(MR, ic + mc - i0)  # rows of this group only: the next group owns the rest
                        if pack_a:
                            asrc, aoff, rsa, csa = ap, ib * MR * kc, 1, MR
                        elif ta:
                            asrc, aoff, rsa, csa = a, pc * lda + i0, 1, lda
                        else:
                            asrc, aoff, rsa, csa = a, i0 * lda + pc, lda, 1
                        if h == MR:
                            _micro(kc, asrc, aoff, rsa, csa, bsrc, boff, rsb, w, bfull, c, i0 * ldc + j0, ldc, add)
                        else:
                            _micro_rows(h, kc, asrc, aoff, rsa, csa, bsrc, boff, rsb, w, bfull, c, i0 * ldc + j0,
                                        ldc, add)


def sgemm_c(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta):
    """`sgemm_arrays` on raw pointers: the C entry that `blas.calls` compiles as a cfunc and registers under its
    external symbol (defined here so that edits to this kernel invalidate that cfunc's cache)."""
    sgemm_ptrs(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta)


@helper(cache=True)
def sgemm_ptrs(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta):
    """`sgemm_c`'s body, callable from other C entries (blas.calls' mixed one)."""
    if m <= 0 or n <= 0:
        return
    na = max(0, ((k - 1) * lda + m) if ta else ((m - 1) * lda + k))
    nb = max(0, ((n - 1) * ldb + k) if tb else ((k - 1) * ldb + n))
    sgemm_arrays(ta, tb, m, n, k, numba.carray(a_ptr, na, np.float32), lda, numba.carray(b_ptr, nb, np.float32), ldb,
                 numba.carray(c_ptr, (m - 1) * ldc + n, np.float32), ldc, beta)


# Products that cross every blocking edge of the kernel in this CPU's shape: MR-row blocks and the shorter edge
# kernels, MC row groups, NR-wide panels with a masked edge, several KC slices, each layout, and the dot-product
# path. `blas.calls` runs them through the compiled entry once per process before it routes GEMMs here; the tests
# run them for every ISA shape the machine can execute.
SELF_CHECK_SHAPES = ((MC + MR + 1, NR + 5, KC + 44), (2 * MC + 3, 3 * NR, 2 * KC + 7), (MR + 1, NR - 3, 9),
                     (3, 70, 5))


def self_check(gemm, shapes=SELF_CHECK_SHAPES, layouts=((0, 0), (0, 1), (1, 0), (1, 1)), seed=0) -> float:
    """Worst error of `gemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta)` (sgemm_arrays' contract on flat
    float32 buffers) against a float64 product, relative to |A| @ |B| + 1, over `shapes` x `layouts` with beta 0
    (C starts as NaN: it must not be read) and beta 1. A correct float32 GEMM stays below ~1e-6."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for m, n, k in shapes:
        for ta, tb in layouts:
            A = rng.standard_normal((m, k)).astype(np.float32)
            B = rng.standard_normal((k, n)).astype(np.float32)
            a = np.ascontiguousarray(A.T if ta else A)
            b = np.ascontiguousarray(B.T if tb else B)
            scale = np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64) + 1
            for beta in (0.0, 1.0):
                c0 = np.full((m, n), np.nan, np.float32) if beta == 0 else rng.standard_normal((m, n)).astype(
                    np.float32)
                c = c0.copy()
                gemm(ta, tb, m, n, k, a.ravel(), a.shape[1], b.ravel(), b.shape[1], c.ravel(), n, np.float32(beta))
                ref = A.astype(np.float64) @ B.astype(np.float64) + (c0.astype(np.float64) if beta else 0.0)
                err = np.abs(c - ref) / scale
                worst = max(worst, float(np.max(err)) if np.all(np.isfinite(c)) else np.inf)
    return worst
