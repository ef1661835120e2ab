"""The autograd engine: backward(), grad(), gradcheck. Walks tape entries (tape.py) in reverse topological
order and calls each op's gradient rule, accumulating with ordinary tensor ops (so backward traces too)."""

from __future__ import annotations

import threading

import numpy as np

from ..dispatch import TensorBase as Tensor
from ..errors import shape_str
from ..factories import ones_like, tensor
from .function import FunctionEntry, OutputEntry
from .mode import set_grad_enabled
from .tape import _FREED_MSG, GradContext, TapeEntry


class _Callbacks(threading.local):
    queue = None  # while backward() accumulates gradients on this thread: the callbacks to run after it


_callbacks = _Callbacks()


def queue_callback(fn) -> None:
    """Run `fn()` once the running backward() has accumulated every gradient into `.grad` (PyTorch's
    `Variable._execution_engine.queue_callback`); call it from a post-accumulate-grad hook. DistributedDataParallel
    reduces its gradient buckets there."""
    if _callbacks.queue is None:
        raise RuntimeError("queue_callback: no backward() is accumulating gradients on this thread")
    _callbacks.queue.append(fn)


def _accumulated(leaves) -> None:
    """After backward() stored the gradients of `leaves`: their post-accumulate-grad hooks, then the callbacks they
    queued."""
    prev, _callbacks.queue = _callbacks.queue, []
    try:
        for leaf in leaves:
            hooks = leaf.__dict__.get("_post_accumulate_grad_hooks")
            if hooks:
                for hook in list(hooks.values()):
                    hook(leaf)
        queue = _callbacks.queue
        while queue:
            queue.pop(0)()
    finally:
        _callbacks.queue = prev


def _topo_entries(roots):
    """Tape entries reachable from `roots`, in an order where each entry precedes its inputs' entries."""
    order, seen = [], set()
    for root in roots:
        if root is None or id(root) in seen:
            continue
        stack = [(root, False)]
        while stack:
            e, done = stack.pop()
            if done:
                order.append(e)
                continue
            if id(e) in seen:
                continue
            seen.add(id(e))
            if e.freed:
                raise RuntimeError(_FREED_MSG)
            stack.append((e, True))
            for n in e.next:
                if isinstance(n, TapeEntry) and id(n) not in seen:
                    stack.append((n, False))
    order.reverse()
    return order


def _run(outputs, grad_outputs, retain_graph, create_graph, capture=None):
    """The engine. Accumulates into leaves' .grad, or (capture = tensors) returns their gradients."""
    grads: dict[int, Tensor] = {}
    leaf_grads: dict[int, Tensor] = {}
    leaves: dict[int, Tensor] = {}
    roots = []
    for out, g in zip(outputs, grad_outputs):
        if out.grad_fn is not None:
            _acc(grads, id(out.grad_fn), g)
            roots.append(out.grad_fn)
        elif out.requires_grad:
            _acc(leaf_grads, id(out), g)
            leaves[id(out)] = out
        else:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn: "
                               "call .requires_grad_() on the inputs you want gradients for")
    order = _topo_entries(roots)
    capture_entries = {}
    if capture is not None:
        capture_entries = {id(t.grad_fn): t for t in capture if t.grad_fn is not None}
    with set_grad_enabled(create_graph):
        for e in order:
            g = grads.pop(id(e), None)
            if id(e) in capture_entries:
                leaf_grads[id(capture_entries[id(e)])] = g
            if g is None:
                continue
            kind = type(e)
            if kind is OutputEntry:  # one output of a Function call: its gradient goes to the call's slot
                slots = grads.setdefault(id(e.call), [None] * len(e.call.out_types))
                slots[e.index] = g if slots[e.index] is None else slots[e.index] + g
                if not retain_graph:
                    e.freed = True
                continue
            if kind is FunctionEntry:  # (after all its outputs: they precede it in the order)
                in_grads = e.input_grads(g)
            else:
                in_grads = e.op.grad(GradContext(e), g)
            for nxt, gi in zip(e.next, in_grads):
                if nxt is None or gi is None:
                    continue
                if isinstance(nxt, TapeEntry):
                    _acc(grads, id(nxt), gi)
                else:
                    _acc(leaf_grads, id(nxt), gi)
                    leaves[id(nxt)] = nxt
            if not retain_graph:
                if kind is FunctionEntry:
                    e.free()
                else:
                    e.freed = True
                    e.inputs = None
    if capture is not None:
        return [leaf_grads.get(id(t)) for t in capture]
    for key, g in leaf_grads.items():
        leaf = leaves[key]
        if g.dtype is not leaf.dtype:
            g = g.to(leaf.dtype)
        if not create_graph:
            g = g.detach()
        if leaf.grad is None:
            leaf.grad = g if create_graph else Tensor._from_box_value(g)
        elif create_graph:
            leaf.grad = leaf.grad + g
        else:
            with set_grad_enabled(False):
                leaf.grad.add_(g)
    if _hooked:
        _accumulated([leaves[key] for key in leaf_grads])
    return None


