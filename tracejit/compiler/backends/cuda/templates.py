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


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _relu(ind: str, z: str, var: str = "acc") -> str:
    return f"{ind}{var} = {var} if not ({var} < {z}) else {z}"


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
