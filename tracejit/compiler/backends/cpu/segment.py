"""Whole-segment code generation: maximal runs of nodes the CPU backend can express in Numba become ONE
generated function, so a step costs one dispatch from Python instead of one per kernel.

Serial loop kernels are inlined into the segment function (one compilation unit compiles faster than
many small ones); parallel kernels stay separate `parallel=True` functions the segment calls; matmul is
`np.dot` (BLAS); movement ops are views or copies; index/random ops call `index` helpers.
Window ops (their own kernel library) and anything else run as Python steps between segments.
"""

from __future__ import annotations

import math

from .... import dtypes as D
from .... import scalar
from ....ops import index_message
from ...ir import FusedKind, Graph, Node, Pattern, Value, fused
from ..kernel import LoweringError, lower
from .capabilities import LOOP_FEATURES, supports
from .render import JIT_OPTIONS
from .spelling import SPELLING

MAX_BLOCKS = 8  # loop nests per generated segment function
MAX_OUTPUTS = 20  # outputs of one part of a wide fused elementwise node (_split_wide): Numba's typing of a large
# tuple is superlinear; AdamW's bookkeeping on 0-d tensors made one function of 164 outputs, ~13 CPU s of a gpt compile
CUT_AT_GEMMS_NODES = 150  # graphs larger than this end a segment before each GEMM (split_segments)
SIMPLE = ("reshape", "permute", "expand", "slice", "full", "matmul", "gather", "scatter_add", "argmax",
          "uniform", "cat", "pad", "check_index")


def renderable(node: Node) -> bool:
    if node.pattern is Pattern.LINEAR:  # GEMM + bias (+ relu) epilogue
        x, w, _ = node.inputs
        return supports(Pattern.LINEAR, {**node.attrs, "dtype": node.outputs[0].dtype}) is True and \
            min(x.shape + w.shape) > 0
    if node.body is not None:
        if not node.fused_kind.is_loop:
            return False
        try:
            members = node.body.nodes if node.fused_kind is FusedKind.MULTI else [node]
            for m in members:
                lower(m, features=LOOP_FEATURES)
        except LoweringError:
            return False
        return True
    if node.op.name not in SIMPLE:
        return False
    if node.op.name == "matmul" and node.outputs[0].dtype not in (D.float32, D.float64):
        return False
    return all(v.type.numel > 0 for v in node.outputs)


def _np(dtype) -> str:
    return {D.float32: "np.float32", D.float64: "np.float64", D.int64: "np.int64", D.bool_: "np.bool_",
            D.uint8: "np.uint8"}[dtype]


def _shape(t) -> str:
    s = tuple(int(x) for x in t)
    return repr(s) if len(s) != 1 else f"({s[0]},)"


def _reshaped(expr: str, shape, known=None) -> str:
    """`expr` (a C-contiguous array, of shape `known` if given) seen with `shape`. `views.view`, not
    `.reshape`: Numba's reshape lowers to ~200 lines of IR per call, which doubled segment compile times."""
    shape = tuple(int(x) for x in shape)
    if known is not None and tuple(int(x) for x in known) == shape:
        return expr
    return f"view({expr}, {_shape(shape)})"


