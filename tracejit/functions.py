"""Module-level function forms of tensor methods (``tracejit.exp(x)``, ``tracejit.max(x, 1)``, ...)."""

from __future__ import annotations

from ._tensor import Tensor
from .factories import tensor
from .linalg import tensor_norm

__all__ = ["exp", "log", "sqrt", "rsqrt", "abs", "neg", "tanh", "sigmoid", "relu", "sin", "cos", "erf", "sign",
           "pow", "clamp", "clip", "maximum", "minimum", "sum", "mean", "max", "min", "amax", "amin", "argmax",
           "argmin", "var", "std", "softmax", "log_softmax", "reshape", "flatten", "permute", "transpose",
           "squeeze", "unsqueeze", "gather", "add", "sub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge",
           "mm", "bmm", "numel", "square", "logical_not", "split", "chunk", "unbind", "is_tensor", "t",
           "all", "any", "masked_fill", "index_select", "narrow", "log1p", "clone", "detach",
           "norm", "tril", "triu"]


def _method(name, out_arg=True):
    """``tracejit.name(x, ...)`` as ``x.name(...)``; with `out_arg`, PyTorch's ``out=`` too (the result is written
    into that tensor, which is returned: see Tensor._write_out)."""
    def fn(x, *args, out=None, **kwargs):
        if not isinstance(x, Tensor):
            x = tensor(x)
        r = getattr(x, name)(*args, **kwargs)
        if out is None:
            return r
        if not out_arg:
            raise TypeError(f"{name}() got an unexpected keyword argument 'out'")
        if isinstance(r, tuple):  # (values, indices) of max/min over a dim
            if not isinstance(out, (tuple, list)) or len(out) != len(r):
                raise TypeError(f"{name}(): out= must be a tuple of {len(r)} tensors")
            return type(r)(*[o._write_out(name, v) for o, v in zip(out, r)])
        return out._write_out(name, r)

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
softmax = _method("softmax", out_arg=False)
log_softmax = _method("log_softmax", out_arg=False)
reshape = _method("reshape", out_arg=False)
flatten = _method("flatten", out_arg=False)
permute = _method("permute", out_arg=False)
transpose = _method("transpose", out_arg=False)
squeeze = _method("squeeze", out_arg=False)
unsqueeze = _method("unsqueeze", out_arg=False)
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
numel = _method("numel", out_arg=False)
square = _method("square")
logical_not = _method("logical_not")
split = _method("split", out_arg=False)
chunk = _method("chunk", out_arg=False)
unbind = _method("unbind", out_arg=False)
t = _method("t", out_arg=False)
all = _method("all")
any = _method("any")
masked_fill = _method("masked_fill", out_arg=False)
index_select = _method("index_select")
narrow = _method("narrow", out_arg=False)
log1p = _method("log1p")
clone = _method("clone", out_arg=False)
detach = _method("detach", out_arg=False)
tril = _method("tril")
triu = _method("triu")


def norm(input, p="fro", dim=None, keepdim=False, out=None, dtype=None):
    """``torch.norm``: see ``Tensor.norm`` and tracejit.linalg."""
    return tensor_norm(input, p, dim, keepdim, out=out, dtype=dtype)


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)
