"""The on-disk kernel caches: TRACEJIT_CACHE_DIR is honoured, a second load (and a second process) hits the
cache, and every fault is survived: a corrupted entry (the generated source, Numba's index or machine-code
files, wherever they live: beside the source, under NUMBA_CACHE_DIR, the package's own kernels' files) is
discarded and rebuilt with a warning; an unusable location (a file as the cache directory, a directory as an
entry, a read-only, full or another user's cache) warns once and compiles into a private temporary directory.

Tests run as root here, where chmod does not stop reads or writes: the permission cases also patch `open` /
`tempfile.mkstemp` in the cache modules to raise what the kernel raises for another user (PermissionError),
so the same code paths run under any uid; the chmod is kept so that on CI (non-root) both bite.
"""

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("TRACEJIT_CACHE_DIR", str(ROOT / ".tracejit_cache" / "tests"))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numba.core import caching  # noqa: E402

from tracejit.compiler.backends import cache, numba_cache  # noqa: E402
from tracejit.compiler.backends.numba_cache import CacheWarning  # noqa: E402

SOURCE = """import numpy as np
import numba

@numba.njit(cache=True)
def kernel(a, o):
    for i in range(a.shape[0]):
        o[i] = a[i] * np.float32({scale}) + np.float32(0.125)
"""


SCALES = (5.0, 7.0, 11.0, 13.0, 17.0, 19.0, 23.0)  # one source per test family


def source(scale=3.0) -> str:
    return SOURCE.format(scale=scale)


def call(fn, scale=3.0):
    a = np.arange(4, dtype=np.float32)
    o = np.empty(4, np.float32)
    fn(a, o)
    np.testing.assert_array_equal(o, a * np.float32(scale) + np.float32(0.125))


def forget(src):
    """Drop the imported module: the next load behaves like the first load in a new process."""
    sys.modules.pop(f"tracejit_kernel_{cache.key_of(src)}", None)


def entry(d: Path, src: str) -> Path:
    return d / f"k_{cache.key_of(src)}.py"


