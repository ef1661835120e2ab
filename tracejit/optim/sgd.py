"""Stochastic gradient descent with momentum, dampening, Nesterov, weight decay and maximize.

The update is PyTorch's single-tensor algorithm, written with tensor ops on `group.tensor('lr')` and
an in-place momentum buffer, so a traced step reproduces it inside the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .._tensor import Tensor
from ..autograd import no_grad
from .optimizer import Optimizer, fused_update, rebind


class SGD(Optimizer):
    """``torch.optim.SGD``: ``p -= lr * g`` with optional (Nesterov) momentum.

    >>> opt = tracejit.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 momentum: float = 0, dampening: float = 0, weight_decay: float = 0, nesterov: bool = False,
                 *, maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        # foreach/fused/differentiable are accepted for source compatibility; the compiler's
        # fuse_optimizer pass is what turns the per-parameter loop into one multi-tensor kernel
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
                        fused=fused)
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss, if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr = group.tensor("lr")
            momentum, dampening = group["momentum"], group["dampening"]
            momentum_v = group.hyper("momentum")  # a tensor once a scheduler cycles it (OneCycleLR)
            weight_decay, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
            fusable = not (maximize or nesterov or weight_decay) and isinstance(momentum_v, (int, float))
            for p in group["params"]:
                if p.grad is None:
                    continue
                if fusable and self._fused_step(p, lr, momentum, dampening):
                    continue
                grad = -p.grad if maximize else p.grad
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = grad.detach().clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum_v).add_(grad, alpha=1 - dampening)
                    grad = grad + buf * momentum_v if nesterov else buf
                # PyTorch writes p.add_(grad, alpha=-lr); alpha must be a number, lr is a tensor here
                p.sub_(grad * lr)
        return loss

    def _fused_step(self, p: Tensor, lr: Tensor, momentum: float, dampening: float) -> bool:
        """The update below as one kernel (PyTorch's foreach path) where `fused_update` allows; False otherwise."""
        state = self.state[p] if momentum != 0 else None
        buf = state.get("momentum_buffer") if state is not None else None
        kernel = fused_update("sgd_update", p, p.grad, lr, *([buf] if buf is not None else []))
        if kernel is None:
            return False
        new_p, new_buf = kernel(p._box.value, p.grad._box.value, None if buf is None else buf._box.value,
                                lr._box.value, momentum, dampening)
        if state is not None:
            if buf is None:
                state["momentum_buffer"] = Tensor._make(new_buf, p.grad._box.type)
            else:
                rebind(buf, new_buf, 2)  # (mul_, add_)
        rebind(p, new_p)
        return True
