"""The Tensor API: `tracejit.Tensor` (arithmetic, comparisons, views, reductions, in-place ops, autograd
entry points) and the tensor functions its methods share (where, matmul, cat, stack). Every op goes through
`dispatch.apply`; tensors are made by dispatch and factories.py.
"""

from __future__ import annotations

import math
import warnings
from collections import namedtuple

import numpy as np

from . import autograd, linalg
from . import dispatch as _dispatch
from . import dtypes as D
from ._more import MoreMethods
from ._printing import tensor_repr
from ._shared import SharedBox, share
from ._views import ViewLink, check_view_inplace, refresh_view, write_through
from .autograd.mode import _mode as _grad_mode
from .autograd.mode import _off as _grad_off
from .devices import CPU, storage_device
from .devices import device as _device_cls
from .devices import to_host as _to_host
from .dispatch import Box, TensorBase, _concrete_values, _ctx, _py, _rebind, _sizes, _tracing, apply, move
from .dtypes import TensorType
from .errors import OpError, OpTypeError, TraceError, shape_str, user_location
from .factories import full, ones_like, size_arg, tensor
from .indexing import _expand_ellipsis, check_index, constant_like, getitem, index_put
from .ops import OPS, broadcast_shapes, check_same_dtype, index_message


def _scalar(value, dtype):
    value = _py(value, dtype)
    if dtype is D.uint8:
        value &= 0xFF  # a Python int operand wraps into uint8, as in PyTorch (uint8 tensor + 300 adds 44)
    return apply(OPS["full"], shape=(), value=value, dtype=dtype)


def _as_operand(x, dtype):
    if isinstance(x, Tensor):
        return x if x.dtype is dtype else x.to(dtype)
    if isinstance(x, (int, float, bool, np.number, np.bool_)):
        return _scalar(x, dtype)
    raise OpTypeError(f"expected a Tensor or a number, got {type(x).__name__} (at {user_location()})")


def _binary(name, a, b, float_result=False, dtype=None):
    dt = dtype or D.result_type(a, b)
    if float_result and not dt.is_floating_point:
        dt = D.default_float
    return apply(OPS[name], _as_operand(a, dt), _as_operand(b, dt))


_ROUNDING = {"floor": "floor_divide", "trunc": "trunc_divide"}


def _rounded_div(mode, a, b):
    """a / b rounded as `mode` ("floor": a // b, "trunc": toward zero) in their promoted dtype (PyTorch's: int64 for
    integers, float for a float operand). An integer division by zero raises PyTorch's
    RuntimeError("ZeroDivisionError"), eagerly and from a compiled step (`_check_divisor`)."""
    op = _ROUNDING.get(mode)
    if op is None:
        raise RuntimeError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found {mode!r}")
    dt = D.result_type(a, b)
    x, y = _as_operand(a, dt), _as_operand(b, dt)
    _check_divisor(op, dt, y)
    return apply(OPS[op], x, y)


def _modulo(op, a, b):
    """remainder (Python's / PyTorch's %, the divisor's sign) or fmod (C's, the dividend's) in the promoted dtype;
    an integer zero divisor raises RuntimeError("ZeroDivisionError"), as PyTorch."""
    dt = D.result_type(a, b)
    x, y = _as_operand(a, dt), _as_operand(b, dt)
    _check_divisor(op, dt, y)
    return apply(OPS[op], x, y)


def _check_divisor(op, dt, y):
    """Raise RuntimeError("ZeroDivisionError ...") where an integer divisor `y` holds a zero: now for a known
    divisor; for a traced one through a check_index node on the flags `y == 0`, which stops the compiled step
    with the same error before any state is written (its kernels give 0 for x // 0 and must not be trusted)."""
    if dt.is_floating_point or dt is D.bool_:
        return
    message = f"ZeroDivisionError: integer {op} by zero"
    if not isinstance(y, Tensor):
        if y == 0:
            raise OpError(f"{message} (at {user_location()})")
        return
    if _dispatch.current_tracer() is None:
        if (y == 0).any().item():
            raise OpError(f"{message} (at {user_location()})")
        return
    check_index((y == 0).to(D.int64), 0, 1, message, error="zerodiv")  # (adds the user's line)


def _norm_dim(d, ndim):
    n = max(ndim, 1)
    if not -n <= d < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d}) "
                         f"(at {user_location()})")
    return d % n


def _dims(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, int):
        dim = (dim,)
    axes = tuple(sorted({_norm_dim(d, ndim) for d in dim}))
    return axes if ndim else ()  # a 0-d tensor accepts dim 0 / -1, as in PyTorch, and has no axis to reduce


MinMax = namedtuple("MinMax", ["values", "indices"])

# ----------------------------------------------------------------------------------------------- Tensor

# ----------------------------------------------------------------------------------------------- Tensor


class _HookHandle:
    """What registering a hook returns: `remove()` unregisters it."""

    _next = 0

    def __init__(self, hooks: dict):
        _HookHandle._next += 1
        self.id = _HookHandle._next
        self._hooks = hooks

    def remove(self) -> None:
        self._hooks.pop(self.id, None)


