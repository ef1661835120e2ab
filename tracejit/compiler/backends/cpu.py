"""The CPU backend: renders fused loop kernels as Numba source, loads them through the disk cache, and
runs the program with NumPy/BLAS for the nodes that are not loop kernels (matmul, movement, index).

`render(kernel, name)` is pure (testable without compiling); `compile_graph` builds the Program.
"""

from __future__ import annotations

import math
import time

import numba
import numpy as np

from ... import dtypes as D
from ...ops import index_error
from .. import interrupt
from ..ir import Graph, Node
from ..runtime import Program
from . import blas, cache, threads
from .cpu_blas import sgemm_description
from .cpu_index import IndexCheckFailed
from .cpu_program import SegmentSource, segment_io, split_segments
from .cpu_views import addresses
from .cpu_window_steps import as_c, window_step
from .kernel import LoopKernel, LoweringError, Result, Stmt, lower
from .reference import ref_step

INPLACE_MIN = 1 << 14  # elements of optimizer state below which in-place updates are not worth a step
# Elements below which threads cost more than they save: a launch costs 2-60 us, and between the MLP's
# 2-thread GEMMs a TBB kernel over 128x512 left its worker spinning against OpenBLAS's threads (MLP step
# 3.5 -> 3.1 ms best, 3.9 -> 3.5 ms p25 with 1 << 18 instead of 1 << 16, two interleaved A/B runs)
PARALLEL_MIN = 1 << 18
CHUNKS = 16  # fixed outer blocks: reductions combine per-block partials in order -> same bits at any thread count
FASTMATH = '{"contract", "arcp", "afn", "reassoc", "nsz"}'  # not nnan/ninf: NaN and inf keep their meaning

_SUFFIX = {D.float32: "f32", D.float64: "f64"}


def _np_type(dtype) -> str:
    return {D.float32: "np.float32", D.float64: "np.float64", D.int64: "np.int64", D.bool_: "np.bool_"}[dtype]


def _math(fn, a, dtype):
    sfx = _SUFFIX.get(dtype)
    if sfx is None:
        raise LoweringError(f"{fn} needs a floating-point operand")
    return f"M.{fn}_{sfx}({a})"


def _expr(op: str, args: tuple, dtype, attrs, in_dtype) -> str:
    a = args
    zero = f"Z_{dtype.short}"
    one = f"O_{dtype.short}"
    simple = {"add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
              "neg": "(-{0})", "abs": "abs({0})", "pow": "({0} ** {1})",
              "eq": "({0} == {1})", "ne": "({0} != {1})", "lt": "({0} < {1})", "le": "({0} <= {1})",
              "gt": "({0} > {1})", "ge": "({0} >= {1})", "where": "({1} if {0} else {2})",
              "logical_not": "(not {0})",
              "maximum": "({0} if ({0} >= {1} or {0} != {0}) else {1})",
              "minimum": "({0} if ({0} <= {1} or {0} != {0}) else {1})",
              "relu": "({0} if not ({0} < " + zero + ") else " + zero + ")",
              "sign": "(" + one + " if {0} > " + zero + " else (-" + one + " if {0} < " + zero + " else {0}))"}
    if op in simple:
        return simple[op].format(*a)
    if op in ("exp", "log", "tanh", "sigmoid", "erf", "sin", "cos"):
        return _math(op, a[0], dtype)
    if op == "sqrt":
        return f"np.sqrt({a[0]})"
    if op == "cast":
        if dtype is D.bool_:
            return f"({a[0]} != 0)"
        return f"{_np_type(dtype)}({a[0]})"
    raise LoweringError(f"no CPU rendering for {op}")


def _index(shape, lv: str = "i") -> str:
    idx = [f"{lv}{d}" if s != 1 else "0" for d, s in enumerate(shape)]
    return ", ".join(idx)


def _identity(mode, dtype) -> str:
    if mode == "sum":
        return f"Z_{dtype.short}"
    return {D.float32: "np.float32(-np.inf)", D.float64: "-np.inf", D.int64: "np.int64(-(2**63))",
            D.bool_: "False"}[dtype]


