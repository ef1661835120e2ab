"""overlap_collectives: each all_reduce becomes all_reduce_start + all_reduce_wait. The start moves up to the
earliest point where its input can be complete, pulling forward the nodes that compute it (a gradient bucket's
gradients and their concatenation: the engine may have scheduled a fully connected layer's weight gradient after
the convolutions' backward); the wait, and every node that depends on an all-reduce's result (unpacking the bucket,
the optimizer update), move down behind all the nodes that do not. The kernels in between run while the message is
in flight: DistributedDataParallel's gradient buckets overlap the rest of backward.

Keeps true: values and outputs are unchanged (the pair computes what all_reduce did); nodes only move to places
where their inputs are defined, and the ones not pulled up or pushed down keep their order; a start's value is read
only by its wait; collectives start in the order they were traced (a start moves up no further than the collective
before it), the same on every rank, as MPI requires. What runs between each start and its wait is recorded in
`graph.notes`.
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
            # the wait reads the sent array too: it must stay alive and unwritten while the message is in flight
            out.append(Node(OPS["all_reduce_wait"], (h, n.inputs[0]), {}, n.outputs))
        else:
            out.append(n)
    return out


def overlap_collectives(g: Graph) -> Graph:
    if not any(n.body is None and n.op.name == "all_reduce" for n in g.nodes):
        return g
    nodes = _split(g.nodes)
    producer = {v.id: i for i, n in enumerate(nodes) for v in n.outputs}

    def is_collective(n):
        return n.body is None and n.op.kind is Kind.COLLECTIVE

    # moved down: the waits and every node depending on an all-reduce's result (in their order, after the rest)
    late: set[int] = set()
    for i, n in enumerate(nodes):
        if (n.body is None and n.op.name == "all_reduce_wait") or any(producer.get(v.id) in late for v in n.inputs):
            late.add(i)
    # collectives start in their traced order: each after the one before it
    before: dict[int, int] = {}
    prev = None
    for i, n in enumerate(nodes):
        if is_collective(n) and n.op.name != "all_reduce_wait":
            if prev is not None:
                before[i] = prev
            prev = i
    # each start's ancestors: the pure ones it pulls forward, and the collectives (or late nodes) it must wait for
    starts = [i for i, n in enumerate(nodes) if n.body is None and n.op.name == "all_reduce_start" and i not in late]
    cone: dict[int, list] = {}
    blockers: dict[int, set] = {}
    for s in starts:
        seen, stack, block = set(), [s], ({before[s]} if s in before else set())
        while stack:
            for v in nodes[stack.pop()].inputs:
                j = producer.get(v.id)
                if j is None or j in seen:
                    continue
                seen.add(j)
                if is_collective(nodes[j]) or j in late:
                    block.add(j)  # not moved: the start waits until it is placed
                else:
                    stack.append(j)
        cone[s], blockers[s] = sorted(seen - block), block
    order: list[int] = []
    done: set[int] = set()
    avail = {v.id for v in g.inputs}

    def emit(i):
        order.append(i)
        done.add(i)
        avail.update(v.id for v in nodes[i].outputs)

    def place(i):
        """Emit node i (unless done), after the nodes defining its inputs and the collective before it."""
        if i in done:
            return
        for v in nodes[i].inputs:
            if v.id not in avail:
                place(producer[v.id])
        if i in before:
            place(before[i])
        emit(i)

    pending = list(starts)

    def pull():
        """Start every all-reduce, in order, whose inputs can be computed now (their pure ancestors come along)."""
        while pending and blockers[pending[0]] <= done:
            s = pending.pop(0)
            for j in cone[s]:
                if j not in done:
                    emit(j)
            emit(s)

    pull()
    for i in range(len(nodes)):
        if i in done or i in late or i in pending:
            continue
        place(i)
        pull()
    for i in range(len(nodes)):  # what was held back, in order (a wait nothing reads still runs)
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
