"""Pickled checkpoints: whole objects saved by ``tracejit.save(model)``, and PyTorch's own ``.pt``/``.pth`` files.

Unpickling runs code named by the file, so (as PyTorch >= 2.6 does) a load is *weights only* unless the caller
passes ``weights_only=False``: a restricted unpickler resolves only the globals that rebuild tensors, dtypes and
containers (and those the user allowlisted with `add_safe_globals`), and refuses any other global by name before
anything is called. PyTorch's zip files (``archive/data.pkl`` + one raw file per storage) and its legacy stream
format (torch < 1.6, or ``_use_new_zipfile_serialization=False``) are read without PyTorch: its tensor-rebuilding
functions are replaced by ones that make tracejit tensors, with every view bounds-checked against its storage.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

from . import dtypes as D
from ._tensor import Tensor
from .devices import CPU, to_host
from .dispatch import Box, TensorBase, _from_array

__all__ = ["add_safe_globals", "clear_safe_globals", "get_safe_globals", "safe_globals", "PICKLE_MAGIC"]

PICKLE_MAGIC = b"tracejit.pickle\n"  # what precedes the pickle stream of a whole-object checkpoint
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001

# ----------------------------------------------------------------------------------------------- writing


def _rebuild_box(data: bytes, dtype: str, shape: tuple) -> Box:
    dt = D.from_name(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if not isinstance(data, (bytes, bytearray)) or len(data) != count * dt.itemsize:
        raise pickle.UnpicklingError(f"a pickled tensor of shape {tuple(shape)} and dtype {dtype} has "
                                     f"{len(data)} bytes of data")
    array = np.frombuffer(data, dt.np.newbyteorder("<")).astype(dt.np).reshape(shape)  # (a writable copy)
    return Box(array, D.TensorType(tuple(shape), dt))


def _rebuild_tensor(cls: type, box: Box, requires_grad: bool) -> Tensor:
    if not (isinstance(cls, type) and issubclass(cls, Tensor) and isinstance(box, Box)):
        raise pickle.UnpicklingError(f"a pickled tensor names {cls!r}, which is not a tensor class")
    t = TensorBase._from_box(box)
    if cls is not type(t):
        t.__class__ = cls  # Parameter and other subclasses: same layout, another class
    t.requires_grad = bool(requires_grad)
    return t


# (`_view`, a view's link to its base, is not saved: the pickled view holds its own values, and the base is pickled
# only where something else refers to it; pickling the link dragged tracejit._views.ViewLink into the file, which a
# weights-only load refuses -- pytorch/examples' word language model saves its Transformer, whose positional
# encoding buffer is a view)
_TENSOR_FIELDS = ("_box", "requires_grad", "grad_fn", "_grad", "_view")


class TensorPickler(pickle.Pickler):
    """Pickles tracejit tensors as their values (a leaf's requires_grad kept, its .grad and graph dropped, as
    torch.save does); tensors sharing storage stay shared. Everything else pickles as usual."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Tensor):
            if obj.requires_grad and obj.grad_fn is not None:
                raise RuntimeError("Cowardly refusing to serialize non-leaf tensor which requires_grad, since "
                                   "autograd does not support crossing process boundaries. If you just want to "
                                   "transfer the data, call detach() on the tensor before serializing (e.g., putting "
                                   "it on the queue).")
            obj._concrete("pickling a tensor")  # a traced tensor has no value to write
            state = {k: v for k, v in obj.__dict__.items() if k not in _TENSOR_FIELDS}
            return _rebuild_tensor, (type(obj), obj._box, obj.requires_grad), state or None
        if isinstance(obj, Box):
            value = obj.value
            if obj.device is not CPU and not isinstance(value, np.ndarray):
                from .compiler.ir import Value  # (a tensor on a device: the compiler is loaded)

                if not isinstance(value, Value):
                    value = to_host(value, obj.device)  # saved from the host; it loads on the CPU
            if not isinstance(value, np.ndarray):
                raise TypeError("pickling a tensor needs its value, which is not known while tracing")
            dt = obj.type.dtype
            raw = np.ascontiguousarray(value, dtype=dt.np.newbyteorder("<")).tobytes()
            return _rebuild_box, (raw, dt.name, tuple(value.shape))
        return NotImplemented


