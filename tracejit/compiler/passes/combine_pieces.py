"""combine_pieces: sums over pieces of a tensor become one operation on the whole tensor.

Backward through code that slices a tensor into pieces (an LSTM's four gates, the time steps of a sequence)
adds one zero-padded gradient per piece, and a weight used at every time step gets one matmul and one bias
reduction per step, all summed. This pass rewrites a sum (a tree of `add`s whose intermediate values nothing
else reads) of
  - zero `pad`s of disjoint ranges along one axis into a `cat` of the pieces (zeros `full` in any gap);
    a cat of leading-1 `reshape`s along axis 0 becomes `reshape(cat(...))` of the unreshaped pieces (one form);
  - 2-D `matmul`s with one output shape into ONE matmul of operands concatenated along the contracted
    dimension (a weight gradient over T steps: one [M, T*K] x [T*K, N] GEMM instead of T GEMMs and T-1 adds);
  - `sum`s over the same axes (axis 0 among them) of same-shape inputs into one sum of their concatenation.
Pieces are ordered like an existing concatenation of the same values where one exists (so that `cse`, run at the
end, shares it: the time-step gradients of an LSTM's input projection and its recurrent weight gradient then
read one array), else by position.

In the other direction, an elementwise op whose result is only read through slices (the gates of an LSTM step,
its time steps) is computed per slice on slices of its inputs (`slice(f(a, b))` -> `f(slice(a), slice(b))`,
and `slice(slice(x))` -> one slice): the pieces then fuse into the kernels that read them and the whole result is
never materialized. Keeps true: values (up to float summation order, and exactly for a target that keeps eager's
order -- the reference backend: then only pads become a cat), types and outputs.
"""

from __future__ import annotations

from ...ops import OPS, TensorType
from ..ir import Graph, Node, Value
from . import context
from .cse import cse
from .dce import dce


def _node(op: str, inputs, attrs: dict, out: TensorType | Value) -> Node:
    v = out if isinstance(out, Value) else Value(out)
    return Node(OPS[op], tuple(inputs), attrs, (v,))


class _Index:
    def __init__(self, g: Graph):
        self.defs: dict[int, Node] = {}
        self.uses: dict[int, int] = {}
        self.consumers: dict[int, list] = {}
        for n in g.nodes:
            for v in n.outputs:
                self.defs[v.id] = n
            for v in n.inputs:
                self.uses[v.id] = self.uses.get(v.id, 0) + 1
                self.consumers.setdefault(v.id, []).append(n)
        for v in g.outputs:
            self.uses[v.id] = self.uses.get(v.id, 0) + 2  # an output is never absorbed

    def prim(self, v, name: str) -> Node | None:
        n = self.defs.get(v.id)
        return n if n is not None and n.body is None and n.op.name == name else None

    def single(self, v) -> bool:
        return self.uses.get(v.id, 0) == 1


def _is_add(n: Node | None, t: TensorType) -> bool:
    return n is not None and n.body is None and n.op.name == "add" and n.outputs[0].type == t and \
        all(v.type == t for v in n.inputs)


def _leaves(ix: _Index, root: Node) -> list:
    """The terms of the add tree ending at `root` (through adds whose result only the tree reads)."""
    t = root.outputs[0].type
    out, stack = [], list(reversed(root.inputs))
    while stack:
        v = stack.pop()
        d = ix.defs.get(v.id)
        if _is_add(d, t) and ix.single(v):
            stack.extend(reversed(d.inputs))
        else:
            out.append(v)
    return out


def _pad_axis(n: Node) -> int | None:
    """The one axis a zero pad pads along, or None."""
    if n.attrs.get("value", 0.0) != 0.0:
        return None
    axes = [a for a, (lo, hi) in enumerate(n.attrs["pads"]) if lo or hi]
    return axes[0] if len(axes) == 1 else None


