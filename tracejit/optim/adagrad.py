"""Adagrad: per-coordinate step sizes from the running sum of squared gradients, with lr decay.

PyTorch's single-tensor algorithm. The state (``sum``, ``step``) is created for every parameter when the
optimizer is built, as in PyTorch; the decayed lr ``lr / (1 + (step - 1) * lr_decay)`` is float64 tensor
math on the step tensor (PyTorch computes it in Python doubles), so it traces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .. import dtypes as D
from .._tensor import Tensor
from ..autograd import no_grad
from ..factories import full_like, zeros
from .optimizer import Optimizer


class Adagrad(Optimizer):
    """``torch.optim.Adagrad``: ``s += g^2;  p -= clr * g / (sqrt(s) + eps)``.

    >>> opt = tracejit.optim.Adagrad(model.parameters(), lr=0.01, lr_decay=1e-4)
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0, eps: float = 1e-10,
                 foreach: bool | None = None, *, maximize: bool = False, differentiable: bool = False,
                 fused: bool | None = None):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, initial_accumulator_value)

    def _init_state(self, p: Tensor, initial_accumulator_value: float) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = zeros((), dtype=D.float32)
            state["sum"] = full_like(p, initial_accumulator_value)
        return state

    def share_memory(self) -> None:
        """Accepted for source compatibility (tensors here live in one process's memory)."""

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adagrad update of every parameter that has a gradient; returns the closure's loss, if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr = group.tensor("lr")
            lr_decay, eps, weight_decay, maximize = (group["lr_decay"], group["eps"], group["weight_decay"],
                                                     group["maximize"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                # parameters added later (add_param_group) start lazily, from the constructor's value
                state = self._init_state(p, self.defaults["initial_accumulator_value"])
                step_t, state_sum = state["step"], state["sum"]
                step_t.add_(1)
                grad = -p.grad if maximize else p.grad
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                if lr_decay != 0:
                    clr = lr.double() / ((step_t.double() - 1) * lr_decay + 1)
                else:
                    clr = lr
                state_sum.addcmul_(grad, grad, value=1)
                std = state_sum.sqrt() + eps
                p.addcdiv_(grad, std, value=-clr)
        return loss
