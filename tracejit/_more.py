"""More of PyTorch's Tensor methods, composites of the core API (`Tensor` inherits them): in-place unary ops,
vector products, value tests, flips and tiles, layout queries. Written with tensor methods only, so they
differentiate and trace like the rest."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from . import dtypes as D
from .dispatch import _from_array, apply
from .errors import OpError, shape_str, user_location
from .ops import OPS

# what torch.return_types.sort / topk are: named (values, indices) pairs
SortResult = namedtuple("sort", ["values", "indices"])
TopKResult = namedtuple("topk", ["values", "indices"])


def _dim(dim, ndim, who):
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{who}: Dimension out of range (expected to be in range of [{-max(ndim, 1)}, "
                         f"{max(ndim, 1) - 1}], but got {dim}) (at {user_location()})")
    return dim % max(ndim, 1)


def _cat2(a, b, axis):
    return apply(OPS["cat"], a, b, axis=axis)  # (same dtype, same device: the callers make both)


def _accumulating(x, dtype):
    """The dtype cumsum/prod compute in, as PyTorch: `dtype` if given, else integers and bools widen to int64."""
    if dtype is not None:
        return x.to(D.as_dtype(dtype))
    return x if x.dtype.is_floating_point else x.to(D.int64)


class MoreMethods:
    """Mixed into `tracejit.Tensor`."""

    # ---- in-place forms of unary ops
    def abs_(self):
        return self._inplace(lambda s: s.abs(), "abs_")

    def neg_(self):
        return self._inplace(lambda s: -s, "neg_")

    def exp_(self):
        return self._inplace(lambda s: s.exp(), "exp_")

    def log_(self):
        return self._inplace(lambda s: s.log(), "log_")

    def sqrt_(self):
        return self._inplace(lambda s: s.sqrt(), "sqrt_")

    def sigmoid_(self):
        return self._inplace(lambda s: s.sigmoid(), "sigmoid_")

    def tanh_(self):
        return self._inplace(lambda s: s.tanh(), "tanh_")

    def relu_(self):
        return self._inplace(lambda s: s.relu(), "relu_")

    def masked_fill_(self, mask, value):
        return self._inplace(lambda s: s.masked_fill(mask, value), "masked_fill_")

    def clamp_min(self, min):
        return self.clamp(min=min)

    def clamp_max(self, max):
        return self.clamp(max=max)

    def clamp_min_(self, min):
        return self.clamp_(min=min)

    def clamp_max_(self, max):
        return self.clamp_(max=max)

    # ---- arithmetic composites
    def addcmul(self, tensor1, tensor2, value=1):
        return self + tensor1 * tensor2 * value

    def addcdiv(self, tensor1, tensor2, value=1):
        return self + tensor1 / tensor2 * value

    def lerp(self, end, weight):
        return self + (end - self) * weight

    def dot(self, other):
        if self.ndim != 1 or other.ndim != 1:
            raise RuntimeError(f"1D tensors expected, but got {self.ndim}D and {other.ndim}D tensors "
                               f"(at {user_location()})")
        if self.shape[0] != other.shape[0]:
            raise RuntimeError(f"inconsistent tensor size, expected tensor [{self.shape[0]}] and src "
                               f"[{other.shape[0]}] to have the same number of elements, but got {self.shape[0]} "
                               f"and {other.shape[0]} elements respectively (at {user_location()})")
        return self.matmul(other)

    def mv(self, vec):
        if self.ndim != 2 or vec.ndim != 1:
            raise RuntimeError(f"mv: expected a matrix and a vector, got {shape_str(self.shape)} and "
                               f"{shape_str(vec.shape)} (at {user_location()})")
        return self.matmul(vec)

    def outer(self, vec2):
        return self.reshape(-1, 1) * vec2.reshape(1, -1)

    ger = outer

    def logsumexp(self, dim, keepdim=False):
        m = self.amax(dim, keepdim=True).detach()
        m = m.where(m.abs() != math.inf, 0.0)  # (all -inf or an inf: no shift)
        out = (self - m).exp().sum(dim, keepdim=True).log() + m
        return out if keepdim else out.squeeze(dim)

    # ---- tests of values
    def isnan(self):
        return self != self

    def isinf(self):
        if not self.dtype.is_floating_point:
            return self != self  # (all False)
        return self.abs() == math.inf

    def isfinite(self):
        if not self.dtype.is_floating_point:
            return self == self
        return (self.abs() != math.inf) & (self == self)

    def logical_and(self, other):
        return self.bool() & (other.bool() if hasattr(other, "bool") else bool(other))

    def logical_or(self, other):
        return self.bool() | (other.bool() if hasattr(other, "bool") else bool(other))

    def logical_xor(self, other):
        return self.bool() != (other.bool() if hasattr(other, "bool") else bool(other))

    def count_nonzero(self, dim=None):
        return (self != 0).sum(dim)

    def allclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False) -> bool:
        a, b = self._concrete("allclose()"), other._concrete("allclose()")
        return bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan))

    def equal(self, other) -> bool:
        a, b = self._concrete("equal()"), other._concrete("equal()")
        return a.shape == b.shape and bool(np.array_equal(a, b))

    # ---- sorting and scans
    def argsort(self, dim=-1, descending=False, stable=False):
        """Indices that sort along `dim`; always stable (PyTorch's order for ties when stable=True), NaN as the
        largest value. Not differentiable (indices); `sort`'s values are."""
        if self.ndim == 0:
            return _from_array(np.zeros((), np.int64))
        return apply(OPS["argsort"], self, axis=_dim(dim, self.ndim, "argsort"), descending=bool(descending))

    def sort(self, dim=-1, descending=False, stable=False):
        """(values, indices) sorted along `dim`; the values' gradient flows back to where each came from."""
        if self.ndim == 0:
            return SortResult(self.clone(), _from_array(np.zeros((), np.int64)))
        idx = self.argsort(dim, descending)
        return SortResult(self.gather(_dim(dim, self.ndim, "sort"), idx), idx)

    def msort(self):
        return self.sort(0).values

    def topk(self, k, dim=-1, largest=True, sorted=True):
        """The k largest (smallest with largest=False) values along `dim` and their indices, largest first;
        `sorted=False` returns them sorted too (PyTorch leaves that order unspecified)."""
        d = _dim(dim, self.ndim, "topk")
        n = self.shape[d] if self.ndim else 1
        k = int(k)
        if not 0 <= k <= n:
            raise RuntimeError(f"topk: selected index k out of range (k={k}, size {n} along dimension {d}) "
                               f"(at {user_location()})")
        if self.ndim == 0:
            return TopKResult(self.clone(), _from_array(np.zeros((), np.int64)))
        idx = self.argsort(d, descending=largest).narrow(d, 0, k)
        return TopKResult(self.gather(d, idx), idx)

    def cumsum(self, dim, dtype=None):
        """Inclusive prefix sums along `dim` (integers and bools sum in int64, as in PyTorch), as log2(n) shifted
        additions, so that it differentiates and traces like any composite."""
        x = _accumulating(self, dtype)
        if x.ndim == 0:
            return x.clone()
        d = _dim(dim, x.ndim, "cumsum")
        n, k = x.shape[d], 1
        while k < n:  # Hillis-Steele: after the step for k, x[i] sums the 2k values ending at i
            pad = x.new_zeros(x.shape[:d] + (k,) + x.shape[d + 1:])
            x = x + _cat2(pad, x.narrow(d, 0, n - k), d)
            k *= 2
        return x

    def prod(self, dim=None, keepdim=False, dtype=None):
        """The product of all values, or along `dim`, as a tree of multiplications (exact gradients where values
        are zero); integers and bools multiply in int64, as in PyTorch."""
        x = _accumulating(self, dtype)
        if dim is None:
            x, d = x.reshape(-1), 0
        else:
            if isinstance(dim, (tuple, list)):
                raise TypeError("prod(): argument 'dim' must be an int, not a tuple (PyTorch's prod takes one dim)")
            if x.ndim == 0:
                return x.clone()
            d = _dim(dim, x.ndim, "prod")
        n = x.shape[d]
        if n == 0:
            shape = x.shape[:d] + (1,) + x.shape[d + 1:]
            x, n = x.new_ones(shape), 1
        while n > 1:
            if n % 2:
                x = _cat2(x, x.new_ones(x.shape[:d] + (1,) + x.shape[d + 1:]), d)
                n += 1
            x = x.narrow(d, 0, n // 2) * x.narrow(d, n // 2, n // 2)
            n //= 2
        if dim is None:
            return x.reshape(())
        return x if keepdim else x.squeeze(d)

    # ---- movement composites
    def flip(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        x = self
        for d in dims:
            d = d % max(self.ndim, 1)
            n = self.shape[d]
            x = x.index_select(d, _from_array(np.arange(n - 1, -1, -1, dtype=np.int64)))
        return x

    def fliplr(self):
        return self.flip(1)

    def flipud(self):
        return self.flip(0)

    def tile(self, *dims):
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)
        return self.repeat((1,) * (self.ndim - len(dims)) + dims)

    def repeat_interleave(self, repeats, dim=None):
        if not isinstance(repeats, int):
            raise OpError(f"repeat_interleave: only an int number of repeats is supported, got "
                          f"{type(repeats).__name__} (at {user_location()})")
        x = self.reshape(-1) if dim is None else self
        d = 0 if dim is None else dim % x.ndim
        shape = tuple(x.shape)
        y = x.unsqueeze(d + 1).expand(shape[:d + 1] + (repeats,) + shape[d + 1:])
        return y.reshape(shape[:d] + (shape[d] * repeats,) + shape[d + 1:])

    def movedim(self, source, destination):
        src = [source] if isinstance(source, int) else list(source)
        dst = [destination] if isinstance(destination, int) else list(destination)
        n = self.ndim
        src, dst = [s % n for s in src], [d % n for d in dst]
        order = [d for d in range(n) if d not in src]
        for d, s in sorted(zip(dst, src)):
            order.insert(d, s)
        return self.permute(order)

    moveaxis = movedim

    # ---- layout (tracejit tensors are dense and row-major)
    def is_contiguous(self, memory_format=None) -> bool:
        return True

    def stride(self, dim=None):
        strides, acc = [], 1
        for s in reversed(self.shape):
            strides.append(acc)
            acc *= max(s, 1)
        strides = tuple(reversed(strides))
        return strides if dim is None else strides[dim]

    def data_ptr(self) -> int:
        return int(self._concrete("data_ptr()").ctypes.data)

    def ndimension(self) -> int:
        return self.ndim

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.numel() * self.dtype.itemsize

    def is_complex(self) -> bool:
        return False

    def is_signed(self) -> bool:
        return self.dtype not in (D.bool_, D.uint8)
