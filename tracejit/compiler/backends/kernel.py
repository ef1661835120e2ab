"""Backend-neutral kernel description: a fused elementwise/reduce body lowered to one loop nest.

A LoopKernel iterates over an index space; it loads each input array at that index (broadcast dims read
index 0), evaluates scalar statements -- each an elementwise op whose value the op table declares once
(`OPS[op].expr`, in tracejit/scalar.py's vocabulary; a backend spells it) --, stores elementwise outputs and
accumulates reductions. Adjacent dims that every array treats alike are merged, so
`[N, C, H, W] + bias[1, C, 1, 1]` becomes a rank-3 nest and a same-shape chain a rank-1 loop.

Two extensions a backend opts into (`lower(node, features=...)`; without them such bodies raise LoweringError and
the backend runs them another way):
  - "strided": a load may read a slice of its input and a store may write a slice of its output (a `cat` the
    group produces): the array is then addressed by an offset and per-dim element strides into its flat buffer;
  - "rows": a row kernel (`LoopKernel.rows` = the number of leading "row" dims): reductions over the trailing
    dims whose per-row results the body reads again (`rowsum`/`rowmax` statements), per-row statements, and
    loops over each row as many times as the dependences need (softmax: max, sum of exponentials, normalize).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...ops import Kind
from ..ir import Node


class LoweringError(ValueError):
    """The body cannot be expressed as one loop nest (a backend then runs it another way)."""


@dataclass
class LoopArray:
    source: int  # index into the fused node's inputs (for loads) or outputs (for stores/reductions)
    shape: tuple  # rank == len(space); each dim equals the space's or is 1 (broadcast / reduced)
    dtype: object
    # strided ("strided" feature): element `i` of the space is at offset + sum(i[d] * strides[d]) of the array's
    # flat buffer of `size` elements (dims of shape 1 read index 0). None: a contiguous array of `shape`.
    strides: tuple | None = None
    offset: int = 0
    size: int = 0

    @property
    def arg_shape(self) -> tuple:
        """The shape the kernel takes this array in: its flat buffer when strided, else `shape`."""
        return (self.size,) if self.strides is not None else tuple(self.shape)


@dataclass
class Stmt:
    var: str
    op: str  # an ELEMENTWISE op's name (its value: OPS[op].expr), 'load' / 'const', or (row kernels) 'rowsum' /
    # 'rowmax': the sum / maximum of an element variable over the row's trailing dims
    args: tuple  # variable names, or (array index,) for load, or (value,) for const
    dtype: object
    attrs: dict = field(default_factory=dict)


@dataclass
class Result:
    array: LoopArray
    var: str
    mode: str  # 'store', 'sum' or 'max'


@dataclass
class LoopKernel:
    space: tuple
    loads: list  # LoopArray per load array
    stmts: list
    results: list
    rows: int | None = None  # a row kernel: space[:rows] are rows, the rest each row's elements

    def is_strided(self) -> bool:
        return any(a.strides is not None for a in self.loads + [r.array for r in self.results])

    def numel(self) -> int:
        return math.prod(self.space)

    def has_reduction(self) -> bool:
        return any(r.mode != "store" for r in self.results)


def _pad(shape, rank):
    return (1,) * (rank - len(shape)) + tuple(shape)


def _contiguous(shape) -> tuple:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


@dataclass
class _View:
    """A body input seen through reshape/expand/slice: `shape` (expanded dims keep size 1: they broadcast),
    element `strides` and `offset` into the input's flat buffer (None strides: the input itself, contiguous)."""

    src: int
    shape: tuple
    size: int
    strides: tuple | None = None
    offset: int = 0
    expanded: bool = False

    def with_strides(self) -> tuple:
        return self.strides if self.strides is not None else _contiguous(self.shape)


def _reshape_strides(shape, strides, new_shape):
    """Strides that show a strided view of `shape` as `new_shape` without a copy, or None (NumPy's rule: dims are
    split or merged only within runs that are contiguous in memory)."""
    old = [(n, st) for n, st in zip(shape, strides) if n != 1]
    od, os_ = [n for n, _ in old], [st for _, st in old]
    nd = list(new_shape)
    out = [0] * len(nd)
    oi = ni = 0
    while ni < len(nd) and oi < len(od):
        np_, op_ = nd[ni], od[oi]
        nj, oj = ni + 1, oi + 1
        while np_ != op_:
            if np_ < op_:
                if nj >= len(nd):
                    return None
                np_ *= nd[nj]
                nj += 1
            else:
                if oj >= len(od):
                    return None
                op_ *= od[oj]
                oj += 1
        if any(os_[k] != od[k + 1] * os_[k + 1] for k in range(oi, oj - 1)):
            return None  # the old run is not contiguous
        out[nj - 1] = os_[oj - 1]
        for k in range(nj - 1, ni, -1):
            out[k - 1] = out[k] * nd[k]
        ni, oi = nj, oj
    if oi != len(od) or any(n != 1 for n in nd[ni:]):
        return None
    return tuple(0 if n == 1 else st for n, st in zip(nd, out))