def dumps(obj: Any, protocol: int = 4) -> bytes:
    buf = io.BytesIO()
    TensorPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def write_pickle(f: BinaryIO, obj: Any, protocol: int = 4) -> None:
    f.write(PICKLE_MAGIC)
    TensorPickler(f, protocol=max(2, protocol)).dump(obj)


# ----------------------------------------------------------------------------------------------- allowlist

_user_safe_globals: list[Any] = []


def add_safe_globals(safe_globals: list[Callable | tuple[Callable, str]]) -> None:
    """Allow these classes/functions in weights-only loads (``torch.serialization.add_safe_globals``); an entry
    may be ``(obj, "module.name")`` when the file names it differently from ``obj.__module__``."""
    _user_safe_globals.extend(safe_globals)


def get_safe_globals() -> list[Any]:
    return list(_user_safe_globals)


def clear_safe_globals() -> None:
    _user_safe_globals.clear()


@contextlib.contextmanager
def safe_globals(safe_globals: list[Callable | tuple[Callable, str]]) -> Iterator[None]:
    """``with safe_globals([MyConfig]): tracejit.load(path)``: an allowlist for the block only."""
    before = list(_user_safe_globals)
    _user_safe_globals.extend(safe_globals)
    try:
        yield
    finally:
        _user_safe_globals[:] = before


def _user_global(module: str, name: str) -> Any:
    for entry in _user_safe_globals:
        obj, full = entry if isinstance(entry, tuple) else (entry, None)
        full = full or f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}"
        if full == f"{module}.{name}":
            return obj
    return None


# ----------------------------------------------------------------------------------------------- PyTorch's objects

