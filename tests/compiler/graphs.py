"""Test helpers: a seeded random-graph generator over the op table and random inputs for a graph.

`random_graph(seed)` builds a valid graph (it passes `verify`) from elementwise chains with broadcasting,
`full` constants (identities such as x*1 and x+0 included, so simplify has work), reductions,
reshape/expand/permute chains, matmuls, duplicated nodes (work for cse), dead nodes (work for dce) and
several outputs, some of them state write-backs. Values stay finite: log, sqrt, div and pow only see
operands made safe with abs/+1, and exp only sees tanh outputs.
"""

from __future__ import annotations

import math

import numpy as np

from tracejit import dtypes as D
from tracejit.compiler.ir import Graph, GraphBuilder, Value, verify
from tracejit.errors import OpError
from tracejit.ops import OPS, TensorType, broadcast_shapes

F32, F64 = D.float32, D.float64

SAFE_UNARY = ("neg", "tanh", "sigmoid", "abs", "relu", "sin", "cos", "erf")
BINARY = ("add", "sub", "mul", "maximum", "minimum")
COMPARE = ("lt", "le", "gt", "ge", "eq", "ne")


class _Builder:
    def __init__(self, rng: np.random.Generator, name: str):
        self.rng = rng
        self.b = GraphBuilder(name)
        self.pool: list[Value] = []  # float values that later ops may read
        self.n_inputs = 0

    # ---- primitives
    def input(self, shape, dtype=F32) -> Value:
        self.n_inputs += 1
        k = self.n_inputs
        meta = {"arg": f"x{k}"} if self.rng.random() < 0.7 else {"state": f"s{k}"}
        v = self.b.add_input(TensorType(tuple(shape), dtype), meta)
        return v

    def op(self, name: str, *inputs: Value, **attrs) -> Value:
        out = OPS[name].infer(*[v.type for v in inputs], **attrs)
        return self.b.add_node(OPS[name], inputs, attrs, out)

    def full(self, value, shape=(), dtype=F32) -> Value:
        return self.op("full", shape=tuple(shape), value=value, dtype=dtype)

    # ---- choosing operands
    def pick(self, dtype=None) -> Value:
        cands = [v for v in self.pool if dtype is None or v.dtype is dtype]
        # favour recent values: long chains are what fusion works on
        w = np.arange(1, len(cands) + 1, dtype=np.float64) ** 2
        return cands[self.rng.choice(len(cands), p=w / w.sum())]

    def partner(self, a: Value) -> Value:
        """A value broadcast-compatible with `a` (same dtype): from the pool, a constant, or a new input."""
        cands = [v for v in self.pool if v.dtype is a.dtype and v is not a and _broadcasts(a.shape, v.shape)]
        r = self.rng.random()
        if cands and r < 0.6:
            return cands[self.rng.integers(len(cands))]
        if r < 0.75:
            value = float(self.rng.choice([0.0, 1.0, 0.5, 2.0, -1.5]))
            shape = () if self.rng.random() < 0.7 else _broadcast_sub(self.rng, a.shape)
            return self.full(value, shape, a.dtype)
        return self.input(_broadcast_sub(self.rng, a.shape), a.dtype)

    def positive(self, a: Value) -> Value:
        """abs(a) + 1: safe for log, sqrt, div, pow."""
        return self.op("add", self.op("abs", a), self.full(1.0, (), a.dtype))

    # ---- one random step
    def step(self) -> None:
        rng = self.rng
        a = self.pick()
        r = rng.random()
        if r < 0.22:
            out = self.op(str(rng.choice(SAFE_UNARY)), a)
        elif r < 0.30:
            out = self.op("exp", self.op("tanh", a))
        elif r < 0.36:
            fn = str(rng.choice(["log", "sqrt"]))
            out = self.op(fn, self.positive(a))
        elif r < 0.56:
            out = self.op(str(rng.choice(BINARY)), a, self.partner(a))
        elif r < 0.60:
            b = self.partner(a)
            out = self.op("div", a, self.positive(b))
        elif r < 0.62:
            out = self.op("pow", self.positive(a), self.full(float(rng.choice([2.0, 0.5, 3.0])), (), a.dtype))
        elif r < 0.66:
            # identities and constant arithmetic: work for simplify
            kind = rng.integers(4)
            if kind == 0:
                out = self.op("mul", a, self.full(1.0, (), a.dtype))
            elif kind == 1:
                out = self.op("add", self.full(0.0, (), a.dtype), a)
            elif kind == 2:
                out = self.op("neg", self.op("neg", a))
            else:
                c = self.op("mul", self.full(2.0, (), a.dtype), self.full(1.5, (), a.dtype))
                out = self.op("sub", a, c)
        elif r < 0.70:
            b = self.partner(a)
            cond = self.op(str(rng.choice(COMPARE)), a, b)
            out = self.op("where", cond, a, b)
        elif r < 0.73:
            other = F64 if a.dtype is F32 else F32
            out = self.op("cast", self.op("cast", a, dtype=other), dtype=a.dtype) if rng.random() < 0.5 \
                else self.op("cast", a, dtype=a.dtype)
        elif r < 0.83 and a.shape:
            out = self.reduce(a)
        elif r < 0.90 and a.shape:
            out = self.movement(a)
        elif r < 0.94 and a.shape:
            out = self.matmul(a)
        elif r < 0.97 and self.pool:
            # a duplicate of an existing node: cse merges it
            nodes = [n for n in self.b.graph.nodes if n.op.name != "full"]
            if not nodes:
                return
            n = nodes[rng.integers(len(nodes))]
            out = self.b.add_node(n.op, n.inputs, n.attrs, n.outputs[0].type)
        else:
            # dead work: dce drops it
            self.op("exp", self.op("tanh", a))
            return
        if out.dtype.is_floating_point:
            self.pool.append(out)

    def reduce(self, a: Value) -> Value:
        rng = self.rng
        nd = len(a.shape)
        k = int(rng.integers(1, nd + 1))
        axes = tuple(sorted(rng.choice(nd, size=k, replace=False).tolist()))
        keepdim = bool(rng.random() < 0.5)
        name = "sum" if rng.random() < 0.7 else "amax"
        return self.op(name, a, axes=axes, keepdim=keepdim)

    def movement(self, a: Value) -> Value:
        rng = self.rng
        shape = a.shape
        r = rng.random()
        if r < 0.35 and len(shape) >= 2:
            dims = tuple(rng.permutation(len(shape)).tolist())
            out = self.op("permute", a, dims=dims)
            if rng.random() < 0.4:  # a chain for simplify
                out = self.op("permute", out, dims=tuple(rng.permutation(len(shape)).tolist()))
            return out
        if r < 0.7:
            new = _reshape_target(rng, shape)
            out = self.op("reshape", a, shape=new)
            if rng.random() < 0.4:
                out = self.op("reshape", out, shape=_reshape_target(rng, new))
            return out
        # expand: size-1 dims grow (make one with a keepdim reduction when there is none)
        if 1 not in shape:
            axis = int(rng.integers(len(shape)))
            a = self.op("sum", a, axes=(axis,), keepdim=True)
            shape = a.shape
        target = tuple(int(rng.integers(2, 5)) if s == 1 else s for s in shape)
        return self.op("expand", a, shape=target)

    def matmul(self, a: Value) -> Value:
        rng = self.rng
        shape = a.shape
        if len(shape) == 1:
            a = self.op("reshape", a, shape=(1, shape[0]))
        elif len(shape) > 2:
            a = self.op("reshape", a, shape=(math.prod(shape[:-1]), shape[-1]))
        k = a.shape[-1]
        w = self.input((k, int(rng.integers(2, 6))), a.dtype)
        return self.op("matmul", a, w)


