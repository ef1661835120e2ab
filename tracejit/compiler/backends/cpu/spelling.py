"""How the CPU backend spells the scalar vocabulary (tracejit/scalar.py) in generated Numba code.

One entry per vocabulary function: a format string over the arguments' text, or `fn(ctx, *args) -> text` where
the text depends on the dtype (vecmath's float32/float64 functions, NumPy casts and constants). The names
generated code uses here come from render.PRELUDE: `np`, `M` (vecmath) and the Z_/O_ zero and one constants.
Every spelling keeps its function's NaN/inf rules under render.FASTMATH (which leaves out nnan and ninf).
"""

from __future__ import annotations

import math

from .... import dtypes as D
from ..kernel import LoweringError

SUFFIX = {D.float32: "f32", D.float64: "f64"}  # vecmath's functions per float dtype


def np_type(dtype) -> str:
    return {D.float32: "np.float32", D.float64: "np.float64", D.int64: "np.int64", D.bool_: "np.bool_",
            D.uint8: "np.uint8"}[dtype]


def _vecmath(fn: str):
    def how(ctx, a):
        sfx = SUFFIX.get(ctx.dtype)
        if sfx is None:
            raise LoweringError(f"{fn} needs a floating-point operand")
        return f"M.{fn}_{sfx}({a})"
    return how


def _zero(ctx) -> str:
    return f"Z_{ctx.dtype.short}"


def _one(ctx) -> str:
    return f"O_{ctx.dtype.short}"


def _cast(ctx, a):
    if ctx.dtype is D.bool_:
        return f"({a} != 0)"
    return f"{np_type(ctx.dtype)}({a})"


def _constant(ctx):
    value = ctx.attrs["value"]
    if ctx.dtype is D.bool_:
        return repr(bool(value))
    if isinstance(value, float) and not math.isfinite(value):  # repr gives inf / nan: not names in generated code
        value = "np.nan" if math.isnan(value) else "np.inf" if value > 0 else "-np.inf"
        return f"{np_type(ctx.dtype)}({value})"
    return f"{np_type(ctx.dtype)}({value!r})"


def _truncdiv(ctx, a, b):
    """x / y rounded toward zero: trunc of the quotient for floats; for signed integers floor division moved up by
    one where it rounded a negative inexact quotient down; unsigned ones floor already."""
    sfx = SUFFIX.get(ctx.dtype)
    if sfx is not None:
        return f"M.truncdiv_{sfx}({a}, {b})"  # an IEEE division, whatever the kernel's fastmath flags
    if ctx.dtype.is_floating_point:
        return f"np.trunc({a} / {b})"
    if ctx.dtype is not D.int64:
        return f"({a} // {b})"
    return (f"(({a} // {b}) + (O_i64 if ((({a} % {b}) != Z_i64) and (({a} < Z_i64) != ({b} < Z_i64))) "
            f"else Z_i64))")


def _int_fmod(ctx, a, b):
    """C's % for integers from Python's (floor) %: moved back by b where its sign differs from a's."""
    if ctx.dtype is not D.int64:
        return f"({a} % {b})"  # (unsigned: the same)
    z = _zero(ctx)
    return f"((({a} % {b}) - {b}) if ((({a} % {b}) != {z}) and ((({a} % {b}) < {z}) != ({a} < {z}))) else ({a} % {b}))"


def _mod(name: str):
    def how(ctx, a, b):
        sfx = SUFFIX.get(ctx.dtype)
        if sfx is not None:
            return f"M.{name}_{sfx}({a}, {b})"
        return f"({a} % {b})" if name == "remainder" else _int_fmod(ctx, a, b)  # Python's % is floor modulo
    return how


SPELLING = {
    "neg": "(-{0})",
    "add": "({0} + {1})",
    "sub": "({0} - {1})",
    "mul": "({0} * {1})",
    "div": "({0} / {1})",
    "pow": "({0} ** {1})",  # LLVM's pow: C's rules
    "abs": "abs({0})",
    # x itself for +-0 and NaN
    "sign": lambda c, a: f"({_one(c)} if {a} > {_zero(c)} else (-{_one(c)} if {a} < {_zero(c)} else {a}))",
    # `not (x < 0)` is True for NaN: NaN passes through
    "relu": lambda c, a: f"({a} if not ({a} < {_zero(c)}) else {_zero(c)})",
    # a NaN x is kept by `x != x`; a NaN y fails `x >= y` and is taken
    "floordiv": "({0} // {1})",  # Numba's // is Python's (fmod-based for floats, x / 0 under error_model numpy)
    "truncdiv": _truncdiv,
    "remainder": _mod("remainder"),
    "fmod": _mod("fmod"),
    "maximum": "({0} if ({0} >= {1} or {0} != {0}) else {1})",
    "minimum": "({0} if ({0} <= {1} or {0} != {0}) else {1})",
    "exp": _vecmath("exp"),
    "log": _vecmath("log"),
    "sqrt": "np.sqrt({0})",
    "tanh": _vecmath("tanh"),
    "sigmoid": _vecmath("sigmoid"),
    "erf": _vecmath("erf"),
    "sin": _vecmath("sin"),
    "cos": _vecmath("cos"),
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
