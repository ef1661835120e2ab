"""Loop kernels (kernel.LoopKernel: fused elementwise / reduce / multi-tensor bodies) as numba.cuda source.

Arrays are flat device arrays; each is indexed with offsets computed from the kernel's static (merged) shapes,
broadcast dims contributing nothing. Three shapes of kernel:
- elementwise: one grid-stride loop over the iteration space, one element per thread per trip;
- reduce: one block per output row (grid-stride over rows); the block's threads stride over the row's reduced
  elements, each keeping its own accumulator, then combine them as a tree in shared memory. Rows that are few
  and long are split over several blocks that write partials, and a second small kernel combines those in
  order (deterministic: no atomics). Results reducing different dims run as separate kernels of one module;
  stored (elementwise) results ride along with the first;
- multi: the optimizer's members (1-D elementwise kernels over each parameter) in ONE launch: a grid-stride
  loop over the concatenated index range, each member's body behind a range test.
`render_*` are pure: they return (source, launches), testable without a GPU; the program loads the source
through the disk cache (../cache.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from .... import dtypes as D
from .... import scalar
from ....ops import OPS
from .. import cache, kernel
from ..kernel import LoopKernel, LoweringError, Stmt
from . import launch
from .driver import numba_cuda_version
from .spelling import SPELLING, constant_text

_PACKAGE = __name__.rpartition(".")[0]
FINGERPRINT = cache.fingerprint(os.path.dirname(os.path.abspath(__file__)), kernel.__file__)

PRELUDE = (f"# tracejit cuda backend, files {FINGERPRINT}, numba-cuda {numba_cuda_version()}\n"
           "import numpy as np\n"
           "from numba import cuda\n"
           "from numba import float32 as T_f32, float64 as T_f64, int64 as T_i64, boolean as T_bool, "
           "uint8 as T_u8\n"
           f"from {_PACKAGE}.devmath import M\n"
           """
Z_f32, O_f32 = np.float32(0), np.float32(1)
Z_f64, O_f64 = np.float64(0), np.float64(1)
Z_i64, O_i64 = np.int64(0), np.int64(1)
Z_u8, O_u8 = np.uint8(0), np.uint8(1)
Z_bool, O_bool = False, True
I64_MAX = np.int64(9223372036854775807)