def _combine(mode, target, value) -> str:
    if mode == "sum":
        return f"{target} += {value}"
    # NaN wins, as in NumPy's max: a NaN value replaces the target, and a NaN target stays
    return f"{target} = {value} if ({value} > {target} or {value} != {value}) else {target}"


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
    head = [f"{c} = {v}" for c, v in consts.items()]
    lines = [f"@numba.njit(parallel={par_any}, fastmath={FASTMATH}, error_model='numpy', cache=True)",
             f"def {name}({', '.join(params + results)}):"] + blocks
    return "\n".join(head + [""] + lines) + "\n"


def render_packed(kernels: list, name: str, aliases: list | None = None) -> tuple:
    """One Numba function for a multi-tensor kernel (the optimizer update) that takes ONE argument: an int64
    table [rows, 2] of (address, element count) of every array it reads or writes, filled per call by
    `cpu_views.addresses`. Returns (source, rows) with rows[r] = (kernel index, position): position p <
    len(loads) is that kernel's load p, else its result p - len(loads).

    Why: compile time. Numba's unboxing code for 60 array arguments took ~0.4 s of LLVM time (superlinear in
    the count), and one loop nest per parameter ~0.05 s each (a parallel one ~1 s). 1-D elementwise kernels
    with the same body and parallelism (the parameters of a param group) share ONE loop nest run over their
    rows; others keep their own block with constant sizes.

    aliases[t] = {result j: load l} for results written in place over a load (memory_plan's pairs): the
    result is the load's array variable itself. With two names for one buffer LLVM's runtime alias check
    fails and the loop runs its scalar fallback (LeNet's SGD update 35 vs 14 us, the MLP's Adam 218 vs 161 us);
    the step then always hands over one buffer (a copy where it may not write into the input)."""
    consts: dict[str, str] = {}
    par = [k.numel() >= PARALLEL_MIN for k in kernels]
    aliases = aliases or [{} for _ in kernels]
    groups: dict = {}
    for t, k in enumerate(kernels):
        key = (par[t], tuple(sorted(aliases[t].items()))) + _group_key(k) if _shareable(k) else ("own", t)
        groups.setdefault(key, []).append(t)
    lines: list[str] = []
    rows: list[tuple] = []
    for g, members in enumerate(groups.values()):
        tag = f"{g}_"
        k = _renamed(kernels[members[0]], f"v{tag}")
        width = len(k.loads) + len(k.results)
        arrays = [a for a in k.loads] + [r.array for r in k.results]
        base = len(rows)
        rows += [(t, p) for t in members for p in range(width)]
        alias = aliases[members[0]]
        nl = len(k.loads)
        if len(members) == 1:
            A, O, block = _render_block(k, tag, par[members[0]], consts)
            lines += [f"    {nm} = {A[alias[p - nl]]}" if p - nl in alias else
                      f"    {nm} = array_at(P[{base + p}, 0], {math.prod(arr.shape)}, {_np_type(arr.dtype)})"
                      for p, (nm, arr) in enumerate(zip(A + O, arrays))]
            lines += block
            continue
        dyn = LoopKernel((f"n{tag}",), k.loads, k.stmts, k.results)
        A, O, block = _render_block(dyn, tag, par[members[0]], consts)
        lines.append(f"    for m{tag} in range({len(members)}):")
        lines.append(f"        r{tag} = {base} + m{tag} * {width}")
        lines += [f"        {nm} = {A[alias[p - nl]]}" if p - nl in alias else
                  f"        {nm} = array_at(P[r{tag} + {p}, 0], P[r{tag} + {p}, 1], {_np_type(arr.dtype)})"
                  for p, (nm, arr) in enumerate(zip(A + O, arrays))]
        lines.append(f"        n{tag} = P[r{tag} + {len(k.loads)}, 1]")
        lines += ["    " + ln for ln in block]
    head = [f"{c} = {v}" for c, v in consts.items()]
    src = [f"@numba.njit(parallel={any(par)}, fastmath={FASTMATH}, error_model='numpy', cache=True)",
           f"def {name}(P):"] + lines
    return "\n".join(head + [""] + src) + "\n", rows


