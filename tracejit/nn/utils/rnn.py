"""torch.nn.utils.rnn: PackedSequence, pack_padded_sequence, pad_packed_sequence, pad_sequence, pack_sequence.

A PackedSequence holds the time steps of a batch of sequences sorted by decreasing length: `data` is
[sum(lengths), *] (step after step, the sequences still running at that step), `batch_sizes` how many run at
each step. Lengths are Python-side values (as PyTorch keeps them on the CPU), so packing and unpacking are
gathers with index maps fixed when the code runs or is traced.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..._tensor import Tensor, cat, stack
from ...dispatch import _concrete_or_none
from ...errors import TraceError, user_location
from ...factories import full, tensor

__all__ = ["PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence", "pack_sequence"]


class PackedSequence(namedtuple("PackedSequence", ["data", "batch_sizes", "sorted_indices", "unsorted_indices"])):
    """(data, batch_sizes, sorted_indices, unsorted_indices), as PyTorch's; made by pack_padded_sequence."""

    def __new__(cls, data, batch_sizes=None, sorted_indices=None, unsorted_indices=None):
        if unsorted_indices is None and sorted_indices is not None:
            unsorted_indices = tensor(np.argsort(_ints(sorted_indices, "sorted_indices")))
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    def to(self, *args, **kwargs) -> PackedSequence:
        return self._replace(data=self.data.to(*args, **kwargs))

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda

    def lengths(self) -> np.ndarray:
        """Each sequence's length, in the original (unsorted) batch order."""
        bs = _ints(self.batch_sizes, "batch_sizes")
        n = int(bs[0]) if bs.size else 0
        sorted_lengths = np.array([(bs > b).sum() for b in range(n)], dtype=np.int64)
        if self.unsorted_indices is None:
            return sorted_lengths
        return sorted_lengths[_ints(self.unsorted_indices, "unsorted_indices")]


def _ints(t, what: str) -> np.ndarray:
    if isinstance(t, Tensor):
        values = _concrete_or_none(t)
        if values is None:
            raise TraceError(f"{what}: sequence lengths must be known when the code runs (keep them outside the "
                             f"compiled function or pass them as Python ints) (at {user_location()})")
        return np.asarray(values, dtype=np.int64).reshape(-1)
    return np.asarray(list(t) if not isinstance(t, np.ndarray) else t, dtype=np.int64).reshape(-1)


def _packed_rows(lengths: np.ndarray, order: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the time-major [T * batch] padded tensor that `data` holds in order, batch_sizes)."""
    sorted_lengths = lengths[order]
    steps = int(sorted_lengths[0]) if sorted_lengths.size else 0
    batch_sizes = np.array([(sorted_lengths > t).sum() for t in range(steps)], dtype=np.int64)
    rows = np.concatenate([t * batch + order[:bs] for t, bs in enumerate(batch_sizes)]) if steps else \
        np.zeros(0, np.int64)
    return rows.astype(np.int64), batch_sizes


def pack_padded_sequence(input: Tensor, lengths, batch_first: bool = False, enforce_sorted: bool = True
                         ) -> PackedSequence:
    """Pack a padded [T, B, *] ([B, T, *] with batch_first) batch whose sequences have `lengths`."""
    lengths = _ints(lengths, "pack_padded_sequence")
    if enforce_sorted:
        if np.any(np.diff(lengths) > 0):
            raise RuntimeError("`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. "
                               "You can pass `enforce_sorted=False` to pack_padded_sequence and/or pack_sequence to "
                               "sidestep this requirement if you do not need ONNX exportability.")
        order, sorted_indices = np.arange(lengths.size), None
    else:
        order = np.argsort(-lengths, kind="stable")
        sorted_indices = tensor(order.astype(np.int64))
    if lengths.size and lengths.min() <= 0:
        raise RuntimeError("Length of all samples has to be greater than 0, but found an element in 'lengths' "
                           "that is <= 0")
    x = input.transpose(0, 1) if batch_first else input
    steps, batch = x.shape[0], x.shape[1]
    if lengths.size != batch:
        raise RuntimeError(f"Expected `len(lengths)` to be equal to batch_size, but got {lengths.size} (batch_size="
                           f"{batch})")
    if lengths.size and lengths.max() > steps:
        raise RuntimeError(f"pack_padded_sequence: a length of {lengths.max()} is longer than the {steps} padded "
                           f"steps")
    rows, batch_sizes = _packed_rows(lengths, order, batch)
    flat = x.reshape((steps * batch,) + tuple(x.shape[2:]))
    data = flat if rows.size == flat.shape[0] and np.array_equal(rows, np.arange(rows.size)) else \
        flat.index_select(0, tensor(rows))
    unsorted = None if sorted_indices is None else tensor(np.argsort(order).astype(np.int64))
    return PackedSequence(data, tensor(batch_sizes), sorted_indices, unsorted)


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False, padding_value: float = 0.0,
                        total_length: int | None = None) -> tuple[Tensor, Tensor]:
    """(padded [T, B, *] or [B, T, *], lengths) from a PackedSequence, in the original batch order."""
    data, batch_sizes, sorted_indices, _ = sequence
    bs = _ints(batch_sizes, "batch_sizes")
    batch = int(bs[0]) if bs.size else 0
    order = np.arange(batch) if sorted_indices is None else _ints(sorted_indices, "sorted_indices")
    lengths = np.zeros(batch, np.int64)
    lengths[order] = [(bs > b).sum() for b in range(batch)]
    steps = bs.size
    if total_length is not None:
        if total_length < steps:
            raise ValueError(f"Expected total_length to be at least the length of the longest sequence in input, but "
                             f"got total_length={total_length} and max sequence length being {steps}")
        steps = total_length
    rows, _ = _packed_rows(lengths, order, batch)
    where_row = np.full(steps * batch, rows.size, np.int64)  # padding positions read the extra row
    where_row[rows] = np.arange(rows.size)
    if rows.size == steps * batch and np.array_equal(where_row, np.arange(rows.size)):
        flat = data
    else:
        pad_row = full((1,) + tuple(data.shape[1:]), padding_value, dtype=data.dtype, device=data.device)
        flat = cat([data, pad_row]).index_select(0, tensor(where_row))
    out = flat.reshape((steps, batch) + tuple(data.shape[1:]))
    return (out.transpose(0, 1) if batch_first else out), tensor(lengths)


def pad_sequence(sequences, batch_first: bool = False, padding_value: float = 0.0, padding_side: str = "right"
                 ) -> Tensor:
    """Stack sequences [L_i, *] of different lengths into [T, B, *] ([B, T, *] with batch_first), padded."""
    sequences = list(sequences)
    if padding_side not in ("left", "right"):
        raise ValueError(f"Expected padding_side to be one of left or right, but got {padding_side}.")
    longest = max(s.shape[0] for s in sequences)
    padded = []
    for s in sequences:
        extra = longest - s.shape[0]
        pads = ((0, extra) if padding_side == "right" else (extra, 0),) + ((0, 0),) * (s.ndim - 1)
        padded.append(s.pad(pads, float(padding_value) if s.dtype.is_floating_point else padding_value)
                      if extra else s)
    return stack(padded, 0 if batch_first else 1)


def pack_sequence(sequences, enforce_sorted: bool = True) -> PackedSequence:
    """pack_padded_sequence(pad_sequence(sequences), lengths)."""
    sequences = list(sequences)
    lengths = [s.shape[0] for s in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)
