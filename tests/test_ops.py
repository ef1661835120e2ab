"""The op table: one row (or more) per primitive in `tracejit.ops.OPS`.

Each row runs the primitive through `apply` on NumPy inputs (broadcast, transposed and sliced ones
included) and compares with an expectation written here in NumPy (never `op.ref`); rows that name
gradient inputs are also checked against finite differences in float64. Window ops are additionally
compared with torch.nn.functional when torch imports.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import tracejit as tj
from tracejit import dtypes as D
from tracejit.autograd import gradcheck
from tracejit.dispatch import _from_array, apply
from tracejit.distributed.group import single_process
from tracejit.ops import OPS, Kind

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch is an extra oracle; every test below also checks against NumPy
    torch = None

F32, F64, I64, B = np.float32, np.float64, np.int64, np.bool_

# ----------------------------------------------------------------------------------------------- inputs


def randn(rng, *shape, dtype=F64):
    return np.asarray(rng.standard_normal(shape)).astype(dtype)


def positive(rng, *shape, dtype=F64):
    return np.asarray(rng.uniform(0.5, 2.0, shape)).astype(dtype)


def away_from_zero(rng, *shape, dtype=F64):
    mag = rng.uniform(0.3, 2.0, shape)
    return np.asarray(np.where(rng.random(shape) < 0.5, -mag, mag)).astype(dtype)


def ints(rng, *shape, lo=-5, hi=6):
    return np.asarray(rng.integers(lo, hi, shape)).astype(I64)


def bools(rng, *shape):
    return np.asarray(rng.random(shape) < 0.5)


def transposed(a):
    """Same values, Fortran-ordered storage (a transposed view)."""
    out = np.ascontiguousarray(a.T).T
    assert a.ndim < 2 or not out.flags.c_contiguous
    return out


def strided(a):
    """Same values, a view with a step of 2 in the last dimension."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    out = big[..., ::2]
    assert not out.flags.c_contiguous
    return out


# ----------------------------------------------------------------------------------------------- the table


@dataclass
class Case:
    op: str
    label: str
    make: Callable  # rng -> list of input arrays
    expect: Callable  # (*arrays, **attrs) -> expected array, written independently of op.ref
    attrs: dict = field(default_factory=dict)
    grad: tuple = ()  # inputs checked by gradcheck (all floating inputs become float64 there)
    out_dtype: object = None  # default: the first input's dtype

    @property
    def id(self):
        return f"{self.op}-{self.label}"


CASES: list[Case] = []


def row(op, label, make, expect, grad=(), out_dtype=None, **attrs):
    CASES.append(Case(op, label, make, expect, attrs, tuple(grad), out_dtype))


NONDIFFERENTIABLE = {"sign", "logical_not", "eq", "ne", "lt", "le", "gt", "ge", "full", "argmax", "uniform",
                     "max_pool2d_grad", "max_pool2d_argmax", "max_pool2d_grad_argmax", "check_index", "argsort",
                     "all_reduce", "all_reduce_start", "all_reduce_wait", "broadcast", "all_gather", "barrier"}

# ---- unary elementwise


def _np_erf(a):
    return np.vectorize(math.erf, otypes=[F64])(a).astype(a.dtype)


UNARY = {
    # name: (expected, input maker, accepts int64)
    "neg": (lambda a: 0 - a, randn, True),
    "exp": (lambda a: np.e ** a, randn, False),
    "log": (lambda a: np.log(a), positive, False),
    "sqrt": (lambda a: a ** 0.5, positive, False),
    "abs": (lambda a: np.where(a < 0, -a, a), away_from_zero, True),
    "sign": (lambda a: (a > 0).astype(a.dtype) - (a < 0).astype(a.dtype), away_from_zero, True),
    "tanh": (lambda a: 1 - 2 / (np.exp(2 * a) + 1), randn, False),
    "sigmoid": (lambda a: 1 / (1 + np.exp(-a)), randn, False),
    "relu": (lambda a: np.where(a > 0, a, 0).astype(a.dtype), away_from_zero, True),
    "sin": (lambda a: np.sin(a), randn, False),
    "cos": (lambda a: np.cos(a), randn, False),
    "erf": (_np_erf, randn, False),
}

for _name, (_f, _mk, _int_ok) in UNARY.items():
    _expect = (lambda f: lambda a: np.asarray(f(a)).astype(a.dtype))(_f)
    _grad = () if _name in NONDIFFERENTIABLE else (0,)
    row(_name, "f32-transposed", lambda r, mk=_mk: [transposed(mk(r, 3, 4, dtype=F32))], _expect)
    row(_name, "f64-strided", lambda r, mk=_mk: [strided(mk(r, 2, 3))], _expect, grad=_grad)
    row(_name, "0d", lambda r, mk=_mk: [mk(r)], _expect, grad=_grad)
    if _int_ok:
        row(_name, "i64", lambda r: [ints(r, 2, 5)], _expect)

row("logical_not", "bool-transposed", lambda r: [transposed(bools(r, 3, 4))], lambda a: ~a)
row("logical_not", "0d", lambda r: [np.array(True)], lambda a: ~a)

# ---- binary elementwise

BINARY = {
    "add": (lambda a, b: a + b, randn),
    "sub": (lambda a, b: a - b, randn),
    "mul": (lambda a, b: a * b, randn),
    "div": (lambda a, b: a / b, away_from_zero),
    "pow": (lambda a, b: np.exp(b * np.log(a)), positive),
    "maximum": (lambda a, b: np.where(a > b, a, b), randn),
    "minimum": (lambda a, b: np.where(a < b, a, b), randn),
}
SHAPES = {  # label: (shape of a, shape of b, layout of a, layout of b)
    "same-noncontig": ((3, 4), (3, 4), transposed, strided),
    "broadcast": ((2, 1, 3), (4, 1), lambda a: a, lambda a: a),
    "scalar-rhs": ((2, 3), (), strided, lambda a: a),
    "scalar-lhs": ((), (3,), lambda a: a, lambda a: a),
}

