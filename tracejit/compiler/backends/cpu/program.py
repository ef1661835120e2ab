"""The CPU backend's Program: one step per fused node or generated segment, loaded through the disk cache and
run in order, with NumPy/BLAS for the nodes that are not loop kernels (matmul, movement, index).
"""

from __future__ import annotations

import time

import numba
import numpy as np

from ....ops import index_error
from ... import interrupt
from ...ir import FusedKind, Graph, Node
from ...runtime import Program
from .. import cache
from ..kernel import LoweringError, lower
from ..reference import ref_step
from ..sizes import Decisions, SizeReuse, graph_key, remember, split_numbers
from . import render as R
from . import threads
from .blas import control as blas
from .blas.calls import ensure_sgemm, sgemm_description
from .capabilities import LOOP_FEATURES, supports
from .index import IndexCheckFailed
from .render import PRELUDE, SEGMENT_PRELUDE, _render_block, packable, render_multi, render_packed
from .segment import SegmentSource, input_offsets, segment_io, split_segments, transposed_inputs
from .views import addresses
from .window.steps import as_c, window_step

INPLACE_MIN = 1 << 14  # elements of optimizer state below which in-place updates are not worth a step


class KernelStep:
    """Runs one Numba function holding one or more loop kernels: reshape inputs (free views), take the output
    arrays (the runtime's arena views, or new ones), call it. `parts` = (member node, LoopKernel, member-input ->
    step-input index map). With `rows` (a `render_packed` kernel) the function takes one table of the arrays'
    addresses instead."""

    writes_into = True  # called as step(args, given): results go into the runtime's preallocated arrays

    def __init__(self, node: Node, parts: list, source: str, rows: list | None = None, aliased: set = frozenset()):
        # fn, hit, source and sz are set when the source is loaded (_load_generated): sz is the argument tuple
        # of a size-parametric template (backends/sizes.py), None for a plain kernel
        self.node, self.fn, self.source, self.hit, self.sz = node, None, source, False, None
        self.shared = False  # its function was already compiled in this process (another batch size's)
        # in-place pairs the source writes through the input's own variable: they always get one buffer
        self.aliased = aliased
        # (output position, input position) pairs memory_plan allows to share a buffer: the state tensor's own
        # storage is updated (as PyTorch's optimizers do), when it is a plain writable C-contiguous array
        self.inplace = node.attrs.get("inplace", ())
        out_pos = {v.id: i for i, v in enumerate(node.outputs)}
        self.loads, self.outs, order = [], [], []
        for member, k, in_map in parts:
            self.loads += [(in_map[a.source], a.arg_shape) for a in k.loads]
            for r in k.results:
                v = member.outputs[r.array.source]
                self.outs.append((v.type.shape, v.type.dtype.np, r.array.arg_shape))
                order.append(out_pos[v.id])
        self.out_order = [order.index(i) for i in range(len(node.outputs))]
        self.given_order = order  # kernel result j is node output order[j]
        # several results may write one output (pieces of a cat it produces): they share its array
        self.share = [order.index(pos) for pos in order]
        self.first_call_s: float | None = None
        # render_packed's rows -> positions in (loads + results), the order of its address table
        self.rows = None
        if rows is not None:
            first_load, first_out, nl, no = [], [], 0, len(self.loads)
            for _, k, _ in parts:
                first_load.append(nl)
                first_out.append(no)
                nl, no = nl + len(k.loads), no + len(k.results)
            self.rows = [first_load[t] + p if p < len(parts[t][1].loads) else
                         first_out[t] + p - len(parts[t][1].loads) for t, p in rows]

    def __call__(self, args, given=()):
        t0 = time.perf_counter() if self.first_call_s is None else 0.0
        call, outs, _alive = self.arguments(args, given)  # (_alive: arrays behind an address table's entries)
        self.fn(*call)  # the first call loads (or compiles) it: a damaged Numba cache entry is a miss (numba_cache)
        if self.first_call_s is None:
            self.first_call_s = time.perf_counter() - t0
            interrupt.check()  # a Ctrl-C held while Numba compiled this kernel
        return [outs[i] for i in self.out_order]

    def arguments(self, args, given=()) -> tuple:
        """(the generated function's arguments for a call with `args`, the result arrays they write into, arrays
        the arguments point into that must stay alive until the call returns)."""
        outs = [None] * len(self.outs)
        if given:
            for j, oi in enumerate(self.given_order):
                outs[j] = given[oi]
        copied = False
        for oi, ii in self.inplace:
            a = args[ii]
            if type(a) is np.ndarray and a.flags.c_contiguous and a.flags.writeable:
                outs[self.out_order[oi]] = a
            elif (oi, ii) in self.aliased:  # cannot be written into: the kernel updates a copy instead
                if not copied:
                    args, copied = list(args), True
                args[ii] = outs[self.out_order[oi]] = np.array(a, order="C")
        for j, (shape, dtype, _) in enumerate(self.outs):
            first = self.share[j]
            outs[j] = outs[first] if first < j else np.empty(shape, dtype) if outs[j] is None else outs[j]
        if self.rows is not None:
            # the table needs 1-D arrays (one Numba type); any 1-D array of the right size will do
            flat = [as_c(args[src]) for src, _ in self.loads] + outs
            flat = [a if a.ndim == 1 else a.reshape(-1) for a in flat]
            arrays = [flat[i] for i in self.rows]  # (returned: alive until the kernel returns)
            try:
                call = [addresses(arrays)]
            except numba.core.errors.TypingError:  # a read-only or unaligned input: another Numba type
                arrays = [a if a.flags.writeable and a.flags.aligned else a.copy() for a in arrays]
                call = [addresses(arrays)]
        else:
            arrays = None
            call = [as_c(args[src]).reshape(shape) for src, shape in self.loads]
            call += [o.reshape(m) for o, (_, _, m) in zip(outs, self.outs)]
        if self.sz is not None:
            call.insert(0, self.sz)
        return call, outs, arrays


