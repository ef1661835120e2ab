"""Tape-as-data autograd: grad mode, tape entries, backward(), grad(), gradcheck.

A tape entry is data — (op, inputs, attrs, output) — never a closure, so the backward pass is inspectable
and, because gradient rules are written with tensor ops, traceable by the compiler.
"""

from .engine import GradcheckError, backward, grad, gradcheck
from .mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .tape import GradContext, TapeEntry

__all__ = ["GradContext", "GradcheckError", "TapeEntry", "backward", "enable_grad", "grad", "gradcheck",
           "inference_mode", "is_grad_enabled", "no_grad", "set_grad_enabled"]