_FEATURES = frozenset({"strided", "rows"})


def lower(node: Node, prefix: str = "v", features=frozenset()) -> LoopKernel:
    """Lower a fused ELEMENTWISE or REDUCE node (ir.FusedKind) to a LoopKernel over its iteration space.

    Scalar variables are named `{prefix}{n}` (distinct prefixes let several kernels share a function).
    `features` ("strided", "rows") are the extensions the calling backend renders (see the module docstring)."""
    features = frozenset(features)
    body = node.body
    space = None
    for n in body.nodes:
        if n.op.name in ("sum", "amax"):
            space = n.inputs[0].shape
        elif n.op.kind is Kind.ELEMENTWISE and n.op.name != "full":
            space = n.outputs[0].shape
        if space is not None:
            break
    if space is None:
        raise LoweringError("no elementwise or reduce op in the body")
    # a reduction whose result the body reads again makes a row kernel: the rows are the dims it keeps
    read = {v.id for n in body.nodes for v in n.inputs}
    rows = None
    for n in body.nodes:
        if n.op.name in ("sum", "amax") and n.outputs[0].id in read:
            space = n.inputs[0].shape
            axes = tuple(sorted(n.attrs["axes"]))
            r = axes[0] if axes else len(space)
            if "rows" not in features:
                raise LoweringError("a reduction result used inside its own kernel")
            if axes != tuple(range(r, len(space))) or (rows is not None and rows != r):
                raise LoweringError(f"a reduction over axes {axes} of {list(space)} read in its own kernel is not "
                                    f"over the trailing dims of every row")
            rows = r
    rank = len(space)
    row_nk = tuple(space[:rows]) if rows is not None else None  # a row value without its reduced dims
    row_kd = row_nk + (1,) * (rank - rows) if rows is not None else None
    views: dict[int, _View] = {v.id: _View(i, tuple(v.shape), math.prod(v.shape)) for i, v in enumerate(body.inputs)}
    consts: dict[int, tuple] = {}
    scalars: dict[int, str] = {}
    row_vars: set[str] = set()
    loads: list[LoopArray] = []
    load_var: dict[tuple, str] = {}
    stmts: list[Stmt] = []
    counter = [0]

    def fresh():
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def keeps_rows(shape, frame: tuple) -> bool:
        """Whether a row value of `shape`, broadcast (right-aligned, as NumPy and PyTorch do) to `frame`, lands on
        its rows: x.sum(-1, keepdim=True) does, but x.sum(-1) of a [b, n, n] x broadcast against x is aligned with
        the *last* dims and is not one value per row (a kernel that read it per row gave wrong numbers)."""
        return (tuple(shape) == tuple(frame) or all(d == 1 for d in shape) or
                _pad(shape, len(frame)) == (row_kd if len(frame) == rank else row_nk))

    def operand(v, frame: tuple):
        """The scalar of `v` for an op whose output has shape `frame` (the space, or a row shape)."""
        if v.id in scalars:
            if scalars[v.id] in row_vars and not keeps_rows(v.shape, frame):
                raise LoweringError(f"a per-row value of shape {list(v.shape)} broadcast to {list(frame)} is not "
                                    f"one value per row of {list(space)}")
            return scalars[v.id]
        if v.id in consts:
            value, dtype = consts[v.id]
            key = ("c", repr(value), dtype.name)
            if key not in load_var:
                name = fresh()
                stmts.append(Stmt(name, "const", (value,), dtype))
                load_var[key] = name
            return load_var[key]
        if v.id in views:
            w = views[v.id]
            shape, strides = w.shape, w.with_strides()
            if len(shape) > len(frame):
                raise LoweringError(f"input of shape {list(shape)} does not broadcast to {list(frame)}")
            lead = len(frame) - len(shape)
            shape, strides = (1,) * lead + tuple(shape), (0,) * lead + tuple(strides)
            if frame == row_nk and frame != tuple(space):  # a row op without the reduced dims: they follow
                shape, strides = shape + (1,) * (rank - len(shape)), strides + (0,) * (rank - len(strides))
            if any(a != b and a != 1 for a, b in zip(shape, space)):
                raise LoweringError(f"input of shape {list(w.shape)} does not broadcast to {list(space)}")
            strided = w.strides is not None
            if strided and "strided" not in features:
                raise LoweringError("a sliced input (strided load)")
            key = ("l", w.src, shape, strides if strided else None, w.offset)
            if key not in load_var:
                loads.append(LoopArray(w.src, shape, v.dtype, tuple(strides) if strided else None, w.offset, w.size))
                name = fresh()
                stmts.append(Stmt(name, "load", (len(loads) - 1,), v.dtype))
                load_var[key] = name
            return load_var[key]
        raise LoweringError(f"value {v} is not available in the loop")

    def frame_of(shape) -> tuple:
        shape = tuple(shape)
        if shape == tuple(space):
            return shape
        if rows is not None and shape in (row_nk, row_kd):
            return shape
        raise LoweringError(f"an op of shape {list(shape)} in a kernel over {list(space)}")

    results: list[Result] = []
    out_index = {v.id: i for i, v in enumerate(body.outputs)}
    cat_stores: list[tuple] = []  # (member value, output index, strides, offset, size)
    for n in body.nodes:
        out = n.outputs[0]
        name = n.op.name
        if name == "full":
            consts[out.id] = (n.attrs["value"], n.attrs["dtype"])
        elif name in ("reshape", "expand", "slice", "permute"):
            src = n.inputs[0]
            if src.id in consts and name in ("reshape", "expand"):
                consts[out.id] = consts[src.id]
            elif src.id in views:
                views[out.id] = _view_op(views[src.id], n, features)
            elif src.id in scalars and name in ("reshape", "expand") and (
                    tuple(out.shape) == tuple(src.shape) or (scalars[src.id] in row_vars and (
                        (tuple(out.shape) in (row_nk, row_kd) and tuple(src.shape) in (row_nk, row_kd)) or
                        (name == "expand" and tuple(out.shape) == tuple(space) and keeps_rows(src.shape, space))))):
                scalars[out.id] = scalars[src.id]  # a row value seen with or without its reduced dims: one scalar
            else:
                raise LoweringError(f"{name} of a value computed inside the kernel")
        elif name == "cat":
            if "strided" not in features:
                raise LoweringError("a cat stored by the kernel (strided store)")
            if out.id not in out_index:
                raise LoweringError("a cat inside a kernel that is not one of its outputs")
            axis, at = n.attrs["axis"], 0
            full = _contiguous(out.shape)
            for v in n.inputs:
                if v.id not in scalars or tuple(v.shape) != tuple(space) or scalars[v.id] in row_vars:
                    raise LoweringError("a cat of values the kernel does not compute at every index")
                cat_stores.append((v, out_index[out.id], full, at * full[axis], math.prod(out.shape)))
                at += v.shape[axis]
        elif name in ("sum", "amax"):
            if tuple(n.inputs[0].shape) != tuple(space):
                raise LoweringError("reductions over different spaces")
            arg = operand(n.inputs[0], tuple(space))
            if arg in row_vars:
                raise LoweringError("a reduction of a per-row value")
            if out.id in read:  # a row reduction the body reads: a statement
                var = fresh()
                stmts.append(Stmt(var, "rowsum" if name == "sum" else "rowmax", (arg,), out.dtype))
                scalars[out.id] = var
                row_vars.add(var)
                continue
            if out.id not in out_index:
                raise LoweringError("a reduction result used inside its own kernel")
            axes = n.attrs["axes"]
            shape = tuple(1 if d in axes else s for d, s in enumerate(space))
            results.append(Result(LoopArray(out_index[out.id], shape, out.dtype), arg,
                                  "sum" if name == "sum" else "max"))
        elif n.op.kind is Kind.ELEMENTWISE:
            frame = frame_of(out.shape)
            args = tuple(operand(v, frame) for v in n.inputs)
            var = fresh()
            stmts.append(Stmt(var, name, args, out.dtype, dict(n.attrs)))
            scalars[out.id] = var
            if frame != tuple(space) or (args and all(a in row_vars or _is_row_load(stmts, loads, a, rows)
                                                      for a in args) and rows is not None):
                row_vars.add(var)
        else:
            raise LoweringError(f"{name} ({n.op.kind.value}) cannot be part of a loop kernel")
    for v in body.outputs:
        if v.id in scalars:
            row_shaped = rows is not None and tuple(v.shape) in (row_nk, row_kd) and tuple(v.shape) != tuple(space)
            shape = row_kd if row_shaped else _pad(v.shape, rank)
            results.append(Result(LoopArray(out_index[v.id], shape, v.dtype), scalars[v.id], "store"))
    for v, oi, strides, offset, size in cat_stores:
        results.append(Result(LoopArray(oi, tuple(space), v.dtype, strides, offset, size), scalars[v.id], "store"))
    return merge_dims(LoopKernel(tuple(space), loads, stmts, results, rows))


