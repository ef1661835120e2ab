"""tracejit's own float32 GEMM (cpu_gemm) and how cpu_blas routes float32 GEMMs (its kernel or OpenBLAS)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tracejit.compiler.backends.cpu.blas import calls as cpu_blas
from tracejit.compiler.backends.cpu.blas import gemm as cpu_gemm

MR, NR, KC = cpu_gemm.MR, cpu_gemm.NR, cpu_gemm.KC


def operands(rng, m, n, k, ta, tb, pad):
    """op(A) m x k and op(B) k x n stored as (transposed where ta/tb) row-major buffers with `pad` spare
    columns, and C m x (n + pad)."""
    A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    abuf = np.zeros((k, m + pad) if ta else (m, k + pad), np.float32)
    bbuf = np.zeros((n, k + pad) if tb else (k, n + pad), np.float32)
    if ta:
        abuf[:, :m] = A.T
    else:
        abuf[:, :k] = A
    if tb:
        bbuf[:, :k] = B.T
    else:
        bbuf[:, :n] = B
    C = rng.standard_normal((m, n + pad)).astype(np.float32)
    return A, B, abuf, bbuf, C


# shapes around every blocking edge: MR-row blocks (and the 6/4/2/1-row kernels), NR-wide panels, KC slices,
# MC row groups (one group packs B a panel at a time), the dot-product path (ta=0, tb=1 with few columns or rows),
# and LeNet's, the MLP's and the LSTM's (20 rows: 8 + 8 + 4) shapes
SHAPES = [(1, 1, 1), (MR, NR, 1), (MR + 1, NR + 1, KC + 1), (7, 5, 3), (3, 33, 17), (6, 892, 75), (75, 6, 892),
          (16, 136, 150), (150, 16, 136), (150, 136, 16), (64, 10, 84), (65, 97, 300), (128, 512, 40),
          (130, 70, 2 * KC + 3), (40, cpu_gemm.NC + NR + 5, 9), (20, 3 * NR + 7, KC + 9)]


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_sgemm_matches_float64_on_every_layout_and_edge(m, n, k, ta, tb):
    rng = np.random.default_rng(m * 1000 + n * 10 + k + ta * 7 + tb * 13)
    for beta, pad in ((0.0, 0), (1.0, 2), (0.5, 1)):
        A, B, abuf, bbuf, C0 = operands(rng, m, n, k, ta, tb, pad)
        if beta == 0:
            C0[:, :n] = np.nan  # beta = 0 must not read C
        C = C0.copy()
        cpu_gemm.sgemm_arrays(ta, tb, m, n, k, abuf.ravel(), abuf.shape[1], bbuf.ravel(), bbuf.shape[1], C.ravel(),
                              n + pad, np.float32(beta))
        ref = A.astype(np.float64) @ B.astype(np.float64) + (beta * C0[:, :n].astype(np.float64) if beta else 0)
        scale = np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64) + 1
        assert np.all(np.abs(C[:, :n] - ref) <= 1e-5 * scale), (m, n, k, ta, tb, beta)
        assert np.array_equal(C[:, n:], C0[:, n:])  # the padding past column n is never written


def test_sgemm_with_empty_k_scales_or_clears_c():
    C = np.full((3, 4), 2.0, np.float32)
    cpu_gemm.sgemm_arrays(0, 0, 3, 4, 0, np.zeros(1, np.float32), 1, np.zeros(1, np.float32), 4, C.ravel(), 4,
                          np.float32(0.5))
    assert np.all(C == 1.0)
    cpu_gemm.sgemm_arrays(0, 0, 3, 4, 0, np.zeros(1, np.float32), 1, np.zeros(1, np.float32), 4, C.ravel(), 4,
                          np.float32(0))
    assert np.all(C == 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_at_routes_both_dtypes(dtype):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((40, 70)).astype(dtype)
    b = rng.standard_normal((50, 70)).astype(dtype)  # used transposed
    out = np.full((40, 50), np.nan, dtype)
    cpu_blas.gemm_at(0, 1, 40, 50, 70, a.ravel(), 0, 70, b.ravel(), 0, 70, out.ravel(), 0, 50, dtype(0))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, a.astype(np.float64) @ b.T.astype(np.float64), rtol=tol, atol=tol * 70)


def test_choice_follows_the_environment_and_the_cpu(monkeypatch):
    monkeypatch.setenv(cpu_blas.ENV_SGEMM, "openblas")
    assert cpu_blas._decide() == ("openblas", "TRACEJIT_SGEMM=openblas")
    monkeypatch.setenv(cpu_blas.ENV_SGEMM, "fortran")
    with pytest.raises(ValueError, match="TRACEJIT_SGEMM='fortran'.*tracejit, openblas"):
        cpu_blas._decide()
    monkeypatch.delenv(cpu_blas.ENV_SGEMM)
    monkeypatch.setattr(cpu_gemm, "V", 16)
    assert cpu_blas._decide()[0] == "tracejit"
    monkeypatch.setattr(cpu_gemm, "V", 8)  # no AVX-512: the own kernel for skinny products, OpenBLAS for the rest
    assert cpu_blas._decide()[0] == "mixed"


def test_mixed_entry_computes_both_sides_of_its_split():
    # the self-check's shapes have row counts on both sides of MIXED_OWN_ROWS, and columns below MIXED_OWN_COLS
    shapes = cpu_gemm.SELF_CHECK_SHAPES + ((cpu_blas.MIXED_OWN_ROWS + 5, 40, 33), (130, 7, 20))
    assert any(m <= cpu_blas.MIXED_OWN_ROWS for m, _, _ in shapes)
    assert any(m > cpu_blas.MIXED_OWN_ROWS and n > cpu_blas.MIXED_OWN_COLS for m, n, _ in shapes)
    fn = cpu_blas.numba.cfunc(cpu_blas._SGEMM_SIG)(cpu_blas._sgemm_mixed)
    import ctypes

    def via(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta):
        fn.ctypes(ta, tb, m, n, k, a.ctypes.data_as(ctypes.c_void_p), lda, b.ctypes.data_as(ctypes.c_void_p), ldb,
                  c.ctypes.data_as(ctypes.c_void_p), ldc, beta)

    assert cpu_gemm.self_check(via, shapes=shapes) < cpu_blas.SELF_CHECK_TOL


PROBE = """
import numpy as np
from tracejit.compiler.backends.cpu.blas import calls as cpu_blas
a = np.arange(6, dtype=np.float32).reshape(2, 3); b = np.ones((3, 2), np.float32); out = np.empty((2, 2), np.float32)
cpu_blas.gemm(a, b, out)
print(cpu_blas.sgemm_choice()[0], out.ravel().tolist())
"""


def rows_at_error(shapes, seed=0):
    """Worst error of gemm_rows_at (B's rows at arbitrary, overlapping offsets into one buffer) against a float64
    product, relative to |A| @ |B| + 1; C starts as NaN (it must not be read)."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for m, n, k in shapes:
        a = rng.standard_normal(m * k).astype(np.float32)
        span, b_off = n + 3 * k + 5, 7
        b = rng.standard_normal(b_off + span).astype(np.float32)
        offs = rng.integers(0, span - n + 1, k).astype(np.int64)  # the last row may end at b's last element
        c = np.full(m * n, np.nan, np.float32)
        cpu_gemm.gemm_rows_at(m, k, n, a, b, b_off, offs, c)
        B = np.stack([b[b_off + o:b_off + o + n] for o in offs]).astype(np.float64)
        A = a.reshape(m, k).astype(np.float64)
        err = np.abs(c.reshape(m, n) - A @ B) / (np.abs(A) @ np.abs(B) + 1)
        worst = max(worst, float(err.max()) if np.all(np.isfinite(c)) else np.inf)
    return worst


# every row kernel (MR, 6, 4, 2, 1 and their sums), full and masked NR-wide panels, several KC slices, LeNet's convs
ROWS_AT_SHAPES = [(1, 1, 1), (MR, NR, 3), (MR + 7, NR + 1, KC + 5), (6, 892, 75), (16, 136, 150), (3, 2 * NR - 1, 9),
                  (5, NR - 3, 2 * KC + 1)]


def test_gemm_rows_at_reads_b_rows_at_their_offsets():
    assert rows_at_error(ROWS_AT_SHAPES) < 1e-5


def dots_error(cases, seed=0):
    """Worst error of dots_block (DOT_R rows of A at offsets, s rows of D, summed over images) against float64,
    relative to the sum of |products| + 1; the output's other elements must stay untouched."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    R = cpu_gemm.DOT_R
    for s, n, nimg in cases:
        a_step, d_step, ldd = n + 40, s * (n + 3) + 5, n + 3
        a = rng.standard_normal(nimg * a_step + 7).astype(np.float32)
        d = rng.standard_normal(nimg * d_step + 2).astype(np.float32)
        offs = rng.integers(0, a_step - n + 1, R).astype(np.int64)
        out = np.full(3 + R * (s + 2), np.nan, np.float32)
        cpu_gemm.dots_block(s, n, a, 7, a_step, offs, d, 2, d_step, ldd, nimg, out, 3, s + 2)
        for r in range(R):
            for j in range(s):
                pa = np.concatenate([a[7 + m * a_step + offs[r]:][:n] for m in range(nimg)]).astype(np.float64)
                pd = np.concatenate([d[2 + m * d_step + j * ldd:][:n] for m in range(nimg)]).astype(np.float64)
                err = abs(out[3 + r * (s + 2) + j] - pa @ pd) / (np.abs(pa) @ np.abs(pd) + 1)
                worst = max(worst, float(err) if np.isfinite(err) else np.inf)
        written = np.zeros(out.shape, bool)
        for r in range(R):
            written[3 + r * (s + 2):3 + r * (s + 2) + s] = True
        if not np.all(np.isnan(out[~written])):
            return np.inf
    return worst


# (channels per block, run length, images): runs shorter than a vector, exact vectors, with masked tails; one image
DOTS_CASES = [(4, 1, 1), (3, 5, 3), (4, 16, 2), (3, 136, 4), (4, 892, 8), (4, 33, 1)]


def test_dots_block_sums_rows_at_offsets_over_images():
    assert dots_error(DOTS_CASES) < 1e-5


@pytest.mark.parametrize("which", ["tracejit", "openblas", "mixed"])
def test_each_float32_gemm_runs_when_chosen(which):
    env = dict(os.environ, TRACEJIT_SGEMM=which)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [which, "[3.0,", "3.0,", "12.0,", "12.0]"]


# Every shape of the kernel this machine can execute, built in a subprocess whose LLVM sees only that ISA's
# features (Numba keys its cache on the real CPU, not on the features we fake: each build gets a private cache).
ISA_OFF = {"avx2": ("avx512",), "sse4.2": ("avx512", "avx", "fma", "f16c")}
ISA_PROBE = """
import sys
import llvmlite.binding as llvm
real = llvm.get_host_cpu_features
off = tuple(sys.argv[1].split(","))
def restricted():
    f = real()
    for k in [k for k in f if k.startswith(off)]:
        f[k] = False
    return f
llvm.get_host_cpu_features = restricted
import numpy as np
from tracejit.compiler.backends.cpu.blas import calls as cpu_blas
from tracejit.compiler.backends.cpu.blas import gemm as cpu_gemm
shapes = eval(sys.argv[2])
print(cpu_gemm.V, cpu_gemm.MR, cpu_gemm.NR, cpu_blas.sgemm_choice()[0])
print("arrays", cpu_gemm.self_check(cpu_gemm.sgemm_arrays, shapes=shapes))
print("entry", cpu_blas._check_entry(cpu_blas.numba.cfunc(cpu_blas._SGEMM_SIG)(cpu_gemm.sgemm_c)))
sys.path.insert(0, sys.argv[3])
from test_cpu_gemm import DOTS_CASES, ROWS_AT_SHAPES, dots_error, rows_at_error
print("rows_at", rows_at_error(ROWS_AT_SHAPES), dots_error(DOTS_CASES))
"""


def _host_runs(isa):
    import llvmlite.binding as llvm

    feats = llvm.get_host_cpu_features()
    return all(feats.get(f, False) for f in {"avx2": ("avx2", "fma"), "sse4.2": ("sse4.2",)}[isa])


@pytest.mark.parametrize("isa", sorted(ISA_OFF))
def test_each_isa_shape_of_the_kernel_computes_the_same(tmp_path, isa):
    # on a CPU without AVX-512 the kernel is 6 x 16 with 8-float vectors (the shape that once went wrong from row
    # 64 on: its row groups overlapped); without AVX it is the same shape on SSE registers. The whole edge matrix
    # of the host-shape test, plus the import-time self-check through the C entry, in that ISA.
    if not _host_runs(isa):
        pytest.skip(f"this CPU cannot execute {isa} code")  # only on CPUs older than the ISA; never on x86-64-v3
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), TRACEJIT_SGEMM="tracejit")
    shapes = SHAPES + [(cpu_gemm.MC + 7, 2 * NR + 3, 2 * KC + 5)]
    proc = subprocess.run([sys.executable, "-c", ISA_PROBE, ",".join(ISA_OFF[isa]), repr(shapes),
                           os.path.dirname(__file__)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    head, arrays, entry, rows_at = proc.stdout.split("\n")[:4]
    assert head == "8 6 16 tracejit", head  # the fake ISA took effect and the self-check accepted the kernel
    assert float(arrays.split()[1]) < 1e-5, arrays
    assert float(entry.split()[1]) < 1e-5, entry
    # the conv forward's product with rows in place; the weight gradient's dot blocks (2 x s there)
    assert float(rows_at.split()[1]) < 1e-5 and float(rows_at.split()[2]) < 1e-5, rows_at


def test_host_kernel_passes_the_import_self_check():
    assert cpu_gemm.self_check(cpu_gemm.sgemm_arrays) < cpu_blas.SELF_CHECK_TOL


def test_a_kernel_that_fails_the_self_check_falls_back_to_openblas(monkeypatch):
    # a wrong GEMM (here: one that ignores beta) must never be routed to: the check catches it and warns
    def wrong(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta):
        cpu_gemm.sgemm_arrays(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, np.float32(0))

    assert cpu_gemm.self_check(wrong) > 1e-2
    # (the check as _register runs it: once per machine code, its result kept; test_warm_start tests that part)
    monkeypatch.setattr(cpu_blas, "_check_entry_once", lambda fn, name: 0.5)
    monkeypatch.delenv(cpu_blas.ENV_SGEMM, raising=False)
    monkeypatch.setattr(cpu_gemm, "V", 16)
    registered = []
    monkeypatch.setattr(cpu_blas.llvm, "add_symbol", lambda name, addr: registered.append(name))
    with pytest.warns(RuntimeWarning, match="disagrees with a float64 product.*using OpenBLAS"):
        name, why = cpu_blas._register()
    assert name == "openblas" and "self-check" in why and registered == [cpu_blas.SGEMM_SYMBOL]


@pytest.mark.parametrize("m,n", [(40, 12), (12, 40)])  # split along rows, then along columns
@pytest.mark.parametrize("relu", [0, 1])
def test_linear_epilogue_adds_bias_and_relu_on_every_block(m, n, relu):
    from tracejit.compiler.backends.cpu.blas import segment as G

    rng = np.random.default_rng(m + relu)
    k = 9
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)  # used transposed, as a Linear weight
    bias = rng.standard_normal(n).astype(np.float32)
    x[3, 2] = np.nan  # relu keeps NaN, as the op table's relu does
    want = x.astype(np.float64) @ w.T.astype(np.float64) + bias
    if relu:
        want = np.where(want < 0, 0, want)
    for fn, extra in ((G.gemm_bias_act, ()), (G.gemm_bias_act_par, (2,)), (G.gemm_bias_act_par, (3,))):
        out = np.full((m, n), -7.0, np.float32)
        fn(0, 1, m, n, k, x, k, w, k, bias, relu, out, *extra)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        assert np.isnan(out[3]).all()
