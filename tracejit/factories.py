"""Tensor factories: `tensor`, `as_tensor`, `from_numpy`, `zeros`, `ones`, `full`, `empty`, `*_like`, `arange`,
`linspace`, `eye`. They make tensors through dispatch (`_from_array`, `apply`) and never import the Tensor API.

Every factory takes `device=` (a device, a string such as "cuda:0", or None for the default device, see
`tracejit.set_default_device`); `*_like` default to their argument's device. Values are made on the host and
moved there.
"""

from __future__ import annotations

import numpy as np

from . import devices as _devices
from . import dtypes as D
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
        arr = arr.astype(D.as_dtype(dtype).np)
    elif arr.dtype.kind == "f" and not (isinstance(data, np.ndarray) and arr.dtype in (np.float64, np.float16)):
        arr = arr.astype(np.float32)  # Python floats default to float32; float64/float16 arrays keep theirs
    return _placed(_from_array(np.array(arr)), device, requires_grad)


def as_tensor(data, dtype=None, device=None):
    if isinstance(data, Tensor):
        dev = None if device is None else storage_device(device)
        if (dtype is None or data.dtype is D.as_dtype(dtype)) and (dev is None or dev is data._box.device):
            return data
        return data.to(device=dev, dtype=dtype)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(arr):
    """Wrap a NumPy array (float64 stays float64, as in PyTorch)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"from_numpy expects an np.ndarray, got {type(arr).__name__}")
    return _from_array(arr)


def full(size, fill_value, dtype=None, requires_grad=False, device=None):
    dt = D.as_dtype(dtype) if dtype is not None else D.scalar_dtype(fill_value)
    with no_grad():
        t = apply(OPS["full"], shape=tuple(_sizes((size,)) if not isinstance(size, int) else (size,)),
                  value=_py(fill_value, dt), dtype=dt)
    return _placed(t, device, requires_grad)


def zeros(*size, dtype=None, requires_grad=False, device=None):
    return full(_sizes(size), 0.0, dtype=dtype or D.default_float, requires_grad=requires_grad, device=device)


def ones(*size, dtype=None, requires_grad=False, device=None):
    return full(_sizes(size), 1.0, dtype=dtype or D.default_float, requires_grad=requires_grad, device=device)


empty = zeros


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


def eye(n, m=None, dtype=None, device=None, requires_grad=False):
    arr = np.eye(n, m, dtype=(dtype and D.as_dtype(dtype) or D.default_float).np)
    return _placed(_from_array(arr), device, requires_grad)
