"""The package kernels' dispatcher (cpu/jit.py): one specialization per argument kind, not per constant, and
`python -m tracejit warmup`, which relies on that to fill Numba's cache from tiny steps."""

import os

import numba
import numpy as np
from numba.core import types

import tracejit as tj
from tracejit.compiler.backends.cpu import index, jit
from tracejit.compiler.backends.cpu.blas import calls, segment
from tracejit.compiler.backends.cpu.window import conv, im2col


def test_a_helper_compiles_once_whatever_constants_it_is_called_with():
    @jit.helper()
    def head_sum_times(a, n, k):
        return a[:n].sum() * k

    @numba.njit
    def caller(a):
        return head_sum_times(a, 3, 2) + head_sum_times(a, 4, 5) + head_sum_times(a, np.int32(2), 1)

    a = np.arange(10.0)
    assert caller(a) == 3 * 2 + 6 * 5 + 1 * 1
    (sig,) = head_sum_times.signatures  # literals dropped, int32 widened: one compilation
    assert sig == (types.float64[::1], types.intp, types.intp)
    assert head_sum_times(a, 4, 2) == 12.0  # called from Python as before


def test_package_kernels_use_the_helper_dispatcher():
    for fn in (calls.gemm_at, calls.gemm_beta, segment._bias_act, im2col.conv_fwd_kernel,
               im2col.conv_bwd_kernel, conv.conv_s1_kernel, index.copy_block, index.check_index, index.gather3):
        assert isinstance(fn, jit.HelperDispatcher), fn


def test_compiled_linear_layers_of_any_shape_call_gemm_without_literal_types():
    for n_in, n_out in ((5, 3), (7, 2)):
        net = tj.nn.Linear(n_in, n_out)
        step = tj.compile(lambda x, net=net: net(x).sum(), backend="cpu")
        x = tj.from_numpy(np.ones((4, n_in), np.float32))
        np.testing.assert_allclose(step(x).item(), net(x).sum().item(), rtol=1e-5)
    for fn in (calls.gemm_at, segment._bias_act):
        for sig in fn.signatures:
            assert not any(isinstance(t, types.Literal) for t in sig), (fn, sig)
    assert set(segment._entries) <= {"f32", "f64"}  # segments call one C entry per dtype (blas.segment)


def test_a_cat_of_many_pieces_compiles_its_copy_helper_once(tmp_path, monkeypatch):
    # a kernel cache of its own: a segment another test process put in the shared one would load with its
    # helpers linked in, and copy_block would never be typed here
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(tmp_path / "kernels"))
    parts = [tj.from_numpy(np.full((2, 3), i, np.float32)) for i in range(7)]
    w = tj.from_numpy(np.arange(9, dtype=np.float32).reshape(3, 3))
    step = tj.compile(lambda *xs: tj.cat([x @ w for x in xs], 1).sum(0), backend="cpu")  # pieces: GEMM outputs
    want = np.concatenate([p.numpy() @ w.numpy() for p in parts], 1).sum(0)
    np.testing.assert_allclose(step(*parts).numpy(), want, rtol=1e-6)
    assert len(index.copy_block.signatures) == 1  # not one per piece's offset


def test_warmup_runs_its_steps_in_a_temporary_kernel_cache(tmp_path, monkeypatch):
    from tracejit.warmup import warmup

    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv("TRACEJIT_EAGER_KERNELS", raising=False)
    times = warmup(verbose=False)
    assert set(times) == {"convnet float32", "mlp float32", "lstm float32"} and all(t > 0 for t in times.values())
    assert os.environ["TRACEJIT_CACHE_DIR"] == str(tmp_path / "mine")  # restored
    assert "TRACEJIT_EAGER_KERNELS" not in os.environ  # (set to sync while its eager steps ran)
    assert not (tmp_path / "mine").exists()  # the tiny steps' kernels went elsewhere


def _run(code: str, **env) -> str:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, **env), cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


PREPARE = """
import numpy as np, tracejit as tj
from tracejit.compiler.backends.cpu import prepare
before = prepare._thread
f = tj.compile(lambda a, b: (a * b + 1).sum(), backend="cpu")
started = prepare._thread is not None
again = prepare.start()
x = tj.from_numpy(np.arange(6, dtype=np.float32)); y = tj.from_numpy(np.full(6, 2, np.float32))
print(before is None, started, again is None, f(x, y).item(), f(x, y).item())
"""


def test_the_cpu_backend_prepares_once_in_the_background_and_computes_the_same():
    assert _run(PREPARE) == "True True True 36.0 36.0"
    assert _run(PREPARE, TRACEJIT_PREPARE="0") == "True False True 36.0 36.0"
