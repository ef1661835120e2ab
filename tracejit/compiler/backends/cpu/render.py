"""Loop-kernel source for the CPU backend: a fused elementwise/reduce body (kernel.LoopKernel) rendered as a Numba
function, one or several per generated module, and the preludes every generated module starts with.

`render(kernel, name)` is pure (testable without compiling); `program.compile_graph` loads and runs them.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .... import dtypes as D
from .... import scalar
from ....ops import OPS
from .. import cache, kernel, sizes
from ..kernel import LoopKernel, LoweringError, Result, Stmt
from .spelling import SPELLING, SUFFIX, np_type

# Elements below which threads cost more than they save: a launch costs 2-60 us, and between the MLP's
# 2-thread GEMMs a TBB kernel over 128x512 left its worker spinning against OpenBLAS's threads (MLP step
# 3.5 -> 3.1 ms best, 3.9 -> 3.5 ms p25 with 1 << 18 instead of 1 << 16, two interleaved A/B runs)
PARALLEL_MIN = 1 << 18
CHUNKS = 16  # fixed outer blocks: reductions combine per-block partials in order -> same bits at any thread count
# innermost loops shorter than this sum in a loop of their own beside stores (_split_sums): it exceeds LLVM's
# vector width x unroll (64 float32 elements on AVX-512), so longer rows of distinct arrays always pass its check
SPLIT_SUMS_BELOW = 256
FASTMATH = '{"contract", "arcp", "afn", "reassoc", "nsz"}'  # not nnan/ninf: NaN and inf keep their meaning
# every generated function's other Numba options. Python calls them (never other jitted code, never as a C callback),
# so they need no cfunc wrapper: leaving it out saved 8 % of a cold compile's CPU (LeNet's 4 functions, 1.16-1.20
# against 1.27-1.29 s, three alternations)
JIT_OPTIONS = "error_model='numpy', cache=True, no_cfunc_wrapper=True"

def _scalar(s: Stmt, dtypes: dict) -> str:
    """The text of statement `s`: its op's scalar expression (the op table's `expr`) in this backend's spelling."""
    ctx = scalar.Ctx(s.dtype, tuple(dtypes.get(a) for a in s.args), s.attrs)
    try:
        return scalar.spell(OPS[s.op].expr, SPELLING, s.args, ctx)
    except KeyError as e:
        raise LoweringError(f"no CPU rendering for {s.op}: {e}") from None


def _index(shape, lv: str = "i") -> str:
    idx = [f"{lv}{d}" if s != 1 else "0" for d, s in enumerate(shape)]
    return ", ".join(idx)


def _at(arr, lv: str) -> str:
    """The subscript of `arr` at the loop variables: a multi-index, or a strided array's flat offset."""
    if arr.strides is None:
        return _index(arr.shape, lv)
    terms = [str(arr.offset)] if arr.offset else []
    for d, (n, st) in enumerate(zip(arr.shape, arr.strides)):
        if n != 1 and st:
            terms.append(f"{lv}{d}" if st == 1 else f"{lv}{d} * {st}")
    return " + ".join(terms) or "0"


def _identity(mode, dtype) -> str:
    if mode == "sum":
        return f"Z_{dtype.short}"
    return {D.float32: "np.float32(-np.inf)", D.float64: "-np.inf", D.int64: "np.int64(-(2**63))",
            D.bool_: "False"}[dtype]


def _combine(mode, target, value, dtype=None) -> str:
    if mode == "sum":
        return f"{target} += {value}"
    if dtype in (D.float32, D.float64):
        # llvm.maximum (vecmath.maximum): NaN wins as below, and a reduction over it vectorizes, which the
        # select with its NaN test does not (a softmax's row max over 64-512 float32: 29x slower)
        return f"{target} = M.maximum({target}, {value})"
    # NaN wins, as in NumPy's max: a NaN value replaces the target, and a NaN target stays
    return f"{target} = {value} if ({value} > {target} or {value} != {value}) else {target}"


def _fold(res: Result, target, value) -> str:
    """`_combine` for reduction result `res` (its mode and dtype)."""
    return _combine(res.mode, target, value, res.array.dtype)


def render(k: LoopKernel, name: str, parallel: bool | None = None) -> str:
    """Numba source for one loop kernel: `def name(a0.., o0..)` writing into preallocated outputs."""
    return render_multi([k], name, [parallel])


