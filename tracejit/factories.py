"""Tensor factories: `tensor`, `as_tensor`, `from_numpy`, `zeros`, `ones`, `full`, `empty`, `*_like`, `arange`,
`linspace`, `eye`. They make tensors through dispatch (`_from_array`, `apply`) and never import the Tensor API.

Every factory takes `device=` (a device, a string such as "cuda:0", or None for the default device, see
`tracejit.set_default_device`); `*_like` default to their argument's device. Values are made on the host and
moved there.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import devices as _devices
from . import dtypes as D
from ._shared import share
from .autograd.mode import no_grad
from .devices import CPU, storage_device
from .dispatch import TensorBase as Tensor
from .dispatch import _from_array, _py, _sizes, apply, move
from .ops import OPS


def _placed(t, device, requires_grad=False):
    """`t` (made on the CPU) on `device` (None: the default device), then a leaf requiring grad if asked."""
    if device is not None or _devices._default is not CPU:
        dev = storage_device(device)
        if dev is not CPU:
            t = move(t, dev)
    return t.requires_grad_(True) if requires_grad else t


def tensor(data, dtype=None, requires_grad=False, device=None):
    """Build a tensor from a number, list or array (a copy). Floats default to float32."""
    if isinstance(data, Tensor):
        arr = data._concrete("tensor(tensor)")
        if device is None and data._box.device is not CPU:
            device = data._box.device
    else:
        arr = np.array(data)
        if arr.dtype == object:
            try:
                arr = np.array([np.asarray(x) for x in data])
            except (TypeError, ValueError):
                raise TypeError(f"tensor(): could not convert {type(data).__name__} to a tensor") from None
    if dtype is not None:
        dt = D.as_dtype(dtype)
        if dt is D.uint8 and arr.dtype.kind in "iu" and arr.size and (arr.min() < 0 or arr.max() > 255):
            raise RuntimeError("value cannot be converted to type uint8 without overflow")
        arr = arr.astype(dt.np)
    elif arr.dtype.kind == "f":
        # Python floats default to float32; NumPy arrays and scalars keep their float dtype, also inside lists
        # (PyTorch: tensor([np.float64(0.5), 1.0]) is float64, tensor([np.float16(1), 2.0]) float32)
        keep = arr.dtype if isinstance(data, (np.ndarray, np.generic)) else _listed_float_dtype(data)
        if arr.dtype != keep:
            arr = arr.astype(keep)
    return _placed(_from_array(np.array(arr)), device, requires_grad)


def _listed_float_dtype(data) -> np.dtype:
    """The float dtype PyTorch infers for a nested list: the widest of its elements' own dtypes, where a Python
    number counts as float32 (the default) and NumPy values and tensors bring theirs."""
    widest = None
    todo = [data]
    while todo:
        x = todo.pop()
        if isinstance(x, (float, int)) and not isinstance(x, np.generic):  # (np.float64 subclasses float)
            widest = np.dtype(np.float32) if widest is None else np.promote_types(widest, np.float32)
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
        elif isinstance(x, (np.ndarray, np.generic)):
            own = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
            widest = own if widest is None else np.promote_types(widest, own)
        elif isinstance(x, Tensor):
            own = x.dtype.np if x.dtype.is_floating_point else np.dtype(np.float32)
            widest = own if widest is None else np.promote_types(widest, own)
        if widest == np.float64:
            break
    return np.dtype(np.float32) if widest is None else widest


def as_tensor(data, dtype=None, device=None):
    """`data` as a tensor without a copy where possible: a tensor of that dtype (and device) is returned as is,
    and a NumPy array of a tracejit dtype shares its memory (as `from_numpy`) when it stays on the CPU; anything
    else is converted (`tensor`)."""
    if isinstance(data, Tensor):
        dev = None if device is None else storage_device(device)
        if (dtype is None or data.dtype is D.as_dtype(dtype)) and (dev is None or dev is data._box.device):
            return data
        return data.to(device=dev, dtype=dtype)
    if (isinstance(data, np.ndarray) and data.dtype in _NATIVE and storage_device(device) is CPU
            and (dtype is None or D.as_dtype(dtype).np == data.dtype)):
        return from_numpy(data)
    return tensor(data, dtype=dtype, device=device)


_NATIVE = {np.dtype(np.bool_), np.dtype(np.uint8), np.dtype(np.int64), np.dtype(np.float16), np.dtype(np.float32),
           np.dtype(np.float64)}


def from_numpy(arr):
    """A tensor sharing `arr`'s memory, as in PyTorch: writes into the array show in the tensor, and in-place
    ops on the tensor (and compiled steps that update it) write into the array (see _shared.py).

    Float64 stays float64. An array of a dtype tracejit does not store (int32, uint16, ...) cannot be shared: the
    tensor is a converted copy, and a warning says so (``from_numpy(img).float() / 255`` still works)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(arr).__name__})")
    if arr.dtype not in _NATIVE:
        have = D.from_numpy(arr.dtype)  # (raises for dtypes with no tracejit counterpart at all)
        warnings.warn(f"from_numpy: tracejit has no {arr.dtype} dtype, so the tensor is a copy (in {have.name}) that "
                      f"does not share memory with the array (unlike PyTorch, writes into one are not seen by the "
                      f"other); use tracejit.tensor(arr) to say that a copy is meant", UserWarning, stacklevel=2)
        return _from_array(arr.astype(have.np))
    t = _from_array(arr)
    if t._box.value is arr:  # (not while tracing: there the array is a constant of the graph)
        if arr.flags.writeable:
            share(t._box)
        else:
            warnings.warn("from_numpy: the given NumPy array is not writable; the tensor reads it, and in-place "
                          "operations on the tensor leave the array unchanged (they replace the tensor's "
                          "storage)", UserWarning, stacklevel=2)
    return t


