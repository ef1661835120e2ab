"""fuse_window: conv2d (+ bias) (+ relu) (+ max_pool2d) forward as one kernel that also writes the pooling
argmax (uint8), the matching backward (relu mask + unpooling from the argmax) as one kernel, the
weight gradient fused with the bias gradient, and a linear layer (2-D matmul + bias (+ relu)) as one GEMM with
its bias and activation applied as an epilogue, on each block of the output while it is still in cache.

Keeps true: the rewritten forward no longer materializes the conv/relu activations — backward reads the
pooled output and the argmax instead, which is exact because the gradient of max-pool reaches only the
argmax position, where relu's output equals the pooled value. Patterns that do not match exactly (an
activation read elsewhere, ...) are left alone and the reason is noted; so are patterns the target backend does not
run natively (context.supports: e.g. the CPU kernels take square pools without padding), with its reason.
"""

from __future__ import annotations

from ... import dtypes as D
from ...ops import OPS, Kind, TensorType
from ..ir import Graph, Node, Pattern, Value, fused
from .context import supports, target_name

VIEWS = ("reshape", "expand")


class _Index:
    def __init__(self, g: Graph):
        self.nodes = g.nodes
        self.producer = {v.id: i for i, n in enumerate(g.nodes) for v in n.outputs}
        self.consumers: dict[int, list[int]] = {}
        for i, n in enumerate(g.nodes):
            for v in n.inputs:
                self.consumers.setdefault(v.id, []).append(i)
        self.outputs = {v.id for v in g.outputs}

    def prod(self, v):
        i = self.producer.get(v.id)
        return (i, self.nodes[i]) if i is not None else (None, None)

    def uses(self, v) -> list[int]:
        return self.consumers.get(v.id, [])

    def only_use(self, v, i) -> bool:
        return v.id not in self.outputs and self.uses(v) == [i]


def _const_value(ix, v):
    _, n = ix.prod(v)
    return n.attrs["value"] if n is not None and n.op.name == "full" else None


def _bias_root(ix, v, channels):
    """Follow reshape/expand from a [1, O, 1, 1]-broadcast operand to a [O] vector; (root, chain) or None."""
    chain = []
    while True:
        i, n = ix.prod(v)
        if n is None or n.body is not None or n.op.name not in VIEWS:
            break
        chain.append(i)
        v = n.inputs[0]
    if v.shape == (channels,):
        return v, chain
    return None


def _refused(pattern: Pattern, attrs: dict, dtype) -> str | None:
    """None when the target runs `pattern` natively, else the note's reason. The backend sees the attrs the node
    would carry plus the dtype it computes in."""
    answer = supports(pattern, {**attrs, "dtype": dtype})
    if answer is True:
        return None
    return f"the {target_name()} backend does not run {pattern.value} natively: {answer}"


def _pool_attrs(a: dict) -> dict:
    """A max_pool2d node's attrs as a conv_pool / unpool node carries them (in full, square or not)."""
    return {"pool": tuple(a["kernel"]), "pool_stride": tuple(a["stride"]), "pool_padding": tuple(a["padding"]),
            "pool_dilation": tuple(a.get("dilation", (1, 1))), "ceil_mode": bool(a.get("ceil_mode", False))}


def fuse_window(g: Graph) -> Graph:
    ix = _Index(g)
    replace: dict[int, Node | None] = {}  # node index -> new node (None = delete)
    notes: list[str] = []
    for mi, m in enumerate(g.nodes):
        if m.body is not None or m.op.name != "max_pool2d" or mi in replace:
            continue
        why = _match_forward(ix, mi, m, replace, notes)
        if why:
            notes.append(f"not fused: max_pool2d (node {mi}): {why}")
    _fuse_weight_bias(ix, replace, notes)
    _fuse_conv_backward(ix, replace, notes)
    _fuse_linear(ix, replace, notes)
    spanning = _spans_collective(g, replace)
    if spanning:
        notes.append(f"fuse_window: nothing fused: {spanning}")
        replace = {}
    nodes = []
    for i, n in enumerate(g.nodes):
        if i in replace:
            if replace[i] is not None:
                nodes.append(replace[i])
        else:
            nodes.append(n)
    out = g.replace(nodes=nodes)
    out.notes = notes
    return out


