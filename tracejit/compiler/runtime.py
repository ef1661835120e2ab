"""Program: runs a compiled graph's steps in order over value slots.

A backend supplies one step per node (`make_step(node) -> step(arrays) -> arrays`); the program binds
inputs, frees every intermediate after its last use, and returns the graph's outputs.
"""

from __future__ import annotations

import time

from .ir import Graph


class Program:
    """`units` = [(step, input values, output values)] in order; by default one unit per node."""

    def __init__(self, graph: Graph, make_step=None, units=None):
        self.graph = graph
        if units is None:
            units = [(make_step(n), n.inputs, n.outputs) for n in graph.nodes]
        slot = {v.id: i for i, v in enumerate(graph.inputs)}
        plan = []
        for step, in_values, out_values in units:
            ins = [slot[v.id] for v in in_values]
            outs = []
            for v in out_values:
                slot[v.id] = len(slot)
                outs.append(slot[v.id])
            plan.append((step, ins, outs))
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
        """Seconds spent in each step (median over `repeat` runs): where time goes."""
        samples = [[] for _ in self.plan]
        for _ in range(repeat):
            env = list(inputs) + [None] * (self.n_slots - len(inputs))
            for k, (step, ins, outs, _) in enumerate(self.plan):
                t0 = time.perf_counter()
                results = step([env[i] for i in ins])
                samples[k].append(time.perf_counter() - t0)
                for o, r in zip(outs, results):
                    env[o] = r
        return [sorted(s)[len(s) // 2] for s in samples]
