"""Custom differentiable operations, PyTorch's way: subclass `Function`, write `forward(ctx, ...)` and
`backward(ctx, *grads)` with tensor ops, call `MyFn.apply(...)`.

A call is recorded as data, like any op: one `FunctionEntry` (the Function class, its context -- saved tensors
and the attributes `forward` set -- and where each input's gradient goes) and, per output, an `OutputEntry`
that routes that output's gradient into the call's slot. The engine collects every output's gradient, then
calls the class's `backward` -- tensor ops, so inside ``@tracejit.compile`` the user's backward is traced into
the graph like any gradient rule.

>>> class Square(tracejit.autograd.Function):
...     @staticmethod
...     def forward(ctx, x):
...         ctx.save_for_backward(x)
...         return x * x
...     @staticmethod
...     def backward(ctx, g):
...         x, = ctx.saved_tensors
...         return 2 * x * g
>>> x = tracejit.tensor([3.0], requires_grad=True)
>>> Square.apply(x).sum().backward(); x.grad
tensor([6.])
"""

from __future__ import annotations

import functools

from ..dispatch import TensorBase as Tensor
from ..dispatch import apply
from ..errors import shape_str
from ..ops import OPS, broadcast_shapes, unbroadcast
from .mode import is_grad_enabled, no_grad
from .tape import _FREED_MSG, TapeEntry

__all__ = ["Function", "FunctionCtx", "once_differentiable"]


class FunctionCtx:
    """The `ctx` a Function's forward and backward share: `save_for_backward`, `saved_tensors`,
    `needs_input_grad`, `mark_non_differentiable`, `mark_dirty`, `set_materialize_grads`, and any attribute
    forward sets (``ctx.k = k``)."""

    def __init__(self):
        self.needs_input_grad: tuple = ()
        self._saved = None
        self._saved_versions = None
        self._freed = False
        self._non_differentiable: set = set()
        self._dirty: set = set()
        self.materialize_grads = True
        self._fn_name = "Function"

    def save_for_backward(self, *tensors) -> None:
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward can only save tensors (or None), but argument "
                                f"{tensors.index(t)} is of type {type(t).__name__}")
        self._saved = tensors
        self._saved_versions = [None if t is None else t._box.version for t in tensors]

    @property
    def saved_tensors(self) -> tuple:
        if self._freed:
            raise RuntimeError(_FREED_MSG)
        if self._saved is None:
            return ()
        for i, (t, v) in enumerate(zip(self._saved, self._saved_versions)):
            if t is not None and t._box.version != v:
                raise RuntimeError(
                    f"one of the variables needed for gradient computation has been modified by an inplace "
                    f"operation: saved tensor {i} of shape {shape_str(t.shape)} of {self._fn_name}Backward is at "
                    f"version {t._box.version}; expected version {v} instead. Use out-of-place ops or .clone() "
                    f"before modifying it.")
        return tuple(self._saved)

    saved_variables = saved_tensors

    def mark_non_differentiable(self, *tensors) -> None:
        self._non_differentiable.update(id(t) for t in tensors)

    def mark_dirty(self, *tensors) -> None:
        self._dirty.update(id(t) for t in tensors)

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize_grads = bool(value)


