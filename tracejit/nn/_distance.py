"""Vector norms and distances: cosine_similarity, pairwise_distance (and the p-norm that clip_grad_norm_ and
the triplet loss use), as composites whose gradients match PyTorch's at the kinks (a zero vector's norm has a
zero gradient, not NaN).
"""

from __future__ import annotations

import math

from .._tensor import Tensor, where
from ..ops import broadcast_shapes


def vector_norm(x: Tensor, ord: float = 2.0, dim=None, keepdim: bool = False) -> Tensor:
    """PyTorch's linalg.vector_norm over `dim` (all dims when None): (sum |x|^ord)^(1/ord), max |x| for inf,
    min |x| for -inf, the count of non-zeros for 0 (no gradient). Where the sum is 0 the gradient is 0."""
    ord = float(ord)
    a = x.abs()
    if ord == math.inf:
        return a.amax(dim, keepdim)
    if ord == -math.inf:
        return a.amin(dim, keepdim)
    if ord == 0.0:
        return (x != 0).to(x.dtype).sum(dim, keepdim)
    if ord == 1.0:
        return a.sum(dim, keepdim)
    s = (x * x if ord == 2.0 else a.pow(ord)).sum(dim, keepdim)
    zero = s == 0
    safe = where(zero, 1.0, s)  # keeps the root's gradient finite where the norm is 0 (NaN and inf stay)
    root = safe.sqrt() if ord == 2.0 else safe.pow(1.0 / ord)
    return where(zero, 0.0, root)


def _broadcast(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    shape = broadcast_shapes("cosine_similarity", tuple(a.shape), tuple(b.shape))
    return (a if tuple(a.shape) == shape else a.broadcast_to(shape),
            b if tuple(b.shape) == shape else b.broadcast_to(shape))


def _clamp_min_straight_through(n: Tensor, eps: float) -> Tensor:
    """max(n, eps) whose gradient is that of n: PyTorch clamps the norms in place under no_grad."""
    nd = n.detach()
    return (n - nd) + nd.clamp(min=eps)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """sum(x1 / max(|x1|, eps) * x2 / max(|x2|, eps)) along `dim`, after broadcasting x1 and x2.

    >>> F.cosine_similarity(tracejit.tensor([[1.0, 0.0]]), tracejit.tensor([[1.0, 1.0]]))
    tensor([0.7071])
    """
    a, b = _broadcast(x1, x2)
    na = _clamp_min_straight_through(vector_norm(a, 2.0, dim, keepdim=True), eps)
    nb = _clamp_min_straight_through(vector_norm(b, 2.0, dim, keepdim=True), eps)
    return ((a / na) * (b / nb)).sum(dim)


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    """The p-norm of x1 - x2 + eps over the last dimension (of the broadcast shape)."""
    last = max(x1.ndim, x2.ndim) - 1
    return vector_norm(x1 - x2 + eps, p, last, keepdim)
