"""What tracejit says about the BLAS its compiled GEMMs call (`blas.describe`, `blas.pinned_note`)."""

from __future__ import annotations

import pytest

from tracejit.compiler.backends.cpu.blas import control as blas

SCIPY = "/v/lib/site-packages/scipy.libs/libscipy_openblas-1.so"
NUMPY = "/v/lib/site-packages/numpy.libs/libscipy_openblas64_-2.so"


def lib(kernels, path=SCIPY, used=True):
    return {"library": "openblas 0.3.30", "kernels": kernels, "threads": 2, "path": path, "used": used}


def test_describe_marks_scipys_blas_as_the_one_compiled_gemms_call():
    libs = blas.describe()
    assert libs, "SciPy's OpenBLAS should be visible through threadpoolctl"
    used = [b for b in libs if b["used"]]
    assert len(used) == 1 and "scipy" in used[0]["path"]
    assert all(b["kernels"] and b["library"] for b in libs)


@pytest.mark.parametrize("kernels", ["Haswell", "Zen", "Sandybridge"])
def test_pinned_note_warns_for_older_kernels_on_avx512(monkeypatch, kernels):
    monkeypatch.setenv("OPENBLAS_CORETYPE", kernels)
    note = blas.pinned_note([lib(kernels), lib("SkylakeX", NUMPY, used=False)], {"avx2", "avx512f"})
    assert note is not None
    assert f"OPENBLAS_CORETYPE={kernels}" in note and f"its {kernels} kernels" in note


@pytest.mark.parametrize(("env", "kernels", "flags"), [
    (None, "Haswell", {"avx512f"}),          # nothing pinned: OpenBLAS chose itself
    ("SkylakeX", "SkylakeX", {"avx512f"}),   # pinned to AVX-512 kernels already
    ("Haswell", "Haswell", {"avx2"}),        # the CPU has no AVX-512: Haswell is the best there is
])
def test_pinned_note_stays_quiet_otherwise(monkeypatch, env, kernels, flags):
    if env is None:
        monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_CORETYPE", env)
    assert blas.pinned_note([lib(kernels)], flags) is None


def test_pinned_note_looks_only_at_the_blas_compiled_gemms_call(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    # numpy's copy pinned, SciPy's (the one Numba calls) not: no warning
    assert blas.pinned_note([lib("SkylakeX"), lib("Haswell", NUMPY, used=False)], {"avx512f"}) is None