class Tensor(TensorBase, MoreMethods):
    """An n-dimensional array with autograd, PyTorch-style.

    >>> x = tracejit.tensor([[1.0, 2.0]], requires_grad=True)
    >>> (x * x).sum().backward(); x.grad
    tensor([[2., 4.]])
    """

    __array_priority__ = 1000  # numpy scalars defer to Tensor operators
    _view = None  # a ViewLink on views (basic indexing, reshape, permute, ...): see _inplace

    def __init__(self, *args, **kwargs):
        raise TypeError("create tensors with tracejit.tensor(data), tracejit.zeros(...), ... ")

    # ---- metadata
    @property
    def _type(self) -> TensorType:
        return self._box.type

    @property
    def shape(self):
        return Size(self._box.type.shape)

    def size(self, dim=None):
        s = self._box.type.shape
        return Size(s) if dim is None else s[_norm_dim(dim, len(s))]

    @property
    def dtype(self) -> D.DType:
        return self._box.type.dtype

    @property
    def ndim(self) -> int:
        return len(self._box.type.shape)

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return math.prod(self._box.type.shape)

    nelement = numel

    @property
    def device(self):
        """The device the storage lives on: ``device(type='cpu')``, ``device(type='cuda', index=0)``, ..."""
        return self._box.device

    @property
    def is_cuda(self) -> bool:
        return self._box.device.type == "cuda"

    @property
    def is_cpu(self) -> bool:
        return self._box.device is CPU

    @property
    def is_meta(self) -> bool:
        return False

    def get_device(self) -> int:
        """The device index (-1 on the CPU), as PyTorch."""
        d = self._box.device
        return -1 if d is CPU else d.index

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def element_size(self) -> int:
        return self.dtype.itemsize

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __len__(self):
        if not self.ndim:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __hash__(self):
        return id(self)

    # ---- grad and data
    @property
    def grad(self):
        if _tracing and (tracer := _ctx.tracer) is not None:
            tracer.on_grad_get(self)
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None and tuple(value.shape) != tuple(self.shape):
            raise RuntimeError(f"assigned grad has shape {shape_str(value.shape)} but the tensor has shape "
                               f"{shape_str(self.shape)}")
        if _tracing and (tracer := _ctx.tracer) is not None:
            tracer.on_grad_set(self, value)
        self._grad = value

    @property
    def data(self):
        return self.detach()

    @data.setter
    def data(self, other):
        box = self._box
        if other._box is box:  # `w.data -= x` assigns back the tensor it updated in place
            return
        if _tracing and (tracer := _ctx.tracer) is not None:
            tracer.before_mutation(self)
        # PyTorch swaps the storage: an array NumPy holds through the old one is no longer this tensor's
        if type(box) is SharedBox:
            box.__class__ = Box
        _rebind(box, other._box.value, other._box.type, other._box.device)
        if type(other._box) is SharedBox:
            share(box)  # ... while NumPy's view of the new storage now is
        self._view = None  # (and a view given new storage no longer views its base)

    def detach(self):
        t = Tensor._from_box(self._box)
        if self._view is not None:
            t._view = self._view.detached()  # an in-place op on it still writes into the base, untracked
        return t

    def detach_(self):
        self.grad_fn = None
        self.requires_grad = False
        return self

    def requires_grad_(self, requires_grad=True):
        if not self.is_leaf and not requires_grad:
            raise RuntimeError("you can only change requires_grad flags of leaf variables")
        if requires_grad and not self.dtype.is_floating_point:
            raise RuntimeError(f"only Tensors of floating point dtype can require gradients, not "
                               f"{self.dtype.name}")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self):
        return None

    def register_post_accumulate_grad_hook(self, hook):
        """Call `hook(self)` each time backward() has accumulated a gradient into this leaf's `.grad`; returns a
        handle whose `remove()` unregisters it (as in PyTorch)."""
        if not self.is_leaf:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
        hooks = self.__dict__.setdefault("_post_accumulate_grad_hooks", {})
        handle = _HookHandle(hooks)
        hooks[handle.id] = hook
        autograd.engine.hooks_registered()
        return handle

    def backward(self, gradient=None, retain_graph=None, create_graph=False):
        autograd.backward(self, gradient, retain_graph, create_graph)

    # ---- values out (not traceable)
    def _concrete(self, what):
        """The tensor's values as a NumPy array (its own array on the CPU; a host copy, through the device's
        backend, elsewhere). TraceError while tracing."""
        here = _tracing and _ctx.tracer is not None
        value = self._box.value
        if not here and not isinstance(value, np.ndarray):
            value = _concrete_values(what, lambda: [self._box.value])[0]  # (another thread's trace?)
            if self._box.device is not CPU:
                return _to_host(value, self._box.device)
        if here or not isinstance(value, np.ndarray):
            raise TraceError(f"{what} needs the tensor's value, which is not known while tracing "
                             f"(at {user_location()}); keep it outside the compiled function, return the "
                             f"tensor instead, or use fallback='eager'")
        return value

    def _host_only(self):
        if self._box.device is not CPU:
            raise TypeError(f"can't convert {self._box.device} device type tensor to numpy. Use Tensor.cpu() to "
                            f"copy the tensor to host memory first.")

    def numpy(self, *, force=False):
        """The tensor's array, sharing memory with it as in PyTorch: in-place ops on the tensor write into the
        array, and writes into the array show in the tensor (see _shared.py)."""
        self._host_only()
        if self.requires_grad and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                               "instead.")
        return self._shared_array("numpy()")

    def _shared_array(self, what):
        a = self._concrete(what)
        box = self._box
        if type(box) is Box:
            if not a.flags.writeable:  # a broadcast (expand) view: NumPy gets a writable copy, shared from now on
                a = a.copy()
                box.value = a
            share(box)
        return a

    def __array__(self, dtype=None, copy=None):
        # np.asarray(t) shares memory, as t.numpy() (PyTorch's __array__ is numpy())
        self._host_only()
        if copy:
            a = self._concrete("numpy conversion")
            return a.astype(dtype) if dtype is not None else a.copy()
        a = self._shared_array("numpy conversion")
        return a if dtype is None else a.astype(dtype, copy=False)

    def item(self):
        a = self._concrete("item()")
        if a.size != 1:
            raise RuntimeError(f"a Tensor with {a.size} elements cannot be converted to Scalar "
                               f"(item() of shape {shape_str(a.shape)})")
        return a.reshape(()).item()

    def _scalar_value(self):
        if self.numel() != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return self.item()

    def tolist(self):
        return self._concrete("tolist()").tolist()

    def __bool__(self):
        a = self._concrete("bool(tensor) (Python control flow on a tensor value)")
        if a.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with {a.size} elements is ambiguous")
        return bool(a.reshape(()))

    def __float__(self):
        return float(self._scalar_value())

    def __int__(self):
        return int(self._scalar_value())

    def __format__(self, spec):
        # as PyTorch: a 0-d tensor formats as its Python number ('{:+.2f}'.format(loss), f"{acc}"); others
        # accept only the empty spec (str(t))
        if self.ndim == 0 and type(self) is Tensor:
            return self.detach().item().__format__(spec)
        return object.__format__(self, spec)

    def __index__(self):
        if self.dtype.category != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __repr__(self):

        return tensor_repr(self)

    def __iter__(self):
        if not self.ndim:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    # ---- new tensors like this one (its dtype unless given)
    def new_tensor(self, data, dtype=None, device=None, requires_grad=False):
        return tensor(data, dtype=dtype or self.dtype, requires_grad=requires_grad,
                      device=self._box.device if device is None else device)

    def new_full(self, size, fill_value, *, dtype=None, device=None, requires_grad=False):
        return full(size, fill_value, dtype=dtype or self.dtype, requires_grad=requires_grad,
                    device=self._box.device if device is None else device)

    def new_zeros(self, *sizes, size=None, dtype=None, device=None, requires_grad=False):
        return self.new_full(size_arg("new_zeros", sizes, size), 0, dtype=dtype, device=device,
                             requires_grad=requires_grad)

    def new_ones(self, *sizes, size=None, dtype=None, device=None, requires_grad=False):
        return self.new_full(size_arg("new_ones", sizes, size), 1, dtype=dtype, device=device,
                             requires_grad=requires_grad)

    new_empty = new_zeros

    def _write_out(self, who, result):
        """`result` written into this tensor, as an op's ``out=`` argument (PyTorch's rules: no autograd,
        no narrowing cast, a resize with a warning when the shape differs); returns this tensor."""
        if autograd.is_grad_enabled() and (result.requires_grad or self.requires_grad):
            raise RuntimeError(f"{who}(): functions with out=... arguments don't support automatic "
                               f"differentiation, but one of the arguments requires grad.")
        if result.dtype.category > self.dtype.category:
            raise RuntimeError(f"{who}: result type {result.dtype.name} can't be cast to the desired output "
                               f"type {self.dtype.name} (at {user_location()})")
        if tuple(result.shape) == tuple(self.shape):
            return self._inplace(lambda s: result, who)
        if self.numel():
            warnings.warn(f"{who}: an output with one or more elements was resized since it had shape "
                          f"{list(self.shape)}, which does not match the required output shape "
                          f"{list(result.shape)}", UserWarning, stacklevel=3)
        if _tracing and (tracer := _ctx.tracer) is not None:
            tracer.before_mutation(self)
        result = result.to(self.dtype)
        if result._box.device is not self._box.device:
            result = move(result, self._box.device)
        # (a NumPy-shared array of another shape is not this tensor's storage any more: see _shared.py)
        _rebind(self._box, result._box.value, result._box.type, self._box.device)
        self._box.version += 1
        self._view = None
        return self

    # ---- conversion
    def to(self, *args, **kwargs):
        """``to(dtype)``, ``to(device, dtype=None)``, ``to(other)`` (its device and dtype), with ``copy=True``
        for a copy even when nothing changes; ``non_blocking`` is accepted. Differentiable."""
        dev, dtype, copy = parse_to(args, kwargs, "Tensor.to")
        out = self
        if dtype is not None and dtype is not self.dtype:
            out = apply(OPS["cast"], self, dtype=dtype)
        if dev is not None and dev is not out._box.device:
            out = move(out, dev)
        if copy and out is self:
            out = self.clone()
        return out

    def type(self, dtype=None):
        return self.dtype.name if dtype is None else self.to(D.as_dtype(dtype))

    def float(self):
        return self.to(D.float32)

    def double(self):
        return self.to(D.float64)

    def half(self):
        return self.to(D.float16)

    def long(self):
        return self.to(D.int64)

    int = long

    def byte(self):
        return self.to(D.uint8)

    def bool(self):
        return self.to(D.bool_)

    def type_as(self, other):
        return self.to(other.dtype)

    def cpu(self):
        return move(self, CPU)

    def cuda(self, device=None, non_blocking=False):
        """A copy on the CUDA device (`device`: an index or a cuda device); an error where CUDA is not
        available."""
        return move(self, _cuda_device(device))

    def clone(self):
        out = apply(OPS["reshape"], self, shape=tuple(self.shape))
        if isinstance(out._box.value, np.ndarray):
            out._box.value = out._box.value.copy()  # a real copy: compiled steps may update arrays in place
        return out

    def contiguous(self):
        return self

    # ---- arithmetic
    def __add__(self, o):
        return _binary("add", self, o)

    def __radd__(self, o):
        return _binary("add", o, self)

    def __sub__(self, o):
        _no_bool_sub(self, o)
        return _binary("sub", self, o)

    def __rsub__(self, o):
        _no_bool_sub(o, self)
        return _binary("sub", o, self)

    def __mul__(self, o):
        return _binary("mul", self, o)

    def __rmul__(self, o):
        return _binary("mul", o, self)

    def __truediv__(self, o):
        return _binary("div", self, o, float_result=True)

    def __rtruediv__(self, o):
        return _binary("div", o, self, float_result=True)

    def __floordiv__(self, o):
        return _rounded_div("floor", self, o)

    def __rfloordiv__(self, o):
        return _rounded_div("floor", o, self)

    def __pow__(self, o):
        dt = D.result_type(self, o)
        if isinstance(o, (int, float)) and not isinstance(o, bool) and dt is self.dtype:
            if o == 2:
                return self * self
            if o == 1:
                return self.clone()
            if o == 0.5 and dt.is_floating_point:
                return self.sqrt()
            if isinstance(o, int) and dt.category == 1:
                if o < 0:
                    raise OpTypeError(f"pow: Integers to negative integer powers are not allowed ({dt.name} tensor "
                                      f"{shape_str(self.shape)} ** {o}) (at {user_location()})")
                return self._int_pow(o)  # int ** non-negative int stays int, as PyTorch
        return _pow(self, o, dt)

    def _int_pow(self, n):
        result, base = None, self
        while n:
            if n & 1:
                result = base if result is None else result * base
            n >>= 1
            if n:
                base = base * base
        return result if result is not None else ones_like(self)

    def __rpow__(self, o):
        return _pow(o, self, D.result_type(o, self))

    def __matmul__(self, o):
        return self.matmul(o)

    def __rmatmul__(self, o):
        return tensor(o).matmul(self)

    def __neg__(self):
        return apply(OPS["neg"], self)

    def __pos__(self):
        return self

    def __abs__(self):
        return self.abs()

    def __eq__(self, o):
        return _binary("eq", self, o)

    def __ne__(self, o):
        return _binary("ne", self, o)

    def __lt__(self, o):
        return _binary("lt", self, o)

    def __le__(self, o):
        return _binary("le", self, o)

    def __gt__(self, o):
        return _binary("gt", self, o)

    def __ge__(self, o):
        return _binary("ge", self, o)

    def __invert__(self):
        if self.dtype is not D.bool_:
            raise OpTypeError("~ (bitwise not) is supported for bool tensors only")
        return apply(OPS["logical_not"], self)

    def _bool_operands(self, o, what):
        # & and | are logical on bool tensors; on integers PyTorch's are bitwise, which tracejit lacks: refuse
        # rather than compute a logical result (tensor([5]) & 3 is 1 in PyTorch)
        if self.dtype is not D.bool_ or not (isinstance(o, (bool, np.bool_)) or
                                             (isinstance(o, Tensor) and o.dtype is D.bool_)):
            other = o.dtype.name if isinstance(o, Tensor) else type(o).__name__
            raise OpTypeError(f"{what} is supported for bool operands only (bitwise operations on integers are "
                              f"not implemented), got {self.dtype.name} and {other} (at {user_location()})")

    def __and__(self, o):
        self._bool_operands(o, "& (bitwise and)")
        return where(self, _as_operand(o, D.bool_), False)

    def __or__(self, o):
        self._bool_operands(o, "| (bitwise or)")
        return where(self, True, _as_operand(o, D.bool_))

    def add(self, o, alpha=1):
        return self + self._times_alpha(o, alpha, "add")

    def sub(self, o, alpha=1):
        _no_bool_sub(self, o)
        return self - self._times_alpha(o, alpha, "sub")

    def _times_alpha(self, o, alpha, name):
        """`o * alpha` for add/sub(o, alpha=), with PyTorch's checks of alpha against the result's dtype: a float
        alpha would silently turn an integer sum into a float one, and a bool operand times an int alpha into int64."""
        if isinstance(alpha, Tensor):  # (PyTorch wants a number; a traced lr stays a tensor here, never concretized)
            return o * alpha
        out = D.result_type(self, o)
        is_bool = isinstance(alpha, (bool, np.bool_))
        if is_bool and out is not D.bool_:
            raise OpTypeError(f"{name}: Boolean alpha only supported for Boolean results; the result here is "
                              f"{out.name} (at {user_location()})")
        if not out.is_floating_point and not (is_bool or isinstance(alpha, (int, np.integer))):
            raise OpTypeError(f"{name}: For integral input tensors, argument alpha must not be a floating point "
                              f"number; got alpha={alpha!r} for a {out.name} result (at {user_location()})")
        if not is_bool and alpha == 1:
            return o
        if out is D.bool_:  # a + alpha * b in bool: b counts when alpha is not zero
            return o if alpha else _as_operand(o, D.bool_) & False
        if not isinstance(o, Tensor):
            return o * alpha
        return _as_operand(o, out) * alpha  # in the result's dtype (an int64 b times 0.5 is no float32 here)

    def mul(self, o):
        return self * o

    def div(self, o, *, rounding_mode=None):
        return self / o if rounding_mode is None else _rounded_div(rounding_mode, self, o)

    divide = div

    def floor_divide(self, o):
        return _rounded_div("floor", self, o)

    def remainder(self, o):
        return _modulo("remainder", self, o)

    def fmod(self, o):
        return _modulo("fmod", self, o)

    def __mod__(self, o):
        return _modulo("remainder", self, o)

    def __rmod__(self, o):
        return _modulo("remainder", o, self)

    def pow(self, o):
        return self ** o

    def neg(self):
        return -self

    def eq(self, o):
        return self == o

    def ne(self, o):
        return self != o

    def lt(self, o):
        return self < o

    def le(self, o):
        return self <= o

    def gt(self, o):
        return self > o

    def ge(self, o):
        return self >= o

    def logical_not(self):
        return apply(OPS["logical_not"], self.bool())

    def maximum(self, o):
        return _binary("maximum", self, o)

    def minimum(self, o):
        return _binary("minimum", self, o)

    def _float_unary(self, name):
        x = self if self.dtype.is_floating_point else self.to(D.default_float)
        return apply(OPS[name], x)

    def exp(self):
        return self._float_unary("exp")

    def log(self):
        return self._float_unary("log")

    def sqrt(self):
        return self._float_unary("sqrt")

    def rsqrt(self):
        return 1.0 / self.sqrt()

    def tanh(self):
        return self._float_unary("tanh")

    def sigmoid(self):
        return self._float_unary("sigmoid")

    def sin(self):
        return self._float_unary("sin")

    def cos(self):
        return self._float_unary("cos")

    def erf(self):
        return self._float_unary("erf")

    def abs(self):
        return apply(OPS["abs"], self)

    def sign(self):
        return apply(OPS["sign"], self)

    def relu(self):
        return apply(OPS["relu"], self)

    def square(self):
        return self * self

    def reciprocal(self):
        return 1.0 / self

    def log1p(self):
        return (self + 1.0).log()

    def clamp(self, min=None, max=None):
        if min is None and max is None:
            raise RuntimeError("clamp: at least one of 'min' or 'max' must not be None")
        # one result dtype for both bounds, as PyTorch (an int tensor clamped to 0.5 becomes float32)
        dt = D.result_type(self, *[b for b in (min, max) if b is not None])
        out = self
        if min is not None:
            out = _binary("maximum", out, min, dtype=dt)
        if max is not None:
            out = _binary("minimum", out, max, dtype=dt)
        return out

    clip = clamp

    def where(self, condition, other):
        return where(condition, self, other)

    def masked_fill(self, mask, value):
        return where(mask, _as_operand(value, self.dtype), self)

    # ---- reductions
    def sum(self, dim=None, keepdim=False, dtype=None):
        x = self if dtype is None else self.to(dtype)
        return apply(OPS["sum"], x, axes=_dims(dim, self.ndim), keepdim=keepdim)

    def mean(self, dim=None, keepdim=False, dtype=None):
        x = self if dtype is None else self.to(dtype)
        if not x.dtype.is_floating_point:
            raise OpTypeError(f"mean(): could not infer output dtype. Input dtype must be floating point, "
                              f"got {x.dtype.name}")
        axes = _dims(dim, self.ndim)
        n = math.prod(self.shape[a] for a in axes)
        return x.sum(axes, keepdim) / float(n)

    def var(self, dim=None, unbiased=None, keepdim=False, correction=None):
        if correction is None:
            correction = 1 if unbiased is None or unbiased else 0
        axes = _dims(dim, self.ndim)
        n = math.prod(self.shape[a] for a in axes)
        d = self - self.mean(axes, keepdim=True)
        return (d * d).sum(axes, keepdim) / float(max(n - correction, 0))

    def std(self, dim=None, unbiased=None, keepdim=False, correction=None):
        return self.var(dim, unbiased, keepdim, correction).sqrt()

    def amax(self, dim=None, keepdim=False):
        return apply(OPS["amax"], self, axes=_dims(dim, self.ndim), keepdim=keepdim)

    def amin(self, dim=None, keepdim=False):
        if self.dtype is D.uint8:  # (negation wraps) the complement reverses the order instead
            return 255 - (255 - self).amax(dim, keepdim)
        return -((-self).amax(dim, keepdim))

    def argmax(self, dim=None, keepdim=False):
        if dim is None:
            return apply(OPS["argmax"], self.reshape(-1), axis=0, keepdim=False)
        return apply(OPS["argmax"], self, axis=_norm_dim(dim, self.ndim), keepdim=keepdim)

    def argmin(self, dim=None, keepdim=False):
        return (255 - self if self.dtype is D.uint8 else -self).argmax(dim, keepdim)

    def max(self, dim=None, keepdim=False):
        if isinstance(dim, Tensor):
            return self.maximum(dim)
        if dim is None:
            return self.amax()
        return MinMax(self.amax(dim, keepdim), self.argmax(dim, keepdim))

    def min(self, dim=None, keepdim=False):
        if isinstance(dim, Tensor):
            return self.minimum(dim)
        if dim is None:
            return self.amin()
        return MinMax(self.amin(dim, keepdim), self.argmin(dim, keepdim))

    def all(self):
        return self.bool().logical_not().sum() == 0

    def any(self):
        return self.bool().sum() > 0

    def softmax(self, dim):
        x = self if self.dtype.is_floating_point else self.float()
        e = (x - x.amax(dim, keepdim=True).detach()).exp()
        return e / e.sum(dim, keepdim=True)

    def log_softmax(self, dim):
        x = self if self.dtype.is_floating_point else self.float()
        s = x - x.amax(dim, keepdim=True).detach()
        return s - s.exp().sum(dim, keepdim=True).log()

    # ---- norms and triangles
    def norm(self, p="fro", dim=None, keepdim=False, dtype=None):
        return linalg.tensor_norm(self, p, dim, keepdim, dtype=dtype)

    def _triangle(self, who, diagonal, lower):
        if self.ndim < 2:
            raise RuntimeError(f"{who}: input tensor must have at least 2 dimensions, got shape "
                               f"{shape_str(self.shape)} (at {user_location()})")
        r, c = self.shape[-2:]
        keep = np.tri(r, c, diagonal, dtype=bool) if lower else ~np.tri(r, c, diagonal - 1, dtype=bool)
        return where(constant_like(self, keep), self, False if self.dtype is D.bool_ else 0)

    def tril(self, diagonal=0):
        return self._triangle("tril", diagonal, True)

    def triu(self, diagonal=0):
        return self._triangle("triu", diagonal, False)

    def tril_(self, diagonal=0):
        return self._inplace(lambda s: s.tril(diagonal), "tril_")

    def triu_(self, diagonal=0):
        return self._inplace(lambda s: s.triu(diagonal), "triu_")

    # ---- contraction
    def matmul(self, o):
        return matmul(self, o)

    def mm(self, o):
        if self.ndim != 2 or o.ndim != 2:
            raise OpError(f"mm: expected 2-D tensors, got {shape_str(self.shape)} and {shape_str(o.shape)} "
                          f"(at {user_location()})")
        return matmul(self, o, _opname="mm")

    def bmm(self, o):
        if self.ndim != 3 or o.ndim != 3:
            raise OpError(f"bmm: expected 3-D tensors, got {shape_str(self.shape)} and {shape_str(o.shape)} "
                          f"(at {user_location()})")
        return matmul(self, o, _opname="bmm")

    # ---- movement
    def reshape(self, *shape):
        shape = list(_sizes(shape))
        if shape.count(-1) > 1:
            raise OpError(f"reshape: only one dimension can be inferred (-1), got {shape_str(shape)} for "
                          f"input of shape {shape_str(self.shape)} (at {user_location()})")
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            if known == 0 or self.numel() % known:
                raise OpError(f"reshape: shape {shape_str(shape)} is invalid for input of shape "
                              f"{shape_str(self.shape)} ({self.numel()} elements) (at {user_location()})")
            shape[shape.index(-1)] = self.numel() // known
        shape = tuple(shape)
        if shape == tuple(self.shape):
            return self
        return apply(OPS["reshape"], self, shape=shape)._as_view_of(self, "reshape")

    view = reshape

    def view_as(self, other):
        return self.reshape(other.shape)

    reshape_as = view_as

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s, e = _norm_dim(start_dim, self.ndim), _norm_dim(end_dim, self.ndim)
        shape = self.shape[:s] + (math.prod(self.shape[s:e + 1]),) + self.shape[e + 1:]
        return self.reshape(shape)

    def unflatten(self, dim, sizes):
        d = _norm_dim(dim, self.ndim)
        return self.reshape(self.shape[:d] + tuple(sizes) + self.shape[d + 1:])

    def permute(self, *dims):
        dims = tuple(_norm_dim(d, self.ndim) for d in _sizes(dims))
        if dims == tuple(range(self.ndim)):
            return self
        return apply(OPS["permute"], self, dims=dims)._as_view_of(self, "permute", dims)

    def transpose(self, d0, d1):
        dims = list(range(self.ndim))
        a, b = _norm_dim(d0, self.ndim), _norm_dim(d1, self.ndim)
        dims[a], dims[b] = dims[b], dims[a]
        return self.permute(dims)

    swapaxes = transpose

    def t(self):
        if self.ndim > 2:
            raise OpError(f"t() expects a tensor with <= 2 dimensions, but got {shape_str(self.shape)}")
        return self.transpose(0, 1) if self.ndim == 2 else self

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

    @property
    def mT(self):
        return self.transpose(-2, -1)

    def squeeze(self, dim=None):
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        dims = _dims(dim, self.ndim)
        return self.reshape(tuple(s for i, s in enumerate(self.shape) if not (i in dims and s == 1)))

    def unsqueeze(self, dim):
        d = _norm_dim(dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def expand(self, *sizes):
        sizes = _sizes(sizes)
        if len(sizes) < self.ndim:
            raise OpError(f"expand: the number of sizes provided ({len(sizes)}) must be greater or equal to "
                          f"the number of dimensions in the tensor ({self.ndim})")
        x = self
        lead = len(sizes) - self.ndim
        if lead:
            x = x.reshape((1,) * lead + tuple(self.shape))
        shape = tuple(x.shape[i] if s == -1 else s for i, s in enumerate(sizes))
        if shape == tuple(x.shape):
            return x
        return apply(OPS["expand"], x, shape=shape)._as_view_of(self, "expand")

    def expand_as(self, other):
        return self.expand(other.shape)

    def broadcast_to(self, shape):
        return self.expand(shape)

    def repeat(self, *sizes):
        sizes = _sizes(sizes)
        if len(sizes) < self.ndim:
            raise OpError(f"repeat: {len(sizes)} repeat sizes {tuple(sizes)} are fewer than the {self.ndim} "
                          f"dimensions of shape {shape_str(self.shape)} (at {user_location()})")
        x = self.reshape((1,) * (len(sizes) - self.ndim) + tuple(self.shape))
        inter, final = [], []
        for s, r in zip(x.shape, sizes):
            inter += [1, s]
            final.append(s * r)
        x = x.reshape(tuple(inter)).expand(tuple(v for s, r in zip(x.shape, sizes) for v in (r, s)))
        return x.reshape(tuple(final))

    def _slice(self, starts, stops, steps):
        return apply(OPS["slice"], self, starts=starts, stops=stops, steps=steps)

    def pad(self, pads, value=0.0):
        return apply(OPS["pad"], self, pads=tuple(tuple(p) for p in pads), value=value)

    def narrow(self, dim, start, length):
        d = _norm_dim(dim, self.ndim)
        starts = [0] * self.ndim
        stops = list(self.shape)
        starts[d], stops[d] = start, start + length
        index = tuple(slice(a, b) for a, b in zip(starts, stops))
        return self._slice(tuple(starts), tuple(stops), (1,) * self.ndim)._as_view_of(self, "index", index)

    def chunk(self, chunks, dim=0):
        size = -(-self.shape[_norm_dim(dim, self.ndim)] // chunks)
        return self.split(size, dim)

    def split(self, split_size, dim=0):
        d = _norm_dim(dim, self.ndim)
        n = self.shape[d]
        sizes = split_size if isinstance(split_size, (list, tuple)) else \
            [min(split_size, n - i) for i in range(0, n, split_size)]
        out, start = [], 0
        for s in sizes:
            out.append(self.narrow(d, start, s))
            start += s
        return tuple(out)

    def unbind(self, dim=0):
        d = _norm_dim(dim, self.ndim)
        return tuple(t.squeeze(d) for t in self.split(1, d))

    def __getitem__(self, index):

        return getitem(self, index)

    def gather(self, dim, index):

        axis = _norm_dim(dim, self.ndim)
        if isinstance(index, Tensor) and index.dtype is D.int64 and index.ndim == self.ndim:
            n = self.shape[axis]
            index = check_index(index, 0, n, index_message("gather", axis, n))
        return apply(OPS["gather"], self, index, axis=axis)

    def index_select(self, dim, index):

        d = _norm_dim(dim, self.ndim)
        if isinstance(index, Tensor) and index.dtype is D.int64:
            # as PyTorch: indices in [0, size) (plain subscripts also accept negative ones)
            index = check_index(index, 0, self.shape[d], index_message("index_select", d, self.shape[d]))
        return self[(slice(None),) * d + (index,)]

    # ---- in-place (functionalized: compute, then rebind the box)
    def _inplace(self, compute, name):
        """Rebind this tensor's box to `compute(current value)`; bumps the version counter. On a view (basic
        indexing, reshape, permute, ...) the new value is then written into its base, as PyTorch's views share
        memory with their base (see _views.py)."""
        grad_on = not _grad_off or _grad_mode.enabled  # (is_grad_enabled, inlined)
        if grad_on and self.requires_grad and self.is_leaf:
            raise RuntimeError(f"{name}: a leaf Variable that requires grad is being used in an in-place "
                               f"operation (shape {shape_str(self.shape)}); wrap it in tracejit.no_grad() "
                               f"or use .data")
        view = self._view
        if view is not None:
            check_view_inplace(self, name, grad_on)
            refresh_view(self)
        if _tracing and (tracer := _ctx.tracer) is not None:
            tracer.before_mutation(self)
        box = self._box
        src = self
        if grad_on:
            # the op that computes the new value may save its input for backward: give it the old value
            # under its own box (no copy: arrays are never written -- except a NumPy-shared one, which the
            # rebinding below writes into), which the rebinding leaves alone
            old = box.value
            if type(box) is SharedBox and isinstance(old, np.ndarray):
                old = old.copy()
            src = Tensor._from_box(Box(old, box.type, box.device))
            src._box.version = box.version
            src.requires_grad, src.grad_fn = self.requires_grad, self.grad_fn
        result = compute(src)
        if tuple(result.shape) != tuple(self.shape):
            raise OpError(f"{name}: output with shape {shape_str(self.shape)} doesn't match the broadcast "
                          f"shape {shape_str(result.shape)} (at {user_location()})")
        if result.dtype is not self.dtype:
            result = result.to(self.dtype)
        if grad_on and self.requires_grad and not result.requires_grad:
            # (fill_, zero_, copy_ of a constant on a tensor in the graph: it stays in the graph, with zero
            # gradient to what it was, as in PyTorch -- not with the op that made its old value)
            result = where(True, result, src)
        if _dispatch._on_devices and result._box.device is not box.device:
            result = move(result, box.device)  # in place: the storage stays where it is (copy_ moves)
        box.value = result._box.value
        box.version += 1
        if result.requires_grad:
            self.requires_grad = True
            self.grad_fn = result.grad_fn
        if view is not None:
            write_through(self, grad_on)
        return self

    # ---- views: see _views.py
    def _as_view_of(self, base, kind, data=None):
        if self is not base:
            self._view = ViewLink(base, kind, data, False, self)
        return self

    def __setitem__(self, index, value):
        link = value._view if isinstance(value, Tensor) else None
        if link is not None and link.base is self and link.kind == "index" and link.in_sync(value):
            # `x[i] *= 2`: the in-place op on the view x[i] already wrote into x; Python now assigns it back
            idx = index if isinstance(index, tuple) else (index,)
            if all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in idx) and \
                    _expand_ellipsis(self, idx) == link.data:
                return
        self._inplace(lambda s: index_put(s, index, value), "setitem")

    def add_(self, o, alpha=1):
        return self._inplace(lambda s: s.add(o, alpha=alpha), "add_")

    def sub_(self, o, alpha=1):
        return self._inplace(lambda s: s.sub(o, alpha=alpha), "sub_")

    def mul_(self, o):
        return self._inplace(lambda s: s * o, "mul_")

    def div_(self, o, *, rounding_mode=None):
        return self._inplace(lambda s: s.div(o, rounding_mode=rounding_mode), "div_")

    def floor_divide_(self, o):
        self._check_inplace_result(D.result_type(self, o), "floor_divide_")
        return self._inplace(lambda s: _rounded_div("floor", s, o), "floor_divide_")

    def pow_(self, o):
        return self._inplace(lambda s: s ** o, "pow_")

    def clamp_(self, min=None, max=None):
        return self._inplace(lambda s: s.clamp(min, max), "clamp_")

    def addcmul_(self, a, b, value=1):
        return self._inplace(lambda s: s + a * b * value, "addcmul_")

    def addcdiv_(self, a, b, value=1):
        return self._inplace(lambda s: s + a / b * value, "addcdiv_")

    def lerp_(self, end, weight):
        return self._inplace(lambda s: s + (end - s) * weight, "lerp_")

    def fill_(self, value):
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise RuntimeError(f"fill_ only supports 0-dimension value tensor, got shape "
                                   f"{shape_str(value.shape)}")
            return self._inplace(lambda s: value.reshape(()).to(self.dtype).expand(tuple(self.shape)),
                                 "fill_")
        return self._inplace(lambda s: full(tuple(self.shape), value, dtype=self.dtype, device=self.device),
                             "fill_")

    def zero_(self):
        return self.fill_(0)

    def copy_(self, src):
        if not isinstance(src, Tensor):
            src = tensor(src)
        return self._inplace(lambda s: src.to(self.dtype).expand(tuple(self.shape)).clone(), "copy_")

    def uniform_(self, a=0.0, b=1.0, generator=None):

        from .random import rand  # (random imports nothing of this module; its generator needs Tensor made)

        return self._inplace(lambda s: rand(tuple(self.shape), generator=generator, dtype=self.dtype,
                                            device=self.device) * (b - a) + a, "uniform_")

    def normal_(self, mean=0.0, std=1.0, generator=None):

        from .random import randn

        return self._inplace(lambda s: randn(tuple(self.shape), generator=generator, dtype=self.dtype,
                                             device=self.device) * std + mean, "normal_")

    def __iadd__(self, o):
        return self.add_(o)

    def __isub__(self, o):
        return self.sub_(o)

    def __imul__(self, o):
        return self.mul_(o)

    def __itruediv__(self, o):
        return self.div_(o)

    def __ifloordiv__(self, o):
        return self.floor_divide_(o)

    def remainder_(self, o):
        self._check_inplace_result(D.result_type(self, o), "remainder_")
        return self._inplace(lambda s: _modulo("remainder", s, o), "remainder_")

    def fmod_(self, o):
        self._check_inplace_result(D.result_type(self, o), "fmod_")
        return self._inplace(lambda s: _modulo("fmod", s, o), "fmod_")

    def __imod__(self, o):
        return self.remainder_(o)

    def _check_inplace_result(self, dt, name):
        if dt.is_floating_point and not self.dtype.is_floating_point:
            raise RuntimeError(f"result type {dt.name} can't be cast to the desired output type {self.dtype.name} "
                               f"({name}, at {user_location()})")


def _cuda_device(d=None):
    if d is None:
        return storage_device("cuda")
    if isinstance(d, int) and not isinstance(d, bool):
        return storage_device(_device_cls("cuda", d))
    dev = _device_cls(d)
    if dev.type != "cuda":
        raise RuntimeError(f"Invalid device, must be cuda device, got {dev}")
    return storage_device(dev)


def parse_to(args, kwargs, who="to"):
    """(device or None, dtype or None, copy) of PyTorch's ``.to(...)`` arguments: ``to(dtype)``,
    ``to(device=None, dtype=None)``, ``to(tensor)``, with ``non_blocking``/``copy``/``memory_format`` keywords."""
    kwargs = dict(kwargs)
    dev = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    copy = bool(kwargs.pop("copy", False))
    kwargs.pop("non_blocking", None)
    kwargs.pop("memory_format", None)
    if kwargs:
        raise TypeError(f"{who}() got an unexpected keyword argument {next(iter(kwargs))!r}")
    args = list(args)
    if args and isinstance(args[0], Tensor):
        other = args.pop(0)
        dev, dtype = other._box.device, other.dtype
    elif args and not isinstance(args[0], D.DType) and args[0] not in (float, int, bool) and \
            (isinstance(args[0], (str, _device_cls)) or (isinstance(args[0], int) and not isinstance(args[0], bool))
             or args[0] is None):
        if dev is not None:
            raise TypeError(f"{who}() got multiple values for argument 'device'")
        dev = args.pop(0)
    if args and (isinstance(args[0], D.DType) or args[0] in (float, int, bool)):
        if dtype is not None:
            raise TypeError(f"{who}() got multiple values for argument 'dtype'")
        dtype = args.pop(0)
    if args and isinstance(args[0], bool):  # to(dtype, non_blocking, copy), as PyTorch's positional form
        args.pop(0)
        if args and isinstance(args[0], bool):
            copy = args.pop(0)
    if args:
        left = ", ".join(type(a).__name__ for a in args)
        raise TypeError(f"{who}() received an invalid combination of arguments: {left} left over (expected a "
                        f"device, a dtype or a tensor)")
    if dev is not None:
        dev = storage_device(dev)
    return dev, (None if dtype is None else D.as_dtype(dtype)), copy


class Size(tuple):
    """Tensor shape; a tuple, printed as PyTorch does."""

    def __repr__(self):
        return f"tracejit.Size([{', '.join(map(str, self))}])"

    def numel(self):
        return math.prod(self)


# ----------------------------------------------------------------------------------------------- functions


def _pow(a, b, dt):
    """a ** b with PyTorch's result dtypes: integers stay integers (computed in float64, exact below 2**53, and
    truncated as an integer power of a negative exponent is), bool ** Python bool stays bool, a bool exponent tensor
    with a bool base raises as in PyTorch, and everything else is floating point."""
    if dt.is_floating_point:
        return _binary("pow", a, b, float_result=True)
    if dt is D.bool_ and isinstance(b, Tensor):
        base = shape_str(a.shape) if isinstance(a, Tensor) else repr(a)
        raise OpTypeError(f"pow: \"pow\" not implemented for 'Bool' ({base} ** bool tensor {shape_str(b.shape)}) "
                          f"(at {user_location()})")
    return _binary("pow", a, b, dtype=D.float64).to(dt)


def _no_bool_sub(a, b):
    """PyTorch refuses `-` with a bool operand (tensor or Python bool) rather than promoting it."""
    if any(x.dtype is D.bool_ if isinstance(x, Tensor) else isinstance(x, (bool, np.bool_)) for x in (a, b)):
        shapes = " and ".join(shape_str(x.shape) if isinstance(x, Tensor) else type(x).__name__ for x in (a, b))
        raise OpTypeError(f"sub: subtraction, the `-` operator, with a bool tensor is not supported ({shapes}). "
                          f"If you are trying to invert a mask, use the `~` or `logical_not()` operator instead "
                          f"(at {user_location()})")


def where(condition, a, b, *, out=None):
    """Elementwise select: `a` where `condition` is true, else `b`."""
    cond = condition if isinstance(condition, Tensor) else tensor(condition)
    if cond.dtype is not D.bool_:
        cond = cond.bool()
    dt = D.result_type(a, b)
    r = apply(OPS["where"], cond, _as_operand(a, dt), _as_operand(b, dt))
    return r if out is None else out._write_out("where", r)


def _fresh(t):
    """`t`, a reshape of a temporary the caller never sees: not a view of it."""
    t._view = None
    return t


def matmul(a, b, _opname="matmul", *, out=None):
    """Matrix product with PyTorch's rules for 1-D operands and broadcast batch dimensions.

    Both operands must have one dtype (as in PyTorch; nothing is promoted)."""
    if out is not None:
        return out._write_out(_opname, matmul(a, b, _opname))
    if not isinstance(b, Tensor):
        b = tensor(b)
    try:
        check_same_dtype(_opname, a, b)
    except OpError as e:
        raise type(e)(f"{e} (at {user_location()})") from None
    if a.ndim == 0 or b.ndim == 0:
        raise OpError(f"matmul: both arguments need at least 1 dimension, got {shape_str(a.shape)} and "
                      f"{shape_str(b.shape)} (at {user_location()})")
    k_a, k_b = a.shape[-1], b.shape[-2] if b.ndim > 1 else b.shape[0]
    if k_a != k_b:  # checked here so that the message names the user's shapes, not unsqueezed ones
        raise OpError(f"matmul: shapes {shape_str(a.shape)} and {shape_str(b.shape)} cannot be multiplied "
                      f"({k_a} != {k_b}) (at {user_location()})")
    if a.ndim == 1 and b.ndim == 1:
        return _fresh((a.unsqueeze(0).matmul(b.unsqueeze(1))).reshape(()))
    if a.ndim == 1:
        return _fresh(matmul(a.unsqueeze(0), b).squeeze(-2))
    if b.ndim == 1:
        return _fresh(matmul(a, b.unsqueeze(1)).squeeze(-1))
    if b.ndim == 2 and a.ndim > 2:
        lead = tuple(a.shape[:-1])
        return _fresh(apply(OPS["matmul"], a.reshape(-1, a.shape[-1]), b).reshape(lead + (b.shape[-1],)))
    try:
        batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    except OpError:
        raise OpError(f"matmul: shapes {shape_str(a.shape)} and {shape_str(b.shape)} cannot be multiplied "
                      f"(batch dimensions {shape_str(a.shape[:-2])} and {shape_str(b.shape[:-2])} cannot be "
                      f"broadcast) (at {user_location()})") from None
    a = a.expand(batch + tuple(a.shape[-2:]))
    b = b.expand(batch + tuple(b.shape[-2:]))
    return apply(OPS["matmul"], a, b)


def cat(tensors, dim=0, *, out=None):
    if out is not None:
        return out._write_out("cat", cat(tensors, dim))
    tensors = list(tensors)
    if not tensors:
        raise OpError("cat: expected a non-empty list of Tensors")
    for i, t in enumerate(tensors):
        if t.ndim == 0:
            raise OpError(f"cat: zero-dimensional tensor (at position {i}) cannot be concatenated "
                          f"(at {user_location()})")
    dt = D.result_type(*tensors)
    d = _norm_dim(dim, tensors[0].ndim)
    return apply(OPS["cat"], *[t.to(dt) for t in tensors], axis=d)


concat = cat


def stack(tensors, dim=0, *, out=None):
    if out is not None:
        return out._write_out("stack", stack(tensors, dim))
    tensors = list(tensors)
    if not tensors:
        raise OpError("stack: expected a non-empty list of Tensors")
    for t in tensors[1:]:
        if tuple(t.shape) != tuple(tensors[0].shape):
            raise OpError(f"stack: expects each tensor to be equal size, but got "
                          f"{shape_str(tensors[0].shape)} and {shape_str(t.shape)} (at {user_location()})")
    d = _norm_dim(dim, tensors[0].ndim + 1)
    return cat([t.unsqueeze(d) for t in tensors], d)
