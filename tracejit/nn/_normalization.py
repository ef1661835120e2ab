"""layer_norm and rms_norm: normalization over the trailing dimensions, PyTorch's formulas and checks.

Written as one chain of Tensor ops per row (mean, centred values, variance, reciprocal square root, affine), so
that a compiled step fuses the forward and the backward of each into one row kernel (fuse_elementwise).
"""

from __future__ import annotations

import math

from .._tensor import Tensor
from ..errors import OpError, shape_str


def _normalized(input: Tensor, normalized_shape, name: str) -> tuple:
    shape = (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or tuple(input.shape[input.ndim - k:]) != shape or input.ndim < k:
        raise OpError(f"{name}: Given normalized_shape={list(shape)}, expected input with shape "
                      f"[*, {', '.join(map(str, shape))}], but got input of size {shape_str(input.shape)}")
    return shape, tuple(range(input.ndim - k, input.ndim))


def _check_param(name: str, t: Tensor | None, shape: tuple, what: str) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise OpError(f"{name}: expected {what} of shape {shape_str(shape)}, got {shape_str(t.shape)}")


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing `normalized_shape` dims (biased var).

    >>> F.layer_norm(tracejit.tensor([[1.0, 3.0]]), (2,))
    tensor([[-1.0000,  1.0000]])
    """
    shape, axes = _normalized(input, normalized_shape, "layer_norm")
    _check_param("layer_norm", weight, shape, "weight")
    _check_param("layer_norm", bias, shape, "bias")
    n = float(math.prod(shape))
    mean = input.sum(axes, keepdim=True) * (1.0 / n)
    centered = input - mean
    var = (centered * centered).sum(axes, keepdim=True) * (1.0 / n)
    out = centered * (var + eps).rsqrt()
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the trailing dims; eps None is the dtype's machine epsilon."""
    shape, axes = _normalized(input, normalized_shape, "rms_norm")
    _check_param("rms_norm", weight, shape, "weight")
    if eps is None:
        eps = 1.1920928955078125e-07 if input.dtype.itemsize == 4 else 2.220446049250313e-16
    n = float(math.prod(shape))
    out = input * ((input * input).sum(axes, keepdim=True) * (1.0 / n) + eps).rsqrt()
    return out if weight is None else out * weight
