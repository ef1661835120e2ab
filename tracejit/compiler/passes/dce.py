"""dce: drop nodes whose outputs nothing reads (and unused non-argument inputs).

Keeps true: outputs, argument inputs and node order are unchanged; RANDOM ops are pure here
(the generator state is an explicit input/output), so they are removable like any other. `check_index`
nodes are always kept, read or not: raising on a bad index is an effect (eager code raises there too); so are
collectives (Kind.COLLECTIVE): the other ranks wait for this one in each of them.
"""

from __future__ import annotations

from ...ops import Kind
from ..ir import Graph


def dce(g: Graph) -> Graph:
    live = {v.id for v in g.outputs}
    kept = []
    for n in reversed(g.nodes):
        if any(v.id in live for v in n.outputs) or (n.body is None and (
                n.op.name == "check_index" or n.op.kind is Kind.COLLECTIVE)):
            kept.append(n)
            live.update(v.id for v in n.inputs)
    kept.reverse()
    inputs = [v for v in g.inputs if v.id in live or "arg" in g.input_meta.get(v.id, {})]
    meta = {v.id: g.input_meta[v.id] for v in inputs if v.id in g.input_meta}
    return g.replace(nodes=kept, inputs=inputs, input_meta=meta)