def _is_row_load(stmts, loads, var, rows) -> bool:
    if rows is None:
        return False
    for s in stmts:
        if s.var == var:
            if s.op == "const":
                return True
            if s.op == "load":
                return all(d == 1 for d in loads[s.args[0]].shape[rows:])
            return False
    return False


def _view_op(w: _View, n: Node, features) -> _View:
    """The view `n` (reshape, expand, permute or slice) makes of view `w`."""
    name, out = n.op.name, n.outputs[0]
    if name == "expand":
        # an expand keeps the source's shape: its size-1 dims are what broadcasts
        lead = out.type.ndim - len(w.shape)
        strides = None if w.strides is None else (0,) * lead + tuple(w.strides)
        return _View(w.src, _pad(w.shape, out.type.ndim), w.size, strides, w.offset, True)
    if name == "permute":
        if "strided" not in features:
            raise LoweringError("a permuted input (strided load)")
        dims = n.attrs["dims"]
        strides = w.with_strides()
        shape = tuple(w.shape[d] for d in dims)
        new = tuple(strides[d] for d in dims)
        if not w.expanded and w.offset == 0 and new == _contiguous(shape):
            return _View(w.src, shape, w.size)
        return _View(w.src, shape, w.size, new, w.offset, w.expanded)
    if w.expanded:
        raise LoweringError(f"{name} of a broadcast view")
    if name == "reshape":
        if w.strides is None:
            return _View(w.src, tuple(out.shape), w.size)
        strides = _reshape_strides(w.shape, w.strides, tuple(out.shape))
        if strides is None:
            raise LoweringError(f"reshape of a sliced input to {list(out.shape)} needs a copy")
        return _View(w.src, tuple(out.shape), w.size, strides, w.offset)
    if "strided" not in features:
        raise LoweringError("a sliced input (strided load)")
    strides = w.with_strides()
    a = n.attrs
    offset = w.offset + sum(st * s for st, s in zip(a["starts"], strides))
    new = tuple(st * step for st, step in zip(strides, a["steps"]))
    shape = tuple(out.shape)
    if offset == 0 and new == _contiguous(shape) and math.prod(shape) == w.size:
        return _View(w.src, shape, w.size)  # the whole input after all
    return _View(w.src, shape, w.size, new, offset)


