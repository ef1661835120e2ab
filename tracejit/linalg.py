"""`tracejit.linalg`: vector and matrix norms (`norm`, `vector_norm`, `matrix_norm`), composites of primitives
written with tensor methods, so they differentiate and trace like any op. ``Tensor.norm`` and ``tracejit.norm``
follow PyTorch's rules on top of these.

Norms that need a singular value decomposition (ord 2, -2, 'nuc' of a matrix) are not available.
"""

from __future__ import annotations

import math
import numbers

from .errors import user_location

__all__ = ["norm", "vector_norm", "matrix_norm"]


def _dims(x, dim):
    if dim is None:
        return tuple(range(x.ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    n = max(x.ndim, 1)
    for d in dims:
        if not -n <= d < n:
            raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d}) "
                             f"(at {user_location()})")
    return tuple(sorted({d % n for d in dims})) if x.ndim else ()


def _check_float(who, x):
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"{who}: Expected a floating point or complex tensor as input. Got {x.dtype.name} "
                           f"(at {user_location()})")


def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None, out=None):
    """``(sum |x|**ord) ** (1/ord)`` over `dim` (all elements when None); ord inf/-inf: max/min of |x|, 0: the
    number of non-zeros. At x = 0 the 2-norm's gradient is 0, as in PyTorch."""
    if isinstance(ord, str) or not isinstance(ord, numbers.Number) or isinstance(ord, bool):
        raise TypeError(f"linalg_vector_norm(): argument 'ord' must be Number, not {type(ord).__name__}")
    if dtype is not None:
        x = x.to(dtype)
    _check_float("linalg.vector_norm", x)
    axes = _dims(x, dim)
    a = x.abs()
    if ord == math.inf or ord == -math.inf:
        if x.numel() == 0:
            raise RuntimeError("linalg.vector_norm cannot compute the inf norm on an empty tensor because the "
                               "operation does not have an identity")
        r = a.amax(axes, keepdim) if ord > 0 else a.amin(axes, keepdim)
    elif ord == 0:
        r = (x != 0).to(x.dtype).sum(axes, keepdim)
        if x.requires_grad:  # in the graph, with zero gradient (a count has none)
            r = r + a.where(False, 0.0).sum(axes, keepdim)
    elif ord == 1:
        r = a.sum(axes, keepdim)
    elif ord == 2:
        s = (x * x).sum(axes, keepdim)
        pos = s > 0
        # sqrt through a where, so that a zero vector gets gradient 0 rather than 0 * inf = nan
        r = s.where(pos, 1.0).sqrt().where(pos, 0.0)
    else:
        r = a.pow(float(ord)).sum(axes, keepdim).pow(1.0 / ord)
    return _out(r, out, "linalg.vector_norm")


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim=False, *, dtype=None, out=None):
    """Frobenius ('fro'), max column sum (1), max row sum (inf) and their minima (-1, -inf) over the two
    dims `dim`."""
    if dtype is not None:
        A = A.to(dtype)
    if A.ndim < 2:
        raise RuntimeError(f"linalg.matrix_norm: The input tensor A must have at least 2 dimensions. (at "
                           f"{user_location()})")
    dim = tuple(dim)
    if len(dim) != 2:
        raise RuntimeError(f"linalg.matrix_norm: dim must be a 2-tuple. Got {' '.join(map(str, dim))}")
    _check_float("linalg.matrix_norm", A)
    d0, d1 = (d % A.ndim for d in dim)
    if d0 == d1:
        raise RuntimeError(f"linalg.matrix_norm: dims must be different. Got ({dim[0]}, {dim[1]})")
    if ord == "fro":
        r = vector_norm(A, 2, (d0, d1), keepdim)
    elif ord in (1, -1, math.inf, -math.inf):
        rows, cols = (d0, d1) if ord in (1, -1) else (d1, d0)  # 1: sum down the rows, then the best column
        s = A.abs().sum(rows, keepdim=True)
        r = s.amax(cols, keepdim=True) if ord > 0 else s.amin(cols, keepdim=True)
        if not keepdim:
            r = r.squeeze((d0, d1))
    elif ord in ("nuc", 2, -2):
        raise RuntimeError(f"linalg.matrix_norm: ord={ord!r} needs singular values (an SVD), which tracejit does "
                           f"not compute (at {user_location()})")
    else:
        raise RuntimeError(f"linalg.matrix_norm: Order {ord} not supported.")
    return _out(r, out, "linalg.matrix_norm")


def norm(A, ord=None, dim=None, keepdim=False, *, dtype=None, out=None):
    """``tracejit.linalg.norm``: a vector norm over one dim (or all elements), a matrix norm over two."""
    if dim is not None and not isinstance(dim, int) and len(dim) == 2:
        r = matrix_norm(A, "fro" if ord is None else ord, dim, keepdim, dtype=dtype)
    elif dim is not None:
        if isinstance(ord, str):
            raise RuntimeError(f"linalg.norm: If dim is specified, it must be of length 1 or 2. Got {dim} with "
                               f"ord={ord!r}; a string ord is a matrix norm, which needs two dims")
        r = vector_norm(A, 2 if ord is None else ord, dim, keepdim, dtype=dtype)
    elif ord is None:
        r = vector_norm(A, 2, None, keepdim, dtype=dtype)
    elif A.ndim == 2:
        r = matrix_norm(A, ord, (-2, -1), keepdim, dtype=dtype)
    elif A.ndim == 1:
        if isinstance(ord, str):
            raise RuntimeError("linalg.matrix_norm: The input tensor A must have at least 2 dimensions.")
        r = vector_norm(A, ord, None, keepdim, dtype=dtype)
    else:
        raise RuntimeError(f"linalg.norm: If dim is not specified but ord is, the input must be 1D or 2D. Got "
                           f"{A.ndim}D.")
    return _out(r, out, "linalg.norm")


def tensor_norm(x, p="fro", dim=None, keepdim=False, out=None, dtype=None):
    """``torch.norm`` / ``Tensor.norm``: a number p is a vector norm over `dim` (all elements by default, even
    of a matrix); 'fro' over at most two dims is the 2-norm; 'nuc' is a matrix norm."""
    if isinstance(p, str):
        if p == "fro" and (dim is None or isinstance(dim, int) or len(dim) <= 2):
            r = vector_norm(x, 2, dim, keepdim, dtype=dtype)
        else:
            r = matrix_norm(x, p, tuple(range(x.ndim)) if dim is None else dim, keepdim, dtype=dtype)
    else:
        r = vector_norm(x, 2.0 if p is None else p, dim, keepdim, dtype=dtype)
    return _out(r, out, "norm")


def _out(r, out, who):
    return r if out is None else out._write_out(who, r)
