"""The pass pipeline: plain `Graph -> Graph` functions, run in this order, verified and dumped after each.

`run_pipeline(..., target=backend)` runs them for a backend: fusion passes ask it which window/GEMM patterns it
runs natively (context.supports); without a target they fuse every pattern that matches structurally.
"""

from __future__ import annotations

import time

from ..ir import Graph, verify
from .context import targeting
from .cse import cse
from .dce import dce
from .fuse_elementwise import fuse_elementwise
from .fuse_optimizer import fuse_optimizer
from .fuse_window import fuse_window
from .memory_plan import memory_plan
from .overlap_collectives import overlap_collectives
from .simplify import simplify

PIPELINE = [
    dce,
    cse,
    simplify,
    dce,
    fuse_window,
    dce,
    fuse_elementwise,
    dce,
    fuse_optimizer,
    overlap_collectives,
    memory_plan,
]


def run_pipeline(g: Graph, passes=None, dumper=None, timings=None, check=True, target=None) -> Graph:
    """Run `passes` (default PIPELINE) over `g` for backend `target` (None: none in particular); verify after
    each; record per-pass time in `timings`."""
    for i, p in enumerate(PIPELINE if passes is None else passes, start=1):
        t0 = time.perf_counter()
        with targeting(target):
            g = p(g)
        if check:
            verify(g)
        if timings is not None:
            timings[f"pass:{p.__name__}"] = time.perf_counter() - t0
        if dumper is not None:
            dumper.stage(f"{i:02d}_{p.__name__}", g)
    return g
