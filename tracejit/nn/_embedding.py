"""embedding: rows of a weight matrix picked by integer indices (a gather whose gradient is a dense scatter-add),
with PyTorch's padding_idx, max_norm and scale_grad_by_freq.
"""

from __future__ import annotations

from .. import dtypes as D
from .._tensor import Tensor, where
from ..autograd import no_grad
from ..dispatch import apply
from ..errors import OpError, OpTypeError, shape_str
from ..factories import ones
from ..indexing import check_index, take
from ..ops import OPS


def _counts(flat: Tensor, rows: int, dtype) -> Tensor:
    """How often each row index occurs in `flat` (checked indices), as a [rows] float tensor."""
    return apply(OPS["scatter_add"], flat, ones(tuple(flat.shape), dtype=dtype, device=flat.device), axis=0,
                 shape=(rows,))


def _renorm_(weight: Tensor, flat: Tensor, max_norm: float, norm_type: float) -> None:
    """PyTorch's embedding_renorm_: rows that `flat` refers to whose norm exceeds max_norm are scaled (in place,
    without gradient) to norm max_norm."""
    with no_grad():
        w = weight.detach()
        used = _counts(flat, weight.shape[0], w.dtype) > 0
        if norm_type == 2.0:
            norm = (w * w).sum(1).sqrt()
        else:
            norm = (w.abs() ** float(norm_type)).sum(1) ** (1.0 / float(norm_type))
        scale = where(used & (norm > max_norm), max_norm / (norm + 1e-7), 1.0)
        weight.mul_(scale.unsqueeze(1).to(w.dtype))


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None, max_norm: float | None = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """weight[input]: one row of the [num_embeddings, embedding_dim] weight per index.

    The row at `padding_idx` gets no gradient; `max_norm` renormalizes the rows used, in place, first.

    >>> F.embedding(tracejit.tensor([[0, 2]]), tracejit.eye(3))
    tensor([[[1., 0., 0.],
             [0., 0., 1.]]])
    """
    if not isinstance(input, Tensor) or input.dtype is not D.int64:
        got = input.dtype.name if isinstance(input, Tensor) else type(input).__name__
        raise OpTypeError(f"embedding: expected indices of dtype int64 (use .long()), got {got}")
    if weight.ndim != 2:
        raise OpError(f"embedding: 'weight' must be 2-D, got {shape_str(weight.shape)}")
    rows = weight.shape[0]
    if padding_idx is not None:
        if not -rows <= padding_idx < rows:
            raise AssertionError("Padding_idx must be within num_embeddings")
        padding_idx %= rows
    flat = check_index(input.reshape(-1), 0, rows, "embedding: index {value} is out of range in self "
                       f"(num_embeddings={rows})")
    if max_norm is not None:
        _renorm_(weight, flat, float(max_norm), float(norm_type))
    out = take(weight, flat, 0)
    scale = None
    if scale_grad_by_freq:
        scale = (1.0 / _counts(flat, rows, weight.dtype)).gather(0, flat)
    if padding_idx is not None:
        keep = (flat != padding_idx).to(weight.dtype)
        scale = keep if scale is None else scale * keep
    if scale is not None:  # the same values; the gradient of each row scaled (or blocked)
        fixed = out.detach()
        out = fixed + (out - fixed) * scale.unsqueeze(1)
    return out.reshape(tuple(input.shape) + (weight.shape[1],))
