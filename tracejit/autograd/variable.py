"""`Variable`: PyTorch's old name for a tensor that records gradients. As in PyTorch today, every tensor is a
Variable (`isinstance(t, Variable)`), and ``Variable(t, requires_grad=True)`` returns a new leaf tensor on
t's storage."""

from __future__ import annotations

from ..dispatch import TensorBase


class _VariableMeta(type):
    def __instancecheck__(cls, other) -> bool:
        return isinstance(other, TensorBase)


class Variable(metaclass=_VariableMeta):
    """``Variable(tensor, requires_grad=False)``: `tensor` as a leaf that records gradients when asked."""

    def __new__(cls, data, requires_grad: bool = False, volatile: bool = False):
        if not isinstance(data, TensorBase):
            raise TypeError(f"Variable data has to be a tensor, but got {type(data).__name__}")
        t = data.detach()
        if requires_grad:
            t.requires_grad_(True)
        return t
