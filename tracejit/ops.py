"""THE op table: one OpDef per primitive op, holding every fact about it.

Each record has its kind (drives fusion), `infer` (shape/dtype rule and the user's error on misuse),
`ref` (the NumPy reference: eager kernel, reference backend, test oracle), `grad` (written with tensor
ops, so it traces) and, for elementwise ops, the scalar expression every code-generating backend spells
(`expr`, written in the vocabulary of tracejit/scalar.py, whose functions state their NaN/inf rules).
Nothing else defines an op; composites (softmax, linear, ...) are written with these.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import dispatch as _dispatch  # gradient rules make ops through the one dispatch point
from . import dtypes as D
from . import ref_kernels as K
from . import scalar as S
from .dtypes import TensorType  # noqa: F401 (the static type ops infer; also tracejit.ops.TensorType)
from .errors import OpError, OpIndexError, OpTypeError, TargetIndexError, shape_str


def _special():
    """scipy.special, imported at the first sigmoid or erf on the reference backend: importing it costs ~0.15 s,
    a quarter of `import tracejit`, which most programs never need."""
    from scipy import special

    return special


class Kind(enum.Enum):
    ELEMENTWISE = "elementwise"
    REDUCE = "reduce"
    MOVEMENT = "movement"
    CONTRACTION = "contraction"
    WINDOW = "window"
    INDEX = "index"
    RANDOM = "random"
    COLLECTIVE = "collective"  # communication between the ranks of a job (tracejit.distributed): kept, in order


@dataclass(frozen=True)
class OpDef:
    """One primitive op. `expr`, for ELEMENTWISE ops only, is its value at one index as a scalar expression
    over the op's inputs (S.X, S.Y, S.Z) in the vocabulary of tracejit/scalar.py; backends spell it."""

    name: str
    kind: Kind
    infer: Callable = field(repr=False)
    ref: Callable = field(repr=False)
    grad: Callable | None = field(default=None, repr=False)
    expr: S.Expr | None = None
    doc: str = ""

    def __repr__(self) -> str:
        return f"<op {self.name}>"


OPS: dict[str, OpDef] = {}


def _op(name, kind, infer, ref, grad=None, expr=None, doc=""):
    op = OpDef(name, kind, infer, _quiet(ref), grad, expr, doc)
    OPS[name] = op
    return op


def _quiet(ref):
    """`ref` with NumPy's floating-point warnings off: PyTorch computes inf and nan silently (inf * 0, inf - inf,
    exp overflow, a sum past float32's range), and the NumPy references are what eager ops without a backend
    kernel, the reference backend and a tiered variant's first calls run."""
    if ref is None:
        return None

    def quiet(*args, **kwargs):
        with np.errstate(all="ignore"):
            return ref(*args, **kwargs)
    quiet.__wrapped__ = ref
    quiet.__name__ = getattr(ref, "__name__", "ref")
    quiet.__doc__ = getattr(ref, "__doc__", None)
    return quiet


# ----------------------------------------------------------------------------------------------- helpers


