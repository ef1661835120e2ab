"""Backends: one object per backend behind one protocol (`Backend`), registered by name.

    compile(graph, dumper=None, timings=None) -> Program     (compiler/runtime.py: run, profile, steps, ...)
    size_reuse() -> record | None        (kernels shared across batch sizes: compile(..., sizes=record))
    alloc(shape, dtype) -> buffer        to_device(ndarray) -> buffer        to_host(buffer) -> ndarray
    synchronize()                        describe() -> dict (what runs: device, threads, BLAS, ...)
    supports(pattern, attrs) -> True | reason   (fusion passes ask this instead of hard-coding one backend's limits)
    run_eager(op, buffers, attrs, out_type) -> buffer        (how an eager op runs on the backend's device)
    eager_kernels() -> {op name: kernel}   (the CPU's: faster eager ops on host arrays; start_eager_kernels)
    view(buffer, shape, np_dtype) -> buffer   (the runtime arena's typed views of its raw byte buffers)
    copied_out(value, arena buffers) -> value or a copy   (optional: device buffers, which NumPy cannot compare)

A backend's buffers live on its `device`. The CPU's are plain NumPy arrays; another backend's are whatever it
chooses, and nothing outside it looks inside them: tensors read values through `to_host` (tracejit/device.py).

`reference` interprets graphs with the op table's NumPy refs (the oracle); `cpu` renders Numba kernels (cpu/);
`cuda` renders numba.cuda kernels (cuda/; available with a GPU and numba-cuda, or under Numba's CUDA simulator).
This module imports no Numba: asking which backends exist stays cheap.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Callable

import numpy as np

from ... import devices as _device
from ...devices import CPU, DeviceUnavailableError


class BackendUnavailable(DeviceUnavailableError):
    """The backend is registered but cannot run in this process (the message says why)."""


class Backend:
    """The protocol every backend implements. Subclasses set `name` and `device`, and implement `compile`;
    the rest has host-memory defaults (buffers are NumPy arrays on the host)."""

    name: str = "?"
    device = CPU  # where this backend's buffers live

    # ---- compiling
    def compile(self, graph, dumper=None, timings=None):
        """An optimized Graph -> a Program (compiler/runtime.py) that runs it on this backend's buffers."""
        raise NotImplementedError

    # the passes may compute float sums in another order than eager code for this backend (combine_pieces)
    reorders_sums = True
    # the kernel.lower extensions its loop kernels render ("strided", "rows"): the passes form the groups that
    # need them (combine_pieces and views in fuse_elementwise: strided; fuse_rows: rows) only for such a backend
    loop_features: frozenset = frozenset()

    def size_reuse(self):
        """A new record of what one compiled function's variants may share across batch sizes, which the
        compiler then passes to every `compile(graph, ..., sizes=record)` of that function (setting
        `record.probe` to a callable giving the function's graph at another batch size, or None); None when the
        backend shares nothing (compile is then called without `sizes`). The CPU's: backends/sizes.SizeReuse."""
        return None

    def supports(self, pattern, attrs) -> bool | str:
        """True when this backend has a kernel for the fused-node `pattern` with `attrs`; else the reason it
        does not (the fusion pass then leaves the nodes unfused and records the reason in the dump)."""
        return True

    def compile_work(self, program, inputs) -> list:
        """What `program`'s first run on `inputs` would compile, as independent pieces [(cost, compile)] that
        compiler/background.compile_ahead shares out over forked processes (each `compile()` leaves its result
        where the program's run finds it: a disk cache); [] when there is nothing to share out (the default)."""
        return []

    # ---- memory
    def alloc(self, shape, dtype):
        """A new, uninitialized buffer of `shape` and tracejit `dtype` on this backend's device."""
        return np.empty(tuple(shape), dtype.np)

    def view(self, buffer, shape, np_dtype):
        """`buffer` (one of `alloc`'s uint8 buffers) seen from its start as an array of `shape` and NumPy
        `np_dtype`: how the runtime's arena hands out memory (host backends: a NumPy view)."""
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
        return buffer[:n].view(np_dtype).reshape(shape)

    def to_device(self, array: np.ndarray):
        """A buffer on this device holding `array`'s values (host backends may return `array` itself)."""
        return array

    def to_host(self, buffer) -> np.ndarray:
        """The values of `buffer` as a NumPy array (a copy for device backends; the array itself on the host)."""
        return buffer

    def synchronize(self) -> None:
        """Wait until all work queued on this device is done (profiling, timing). Host backends: nothing."""

    # ---- eager ops
    def run_eager(self, op, buffers: list, attrs: dict, out_type):
        """Run `op` on `buffers` (on this device) eagerly; returns a new buffer (never one of the inputs'
        storage: in-place updates would reach it). Default: to_host -> op.ref -> to_device."""
        kernel = self.eager_kernels().get(op.name)
        r = kernel(buffers, attrs, out_type) if kernel is not None else None
        if r is None:
            r = op.ref(*[self.to_host(b) for b in buffers], **attrs)
        if not isinstance(r, np.ndarray) or r.dtype != out_type.dtype.np:
            r = np.asarray(r, dtype=out_type.dtype.np)
        return self.to_device(r)

    def eager_kernels(self) -> dict:
        """op name -> kernel(buffers, attrs, out_type) -> new buffer, or None where the kernel does not take
        the case (the op's `ref` runs): what this backend runs eagerly faster than the NumPy refs. Loaded, warmed
        up and checked when first asked (it may take a while: `start_eager_kernels` asks in a thread)."""
        return {}

    # ---- prebuilt kernels
    def prebuilt(self) -> str | None:
        """The name of the prebuilt kernel set this process uses for the backend's own kernels (None: none fits,
        they compile on first use)."""
        return None

    def build_prebuilt(self, targets, out_dir: str | None = None, dtypes=("float32",)) -> list:
        """Build prebuilt kernel sets for `targets` (backend-specific names) into `out_dir` (default: where the
        package keeps them); returns the files written."""
        raise NotImplementedError(f"the {self.name} backend has no prebuilt kernels")

    # ---- what runs
    def describe(self) -> dict:
        """What runs, as JSON-able data: "device" (str), "threads" (str or None), "lines" (human-readable
        facts, what `python -m tracejit info` prints), "warnings" (list of str); backends add their own keys."""
        return {"device": str(self.device), "threads": None, "lines": [], "warnings": []}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}>"