def render_multi(kernels: list, name: str, parallel: list | None = None) -> str:
    """One Numba function running several loop kernels in sequence (one launch from Python).

    Arguments are every kernel's loads (kernel after kernel), then every kernel's results."""
    consts: dict[str, str] = {}
    params: list[str] = []
    results: list[str] = []
    blocks: list[str] = []
    par_any = False
    for t, k in enumerate(kernels):
        par = parallel[t] if parallel and parallel[t] is not None else k.numel() >= PARALLEL_MIN
        par_any |= par
        tag = "" if len(kernels) == 1 else f"{t}_"
        a, o, lines = _render_block(k, tag, par, consts)
        params += a
        results += o
        blocks += lines
    lines = [f"@numba.njit(parallel={par_any}, fastmath={FASTMATH}, {JIT_OPTIONS})",
             f"def {name}({', '.join(params + results)}):"] + const_lines(consts) + blocks
    return "\n".join([""] + lines) + "\n"


def const_lines(consts: dict) -> list:
    """The named constants of a function, as its first lines: locals, not module globals, so that one module's
    functions cannot see each other's (and a constant can become an argument, backends/sizes.py)."""
    return [f"    {c} = {v}" for c, v in consts.items()]


def render_packed(kernels: list, name: str, aliases: list | None = None, parallel: list | None = None) -> tuple:
    """One Numba function for a multi-tensor kernel (the optimizer update) that takes ONE argument: an int64
    table [rows, 2] of (address, element count) of every array it reads or writes, filled per call by
    `views.addresses`. Returns (source, rows) with rows[r] = (kernel index, position): position p <
    len(loads) is that kernel's load p, else its result p - len(loads).

    Why: compile time. Numba's unboxing code for 60 array arguments took ~0.4 s of LLVM time (superlinear in
    the count), and one loop nest per parameter ~0.05 s each (a parallel one ~1 s). 1-D elementwise kernels
    with the same body and parallelism (the parameters of a param group) share ONE loop nest run over their
    rows; others keep their own block with constant sizes.

    aliases[t] = {result j: load l} for results written in place over a load (memory_plan's pairs): the
    result is the load's array variable itself. With two names for one buffer LLVM's runtime alias check
    fails and the loop runs its scalar fallback (LeNet's SGD update 35 vs 14 us, the MLP's Adam 218 vs 161 us);
    the step then always hands over one buffer (a copy where it may not write into the input).
    parallel[t]: whether kernel t runs on threads (default: by its size)."""
    consts: dict[str, str] = {}
    par = parallel or [k.numel() >= PARALLEL_MIN for k in kernels]
    aliases = aliases or [{} for _ in kernels]
    # a kernel that computes several independent updates in one loop (fuse_elementwise joins same-size
    # parameters' updates: gpt's AdamW had 26 in one loop body, ~15 CPU s of Numba for the kernel) is split into
    # them first, so that equal ones share one loop nest run over their rows
    parts, where, part_par, part_alias = [], [], [], []
    for t, k in enumerate(kernels):
        for sub, positions, alias in split_independent(k, aliases[t]):
            parts.append(sub)
            where.append((t, positions))
            part_par.append(par[t])
            part_alias.append(alias)
    groups: dict = {}
    for u, k in enumerate(parts):
        key = (part_par[u], tuple(sorted(part_alias[u].items()))) + _group_key(k) if _shareable(k) else ("own", u)
        groups.setdefault(key, []).append(u)
    kernels, par, aliases = parts, part_par, part_alias
    lines: list[str] = []
    rows: list[tuple] = []
    for g, members in enumerate(groups.values()):
        tag = f"{g}_"
        k = _renamed(kernels[members[0]], f"v{tag}")
        width = len(k.loads) + len(k.results)
        arrays = [a for a in k.loads] + [r.array for r in k.results]
        base = len(rows)
        rows += [(where[u][0], where[u][1][p]) for u in members for p in range(width)]
        alias = aliases[members[0]]
        nl = len(k.loads)
        if len(members) == 1:
            A, O, block = _render_block(k, tag, par[members[0]], consts)
            lines += [f"    {nm} = {A[alias[p - nl]]}" if p - nl in alias else
                      f"    {nm} = array_at(P[{base + p}, 0], {math.prod(arr.shape)}, {np_type(arr.dtype)})"
                      for p, (nm, arr) in enumerate(zip(A + O, arrays))]
            lines += block
            continue
        dyn = LoopKernel((f"n{tag}",), k.loads, k.stmts, k.results)
        A, O, block = _render_block(dyn, tag, par[members[0]], consts)
        lines.append(f"    for m{tag} in range({len(members)}):")
        lines.append(f"        r{tag} = {base} + m{tag} * {width}")
        lines += [f"        {nm} = {A[alias[p - nl]]}" if p - nl in alias else
                  f"        {nm} = array_at(P[r{tag} + {p}, 0], P[r{tag} + {p}, 1], {np_type(arr.dtype)})"
                  for p, (nm, arr) in enumerate(zip(A + O, arrays))]
        lines.append(f"        n{tag} = P[r{tag} + {len(k.loads)}, 1]")
        lines += ["    " + ln for ln in block]
    src = [f"@numba.njit(parallel={any(par)}, fastmath={FASTMATH}, {JIT_OPTIONS})",
           f"def {name}(P):"] + const_lines(consts) + lines
    return "\n".join([""] + src) + "\n", rows