def packable(kernels: list) -> bool:
    """Kernels `render_packed` takes: 1-D loops whose arrays share one float dtype."""
    dtypes = {a.dtype for k in kernels for a in list(k.loads) + [r.array for r in k.results]}
    return len(dtypes) == 1 and dtypes <= set(_SUFFIX) and all(len(k.space) == 1 for k in kernels)


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
    for s in stmts:
        if s.op in ("tanh", "sigmoid") and s.dtype in _SUFFIX:
            key = (s.args[0], s.dtype)
            other = first.get(key)
            if other is not None and other.op != s.op and other.var not in pairs:
                t, g = (other, s) if other.op == "tanh" else (s, other)
                pairs[other.var] = (t.var, g.var)
                pairs[s.var] = None
            elif other is None:
                first[key] = s
    return pairs


def _render_block(k: LoopKernel, tag: str, parallel: bool, consts: dict) -> tuple:
    """Loop-nest lines (at function-body indent) for kernel `k`; every name carries `tag`, so several
    blocks can share one function. Returns (load array names, result array names, lines)."""
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
    for s in k.stmts:
        if s.op == "load" and all(d == 1 for d in k.loads[s.args[0]].shape) or s.op == "const" or (
                s.op not in ("load", "const") and all(a in invariant for a in s.args)):
            invariant.add(s.var)
            target = hoisted
        else:
            target = body
        if s.op == "load":
            arr = k.loads[s.args[0]]
            target.append(f"{s.var} = {A[s.args[0]]}[{_index(arr.shape, lv)}]")
        elif s.var in paired:  # tanh and sigmoid of one value: one call computes both (one exp)
            if paired[s.var] is not None:
                tanh_var, sig_var = paired[s.var]
                target.append(f"{tanh_var}, {sig_var} = M.tanh_sigmoid_{s.dtype.short}({s.args[0]})")
        elif s.op == "const":
            value = f"{_np_type(s.dtype)}({s.args[0]!r})" if s.dtype is not D.bool_ else repr(bool(s.args[0]))
            cname = next((c for c, v in consts.items() if v == value), None)
            if cname is None:
                cname = f"K{len(consts)}"
                consts[cname] = value
            target.append(f"{s.var} = {cname}")
        else:
            target.append(f"{s.var} = {_expr(s.op, s.args, s.dtype, s.attrs, None)}")
    reds = [j for j, res in enumerate(k.results) if res.mode != "store"]
    # reductions over the outer dim write per-block partials (combined in order after the loop);
    # reductions over the innermost dim keep a local accumulator around that loop
    # (serial kernels need no blocks: their summation order is fixed whatever the thread count)
    outer_red = [j for j in reds if space[0] > 1 and k.results[j].array.shape[0] == 1] if parallel else []
    inner_red = [j for j in reds if space[-1] > 1 and k.results[j].array.shape[-1] == 1]
    # (a symbolic first dim, from render_packed, is split into CHUNKS blocks)
    nch = (CHUNKS if isinstance(space[0], str) else min(space[0], CHUNKS)) if (parallel or outer_red) else 1
    # an inner-dim reduction that keeps every other dim gets each output element from one accumulator:
    # it is stored, with no fill beforehand (same bits: the accumulator starts from the identity)
    direct = [j for j in inner_red
              if j not in outer_red and tuple(k.results[j].array.shape[:-1]) == tuple(space[:-1])]
    lines: list[str] = ["    " + h for h in hoisted]
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
            shape = (nch,) + tuple(res.array.shape)
            lines.append(f"{ind}p{tag}{j} = empty({shape}, {_np_type(res.array.dtype)})")
            lines.append(f"{ind}pi{tag}{j} = view(p{tag}{j}, ({nch * size},))")
            lines.append(f"{ind}for fi{tag}{j} in range({nch * size}):")
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
        lines.append(f"{ind}for {cv} in {loop}({nch}):")
        ind += "    "
        # unsigned bounds: with signed ones Numba keeps negative-index wraparound code, which stops
        # LLVM from vectorizing the loop (measured 13 ms vs 1.5 ms for an exp over 2**22 floats)
        headers.append(f"for {lv}0 in range(np.uint64(({cv} * {space[0]}) // {nch}), "
                       f"np.uint64((({cv} + 1) * {space[0]}) // {nch})):")
    else:
        headers.append(f"for {lv}0 in range({space[0]}):")
    headers += [f"for {lv}{d} in range({space[d]}):" for d in range(1, r)]
    for d, h in enumerate(headers):
        if d == r - 1:
            for j in inner_red:
                lines.append(f"{ind}acc{tag}{j} = {_acc_init(k.results[j])}")
        lines.append(ind + h)
        ind += "    "
    lines.extend(ind + b for b in body)
    for j, res in enumerate(k.results):
        if res.mode == "store":
            lines.append(f"{ind}{O[j]}[{_index(res.array.shape, lv)}] = {res.var}")
        elif j in inner_red:
            lines.append(f"{ind}{_combine(res.mode, f'acc{tag}{j}', res.var)}")
        else:
            lines.append(f"{ind}{_combine(res.mode, target(j), res.var)}")
    ind = ind[:-4]
    for j in inner_red:
        res = k.results[j]
        if j in direct:
            lines.append(f"{ind}{target(j, drop_last=True)} = acc{tag}{j}")
        else:
            lines.append(f"{ind}{_combine(res.mode, target(j, drop_last=True), f'acc{tag}{j}')}")
    for j in outer_red:
        res = k.results[j]
        m = int(np.prod(res.array.shape))
        lines.append(f"    of{tag}{j} = view({O[j]}, ({m},))")
        lines.append(f"    pf{tag}{j} = view(p{tag}{j}, ({nch}, {m}))")
        lines.append(f"    for {cv} in range({nch}):")
        lines.append(f"        for {lv}m in range({m}):")
        lines.append(f"            {_combine(res.mode, f'of{tag}{j}[{lv}m]', f'pf{tag}{j}[{cv}, {lv}m]')}")
    return A, O, lines