def _spans_collective(g: Graph, replace: dict) -> str | None:
    """Why a group would move an op across a collective (its members lie on both sides of one), or None. Then
    nothing is fused: forward and backward groups come in pairs (the forward drops what the backward reads), and a
    collective inside a conv/pool chain is too rare to untangle them for."""
    where = [i for i, n in enumerate(g.nodes) if n.body is None and n.op.kind is Kind.COLLECTIVE]
    if not where:
        return None
    index = {id(n): i for i, n in enumerate(g.nodes)}
    for at, node in replace.items():
        if node is None:
            continue
        members = [index[id(b)] for b in node.body.nodes if id(b) in index] + [at]
        lo, hi = min(members), max(members)
        crossed = next((c for c in where if lo < c < hi), None)
        if crossed is not None:
            return (f"{node.body.name} would join nodes {lo}..{hi} across {g.nodes[crossed].op.name} (node "
                    f"{crossed}), and no op moves across a collective")
    return None


def _match_forward(ix, mi, m, replace, notes) -> str | None:
    a = m.attrs
    k = a["kernel"]
    if k[0] * k[1] > 256:
        return f"a {k[0]}x{k[1]} window has more positions than a uint8 argmax holds (256)"
    r = m.inputs[0]
    ri, rn = ix.prod(r)
    relu = rn is not None and rn.body is None and rn.op.name == "relu"
    pre = rn.inputs[0] if relu else r
    ai, an = ix.prod(pre)
    bias = None
    chain: list[int] = []
    if an is not None and an.body is None and an.op.name == "add":
        ci = None
        for side in (0, 1):
            pi, pn = ix.prod(an.inputs[side])
            if pn is not None and pn.body is None and pn.op.name == "conv2d":
                ci, cn, other = pi, pn, an.inputs[1 - side]
                break
        if ci is None:
            return "its input is not conv2d (+ bias)"
        found = _bias_root(ix, other, cn.outputs[0].shape[1])
        if found is None:
            return "the add after conv2d is not a per-channel bias"
        bias, chain = found
        if not ix.only_use(cn.outputs[0], ai):
            return "the conv2d output is also read elsewhere"
    elif an is not None and an.body is None and an.op.name == "conv2d":
        ci, cn = ai, an
        ai = None
    else:
        return "its input is not conv2d (+ bias) (+ relu)"
    if relu and not ix.only_use(pre, ri):
        return "the pre-activation is also read elsewhere"
    # who else reads the pool input r: only max_pool2d_grad(r, g) and relu's mask gt(r, 0) are understood
    grad_node = mask_mul = None
    extra: dict[int, None] = {}
    if r.id in ix.outputs:
        return "the activation before pooling is a graph output"
    for u in ix.uses(r):
        un = ix.nodes[u]
        if u == mi:
            continue
        if un.body is None and un.op.name == "max_pool2d_grad" and un.inputs[0] is r and grad_node is None:
            grad_node = u
        elif relu and un.body is None and un.op.name == "gt" and un.inputs[0] is r and \
                _const_value(ix, un.inputs[1]) == 0:
            found = _mask_mul(ix, u)
            if found is None:
                return "relu's mask is used in an unexpected way"
            extra[u] = None
            for j in found[:-1]:
                extra[j] = None
            mask_mul = found[-1]
        else:
            return f"the activation is also read by {un.op.name} (node {u})"
    if relu and grad_node is not None and mask_mul is None:
        return "relu backward not found next to max_pool2d_grad"
    if mask_mul is not None:
        mn = ix.nodes[mask_mul]
        if grad_node is None or ix.nodes[grad_node].outputs[0] not in mn.inputs:
            return "relu's mask does not multiply the unpooled gradient"
        if not ix.only_use(ix.nodes[grad_node].outputs[0], mask_mul):
            return "the unpooled gradient is also read elsewhere"
    # ---- what the target runs natively: both halves, or neither (the forward drops what max_pool2d_grad reads)
    pooling = _pool_attrs(a)
    conv_attrs = {key: cn.attrs[key] for key in ("stride", "padding", "dilation", "groups")}
    fwd_attrs = {"relu": relu, "bias": bias is not None, **pooling, **conv_attrs}
    bwd_attrs = {"relu": relu, **pooling}
    dtype = m.outputs[0].dtype
    why = _refused(Pattern.CONV_POOL, fwd_attrs, dtype) or (
        _refused(Pattern.UNPOOL, bwd_attrs, dtype) if grad_node is not None else None)
    if why:
        return why
    # ---- forward: conv2d -> (+bias) -> (relu) -> max_pool2d + argmax, one node at the pool's place
    x, w = cn.inputs
    pool_attrs = {"kernel": tuple(k), "stride": tuple(a["stride"]), "padding": pooling["pool_padding"],
                  "dilation": pooling["pool_dilation"], "ceil_mode": pooling["ceil_mode"]}
    idx = Value(TensorType(m.outputs[0].shape, D.uint8))
    body_nodes = [cn] + [ix.nodes[j] for j in reversed(chain)]
    if ai is not None:
        body_nodes.append(ix.nodes[ai])
    if relu:
        body_nodes.append(rn)
    body_nodes += [m, Node(OPS["max_pool2d_argmax"], (r,), dict(pool_attrs), (idx,))]
    ins = [x, w] + ([bias] if bias is not None else [])
    body = Graph(f"conv_pool_{mi}", ins, body_nodes, [m.outputs[0], idx], {}, [None, None])
    fwd = fused(Pattern.CONV_POOL, ins, (m.outputs[0], idx), body, **fwd_attrs)
    for j in [ci] + chain + ([ai] if ai is not None else []) + ([ri] if relu else []):
        replace[j] = None
    replace[mi] = fwd
    # ---- backward: max_pool2d_grad(r, g) [* relu mask] -> unpool from argmax [with mask from pooled > 0]
    if grad_node is not None:
        gn = ix.nodes[grad_node]
        gm = gn.inputs[1]
        pooled = m.outputs[0]
        bnodes = []
        g_in = gm
        if relu:
            zero = Value(TensorType((), pooled.dtype))
            pos = Value(TensorType(pooled.shape, D.bool_))
            fmask = Value(TensorType(pooled.shape, pooled.dtype))
            gmask = Value(TensorType(pooled.shape, pooled.dtype))
            bnodes += [Node(OPS["full"], (), {"shape": (), "value": 0.0, "dtype": pooled.dtype}, (zero,)),
                       Node(OPS["gt"], (pooled, zero), {}, (pos,)),
                       Node(OPS["cast"], (pos,), {"dtype": pooled.dtype}, (fmask,)),
                       Node(OPS["mul"], (gm, fmask), {}, (gmask,))]
            g_in = gmask
        result = ix.nodes[mask_mul].outputs[0] if relu else gn.outputs[0]
        bnodes.append(Node(OPS["max_pool2d_grad_argmax"], (g_in, idx),
                           {"input_shape": r.shape, **pool_attrs}, (result,)))
        bins = [gm, idx] + ([pooled] if relu else [])
        bbody = Graph(f"unpool_{grad_node}", bins, bnodes, [result], {}, [None])
        bwd = fused(Pattern.UNPOOL, bins, (result,), bbody, **bwd_attrs)
        at = mask_mul if relu else grad_node
        replace[grad_node] = None
        for j in extra:
            if j != at:
                replace[j] = None
        replace[at] = bwd
    return None


