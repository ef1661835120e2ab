"""The one dispatch point, `apply`, and the state it consults: the per-thread trace context, grad mode (in
autograd.mode) and the Box a tensor's storage lives in.

`apply(op, *inputs, **attrs)` infers the output type with the op table's rule, then runs `op.ref` on the inputs'
arrays (eager) or appends a node to this thread's trace, and records a tape entry when grad mode is on and an
input requires grad. Everything that makes tensors -- the Tensor API (_tensor.py), factories (factories.py),
indexing, random, autograd's engine, the op table's gradient rules -- goes through here; this module imports
none of them (`TensorBase` is the part of Tensor it needs; `_tensor.Tensor` subclasses it).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from . import devices as _devices
from . import dtypes as D
from .autograd.mode import _mode as _grad_mode
from .autograd.mode import _off as _grad_off
from .autograd.tape import TapeEntry
from .devices import CPU, mixed_devices_message
from .dtypes import TensorType
from .errors import OpError, TraceError, user_location


class _TraceContext(threading.local):
    tracer = None  # this thread's active compiler.trace.Tracer (the class attribute: every thread's start)


# The trace context is per thread, like grad mode (the only other global): a thread compiling a function
# never captures another thread's eager ops.
_ctx = _TraceContext()
# The threads tracing right now (by thread id). While it is empty (eager code, compiled calls) readers skip
# the thread-local lookup: `_ctx.tracer if _tracing else None`. A thread adds or removes only its own id,
# with single set operations (atomic), when it installs or removes its tracer: a tracing thread always
# finds the set nonempty.
_tracing: set = set()
# Held by the thread that traces (compiler.trace.trace): one trace at a time in the process. While a trace
# runs, the tensors it captured (a model's parameters, the default generator's state) hold its graph's
# Values instead of arrays; an eager op in another thread that meets one waits here for the trace to end.
TRACE_LOCK = threading.RLock()
TRACE_WAIT_S = 60.0  # how long it waits before calling it a deadlock (the trace waiting on that thread)
# Bumped when any thread starts or stops tracing (under TRACE_LOCK). An eager op reads it before reading
# its inputs' arrays and checks it with `_tracing` afterwards: unchanged and nobody tracing means no trace
# could have put a Value into them in between.
_trace_events = 0


def current_tracer():
    """This thread's active Tracer, or None."""
    return _ctx.tracer if _tracing else None


def set_tracer(tracer):
    """Install `tracer` (or None) for this thread; returns the previous one."""
    global _trace_events
    with TRACE_LOCK:
        prev = _ctx.tracer
        _trace_events += 1  # before a trace is listed / after it is gone: see _concrete_values
        if tracer is not None:
            _tracing.add(threading.get_ident())
            _ctx.tracer = tracer
        else:
            _ctx.tracer = None
            _tracing.discard(threading.get_ident())
        return prev


def _concrete_values(what, read):
    """`read()` (the arrays an eager op or a compiled call is about to use) in a thread that does not trace,
    while another thread may: a Value found there was put by the running trace (the tensor is state of the
    function it compiles), so wait for that trace to end, which restores the arrays, and read again."""
    from .compiler.ir import Value  # (loaded: a trace ran)

    deadline = time.monotonic() + TRACE_WAIT_S
    while True:
        vals = read()
        traced = next((v for v in vals if isinstance(v, Value)), None)
        if traced is None:
            return vals
        left = deadline - time.monotonic()
        if not _tracing or left <= 0 or not TRACE_LOCK.acquire(timeout=left):
            why = (f"another thread's trace did not end within {TRACE_WAIT_S:g} s (does it wait for this "
                   f"thread?)" if _tracing else "it was created inside a compiled function and kept")
            raise TraceError(f"{what}: a tensor of type {traced.type} holds a traced value, not an array (at "
                             f"{user_location()}): {why}")
        TRACE_LOCK.release()


class Box:
    """Storage shared by a tensor and its `.data` / `.detach()` aliases: `value` (a NumPy array on the CPU, a
    backend's buffer on another device, a graph Value while traced), its static type, version and device."""

    __slots__ = ("value", "type", "version", "device", "__weakref__")

    def __init__(self, value, type_: TensorType, device=CPU):
        self.value = value
        self.type = type_
        self.version = 0
        self.device = device


# True once a tensor has lived on a device other than the CPU in this process: until then `apply` skips the
# device checks (the CPU path pays one global read).
_on_devices = False
# Bumped whenever a Box moves to another device in place (Module.to, `.data =`): compiled variants check the
# devices of the state they captured only when it changed since they last looked.
_device_moves = 0


