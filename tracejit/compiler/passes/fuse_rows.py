"""fuse_rows: loop kernels that read a reduction over the trailing dims (softmax's max and sum, layer norm's
mean and variance, their backward's row sums) join the kernel that computes it: one row kernel per chain.

fuse_elementwise stops at a reduction's result (it is complete only after its kernel); for a reduction over each
row's trailing dims the result is complete after one pass over that row, so a kernel can loop over a row again
and go on (backends.kernel: "rows"). This pass merges, in order, each fused loop group with a later group that
reads its per-row results, when every op of the later group iterates over the same space or over one value per
row, and every reduction read inside is over the same trailing dims. Reductions over other dims (a layer norm's
weight gradient) may join as results. The merged node carries `rows` (the number of leading row dims).

Keeps true: the merged group is placed at the later group's position, and only when no node in between reads a
value of the earlier one (order stays topological); values read outside stay outputs.
"""

from __future__ import annotations

from ..ir import FusedKind, Graph, Node, fused
from . import context

REDUCTIONS = ("sum", "amax")
VIEWS = ("reshape", "expand", "full")


class _Row:
    """A (possibly merged) group: its body nodes, inputs, the space and row rank, and its outputs so far."""

    def __init__(self, node: Node, pos: int):
        self.nodes = list(node.body.nodes)
        self.inputs = list(node.body.inputs)
        self.outputs = list(node.outputs)
        self.pos = pos
        self.space, self.rows = _space(self.nodes), _rank(self.nodes, {v.id for m in self.nodes for v in m.inputs})
        self.count = 1


def _space(nodes) -> tuple | None:
    for n in nodes:
        if n.op.name in REDUCTIONS:
            return tuple(n.inputs[0].shape)
    for n in nodes:
        if n.op.kind.name == "ELEMENTWISE" and n.op.name != "full":
            return tuple(n.outputs[0].shape)
    return None


def _rank(nodes, read: set) -> int | None | bool:
    """The row rank the body's read reductions imply: None (none read), or False (inconsistent)."""
    rows = None
    for n in nodes:
        if n.op.name in REDUCTIONS and n.outputs[0].id in read:
            axes = tuple(sorted(n.attrs["axes"]))
            nd = len(n.inputs[0].shape)
            r = axes[0] if axes else nd
            if axes != tuple(range(r, nd)) or (rows is not None and rows != r):
                return False
            rows = r
    return rows


def _fits(nodes, space: tuple, rows: int) -> bool:
    """Every op of `nodes` iterates over `space` or over one value per row; every reduction reads `space`."""
    row_nk = space[:rows]
    row_kd = row_nk + (1,) * (len(space) - rows)
    # values with one value per row (the kernel keeps them as row scalars): a reduction may not read them
    defined = {v.id for n in nodes for v in n.outputs}
    def row_shaped(v):
        return len(v.shape) == len(space) and all(d == 1 for d in v.shape[rows:])

    per_row = {v.id for n in nodes for v in n.inputs if v.id not in defined and row_shaped(v)}
    read = {v.id for n in nodes for v in n.inputs}

    def lands_on_rows(v, shape) -> bool:
        # a per-row value read by an op over `shape`: NumPy's right-aligned broadcast must put it on its rows
        # (x.sum(-1) of a [b, n, n] x added to x is aligned with the last dims: not a row value there)
        if tuple(v.shape) == tuple(shape) or all(d == 1 for d in v.shape):  # (one value: the same everywhere)
            return True
        pad = (1,) * (len(shape) - len(v.shape)) + tuple(v.shape)
        return pad == (row_kd if len(shape) == len(space) else row_nk)

    for n in nodes:
        name = n.op.name
        out = n.outputs[0]
        if name in REDUCTIONS:
            if tuple(n.inputs[0].shape) != space or n.inputs[0].id in per_row:
                return False
            if out.id in read:
                per_row.add(out.id)
        elif name == "full":
            per_row.add(out.id)
        elif name in ("reshape", "expand"):  # (a view of an input is loaded in the space's rank)
            src = n.inputs[0]
            if src.id in per_row and name == "expand" and not lands_on_rows(src, tuple(out.shape)):
                return False
            if src.id in per_row or (src.id not in defined and row_shaped(out)):
                per_row.add(out.id)
        elif name in VIEWS or name in ("slice", "cat", "permute"):
            continue
        elif n.op.kind.name == "ELEMENTWISE":
            if tuple(out.shape) not in (space, row_nk, row_kd):
                return False
            if any(v.id in per_row and not lands_on_rows(v, tuple(out.shape)) for v in n.inputs):
                return False
            if tuple(out.shape) != space or (n.inputs and all(v.id in per_row for v in n.inputs)):
                per_row.add(out.id)
        else:
            return False
    return True


