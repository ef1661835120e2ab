"""Backend-neutral kernel description: a fused elementwise/reduce body lowered to one loop nest.

A LoopKernel iterates over an index space; it loads each input array at that index (broadcast dims read
index 0), evaluates scalar statements -- each an elementwise op whose value the op table declares once
(`OPS[op].expr`, in tracejit/scalar.py's vocabulary; a backend spells it) --, stores elementwise outputs and
accumulates reductions. Adjacent dims that every array treats alike are merged, so
`[N, C, H, W] + bias[1, C, 1, 1]` becomes a rank-3 nest and a same-shape chain a rank-1 loop.
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


@dataclass
class Stmt:
    var: str
    op: str  # an ELEMENTWISE op's name (its value: OPS[op].expr), or 'load' / 'const'
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

    def numel(self) -> int:
        return math.prod(self.space)

    def has_reduction(self) -> bool:
        return any(r.mode != "store" for r in self.results)


def _pad(shape, rank):
    return (1,) * (rank - len(shape)) + tuple(shape)


def lower(node: Node, prefix: str = "v") -> LoopKernel:
    """Lower a fused ELEMENTWISE or REDUCE node (ir.FusedKind) to a LoopKernel over its iteration space.

    Scalar variables are named `{prefix}{n}` (distinct prefixes let several kernels share a function)."""
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
    rank = len(space)
    # value id -> (body input index, view shape, expanded?)
    views: dict[int, tuple] = {v.id: (i, v.shape, False) for i, v in enumerate(body.inputs)}
    consts: dict[int, tuple] = {}
    scalars: dict[int, str] = {}
    loads: list[LoopArray] = []
    load_var: dict[tuple, str] = {}
    stmts: list[Stmt] = []
    counter = [0]

    def fresh():
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def operand(v):
        if v.id in scalars:
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
            src, shape, _ = views[v.id]
            padded = _pad(shape, rank)
            if len(shape) > rank or any(a != b and a != 1 for a, b in zip(padded, space)):
                raise LoweringError(f"input of shape {list(shape)} does not broadcast to {list(space)}")
            key = ("l", src, padded)
            if key not in load_var:
                loads.append(LoopArray(src, padded, v.dtype))
                name = fresh()
                stmts.append(Stmt(name, "load", (len(loads) - 1,), v.dtype))
                load_var[key] = name
            return load_var[key]
        raise LoweringError(f"value {v} is not available in the loop")

    results: list[Result] = []
    out_index = {v.id: i for i, v in enumerate(body.outputs)}
    for n in body.nodes:
        out = n.outputs[0]
        name = n.op.name
        if name == "full":
            consts[out.id] = (n.attrs["value"], n.attrs["dtype"])
        elif name in ("reshape", "expand"):
            src = n.inputs[0]
            if src.id in consts:
                consts[out.id] = consts[src.id]
            elif src.id in views:
                s, shape, expanded = views[src.id]
                if name == "reshape" and expanded:
                    raise LoweringError("reshape of a broadcast view")
                # an expand keeps the source's shape: its size-1 dims are what broadcasts
                new_shape = _pad(shape, out.type.ndim) if name == "expand" else out.shape
                views[out.id] = (s, new_shape, expanded or name == "expand")
            else:
                raise LoweringError(f"{name} of a value computed inside the kernel")
        elif name in ("sum", "amax"):
            if n.inputs[0].shape != space:
                raise LoweringError("reductions over different spaces")
            if out.id not in out_index:
                raise LoweringError("a reduction result used inside its own kernel")
            axes = n.attrs["axes"]
            shape = tuple(1 if d in axes else s for d, s in enumerate(space))
            results.append(Result(LoopArray(out_index[out.id], shape, out.dtype), operand(n.inputs[0]),
                                  "sum" if name == "sum" else "max"))
        elif n.op.kind is Kind.ELEMENTWISE:
            if out.shape != space:
                raise LoweringError(f"{name} has shape {list(out.shape)}, the kernel iterates over {list(space)}")
            args = tuple(operand(v) for v in n.inputs)
            var = fresh()
            stmts.append(Stmt(var, name, args, out.dtype, dict(n.attrs)))
            scalars[out.id] = var
        else:
            raise LoweringError(f"{name} ({n.op.kind.value}) cannot be part of a loop kernel")
    for v in body.outputs:
        if v.id in scalars:
            results.append(Result(LoopArray(out_index[v.id], _pad(v.shape, rank), v.dtype), scalars[v.id], "store"))
    return merge_dims(LoopKernel(tuple(space), loads, stmts, results))


def merge_dims(k: LoopKernel) -> LoopKernel:
    """Drop size-1 dims of the space and merge neighbours that every array treats alike."""
    arrays = k.loads + [r.array for r in k.results]
    keep = [d for d, s in enumerate(k.space) if s != 1]
    groups: list[list[int]] = []
    for d in keep:
        if groups:
            prev = groups[-1][-1]
            if all((a.shape[prev] == 1) == (a.shape[d] == 1) for a in arrays):
                groups[-1].append(d)
                continue
        groups.append([d])
    if not groups:
        groups = []
    space = tuple(math.prod(k.space[d] for d in grp) for grp in groups) or (1,)
    for a in arrays:
        shp = tuple(math.prod(a.shape[d] for d in grp) for grp in groups) or (1,)
        a.shape = shp
    return LoopKernel(space, k.loads, k.stmts, k.results)
