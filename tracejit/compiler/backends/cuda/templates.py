"""numba.cuda source for the nodes that are not loop kernels: movement copies, fills, GEMM (with its bias/ReLU
epilogue), the conv/pool window kernels and their backward, and the index/random ops.

Each is rendered per node with the node's static shapes as constants (division by a constant is a multiply on
the GPU, and the text is the disk-cache key), as `Rendered(source, launches)` like render.py's loop kernels.
Launch arguments name the step's inputs ('in', i), outputs ('out', j) and temporaries ('tmp', t), plus
('flags', None): the program's index-error flags (one int64 per check; see program.py).
"""

from __future__ import annotations

import math

from .... import dtypes as D
from . import launch
from .render import JIT, Launch, Rendered, decompose, nb_type, strides
from .spelling import constant_text


def _loop(n: int, lines_body: list, var: str = "i") -> list:
    return [f"    for {var} in range(cuda.grid(1), {n}, cuda.gridsize(1)):"] + lines_body


def _ew(name: str, params: list, n: int, body: list, args: list) -> Rendered:
    src = "\n".join([JIT, f"def {name}({', '.join(params)}):"] + _loop(n, body)) + "\n"
    blocks, threads = launch.elementwise(n)
    return Rendered(src, [Launch(name, args, blocks, threads)] if n else [])


def _names(prefix: str, r: int) -> dict:
    return {d: f"{prefix}{d}" for d in range(r)}


# ------------------------------------------------------------------------------------------- movement


def strided_copy(name: str, out_shape, coefs, base: int) -> Rendered:
    """o[i] = a[base + sum_e q_e * coefs[e]] for the multi-index q of i in out_shape (permute, expand, slice)."""
    r = len(out_shape)
    n = math.prod(out_shape)
    names = _names("q", r)
    body = decompose("i", list(range(r)), out_shape, names, "        ", "t")
    terms = [str(base)] if base else []
    terms += [names[e] if c == 1 else f"{names[e]} * {c}" for e, c in enumerate(coefs) if c and out_shape[e] != 1]
    body.append(f"        o[i] = a[{' + '.join(terms) or '0'}]")
    return _ew(name, ["a", "o"], n, body, [("in", 0), ("out", 0)])


def permute(name: str, in_shape, dims) -> Rendered:
    st = strides(in_shape)
    out_shape = tuple(in_shape[d] for d in dims)
    return strided_copy(name, out_shape, [st[d] for d in dims], 0)


def expand(name: str, in_shape, out_shape) -> Rendered:
    padded = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
    st = strides(padded)
    return strided_copy(name, out_shape, [0 if padded[e] == 1 else st[e] for e in range(len(out_shape))], 0)


def slice_(name: str, in_shape, starts, stops, steps, out_shape) -> Rendered:
    st = strides(in_shape)
    return strided_copy(name, out_shape, [s * k for s, k in zip(st, steps)], sum(a * s for a, s in zip(starts, st)))


def pad(name: str, in_shape, pads, value, dtype, out_shape) -> Rendered:
    r = len(out_shape)
    n = math.prod(out_shape)
    names = _names("q", r)
    body = decompose("i", list(range(r)), out_shape, names, "        ", "t")
    conds, terms = [], []
    for e, ((lo, _), s, st) in enumerate(zip(pads, in_shape, strides(in_shape))):
        p = f"({names[e]} - {lo})" if lo else names[e]
        if out_shape[e] != s:
            conds.append(f"{p} >= 0 and {p} < {s}" if lo else f"{p} < {s}")
        if s != 1:
            terms.append(p if st == 1 else f"{p} * {st}")
    src_expr = f"a[{' + '.join(terms) or '0'}]"
    if conds:
        body.append(f"        if {' and '.join(conds)}:")
        body.append(f"            o[i] = {src_expr}")
        body.append("        else:")
        body.append(f"            o[i] = {constant_text(dtype, value)}")
    else:
        body.append(f"        o[i] = {src_expr}")
    return _ew(name, ["a", "o"], n, body, [("in", 0), ("out", 0)])


def cat(name: str, in_shapes, axis: int, out_shape) -> Rendered:
    r = len(out_shape)
    n = math.prod(out_shape)
    names = _names("q", r)
    body = decompose("i", list(range(r)), out_shape, names, "        ", "t")
    start = 0
    parts = [k for k, s in enumerate(in_shapes) if math.prod(s)]
    for idx, k in enumerate(parts):
        s = in_shapes[k]
        end = start + s[axis]
        kw = "if" if idx == 0 else "elif"
        if idx == len(parts) - 1:
            body.append("        else:" if idx else "        if True:")
        else:
            body.append(f"        {kw} {names[axis]} < {end}:")
        terms = []
        for e, (size, st) in enumerate(zip(s, strides(s))):
            if size == 1:
                continue
            p = f"({names[e]} - {start})" if e == axis and start else names[e]
            terms.append(p if st == 1 else f"{p} * {st}")
        body.append(f"            o[i] = a{k}[{' + '.join(terms) or '0'}]")
        start = end
    params = [f"a{k}" for k in range(len(in_shapes))] + ["o"]
    args = [("in", k) for k in range(len(in_shapes))] + [("out", 0)]
    if not parts:
        return Rendered("", [])
    return _ew(name, params, n, body, args)


