"""The scalar vocabulary: the semantic functions in which each ELEMENTWISE op states its value at one index.

The op table declares every elementwise primitive's `expr` once, as an expression over these functions
(`EXP = ... S.exp(S.X)`); a backend that generates code supplies one spelling per function (a dict, its
`SCALAR_SPELLING`), and `spell` puts the two together. So two backends cannot disagree on what an op computes,
and a new backend adds one table. The reference backend needs none: it runs each op's NumPy `ref`.

A function's meaning includes its NaN/inf rules, stated below; they are PyTorch's, which the ops' refs match and
the tests check against. A spelling must keep them (e.g. `maximum` is not C's fmax, which drops NaN).

Expressions: `X`, `Y`, `Z` are the op's inputs 0, 1, 2; `fn(a, ...)` applies a function. Values have the op's
output dtype, except that comparisons give bool and `select` picks between values of the output dtype.
Integer arithmetic wraps (two's complement); nothing here raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Arg:
    """Input `index` of the op."""

    index: int

    def __repr__(self) -> str:
        return "XYZ"[self.index] if self.index < 3 else f"arg{self.index}"


@dataclass(frozen=True)
class Call:
    fn: Fn
    args: tuple

    def __repr__(self) -> str:
        return f"{self.fn.name}({', '.join(map(repr, self.args))})"


Expr = Arg | Call


@dataclass(frozen=True)
class Fn:
    """One function of the vocabulary: its name (the key backends spell), arity and meaning."""

    name: str
    arity: int
    rule: str

    def __call__(self, *args: Expr) -> Call:
        if len(args) != self.arity:
            raise TypeError(f"{self.name} takes {self.arity} arguments, got {len(args)}")
        return Call(self, tuple(args))

    def __repr__(self) -> str:
        return f"<scalar {self.name}>"


FUNCTIONS: dict[str, Fn] = {}


def _fn(name: str, arity: int, rule: str) -> Fn:
    f = Fn(name, arity, rule)
    FUNCTIONS[name] = f
    return f


X, Y, Z = Arg(0), Arg(1), Arg(2)

_IEEE = "IEEE 754: NaN in gives NaN out; inf - inf and 0 * inf are NaN; integers wrap"

# ---------------------------------------------------------------------------------------------- arithmetic
neg = _fn("neg", 1, "-x; NaN stays NaN")
add = _fn("add", 2, "x + y; " + _IEEE)
sub = _fn("sub", 2, "x - y; " + _IEEE)
mul = _fn("mul", 2, "x * y; " + _IEEE)
div = _fn("div", 2, "x / y (floating point only): x/0 is +-inf, 0/0 NaN, silently")
pow_ = _fn("pow", 2, "x ** y as C's pow (floating point only): pow(x, 0) = 1 and pow(1, y) = 1 even for NaN; "
                     "a negative x with a non-integer y is NaN; pow(0, y < 0) = inf")
abs_ = _fn("abs", 1, "|x|: abs(-inf) = inf, abs(NaN) = NaN")
sign = _fn("sign", 1, "1 for x > 0, -1 for x < 0, a zero for +-0, NaN for NaN")
relu = _fn("relu", 1, "max(x, 0) that keeps NaN: relu(NaN) = NaN (unlike fmax(x, 0), which gives 0)")
floordiv = _fn("floordiv", 2, "x // y rounded toward -inf, as Python's and PyTorch's: for floats (x - fmod(x, y)) / y "
                             "rounded down (1.0 // 0.1 = 9.0, -0.0 // 3 = -0.0), x // 0 is x / 0 (+-inf, NaN), NaN or "
                             "inf in gives NaN or +-inf; for integers floor division (by 0: 0; the Tensor API raises "
                             "first, eagerly or by a check in the compiled step)")
truncdiv = _fn("truncdiv", 2, "x / y rounded toward zero: trunc(x / y) for floats (x / 0 is x / 0), C's integer "
                              "division for integers (by 0: 0; the Tensor API raises first)")
remainder = _fn("remainder", 2, "PyTorch's remainder, the sign of y: for floats m = fmod(x, y), then m + y where "
                                "m != 0 and its sign differs from y's (-2.0 % 2.0 = -0.0, 7 % -inf = -inf, x % 0 = "
                                "NaN); for integers floor modulo (by 0: 0; the Tensor API raises first)")
fmod = _fn("fmod", 2, "C's fmod, the sign of x: x - trunc(x / y) * y exactly (fmod(x, 0) = NaN, fmod(inf, y) = NaN, "
                      "fmod(x, inf) = x); for integers C's % (by 0: 0; the Tensor API raises first)")
maximum = _fn("maximum", 2, "the larger of x and y; NaN when either is NaN (PyTorch's maximum, not C's fmax)")
minimum = _fn("minimum", 2, "the smaller of x and y; NaN when either is NaN (PyTorch's minimum, not C's fmin)")

# ---------------------------------------------------------------------------------------------- transcendental
exp = _fn("exp", 1, "e**x (floating point): exp(-inf) = 0, exp(inf) and overflow = inf, NaN -> NaN")
log = _fn("log", 1, "natural log (floating point): log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, NaN -> NaN")
sqrt = _fn("sqrt", 1, "square root (floating point): sqrt(x < 0) = NaN, sqrt(inf) = inf, NaN -> NaN")
tanh = _fn("tanh", 1, "hyperbolic tangent (floating point): tanh(+-inf) = +-1, NaN -> NaN")
sigmoid = _fn("sigmoid", 1, "1 / (1 + exp(-x)) (floating point), without overflow: sigmoid(-inf) = 0, "
                            "sigmoid(inf) = 1, NaN -> NaN")
erf = _fn("erf", 1, "the error function (floating point): erf(+-inf) = +-1, NaN -> NaN")
sin = _fn("sin", 1, "sine of radians (floating point): sin(+-inf) = NaN, NaN -> NaN")
cos = _fn("cos", 1, "cosine of radians (floating point): cos(+-inf) = NaN, NaN -> NaN")

# ---------------------------------------------------------------------------------------------- logic
eq = _fn("eq", 2, "x == y -> bool; NaN equals nothing, itself included")
ne = _fn("ne", 2, "x != y -> bool; True whenever either is NaN")
lt = _fn("lt", 2, "x < y -> bool; False whenever either is NaN")
le = _fn("le", 2, "x <= y -> bool; False whenever either is NaN")
gt = _fn("gt", 2, "x > y -> bool; False whenever either is NaN")
ge = _fn("ge", 2, "x >= y -> bool; False whenever either is NaN")
not_ = _fn("not", 1, "logical not of a bool")
select = _fn("select", 3, "y where the bool c is True, else z; the value not chosen is ignored (even NaN)")

# ---------------------------------------------------------------------------------------------- conversion
cast = _fn("cast", 1, "x converted to the output dtype: to bool x != 0 (NaN is True); float to integer truncates "
                      "toward zero (NaN, inf and out-of-range values give an unspecified integer, as in PyTorch); "
                      "to a narrower float rounds to nearest, overflow to +-inf; bool to a number 0 or 1")
constant = _fn("constant", 0, "the op's `value` attribute in the output dtype (`full`)")


# ---------------------------------------------------------------------------------------------- spelling


@dataclass(frozen=True)
class Ctx:
    """What a spelling may need beyond its arguments' text: the value's dtype, the op's input dtypes, its attrs."""

    dtype: object
    in_dtypes: tuple = ()
    attrs: dict | None = None


