"""Shared fixtures: a seeded NumPy generator; every test starts with grad mode on and a seeded default RNG."""

import os

import numpy as np
import pytest

# eager ops run their NumPy refs in the suite (deterministic, whatever ran before); the CPU backend's eager kernels
# are tested on their own (tests/compiler/test_eager_kernels.py), which installs them explicitly
os.environ.setdefault("TRACEJIT_EAGER_KERNELS", "off")
# compiles block (the default tiers big compiles in a child process): tests/compiler/test_tiered*.py turn it on
os.environ.setdefault("TRACEJIT_TIERED", "0")

import tracejit
import tracejit.autograd


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_global_state():
    tracejit.manual_seed(0)
    mode = tracejit.autograd.set_grad_enabled(True)
    mode.__enter__()
    yield
    mode.__exit__(None, None, None)
