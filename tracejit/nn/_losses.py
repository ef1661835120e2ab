"""Regression, divergence and metric losses: smooth_l1_loss, huber_loss, kl_div, triplet_margin_loss.

Composites of Tensor ops with PyTorch's formulas, argument checks, warnings and reductions ('batchmean' for
kl_div); the classification losses (cross_entropy, nll, BCE) live in functional.py beside their helpers.
"""

from __future__ import annotations

import warnings

from .._tensor import Tensor, where
from ..errors import OpError, shape_str
from ..ops import broadcast_shapes
from . import functional as F
from ._distance import pairwise_distance


def _expanded(input: Tensor, target: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """torch.broadcast_tensors(input, target), after PyTorch's warning for differing shapes."""
    F._warn_shape(input, target)
    shape = broadcast_shapes(name, tuple(input.shape), tuple(target.shape))
    return (input if tuple(input.shape) == shape else input.broadcast_to(shape),
            target if tuple(target.shape) == shape else target.broadcast_to(shape))


def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean",
                   beta: float = 1.0) -> Tensor:
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (d = input - target); beta=0 is the L1 loss."""
    reduction = F._legacy_reduction(size_average, reduce, reduction)
    F._check_reduction(reduction)
    x, y = _expanded(input, target, "smooth_l1_loss")
    if beta < 0:
        raise OpError("smooth_l1_loss does not support negative values for beta.")
    d = x - y
    ad = d.abs()
    if beta == 0.0:
        return F._reduce(ad, reduction)
    return F._reduce(where(ad < beta, ad * 0.5 * ad / beta, ad - 0.5 * beta), reduction)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta); `weight` (input's shape) scales each term."""
    F._check_reduction(reduction)
    x, y = _expanded(input, target, "huber_loss")
    ad = (x - y).abs()
    loss = where(ad < delta, ad * 0.5 * ad, (ad - 0.5 * delta) * delta)
    if weight is not None:
        if tuple(weight.shape) != tuple(input.shape):
            raise ValueError("Weights and input must have the same size.")
        loss = loss * weight
    return F._reduce(loss, reduction)


_KL_MEAN_WARNING = ("reduction: 'mean' divides the total loss by both the batch size and the support size."
                    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
                    "'mean' will be changed to behave the same as 'batchmean' in the next major release.")


def kl_div(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """KL(target || exp(input)) pointwise: target (log target - input), 0 where target == 0.

    `input` holds log-probabilities; reduction='batchmean' divides the sum by the batch size (the true KL).
    """
    if size_average is not None or reduce is not None:
        reduction = F._legacy_reduction(size_average, reduce, reduction)
    else:
        if reduction == "mean":
            warnings.warn(_KL_MEAN_WARNING, stacklevel=2)
        if reduction != "batchmean":
            F._check_reduction(reduction)
    if log_target:
        loss = target.exp() * (target - input)
    else:
        # xlogy(t, t): 0 at t == 0 (with a finite gradient there); t log t elsewhere, NaN for t < 0 as PyTorch
        zero = target == 0
        loss = where(zero, 0.0, target * where(zero, 1.0, target).log()) - target * input
    if reduction == "batchmean":
        total = loss.sum()
        return total / float(input.shape[0]) if input.ndim != 0 else total
    return F._reduce(loss, reduction)


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0, p: float = 2,
                        eps: float = 1e-6, swap: bool = False, size_average=None, reduce=None,
                        reduction: str = "mean") -> Tensor:
    """max(d(a, p) - d(a, n) + margin, 0) with d the pairwise p-norm distance; `swap` uses min(d(a, n), d(p, n))."""
    reduction = F._legacy_reduction(size_average, reduce, reduction)
    F._check_reduction(reduction)
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    dims = (anchor.ndim, positive.ndim, negative.ndim)
    if len(set(dims)) != 1:
        raise OpError(f"The anchor, positive, and negative tensors are expected to have the same number of "
                      f"dimensions, but got: anchor {dims[0]}D, positive {dims[1]}D, and negative {dims[2]}D "
                      f"inputs (shapes {shape_str(anchor.shape)}, {shape_str(positive.shape)}, "
                      f"{shape_str(negative.shape)})")
    d_pos = pairwise_distance(anchor, positive, p, eps)
    d_neg = pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = d_neg.minimum(pairwise_distance(positive, negative, p, eps))
    return F._reduce((d_pos + margin - d_neg).clamp(min=0.0), reduction)
