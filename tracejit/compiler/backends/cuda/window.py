"""numba.cuda source for window ops: conv2d and its input/weight gradients, the fused conv (+ bias) (+ relu) +
max-pool forward that writes the pooled values and the uint8 argmax, the unpool backward from that argmax, and
pooling outside fused groups (max with any stride/padding/dilation/ceil_mode, its argmax and gradient, average
and its gradient). Rendered per node with its static shapes, like templates.py; gathers (one thread per output
element) wherever a scatter would need atomics, and block reductions in shared memory for the weight gradients.
"""

from __future__ import annotations

import math

from .... import dtypes as D
from . import launch
from .render import JIT, Launch, Rendered, decompose, nb_type
from .templates import _ew, _loop, _pair, _relu

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