def _alias_map(node: Node, parts: list) -> tuple:
    """For render_packed: per member kernel {result j: load l} of memory_plan's in-place pairs (the result
    array written over the load's, same shape), and the set of (output, input) pairs that covers."""
    pairs = dict(node.attrs.get("inplace", ()))
    out_pos = {v.id: i for i, v in enumerate(node.outputs)}
    aliases, aliased = [], set()
    for member, k, in_map in parts:
        alias = {}
        for j, r in enumerate(k.results):
            oi = out_pos[member.outputs[r.array.source].id]
            ii = pairs.get(oi)
            if ii is None or r.mode != "store":
                continue
            loads = [lj for lj, a in enumerate(k.loads) if in_map[a.source] == ii and a.shape == r.array.shape]
            if len(loads) == 1 and loads[0] not in alias.values():
                alias[j] = loads[0]
                aliased.add((oi, ii))
        aliases.append(alias)
    return aliases, aliased


class CpuProgram(Program):
    def _generated(self) -> list:
        return [s for s, *_ in self.plan if isinstance(s, (SegmentStep, KernelStep))]

    def cache_stats(self) -> tuple[int, int]:
        """(generated kernels, how many of them were already in the source cache)."""
        ks = self._generated()
        return len(ks), sum(1 for k in ks if k.hit)

    def shared_kernels(self) -> tuple[int, int]:
        """(generated kernels, how many of them were compiled in this process before this program was made:
        shared with a variant of another batch size)."""
        ks = self._generated()
        return len(ks), sum(1 for k in ks if k.shared)

    def parametric(self) -> tuple[int, int]:
        """(generated kernels taking sizes as arguments, how many size arguments they take in all)."""
        ks = [k for k in self._generated() if k.sz is not None]
        return len(ks), sum(len(k.sz) for k in ks)

    def release(self) -> None:
        """Drop the arenas (the program is no longer run)."""
        self._arenas.clear()

    def describe(self) -> str:
        steps = [s for s, *_ in self.plan]
        segs = [s for s in steps if isinstance(s, SegmentStep)]
        ks = [s for s in steps if isinstance(s, KernelStep)]
        native = len(steps) - len(segs) - len(ks)
        lines = [f"steps: {len(segs)} generated segment functions, {len(ks)} loop kernels, "
                 f"{native} library/NumPy steps (window kernels, BLAS)"]
        comp = [k.first_call_s for k in segs + ks if k.first_call_s is not None]
        hits = sum(1 for k in segs + ks if k.hit)
        lines.append(f"  numba compile/load on first call: {sum(comp) * 1e3:.0f} ms; "
                     f"source cache hits {hits}/{len(segs) + len(ks)}")
        n_par, n_args = self.parametric()
        n_gen, n_shared = self.shared_kernels()
        if n_par or n_shared:
            lines.append(f"  {n_par} of {n_gen} generated kernels take sizes as arguments ({n_args} in all), so other "
                         f"batch sizes run them too; {n_shared} were already compiled for another variant")
        if any(n.op.name == "matmul" or n.fused_kind in (FusedKind.WINDOW, FusedKind.CONTRACTION)
               for n in _all_nodes(self.graph)):
            lines.append(f"  float32 GEMMs: {sgemm_description()}")
        for f in self.fallbacks:
            lines.append(f"  ran with NumPy: {f}")
        return "\n".join(lines)