def _acc_init(res) -> str:
    # same-width accumulator: LLVM vectorizes it into per-lane partial sums (a float64 one was 2.5x slower)
    return _identity(res.mode, res.array.dtype)


SEGMENT_PRELUDE_EXTRA = ("from tracejit.compiler.backends import cpu_blas as B\n"
                         "from tracejit.compiler.backends import cpu_segment_blas as G\n"
                         "from tracejit.compiler.backends import cpu_index as H\n")

PRELUDE = """import numpy as np
import numba
from tracejit.compiler.backends import cpu_math as M
from tracejit.compiler.backends.cpu_views import array_at, empty, view

Z_f32, O_f32 = np.float32(0), np.float32(1)
Z_f64, O_f64 = np.float64(0), np.float64(1)
Z_i64, O_i64 = np.int64(0), np.int64(1)
Z_bool, O_bool = False, True

"""


SEGMENT_PRELUDE = PRELUDE + SEGMENT_PRELUDE_EXTRA


class KernelStep:
    """Runs one Numba function holding one or more loop kernels: reshape inputs (free views), allocate
    outputs, call it. `parts` = (member node, LoopKernel, member-input -> step-input index map).
    With `rows` (a `render_packed` kernel) the function takes one table of the arrays' addresses instead."""

    def __init__(self, node: Node, parts: list, fn, source: str, hit: bool, owned: dict | None = None,
                 rows: list | None = None, aliased: set = frozenset()):
        self.node, self.fn, self.source, self.hit = node, fn, source, hit
        # in-place pairs the source writes through the input's own variable: they always get one buffer
        self.aliased = aliased
        # (output position, input position) pairs memory_plan allows to share a buffer, honoured only for
        # arrays this program produced itself last call (`owned`): a user's array is never written into
        self.inplace = node.attrs.get("inplace", ()) if owned is not None else ()
        self.owned = owned
        out_pos = {v.id: i for i, v in enumerate(node.outputs)}
        self.loads, self.outs, order = [], [], []
        for member, k, in_map in parts:
            self.loads += [(in_map[a.source], a.shape) for a in k.loads]
            for r in k.results:
                v = member.outputs[r.array.source]
                self.outs.append((v.type.shape, v.type.dtype.np, r.array.shape))
                order.append(out_pos[v.id])
        self.out_order = [order.index(i) for i in range(len(node.outputs))]
        self.first_call_s: float | None = None
        # render_packed's rows -> positions in (loads + results), the order of its address table
        self.rows = None
        if rows is not None:
            first_load, first_out, nl, no = [], [], 0, len(self.loads)
            for _, k, _ in parts:
                first_load.append(nl)
                first_out.append(no)
                nl, no = nl + len(k.loads), no + len(k.results)
            self.rows = [first_load[t] + p if p < len(parts[t][1].loads) else
                         first_out[t] + p - len(parts[t][1].loads) for t, p in rows]

    def __call__(self, args):
        outs = [None] * len(self.outs)
        copied = False
        for oi, ii in self.inplace:
            a = args[ii]
            if self.owned.get(id(a)) is a and a.flags.c_contiguous:
                outs[self.out_order[oi]] = a
            elif (oi, ii) in self.aliased:  # not ours to write into: the kernel updates a copy instead
                if not copied:
                    args, copied = list(args), True
                args[ii] = outs[self.out_order[oi]] = np.array(a, order="C")
        outs = [np.empty(shape, dtype) if o is None else o for o, (shape, dtype, _) in zip(outs, self.outs)]
        t0 = time.perf_counter() if self.first_call_s is None else 0.0
        if self.rows is not None:
            # the table needs 1-D arrays (one Numba type); any 1-D array of the right size will do
            flat = [as_c(args[src]) for src, _ in self.loads] + outs
            flat = [a if a.ndim == 1 else a.reshape(-1) for a in flat]
            arrays = [flat[i] for i in self.rows]  # alive until the kernel returns
            try:
                call = [addresses(arrays)]
            except numba.core.errors.TypingError:  # a read-only or unaligned input: another Numba type
                call = [addresses([a if a.flags.writeable and a.flags.aligned else a.copy() for a in arrays])]
        else:
            call = [as_c(args[src]).reshape(shape) for src, shape in self.loads]
            call += [o.reshape(m) for o, (_, _, m) in zip(outs, self.outs)]
        self.fn(*call)  # the first call loads (or compiles) it: a damaged Numba cache entry is a miss (numba_cache)
        if self.first_call_s is None:
            self.first_call_s = time.perf_counter() - t0
            interrupt.check()  # a Ctrl-C held while Numba compiled this kernel
        return [outs[i] for i in self.out_order]


