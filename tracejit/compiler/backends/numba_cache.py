"""Numba's on-disk cache, made fault tolerant for every `cache=True` function in the process (the package's
own kernels, the cfunc behind `tracejit_sgemm`, generated kernels, wherever NUMBA_CACHE_DIR puts them).

Numba reads its index (.nbi) and machine-code (.nbc) files lazily, on a function's first call, and a damaged
file raises there (`UnpicklingError`, `RuntimeError` from LLVM's bitcode reader) in every later process, for
good; damage inside the object code can even abort the process in LLVM's object loader (measured: 7 of 40 16-byte
damages to an .nbc did). `install()` wraps Numba's cache so that:

- files written here end with a checksum trailer (after the pickle, which Numba's unpickling ignores: plain
  Numba still reads them), and loading checks it before anything reaches pickle or LLVM; behind a sealed
  index a data file without its trailer (truncated) is damaged too;
- any failure while loading an entry is a miss: the entry's files are removed (best effort), a warning
  names them (the first such entry per directory), and Numba compiles afresh and saves;
- a failure while saving (full disk, read-only or foreign files) warns once and the process goes on;
- a function Numba cannot cache at all (no writable location) warns once and runs uncached.

An index without a trailer (written by plain Numba or an older tracejit) is read as Numba reads it, and its
data files are trusted as Numba trusts them.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings

import llvmlite
import numba

MAGIC = b"\0tracejit-sha256\0"
_TRAILER = len(MAGIC) + 8 + 32
MEMORY_PREFIX = "<tracejit-memory "  # co_filename of kernels compiled without a cache file (cache.py)

_installed = False
_warned: set = set()
# Called as hook(cache, target_context) when Numba's cache misses; a hook that returns True has added entries to the
# function's cache entry, and Numba looks again (the CPU backend's kernel packs, cpu/kernel_pack.py).
miss_hooks: list = []


class CacheWarning(RuntimeWarning):
    """A kernel cache entry or location could not be used; tracejit carried on without it."""


class DamagedCacheFile(Exception):
    """A Numba cache file failed its checksum (not an OSError: Numba would swallow that one silently)."""


def warn_once(key, message: str) -> None:
    """Warn (once per process for `key`), attributed to the user's line that led here."""
    if key in _warned:
        return
    _warned.add(key)
    level, f = 1, sys._getframe(0)
    while f is not None and _internal(f.f_code.co_filename):
        f, level = f.f_back, level + 1
    warnings.warn(message, CacheWarning, stacklevel=level)


_INTERNAL = tuple(os.path.dirname(os.path.abspath(m)) + os.sep for m in (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), numba.__file__, llvmlite.__file__))


