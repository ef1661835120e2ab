"""Generated code calls the segment GEMMs by address (blas.segment): each of the six forms lowers to one call of
the C entry `tracejit_gemm_f32`/`_f64`, whose code is not linked into the caller; cached callers register the
entry's symbol before they load in a new process; a changed helper still changes the callers' cache key."""

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

from tracejit.compiler.backends import numba_cache
from tracejit.compiler.backends.cpu import render
from tracejit.compiler.backends.cpu.blas import control as blas
from tracejit.compiler.backends.cpu.blas import segment as G

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@numba.njit
def _forms(ta, tb, m, n, k, a, lda, b, ldb, bias, outs, parts):
    G.gemm_nt(ta, tb, m, n, k, a, lda, b, ldb, outs[0])
    G.gemm_nt_par(ta, tb, m, n, k, a, lda, b, ldb, outs[1], parts)
    G.gemm_bias_act(ta, tb, m, n, k, a, lda, b, ldb, bias, 1, outs[2])
    G.gemm_bias_act_par(ta, tb, m, n, k, a, lda, b, ldb, bias, 0, outs[3], parts)


@numba.njit
def _literal_forms(a, b, bias, out, nt_):
    # as generated code calls them: sizes, flags and leading dimensions as literals
    G.gemm_bias_act_par(0, 1, 9, 4, 6, a, 6, b, 6, bias, 1, out, nt_)


@numba.njit
def _batched(ta, tb, batch, m, n, k, a, lda, b, ldb, out1, out2, parts):
    G.bgemm(ta, tb, batch, m, n, k, a, lda, b, ldb, out1)
    G.bgemm_par(ta, tb, batch, m, n, k, a, lda, b, ldb, out2, parts)