def _alias_map(node: Node, parts: list) -> tuple:
    """For render_packed: per member kernel {result j: load l} of memory_plan's in-place pairs (the result
    array written over the load's, same shape), and the set of (output, input) pairs that covers."""
    pairs = dict(node.attrs.get("inplace", ()))
    out_pos = {v.id: i for i, v in enumerate(node.outputs)}
    aliases, aliased = [], set()
    for member, k, in_map in parts:
        alias = {}
        for j, r in enumerate(k.results):
            oi = out_pos[member.outputs[r.array.source].id]
            ii = pairs.get(oi)
            if ii is None or r.mode != "store":
                continue
            loads = [lj for lj, a in enumerate(k.loads) if in_map[a.source] == ii and a.shape == r.array.shape]
            if len(loads) == 1 and loads[0] not in alias.values():
                alias[j] = loads[0]
                aliased.add((oi, ii))
        aliases.append(alias)
    return aliases, aliased


class CpuProgram(Program):
    owned: dict

    def run(self, inputs: list) -> list:
        outs = super().run(inputs)
        if not self.tracks_ownership:
            return outs
        counts: dict[int, int] = {}
        for a in outs:
            counts[id(a)] = counts.get(id(a), 0) + 1
        # arrays handed out exactly once (each becomes one tensor's storage) may be updated in place next call
        self.owned.clear()
        self.owned.update((id(a), a) for a in outs if counts[id(a)] == 1 and isinstance(a, np.ndarray))
        return outs

    def cache_stats(self) -> tuple[int, int]:
        """(generated kernels, how many of them were already in the source cache)."""
        ks = [s for s, *_ in self.plan if isinstance(s, (SegmentStep, KernelStep))]
        return len(ks), sum(1 for k in ks if k.hit)

    def describe(self) -> str:
        steps = [s for s, *_ in self.plan]
        segs = [s for s in steps if isinstance(s, SegmentStep)]
        ks = [s for s in steps if isinstance(s, KernelStep)]
        native = len(steps) - len(segs) - len(ks)
        lines = [f"steps: {len(segs)} generated segment functions, {len(ks)} loop kernels, "
                 f"{native} library/NumPy steps (window kernels, BLAS)"]
        comp = [k.first_call_s for k in segs + ks if k.first_call_s is not None]
        hits = sum(1 for k in segs + ks if k.hit)
        lines.append(f"  numba compile/load on first call: {sum(comp) * 1e3:.0f} ms; "
                     f"source cache hits {hits}/{len(segs) + len(ks)}")
        if any(n.op.name == "matmul" or n.attrs.get("kind") == "window" for n in _all_nodes(self.graph)):
            lines.append(f"  float32 GEMMs: {sgemm_description()}")
        for f in self.fallbacks:
            lines.append(f"  ran with NumPy: {f}")
        return "\n".join(lines)


