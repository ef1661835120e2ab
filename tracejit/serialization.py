"""Checkpoints: ``save``/``load`` of nested state dicts in the safetensors format, written atomically.

Objects the format cannot hold (a whole module: ``save(model, path)``) are pickled instead, and ``load`` reads
PyTorch's own ``.pt``/``.pth`` files without PyTorch; pickles load *weights only* unless ``weights_only=False``
is passed, as in PyTorch >= 2.6 (see `tracejit._pickled`).

Tensors are safetensors tensors under flattened dotted keys (a model state dict file loads directly in
other frameworks); everything else is JSON in the file's metadata. A crash mid-save never leaves a
half-written checkpoint: the file is written beside the target, fsynced, then renamed over it. The temporary
file's name says whose it is (`.ckpt.safetensors.tracejit-<host>-<pid>-<random>.tmp`), so the next save to
the same path removes those a killed process left behind.

The format is read and written here (it is an 8-byte header length, a JSON header, then the raw arrays):
writing streams each array to the file without copying it, and reading validates the header itself, so a
malformed file gets an error naming it, and BF16 tensors (NumPy has no bfloat16) load as float32.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import re
import secrets
import socket
import warnings
import zlib
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from . import _pickled
from . import dtypes as D
from ._pickled import add_safe_globals, clear_safe_globals, get_safe_globals, safe_globals
from ._tensor import Tensor
from .dispatch import _from_array

__all__ = ["save", "load", "add_safe_globals", "clear_safe_globals", "get_safe_globals", "safe_globals",
           "dumps_tensors"]

STRUCTURE_KEY = "tracejit.structure"
CHECKSUM_KEY = "tracejit.crc32"
VERSION_KEY = "tracejit.version"
_FORMAT_VERSION = "1"

PathLike = str | os.PathLike

# safetensors dtype codes <-> NumPy (little-endian); BF16 has no NumPy dtype and is widened on load
_DTYPE_OF = {"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4",
             "U64": "<u8", "I64": "<i8", "F16": "<f2", "F32": "<f4", "F64": "<f8"}
_DTYPE_OF = {k: np.dtype(v) for k, v in _DTYPE_OF.items()}
_CODE_OF = {v: k for k, v in _DTYPE_OF.items()}
_MAX_HEADER = 100_000_000  # safetensors' own limit


# ----------------------------------------------------------------------------------------------- encoding


class _NotAWeightsTree(TypeError):
    """The object holds something the safetensors format cannot store (it is pickled instead)."""


class _Encoder:
    """Walks an object, moving arrays into `tensors` and returning a JSON-able description of the rest.

    JSON objects in the description are always tags ({"tensor": key}, {"dict": [[k, v], ...]},
    {"tuple": [...]}, ...), so int dict keys, tuples and dtypes survive the round trip.
    """

    def __init__(self):
        self.tensors: dict[str, np.ndarray] = {}
        self.memo: dict[int, str] = {}  # a tensor stored twice (tied weights) is written once

    def encode(self, obj: Any, path: list[str]) -> Any:
        if isinstance(obj, Tensor):
            node = {"tensor": self._store(obj, path, lambda: obj.detach()._concrete("tracejit.save"))}
            if obj.requires_grad:
                node["requires_grad"] = True
            return node
        if isinstance(obj, np.ndarray):
            return {"ndarray": self._store(obj, path, lambda: obj)}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, D.DType):
            return {"dtype": obj.name}
        if isinstance(obj, Mapping):
            items = []
            for k, v in obj.items():
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise _NotAWeightsTree(f"tracejit.save: dict keys must be str, int, float, bool or None; got "
                                    f"{type(k).__name__} at {_where(path)}")
                items.append([k, self.encode(v, path + [str(k)])])
            node = {"dict": items}
            if isinstance(obj, collections.OrderedDict):
                node["ordered"] = True
            return node
        if isinstance(obj, tuple):
            return {"tuple": [self.encode(v, path + [str(i)]) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, path + [str(i)]) for i, v in enumerate(obj)]
        raise _NotAWeightsTree(f"tracejit.save: cannot store an object of type {type(obj).__name__} at "
                        f"{_where(path)}; checkpoints hold tensors, NumPy arrays, numbers, strings, None, "
                        f"dtypes and dicts/lists/tuples of them")

    def _store(self, obj: Any, path: list[str], array) -> str:
        if id(obj) in self.memo:
            return self.memo[id(obj)]
        key = ".".join(path) or "tensor"
        base, n = key, 0
        while key in self.tensors:  # e.g. {"a.b": t1, "a": {"b": t2}}
            n += 1
            key = f"{base}#{n}"
        arr = np.asarray(array(), order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        if arr.dtype.newbyteorder("<") not in _CODE_OF:
            raise _NotAWeightsTree(f"tracejit.save: arrays of dtype {arr.dtype} cannot be stored ({_where(path)})")
        if arr.dtype.byteorder == ">":  # safetensors is little-endian
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        self.tensors[key] = arr
        self.memo[id(obj)] = key
        return key


def _where(path: list[str]) -> str:
    return ".".join(path) or "the top level"


def _decode(node: Any, tensors: dict[str, Tensor], arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if "tensor" in node:
        t = tensors[node["tensor"]]
        if node.get("requires_grad"):
            t.requires_grad_(True)
        return t
    if "ndarray" in node:
        return arrays[node["ndarray"]]
    if "dict" in node:
        out = collections.OrderedDict() if node.get("ordered") else {}
        for k, v in node["dict"]:
            out[k] = _decode(v, tensors, arrays)
        return out
    if "tuple" in node:
        return tuple(_decode(v, tensors, arrays) for v in node["tuple"])
    if "dtype" in node:
        return D.from_name(node["dtype"])
    raise ValueError(f"unknown node {sorted(node)}")


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    # safetensors has no checksum of its own: a flipped bit in the data section would load silently
    crc = 0
    for key in sorted(arrays):
        crc = zlib.crc32(key.encode(), crc)
        crc = zlib.crc32(np.asarray(arrays[key], order="C").reshape(-1).view(np.uint8), crc)
    return f"{crc:08x}"


# ----------------------------------------------------------------------------------------------- save


def save(obj: Any, f: PathLike | BinaryIO, pickle_module: Any = None, pickle_protocol: int = 2,
         _use_new_zipfile_serialization: bool = True, _disable_byteorder_record: bool = False, *,
         metadata: dict[str, str] | None = None) -> None:
    """Write `obj` to `f`: a tensor, or dicts/lists/tuples of tensors, arrays, numbers, strings, in the
    safetensors format; anything else (a whole model, an argparse Namespace, ...) as a pickle.

    >>> tracejit.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3}, "ckpt.pt")
    >>> ckpt = tracejit.load("ckpt.pt")
    >>> tracejit.save(model, "model.pt")                      # pickled: the class must be importable
    >>> model = tracejit.load("model.pt", weights_only=False)  # and loading it runs code from the file

    A path is written atomically: either the old file or the complete new one exists afterwards; temporary
    files that killed saves to the same path left behind are removed. `metadata` adds string entries to
    the safetensors header. The other arguments are accepted for ``torch.save`` compatibility.
    """
    enc = _Encoder()
    try:
        structure = enc.encode(obj, [])
    except _NotAWeightsTree:
        if metadata:
            raise TypeError("tracejit.save: metadata= needs a safetensors checkpoint (tensors, numbers, strings "
                            "and containers), but this object is pickled") from None
        _save_pickle(obj, f)
        return
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise TypeError(f"tracejit.save: metadata must map str to str, got {k!r}: {v!r}")
    # readers such as transformers check "format"; the tensors are plain little-endian row-major arrays
    meta.setdefault("format", "pt")
    meta[STRUCTURE_KEY] = json.dumps(structure, separators=(",", ":"))
    meta[CHECKSUM_KEY] = _checksum(enc.tensors)
    meta[VERSION_KEY] = _FORMAT_VERSION
    if hasattr(f, "write"):
        _write(f, enc.tensors, meta)
        return
    _atomic_write(os.fspath(f), lambda out: _write(out, enc.tensors, meta))


def _save_pickle(obj: Any, f: PathLike | BinaryIO) -> None:
    try:
        data = _pickled.PICKLE_MAGIC + _pickled.dumps(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"tracejit.save: {type(obj).__name__} is neither a tree of tensors (stored as safetensors) "
                        f"nor picklable: {e}") from None
    if hasattr(f, "write"):
        f.write(data)
    else:
        _atomic_write(os.fspath(f), lambda out: out.write(data))


def dumps_tensors(obj: Any) -> bytes:
    """`obj` pickled with tracejit tensors as their values (``pickle.loads`` rebuilds them); what DataLoader
    workers send."""
    return _pickled.dumps(obj)


def _write(f: BinaryIO, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    """The safetensors layout: header length (u64 LE), JSON header padded with spaces to 8 bytes, arrays in
    the header's order (widest items first, so every array is aligned to its item size)."""
    header: dict[str, Any] = {"__metadata__": meta}
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    offset = 0
    for k in order:
        a = tensors[k]
        header[k] = {"dtype": _CODE_OF[a.dtype.newbyteorder("<")], "shape": list(a.shape),
                     "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    f.write(len(text).to_bytes(8, "little"))
    f.write(text)
    for k in order:
        if tensors[k].nbytes:
            f.write(memoryview(tensors[k].reshape(-1).view(np.uint8)))  # no copy of the array


def _tmp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tracejit-"


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def _atomic_write(path: str, write: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    _remove_orphans(path)
    tmp = os.path.join(directory, f"{_tmp_prefix(path)}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # O_EXCL reserves a name no one else uses; mode 0o666 lets the umask decide, like open() would
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _remove_orphans(path: str) -> None:
    """Remove the temporary files of saves to `path` whose process is gone (it was killed mid-save).

    Only our names for this path count, and only those of this host whose pid no longer exists: a save in
    progress in another process (or another host sharing the directory) keeps its file."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(_tmp_prefix(path)) + r"(\w+)-(\d+)-[0-9a-f]+\.tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or m.group(1) != _HOST or _pid_alive(int(m.group(2))):
            continue
        try:
            os.remove(os.path.join(directory, name))
        except OSError:
            pass  # another save removed it first, or the directory is not ours to clean


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        # another thread of this process may be saving to the same path right now; on Windows,
        # os.kill(pid, 0) would send CTRL_C_EVENT rather than probe, so nothing is removed there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists (another user's), or cannot tell: keep the file
    return True


def _fsync_dir(directory: str) -> None:
    # makes the rename itself durable; not every platform can open a directory
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- load


class _Unreadable(ValueError):
    """The file is not a valid safetensors file (the message says what is wrong)."""


def load(f: PathLike | BinaryIO, map_location: Any = None, pickle_module: Any = None, *,
         weights_only: bool | None = None, mmap: bool | None = None, **pickle_load_args: Any) -> Any:
    """Read a checkpoint written by `save`, any safetensors file (as a flat name -> tensor dict), or a
    file written by ``torch.save`` (without PyTorch: its tensors become tracejit tensors).

    Pickled files (whole objects, PyTorch's files) load *weights only* by default, as in PyTorch >= 2.6:
    only tensors, dtypes, numbers, strings and containers are rebuilt, and any other global the file names
    is refused before it could run (`add_safe_globals` allowlists one). ``weights_only=False`` unpickles
    everything, which can run arbitrary code: only for files you trust. Everything loads on the CPU
    (`map_location` and `mmap` are accepted for compatibility). BF16 tensors load as float32 (exactly; with a
    warning), other integer types as int64.
    """
    name = repr(getattr(f, "name", "<file object>")) if hasattr(f, "read") else repr(os.fspath(f))
    weights_only = True if weights_only is None else bool(weights_only)
    if hasattr(f, "read"):
        data = f.read()
        return _load_bytes(io.BytesIO(data), len(data), name, weights_only)
    with open(os.fspath(f), "rb") as fh:
        return _load_bytes(fh, os.fstat(fh.fileno()).st_size, name, weights_only)


def _load_bytes(fh: BinaryIO, size: int, name: str, weights_only: bool) -> Any:
    head = fh.read(32)
    fh.seek(0)
    if head.startswith(_pickled.PICKLE_MAGIC):
        fh.seek(len(_pickled.PICKLE_MAGIC))
        return _unpickling(lambda: _pickled.load_tracejit_pickle(fh, name, weights_only), name)
    if head.startswith(b"PK\x03\x04"):
        return _unpickling(lambda: _pickled.load_torch_zip(fh, name, weights_only), name)
    if _pickled.is_torch_legacy(head):
        return _unpickling(lambda: _pickled.load_torch_legacy(fh, name, weights_only, size), name)
    return _load_safetensors(fh, size, name)


def _unpickling(read: Any, name: str) -> Any:
    try:
        return read()
    except pickle.UnpicklingError:
        raise
    except (EOFError, ValueError, KeyError, IndexError) as e:
        raise RuntimeError(f"tracejit.load: {name} is a damaged pickle checkpoint: {type(e).__name__}: {e}") from None


def _load_safetensors(fh: BinaryIO, size: int, name: str) -> Any:
    try:
        meta, arrays, bf16 = _read(fh, size)
    except _Unreadable as e:
        raise RuntimeError(f"tracejit.load: {name} is not a readable safetensors checkpoint, nor a PyTorch or "
                           f"tracejit pickle (it is truncated, corrupted or in another format): {e}") from None
    expected = meta.get(CHECKSUM_KEY)
    if expected is not None and _checksum(arrays) != expected:
        raise RuntimeError(f"tracejit.load: {name} is corrupted: the tensor data does not match the checksum "
                           f"stored when it was saved")
    if bf16:
        listed = ", ".join(repr(k) for k in bf16[:5]) + (f" and {len(bf16) - 5} more" if len(bf16) > 5 else "")
        warnings.warn(f"tracejit.load: {name} holds bfloat16 tensors ({listed}); tracejit has no bfloat16 "
                      f"dtype, so they are loaded as float32 (exactly: every bfloat16 value is a float32 value) "
                      f"and a later save writes them as float32", UserWarning, stacklevel=4)
        for k in bf16:
            arrays[k] = (arrays[k].astype(np.uint32) << 16).view(np.float32)
    tensors = {k: _from_array(a) for k, a in arrays.items()}
    structure = meta.get(STRUCTURE_KEY)
    if structure is None:  # a safetensors file from elsewhere: flat name -> tensor
        return tensors
    try:
        tree = json.loads(structure)
        return _decode(tree, tensors, arrays)
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"tracejit.load: {name} has a damaged structure record: {e}") from None


def _read(f: BinaryIO, size: int) -> tuple[dict[str, str], dict[str, np.ndarray], list[str]]:
    """(metadata, arrays, names of the BF16 arrays, still as raw uint16) of a safetensors file of `size`
    bytes, checked as strictly as the safetensors library checks it."""
    if size < 8:
        raise _Unreadable(f"the file is {size} bytes long, too short for a safetensors header")
    n = int.from_bytes(f.read(8), "little")
    if n > min(size - 8, _MAX_HEADER):
        raise _Unreadable(f"the header claims {n} bytes but the file has {size - 8} after the length field")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _Unreadable(f"the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _Unreadable(f"the header is a JSON {type(header).__name__}, not an object of tensor entries")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _Unreadable("the header's __metadata__ is not an object of strings")
    entries = []
    for key, e in header.items():
        if not (isinstance(e, dict) and isinstance(e.get("dtype"), str) and _int_list(e.get("shape"))
                and _int_list(e.get("data_offsets")) and len(e["data_offsets"]) == 2):
            raise _Unreadable(f"the header entry {key!r} is not a tensor description (dtype, shape, data_offsets)")
        code = e["dtype"]
        dt = np.dtype("<u2") if code == "BF16" else _DTYPE_OF.get(code)
        if dt is None:
            raise _Unreadable(f"tensor {key!r} has dtype {code}, which tracejit cannot load")
        begin, end = e["data_offsets"]
        count = math.prod(e["shape"])
        if end - begin != count * dt.itemsize:
            raise _Unreadable(f"tensor {key!r} of shape {e['shape']} and dtype {code} needs "
                              f"{count * dt.itemsize} bytes, but its data_offsets span {end - begin}")
        entries.append((begin, end, key, dt, tuple(e["shape"]), code))
    entries.sort()
    expected = 0
    for begin, end, key, *_ in entries:
        if begin != expected:
            raise _Unreadable(f"tensor {key!r} starts at byte {begin} of the data, expected {expected}")
        expected = end
    if 8 + n + expected != size:
        raise _Unreadable(f"the tensors need {8 + n + expected} bytes but the file has {size}")
    arrays, bf16 = {}, []
    for _begin, _end, key, dt, shape, code in entries:
        a = np.empty(shape, dt)
        if a.nbytes and f.readinto(memoryview(a.reshape(-1).view(np.uint8))) != a.nbytes:
            raise _Unreadable(f"the file ended inside tensor {key!r}")
        arrays[key] = a.astype(a.dtype.newbyteorder("=")) if not a.dtype.isnative else a
        if code == "BF16":
            bf16.append(key)
    return meta, arrays, bf16


def _int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
