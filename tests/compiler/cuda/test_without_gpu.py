"""Where CUDA cannot run, `.to("cuda")`, `device="cuda"` and `compile(backend="cuda")` raise one clear error saying
why and how to check -- never a Numba traceback -- and asking costs no Numba import. Each case runs in a fresh
process: without the simulator and with every GPU hidden (CUDA_VISIBLE_DEVICES=""), or with numba-cuda hidden."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))

SCRIPT = """
import sys
{prelude}
import tracejit, tracejit.nn as nn
assert tracejit.cuda.is_available() is False and tracejit.cuda.device_count() == 0
assert 'numba' not in sys.modules, 'is_available() imported numba'
assert tracejit.cuda.memory_allocated() == tracejit.cuda.memory_reserved() == 0  # as PyTorch without CUDA
for make in (lambda: tracejit.ones(2).to("cuda"), lambda: tracejit.zeros(2, device="cuda"),
             lambda: nn.Linear(2, 2).cuda(), lambda: tracejit.compile(lambda x: x, backend="cuda")):
    try:
        make()
    except RuntimeError as e:
        print("ERROR", type(e).__name__, e)
    else:
        raise SystemExit("no error")
"""

HIDE_NUMBA_CUDA = """
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "numba_cuda" else _find(name, *a)
"""


@pytest.mark.parametrize("case", ["no_gpu", "no_numba_cuda"])
def test_cuda_unavailable_is_one_clear_error(case, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    prelude = HIDE_NUMBA_CUDA if case == "no_numba_cuda" else ""
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(prelude=prelude)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERROR")]
    assert len(errors) == 4, proc.stdout
    for line in errors:
        assert "CUDA is not available to tracejit: " in line and "python -m tracejit info" in line, line
        assert "Traceback" not in line
        if case == "no_numba_cuda":
            assert "numba-cuda is not installed; pip install 'tracejit[cuda]'" in line, line
        else:
            assert "NVIDIA driver" in line and "NUMBA_ENABLE_CUDASIM=1" in line, line
    assert errors[0].startswith("ERROR DeviceUnavailableError Torch not compiled with CUDA enabled: ")
    assert errors[3].startswith("ERROR BackendUnavailable ")