def _operands(rng, dtype, ta, tb, m, n, k):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b, (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n", [(9, 4), (4, 9), (1, 5)])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_jitted_callers_of_every_form_equal_numpy_and_the_python_path(dtype, m, n, ta, tb):
    rng = np.random.default_rng(m * 100 + n * 10 + ta * 2 + tb)
    k = 6
    a, b, want = _operands(rng, dtype, ta, tb, m, n, k)
    bias = rng.standard_normal(n).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    blas.set_threads(1)
    for parts in (1, 2, 3):
        outs = np.full((4, m, n), np.nan, dtype)
        _forms(ta, tb, m, n, k, a, a.shape[1], b, b.shape[1], bias, outs, parts)
        for o in outs[:2]:
            np.testing.assert_allclose(o, want, **tol)
        np.testing.assert_allclose(outs[2], np.maximum(want + bias, 0), **tol)
        np.testing.assert_allclose(outs[3], want + bias, **tol)
        py = np.full((m, n), np.nan, dtype)  # the same entry through ctypes
        G.gemm_bias_act_par(ta, tb, m, n, k, a, a.shape[1], b, b.shape[1], bias, 0, py, parts)
        np.testing.assert_array_equal(py, outs[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_batched_forms_equal_numpy(dtype, ta, tb):
    rng = np.random.default_rng(ta * 2 + tb)
    batch, m, n, k = 5, 3, 4, 7
    a = rng.standard_normal((batch, k, m) if ta else (batch, m, k)).astype(dtype)
    b = rng.standard_normal((batch, n, k) if tb else (batch, k, n)).astype(dtype)
    want = (a.transpose(0, 2, 1) if ta else a).astype(np.float64) @ (b.transpose(0, 2, 1) if tb else b)
    for parts in (1, 2, 3):
        o1 = np.full(batch * m * n, np.nan, dtype)
        o2 = np.full(batch * m * n, np.nan, dtype)
        _batched(ta, tb, batch, m, n, k, a.reshape(-1), a.shape[2], b.reshape(-1), b.shape[2], o1, o2, parts)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(o1.reshape(batch, m, n), want, rtol=tol, atol=tol)
        np.testing.assert_array_equal(o1, o2)


def test_a_caller_holds_a_call_of_the_entry_not_the_gemm_code():
    rng = np.random.default_rng(0)
    a, b, want = _operands(rng, np.float32, 0, 1, 9, 4, 6)
    bias = np.zeros(4, np.float32)
    out = np.zeros((9, 4), np.float32)
    _literal_forms(a, b, bias, out, 2)
    np.testing.assert_allclose(out, np.maximum(want, 0), rtol=1e-5, atol=1e-5)
    (sig,) = _literal_forms.signatures
    asm = _literal_forms.inspect_asm(sig)
    assert G.symbol("f32") in asm
    assert "gemm_at" not in asm and "_parallel" not in asm and "sgemm" not in asm  # nothing linked in


def test_wrong_operand_types_are_typing_errors():
    @numba.njit
    def mixed(a, b, out):
        G.gemm_nt(0, 0, 2, 2, 2, a, 2, b, 2, out)

    x = np.ones((2, 2), np.float32)
    with pytest.raises(numba.core.errors.TypingError):
        mixed(x, x.astype(np.float64), x)
    with pytest.raises(TypeError, match="float64"):
        G.gemm_nt(0, 0, 2, 2, 2, x, 2, x.astype(np.float64), 2, x)


CALLER = textwrap.dedent("""
    import numba
    import numpy as np
    from tracejit.compiler.backends.cpu.blas import segment as G

    @numba.njit(cache=True)
    def step(a, b, bias, out, nt_):
        G.gemm_bias_act_par(0, 0, 40, 12, 9, a, 9, b, 12, bias, 1, out, nt_)
        G.bgemm(1, 0, 1, 40, 12, 9, a, 40, b, 12, out[1:])
        return out.sum()
""")

RUN = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from caller import step
    from tracejit.compiler.backends.cpu.blas import segment as G
    before = sorted(G._entries)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 9)).astype(np.float32)
    b = rng.standard_normal((9, 12)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    out = np.zeros((2, 40, 12), np.float32)
    step(a, b, bias, out, 2)
    want = np.maximum(a.astype(np.float64) @ b + bias, 0)
    ok = np.allclose(out[0], want, rtol=1e-5, atol=1e-5) and np.allclose(out[1], a.reshape(9, 40).T @ b, rtol=1e-5,
                                                                          atol=1e-5)
    print(before, sorted(G._entries), ok, sum(step.stats.cache_hits.values()))
""")


def test_a_cached_caller_registers_the_entry_before_it_loads_in_a_new_process(tmp_path):
    (tmp_path / "caller.py").write_text(CALLER)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=ROOT)
    outs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", RUN, str(tmp_path)], env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr
        outs.append(res.stdout.split("\n")[-2])
    assert outs[0] == "[] ['f32'] True 0"  # compiled: the lowering built the entry
    assert outs[1] == "[] ['f32'] True 1"  # loaded from the cache: its reload hook built (loaded) the entry


def test_the_entry_and_its_callers_follow_edits_of_the_helpers(tmp_path):
    # the entry is defined under the package's kernel folder: its cache entry carries the folder's hash
    fn, _ = G.ensure("f32")
    assert numba_cache.kernel_fingerprint() in fn._cache._cache_file._source_stamp
    # generated callers carry the backend files' hash in their source (their cache key): an edited GEMM helper
    # gives them new keys
    import shutil

    cpu = os.path.dirname(render.__file__)
    assert render.FINGERPRINT == render.cache.fingerprint(cpu, render.kernel.__file__, render.sizes.__file__)
    assert os.path.isfile(os.path.join(cpu, "blas", "segment.py"))  # ... which that folder's hash covers:
    copy = tmp_path / "cpu"
    shutil.copytree(cpu, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = render.cache.fingerprint(str(copy), render.kernel.__file__, render.sizes.__file__)
    with open(copy / "blas" / "segment.py", "a") as f:
        f.write("\n# edited\n")
    assert render.cache.fingerprint(str(copy), render.kernel.__file__, render.sizes.__file__) != before


# the float32 entry (blas.calls.ensure_sgemm) is built when its first caller is compiled or loaded, not at import
USES = textwrap.dedent("""
    import numba
    from tracejit.compiler.backends.cpu.blas.calls import gemm_at

    @numba.njit(cache=True)
    def mm(a, b, out):
        m, k = a.shape
        n = b.shape[1]
        gemm_at(0, 0, m, n, k, a.ravel(), 0, k, b.ravel(), 0, n, out.ravel(), 0, n, 0.0)
        return out.sum()
""")

CALL = textwrap.dedent("""
    import importlib, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from tracejit.compiler.backends.cpu.blas import calls
    built_at_import = calls._SGEMM_CHOICE is not None
    mod = importlib.import_module(sys.argv[2])
    rng = np.random.default_rng(2)
    a = rng.standard_normal((7, 5)).astype(np.float32)
    b = rng.standard_normal((5, 6)).astype(np.float32)
    out = np.zeros((7, 6), np.float32)
    mod.mm(a, b, out)
    ok = np.allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    print(built_at_import, calls._SGEMM_CHOICE is not None, ok, sum(mod.mm.stats.cache_hits.values()))
""")


def test_callers_of_the_float32_entry_register_it_also_when_compiled_against_a_cached_helper(tmp_path):
    """Process 1 compiles `gemm_at` (and a caller) into Numba's cache. Process 2 compiles a second caller against
    the cached `gemm_at`: Numba gives a library loaded from a cache no reload hooks, so without
    numba_cache's fix that caller's entry would lack the hook that registers the symbol its code names. Process 3
    loads that caller from the cache alone: the symbol must be registered first (else LLVM aborts or the call
    jumps to address 0)."""
    (tmp_path / "first.py").write_text(USES)
    (tmp_path / "second.py").write_text(USES)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=ROOT)
    outs = []
    for module in ("first", "second", "second"):
        res = subprocess.run([sys.executable, "-c", CALL, str(tmp_path), module], env=env, capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(res.stdout.split("\n")[-2])
    assert outs == ["False True True 0", "False True True 0", "False True True 1"]
