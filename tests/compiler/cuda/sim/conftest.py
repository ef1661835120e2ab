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


if os.environ.get("TRACEJIT_RECORD_CUDA_KERNELS"):
    # benchmarks/cuda_ptx_check.py: every kernel these tests launch, with its argument dtypes, appended to a JSON
    # lines file, to compile them for a real GPU (PTX) outside the simulator
    import json

    from tracejit.compiler.backends.cuda import steps as _steps

    _seen: set = set()
    _call = _steps.Step.__call__

    def _recording_call(self, args, given=()):
        outs = _call(self, args, given)
        arrays = {"in": args, "out": outs}
        for ln in self.launch_specs:
            dts = []
            for kind, i in ln.args:
                if kind in arrays:
                    dts.append(arrays[kind][i].dtype.str)
                elif kind == "tmp":
                    dts.append(np.dtype(self.temps[i][1]).str)
                else:  # the index-check flags
                    dts.append(np.dtype(np.int64).str)
            key = (self.source, ln.fn, tuple(dts))
            if self.source and key not in _seen:
                _seen.add(key)
                with open(os.environ["TRACEJIT_RECORD_CUDA_KERNELS"], "a") as fh:
                    fh.write(json.dumps({"source": self.source, "fn": ln.fn, "dtypes": dts}) + "\n")
        return outs

    _steps.Step.__call__ = _recording_call
