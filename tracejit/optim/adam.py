"""Adam and AdamW (decoupled weight decay), with amsgrad and maximize.

PyTorch's single-tensor algorithm. The step count and the learning rate are tensors, so the bias
corrections are tensor math (in float64, as PyTorch computes them in Python floats) and trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import dtypes as D
from .._tensor import Tensor
from ..autograd import no_grad
from ..factories import zeros, zeros_like
from .optimizer import Optimizer, fused_update, rebind


class Adam(Optimizer):
    """``torch.optim.Adam``.

    >>> opt = tracejit.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        # foreach/capturable/fused/differentiable are accepted for source compatibility only: every step
        # here is "capturable" (tensor step and lr) and the compiler does the multi-tensor fusion
        defaults = dict(lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, amsgrad: bool) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = zeros((), dtype=D.float32)
            state["exp_avg"] = zeros_like(p)
            state["exp_avg_sq"] = zeros_like(p)
            if amsgrad:
                state["max_exp_avg_sq"] = zeros_like(p)
        return state

    @no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adam update of every parameter that has a gradient; returns the closure's loss, if given."""
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr = group.tensor("lr")
            beta1, beta2 = group.hyper("betas")  # float64 tensors once a scheduler cycles them (OneCycleLR)
            eps, weight_decay, amsgrad = group["eps"], group["weight_decay"], group["amsgrad"]
            maximize, decoupled = group["maximize"], group["decoupled_weight_decay"]
            fusable = not (weight_decay or amsgrad or maximize) and isinstance(beta1, float) and \
                isinstance(beta2, float)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = -p.grad if maximize else p.grad
                state = self._init_state(p, amsgrad)
                if fusable and self._fused_step(p, state, lr, beta1, beta2, eps):
                    continue
                step_t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
                step_t.add_(1)
                if weight_decay != 0:
                    if decoupled:
                        p.mul_(1 - lr.double() * weight_decay)
                    else:
                        grad = grad.add(p, alpha=weight_decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                # PyTorch evaluates these scalars in Python (double) from step.item(); float64 tensor math
                # gives the same numbers without leaving the graph (1 - 0.999**t loses digits in float32)
                step = step_t.double()
                bias_correction1 = 1 - beta1 ** step
                bias_correction2_sqrt = (1 - beta2 ** step).sqrt()
                step_size = lr.double() / bias_correction1
                if amsgrad:
                    max_sq = state["max_exp_avg_sq"]
                    max_sq.copy_(max_sq.maximum(exp_avg_sq))
                    denom = (max_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                else:
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss

    @staticmethod
    def _fused_step(p: Tensor, state: dict, lr: Tensor, beta1: float, beta2: float, eps: float) -> bool:
        """The update above as one kernel (PyTorch's foreach path) where `fused_update` allows; False otherwise.
        The scalars are the float64 values the tensor ops compute (NumPy float64 arithmetic, in their order)."""
        step_t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        kernel = fused_update("adam_update", p, p.grad, exp_avg, exp_avg_sq, step_t, lr)
        if kernel is None:
            return False
        new_step = np.add(step_t._box.value, np.float32(1))  # step_t.add_(1)
        step = np.float64(new_step)
        bias_correction1 = np.subtract(1.0, np.power(np.float64(beta1), step))
        bias_correction2_sqrt = np.sqrt(np.subtract(1.0, np.power(np.float64(beta2), step)))
        step_size = np.divide(np.float64(lr._box.value), bias_correction1)
        new_p, new_m, new_v = kernel(p._box.value, p.grad._box.value, exp_avg._box.value, exp_avg_sq._box.value,
                                     beta1, beta2, eps, bias_correction2_sqrt, step_size)
        rebind(step_t, np.asarray(new_step, np.float32))
        rebind(exp_avg, new_m)
        rebind(exp_avg_sq, new_v, 2)  # (mul_, addcmul_)
        rebind(p, new_p)
        return True


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay (``p *= 1 - lr * weight_decay``)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # an AdamW stays decoupled whatever the checkpoint says
            group["decoupled_weight_decay"] = True
