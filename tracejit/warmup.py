"""`python -m tracejit warmup`: compile the CPU backend's own kernels (GEMM, convolution, pooling, index and
math helpers) into Numba's on-disk cache ahead of the first training step.

On a fresh install the first compiled LeNet step spends most of its time compiling these package kernels, not
the step's own generated code (see README, "Time to the first step"). They are shape-independent: the
package's helpers compile one specialization per argument kind (`compiler.backends.cpu.jit`), so compiling a
few tiny training steps -- a LeNet-style conv net, an MLP with Adam, elementwise math -- fills the cache for
every later shape. The steps' own generated kernels go to a temporary kernel cache, removed afterwards: only
the package's kernels stay (where Numba caches them: NUMBA_CACHE_DIR, or __pycache__ beside the package, or
the user-wide cache). Run it once after installing or upgrading tracejit, e.g. in a Dockerfile.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

__all__ = ["warmup"]


def tiny_convnet():
    """LeNet's layers at a tiny size (conv+relu+pool twice, then linear layers) on 3x32x32 inputs: warmup's conv
    net, whose package kernels every conv net of these layer kinds uses (tests/test_kernel_pack.py trains it)."""
    import tracejit as tj
    import tracejit.nn as nn
    import tracejit.nn.functional as F

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(4, 8, 5)
            self.fc1 = nn.Linear(8 * 5 * 5, 16)
            self.fc2 = nn.Linear(16, 10)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            return self.fc2(F.relu(self.fc1(tj.flatten(x, 1))))

    return ConvNet()


def _steps(dtype):
    """(name, compiled step, args) for each tiny workload, float32 or float64: a conv net with SGD, an MLP with
    Adam, an LSTM language model with gradient clipping."""
    import tracejit as tj
    import tracejit.nn as nn

    rng = np.random.default_rng(0)
    criterion = nn.CrossEntropyLoss()
    out = []
    for name, net, opt_cls, x_shape in (
        ("convnet", tiny_convnet(), "SGD", (4, 3, 32, 32)),
        # big enough (2*64*256*128 flops) for the GEMMs split over threads
        ("mlp", nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)), "Adam", (64, 256)),
    ):
        net = net.to(getattr(tj, np.dtype(dtype).name))
        opt = (
            tj.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            if opt_cls == "SGD"
            else tj.optim.Adam(net.parameters(), lr=1e-3)
        )

        x = tj.from_numpy(rng.standard_normal(x_shape).astype(dtype))
        y = tj.from_numpy(rng.integers(0, 10, x_shape[0]).astype(np.int64))
        out.append((name, tj.compile(_train_step(net, opt, criterion), backend="cpu", tiered=False), (x, y)))

    class TinyLM(nn.Module):  # a word-language-model step at a tiny size: embedding, LSTM, decoder
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.rnn = nn.LSTM(8, 16)
            self.decoder = nn.Linear(16, 20)

        def forward(self, x):
            out, _ = self.rnn(self.embed(x))
            return self.decoder(out).view(-1, 20)

    net = TinyLM().to(getattr(tj, np.dtype(dtype).name))
    opt = tj.optim.SGD(net.parameters(), lr=0.1)

    def lm_step(x, y):
        opt.zero_grad()
        loss = criterion(net(x), y.view(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 0.25)
        opt.step()
        return loss

    tokens = tj.from_numpy(rng.integers(0, 20, (3, 2)).astype(np.int64))
    targets = tj.from_numpy(rng.integers(0, 20, (3, 2)).astype(np.int64))
    out.append(("lstm", tj.compile(lm_step, backend="cpu", tiered=False), (tokens, targets)))
    return out


def _train_step(net, opt, criterion):
    def step(x, y):
        opt.zero_grad()
        loss = criterion(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def warmup(dtypes=("float32",), verbose: bool = True) -> dict:
    """Compile the CPU backend's kernels for `dtypes` into Numba's cache; returns {step name: seconds}."""
    times = {}
    tmp = tempfile.mkdtemp(prefix="tracejit-warmup-")
    saved = os.environ.get("TRACEJIT_CACHE_DIR")
    saved_eager = os.environ.get("TRACEJIT_EAGER_KERNELS")
    os.environ["TRACEJIT_CACHE_DIR"] = tmp  # the tiny steps' own kernels are not worth keeping
    if saved_eager != "off":  # the eager steps below run (and so compile) the eager kernels at their real signatures
        os.environ["TRACEJIT_EAGER_KERNELS"] = "sync"
    try:
        for dt in dtypes:
            for name, step, args in _steps(np.dtype(dt).type):
                t0 = time.perf_counter()
                step(*args)  # eager (float32: on the eager kernels, loaded first), creates the optimizer's state
                step(*args)  # traces, compiles and runs
                times[f"{name} {dt}"] = time.perf_counter() - t0
                if verbose:
                    print(f"tracejit warmup: {name} ({dt}) {times[f'{name} {dt}']:.1f} s", flush=True)
        from .compiler.backends import get_backend

        get_backend("cpu").warm_helpers(dtypes)  # what these steps do not reach at their sizes
    finally:
        for key, value in (("TRACEJIT_CACHE_DIR", saved), ("TRACEJIT_EAGER_KERNELS", saved_eager)):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)
    return times
