"""Collation: merging samples into batches, as ``torch.utils.data.default_collate``/``default_convert``."""

from __future__ import annotations

import collections.abc as cabc
import copy
from typing import Any

import numpy as np

from ... import dtypes as D
from ..._tensor import Tensor, stack
from ...dispatch import _concrete_or_none, _from_array
from ...factories import tensor

__all__ = ["default_collate", "default_convert"]


def _stack(batch: list[Tensor]) -> Tensor:
    arrays = [_concrete_or_none(t) for t in batch]
    if any(a is None for a in arrays) or any(t.requires_grad for t in batch):
        return stack(batch)  # traced or differentiable samples go through the op (and the tape)
    first = batch[0].shape
    for t in batch:
        if t.shape != first or t.dtype is not batch[0].dtype:
            raise RuntimeError(f"stack expects each tensor to be equal size and dtype, but got "
                               f"{tuple(first)} ({batch[0].dtype.name}) and {tuple(t.shape)} "
                               f"({t.dtype.name}) in one batch")
    # one NumPy copy instead of one dispatched op per sample: same values, much less overhead
    return _from_array(np.stack(arrays))


def default_collate(batch: list[Any]) -> Any:
    """Merge a list of samples into a batch, as ``torch.utils.data.default_collate``.

    Tensors and NumPy arrays are stacked; floats become a float64 tensor, ints an int64 tensor;
    strings stay a list; dicts, named tuples, tuples and lists are collated field by field (tuples
    come back as lists, as in PyTorch).
    """
    elem = batch[0]
    if isinstance(elem, Tensor):
        return _stack(batch)
    if isinstance(elem, np.ndarray):
        if elem.dtype.kind in "SaUO":
            raise TypeError(f"default_collate: cannot batch NumPy arrays of dtype {elem.dtype}")
        return _from_array(np.stack(batch))
    if isinstance(elem, np.generic):
        return _from_array(np.array(batch))
    if isinstance(elem, bool):
        return tensor(batch, dtype=D.bool_)
    if isinstance(elem, float):
        return tensor(batch, dtype=D.float64)
    if isinstance(elem, int):
        return tensor(batch, dtype=D.int64)
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, cabc.Mapping):
        collated = {k: default_collate([d[k] for d in batch]) for k in elem}
        try:  # as PyTorch: a copy of the first sample's mapping (its type and attributes), updated
            clone = copy.copy(elem)
            clone.update(collated)
            return clone
        except (TypeError, AttributeError):  # immutable mappings
            return collated
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(default_collate(list(s)) for s in zip(*batch)))
    if isinstance(elem, cabc.Sequence):
        if any(len(e) != len(elem) for e in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        columns = [default_collate(list(s)) for s in zip(*batch)]
        if isinstance(elem, tuple):
            return columns
        try:
            out = copy.copy(elem)
            out[:] = columns
            return out
        except TypeError:
            return columns
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; "
                    f"found {type(elem).__name__}")


def default_convert(data: Any) -> Any:
    """Turn NumPy arrays (also inside dicts, tuples and lists) into tensors; leave the rest alone."""
    if isinstance(data, np.ndarray) and data.dtype.kind not in "SaUO":
        return _from_array(np.array(data))
    if isinstance(data, cabc.Mapping):
        return type(data)({k: default_convert(v) for k, v in data.items()})
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, tuple):
        return [default_convert(d) for d in data]
    if isinstance(data, list):
        return [default_convert(d) for d in data]
    return data