class _Rewriter:
    def __init__(self, g: Graph, reorder: bool):
        self.ix = _Index(g)
        self.reorder = reorder  # may a sum be computed in another order (one GEMM over all steps)?
        self.new: list[Node] = []  # emitted in place of the root
        # existing concatenations along axis 0: frozenset of piece ids -> their order
        self.cats: dict[frozenset, list] = {}
        for n in g.nodes:
            if n.body is None and n.op.name == "cat" and n.attrs["axis"] == 0:
                self.cats.setdefault(frozenset(v.id for v in n.inputs), list(n.inputs))

    def emit(self, op, inputs, attrs, out) -> Value:
        n = _node(op, inputs, attrs, out)
        self.new.append(n)
        return n.outputs[0]

    def order(self, pieces: list, key=None) -> list:
        """`pieces` (items whose key(item) is a Value) in the order of an existing axis-0 cat of those values."""
        key = key or (lambda p: p)
        known = self.cats.get(frozenset(key(p).id for p in pieces))
        if known is None or len(known) != len(pieces):
            return pieces
        rank = {v.id: i for i, v in enumerate(known)}
        return sorted(pieces, key=lambda p: rank[key(p).id])

    def cat0(self, values: list) -> Value:
        """cat along axis 0 (remembered, so that a later rewrite orders the same pieces alike)."""
        shape = (sum(v.shape[0] for v in values),) + tuple(values[0].shape[1:])
        out = self.emit("cat", values, {"axis": 0}, TensorType(shape, values[0].dtype))
        self.cats.setdefault(frozenset(v.id for v in values), list(values))
        return out

    def cat(self, values: list, axis: int) -> Value:
        if len(values) == 1:
            return values[0]
        if axis == 0:
            return self.cat0(values)
        shape = list(values[0].shape)
        shape[axis] = sum(v.shape[axis] for v in values)
        return self.emit("cat", values, {"axis": axis}, TensorType(tuple(shape), values[0].dtype))

    # ---- the three kinds of terms
    def pads(self, terms: list, out_type: TensorType) -> Value | None:
        """Zero pads along one axis, disjoint: their cat (zeros in the gaps)."""
        axis = _pad_axis(self.ix.defs[terms[0].id])
        spans = []
        for v in terms:
            n = self.ix.defs[v.id]
            lo, _ = n.attrs["pads"][axis]
            spans.append((lo, lo + n.inputs[0].shape[axis], n.inputs[0]))
        spans.sort(key=lambda s: s[0])
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            return None  # overlapping pieces: a real sum
        size = out_type.shape[axis]
        # a stack (pieces [1, ...] along axis 0, each a reshape of a [...] value): concatenate the values
        stacked = axis == 0 and all(self._unsqueezed(src) for _, _, src in spans)
        pieces, at = [], 0
        for lo, hi, src in spans + [(size, size, None)]:
            if lo > at:
                shape = list(out_type.shape)
                shape[axis] = lo - at
                if stacked:
                    shape = [(lo - at) * shape[1]] + shape[2:]
                pieces.append(self.emit("full", (), {"shape": tuple(shape), "value": 0.0, "dtype": out_type.dtype},
                                        TensorType(tuple(shape), out_type.dtype)))
            if src is not None:
                pieces.append(self.ix.defs[src.id].inputs[0] if stacked else src)
            at = hi
        if stacked:
            whole = self.cat(pieces, 0)
            return self.emit("reshape", (whole,), {"shape": out_type.shape}, out_type)
        return self.cat(pieces, axis)

    def _unsqueezed(self, v) -> bool:
        n = self.ix.prim(v, "reshape")
        return n is not None and v.shape[0] == 1 and tuple(n.inputs[0].shape) == tuple(v.shape[1:]) and \
            len(v.shape) >= 2

    def matmuls(self, terms: list, out_type: TensorType) -> Value:
        """sum_i a_i @ b_i = [a_1 .. a_n] @ [b_1; ..; b_n]."""
        pairs = [self.ix.defs[v.id].inputs for v in terms]

        def lhs_source(p):  # a_i = x_i^T with x_i [K_i, M]: concatenate the x_i along axis 0 instead
            t = self.ix.prim(p[0], "permute")
            return t.inputs[0] if t is not None and t.attrs["dims"] == (1, 0) else None

        transposed = all(lhs_source(p) is not None for p in pairs)
        if transposed:
            pairs = self.order(pairs, key=lhs_source)
            xs = self.cat([lhs_source(p) for p in pairs], 0)
            a = self.emit("permute", (xs,), {"dims": (1, 0)}, TensorType(xs.shape[::-1], xs.dtype))
        else:
            pairs = self.order(pairs, key=lambda p: p[1])
            a = self.cat([p[0] for p in pairs], 1)
        b = self.cat([p[1] for p in pairs], 0)
        return self.emit("matmul", (a, b), {}, out_type)

    def sums(self, terms: list, out_type: TensorType) -> Value:
        n0 = self.ix.defs[terms[0].id]
        ins = self.order([self.ix.defs[v.id].inputs[0] for v in terms])
        return self.emit("sum", (self.cat(ins, 0),), dict(n0.attrs), out_type)

    def classify(self, v, out_type: TensorType):
        """The group key of term `v` (terms of one group combine), or None."""
        if not self.ix.single(v):
            return None
        n = self.ix.defs.get(v.id)
        if n is None or n.body is not None:
            return None
        name = n.op.name
        if name == "pad":
            axis = _pad_axis(n)
            return None if axis is None else ("pad", axis)
        if not self.reorder:  # only pads: their cat is exact
            return None
        if name == "matmul" and len(out_type.shape) == 2:
            return ("matmul",)
        if name == "sum" and 0 in n.attrs["axes"] and n.inputs[0].shape:
            return ("sum", tuple(n.inputs[0].shape), n.attrs["axes"], n.attrs["keepdim"])
        return None

    def rewrite(self, root: Node) -> list | None:
        t = root.outputs[0].type
        terms = _leaves(self.ix, root)
        groups: dict = {}
        for v in terms:
            key = self.classify(v, t)
            groups.setdefault(key, []).append(v)
        self.new = []
        combined = []
        rest = list(groups.pop(None, []))
        for key, vs in groups.items():
            if len(vs) < 2:
                rest += vs
                continue
            kind = key[0]
            out = self.pads(vs, t) if kind == "pad" else self.matmuls(vs, t) if kind == "matmul" else \
                self.sums(vs, t)
            if out is None:
                rest += vs
            else:
                combined.append(out)
        if not combined or (not self.reorder and (rest or len(combined) > 1)):
            return None  # (the sum in another order: only for targets that accept that)
        values = combined + sorted(rest, key=lambda v: terms.index(v))
        acc = values[0]
        for v in values[1:]:
            acc = self.emit("add", (acc, v), {}, t)
        last = self.new[-1]  # produces acc: give it the root's value, which later nodes read
        self.new[-1] = Node(last.op, last.inputs, last.attrs, (root.outputs[0],))
        return self.new