def _all_nodes(g: Graph):
    for n in g.nodes:
        yield n
        if n.body is not None:
            yield from _all_nodes(n.body)


class SegmentStep:
    """One generated function for a run of nodes: a single dispatch from Python per call. If Numba cannot
    compile it (first call), the run falls back to one step per node, and the reason is kept."""

    def __init__(self, source, blas_threads, fallback, label, fallbacks, uses_threads=False, checks=(),
                 aliases=None, offsets=(), transposed=()):
        # fn, hit, source and sz: as KernelStep's, set when loaded
        self.fn, self.source, self.hit, self.sz, self.blas_threads = None, source, False, None, blas_threads
        self.shared = False
        # inputs passed flat from an element offset on (segment.input_offsets): (position, offset)
        self.offsets = [(i, off) for i, off in enumerate(offsets) if off]
        # inputs passed as their C-contiguous transposes (segment.transposed_inputs)
        self.transposed = [i for i, t in enumerate(transposed) if t]
        self.fallback, self.label, self.fallbacks = fallback, label, fallbacks
        self.aliases = aliases  # {output: inputs it may be a view of} (the runtime's arena relies on it)
        self.first_call_s: float | None = None
        self.uses_threads = uses_threads  # the generated function takes the pool's thread count last
        self.checks = list(checks)  # the source's index checks: number -> (error, message)
        self.reference = None  # () -> a function running its nodes on the reference backend (set by the program)

    def _args(self, args):
        if self.transposed:
            arrays = list(args)
            for i in self.transposed:
                arrays[i] = arrays[i].T
            arrays = [as_c(a) for a in arrays]
        else:
            arrays = [as_c(a) for a in args]
        for i, off in self.offsets:
            arrays[i] = arrays[i].reshape(-1)[off:]
        if self.uses_threads:
            arrays.append(numba.get_num_threads())
        if self.sz is not None:
            arrays.insert(0, self.sz)
        return arrays

    def __call__(self, args):
        try:
            if self.first_call_s is None:
                return self._first_call(args)
            if self.blas_threads:
                blas.set_threads(self.blas_threads)
            if self.offsets or self.transposed:
                return self.fn(*self._args(args))
            if self.sz is not None:  # a size-parametric template (backends/sizes.py): its sizes come first
                if self.uses_threads:
                    return self.fn(self.sz, *[as_c(a) for a in args], numba.get_num_threads())
                return self.fn(self.sz, *[as_c(a) for a in args])
            if self.uses_threads:
                return self.fn(*[as_c(a) for a in args], numba.get_num_threads())
            return self.fn(*[as_c(a) for a in args])
        except IndexCheckFailed as e:  # an index out of range: the error eager code raises, with its value
            k, value = e.args
            raise index_error(value, *self.checks[k]) from None

    def _first_call(self, args):
        t0 = time.perf_counter()
        ensure_sgemm()  # (cached callers register it through their reload hooks too: blas.calls._NeedSgemm)
        try:
            if self.blas_threads:
                blas.set_threads(self.blas_threads)
            out = self.fn(*self._args(args))
        except numba.core.errors.NumbaError as e:
            self.fallbacks.append(f"{self.label}: Numba could not compile it ({str(e).splitlines()[0]})")
            self.fn = _fresh_where_declared(self.fallback(), self.aliases)
            self.uses_threads, self.sz = False, None
            self.offsets = []
            self.transposed = []
            out = self.fn(*args)
        self.first_call_s = time.perf_counter() - t0
        interrupt.check()  # a Ctrl-C held while Numba compiled this segment
        return out


def _fresh_where_declared(run, aliases):
    """`run` (a segment's op-by-op fallback), with each output the generated code would have allocated copied
    when it shares memory with an input: the runtime planned with the generated code's aliasing."""
    if not aliases:
        return run

    def fresh(*args):
        outs = list(run(*args))
        for j, may in aliases.items():
            if not may and any(isinstance(a, np.ndarray) and np.may_share_memory(outs[j], a) for a in args):
                outs[j] = outs[j].copy()
        return outs
    return fresh


def _per_node(nodes, make_step, inputs, outputs):
    """A Python function running `nodes` one step each (the fallback for a segment)."""
    prog = Program(Graph("segment", list(inputs), list(nodes), list(outputs), {}, [None] * len(outputs)),
                   make_step)

    def run(*arrays):
        return prog.run(list(arrays))
    return run


