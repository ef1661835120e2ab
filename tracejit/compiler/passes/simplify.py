"""simplify: algebraic identities, constant folding and movement chains.

Rewrites x*1, 1*x, x+0, x-0, x/1, neg(neg(x)), cast to the same dtype, reshape/expand/permute that change
nothing, reshape(reshape(x)), permute(permute(x)), and folds elementwise ops whose inputs are all
constants (`full`) into one `full`. Keeps true: values, types and outputs are unchanged.
"""

from __future__ import annotations

import numpy as np

from ...ops import OPS, Kind, TensorType
from ..ir import Graph, Node, Value


def _const(defs, v):
    """The scalar value of `v` when it is a `full` node (a broadcast constant), else None."""
    n = defs.get(v.id)
    if n is not None and n.op.name == "full":
        return n.attrs["value"]
    return None


def simplify(g: Graph) -> Graph:
    uses: dict[int, int] = {}
    for n in g.nodes:
        for v in n.inputs:
            uses[v.id] = uses.get(v.id, 0) + 1
    for v in g.outputs:
        uses[v.id] = uses.get(v.id, 0) + 1
    defs: dict[int, Node] = {}
    rename: dict[int, Value] = {}
    nodes = []

    def emit(n):
        nodes.append(n)
        for o in n.outputs:
            defs[o.id] = n

    for n in g.nodes:
        ins = tuple(rename.get(v.id, v) for v in n.inputs)
        n = n if ins == n.inputs else Node(n.op, ins, n.attrs, n.outputs, n.body)
        out = n.outputs[0] if len(n.outputs) == 1 else None
        alias = None
        if out is not None and n.body is None:
            alias = _identity(n, ins, out, defs)
        if alias is not None:
            rename[out.id] = alias
            continue
        if out is not None and n.body is None:
            folded = _fold(n, ins, out, defs)
            if folded is not None:
                emit(folded)
                continue
            transposed = _transpose_product(n, ins, out, defs, uses)
            if transposed is not None:
                *flips, mm = transposed
                operands = []
                for t in flips:  # a^T of a transposed view is the original array: no permute, no copy later
                    t = _chain(t, t.inputs, t.outputs[0], defs)
                    same = _identity(t, t.inputs, t.outputs[0], defs)
                    if same is None:
                        emit(t)
                    operands.append(t.outputs[0] if same is None else same)
                emit(Node(mm.op, tuple(operands), mm.attrs, mm.outputs))
                continue
            n = _chain(n, ins, out, defs)
            alias = _identity(n, n.inputs, out, defs)  # a composed chain may do nothing at all
            if alias is not None:
                rename[out.id] = alias
                continue
        emit(n)
    outputs = [rename.get(v.id, v) for v in g.outputs]
    return g.replace(nodes=nodes, outputs=outputs)


def _transpose_product(n, ins, out, defs, uses):
    """permute(matmul(a, b), (1, 0)) -> matmul(b^T, a^T): a linear layer's weight gradient then comes out
    contiguous (the transposed operands are free views BLAS reads with a flag) instead of as a strided view
    every consumer has to copy (measured ~2 ms a step in the MLP's optimizer kernel).
    Batched likewise, when the permute swaps the last two dims and both operands have the product's batch
    shape (no broadcasting): attention's key gradient, (q^T @ dS)^T = dS^T @ q, was a batched product into
    [b, h, d, t] and a copy of it into [b, h, t, d] (gpt: ~0.1 ms per layer one thread)."""
    if n.op.name != "permute":
        return None
    r = out.type.ndim
    swap = tuple(range(r - 2)) + (r - 1, r - 2)
    if r < 2 or n.attrs["dims"] != swap:
        return None
    d = defs.get(ins[0].id)
    if d is None or d.body is not None or d.op.name != "matmul" or uses.get(ins[0].id) != 1:
        return None
    a, b = d.inputs
    if a.type.ndim != r or b.type.ndim != r or a.shape[:-2] != out.shape[:-2] or b.shape[:-2] != out.shape[:-2]:
        return None
    at = Value(TensorType(a.shape[:-2] + a.shape[::-1][:2], a.dtype))
    bt = Value(TensorType(b.shape[:-2] + b.shape[::-1][:2], b.dtype))
    return [Node(OPS["permute"], (b,), {"dims": swap}, (bt,)),
            Node(OPS["permute"], (a,), {"dims": swap}, (at,)),
            Node(OPS["matmul"], (bt, at), {}, (out,))]


def _identity(n, ins, out, defs):
    """A value equal to `out` that already exists, or None."""
    name = n.op.name
    if name in ("reshape", "expand", "cast") and ins[0].type == out.type:
        return ins[0]
    if name == "permute" and n.attrs["dims"] == tuple(range(out.type.ndim)):
        return ins[0]
    if name in ("mul", "div") and _const(defs, ins[1]) == 1 and ins[0].type == out.type:
        return ins[0]
    if name == "mul" and _const(defs, ins[0]) == 1 and ins[1].type == out.type:
        return ins[1]
    if name in ("add", "sub") and _const(defs, ins[1]) == 0 and ins[0].type == out.type:
        return ins[0]
    if name == "add" and _const(defs, ins[0]) == 0 and ins[1].type == out.type:
        return ins[1]
    if name == "neg":
        d = defs.get(ins[0].id)
        if d is not None and d.op.name == "neg" and d.inputs[0].type == out.type:
            return d.inputs[0]
    return None


def _fold(n, ins, out, defs):
    """Elementwise op on constants -> one `full` node."""
    if n.body is not None or n.op.kind is not Kind.ELEMENTWISE or n.op.name == "full" or not ins:
        return None
    vals = [_const(defs, v) for v in ins]
    if any(v is None for v in vals):
        return None
    arrays = [np.full((), v, dtype=x.type.dtype.np) for v, x in zip(vals, ins)]
    with np.errstate(all="ignore"):
        r = np.asarray(n.op.ref(*arrays, **n.attrs), dtype=out.type.dtype.np)
    value = r.item()
    return Node(OPS["full"], (), {"shape": out.type.shape, "value": value, "dtype": out.type.dtype}, (out,))


def _chain(n, ins, out, defs):
    """reshape(reshape(x)) -> reshape(x); permute(permute(x)) -> permute(x); reshape/expand of a constant."""
    name = n.op.name
    d = defs.get(ins[0].id) if ins else None
    if d is None or d.body is not None:
        return n
    if name == "reshape" and d.op.name == "reshape":
        return Node(n.op, (d.inputs[0],), n.attrs, n.outputs)
    if name == "permute" and d.op.name == "permute":
        dims = tuple(d.attrs["dims"][i] for i in n.attrs["dims"])
        if dims == tuple(range(len(dims))) and d.inputs[0].type == out.type:
            return Node(OPS["reshape"], (d.inputs[0],), {"shape": out.type.shape}, n.outputs)
        return Node(n.op, (d.inputs[0],), {"dims": dims}, n.outputs)
    if name in ("reshape", "expand") and d.op.name == "full":
        return Node(OPS["full"], (), {"shape": out.type.shape, "value": d.attrs["value"],
                                       "dtype": out.type.dtype}, n.outputs)
    return n