def _compose(outer: Node, inner: Node) -> dict:
    """The attrs of one slice equal to slice `outer` of slice `inner`."""
    a, b = inner.attrs, outer.attrs
    starts = tuple(s0 + s1 * st0 for s0, s1, st0 in zip(a["starts"], b["starts"], a["steps"]))
    steps = tuple(st0 * st1 for st0, st1 in zip(a["steps"], b["steps"]))
    stops = tuple(s + (n - 1) * st + 1 if n else s for s, n, st in zip(starts, outer.outputs[0].shape, steps))
    return {"starts": starts, "stops": stops, "steps": steps}


def _slice_of(u: Value, out_shape: tuple, attrs: dict, new: list):
    """`u` (an operand of an elementwise op of shape `out_shape`, broadcast to it) sliced like its result."""
    lead = len(out_shape) - len(u.shape)
    starts, stops, steps, shape = [], [], [], []
    for d, size in enumerate(u.shape):
        a, b, st = (attrs[k][lead + d] for k in ("starts", "stops", "steps"))
        if size == 1:  # a broadcast dim: every slice reads its one element
            a, b, st = 0, 1, 1
        starts.append(a)
        stops.append(b)
        steps.append(st)
        shape.append(len(range(a, b, st)))
    if tuple(shape) == tuple(u.shape):
        return u
    n = _node("slice", (u,), {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)},
              TensorType(tuple(shape), u.dtype))
    new.append(n)
    return n.outputs[0]


