"""threads.configure() in fresh interpreters (the threading layer is chosen once per process, so in-process
tests would depend on import order): TBB when loadable, OpenMP with a short spin otherwise, thread counts.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tracejit.compiler.backends.cpu import threads

ROOT = Path(__file__).resolve().parents[2]

KERNEL = """
import json, numba, numpy as np
from tracejit.compiler.backends.cpu import threads

@numba.njit(parallel=True)
def add_one(x):
    for i in numba.prange(x.size):
        x[i] += 1.0
    return numba.get_num_threads()

def run():
    x = np.zeros(1000)
    n = add_one(x)
    assert (x == 1.0).all()
    return n
"""


def child(body: str, **env: str) -> dict:
    """Run KERNEL + body in a fresh interpreter; body prints one JSON line, which is returned."""
    inherited = ("TRACEJIT_", "NUMBA_THREADING", "GOMP_SPINCOUNT")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    full_env.update(env, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", KERNEL + textwrap.dedent(body)], capture_output=True,
                          text=True, env=full_env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_prefers_tbb_and_sets_thread_counts():
    out = child("""
        info = threads.configure()
        assert threads.configure() == info  # idempotent
        first = run()
        threads.set_num_threads(1)
        one = (threads.get_num_threads(), run())
        threads.set_num_threads(threads.max_threads())
        print(json.dumps(dict(info=info, layer=numba.threading_layer(), first=first, one=one,
                              all=run(), max=threads.max_threads())))
    """)
    try:
        importlib.metadata.distribution("tbb")
        expected = "tbb"  # the PyPI wheel's libtbb must be found although it is not on the loader path
    except importlib.metadata.PackageNotFoundError:
        expected = "tbb" if out["info"]["tbb_library"] else "omp"
    assert out["info"]["layer"] == out["layer"] == expected
    assert out["first"] == out["info"]["threads"] == out["max"] == out["all"]
    assert out["one"] == [1, 1]


def test_falls_back_to_omp_with_short_spin_and_reads_env_threads():
    out = child("""
        threads._load_tbb = lambda: None  # as on a machine without libtbb
        info = threads.configure()
        import os
        print(json.dumps(dict(info=info, layer=numba.threading_layer(), n=run(),
                              spin=os.environ.get("GOMP_SPINCOUNT"))))
    """, TRACEJIT_NUM_THREADS="1")
    assert out["info"]["layer"] == out["layer"] == "omp"
    assert out["spin"] == out["info"]["gomp_spincount"] == threads.GOMP_SPINCOUNT
    assert out["n"] == out["info"]["threads"] == 1


def test_keeps_a_layer_that_already_launched():
    out = child("""
        run()  # a parallel kernel before configure(): Numba picked its default layer
        before = numba.threading_layer()
        info = threads.configure()
        print(json.dumps(dict(before=before, info=info, n=run())))
    """)
    assert out["info"]["layer"] == out["before"]
    assert out["n"] == out["info"]["threads"]


def test_forced_layer_and_bad_settings():
    out = child("print(json.dumps(threads.configure()))", TRACEJIT_THREADING_LAYER="workqueue")
    assert out["layer"] == "workqueue"
    bad = subprocess.run([sys.executable, "-c", "from tracejit.compiler.backends.cpu import threads; "
                          "threads.configure()"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "TRACEJIT_NUM_THREADS": "many"})
    assert bad.returncode != 0 and "TRACEJIT_NUM_THREADS" in bad.stderr


@pytest.mark.parametrize("n", [0, -1, 10_000, 1.5, True])
def test_set_num_threads_rejects_bad_counts(n):
    with pytest.raises(ValueError, match="set_num_threads"):
        threads.set_num_threads(n)


def test_the_pool_starts_in_the_callers_thread_and_forks_are_safe_only_from_it():
    """The backend's preparation thread configures under no_launch (it starts no pool); the thread that compiles
    starts it, and only a fork from that thread leaves Numba's TBB pool usable in the child (fork_unsafe)."""
    out = child("""
        import threading
        seen = {}

        def prepare():
            with threads.no_launch():
                seen["prepare"] = threads.configure()["layer"]
        t = threading.Thread(target=prepare)
        t.start(); t.join()
        layer = threads.configure()["layer"]
        seen["main"] = threads.fork_unsafe()
        other = threading.Thread(target=lambda: seen.update(other=threads.fork_unsafe()))
        other.start(); other.join()
        print(json.dumps(dict(seen, layer=layer, ran=run())))
    """)
    assert out["prepare"] is None  # no pool yet
    assert out["ran"] >= 1
    if out["layer"] == "tbb":
        assert out["main"] is None and out["other"] == "Numba's TBB pool was started by another thread"
    elif out["layer"] == "workqueue":
        assert out["main"] is None and out["other"] is None
    else:
        assert out["main"] == out["other"] == f"Numba's {out['layer']} pool does not survive a fork"


def test_a_pool_numba_starts_by_itself_after_no_launch_gets_the_chosen_layer():
    """After the preparation thread's configure() under no_launch, a parallel function run (or loaded from the
    cache) in another thread starts Numba's pool by itself: it must get TBB (loaded by path) where the wheel is
    installed, not fall back to OpenMP."""
    out = child("""
        import threading
        def prepare():
            with threads.no_launch():
                threads.configure()
        t = threading.Thread(target=prepare); t.start(); t.join()
        box = {}
        other = threading.Thread(target=lambda: box.update(n=run())); other.start(); other.join()
        print(json.dumps(dict(layer=numba.threading_layer(), n=box["n"], unsafe=threads.fork_unsafe())))
    """)
    assert out["n"] >= 1
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        return  # (no TBB wheel: Numba's own choice stands)
    assert out["layer"] == "tbb" and out["unsafe"] == "Numba's TBB pool was started by another thread"
