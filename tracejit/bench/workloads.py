"""The benchmark workloads (lenet, mlp, ewchain, convblock, linreg; lstm and gpt in seq_workloads.py) written once
for tracejit.

Each workload draws its initial weights and data as NumPy arrays, so every mode and every peer
(`peers.py`) starts from identical numbers and their losses can be cross-checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F

TRACEJIT_MODES = ("eager", "reference", "cpu", "cuda")


@dataclass
class Built:
    """A ready-to-time unit of work: `run()` does one step (or the stated function) and returns its loss."""

    run: Callable[[], Any]
    value: Callable[[Any], float]


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    unit: str  # what one timed call is: "step", "call" or "{steps} steps" (formatted with the config)
    config: Callable[[bool], dict]
    arrays: Callable[[dict], dict]
    build: Callable[[dict, dict, str | None], Built]  # (config, arrays, backend or None for eager)
    floor_bytes: Callable[[dict], int] | None = None  # DRAM bytes one unit must move at least
    notes: list[str] = field(default_factory=list)


def _tensor(a: np.ndarray):
    # a private copy: eager in-place updates must not leak into the arrays other modes start from; made on the
    # default device (the GPU while the cuda mode builds)
    return tj.from_numpy(np.array(a, copy=True)).to(tj.get_default_device())


def _compiled(fn, backend: str | None):
    # blocking: the bench times compiled steps and compile times (the first-step section times tiering)
    return fn if backend is None else tj.compile(fn, backend=backend, tiered=False)


def _loss_value(out) -> float:
    out = out[0] if isinstance(out, (tuple, list)) else out
    return float(out.detach().cpu().numpy())


def _state_arrays(module: nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _load(module: nn.Module, params: dict) -> nn.Module:
    module.load_state_dict({k: _tensor(v) for k, v in params.items()})
    return module


# ---------------------------------------------------------------------------------------------- lenet
class LeNet(nn.Module):
    """The PyTorch CIFAR-10 tutorial's network (3x32x32 input, 10 classes)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = tj.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _lenet_config(quick: bool) -> dict:
    return {"batch": 2 if quick else 64, "lr": 0.001, "momentum": 0.9}


def _lenet_arrays(cfg: dict) -> dict:
    tj.manual_seed(0)
    rng = np.random.default_rng(0)
    return {"params": _state_arrays(LeNet()),
            "x": rng.standard_normal((cfg["batch"], 3, 32, 32), dtype=np.float32),
            "y": rng.integers(0, 10, cfg["batch"]).astype(np.int64)}


def _lenet_build(cfg: dict, arrays: dict, backend: str | None) -> Built:
    model = _load(LeNet(), arrays["params"])
    opt = tj.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    criterion = nn.CrossEntropyLoss()
    x, y = _tensor(arrays["x"]), _tensor(arrays["y"])

    def train_step(x, y):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = _compiled(train_step, backend)
    return Built(lambda: step(x, y), _loss_value)


# ------------------------------------------------------------------------------------------------ mlp
def _mlp_config(quick: bool) -> dict:
    return {"sizes": (784, 32, 32, 10) if quick else (784, 512, 512, 10), "batch": 8 if quick else 128,
            "lr": 1e-3}


def mlp_model(sizes) -> nn.Module:
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _mlp_arrays(cfg: dict) -> dict:
    tj.manual_seed(1)
    rng = np.random.default_rng(1)
    return {"params": _state_arrays(mlp_model(cfg["sizes"])),
            "x": rng.standard_normal((cfg["batch"], cfg["sizes"][0]), dtype=np.float32),
            "y": rng.integers(0, cfg["sizes"][-1], cfg["batch"]).astype(np.int64)}


def _mlp_build(cfg: dict, arrays: dict, backend: str | None) -> Built:
    model = _load(mlp_model(cfg["sizes"]), arrays["params"])
    opt = tj.optim.Adam(model.parameters(), lr=cfg["lr"])
    x, y = _tensor(arrays["x"]), _tensor(arrays["y"])

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = _compiled(train_step, backend)
    return Built(lambda: step(x, y), _loss_value)


# -------------------------------------------------------------------------------------------- ewchain
def _ewchain_config(quick: bool) -> dict:
    return {"n": 2**12 if quick else 2**22}


def _ewchain_arrays(cfg: dict) -> dict:
    return {"x": np.random.default_rng(2).standard_normal(cfg["n"], dtype=np.float32)}


def ewchain_fn(x):
    """y = tanh(x) * sigmoid(x) + exp(-x*x); returns (sum(y), dsum/dx): forward + backward."""
    y = x.tanh() * x.sigmoid() + (-(x * x)).exp()
    loss = y.sum()
    (g,) = tj.autograd.grad(loss, [x])
    return loss, g


def _ewchain_build(cfg: dict, arrays: dict, backend: str | None) -> Built:
    x = _tensor(arrays["x"]).requires_grad_()
    fn = _compiled(ewchain_fn, backend)
    return Built(lambda: fn(x), _loss_value)


def _ewchain_floor(cfg: dict) -> int:
    # fully fused, the chain reads x once and writes its gradient once: 4 + 4 bytes per element
    return cfg["n"] * 8


