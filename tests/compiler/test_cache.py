"""The on-disk kernel cache: TRACEJIT_CACHE_DIR is honoured, a second load (and a second process) hits the
cache, and a corrupted entry (the generated source or Numba's machine-code files beside it) is discarded
and rebuilt without an exception.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("TRACEJIT_CACHE_DIR", str(ROOT / ".tracejit_cache" / "tests"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tracejit.compiler.backends import cache  # noqa: E402

SOURCE = """import numpy as np
import numba

@numba.njit(cache=True)
def kernel(a, o):
    for i in range(a.shape[0]):
        o[i] = a[i] * np.float32({scale}) + np.float32(0.125)
"""


SCALES = (5.0, 7.0, 11.0, 13.0)  # one source per test family


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
    """A fresh TRACEJIT_CACHE_DIR; the kernels imported from it are forgotten afterwards (even when the
    test failed), so the next test loads from its own directory."""
    d = tmp_path / "kernels"
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(d))
    for scale in SCALES:
        forget(source(scale))
    yield d
    _forget_modules_under(tmp_path)


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
    assert cache.helpers_fingerprint() in cache.HEADER


def test_key_changes_when_a_backend_helper_changes(tmp_path):
    # generated kernels carry their helpers' code in Numba's cache: editing a helper must miss the cache
    (tmp_path / "cpu_math.py").write_text("def exp_f32(x):\n    return x\n")
    (tmp_path / "notes.txt").write_text("not a module")
    before = cache.helpers_fingerprint(str(tmp_path))
    (tmp_path / "notes.txt").write_text("still not a module")
    assert cache.helpers_fingerprint(str(tmp_path)) == before
    (tmp_path / "cpu_math.py").write_text("def exp_f32(x):\n    return x + 0\n")
    assert cache.helpers_fingerprint(str(tmp_path)) != before


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


NUMBA_CORRUPTIONS = {
    "index garbage": (".nbi", lambda p: p.write_bytes(b"garbage\n")),
    "index empty": (".nbi", lambda p: p.write_bytes(b"")),
    "machine code garbage": (".nbc", lambda p: p.write_bytes(b"garbage\n")),
}


@pytest.mark.parametrize("how", sorted(NUMBA_CORRUPTIONS))
def test_corrupted_numba_cache_files_are_discarded_and_rebuilt(cache_dir, how):
    # Numba's index/machine-code files beside a cached kernel are part of the entry: a damaged one must
    # not make every later process fail on the kernel's first call
    src = source(13.0)
    fn, _ = cache.load(src, "kernel")
    call(fn, 13.0)
    suffix, damage = NUMBA_CORRUPTIONS[how]
    stem = entry(cache_dir, src).stem
    files = [p for p in (cache_dir / "__pycache__").iterdir() if p.name.startswith(stem) and p.suffix == suffix]
    assert files
    for p in files:
        damage(p)
    forget(src)
    fn, _ = cache.load(src, "kernel")
    call(fn, 13.0)


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


def run_child(cache_dir: Path) -> tuple:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEJIT_")}
    env["TRACEJIT_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return tuple(int(s) for s in line.split()[1:])


def test_a_second_process_hits_the_cache_and_a_corrupted_entry_is_rebuilt(tmp_path):
    d = tmp_path / "shared"
    hits, total, _ = run_child(d)
    assert total >= 1 and hits == 0  # a fresh directory: everything rendered and compiled
    assert list(d.glob("k_*.py")) and list((d / "__pycache__").glob("*.nbi"))
    hits, total2, misses = run_child(d)
    assert total2 == total and hits == total  # the same sources, found on disk
    assert misses == 0  # Numba loaded machine code instead of compiling
    # truncate every generated source: the next process discards and rebuilds them (no exception;
    # the child checks its results against eager)
    for p in d.glob("k_*.py"):
        p.write_text(p.read_text()[:40])
    hits, total3, _ = run_child(d)
    assert hits == 0 and total3 == total
    assert all(p.read_text().startswith("# generated by tracejit") for p in d.glob("k_*.py"))
