"""Devices: where a tensor's storage lives (`tracejit.device("cpu")`, `device("cuda:0")`), PyTorch-style.

A CPU tensor's Box holds a plain NumPy array (nothing wraps it: the CPU path costs nothing extra). A tensor on any
other device holds a buffer of that device's backend (compiler/backends: `to_device`, `to_host`, `run_eager`);
this module finds the backend for a device, lazily, and moves values between devices. Only the backend knows
what its buffers are.

Device objects are interned: `device("cuda", 0) is device("cuda:0")`, so equality and hashing are identity and
a Box's device can be compared with `is`. As in PyTorch, `device("cuda")` (no index) differs from
`device("cuda:0")`, and a tensor's device always has an index except on the CPU.
"""

from __future__ import annotations

import re

# PyTorch's device types (torch.device("foo") names them in its error); backends registered by name add theirs
_PYTORCH_TYPES = ("cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve", "fpga", "maia",
                  "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone")
_types: list[str] = list(_PYTORCH_TYPES)
_SPEC = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)(?::(.*))?\Z")


class DeviceUnavailableError(RuntimeError, AssertionError):
    """A device this process cannot use (no backend for it, or the backend is not available here). An
    AssertionError too, as PyTorch's "Torch not compiled with CUDA enabled"."""


class device:
    """A device: ``device("cpu")``, ``device("cuda:0")``, ``device("cuda", 1)``, ``device(other_device)``.

    >>> d = tracejit.device("cuda:1")
    >>> d.type, d.index, str(d), d
    ('cuda', 1, 'cuda:1', device(type='cuda', index=1))

    Also a context manager that makes factories create tensors there, as ``torch.device``.
    """

    __slots__ = ("type", "index", "_prev", "__weakref__")
    _interned: dict = {}

    def __new__(cls, type, index=None):  # noqa: A002  (PyTorch's parameter name)
        if isinstance(type, device):
            if index is not None:
                raise TypeError("device(): an index cannot be given with a device object")
            return type
        if isinstance(type, int) and not isinstance(type, bool):
            return _accelerator_index(type)
        if not isinstance(type, str):
            raise TypeError(f"device() received an invalid combination of arguments - got ({_typename(type)})")
        kind, idx = _parse(type)
        if index is not None:
            if idx is not None:
                raise RuntimeError(f"type (string) must not include an index because index was passed explicitly: "
                                   f"{type}")
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"device(): index must be an int, got {_typename(index)}")
            if index < 0:
                raise RuntimeError("Device index must not be negative")
            idx = index
        key = (kind, idx)
        d = cls._interned.get(key)
        if d is None:
            d = object.__new__(cls)
            object.__setattr__(d, "type", kind)
            object.__setattr__(d, "index", idx)
            object.__setattr__(d, "_prev", [])
            d = cls._interned.setdefault(key, d)
        return d

    def __setattr__(self, name, value):
        raise AttributeError(f"device objects are immutable (cannot set {name!r})")

    def __repr__(self) -> str:
        return f"device(type={self.type!r})" if self.index is None else \
            f"device(type={self.type!r}, index={self.index})"

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __reduce__(self):
        return (device, (self.type, self.index))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    # `with tracejit.device("cuda"):` makes it the default device of factories inside the block
    def __enter__(self):
        self._prev.append(get_default_device())
        set_default_device(self)
        return self

    def __exit__(self, *exc):
        set_default_device(self._prev.pop())
        return False


def _typename(x) -> str:
    return type(x).__name__


def _parse(spec: str) -> tuple[str, int | None]:
    if not spec:
        raise RuntimeError("Device string must not be empty")
    m = _SPEC.match(spec)
    if m is None:
        raise RuntimeError(f"Invalid device string: {spec!r}")
    kind, idx = m.group(1), m.group(2)
    if kind not in _types:
        raise RuntimeError(f"Expected one of {', '.join(_types)} device type at start of device string: {kind}")
    if idx is None:
        return kind, None
    if not idx.isdigit() or (len(idx) > 1 and idx[0] == "0"):
        raise RuntimeError(f"Invalid device string: {spec!r}")
    return kind, int(idx)


def _accelerator_index(i: int) -> device:
    acc = current_accelerator()
    if acc is None:
        raise RuntimeError("Cannot access accelerator device when none is available.")
    return device(acc.type, i)