Spelling = str | Callable[..., str]  # "({0} + {1})", or fn(ctx, *argument texts) -> text


def functions(expr: Expr) -> set[str]:
    """Names of the vocabulary functions `expr` uses."""
    if isinstance(expr, Arg):
        return set()
    return {expr.fn.name}.union(*(functions(a) for a in expr.args))


def head(expr: Expr | None) -> str | None:
    """The function `expr` applies to the op's inputs in order (`exp` for exp(X)), else None."""
    if isinstance(expr, Call) and expr.args == tuple(Arg(i) for i in range(len(expr.args))):
        return expr.fn.name
    return None


def spell(expr: Expr, table: dict, args, ctx: Ctx) -> str:
    """The text of `expr` in a backend's spelling `table`, its inputs spelled `args`."""
    if isinstance(expr, Arg):
        return args[expr.index]
    inner = [spell(a, table, args, ctx) for a in expr.args]
    try:
        how = table[expr.fn.name]
    except KeyError:
        raise KeyError(f"no spelling for the scalar function {expr.fn.name!r}") from None
    return how.format(*inner) if isinstance(how, str) else how(ctx, *inner)


def missing(table: dict, exprs) -> set[str]:
    """The functions used by `exprs` that `table` does not spell."""
    return set().union(*(functions(e) for e in exprs)) - set(table)