def split_independent(k: LoopKernel, alias: dict) -> list:
    """`k` as the independent loop kernels it computes: [(kernel, positions, alias)], where positions[p] is
    the position in `k` (its loads, then its results) of the part's load or result p, and alias the part's
    {result: load} pairs of `alias`. Statements that depend on constants and broadcast (size-1) loads only --
    a learning rate, Adam's bias corrections -- are repeated in each part that uses them. One part: `k` itself."""
    if k.rows is not None or len(k.space) != 1 or k.is_strided():
        return [(k, list(range(len(k.loads) + len(k.results))), alias)]
    by_var = {s.var: s for s in k.stmts}
    invariant: set[str] = set()
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s in k.stmts:
        if s.op == "load":
            if all(d == 1 for d in k.loads[s.args[0]].shape):
                invariant.add(s.var)
            else:
                parent[find(s.var)] = find(("array", s.args[0]))  # loads of one array stay together
        elif s.op == "const" or all(a in invariant for a in s.args):
            invariant.add(s.var)
        else:
            for a in s.args:
                if a not in invariant:
                    parent[find(a)] = find(s.var)
            find(s.var)
    comps: dict = {}
    for j, r in enumerate(k.results):
        root = ("result", j) if r.var in invariant else find(r.var)
        comps.setdefault(root, []).append(j)
    for j, l in alias.items():  # a result written over a load: one part (the load's array is the result's)
        lk = next((s.var for s in k.stmts if s.op == "load" and s.args[0] == l and s.var not in invariant), None)
        if lk is not None and k.results[j].var not in invariant and find(lk) != find(k.results[j].var):
            return [(k, list(range(len(k.loads) + len(k.results))), alias)]
    if len(comps) < 2:
        return [(k, list(range(len(k.loads) + len(k.results))), alias)]
    out = []
    for res in comps.values():
        need: set[str] = set()
        stack = [k.results[j].var for j in res]
        while stack:  # the statements these results depend on
            v = stack.pop()
            if v in need:
                continue
            need.add(v)
            st = by_var[v]
            if st.op not in ("load", "const"):
                stack += list(st.args)
        loads = sorted({by_var[v].args[0] for v in need if by_var[v].op == "load"})
        new_index = {a: i for i, a in enumerate(loads)}
        stmts = [Stmt(st.var, st.op, (new_index[st.args[0]],), st.dtype, st.attrs) if st.op == "load" else st
                 for st in k.stmts if st.var in need]
        results = [k.results[j] for j in res]
        positions = list(loads) + [len(k.loads) + j for j in res]
        part_alias = {res.index(j): new_index[l] for j, l in alias.items() if j in res and l in new_index}
        out.append((LoopKernel(k.space, [k.loads[a] for a in loads], stmts, results), positions, part_alias))
    return out


def packable(kernels: list) -> bool:
    """Kernels `render_packed` takes: 1-D loops whose arrays share one float dtype."""
    dtypes = {a.dtype for k in kernels for a in list(k.loads) + [r.array for r in k.results]}
    return len(dtypes) == 1 and dtypes <= set(SUFFIX) and all(len(k.space) == 1 and k.rows is None and
                                                              not k.is_strided() for k in kernels)


def _shareable(k: LoopKernel) -> bool:
    return len(k.space) == 1 and all(r.mode == "store" for r in k.results)


def _renamed(k: LoopKernel, prefix: str) -> LoopKernel:
    """`k` with its scalar variables named {prefix}0, {prefix}1, ... in statement order."""
    names = {s.var: f"{prefix}{i}" for i, s in enumerate(k.stmts)}
    stmts = [Stmt(names[s.var], s.op, s.args if s.op in ("load", "const") else tuple(names[a] for a in s.args),
                  s.dtype, s.attrs) for s in k.stmts]
    results = [Result(r.array, names[r.var], r.mode) for r in k.results]
    return LoopKernel(k.space, k.loads, stmts, results)