# name -> (factory, device it serves or None); factories are called once, on first use
_REGISTRY: dict[str, tuple[Callable[[], Backend], object]] = {}
_INSTANCES: dict[str, Backend] = {}
_UNAVAILABLE: dict[str, str] = {}


def register_backend(name: str, factory: Callable[[], Backend], device=None) -> None:
    """Register `factory() -> Backend` under `name`. With `device` ("fake", "cuda:0", a device type of its own is
    accepted in device strings from now on), tensors on that device keep their storage in this backend's buffers,
    and compiled functions whose tensors live there run on it. Registering a name again replaces it."""
    dev = None
    if device is not None:
        kind = str(device).split(":")[0]
        _device.add_device_type(kind)
        dev = _device.device(device)
        if dev.index is None:
            dev = _device.device(dev.type, 0)
    _REGISTRY[name] = (factory, dev)
    _INSTANCES.pop(name, None)
    _UNAVAILABLE.pop(name, None)
    _device._forget_backends()


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)
    _INSTANCES.pop(name, None)
    _UNAVAILABLE.pop(name, None)
    _device._forget_backends()


def get_backend(name: str) -> Backend:
    """The backend registered as `name` (made on first use); BackendUnavailable says why it cannot run here."""
    b = _INSTANCES.get(name)
    if b is not None:
        return b
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_REGISTRY)}")
    if name in _UNAVAILABLE:
        raise BackendUnavailable(_UNAVAILABLE[name])
    factory, _ = _REGISTRY[name]
    try:
        b = factory()
    except (ImportError, BackendUnavailable) as e:
        why = str(e) if isinstance(e, BackendUnavailable) else f"backend {name!r} is not available: {e}"
        _UNAVAILABLE[name] = why
        raise BackendUnavailable(why) from e
    _INSTANCES[name] = b
    return b


def available() -> list[str]:
    """Names of the registered backends that can run in this process."""
    out = []
    for name in _REGISTRY:
        try:
            get_backend(name)
            out.append(name)
        except BackendUnavailable:
            pass
    return out


def registered() -> list[str]:
    return list(_REGISTRY)


def backend_name_for_device(dev) -> str:
    """The name of the backend that compiled functions use for tensors on `dev` ("cpu" on the CPU)."""
    if dev is CPU:
        return "cpu"
    for name, (_, d) in _REGISTRY.items():
        if d is dev:
            return name
    kinds = [n for n, (_, d) in _REGISTRY.items() if d is not None and d.type == dev.type]
    if kinds:
        raise DeviceUnavailableError(f"no tracejit backend holds tensors on {dev} (backends for {dev.type}: "
                                     f"{', '.join(str(_REGISTRY[n][1]) for n in kinds)})")
    raise DeviceUnavailableError(f"tracejit has no backend for device type {dev.type!r}; use the CPU")


