"""Module-level function forms of tensor methods (``tracejit.exp(x)``, ``tracejit.max(x, 1)``, ...)."""

from __future__ import annotations

from ._tensor import Tensor
from .factories import tensor

__all__ = ["exp", "log", "sqrt", "rsqrt", "abs", "neg", "tanh", "sigmoid", "relu", "sin", "cos", "erf", "sign",
           "pow", "clamp", "clip", "maximum", "minimum", "sum", "mean", "max", "min", "amax", "amin", "argmax",
           "argmin", "var", "std", "softmax", "log_softmax", "reshape", "flatten", "permute", "transpose",
           "squeeze", "unsqueeze", "gather", "add", "sub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge",
           "mm", "bmm", "numel", "square", "logical_not", "split", "chunk", "unbind", "is_tensor", "t",
           "all", "any", "masked_fill", "index_select", "narrow", "log1p", "clone", "detach"]


def _method(name):
    def fn(x, *args, **kwargs):
        if not isinstance(x, Tensor):
            x = tensor(x)
        return getattr(x, name)(*args, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"``tracejit.{name}(x, ...)`` is ``x.{name}(...)``."
    return fn


exp = _method("exp")
log = _method("log")
sqrt = _method("sqrt")
rsqrt = _method("rsqrt")
abs = _method("abs")
neg = _method("neg")
tanh = _method("tanh")
sigmoid = _method("sigmoid")
relu = _method("relu")
sin = _method("sin")
cos = _method("cos")
erf = _method("erf")
sign = _method("sign")
pow = _method("pow")
clamp = _method("clamp")
clip = _method("clip")
maximum = _method("maximum")
minimum = _method("minimum")
sum = _method("sum")
mean = _method("mean")
max = _method("max")
min = _method("min")
amax = _method("amax")
amin = _method("amin")
argmax = _method("argmax")
argmin = _method("argmin")
var = _method("var")
std = _method("std")
softmax = _method("softmax")
log_softmax = _method("log_softmax")
reshape = _method("reshape")
flatten = _method("flatten")
permute = _method("permute")
transpose = _method("transpose")
squeeze = _method("squeeze")
unsqueeze = _method("unsqueeze")
gather = _method("gather")
add = _method("add")
sub = _method("sub")
mul = _method("mul")
div = _method("div")
eq = _method("eq")
ne = _method("ne")
lt = _method("lt")
le = _method("le")
gt = _method("gt")
ge = _method("ge")
mm = _method("mm")
bmm = _method("bmm")
numel = _method("numel")
square = _method("square")
logical_not = _method("logical_not")
split = _method("split")
chunk = _method("chunk")
unbind = _method("unbind")
t = _method("t")
all = _method("all")
any = _method("any")
masked_fill = _method("masked_fill")
index_select = _method("index_select")
narrow = _method("narrow")
log1p = _method("log1p")
clone = _method("clone")
detach = _method("detach")


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)
