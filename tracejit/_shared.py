"""Storage that NumPy holds too: `SharedBox`, the Box of a tensor whose array went out through `numpy()` /
`np.asarray(t)` or came in through `from_numpy`, so that the two alias as PyTorch documents.

Tensors never write into arrays: an in-place op computes a new value and rebinds the box (what makes eager
and traced semantics equal and lets autograd keep old values without copies). A shared box keeps that
protocol but stores every new concrete value *into* the array it holds (`np.copyto`), so NumPy sees each
in-place op, compiled write-back and `.data` update of the tensor, and the tensor sees NumPy's writes.
A box becomes shared by changing its class (same layout), so every tensor that holds the box -- `.data`,
`.detach()`, a Parameter made from it -- shares with NumPy at once. While a trace runs the box holds a
Value (a raw assignment) and gets its array back afterwards; a new value of another shape or dtype replaces
the array (as PyTorch's storage is replaced) and ends the sharing.
"""

from __future__ import annotations

import numpy as np

from .dispatch import Box

_raw = Box.__dict__["value"]  # the slot descriptor: what a plain Box reads and writes


def _set_value(box, new):
    cur = _raw.__get__(box)
    if new is cur:
        return
    if isinstance(new, np.ndarray) and isinstance(cur, np.ndarray):
        if new.shape == cur.shape and new.dtype == cur.dtype and cur.flags.writeable:
            np.copyto(cur, new)  # (NumPy buffers overlapping operands)
            return
        box.__class__ = Box  # another shape or dtype: the storage is replaced, NumPy's array is not it any more
    # (a traced Value in, or the array back after the trace)
    _raw.__set__(box, new)


class SharedBox(Box):
    """A Box whose array is also held by NumPy: concrete values are written into that array."""

    __slots__ = ()
    value = property(_raw.__get__, _set_value)


# True once any box was shared in this process: from then on a compiled call's write-back (which copies into
# shared arrays) holds Ctrl-C until it is complete, so that state is never left half written (compiler/api.py)
ever = False


def share(box) -> None:
    """Make `box` (holding a concrete array) shared with NumPy from now on."""
    global ever
    if type(box) is Box:
        box.__class__ = SharedBox
        ever = True


def is_shared(box) -> bool:
    return type(box) is SharedBox