def _mask_mul(ix, gt_i):
    """gt(r, 0) -> cast -> mul(g, mask): the indices [cast, mul], or None."""
    gt_out = ix.nodes[gt_i].outputs[0]
    uses = ix.uses(gt_out)
    if len(uses) != 1 or gt_out.id in ix.outputs:
        return None
    ci = uses[0]
    cn = ix.nodes[ci]
    if cn.body is not None or cn.op.name != "cast":
        return None
    uses = ix.uses(cn.outputs[0])
    if len(uses) != 1 or cn.outputs[0].id in ix.outputs:
        return None
    mi = uses[0]
    if ix.nodes[mi].body is not None or ix.nodes[mi].op.name != "mul":
        return None
    return [ci, mi]


def _fuse_conv_backward(ix, replace, notes):
    """unpool (+ relu mask) -> conv2d_grad_input and conv2d_grad_weight+bias, when those are all that read the
    unpooled gradient: one kernel that never stores the [N, O, OH, OW] gradient of the conv output."""
    placed = {id(n): i for i, n in replace.items() if n is not None}
    for ui, un in list(replace.items()):
        if un is None or un.pattern is not Pattern.UNPOOL:
            continue
        d = un.outputs[0]
        if d.id in ix.outputs:
            continue
        users = ix.uses(d)
        wb = [replace[i] for i in users if i in replace and replace[i] is not None
              and replace[i].pattern is Pattern.GRAD_WEIGHT_BIAS]
        wb_idx = [placed[id(n)] for n in wb]
        gi = [i for i in users if i not in replace and ix.nodes[i].body is None
              and ix.nodes[i].op.name == "conv2d_grad_input" and ix.nodes[i].inputs[0] is d]
        # every reader of d must be the weight/bias kernel's members or the input-gradient node
        members = set(gi) | {i for n in wb for i in users if ix.nodes[i] in n.body.nodes}
        if len(wb) != 1 or len(gi) > 1 or set(users) - members:
            notes.append(f"not fused: unpool (node {ui}) with the conv gradients: its output has other readers")
            continue
        w_node = wb[0]
        at = max([ui, wb_idx[0]] + gi)
        group = {ui, wb_idx[0]} | set(gi)
        outs = ([ix.nodes[gi[0]].outputs[0]] if gi else []) + list(w_node.outputs)
        if any(u < at and u not in group for v in outs for u in ix.uses(v)):
            notes.append(f"not fused: unpool (node {ui}) with the conv gradients: a gradient is needed earlier")
            continue
        attrs = {k: un.attrs[k] for k in Pattern.UNPOOL.attrs}
        attrs.update({k: w_node.attrs[k] for k in Pattern.GRAD_WEIGHT_BIAS.attrs}, input_grad=bool(gi))
        why = _refused(Pattern.CONV_POOL_BACKWARD, attrs, d.dtype)
        if why:
            notes.append(f"not fused: unpool (node {ui}) with the conv gradients: {why}")
            continue
        x, g = w_node.inputs
        w = ix.nodes[gi[0]].inputs[1] if gi else None
        ins = [x] + ([w] if w is not None else []) + list(un.inputs)
        body_nodes = list(un.body.nodes) + ([ix.nodes[gi[0]]] if gi else []) + list(w_node.body.nodes)
        body = Graph(f"conv_pool_backward_{ui}", ins, body_nodes, outs, {}, [None] * len(outs))
        for i in group:
            replace[i] = None
        replace[at] = fused(Pattern.CONV_POOL_BACKWARD, ins, outs, body, **attrs)


