"""The compiler: trace a function into IR, run passes, render kernels, execute.

Users call `tracejit.compile` / `tracejit.explain` (see `api.py`).
"""

from .ir import Graph, Node, Value, parse_graph, print_graph, to_dot, verify  # noqa: F401