def _all_nodes(g: Graph):
    for n in g.nodes:
        yield n
        if n.body is not None:
            yield from _all_nodes(n.body)


class SegmentStep:
    """One generated function for a run of nodes: a single dispatch from Python per call. If Numba cannot
    compile it (first call), the run falls back to one step per node, and the reason is kept."""

    def __init__(self, fn, source, hit, blas_threads, fallback, label, fallbacks, uses_threads=False, checks=()):
        self.fn, self.source, self.hit, self.blas_threads = fn, source, hit, blas_threads
        self.fallback, self.label, self.fallbacks = fallback, label, fallbacks
        self.first_call_s: float | None = None
        self.uses_threads = uses_threads  # the generated function takes the pool's thread count last
        self.checks = list(checks)  # the source's index checks: number -> (error, message)

    def _args(self, args):
        arrays = [as_c(a) for a in args]
        if self.uses_threads:
            arrays.append(numba.get_num_threads())
        return arrays

    def __call__(self, args):
        try:
            return self._call(args)
        except IndexCheckFailed as e:  # an index out of range: the error eager code raises, with its value
            k, value = e.args
            raise index_error(value, *self.checks[k]) from None

    def _call(self, args):
        if self.first_call_s is None:
            t0 = time.perf_counter()
            try:
                if self.blas_threads:
                    blas.set_threads(self.blas_threads)
                out = self.fn(*self._args(args))
            except numba.core.errors.NumbaError as e:
                self.fallbacks.append(f"{self.label}: Numba could not compile it ({str(e).splitlines()[0]})")
                self.fn = self.fallback()
                self.uses_threads = False
                out = self.fn(*args)
            self.first_call_s = time.perf_counter() - t0
            interrupt.check()  # a Ctrl-C held while Numba compiled this segment
            return out
        if self.blas_threads:
            blas.set_threads(self.blas_threads)
        return self.fn(*self._args(args))


def _per_node(nodes, make_step, inputs, outputs):
    """A Python function running `nodes` one step each (the fallback for a segment)."""
    prog = Program(Graph("segment", list(inputs), list(nodes), list(outputs), {}, [None] * len(outputs)),
                   make_step)

    def run(*arrays):
        return prog.run(list(arrays))
    return run


def compile_graph(graph: Graph, dumper=None, timings=None, segments: bool = True) -> CpuProgram:
    threads.configure()  # threading layer and count must be set before the first parallel launch
    fallbacks: list[str] = []
    counter = [0]
    t_render = [0.0]
    owned: dict = {}

    def make_step(node: Node):
        kind = node.attrs.get("kind") if node.body is not None else None
        if kind not in ("elementwise", "reduce", "multi"):
            step = window_step(node)
            if step is None and kind is not None:
                fallbacks.append(f"{node.body.name}: no native kernel for pattern {node.attrs.get('pattern')}")
            return step or ref_step(node)
        t0 = time.perf_counter()
        try:
            members = node.body.nodes if kind == "multi" else [node]
            pos = {v.id: i for i, v in enumerate(node.inputs)}
            parts = []
            for t, m in enumerate(members):
                k = lower(m, prefix=f"v{t}_" if kind == "multi" else "v")
                parts.append((m, k, [pos[v.id] for v in m.inputs]))
            kernels = [k for _, k, _ in parts]
            rows, aliased = None, set()
            if kind == "multi" and packable(kernels):
                aliases, aliased = _alias_map(node, parts)
                src, rows = render_packed(kernels, "kernel", aliases)
            else:
                src = render_multi(kernels, "kernel")
            fn, hit = cache.load(PRELUDE + src, "kernel")
        except LoweringError as e:
            fallbacks.append(f"{node.body.name}: {e}")
            return ref_step(node)
        finally:
            t_render[0] += time.perf_counter() - t0
        counter[0] += 1
        if dumper:
            dumper.kernel(f"{counter[0]:02d}_{node.body.name}", PRELUDE + src)
        return KernelStep(node, parts, fn, src, hit, owned if kind == "multi" else None, rows, aliased)

    if not segments:
        prog = CpuProgram(graph, make_step)
    else:
        prog = CpuProgram(graph, units=_segment_units(graph, make_step, dumper, fallbacks, counter, t_render))
    prog.fallbacks = fallbacks
    prog.owned = owned
    prog.tracks_ownership = any(getattr(s, "inplace", ()) for s, *_ in prog.plan)
    if timings is not None:
        timings["render+load"] = t_render[0]
    return prog


