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

import numpy as np

from .. import dtypes as D
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

    def __init__(self, graph: Graph, make_step=None, units=None, synchronize=None, backend=None):
        self.graph = graph
        if units is None:
            units = [(make_step(n), n.inputs, n.outputs) for n in graph.nodes]
        self.synchronize = synchronize or _no_sync
        slot = {v.id: i for i, v in enumerate(graph.inputs)}
        types = [v.type for v in graph.inputs]
        plan = []
        for step, in_values, out_values in units:
            ins = [slot[v.id] for v in in_values]
            outs = []
            for v in out_values:
                slot[v.id] = len(slot)
                outs.append(slot[v.id])
                types.append(v.type)
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
        if backend is None:
            alloc, view = _host_alloc, _host_view
        else:  # the backend's buffers: raw bytes (uint8), seen as each result's shape and dtype
            alloc, view = (lambda n: backend.alloc((n,), D.uint8)), backend.view
        self.arena = ArenaPlan(self.plan, types, self.out_slots, alloc, view)
        # a device backend says itself whether a result is a view of an arena buffer (and copies it)
        self._copied_out = getattr(backend, "copied_out", copied_out)
        # no step writes into given arrays: calls need no arena (and skip taking one from the pool)
        self._no_arena = not any(getattr(step, "writes_into", False) for step, *_ in self.plan)
        self._arenas: list = []  # arenas not in use: one per concurrently running thread, reused across calls

    def run(self, inputs: list) -> list:
        if self._run is None:
            self._run = self._straight_line()
        if self._no_arena:
            return self._run(inputs, None)
        free = self._arenas
        arena = free.pop() if free else self.arena.allocate()
        try:
            return self._run(inputs, arena)
        finally:
            free.append(arena)

    def _straight_line(self):
        """The plan as one generated Python function: a local per value, `del` after its last use (so
        intermediates are freed as early as with a slot list), no loops or list indexing per call. A tiny
        step's Python around its kernels is most of its cost (linreg: ~2 us of 9 in the program loop)."""
        n_in = len(self.graph.inputs)
        ns: dict = {}
        lines = ["def run(inputs, arena):"]
        if n_in:
            lines.append(f"    {''.join(f'e{i}, ' for i in range(n_in))}= inputs")
        given = [k for k, (step, *_) in enumerate(self.plan) if getattr(step, "writes_into", False)]
        if given:  # the arena's result arrays of the steps that write into given arrays, one list per step
            lines.append(f"    {''.join(f'g{k}, ' for k in given)}= {', '.join(f'arena[{k}]' for k in given)},")
        for k, (step, ins, outs, free) in enumerate(self.plan):
            ns[f"s{k}"] = step
            extra = f", g{k}" if k in given else ""
            call = f"s{k}([{', '.join(f'e{i}' for i in ins)}]{extra})"
            lines.append(f"    {''.join(f'e{o}, ' for o in outs)}= {call}" if outs else f"    {call}")
            if free:
                lines.append(f"    del {', '.join(f'e{i}' for i in sorted(free))}")
        escapes = self.arena.escapes
        if any(escapes):  # outputs that may be views of arena buffers leave as copies
            ns["_copied_out"] = self._copied_out
            lines.append(f"    _bufs = arena[{len(self.plan)}]")
            for pos, bufs in enumerate(escapes):
                if bufs:
                    e = f"e{self.out_slots[pos]}"
                    lines.append(f"    {e} = _copied_out({e}, ({''.join(f'_bufs[{b}], ' for b in bufs)}))")
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
        arena = self.arena.allocate()
        inputs = self._unshared(inputs)
        for _ in range(repeat):
            env = list(inputs) + [None] * (self.n_slots - len(inputs))
            for k, (step, ins, outs, _) in enumerate(self.plan):
                sync()
                t0 = time.perf_counter()
                args = [env[i] for i in ins]
                results = step(args, arena[k]) if getattr(step, "writes_into", False) else step(args)
                sync()
                samples[k].append(time.perf_counter() - t0)
                for o, r in zip(outs, results):
                    env[o] = r
        return [sorted(s)[len(s) // 2] for s in samples]

    def _unshared(self, inputs: list) -> list:
        """`inputs` with the ones a run updates in place copied: profiling must not change the user's state."""
        if not self.updates_in_place:
            return list(inputs)
        targets = {ins[ii] for step, ins, *_ in self.plan for _, ii in getattr(step, "inplace", ())}
        return [a.copy() if i in targets and hasattr(a, "copy") else a for i, a in enumerate(inputs)]

    def memory(self) -> dict:
        """What the runtime holds for this program: its arena (bytes, buffers, the step results placed in it),
        and the bytes of step results still allocated on every call (returned values and the ones that may
        alias another step's results: views, NumPy steps)."""
        a = self.arena
        return {"arena_bytes": sum(a.sizes), "arena_buffers": len(a.sizes), "arena_values": a.placed,
                "per_call_bytes": a.per_call_bytes, "arenas": len(self._arenas)}

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


def _host_alloc(nbytes: int):
    return np.empty(nbytes, np.uint8)


def _host_view(buffer, shape, np_dtype):
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
    return buffer[:n].view(np_dtype).reshape(shape)


class ArenaPlan:
    """Where the results of the steps that write into given arrays (`step.writes_into`) live: buffers allocated
    once per program (and per thread running it at the same time), reused across calls; within a call a buffer
    is shared by results whose lifetimes do not overlap (best fit by size, as memory_plan.plan_buffers does for
    nodes). Results that are graph outputs (returned, or state written back) never go in the arena.

    Other steps may return views of their inputs (a reshape; `step.aliases` = {result: input positions} says
    which may, otherwise any may): the lifetime of an arena result runs to the last read of it or of anything
    that may be a view of it, and a graph output that may be one is copied out of the arena at the end of the
    call (`escapes`: per output, the buffers it may share memory with)."""

    def __init__(self, plan, types, outputs: list, alloc, view=_host_view):
        self.alloc, self.view = alloc, view
        writes = [getattr(step, "writes_into", False) for step, *_ in plan]
        base: dict[int, frozenset] = {}  # slot -> arena results whose memory it may share
        for k, (step, ins, outs, _) in enumerate(plan):
            if writes[k]:
                for o in outs:
                    base[o] = frozenset((o,))
                continue
            aliases = getattr(step, "aliases", None)
            for j, o in enumerate(outs):
                may = range(len(ins)) if aliases is None else aliases.get(j, ())
                base[o] = frozenset().union(*(base.get(ins[i], frozenset()) for i in may))
        graph_outputs = set(outputs)
        last: dict[int, int] = {}
        end = len(plan)  # graph outputs are read after the last step
        for k, (_, ins, outs, _) in enumerate(plan):
            for s_ in list(ins) + list(outs):
                for c in base.get(s_, ()):
                    last[c] = max(last.get(c, k), k)
        for s_ in outputs:
            for c in base.get(s_, ()):
                last[c] = end
        nbytes = {o: types[o].numel * types[o].dtype.np.itemsize for _, _, outs, _ in plan for o in outs}
        self.sizes: list[int] = []
        self.where: list[list] = []  # per step: per result (buffer, shape, NumPy dtype) or None
        buffer_of: dict[int, int] = {}
        free: list[tuple[int, int]] = []  # (size, buffer)
        releases: dict[int, list] = {}
        self.placed = 0
        self.per_call_bytes = 0
        for k, (_, _, outs, _) in enumerate(plan):
            row = []
            for o in outs:
                if not writes[k] or o in graph_outputs or nbytes[o] == 0:
                    row.append(None)
                    self.per_call_bytes += nbytes[o]
                    continue
                size = -(-nbytes[o] // 64) * 64  # whole cache lines: every view starts aligned
                fit = min((f for f in free if f[0] >= size), default=None)
                if fit is not None:
                    free.remove(fit)
                    buf = fit[1]
                else:
                    buf = len(self.sizes)
                    self.sizes.append(size)
                buffer_of[o] = buf
                releases.setdefault(last[o], []).append(buf)
                row.append((buf, types[o].shape, types[o].dtype.np))
                self.placed += 1
            self.where.append(row)
            for buf in releases.get(k, ()):  # free for the results of later steps (never this step's own)
                free.append((self.sizes[buf], buf))
        # per graph output position: the arena buffers it may be a view of (checked, and copied out, per call)
        self.escapes = [tuple(sorted({buffer_of[c] for c in base.get(s_, ()) if c in buffer_of})) for s_ in outputs]

    def allocate(self) -> list:
        """One arena: per step, the list of arrays its results are written into (None: the step allocates), and
        last the arena's buffers themselves."""
        buffers = [self.alloc(n) for n in self.sizes]
        return [[None if w is None else self.view(buffers[w[0]], w[1], w[2]) for w in row] if any(row) else ()
                for row in self.where] + [buffers]


def copied_out(value, buffers):
    """`value` itself, or a copy when it may be a view of one of the arena `buffers` (a graph output must never
    share memory with the arena, which the next call overwrites)."""
    for b in buffers:
        if np.may_share_memory(value, b):
            return value.copy()
    return value


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
