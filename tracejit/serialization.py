"""Checkpoints: ``save``/``load`` of nested state dicts in the safetensors format, written atomically.

Tensors are safetensors tensors under flattened dotted keys (a model state dict file loads directly in
other frameworks); everything else is JSON in the file's metadata. A crash mid-save never leaves a
half-written checkpoint: the file is written beside the target, fsynced, then renamed over it.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import zlib
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _save_bytes
from safetensors.numpy import save_file

from . import dtypes as D
from .tensor import Tensor, _from_array

__all__ = ["save", "load"]

STRUCTURE_KEY = "tracejit.structure"
CHECKSUM_KEY = "tracejit.crc32"
VERSION_KEY = "tracejit.version"
_FORMAT_VERSION = "1"

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------- encoding


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
                    raise TypeError(f"tracejit.save: dict keys must be str, int, float, bool or None; got "
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
        raise TypeError(f"tracejit.save: cannot store an object of type {type(obj).__name__} at "
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
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"tracejit.save: arrays of dtype {arr.dtype} cannot be stored ({_where(path)})")
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


def save(obj: Any, f: PathLike | BinaryIO, *, metadata: dict[str, str] | None = None) -> None:
    """Write `obj` (a tensor, or dicts/lists/tuples of tensors, arrays, numbers, strings) to `f`.

    >>> tracejit.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3},
    ...               "ckpt.safetensors")
    >>> ckpt = tracejit.load("ckpt.safetensors")

    A path is written atomically: either the old file or the complete new one exists afterwards.
    `metadata` adds string entries to the safetensors header.
    """
    enc = _Encoder()
    structure = enc.encode(obj, [])
    meta = dict(metadata or {})
    # readers such as transformers check "format"; the tensors are plain little-endian row-major arrays
    meta.setdefault("format", "pt")
    meta[STRUCTURE_KEY] = json.dumps(structure, separators=(",", ":"))
    meta[CHECKSUM_KEY] = _checksum(enc.tensors)
    meta[VERSION_KEY] = _FORMAT_VERSION
    if hasattr(f, "write"):
        f.write(_save_bytes(enc.tensors, metadata=meta))
        return
    _atomic_save(enc.tensors, meta, os.fspath(f))


def _atomic_save(tensors: dict[str, np.ndarray], meta: dict[str, str], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # O_EXCL reserves a name no one else uses; mode 0o666 lets the umask decide, like open() would
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = os.stat(tmp).st_mode & 0o777
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, mode)  # safetensors recreates the file as 0o600; give it the umask's usual mode
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data must be on disk before the rename makes it the checkpoint
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


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


def load(f: PathLike | BinaryIO, map_location: Any = None, weights_only: bool | None = None,
         mmap: bool | None = None) -> Any:
    """Read a checkpoint written by `save` (or any safetensors file, as a flat name -> tensor dict).

    `map_location`, `weights_only` and `mmap` are accepted for ``torch.load`` compatibility: everything
    is loaded on the CPU, and nothing but tensors and JSON values can be in the file.
    """
    name = repr(getattr(f, "name", "<file object>")) if hasattr(f, "read") else repr(os.fspath(f))
    try:
        if hasattr(f, "read"):
            meta, arrays = _read_bytes(f.read())
        else:
            with safe_open(os.fspath(f), framework="numpy") as sf:
                meta = sf.metadata() or {}
                arrays = {k: sf.get_tensor(k) for k in sf.keys()}
    except (SafetensorError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise RuntimeError(f"tracejit.load: {name} is not a readable safetensors checkpoint (it is "
                           f"truncated, corrupted or in another format): {e}") from None
    expected = meta.get(CHECKSUM_KEY)
    if expected is not None and _checksum(arrays) != expected:
        raise RuntimeError(f"tracejit.load: {name} is corrupted: the tensor data does not match the checksum "
                           f"stored when it was saved")
    tensors = {k: _from_array(a) if isinstance(a, np.ndarray) else a for k, a in arrays.items()}
    structure = meta.get(STRUCTURE_KEY)
    if structure is None:  # a safetensors file from elsewhere: flat name -> tensor
        return tensors
    try:
        tree = json.loads(structure)
        return _decode(tree, tensors, arrays)
    except (ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"tracejit.load: {name} has a damaged structure record: {e}") from None


def _read_bytes(data: bytes) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    from safetensors.numpy import load as load_bytes

    if len(data) < 8:
        raise ValueError("file too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return header.get("__metadata__") or {}, load_bytes(data)