def _forget_modules_under(d: Path) -> None:
    for name, mod in list(sys.modules.items()):
        if name.startswith("tracejit_kernel_") and str(getattr(mod, "__file__", "")).startswith(str(d)):
            del sys.modules[name]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh TRACEJIT_CACHE_DIR and a fresh process state (no fallback directory yet, no warning given;
    temporary directories under tmp_path); the kernels imported are forgotten afterwards (even when the
    test failed), so the next test loads from its own directory."""
    d = tmp_path / "kernels"
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(d))
    # Numba's files beside the sources, as by default, even when the run sets NUMBA_CACHE_DIR (a forced-ISA run)
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(cache, "_fallback", [])
    monkeypatch.setattr(cache, "_unwritable", {})
    monkeypatch.setattr(numba_cache, "_warned", set())
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for scale in SCALES:
        forget(source(scale))
    yield d
    _forget_modules_under(tmp_path)
    for scale in SCALES:
        forget(source(scale))


def numba_files(d: Path, stem: str, suffix=(".nbi", ".nbc")) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith(stem + ".") and p.name.endswith(suffix)) \
        if d.is_dir() else []


def cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


def sealed(p: Path) -> bool:
    """The file ends with a valid checksum trailer (written through the hardened cache)."""
    try:
        numba_cache.check(p.read_bytes(), str(p), strict=True)
        return True
    except numba_cache.DamagedCacheFile:
        return False


def test_cache_dir_honours_the_environment_variable(cache_dir):
    assert cache.cache_dir() == str(cache_dir)
    assert cache_dir.is_dir()
    src = source(5.0)
    fn, hit = cache.load(src, "kernel")
    assert not hit
    path = entry(cache_dir, src)
    assert path.read_text() == cache.HEADER + src
    assert path.name in os.listdir(cache_dir) and set(os.listdir(cache_dir)) <= {path.name, "__pycache__"}
    call(fn, 5.0)
    # Numba's machine code is stored beside the source, in the same directory
    assert any(f.startswith(path.stem) and f.endswith(".nbi") for f in os.listdir(cache_dir / "__pycache__"))


def test_default_cache_dir_is_under_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACEJIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == str(tmp_path / "xdg" / "tracejit")


def test_key_covers_the_source_and_versions():
    import numba

    import tracejit

    assert cache.key_of(source(1.0)) != cache.key_of(source(2.0))
    assert cache.key_of(source(1.0)) == cache.key_of(source(1.0))
    assert tracejit.__version__ in cache.HEADER and numba.__version__ in cache.HEADER
    from tracejit.compiler.backends.cpu import render

    assert render.FINGERPRINT in render.PRELUDE  # the CPU backend's own files, recursively, in its source


def test_key_changes_when_a_backend_helper_changes(tmp_path):
    # generated kernels carry their helpers' code in Numba's cache: editing a helper, in any subfolder of the
    # backend, must miss the cache
    (tmp_path / "blas").mkdir()
    (tmp_path / "vecmath.py").write_text("def exp_f32(x):\n    return x\n")
    (tmp_path / "blas" / "gemm.py").write_text("def gemm():\n    pass\n")
    (tmp_path / "notes.txt").write_text("not a module")
    before = cache.fingerprint(str(tmp_path))
    (tmp_path / "notes.txt").write_text("still not a module")
    assert cache.fingerprint(str(tmp_path)) == before
    (tmp_path / "vecmath.py").write_text("def exp_f32(x):\n    return x + 0\n")
    after_top = cache.fingerprint(str(tmp_path))
    assert after_top != before
    (tmp_path / "blas" / "gemm.py").write_text("def gemm():\n    return 1\n")
    assert cache.fingerprint(str(tmp_path)) != after_top


def test_second_load_is_a_hit(cache_dir):
    src = source(7.0)
    fn1, hit1 = cache.load(src, "kernel")
    call(fn1, 7.0)
    fn2, hit2 = cache.load(src, "kernel")  # already imported
    assert (hit1, hit2) == (False, True) and fn2 is fn1
    forget(src)
    fn3, hit3 = cache.load(src, "kernel")  # read back from the file
    assert hit3
    call(fn3, 7.0)
    assert fn3.stats.cache_hits and not fn3.stats.cache_misses  # machine code from Numba's cache


CORRUPTIONS = {
    "garbage": lambda p: p.write_text("this is not python ]]]\n"),
    "truncated": lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2]),
    "empty": lambda p: p.write_text(""),
    "other valid python": lambda p: p.write_text("kernel = None\n"),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(3).bytes(300)),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupted_source_entry_is_discarded_and_rebuilt(cache_dir, how):
    src = source(11.0)
    fn, _ = cache.load(src, "kernel")
    call(fn, 11.0)
    path = entry(cache_dir, src)
    CORRUPTIONS[how](path)
    forget(src)
    fn, hit = cache.load(src, "kernel")
    assert not hit
    call(fn, 11.0)
    assert path.read_text() == cache.HEADER + src


def _random(p: Path) -> None:
    p.write_bytes(np.random.default_rng(1).bytes(max(64, p.stat().st_size)))


def _overwrite_middle(p: Path) -> None:
    # the damage LLVM's object loader may abort the process on (7 of 40 such damages to an .nbc did,
    # without the checksum): the pickle stays well-formed, the machine code inside it does not
    b = bytearray(p.read_bytes())
    m = len(b) // 2
    b[m:m + 16] = np.random.default_rng(2).bytes(16)
    p.write_bytes(bytes(b))


DAMAGE = {
    "random bytes": _random,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "16 bytes overwritten mid-file": _overwrite_middle,
}


def _load_fresh_without_warning(src, scale):
    """What the next process sees: the repaired entry loads from Numba's cache, silently."""
    forget(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        fn, _ = cache.load(src, "kernel")
        call(fn, scale)
    assert fn.stats.cache_hits and not fn.stats.cache_misses
    return fn


@pytest.mark.parametrize("suffix", [".nbi", ".nbc"])
@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_numba_files_beside_a_generated_kernel_are_rebuilt(cache_dir, how, suffix):
    # Numba's index/machine-code files beside a cached kernel (TRACEJIT_CACHE_DIR/__pycache__): a damaged
    # one must not make every later process fail on the kernel's first call
    src = source(13.0)
    fn, _ = cache.load(src, "kernel")
    call(fn, 13.0)
    pyc = cache_dir / "__pycache__"
    stem = entry(cache_dir, src).stem
    files = numba_files(pyc, stem, suffix)
    assert files and all(sealed(p) for p in files)
    for p in files:
        DAMAGE[how](p)
    forget(src)
    with pytest.warns(CacheWarning) as rec:
        fn, hit = cache.load(src, "kernel")
        call(fn, 13.0)
    assert hit and fn.stats.cache_misses  # the source entry was fine; the machine code was compiled afresh
    [msg] = cache_warnings(rec)
    assert "could not be loaded" in msg and str(pyc) in msg and "Removed" in msg
    assert numba_files(pyc, stem) and all(sealed(p) for p in numba_files(pyc, stem))
    _load_fresh_without_warning(src, 13.0)


def test_damaged_numba_files_under_numba_cache_dir_are_rebuilt(cache_dir, tmp_path, monkeypatch):
    # with NUMBA_CACHE_DIR set, Numba keeps a generated kernel's machine code there, not beside the source
    numba_dir = tmp_path / "numba"
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(numba_dir))
    src = source(17.0)
    fn, _ = cache.load(src, "kernel")
    call(fn, 17.0)
    stem = entry(cache_dir, src).stem
    [where] = [d for d in numba_dir.iterdir() if numba_files(d, stem)]
    assert where.name.startswith(cache_dir.name + "_") and not numba_files(cache_dir / "__pycache__", stem)
    assert where == Path(cache.numba_dirs()["generated"])  # what `python -m tracejit cache` reports
    for p, how in zip(numba_files(where, stem), ("random bytes", "truncated")):
        DAMAGE[how](p)
    forget(src)
    with pytest.warns(CacheWarning, match="could not be loaded") as rec:
        fn, _ = cache.load(src, "kernel")
        call(fn, 17.0)
    assert str(where) in cache_warnings(rec)[0]
    assert all(sealed(p) for p in numba_files(where, stem))
    _load_fresh_without_warning(src, 17.0)


