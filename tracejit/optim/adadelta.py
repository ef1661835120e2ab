"""Adadelta (Zeiler 2012): per-coordinate step sizes from running averages of squared gradients and of
squared updates, scaled by ``lr`` (PyTorch's default 1.0).

PyTorch's single-tensor algorithm with in-place state (``square_avg``, ``acc_delta``, ``step``) and the lr
in a tensor, so a traced step reproduces it inside the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .. import dtypes as D
from .._tensor import Tensor
from ..autograd import no_grad
from ..factories import zeros, zeros_like
from .optimizer import Optimizer


class Adadelta(Optimizer):
    """``torch.optim.Adadelta``.

    ``v = rho * v + (1 - rho) * g^2;  d = sqrt(u + eps) / sqrt(v + eps) * g;  u = rho * u + (1 - rho) * d^2;
    p -= lr * d``.

    >>> opt = tracejit.optim.Adadelta(model.parameters(), lr=1.0, rho=0.9)
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False, differentiable: bool = False):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adadelta update of every parameter that has a gradient; returns the closure's loss, if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr = group.tensor("lr")
            rho, eps, weight_decay, maximize = group["rho"], group["eps"], group["weight_decay"], group["maximize"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = zeros((), dtype=D.float32)
                    state["square_avg"] = zeros_like(p)
                    state["acc_delta"] = zeros_like(p)
                square_avg, acc_delta = state["square_avg"], state["acc_delta"]
                state["step"].add_(1)
                grad = -p.grad if maximize else p.grad
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
                std = (square_avg + eps).sqrt()
                delta = (acc_delta + eps).sqrt() / std * grad
                acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
                p.sub_(delta * lr)  # PyTorch: p.add_(delta, alpha=-lr)
        return loss