def _is_native(n: Node) -> bool:
    """Nodes that get a step of their own rather than joining a segment: window kernels (their library),
    parallel loop kernels and the multi-tensor optimizer kernel (separately cached functions: inlining
    them made one segment of LeNet take 10x longer to compile). matmul joins segments as np.dot."""
    if n.body is not None and n.attrs.get("kind") == "multi":
        # its own step so it can write state in place (memory_plan), which a segment cannot decide per call;
        # for tiny models the extra dispatch costs more than fresh allocations save
        size = sum(_space_numel(m) for m in n.body.nodes)
        return size >= PARALLEL_MIN or (bool(n.attrs.get("inplace")) and size >= INPLACE_MIN)
    if n.body is not None and n.attrs.get("kind") in ("elementwise", "reduce"):
        return _space_numel(n) >= PARALLEL_MIN
    return (n.body is not None or n.op.name != "matmul") and window_step(n) is not None


def _space_numel(n: Node) -> int:
    for m in n.body.nodes:
        if m.op.name in ("sum", "amax"):
            return m.inputs[0].type.numel
        if m.op.name not in ("full", "reshape", "expand"):
            return m.outputs[0].type.numel
    return 0


def _segment_units(graph, make_step, dumper, fallbacks, counter, t_render) -> list:
    units = []
    parts = split_segments(graph, _is_native)
    reads_after: list[set] = [set() for _ in parts]
    seen: set = set()
    for i in range(len(parts) - 1, -1, -1):
        reads_after[i] = set(seen)
        kind, item = parts[i]
        for n in (item if kind == "segment" else [item]):
            seen.update(v.id for v in n.inputs)
    graph_outputs = {v.id for v in graph.outputs}
    for i, (kind, item) in enumerate(parts):
        if kind == "node":
            units.append((make_step(item), item.inputs, item.outputs))
            continue
        ins, outs = segment_io(item, reads_after[i], graph_outputs)
        if not outs and not any(n.body is None and n.op.name == "check_index" for n in item):
            continue
        t0 = time.perf_counter()
        seg = SegmentSource(item, ins, outs, PARALLEL_MIN, render_multi, _render_block, FASTMATH,
                            blas.SPLIT_GEMM_FLOPS if threads.get_num_threads() > 1 else float("inf"))
        src = seg.source()
        fn, hit = cache.load(SEGMENT_PRELUDE + src, "segment")
        t_render[0] += time.perf_counter() - t0
        counter[0] += 1
        label = f"segment {counter[0]} ({len(item)} nodes)"
        if dumper:
            dumper.kernel(f"{counter[0]:02d}_segment", SEGMENT_PRELUDE + src)
        # a segment without GEMMs leaves BLAS alone (0): toggling OpenBLAS between 1 and 2 threads costs
        # ~20 us a switch, and the MLP step switched 4 times. GEMMs split over the pool run 1-thread BLAS.
        nthreads = (0 if not seg.max_gemm_flops else 1 if seg.has_parallel or seg.uses_threads
                    else blas.threads_for(seg.max_gemm_flops))
        step = SegmentStep(fn, src, hit, nthreads,
                           lambda item=item, ins=ins, outs=outs: _per_node(item, make_step, ins, outs),
                           label, fallbacks, seg.uses_threads, seg.checks)
        units.append((step, ins, outs))
    return units
