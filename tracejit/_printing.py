"""PyTorch-style tensor repr: ``tensor([1.0000, 2.5000], requires_grad=True)``."""

from __future__ import annotations

import numpy as np

from . import dtypes as D


def _float_formatter(arr):
    finite = arr[np.isfinite(arr)]
    nz = np.abs(finite[finite != 0])
    if finite.size and np.all(finite == np.round(finite)) and (nz.size == 0 or nz.max() < 1e8):
        fmt = "{:.0f}."
    elif nz.size and (nz.max() / nz.min() > 1000.0 or nz.max() > 1e8 or nz.min() < 1e-4):
        fmt = "{:.4e}"
    else:
        fmt = "{:.4f}"

    def one(v):
        if np.isnan(v):
            return "nan"
        if np.isinf(v):
            return "inf" if v > 0 else "-inf"
        return fmt.format(v)

    width = max((len(one(v)) for v in arr.reshape(-1)), default=1)
    return lambda v: one(v).rjust(width)


def format_values(arr: np.ndarray, prefix: str) -> str:
    if arr.size == 0:
        return "[]" if arr.ndim == 1 else f"[], size={tuple(arr.shape)}"
    if arr.dtype.kind == "f":
        f = _float_formatter(arr)
        formatter = {"float_kind": f}
    elif arr.dtype == np.bool_:
        formatter = {"bool": lambda v: "True" if v else "False"}
    else:
        width = max(len(str(v)) for v in arr.reshape(-1))
        formatter = {"int_kind": lambda v: str(v).rjust(width)}
    return np.array2string(arr, separator=", ", prefix=prefix, formatter=formatter, threshold=1000,
                           edgeitems=3, max_line_width=80)


def tensor_repr(t) -> str:
    from .tensor import _concrete_or_none

    extras = []
    arr = _concrete_or_none(t)
    if arr is None:
        body = f"<traced {t._type}>"
    else:
        body = format_values(arr, "tensor(")
        if arr.size == 0 and arr.ndim != 1:
            pass
    if t.dtype not in (D.float32, D.int64, D.bool_) or (arr is not None and arr.size == 0 and t.dtype is not D.float32):
        extras.append(f"dtype=tracejit.{t.dtype.name}")
    if t.grad_fn is not None:
        extras.append(f"grad_fn={t.grad_fn!r}")
    elif t.requires_grad:
        extras.append("requires_grad=True")
    return "tensor(" + body + "".join(", " + e for e in extras) + ")"
