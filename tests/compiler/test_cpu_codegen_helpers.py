"""Helpers that generated CPU code calls instead of costly-to-compile Numba features: `cpu_views.view` (for
`.reshape`), `cpu_segment_blas.gemm_nt` (BLAS with layouts fixed at render time), and the segment source that
uses them, whose compiled results equal eager ones."""

import os
from pathlib import Path

os.environ.setdefault("TRACEJIT_CACHE_DIR", str(Path(__file__).resolve().parents[2] / ".tracejit_cache" / "tests"))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tracejit  # noqa: E402
from tracejit.compiler.backends import cpu  # noqa: E402
from tracejit.compiler.backends.cpu_segment_blas import gemm_nt  # noqa: E402
from tracejit.compiler.backends.cpu_views import view  # noqa: E402


@numba.njit
def _views(a):
    m = view(a, (2, 3, 4))
    m[1, 2, 3] = -1.0
    z = view(a[:1], ())  # one element seen as a 0-d array
    z[()] = 7.0
    return m, view(m, (4, 6)), view(m, (24,)), z


def test_view_shares_data_and_has_c_strides():
    a = np.arange(24, dtype=np.float32)
    m, m2, flat, z = _views(a)
    assert m.shape == (2, 3, 4) and m.strides == (48, 16, 4)
    assert m2.shape == (4, 6) and m2.strides == (24, 4)
    np.testing.assert_array_equal(m2, a.reshape(4, 6))
    assert a[23] == -1.0 and m[1, 2, 3] == -1.0 and flat[23] == -1.0  # one buffer
    assert z.shape == () and a[0] == 7.0
    np.testing.assert_array_equal(flat, a)


def test_view_refuses_non_contiguous_layouts():
    @numba.njit
    def strided(a):
        return view(a[::2], (3,))

    with pytest.raises(numba.core.errors.TypingError):
        strided(np.zeros(6))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_nt_matches_numpy_for_every_transpose_combination(dtype, ta, tb):
    rng = np.random.default_rng(ta * 2 + tb)
    m, n, k = 5, 7, 3
    # a transposed operand is passed as the C array it transposes, with its leading dimension
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    gemm_nt(ta, tb, m, n, k, a, a.shape[1], b, b.shape[1], out)
    want = (a.T if ta else a) @ (b.T if tb else b)
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_segment_source_uses_views_and_direct_gemm_and_equals_eager():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    v = rng.standard_normal((3, 5)).astype(np.float32)

    def fn(x, w, v):
        h = (x @ w.T).relu()  # transposed right operand
        s = h.T @ x  # transposed left operand, [3, 4]
        return (h @ v).reshape(2, 15).sum(1), s.sum(0)

    args = [tracejit.tensor(a) for a in (x, w, v)]
    want = fn(*args)
    cf = tracejit.compile(fn, backend="cpu")
    got = cf(*args)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_.numpy(), w_.numpy(), rtol=1e-5, atol=1e-5)
    sources = [s.source for s, *_ in cf.latest().program.plan if isinstance(s, cpu.SegmentStep)]
    assert sources, "no segment ran"
    text = "\n".join(sources)
    assert ".reshape(" not in text and ".fill(" not in text
    assert text.count("G.gemm_nt(") == 3 and "B.gemm(" not in text