def _group_key(k: LoopKernel) -> tuple:
    """Equal for kernels whose loop bodies are the same text (sizes aside): they can share one loop nest."""
    consts: dict[str, str] = {}
    named = _renamed(k, "v")
    _, _, lines = _render_block(LoopKernel(("n",), k.loads, named.stmts, named.results), "", False, consts)
    return tuple(lines), tuple(consts.items())


def _tanh_sigmoid_pairs(stmts) -> dict:
    """{var: (tanh var, sigmoid var)} at the first of each tanh/sigmoid pair of one argument, {var: None} at the
    second: `_render_block` emits one `tanh_sigmoid` call there and nothing here."""
    first: dict = {}
    pairs: dict = {}
    fn = {}
    for s in stmts:
        fn[s.var] = scalar.head(OPS[s.op].expr) if s.op in OPS else None
        if fn[s.var] in ("tanh", "sigmoid") and s.dtype in SUFFIX:
            key = (s.args[0], s.dtype)
            other = first.get(key)
            if other is not None and fn[other.var] != fn[s.var] and other.var not in pairs:
                t, g = (other, s) if fn[other.var] == "tanh" else (s, other)
                pairs[other.var] = (t.var, g.var)
                pairs[s.var] = None
            elif other is None:
                first[key] = s
    return pairs


