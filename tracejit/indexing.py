"""`tensor[index]`: ints, slices, None, Ellipsis, integer tensors/lists and (eager only) bool masks.

Basic indexing lowers to one `slice` plus a `reshape`; integer-tensor indexing lowers to `gather`.
"""

from __future__ import annotations

import math

import numpy as np

from . import dtypes as D
from .devices import CPU
from .dispatch import TensorBase as Tensor
from .dispatch import _concrete_or_none, _from_array, apply, move
from .errors import OpError, shape_str, user_location
from .factories import tensor
from .ops import OPS, first_bad_index, index_error


def _is_adv(i):

    return isinstance(i, (Tensor, list, np.ndarray))


def getitem(x, index):

    if not isinstance(index, tuple):
        index = (index,)
    index = _masks_to_indices(x, index)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if n_real > x.ndim:
        raise IndexError(f"too many indices for tensor of dimension {x.ndim} (shape {shape_str(x.shape)}) "
                         f"at {user_location()}")
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (x.ndim - n_real) + index[k + 1:]
    else:
        index = index + (slice(None),) * (x.ndim - n_real)

    starts, stops, steps, out_shape, adv = [], [], [], [], []
    dim = 0
    for i in index:
        if i is None:
            out_shape.append(1)
            continue
        size = x.shape[dim]
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            j = int(i)
            if not -size <= j < size:
                raise IndexError(f"index {j} is out of bounds for dimension {dim} with size {size} "
                                 f"(at {user_location()})")
            j %= size
            starts.append(j), stops.append(j + 1), steps.append(1)
        elif isinstance(i, slice):
            a, b, s = i.indices(size)
            if s <= 0:
                raise ValueError("step must be greater than zero")
            b = max(b, a)
            starts.append(a), stops.append(b), steps.append(s)
            out_shape.append(len(range(a, b, s)))
        elif _is_adv(i):
            starts.append(0), stops.append(size), steps.append(1)
            adv.append((dim, len(out_shape), i))
            out_shape.append(None)  # placeholder
        else:
            raise IndexError(f"unsupported index of type {type(i).__name__}")
        dim += 1

    y = x
    if (tuple(starts), tuple(stops), tuple(steps)) != ((0,) * x.ndim, tuple(x.shape), (1,) * x.ndim):
        y = apply(OPS["slice"], x, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    if not adv:
        return y.reshape(tuple(out_shape))
    # keep only the advanced dims and the real (non-int) dims of y, in order
    keep_shape = [s if s is not None else y.shape[d] for s, d in zip(out_shape, _dims_of(index))]
    y = y.reshape(tuple(keep_shape))
    return _advanced(y, [(pos, idx) for _, pos, idx in adv])


def _is_mask(i):

    if isinstance(i, Tensor):
        return i.dtype is D.bool_
    if isinstance(i, (list, np.ndarray)):
        a = np.asarray(i)
        return a.dtype == np.bool_ and a.ndim > 0
    return False


def _masks_to_indices(x, index):
    """A bool mask over k dims becomes k integer index arrays (its nonzero()), as in NumPy and PyTorch.

    The result shape depends on the mask's values, so this is eager only."""

    if not any(_is_mask(i) for i in index):
        return index
    masks = [(i._concrete("boolean-mask indexing (its result shape depends on values)")
              if isinstance(i, Tensor) else np.asarray(i)) if _is_mask(i) else None for i in index]
    consumed = [0 if i is None or i is Ellipsis else (1 if m is None else m.ndim)
                for i, m in zip(index, masks)]
    out, dim = [], 0
    for i, m, n in zip(index, masks, consumed):
        if i is Ellipsis:
            dim += x.ndim - sum(consumed)
        if m is None:
            out.append(i)
            dim += n
            continue
        if m.shape != tuple(x.shape[dim:dim + m.ndim]):
            raise IndexError(f"The shape of the mask {shape_str(m.shape)} at index {dim} does not match the "
                             f"shape of the indexed tensor {shape_str(x.shape)} (at {user_location()})")
        out.extend(_from_array(np.asarray(nz, dtype=np.int64)) for nz in np.nonzero(m))
        dim += m.ndim
    return tuple(out)


def _dims_of(index):
    """For each output position (ints dropped, None kept), the source dim of y (None for inserted axes)."""
    out, dim = [], 0
    for i in index:
        if i is None:
            out.append(None)
        elif isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            dim += 1
        else:
            out.append(dim)
            dim += 1
    return out


def _advanced(y, advs):
    """Integer-array indexing at positions `advs` of y, with NumPy's placement rule."""

    idxs = []
    for _, i in advs:
        t = i if isinstance(i, Tensor) else tensor(np.asarray(i))
        if t.dtype is D.bool_:
            raise IndexError("boolean masks can only be used as the sole index")
        if t.dtype is not D.int64:
            raise IndexError(f"tensors used as indices must be long or bool, got {t.dtype.name} of shape "
                             f"{shape_str(t.shape)} (at {user_location()})")
        if t._box.device is CPU and y._box.device is not CPU:
            t = move(t, y._box.device)  # CPU indices serve a tensor on any device, as in PyTorch
        idxs.append(t)
    positions = [p for p, _ in advs]
    from .ops import broadcast_shapes

    try:
        bshape = broadcast_shapes("index", *[tuple(t.shape) for t in idxs])
    except OpError as e:
        raise IndexError(f"shape mismatch: indexing tensors could not be broadcast together: {e}") from None
    adjacent = positions == list(range(positions[0], positions[0] + len(positions)))
    # move the indexed dims to the front (or keep them at their place if adjacent)
    rest = [d for d in range(y.ndim) if d not in positions]
    at = positions[0] if adjacent else 0
    order = rest[:at] + positions + rest[at:]
    y = y.permute(order)
    sizes = [y.shape[at + k] for k in range(len(positions))]
    lin = None
    for t, size, k in zip(idxs, sizes, range(len(sizes))):
        t = t.expand(bshape) if tuple(t.shape) != bshape else t
        t = _wrap_negative(t, size)
        stride = math.prod(sizes[k + 1:])
        term = t * stride if stride != 1 else t
        lin = term if lin is None else lin + term
    merged = math.prod(sizes)
    pre, post = tuple(y.shape[:at]), tuple(y.shape[at + len(positions):])
    y = y.reshape(pre + (merged,) + post)
    return take(y, lin, at)


def _wrap_negative(t, size):

    t = check_index(t, -size, size, f"index {{value}} is out of bounds for dimension with size {size}")
    a = _concrete_or_none(t)
    if a is not None and (a.size == 0 or a.min() >= 0):
        return t
    return (t + size).where(t < 0, t)


def check_index(t, low: int, high: int, message: str, ignore: int | None = None, error: str = "index"):
    """`t` (an int64 tensor) once every value is known to be in [low, high) or equal to `ignore`.

    A concrete index is checked here. A traced one gets a `check_index` node in front of its readers, so the
    compiled program stops with the same error (ops.index_error: `message` with the first bad value and the
    user's line, of the class `error` names) before a bad index reaches a kernel or any state is written."""

    a = _concrete_or_none(t)
    if a is not None:
        bad = first_bad_index(a, low, high, ignore)
        if bad is not None:
            raise index_error(bad, error, f"{message} (at {user_location()})")
        return t
    attrs = dict(low=int(low), high=int(high)) | ({} if ignore is None else {"ignore": int(ignore)})
    return apply(OPS["check_index"], t, **attrs, error=error, message=f"{message} (at {user_location()})")


def take(y, idx, axis):
    """y[:, ..., idx, ...] along `axis` with an index tensor of any shape, via gather."""

    s = tuple(idx.shape)
    if not s:
        return take(y, idx.reshape(1), axis).squeeze(axis)
    pre, post = tuple(y.shape[:axis]), tuple(y.shape[axis + 1:])
    full_shape = pre + s + post
    yx = y.reshape(pre + (y.shape[axis],) + (1,) * (len(s) - 1) + post)
    yx = yx.expand(pre + (y.shape[axis],) + s[1:] + post)
    ix = idx.reshape((1,) * len(pre) + s + (1,) * len(post)).expand(full_shape)
    return apply(OPS["gather"], yx, ix, axis=axis)
