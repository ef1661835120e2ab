"""cse: common-subexpression elimination — identical (op, inputs, attrs) nodes compute once.

Keeps true: every op in the table but the collectives is pure (RANDOM ops read their state explicitly), so two
nodes with the same op, inputs and attrs always agree; later uses are renamed to the first. Collectives are never
merged: each is a meeting of all ranks (two all-reduces of one value are two messages every rank sends).
"""

from __future__ import annotations

from ...ops import Kind
from ..ir import Graph, Node


def _key(attrs: dict):
    # floats by repr: 0.0 == -0.0 in Python, but x / 0.0 and x / -0.0 differ
    return tuple(sorted((k, repr(v) if isinstance(v, float) else tuple(v) if isinstance(v, list) else v)
                        for k, v in attrs.items()))


def cse(g: Graph) -> Graph:
    rename: dict[int, object] = {}
    seen: dict = {}
    nodes = []
    for n in g.nodes:
        inputs = tuple(rename.get(v.id, v) for v in n.inputs)
        if n.body is None and len(n.outputs) == 1 and n.op.kind is not Kind.COLLECTIVE:
            try:
                key = (n.op.name, tuple(v.id for v in inputs), _key(n.attrs))
                hash(key)
            except TypeError:
                key = None
            if key is not None:
                if key in seen:
                    rename[n.outputs[0].id] = seen[key]
                    continue
                seen[key] = n.outputs[0]
        nodes.append(n if inputs == n.inputs else Node(n.op, inputs, n.attrs, n.outputs, n.body))
    outputs = [rename.get(v.id, v) for v in g.outputs]
    return g.replace(nodes=nodes, outputs=outputs)