class FunctionEntry(TapeEntry):
    """The tape entry of one `Function.apply` call: the class, its ctx, the call's arguments (for the
    gradient count and positions), each output's type, and where each tensor input's gradient goes."""

    __slots__ = ("fn", "ctx", "n_args", "tensor_positions", "out_types")

    def __init__(self, fn, ctx, args):
        self.fn, self.ctx, self.n_args = fn, ctx, len(args)
        self.op, self.attrs, self.out_box, self.out_version, self.out_type, self.versions = None, {}, None, 0, None, []
        self.tensor_positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        self.inputs = [args[i] for i in self.tensor_positions]
        self.in_types = [t._box.type for t in self.inputs]
        self.next = [(t.grad_fn if t.grad_fn is not None else t) if t.requires_grad else None for t in self.inputs]
        self.out_types: list = []
        self.freed = False

    def name(self) -> str:
        return f"{self.fn.__name__}Backward"

    def input_grads(self, grads: list) -> list:
        """Call the Function's backward with one gradient per output; one gradient per tensor input."""
        ctx, name = self.ctx, self.name()
        gs = []
        for g, t in zip(grads, self.out_types):
            if g is None and t is not None and ctx.materialize_grads:
                g = apply(OPS["full"], shape=tuple(t.shape), value=0 if t.dtype.category < 2 else 0.0,
                          dtype=t.dtype)
            gs.append(g)
        res = self.fn.backward(ctx, *gs)
        if not isinstance(res, tuple):
            res = (res,)
        if len(res) != self.n_args:
            if len(res) > self.n_args and all(r is None for r in res[self.n_args:]):
                res = res[:self.n_args]
            else:
                raise RuntimeError(f"function {name} returned an incorrect number of gradients (expected "
                                   f"{self.n_args}, got {len(res)})")
        tensor_at = set(self.tensor_positions)
        for pos, r in enumerate(res):
            if r is not None and pos not in tensor_at:
                raise RuntimeError(f"function {name} returned a gradient different than None at position "
                                   f"{pos + 1}, but the corresponding forward input was not a Variable")
        out = []
        for pos, t, nxt in zip(self.tensor_positions, self.in_types, self.next):
            g = res[pos]
            if nxt is None or g is None:
                out.append(None)
                continue
            if not isinstance(g, Tensor):
                raise TypeError(f"function {name} returned a gradient of type {type(g).__name__} at position "
                                f"{pos}; expected a Tensor or None")
            if tuple(g.shape) != tuple(t.shape):
                try:
                    ok = broadcast_shapes(name, tuple(t.shape), tuple(g.shape)) == tuple(g.shape)
                except Exception:
                    ok = False
                if not ok:
                    raise RuntimeError(f"Function {name} returned an invalid gradient at index {pos} - got "
                                       f"{list(g.shape)} but expected shape compatible with {list(t.shape)}")
                g = unbroadcast(g, tuple(t.shape))
            if g.dtype is not t.dtype:
                g = g.to(t.dtype)
            out.append(g)
        return out

    def free(self) -> None:
        self.freed = True
        self.inputs = None
        self.ctx._freed = True
        self.ctx._saved = None


class OutputEntry(TapeEntry):
    """The `grad_fn` of output `index` of a Function call: hands that output's gradient to the call."""

    __slots__ = ("call", "index")

    def __init__(self, call: FunctionEntry, index: int):
        self.call, self.index = call, index
        self.op, self.attrs, self.inputs, self.in_types, self.versions = None, {}, [], [], []
        self.out_box, self.out_version, self.out_type = None, 0, call.out_types[index]
        self.next = [call]
        self.freed = False

    def name(self) -> str:
        return self.call.name()

    @property
    def next_functions(self):
        return self.call.next_functions


class Function:
    """Base class of custom differentiable operations (see the module docstring)."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("You must implement the forward function for custom autograd.Function.")

    @staticmethod
    def setup_context(ctx, inputs, output):
        raise NotImplementedError("setup_context is not implemented.")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("You must implement either the backward or vjp method for your custom "
                                  "autograd.Function to use it with backward mode AD.")

    vjp = backward

    def __call__(self, *args, **kwargs):
        raise RuntimeError("Legacy autograd function with non-static forward method is deprecated. Please use "
                           "new-style autograd function with static forward method: MyFunction.apply(...)")

    @staticmethod
    def jvp(ctx, *grad_inputs):
        raise NotImplementedError("You must implement the jvp function for custom autograd.Function to use it "
                                  "with forward mode AD (tracejit has no forward mode).")

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = FunctionCtx()
        ctx._fn_name = cls.__name__
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        separate = cls.setup_context is not Function.setup_context  # forward(*args) + setup_context (2.x)
        with no_grad():
            if separate:
                out = cls.forward(*args, **kwargs)
                cls.setup_context(ctx, args, out)
            else:
                out = cls.forward(ctx, *args, **kwargs)
        if not (is_grad_enabled() and any(ctx.needs_input_grad)):
            return out
        single = not isinstance(out, tuple)
        outs = (out,) if single else out
        call = FunctionEntry(cls, ctx, args)
        inputs = {id(a) for a in call.inputs}
        result = []
        for o in outs:
            if isinstance(o, Tensor) and id(o) in inputs:
                if id(o) in ctx._dirty:
                    if o.requires_grad and o.grad_fn is None:
                        raise RuntimeError(f"{cls.__name__}: a leaf Variable that requires grad has been used in "
                                           f"an in-place operation (mark_dirty)")
                else:
                    o = type(o)._from_box(o._box)  # an input returned as is: a new tensor on its storage
            result.append(o)
            call.out_types.append(o._box.type if isinstance(o, Tensor) else None)
        for i, o in enumerate(result):
            if (isinstance(o, Tensor) and o.dtype.is_floating_point
                    and id(outs[i]) not in ctx._non_differentiable):
                o.requires_grad = True
                o.grad_fn = OutputEntry(call, i)
        return result[0] if single else tuple(result)


def once_differentiable(fn):
    """Decorator for a Function's backward that is not itself differentiable: it runs without recording."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with no_grad():
            return fn(ctx, *args)

    return wrapper
