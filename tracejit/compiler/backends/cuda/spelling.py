"""How the CUDA backend spells the scalar vocabulary (tracejit/scalar.py) in generated numba.cuda kernels.

Like the CPU's (cpu/spelling.py), one entry per vocabulary function; the names generated code uses come from
render.PRELUDE: `np`, `M` (devmath: libdevice on a GPU, NumPy scalars in the simulator) and the Z_/O_ zero and one
constants of each dtype. Constants are typed (np.float32(...)): a Python float would promote float32 math to
float64. Kernels compile without fastmath, so NaN and inf keep their meaning.
"""

from __future__ import annotations

import math

from .... import dtypes as D
from ..kernel import LoweringError

FLOATS = (D.float32, D.float64)


def np_type(dtype) -> str:
    return {D.float32: "np.float32", D.float64: "np.float64", D.int64: "np.int64", D.bool_: "np.bool_",
            D.uint8: "np.uint8"}[dtype]


def _math(fn: str):
    def how(ctx, a):
        if ctx.dtype not in FLOATS:
            raise LoweringError(f"{fn} needs a floating-point operand")
        return f"M.{fn}({a})"
    return how


def _zero(ctx) -> str:
    return f"Z_{ctx.dtype.short}"


def _one(ctx) -> str:
    return f"O_{ctx.dtype.short}"


def _sigmoid(ctx, a):
    if ctx.dtype not in FLOATS:
        raise LoweringError("sigmoid needs a floating-point operand")
    # exp(-x) overflows to inf for very negative x: 1 / inf = 0, the right limit; NaN stays NaN
    return f"({_one(ctx)} / ({_one(ctx)} + M.exp(-{a})))"


def _cast(ctx, a):
    if ctx.dtype is D.bool_:
        return f"({a} != 0)"
    return f"{np_type(ctx.dtype)}({a})"


def constant_text(dtype, value) -> str:
    if dtype is D.bool_:
        return repr(bool(value))
    if isinstance(value, float) and not math.isfinite(value):
        value = "np.nan" if math.isnan(value) else "np.inf" if value > 0 else "-np.inf"
        return f"{np_type(dtype)}({value})"
    return f"{np_type(dtype)}({value!r})"


def _constant(ctx):
    return constant_text(ctx.dtype, ctx.attrs["value"])


def _truncdiv(ctx, a, b):
    """x / y rounded toward zero: trunc of the quotient for floats; for signed integers floor division moved up by
    one where it rounded a negative inexact quotient down; unsigned ones floor already."""
    if ctx.dtype.is_floating_point:
        return f"M.trunc({a} / {b})"  # libdevice trunc/truncf on a GPU
    if ctx.dtype is not D.int64:
        return f"({a} // {b})"
    return (f"(({a} // {b}) + (O_i64 if ((({a} % {b}) != Z_i64) and (({a} < Z_i64) != ({b} < Z_i64))) "
            f"else Z_i64))")


def _mod(name: str):
    def how(ctx, a, b):
        z = _zero(ctx)
        if ctx.dtype in FLOATS:
            m = f"M.fmod({a}, {b})"  # libdevice fmod/fmodf: exact
            if name == "fmod":
                return m
            return f"(({m} + {b}) if (({m} != {z}) and (({b} < {z}) != ({m} < {z}))) else {m})"
        r = f"({a} % {b})"  # Python's floor modulo, 0 for a zero divisor (the Tensor API raises first)
        if name == "remainder" or ctx.dtype is not D.int64:
            return r
        return f"(({r} - {b}) if (({r} != {z}) and (({r} < {z}) != ({a} < {z}))) else {r})"
    return how


SPELLING = {
    "neg": "(-{0})",
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "pow": "({0} ** {1})",  # powf/pow: C's rules
    "abs": "abs({0})",
    "sign": lambda c, a: f"({_one(c)} if {a} > {_zero(c)} else (-{_one(c)} if {a} < {_zero(c)} else {a}))",
    "relu": lambda c, a: f"({a} if not ({a} < {_zero(c)}) else {_zero(c)})",
    "floordiv": "({0} // {1})",  # Numba's // is Python's (fmod-based for floats, x / 0 under error_model numpy)
    "truncdiv": _truncdiv,
    "remainder": _mod("remainder"),
    "fmod": _mod("fmod"),
    "maximum": "({0} if ({0} >= {1} or {0} != {0}) else {1})",
    "minimum": "({0} if ({0} <= {1} or {0} != {0}) else {1})",
    "exp": _math("exp"),
    "log": _math("log"),
    "sqrt": _math("sqrt"),
    "tanh": _math("tanh"),
    "sigmoid": _sigmoid,
    "erf": _math("erf"),
    "sin": _math("sin"),
    "cos": _math("cos"),
    "eq": "({0} == {1})",
    "ne": "({0} != {1})",
    "lt": "({0} < {1})",
    "le": "({0} <= {1})",
    "gt": "({0} > {1})",
    "ge": "({0} >= {1})",
    "not": "(not {0})",
    "select": "({1} if {0} else {2})",
    "cast": _cast,
    "constant": _constant,
}
