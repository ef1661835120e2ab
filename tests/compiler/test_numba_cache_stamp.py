"""Cached package kernels follow edits of the helpers they call (backends/numba_cache.py: KERNEL_DIR stamp).

Numba stamps a cache entry with its defining file only, so a kernel that calls a helper from another module ran on
with the old helper after that module changed (a `git pull` into an editable install). Entries of functions under
the package's kernel folder carry a hash of all its files too. Here a stand-in folder plays that role."""

import os
import subprocess
import sys
import textwrap

RUN = textwrap.dedent("""
    import os, sys
    from tracejit.compiler.backends import numba_cache as nc
    nc.KERNEL_DIR = os.path.abspath(sys.argv[1]) + os.sep
    nc.install()
    sys.path.insert(0, sys.argv[1])
    import caller
    print(caller.f(), sum(caller.f.stats.cache_hits.values()))
""")


def _run(folder, env):
    out = subprocess.run([sys.executable, "-c", RUN, str(folder)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    value, hits = out.stdout.split()
    return int(value), hits


def test_a_cached_kernel_follows_an_edited_helper_in_another_module(tmp_path):
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "callee.py").write_text("import numba\n\n@numba.njit(cache=True)\ndef g():\n    return 1\n")
    (kernels / "caller.py").write_text("import numba\nfrom callee import g\n\n"
                                       "@numba.njit(cache=True)\ndef f():\n    return g() + 10\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    assert _run(kernels, env)[0] == 11
    assert _run(kernels, env) == (11, "1")  # the second process loads f from the cache
    (kernels / "callee.py").write_text("import numba\n\n@numba.njit(cache=True)\ndef g():\n    return 2\n")
    value, hits = _run(kernels, env)
    assert value == 12  # plain Numba gives 11 here: caller.py did not change, so its stale entry was loaded
    assert hits == "0"
