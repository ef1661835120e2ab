"""Tape-as-data autograd: grad mode, tape entries, backward(), grad(), gradcheck.

A tape entry is data — (op, inputs, attrs, output) — never a closure, so the backward pass is inspectable
and, because gradient rules are written with tensor ops, traceable by the compiler.
"""

from . import function  # noqa: F401
from .engine import GradcheckError, backward, grad, gradcheck
from .function import Function, FunctionCtx, once_differentiable
from .mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .tape import GradContext, TapeEntry
from .variable import Variable

__all__ = ["Function", "FunctionCtx", "GradContext", "GradcheckError", "TapeEntry", "Variable", "backward",
           "enable_grad", "grad", "gradcheck", "inference_mode", "is_grad_enabled", "no_grad", "once_differentiable",
           "set_grad_enabled"]