def fuse_rows(g: Graph) -> Graph:
    if not context.has_loop_feature("rows"):
        return g  # the target's loop kernels do not loop over a row twice
    nodes = g.nodes
    out_ids = {v.id for v in g.outputs}
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            consumers.setdefault(v.id, []).append(i)
    loop = {i for i, n in enumerate(nodes) if n.fused_kind in (FusedKind.ELEMENTWISE, FusedKind.REDUCE)}
    groups: dict[int, _Row] = {i: _Row(nodes[i], i) for i in loop}
    merged_into: dict[int, int] = {}  # node index -> index of the group that absorbed it
    produced_by: dict[int, int] = {v.id: i for i in loop for v in nodes[i].outputs}
    notes = []

    def home(i):
        while i in merged_into:
            i = merged_into[i]
        return i

    for b in sorted(loop):
        nb = nodes[b]
        sources = sorted({home(produced_by[v.id]) for v in nb.inputs if v.id in produced_by} - {b})
        for a in reversed(sources):
            A, B = groups[a], groups[b]
            a_vals = {v.id for v in A.outputs}
            # values of A that B reads: at least one must be per-row (the reason to merge)
            read = [v for v in nb.inputs if v.id in a_vals]
            if A.space is None or not read:
                continue
            body = A.nodes + [m for m in B.nodes if not any(m is x for x in A.nodes)]
            body_read = {v.id for m in body for v in m.inputs}
            rows = _rank(body, body_read)
            if rows is None or rows is False or not _fits(body, A.space, rows):
                continue
            if not any(tuple(v.shape) != A.space for v in read):
                continue  # B only reads A's full-space values: fuse_elementwise's decision stands
            # order: no node between A and B (other than A's own members) may read A's values
            between = [c for v in A.outputs for c in consumers.get(v.id, ()) if A.pos < c < b and home(c) != a]
            if between:
                notes.append(f"not fused: row kernel at node {A.pos} with node {b}: node {between[0]} reads it first")
                continue
            _merge(A, B, body)
            merged_into[a] = b
            groups[b] = A
            A.pos = b
            break
    if not merged_into:
        return g
    new_nodes = []
    done = set()
    for i, n in enumerate(nodes):
        if i in merged_into:
            continue
        if i in groups and groups[i].count > 1 and i not in done:
            new_nodes.append(_build(groups[i], consumers, out_ids, nodes, home, i))
            done.add(i)
            notes.append(f"fuse_rows: {groups[i].count} loop kernels into one row kernel over {list(groups[i].space)}")
            continue
        new_nodes.append(n)
    result = g.replace(nodes=new_nodes)
    result.notes = notes
    return result


def _merge(A: _Row, B: _Row, body: list) -> None:
    defined = {v.id for m in body for v in m.outputs}
    ins, seen = [], set()
    for v in A.inputs + B.inputs:
        if v.id not in defined and v.id not in seen:
            seen.add(v.id)
            ins.append(v)
    A.nodes, A.inputs = body, ins
    A.outputs = A.outputs + [v for v in B.outputs if v not in A.outputs]
    A.rows = _rank(body, {v.id for m in body for v in m.inputs})
    A.count += B.count


def _build(grp: _Row, consumers, out_ids, nodes, home, at: int) -> Node:
    outputs = [v for v in grp.outputs
               if v.id in out_ids or any(home(c) != at for c in consumers.get(v.id, ()))]
    kind = FusedKind.REDUCE if any(m.op.name in REDUCTIONS for m in grp.nodes) else FusedKind.ELEMENTWISE
    body = Graph(f"rows_{at}", list(grp.inputs), list(grp.nodes), outputs, {}, [None] * len(outputs))
    return fused(kind, grp.inputs, outputs, body, rows=grp.rows)
