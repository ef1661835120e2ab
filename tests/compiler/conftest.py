"""Small models, step functions and state snapshots shared by the compiler tests.

Shapes are tiny so the reference backend (NumPy interpreter) runs every differential test in milliseconds.
`snapshot()` copies everything a training step can change (parameters, grads, buffers, optimizer state,
learning rates, RNG state) into plain arrays, so "compiled == eager" is one `assert_same_state` call.
"""

from __future__ import annotations

import numpy as np
import pytest

import tracejit
import tracejit.nn as nn
import tracejit.nn.functional as F


class LeNet(nn.Module):
    """LeNet-5's shape at a quarter of the channels: 3x32x32 in, 10 classes out."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 5)
        self.conv2 = nn.Conv2d(4, 8, 5)
        self.fc1 = nn.Linear(8 * 5 * 5, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class MLP(nn.Module):
    def __init__(self, n_in=8, hidden=16, n_out=4):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class BNDropCNN(nn.Module):
    """conv -> BatchNorm2d -> relu -> pool -> dropout -> linear: running stats and RNG state as graph state."""

    def __init__(self, p=0.5):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(x.flatten(1)))


def twin(factory, seed=0):
    """Two independently built but identical objects (same seed for the default generator)."""
    tracejit.manual_seed(seed)
    a = factory()
    tracejit.manual_seed(seed)
    b = factory()
    return a, b


def make_train_step(model, opt, loss_fn, set_to_none=True):
    """The canonical step (closure over model/opt, which is how the tracer finds the state)."""

    def train_step(x, y):
        opt.zero_grad(set_to_none=set_to_none)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return train_step


def batches(n, x_shape, y_kind, seed=0, n_classes=10):
    """`n` (x, y) pairs of tensors from NumPy (never from tracejit's default generator)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = tracejit.tensor(rng.standard_normal(x_shape).astype(np.float32))
        if y_kind == "class":
            y = tracejit.tensor(rng.integers(0, n_classes, size=x_shape[0]).astype(np.int64))
        else:
            y = tracejit.tensor(rng.standard_normal(y_kind).astype(np.float32))
        out.append((x, y))
    return out


def _arr(t):
    return None if t is None else np.array(t.detach().numpy(), copy=True)


def snapshot(model=None, opt=None, rng=True, extra=()):
    """name -> array copy (or None) of everything a step can change."""
    snap = {}
    if model is not None:
        for name, p in model.named_parameters():
            snap[f"param {name}"] = _arr(p)
            snap[f"grad {name}"] = _arr(p.grad)
        for name, b in model.named_buffers():
            snap[f"buffer {name}"] = _arr(b)
    if opt is not None:
        index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
        for gi, g in enumerate(opt.param_groups):
            snap[f"lr {gi}"] = _arr(g.tensor("lr"))
            snap[f"lr float {gi}"] = np.array(g["lr"])
        for p, st in opt.state.items():
            for key, v in st.items():
                snap[f"opt state {index[id(p)]}.{key}"] = _arr(v) if isinstance(v, tracejit.Tensor) else v
    if rng:
        snap["rng"] = _arr(tracejit.default_generator.state)
    for i, t in enumerate(extra):
        snap[f"extra {i}"] = _arr(t)
    return snap


def assert_same_state(a: dict, b: dict, rtol: float | None = None, atol: float = 0.0):
    """Equality of two snapshots: dtypes, shapes and None-ness always; values exactly, or within rtol/atol."""
    assert a.keys() == b.keys(), f"different state: {sorted(a.keys() ^ b.keys())}"
    for k in a:
        x, y = a[k], b[k]
        if x is None or y is None:
            assert x is None and y is None, f"{k}: {x!r} vs {y!r}"
            continue
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, f"{k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if rtol is not None:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=k)
            continue
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{k} differs:\n{x}\nvs\n{y}"


def assert_same_values(xs, ys):
    """Returned tensors (or lists of them) equal exactly."""
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert np.array_equal(_arr(x), _arr(y)), f"{_arr(x)} vs {_arr(y)}"


@pytest.fixture
def lenet_setup():
    """(model, opt, step) for LeNet + SGD momentum + cross-entropy, and 3 batches of 4 images."""
    model = LeNet()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, opt, make_train_step(model, opt, F.cross_entropy), batches(3, (4, 3, 32, 32), "class")


@pytest.fixture
def mlp_setup():
    """(model, opt, step) for an MLP + Adam + MSE, and 4 batches of 6 rows."""
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    return model, opt, make_train_step(model, opt, F.mse_loss), batches(4, (6, 8), (6, 4))
