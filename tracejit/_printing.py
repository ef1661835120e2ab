"""PyTorch-style tensor repr: ``tensor([1.0000, 2.5000], requires_grad=True)``.

Follows torch/_tensor_str.py (precision 4, threshold 1000, edgeitems 3, linewidth 80): one width for all
elements, chosen from the non-zero finite values; integral floats print as ``1.``; scientific notation when
the magnitudes span more than 1000x, exceed 1e8 or (non-integral) go below 1e-4.
"""

from __future__ import annotations

import math

import numpy as np

from . import dtypes as D
from .devices import CPU
from .dispatch import _concrete_or_none, current_tracer

PRECISION, THRESHOLD, EDGEITEMS, LINEWIDTH = 4, 1000, 3, 80


class _Formatter:
    def __init__(self, arr: np.ndarray):
        self.floating = arr.dtype.kind == "f"
        self.int_mode, self.sci_mode, self.width = True, False, 1
        flat = arr.reshape(-1)
        if not self.floating:
            self.width = max((len(self._plain(v)) for v in flat.tolist()), default=1)
            return
        vals = flat[np.isfinite(flat) & (flat != 0)].astype(np.float64)
        if vals.size == 0:
            return
        lo, hi = np.abs(vals).min(), np.abs(vals).max()
        self.int_mode = bool(np.all(vals == np.ceil(vals)))
        if hi / lo > 1000.0 or hi > 1.0e8 or (not self.int_mode and lo < 1.0e-4):
            self.sci_mode = True
            self.width = max(len(f"{v:.{PRECISION}e}") for v in vals.tolist())
        elif self.int_mode:
            self.width = max(len(f"{v:.0f}") + 1 for v in vals.tolist())
        else:
            self.width = max(len(f"{v:.{PRECISION}f}") for v in vals.tolist())

    @staticmethod
    def _plain(v) -> str:
        return str(bool(v)) if isinstance(v, (bool, np.bool_)) else str(v)

    def format(self, v) -> str:
        if not self.floating:
            s = self._plain(v)
        elif self.sci_mode:
            s = f"{v:{self.width}.{PRECISION}e}"
        elif self.int_mode:
            s = f"{v:.0f}" + ("" if math.isinf(v) or math.isnan(v) else ".")
        else:
            s = f"{v:.{PRECISION}f}"
        return s.rjust(self.width)


def _summarized(arr: np.ndarray) -> np.ndarray:
    """The elements a summarized repr shows (the formatter is fitted to these only)."""
    if arr.ndim == 0:
        return arr
    if arr.shape[0] > 2 * EDGEITEMS:
        rows = list(range(EDGEITEMS)) + list(range(arr.shape[0] - EDGEITEMS, arr.shape[0]))
    else:
        rows = range(arr.shape[0])
    if arr.ndim == 1:
        return arr[list(rows)]
    return np.stack([_summarized(arr[i]) for i in rows])


def _vector(arr, indent, summarize, fmt) -> str:
    per_line = max(1, (LINEWIDTH - indent) // (fmt.width + 2))
    if summarize and arr.shape[0] > 2 * EDGEITEMS:
        data = ([fmt.format(v) for v in arr[:EDGEITEMS].tolist()] + [" ..."]
                + [fmt.format(v) for v in arr[-EDGEITEMS:].tolist()])
    else:
        data = [fmt.format(v) for v in arr.tolist()]
    lines = [", ".join(data[i:i + per_line]) for i in range(0, len(data), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _body(arr, indent, summarize, fmt) -> str:
    if arr.ndim == 0:
        return fmt.format(arr.item())
    if arr.ndim == 1:
        return _vector(arr, indent, summarize, fmt)
    n = arr.shape[0]
    if summarize and n > 2 * EDGEITEMS:
        parts = ([_body(arr[i], indent + 1, summarize, fmt) for i in range(EDGEITEMS)] + ["..."]
                 + [_body(arr[i], indent + 1, summarize, fmt) for i in range(n - EDGEITEMS, n)])
    else:
        parts = [_body(arr[i], indent + 1, summarize, fmt) for i in range(n)]
    return "[" + ("," + "\n" * (arr.ndim - 1) + " " * (indent + 1)).join(parts) + "]"


def format_values(arr: np.ndarray, indent: int) -> str:
    if arr.size == 0:
        return "[]"
    summarize = arr.size > THRESHOLD
    return _body(arr, indent, summarize, _Formatter(_summarized(arr) if summarize else arr))


def _add_suffixes(text: str, suffixes, indent: int) -> str:
    parts = [text]
    last_line = len(text) - text.rfind("\n") + 1
    for s in suffixes:
        if last_line + len(s) + 2 > LINEWIDTH:
            parts.append(",\n" + " " * indent + s)
            last_line = indent + len(s)
        else:
            parts.append(", " + s)
            last_line += len(s) + 2
    return "".join(parts) + ")"


def tensor_repr(t) -> str:

    prefix = "tensor("
    if current_tracer() is not None:
        t._concrete("printing a tensor's values")  # raises TraceError naming the user's line
    arr = _concrete_or_none(t)
    suffixes = []
    if arr is None:
        body = f"<traced {t._type}>"
    else:
        body = format_values(arr, len(prefix))
        if arr.size == 0 and arr.ndim != 1:
            suffixes.append(f"size={tuple(arr.shape)}")
    empty = arr is not None and arr.size == 0
    if t._box.device is not CPU:
        suffixes.append(f"device='{t._box.device}'")
    if t.dtype is not D.float32 and (empty or t.dtype not in (D.int64, D.bool_)):
        suffixes.append(f"dtype=tracejit.{t.dtype.name}")
    if t.grad_fn is not None:
        suffixes.append(f"grad_fn={t.grad_fn!r}")
    elif t.requires_grad:
        suffixes.append("requires_grad=True")
    return _add_suffixes(prefix + body, suffixes, len(prefix))