def _rebind(box, value, type_, device) -> None:
    """Give `box` new storage (value, type and device), keeping its identity (aliases and captures follow)."""
    global _device_moves, _on_devices
    if device is not box.device:
        _device_moves += 1
        if device is not CPU:
            _on_devices = True
    box.value = value
    box.type = type_
    box.device = device


def _device_of(what, inputs):
    """The device an op on `inputs` runs on: theirs, where all agree; a CPU 0-d tensor goes with any device
    (as in PyTorch). Tensors on two devices: PyTorch's error, naming both."""
    dev = None
    for t in inputs:
        b = t._box
        d = b.device
        if d is CPU and not b.type.shape:
            continue
        if dev is None:
            dev = d
        elif d is not dev:
            raise OpError(f"{what}: {mixed_devices_message(dev, d)} (at {user_location()})")
    if dev is None:
        return CPU
    return dev


def _apply_on(dev, tracer, op, inputs, attrs, out_type):
    """`apply` for a device other than the CPU: a node while tracing, else the device backend's eager op."""
    if tracer is not None:
        value = tracer.add_node(op, inputs, attrs, out_type)
    else:
        vals = _concrete_values(op.name, lambda: [t._box.value for t in inputs]) if _tracing else \
            [t._box.value for t in inputs]
        vals = [v if t._box.device is dev else _devices.transfer(v, t._box.device, dev) for t, v in zip(inputs, vals)]
        value = _devices.backend_for(dev).run_eager(op, vals, attrs, out_type)
    return _Tensor._make_on(value, out_type, dev)


# ----------------------------------------------------------------------------------------------- eager kernels

# The CPU backend's eager kernels (compiler/backends/cpu/eager.py): op name -> kernel(arrays, attrs, out_type)
# returning a new array, or None where it does not take the case (then the op's NumPy `ref` runs, as it does for
# every op without one). It starts with a stub (`_asking`) for each op that has one: the first such op asks the
# backend registry to load them -- in a background thread by default, the op itself running its ref -- and
# the loaded kernels replace the table's entries at once (one dict update) when they are ready.
_EAGER_OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d", "max_pool2d_grad", "avg_pool2d",
              "avg_pool2d_grad")


def _install_eager_kernels(kernels: dict) -> None:
    _eager_kernels.update(kernels)


def _load_eager_kernels() -> None:
    """Drop the table's stubs and ask the registry for the kernels (once: later calls find no stub)."""
    for name in _EAGER_OPS:
        if getattr(_eager_kernels.get(name), "asks", False):
            del _eager_kernels[name]
    from .compiler import backends

    backends.start_eager_kernels(_install_eager_kernels)


def _asking(name):
    def ask(arrays, attrs, out_type):
        _load_eager_kernels()
        kernel = _eager_kernels.get(name)  # there already when loaded synchronously
        return kernel(arrays, attrs, out_type) if kernel is not None else None
    ask.asks = True
    return ask


_eager_kernels: dict = {name: _asking(name) for name in _EAGER_OPS}


def eager_kernel(name: str):
    """The CPU backend's eager kernel for `name` (an op, or a multi-tensor update such as "sgd_update"), or None
    while there is none (not loaded yet: the first call asks for them, as the first op that has one does)."""
    kernel = _eager_kernels.get(name)
    if kernel is None or getattr(kernel, "asks", False):
        if getattr(_eager_kernels.get(_EAGER_OPS[0]), "asks", False):
            _load_eager_kernels()
        kernel = _eager_kernels.get(name)
    return kernel


# ----------------------------------------------------------------------------------------------- dispatch


def apply(op, *inputs, **attrs):
    """Run primitive `op` on tensors: eagerly with `op.ref`, or by appending a node to the trace.

    Records a tape entry when grad mode is on and an input requires grad.
    """
    try:
        out_type = op.infer(*[t._box.type for t in inputs], **attrs)
    except OpError as e:
        raise type(e)(f"{e} (at {user_location()})") from None
    tracer = _ctx.tracer if _tracing else None
    if _on_devices and (dev := _device_of(op.name, inputs)) is not CPU:
        out = _apply_on(dev, tracer, op, inputs, attrs, out_type)
    else:
        if tracer is not None:
            value = tracer.add_node(op, inputs, attrs, out_type)
        else:
            events = _trace_events
            vals = [t._box.value for t in inputs]
            if _tracing or events != _trace_events:  # another thread traces (or did): its Values may be there
                vals = _concrete_values(op.name, lambda: [t._box.value for t in inputs])
            kernel = _eager_kernels.get(op.name)
            value = kernel(vals, attrs, out_type) if kernel is not None else None
            if value is None:
                value = op.ref(*vals, **attrs)
            if not isinstance(value, np.ndarray) or value.dtype != out_type.dtype.np:
                value = np.asarray(value, dtype=out_type.dtype.np)
        out = _Tensor._make(value, out_type)
    if (not _grad_off or _grad_mode.enabled) and op.grad is not None and out_type.dtype.is_floating_point:
        for t in inputs:
            if t.requires_grad:
                out.requires_grad = True
                out.grad_fn = TapeEntry(op, list(inputs), attrs, out)
                break
    return out