def test_files_without_a_checksum_load_as_numba_loads_them(cache_dir):
    # written by plain Numba or an older tracejit: read as before (the trailer is the only difference)
    src = source(19.0)
    fn, _ = cache.load(src, "kernel")
    call(fn, 19.0)
    files = numba_files(cache_dir / "__pycache__", entry(cache_dir, src).stem)
    for p in files:
        p.write_bytes(p.read_bytes()[: -numba_cache._TRAILER])
    _load_fresh_without_warning(src, 19.0)


def test_plain_numba_reads_files_with_a_checksum():
    # the trailer follows the pickle's STOP opcode: Numba without tracejit still reads them
    import pickle

    blob = numba_cache.seal(pickle.dumps(("stamp", {"key": "data"})))
    assert pickle.loads(blob) == ("stamp", {"key": "data"})
    assert numba_cache.check(blob, "x", strict=True)
    with pytest.raises(numba_cache.DamagedCacheFile):
        numba_cache.check(blob[:10] + b"?" + blob[11:], "x", strict=False)
    with pytest.raises(numba_cache.DamagedCacheFile, match="no checksum"):
        numba_cache.check(blob[: len(blob) // 2], "x", strict=True)


def test_a_function_numba_cannot_cache_anywhere_runs_uncached(cache_dir, monkeypatch):
    # no writable NUMBA_CACHE_DIR, __pycache__ or user cache: Numba raises when the function is defined
    def refuse(self):
        raise PermissionError(errno.EACCES, "Permission denied", self.get_cache_path())

    monkeypatch.setattr(caching._CacheLocator, "ensure_cache_path", refuse)
    src = source(23.0)
    with pytest.warns(CacheWarning, match="cannot cache compiled code"):
        fn, _ = cache.load(src, "kernel")
    call(fn, 23.0)
    assert isinstance(fn._cache, caching.NullCache)


def test_a_failed_save_warns_once_and_goes_on(cache_dir, monkeypatch):
    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(caching.IndexDataCacheFile, "_open_for_write", full)
    with pytest.warns(CacheWarning, match="could not save compiled code") as rec:
        for scale in (5.0, 7.0):
            fn, _ = cache.load(source(scale), "kernel")
            call(fn, scale)
    assert len(cache_warnings(rec)) == 1  # once per directory, not per kernel


# ------------------------------------------------------------------------------------ unusable locations
def test_a_file_as_the_cache_directory_falls_back_to_a_private_directory(cache_dir):
    cache_dir.write_text("not a directory")
    with pytest.warns(CacheWarning) as rec:
        fn, hit = cache.load(source(5.0), "kernel")
        call(fn, 5.0)
        fn, _ = cache.load(source(7.0), "kernel")
        call(fn, 7.0)
    [msg] = cache_warnings(rec)  # once, saying why and what to do
    assert f"cannot write to {cache_dir}" in msg and "not a directory" in msg and "TRACEJIT_CACHE_DIR" in msg
    assert not hit and cache_dir.read_text() == "not a directory"
    private = Path(cache.cache_dir())
    assert private.parent == Path(tempfile.gettempdir()) and private.name.startswith("tracejit-cache-")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # private to this user
    assert entry(private, source(5.0)).exists() and entry(private, source(7.0)).exists()
    forget(source(5.0))
    fn, hit = cache.load(source(5.0), "kernel")  # read back from the private directory
    assert hit
    call(fn, 5.0)


def test_a_directory_in_place_of_an_entry_is_a_miss(cache_dir):
    src = source(5.0)
    cache_dir.mkdir()
    entry(cache_dir, src).mkdir()
    with pytest.warns(CacheWarning) as rec:
        fn, hit = cache.load(src, "kernel")
        call(fn, 5.0)
    assert not hit and entry(cache_dir, src).is_dir()  # not ours to delete
    assert any("IsADirectoryError" in m and str(entry(cache_dir, src)) in m for m in cache_warnings(rec))
    assert cache._fallback and entry(Path(cache._fallback[0]), src).is_file()
    # the directory itself stays in use for other entries
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        fn, _ = cache.load(source(7.0), "kernel")
    call(fn, 7.0)
    assert entry(cache_dir, source(7.0)).is_file()


def _refuse_writes_in(monkeypatch, d: Path, err: int):
    """`d` refuses new files as the kernel would (for root too): mkstemp there raises `err`."""
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and Path(dir) == d:
            raise OSError(err, os.strerror(err), os.path.join(dir, "tmp"))
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.fixture
def read_only(monkeypatch):
    """Make a directory read-only: chmod 555 (bites for non-root users, CI) plus the patched mkstemp
    (bites for root, here). Restored afterwards so that tmp_path can be removed."""
    made = []

    def make(d: Path, err: int = errno.EACCES):
        d.chmod(0o555)
        made.append(d)
        _refuse_writes_in(monkeypatch, d, err)

    yield make
    for d in made:
        d.chmod(0o755)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_an_unwritable_cache_directory_falls_back_once(cache_dir, read_only, err):
    # an empty read-only directory, a read-only file system, a full disk
    cache_dir.mkdir()
    read_only(cache_dir, err)
    with pytest.warns(CacheWarning) as rec:
        for scale in (5.0, 7.0):
            fn, hit = cache.load(source(scale), "kernel")
            call(fn, scale)
            assert not hit
    [msg] = cache_warnings(rec)
    assert f"cannot write to {cache_dir}" in msg and os.strerror(err) in msg and "private temporary" in msg
    assert list(cache_dir.iterdir()) == []
    assert entry(Path(cache._fallback[0]), source(7.0)).is_file()


def test_a_read_only_shared_cache_is_still_read(cache_dir, read_only):
    # a cache prepared by someone else and mounted read-only: its entries are hits, new kernels go elsewhere
    src = source(5.0)
    fn, _ = cache.load(src, "kernel")
    call(fn, 5.0)
    read_only(cache_dir)
    forget(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        fn, hit = cache.load(src, "kernel")
    assert hit
    call(fn, 5.0)
    with pytest.warns(CacheWarning, match="cannot write to"):
        fn, hit = cache.load(source(7.0), "kernel")
    assert not hit
    call(fn, 7.0)


def test_another_users_entries_are_a_miss_not_a_crash(cache_dir, monkeypatch):
    # entries of another user with mode 0600 (what tracejit used to write): open() raises PermissionError
    # for us. Emulated for root too: the cache modules' open() refuses files without read permission.
    src = source(11.0)
    fn, _ = cache.load(src, "kernel")
    call(fn, 11.0)
    files = [entry(cache_dir, src)] + numba_files(cache_dir / "__pycache__", entry(cache_dir, src).stem)
    assert len(files) == 3
    for p in files:
        p.chmod(0o600 if os.getuid() == 0 else 0o000)
    real_open = open

    def open_as_another_user(path, *a, **kw):
        if isinstance(path, (str, os.PathLike)) and os.path.exists(path) and os.getuid() == 0 \
                and stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0 and Path(path) in files:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    for mod in (cache, numba_cache, caching):
        monkeypatch.setattr(mod, "open", open_as_another_user, raising=False)
    forget(src)
    with pytest.warns(CacheWarning) as rec:
        fn, hit = cache.load(src, "kernel")
        call(fn, 11.0)
    assert not hit
    msgs = cache_warnings(rec)
    assert any("cannot read" in m and "PermissionError" in m for m in msgs)
    assert any("could not be loaded" in m and "PermissionError" in m for m in msgs)
    # rewritten by us, readable by others
    assert stat.S_IMODE(entry(cache_dir, src).stat().st_mode) == cache.FILE_MODE


def test_entries_are_readable_by_other_users(cache_dir):
    umask = os.umask(0o022)
    os.umask(umask)
    assert cache.FILE_MODE == 0o666 & ~umask
    src = source(7.0)
    fn, _ = cache.load(src, "kernel")
    call(fn, 7.0)
    assert stat.S_IMODE(entry(cache_dir, src).stat().st_mode) == 0o666 & ~umask  # 0644 under umask 022
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o777 & ~umask
    for p in numba_files(cache_dir / "__pycache__", entry(cache_dir, src).stem):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_nowhere_to_write_compiles_in_memory(cache_dir, monkeypatch):
    cache_dir.write_text("not a directory")

    def no_tmp(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", no_tmp)
    with pytest.warns(CacheWarning) as rec:
        fn, hit = cache.load(source(5.0), "kernel")
        call(fn, 5.0)
    assert not hit and isinstance(fn._cache, caching.NullCache)
    msgs = cache_warnings(rec)
    assert any("in memory" in m for m in msgs) and not any("cannot cache compiled code" in m for m in msgs)


def test_clear_removes_only_generated_kernels(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(tmp_path / "numba"))
    fn, _ = cache.load(source(5.0), "kernel")
    call(fn, 5.0)
    (cache_dir / "notes.txt").write_text("mine")
    generated = Path(cache.numba_dirs()["generated"])
    assert numba_files(generated, entry(cache_dir, source(5.0)).stem)
    rows = {r["what"]: r for r in cache.info()}
    assert rows["generated kernel sources"]["entries"] == 1
    assert rows["Numba machine code, generated kernels"]["entries"] == 1
    expected = [entry(cache_dir, source(5.0))] + numba_files(generated, entry(cache_dir, source(5.0)).stem)
    expected += list((cache_dir / cache.RECORDS).iterdir())  # the symbols its machine code defines
    removed = cache.clear()
    assert sorted(removed) == sorted(str(p) for p in expected)
    assert sorted(os.listdir(cache_dir)) == ["notes.txt"]  # nothing else is touched
    assert not generated.exists()  # emptied, so removed
    assert cache.info()[0]["entries"] == 0


CHILD = """
import re, sys
import numpy as np
import tracejit

def step(x, y):
    return ((x * y).tanh() + x).sum(1), (x - y).exp()

cf = tracejit.compile(step, backend="cpu")
rng = np.random.default_rng(0)
x = tracejit.tensor(rng.standard_normal((4, 6)).astype(np.float32))
y = tracejit.tensor(rng.standard_normal((4, 6)).astype(np.float32))
out = cf(x, y)
want = step(x, y)
for a, b in zip(out, want):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
text = str(tracejit.explain(cf, x, y))
hits, total = re.search(r"source cache hits (\\d+)/(\\d+)", text).groups()
steps = [s for s, *_ in cf.history[-1].program.plan if isinstance(getattr(s, "source", None), str)]
misses = sum(sum(s.fn.stats.cache_misses.values()) for s in steps if hasattr(getattr(s, "fn", None), "stats"))
print("RESULT", hits, total, misses)
"""


def run_child(cache_dir: Path, numba_dir: Path | None = None, script: str = CHILD, prefix=()):
    """Run `script` in a fresh process with these caches; returns (hits, total, misses) and its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEJIT_", "NUMBA_CACHE_DIR"))}
    env["TRACEJIT_CACHE_DIR"] = str(cache_dir)
    if numba_dir is not None:
        # a private Numba cache: the package's own kernels compile in it too (~3 s with OpenBLAS as the float32
        # GEMM; tracejit's own GEMM cfunc would take ~14 s cold)
        env.update(NUMBA_CACHE_DIR=str(numba_dir), TRACEJIT_SGEMM="openblas")
    proc = subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return tuple(int(s) if s.isdigit() else s for s in line.split()[1:]), proc.stderr


def test_a_second_process_hits_the_cache_and_damaged_entries_anywhere_are_rebuilt(tmp_path):
    d, numba_dir = tmp_path / "shared", tmp_path / "numba"
    (hits, total, _), _ = run_child(d, numba_dir)
    assert total >= 1 and hits == 0  # a fresh directory: everything rendered and compiled
    assert list(d.glob("k_*.py")) and not (d / "__pycache__").exists()  # machine code under NUMBA_CACHE_DIR
    [generated] = numba_dir.glob(f"{d.name}_*")
    [package] = numba_dir.glob("cpu_*")  # the CPU backend's folder (its blas/ and window/ have folders of their own)
    assert list(generated.glob("k_*.nbi"))
    assert list(package.glob("vecmath.tanh_f32-*.nbi"))  # a helper the generated kernels call
    [blas] = numba_dir.glob("blas_*")
    assert list(blas.glob("calls._sgemm_openblas-*.nbi"))  # the cfunc behind tracejit_sgemm
    (hits, total2, misses), err = run_child(d, numba_dir)
    assert total2 == total and hits == total  # the same sources, found on disk
    assert misses == 0  # Numba loaded machine code instead of compiling
    assert "Warning" not in err
    # damage everything: generated sources (truncated), and every Numba file, the package's own kernels' and
    # cfunc's included (random bytes or truncation). The next process warns, rebuilds them and computes the
    # same results (the child checks them against eager).
    for p in d.glob("k_*.py"):
        p.write_text(p.read_text()[:40])
    numba_files_all = sorted(numba_dir.rglob("*.nb[ic]"))
    for i, p in enumerate(numba_files_all):
        DAMAGE["random bytes" if i % 2 else "truncated"](p)
    (hits, total3, _), err = run_child(d, numba_dir)
    assert hits == 0 and total3 == total
    assert all(p.read_text().startswith("# generated by tracejit") for p in d.glob("k_*.py"))
    # one warning per directory, naming the first damaged entry found there (in blas/: the cfunc, built at
    # import); the package's kernels live in several folders, each with its own Numba directory
    warned = [line for line in err.splitlines() if "CacheWarning" in line]
    dirs_warned = {line.split(" in ", 1)[1].split(" could not", 1)[0] for line in warned}
    assert len(warned) == len(dirs_warned) and len(warned) <= len(list(numba_dir.iterdir())), err
    assert f"entry for _sgemm_openblas in {blas}" in err and f"in {generated} could not be loaded" in err
    assert all(sealed(p) for p in numba_files_all)  # each rewritten whole


FALLBACK_CHILD = """
import numpy as np
import tracejit
from tracejit.compiler.backends import cache

cf = tracejit.compile(lambda x: (x * 2.0).exp().sum(0), backend="cpu")
x = tracejit.tensor(np.arange(6, dtype=np.float32).reshape(2, 3) / 8)
np.testing.assert_allclose(cf(x).numpy(), np.exp(x.numpy() * 2).sum(0), rtol=1e-6)
print("RESULT", cache.cache_dir())
"""


def test_an_unusable_cache_directory_costs_one_warning_and_leaves_nothing_behind(tmp_path):
    # TRACEJIT_CACHE_DIR naming a file (a typo, a mount gone wrong): the job runs, warns once; the private
    # directory it compiled into is removed at exit
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file")
    (private,), err = run_child(not_a_dir, script=FALLBACK_CHILD)
    assert err.count("CacheWarning") == 1 and f"cannot write to {not_a_dir}" in err
    assert "tracejit-cache-" in private and not os.path.exists(private)
    assert not_a_dir.read_text() == "a file"


def _as_another_user() -> list[str]:
    """A command prefix under which permission bits bite: none for a normal user (CI); for root (here),
    root without the capabilities that bypass file permissions."""
    if os.getuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permission bits cannot be made to bite")
    caps = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_another_users_read_only_cache_really_denied(tmp_path):
    # the kernel's own permission checks, no emulation: a shared cache whose entries we may not read (0600
    # of another user; 000 here) in a directory we may not write; then Numba files we may not read in a
    # directory we may write. Each run computes the right values (checked against eager in the child).
    d = tmp_path / "shared"
    run_child(d)
    sources = sorted(d.glob("k_*.py"))
    numba_files_d = sorted((d / "__pycache__").glob("*.nb[ic]"))
    assert sources and numba_files_d
    for p in sources + numba_files_d:
        p.chmod(0o000)
    (d / "__pycache__").chmod(0o555)
    d.chmod(0o555)
    try:
        (hits, total, _), err = run_child(d, prefix=_as_another_user())
    finally:
        d.chmod(0o755)
        (d / "__pycache__").chmod(0o755)
    assert hits == 0
    assert f"cannot read {d}" in err and "PermissionError" in err and f"cannot write to {d}" in err
    assert all(stat.S_IMODE(p.stat().st_mode) == 0 for p in sources)  # not ours: left alone
    # now the sources are readable again but Numba's files are not, in a directory we may write
    for p in sources:
        p.chmod(0o644)
    (hits, total2, _), err = run_child(d, prefix=_as_another_user())
    assert hits == total2 == total
    assert f"in {d / '__pycache__'} could not be loaded (PermissionError" in err
    assert all(stat.S_IMODE(p.stat().st_mode) == cache.FILE_MODE for p in numba_files_d)  # rewritten, 0644
