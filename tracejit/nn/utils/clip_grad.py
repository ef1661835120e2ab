"""Gradient clipping with PyTorch's names, formulas and return values.

Everything is tensor code under no_grad, so a compiled training step traces it: the total norm stays a tensor
(no host round trip), the gradients are scaled in place (rebound, and written back by the compiled program),
and error_if_nonfinite becomes a check the compiled program runs before it writes any state back.
`foreach` is accepted and ignored (one code path; the compiler fuses the per-gradient updates).
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterable

import numpy as np

from ... import dtypes as D
from ..._tensor import Tensor, stack
from ...autograd import no_grad
from ...dispatch import _concrete_or_none
from ...factories import tensor
from ...indexing import check_index
from .._distance import vector_norm

__all__ = ["clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_"]


def _tensors(parameters) -> list:
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _nonfinite_message(norm_type: float) -> str:
    return (f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            f"clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            f"`error_if_nonfinite=False`")


def _check_finite(total: Tensor, norm_type: float) -> None:
    value = _concrete_or_none(total)
    if value is not None:
        if not np.isfinite(value):
            raise RuntimeError(_nonfinite_message(norm_type))
        return
    # traced: x - x is 0 only for finite x; check_index stops the compiled program (an OpIndexError, which is a
    # RuntimeError) before the scaled gradients are written back, as the eager error comes before the scaling
    finite = ((total - total) == 0).long()
    check_index(finite, 1, 2, _nonfinite_message(norm_type) + " (finite: {value})")


def get_total_norm(tensors, norm_type: float = 2.0, error_if_nonfinite: bool = False, foreach=None) -> Tensor:
    """The norm of all `tensors` together, as if they were concatenated into one vector.

    >>> nn.utils.get_total_norm([tracejit.tensor([3.0]), tracejit.tensor([4.0])])
    tensor(5.)
    """
    with no_grad():
        tensors = _tensors(tensors)
        norm_type = float(norm_type)
        if not tensors:
            return tensor(0.0)
        norms = [vector_norm(t, norm_type) for t in tensors]
        dtype = D.result_type(*norms) if len({n.dtype for n in norms}) > 1 else norms[0].dtype
        total = vector_norm(stack([n.to(dtype) for n in norms]), norm_type)
        if error_if_nonfinite:
            _check_finite(total, norm_type)
        return total


def clip_grads_with_norm_(parameters, max_norm: float, total_norm: Tensor, foreach=None) -> None:
    """Scale the gradients in place by min(max_norm / (total_norm + 1e-6), 1)."""
    with no_grad():
        grads = [p.grad for p in _tensors(parameters) if p.grad is not None]
        if not grads:
            return
        coef = (float(max_norm) / (total_norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef if coef.dtype is g.dtype else coef.to(g.dtype))


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None) -> Tensor:
    """Clip the gradients' total norm to `max_norm` in place; returns the total norm before clipping.

    >>> total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and not parameters:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=2)
    grads = [p.grad for p in parameters if p.grad is not None]
    total = get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    clip_grads_with_norm_(parameters, max_norm, total, foreach)
    return total


def clip_grad_norm(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                   foreach=None) -> Tensor:
    warnings.warn("`torch.nn.utils.clip_grad_norm` is now deprecated in favor of `torch.nn.utils.clip_grad_norm_`.",
                  FutureWarning, stacklevel=2)
    return clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float, foreach=None) -> None:
    """Clamp every gradient to [-clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    with no_grad():
        for p in _tensors(parameters):
            if p.grad is not None:
                p.grad.clamp_(min=-clip_value, max=clip_value)