_hooked = False  # set once any tensor has a post-accumulate-grad hook: until then backward() skips the look-up


def hooks_registered() -> None:
    global _hooked
    _hooked = True


def _acc(store, key, g):
    prev = store.get(key)
    store[key] = g if prev is None else prev + g


def _default_grads(outputs, grad_outputs, who):

    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    result = []
    for out, g in zip(outputs, grad_outputs):
        if g is None:
            if out.numel() != 1:
                raise RuntimeError(
                    f"{who}: grad can be implicitly created only for scalar outputs, but the output has "
                    f"shape {shape_str(out.shape)}; pass `gradient=` a tensor of that shape")
            g = ones_like(out)
        elif not isinstance(g, Tensor):
            g = ones_like(out) * g
        if tuple(g.shape) != tuple(out.shape):
            raise RuntimeError(f"{who}: gradient has shape {shape_str(g.shape)} but the output has shape "
                               f"{shape_str(out.shape)}")
        result.append(g)
    return result


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """Accumulate d(tensors)/d(leaf) into every leaf's ``.grad`` (``tensors`` may be one tensor)."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
        grad_tensors = None if grad_tensors is None else [grad_tensors]
    retain = create_graph if retain_graph is None else retain_graph
    _run(list(tensors), _default_grads(list(tensors), grad_tensors, "backward"), retain, create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Return d(outputs)/d(inputs) without touching ``.grad``.

    >>> x = tracejit.tensor([3.0], requires_grad=True)
    >>> tracejit.autograd.grad((x * x).sum(), x)
    (tensor([6.]),)
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is not None and isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    retain = create_graph if retain_graph is None else retain_graph
    for t in inputs:
        if not t.requires_grad:
            raise RuntimeError("autograd.grad: one of the inputs does not require grad")
    res = _run(outputs, _default_grads(outputs, grad_outputs, "autograd.grad"), retain, create_graph,
               capture=inputs)
    out = []
    for t, g in zip(inputs, res):
        if g is None:
            if not allow_unused:
                raise RuntimeError("autograd.grad: one of the inputs was not used to compute the outputs; "
                                   "pass allow_unused=True to get None for it")
        elif g.dtype is not t.dtype:
            g = g.to(t.dtype)
        out.append(g)
    return tuple(out)


class GradcheckError(RuntimeError):
    pass


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True) -> bool:
    """Compare analytical gradients of `fn` with central finite differences (inputs should be float64).

    Checks the full Jacobian: one backward pass per output element, two evaluations per input element.
    """

    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    diff = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]

    def run(args):
        out = fn(*args)
        return out if isinstance(out, (tuple, list)) else (out,)

    outs = run(inputs)
    for i in diff:
        x = inputs[i]
        base = x.detach()._concrete("gradcheck").astype(np.float64)  # (host values, whatever the device)
        num_cols = []
        for k in range(base.size):
            cols = []
            for sign in (1, -1):
                pert = base.copy().reshape(-1)
                pert[k] += sign * eps
                args = list(inputs)
                # same requires_grad and grad mode as the real call: `fn` may itself differentiate
                args[i] = tensor(pert.reshape(base.shape), dtype=x.dtype, requires_grad=True, device=x._box.device)
                cols.append([o.detach()._concrete("gradcheck").astype(np.float64).reshape(-1) for o in run(args)])
            num_cols.append([(a - b) / (2 * eps) for a, b in zip(*cols)])
        for oi, o in enumerate(outs):
            if not o.dtype.is_floating_point:
                continue
            numerical = np.stack([c[oi] for c in num_cols], axis=1) if num_cols else np.zeros((o.numel(), 0))
            analytical = np.zeros_like(numerical)
            for r in range(o.numel()):
                go = np.zeros(o.numel())
                go[r] = 1.0
                g = grad([o], [x], [tensor(go.reshape(o.shape), dtype=o.dtype, device=o._box.device)],
                         retain_graph=True, allow_unused=True)[0]
                if g is not None:
                    analytical[r] = g._concrete("gradcheck").reshape(-1)
            if not np.allclose(analytical, numerical, atol=atol, rtol=rtol):
                if raise_exception:
                    err = np.abs(analytical - numerical).max()
                    raise GradcheckError(
                        f"gradcheck: Jacobian mismatch for output {oi} with respect to input {i} "
                        f"(max abs difference {err:.3g})\nnumerical:\n{numerical}\nanalytical:\n{analytical}")
                return False
    return True