# storage classes in PyTorch's pickles (GLOBAL torch.FloatStorage) -> little-endian element type
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bf16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "|i1", "ByteStorage": "|u1",
    "BoolStorage": "|b1", "UntypedStorage": "|u1",
}
_TORCH_DTYPES = {
    "float32": D.float32, "float": D.float32, "float64": D.float64, "double": D.float64, "float16": D.float16,
    "half": D.float16, "int64": D.int64, "long": D.int64, "bool": D.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        code = _STORAGE_DTYPES[name]
        self.bf16 = code == "bf16"
        self.dtype = np.dtype("<u2" if self.bf16 else code)


class _Storage:
    """One of the file's storages: a flat little-endian array (filled after unpickling in the legacy format)."""

    def __init__(self, kind: _StorageType, numel: int, key: str):
        self.kind = kind
        self.numel = numel
        self.key = key
        self.array: np.ndarray | None = None
        self.waiting: list[tuple[Box, int, tuple, tuple]] = []  # legacy: tensors to fill once read

    def set(self, raw: bytes, byteorder: str = "little") -> None:
        dt = self.kind.dtype if byteorder == "little" else self.kind.dtype.newbyteorder(">")
        if len(raw) != self.numel * dt.itemsize:
            raise pickle.UnpicklingError(f"storage {self.key} should hold {self.numel} elements of {dt.itemsize} "
                                         f"bytes, but has {len(raw)} bytes (the file is truncated or corrupted)")
        self.array = np.frombuffer(raw, dt).astype(dt.newbyteorder("="))
        for box, offset, size, stride in self.waiting:
            box.value[...] = self._view(offset, size, stride)
        self.waiting.clear()

    def _view(self, offset: int, size: tuple, stride: tuple) -> np.ndarray:
        arr = self.array
        values = np.lib.stride_tricks.as_strided(arr[offset:] if arr.size else arr, shape=size,
                                                 strides=[s * arr.itemsize for s in stride], writeable=False)
        values = np.array(values)  # a copy: the storage is not kept alive by the tensor
        if self.kind.bf16:
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return values


class _StorageView:
    """A legacy-format view into a root storage (``view_metadata``): the same storage from `offset` on."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        self.root, self.offset, self.numel = root, offset, numel


def _check_view(storage_numel: int, offset: int, size: tuple, stride: tuple, what: str) -> None:
    # as_strided reads wherever it is told: a view must lie inside its storage
    if (not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) or len(size) != len(stride)):
        raise pickle.UnpicklingError(f"{what}: a tensor view with offset {offset}, size {size} and stride {stride} "
                                     f"is malformed")
    if 0 in size:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_numel:
        raise pickle.UnpicklingError(f"{what}: a tensor view with offset {offset}, size {size} and stride {stride} "
                                     f"reaches element {last} of a storage of {storage_numel}")


class _TorchFile:
    """The tensor-rebuilding half of reading one PyTorch file: persistent ids -> storages, and PyTorch's
    _rebuild_* functions as functions that return tracejit tensors."""

    def __init__(self, name: str, read_record: Callable[[str, int], bytes] | None, byteorder: str = "little",
                 max_bytes: int | None = None):
        self.name = name
        # zip: (storage key, expected bytes) -> bytes; legacy: None (the storages follow the pickle)
        self.read_record = read_record
        self.byteorder = byteorder
        self.max_bytes = max_bytes  # legacy: what is left of the file bounds every storage
        self.storages: dict[str, _Storage] = {}
        self.bf16 = False

    # persistent ids: ("storage", storage_type, key, location, numel[, view_metadata])
    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"{self.name}: unsupported persistent id {pid!r}")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename == "module":  # legacy files record module sources this way; nothing to rebuild
            return pid[1]
        if typename != "storage" or len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"{self.name}: unsupported persistent id {pid[:2]!r} (only tensor storages "
                                         f"of the common dtypes can be loaded)")
        kind, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"{self.name}: storage {key} has a bad size {numel!r}")
        storage = self.storages.get(key)
        if storage is None:
            nbytes = numel * kind.dtype.itemsize
            if self.max_bytes is not None and nbytes > self.max_bytes:
                raise pickle.UnpicklingError(f"{self.name}: storage {key} claims {numel} elements, more than the file "
                                             f"holds")
            storage = self.storages[key] = _Storage(kind, numel, key)
            if self.read_record is not None:
                storage.set(self.read_record(key, nbytes), self.byteorder)
            self.bf16 |= kind.bf16
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy: (view_key, offset, view_numel)
            _, offset, view_numel = view
            _check_view(storage.numel, offset, (view_numel,), (1,), self.name)
            return _StorageView(storage, offset, view_numel)
        return storage

    def rebuild_tensor_v2(self, storage: Any, storage_offset: int, size: tuple, stride: tuple,
                          requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None) -> Tensor:
        root, base = (storage.root, storage.offset) if isinstance(storage, _StorageView) else (storage, 0)
        if not isinstance(root, _Storage):
            raise pickle.UnpicklingError(f"{self.name}: a tensor is rebuilt from {type(storage).__name__}, not a "
                                         f"storage")
        size, stride = tuple(size), tuple(stride)
        numel = storage.numel if isinstance(storage, _StorageView) else root.numel
        _check_view(numel, storage_offset, size, stride, self.name)
        offset = base + storage_offset
        if root.array is not None:
            t = _from_array(root._view(offset, size, stride))
        else:  # legacy format: the data follows the pickle; fill the tensor's buffer in place then
            np_dtype = np.dtype(np.float32) if root.kind.bf16 else root.kind.dtype
            t = _from_array(np.zeros(size, np_dtype))
            root.waiting.append((t._box, offset, size, stride))
        if requires_grad:
            t.requires_grad_(True)
        return t

    def rebuild_tensor(self, storage: Any, storage_offset: int, size: tuple, stride: tuple) -> Tensor:
        return self.rebuild_tensor_v2(storage, storage_offset, size, stride)

    def rebuild_parameter(self, data: Tensor, requires_grad: bool, backward_hooks: Any = None,
                          state: Any = None) -> Tensor:
        from .nn import Parameter

        return Parameter(data, requires_grad=bool(requires_grad))

    def rebuild_from_type_v2(self, func: Callable, new_type: Any, args: tuple, state: Any) -> Any:
        out = func(*args)
        if new_type is _TORCH_PARAMETER:
            out = self.rebuild_parameter(out, out.requires_grad)
        return out

    def globals(self) -> dict[tuple[str, str], Any]:
        table: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor"): self.rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self.rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self.rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): self.rebuild_from_type_v2,
            ("torch", "Tensor"): _TORCH_TENSOR,
            ("torch.nn.parameter", "Parameter"): _TORCH_PARAMETER,
            ("torch", "Size"): tuple,
            ("torch", "device"): _device,
        }
        table.update({("torch", n): _StorageType(n) for n in _STORAGE_DTYPES})
        table.update({("torch", n): d for n, d in _TORCH_DTYPES.items()})
        return table


_TORCH_TENSOR = object()  # torch.Tensor / Parameter as the `new_type` argument of _rebuild_from_type_v2
_TORCH_PARAMETER = object()


def _device(kind: Any, index: Any = None) -> Any:
    """torch.device in a checkpoint: tracejit.device where it exists, else its string."""
    import tracejit

    text = kind if index is None else f"{kind}:{index}"
    make = getattr(tracejit, "device", None)
    return make(text) if make is not None else text


_SAFE_BUILTINS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict, ("collections", "Counter"): collections.Counter,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray, ("builtins", "slice"): slice,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
    # tracejit's own whole-object pickles: tensors, their storage, dtypes
    ("tracejit._pickled", "_rebuild_tensor"): _rebuild_tensor, ("tracejit._pickled", "_rebuild_box"): _rebuild_box,
    ("tracejit.dtypes", "from_name"): D.from_name, ("tracejit._tensor", "Tensor"): Tensor,
}


def _codecs_encode(obj: str, encoding: str = "utf-8") -> bytes:
    # how protocol-2 pickles written by Python 3 spell bytes: only text encodings, nothing that decompresses
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode(encoding)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allowlisted globals; anything else is refused by name before it could be called."""

    def __init__(self, f: BinaryIO, name: str, extra: dict[tuple[str, str], Any], persistent_load: Callable | None,
                 weights_only: bool, **kwargs: Any):
        super().__init__(f, **kwargs)
        self.name = name
        self.extra = extra
        self.weights_only = weights_only
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in self.extra:
            return self.extra[key]
        if key in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[key]
        if key == ("_codecs", "encode"):
            return _codecs_encode
        if key == ("tracejit.nn.module", "Parameter"):
            from .nn import Parameter

            return Parameter
        user = _user_global(module, name)
        if user is not None:
            return user
        if not self.weights_only:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"Weights only load failed: {self.name} needs the global {module}.{name}, which a weights-only load does "
            f"not allow (it rebuilds only tensors, dtypes, numbers, strings and containers, and runs no other code "
            f"from the file).\n"
            f"  (1) If you trust the file's source, load it with weights_only=False: unpickling can then run arbitrary "
            f"code (whole modules saved with save(model) need this, as in PyTorch >= 2.6).\n"
            f"  (2) Or allowlist this global: tracejit.serialization.add_safe_globals([{name}]) or the "
            f"tracejit.serialization.safe_globals([{name}]) context manager.\n"
            f"  WeightsUnpickler error: Unsupported global: GLOBAL {module}.{name} was not an allowed global by "
            f"default.")


