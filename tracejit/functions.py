"""Module-level function forms of tensor methods (``tracejit.exp(x)``, ``tracejit.max(x, 1)``, ...)."""

from __future__ import annotations

from .tensor import Tensor, tensor

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


for _n in __all__:
    if _n not in ("is_tensor",):
        globals()[_n] = _method(_n)


def is_tensor(x) -> bool:
    return isinstance(x, Tensor)