def broadcast_shapes(opname: str, *shapes) -> tuple:
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(ndim):
        dims = {s[len(s) - ndim + i] for s in shapes if len(s) - ndim + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            listed = " and ".join(shape_str(s) for s in shapes)
            raise OpError(f"{opname}: shapes {listed} cannot be broadcast together "
                          f"(dimension {i - ndim}: sizes {sorted(dims)})")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _same_dtype(opname, types):
    d = types[0].dtype
    for t in types[1:]:
        if t.dtype is not d:
            raise OpTypeError(f"{opname}: inputs have different dtypes {d.name} and {t.dtype.name}")
    return d


def _need_float(opname, t):
    if not t.dtype.is_floating_point:
        raise OpTypeError(f"{opname}: expected a floating-point tensor, got {t.dtype.name} of shape "
                          f"{shape_str(t.shape)}")


def unbroadcast(g, shape):
    """Sum `g` down to `shape` (the gradient of a broadcast)."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1)
    if axes:
        g = g.sum(axes)
    return g.reshape(shape) if tuple(g.shape) != tuple(shape) else g


# ----------------------------------------------------------------------------------------------- elementwise


# PyTorch refuses these on bool tensors (their results would not be 0/1 or make no sense for a mask)
_BOOL_ERRORS = {
    "neg": "neg: negation, the `-` operator, on a bool tensor is not supported. If you are trying to invert a mask, "
           "use the `~` or `logical_not()` operator instead.",
    "abs": "abs: \"abs_cpu\" not implemented for 'Bool'",
    "relu": "relu: Boolean inputs not supported for relu",
}


def _unary_infer(name, float_only=True):
    def infer(x):
        if float_only:
            _need_float(name, x)
        if x.dtype is D.bool_ and name in _BOOL_ERRORS:
            raise OpTypeError(_BOOL_ERRORS[name])
        return TensorType(x.shape, x.dtype)
    return infer


def _binary_infer(name, out_dtype=None, float_only=False):
    def infer(a, b):
        d = _same_dtype(name, (a, b))
        if float_only:
            _need_float(name, a)
        return TensorType(broadcast_shapes(name, a.shape, b.shape), out_dtype or d)
    return infer


def _unary(name, fn, grad, expr, float_only=True, doc=""):
    return _op(name, Kind.ELEMENTWISE, _unary_infer(name, float_only), fn, grad, expr, doc)


def _g_ub(ctx, i, g):
    return unbroadcast(g, ctx.in_types[i].shape)


NEG = _unary("neg", np.negative, lambda c, g: [-g], S.neg(S.X), float_only=False)
EXP = _unary("exp", np.exp, lambda c, g: [g * c.output()], S.exp(S.X))
LOG = _unary("log", np.log, lambda c, g: [g / c.input(0)], S.log(S.X))
SQRT = _unary("sqrt", np.sqrt, lambda c, g: [g / (c.output() * 2.0)], S.sqrt(S.X))
ABS = _unary("abs", np.abs, lambda c, g: [g * c.input(0).sign()], S.abs_(S.X), float_only=False)
SIGN = _unary("sign", lambda x: x.copy() if x.dtype == np.bool_ else np.sign(x), None, S.sign(S.X),
              float_only=False)  # (NumPy has no sign of bools; PyTorch's is the bool itself)
TANH = _unary("tanh", np.tanh, lambda c, g: [g * (1.0 - c.output() * c.output())], S.tanh(S.X))
SIGMOID = _unary("sigmoid", lambda x: _special().expit(x),
                 lambda c, g: [g * c.output() * (1.0 - c.output())], S.sigmoid(S.X))
RELU = _unary("relu", lambda x: np.maximum(x, x.dtype.type(0)),
              lambda c, g: [g * (c.output() > 0).to(g.dtype)], S.relu(S.X), float_only=False)
SIN = _unary("sin", np.sin, lambda c, g: [g * c.input(0).cos()], S.sin(S.X))
COS = _unary("cos", np.cos, lambda c, g: [-(g * c.input(0).sin())], S.cos(S.X))
ERF = _unary("erf", lambda x: _special().erf(x),
             lambda c, g: [g * (c.input(0) * c.input(0) * -1.0).exp() * (2.0 / math.sqrt(math.pi))],
             S.erf(S.X))


def _logical_not_infer(x):
    if x.dtype is not D.bool_:
        raise OpTypeError(f"logical_not: expected a bool tensor, got {x.dtype.name}")
    return x


LOGICAL_NOT = _op("logical_not", Kind.ELEMENTWISE, _logical_not_infer, np.logical_not, None, S.not_(S.X))


def _pow_grad(c, g):
    a, b = c.input(0), c.input(1)
    out = c.output()
    ga = unbroadcast(g * b * a.pow(b - 1.0), c.in_types[0].shape)
    # d/db a**b = a**b * log(a); define it as 0 where a == 0 (as PyTorch does for the common b > 0 case)
    safe_log = a.where(a > 0, 1.0).log()
    gb = unbroadcast(g * out * safe_log, c.in_types[1].shape)
    return [ga, gb]


ADD = _op("add", Kind.ELEMENTWISE, _binary_infer("add"), np.add,
          lambda c, g: [_g_ub(c, 0, g), _g_ub(c, 1, g)], S.add(S.X, S.Y))
SUB = _op("sub", Kind.ELEMENTWISE, _binary_infer("sub"), np.subtract,
          lambda c, g: [_g_ub(c, 0, g), _g_ub(c, 1, -g)], S.sub(S.X, S.Y))
MUL = _op("mul", Kind.ELEMENTWISE, _binary_infer("mul"), np.multiply,
          lambda c, g: [_g_ub(c, 0, g * c.input(1)), _g_ub(c, 1, g * c.input(0))], S.mul(S.X, S.Y))
def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):  # x/0 is inf and 0/0 nan, silently, as in PyTorch
        return np.divide(a, b)


DIV = _op("div", Kind.ELEMENTWISE, _binary_infer("div", float_only=True), _div,
          lambda c, g: [_g_ub(c, 0, g / c.input(1)),
                        _g_ub(c, 1, -(g * c.output()) / c.input(1))], S.div(S.X, S.Y))
POW = _op("pow", Kind.ELEMENTWISE, _binary_infer("pow", float_only=True), np.power, _pow_grad,
          S.pow_(S.X, S.Y))


def _rounded_div_infer(name):
    def infer(a, b):
        d = _same_dtype(name, (a, b))
        if d is D.bool_:
            raise OpTypeError(f"{name}: not implemented for bool tensors (as PyTorch's \"div_floor\" / "
                              f"\"div_trunc\"); convert them to an integer dtype first")
        return TensorType(broadcast_shapes(name, a.shape, b.shape), d)
    return infer


def _floor_divide(a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # x // 0.0 is x / 0.0, as in PyTorch
        return np.floor_divide(a, b)


def _trunc_divide(a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if np.issubdtype(np.result_type(a, b), np.floating):
            return np.trunc(np.divide(a, b))
        q = np.floor_divide(a, b)
        up = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))  # floor rounded a negative quotient down
        return (q + up).astype(q.dtype)


def _zero_grads(c, g):
    """Rounded divisions are piecewise constant: zero gradients (PyTorch's for div with a rounding_mode)."""
    return [_dispatch.apply(FULL, shape=tuple(t.shape), value=0.0, dtype=t.dtype) if t.dtype.is_floating_point
            else None for t in c.in_types]


FLOOR_DIVIDE = _op("floor_divide", Kind.ELEMENTWISE, _rounded_div_infer("floor_divide"), _floor_divide, _zero_grads,
                   S.floordiv(S.X, S.Y), doc="x // y (rounded toward -inf)")
TRUNC_DIVIDE = _op("trunc_divide", Kind.ELEMENTWISE, _rounded_div_infer("trunc_divide"), _trunc_divide, _zero_grads,
                   S.truncdiv(S.X, S.Y), doc="x / y rounded toward zero")


def _remainder(a, b):
    """PyTorch's remainder: for floats fmod(a, b) moved by b where it is non-zero and its sign differs from b's
    (-2.0 % 2.0 = -0.0 and 7 % -inf = -inf, as PyTorch, where Python and np.remainder give 0.0 and -inf); for
    integers floor modulo (Python's %; a zero divisor raises before this runs)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if np.issubdtype(np.result_type(a, b), np.floating):
            m = np.fmod(a, b)
            return np.where((m != 0) & ((b < 0) != (m < 0)), m + b, m).astype(m.dtype)
        return np.remainder(a, b)


def _fmod(a, b):
    """C's fmod: the remainder of the quotient rounded toward zero (the sign of a), for floats and integers."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.fmod(a, b)


def _mod_grads(rounded):
    """d(a - b * q)/da = 1, d/db = -q, with q = a / b rounded as the op rounds it (PyTorch's formulas)."""
    def grad(c, g):
        q = _dispatch.apply(rounded, c.input(0), c.input(1))
        return [_g_ub(c, 0, g), _g_ub(c, 1, -(g * q))]
    return grad


REMAINDER = _op("remainder", Kind.ELEMENTWISE, _rounded_div_infer("remainder"), _remainder,
                _mod_grads(FLOOR_DIVIDE), S.remainder(S.X, S.Y),
                doc="x % y with the sign of y (Python's / PyTorch's remainder)")
FMOD = _op("fmod", Kind.ELEMENTWISE, _rounded_div_infer("fmod"), _fmod, _mod_grads(TRUNC_DIVIDE),
           S.fmod(S.X, S.Y), doc="C's fmod: x - trunc(x / y) * y, with the sign of x")


def _minmax_grad(c, g, pick_first):
    a, b = c.input(0), c.input(1)
    first = (a >= b) if pick_first else (a <= b)
    m = first.to(g.dtype)
    return [_g_ub(c, 0, g * m), _g_ub(c, 1, g * (1.0 - m))]


MAXIMUM = _op("maximum", Kind.ELEMENTWISE, _binary_infer("maximum"), np.maximum,
              lambda c, g: _minmax_grad(c, g, True), S.maximum(S.X, S.Y))
MINIMUM = _op("minimum", Kind.ELEMENTWISE, _binary_infer("minimum"), np.minimum,
              lambda c, g: _minmax_grad(c, g, False), S.minimum(S.X, S.Y))

_CMP = {"eq": (np.equal, S.eq), "ne": (np.not_equal, S.ne), "lt": (np.less, S.lt),
        "le": (np.less_equal, S.le), "gt": (np.greater, S.gt), "ge": (np.greater_equal, S.ge)}
for _name, (_fn, _scalar) in _CMP.items():
    _op(_name, Kind.ELEMENTWISE, _binary_infer(_name, out_dtype=D.bool_), _fn, None, _scalar(S.X, S.Y))
EQ, NE, LT, LE, GT, GE = (OPS[n] for n in _CMP)


def _where_infer(c, a, b):
    if c.dtype is not D.bool_:
        raise OpTypeError(f"where: condition must be a bool tensor, got {c.dtype.name}")
    d = _same_dtype("where", (a, b))
    return TensorType(broadcast_shapes("where", c.shape, a.shape, b.shape), d)


def _where_grad(c, g):
    cond = c.input(0)
    return [None, _g_ub(c, 1, g.where(cond, 0.0)), _g_ub(c, 2, g.masked_fill(cond, 0.0))]


WHERE = _op("where", Kind.ELEMENTWISE, _where_infer, np.where, _where_grad, S.select(S.X, S.Y, S.Z))


def _cast_grad(c, g):
    src = c.in_types[0].dtype
    return [g.to(src) if src.is_floating_point else None]


def _cast(x, dtype):
    with np.errstate(over="ignore", invalid="ignore"):  # 70000.0 -> float16 is inf, silently, as in PyTorch
        return x.astype(dtype.np)


CAST = _op("cast", Kind.ELEMENTWISE, lambda x, dtype: TensorType(x.shape, dtype), _cast, _cast_grad,
           S.cast(S.X))


def _full_infer(shape, value, dtype):
    return TensorType(tuple(shape), dtype)


FULL = _op("full", Kind.ELEMENTWISE, _full_infer,
           lambda shape, value, dtype: np.full(shape, value, dtype=dtype.np), None, S.constant(),
           doc="a constant broadcast to `shape`")

# ----------------------------------------------------------------------------------------------- reductions


def _norm_axes(opname, axes, ndim):
    out = []
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise OpError(f"{opname}: dimension {a} out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim if ndim else 0)
    return tuple(sorted(set(out)))


def _reduce_shape(shape, axes, keepdim):
    if keepdim:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _sum_infer(x, axes, keepdim):
    dtype = D.int64 if x.dtype.category < 2 else x.dtype
    return TensorType(_reduce_shape(x.shape, axes, keepdim), dtype)


def _kept(g, c):
    """`g` reshaped to the input's rank with reduced axes of size 1 (so it broadcasts back)."""
    shape = _reduce_shape(c.in_types[0].shape, c.attrs["axes"], True)
    return g if tuple(g.shape) == shape else g.reshape(shape)


def _sum_grad(c, g):
    return [_kept(g, c).expand(c.in_types[0].shape)]


SUM = _op("sum", Kind.REDUCE, _sum_infer,
          lambda x, axes, keepdim: np.sum(x, axis=axes, keepdims=keepdim,
                                          dtype=np.int64 if x.dtype.kind in "biu" else x.dtype),
          _sum_grad)


def _amax_grad(c, g):
    x = c.input(0)
    out = _kept(c.output(), c)
    mask = (x == out).to(g.dtype)
    count = mask.sum(c.attrs["axes"], keepdim=True)
    return [_kept(g, c) * mask / count]


def _amax_infer(x, axes, keepdim):
    for a in axes:
        if x.shape[a] == 0:
            raise OpError(f"amax: cannot reduce over the empty dimension {a} of shape {shape_str(x.shape)}")
    return TensorType(_reduce_shape(x.shape, axes, keepdim), x.dtype)


AMAX = _op("amax", Kind.REDUCE, _amax_infer,
           lambda x, axes, keepdim: np.max(x, axis=axes, keepdims=keepdim), _amax_grad)
ARGMAX = _op("argmax", Kind.REDUCE,
             lambda x, axis, keepdim: TensorType(_reduce_shape(x.shape, (axis,), keepdim), D.int64),
             lambda x, axis, keepdim: np.argmax(x, axis=axis, keepdims=keepdim))

# ----------------------------------------------------------------------------------------------- movement


def _reshape_infer(x, shape):
    if math.prod(shape) != x.numel:
        raise OpError(f"reshape: shape {shape_str(shape)} is invalid for input of shape "
                      f"{shape_str(x.shape)} ({x.numel} elements)")
    return TensorType(tuple(shape), x.dtype)


RESHAPE = _op("reshape", Kind.MOVEMENT, _reshape_infer, lambda x, shape: np.reshape(x, shape),
              lambda c, g: [g.reshape(c.in_types[0].shape)])


def _permute_infer(x, dims):
    if sorted(dims) != list(range(x.ndim)):
        raise OpError(f"permute: dims {tuple(dims)} are not a permutation of the {x.ndim} dimensions "
                      f"of shape {shape_str(x.shape)}")
    return TensorType(tuple(x.shape[d] for d in dims), x.dtype)


PERMUTE = _op("permute", Kind.MOVEMENT, _permute_infer, lambda x, dims: np.transpose(x, dims),
              lambda c, g: [g.permute(tuple(np.argsort(c.attrs["dims"]).tolist()))])


def _expand_infer(x, shape):
    if len(shape) != x.ndim or any(s != t and s != 1 for s, t in zip(x.shape, shape)):
        raise OpError(f"expand: cannot expand shape {shape_str(x.shape)} to {shape_str(shape)}")
    return TensorType(tuple(shape), x.dtype)


EXPAND = _op("expand", Kind.MOVEMENT, _expand_infer, lambda x, shape: np.broadcast_to(x, shape),
             lambda c, g: [unbroadcast(g, c.in_types[0].shape)])


def _slice_infer(x, starts, stops, steps):
    if not (len(starts) == len(stops) == len(steps) == x.ndim):
        raise OpError(f"slice: expected {x.ndim} start/stop/step entries for shape {shape_str(x.shape)}")
    shape = []
    for size, a, b, s in zip(x.shape, starts, stops, steps):
        if s <= 0 or not (0 <= a <= size) or not (0 <= b <= size):
            raise OpError(f"slice: invalid range {a}:{b}:{s} for a dimension of size {size}")
        shape.append(max(0, (b - a + s - 1) // s))
    return TensorType(tuple(shape), x.dtype)


def _slice_ref(x, starts, stops, steps):
    return x[tuple(slice(a, b, s) for a, b, s in zip(starts, stops, steps))]


def _slice_grad(c, g):
    """Scatter `g` back: pad for unit steps, interleave zeros (reshape + pad) for larger ones."""
    in_shape = c.in_types[0].shape
    for axis, (step, size) in enumerate(zip(c.attrs["steps"], in_shape)):
        if step > 1:
            n = g.shape[axis]
            gs = list(g.shape)
            g = g.reshape(tuple(gs[:axis + 1] + [1] + gs[axis + 1:]))
            pads = [(0, 0)] * g.ndim
            pads[axis + 1] = (0, step - 1)
            g = g.pad(tuple(pads)).reshape(tuple(gs[:axis] + [n * step] + gs[axis + 1:]))
            # n*step may overshoot the region start..size: trim with a slice
            keep = min(n * step, size - c.attrs["starts"][axis])
            if keep != n * step:
                starts = [0] * g.ndim
                stops = list(g.shape)
                stops[axis] = keep
                g = g._slice(tuple(starts), tuple(stops), (1,) * g.ndim)
    pads = tuple((a, size - a - n) for a, size, n in zip(c.attrs["starts"], in_shape, g.shape))
    return [g.pad(pads)]


SLICE = _op("slice", Kind.MOVEMENT, _slice_infer, _slice_ref, _slice_grad)


def _pad_infer(x, pads, value=0.0):
    if len(pads) != x.ndim or any(lo < 0 or hi < 0 for lo, hi in pads):
        raise OpError(f"pad: need one non-negative (before, after) pair per dimension of "
                      f"{shape_str(x.shape)}, got {pads}")
    return TensorType(tuple(s + lo + hi for s, (lo, hi) in zip(x.shape, pads)), x.dtype)


def _pad_grad(c, g):
    pads = c.attrs["pads"]
    shape = c.in_types[0].shape
    return [g._slice(tuple(lo for lo, _ in pads), tuple(lo + s for (lo, _), s in zip(pads, shape)),
                     (1,) * len(shape))]


PAD = _op("pad", Kind.MOVEMENT, _pad_infer,
          lambda x, pads, value=0.0: np.pad(x, pads, constant_values=value), _pad_grad)


def _cat_infer(*xs, axis):
    if not xs:
        raise OpError("cat: expected a non-empty list of tensors")
    d = _same_dtype("cat", xs)
    first = xs[0].shape
    for x in xs[1:]:
        if len(x.shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(first, x.shape))
                                             if i != axis):
            raise OpError(f"cat: shapes {shape_str(first)} and {shape_str(x.shape)} differ outside "
                          f"dimension {axis}")
    shape = list(first)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return TensorType(tuple(shape), d)


def _cat_grad(c, g):
    axis = c.attrs["axis"]
    out, start = [], 0
    for t in c.in_types:
        starts = [0] * g.ndim
        stops = list(g.shape)
        starts[axis], stops[axis] = start, start + t.shape[axis]
        out.append(g._slice(tuple(starts), tuple(stops), (1,) * g.ndim))
        start += t.shape[axis]
    return out


CAT = _op("cat", Kind.MOVEMENT, _cat_infer, lambda *xs, axis: np.concatenate(xs, axis=axis), _cat_grad)

# ----------------------------------------------------------------------------------------------- contraction


def check_same_dtype(opname, a, b, names=("m1", "m2"), hint=None):
    """PyTorch's rule for contractions (matmul, linear, conv2d): operands of one dtype, no promotion, so a
    float64 batch fed to a float32 model raises instead of silently training in float64.

    `a`, `b` are tensors or TensorTypes; `names` are what the message calls them."""
    if a.dtype is not b.dtype:
        n1, n2 = names
        hint = hint or f"convert one operand with .to(tracejit.{a.dtype.name}) or .to(tracejit.{b.dtype.name})"
        raise OpTypeError(f"{opname}: expected {n1} and {n2} to have the same dtype, but got: {a.dtype.name} != "
                          f"{b.dtype.name} ({n1} {shape_str(a.shape)}, {n2} {shape_str(b.shape)}); {hint}")
    return a.dtype


def _matmul_infer(a, b):
    d = check_same_dtype("matmul", a, b)
    if a.ndim < 2 or a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise OpError(f"matmul: shapes {shape_str(a.shape)} and {shape_str(b.shape)} cannot be multiplied "
                      f"({a.shape[-1] if a.ndim else '?'} != {b.shape[-2] if b.ndim > 1 else '?'})")
    if d is D.bool_:
        raise OpTypeError("matmul: bool tensors cannot be multiplied")
    return TensorType(a.shape[:-1] + (b.shape[-1],), d)


def _matmul_grad(c, g):
    a, b = c.input(0), c.input(1)
    return [g.matmul(b.transpose(-1, -2)), a.transpose(-1, -2).matmul(g)]


MATMUL = _op("matmul", Kind.CONTRACTION, _matmul_infer, np.matmul, _matmul_grad)

# ----------------------------------------------------------------------------------------------- window


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv2d_infer(x, w, stride, padding, dilation, groups):
    model = f" or the model with .to(tracejit.{x.dtype.name})" if x.dtype.is_floating_point else ""
    check_same_dtype("conv2d", x, w, ("input", "weight"), f"convert the input with .to(tracejit.{w.dtype.name}){model}")
    if x.dtype is D.bool_:
        raise OpTypeError(f"conv2d: bool tensors cannot be convolved (input {shape_str(x.shape)})")
    if x.ndim != 4 or w.ndim != 4:
        raise OpError(f"conv2d: expected 4-D input [N, C, H, W] and weight [O, C/groups, kH, kW], got "
                      f"input {shape_str(x.shape)} and weight {shape_str(w.shape)}")
    n, cin, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if cin != cg * groups or o % groups:
        raise OpError(f"conv2d: input {shape_str(x.shape)} has {cin} channels but weight "
                      f"{shape_str(w.shape)} with groups={groups} expects {cg * groups}")
    oh = _conv_out(h, kh, stride[0], padding[0], dilation[0])
    ow = _conv_out(wd, kw, stride[1], padding[1], dilation[1])
    if oh <= 0 or ow <= 0:
        raise OpError(f"conv2d: kernel {kh}x{kw} is larger than the padded input {shape_str(x.shape)}")
    return TensorType((n, o, oh, ow), x.dtype)


def _conv_attrs(c):
    a = c.attrs
    return dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])


def _conv2d_grad(c, g):
    x, w = c.input(0), c.input(1)
    T = _dispatch
    gx = T.apply(CONV2D_GRAD_INPUT, g, w, input_shape=c.in_types[0].shape, **_conv_attrs(c))
    gw = T.apply(CONV2D_GRAD_WEIGHT, x, g, weight_shape=c.in_types[1].shape, **_conv_attrs(c))
    return [gx, gw]


def _conv2d_grad_input_grad(c, gg):
    # grad_input(g, w) is bilinear: <grad_input(g, w), gg> = <g, conv2d(gg, w)>
    T = _dispatch
    return [T.apply(CONV2D, gg, c.input(1), **_conv_attrs(c)),
            T.apply(CONV2D_GRAD_WEIGHT, gg, c.input(0), weight_shape=c.in_types[1].shape, **_conv_attrs(c))]


def _conv2d_grad_weight_grad(c, gg):
    # <grad_weight(x, g), gg> = <g, conv2d(x, gg)>
    T = _dispatch
    return [T.apply(CONV2D_GRAD_INPUT, c.input(1), gg, input_shape=c.in_types[0].shape, **_conv_attrs(c)),
            T.apply(CONV2D, c.input(0), gg, **_conv_attrs(c))]


CONV2D = _op("conv2d", Kind.WINDOW, _conv2d_infer, K.conv2d, _conv2d_grad)
CONV2D_GRAD_INPUT = _op(
    "conv2d_grad_input", Kind.WINDOW,
    lambda g, w, input_shape, **a: TensorType(tuple(input_shape), g.dtype), K.conv2d_grad_input,
    _conv2d_grad_input_grad, doc="gradient of conv2d with respect to its input")
CONV2D_GRAD_WEIGHT = _op(
    "conv2d_grad_weight", Kind.WINDOW,
    lambda x, g, weight_shape, **a: TensorType(tuple(weight_shape), g.dtype), K.conv2d_grad_weight,
    _conv2d_grad_weight_grad, doc="gradient of conv2d with respect to its weight")


def _pool_infer(name):
    def infer(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False, count_include_pad=True):
        if x.ndim != 4:
            raise OpError(f"{name}: expected a 4-D input [N, C, H, W], got {shape_str(x.shape)}")
        _need_float(name, x)
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise OpError(f"{name}: padding {padding} must be at most half of kernel size {kernel}")
        oh, ow = K.pool_out_hw(x.shape[2:], kernel, stride, padding, dilation, ceil_mode)
        if oh <= 0 or ow <= 0:
            raise OpError(f"{name}: kernel {kernel} is larger than the input {shape_str(x.shape)}")
        return TensorType(x.shape[:2] + (oh, ow), x.dtype)
    return infer


MAX_POOL2D = _op("max_pool2d", Kind.WINDOW, _pool_infer("max_pool2d"), K.max_pool2d,
                 lambda c, g: [_dispatch.apply(MAX_POOL2D_GRAD, c.input(0), g, **c.attrs)])
MAX_POOL2D_GRAD = _op("max_pool2d_grad", Kind.WINDOW, lambda x, g, **a: TensorType(x.shape, x.dtype),
                      K.max_pool2d_grad, None,
                      doc="routes g to the first maximum of each window of x")


def _argmax_infer(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    if kernel[0] * kernel[1] > 256:  # window positions 0 .. area - 1 must fit uint8
        raise OpError(f"max_pool2d_argmax: a {kernel[0]}x{kernel[1]} window has {kernel[0] * kernel[1]} positions, "
                      f"more than uint8 indices hold (256)")
    return TensorType(_pool_infer("max_pool2d_argmax")(x, kernel, stride, padding, dilation, ceil_mode).shape,
                      D.uint8)


MAX_POOL2D_ARGMAX = _op("max_pool2d_argmax", Kind.WINDOW, _argmax_infer, K.max_pool2d_argmax, None,
                        doc="index (row-major, uint8) of the first maximum inside each pooling window")
MAX_POOL2D_GRAD_ARGMAX = _op(
    "max_pool2d_grad_argmax", Kind.WINDOW,
    lambda g, idx, input_shape, **a: TensorType(tuple(input_shape), g.dtype), K.max_pool2d_grad_argmax, None,
    doc="routes g to the window positions stored by max_pool2d_argmax (compact-form backward)")
AVG_POOL2D = _op("avg_pool2d", Kind.WINDOW, _pool_infer("avg_pool2d"), K.avg_pool2d,
                 lambda c, g: [_dispatch.apply(AVG_POOL2D_GRAD, g, input_shape=c.in_types[0].shape,
                                          **c.attrs)])
AVG_POOL2D_GRAD = _op("avg_pool2d_grad", Kind.WINDOW,
                      lambda g, input_shape, **a: TensorType(tuple(input_shape), g.dtype),
                      K.avg_pool2d_grad,
                      # linear in g; its adjoint is avg_pool2d itself
                      lambda c, gg: [_dispatch.apply(AVG_POOL2D, gg, **{k: v for k, v in c.attrs.items()
                                                                   if k != "input_shape"})])

# ----------------------------------------------------------------------------------------------- index

# error kinds of a check_index node: "zerodiv" guards an integer division's divisor (the checked values are the
# flags `divisor == 0`, in [0, 1)), with PyTorch's RuntimeError("ZeroDivisionError") as the error
_INDEX_ERRORS = {"index": OpIndexError, "target": TargetIndexError, "zerodiv": OpError}


def first_bad_index(a, low: int, high: int, ignore=None):
    """The first value of the int array `a` (flat C order) outside [low, high) that is not `ignore`, or None."""
    if a.size == 0 or (a.min() >= low and a.max() < high):
        return None
    bad = (a < low) | (a >= high)
    if ignore is not None:
        bad &= a != ignore
    return int(a[bad][0]) if bad.any() else None


def index_error(value: int, error: str, message: str) -> OpIndexError:
    """The error for an out-of-range index: `message` with {value} filled in, of the class `error` names
    ('index': OpIndexError, 'target': TargetIndexError). Eager code, every op ref and every backend raise
    through this, so the error is the same wherever the index is found bad."""
    return _INDEX_ERRORS[error](message.replace("{value}", str(int(value))))


def index_message(op: str, axis: int, size: int) -> str:
    return f"{op}: index {{value}} is out of bounds for dimension {axis} with size {size}"


def _check_index_infer(idx, low, high, message, ignore=None, error="index"):
    if idx.dtype is not D.int64:
        raise OpTypeError(f"check_index: index must be int64, got {idx.dtype.name}")
    if error not in _INDEX_ERRORS or ("{value}" not in message and error != "zerodiv"):
        raise OpError(f"check_index: error must be one of {sorted(_INDEX_ERRORS)} and the message must hold "
                      f"{{value}}, got error={error!r}, message={message!r}")
    return idx


def _check_index_ref(idx, low, high, message, ignore=None, error="index"):
    bad = first_bad_index(idx, low, high, ignore)
    if bad is not None:
        raise index_error(bad, error, message)
    return idx


# Composite code puts this in front of every traced index (tracejit.indexing.check_index): backends render it
# as a serial pass that stops the program with the eager error before a bad index reaches memory.
CHECK_INDEX = _op("check_index", Kind.INDEX, _check_index_infer, _check_index_ref, None,
                  doc="the int64 index unchanged if every value is in [low, high) or equal to ignore; else "
                      "raises index_error(first bad value, error, message)")


def _gather_infer(x, idx, axis):
    if idx.dtype is not D.int64:
        raise OpTypeError(f"gather: index must be int64, got {idx.dtype.name}")
    if idx.ndim != x.ndim or any(a != b for i, (a, b) in enumerate(zip(x.shape, idx.shape)) if i != axis):
        raise OpError(f"gather: index shape {shape_str(idx.shape)} must match input shape "
                      f"{shape_str(x.shape)} outside dimension {axis}")
    return TensorType(idx.shape, x.dtype)


def _gather_ref(x, idx, axis):
    # as PyTorch: indices in [0, size), negative ones are out of bounds
    _check_index_ref(idx, 0, x.shape[axis], index_message("gather", axis, x.shape[axis]))
    return np.take_along_axis(x, idx, axis=axis)


GATHER = _op("gather", Kind.INDEX, _gather_infer, _gather_ref,
             lambda c, g: [_dispatch.apply(SCATTER_ADD, c.input(1), g, axis=c.attrs["axis"],
                                      shape=c.in_types[0].shape), None])


def _scatter_add_infer(idx, src, axis, shape):
    if idx.dtype is not D.int64:
        raise OpTypeError(f"scatter_add: index must be int64, got {idx.dtype.name}")
    if idx.shape != src.shape:
        raise OpError(f"scatter_add: index {shape_str(idx.shape)} and source {shape_str(src.shape)} differ")
    return TensorType(tuple(shape), src.dtype)


def _scatter_add_ref(idx, src, axis, shape):
    _check_index_ref(idx, 0, shape[axis], index_message("scatter_add", axis, shape[axis]))
    return K.scatter_add(idx, src, axis, shape)


SCATTER_ADD = _op("scatter_add", Kind.INDEX, _scatter_add_infer, _scatter_add_ref,
                  lambda c, g: [None, _dispatch.apply(GATHER, g, c.input(0), axis=c.attrs["axis"])],
                  doc="zeros(shape) with src added at idx along axis")



def _argsort_infer(x, axis, descending):
    if not 0 <= axis < max(x.ndim, 1):
        raise OpTypeError(f"argsort: cannot sort {x} along dimension {axis}")
    return TensorType(x.shape, D.int64)


def _argsort_ref(x, axis, descending):
    if x.ndim == 0:
        return np.zeros((), np.int64)
    if not descending:  # stable; NaN sorts last, as in PyTorch
        return np.argsort(x, axis=axis, kind="stable").astype(np.int64)
    # descending and stable (equal values keep their order, NaN first): sort the reversed array ascending
    n = x.shape[axis]
    r = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
    return (n - 1 - np.flip(r, axis)).astype(np.int64)


ARGSORT = _op("argsort", Kind.INDEX, _argsort_infer, _argsort_ref, None,
              doc="the int64 indices that sort x along axis (stable; NaN as the largest value); sort/topk gather "
                  "with them, which carries the gradient")

# ----------------------------------------------------------------------------------------------- random


def _uniform_infer(state, shape, dtype):
    if state.shape != (2,) or state.dtype is not D.int64:
        raise OpTypeError("uniform: generator state must be an int64 tensor of shape [2]")
    return TensorType(tuple(shape), dtype)


UNIFORM = _op("uniform", Kind.RANDOM, _uniform_infer, K.uniform,
              doc="counter-based uniform [0, 1) numbers from state = (seed, offset)")


# ----------------------------------------------------------------------------------------------- collective
# Communication between the processes (ranks) of a job, run on the default process group of tracejit.distributed
# (MPI). A collective is not pure: its value depends on the other ranks, and every rank must start the same
# collectives in the same order. So passes keep every collective node (dce), never merge two (cse), never fuse
# across one, and keep their order; backends run `ref` as a step between kernels. No gradient rules, as PyTorch's
# c10d collectives (torch.distributed.all_reduce is not differentiable either).

REDUCE_OPS = ("sum", "avg", "max", "min", "product")


def _process_group():
    from .distributed import group  # (at run time: the op table imports no communication code at import)

    return group.current()


def _all_reduce_infer(x, reduce):
    if reduce not in REDUCE_OPS:
        raise OpError(f"all_reduce: unknown reduction {reduce!r}; expected one of {', '.join(REDUCE_OPS)}")
    if reduce == "avg" and not x.dtype.is_floating_point:
        raise OpTypeError(f"all_reduce: ReduceOp.AVG needs a floating-point tensor, got {x.dtype.name} of shape "
                          f"{shape_str(x.shape)} (use SUM and divide)")
    return TensorType(x.shape, x.dtype)


def _all_gather_infer(x, world_size):
    if x.ndim == 0:
        raise OpError("all_gather: expected a tensor with at least one dimension (reshape a scalar to [1])")
    return TensorType((world_size * x.shape[0],) + tuple(x.shape[1:]), x.dtype)


def _broadcast_infer(x, src):
    if src < 0:
        raise OpError(f"broadcast: src must be a rank (>= 0), got {src}")
    return TensorType(x.shape, x.dtype)


ALL_REDUCE = _op("all_reduce", Kind.COLLECTIVE, _all_reduce_infer,
                 lambda x, reduce: _process_group().all_reduce(x, reduce),
                 doc="x reduced elementwise over all ranks (sum, avg, max, min, product); every rank gets the result")
ALL_REDUCE_START = _op("all_reduce_start", Kind.COLLECTIVE, _all_reduce_infer,
                       lambda x, reduce: _process_group().start_all_reduce(x, reduce),
                       doc="starts all_reduce(x) without waiting: its value may be read only by all_reduce_wait "
                           "(the passes split all_reduce so that communication overlaps the kernels in between)")
def _wait_infer(h, x):
    if h != x:
        raise OpError(f"all_reduce_wait: the started value {h} and the array sent {x} differ")
    return h


ALL_REDUCE_WAIT = _op("all_reduce_wait", Kind.COLLECTIVE, _wait_infer, lambda h, x: _process_group().wait(h),
                      doc="the value of the all_reduce_start(x) it reads (h), once complete; reading x too keeps the "
                          "array being sent alive and unwritten (memory planning sees it read) until then")
BROADCAST = _op("broadcast", Kind.COLLECTIVE, _broadcast_infer, lambda x, src: _process_group().broadcast(x, src),
                doc="rank src's x on every rank")
ALL_GATHER = _op("all_gather", Kind.COLLECTIVE, _all_gather_infer,
                 lambda x, world_size: _process_group().all_gather(x, world_size),
                 doc="every rank's x concatenated along dimension 0, in rank order")
BARRIER = _op("barrier", Kind.COLLECTIVE, lambda: TensorType((), D.bool_),
              lambda: _process_group().barrier(),
              doc="returns (True) once every rank has reached it")


def primitive_names() -> list[str]:
    return sorted(OPS)