def _warn_bf16(name: str) -> None:
    warnings.warn(f"tracejit.load: {name} holds bfloat16 tensors; tracejit has no bfloat16 dtype, so they are loaded "
                  f"as float32 (exactly: every bfloat16 value is a float32 value)", UserWarning, stacklevel=4)


# ----------------------------------------------------------------------------------------------- reading


def load_tracejit_pickle(f: BinaryIO, name: str, weights_only: bool) -> Any:
    """A whole-object checkpoint written by `write_pickle` (the magic already consumed)."""
    return _RestrictedUnpickler(f, name, {}, None, weights_only).load()


def load_torch_zip(data: BinaryIO, name: str, weights_only: bool) -> Any:
    """A PyTorch zip checkpoint: ``<prefix>/data.pkl`` and one ``<prefix>/data/<key>`` record per storage."""
    try:
        zf = zipfile.ZipFile(data)
    except zipfile.BadZipFile as e:
        raise RuntimeError(f"tracejit.load: {name} is a damaged zip file: {e}") from None
    with zf:
        names = zf.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pickles:
            what = ("a TorchScript archive (torch.jit.save); it holds code, not just weights"
                    if any(n.endswith("constants.pkl") for n in names) else "not a PyTorch checkpoint (no data.pkl)")
            raise RuntimeError(f"tracejit.load: {name} is {what}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise RuntimeError(f"tracejit.load: {name} records an unknown byte order {byteorder!r}")

        def read_record(key: str, nbytes: int) -> bytes:
            record = f"{prefix}data/{key}"
            if record not in names:
                raise pickle.UnpicklingError(f"{name}: the storage record {record} is missing")
            size = zf.getinfo(record).file_size
            if size != nbytes:  # checked before reading: a record is never inflated beyond what the tensor needs
                raise pickle.UnpicklingError(f"{name}: storage {key} should hold {nbytes} bytes, but its record has "
                                             f"{size} bytes (the file is truncated or corrupted)")
            return zf.read(record)

        torch_file = _TorchFile(name, read_record, byteorder)
        with zf.open(pickles[0]) as pkl:
            out = _RestrictedUnpickler(io.BytesIO(pkl.read()), name, torch_file.globals(), torch_file.persistent_load,
                                       weights_only, encoding="utf-8").load()
    if torch_file.bf16:
        _warn_bf16(name)
    return out


def load_torch_legacy(f: BinaryIO, name: str, weights_only: bool, size: int) -> Any:
    """PyTorch's pre-1.6 stream: magic, protocol, system info, the object, the storage keys, then each storage as
    an int64 element count and its little-endian bytes. `size` is the file's length in bytes."""
    torch_file = _TorchFile(name, None, max_bytes=size)

    def unpickler(persistent: bool) -> pickle.Unpickler:
        return _RestrictedUnpickler(f, name, torch_file.globals(), torch_file.persistent_load if persistent else None,
                                    weights_only, encoding="utf-8")

    if unpickler(False).load() != TORCH_LEGACY_MAGIC:
        raise RuntimeError(f"tracejit.load: {name}: invalid magic number; corrupt file?")
    version = unpickler(False).load()
    if version != TORCH_LEGACY_PROTOCOL:
        raise RuntimeError(f"tracejit.load: {name}: invalid protocol version {version!r}")
    sys_info = unpickler(False).load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise RuntimeError(f"tracejit.load: {name} was written on a big-endian machine in the legacy format; "
                           f"re-save it with a current PyTorch")
    out = unpickler(True).load()
    keys = unpickler(False).load()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError(f"{name}: the storage key list is damaged")
    for key in keys:
        storage = torch_file.storages.get(str(key))
        if storage is None:
            raise pickle.UnpicklingError(f"{name}: storage {key} is listed but no tensor uses it")
        head = f.read(8)
        if len(head) != 8 or int.from_bytes(head, "little", signed=True) != storage.numel:
            raise pickle.UnpicklingError(f"{name}: storage {key} should hold {storage.numel} elements; the file "
                                         f"says otherwise or ends early")
        storage.set(f.read(storage.numel * storage.kind.dtype.itemsize))
    if any(s.array is None for s in torch_file.storages.values()):
        raise pickle.UnpicklingError(f"{name}: some storages have no data")
    if torch_file.bf16:
        _warn_bf16(name)
    return out


def is_torch_legacy(head: bytes) -> bool:
    """Whether `head` starts PyTorch's legacy stream: a protocol-2 pickle of the 10-byte magic number."""
    return head.startswith(b"\x80\x02\x8a\x0a" + TORCH_LEGACY_MAGIC.to_bytes(10, "little"))
