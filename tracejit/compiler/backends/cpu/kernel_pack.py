"""Kernel packs: the CPU backend's own kernels as prebuilt machine code, so that a fresh install does not compile
them.

A fresh install's first compiled LeNet step spent 35-60 s compiling the package's GEMM, convolution, pooling,
index and math kernels (65 Numba compilations, ~34 CPU s in a fast phase of the VM; its own 4 generated kernels
took 1.7 s). Those kernels do not depend on the user's model: they are compiled once per argument kind (jit.py),
so their machine code can be built once per instruction set and shipped, as PyTorch and jaxlib ship theirs.

A pack is `packs/<target>.tar.gz` (Numba's cache files of what `python -m tracejit warmup` compiles, built for a
portable LLVM target) with `packs/<target>.json` beside it:

    x86-64-v3   AVX2 + FMA + BMI2 (Haswell and later, Zen 1-3): 8-float vectors, the 8x16 GEMM micro-kernel
    x86-64-v4   AVX-512 F/BW/CD/DQ/VL (Skylake-SP and later, Zen 4/5): 16-float vectors, the 8x32 micro-kernel

On a miss in Numba's cache for one of the package's functions (numba_cache.install's `miss_hooks`), the pack
that fits this process is merged into that function's cache entry (in the same place Numba keeps it:
NUMBA_CACHE_DIR, __pycache__ or the user-wide cache) and Numba loads it from there as if it had compiled it here.
A pack fits when:

- it was built from these exact sources: its fingerprint is numba_cache.kernel_fingerprint() (every .py file
  under compiler/backends, the same hash that stamps the package's own cache entries);
- by the same Python (major.minor), Numba and llvmlite versions, for the same target triple;
- every CPU feature it was compiled for is one this process's LLVM target has (`+avx512f` and the rest of the
  pack's list within Numba's host features, or NUMBA_CPU_FEATURES when set), and it agrees with `host_avx512()`:
  the kernels freeze their vector width (jit.host_avx512) into their code, so an AVX2 pack never runs where the
  AVX-512 shape is expected or the reverse.

Anything else (an edited kernel, another Numba, an ARM machine) and the pack is ignored: Numba compiles as
before. The widest fitting pack wins (v4 over v3 on an AVX-512 machine). TRACEJIT_KERNEL_PACK=0 turns packs off;
TRACEJIT_KERNEL_PACK=<folder> reads packs from that folder instead of the package's.

Entries are relabelled with this process's CPU name and features (Numba's index keys an entry on them) and their
data files named by a hash of their content, so processes merging concurrently write the same bytes under the same
name. `build()` makes a pack: `python -m tracejit warmup --pack x86-64-v4,x86-64-v3` (a fresh process per target,
with NUMBA_CPU_NAME/NUMBA_CPU_FEATURES set to it); tests/test_kernel_pack.py fails when the committed packs no
longer match the sources, naming that command.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import threading

import llvmlite
import numba

PACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "packs")
# the folder that holds the `tracejit` package (pack paths are relative to it)
PACKAGE_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 4))
ENV = "TRACEJIT_KERNEL_PACK"

_V3 = ("64bit", "cmov", "cx8", "fxsr", "mmx", "sse", "sse2", "cx16", "sahf", "popcnt", "sse3", "sse4.1", "sse4.2",
       "ssse3", "avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave")
TARGETS = {  # LLVM CPU name -> the features its code may use (all of them set, as NUMBA_CPU_FEATURES)
    "x86-64-v3": _V3,
    "x86-64-v4": _V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}
BUILD_COMMAND = "python -m tracejit warmup --pack x86-64-v4,x86-64-v3"

_lock = threading.Lock()
_chosen: tuple | None = None  # (Pack or None, why not), once per process
_merged: set = set()


def features_string(target: str) -> str:
    return ",".join("+" + f for f in TARGETS[target])


def _versions() -> dict:
    return {"python": f"{sys.implementation.name} {sys.version_info[0]}.{sys.version_info[1]}",
            "numba": numba.__version__, "llvmlite": llvmlite.__version__}


class Pack:
    """One pack: its manifest, and its files (read on first use)."""

    def __init__(self, json_path: str):
        self.json_path = json_path
        with open(json_path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.archive = json_path[: -len(".json")] + ".tar.gz"
        self._files: dict | None = None

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def magic(self) -> tuple:
        return tuple(self.manifest["magic"])

    def unfit(self, host_magic: tuple, avx512: bool, fingerprint: str) -> str | None:
        """Why this pack cannot serve this process (None: it can)."""
        m = self.manifest
        if m.get("format") != 1:
            return f"format {m.get('format')!r}"
        if m["fingerprint"] != fingerprint:
            return f"built from other sources (kernel fingerprint {m['fingerprint']}, these are {fingerprint})"
        mine = _versions()
        for k in mine:
            if m[k] != mine[k]:
                return f"built with {k} {m[k]}, this is {mine[k]}"
        if m["magic"][0] != host_magic[0]:
            return f"built for {m['magic'][0]}, this is {host_magic[0]}"
        have = {f[1:] for f in host_magic[2].split(",") if f.startswith("+")}
        missing = sorted(set(m["features"]) - have)
        if missing:
            return "needs CPU features this target lacks: " + ", ".join(missing)
        if bool(m["avx512"]) != avx512:
            return "built for %s vectors" % ("AVX-512" if m["avx512"] else "AVX2")
        return None

    def files(self) -> dict:
        if self._files is None:
            with open(self.archive, "rb") as f:
                raw = f.read()
            if hashlib.sha256(raw).hexdigest() != self.manifest["sha256"]:
                raise OSError(f"{self.archive}: checksum mismatch")
            files = {}
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        files[member.name] = tar.extractfile(member).read()
            self._files = files
        return self._files


def packs_dir() -> str | None:
    env = os.environ.get(ENV, "")
    if env == "0":
        return None
    return env if env and env != "1" else PACK_DIR


def available() -> list:
    d = packs_dir()
    if d is None or not os.path.isdir(d):
        return []
    out = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".json") and os.path.exists(os.path.join(d, name[: -len(".json")] + ".tar.gz")):
            try:
                out.append(Pack(os.path.join(d, name)))
            except (OSError, ValueError, KeyError):
                pass
    return out


def _host() -> tuple:
    from numba.core.registry import cpu_target

    from ..numba_cache import kernel_fingerprint
    from .jit import host_avx512

    return tuple(cpu_target.target_context.codegen().magic_tuple()), host_avx512(), kernel_fingerprint()


def choose() -> tuple:
    """(the pack this process uses or None, a sentence on each pack considered): decided once per process."""
    global _chosen
    if _chosen is None:
        with _lock:
            if _chosen is None:
                if packs_dir() is None:
                    _chosen = (None, [f"kernel packs off ({ENV}=0)"])
                else:
                    host = _host()
                    best, notes = None, []
                    for p in available():
                        why = p.unfit(*host)
                        notes.append(f"{p.target}: " + ("fits" if why is None else why))
                        wider = best is None or len(p.manifest["features"]) > len(best.manifest["features"])
                        if why is None and wider:
                            best = p
                    if not notes:
                        notes.append(f"no kernel packs in {packs_dir()}")
                    _chosen = (best, notes)
    return _chosen


def _rel_dir(py_file: str) -> str | None:
    d = os.path.dirname(os.path.abspath(py_file))
    rel = os.path.relpath(d, PACKAGE_ROOT)
    if rel.startswith(".."):
        return None
    return rel.replace(os.sep, "/")


def on_miss(cache, target_context) -> bool:
    """numba_cache's miss hook: merge the fitting pack's entries for `cache`'s function into its cache entry.
    True when entries were added (Numba should look again). Runs under Numba's compiler lock."""
    from ..numba_cache import KERNEL_DIR

    py_func = getattr(cache, "_py_func", None)
    cache_file = getattr(cache, "_cache_file", None)
    filename = getattr(getattr(py_func, "__code__", None), "co_filename", "")
    if cache_file is None or not os.path.abspath(filename).startswith(KERNEL_DIR):
        return False
    done = (cache_file._cache_path, cache_file._index_name)
    if done in _merged:
        return False
    _merged.add(done)
    pack, _ = choose()
    rel = _rel_dir(filename)
    if pack is None or rel is None:
        return False
    files = pack.files()
    raw = files.get(f"{rel}/{cache_file._index_name}")
    if raw is None:
        return False
    f = io.BytesIO(raw)
    if pickle.load(f) != cache_file._version:
        return False
    _stamp, overloads = pickle.loads(f.read())  # (a checksum trailer after the pickle is ignored)
    host_magic = tuple(target_context.codegen().magic_tuple())
    local = cache_file._load_index()
    added = False
    for key, data_name in overloads.items():
        sig, magic, code = key
        data = files.get(f"{rel}/{data_name}")
        if tuple(magic) != pack.magic or data is None or (sig, host_magic, code) in local:
            continue
        base = cache_file._index_name[: -len(".nbi")]
        name = f"{base}.pack-{hashlib.sha256(data).hexdigest()[:16]}.nbc"
        path = os.path.join(cache_file._cache_path, name)
        if not os.path.exists(path):
            os.makedirs(cache_file._cache_path, exist_ok=True)
            with cache_file._open_for_write(path) as out:
                out.write(data)
        local[(sig, host_magic, code)] = name
        added = True
    if added:
        cache_file._save_index(local)
    return added