# ----------------------------------------------------------------------------------------------- tensors

_Tensor = None  # the Tensor class (tracejit._tensor.Tensor, TensorBase's one subclass): what apply makes


class TensorBase:
    """What dispatch, autograd and the compiler need of a tensor: its Box (storage, static type, version), grad
    state, and how to make one. The API -- arithmetic, views, reductions, .backward() -- is its subclass
    `tracejit.Tensor` (_tensor.py); every tensor is an instance of that subclass."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        global _Tensor
        if TensorBase in cls.__bases__:  # Tensor itself (not Parameter and other subclasses of it)
            _Tensor = cls

    @classmethod
    def _make(cls, value, type_, requires_grad=False):
        t = object.__new__(_Tensor)
        t._box = Box(value, type_)
        t.requires_grad = requires_grad
        t.grad_fn = None
        t._grad = None
        return t

    @classmethod
    def _make_on(cls, value, type_, device, requires_grad=False):
        """`_make` for storage on `device` (a buffer of that device's backend, or a traced Value)."""
        global _on_devices
        t = object.__new__(_Tensor)
        t._box = Box(value, type_, device)
        t.requires_grad = requires_grad
        t.grad_fn = None
        t._grad = None
        if device is not CPU:
            _on_devices = True
        return t

    @classmethod
    def _from_box(cls, box):
        t = object.__new__(_Tensor)
        t._box = box
        t.requires_grad = False
        t.grad_fn = None
        t._grad = None
        return t

    @classmethod
    def _from_box_value(cls, other):
        b = other._box
        return cls._make_on(b.value, b.type, b.device)


def _from_array(arr, requires_grad=False):
    """Wrap a concrete array; while tracing it becomes a constant of the graph."""
    dt = D.from_numpy(arr.dtype)
    if arr.dtype != dt.np:
        arr = arr.astype(dt.np)
    tracer = current_tracer()
    if tracer is not None:
        t = _Tensor._make(tracer.constant(arr), TensorType(arr.shape, dt))
    else:
        t = _Tensor._make(arr, TensorType(arr.shape, dt))
    if requires_grad:
        t.requires_grad_(True)
    return t


def _concrete_or_none(t):
    """The values of `t` as a NumPy array when they are known (eager; a host copy for a tensor on another
    device), else None (traced)."""
    v = t._box.value
    if isinstance(v, np.ndarray) or t._box.device is CPU:
        return v if isinstance(v, np.ndarray) and current_tracer() is None else None
    from .compiler.ir import Value  # (a tensor on a device: a backend is loaded, and with it the compiler)

    if isinstance(v, Value) or current_tracer() is not None:
        return None
    return _devices.to_host(v, t._box.device)


# ----------------------------------------------------------------------------------------------- devices


class _ToCopy:
    """What the tape records for a move between devices (not an op of the table: it has no kernel, and a trace
    sees no node -- the traced value only changes device). Its gradient moves back."""

    name = "_to_copy"

    @staticmethod
    def grad(ctx, g):
        return [move(g, ctx.attrs["device"])]


def move(t, dev):
    """`t` with its storage on device `dev` (a copy; `t` itself when it is there already). Differentiable."""
    src = t._box.device
    if src is dev:
        return t
    tracer = current_tracer()
    if tracer is not None:
        value = tracer.value_of(t)  # the same graph value: one program runs a compiled function on one device
    else:
        value = _concrete_values("to(device)", lambda: [t._box.value])[0] if _tracing else t._box.value
        value = _devices.transfer(value, src, dev)
    out = _Tensor._make_on(value, t._box.type, dev)
    if t.requires_grad and (not _grad_off or _grad_mode.enabled):
        out.requires_grad = True
        out.grad_fn = TapeEntry(_ToCopy, [t], {"device": src}, out)
    return out


def _sizes(args):
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(int(s) for s in args[0])
    return tuple(int(s) for s in args)


def _py(value, dtype):
    if dtype is D.bool_:
        return bool(value)
    if dtype.category == 1:
        return int(value)
    return float(value)