def _render_block(k: LoopKernel, tag: str, parallel: bool, consts: dict) -> tuple:
    """Loop-nest lines (at function-body indent) for kernel `k`; every name carries `tag`, so several
    blocks can share one function. Returns (load array names, result array names, lines)."""
    if k.rows is not None:
        return _render_rows(k, tag, parallel, consts)
    if k.is_strided():
        parallel = False  # flat offsets are int64: the unsigned chunk bounds below would make them float
    lv, cv = f"i{tag}", f"c{tag}"  # loop variables: per block, so their types never have to unify
    r = len(k.space)
    space = k.space
    A = [f"a{tag}{i}" for i in range(len(k.loads))]
    O = [f"o{tag}{j}" for j in range(len(k.results))]
    body: list[str] = []
    # loop-invariant statements (scalar loads, constants and what only they feed, e.g. Adam's
    # 1 - beta1**step) run once before the loops: LLVM cannot hoist them past the stores (aliasing)
    hoisted: list[str] = []
    invariant: set[str] = set()
    paired = _tanh_sigmoid_pairs(k.stmts)
    dtypes = {s.var: s.dtype for s in k.stmts}
    line_of: dict[str, int] = {}  # statement variable -> the body line that computes it
    for s in k.stmts:
        if s.op == "load" and all(d == 1 for d in k.loads[s.args[0]].shape) or s.op == "const" or (
                s.op not in ("load", "const") and all(a in invariant for a in s.args)):
            invariant.add(s.var)
            target = hoisted
        else:
            target = body
            if s.var not in line_of:  # (the second of a tanh/sigmoid pair is computed by its pair's line)
                line_of[s.var] = len(body)
            if paired.get(s.var):
                line_of.update(dict.fromkeys(paired[s.var], len(body)))
        if s.op == "load":
            arr = k.loads[s.args[0]]
            target.append(f"{s.var} = {A[s.args[0]]}[{_at(arr, lv)}]")
        elif s.var in paired:  # tanh and sigmoid of one value: one call computes both (one exp)
            if paired[s.var] is not None:
                tanh_var, sig_var = paired[s.var]
                target.append(f"{tanh_var}, {sig_var} = M.tanh_sigmoid_{s.dtype.short}({s.args[0]})")
        elif s.op == "const":
            value = SPELLING["constant"](scalar.Ctx(s.dtype, (), {"value": s.args[0]}))
            cname = next((c for c, v in consts.items() if v == value), None)
            if cname is None:
                cname = f"K{len(consts)}"
                consts[cname] = value
            target.append(f"{s.var} = {cname}")
        else:
            target.append(f"{s.var} = {_scalar(s, dtypes)}")
    reds = [j for j, res in enumerate(k.results) if res.mode != "store"]
    # reductions over the outer dim write per-block partials (combined in order after the loop);
    # reductions over the innermost dim keep a local accumulator around that loop
    # (serial kernels need no blocks: their summation order is fixed whatever the thread count)
    outer_red = [j for j in reds if space[0] > 1 and k.results[j].array.shape[0] == 1] if parallel else []
    inner_red = [j for j in reds if space[-1] > 1 and k.results[j].array.shape[-1] == 1]
    # (a symbolic first dim, from render_packed, is split into CHUNKS blocks)
    nch = (CHUNKS if isinstance(space[0], str) else min(space[0], CHUNKS)) if (parallel or outer_red) else 1
    # the block count as the generated code spells it: min(n, CHUNKS) rather than its value, so that the
    # source at another first dim differs only where that dim is written (backends/sizes.py: one template)
    nch_src = f"nc{tag}" if nch > 1 and not isinstance(space[0], str) else str(nch)
    if nch_src != str(nch):
        lines_nc = [f"    nc{tag} = min({space[0]}, {CHUNKS})"]
    else:
        lines_nc = []
    # an inner-dim reduction that keeps every other dim gets each output element from one accumulator:
    # it is stored, with no fill beforehand (same bits: the accumulator starts from the identity)
    direct = [j for j in inner_red
              if j not in outer_red and tuple(k.results[j].array.shape[:-1]) == tuple(space[:-1])]
    lines: list[str] = ["    " + h for h in hoisted] + lines_nc
    ind = "    "
    for j in reds:
        res = k.results[j]
        if j in direct:
            continue
        # a flat loop, not .fill(): each fill signature is one more Numba overload to compile and link
        size = int(np.prod(res.array.shape))
        lines.append(f"{ind}f{tag}{j} = view({O[j]}, ({size},))")
        lines.append(f"{ind}for fi{tag}{j} in range({size}):")
        lines.append(f"{ind}    f{tag}{j}[fi{tag}{j}] = {_identity(res.mode, res.array.dtype)}")
        if j in outer_red:
            shape = ", ".join([nch_src] + [str(d) for d in res.array.shape])
            lines.append(f"{ind}p{tag}{j} = empty(({shape}), {np_type(res.array.dtype)})")
            lines.append(f"{ind}pi{tag}{j} = view(p{tag}{j}, ({nch_src} * {size},))")
            lines.append(f"{ind}for fi{tag}{j} in range({nch_src} * {size}):")
            lines.append(f"{ind}    pi{tag}{j}[fi{tag}{j}] = {_identity(res.mode, res.array.dtype)}")

    def target(j, drop_last=False):
        idx = _index(k.results[j].array.shape, lv).split(", ")
        if drop_last:
            idx[-1] = "0"
        idx = ", ".join(idx)
        return f"p{tag}{j}[{cv}, {idx}]" if j in outer_red else f"{O[j]}[{idx}]"

    headers = []
    if nch > 1:
        loop = "numba.prange" if parallel else "range"
        lines.append(f"{ind}for {cv} in {loop}({nch_src}):")
        ind += "    "
        # unsigned bounds: with signed ones Numba keeps negative-index wraparound code, which stops
        # LLVM from vectorizing the loop (measured 13 ms vs 1.5 ms for an exp over 2**22 floats)
        headers.append(f"for {lv}0 in range(np.uint64(({cv} * {space[0]}) // {nch_src}), "
                       f"np.uint64((({cv} + 1) * {space[0]}) // {nch_src})):")
    else:
        headers.append(f"for {lv}0 in range({space[0]}):")
    headers += [f"for {lv}{d} in range({space[d]}):" for d in range(1, r)]
    # a sum kept in a local accumulator is summed in its own innermost loop, before the loop that writes
    # (see _split_sums)
    split = _split_sums(k.results, inner_red, space[-1] if r > 1 else
                        space[0] if isinstance(space[0], str) else space[0] // nch)
    by_var = {s.var: s for s in k.stmts}
    for d, h in enumerate(headers):
        if d == r - 1:
            for j in inner_red:
                lines.append(f"{ind}acc{tag}{j} = {_acc_init(k.results[j])}")
            if split:
                lines.append(ind + h)
                lines.extend(ind + "    " + b for b in _body_for([k.results[j].var for j in inner_red], body,
                                                                   line_of, by_var))
                lines.extend(f"{ind}    {_fold(k.results[j], f'acc{tag}{j}', k.results[j].var)}"
                             for j in inner_red)
        lines.append(ind + h)
        ind += "    "
    if split:
        lines.extend(ind + b for b in _body_for([res.var for j, res in enumerate(k.results) if j not in inner_red],
                                                body, line_of, by_var))
    else:
        lines.extend(ind + b for b in body)
    for j, res in enumerate(k.results):
        if res.mode == "store":
            lines.append(f"{ind}{O[j]}[{_at(res.array, lv)}] = {res.var}")
        elif j in inner_red:
            if not split:
                lines.append(f"{ind}{_fold(res, f'acc{tag}{j}', res.var)}")
        else:
            lines.append(f"{ind}{_fold(res, target(j), res.var)}")
    ind = ind[:-4]
    for j in inner_red:
        res = k.results[j]
        if j in direct:
            lines.append(f"{ind}{target(j, drop_last=True)} = acc{tag}{j}")
        else:
            lines.append(f"{ind}{_fold(res, target(j, drop_last=True), f'acc{tag}{j}')}")
    for j in outer_red:
        res = k.results[j]
        m = int(np.prod(res.array.shape))
        lines.append(f"    of{tag}{j} = view({O[j]}, ({m},))")
        lines.append(f"    pf{tag}{j} = view(p{tag}{j}, ({nch_src}, {m}))")
        lines.append(f"    for {cv} in range({nch_src}):")
        lines.append(f"        for {lv}m in range({m}):")
        lines.append(f"            {_fold(res, f'of{tag}{j}[{lv}m]', f'pf{tag}{j}[{cv}, {lv}m]')}")
    return A, O, lines


def _const_name(value: str, consts: dict) -> str:
    cname = next((c for c, v in consts.items() if v == value), None)
    if cname is None:
        cname = f"K{len(consts)}"
        consts[cname] = value
    return cname


def _render_rows(k: LoopKernel, tag: str, parallel: bool, consts: dict) -> tuple:
    """A row kernel (kernel.LoopKernel.rows): for each row, as many loops over its elements as the row statements
    need -- each loop computes what its row reductions read (recomputing cheap element values rather than
    storing them), the last one stores the element results -- with per-row statements between the loops.

    Rows run in parallel (fixed chunks of the first row dim) only when every result keeps every row dim, so that
    no two rows write one element; an accumulation across rows (a column sum) makes it serial."""
    lv, cv = f"i{tag}", f"c{tag}"
    rows, space = k.rows, k.space
    A = [f"a{tag}{i}" for i in range(len(k.loads))]
    O = [f"o{tag}{j}" for j in range(len(k.results))]
    dtypes = {s.var: s.dtype for s in k.stmts}
    by_var = {s.var: s for s in k.stmts}

    def row_array(arr) -> bool:
        return all(d == 1 for d in arr.shape[rows:])

    level, ready, need = {}, {}, {}  # 'row'/'elem'; row var -> loop after which it is known; elem var -> first loop
    invariant: set[str] = set()
    for s in k.stmts:
        if s.op == "const" or (s.op == "load" and all(d == 1 for d in k.loads[s.args[0]].shape)):
            level[s.var], ready[s.var] = "row", -1
            invariant.add(s.var)
        elif s.op == "load":
            if row_array(k.loads[s.args[0]]):
                level[s.var], ready[s.var] = "row", -1
            else:
                level[s.var], need[s.var] = "elem", 0
        elif s.op in ("rowsum", "rowmax"):  # (over a row value, e.g. a broadcast one: the loop after it is known)
            a = s.args[0]
            level[s.var], ready[s.var] = "row", need[a] if level[a] == "elem" else ready[a] + 1
        elif all(level[a] == "row" for a in s.args):
            level[s.var], ready[s.var] = "row", max((ready[a] for a in s.args), default=-1)
            if all(a in invariant for a in s.args):
                invariant.add(s.var)
        else:
            level[s.var] = "elem"
            need[s.var] = max((ready[a] + 1 if level[a] == "row" else need[a] for a in s.args), default=0)
    row_results = [j for j, res in enumerate(k.results) if row_array(res.array) and res.mode != "store"
                   and all(d == n for d, n in zip(res.array.shape[:rows], space[:rows]))]
    for j in row_results:  # a row reduction stored, not read: it runs in the loop that can compute its value
        v = k.results[j].var
        ready[f"rr{tag}{j}"] = need[v] if level[v] == "elem" else ready[v] + 1
    elem_results = [j for j, res in enumerate(k.results) if j not in row_results and
                    (res.mode != "store" or not row_array(res.array) or level[res.var] == "elem")]
    phases = [ready[s.var] for s in k.stmts if s.op in ("rowsum", "rowmax")] + \
        [ready[f"rr{tag}{j}"] for j in row_results]
    # the element results are stored in the last loop, which must come after everything they read
    last = max(phases + [need[k.results[j].var] if level[k.results[j].var] == "elem" else
                         ready[k.results[j].var] + 1 for j in elem_results], default=0)
    # a result accumulated across rows (or one element written by several rows) makes the rows serial
    across = any(any(d == 1 and n > 1 for d, n in zip(k.results[j].array.shape[:rows], space[:rows]))
                 for j in range(len(k.results)) if j not in row_results and k.results[j].mode != "store")
    parallel = parallel and not across and rows > 0 and space[0] > 1 and not k.is_strided()
    lines: list[str] = []
    ind = "    "

    def emit_stmt(s, out: list, indent: str) -> None:
        if s.op == "load":
            out.append(f"{indent}{s.var} = {A[s.args[0]]}[{_at(k.loads[s.args[0]], lv)}]")
        elif s.op == "const":
            value = SPELLING["constant"](scalar.Ctx(s.dtype, (), {"value": s.args[0]}))
            out.append(f"{indent}{s.var} = {_const_name(value, consts)}")
        else:
            out.append(f"{indent}{s.var} = {_scalar(s, dtypes)}")

    for s in k.stmts:  # constants and scalar loads: once
        if s.var in invariant:
            emit_stmt(s, lines, ind)
    for j in elem_results:  # accumulations into the outputs start from the identity
        res = k.results[j]
        if res.mode != "store":
            size = int(np.prod(res.array.shape))
            lines.append(f"{ind}f{tag}{j} = view({O[j]}, ({size},))")
            lines.append(f"{ind}for fi{tag}{j} in range({size}):")
            lines.append(f"{ind}    f{tag}{j}[fi{tag}{j}] = {_identity(res.mode, res.array.dtype)}")
    if parallel:
        nch = min(space[0], CHUNKS)
        lines.append(f"{ind}for {cv} in numba.prange({nch}):")
        ind += "    "
        lines.append(f"{ind}for {lv}0 in range(({cv} * {space[0]}) // {nch}, (({cv} + 1) * {space[0]}) // {nch}):")
    else:
        lines.append(f"{ind}for {lv}0 in range({space[0]}):" if rows > 0 else f"{ind}if True:")
    ind += "    "
    for d in range(1, rows):
        lines.append(f"{ind}for {lv}{d} in range({space[d]}):")
        ind += "    "
    emitted = set(invariant)
    row_stmts = [s for s in k.stmts if level[s.var] == "row" and s.var not in invariant and
                 s.op not in ("rowsum", "rowmax")]

    def row_stmts_ready(upto: int) -> None:
        for s in row_stmts:
            if s.var not in emitted and ready[s.var] <= upto and (
                    s.op in ("load", "const") or all(a in emitted for a in s.args)):
                emit_stmt(s, lines, ind)
                emitted.add(s.var)

    row_stmts_ready(-1)
    for p in range(last + 1):
        reds = [s for s in k.stmts if s.op in ("rowsum", "rowmax") and ready[s.var] == p]
        rr = [j for j in row_results if ready[f"rr{tag}{j}"] == p]
        wanted = [s.args[0] for s in reds] + [k.results[j].var for j in rr]
        if p == last:
            wanted += [k.results[j].var for j in elem_results]
        needed = set()
        for v in wanted:
            needed |= _deps(v, by_var)
        elem = [s for s in k.stmts if level[s.var] == "elem" and s.var in needed]
        for s in reds:
            lines.append(f"{ind}acc{s.var} = {_identity('sum' if s.op == 'rowsum' else 'max', s.dtype)}")
        for j in rr:
            lines.append(f"{ind}accr{tag}{j} = {_identity(k.results[j].mode, k.results[j].array.dtype)}")
        # (_split_sums: this pass's sums in a loop of their own, before the loop that writes the outputs)
        writes = p == last and bool(elem_results)
        split = writes and _short(space[-1]) and (any(s.op == "rowsum" for s in reds) or
                                                  any(k.results[j].mode == "sum" for j in rr))
        inner = ind
        for d in range(rows, len(space)):
            lines.append(f"{inner}for {lv}{d} in range({space[d]}):")
            inner += "    "
        if split:
            summed = set()
            for v in [s.args[0] for s in reds] + [k.results[j].var for j in rr]:
                summed |= _deps(v, by_var)
            for s in elem:
                if s.var in summed:
                    emit_stmt(s, lines, inner)
        else:
            for s in elem:
                emit_stmt(s, lines, inner)
        for s in reds:
            lines.append(f"{inner}{_combine('sum' if s.op == 'rowsum' else 'max', f'acc{s.var}', s.args[0], s.dtype)}")
        for j in rr:
            lines.append(f"{inner}{_fold(k.results[j], f'accr{tag}{j}', k.results[j].var)}")
        if split:
            inner = ind
            for d in range(rows, len(space)):
                lines.append(f"{inner}for {lv}{d} in range({space[d]}):")
                inner += "    "
            stored = set()
            for j in elem_results:
                stored |= _deps(k.results[j].var, by_var)
            for s in elem:
                if s.var in stored:
                    emit_stmt(s, lines, inner)
        if p == last:
            for j in elem_results:
                res = k.results[j]
                if res.mode == "store":
                    lines.append(f"{inner}{O[j]}[{_at(res.array, lv)}] = {res.var}")
                else:
                    lines.append(f"{inner}{_fold(res, f'{O[j]}[{_index(res.array.shape, lv)}]', res.var)}")
        for s in reds:
            lines.append(f"{ind}{s.var} = acc{s.var}")
            emitted.add(s.var)
        row_stmts_ready(p)
    row_stmts_ready(last)
    for j in row_results:
        lines.append(f"{ind}{O[j]}[{_index(k.results[j].array.shape, lv)}] = accr{tag}{j}")
    for j, res in enumerate(k.results):
        if j not in elem_results and j not in row_results:  # a row value stored once per row
            lines.append(f"{ind}{O[j]}[{_index(res.array.shape, lv)}] = {res.var}")
    return A, O, lines


def _short(extent) -> bool:
    """Whether an innermost loop of `extent` iterations (a name: unknown) is short enough to need _split_sums."""
    return isinstance(extent, str) or extent < SPLIT_SUMS_BELOW


def _split_sums(results, accumulated, extent) -> bool:
    """Whether the innermost loop's local sums (`accumulated`: indices into `results`) go in a loop of their own
    that runs before the loop writing the other results (the innermost loop runs `extent` times).

    Under fastmath's reassoc, LLVM vectorizes such a sum into per-lane partial sums. A loop that also stores
    is vectorized behind a runtime check that its stores do not overlap its loads: when an output lies less
    than (vector width x unroll) elements after an input in memory -- small arrays, where malloc put them -- it
    runs the scalar loop instead, which sums in another order. The same inputs then gave sums 1 ulp apart
    depending on heap addresses, which other threads' allocations move (a training step in one thread changed
    its loss while another thread ran). A loop that only loads needs no such check: one summation order for
    any addresses. It runs first, so it reads the inputs before an output that shares their memory is written.
    Max needs no split (exact in any order). Nor do rows of SPLIT_SUMS_BELOW elements or more: distinct
    arrays lie that far apart, and an output written over its input fails the check on every call (one order
    again); splitting them cost 1.2-1.9x on such kernels (two passes over memory)."""
    return (_short(extent) and any(results[j].mode == "sum" for j in accumulated)
            and len(accumulated) < len(results))


def _body_for(wanted, body: list, line_of: dict, by_var: dict) -> list:
    """The lines of `body` (in order) that compute the variables in `wanted`."""
    need: set = set()
    for v in wanted:
        need |= _deps(v, by_var)
    return [body[i] for i in sorted({line_of[v] for v in need if v in line_of})]


def _deps(var: str, by_var: dict) -> set:
    """`var` and every statement variable it is computed from."""
    out, stack = set(), [var]
    while stack:
        v = stack.pop()
        if v in out or v not in by_var:
            continue
        out.add(v)
        s = by_var[v]
        if s.op not in ("load", "const"):
            stack.extend(s.args)
    return out


def _acc_init(res) -> str:
    # same-width accumulator: LLVM vectorizes it into per-lane partial sums (a float64 one was 2.5x slower)
    return _identity(res.mode, res.array.dtype)


_PACKAGE = __name__.rpartition(".")[0]  # this backend's package, by its real name


def _import(module: str, alias: str) -> str:
    """`from <package> import <name> as alias` for helper `module` (dotted, relative to this backend's package):
    generated code names its helpers by where they really are, so a move cannot leave it importing stale paths.
    (Names, not imports: rendering must not load the helpers' Numba code.)"""
    package, _, name = f"{_PACKAGE}.{module}".rpartition(".")
    return f"from {package} import {name} as {alias}\n"


# Generated kernels call these modules' Numba functions, and Numba compiles those into each kernel's cached
# machine code while keying that cache on the kernel's own file: the fingerprint of the backend's files
# (this folder, recursively, the kernel description it lowers and the size templates that rewrite its
# sources) in every prelude makes an edited helper
# miss the cache instead of running on in its old form.
FINGERPRINT = cache.fingerprint(os.path.dirname(os.path.abspath(__file__)), kernel.__file__, sizes.__file__)

SEGMENT_PRELUDE_EXTRA = _import("blas.calls", "B") + _import("blas.segment", "G") + _import("index", "H")

PRELUDE = (f"# tracejit cpu backend, files {FINGERPRINT}\n"
           "import numpy as np\n"
           "import numba\n"
           + _import("vecmath", "M")
           + f"from {_PACKAGE}.views import array_at, empty, view\n"
           + """
Z_f32, O_f32 = np.float32(0), np.float32(1)
Z_f64, O_f64 = np.float64(0), np.float64(1)
Z_i64, O_i64 = np.int64(0), np.int64(1)
Z_bool, O_bool = False, True

""")


SEGMENT_PRELUDE = PRELUDE + SEGMENT_PRELUDE_EXTRA
