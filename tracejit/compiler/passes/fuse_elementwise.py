"""fuse_elementwise: groups elementwise ops over one iteration shape (with the reductions they feed)
into `fused` nodes, each run as one kernel.

Keeps true: a group is placed at the position of its last member and is only formed when no value it
produces is needed by an outside node before that position (so order stays topological); constants
(`full`) and reshape/expand views of group inputs are copied into the bodies that read them; every value
a group produces that something outside reads becomes an output of the fused node; no group spans a collective
node (the ops before one stay before it, those after it after it). Why neighbours were not fused is recorded in
`graph.notes`.
"""

from __future__ import annotations

from ...ops import Kind
from ..ir import FusedKind, Graph, Node, fused

REDUCTIONS = ("sum", "amax")
VIEWS = ("reshape", "expand")


def _is_ew(n: Node) -> bool:
    return n.body is None and n.op.kind is Kind.ELEMENTWISE and n.op.name != "full"


def _is_red(n: Node) -> bool:
    return n.body is None and n.op.name in REDUCTIONS


def _space(n: Node) -> tuple:
    """The iteration shape of a member: its output shape, or a reduction's input shape."""
    return n.inputs[0].shape if _is_red(n) else n.outputs[0].shape


class _Group:
    __slots__ = ("space", "members", "reductions", "last", "epoch")

    def __init__(self, space, epoch=0):
        self.space = space
        self.epoch = epoch  # collectives before its first member: a group never spans one
        self.members: list[int] = []
        self.reductions: set[int] = set()  # value ids produced by reductions (not readable inside)
        self.last = -1


def fuse_elementwise(g: Graph) -> Graph:
    nodes = g.nodes
    producer: dict[int, int] = {}
    for i, n in enumerate(nodes):
        for v in n.outputs:
            producer[v.id] = i
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            consumers.setdefault(v.id, []).append(i)
    out_ids = {v.id for v in g.outputs}
    group_of: dict[int, _Group] = {}
    groups: list[_Group] = []
    notes: list[str] = []

    def legal(members: set[int], at: int) -> str | None:
        """None if a group of `members` can be emitted at position `at`, else why not."""
        for m in members:
            for v in nodes[m].outputs:
                for c in consumers.get(v.id, ()):
                    if c not in members and c < at:
                        return f"{nodes[m].op.name} (node {m}) is needed by {nodes[c].op.name} (node {c}) first"
        return None

    epoch = 0
    for i, n in enumerate(nodes):
        if n.body is None and n.op.kind is Kind.COLLECTIVE:
            epoch += 1
            continue
        if not (_is_ew(n) or _is_red(n)):
            continue
        space = _space(n)
        candidates: list[_Group] = []
        for v in n.inputs:
            p = producer.get(v.id)
            if p is None or p not in group_of:
                continue
            grp = group_of[p]
            if grp in candidates:
                continue
            if grp.epoch != epoch:
                notes.append(f"not fused: {nodes[p].op.name} (node {p}) -> {n.op.name} (node {i}): a collective "
                             f"runs between them")
                continue
            if grp.space != space:
                notes.append(f"not fused: {nodes[p].op.name} (node {p}) -> {n.op.name} (node {i}): "
                             f"iteration shapes {list(grp.space)} and {list(space)} differ")
                continue
            if v.id in grp.reductions:
                notes.append(f"not fused: {nodes[p].op.name} (node {p}) -> {n.op.name} (node {i}): "
                             f"a reduction's result is only complete after its kernel")
                continue
            candidates.append(grp)
        ins = {v.id for v in n.inputs}
        for grp in candidates:
            if ins & grp.reductions:
                notes.append(f"not fused: into {n.op.name} (node {i}): it reads a reduction of that kernel, "
                             f"whose result is only complete after the kernel")
        candidates = [grp for grp in candidates if not (ins & grp.reductions)]
        merged = set(i for grp in candidates for i in grp.members) | {i}
        why = legal(merged, i) if candidates else None
        if why is not None:
            notes.append(f"not fused: into {n.op.name} (node {i}): {why}")
            # fall back to the single candidate that is legal, if any
            candidates = [grp for grp in candidates if legal(set(grp.members) | {i}, i) is None][:1]
        if not candidates:
            # sibling fusion: join the latest group over the same space that reads a common input
            for grp in reversed(groups):
                if grp.space == space and grp.epoch == epoch and grp.members and not (ins & grp.reductions) and \
                        legal(set(grp.members) | {i}, i) is None and \
                        any(v.id in ins for m in grp.members for v in nodes[m].inputs):
                    candidates = [grp]
                    break
        if candidates:
            target = candidates[0]
            for other in candidates[1:]:
                target.members.extend(other.members)
                target.reductions |= other.reductions
                for m in other.members:
                    group_of[m] = target
                groups.remove(other)
        else:
            target = _Group(space, epoch)
            groups.append(target)
        target.members.append(i)
        target.last = i
        group_of[i] = target
        if _is_red(n):
            target.reductions.add(n.outputs[0].id)

    # emit: each group at the position of its last member
    emit_at = {grp.last: grp for grp in groups}
    new_nodes = []
    for i, n in enumerate(nodes):
        if i in group_of:
            grp = emit_at.get(i)
            if grp is not None:
                new_nodes.append(_build(grp, nodes, producer, consumers, out_ids))
            continue
        new_nodes.append(n)
    result = g.replace(nodes=new_nodes)
    result.notes = notes
    return result


def _build(grp: _Group, nodes, producer, consumers, out_ids) -> Node:
    members = sorted(set(grp.members))
    mset = set(members)
    body_nodes: list[Node] = []
    body_inputs: list = []
    seen_inputs: set[int] = set()
    copied: set[int] = set()

    def pull(v):
        """Make `v` available in the body: a member's output, a copied constant/view, or a body input."""
        p = producer.get(v.id)
        if p is not None and p in mset:
            return
        if p is not None and nodes[p].body is None and (nodes[p].op.name == "full" or (
                nodes[p].op.name in VIEWS and _view_ok(nodes, producer, p, mset))):
            if p not in copied:
                for u in nodes[p].inputs:
                    pull(u)
                copied.add(p)
                body_nodes.append(nodes[p])
            return
        if v.id not in seen_inputs:
            seen_inputs.add(v.id)
            body_inputs.append(v)

    for m in members:
        for v in nodes[m].inputs:
            pull(v)
        body_nodes.append(nodes[m])
    outputs = []
    for m in members:
        for v in nodes[m].outputs:
            if v.id in out_ids or any(c not in mset for c in consumers.get(v.id, ())):
                outputs.append(v)
    kind = FusedKind.REDUCE if any(_is_red(nodes[m]) for m in members) else FusedKind.ELEMENTWISE
    body = Graph(f"{kind.value}_{members[0]}", body_inputs, body_nodes, outputs, {}, [None] * len(outputs))
    return fused(kind, body_inputs, outputs, body)


def _view_ok(nodes, producer, p, mset) -> bool:
    """A reshape/expand chain rooted at a non-member (or a constant) can be re-done inside a kernel;
    one rooted at a member's value cannot (a kernel computes each value at one index only)."""
    q = producer.get(nodes[p].inputs[0].id) if nodes[p].inputs else None
    if q is None:
        return True
    if q in mset:
        return False
    src = nodes[q]
    if src.body is None and src.op.name in VIEWS:
        return _view_ok(nodes, producer, q, mset)
    return True