def backend_for_device(dev) -> Backend:
    """The backend holding tensors on `dev` (not the CPU); DeviceUnavailableError names the device and why."""
    name = backend_name_for_device(dev)
    try:
        return get_backend(name)
    except BackendUnavailable as e:
        if dev.type == "cuda":
            raise DeviceUnavailableError(f"Torch not compiled with CUDA enabled: {e}") from None
        raise DeviceUnavailableError(f"{dev}: {e}") from None


def device_type_available(kind: str) -> bool:
    """Whether tensors of device type `kind` can live in this process (a backend for it is registered and
    available)."""
    for name, (_, d) in _REGISTRY.items():
        if d is not None and d.type == kind:
            try:
                get_backend(name)
                return True
            except BackendUnavailable:
                pass
    return False


def device_count(kind: str) -> int:
    """How many devices of type `kind` have an available backend."""
    n = 0
    for name, (_, d) in _REGISTRY.items():
        if d is not None and d.type == kind:
            try:
                get_backend(name)
                n += 1
            except BackendUnavailable:
                pass
    return n


# ----------------------------------------------------------------------------------------------- eager kernels
ENV_EAGER = "TRACEJIT_EAGER_KERNELS"  # "background" (default), "sync" or "off"
EAGER_MODES = ("background", "sync", "off")
_eager_started = False
_eager_thread: threading.Thread | None = None
# set once a function is compiled in this process: from then on "background" starts no load of the eager kernels
# (a cold load compiles for ~25 CPU s, which would compete with the compile and the compiled steps for the cores;
# eager ops around compiled steps -- a first step creating optimizer state, an evaluation -- are few)
_compiling_process = False


def note_compiling() -> None:
    """A function was compiled in this process (compiler/api.py): see `_compiling_process`."""
    global _compiling_process
    _compiling_process = True


def eager_mode() -> str:
    """How eager ops on the CPU get the CPU backend's kernels (TRACEJIT_EAGER_KERNELS): "background" (the
    default: loaded in a thread the first time an op that has one runs, unless a function was compiled in this
    process before; NumPy until they are ready), "sync"
    (loaded then, the op waits) or "off" (NumPy refs throughout)."""
    mode = os.environ.get(ENV_EAGER, "background").strip().lower() or "background"
    mode = {"0": "off", "false": "off", "no": "off", "1": "sync", "true": "sync", "yes": "sync"}.get(mode, mode)
    if mode not in EAGER_MODES:
        warnings.warn(f"{ENV_EAGER}={mode!r} is not one of {', '.join(EAGER_MODES)}: using 'background'",
                      RuntimeWarning, stacklevel=3)
        return "background"
    return mode


def start_eager_kernels(install: Callable[[dict], None], mode: str | None = None) -> None:
    """Load the CPU backend's eager kernels and hand them to `install` (tracejit.dispatch's table), once per
    process: in a daemon thread ("background": the caller goes on with NumPy meanwhile), right here ("sync") or
    not at all ("off"). A failure (no Numba, a kernel that disagrees with its ref) warns once; NumPy stays."""
    global _eager_started, _eager_thread
    mode = mode or eager_mode()
    if _eager_started or mode == "off" or (mode == "background" and _compiling_process):
        return
    _eager_started = True

    def load():
        try:
            kernels = get_backend("cpu").eager_kernels()
        except Exception as e:  # noqa: BLE001 - whatever it was, eager ops keep running their NumPy refs
            warnings.warn(f"tracejit: the CPU backend's eager kernels are not available ({type(e).__name__}: "
                          f"{e}); eager ops run their NumPy references", RuntimeWarning, stacklevel=2)
            return
        install(kernels)

    if mode == "sync":
        load()
    else:
        _eager_thread = threading.Thread(target=load, name="tracejit-eager-kernels", daemon=True)
        _eager_thread.start()


def wait_eager_kernels(timeout: float | None = None) -> bool:
    """Wait until a background load of the eager kernels (start_eager_kernels) has ended, at most `timeout`
    seconds; False while it still runs. Benchmarks call it so that the timed steps run what later steps run."""
    t = _eager_thread
    if t is not None:
        t.join(timeout)
        return not t.is_alive()
    return True


def _module_factory(module: str, cls: str):
    def make():
        return getattr(importlib.import_module(module), cls)()
    return make


def _cuda_factory():
    # cuda/ imports numba.cuda only when made: asking which backends exist stays cheap. Where CUDA cannot run it
    # raises BackendUnavailable saying why (no numba-cuda, no driver, no GPU) and how to check.
    return _module_factory("tracejit.compiler.backends.cuda", "CudaBackend")()


register_backend("reference", _module_factory("tracejit.compiler.backends.reference", "ReferenceBackend"))
register_backend("cpu", _module_factory("tracejit.compiler.backends.cpu", "CpuBackend"))
register_backend("cuda", _cuda_factory, device="cuda:0")
