"""The reference backend: interprets a Graph with each op's NumPy `ref` (exact eager semantics).

It is the oracle for every other backend and for pass tests; fused nodes are interpreted through
their bodies, so graphs after any pass run here. Its buffers are host NumPy arrays (the CPU device).
"""

from __future__ import annotations

import platform

import numpy as np

from ..ir import Graph, Node
from ..runtime import Program
from . import Backend


def ref_step(node: Node):
    """A step running `node` with NumPy (its body, for fused nodes)."""
    if node.body is not None:
        body = Program(node.body, ref_step)
        run = body.run
        return run
    op, attrs = node.op, node.attrs
    np_dtype = node.outputs[0].type.dtype.np

    def step(args):
        r = op.ref(*args, **attrs)
        if not isinstance(r, np.ndarray) or r.dtype != np_dtype:
            r = np.asarray(r, dtype=np_dtype)
        return (r,)
    step.label = op.name
    return step


def run_graph(graph: Graph, inputs: list) -> list:
    return Program(graph, ref_step).run(inputs)


def compile_graph(graph: Graph, dumper=None, timings=None) -> Program:
    return Program(graph, ref_step)


class ReferenceBackend(Backend):
    """NumPy on the host, one op at a time: slow, exact, and available everywhere."""

    name = "reference"
    reorders_sums = False  # the oracle: eager's summation order
    loop_features = frozenset({"strided", "rows"})  # it runs any fused body op by op
    scalar_spelling = None  # no generated code: each op runs its `ref`

    def compile(self, graph: Graph, dumper=None, timings=None) -> Program:
        return compile_graph(graph, dumper, timings)

    def supports(self, pattern, attrs) -> bool:
        """Every fusion pattern: a fused node runs here through its body, op by op."""
        return True

    def describe(self) -> dict:
        return {"device": "cpu", "threads": None, "warnings": [],
                "lines": [f"reference: NumPy {np.__version__} op by op on the host ({platform.machine()})"]}
