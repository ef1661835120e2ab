"""Module-level function forms of tensor methods (``tracejit.exp(x)``, ``tracejit.max(x, 1)``, ...)."""

from __future__ import annotations

import numpy as np

from . import dtypes as D
from ._tensor import Tensor, cat
from .factories import tensor
from .linalg import tensor_norm
from .ops import broadcast_shapes

__all__ = ["exp", "log", "sqrt", "rsqrt", "abs", "neg", "tanh", "sigmoid", "relu", "sin", "cos", "erf", "sign",
           "pow", "clamp", "clip", "maximum", "minimum", "sum", "mean", "max", "min", "amax", "amin", "argmax",
           "argmin", "var", "std", "softmax", "log_softmax", "reshape", "flatten", "permute", "transpose",
           "squeeze", "unsqueeze", "gather", "add", "sub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge",
           "mm", "bmm", "numel", "square", "logical_not", "split", "chunk", "unbind", "is_tensor", "t",
           "all", "any", "masked_fill", "index_select", "narrow", "log1p", "clone", "detach",
           "norm", "tril", "triu", "flip", "dot", "mv", "outer", "logsumexp", "isnan", "isinf", "isfinite",
           "logical_and", "logical_or", "logical_xor", "count_nonzero", "allclose", "equal", "tile",
           "repeat_interleave", "movedim", "moveaxis", "addcmul", "addcdiv", "lerp", "broadcast_to", "hstack", "vstack",
           "broadcast_tensors", "is_floating_point", "finfo", "iinfo", "get_default_dtype", "sort", "argsort", "msort",
           "topk", "cumsum", "prod", "divide", "floor_divide", "remainder", "fmod"]


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
divide = _method("divide")
floor_divide = _method("floor_divide")
fmod = _method("fmod")
remainder = _method("remainder")
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
flip = _method("flip", out_arg=False)
dot = _method("dot")
mv = _method("mv")
outer = _method("outer")
logsumexp = _method("logsumexp")
sort = _method("sort")
argsort = _method("argsort", out_arg=False)
msort = _method("msort")
topk = _method("topk")
cumsum = _method("cumsum")
prod = _method("prod")
isnan = _method("isnan", out_arg=False)
isinf = _method("isinf", out_arg=False)
isfinite = _method("isfinite", out_arg=False)
logical_and = _method("logical_and")
logical_or = _method("logical_or")
logical_xor = _method("logical_xor")
count_nonzero = _method("count_nonzero", out_arg=False)
allclose = _method("allclose", out_arg=False)
equal = _method("equal", out_arg=False)
tile = _method("tile", out_arg=False)
repeat_interleave = _method("repeat_interleave", out_arg=False)
movedim = _method("movedim", out_arg=False)
moveaxis = _method("moveaxis", out_arg=False)
addcmul = _method("addcmul")
addcdiv = _method("addcdiv")
lerp = _method("lerp")
broadcast_to = _method("broadcast_to", out_arg=False)
is_floating_point = _method("is_floating_point", out_arg=False)


def hstack(tensors, *, out=None):
    tensors = list(tensors)
    return cat(tensors, 0 if tensors and tensors[0].ndim == 1 else 1, out=out)


def vstack(tensors, *, out=None):
    return cat([t.reshape(1, -1) if t.ndim < 2 else t for t in tensors], 0, out=out)


def broadcast_tensors(*tensors):
    shape = broadcast_shapes("broadcast_tensors", *[tuple(t.shape) for t in tensors])
    return tuple(t.expand(shape) for t in tensors)


def finfo(dtype=None):
    """Machine limits of a floating-point dtype (eps, max, min, tiny, ...), as NumPy's finfo."""
    return np.finfo(D.as_dtype(dtype or D.default_float).np)


def iinfo(dtype):
    return np.iinfo(D.as_dtype(dtype).np)


def get_default_dtype():
    return D.default_float