def push_slices(g: Graph) -> tuple[Graph, int]:
    """One sweep of slice pushing (see the module docstring); (graph, number of rewrites)."""
    ix = _Index(g)
    movable = set()
    for n in g.nodes:
        if n.body is not None or len(n.outputs) != 1 or n.op.kind.name != "ELEMENTWISE" or n.op.name == "full":
            continue
        out = n.outputs[0]
        cons = ix.consumers.get(out.id, [])
        if not cons or ix.uses.get(out.id, 0) != len(cons) or \
                not all(c.body is None and c.op.name == "slice" for c in cons):
            continue
        if sum(c.outputs[0].type.numel for c in cons) <= out.type.numel:  # no element computed twice
            movable.add(out.id)
    nodes, count = [], 0
    for n in g.nodes:
        if n.body is None and n.op.name == "slice":
            src = ix.defs.get(n.inputs[0].id)
            if n.inputs[0].id in movable:  # f(...)[s] -> f(...[s])
                new = []
                ins = tuple(_slice_of(u, tuple(src.outputs[0].shape), n.attrs, new) for u in src.inputs)
                nodes.extend(new)
                nodes.append(Node(src.op, ins, src.attrs, n.outputs))
                count += 1
                continue
            if src is not None and src.body is None and src.op.name == "slice":  # x[s][t] -> x[s t]
                nodes.append(Node(n.op, src.inputs, _compose(n, src), n.outputs))
                count += 1
                continue
        nodes.append(n)
    return (g.replace(nodes=nodes), count) if count else (g, 0)


def _merge_groups(src: tuple, dst: tuple) -> list | None:
    """For a reshape that only merges neighbouring dims: per `dst` dim, the `src` dims it merges; else None."""
    groups, i = [], 0
    for d in dst:
        grp, size = [], 1
        while i < len(src) and (not grp or size < d):
            grp.append(i)
            size *= src[i]
            i += 1
        if size != d:
            return None
        groups.append(grp)
    return groups if i == len(src) else None


def _sum_through_permute(ix: _Index, n: Node) -> list | None:
    """sum(reshape(permute(x)), axes) whose reshape merges dims that are all summed or kept alone, in x's order:
    the sum over x's own dims (a loop kernel reads x where it lies; a permuted view merged by a reshape it cannot
    address), then a reshape to the result's shape."""
    r = ix.prim(n.inputs[0], "reshape")
    p = ix.prim(r.inputs[0], "permute") if r is not None else None
    if p is None:
        return None
    x, dims = p.inputs[0], tuple(p.attrs["dims"])
    groups = _merge_groups(tuple(p.outputs[0].shape), tuple(r.outputs[0].shape))
    axes = set(n.attrs["axes"])
    if groups is None:
        return None
    summed, kept = [], []
    for d, grp in enumerate(groups):
        if d in axes:
            summed += [dims[i] for i in grp]
        elif len(grp) == 1:
            kept.append(dims[grp[0]])
        else:
            return None
    if kept != sorted(kept):
        return None
    t = TensorType(tuple(s for i, s in enumerate(x.shape) if i not in summed), n.outputs[0].type.dtype)
    total = _node("sum", (x,), {"axes": tuple(sorted(summed)), "keepdim": False}, t)
    return [total, _node("reshape", total.outputs, {"shape": tuple(n.outputs[0].shape)}, n.outputs[0])]


def combine_pieces(g: Graph) -> Graph:
    if not context.has_loop_feature("strided"):
        return g  # its cats and sliced pieces pay only where kernels read and store slices in place
    pushed = 0
    for _ in range(16):  # each sweep moves slices one op further up
        g, count = push_slices(g)
        pushed += count
        if not count:
            break
        g = dce(g)
    rw = _Rewriter(g, context.reorders_sums())
    nodes, notes = [], []
    for n in g.nodes:
        if rw.reorder and n.body is None and n.op.name == "sum":
            new = _sum_through_permute(rw.ix, n)
            if new is not None:
                nodes.extend(new)
                notes.append("combine_pieces: a sum of a permuted, merged view over the original dims")
                continue
        t = n.outputs[0].type if len(n.outputs) == 1 else None
        if t is not None and _is_add(n, t):
            out = n.outputs[0]
            inner = rw.ix.single(out) and any(_is_add(m, t) for m in rw.ix.consumers.get(out.id, ()))
            if not inner:  # the root of its add tree
                new = rw.rewrite(n)
                if new is not None:
                    nodes.extend(new)
                    notes.append(f"combine_pieces: a sum of {len(_leaves(rw.ix, n))} terms into "
                                 f"{', '.join(m.op.name for m in new if m.op.name in ('cat', 'matmul', 'sum'))}")
                    continue
        nodes.append(n)
    if pushed:
        notes.append(f"combine_pieces: {pushed} slices moved through elementwise ops onto their inputs")
    if not notes:
        return g
    result = cse(g.replace(nodes=nodes))
    result.notes = notes
    return result