def register() -> None:
    from .. import numba_cache

    if on_miss not in numba_cache.miss_hooks:
        numba_cache.miss_hooks.append(on_miss)


# -- building ---------------------------------------------------------------------------------------------------

_BUILD_CHILD = """
import json, sys
from tracejit.warmup import warmup
warmup(tuple(sys.argv[1].split(",")), verbose=False)
from numba.core.registry import cpu_target
from tracejit.compiler.backends.cpu.jit import host_avx512
print("TRACEJIT-PACK " + json.dumps({"magic": list(cpu_target.target_context.codegen().magic_tuple()),
                                     "avx512": host_avx512()}))
"""


def _cache_subdirs() -> dict:
    """Numba's NUMBA_CACHE_DIR subfolder name of each package folder -> that folder, relative to PACKAGE_ROOT."""
    from numba.core import caching

    out = {}
    pkg = os.path.join(PACKAGE_ROOT, "tracejit")
    for dirpath, dirs, names in os.walk(pkg):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(n.endswith(".py") for n in names):
            sub = caching.UserProvidedCacheLocator.get_suitable_cache_subpath(os.path.join(dirpath, "x.py"))
            out[sub] = os.path.relpath(dirpath, PACKAGE_ROOT).replace(os.sep, "/")
    return out


def build(target: str, out_dir: str = PACK_DIR, dtypes=("float32",), verbose: bool = True) -> str:
    """Compile the package's kernels for `target` (a TARGETS name) in a fresh process and write the pack (the
    .tar.gz and its .json) into `out_dir`; returns the .json's path."""
    from ..numba_cache import kernel_fingerprint

    if target not in TARGETS:
        raise ValueError(f"unknown kernel pack target {target!r} (one of {', '.join(TARGETS)})")
    staging = tempfile.mkdtemp(prefix="tracejit-pack-")
    env = dict(os.environ, NUMBA_CACHE_DIR=staging, NUMBA_CPU_NAME=target, NUMBA_CPU_FEATURES=features_string(target))
    env[ENV] = "0"
    env.pop("TRACEJIT_FAKE_ISA", None)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run([sys.executable, "-c", _BUILD_CHILD, ",".join(dtypes)], env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building the {target} kernel pack failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    info = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("TRACEJIT-PACK ")][-1].split(" ", 1)[1])
    subdirs = _cache_subdirs()
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        for sub in sorted(os.listdir(staging)):
            rel = subdirs.get(sub)
            if rel is None:  # the warmup steps' generated kernels (a temporary kernel cache), not the package's
                continue
            for name in sorted(os.listdir(os.path.join(staging, sub))):
                if not name.endswith((".nbi", ".nbc")):
                    continue
                with open(os.path.join(staging, sub, name), "rb") as f:
                    data = f.read()
                ti = tarfile.TarInfo(f"{rel}/{name}")
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                tar.addfile(ti, io.BytesIO(data))
                count += name.endswith(".nbi")
    raw = buf.getvalue()
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, target)
    with open(base + ".tar.gz", "wb") as f:
        f.write(raw)
    manifest = {"format": 1, "target": target, "features": list(TARGETS[target]), "magic": info["magic"],
                "avx512": info["avx512"], "fingerprint": kernel_fingerprint(), **_versions(), "dtypes": list(dtypes),
                "functions": count, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    if verbose:
        print(f"tracejit: kernel pack {target}: {count} functions, {len(raw) / 1e6:.2f} MB -> {base}.tar.gz")
    return base + ".json"
