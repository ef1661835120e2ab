"""Views: what ties a view to its base, so that an in-place op on the view reaches the base as in PyTorch.

Basic indexing, narrow/split/chunk/unbind, reshape/view/flatten/squeeze/unsqueeze, permute/transpose/t and
expand return tensors with a `ViewLink` to the tensor they were taken from. Storage is never shared (in-place ops
rebind a box, see Tensor._inplace), so a view holds the value it had when it last matched its base, and:
- an in-place op on a view (``x[0].zero_()``, ``x[:, :k] *= 0``, ``w.view(-1).add_(1)``) first re-derives the view
  from its base if the base changed since (another view wrote into it, or the base itself was updated), then
  writes the result back into the base: ``base[index] = view`` (index_put), or ``base.copy_(...)`` for
  reshape/permute views -- ordinary differentiable, traceable ops;
- in-place ops on an expanded view raise (as PyTorch: several elements share one memory location), and so do
  in-place ops on a view of a leaf that requires grad (with grad mode on);
- a ``.detach()`` / ``.data`` of a view writes into the base without autograd (PyTorch's detached alias).
What differs from PyTorch: *reading* a view after its base changed gives the old value; take the view again.
"""

from __future__ import annotations

import numpy as np

from .autograd.mode import is_grad_enabled, set_grad_enabled
from .errors import shape_str, user_location
from .indexing import index_put


class ViewLink:
    """What makes a tensor a view of `base`: how it was taken (`kind`: "index" -- basic indexing or narrow, `data`
    the index --, "reshape", "permute" -- `data` the dims --, "expand"), whether it is a detached alias
    (``.detach()``/``.data`` of a view: writes reach the base without autograd), and the versions of base and
    view when they last matched."""

    __slots__ = ("base", "kind", "data", "is_detached", "base_version", "own_version")

    def __init__(self, base, kind, data, detached, view):
        self.base, self.kind, self.data, self.is_detached = base, kind, data, detached
        self.synced(view)

    def synced(self, view):
        self.base_version, self.own_version = self.base._box.version, view._box.version

    def in_sync(self, view) -> bool:
        return self.base._box.version == self.base_version and view._box.version == self.own_version

    def detached(self):
        link = object.__new__(ViewLink)
        for k in ViewLink.__slots__:
            setattr(link, k, getattr(self, k))
        link.is_detached = True
        return link


def derive(base, kind, data, shape):
    """The view `kind`/`data` of `base` (of shape `shape`), computed afresh."""
    if kind == "index":
        return base[data]
    if kind == "reshape":
        return base.reshape(shape)
    if kind == "permute":
        return base.permute(data)
    return base.expand(shape)


def check_view_inplace(view, name, grad_on):
    """PyTorch's refusals of an in-place op on a view: expanded views, views of a leaf that requires grad."""
    t, detached = view, False
    while t._view is not None:
        link = t._view
        if link.kind == "expand" and not link.is_detached:
            raise RuntimeError(f"{name}: unsupported operation: more than one element of the written-to tensor "
                               f"refers to a single memory location (an expanded tensor, shape "
                               f"{shape_str(t.shape)}). Please clone() the tensor before performing the "
                               f"operation (at {user_location()})")
        detached = detached or link.is_detached
        t = link.base
    if grad_on and not detached and t.requires_grad and t.is_leaf:
        raise RuntimeError(f"{name}: a view of a leaf Variable that requires grad is being used in an in-place "
                           f"operation (base shape {shape_str(t.shape)}); wrap it in tracejit.no_grad() or use "
                           f".data (at {user_location()})")


def refresh_view(view):
    """Re-derive `view` from its base if the base was written since (by another view, or itself)."""
    link = view._view
    base = link.base
    if base._view is not None:
        refresh_view(base)
    if base._box.version == link.base_version:
        return
    src = base.detach() if link.is_detached else base
    with set_grad_enabled(not link.is_detached and is_grad_enabled()):
        fresh = derive(src, link.kind, link.data, tuple(view.shape))
    from .dispatch import current_tracer

    if (tracer := current_tracer()) is not None:
        tracer.before_mutation(view)
    view._box.value = fresh._box.value
    view._box.version += 1
    if not link.is_detached and not (view.requires_grad and view.is_leaf):  # (a leaf stays one)
        view.requires_grad, view.grad_fn = fresh.requires_grad, fresh.grad_fn
    link.synced(view)


def write_through(view, grad_on):
    """Write `view`'s new value into its base (after an in-place op on the view)."""
    link = view._view
    target = link.base.detach() if link.is_detached else link.base
    with set_grad_enabled(grad_on and not link.is_detached):
        if link.kind == "index":
            target._inplace(lambda s: index_put(s, link.data, view), "setitem")
        elif link.kind == "reshape":
            target.copy_(view.reshape(tuple(target.shape)))
        elif link.kind == "permute":
            target.copy_(view.permute(tuple(np.argsort(link.data).tolist())))
    link.synced(view)
