"""memory_plan: value lifetimes over the node order -> which buffers can be shared, the planned peak, and
which state updates can be written in place.

Keeps true: nodes and values are unchanged; it annotates. A fused 'multi' (optimizer) node gets
`attrs['inplace']` = ((output index, input index), ...) for each state tensor whose new value is
computed elementwise from its old value by the one member kernel that reads it and nothing after reads
the old value; the backend then writes the update into the old buffer -- unless a node that can still stop
the program (an index check) comes after it: a failed call must leave the state as it was. `graph.notes`
reports the planned peak bytes (with reuse) against the bytes a step allocates when every value gets fresh
memory (eager).
"""

from __future__ import annotations

from ..ir import FusedKind, Graph, Node

RAISES = ("check_index", "gather", "scatter_add")  # nodes that raise on an index out of range


def _bytes(v) -> int:
    return v.type.numel * v.type.dtype.itemsize


def plan_buffers(g: Graph) -> tuple[int, int, dict]:
    """(planned peak bytes, bytes without reuse, value id -> buffer number) for node outputs that are not
    graph outputs; buffers are reused best-fit once the last reader of their value has run."""
    last: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last[v.id] = i
    outputs = {v.id for v in g.outputs}
    free: list[tuple[int, int]] = []  # (size, buffer)
    sizes: list[int] = []
    assign: dict[int, int] = {}
    live = total = peak = 0
    releases: dict[int, list] = {}
    for i, n in enumerate(g.nodes):
        for v in n.outputs:
            size = _bytes(v)
            total += size
            if v.id in outputs or v.id not in last:
                continue
            fit = min((f for f in free if f[0] >= size), default=None)
            if fit is not None:
                free.remove(fit)
                buf = fit[1]
            else:
                buf = len(sizes)
                sizes.append(size)
            assign[v.id] = buf
            releases.setdefault(last[v.id], []).append(buf)
        live = sum(sizes) - sum(s for s, _ in free)
        peak = max(peak, live)
        for buf in releases.get(i, ()):  # available to nodes after this one
            free.append((sizes[buf], buf))
    return peak, total, assign


def _inplace_pairs(g: Graph, n: Node, later_reads: set) -> tuple:
    meta = {v.id: g.input_meta.get(v.id, {}).get("state") for v in g.inputs}
    written = {v.id: name for v, name in zip(g.outputs, g.output_meta) if name is not None}
    returned = {v.id for v, name in zip(g.outputs, g.output_meta) if name is None}
    pairs = []
    for oi, out in enumerate(n.outputs):
        name = written.get(out.id)
        if name is None:
            continue
        for ii, inp in enumerate(n.inputs):
            if meta.get(inp.id) != name or inp.id in later_reads or inp.id in returned or inp.type != out.type:
                continue
            readers = [m for m in n.body.nodes if any(v.id == inp.id for v in m.inputs)]
            if len(readers) != 1 or not any(v.id == out.id for v in readers[0].outputs):
                continue
            if not _same_index_read(readers[0], inp, out):
                continue
            pairs.append((oi, ii))
    return tuple(pairs)


def _same_index_read(member: Node, inp, out) -> bool:
    """The member kernel reads `inp` only at the index it writes `out` (no broadcast, no view)."""
    for m in member.body.nodes:
        if any(v.id == inp.id for v in m.inputs):
            if m.op.name in ("reshape", "expand", "sum", "amax") or m.outputs[0].type.shape != out.type.shape:
                return False
    return True


def memory_plan(g: Graph) -> Graph:
    peak, total, assign = plan_buffers(g)
    nodes = []
    inplace_count = 0
    reads_after: set = set()
    later: list[set] = []
    for n in reversed(g.nodes):
        later.append(set(reads_after))
        reads_after.update(v.id for v in n.inputs)
    later.reverse()
    last_raise = max((i for i, n in enumerate(g.nodes) if n.body is None and n.op.name in RAISES), default=-1)
    notes = []
    for i, n in enumerate(g.nodes):
        if n.fused_kind is FusedKind.MULTI:
            pairs = _inplace_pairs(g, n, later[i])
            if pairs and i < last_raise:
                notes.append(f"memory_plan: no in-place state updates for node {i}: {g.nodes[last_raise].op.name} "
                             f"(node {last_raise}) can still stop the call after it, and a failed call must leave "
                             f"the state unchanged")
                pairs = ()
            if pairs:
                inplace_count += len(pairs)
                n = Node(n.op, n.inputs, {**n.attrs, "inplace": pairs}, n.outputs, n.body)
        nodes.append(n)
    out = g.replace(nodes=nodes)
    out.notes = [f"memory_plan: intermediates need {peak / 1e6:.2f} MB at peak with buffer reuse "
                 f"({len(set(assign.values()))} buffers for {len(assign)} values) vs {total / 1e6:.2f} MB "
                 f"allocated per step without reuse (eager); {inplace_count} state tensors updated in place"] + notes
    return out
