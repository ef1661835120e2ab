"""`tensor[index]`: ints, slices, None, Ellipsis, integer tensors/lists and (eager only) bool masks.

Basic indexing lowers to one `slice` plus a `reshape`; integer-tensor indexing lowers to `gather`.
"""

from __future__ import annotations

import math

import numpy as np

from . import dtypes as D
from .devices import CPU
from .dispatch import TensorBase as Tensor
from .dispatch import _concrete_or_none, _from_array, _py, apply, move
from .errors import OpError, shape_str, user_location
from .factories import tensor
from .ops import OPS, first_bad_index, index_error


def _is_adv(i):

    return isinstance(i, (Tensor, list, np.ndarray))


def _as_tuple(index):
    """The index as a tuple, a `range` in it as the list of its ints (as PyTorch: ``x[range(n), y]``)."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(isinstance(i, range) for i in index):
        index = tuple(list(i) if isinstance(i, range) else i for i in index)
    return index


def getitem(x, index):

    index = _as_tuple(index)
    index = _masks_to_indices(x, index)
    index = _expand_ellipsis(x, index)
    starts, stops, steps, out_shape, adv = _plan(x, index)
    y = x
    if (tuple(starts), tuple(stops), tuple(steps)) != ((0,) * x.ndim, tuple(x.shape), (1,) * x.ndim):
        y = apply(OPS["slice"], x, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    if not adv:
        out = y.reshape(tuple(out_shape))
        if out is not x:  # basic indexing makes a view: an in-place op on it writes into x (Tensor._inplace)
            out._as_view_of(x, "index", index)
        return out
    # keep only the advanced dims and the real (non-int) dims of y, in order
    keep_shape = [s if s is not None else y.shape[d] for s, d in zip(out_shape, _dims_of(index))]
    y = y.reshape(tuple(keep_shape))
    return _advanced(y, [(pos, idx) for _, pos, idx in adv])


def _expand_ellipsis(x, index):
    """`index` with its Ellipsis (or the missing trailing dims) spelled out as full slices."""
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if n_real > x.ndim:
        raise IndexError(f"too many indices for tensor of dimension {x.ndim} (shape {shape_str(x.shape)}) "
                         f"at {user_location()}")
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        return index[:k] + (slice(None),) * (x.ndim - n_real) + index[k + 1:]
    return index + (slice(None),) * (x.ndim - n_real)


def _plan(x, index):
    """Per dim of x: the slice that basic indexing takes; the output shape (None at advanced positions); the
    advanced indices as (dim, output position, index)."""
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
    return starts, stops, steps, out_shape, adv


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


# ----------------------------------------------------------------------------------------------- x[index] = v
# Item assignment is functional, like every in-place op (Tensor._inplace): `index_put` computes the whole new
# value -- x where the index does not reach, the value where it does -- and `x[index] = v` rebinds x to it.
# Eager and traced runs compute the same thing, and autograd sees ordinary ops (where, pad, gather,
# scatter_add): the gradient of x is g where not written, the value's is g gathered at the written places.


def index_put(x, index, value):
    """The tensor `x` would be after ``x[index] = value`` (x itself is left alone)."""
    index = _as_tuple(index)
    value = _put_value(x, value, strict=any(_is_adv(i) for i in index))
    out = _mask_put(x, index, value)
    if out is not None:
        return out
    index = _expand_ellipsis(x, _masks_to_indices(x, index))
    starts, stops, steps, out_shape, adv = _plan(x, index)
    if not adv:
        return _basic_put(x, starts, stops, steps, tuple(out_shape), value)
    return _advanced_put(x, index, value)


def _put_value(x, value, strict):
    v = _put_value_here(x, value, strict)
    if v._box.device is not x._box.device:  # (a number, or a CPU tensor written into a tensor elsewhere)
        v = move(v, x._box.device)
    return v


def _put_value_here(x, value, strict):
    if isinstance(value, Tensor):
        if value.dtype is not x.dtype:
            if strict:  # (PyTorch's index_put_ does not convert a tensor; basic indexing copies, converting)
                raise RuntimeError(f"Index put requires the source and destination dtypes match, got "
                                   f"{x.dtype.name} for the destination and {value.dtype.name} for the source "
                                   f"(at {user_location()})")
            value = value.to(x.dtype)
        return value
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return apply(OPS["full"], shape=(), value=_py(value, x.dtype), dtype=x.dtype)
    if isinstance(value, (list, tuple, np.ndarray)):
        return tensor(value, dtype=x.dtype, device=x._box.device)
    raise TypeError(f"can't assign a {type(value).__name__} to a tracejit tensor (at {user_location()})")


def constant_like(x, arr):
    """The NumPy array `arr` as a constant tensor on `x`'s device (a graph constant while tracing)."""
    t = _from_array(arr)
    return t if x._box.device is CPU else move(t, x._box.device)


def _strip_ones(v):
    """`v` without leading size-1 dims (PyTorch's rule before broadcasting an assigned value)."""
    k = 0
    while k < v.ndim and v.shape[k] == 1:
        k += 1
    return v.reshape(tuple(v.shape[k:])) if k else v


