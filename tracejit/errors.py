"""Errors a user sees, and the user's own file:line they point at."""

from __future__ import annotations

import os
import sys

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class OpError(RuntimeError):
    """Misuse of an op: wrong shapes, dtypes or attributes. The message names the op and the shapes."""


class OpTypeError(OpError, TypeError):
    """An op got an input of the wrong dtype or Python type."""


class OpIndexError(OpError, IndexError):
    """An index outside its valid range (gather/scatter indices, integer-tensor subscripts): the message names
    the op, the offending value and the size. Raised alike eagerly and by compiled code (before any state is
    written back)."""


class TargetIndexError(OpIndexError):
    """A class label outside [0, num_classes) that is not ignore_index (PyTorch raises IndexError here)."""


class TraceError(RuntimeError):
    """Something a trace cannot capture (``.item()``, ``bool(tensor)``, ...)."""


def user_frame():
    """The innermost stack frame outside the tracejit package (the user's line), or None."""
    f = sys._getframe(1)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if not path.startswith(_PKG_DIR + os.sep) and "importlib" not in path:
            return f
        f = f.f_back
    return None


def user_location() -> str:
    f = user_frame()
    if f is None:
        return "<unknown>"
    return f"{f.f_code.co_filename}:{f.f_lineno}"


def shape_str(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"