def merge_dims(k: LoopKernel) -> LoopKernel:
    """Drop size-1 dims of the space and merge neighbours that every array treats alike (in a row kernel, row
    dims with row dims and element dims with element dims)."""
    arrays = k.loads + [r.array for r in k.results]
    keep = [d for d, s in enumerate(k.space) if s != 1]

    def mergeable(prev, d) -> bool:
        if k.rows is not None and (prev < k.rows) != (d < k.rows):
            return False
        for a in arrays:
            if (a.shape[prev] == 1) != (a.shape[d] == 1):
                return False
            if a.strides is not None and a.shape[d] != 1 and a.strides[prev] != a.strides[d] * k.space[d]:
                return False
        return True

    groups: list[list[int]] = []
    for d in keep:
        if groups and mergeable(groups[-1][-1], d):
            groups[-1].append(d)
            continue
        groups.append([d])
    space = tuple(math.prod(k.space[d] for d in grp) for grp in groups) or (1,)
    for a in arrays:
        shp = tuple(math.prod(a.shape[d] for d in grp) for grp in groups) or (1,)
        if a.strides is not None:
            a.strides = tuple(0 if a.shape[grp[-1]] == 1 else a.strides[grp[-1]] for grp in groups) or (0,)
        a.shape = shp
    rows = None
    if k.rows is not None:
        rows = sum(1 for grp in groups if grp[0] < k.rows)
        if not groups:
            rows = 0
        elif rows == len(groups):  # every element dim had size 1: one (trivial) element per row
            space, rows = space + (1,), rows
            for a in arrays:
                a.shape = a.shape + (1,)
                if a.strides is not None:
                    a.strides = a.strides + (0,)
    return LoopKernel(space, k.loads, k.stmts, k.results, rows)