def compile_graph(graph: Graph, dumper=None, timings=None, segments: bool = True, backend=None,
                  sizes: SizeReuse | None = None) -> CpuProgram:
    """The Program for `graph`. With `sizes` (the compiled function's backends/sizes.SizeReuse), kernels are
    size-parametric templates shared with its other batch sizes; without, every size is a literal."""
    threads.configure()  # threading layer and count must be set before the first parallel launch
    t0 = time.perf_counter()
    key = graph_key(graph) if sizes is not None else None
    decide = Decisions(sizes.replay_for(key) if sizes is not None else None)
    fallbacks: list[str] = []
    make_step, units = _build(graph, segments, decide, fallbacks)
    if units is None:
        units = [(make_step(n), n.inputs, n.outputs) for n in graph.nodes]
    steps = [u[0] for u in units]
    if sizes is not None:
        sizes.record(key, decide)
    generated = [s for s in steps if isinstance(s, (KernelStep, SegmentStep))]
    _load_generated(generated, sizes, decide, segments, dumper)
    t_render = time.perf_counter() - t0
    prog = CpuProgram(graph, units=units, backend=backend)
    prog.fallbacks = fallbacks
    prog.updates_in_place = any(getattr(s, "inplace", ()) for s, *_ in prog.plan)
    prog.decisions, prog.segments = list(decide.made), segments  # what background.py rebuilds it from
    if timings is not None:
        timings["render+load"] = t_render
    return prog


def _load_generated(steps: list, sizes, decide, segments: bool, dumper=None) -> None:
    """Load the generated steps' sources (in program order): each as a size-parametric template when `sizes`
    knows one or learns one (from the probe, the same function's graph at another batch size, rendered with
    the same decisions), else as it is."""
    templates = [None] * len(steps)
    preludes = [SEGMENT_PRELUDE if isinstance(s, SegmentStep) else PRELUDE for s in steps]
    if sizes is not None:
        found = []
        for s, prelude in zip(steps, preludes):
            t, got = sizes.find(s.source)
            if t is None and (r := sizes.recalled(s.source, got, prelude)) is not None:
                t, got = r, r.values(got[1])  # learnt by an earlier process for this very rendering
            found.append((t, got))
        twins = None
        if any(t is None for t, _ in found) and sizes.probe is not None:
            other = sizes.probe()
            if other is not None:
                twins = _sources(other, segments, Decisions(decide.made))
                if len(twins) != len(steps):
                    twins = None
        for i, (t, got) in enumerate(found):
            if t is None:
                t = sizes.learn(steps[i].source, got, twins[i] if twins else None)
                if t is not None:
                    remember(steps[i].source, t, preludes[i])
                got = t.values(split_numbers(steps[i].source)[1]) if t is not None else None
            templates[i] = (t, got) if t is not None else None
    for i, step in enumerate(steps):
        prelude = preludes[i]
        attr = "segment" if isinstance(step, SegmentStep) else "kernel"
        if templates[i] is not None and (templates[i][1] is not None or not templates[i][0].n_args):
            t, vals = templates[i]  # (a template whose sizes this source's numbers do not give: the source as it is)
            step.source = t.text
            step.sz = vals if t.n_args else None
        step.fn, step.hit = cache.load(prelude + step.source, attr)
        step.shared = bool(getattr(step.fn, "signatures", None))
        if dumper:
            dumper.kernel(f"{i + 1:02d}_{step.label_for_dump}", prelude + step.source)


def _sources(graph: Graph, segments: bool, decide) -> list:
    """The generated sources `compile_graph` would load for `graph`, in order (nothing is loaded)."""
    make_step, units = _build(graph, segments, decide, [])
    steps = [make_step(n) for n in graph.nodes] if units is None else [u[0] for u in units]
    return [s.source for s in steps if isinstance(s, (KernelStep, SegmentStep))]