""")

JIT = "@cuda.jit(cache=True)"


def nb_type(dtype) -> str:
    return {D.float32: "T_f32", D.float64: "T_f64", D.int64: "T_i64", D.bool_: "T_bool", D.uint8: "T_u8"}[dtype]


@dataclass
class Launch:
    """One kernel launch of a step: `fn` in the module, its arguments (('load', j): the kernel's load j,
    ('out', j): result j, ('tmp', t): temporary t), and its configuration."""

    fn: str
    args: list
    blocks: int
    threads: int


@dataclass
class Rendered:
    source: str
    launches: list
    temps: list = field(default_factory=list)  # (numel, dtype) of temporaries (reduction partials)


# ------------------------------------------------------------------------------------------- index helpers


def strides(shape) -> list:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return out[::-1]


def offset(shape, idx: dict) -> str:
    """Flat offset of an array of `shape` (contiguous) at the multi-index `idx` {dim: variable}; broadcast
    (size-1) dims add nothing."""
    terms = []
    for d, (s, st) in enumerate(zip(shape, strides(shape))):
        if s == 1:
            continue
        terms.append(idx[d] if st == 1 else f"{idx[d]} * {st}")
    return " + ".join(terms) or "0"


def decompose(flat: str, dims: list, space, names: dict, ind: str, tmp: str) -> list:
    """Lines splitting `flat` (row-major over `dims` of `space`) into the variables names[d]."""
    if not dims:
        return []
    if len(dims) == 1:
        return [f"{ind}{names[dims[0]]} = {flat}"]
    lines = [f"{ind}{tmp} = {flat}"]
    for d in reversed(dims[1:]):
        lines.append(f"{ind}{names[d]} = {tmp} % {space[d]}")
        lines.append(f"{ind}{tmp} = {tmp} // {space[d]}")
    lines.append(f"{ind}{names[dims[0]]} = {tmp}")
    return lines


# ------------------------------------------------------------------------------------------- statements


def _scalar(s: Stmt, dtypes: dict) -> str:
    ctx = scalar.Ctx(s.dtype, tuple(dtypes.get(a) for a in s.args), s.attrs)
    try:
        return scalar.spell(OPS[s.op].expr, SPELLING, s.args, ctx)
    except KeyError as e:
        raise LoweringError(f"no CUDA rendering for {s.op}: {e}") from None


def _const(value, dtype, consts: dict) -> str:
    text = constant_text(dtype, value)
    name = next((c for c, v in consts.items() if v == text), None)
    if name is None:
        name = f"K{len(consts)}"
        consts[name] = text
    return name


def _needed(k: LoopKernel, results: list) -> list:
    """The statements the `results` depend on, in order."""
    by_var = {s.var: s for s in k.stmts}
    need: set = set()
    stack = [r.var for r in results]
    while stack:
        v = stack.pop()
        if v in need:
            continue
        need.add(v)
        s = by_var[v]
        if s.op not in ("load", "const"):
            stack.extend(s.args)
    return [s for s in k.stmts if s.var in need]


def _body(k: LoopKernel, stmts: list, A: list, idx: dict, ind: str, consts: dict) -> list:
    dtypes = {s.var: s.dtype for s in k.stmts}
    lines = []
    for s in stmts:
        if s.op == "load":
            arr = k.loads[s.args[0]]
            lines.append(f"{ind}{s.var} = {A[s.args[0]]}[{offset(arr.shape, idx)}]")
        elif s.op == "const":
            lines.append(f"{ind}{s.var} = {_const(s.args[0], s.dtype, consts)}")
        else:
            lines.append(f"{ind}{s.var} = {_scalar(s, dtypes)}")
    return lines


def identity(mode: str, dtype) -> str:
    if mode == "sum":
        return f"Z_{dtype.short}"
    return {D.float32: "np.float32(-np.inf)", D.float64: "np.float64(-np.inf)", D.int64: "np.int64(-(2**63))",
            D.bool_: "False", D.uint8: "np.uint8(0)"}[dtype]


def combine(mode: str, a: str, b: str) -> str:
    """The expression combining accumulator `a` with value `b`: a sum, or a max in which NaN wins."""
    if mode == "sum":
        return f"{a} + {b}"
    return f"{b} if ({b} > {a} or {b} != {b}) else {a}"


# ------------------------------------------------------------------------------------------- kernels


def _header(name: str, params: list) -> list:
    return [JIT, f"def {name}({', '.join(params)}):"]


def render_elementwise(k: LoopKernel, name: str, consts: dict) -> Rendered:
    r = len(k.space)
    A = [f"a{j}" for j in range(len(k.loads))]
    O = [f"o{j}" for j in range(len(k.results))]
    names = {d: f"i{d}" for d in range(r)}
    n = k.numel()
    lines = _header(name, A + O)
    lines.append(f"    for i in range(cuda.grid(1), {n}, cuda.gridsize(1)):")
    lines += decompose("i", list(range(r)), k.space, names, "        ", "t")
    lines += _body(k, _needed(k, k.results), A, names, "        ", consts)
    for j, res in enumerate(k.results):
        lines.append(f"        {O[j]}[{offset(res.array.shape, names)}] = {res.var}")
    blocks, threads = launch.elementwise(n)
    args = [("load", j) for j in range(len(k.loads))] + [("out", j) for j in range(len(k.results))]
    return Rendered("\n".join(lines) + "\n", [Launch(name, args, blocks, threads)])


def _groups(k: LoopKernel) -> list:
    """Results grouped by the dims they reduce: [(reduced dims, [result index])]; stores join the first."""
    groups: dict = {}
    stores = []
    for j, res in enumerate(k.results):
        red = tuple(d for d, s in enumerate(k.space) if s != 1 and res.array.shape[d] == 1)
        if res.mode == "store" or not red:
            stores.append(j)
        else:
            groups.setdefault(red, []).append(j)
    out = [[red, js] for red, js in groups.items()]
    if not out:
        return [[(), stores]]
    out[0][1] = stores + out[0][1]
    return [tuple(g) for g in out]


def render_reduce(k: LoopKernel, name: str, consts: dict) -> Rendered:
    """A kernel with reductions: one module holding one kernel per group of results (and their second passes)."""
    groups = _groups(k)
    if len(groups) == 1 and not groups[0][0]:
        # nothing reduces over a dim of size > 1: each reduction is its value (sum from 0, max of one element)
        return render_elementwise(k, name, consts)
    src, launches, temps = [], [], []
    for g, (red, js) in enumerate(groups):
        fn = f"{name}_{g}" if len(groups) > 1 else name
        text, ls, ts = _reduce_group(k, fn, red, js, consts, len(temps))
        src.append(text)
        launches += ls
        temps += ts
    return Rendered("\n\n".join(src), launches, temps)


def _reduce_group(k: LoopKernel, name: str, red: tuple, js: list, consts: dict, tmp0: int):
    space = k.space
    r = len(space)
    kept = [d for d in range(r) if d not in red and space[d] != 1]
    red = [d for d in red]
    n_rows = math.prod(space[d] for d in kept)
    length = math.prod(space[d] for d in red)
    if length <= launch.limits().serial_max:
        return _serial_group(k, name, red, kept, js, consts, n_rows, length)
    T = launch.reduce_threads(length)
    S = launch.split(n_rows, length, T)
    chunk = -(-length // S)
    A = [f"a{j}" for j in range(len(k.loads))]
    O = {j: f"o{j}" for j in js}
    reds = [j for j in js if k.results[j].mode != "store"]
    P = {j: f"p{j}" for j in reds} if S > 1 else {}
    names = {d: f"i{d}" for d in range(r)}
    res = [k.results[j] for j in js]
    lines = _header(name, A + [O[j] for j in js] + [P[j] for j in reds if j in P])
    lines.append("    tid = cuda.threadIdx.x")
    for j in reds:
        lines.append(f"    sh{j} = cuda.shared.array({T}, {nb_type(k.results[j].array.dtype)})")
    lines.append(f"    for row in range(cuda.blockIdx.x, {n_rows * S}, cuda.gridDim.x):")
    ind = "        "
    if S > 1:
        lines += [f"{ind}out = row // {S}", f"{ind}lo = (row - out * {S}) * {chunk}",
                  f"{ind}hi = min(lo + {chunk}, {length})"]
    else:
        lines += [f"{ind}out = row", f"{ind}lo = 0", f"{ind}hi = {length}"]
    lines += decompose("out", kept, space, names, ind, "t")
    for j in reds:
        lines.append(f"{ind}acc{j} = {identity(k.results[j].mode, k.results[j].array.dtype)}")
    lines.append(f"{ind}for q in range(lo + tid, hi, {T}):")
    inner = ind + "    "
    lines += decompose("q", red, space, names, inner, "u")
    lines += _body(k, _needed(k, res), A, names, inner, consts)
    for j in js:
        rr = k.results[j]
        if rr.mode == "store":
            lines.append(f"{inner}{O[j]}[{offset(rr.array.shape, names)}] = {rr.var}")
        else:
            lines.append(f"{inner}acc{j} = {combine(rr.mode, f'acc{j}', rr.var)}")
    for j in reds:
        lines.append(f"{ind}sh{j}[tid] = acc{j}")
    lines.append(f"{ind}cuda.syncthreads()")
    step = T // 2
    while step >= 1:
        lines.append(f"{ind}if tid < {step}:")
        for j in reds:
            mode = k.results[j].mode
            lines.append(f"{ind}    sh{j}[tid] = {combine(mode, f'sh{j}[tid]', f'sh{j}[tid + {step}]')}")
        lines.append(f"{ind}cuda.syncthreads()")
        step //= 2
    lines.append(f"{ind}if tid == 0:")
    for j in reds:
        if S > 1:
            lines.append(f"{ind}    {P[j]}[row] = sh{j}[0]")
        else:
            lines.append(f"{ind}    {O[j]}[{offset(k.results[j].array.shape, names)}] = sh{j}[0]")
    lines.append(f"{ind}cuda.syncthreads()")
    args = [("load", j) for j in range(len(k.loads))] + [("out", j) for j in js]
    temps = []
    launches = []
    if S > 1:
        tmap = {}
        for j in reds:
            tmap[j] = tmp0 + len(temps)
            temps.append((n_rows * S, k.results[j].array.dtype))
        args += [("tmp", tmap[j]) for j in reds]
    launches.append(Launch(name, args, launch.rows(n_rows * S), T))
    src = "\n".join(lines) + "\n"
    if S > 1:  # the second pass: each output combines its S partials in order
        fl = _header(f"{name}_finish", [P[j] for j in reds] + [O[j] for j in reds])
        fl.append(f"    for out in range(cuda.grid(1), {n_rows}, cuda.gridsize(1)):")
        fl += decompose("out", kept, space, names, "        ", "t")
        for j in reds:
            mode = k.results[j].mode
            fl.append(f"        acc = {P[j]}[out * {S}]")
            fl.append(f"        for s in range(1, {S}):")
            fl.append(f"            acc = {combine(mode, 'acc', f'{P[j]}[out * {S} + s]')}")
            fl.append(f"        {O[j]}[{offset(k.results[j].array.shape, names)}] = acc")
        blocks, threads = launch.elementwise(n_rows)
        launches.append(Launch(f"{name}_finish", [("tmp", tmap[j]) for j in reds] + [("out", j) for j in reds],
                               blocks, threads))
        src += "\n\n" + "\n".join(fl) + "\n"
    return src, launches, temps


def _serial_group(k: LoopKernel, name: str, red: list, kept: list, js: list, consts: dict, n_rows: int,
                  length: int):
    """Short reductions: one thread per output row, accumulating its row in order."""
    space = k.space
    names = {d: f"i{d}" for d in range(len(space))}
    A = [f"a{j}" for j in range(len(k.loads))]
    O = {j: f"o{j}" for j in js}
    res = [k.results[j] for j in js]
    lines = _header(name, A + [O[j] for j in js])
    lines.append(f"    for out in range(cuda.grid(1), {n_rows}, cuda.gridsize(1)):")
    ind = "        "
    lines += decompose("out", kept, space, names, ind, "t")
    reds = [j for j in js if k.results[j].mode != "store"]
    for j in reds:
        lines.append(f"{ind}acc{j} = {identity(k.results[j].mode, k.results[j].array.dtype)}")
    lines.append(f"{ind}for q in range({length}):")
    inner = ind + "    "
    lines += decompose("q", list(red), space, names, inner, "u")
    lines += _body(k, _needed(k, res), A, names, inner, consts)
    for j in js:
        rr = k.results[j]
        if rr.mode == "store":
            lines.append(f"{inner}{O[j]}[{offset(rr.array.shape, names)}] = {rr.var}")
        else:
            lines.append(f"{inner}acc{j} = {combine(rr.mode, f'acc{j}', rr.var)}")
    for j in reds:
        lines.append(f"{ind}{O[j]}[{offset(k.results[j].array.shape, names)}] = acc{j}")
    blocks, threads = launch.elementwise(n_rows)
    args = [("load", j) for j in range(len(k.loads))] + [("out", j) for j in js]
    return "\n".join(lines) + "\n", [Launch(name, args, blocks, threads)], []


def render_loop(k: LoopKernel, name: str) -> Rendered:
    """Source (module text after PRELUDE) and launches of one loop kernel."""
    consts: dict = {}
    out = render_reduce(k, name, consts) if k.has_reduction() else render_elementwise(k, name, consts)
    out.source = _with_consts(consts, out.source)
    return out


def _with_consts(consts: dict, source: str) -> str:
    head = "".join(f"{c} = {v}\n" for c, v in consts.items())
    return head + "\n\n" + source


def render_multi(kernels: list, name: str) -> Rendered:
    """Elementwise member kernels in one launch. Arguments: member 0's loads then results, member 1's, ...;
    launch args ('load', (t, j)) / ('out', (t, j))."""
    consts: dict = {}
    params, args = [], []
    bounds, total = [], 0
    for t, k in enumerate(kernels):
        if k.has_reduction():
            raise LoweringError("a multi-tensor kernel's members are elementwise")
        params += [f"a{t}_{j}" for j in range(len(k.loads))] + [f"o{t}_{j}" for j in range(len(k.results))]
        args += [("load", (t, j)) for j in range(len(k.loads))] + [("out", (t, j)) for j in range(len(k.results))]
        total += k.numel()
        bounds.append(total)
    lines = _header(name, params)
    lines.append(f"    for g in range(cuda.grid(1), {total}, cuda.gridsize(1)):")
    start = 0
    for t, k in enumerate(kernels):
        kw = "if" if t == 0 else "elif" if t < len(kernels) - 1 else "else"
        lines.append(f"        {kw} g < {bounds[t]}:" if kw != "else" else "        else:")
        ind = "            "
        r = len(k.space)
        names = {d: f"i{t}_{d}" for d in range(r)}
        lines.append(f"{ind}i{t} = g - {start}" if start else f"{ind}i{t} = g")
        lines += decompose(f"i{t}", list(range(r)), k.space, names, ind, f"t{t}")
        A = [f"a{t}_{j}" for j in range(len(k.loads))]
        lines += _body(k, _needed(k, k.results), A, names, ind, consts)
        for j, res in enumerate(k.results):
            lines.append(f"{ind}o{t}_{j}[{offset(res.array.shape, names)}] = {res.var}")
        start = bounds[t]
    blocks, threads = launch.elementwise(total)
    src = _with_consts(consts, "\n".join(lines) + "\n")
    return Rendered(src, [Launch(name, args, blocks, threads)])


def load(rendered_source: str, names: list):
    """Import PRELUDE + source through the disk cache; ({name: kernel}, hit, text). Where numba-cuda cannot cache
    the module (no writable cache location: cache.py compiles it from memory) the kernels compile uncached."""
    text = PRELUDE + rendered_source
    mods = {}
    hit = True
    for n in names:
        try:
            fn, h = cache.load(text, n)
        except RuntimeError as e:
            if "cannot cache" not in str(e):
                raise
            text = text.replace(JIT, "@cuda.jit")
            fn, h = cache.load(text, n)
        mods[n] = fn
        hit = hit and h
    return mods, hit, text
