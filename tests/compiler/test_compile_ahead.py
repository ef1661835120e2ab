"""A blocking compile shares its kernels out over forked processes (compiler/background.compile_ahead, the CPU
backend's dry run in backends/cpu/ahead.py): the run then loads what the children compiled from the disk cache,
and its results are the ones a compile in one process gives -- also when a child fails or hangs, and when the
program updates optimizer state in place (the dry run must not touch it)."""

import os
import sys
import time

import numpy as np
import pytest

import tracejit
import tracejit.nn.functional as F
from tracejit.compiler import api, background

from .conftest import assert_same_state, batches, make_train_step, snapshot


class Net(tracejit.nn.Module):
    """Linear layers and an activation: each test its own depth and activation, so its kernels are its own (sizes
    and hyperparameters are arguments of the generated functions: another width or lr would share them)."""

    def __init__(self, width, act, depth):
        super().__init__()
        self.hidden = tracejit.nn.ModuleList([tracejit.nn.Linear(64 if i == 0 else width, width)
                                              for i in range(depth - 1)])
        self.out = tracejit.nn.Linear(width, 7)
        self.act = act

    def forward(self, x):
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.out(x)

pytestmark = pytest.mark.skipif(background.cpus() < 2 or not sys.platform.startswith("linux"),
                                reason="forked compile processes need a second CPU and Linux")


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(tmp_path / "kernels"))
    monkeypatch.delenv("TRACEJIT_TIERED", raising=False)
    monkeypatch.delenv("TRACEJIT_TIER_START", raising=False)


def _steps(act, processes, monkeypatch, n=3, eager=False, depth=2):
    """n steps of a two-layer net with Adam (state updated in place: 16384 elements and more), compiled blocking
    with `processes` (or eager): (losses, state, the compiled function)."""
    monkeypatch.setenv("TRACEJIT_COMPILE_PROCESSES", str(processes))
    tracejit.manual_seed(3)
    model = Net(256, act, depth)
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    step = make_train_step(model, opt, F.mse_loss)
    data = batches(n + 1, (9, 64), (9, 7), seed=2)
    step(*data[0])  # eager: the optimizer's state exists before the compile
    cf = step if eager else tracejit.compile(step, tiered=False, dynamic=False)
    losses = [float(cf(x, y).item()) for x, y in data[1:]]
    return losses, snapshot(model, opt), cf


def _loaded(cf):
    from tracejit.compiler.backends import get_backend

    return background.loads(cf.history[-1].program, get_backend("cpu"))


def test_kernels_compiled_in_two_processes_give_the_one_process_results(fresh_kernels, monkeypatch, capfd):
    losses, state, cf = _steps(F.relu, 2, monkeypatch)
    ahead = cf.history[-1].ahead
    assert ahead is not None and ahead["processes"] == 2 and ahead["functions"] >= 2 and ahead["failed"] == []
    hits, compiled = _loaded(cf)
    assert hits >= 1 and compiled >= 1  # the child's share came from the disk cache, this process's own share not
    assert "2 kernels, 0 from the cache, compiled in 2 processes" in capfd.readouterr().err
    told = api.explain_variant(cf, cf.history[-1])
    assert "compiled in 2 processes (TRACEJIT_COMPILE_PROCESSES): 2 functions in" in told
    # the same step compiled in one process (its own kernel cache: the sources compile again)
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", os.environ["TRACEJIT_CACHE_DIR"] + "-one")
    losses1, state1, cf1 = _steps(F.relu, 1, monkeypatch)
    assert cf1.history[-1].ahead is None
    assert losses == losses1
    assert_same_state(state, state1)
    losses_e, state_e, _ = _steps(F.relu, 1, monkeypatch, eager=True)
    np.testing.assert_allclose(losses, losses_e, rtol=1e-5)
    assert_same_state(state, state_e, rtol=1e-4, atol=1e-6)


def _failing(share):
    def work(t0):
        raise RuntimeError("no luck in this share")
    return work


def _hanging(share):
    def work(t0):
        time.sleep(600)
    return work


@pytest.mark.parametrize("child", ["fails", "hangs"])
def test_a_child_that_fails_or_hangs_costs_its_share_only(fresh_kernels, monkeypatch, child):
    monkeypatch.setattr(background, "_share_work", _failing if child == "fails" else _hanging)
    monkeypatch.setattr(background, "STUCK_S", 1.0)
    act, depth = (tracejit.tanh, 3) if child == "fails" else (tracejit.sigmoid, 4)
    losses, state, cf = _steps(act, 2, monkeypatch, depth=depth)
    ahead = cf.history[-1].ahead
    assert ahead is not None and len(ahead["failed"]) == 1
    assert ("exited with code 1" if child == "fails" else "used no CPU for 1 s") in ahead["failed"][0]
    hits, compiled = _loaded(cf)
    assert hits == 0 and compiled == len(cf.history[-1].program._generated())  # (the run compiled the rest)
    losses_e, state_e, _ = _steps(act, 1, monkeypatch, eager=True, depth=depth)
    np.testing.assert_allclose(losses, losses_e, rtol=1e-5)
    assert_same_state(state, state_e, rtol=1e-4, atol=1e-6)


def test_one_process_or_one_kernel_compiles_here(fresh_kernels, monkeypatch):
    monkeypatch.setenv("TRACEJIT_COMPILE_PROCESSES", "1")
    cf = tracejit.compile(lambda x: (x * 2.5 + 1.0).relu().sum(), tiered=False)
    x = tracejit.tensor(np.arange(-6, 6, dtype=np.float32).reshape(3, 4))
    assert cf(x).item() == pytest.approx(float(np.maximum(np.arange(-6, 6) * 2.5 + 1.0, 0).sum()))
    assert cf.history[-1].ahead is None
    monkeypatch.setenv("TRACEJIT_COMPILE_PROCESSES", "4")
    cf = tracejit.compile(lambda x: (x * 3.5 - 1.0).relu().sum(), tiered=False)
    assert cf(x).item() == pytest.approx(float(np.maximum(np.arange(-6, 6) * 3.5 - 1.0, 0).sum()))
    assert cf.history[-1].ahead is None  # (one generated function: nothing to share out)


def test_compile_processes_reads_the_environment(monkeypatch):
    monkeypatch.setenv("TRACEJIT_COMPILE_PROCESSES", "3")
    assert background.compile_processes() == 3
    monkeypatch.setenv("TRACEJIT_COMPILE_PROCESSES", "0")
    assert background.compile_processes() == 1
    monkeypatch.delenv("TRACEJIT_COMPILE_PROCESSES")
    assert background.compile_processes() == background.cpus()
    monkeypatch.setenv("TRACEJIT_COMPILE_PROCESSES", "many")
    with pytest.raises(ValueError, match="TRACEJIT_COMPILE_PROCESSES='many'"):
        background.compile_processes()