def _broadcasts(a: tuple, b: tuple) -> bool:
    try:
        broadcast_shapes("t", a, b)
    except OpError:
        return False
    return True


def _broadcast_sub(rng, shape: tuple) -> tuple:
    """A shape that broadcasts against `shape`: a suffix of it with some dims set to 1."""
    start = int(rng.integers(0, len(shape) + 1))
    return tuple(1 if rng.random() < 0.3 else s for s in shape[start:])


def _reshape_target(rng, shape: tuple) -> tuple:
    n = math.prod(shape)
    r = rng.random()
    if r < 0.4:
        return (n,)
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    d = int(rng.choice(divisors))
    out = (d, n // d)
    if r < 0.7:
        return out
    return (1,) + out if rng.random() < 0.5 else out + (1,)


def random_graph(seed: int, n_ops: int | None = None, dtype=None) -> Graph:
    """A valid random graph (verified) for `seed`; float32 unless `dtype` (or the seed) says float64."""
    rng = np.random.default_rng(seed)
    dtype = dtype or (F64 if seed % 7 == 3 else F32)
    bld = _Builder(rng, f"random{seed}")
    nd = int(rng.integers(1, 4))
    base = tuple(int(s) for s in rng.choice([2, 3, 4, 5, 6], size=nd))
    bld.pool.append(bld.input(base, dtype))
    for _ in range(int(rng.integers(1, 3))):
        bld.pool.append(bld.input(_broadcast_sub(rng, base) or base, dtype))
    for _ in range(n_ops or int(rng.integers(8, 25))):
        bld.step()
    g = bld.b.graph
    # outputs: the last value, plus a few others; some become state write-backs
    outs = [bld.pool[-1]]
    extra = bld.pool[:-1]
    for i in rng.choice(len(extra), size=min(len(extra), int(rng.integers(0, 4))), replace=False):
        outs.append(extra[int(i)])
    for k, v in enumerate(outs):
        meta = None if k == 0 or rng.random() < 0.5 else f"w{k}"
        bld.b.add_output(v, meta)
    return verify(g)


def random_inputs(graph: Graph, seed: int = 0) -> list:
    """One array per graph input, by type: normal floats, small ints, random bools."""
    rng = np.random.default_rng(seed)
    out = []
    for v in graph.inputs:
        t = v.type
        if t.dtype.is_floating_point:
            a = rng.standard_normal(t.shape).astype(t.dtype.np)
        elif t.dtype is D.bool_:
            a = rng.random(t.shape) < 0.5
        else:
            a = rng.integers(-5, 6, size=t.shape).astype(t.dtype.np)
        out.append(np.asarray(a, dtype=t.dtype.np))
    return out


def inputs_for(graph: Graph, by_id: dict) -> list:
    """The arrays of `graph`'s inputs from a {Value.id: array} map (passes may drop unused inputs)."""
    return [by_id[v.id] for v in graph.inputs]
