"""RMSprop (Hinton's running mean of squared gradients), with momentum, centering and weight decay.

PyTorch's single-tensor algorithm, written with tensor ops on ``group.tensor('lr')`` and in-place state
(``square_avg``, ``momentum_buffer``, ``grad_avg``, ``step``), so a traced step reproduces it inside the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .. import dtypes as D
from .._tensor import Tensor
from ..autograd import no_grad
from ..factories import zeros, zeros_like
from .optimizer import Optimizer


class RMSprop(Optimizer):
    """``torch.optim.RMSprop``: ``v = alpha * v + (1 - alpha) * g^2;  p -= lr * g / (sqrt(v) + eps)``.

    ``centered=True`` subtracts the squared running mean of the gradient from ``v``; ``momentum > 0``
    accumulates ``g / (sqrt(v) + eps)`` in a buffer first. The momentum is read with
    ``group.hyper('momentum')``, so a scheduler that cycles it (OneCycleLR) does not retrace a compiled step.

    >>> opt = tracejit.optim.RMSprop(model.parameters(), lr=0.01, momentum=0.9)
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        # capturable/foreach/differentiable: accepted for source compatibility (every step here is
        # "capturable"; the compiler's fuse_optimizer pass does the multi-tensor fusion)
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach, maximize=maximize,
                        differentiable=differentiable)
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = zeros((), dtype=D.float32)
            state["square_avg"] = zeros_like(p)
            if group["momentum"] > 0:
                state["momentum_buffer"] = zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = zeros_like(p)
        elif group["momentum"] > 0 and "momentum_buffer" not in state:
            # momentum switched on after the first step (a scheduler): start the buffer at zero
            state["momentum_buffer"] = zeros_like(p)
        return state

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One RMSprop update of every parameter that has a gradient; returns the closure's loss, if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr = group.tensor("lr")
            alpha, eps, weight_decay = group["alpha"], group["eps"], group["weight_decay"]
            momentum, centered, maximize = group["momentum"], group["centered"], group["maximize"]
            momentum_v = group.hyper("momentum")  # a tensor once a scheduler cycles it
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = -p.grad if maximize else p.grad
                state = self._init_state(p, group)
                square_avg = state["square_avg"]
                state["step"].add_(1)
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                if centered:
                    grad_avg = state["grad_avg"]
                    grad_avg.lerp_(grad, 1 - alpha)
                    avg = (square_avg - grad_avg * grad_avg).sqrt()
                else:
                    avg = square_avg.sqrt()
                avg = avg + eps
                if momentum > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum_v).addcdiv_(grad, avg)
                    p.sub_(buf * lr)  # PyTorch: p.add_(buf, alpha=-lr)
                else:
                    p.addcdiv_(grad, avg, value=-lr)
        return loss
