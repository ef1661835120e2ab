"""The same workloads in PyTorch eager, torch.compile and jax.jit, from the same initial arrays (lstm and gpt in
seq_peers.py).

Peers are optional (`pip install 'tracejit[peers]'`): `availability()` says which import, and a missing
one is skipped with a note, never an error.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np

from .workloads import Built, Workload

PEERS = ("torch", "torch.compile", "jax.jit")


def availability(name: str) -> str | None:
    """None when peer `name` can run here, else why not (a short note for the table)."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
    module = "jax" if name == "jax.jit" else "torch"
    if importlib.util.find_spec(module) is None:
        return f"{module} not installed (pip install 'tracejit[peers]')"
    return None


def build_peer(workload: Workload, cfg: dict, arrays: dict, peer: str) -> Built:
    """A `Built` that runs one unit of `workload` in `peer` ('torch', 'torch.compile' or 'jax.jit')."""
    why = availability(peer)
    if why:
        raise RuntimeError(why)
    if peer == "jax.jit":
        return _JAX[workload.name](cfg, arrays)
    return _TORCH[workload.name](cfg, arrays, peer == "torch.compile")


# ---------------------------------------------------------------------------------------------- torch
def _torch_value(out) -> float:
    out = out[0] if isinstance(out, (tuple, list)) else out
    return float(out.detach())


def _torch_module(module, params: dict):
    import torch

    module.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in params.items()})
    return module


def _torch_lenet_module():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class LeNet(nn.Module):
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
            x = torch.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    return LeNet()


def _torch_train(model, opt, loss_fn, x, y, compiled: bool, repeat: int = 1) -> Built:
    import torch

    def train_step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    # the whole step, backward and optimizer included, as tracejit compiles it
    step = torch.compile(train_step) if compiled else train_step

    def run():
        for _ in range(repeat):
            loss = step(x, y)
        return loss

    return Built(run, _torch_value)


def _torch_lenet(cfg: dict, arrays: dict, compiled: bool) -> Built:
    import torch

    model = _torch_module(_torch_lenet_module(), arrays["params"])
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    x, y = torch.from_numpy(arrays["x"].copy()), torch.from_numpy(arrays["y"].copy())
    return _torch_train(model, opt, torch.nn.CrossEntropyLoss(), x, y, compiled)