def _fuse_weight_bias(ix, replace, notes):
    """conv2d_grad_weight(x, g) and sum(g, axes=(0, 2, 3)) -> one kernel writing dw and db."""
    for wi, wn in enumerate(ix.nodes):
        if wn.body is not None or wn.op.name != "conv2d_grad_weight" or wi in replace:
            continue
        g = wn.inputs[1]
        for si in ix.uses(g):
            sn = ix.nodes[si]
            if si in replace or sn.body is not None or sn.op.name != "sum" or sn.attrs["axes"] != (0, 2, 3):
                continue
            first, last = min(wi, si), max(wi, si)
            early = ix.nodes[first].outputs[0]
            if any(u < last for u in ix.uses(early)):
                notes.append(f"not fused: conv2d_grad_weight (node {wi}) and bias sum (node {si}): "
                             f"one is needed before the other")
                continue
            attrs = {k: wn.attrs[k] for k in Pattern.GRAD_WEIGHT_BIAS.attrs}
            why = _refused(Pattern.GRAD_WEIGHT_BIAS, attrs, wn.outputs[0].dtype)
            if why:
                notes.append(f"not fused: conv2d_grad_weight (node {wi}) and bias sum (node {si}): {why}")
                break
            ins = list(wn.inputs)
            outs = [wn.outputs[0], sn.outputs[0]]
            body = Graph(f"conv_grad_weight_{wi}", ins, [wn, sn], outs, {}, [None, None])
            replace[first] = None
            replace[last] = fused(Pattern.GRAD_WEIGHT_BIAS, ins, outs, body, **attrs)
            break


