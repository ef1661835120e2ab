"""Runs the CUDA backend's simulated tests (sim/) in their own processes with NUMBA_ENABLE_CUDASIM=1: the
simulator must be chosen before numba.cuda is first imported, and the other tests of this process must keep
seeing no GPU. Every CUDA kernel kind runs there, on tiny shapes, against eager CPU results (see sim/)."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


@pytest.mark.parametrize("module", ["test_kernels.py", "test_training.py", "test_eager.py"])
def test_simulated_cuda(module, tmp_path):
    # a private source cache (the disk-cache test counts hits); Numba's machine code of tracejit's own kernels
    # comes from the shared cache, as in the suite's other processes (a private one recompiles them: ~20 s of CPU)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", TRACEJIT_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-W", "ignore::RuntimeWarning", os.path.join(HERE, "sim", module)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-12000:]
    assert proc.returncode == 0, f"simulated CUDA tests in {module} failed:\n{tail}"
    assert " passed" in proc.stdout, tail
