"""The reference backend: interprets a Graph with each op's NumPy `ref` (exact eager semantics).

It is the oracle for every other backend and for pass tests; fused nodes are interpreted through
their bodies, so graphs after any pass run here.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph


class ReferenceProgram:
    """Slots for every value; each node reads its inputs' slots; slots are freed after their last use."""

    def __init__(self, graph: Graph):
        self.graph = graph
        slot = {v.id: i for i, v in enumerate(graph.inputs)}
        steps = []
        for n in graph.nodes:
            ins = [slot[v.id] for v in n.inputs]
            outs = []
            for v in n.outputs:
                slot[v.id] = len(slot)
                outs.append(slot[v.id])
            steps.append((n, ins, outs))
        last_use = {}
        for k, (_, ins, _) in enumerate(steps):
            for i in ins:
                last_use[i] = k
        keep = {slot[v.id] for v in graph.outputs}
        self.free = [[i for i in set(ins) if last_use[i] == k and i not in keep and i >= len(graph.inputs)]
                     for k, (_, ins, _) in enumerate(steps)]
        self.steps = steps
        self.n_slots = len(slot)
        self.out_slots = [slot[v.id] for v in graph.outputs]
        self.kernels = []

    def run(self, inputs: list) -> list:
        env = list(inputs) + [None] * (self.n_slots - len(inputs))
        for (node, ins, outs), free in zip(self.steps, self.free):
            args = [env[i] for i in ins]
            if node.body is not None:
                results = run_graph(node.body, args)
            else:
                r = node.op.ref(*args, **node.attrs)
                t = node.outputs[0].type
                if not isinstance(r, np.ndarray) or r.dtype != t.dtype.np:
                    r = np.asarray(r, dtype=t.dtype.np)
                results = [r]
            for o, r in zip(outs, results):
                env[o] = r
            for i in free:
                env[i] = None
        return [env[i] for i in self.out_slots]


def run_graph(graph: Graph, inputs: list) -> list:
    return ReferenceProgram(graph).run(inputs)


def compile_graph(graph: Graph, dumper=None, timings=None) -> ReferenceProgram:
    return ReferenceProgram(graph)
