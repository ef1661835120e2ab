"""Program: runs a compiled graph's steps in order over value slots -- what every backend's `compile` returns.

A backend supplies one step per node (`make_step(node) -> step(buffers) -> buffers`), or its own units of work
(`units=[(step, input values, output values)]`); the program binds inputs, frees every intermediate after its
last use, and returns the graph's outputs.

What report, bench and explain read (and nothing else of a program):
    run(buffers) -> buffers           the graph's outputs for its inputs, as buffers of the backend's device
    profile(buffers, repeat) -> [s]   seconds per step (median over `repeat` runs; synchronizing each step)
    steps() -> [StepInfo]             each step: label, how it runs, the graph nodes it runs, its source, ...
    sources() -> [(label, source)]    the generated kernels' source
    describe() -> str                 a few lines on what the steps are (explain prints it)
    cache_stats() -> (n, hits)        generated kernels, and how many came from the source cache
    graph, device, plan               the graph it runs; the device of its buffers; the execution plan
                                      [(step, input slots, output slots, slots freed after it)]
    updates_in_place                  whether a run may write into its input buffers (state in place)
A step callable may carry `label`, `source` (generated code), `first_call_s` (compile/load + first run), `hit`
(found in the source cache), `node`/`nodes` (what it runs) and `runs` ("generated", "library", "interpreted"):
`steps()` reports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..devices import CPU
from .ir import Graph


@dataclass(frozen=True)
class StepInfo:
    """One step of a Program, as report, bench and explain see it."""

    index: int
    label: str
    runs: str  # "generated" (source below), "library" (a native kernel, BLAS, NumPy), "interpreted" (op refs)
    nodes: tuple | None  # the graph's top-level nodes this step runs (None: unknown)
    source: str | None = None
    first_call_s: float | None = None  # compile or load + first run, for generated steps that ran
    cache_hit: bool | None = None  # generated source found in the on-disk cache


def _no_sync() -> None:
    pass


class Program:
    """`units` = [(step, input values, output values)] in order; by default one unit per node."""

    device = CPU
    # True when running may write into its input buffers (state updated in place): the caller must then not be
    # interrupted between the run and the write-back of state
    updates_in_place = False

    def __init__(self, graph: Graph, make_step=None, units=None, synchronize=None):
        self.graph = graph
        if units is None:
            units = [(make_step(n), n.inputs, n.outputs) for n in graph.nodes]
        self.synchronize = synchronize or _no_sync
        slot = {v.id: i for i, v in enumerate(graph.inputs)}
        plan = []
        for step, in_values, out_values in units:
            ins = [slot[v.id] for v in in_values]
            outs = []
            for v in out_values:
                slot[v.id] = len(slot)
                outs.append(slot[v.id])
            plan.append((step, ins, outs))
        self._unit_nodes = _unit_nodes(graph, units)
        last_use: dict[int, int] = {}
        for k, (_, ins, _) in enumerate(plan):
            for i in ins:
                last_use[i] = k
        keep = {slot[v.id] for v in graph.outputs}
        n_in = len(graph.inputs)
        self.plan = [(step, ins, outs, [i for i in set(ins) if last_use[i] == k and i not in keep and i >= n_in])
                     for k, (step, ins, outs) in enumerate(plan)]
        self.n_slots = len(slot)
        self.out_slots = [slot[v.id] for v in graph.outputs]
        self.step_times: list[float] | None = None
        self._run = None

    def run(self, inputs: list) -> list:
        if self._run is None:
            self._run = self._straight_line()
        return self._run(inputs)

    def _straight_line(self):
        """The plan as one generated Python function: a local per value, `del` after its last use (so
        intermediates are freed as early as with a slot list), no loops or list indexing per call. A tiny
        step's Python around its kernels is most of its cost (linreg: ~2 us of 9 in the program loop)."""
        n_in = len(self.graph.inputs)
        ns: dict = {}
        lines = ["def run(inputs):"]
        if n_in:
            lines.append(f"    {''.join(f'e{i}, ' for i in range(n_in))}= inputs")
        for k, (step, ins, outs, free) in enumerate(self.plan):
            ns[f"s{k}"] = step
            call = f"s{k}([{', '.join(f'e{i}' for i in ins)}])"
            lines.append(f"    {''.join(f'e{o}, ' for o in outs)}= {call}" if outs else f"    {call}")
            if free:
                lines.append(f"    del {', '.join(f'e{i}' for i in sorted(free))}")
        lines.append(f"    return [{', '.join(f'e{i}' for i in self.out_slots)}]")
        src = "\n".join(lines) + "\n"
        exec(compile(src, "<tracejit program>", "exec"), ns)
        run = ns["run"]
        run.source = src
        return run

    def profile(self, inputs: list, repeat: int = 1) -> list[float]:
        """Seconds spent in each step (median over `repeat` runs, the device synchronized around each step):
        where time goes. Runs the steps one by one; writes no state."""
        samples = [[] for _ in self.plan]
        sync = self.synchronize
        for _ in range(repeat):
            env = list(inputs) + [None] * (self.n_slots - len(inputs))
            for k, (step, ins, outs, _) in enumerate(self.plan):
                sync()
                t0 = time.perf_counter()
                results = step([env[i] for i in ins])
                sync()
                samples[k].append(time.perf_counter() - t0)
                for o, r in zip(outs, results):
                    env[o] = r
        return [sorted(s)[len(s) // 2] for s in samples]

    # ---- what it is made of
    def steps(self) -> list[StepInfo]:
        """Each step of the plan, in order (first_call_s filled in once the step ran)."""
        out = []
        for k, (step, *_rest) in enumerate(self.plan):
            nodes = getattr(step, "nodes", None)
            if nodes is None and getattr(step, "node", None) is not None:
                nodes = [step.node]
            if nodes is None:
                nodes = self._unit_nodes[k]
            nodes = tuple(nodes) if nodes is not None else None
            single = nodes[0] if nodes and len(nodes) == 1 else None
            body = single.body if single is not None else None
            label = getattr(step, "label", None)
            source = getattr(step, "source", None)
            source = source if isinstance(source, str) else None
            runs = getattr(step, "runs", None)
            if runs is None:
                runs = "generated" if source is not None else (
                    "interpreted" if body is not None and label is None else "library")
            if label is None:
                label = body.name if body is not None else single.op.name if single is not None else \
                    type(step).__name__
            out.append(StepInfo(k, label, runs, nodes, source, getattr(step, "first_call_s", None),
                                getattr(step, "hit", None)))
        return out

    def sources(self) -> list[tuple[str, str]]:
        """(label, source) of each generated step."""
        return [(s.label, s.source) for s in self.steps() if s.source is not None]

    def cache_stats(self) -> tuple[int, int]:
        """(generated kernels, how many of them were already in the source cache)."""
        gen = [s for s in self.steps() if s.source is not None]
        return len(gen), sum(1 for s in gen if s.cache_hit)

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for s in self.steps():
            kinds[s.runs] = kinds.get(s.runs, 0) + 1
        return "steps: " + (", ".join(f"{n} {k}" for k, n in kinds.items()) or "none")


def _unit_nodes(graph: Graph, units) -> list:
    """The graph nodes each unit runs: the nodes after the previous unit's up to the last one producing a value
    it writes (units run in graph order); None for a unit that writes nothing."""
    nodes = graph.nodes
    producer = {v.id: i for i, n in enumerate(nodes) for v in n.outputs}
    out, start = [], 0
    for _, _, outs in units:
        end = max((producer[v.id] + 1 for v in outs if v.id in producer), default=start)
        out.append(nodes[start:end] if end > start else None)
        start = max(start, end)
    return out
