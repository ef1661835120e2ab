"""overlap_collectives: each all_reduce becomes all_reduce_start + all_reduce_wait. The start (with the nodes that
only feed it, e.g. the concatenation of a gradient bucket) moves up to where its input is complete; the wait, and
every node that depends on an all-reduce's result (unpacking the bucket, the optimizer update), move down behind
all the nodes that do not. The kernels in between run while the message is in flight: DistributedDataParallel's
gradient buckets overlap the rest of backward.

Keeps true: values and outputs are unchanged (the pair computes what all_reduce did); the nodes that do not move
keep their order, and so do the ones moved down; a start's value is read only by its wait; collectives start in the
order they were traced (a start moves up no further than the collective before it), the same on every rank, as MPI
requires.
What runs between each start and its wait is recorded in `graph.notes`.
"""

from __future__ import annotations

from ...ops import OPS, Kind
from ..ir import Graph, Node, Value, fused_label


def _label(n: Node) -> str:
    return fused_label(n) if n.body is not None else n.op.name


def _split(nodes) -> list:
    out = []
    for n in nodes:
        if n.body is None and n.op.name == "all_reduce":
            h = Value(n.outputs[0].type)
            out.append(Node(OPS["all_reduce_start"], n.inputs, dict(n.attrs), (h,)))
            out.append(Node(OPS["all_reduce_wait"], (h,), {}, n.outputs))
        else:
            out.append(n)
    return out


def overlap_collectives(g: Graph) -> Graph:
    if not any(n.body is None and n.op.name == "all_reduce" for n in g.nodes):
        return g
    nodes = _split(g.nodes)
    producer = {v.id: i for i, n in enumerate(nodes) for v in n.outputs}
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            consumers.setdefault(v.id, []).append(i)
    out_ids = {v.id for v in g.outputs}
    # moved up: the starts, and nodes whose every reader moves up with them (they only feed a start)
    hoist: set[int] = set()
    for i in range(len(nodes) - 1, -1, -1):
        n = nodes[i]
        if n.body is None and n.op.name == "all_reduce_start":
            hoist.add(i)
            continue
        if (n.body is None and (n.op.kind is Kind.COLLECTIVE or n.op.name == "check_index")) or \
                any(v.id in out_ids for v in n.outputs):
            continue
        readers = [c for v in n.outputs for c in consumers.get(v.id, ())]
        if readers and all(c in hoist for c in readers):
            hoist.add(i)
    # moved down: the waits and every node depending on an all-reduce's result (in their order, after the rest)
    late: set[int] = set()
    for i, n in enumerate(nodes):
        if i in hoist:
            continue
        if (n.body is None and n.op.name == "all_reduce_wait") or any(producer.get(v.id) in late for v in n.inputs):
            late.add(i)
    # collectives start in their traced order (a start moves up only behind the collective before it)
    before: dict[int, int] = {}
    last = None
    for i, n in enumerate(nodes):
        if n.body is None and n.op.kind is Kind.COLLECTIVE and n.op.name != "all_reduce_wait":
            if last is not None:
                before[i] = last
            last = i
    avail = {v.id for v in g.inputs}
    order: list[int] = []
    done: set[int] = set()
    pending = sorted(hoist)

    def ready(i):
        return all(v.id in avail for v in nodes[i].inputs) and (i not in before or before[i] in done)

    def flush():
        nonlocal pending
        moved = True
        while moved:
            moved = False
            for i in pending:
                if i not in done and ready(i):
                    order.append(i)
                    done.add(i)
                    avail.update(v.id for v in nodes[i].outputs)
                    moved = True
            pending = [i for i in pending if i not in done]

    def place(i):
        """Emit node i (unless done), after the nodes defining its inputs and the collective before it."""
        if i in done:
            return
        for v in nodes[i].inputs:
            if v.id not in avail:
                place(producer[v.id])
        if i in before:
            place(before[i])
        order.append(i)
        done.add(i)
        avail.update(v.id for v in nodes[i].outputs)
        flush()

    flush()
    for i in range(len(nodes)):
        if i not in hoist and i not in late:
            place(i)
    for i in sorted(hoist | late):  # what was held back, in order (a wait nothing reads still runs)
        place(i)
    new = [nodes[i] for i in order]
    result = g.replace(nodes=new)
    result.notes = _notes(new)
    return result


def _notes(nodes) -> list[str]:
    pos = {v.id: k for k, n in enumerate(nodes) for v in n.outputs}
    notes = []
    for k, n in enumerate(nodes):
        if n.body is not None or n.op.name != "all_reduce_wait":
            continue
        s = pos[n.inputs[0].id]
        start = nodes[s]
        x = start.inputs[0]
        between = [_label(m) for m in nodes[s + 1:k]
                   if not (m.body is None and m.op.kind in (Kind.MOVEMENT,) and m.op.name != "cat")]
        kinds: dict[str, int] = {}
        for lab in between:
            kinds[lab] = kinds.get(lab, 0) + 1
        what = ", ".join(f"{c} {lab}" for lab, c in kinds.items()) or "nothing"
        after = _label(nodes[s - 1]) if s else "the start"
        notes.append(f"overlap_collectives: all_reduce of {x.type} ({x.type.numel * x.type.dtype.itemsize / 1e3:.1f} "
                     f"KB, {start.attrs['reduce']}) starts at node {s} (after {after}) and is waited for at node {k}; "
                     f"in flight meanwhile: {what}")
    return notes