def _torch_mlp(cfg: dict, arrays: dict, compiled: bool) -> Built:
    import torch
    import torch.nn as nn

    sizes = cfg["sizes"]
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = _torch_module(nn.Sequential(*layers), arrays["params"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    x, y = torch.from_numpy(arrays["x"].copy()), torch.from_numpy(arrays["y"].copy())
    return _torch_train(model, opt, torch.nn.functional.cross_entropy, x, y, compiled)


def _torch_ewchain(cfg: dict, arrays: dict, compiled: bool) -> Built:
    import torch

    def ewchain(x):
        y = torch.tanh(x) * torch.sigmoid(x) + torch.exp(-(x * x))
        loss = y.sum()
        (g,) = torch.autograd.grad(loss, [x])
        return loss, g

    fn = torch.compile(ewchain) if compiled else ewchain
    x = torch.from_numpy(arrays["x"].copy()).requires_grad_()
    return Built(lambda: fn(x), _torch_value)


def _torch_convblock(cfg: dict, arrays: dict, compiled: bool) -> Built:
    import torch
    import torch.nn.functional as F

    conv = _torch_module(torch.nn.Conv2d(cfg["cin"], cfg["cout"], 3, padding=1), arrays["params"])
    x = torch.from_numpy(arrays["x"].copy()).requires_grad_()
    gout = torch.from_numpy(arrays["gout"].copy())

    def conv_block(x, gout):
        y = F.max_pool2d(F.relu(conv(x)), 2)
        loss = (y * gout).sum()
        gx, gw, gb = torch.autograd.grad(loss, [x, conv.weight, conv.bias])
        return loss, gx, gw, gb

    fn = torch.compile(conv_block) if compiled else conv_block
    return Built(lambda: fn(x, gout), _torch_value)


def _torch_linreg(cfg: dict, arrays: dict, compiled: bool) -> Built:
    import torch

    model = _torch_module(torch.nn.Linear(1, 1), arrays["params"])
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    x, y = torch.from_numpy(arrays["x"].copy()), torch.from_numpy(arrays["y"].copy())
    return _torch_train(model, opt, torch.nn.MSELoss(), x, y, compiled, repeat=cfg["steps"])


_TORCH: dict[str, Callable[[dict, dict, bool], Built]] = {
    "lenet": _torch_lenet, "mlp": _torch_mlp, "ewchain": _torch_ewchain, "convblock": _torch_convblock,
    "linreg": _torch_linreg,
}


# ------------------------------------------------------------------------------------------------ jax
# Written functionally, as JAX code is: parameters and optimizer state go in and come out of one jitted
# step (buffers donated, so updates happen in place as in the other frameworks), and every call blocks
# until its result is ready, because JAX dispatches asynchronously.
def _jax_value(out) -> float:
    return float(np.asarray(out))


def _jax_params(params: dict) -> dict:
    import jax.numpy as jnp

    return {k: jnp.asarray(v) for k, v in params.items()}


def _jax_conv(x, w, b, padding):
    from jax import lax

    y = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + b[None, :, None, None]


def _jax_pool(x):
    import jax.numpy as jnp
    from jax import lax

    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def _jax_linear(p: dict, name: str, x):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def _jax_cross_entropy(logits, y):
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _jax_sgd_momentum(loss_fn, lr: float, momentum: float):
    """A jitted (params, buffers, x, y) -> (params, buffers, loss) step; PyTorch's SGD update rule."""
    import jax

    def step(p, buf, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        buf = {k: momentum * buf[k] + g[k] for k in p}
        p = {k: p[k] - lr * buf[k] for k in p}
        return p, buf, loss

    return jax.jit(step, donate_argnums=(0, 1))


def _jax_loop(step, p, state, x, y, repeat: int = 1) -> Built:
    box = [p, state]

    def run():
        for _ in range(repeat):
            box[0], box[1], loss = step(box[0], box[1], x, y)
        return loss.block_until_ready()

    return Built(run, _jax_value)


def _jax_lenet(cfg: dict, arrays: dict) -> Built:
    import jax
    import jax.numpy as jnp

    def forward(p, x):
        x = _jax_pool(jax.nn.relu(_jax_conv(x, p["conv1.weight"], p["conv1.bias"], "VALID")))
        x = _jax_pool(jax.nn.relu(_jax_conv(x, p["conv2.weight"], p["conv2.bias"], "VALID")))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(_jax_linear(p, "fc1", x))
        x = jax.nn.relu(_jax_linear(p, "fc2", x))
        return _jax_linear(p, "fc3", x)

    step = _jax_sgd_momentum(lambda p, x, y: _jax_cross_entropy(forward(p, x), y), cfg["lr"], cfg["momentum"])
    p = _jax_params(arrays["params"])
    buf = {k: jnp.zeros_like(v) for k, v in p.items()}
    return _jax_loop(step, p, buf, jnp.asarray(arrays["x"]), jnp.asarray(arrays["y"]))


def _jax_mlp(cfg: dict, arrays: dict) -> Built:
    import jax
    import jax.numpy as jnp

    n_layers = len(cfg["sizes"]) - 1
    names = [str(2 * i) for i in range(n_layers)]  # nn.Sequential's names: Linear, ReLU, Linear, ...
    lr, b1, b2, eps = cfg["lr"], 0.9, 0.999, 1e-8

    def loss_fn(p, x, y):
        for i, name in enumerate(names):
            x = _jax_linear(p, name, x)
            if i < n_layers - 1:
                x = jax.nn.relu(x)
        return _jax_cross_entropy(x, y)

    def step(p, st, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        t = st["t"] + 1.0
        m = {k: b1 * st["m"][k] + (1 - b1) * g[k] for k in p}
        v = {k: b2 * st["v"][k] + (1 - b2) * g[k] * g[k] for k in p}
        c1, c2 = 1 - b1**t, 1 - b2**t  # PyTorch's Adam: bias-corrected moments
        p = {k: p[k] - lr * (m[k] / c1) / (jnp.sqrt(v[k] / c2) + eps) for k in p}
        return p, {"t": t, "m": m, "v": v}, loss

    p = _jax_params(arrays["params"])
    zeros = {k: jnp.zeros_like(v) for k, v in p.items()}
    st = {"t": jnp.zeros((), jnp.float32), "m": zeros, "v": {k: jnp.zeros_like(v) for k, v in p.items()}}
    return _jax_loop(jax.jit(step, donate_argnums=(0, 1)), p, st, jnp.asarray(arrays["x"]),
                     jnp.asarray(arrays["y"]))


def _jax_ewchain(cfg: dict, arrays: dict) -> Built:
    import jax
    import jax.numpy as jnp

    def loss_fn(x):
        return jnp.sum(jnp.tanh(x) * jax.nn.sigmoid(x) + jnp.exp(-(x * x)))

    fn = jax.jit(jax.value_and_grad(loss_fn))
    x = jnp.asarray(arrays["x"])

    def run():
        loss, g = fn(x)
        g.block_until_ready()
        return loss

    return Built(run, _jax_value)


def _jax_convblock(cfg: dict, arrays: dict) -> Built:
    import jax
    import jax.numpy as jnp

    def loss_fn(x, w, b, gout):
        y = _jax_pool(jax.nn.relu(_jax_conv(x, w, b, ((1, 1), (1, 1)))))
        return jnp.sum(y * gout)

    fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))
    x, gout = jnp.asarray(arrays["x"]), jnp.asarray(arrays["gout"])
    w, b = jnp.asarray(arrays["params"]["weight"]), jnp.asarray(arrays["params"]["bias"])

    def run():
        loss, grads = fn(x, w, b, gout)
        jax.block_until_ready(grads)
        return loss

    return Built(run, _jax_value)


def _jax_linreg(cfg: dict, arrays: dict) -> Built:
    import jax
    import jax.numpy as jnp

    lr = cfg["lr"]

    def loss_fn(p, x, y):
        return jnp.mean((_jax_linear(p, "", x) - y) ** 2)

    def step(p, unused, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        return {k: p[k] - lr * g[k] for k in p}, unused, loss

    p = {"." + k: v for k, v in _jax_params(arrays["params"]).items()}  # names ".weight", ".bias"
    return _jax_loop(jax.jit(step, donate_argnums=(0,)), p, jnp.zeros(()), jnp.asarray(arrays["x"]),
                     jnp.asarray(arrays["y"]), repeat=cfg["steps"])


_JAX: dict[str, Callable[[dict, dict], Built]] = {
    "lenet": _jax_lenet, "mlp": _jax_mlp, "ewchain": _jax_ewchain, "convblock": _jax_convblock,
    "linreg": _jax_linreg,
}


from .seq_peers import SEQ_JAX, SEQ_TORCH  # noqa: E402 (written with the helpers above)

_TORCH.update(SEQ_TORCH)
_JAX.update(SEQ_JAX)