def size_arg(who, args, size=None):
    """The shape a factory was given: positionally (``zeros(2, 3)``, ``zeros((2, 3))``) or as ``size=``."""
    if size is not None:
        if args:
            raise TypeError(f"{who}() got multiple values for argument 'size'")
        return _sizes((size,)) if not isinstance(size, int) else (int(size),)
    if not args:
        raise TypeError(f'{who}() missing 1 required positional arguments: "size"')
    return _sizes(args)


def _out(who, t, out):
    return t if out is None else out._write_out(who, t)


def full(size, fill_value, *, out=None, dtype=None, layout=None, device=None, requires_grad=False,
         pin_memory=False):
    dt = D.as_dtype(dtype) if dtype is not None else D.scalar_dtype(fill_value)
    with no_grad():
        t = apply(OPS["full"], shape=tuple(_sizes((size,)) if not isinstance(size, int) else (size,)),
                  value=_py(fill_value, dt), dtype=dt)
    return _out("full", _placed(t, device, requires_grad), out)


def zeros(*sizes, size=None, out=None, dtype=None, layout=None, device=None, requires_grad=False, pin_memory=False):
    return _out("zeros", full(size_arg("zeros", sizes, size), 0.0, dtype=dtype or D.default_float,
                              requires_grad=requires_grad, device=device), out)


def ones(*sizes, size=None, out=None, dtype=None, layout=None, device=None, requires_grad=False, pin_memory=False):
    return _out("ones", full(size_arg("ones", sizes, size), 1.0, dtype=dtype or D.default_float,
                             requires_grad=requires_grad, device=device), out)


def empty(*sizes, size=None, out=None, dtype=None, layout=None, device=None, requires_grad=False, pin_memory=False,
          memory_format=None):
    """Uninitialized in PyTorch; zeros here (deterministic)."""
    return _out("empty", full(size_arg("empty", sizes, size), 0.0, dtype=dtype or D.default_float,
                              requires_grad=requires_grad, device=device), out)


def _like_device(t, device):
    return t._box.device if device is None else device


def zeros_like(t, dtype=None, requires_grad=False, device=None):
    return full(tuple(t.shape), 0, dtype=dtype or t.dtype, requires_grad=requires_grad,
                device=_like_device(t, device))


def ones_like(t, dtype=None, requires_grad=False, device=None):
    return full(tuple(t.shape), 1, dtype=dtype or t.dtype, requires_grad=requires_grad,
                device=_like_device(t, device))


empty_like = zeros_like


def full_like(t, fill_value, dtype=None, requires_grad=False, device=None):
    return full(tuple(t.shape), fill_value, dtype=dtype or t.dtype, requires_grad=requires_grad,
                device=_like_device(t, device))


def arange(start, end=None, step=1, dtype=None, requires_grad=False, device=None):
    if end is None:
        start, end = 0, start
    if dtype is None:
        is_float = any(isinstance(v, float) for v in (start, end, step))
        dtype = D.default_float if is_float else D.int64
    return _placed(_from_array(np.arange(start, end, step).astype(D.as_dtype(dtype).np)), device, requires_grad)


def linspace(start, end, steps, dtype=None, requires_grad=False, device=None):
    dt = D.as_dtype(dtype) if dtype is not None else D.default_float
    return _placed(_from_array(np.linspace(start, end, steps).astype(dt.np)), device, requires_grad)


def eye(n, m=None, *, out=None, dtype=None, layout=None, device=None, requires_grad=False, pin_memory=False):
    arr = np.eye(n, m, dtype=(dtype and D.as_dtype(dtype) or D.default_float).np)
    return _out("eye", _placed(_from_array(arr), device, requires_grad), out)
