"""fuse_optimizer: every elementwise kernel whose results are only written back (parameter and
optimizer-state updates, new .grad values) moves to the end of the step and joins one multi-tensor
kernel, so the whole optimizer update is a single launch.

Keeps true: a moved kernel's inputs are all defined before the end, and nothing inside the graph reads
its outputs, so order stays topological; member kernels keep their own bodies (run in sequence).
"""

from __future__ import annotations

from ..ir import FusedKind, Graph, fused


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
    result = g.replace(nodes=[n for n in g.nodes if id(n) not in sink_ids] + [node])
    result.notes = [f"fuse_optimizer: {len(sinks)} write-back kernels "
                    f"({sum(len(n.outputs) for n in sinks)} tensors) run as one multi-tensor kernel"]
    return result