def _internal(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, a kernel compiled in memory; not <string>/<stdin>
        return filename.startswith(("<frozen", MEMORY_PREFIX))
    return os.path.abspath(filename).startswith(_INTERNAL) or "importlib" in filename


def seal(payload: bytes) -> bytes:
    """`payload` followed by the checksum trailer."""
    return payload + MAGIC + len(payload).to_bytes(8, "little") + hashlib.sha256(payload).digest()


def check(content: bytes, path: str, strict: bool) -> bool:
    """Whether `content` ends with a trailer; raise DamagedCacheFile if its checksum does not match, or if it
    has none and `strict`."""
    if len(content) < _TRAILER or content[-_TRAILER:-40] != MAGIC:
        if strict:
            raise DamagedCacheFile(f"{path}: no checksum (truncated?)")
        return False
    n = int.from_bytes(content[-40:-32], "little")
    if n > len(content) - _TRAILER or hashlib.sha256(content[-_TRAILER - n:-_TRAILER]).digest() != content[-32:]:
        raise DamagedCacheFile(f"{path}: checksum mismatch")
    return True


def _check_path(path: str, strict: bool) -> tuple[bool, bytes | None]:
    """(whether the file is sealed, the sha256 of its payload: the identity of what Numba reads from it)."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except FileNotFoundError:
        return False, None  # Numba's own handling: no index yet, or a data file removed under it
    if check(content, path, strict):
        return True, content[-32:]
    return False, hashlib.sha256(content).digest()


def code_digest(fn) -> str | None:
    """The identity of the machine code a cached Numba function (dispatcher or cfunc) of one signature runs:
    the sha256 of the data file it was loaded from or saved to in this process (None when it has no cache
    file, or none was read or written). Equal digests: the same object code, compiled for the same CPU name and
    features (Numba's index keys its entries on them)."""
    cache_file = getattr(getattr(fn, "_cache", None), "_cache_file", None)
    digest = getattr(cache_file, "_tracejit_digest", None)
    return digest.hex() if digest else None


def entry_files(cache_file) -> list[str]:
    """The index and data files of one function's cache entry."""
    base = cache_file._index_name[: -len(".nbi")]
    try:
        names = os.listdir(cache_file._cache_path)
    except OSError:
        return []
    return [os.path.join(cache_file._cache_path, n) for n in sorted(names)
            if n == cache_file._index_name or (n.startswith(base + ".") and n.endswith(".nbc"))]


def _discard(cache, error: Exception) -> None:
    cache_file = cache._cache_file
    files = entry_files(cache_file)
    left = []
    for p in files:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError:
            left.append(p)
    msg = (f"tracejit: Numba's cache entry for {_name(cache)} in {cache_file._cache_path} could not be loaded "
           f"({type(error).__name__}: {str(error)[:200]}); compiling it afresh (further damaged entries in this "
           "directory are rebuilt without a warning).")
    if left:
        msg += f" Could not remove {', '.join(left)}: remove it, or set NUMBA_CACHE_DIR to a private directory."
    elif files:
        msg += f" Removed {', '.join(os.path.basename(p) for p in files)}."
    warn_once(("load", cache_file._cache_path), msg)  # once per directory: a broken restore damages many


def _after_hooks(cache, sig, target_context, orig_load):
    for hook in miss_hooks:
        try:
            again = hook(cache, target_context)
        except Exception as e:  # a broken pack must not break compiling: Numba compiles as without it
            warn_once(("hook", hook), f"tracejit: {getattr(hook, '__module__', '')}.{hook.__name__} failed for "
                      f"{_name(cache)} ({type(e).__name__}: {str(e)[:200]}); compiling instead.")
            continue
        if again:
            try:
                cres = orig_load(cache, sig, target_context)
            except Exception as e:
                _discard(cache, e)
                return None
            if cres is not None:
                return cres
    return None


def _name(cache) -> str:
    fn = getattr(cache, "_py_func", None)
    return getattr(fn, "__qualname__", None) or getattr(cache, "_name", "?")


def install() -> None:
    """Wrap Numba's cache (idempotent). Must run before any cached function is compiled or loaded."""
    global _installed
    if _installed:
        return
    from numba.core import caching, ccallback, dispatcher

    IDC, Cache = caching.IndexDataCacheFile, caching.Cache
    orig_dump, orig_load_index, orig_load_data = IDC._dump, IDC._load_index, IDC._load_data
    orig_load, orig_save = Cache.load_overload, Cache.save_overload

    def _dump(self, obj):
        payload = orig_dump(self, obj)
        # (the data file is dumped last by IndexDataCacheFile.save, after the index: its digest stays)
        self._tracejit_digest = hashlib.sha256(payload).digest()
        return seal(payload)

    def _load_index(self):
        self._tracejit_sealed, _ = _check_path(self._index_path, strict=False)
        return orig_load_index(self)

    def _load_data(self, name):
        # _load_index ran just before (IndexDataCacheFile.load, under Numba's compiler lock)
        _, digest = _check_path(self._data_path(name), strict=getattr(self, "_tracejit_sealed", False))
        data = orig_load_data(self, name)
        self._tracejit_digest = digest
        return data

    def load_overload(self, sig, target_context):
        cache_file = getattr(self, "_cache_file", None)
        target_context.refresh()  # as Numba does first; its errors are not the cache's (and propagate)
        try:
            cres = orig_load(self, sig, target_context)
        except Exception as e:  # damaged, unreadable or foreign: a miss (KeyboardInterrupt etc. still raise)
            if cache_file is None:
                raise
            _discard(self, e)
            cres = None
        if cres is None and cache_file is not None and miss_hooks:  # (after a discard too: a kernel pack restores it)
            cres = _after_hooks(self, sig, target_context, orig_load)
        # Numba gives a library it loads from a cache an empty set of reload hooks (they ran, from the entry);
        # a function compiled later that links this one inherits its library's hooks, so without this it would
        # be cached without them (blas.calls._NeedSgemm: the symbol its code names would be missing when it loads)
        library = getattr(cres, "library", None)
        if library is not None and getattr(cres, "reload_init", None):
            library._reload_init.update(cres.reload_init)
        return cres

    def save_overload(self, sig, data):
        try:
            orig_save(self, sig, data)
        except Exception as e:
            path = getattr(self, "_cache_path", "?")
            warn_once(("save", path), f"tracejit: Numba could not save compiled code for {_name(self)} "
                      f"in {path} ({type(e).__name__}: {str(e)[:200]}); it is compiled again in each new process. "
                      "Free disk space or fix the directory's permissions, or set NUMBA_CACHE_DIR to a writable "
                      "directory.")

    def guard_enable(orig):
        def enable_caching(self):
            try:
                orig(self)
            except Exception as e:  # no writable location for this function: run it uncached
                self._cache = caching.NullCache()
                py_func = getattr(self, "py_func", None) or getattr(self, "_pyfunc", None)
                filename = getattr(getattr(py_func, "__code__", None), "co_filename", "")
                if not filename.startswith(MEMORY_PREFIX):  # cache.py has warned for those
                    warn_once(("enable", os.path.dirname(filename)),
                              f"tracejit: Numba cannot cache compiled code for functions in {filename} "
                              f"({type(e).__name__}: {str(e)[:200]}); they are compiled again in each new "
                              "process. Set NUMBA_CACHE_DIR to a writable directory.")
        enable_caching.__wrapped__ = orig
        return enable_caching

    orig_init = Cache.__init__

    def __init__(self, py_func):
        orig_init(self, py_func)
        cache_file = getattr(self, "_cache_file", None)
        filename = getattr(getattr(py_func, "__code__", None), "co_filename", "")
        if cache_file is not None and os.path.abspath(filename).startswith(KERNEL_DIR):
            cache_file._source_stamp = (cache_file._source_stamp, kernel_fingerprint())

    IDC._dump, IDC._load_index, IDC._load_data = _dump, _load_index, _load_data
    _install_lazy_linking()
    Cache.__init__ = __init__
    Cache.load_overload, Cache.save_overload = load_overload, save_overload
    dispatcher.Dispatcher.enable_caching = guard_enable(dispatcher.Dispatcher.enable_caching)
    ccallback.CFunc.enable_caching = guard_enable(ccallback.CFunc.enable_caching)
    _installed = True


# A cached function's data file holds its object code and the optimized LLVM module of everything compiled into
# it (the "shared" bitcode, for linking into functions compiled later that call it). Numba parses that module when
# it loads the function, only to list the symbols it defines: in a warm LeNet first call, 7 functions, 0.65-0.8 MB
# of bitcode, ~60% of their load time. Here a load takes the list from a record (cache.read_record, keyed by the
# bitcode's hash; written when the function is saved, or else the first time it is parsed) and parses the module
# only if a later compile links the function into another one. TRACEJIT_LAZY_LINKING=0: Numba's own loading.
LAZY_LINKING = os.environ.get("TRACEJIT_LAZY_LINKING", "1") != "0"


def _symbols_record(bitcode: bytes) -> str:
    return f"symbols defined by the shared LLVM module {hashlib.sha256(bitcode).hexdigest()}"


def defined_symbols(module) -> set:
    """What Numba's JIT engine records for a module (JitEngine._load_defined_symbols)."""
    return {gv.name for gsets in (module.functions, module.global_variables) for gv in gsets
            if not gv.is_declaration}


def _install_lazy_linking() -> None:
    from llvmlite import binding as ll
    from numba.core import codegen

    lib_cls = codegen.CPUCodeLibrary
    orig_unserialize = lib_cls._unserialize.__func__
    orig_for_linking = lib_cls._get_module_for_linking

    def _unserialize(cls, codegen_, state):
        name, kind, data = state
        if kind != "object" or not LAZY_LINKING:
            return orig_unserialize(cls, codegen_, state)
        from . import cache

        object_code, shared_bitcode = data
        what = _symbols_record(shared_bitcode)
        body = cache.read_record(what)
        if body is None:  # first load of this machine code: as Numba loads it, and keep the list
            self = orig_unserialize(cls, codegen_, state)
            cache.write_record(what, "\n".join(sorted(defined_symbols(self._shared_module))))
            return self
        self = codegen_.create_library(name)
        assert isinstance(self, cls)
        self.enable_object_caching()
        self._set_compiled_object(object_code)
        self._tracejit_shared_bitcode = shared_bitcode  # parsed by _get_module_for_linking, if ever
        self._finalize_final_module()
        codegen_._engine._defined_symbols |= set(body.split("\n")) - {""}
        return self

    orig_serialize = lib_cls.serialize_using_object_code

    def serialize_using_object_code(self):
        # saving what was compiled: the symbols record too, so that even the first load skips the parse
        state = orig_serialize(self)
        if LAZY_LINKING:
            from . import cache

            cache.write_record(_symbols_record(state[2][1]),
                               "\n".join(sorted(defined_symbols(self._get_module_for_linking()))))
        return state

    def _get_module_for_linking(self):
        bitcode = self.__dict__.pop("_tracejit_shared_bitcode", None)
        if bitcode is not None and self._shared_module is None:
            self._shared_module = ll.parse_bitcode(bitcode)
        return orig_for_linking(self)

    lib_cls._unserialize = classmethod(_unserialize)
    lib_cls.serialize_using_object_code = serialize_using_object_code
    lib_cls._get_module_for_linking = _get_module_for_linking


# The package's own kernels call helpers defined in other modules, which Numba compiles into them; Numba's cache
# stamps an entry with its defining file alone (mtime, size), so after an edit of a callee's file -- a `git pull`
# into an editable install -- a caller's entry would run on with the old callee's code (measured: an edited
# window/conv.py left im2col.py's cached conv kernel stale). Entries of functions defined under this folder are
# stamped with a hash of every source file in it as well: any change there recompiles them all.
KERNEL_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_kernel_fingerprint: str | None = None


def kernel_fingerprint() -> str:
    """Hash of the .py files under compiler/backends (computed once per process, ~2 ms)."""
    global _kernel_fingerprint
    if _kernel_fingerprint is None:
        from .cache import fingerprint

        _kernel_fingerprint = fingerprint(KERNEL_DIR.rstrip(os.sep))
    return _kernel_fingerprint


def locate(py_file: str) -> str | None:
    """The directory where Numba keeps machine code for functions defined in `py_file` (its locators' order:
    NUMBA_CACHE_DIR, the file's __pycache__, the user-wide cache), or None if none is writable. Creates
    nothing."""
    from numba.core import caching, config

    class _Fn:
        class __code__:  # noqa: N801 (the attribute Numba's locators read)
            co_firstlineno = 1

    classes = [caching.UserProvidedCacheLocator] if config.CACHE_DIR else []
    classes += [caching.InTreeCacheLocator, caching.UserWideCacheLocator]
    for cls in classes:
        path = cls(_Fn, py_file).get_cache_path()
        probe = path
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        if os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK):
            return path
    return None