def _three(shape, axis):
    return (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def _lowered(nodes: list) -> dict:
    """id(member node) -> its LoopKernel, for the loop kernels among `nodes`."""
    out = {}
    for n in nodes:
        if n.body is not None and n.pattern is None:
            for m in (n.body.nodes if n.fused_kind is FusedKind.MULTI else [n]):
                out[id(m)] = lower(m, prefix="v", features=LOOP_FEATURES)
    return out


def transposed_inputs(nodes: list, inputs: list, producers: dict) -> list:
    """Per segment input: True where it arrives as a 2-D transpose (an earlier step's permute (1, 0), returned
    as a view of a C-contiguous array) and this segment only multiplies it (GEMM operands). The caller then
    passes its C-contiguous transpose (a free view) and the GEMM reads it with a transpose flag, where making
    the input C-contiguous copied it on every call: the LSTM's W_hh.T (1 MB) in each of its 70 time-step
    segments, the gate gradients' transposes (2.8 MB) in each weight-gradient GEMM. `producers`: value id ->
    the node computing it."""
    cand = set()
    for v in inputs:
        p = producers.get(v.id)
        if len(v.shape) == 2 and p is not None and p.body is None and p.op.name == "permute" and \
                tuple(p.attrs["dims"]) == (1, 0):
            cand.add(v.id)
    for n in nodes:
        gemm = _contraction(n) and len(n.outputs[0].shape) == 2 and len(n.inputs[0].shape) == 2 and \
            min(n.inputs[0].shape) > 0 and min(n.inputs[1].shape) > 0
        for j, v in enumerate(n.inputs):
            if v.id in cand and not (gemm and j < 2):
                cand.discard(v.id)
    return [v.id in cand for v in inputs]


def input_offsets(nodes: list, inputs: list) -> list:
    """Per segment input: the flat element offset it is passed from (0: the whole array). An input that the
    segment only reads through strided loads at offsets >= k is passed from element k on, so that the segments of
    successive time steps (each reading its own slice of one projection) have the same text and compile once."""
    low: dict[int, int] = {}
    other: set[int] = set()
    kernels = _lowered(nodes)
    for n in nodes:
        members = [n] if n.body is None or n.pattern is not None else \
            (n.body.nodes if n.fused_kind is FusedKind.MULTI else [n])
        for m in members:
            k = kernels.get(id(m))
            if k is None:
                other.update(v.id for v in m.inputs)
                continue
            for a in k.loads:
                vid = m.inputs[a.source].id
                if a.strides is None:
                    other.add(vid)
                else:
                    low[vid] = min(low.get(vid, a.offset), a.offset)
    return [low.get(v.id, 0) if v.id not in other else 0 for v in inputs]


class SegmentSource:
    """Generated module text for one segment, and how to call it."""

    def __init__(self, nodes: list, inputs: list, outputs: list, parallel_min: int, render_multi, render_block,
                 fastmath: str, split_gemm_flops: float = float("inf"), decide=None, offsets: list | None = None,
                 transposed: list | None = None):
        self.nodes, self.inputs, self.outputs = nodes, inputs, outputs
        # size-dependent choices go through `decide` (backends/sizes.Decisions: replayed at other batch sizes)
        self.decide = decide or (lambda choice: choice)
        self.name = {}
        # inputs the caller passes flat from an element offset on (input_offsets): their loads subtract it
        self.offsets = {v.id: off for v, off in zip(inputs, offsets or [0] * len(inputs)) if off}
        for i, v in enumerate(inputs):
            self.name[v.id] = f"in{i}"
        # value ids known C-contiguous: the caller makes every input contiguous
        self.contiguous = {v.id for v in inputs}
        self.fortran = set()  # value ids known F-contiguous (2-D transposes)
        self.transpose_of: dict[int, str] = {}  # F-contiguous value id -> name of the C array it transposes
        self.copies: dict[int, str] = {}  # value id -> name of its C-contiguous copy
        # batched transposes (last two dims swapped) of C-contiguous arrays, not made until something other than
        # a batched matmul (which reads them with a transpose flag) needs them: value id -> (source name, node)
        self.virtual: dict[int, tuple] = {}
        for i, (v, t) in enumerate(zip(inputs, transposed or ())):
            if t:  # passed as its C-contiguous transpose (transposed_inputs): GEMMs read it with a flag
                self.name[v.id] = f"in{i}.T"
                self.contiguous.discard(v.id)
                self.fortran.add(v.id)
                self.transpose_of[v.id] = f"in{i}"
        self.consts: dict[str, str] = {}
        self.kernels: list[str] = []
        self.lines: list[str] = []
        self.parallel_min = parallel_min
        self.render_multi, self.render_block, self.fastmath = render_multi, render_block, fastmath
        self.max_gemm_flops = 0.0
        self.has_parallel = False
        self.split_gemm_flops = split_gemm_flops  # GEMMs this big are split over the thread pool
        self.uses_threads = False  # the function takes the pool's thread count as its last argument
        self.checks: list[tuple[str, str]] = []  # index checks: number -> (error, message), see _check
        self._k = 0
        # value id -> the inputs whose memory it may share (a view: reshape, transpose, slice, a checked index);
        # empty for arrays the segment allocates. Tells the runtime which outputs may alias which inputs.
        self.from_input: dict[int, frozenset] = {v.id: frozenset((i,)) for i, v in enumerate(inputs)}
        for n in nodes:
            self._emit(n)
            for v in n.outputs:
                if v.id not in self.from_input:
                    self.from_input[v.id] = frozenset().union(*(self.from_input.get(x.id, frozenset())
                                                                for x in n.inputs))
        self.aliases = {j: tuple(sorted(self.from_input.get(v.id, range(len(inputs)))))
                        for j, v in enumerate(outputs)}

    def var(self, v) -> str:
        if v.id not in self.name and v.id in self.virtual:
            src, shape = self.virtual.pop(v.id)
            o = self._alloc(v)  # needed as an array after all: the copy loop
            nd = len(shape)
            self._copy(o, shape, None, src, lambda q: q[:nd - 2] + [q[nd - 1], q[nd - 2]])
        return self.name[v.id]

    def _def(self, v) -> str:
        name = f"t{len(self.name)}"
        self.name[v.id] = name
        return name

    def _c(self, v) -> str:
        """An expression for `v` that is C-contiguous (a copy loop, made once, when `v` is not)."""
        name = self.var(v)  # (a virtual transpose becomes an array here)
        if v.id in self.contiguous:
            return name
        if v.id not in self.copies:
            name = self.copies[v.id] = f"cc{len(self.copies)}"
            self.lines.append(f"    {name} = empty({_shape(v.shape)}, {_np(v.dtype)})")
            self._copy(name, v.shape, None, self.var(v), None)
        return self.copies[v.id]

    def _blas(self, v) -> str:
        return self.var(v) if v.id in self.contiguous or v.id in self.fortran else self._c(v)

    # Loops instead of NumPy calls for copies and fills: np.full, np.broadcast_to, np.concatenate and slice
    # assignment are Numba overloads compiled in every process (slice assignment with its formatted shape
    # error took ~3 s); a loop nest over static sizes compiles in ~0.05 s.
    def _fill(self, o: str, shape, value: str):
        n = math.prod(shape)
        self.lines.append(f"    _f = view({o}, ({n},))")
        self.lines.append(f"    for _q in range({n}):")
        self.lines.append(f"        _f[_q] = {value}")

    def _copy(self, dst: str, shape, dst_index, src: str, src_index):
        """dst[dst_index(q)] = src[src_index(q)] for every index q of `shape` (None: q itself)."""
        q = [f"_q{d}" for d in range(len(shape))]
        ind = "    "
        for d, size in enumerate(shape):
            self.lines.append(f"{ind}for {q[d]} in range({size}):")
            ind += "    "
        di = dst_index(q) if dst_index else q
        si = src_index(q) if src_index else q
        self.lines.append(f"{ind}{dst}[{', '.join(di) or '()'}] = {src}[{', '.join(si) or '()'}]")

    def _as(self, v, shape) -> str:
        """An expression for `v`'s data as a C-contiguous array of `shape` (same size): a free view."""
        return _reshaped(self._c(v), shape, v.shape)

    def _gemm_operand(self, v) -> tuple:
        """(C-contiguous array name, transposed flag, leading dimension) for a 2-D matmul operand."""
        if v.id in self.transpose_of:  # v = c.T with c C-contiguous [cols, rows]
            return self.transpose_of[v.id], 1, v.shape[0]
        return self._c(v), 0, v.shape[1]

    def _batch_operand(self, v) -> tuple:
        """(flat C-contiguous buffer, transposed flag, leading dimension) of a batched matmul operand."""
        if v.id in self.virtual and v.id not in self.name:
            src, shape = self.virtual[v.id]
            return f"view({src}, ({v.type.numel},))", 1, shape[-2]
        return self._as(v, (v.type.numel,)), 0, v.shape[-1]

    def _alloc(self, v) -> str:
        self.from_input[v.id] = frozenset()
        name = self._def(v)
        self.lines.append(f"    {name} = empty({_shape(v.shape)}, {_np(v.dtype)})")
        self.contiguous.add(v.id)
        return name

    def _emit(self, n: Node):
        L = self.lines
        if n.pattern is Pattern.LINEAR:
            return self._emit_linear(n)
        if n.body is not None:
            return self._emit_loops(n)
        name, a, out = n.op.name, n.attrs, n.outputs[0]
        if name == "reshape":
            L.append(f"    {self._def(out)} = {self._as(n.inputs[0], out.shape)}")
            self.contiguous.add(out.id)
        elif name == "permute":
            src = self.var(n.inputs[0])
            if a["dims"] == (1, 0):
                L.append(f"    {self._def(out)} = {src}.T")
                if n.inputs[0].id in self.contiguous:
                    self.fortran.add(out.id)  # BLAS takes a transposed C array without a copy
                    self.transpose_of[out.id] = src
            elif len(a["dims"]) > 2 and tuple(a["dims"]) == tuple(range(len(a["dims"]) - 2)) + \
                    (len(a["dims"]) - 1, len(a["dims"]) - 2) and n.inputs[0].id in self.contiguous:
                self.virtual[out.id] = (src, tuple(out.shape))  # a batched transpose: made only if needed
            else:
                dims = tuple(a["dims"])
                o = self._alloc(out)  # a copy: np.transpose's overload took ~3 s to compile per process
                self._copy(o, out.shape, None, src, lambda q: [q[dims.index(e)] for e in range(len(dims))])
        elif name == "expand":
            x = n.inputs[0]
            o = self._alloc(out)
            lead = len(out.shape) - len(x.shape)  # broadcast_to aligns trailing dims
            src = [None if s == 1 else lead + d for d, s in enumerate(x.shape)]
            self._copy(o, out.shape, None, self.var(x), lambda q: [("0" if d is None else q[d]) for d in src])
        elif name == "slice":
            idx = ", ".join(f"{s}:{e}:{st}" for s, e, st in zip(a["starts"], a["stops"], a["steps"]))
            L.append(f"    {self._def(out)} = {self.var(n.inputs[0])}[{idx}]")
        elif name == "full":
            value = SPELLING["constant"](scalar.Ctx(out.dtype, (), a))  # full's value as the op table declares it
            self._fill(self._alloc(out), out.shape, value)
        elif name == "matmul":
            x, w = n.inputs
            self.max_gemm_flops = max(self.max_gemm_flops, 2.0 * out.type.numel * x.shape[-1])
            if len(out.shape) == 2 and min(x.shape) > 0 and min(w.shape) > 0:
                return self._gemm_call("gemm_nt", x, w, out, "")
            xs, ws = self._blas(x), self._blas(w)
            o = self._alloc(out)
            if len(out.shape) == 2:
                L.append(f"    B.gemm({xs}, {ws}, {o})")
            else:
                b = math.prod(out.shape[:-2])
                (m, k), n_ = x.shape[-2:], w.shape[-1]
                if min(m, n_, k) > 0:  # one GEMM per batch entry, transposed operands read in place
                    (xa, ta, lda), (wb, tb, ldb) = self._batch_operand(x), self._batch_operand(w)
                    args = (f"{ta}, {tb}, {b}, {m}, {n_}, {k}, {xa}, {lda}, {wb}, {ldb}, "
                            f"{self._as(out, (out.type.numel,))}")
                    if 2.0 * out.type.numel * k >= self.split_gemm_flops and b > 1:
                        self.uses_threads = True
                        L.append(f"    G.bgemm_par({args}, nt_)")
                    else:
                        L.append(f"    G.bgemm({args})")
                else:
                    L.append(f"    _x = {self._as(x, (b,) + tuple(x.shape[-2:]))}")
                    L.append(f"    _w = {self._as(w, (b,) + tuple(w.shape[-2:]))}")
                    L.append(f"    _o = {self._as(out, (b,) + tuple(out.shape[-2:]))}")
                    L.append(f"    for _b in range({b}):")
                    L.append("        B.gemm(_x[_b], _w[_b], _o[_b])")
        elif name == "check_index":
            idx = n.inputs[0]
            src = self._c(idx)
            ignore = a.get("ignore")
            k = self._check(a["error"], a["message"])
            L.append(f"    H.check_index({_reshaped(src, (idx.type.numel,), idx.shape)}, {a['low']}, {a['high']}, "
                     f"{0 if ignore is None else ignore}, {ignore is not None}, {k})")
            L.append(f"    {self._def(out)} = {src}")  # the index itself, now known to be in range
            self.contiguous.add(out.id)
        elif name == "gather":
            x, idx = n.inputs
            ax = a["axis"]
            o = self._alloc(out)
            k = self._check("index", index_message("gather", ax, x.shape[ax]))
            L.append(f"    H.gather3({self._as(x, _three(x.shape, ax))}, {self._as(idx, _three(idx.shape, ax))}, "
                     f"{self._as(out, _three(out.shape, ax))}, {k})")
        elif name == "scatter_add":
            idx, src = n.inputs
            ax = a["axis"]
            o = self._alloc(out)
            k = self._check("index", index_message("scatter_add", ax, out.shape[ax]))
            L.append(f"    H.scatter_add3({self._as(idx, _three(idx.shape, ax))}, "
                     f"{self._as(src, _three(src.shape, ax))}, {self._as(out, _three(out.shape, ax))}, {k})")
        elif name == "argmax":
            x = n.inputs[0]
            ax = a["axis"]
            o = self._alloc(out)
            p, _, q = _three(x.shape, ax)
            L.append(f"    H.argmax3({self._as(x, _three(x.shape, ax))}, {self._as(out, (p, q))})")
        elif name == "uniform":
            o = self._alloc(out)
            L.append(f"    H.uniform_into({self.var(n.inputs[0])}, {o})")
        elif name == "cat":
            o = self._alloc(out)
            axis = a["axis"] % len(out.shape)
            rows, inner = math.prod(out.shape[:axis]), math.prod(out.shape[axis + 1:])
            start = 0
            for part in n.inputs:  # each piece: `rows` contiguous runs of its elements into the output's rows
                width = part.shape[axis] * inner
                if width and rows:
                    L.append(f"    H.copy_block({_reshaped(o, (out.type.numel,), out.shape)}, "
                             f"{out.shape[axis] * inner}, {start * inner}, "
                             f"{self._as(part, (part.type.numel,))}, {width}, {rows})")
                start += part.shape[axis]
        elif name == "pad":
            o = self._alloc(out)
            value = a.get("value", 0.0)
            fill = repr(bool(value)) if out.dtype is D.bool_ else f"{_np(out.dtype)}({value!r})"
            self._fill(o, out.shape, fill)
            los = [lo for lo, _ in a["pads"]]
            self._copy(o, n.inputs[0].shape, lambda q: [f"{lo} + {v}" if lo else v for lo, v in zip(los, q)],
                       self.var(n.inputs[0]), None)
        else:
            raise LoweringError(f"{name} has no segment rendering")

    def _check(self, error: str, message: str) -> int:
        """Number a check raising IndexCheckFailed(number, value) in this segment: `checks[number]` holds the
        (error, message) ops.index_error makes the user's error from (kept out of the source: its cache key)."""
        self.checks.append((error, message))
        return len(self.checks) - 1

    def _emit_linear(self, n: Node):
        """x @ w + bias (then relu): the GEMM with its epilogue applied to each thread's block of the output."""
        x, w, bias = n.inputs
        epilogue = f"{self._as(bias, (w.shape[1],))}, {int(n.attrs['relu'])}, "
        self._gemm_call("gemm_bias_act", x, w, n.outputs[0], epilogue)

    def _gemm_call(self, fn: str, x, w, out, extra: str):
        """out = x @ w through blas.segment.`fn` (its arguments before `out` extended by `extra`), or
        `fn`_par, split over the pool, when the product is big enough."""
        (m, k), n_ = x.shape, w.shape[1]
        self.max_gemm_flops = max(self.max_gemm_flops, 2.0 * m * n_ * k)
        a, ta, lda = self._gemm_operand(x)
        b, tb, ldb = self._gemm_operand(w)
        o = self._alloc(out)
        args = f"{ta}, {tb}, {m}, {n_}, {k}, {a}, {lda}, {b}, {ldb}, {extra}{o}"
        if self.decide(2.0 * m * n_ * k >= self.split_gemm_flops):
            self.uses_threads = True
            self.lines.append(f"    G.{fn}_par({args}, nt_)")
        else:
            self.lines.append(f"    G.{fn}({args})")

    def _emit_loops(self, n: Node):
        members = n.body.nodes if n.fused_kind is FusedKind.MULTI else [n]
        pos = {v.id: i for i, v in enumerate(n.inputs)}
        out_names = {}
        for m in members:
            self._k += 1
            tag = f"{self._k}_"
            k = lower(m, prefix=f"v{tag}", features=LOOP_FEATURES)
            par = self.decide(k.numel() >= self.parallel_min)
            loads = []
            for a in k.loads:
                v = n.inputs[pos[m.inputs[a.source].id]]
                skip = self.offsets.get(v.id, 0)
                if skip:  # passed from element `skip` on, flat
                    a.offset -= skip
                    a.size -= skip
                    loads.append(self.var(v))
                else:
                    loads.append(self._as(v, a.arg_shape))
            outs = []
            for r in k.results:
                v = m.outputs[r.array.source]
                if v.id not in out_names:
                    out_names[v.id] = self._alloc(v)
                outs.append(_reshaped(out_names[v.id], r.array.arg_shape, v.shape))
            if par:
                self.has_parallel = True
                fname = f"kernel_{self._k}"
                src = self.render_multi([k], fname, [True])
                self.kernels.append(src)
                self.lines.append(f"    {fname}({', '.join(loads + outs)})")
            else:
                A, O, block = self.render_block(k, tag, False, self.consts)
                for name, expr in zip(A + O, loads + outs):
                    self.lines.append(f"    {name} = {expr}")
                self.lines.extend(block)

    def source(self) -> str:
        head = [f"    {c} = {v}" for c, v in self.consts.items()]  # locals: see render.const_lines
        args = ", ".join([f"in{i}" for i in range(len(self.inputs))] + (["nt_"] if self.uses_threads else []))
        rets = ", ".join(self.var(v) for v in self.outputs)
        body = [f"@numba.njit(fastmath={self.fastmath}, {JIT_OPTIONS})",
                f"def segment({args}):"] + head + self.lines + \
            [f"    return ({rets}{',' if len(self.outputs) == 1 else ''})"]
        return "\n".join([""] + self.kernels + [""] + body) + "\n"


def _contraction(n: Node) -> bool:
    return n.pattern is Pattern.LINEAR or (n.body is None and n.op.name == "matmul")


ELEMENTWISE_STORED = ("neg", "cast", "add", "sub", "mul", "div", "pow", "sqrt", "rsqrt", "exp", "log", "abs", "maximum",
                      "minimum", "where", "lt", "le", "gt", "ge", "eq", "ne", "reciprocal", "clamp", "sign")


def _chunks(nodes: list, outputs, start: int = 0) -> list:
    """`nodes` cut into runs in order, each with at most MAX_OUTPUTS values read after it or in `outputs` (ids)
    (but for a single node's own), as [(first index, last index)] (from `start`)."""
    last_read = {v.id: i for i, n in enumerate(nodes) for v in n.inputs}
    out, first, live = [], 0, []
    for i, n in enumerate(nodes):
        mine = [v.id for v in n.outputs if v.id in outputs or last_read.get(v.id, -1) > i]
        if i > first and len(mine) + sum(last_read.get(v, -1) > i or v in outputs for v in live) > MAX_OUTPUTS:
            out.append((first, i - 1))
            first, live = i, []
        live = [v for v in live if v in outputs or last_read.get(v, -1) > i] + mine
    return out + [(first, len(nodes) - 1)] if nodes else out


def _split_wide(n: Node) -> list:
    """A fused ELEMENTWISE node with more than MAX_OUTPUTS outputs (the optimizer's bookkeeping on 0-d tensors:
    AdamW over 26 parameters made one of 218) as several in sequence, each computing a run of its body; [n] where
    it cannot be split. The same ops in the same order: only values passed between the parts are stored."""
    if n.fused_kind is not FusedKind.ELEMENTWISE or n.pattern is not None or len(n.outputs) <= MAX_OUTPUTS:
        return [n]
    body = n.body
    outer = {b.id: v for b, v in zip(body.inputs, n.inputs)}
    if len({b.id for b in body.outputs}) != len(body.outputs) or any(b.id in outer for b in body.outputs):
        return [n]
    outer.update({b.id: v for b, v in zip(body.outputs, n.outputs)})
    outs = {b.id for b in body.outputs}
    last_read = {v.id: i for i, m in enumerate(body.nodes) for v in m.inputs}
    attrs = {k: v for k, v in n.attrs.items() if k != "kind"}
    parts = []
    # constants (`full`) are inlined, not stored: a part that reads one made in another makes its own copy
    consts = {v.id: m for m in body.nodes if not m.inputs for v in m.outputs}
    made = {v.id: m for m in body.nodes for v in m.outputs}
    for first, last in _chunks(body.nodes, outs):
        members = body.nodes[first:last + 1]
        defined = {v.id for m in members for v in m.outputs}
        members = list({id(consts[v.id]): consts[v.id] for m in members for v in m.inputs
                        if v.id in consts and v.id not in defined}.values()) + members
        defined = {v.id for m in members for v in m.outputs}
        ins = list({v.id: v for m in members for v in m.inputs if v.id not in defined}.values())
        res = [v for m in members for v in m.outputs
               if v.id in outs or (last_read.get(v.id, -1) > last and v.id not in consts)]
        if any(v.id in made and made[v.id].op.name not in ELEMENTWISE_STORED for v in ins):
            return [n]  # a view or the like passed between parts: left whole
        for v in res:
            outer.setdefault(v.id, Value(v.type))
        sub = Graph(body.name, ins, members, res, {v.id: body.input_meta[v.id] for v in ins
                                                    if v.id in body.input_meta}, [None] * len(res))
        parts.append(fused(FusedKind.ELEMENTWISE, [outer[v.id] for v in ins], [outer[v.id] for v in res], sub,
                           **attrs))
    return parts if len(parts) > 1 and all(renderable(p) for p in parts) else [n]


def split_segments(g: Graph, native) -> list:
    """Group the graph's nodes into [('segment', [nodes]) | ('node', node)] in order.

    `native(node)` says a node has its own (non-segment) step, e.g. a window kernel. A segment also ends before
    each GEMM: the layers of a model and the time steps of a recurrent layer then make segments of the same text,
    which compile once (an LSTM's 35 steps, a Transformer's 4 blocks). Only in large graphs (more than
    `CUT_AT_GEMMS_NODES` nodes), where that repetition is: in a small step each cut is one more dispatch from
    Python (~1.5 us; a Linear(1, 1) step went from 1 segment to 3 and 10.9 to 13.9 ms per 1000 steps)."""
    out: list = []
    run: list = []
    blocks = 0
    cut_at_gemms = len(g.nodes) > CUT_AT_GEMMS_NODES
    for n in g.nodes:
        if renderable(n) and not native(n):
            parts = _split_wide(n)
            if len(parts) > 1:  # each part a segment of its own (Numba's typing of a large tuple is superlinear)
                out.extend([("segment", run)] if run else [])
                out.extend(("segment", [p]) for p in parts)
                run, blocks = [], 0
                continue
            loops = len(n.body.nodes) if n.fused_kind is FusedKind.MULTI else int(n.body is not None)
            # bound the function size (LLVM time grows faster than linear); a GEMM starts a new segment
            if run and (blocks + loops > MAX_BLOCKS or (cut_at_gemms and _contraction(n))):
                out.append(("segment", run))
                run, blocks = [], 0
            run.append(n)
            blocks += loops
            continue
        blocks = 0
        if run:
            out.append(("segment", run))
            run = []
        out.append(("node", n))
    if run:
        out.append(("segment", run))
    return out


def segment_io(nodes: list, later_reads: set, graph_outputs: set) -> tuple:
    """(inputs defined outside, outputs read after the segment or returned), in first-use/definition order."""
    defined, inputs, seen = set(), [], set()
    for n in nodes:
        for v in n.inputs:
            if v.id not in defined and v.id not in seen:
                seen.add(v.id)
                inputs.append(v)
        for v in n.outputs:
            defined.add(v.id)
    outputs = [v for n in nodes for v in n.outputs if v.id in later_reads or v.id in graph_outputs]
    return inputs, outputs
