"""fuse_optimizer: every elementwise kernel whose results are only written back (parameter and
optimizer-state updates, new .grad values) moves to the end of the step and joins one multi-tensor
kernel, so the whole optimizer update is a single launch.

Keeps true: a moved kernel's inputs are all defined before the end, and nothing inside the graph reads
its outputs, so order stays topological; member kernels keep their own bodies (run in sequence). The small
kernels left next to each other by the move (per-parameter step counts) then merge as fuse_elementwise's do.
"""

from __future__ import annotations

from ..ir import FusedKind, Graph, fused
from .fuse_elementwise import _merge_small_neighbours


def fuse_optimizer(g: Graph) -> Graph:
    read = {v.id for n in g.nodes for v in n.inputs}
    sinks = [n for n in g.nodes if n.fused_kind is FusedKind.ELEMENTWISE
             and not any(v.id in read for v in n.outputs)]
    if len(sinks) < 2:
        return g
    sink_ids = {id(n) for n in sinks}
    inputs, seen = [], set()
    for n in sinks:
        for v in n.inputs:
            if v.id not in seen:
                seen.add(v.id)
                inputs.append(v)
    outputs = [v for n in sinks for v in n.outputs]
    body = Graph("optimizer", inputs, list(sinks), outputs, {}, [None] * len(outputs))
    node = fused(FusedKind.MULTI, inputs, outputs, body)
    notes = [f"fuse_optimizer: {len(sinks)} write-back kernels "
             f"({sum(len(n.outputs) for n in sinks)} tensors) run as one multi-tensor kernel"]
    rest = _merge_small_neighbours([n for n in g.nodes if id(n) not in sink_ids], notes)
    result = g.replace(nodes=rest + [node])
    result.notes = notes
    return result