def _mask_put(x, index, value):
    """``x[mask] = v`` with one bool mask over leading dims and a value that does not depend on how many
    elements the mask selects: a `where`, which needs no mask values (so it traces). None otherwise."""
    rest = [i for i in index[1:] if not (i is Ellipsis or (isinstance(i, slice) and i == slice(None)))]
    n_ellipsis = sum(i is Ellipsis for i in index)
    if rest or not _is_mask(index[0]) or n_ellipsis > 1:
        return None
    m = index[0] if isinstance(index[0], Tensor) else constant_like(x, np.asarray(index[0]))
    if m.ndim == 0 or m.ndim + len(index) - 1 - n_ellipsis > x.ndim:
        return None
    if tuple(m.shape) != tuple(x.shape[:m.ndim]):
        raise IndexError(f"The shape of the mask {shape_str(m.shape)} at index 0 does not match the shape of "
                         f"the indexed tensor {shape_str(x.shape)} (at {user_location()})")
    v = _strip_ones(value)
    trailing = tuple(x.shape[m.ndim:])
    if v.ndim > len(trailing) or any(a != b and a != 1 for a, b in zip(v.shape[::-1], trailing[::-1])):
        return None  # one value per selected element (or a shape error): the general path
    cond = m.reshape(tuple(m.shape) + (1,) * len(trailing))
    return v.where(cond, x)


def _expand_value(v, target):
    """`v` broadcast to `target` by PyTorch's copy_ rule (leading ones dropped), with its errors."""
    v = _strip_ones(v)
    if v.ndim > len(target):
        raise RuntimeError(f"expand({v.dtype.name}{shape_str(v.shape)}, size={list(target)}): the number of "
                           f"sizes provided ({len(target)}) must be greater or equal to the number of dimensions "
                           f"in the tensor ({v.ndim}) (at {user_location()})")
    for i, (a, b) in enumerate(zip(v.shape[::-1], target[::-1])):
        if a != b and a != 1:
            d = len(target) - 1 - i
            raise RuntimeError(f"The expanded size of the tensor ({b}) must match the existing size ({a}) at "
                               f"non-singleton dimension {d}.  Target sizes: {list(target)}.  Tensor sizes: "
                               f"{list(v.shape)} (at {user_location()})")
    return v.expand(target) if tuple(v.shape) != tuple(target) else v


def _basic_put(x, starts, stops, steps, target, value):
    v = _expand_value(value, target)
    region = tuple(len(range(a, b, s)) for a, b, s in zip(starts, stops, steps))
    if math.prod(region) == 0:
        return x
    v = v.reshape(region)  # (int dims and None dims are the size-1 dims either side)
    where_ = tuple(slice(a, b, s) for a, b, s in zip(starts, stops, steps))
    mask = np.zeros(tuple(x.shape), dtype=bool)
    mask[where_] = True
    if all(s == 1 for s in steps):  # a box: pad the value out to x's shape
        full = v.pad(tuple((a, n - b) for a, b, n in zip(starts, stops, x.shape)))
    else:  # strided: every position of x fetches its value (or any one, where masked off)
        positions = np.arange(x.numel(), dtype=np.int64).reshape(tuple(x.shape))[where_].reshape(-1)
        inv = np.zeros(x.numel(), dtype=np.int64)
        inv[positions] = np.arange(positions.size, dtype=np.int64)
        full = take(v.reshape(-1), constant_like(x, inv), 0).reshape(tuple(x.shape))
    return full.where(constant_like(x, mask), x)


def _advanced_put(x, index, value):
    n = x.numel()
    # the flat position in x of every element x[index] reads: indexing an arange applies every rule once
    lin = getitem(constant_like(x, np.arange(n, dtype=np.int64).reshape(tuple(x.shape))), index)
    target = tuple(lin.shape)
    v = _strip_ones(value)
    try:
        from .ops import broadcast_shapes

        if broadcast_shapes("index_put", tuple(v.shape), target) != target:
            raise OpError("")
    except OpError:
        raise RuntimeError(f"shape mismatch: value tensor of shape {shape_str(value.shape)} cannot be broadcast "
                           f"to indexing result of shape {shape_str(target)} (at {user_location()})") from None
    if math.prod(target) == 0:
        return x
    vals = (v.expand(target) if tuple(v.shape) != target else v).reshape(-1)
    pos = lin.reshape(-1)
    known = _concrete_or_none(pos)
    if known is not None and np.unique(known).size == known.size:  # distinct places: a gather, as above
        inv = np.zeros(n, dtype=np.int64)
        inv[known] = np.arange(known.size, dtype=np.int64)
        mask = np.zeros(n, dtype=bool)
        mask[known] = True
        full = take(vals, constant_like(x, inv), 0)
        return full.where(constant_like(x, mask), x.reshape(-1)).reshape(tuple(x.shape))
    # places that may repeat: PyTorch leaves the result undefined; here each place gets the mean of the values
    # written to it (exactly the value where it is written once), in eager and compiled runs alike
    fv = vals if x.dtype.is_floating_point else vals.to(D.float64)
    sums = apply(OPS["scatter_add"], pos, fv, axis=0, shape=(n,))
    count = apply(OPS["scatter_add"], pos, apply(OPS["full"], shape=(pos.shape[0],), value=1.0, dtype=fv.dtype),
                  axis=0, shape=(n,))
    hit = count > 0
    mean = (sums / count.where(hit, 1.0)).to(x.dtype)
    return mean.where(hit, x.reshape(-1)).reshape(tuple(x.shape))