def add_device_type(kind: str) -> None:
    """Accept `kind` in device strings (a backend registered for a device type of its own, e.g. a test's)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", kind):
        raise ValueError(f"invalid device type name {kind!r}")
    if kind not in _types:
        _types.append(kind)


CPU = device("cpu")
_default = CPU


def set_default_device(d) -> None:
    """Factories (zeros, ones, tensor, rand, ...) create tensors on `d` when not given `device=` (None: the CPU)."""
    global _default
    _default = CPU if d is None else storage_device(d)


def get_default_device() -> device:
    return _default


def storage_device(d) -> device:
    """The device a tensor's storage lives on for `d` (a device, a string like "cuda:0", an int or None for
    the default): the CPU whatever its index, other types with an index (0 when none is given). Raises
    DeviceUnavailableError when no backend of this process can hold tensors there."""
    if d is None:
        return _default
    if d is CPU:
        return CPU
    dev = d if isinstance(d, device) else device(d)
    if dev.type == "cpu":
        return CPU
    if dev.index is None:
        dev = device(dev.type, 0)
    backend_for(dev)  # raises when there is none
    return dev


# ---------------------------------------------------------------------------------------- backends, transfers

_backends: dict = {}  # device -> Backend (found once)


def backend_for(dev: device):
    """The backend whose buffers live on `dev` (not the CPU: CPU storage is plain NumPy)."""
    b = _backends.get(dev)
    if b is None:
        from .compiler.backends import backend_for_device  # (the registry; loaded only for non-CPU devices)

        try:
            b = backend_for_device(dev)
        except DeviceUnavailableError:
            _raise_no_such_index(dev)
            raise
        _backends[dev] = b
    return b


def _raise_no_such_index(dev: device) -> None:
    """PyTorch's errors for an index past the devices of a type that has some: "Torch not compiled with CUDA
    enabled" (and why) where the type is not available at all, as for index 0; else the driver's "invalid device
    ordinal" (torch.AcceleratorError, a RuntimeError), naming the devices there are."""
    if dev.index in (None, 0):
        return
    from .compiler.backends import backend_for_device, backend_name_for_device, device_count

    n = device_count(dev.type)
    if n == 0:
        first = device(dev.type, 0)
        try:
            backend_name_for_device(first)
        except DeviceUnavailableError:
            return  # no backend serves index 0 either: the caller's error stands
        backend_for_device(first)  # raises why the type is not available here
        return
    if dev.index >= n:
        name = dev.type.upper() if dev.type in ("cuda", "xpu", "mps") else dev.type
        there = ", ".join(f"{dev.type}:{i}" for i in range(n))
        raise DeviceUnavailableError(f"{name} error: invalid device ordinal ({dev} was asked for; this process has "
                                     f"{n} {name} device{'s' if n > 1 else ''}: {there})")


def _forget_backends() -> None:
    """Called by the registry when a backend is (re)registered."""
    _backends.clear()


def to_host(value, dev: device):
    """The NumPy array holding `value` (storage on `dev`): the array itself on the CPU, a host copy elsewhere."""
    return value if dev is CPU else backend_for(dev).to_host(value)


def transfer(value, src: device, dst: device):
    """`value` (storage on `src`) as storage on `dst`: a copy unless the two are the same device."""
    if src is dst:
        return value
    host = value if src is CPU else backend_for(src).to_host(value)
    return host if dst is CPU else backend_for(dst).to_device(host)


def mixed_devices_message(a: device, b: device) -> str:
    """PyTorch's words for two devices meeting in one operation."""
    return f"Expected all tensors to be on the same device, but found at least two devices, {a} and {b}!"


# ---------------------------------------------------------------------------------------- accelerators


def _available(kind: str) -> bool:
    """Whether a backend for device type `kind` can run in this process (no import of Numba's CUDA unless a
    backend for the type is registered)."""
    from .compiler.backends import device_type_available

    return device_type_available(kind)


def current_accelerator():
    """The accelerator device type this process can use (`device("cuda")`), or None (torch.accelerator)."""
    for kind in ("cuda", "mps", "xpu"):
        if _available(kind):
            return device(kind)
    return None