for _name, (_f, _mk) in BINARY.items():
    for _label, (_sa, _sb, _la, _lb) in SHAPES.items():
        for _dt in (F32, F64):
            row(_name, f"{_label}-{np.dtype(_dt).name}",
                lambda r, mk=_mk, sa=_sa, sb=_sb, la=_la, lb=_lb, dt=_dt: [la(mk(r, *sa, dtype=dt)),
                                                                            lb(mk(r, *sb, dtype=dt))],
                (lambda f: lambda a, b: np.asarray(f(a, b)).astype(a.dtype))(_f),
                grad=(0, 1) if _dt is F64 else ())
    if _name not in ("div", "pow"):
        row(_name, "i64-broadcast", lambda r: [ints(r, 3, 1), ints(r, 4)],
            (lambda f: lambda a, b: np.asarray(f(a, b)).astype(I64))(_f))

def _floor_div(a, b):
    return np.array([x // y for x, y in zip(*np.broadcast_arrays(a, b))]).reshape(np.broadcast_shapes(a.shape, b.shape))


def _trunc_div(a, b):
    x, y = np.broadcast_arrays(a, b)
    if a.dtype.kind == "f":
        q = [math.trunc(float(u / v)) for u, v in zip(x.flat, y.flat)]  # (u / v in the inputs' dtype)
    else:  # C's integer division: |u| // |v| with the quotient's sign
        q = [abs(int(u)) // abs(int(v)) * (1 if (u < 0) == (v < 0) else -1) for u, v in zip(x.flat, y.flat)]
    return np.array(q).reshape(x.shape)


for _name, _f in (("floor_divide", _floor_div), ("trunc_divide", _trunc_div)):
    row(_name, "f64-noncontig", lambda r: [transposed(randn(r, 3, 4) * 5), strided(away_from_zero(r, 3, 4))],
        (lambda f: lambda a, b: np.asarray(f(a, b)).astype(a.dtype))(_f), grad=(0, 1))  # zero gradients
    row(_name, "f32-broadcast", lambda r: [randn(r, 2, 1, 3, dtype=F32) * 5, away_from_zero(r, 4, 1, dtype=F32)],
        (lambda f: lambda a, b: np.asarray(f(a, b)).astype(a.dtype))(_f))
    row(_name, "i64-broadcast", lambda r: [ints(r, 3, 1, lo=-20, hi=21), ints(r, 4, lo=1, hi=6) * [1, -1, 1, -1]],
        (lambda f: lambda a, b: np.asarray(f(a, b)).astype(I64))(_f))



def _remainder(a, b):  # PyTorch's: fmod, then + b where it is non-zero with a sign unlike b's
    out = []
    x, y = np.broadcast_arrays(a, b)
    for u, v in zip(x.flat, y.flat):
        m = math.fmod(u, v) if a.dtype.kind == "f" else int(u) % int(v)
        out.append(m + v if a.dtype.kind == "f" and m != 0 and (v < 0) != (m < 0) else m)
    return np.array(out).reshape(x.shape)


def _fmod(a, b):  # C's: the sign of the dividend
    x, y = np.broadcast_arrays(a, b)
    if a.dtype.kind == "f":
        q = [math.fmod(float(u), float(v)) for u, v in zip(x.flat, y.flat)]
    else:
        q = [abs(int(u)) % abs(int(v)) * (1 if u >= 0 else -1) for u, v in zip(x.flat, y.flat)]
    return np.array(q).reshape(x.shape)


for _name, _f in (("remainder", _remainder), ("fmod", _fmod)):
    row(_name, "f64-noncontig", lambda r: [transposed(randn(r, 3, 4) * 5), strided(away_from_zero(r, 3, 4))],
        (lambda f: lambda a, b: np.asarray(f(a, b)).astype(a.dtype))(_f), grad=(0, 1))
    row(_name, "f32-broadcast", lambda r: [randn(r, 2, 1, 3, dtype=F32) * 5, away_from_zero(r, 4, 1, dtype=F32)],
        (lambda f: lambda a, b: np.asarray(f(a, b)).astype(a.dtype))(_f))
    row(_name, "i64-broadcast", lambda r: [ints(r, 3, 1, lo=-20, hi=21), ints(r, 4, lo=1, hi=6) * [1, -1, 1, -1]],
        (lambda f: lambda a, b: np.asarray(f(a, b)).astype(I64))(_f))

COMPARE = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
           "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}


def _with_ties(rng, *shape, dtype):
    return (rng.integers(-2, 3, shape)).astype(dtype)  # small integers: many equal pairs


for _name, _f in COMPARE.items():
    row(_name, "f32-broadcast-noncontig",
        lambda r: [transposed(_with_ties(r, 4, 3, dtype=F32)), _with_ties(r, 3, dtype=F32)], _f, out_dtype=B)
    row(_name, "f64-0d", lambda r: [_with_ties(r, dtype=F64), _with_ties(r, 2, 2, dtype=F64)], _f,
        out_dtype=B)
    row(_name, "i64", lambda r: [ints(r, 2, 3, lo=-2, hi=3), strided(ints(r, 2, 3, lo=-2, hi=3))], _f,
        out_dtype=B)
    row(_name, "bool", lambda r: [bools(r, 3, 1), bools(r, 1, 4)], _f, out_dtype=B)

row("where", "broadcast-f64", lambda r: [bools(r, 3, 1), randn(r, 1, 4), randn(r, 3, 4)],
    lambda c, a, b: np.array([[a[0, j] if c[i, 0] else b[i, j] for j in range(4)] for i in range(3)]),
    grad=(1, 2), out_dtype=F64)
row("where", "noncontig-f32", lambda r: [transposed(bools(r, 2, 3)), strided(randn(r, 2, 3, dtype=F32)),
                                         randn(r, dtype=F32)],
    lambda c, a, b: np.choose(c.astype(I64), [np.broadcast_to(b, a.shape), a]), out_dtype=F32)
row("where", "i64", lambda r: [bools(r, 4), ints(r, 4), ints(r, 4)],
    lambda c, a, b: c * a + (1 - c) * b, out_dtype=I64)
row("where", "bool", lambda r: [bools(r, 4), bools(r, 4), bools(r, 4)],
    lambda c, a, b: (c & a) | (~c & b), out_dtype=B)

row("cast", "f32-to-f64", lambda r: [transposed(randn(r, 3, 2, dtype=F32))], lambda a, dtype: a.astype(F64),
    dtype=D.float64, out_dtype=F64)
row("cast", "f64-identity", lambda r: [randn(r, 2, 3)], lambda a, dtype: a, grad=(0,), dtype=D.float64)
row("cast", "f64-to-f32", lambda r: [randn(r, 2, 3)], lambda a, dtype: a.astype(F32), dtype=D.float32,
    out_dtype=F32)
row("cast", "f64-to-i64-truncates", lambda r: [np.array([-2.7, -0.5, 0.5, 1.9, 3.0])],
    lambda a, dtype: np.array([-2, 0, 0, 1, 3]), dtype=D.int64, out_dtype=I64)
row("cast", "i64-to-f32", lambda r: [ints(r, 5)], lambda a, dtype: a.astype(F32), dtype=D.float32,
    out_dtype=F32)
row("cast", "f32-to-bool", lambda r: [np.array([0.0, -0.5, 2.0, 0.0], F32)],
    lambda a, dtype: np.array([False, True, True, False]), dtype=D.bool_, out_dtype=B)
row("cast", "bool-to-i64", lambda r: [bools(r, 2, 2)], lambda a, dtype: a.astype(I64), dtype=D.int64,
    out_dtype=I64)

row("full", "f32", lambda r: [], lambda shape, value, dtype: np.ones(shape, F32) * 2.5, shape=(2, 3),
    value=2.5, dtype=D.float32, out_dtype=F32)
row("full", "i64-0d", lambda r: [], lambda shape, value, dtype: np.array(-7), shape=(), value=-7,
    dtype=D.int64, out_dtype=I64)
row("full", "bool", lambda r: [], lambda shape, value, dtype: np.ones(shape, B), shape=(3,), value=True,
    dtype=D.bool_, out_dtype=B)

# ---- reductions


def _np_sum(a, axes, keepdim):
    out = a.astype(I64 if a.dtype.kind in "bi" else a.dtype)
    for ax in sorted(axes, reverse=True):
        out = np.add.reduce(out, axis=ax, keepdims=keepdim)
    return out


def _np_amax(a, axes, keepdim):
    out = a
    for ax in sorted(axes, reverse=True):
        out = np.maximum.reduce(out, axis=ax, keepdims=keepdim)
    return out


row("sum", "f32-noncontig-axes02", lambda r: [transposed(randn(r, 3, 2, 4, dtype=F32))], _np_sum,
    axes=(0, 2), keepdim=False)
row("sum", "f64-axis1-keepdim", lambda r: [strided(randn(r, 2, 3, 2))], _np_sum, grad=(0,), axes=(1,),
    keepdim=True)
row("sum", "f64-all", lambda r: [randn(r, 2, 3)], _np_sum, grad=(0,), axes=(0, 1), keepdim=False)
row("sum", "i64", lambda r: [ints(r, 3, 4)], _np_sum, axes=(1,), keepdim=False)
row("sum", "bool-to-i64", lambda r: [bools(r, 3, 4)], _np_sum, axes=(0, 1), keepdim=False, out_dtype=I64)
row("sum", "0d", lambda r: [randn(r)], _np_sum, grad=(0,), axes=(), keepdim=False)

row("amax", "f32-noncontig", lambda r: [transposed(randn(r, 3, 4, 2, dtype=F32))], _np_amax, axes=(0, 2),
    keepdim=False)
row("amax", "f64-keepdim", lambda r: [strided(randn(r, 3, 4))], _np_amax, grad=(0,), axes=(1,), keepdim=True)
row("amax", "f64-all", lambda r: [randn(r, 2, 3)], _np_amax, grad=(0,), axes=(0, 1), keepdim=False)
row("amax", "i64", lambda r: [ints(r, 3, 4)], _np_amax, axes=(0,), keepdim=False)


def _np_argmax(a, axis, keepdim):
    moved = np.moveaxis(a, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    idx = np.array([max(range(len(v)), key=lambda k, v=v: (v[k], -k)) for v in flat], I64)  # first max
    out = idx.reshape(moved.shape[:-1])
    return np.expand_dims(out, axis) if keepdim else out


row("argmax", "f32-noncontig", lambda r: [transposed(randn(r, 4, 3, dtype=F32))], _np_argmax, axis=0,
    keepdim=False, out_dtype=I64)
row("argmax", "ties-first", lambda r: [np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])], _np_argmax, axis=1,
    keepdim=True, out_dtype=I64)
row("argmax", "i64", lambda r: [ints(r, 3, 5, lo=0, hi=3)], _np_argmax, axis=1, keepdim=False, out_dtype=I64)



def _np_argsort(a, axis, descending):
    key = -a if descending else a  # (no NaN or ties in these rows: the stable order of ties is tested in
    return np.argsort(key, axis=axis, kind="stable")  # tests/test_sort_scan.py against PyTorch)


row("argsort", "f32-rows", lambda r: [randn(r, 3, 5, dtype=F32)], _np_argsort, axis=1, descending=False,
    out_dtype=I64)
row("argsort", "f64-desc-noncontig", lambda r: [transposed(randn(r, 4, 3))], _np_argsort, axis=0, descending=True,
    out_dtype=I64)
row("argsort", "i64", lambda r: [np.array([[5, -2, 9], [0, 7, 3]], I64)], _np_argsort, axis=1, descending=True,
    out_dtype=I64)

# ---- movement

row("reshape", "noncontig", lambda r: [transposed(randn(r, 3, 4))],
    lambda a, shape: np.array(a.tolist()).reshape(-1)[np.arange(12)].reshape(shape), grad=(0,), shape=(2, 6))
row("reshape", "to-0d", lambda r: [randn(r, 1, 1)], lambda a, shape: a[0, 0], grad=(0,), shape=())
row("reshape", "i64", lambda r: [strided(ints(r, 2, 3))], lambda a, shape: np.ravel(a).reshape(shape),
    shape=(3, 1, 2))
row("permute", "3d", lambda r: [strided(randn(r, 2, 3, 4))],
    lambda a, dims: np.array([[[a[i, j, k] for i in range(2)] for k in range(4)] for j in range(3)]),
    grad=(0,), dims=(1, 2, 0))
row("permute", "bool", lambda r: [bools(r, 2, 3)], lambda a, dims: a.T, dims=(1, 0))
row("expand", "f64", lambda r: [randn(r, 3, 1)], lambda a, shape: np.tile(a, (1, 4)), grad=(0,), shape=(3, 4))
row("expand", "leading-1", lambda r: [randn(r, 1, 2, 1, dtype=F32)], lambda a, shape: np.tile(a, (3, 1, 2)),
    shape=(3, 2, 2))
row("expand", "i64-noncontig", lambda r: [strided(ints(r, 2, 1))], lambda a, shape: np.tile(a, (1, 3)),
    shape=(2, 3))


def _np_slice(a, starts, stops, steps):
    idx = [np.arange(s0, s1, st) for s0, s1, st in zip(starts, stops, steps)]
    return a[np.ix_(*idx)] if idx else a


row("slice", "steps", lambda r: [randn(r, 7, 5)], _np_slice, grad=(0,), starts=(1, 0), stops=(7, 5),
    steps=(3, 2))
row("slice", "step-overshoot", lambda r: [randn(r, 6, 5)], _np_slice, grad=(0,), starts=(0, 1), stops=(6, 4),
    steps=(4, 1))
row("slice", "empty", lambda r: [randn(r, 4, 3)], _np_slice, grad=(0,), starts=(2, 0), stops=(2, 3),
    steps=(1, 1))
row("slice", "f32-noncontig", lambda r: [transposed(randn(r, 6, 5, dtype=F32))], _np_slice, starts=(1, 2),
    stops=(6, 5), steps=(2, 1))
row("slice", "i64-3d", lambda r: [ints(r, 3, 4, 5)], _np_slice, starts=(0, 1, 2), stops=(3, 4, 5),
    steps=(2, 2, 2))


def _np_pad(a, pads, value=0.0):
    out = np.full(tuple(s + lo + hi for s, (lo, hi) in zip(a.shape, pads)), value, dtype=a.dtype)
    out[tuple(slice(lo, lo + s) for s, (lo, _) in zip(a.shape, pads))] = a
    return out


row("pad", "zeros", lambda r: [strided(randn(r, 2, 3))], _np_pad, grad=(0,), pads=((1, 2), (0, 1)))
row("pad", "value", lambda r: [transposed(randn(r, 2, 3, dtype=F32))], _np_pad, pads=((0, 0), (2, 1)),
    value=-1.5)
row("pad", "i64", lambda r: [ints(r, 2)], _np_pad, pads=((3, 0),), value=7)


def _np_cat(*xs, axis):
    n = sum(x.shape[axis] for x in xs)
    out = np.zeros(xs[0].shape[:axis] + (n,) + xs[0].shape[axis + 1:], xs[0].dtype)
    at = 0
    for x in xs:
        out[(slice(None),) * axis + (slice(at, at + x.shape[axis]),)] = x
        at += x.shape[axis]
    return out


row("cat", "three-axis1", lambda r: [randn(r, 2, 1), transposed(randn(r, 2, 3)), strided(randn(r, 2, 2))],
    _np_cat, grad=(0, 1, 2), axis=1)
row("cat", "f32-axis0", lambda r: [randn(r, 1, 3, dtype=F32), transposed(randn(r, 2, 3, dtype=F32))], _np_cat,
    axis=0)
row("cat", "single", lambda r: [ints(r, 3)], _np_cat, axis=0)
row("cat", "bool", lambda r: [bools(r, 2, 2), bools(r, 2, 1)], _np_cat, axis=1)

# ---- contraction


def _np_matmul(a, b):
    out = np.zeros(a.shape[:-1] + b.shape[-1:], a.dtype)
    for k in range(a.shape[-1]):
        out += a[..., :, k:k + 1] * b[..., k:k + 1, :]
    return out


row("matmul", "2d-noncontig", lambda r: [transposed(randn(r, 3, 4)), strided(randn(r, 4, 2))], _np_matmul,
    grad=(0, 1))
row("matmul", "batched", lambda r: [randn(r, 2, 2, 3), transposed(randn(r, 2, 3, 2))], _np_matmul,
    grad=(0, 1))
row("matmul", "f32", lambda r: [randn(r, 4, 5, dtype=F32), randn(r, 5, 3, dtype=F32)], _np_matmul)
row("matmul", "i64", lambda r: [ints(r, 2, 3), ints(r, 3, 4)], _np_matmul)

# ---- window (naive loop implementations, PyTorch's semantics)


def conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _pad_hw(x, p, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=value)


def naive_conv2d(x, w, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = conv_out(h, kh, stride[0], padding[0], dilation[0]), conv_out(wd, kw, stride[1], padding[1],
                                                                           dilation[1])
    xp, og = _pad_hw(x.astype(F64), padding), o // groups
    out = np.zeros((n, o, oh, ow))
    for oc in range(o):
        chans = slice(oc // og * cg, (oc // og + 1) * cg)
        for i in range(oh):
            for j in range(ow):
                for ki in range(kh):
                    for kj in range(kw):
                        a, b = i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1]
                        out[:, oc, i, j] += xp[:, chans, a, b] @ w[oc, :, ki, kj]
    return out.astype(x.dtype)


def naive_conv2d_grad_input(g, w, input_shape, stride, padding, dilation, groups):
    n, c, h, wd = input_shape
    o, cg, kh, kw = w.shape
    og = o // groups
    dxp = np.zeros((n, c, h + 2 * padding[0], wd + 2 * padding[1]))
    for oc in range(o):
        chans = slice(oc // og * cg, (oc // og + 1) * cg)
        for i in range(g.shape[2]):
            for j in range(g.shape[3]):
                for ki in range(kh):
                    for kj in range(kw):
                        dxp[:, chans, i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1]] += \
                            g[:, oc, i, j][:, None] * w[oc, :, ki, kj][None, :]
    return dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + wd].astype(g.dtype)


def naive_conv2d_grad_weight(x, g, weight_shape, stride, padding, dilation, groups):
    o, cg, kh, kw = weight_shape
    og = o // groups
    xp = _pad_hw(x.astype(F64), padding)
    dw = np.zeros(weight_shape)
    for oc in range(o):
        chans = slice(oc // og * cg, (oc // og + 1) * cg)
        for i in range(g.shape[2]):
            for j in range(g.shape[3]):
                for ki in range(kh):
                    for kj in range(kw):
                        dw[oc, :, ki, kj] += g[:, oc, i, j] @ xp[:, chans, i * stride[0] + ki * dilation[0],
                                                                 j * stride[1] + kj * dilation[1]]
    return dw.astype(g.dtype)


def pool_out(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    o = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (o - 1) * s >= size + p:
        o -= 1
    return o


def _pool_windows(shape, kernel, stride, padding, dilation, ceil_mode):
    """For each output (i, j): the in-bounds input positions of its window, row-major."""
    h, w = shape[2:]
    oh = pool_out(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pool_out(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    out = {}
    for i in range(oh):
        for j in range(ow):
            rows = [i * stride[0] - padding[0] + ki * dilation[0] for ki in range(kernel[0])]
            cols = [j * stride[1] - padding[1] + kj * dilation[1] for kj in range(kernel[1])]
            out[i, j] = [(a, b) for a in rows for b in cols if 0 <= a < h and 0 <= b < w]
    return out, oh, ow


def naive_max_pool2d(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    wins, oh, ow = _pool_windows(x.shape, kernel, stride, padding, dilation, ceil_mode)
    out = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
    for (i, j), pos in wins.items():
        out[:, :, i, j] = np.max(np.stack([x[:, :, a, b] for a, b in pos]), axis=0)
    return out


def naive_max_pool2d_grad(x, g, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    wins, _, _ = _pool_windows(x.shape, kernel, stride, padding, dilation, ceil_mode)
    dx = np.zeros(x.shape, g.dtype)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for (i, j), pos in wins.items():
                vals = [x[n, c, a, b] for a, b in pos]
                a, b = pos[vals.index(max(vals))]  # the first maximum
                dx[n, c, a, b] += g[n, c, i, j]
    return dx


def _avg_divisor(shape, kernel, stride, padding, i, j, count_include_pad, n_valid):
    if not count_include_pad:
        return n_valid
    h, w = shape[2:]
    hs, ws = i * stride[0] - padding[0], j * stride[1] - padding[1]
    he, we = min(hs + kernel[0], h + padding[0]), min(ws + kernel[1], w + padding[1])
    return (he - hs) * (we - ws)


def naive_avg_pool2d(x, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
    wins, oh, ow = _pool_windows(x.shape, kernel, stride, padding, (1, 1), ceil_mode)
    out = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
    for (i, j), pos in wins.items():
        d = _avg_divisor(x.shape, kernel, stride, padding, i, j, count_include_pad, len(pos))
        out[:, :, i, j] = sum(x[:, :, a, b] for a, b in pos) / d
    return out


def naive_avg_pool2d_grad(g, input_shape, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
    wins, _, _ = _pool_windows(input_shape, kernel, stride, padding, (1, 1), ceil_mode)
    dx = np.zeros(input_shape, g.dtype)
    for (i, j), pos in wins.items():
        d = _avg_divisor(input_shape, kernel, stride, padding, i, j, count_include_pad, len(pos))
        for a, b in pos:
            dx[:, :, a, b] += g[:, :, i, j] / d
    return dx


CONV_CONFIGS = {  # label: (x shape, w shape, stride, padding, dilation, groups)
    "plain": ((2, 3, 6, 6), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    "stride-pad-dilation": ((1, 2, 7, 8), (3, 2, 3, 2), (2, 1), (1, 2), (1, 2), 1),
    "groups": ((2, 4, 5, 5), (6, 2, 3, 3), (2, 2), (1, 1), (1, 1), 2),
    "uncovered-edge": ((1, 1, 6, 6), (2, 1, 3, 3), (2, 2), (0, 0), (1, 1), 1),
}
CONV_GRAD_CONFIGS = {
    "grad-groups-stride": ((1, 2, 5, 5), (2, 1, 3, 3), (2, 2), (1, 1), (1, 1), 2),
    "grad-dilation": ((1, 2, 5, 6), (2, 2, 2, 3), (1, 2), (1, 0), (2, 1), 1),
}


def _conv_attrs(cfg):
    _, _, stride, padding, dilation, groups = cfg
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _conv_gshape(cfg):
    (n, _, h, w), (o, _, kh, kw), s, p, d, _ = cfg
    return (n, o, conv_out(h, kh, s[0], p[0], d[0]), conv_out(w, kw, s[1], p[1], d[1]))


for _label, _cfg in {**CONV_CONFIGS, **CONV_GRAD_CONFIGS}.items():
    _g = (0, 1) if _label in CONV_GRAD_CONFIGS else ()
    _attrs = _conv_attrs(_cfg)
    for _dt in (F64,) if _g else (F32, F64):
        _lay = strided if _dt is F32 else (lambda a: a)
        _dn = np.dtype(_dt).name
        row("conv2d", f"{_label}-{_dn}", lambda r, c=_cfg, dt=_dt, lay=_lay: [lay(randn(r, *c[0], dtype=dt)),
                                                                          randn(r, *c[1], dtype=dt)],
            naive_conv2d, grad=_g, **_attrs)
        row("conv2d_grad_input", f"{_label}-{_dn}",
            lambda r, c=_cfg, dt=_dt, lay=_lay: [lay(randn(r, *_conv_gshape(c), dtype=dt)),
                                                 randn(r, *c[1], dtype=dt)],
            naive_conv2d_grad_input, grad=_g, input_shape=_cfg[0], **_attrs)
        row("conv2d_grad_weight", f"{_label}-{_dn}",
            lambda r, c=_cfg, dt=_dt, lay=_lay: [randn(r, *c[0], dtype=dt),
                                                 lay(randn(r, *_conv_gshape(c), dtype=dt))],
            naive_conv2d_grad_weight, grad=_g, weight_shape=_cfg[1], **_attrs)

POOL_CONFIGS = {  # label: (x shape, attrs)
    "k3s2p1": ((2, 2, 7, 7), dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1))),
    "k3s2p1-ceil": ((1, 2, 6, 6), dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True)),
    "k2s2-ceil-partial": ((1, 2, 5, 5), dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=True)),
    "rect": ((1, 1, 5, 7), dict(kernel=(2, 3), stride=(1, 2), padding=(1, 0))),
}
MAXPOOL_ONLY = {"dilation": ((1, 2, 7, 7), dict(kernel=(2, 2), stride=(2, 1), padding=(1, 0),
                                                dilation=(2, 1)))}


def _pool_gshape(xshape, a, dilation=(1, 1)):
    return xshape[:2] + tuple(pool_out(xshape[2 + k], a["kernel"][k], a["stride"][k], a["padding"][k],
                                       a.get("dilation", dilation)[k], a.get("ceil_mode", False))
                              for k in range(2))


for _label, (_xs, _a) in {**POOL_CONFIGS, **MAXPOOL_ONLY}.items():
    row("max_pool2d", f"{_label}-f32", lambda r, xs=_xs: [strided(randn(r, *xs, dtype=F32))],
        naive_max_pool2d, **_a)
    row("max_pool2d", f"{_label}-f64", lambda r, xs=_xs: [randn(r, *xs)], naive_max_pool2d, grad=(0,), **_a)
    row("max_pool2d_grad", _label, lambda r, xs=_xs, a=_a: [randn(r, *xs), randn(r, *_pool_gshape(xs, a))],
        naive_max_pool2d_grad, **_a)


def naive_max_pool2d_argmax(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    wins, oh, ow = _pool_windows(x.shape, kernel, stride, padding, dilation, ceil_mode)
    out = np.zeros(x.shape[:2] + (oh, ow), np.uint8)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for (i, j), pos in wins.items():
                vals = [x[n, c, a, b] for a, b in pos]
                a, b = pos[vals.index(max(vals))]  # the first maximum, as a row-major window index
                ki = (a - (i * stride[0] - padding[0])) // dilation[0]
                kj = (b - (j * stride[1] - padding[1])) // dilation[1]
                out[n, c, i, j] = ki * kernel[1] + kj
    return out


def naive_max_pool2d_grad_argmax(g, idx, input_shape, kernel, stride, padding, dilation=(1, 1),
                                 ceil_mode=False):
    dx = np.zeros(input_shape, g.dtype)
    n, c, oh, ow = g.shape
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    ki, kj = divmod(int(idx[a, b, i, j]), kernel[1])
                    h = i * stride[0] - padding[0] + ki * dilation[0]
                    w = j * stride[1] - padding[1] + kj * dilation[1]
                    dx[a, b, h, w] += g[a, b, i, j]
    return dx


for _label, (_xs, _a) in {**POOL_CONFIGS, **MAXPOOL_ONLY}.items():
    row("max_pool2d_argmax", _label, lambda r, xs=_xs: [randn(r, *xs)], naive_max_pool2d_argmax,
        out_dtype=np.uint8, **_a)
    row("max_pool2d_grad_argmax", _label,
        lambda r, xs=_xs, a=_a: [randn(r, *_pool_gshape(xs, a)),
                                 naive_max_pool2d_argmax(randn(r, *xs), **a)],
        naive_max_pool2d_grad_argmax, input_shape=_xs, **_a)
row("max_pool2d_grad", "ties-first", lambda r: [np.ones((1, 1, 4, 4)), np.arange(4.0).reshape(1, 1, 2, 2)],
    naive_max_pool2d_grad, kernel=(2, 2), stride=(2, 2), padding=(0, 0))

for _label, (_xs, _a) in POOL_CONFIGS.items():
    for _cip in (True, False):
        _aa = dict(_a, count_include_pad=_cip)
        _lab = f"{_label}-{'incl' if _cip else 'excl'}-pad"
        row("avg_pool2d", f"{_lab}-f32", lambda r, xs=_xs: [strided(randn(r, *xs, dtype=F32))],
            naive_avg_pool2d, **_aa)
        row("avg_pool2d", f"{_lab}-f64", lambda r, xs=_xs: [randn(r, *xs)], naive_avg_pool2d, grad=(0,),
            **_aa)
        row("avg_pool2d_grad", _lab, lambda r, xs=_xs, a=_aa: [randn(r, *_pool_gshape(xs, a))],
            naive_avg_pool2d_grad, grad=(0,), input_shape=_xs, **_aa)

# ---- index


def _np_gather(x, idx, axis):
    out = np.zeros(idx.shape, x.dtype)
    for pos in np.ndindex(*idx.shape):
        src = list(pos)
        src[axis] = idx[pos]
        out[pos] = x[tuple(src)]
    return out


def _np_scatter_add(idx, src, axis, shape):
    out = np.zeros(shape, src.dtype)
    for pos in np.ndindex(*idx.shape):
        dst = list(pos)
        dst[axis] = idx[pos]
        out[tuple(dst)] += src[pos]
    return out


row("gather", "axis1-repeats", lambda r: [randn(r, 3, 4), np.array([[0, 0], [3, 1], [2, 2]])], _np_gather,
    grad=(0,), axis=1)
row("gather", "axis0-noncontig",
    lambda r: [transposed(randn(r, 3, 2, dtype=F32)), strided(ints(r, 4, 2, lo=0, hi=3))], _np_gather, axis=0)
row("gather", "i64-3d", lambda r: [ints(r, 2, 3, 2), ints(r, 2, 3, 4, lo=0, hi=2)], _np_gather, axis=2)
row("check_index", "in-range", lambda r: [ints(r, 3, 4, lo=0, hi=5)], lambda a, **_: a, low=0, high=5,
    message="t: index {value} is bad")
row("check_index", "negative-range-ignore-noncontig", lambda r: [strided(np.array([[-3, 2, -100], [0, -100, -1]]))],
    lambda a, **_: a, low=-3, high=3, ignore=-100, error="target", message="t: label {value}")
row("scatter_add", "axis0-duplicates", lambda r: [np.array([[0, 2], [0, 0], [1, 2]]), randn(r, 3, 2)],
    _np_scatter_add, grad=(1,), axis=0, shape=(3, 2), out_dtype=F64)
row("scatter_add", "axis1-f32", lambda r: [strided(ints(r, 2, 5, lo=0, hi=3)), randn(r, 2, 5, dtype=F32)],
    _np_scatter_add, axis=1, shape=(2, 3), out_dtype=F32)

# ---- random: the counter-based stream, re-derived with Python integers

_MASK = 2**64 - 1


def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _py_uniform(state, shape, dtype):
    seed, offset = int(state[0]) & _MASK, int(state[1])
    key = _mix64((seed * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & _MASK)
    vals = [(_mix64(((offset + i) * 0xD1B54A32D192ED03 + key) & _MASK) >> 40) / 2**24
            for i in range(math.prod(shape))]
    return np.array(vals).reshape(shape).astype(dtype.np)


row("uniform", "f32", lambda r: [np.array([0, 0], I64)], _py_uniform, shape=(3, 4), dtype=D.float32,
    out_dtype=F32)
row("uniform", "f64-offset", lambda r: [np.array([123456789, 1000], I64)], _py_uniform, shape=(5,),
    dtype=D.float64, out_dtype=F64)
row("uniform", "negative-seed", lambda r: [np.array([-5, 7], I64)], _py_uniform, shape=(2, 2),
    dtype=D.float32, out_dtype=F32)

# ---- collectives, in a world of one rank (tests/distributed runs them across processes under mpiexec)


def _same(a, *_, **__):
    return a


row("all_reduce", "f32-sum-noncontig", lambda r: [transposed(randn(r, 3, 4, dtype=F32))], _same, reduce="sum")
row("all_reduce", "f64-avg", lambda r: [randn(r, 5)], _same, reduce="avg")
row("all_reduce", "i64-max-strided", lambda r: [strided(ints(r, 2, 3))], _same, reduce="max")
row("all_reduce", "bool-product", lambda r: [bools(r, 4)], _same, reduce="product")
row("all_reduce_start", "f32-min", lambda r: [randn(r, 2, 3, dtype=F32)], _same, reduce="min")
row("all_reduce_wait", "f32", lambda r: [randn(r, 2, 3, dtype=F32), randn(r, 2, 3, dtype=F32)], _same)
row("broadcast", "f32-noncontig", lambda r: [transposed(randn(r, 3, 2, dtype=F32))], _same, src=0)
row("all_gather", "i64", lambda r: [ints(r, 2, 3)], _same, world_size=1)
row("barrier", "no-inputs", lambda r: [], lambda **_: np.array(True), out_dtype=B)

# ----------------------------------------------------------------------------------------------- tests


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == F32 else dict(rtol=1e-10, atol=1e-12)


def test_every_primitive_has_a_row():
    missing = sorted(set(OPS) - {c.op for c in CASES})
    assert not missing, f"primitives without a row in the op test table: {missing}"
    unknown = sorted({c.op for c in CASES} - set(OPS))
    assert not unknown, f"rows for ops that are not in OPS: {unknown}"


def test_every_differentiable_primitive_is_gradchecked():
    for name, op in OPS.items():
        assert (op.grad is None) == (name in NONDIFFERENTIABLE), f"{name}: grad rule presence changed"
    checked = {c.op for c in CASES if c.grad}
    assert not sorted(set(OPS) - NONDIFFERENTIABLE - checked)


def test_op_records_are_consistent():
    for name, op in OPS.items():
        assert op.name == name
        assert isinstance(op.kind, Kind)
        assert (op.expr is not None) == (op.kind is Kind.ELEMENTWISE), name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward(case, rng):
    arrays = case.make(rng)
    before = [a.copy() for a in arrays]
    # (_from_array: the op table's internal dtypes, uint8 argmax indices, which from_numpy does not take)
    with single_process() if OPS[case.op].kind is Kind.COLLECTIVE else contextlib.nullcontext():
        out = apply(OPS[case.op], *[_from_array(a) for a in arrays], **case.attrs)
    expected = np.asarray(case.expect(*before, **case.attrs))
    out_dtype = np.dtype(case.out_dtype or arrays[0].dtype)
    assert out.dtype.np == out_dtype
    assert tuple(out.shape) == expected.shape
    got = out.numpy()
    if out_dtype.kind == "f":
        np.testing.assert_allclose(got, expected.astype(out_dtype), **_tol(out_dtype))
    else:
        np.testing.assert_array_equal(got, expected.astype(out_dtype))
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)  # inputs are never written


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=lambda c: c.id)
def test_gradient(case, rng):
    args = []
    for i, a in enumerate(case.make(rng)):
        t = tj.from_numpy(a.astype(F64) if a.dtype.kind == "f" else a)
        args.append(t.requires_grad_() if i in case.grad else t)
    assert gradcheck(lambda *ts: apply(OPS[case.op], *ts, **case.attrs), args)


# ---- window ops against torch


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


@needs_torch
@pytest.mark.parametrize("label", list({**CONV_CONFIGS, **CONV_GRAD_CONFIGS}))
def test_conv2d_family_matches_torch(label, rng):
    cfg = {**CONV_CONFIGS, **CONV_GRAD_CONFIGS}[label]
    attrs = _conv_attrs(cfg)
    x, w, g = randn(rng, *cfg[0]), randn(rng, *cfg[1]), randn(rng, *_conv_gshape(cfg))
    targs = dict(stride=cfg[2], padding=cfg[3], dilation=cfg[4], groups=cfg[5])
    got = apply(OPS["conv2d"], tj.from_numpy(x), tj.from_numpy(w), **attrs).numpy()
    np.testing.assert_allclose(got, F.conv2d(_t(x), _t(w), **targs).numpy(), rtol=1e-10, atol=1e-12)
    gx = apply(OPS["conv2d_grad_input"], tj.from_numpy(g), tj.from_numpy(w), input_shape=x.shape, **attrs)
    np.testing.assert_allclose(gx.numpy(), torch.nn.grad.conv2d_input(x.shape, _t(w), _t(g), **targs).numpy(),
                               rtol=1e-10, atol=1e-12)
    gw = apply(OPS["conv2d_grad_weight"], tj.from_numpy(x), tj.from_numpy(g), weight_shape=w.shape, **attrs)
    expected = torch.nn.grad.conv2d_weight(_t(x), w.shape, _t(g), **targs).numpy()
    np.testing.assert_allclose(gw.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("label", list({**CONV_CONFIGS, **CONV_GRAD_CONFIGS}))
def test_conv2d_grads_are_adjoints_of_conv2d(label, rng):
    """<conv2d(x, w), g> = <x, grad_input(g, w)> = <w, grad_weight(x, g)>: conv2d is bilinear."""
    cfg = {**CONV_CONFIGS, **CONV_GRAD_CONFIGS}[label]
    attrs = _conv_attrs(cfg)
    x, w, g = randn(rng, *cfg[0]), randn(rng, *cfg[1]), randn(rng, *_conv_gshape(cfg))
    y = apply(OPS["conv2d"], tj.from_numpy(x), tj.from_numpy(w), **attrs).numpy()
    gx = apply(OPS["conv2d_grad_input"], tj.from_numpy(g), tj.from_numpy(w), input_shape=x.shape, **attrs)
    gw = apply(OPS["conv2d_grad_weight"], tj.from_numpy(x), tj.from_numpy(g), weight_shape=w.shape, **attrs)
    assert np.vdot(y, g) == pytest.approx(np.vdot(x, gx.numpy()), rel=1e-10)
    assert np.vdot(y, g) == pytest.approx(np.vdot(w, gw.numpy()), rel=1e-10)


@needs_torch
@pytest.mark.parametrize("label", list({**POOL_CONFIGS, **MAXPOOL_ONLY}))
def test_max_pool2d_matches_torch(label, rng):
    xs, a = {**POOL_CONFIGS, **MAXPOOL_ONLY}[label]
    x = randn(rng, *xs)
    g = randn(rng, *_pool_gshape(xs, a))
    targs = dict(kernel_size=a["kernel"], stride=a["stride"], padding=a["padding"],
                 dilation=a.get("dilation", (1, 1)), ceil_mode=a.get("ceil_mode", False))
    tx = _t(x).requires_grad_()
    ty = F.max_pool2d(tx, **targs)
    ty.backward(_t(g))
    y = apply(OPS["max_pool2d"], tj.from_numpy(x), **a)
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    gx = apply(OPS["max_pool2d_grad"], tj.from_numpy(x), tj.from_numpy(g), **a)
    np.testing.assert_allclose(gx.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("label", list(POOL_CONFIGS))
def test_avg_pool2d_matches_torch(label, count_include_pad, rng):
    xs, a = POOL_CONFIGS[label]
    a = dict(a, count_include_pad=count_include_pad)
    x = randn(rng, *xs)
    g = randn(rng, *_pool_gshape(xs, a))
    tx = _t(x).requires_grad_()
    ty = F.avg_pool2d(tx, a["kernel"], a["stride"], a["padding"], ceil_mode=a.get("ceil_mode", False),
                      count_include_pad=count_include_pad)
    ty.backward(_t(g))
    y = apply(OPS["avg_pool2d"], tj.from_numpy(x), **a)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    gx = apply(OPS["avg_pool2d_grad"], tj.from_numpy(g), input_shape=xs, **a)
    np.testing.assert_allclose(gx.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


# ---- uniform


def _uniform(seed, offset, n, dtype=D.float32):
    state = tj.from_numpy(np.array([seed, offset], I64))
    return apply(OPS["uniform"], state, shape=(n,), dtype=dtype).numpy()


def test_uniform_range_and_determinism():
    a = _uniform(7, 0, 20000)
    assert a.min() >= 0.0 and a.max() < 1.0
    np.testing.assert_array_equal(a, _uniform(7, 0, 20000))
    assert abs(a.mean() - 0.5) < 0.01
    assert abs(a.var() - 1 / 12) < 0.005
    assert len(np.unique(a)) > 19000


def test_uniform_is_counter_based():
    a = _uniform(7, 0, 100)
    np.testing.assert_array_equal(_uniform(7, 40, 60), a[40:])  # value i depends on (seed, offset + i) only
    assert not np.array_equal(_uniform(7, 100, 100), a)  # the next offsets give a fresh stream
    assert not np.array_equal(_uniform(8, 0, 100), a)  # and so does another seed
    assert abs(np.corrcoef(_uniform(7, 100, 5000), _uniform(7, 5100, 5000))[0, 1]) < 0.05


def test_uniform_float64_uses_the_same_bits():
    np.testing.assert_array_equal(_uniform(3, 5, 50, D.float64), _uniform(3, 5, 50, D.float32).astype(F64))


def test_inf_and_nan_come_silently_as_in_pytorch():
    """inf * 0, inf - inf, exp overflow, log(0), a float32 sum past its range: values as PyTorch computes them,
    and no NumPy RuntimeWarning (the eager ops' NumPy references run with its floating-point warnings off)."""
    import warnings

    torch = pytest.importorskip("torch")
    x = np.array([np.inf, -np.inf, 0.0, 100.0, 3e38], np.float32)
    cases = [lambda m, t: t * 0.0, lambda m, t: t - t, lambda m, t: m.exp(t), lambda m, t: m.log(t * 0.0),
             lambda m, t: (t * t).sum(), lambda m, t: t / (t * 0.0)]
    for case in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = case(tj, tj.tensor(x)).numpy()
        want = case(torch, torch.tensor(x)).numpy()
        np.testing.assert_array_equal(got, want)