# ------------------------------------------------------------------------------------------ convblock
def _convblock_config(quick: bool) -> dict:
    if quick:
        return {"batch": 2, "cin": 4, "cout": 8, "hw": 8}
    return {"batch": 32, "cin": 16, "cout": 32, "hw": 32}


def _convblock_arrays(cfg: dict) -> dict:
    tj.manual_seed(3)
    rng = np.random.default_rng(3)
    b, hw = cfg["batch"], cfg["hw"]
    return {"params": _state_arrays(nn.Conv2d(cfg["cin"], cfg["cout"], 3, padding=1)),
            "x": rng.standard_normal((b, cfg["cin"], hw, hw), dtype=np.float32),
            # the gradient flowing in from the rest of a network
            "gout": rng.standard_normal((b, cfg["cout"], hw // 2, hw // 2), dtype=np.float32)}


def _convblock_build(cfg: dict, arrays: dict, backend: str | None) -> Built:
    conv = _load(nn.Conv2d(cfg["cin"], cfg["cout"], 3, padding=1), arrays["params"])
    x = _tensor(arrays["x"]).requires_grad_()
    gout = _tensor(arrays["gout"])

    def conv_block(x, gout):
        """max_pool2d(relu(conv2d(x))) forward, then gradients for x, weight and bias."""
        y = F.max_pool2d(F.relu(conv(x)), 2)
        loss = (y * gout).sum()
        gx, gw, gb = tj.autograd.grad(loss, [x, conv.weight, conv.bias])
        return loss, gx, gw, gb

    fn = _compiled(conv_block, backend)
    return Built(lambda: fn(x, gout), _loss_value)


# --------------------------------------------------------------------------------------------- linreg
def _linreg_config(quick: bool) -> dict:
    return {"steps": 20 if quick else 1000, "batch": 64, "lr": 0.01}


def _linreg_arrays(cfg: dict) -> dict:
    tj.manual_seed(4)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((cfg["batch"], 1), dtype=np.float32)
    y = (2.0 * x + 3.0 + 0.01 * rng.standard_normal((cfg["batch"], 1))).astype(np.float32)
    return {"params": _state_arrays(nn.Linear(1, 1)), "x": x, "y": y}


def _linreg_build(cfg: dict, arrays: dict, backend: str | None) -> Built:
    model = _load(nn.Linear(1, 1), arrays["params"])
    opt = tj.optim.SGD(model.parameters(), lr=cfg["lr"])
    criterion = nn.MSELoss()
    x, y = _tensor(arrays["x"]), _tensor(arrays["y"])

    def train_step(x, y):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = _compiled(train_step, backend)
    steps = cfg["steps"]

    def run():
        for _ in range(steps):  # per-call overhead is what this workload measures
            loss = step(x, y)
        return loss

    return Built(run, _loss_value)


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("lenet", "LeNet (CIFAR-10 tutorial), batch 64, 3x32x32, cross-entropy, SGD momentum 0.9",
             "step", _lenet_config, _lenet_arrays, _lenet_build),
    Workload("mlp", "MLP 784-512-512-10, ReLU, batch 128, cross-entropy, Adam", "step",
             _mlp_config, _mlp_arrays, _mlp_build),
    Workload("ewchain", "tanh(x)*sigmoid(x)+exp(-x*x) on 2**22 floats, sum, gradient (fwd+bwd)", "call",
             _ewchain_config, _ewchain_arrays, _ewchain_build, floor_bytes=_ewchain_floor),
    Workload("convblock", "conv2d 16->32 k3 pad 1 + relu + max_pool2d 2, batch 32, 32x32, fwd+bwd", "call",
             _convblock_config, _convblock_arrays, _convblock_build),
    Workload("linreg", "Linear(1,1), MSE, SGD lr 0.01, batch 64: 1000 tiny steps timed as one unit",
             "{steps} steps", _linreg_config, _linreg_arrays, _linreg_build),
]}

from .seq_workloads import SEQ_WORKLOADS  # noqa: E402 (written with the helpers above)

WORKLOADS.update(SEQ_WORKLOADS)


def _synchronized(run):
    def run_and_wait():
        out = run()
        tj.cuda.synchronize()
        return out

    return run_and_wait


def build_tracejit(workload: Workload, cfg: dict, arrays: dict, mode: str) -> Built:
    """One tracejit mode of `workload`: 'eager' or a compile backend ('reference', 'cpu', 'cuda')."""
    if mode not in TRACEJIT_MODES:
        raise ValueError(f"unknown tracejit mode {mode!r}; choose one of {', '.join(TRACEJIT_MODES)}")
    if mode == "cuda":
        # as a PyTorch user's GPU code: the model, its state and the data live on the GPU (made there), and the
        # compiled step follows them (only what the user reads comes back)
        with tj.device("cuda"):
            built = workload.build(cfg, arrays, None)
        # kernels run asynchronously: a timed call ends when the GPU has finished it
        return Built(_synchronized(built.run), built.value)
    return workload.build(cfg, arrays, None if mode == "eager" else mode)