def _build(graph: Graph, segments: bool, decide, fallbacks: list):
    """(make_step, units): the steps of `graph` with their sources rendered but not loaded; units is None
    without segments (each node is then a step of make_step's)."""

    def make_step(node: Node, load: bool = False):
        kind = node.fused_kind
        if kind is None or not kind.is_loop:
            step = window_step(node)
            if step is None and kind is not None:
                why = supports(node.pattern, {**node.attrs, "dtype": node.outputs[0].dtype})
                fallbacks.append(f"{node.body.name}: no native kernel for pattern {node.pattern.value}"
                                 + ("" if why is True else f" ({why})"))
            return step or ref_step(node)
        try:
            members = node.body.nodes if kind is FusedKind.MULTI else [node]
            pos = {v.id: i for i, v in enumerate(node.inputs)}
            parts = []
            for t, m in enumerate(members):
                k = lower(m, prefix=f"v{t}_" if kind is FusedKind.MULTI else "v", features=LOOP_FEATURES)
                parts.append((m, k, [pos[v.id] for v in m.inputs]))
            kernels = [k for _, k, _ in parts]
            parallel = [decide(k.numel() >= R.PARALLEL_MIN) for k in kernels]
            rows, aliased = None, set()
            if kind is FusedKind.MULTI and packable(kernels):
                aliases, aliased = _alias_map(node, parts)
                src, rows = render_packed(kernels, "kernel", aliases, parallel)
            else:
                src = render_multi(kernels, "kernel", parallel)
        except LoweringError as e:
            fallbacks.append(f"{node.body.name}: {e}")
            return ref_step(node)
        step = KernelStep(node, parts, src, rows, aliased)
        step.label_for_dump = node.body.name
        if load:  # a segment's op-by-op fallback, built after the program: loaded as it is
            _load_generated([step], None, None, False)
        return step

    if not segments:
        return make_step, None
    return make_step, _segment_units(graph, make_step, fallbacks, decide)


def _is_native(n: Node, decide=lambda choice: choice) -> bool:
    """Nodes that get a step of their own rather than joining a segment: window kernels (their library),
    parallel loop kernels and the multi-tensor optimizer kernel (separately cached functions: inlining
    them made one segment of LeNet take 10x longer to compile). matmul joins segments as np.dot."""
    if n.fused_kind is FusedKind.MULTI:
        # its own step so it can write state in place (memory_plan), which a segment cannot decide per call;
        # for tiny models the extra dispatch costs more than fresh allocations save
        size = sum(_space_numel(m) for m in n.body.nodes)
        return decide(size >= R.PARALLEL_MIN or (bool(n.attrs.get("inplace")) and size >= INPLACE_MIN))
    if n.fused_kind in (FusedKind.ELEMENTWISE, FusedKind.REDUCE):
        return decide(_space_numel(n) >= R.PARALLEL_MIN)
    return (n.body is not None or n.op.name != "matmul") and window_step(n) is not None


def _space_numel(n: Node) -> int:
    for m in n.body.nodes:
        if m.op.name in ("sum", "amax"):
            return m.inputs[0].type.numel
        if m.op.name not in ("full", "reshape", "expand"):
            return m.outputs[0].type.numel
    return 0


def _segment_units(graph, make_step, fallbacks, decide) -> list:
    units = []
    parts = split_segments(graph, lambda n: _is_native(n, decide))
    reads_after: list[set] = [set() for _ in parts]
    seen: set = set()
    for i in range(len(parts) - 1, -1, -1):
        reads_after[i] = set(seen)
        kind, item = parts[i]
        for n in (item if kind == "segment" else [item]):
            seen.update(v.id for v in n.inputs)
    graph_outputs = {v.id for v in graph.outputs}
    producers = {v.id: n for n in graph.nodes for v in n.outputs}
    count = 0
    for i, (kind, item) in enumerate(parts):
        if kind == "node":
            units.append((make_step(item), item.inputs, item.outputs))
            continue
        ins, outs = segment_io(item, reads_after[i], graph_outputs)
        if not outs and not any(n.body is None and n.op.name == "check_index" for n in item):
            continue
        offsets = input_offsets(item, ins)
        transposed = transposed_inputs(item, ins, producers)
        seg = SegmentSource(item, ins, outs, R.PARALLEL_MIN, render_multi, _render_block, R.FASTMATH,
                            blas.SPLIT_GEMM_FLOPS if threads.get_num_threads() > 1 else float("inf"), decide,
                            offsets, transposed)
        count += 1
        label = f"segment {count} ({len(item)} nodes)"
        # a segment without GEMMs leaves BLAS alone (0): toggling OpenBLAS between 1 and 2 threads costs
        # ~20 us a switch, and the MLP step switched 4 times. GEMMs split over the pool run 1-thread BLAS.
        nthreads = (0 if not seg.max_gemm_flops else 1 if seg.has_parallel or seg.uses_threads
                    else blas.threads_for(seg.max_gemm_flops))
        step = SegmentStep(seg.source(), nthreads,
                           lambda item=item, ins=ins, outs=outs: _per_node(
                               item, lambda node: make_step(node, load=True), ins, outs),
                           label, fallbacks, seg.uses_threads, seg.checks, seg.aliases, offsets, transposed)
        step.label_for_dump = "segment"
        # its nodes on the reference backend (ahead.py's dry run: the values, not the kernels)
        step.reference = lambda item=item, ins=ins, outs=outs: _per_node(item, ref_step, ins, outs)
        units.append((step, ins, outs))
    return units