def fill(name: str, n: int, value, dtype) -> Rendered:
    return _ew(name, ["o"], n, [f"        o[i] = {constant_text(dtype, value)}"], [("out", 0)])


# ------------------------------------------------------------------------------------------- GEMM


def gemm(name: str, batch: int, m: int, n: int, k: int, trans_a: bool, trans_b: bool, dtype, bias: bool,
         relu: bool) -> Rendered:
    """c[b] = a[b] @ b[b] (+ bias[col]) (relu). a is [batch, m, k] ([batch, k, m] when trans_a); b is [batch, k, n]
    ([batch, n, k] when trans_b).

    Register-blocked tiles: a block of TY x TX threads computes a (TY*R) x (TX*R) tile of c, each thread R x R
    outputs (rows ty + TY*i, cols tx + TX*j) in unrolled scalar accumulators; the k dimension goes through shared
    memory BK at a time, every thread loading its share of the A and B tiles (zeros outside the matrices). The
    bias and ReLU epilogue is applied to the accumulators before the store."""
    if m * n * k <= launch.limits().gemm_simple_max:
        return _gemm_simple(name, batch, m, n, k, trans_a, trans_b, dtype, bias, relu)
    TX, R, BK = launch.gemm_blocking(m, n, batch)
    TY = TX
    BM = BN = TX * R
    nthreads = TX * TY
    mt, nt = -(-m // BM), -(-n // BN)
    tiles = batch * mt * nt
    z = f"Z_{dtype.short}"
    nb = nb_type(dtype)

    def a_at(r, c):  # element (row r, k c) of a[bt]
        return f"abase + ({c}) * {m} + ({r})" if trans_a else f"abase + ({r}) * {k} + ({c})"

    def b_at(r, c):  # element (k r, col c) of b[bt]
        return f"bbase + ({c}) * {k} + ({r})" if trans_b else f"bbase + ({r}) * {n} + ({c})"

    params = ["a", "b"] + (["bias"] if bias else []) + ["c"]
    L = [JIT, f"def {name}({', '.join(params)}):",
         f"    sa = cuda.shared.array(({BK}, {BM}), {nb})",
         f"    sb = cuda.shared.array(({BK}, {BN}), {nb})",
         "    tx = cuda.threadIdx.x",
         "    ty = cuda.threadIdx.y",
         f"    tid = ty * {TX} + tx",
         f"    for tile in range(cuda.blockIdx.x, {tiles}, cuda.gridDim.x):",
         f"        bt = tile // {mt * nt}",
         f"        rem = tile - bt * {mt * nt}",
         f"        row0 = (rem // {nt}) * {BM}",
         f"        col0 = (rem % {nt}) * {BN}",
         f"        abase = bt * {m * k}",
         f"        bbase = bt * {k * n}"]
    L += [f"        c{i}_{j} = {z}" for i in range(R) for j in range(R)]
    L += [f"        for k0 in range(0, {k}, {BK}):"]
    # A tile: BM x BK elements, stored k-major (sa[kk, r]); B tile: BK x BN (sb[kk, c])
    for q in range(-(-(BM * BK) // nthreads)):
        e = f"tid + {q * nthreads}" if q else "tid"
        L += [f"            e = {e}"]
        if (q + 1) * nthreads > BM * BK:
            L += [f"            if e < {BM * BK}:"]
            ind = "                "
        else:
            ind = "            "
        # consecutive threads read consecutive elements of the operand's contiguous dim
        if trans_a:
            L += [f"{ind}r = e % {BM}", f"{ind}kk = e // {BM}"]
        else:
            L += [f"{ind}kk = e % {BK}", f"{ind}r = e // {BK}"]
        L += [f"{ind}if row0 + r < {m} and k0 + kk < {k}:",
              f"{ind}    sa[kk, r] = a[{a_at('row0 + r', 'k0 + kk')}]",
              f"{ind}else:", f"{ind}    sa[kk, r] = {z}"]
    for q in range(-(-(BN * BK) // nthreads)):
        e = f"tid + {q * nthreads}" if q else "tid"
        L += [f"            e = {e}"]
        if (q + 1) * nthreads > BN * BK:
            L += [f"            if e < {BN * BK}:"]
            ind = "                "
        else:
            ind = "            "
        if trans_b:
            L += [f"{ind}kk = e % {BK}", f"{ind}cc = e // {BK}"]
        else:
            L += [f"{ind}cc = e % {BN}", f"{ind}kk = e // {BN}"]
        L += [f"{ind}if k0 + kk < {k} and col0 + cc < {n}:",
              f"{ind}    sb[kk, cc] = b[{b_at('k0 + kk', 'col0 + cc')}]",
              f"{ind}else:", f"{ind}    sb[kk, cc] = {z}"]
    L += ["            cuda.syncthreads()",
          f"            for kk in range({BK}):"]
    L += [f"                a{i} = sa[kk, ty + {TY * i}]" for i in range(R)]
    L += [f"                b{j} = sb[kk, tx + {TX * j}]" for j in range(R)]
    L += [f"                c{i}_{j} += a{i} * b{j}" for i in range(R) for j in range(R)]
    L += ["            cuda.syncthreads()"]
    for i in range(R):
        L += [f"        row = row0 + ty + {TY * i}", f"        if row < {m}:"]
        for j in range(R):
            L += [f"            col = col0 + tx + {TX * j}", f"            if col < {n}:",
                  f"                v = c{i}_{j}"]
            if bias:
                L.append("                v = v + bias[col]")
            if relu:
                L.append(f"                v = v if not (v < {z}) else {z}")
            L.append(f"                c[bt * {m * n} + row * {n} + col] = v")
    args = [("in", 0), ("in", 1)] + ([("in", 2)] if bias else []) + [("out", 0)]
    return Rendered("\n".join(L) + "\n", [Launch(name, args, launch.rows(tiles), (TX, TY))] if tiles and k else [])


def _gemm_simple(name, batch, m, n, k, trans_a, trans_b, dtype, bias, relu) -> Rendered:
    """One thread per output element, the k loop in registers: tiny GEMMs (and the simulator's)."""
    z = f"Z_{dtype.short}"
    a_at = f"bt * {m * k} + kk * {m} + row" if trans_a else f"bt * {m * k} + row * {k} + kk"
    b_at = f"bt * {k * n} + col * {k} + kk" if trans_b else f"bt * {k * n} + kk * {n} + col"
    body = [f"        col = i % {n}", f"        t = i // {n}", f"        row = t % {m}", f"        bt = t // {m}",
            f"        acc = {z}", f"        for kk in range({k}):", f"            acc += a[{a_at}] * b[{b_at}]"]
    if bias:
        body.append("        acc = acc + bias[col]")
    if relu:
        body.append(_relu("        ", z))
    body.append("        c[i] = acc")
    params = ["a", "b"] + (["bias"] if bias else []) + ["c"]
    args = [("in", 0), ("in", 1)] + ([("in", 2)] if bias else []) + [("out", 0)]
    return _ew(name, params, batch * m * n, body, args)


def epilogue(name: str, m: int, n: int, dtype, relu: bool) -> Rendered:
    """c += bias[col] (then relu), in place: the epilogue after a library GEMM."""
    z = f"Z_{dtype.short}"
    body = [f"        v = c[i] + bias[i % {n}]"]
    if relu:
        body.append(f"        v = v if not (v < {z}) else {z}")
    body.append("        c[i] = v")
    return _ew(name, ["bias", "c"], m * n, body, [("in", 2), ("out", 0)])


# ------------------------------------------------------------------------------------------- window


def _conv_acc(ind: str, z: str, c: dict, n: str, oc: str, oh: str, ow: str) -> list:
    """Lines leaving in `acc` the conv output at (n, oc, oh, ow)."""
    return [f"{ind}acc = {z}",
            f"{ind}g0 = ({oc} // {c['og']}) * {c['cg']}",
            f"{ind}for ci in range({c['cg']}):",
            f"{ind}    xb = ({n} * {c['C']} + g0 + ci) * {c['H']}",
            f"{ind}    wb = ({oc} * {c['cg']} + ci) * {c['KH']}",
            f"{ind}    for kh in range({c['KH']}):",
            f"{ind}        ih = {oh} * {c['SH']} - {c['PH']} + kh * {c['DH']}",
            f"{ind}        if ih >= 0 and ih < {c['H']}:",
            f"{ind}            for kw in range({c['KW']}):",
            f"{ind}                iw = {ow} * {c['SW']} - {c['PW']} + kw * {c['DW']}",
            f"{ind}                if iw >= 0 and iw < {c['W']}:",
            f"{ind}                    acc += x[(xb + ih) * {c['W']} + iw] * w[(wb + kh) * {c['KW']} + kw]"]


def conv_consts(x_shape, w_shape, out_hw, a: dict) -> dict:
    n, c, h, wd = x_shape
    o, cg, kh, kw = w_shape
    g = a["groups"]
    (sh, sw), (ph, pw), (dh, dw) = _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"])
    return dict(N=n, C=c, H=h, W=wd, O=o, cg=cg, og=o // g, KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw,
                OH=out_hw[0], OW=out_hw[1])


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _relu(ind: str, z: str, var: str = "acc") -> str:
    return f"{ind}{var} = {var} if not ({var} < {z}) else {z}"


def conv2d(name: str, c: dict, dtype, bias: bool = False, relu: bool = False) -> Rendered:
    z = f"Z_{dtype.short}"
    n = c["N"] * c["O"] * c["OH"] * c["OW"]
    names = {0: "n", 1: "oc", 2: "oh", 3: "ow"}
    body = decompose("i", [0, 1, 2, 3], (c["N"], c["O"], c["OH"], c["OW"]), names, "        ", "t")
    body += _conv_acc("        ", z, c, "n", "oc", "oh", "ow")
    if bias:
        body.append("        acc = acc + b[oc]")
    if relu:
        body.append(_relu("        ", z))
    body.append("        o[i] = acc")
    params = ["x", "w"] + (["b"] if bias else []) + ["o"]
    return _ew(name, params, n, body, [("in", 0), ("in", 1)] + ([("in", 2)] if bias else []) + [("out", 0)])


def conv_pool(name: str, c: dict, dtype, bias: bool, relu: bool, k: int, s: int, pooled_hw) -> Rendered:
    """conv2d (+ bias) (+ relu) + k x k max-pool of stride s: each thread computes its window's conv outputs and
    writes the max and the argmax (a * k + b: the first maximum; NaN wins, as the op refs)."""
    z = f"Z_{dtype.short}"
    PH_, PW_ = pooled_hw
    n = c["N"] * c["O"] * PH_ * PW_
    names = {0: "n", 1: "oc", 2: "py", 3: "px"}
    body = decompose("i", [0, 1, 2, 3], (c["N"], c["O"], PH_, PW_), names, "        ", "t")
    body += [f"        best = {z}", "        arg = 0"]
    body += [f"        for pa in range({k}):", f"            for pb in range({k}):",
             f"                oh = py * {s} + pa", f"                ow = px * {s} + pb"]
    body += _conv_acc("                ", z, c, "n", "oc", "oh", "ow")
    if bias:
        body.append("                acc = acc + b[oc]")
    if relu:
        body.append(_relu("                ", z))
    body += ["                first = pa == 0 and pb == 0",
             "                if first or acc > best or (acc != acc and best == best):",
             "                    best = acc",
             f"                    arg = pa * {k} + pb",
             "        o[i] = best",
             "        idx[i] = np.uint8(arg)"]
    params = ["x", "w"] + (["b"] if bias else []) + ["o", "idx"]
    args = [("in", 0), ("in", 1)] + ([("in", 2)] if bias else []) + [("out", 0), ("out", 1)]
    return _ew(name, params, n, body, args)


def unpool(name: str, dtype, out_shape, pooled_hw, k: int, s: int, relu: bool, out_arg=("out", 0),
           in_args=(("in", 0), ("in", 1), ("in", 2))) -> Rendered:
    """dy[n, c, h, w] = sum over the pool windows holding (h, w) of g where the stored argmax points at (h, w)
    (times pooled > 0 with relu): a gather, one thread per element of dy, no atomics."""
    z, one = f"Z_{dtype.short}", f"O_{dtype.short}"
    N, C, H, W = out_shape
    PH_, PW_ = pooled_hw
    names = {0: "n", 1: "c", 2: "h", 3: "w"}
    body = decompose("i", [0, 1, 2, 3], out_shape, names, "        ", "t")
    body += [f"        acc = {z}",
             f"        base = (n * {C} + c) * {PH_}",
             f"        for py in range(max(0, (h - {k} + {s}) // {s}), min({PH_ - 1}, h // {s}) + 1):",
             f"            for px in range(max(0, (w - {k} + {s}) // {s}), min({PW_ - 1}, w // {s}) + 1):",
             f"                j = (base + py) * {PW_} + px",
             f"                if idx[j] == (h - py * {s}) * {k} + (w - px * {s}):"]
    if relu:
        body.append(f"                    acc += g[j] * ({one} if pooled[j] > {z} else {z})")
    else:
        body.append("                    acc += g[j]")
    body.append("        o[i] = acc")
    params = ["g", "idx"] + (["pooled"] if relu else []) + ["o"]
    args = list(in_args[:2]) + ([in_args[2]] if relu else []) + [out_arg]
    return _ew(name, params, N * C * H * W, body, args)


def conv_grad_input(name: str, c: dict, dtype, g_arg=("in", 0), w_arg=("in", 1), out_arg=("out", 0)) -> Rendered:
    """dx[n, c, h, w] = sum of g[n, o, oh, ow] * w[o, c, kh, kw] over the outputs whose window reads (h, w):
    a gather, one thread per element of dx."""
    z = f"Z_{dtype.short}"
    names = {0: "n", 1: "ch", 2: "h", 3: "w"}
    body = decompose("i", [0, 1, 2, 3], (c["N"], c["C"], c["H"], c["W"]), names, "        ", "t")
    body += [f"        acc = {z}",
             f"        grp = ch // {c['cg']}",
             f"        cl = ch - grp * {c['cg']}",
             f"        for oo in range({c['og']}):",
             f"            oc = grp * {c['og']} + oo",
             f"            for kh in range({c['KH']}):",
             f"                th = h + {c['PH']} - kh * {c['DH']}",
             f"                if th >= 0 and th % {c['SH']} == 0 and th // {c['SH']} < {c['OH']}:",
             f"                    oh = th // {c['SH']}",
             f"                    for kw in range({c['KW']}):",
             f"                        tw = w + {c['PW']} - kw * {c['DW']}",
             f"                        if tw >= 0 and tw % {c['SW']} == 0 and tw // {c['SW']} < {c['OW']}:",
             f"                            ow = tw // {c['SW']}",
             f"                            acc += g[((n * {c['O']} + oc) * {c['OH']} + oh) * {c['OW']} + ow] * "
             f"wt[((oc * {c['cg']} + cl) * {c['KH']} + kh) * {c['KW']} + kw]",
             "        o[i] = acc"]
    n = c["N"] * c["C"] * c["H"] * c["W"]
    return _ew(name, ["g", "wt", "o"], n, body, [g_arg, w_arg, out_arg])


def conv_grad_weight(name: str, c: dict, dtype, weight: bool = True, bias: bool = False, x_arg=("in", 0),
                     g_arg=("in", 1), dw_arg=("out", 0), db_arg=("out", 1)) -> Rendered:
    """dw[o, c, kh, kw] (and db[o]) as block reductions over (n, oh, ow): one block per weight (then per bias)
    element, its threads striding over the batch and the output positions, combined in shared memory."""
    z = f"Z_{dtype.short}"
    length = c["N"] * c["OH"] * c["OW"]
    if length <= launch.limits().serial_max:
        return _grad_weight_serial(name, c, dtype, weight, bias, x_arg, g_arg, dw_arg, db_arg)
    T = launch.reduce_threads(length)
    nw = c["O"] * c["cg"] * c["KH"] * c["KW"] if weight else 0
    rows = nw + (c["O"] if bias else 0)
    params = (["x"] if weight else []) + ["g"] + (["dw"] if weight else []) + (["db"] if bias else [])
    L = [JIT, f"def {name}({', '.join(params)}):",
         "    tid = cuda.threadIdx.x",
         f"    sh = cuda.shared.array({T}, {nb_type(dtype)})",
         f"    for r in range(cuda.blockIdx.x, {rows}, cuda.gridDim.x):",
         f"        acc = {z}"]
    qloop = decompose("q", [0, 1, 2], (c["N"], c["OH"], c["OW"]), {0: "n", 1: "oh", 2: "ow"}, "                ",
                      "t2")
    if weight:
        L += [f"        if r < {nw}:"]
        L += decompose("r", [0, 1, 2, 3], (c["O"], c["cg"], c["KH"], c["KW"]), {0: "oc", 1: "cl", 2: "kh", 3: "kw"},
                       "            ", "t")
        L += [f"            ci = (oc // {c['og']}) * {c['cg']} + cl",
              f"            for q in range(tid, {length}, {T}):"]
        L += qloop
        L += [f"                ih = oh * {c['SH']} - {c['PH']} + kh * {c['DH']}",
              f"                iw = ow * {c['SW']} - {c['PW']} + kw * {c['DW']}",
              f"                if ih >= 0 and ih < {c['H']} and iw >= 0 and iw < {c['W']}:",
              f"                    acc += g[((n * {c['O']} + oc) * {c['OH']} + oh) * {c['OW']} + ow] * "
              f"x[((n * {c['C']} + ci) * {c['H']} + ih) * {c['W']} + iw]"]
    if bias:
        L += ["        else:" if weight else "        if True:",
              f"            oc = r - {nw}",
              f"            for q in range(tid, {length}, {T}):"]
        L += qloop
        L += [f"                acc += g[((n * {c['O']} + oc) * {c['OH']} + oh) * {c['OW']} + ow]"]
    L += ["        sh[tid] = acc", "        cuda.syncthreads()"]
    step = T // 2
    while step >= 1:
        L += [f"        if tid < {step}:", f"            sh[tid] += sh[tid + {step}]", "        cuda.syncthreads()"]
        step //= 2
    L += ["        if tid == 0:"]
    if weight and bias:
        L += [f"            if r < {nw}:", "                dw[r] = sh[0]", "            else:",
              f"                db[r - {nw}] = sh[0]"]
    elif weight:
        L += ["            dw[r] = sh[0]"]
    else:
        L += [f"            db[r - {nw}] = sh[0]"]
    L += ["        cuda.syncthreads()"]
    args = ([x_arg] if weight else []) + [g_arg] + ([dw_arg] if weight else []) + ([db_arg] if bias else [])
    return Rendered("\n".join(L) + "\n", [Launch(name, args, launch.rows(rows), T)] if rows else [])


def _grad_weight_serial(name, c, dtype, weight, bias, x_arg, g_arg, dw_arg, db_arg) -> Rendered:
    """dw (and db) with one thread per element, summing over (n, oh, ow) in order: short sums."""
    z = f"Z_{dtype.short}"
    nw = c["O"] * c["cg"] * c["KH"] * c["KW"] if weight else 0
    rows = nw + (c["O"] if bias else 0)
    body = [f"        acc = {z}"]
    gat = f"g[((n * {c['O']} + oc) * {c['OH']} + oh) * {c['OW']} + ow]"
    if weight:
        body += [f"        if r < {nw}:"]
        body += decompose("r", [0, 1, 2, 3], (c["O"], c["cg"], c["KH"], c["KW"]),
                          {0: "oc", 1: "cl", 2: "kh", 3: "kw"}, "            ", "t")
        body += [f"            ci = (oc // {c['og']}) * {c['cg']} + cl",
                 f"            for n in range({c['N']}):", f"                for oh in range({c['OH']}):",
                 f"                    ih = oh * {c['SH']} - {c['PH']} + kh * {c['DH']}",
                 f"                    if ih >= 0 and ih < {c['H']}:",
                 f"                        for ow in range({c['OW']}):",
                 f"                            iw = ow * {c['SW']} - {c['PW']} + kw * {c['DW']}",
                 f"                            if iw >= 0 and iw < {c['W']}:",
                 f"                                acc += {gat} * x[((n * {c['C']} + ci) * {c['H']} + ih) * {c['W']} "
                 "+ iw]",
                 "            dw[r] = acc"]
    if bias:
        body += ["        else:" if weight else "        if True:", f"            oc = r - {nw}",
                 f"            for n in range({c['N']}):", f"                for oh in range({c['OH']}):",
                 f"                    for ow in range({c['OW']}):", f"                        acc += {gat}",
                 f"            db[r - {nw}] = acc"]
    params = (["x"] if weight else []) + ["g"] + (["dw"] if weight else []) + (["db"] if bias else [])
    args = ([x_arg] if weight else []) + [g_arg] + ([dw_arg] if weight else []) + ([db_arg] if bias else [])
    src = "\n".join([JIT, f"def {name}({', '.join(params)}):"] + _loop(rows, body, "r")) + "\n"
    return Rendered(src, [Launch(name, args, *launch.elementwise(rows))] if rows else [])


# ------------------------------------------------------------------------------------------- index, random


def check_index(name: str, n: int, low: int, high: int, ignore, k: int) -> Rendered:
    """Records the first position of an index outside [low, high) (not `ignore`) in flags[k] (atomic min)."""
    cond = f"(v < {low} or v >= {high})" + (f" and v != {ignore}" if ignore is not None else "")
    body = ["        v = idx[i]", f"        if {cond}:", f"            cuda.atomic.min(flags, {k}, i)"]
    return _ew(name, ["idx", "flags"], n, body, [("in", 0), ("flags", None)])


def three(shape, axis):
    return (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def gather(name: str, x_shape, idx_shape, axis: int, k: int) -> Rendered:
    P, Lx, Q = three(x_shape, axis)
    _, Li, _ = three(idx_shape, axis)
    n = P * Li * Q
    body = [f"        q = i % {Q}", f"        p = i // {Q * Li}", "        v = idx[i]",
            f"        if v < 0 or v >= {Lx}:", f"            cuda.atomic.min(flags, {k}, i)", "            v = 0",
            f"        o[i] = x[(p * {Lx} + v) * {Q} + q]"]
    return _ew(name, ["x", "idx", "o", "flags"], n, body, [("in", 0), ("in", 1), ("out", 0), ("flags", None)])


GATHER_SCATTER_MAX = 16  # scatter_add reads each output's candidates when the indexed dim is this short


def scatter_add(name: str, idx_shape, out_shape, axis: int, dtype, k: int) -> Rendered:
    P, Li, Q = three(idx_shape, axis)
    _, Lo, _ = three(out_shape, axis)
    z = f"Z_{dtype.short}"
    if Li <= GATHER_SCATTER_MAX:  # deterministic: each output sums the sources that point at it, in order
        body = [f"        q = i % {Q}", f"        t = i // {Q}", f"        lo = t % {Lo}", f"        p = t // {Lo}",
                f"        acc = {z}", f"        for li in range({Li}):", f"            j = (p * {Li} + li) * {Q} + q",
                "            v = idx[j]", "            if v == lo:", "                acc += src[j]",
                f"            elif lo == 0 and (v < 0 or v >= {Lo}):",
                f"                cuda.atomic.min(flags, {k}, j)",
                "        o[i] = acc"]
        return _ew(name, ["idx", "src", "o", "flags"], P * Lo * Q, body,
                   [("in", 0), ("in", 1), ("out", 0), ("flags", None)])
    zero = fill(f"{name}_zero", P * Lo * Q, 0, dtype)
    body = [f"        q = i % {Q}", f"        p = i // {Q * Li}", "        v = idx[i]",
            f"        if v < 0 or v >= {Lo}:", f"            cuda.atomic.min(flags, {k}, i)",
            "        else:", f"            cuda.atomic.add(o, (p * {Lo} + v) * {Q} + q, src[i])"]
    add = _ew(name, ["idx", "src", "o", "flags"], P * Li * Q, body,
              [("in", 0), ("in", 1), ("out", 0), ("flags", None)])
    return Rendered(zero.source + "\n\n" + add.source, zero.launches + add.launches)


def argmax(name: str, x_shape, axis: int) -> Rendered:
    """The first maximum along `axis` (the first NaN, if any), as np.argmax."""
    P, L, Q = three(x_shape, axis)
    body = [f"        q = i % {Q}", f"        p = i // {Q}", f"        base = p * {L * Q} + q",
            "        best = x[base]", "        arg = 0", "        if best == best:",
            f"            for l in range(1, {L}):",
            f"                v = x[base + l * {Q}]", "                if v > best or v != v:",
            "                    best = v", "                    arg = l", "                    if v != v:",
            "                        break", "        o[i] = arg"]
    return _ew(name, ["x", "o"], P * Q, body, [("in", 0), ("out", 0)])


def uniform(name: str, n: int, dtype) -> Rendered:
    """The counter-based generator of ref_kernels.uniform (splitmix64's finalizer), bit for bit."""
    body = ["        z = np.uint64(i) + off",
            "        z = z * U_M4 + mseed",
            "        z = (z ^ (z >> U_30)) * U_M2",
            "        z = (z ^ (z >> U_27)) * U_M3",
            "        z = z ^ (z >> U_31)",
            f"        o[i] = {'np.float32' if dtype is D.float32 else 'np.float64'}"
            "(np.float64(z >> U_40) * (1.0 / 16777216.0))"]
    head = ["    seed = np.uint64(state[0])", "    off = np.uint64(state[1])",
            "    s = seed * U_M1 + U_M1",
            "    s = (s ^ (s >> U_30)) * U_M2", "    s = (s ^ (s >> U_27)) * U_M3", "    mseed = s ^ (s >> U_31)"]
    consts = ("U_M1 = np.uint64(0x9E3779B97F4A7C15)\nU_M2 = np.uint64(0xBF58476D1CE4E5B9)\n"
              "U_M3 = np.uint64(0x94D049BB133111EB)\nU_M4 = np.uint64(0xD1B54A32D192ED03)\n"
              "U_30, U_27, U_31, U_40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)\n\n")
    src = consts + "\n".join([JIT, f"def {name}(state, o):"] + head + _loop(n, body)) + "\n"
    blocks, threads = launch.elementwise(n)
    return Rendered(src, [Launch(name, [("in", 0), ("out", 0)], blocks, threads)] if n else [])


# ------------------------------------------------------------------------------------------- plain pooling


def _pool_geometry(x_shape, out_hw, a: dict) -> dict:
    n, c, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = _pair(a["kernel"]), _pair(a["stride"]), _pair(a["padding"])
    dh, dw = _pair(a.get("dilation") or (1, 1))
    return dict(N=n, C=c, H=h, W=w, OH=out_hw[0], OW=out_hw[1], KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dh,
                DW=dw)


def pool_max(name: str, x_shape, out_hw, a: dict, dtype, value_arg=None, idx_arg=None, idx_type="np.int64",
             x_arg=("in", 0)) -> Rendered:
    """max_pool2d (any stride, padding, dilation, ceil_mode): each window's maximum and/or the position of its
    first maximum (NaN wins; padding counts as -inf), one thread per output, as the op refs."""
    p = _pool_geometry(x_shape, out_hw, a)
    neg = f"np.{'float32' if dtype is D.float32 else 'float64'}(-np.inf)"
    names = {0: "n", 1: "c", 2: "oh", 3: "ow"}
    body = decompose("i", [0, 1, 2, 3], (p["N"], p["C"], p["OH"], p["OW"]), names, "        ", "t")
    body += [f"        best = {neg}", "        arg = 0", f"        base = (n * {p['C']} + c) * {p['H']}",
             f"        for pa in range({p['KH']}):", f"            ih = oh * {p['SH']} - {p['PH']} + pa * {p['DH']}",
             f"            for pb in range({p['KW']}):",
             f"                iw = ow * {p['SW']} - {p['PW']} + pb * {p['DW']}",
             f"                v = x[(base + ih) * {p['W']} + iw] if ih >= 0 and ih < {p['H']} and iw >= 0 and "
             f"iw < {p['W']} else {neg}",
             "                if (pa == 0 and pb == 0) or v > best or (v != v and best == best):",
             "                    best = v", f"                    arg = pa * {p['KW']} + pb"]
    params, args = ["x"], [x_arg]
    if value_arg is not None:
        body.append("        o[i] = best")
        params.append("o")
        args.append(value_arg)
    if idx_arg is not None:
        body.append(f"        idx[i] = {idx_type}(arg)")
        params.append("idx")
        args.append(idx_arg)
    return _ew(name, params, p["N"] * p["C"] * p["OH"] * p["OW"], body, args)


def pool_grad_from_argmax(name: str, x_shape, out_hw, a: dict, dtype, g_arg, idx_arg, out_arg) -> Rendered:
    """dx[n, c, h, w] = sum of g over the windows whose stored argmax is (h, w): a gather over the windows that
    hold (h, w) (any stride, padding, dilation), one thread per element of dx."""
    p = _pool_geometry(x_shape, out_hw, a)
    names = {0: "n", 1: "c", 2: "h", 3: "w"}
    body = decompose("i", [0, 1, 2, 3], x_shape, names, "        ", "t")
    body += [f"        acc = Z_{dtype.short}", f"        base = (n * {p['C']} + c) * {p['OH']}",
             f"        for pa in range({p['KH']}):", f"            th = h + {p['PH']} - pa * {p['DH']}",
             f"            if th >= 0 and th % {p['SH']} == 0 and th // {p['SH']} < {p['OH']}:",
             f"                oh = th // {p['SH']}", f"                for pb in range({p['KW']}):",
             f"                    tw = w + {p['PW']} - pb * {p['DW']}",
             f"                    if tw >= 0 and tw % {p['SW']} == 0 and tw // {p['SW']} < {p['OW']}:",
             f"                        j = (base + oh) * {p['OW']} + tw // {p['SW']}",
             f"                        if idx[j] == pa * {p['KW']} + pb:", "                            acc += g[j]",
             "        o[i] = acc"]
    return _ew(name, ["g", "idx", "o"], math.prod(x_shape), body, [g_arg, idx_arg, out_arg])


def _avg_divisor(p: dict, a: dict, dtype, oh: str, ow: str) -> list:
    """Lines leaving in `div` the divisor of window (oh, ow), as ref_kernels._avg_divisor."""
    lines = []
    for d, o in (("h", oh), ("w", ow)):
        D_ = d.upper()
        lines += [f"s{d} = {o} * {p['S' + D_]} - {p['P' + D_]}", f"e{d} = min(s{d} + {p['K' + D_]}, {p[D_]} + "
                  f"{p['P' + D_]})"]
        if a.get("count_include_pad", True):
            lines.append(f"n{d} = e{d} - s{d}")
        else:
            lines.append(f"n{d} = min(e{d}, {p[D_]}) - max(s{d}, 0)")
    lines.append(f"div = np.{'float32' if dtype is D.float32 else 'float64'}(nh * nw)")
    return lines


def avg_pool(name: str, x_shape, out_hw, a: dict, dtype) -> Rendered:
    p = _pool_geometry(x_shape, out_hw, {**a, "dilation": (1, 1)})
    names = {0: "n", 1: "c", 2: "oh", 3: "ow"}
    body = decompose("i", [0, 1, 2, 3], (p["N"], p["C"], p["OH"], p["OW"]), names, "        ", "t")
    body += [f"        acc = Z_{dtype.short}", f"        base = (n * {p['C']} + c) * {p['H']}",
             f"        for pa in range({p['KH']}):", f"            ih = oh * {p['SH']} - {p['PH']} + pa",
             f"            if ih >= 0 and ih < {p['H']}:", f"                for pb in range({p['KW']}):",
             f"                    iw = ow * {p['SW']} - {p['PW']} + pb",
             f"                    if iw >= 0 and iw < {p['W']}:",
             f"                        acc += x[(base + ih) * {p['W']} + iw]"]
    body += ["        " + ln for ln in _avg_divisor(p, a, dtype, "oh", "ow")]
    body.append("        o[i] = acc / div")
    return _ew(name, ["x", "o"], p["N"] * p["C"] * p["OH"] * p["OW"], body, [("in", 0), ("out", 0)])


def avg_pool_grad(name: str, x_shape, out_hw, a: dict, dtype) -> Rendered:
    p = _pool_geometry(x_shape, out_hw, {**a, "dilation": (1, 1)})
    names = {0: "n", 1: "c", 2: "h", 3: "w"}
    body = decompose("i", [0, 1, 2, 3], x_shape, names, "        ", "t")
    body += [f"        acc = Z_{dtype.short}", f"        base = (n * {p['C']} + c) * {p['OH']}",
             f"        for pa in range({p['KH']}):", f"            th = h + {p['PH']} - pa",
             f"            if th >= 0 and th % {p['SH']} == 0 and th // {p['SH']} < {p['OH']}:",
             f"                oh = th // {p['SH']}", f"                for pb in range({p['KW']}):",
             f"                    tw = w + {p['PW']} - pb",
             f"                    if tw >= 0 and tw % {p['SW']} == 0 and tw // {p['SW']} < {p['OW']}:",
             f"                        ow = tw // {p['SW']}"]
    body += ["                        " + ln for ln in _avg_divisor(p, a, dtype, "oh", "ow")]
    body += ["                        acc += g[(base + oh) * " + str(p["OW"]) + " + ow] / div", "        o[i] = acc"]
    return _ew(name, ["g", "o"], math.prod(x_shape), body, [("in", 0), ("out", 0)])
