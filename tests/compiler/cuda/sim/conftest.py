"""Fixtures for the simulated CUDA tests (NUMBA_ENABLE_CUDASIM=1 in this process: see ../test_simulator.py; on a
real GPU ../test_gpu.py runs them with TRACEJIT_CUDA_TESTS=gpu)."""

import os

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
assert SIM or os.environ.get("TRACEJIT_CUDA_TESTS") == "gpu", "run these through tests/compiler/cuda/test_simulator.py"

import tracejit  # noqa: E402
from tracejit.compiler.backends.cuda import launch  # noqa: E402


@pytest.fixture
def limits(monkeypatch):
    """The launch limits, restored after the test (tests lower them to force the block-tree, split and tiled
    kernels onto the simulator's tiny shapes)."""
    lim = launch.limits()
    for name in list(vars(lim)):
        monkeypatch.setattr(lim, name, getattr(lim, name))
    return lim


def on_cuda(*arrays):
    return [tracejit.from_numpy(np.ascontiguousarray(a)).to("cuda") for a in arrays]


def host(t):
    return t.detach().cpu().numpy()