def _fuse_linear(ix, replace, notes):
    """matmul(x, w) [2-D] -> add(., bias [N], or a view of it) -> relu?, each read only by the next:
    one node at the last one's place, Pattern.LINEAR. relu's gradient reads relu's output, which the fused
    node still produces."""
    for mi, mn in enumerate(ix.nodes):
        if mn.body is not None or mn.op.name != "matmul" or mi in replace:
            continue
        mm = mn.outputs[0]
        if len(mm.shape) != 2:
            continue
        uses = ix.uses(mm)
        if len(uses) != 1 or ix.nodes[uses[0]].body is not None or ix.nodes[uses[0]].op.name != "add":
            continue  # a plain product: nothing to fuse (not worth a note)
        ai = uses[0]
        an = ix.nodes[ai]
        if not ix.only_use(mm, ai) or ai in replace:
            notes.append(f"not fused: matmul (node {mi}) with add (node {ai}): the product is also read elsewhere")
            continue
        other = an.inputs[1] if an.inputs[0] is mm else an.inputs[0]
        found = _bias_root(ix, other, mm.shape[1])
        if found is None or an.outputs[0].dtype is not mm.dtype or an.outputs[0].shape != mm.shape:
            notes.append(f"not fused: matmul (node {mi}) with add (node {ai}): not a bias over the output columns")
            continue
        bias, chain = found
        # chain runs from the add's operand back to the bias: each view must be read only by the one after it
        if any(not ix.only_use(ix.nodes[j].outputs[0], k) for j, k in zip(chain, [ai] + chain[:-1])):
            notes.append(f"not fused: matmul (node {mi}) with add (node {ai}): the bias view is also read elsewhere")
            continue
        pre = an.outputs[0]
        ri = None
        users = ix.uses(pre)
        if len(users) == 1 and ix.only_use(pre, users[0]):
            rn = ix.nodes[users[0]]
            if rn.body is None and rn.op.name == "relu" and users[0] not in replace:
                ri = users[0]
        why = _refused(Pattern.LINEAR, {"relu": ri is not None}, mm.dtype)
        if why:
            notes.append(f"not fused: matmul (node {mi}) with add (node {ai}): {why}")
            continue
        out = ix.nodes[ri].outputs[0] if ri is not None else pre
        body_nodes = [mn] + [ix.nodes[j] for j in reversed(chain)] + [an] + ([ix.nodes[ri]] if ri is not None else [])
        ins = [mn.inputs[0], mn.inputs[1], bias]
        body = Graph(f"linear_{mi}", ins, body_nodes, [out], {}, [None])
        node = fused(Pattern.LINEAR, ins, (out,), body, relu=ri is not None)
        for j in [mi, ai] + chain:
            replace[j] = None
        replace[ri if ri is not None else ai] = node
