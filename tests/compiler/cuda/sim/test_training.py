"""Compiled training steps on device="cuda" (Numba's simulator) against the same steps compiled on the CPU:
a small CNN (conv+bias+relu+pool fused forward and backward, a padded conv, a linear layer) and an MLP with
BatchNorm and dropout, both with Adam; parameters, gradients, optimizer state and BatchNorm statistics compared
after 3 steps. State stays on the device: a step moves only CPU scalars."""

import os
import subprocess
import sys

import numpy as np
import pytest

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler.backends import get_backend
from tracejit.compiler.backends.cuda.memory import CudaBuffer
from tracejit.compiler.ir import FusedKind, Pattern

from .conftest import host


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def mlp():
    return nn.Sequential(nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.25), nn.Linear(8, 5))


def _data(shape, steps=3):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(steps)]
    ys = [rng.integers(0, 5, shape[0]).astype(np.int64) for _ in range(steps)]
    return xs, ys


def _train(make_model, device, shape, steps=3, lr=0.01):
    tj.manual_seed(0)
    model = make_model().to(device)
    opt = tj.optim.Adam(model.parameters(), lr=lr)

    @tj.compile
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    xs, ys = _data(shape, steps)
    losses = [step(tj.from_numpy(x).to(device), tj.from_numpy(y).to(device)).item() for x, y in zip(xs, ys)]
    return model, opt, losses, step


def _state(model, opt):
    out = {f"param {n}": host(p) for n, p in model.named_parameters()}
    out.update({f"grad {n}": host(p.grad) for n, p in model.named_parameters()})
    out.update({f"buffer {n}": host(b) for n, b in model.named_buffers()})
    for i, p in enumerate(model.parameters()):
        for k, v in opt.state[p].items():
            out[f"state {i}.{k}"] = host(v) if isinstance(v, tj.Tensor) else np.asarray(v)
    return out


@pytest.mark.parametrize("what", ["cnn", "mlp"])
def test_three_compiled_adam_steps_on_cuda_equal_the_cpu(what):
    make, shape = (CNN, (4, 1, 8, 8)) if what == "cnn" else (mlp, (6, 6))
    m_cpu, o_cpu, l_cpu, _ = _train(make, "cpu", shape)
    m_gpu, o_gpu, l_gpu, step = _train(make, "cuda", shape)
    np.testing.assert_allclose(l_gpu, l_cpu, rtol=1e-5)
    want, got = _state(m_cpu, o_cpu), _state(m_gpu, o_gpu)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, atol=1e-6, err_msg=k)
    for t in list(m_gpu.parameters()) + list(m_gpu.buffers()) + [p.grad for p in m_gpu.parameters()]:
        assert str(t.device) == "cuda:0" and isinstance(t._box.value, CudaBuffer)
    for s in o_gpu.state.values():
        for k, v in s.items():
            if k != "step":  # Adam's step count stays a CPU scalar, as in PyTorch
                assert isinstance(v._box.value, CudaBuffer), k
    v = step.latest()
    assert v.backend == "cuda" and v.program.fallbacks == []
    nodes = v.graph.nodes
    if what == "cnn":
        patterns = {n.pattern for n in nodes}
        assert {Pattern.CONV_POOL, Pattern.CONV_POOL_BACKWARD, Pattern.LINEAR} <= patterns, patterns
    assert sum(n.fused_kind is FusedKind.MULTI for n in nodes) == 1
    # (a bias before BatchNorm would have a gradient of rounding noise only, which Adam amplifies)
    # about one launch per node: views launch nothing, the conv backward three (unpool, dx, dw+db)
    extra = 2 * sum(n.pattern is Pattern.CONV_POOL_BACKWARD for n in nodes)
    assert v.program.launches_per_call() <= len(nodes) + extra
    # intermediates live in the runtime's arena, on the GPU, as the CPU backend's do
    assert v.program.memory()["arena_values"] > 0
    assert all(isinstance(b, CudaBuffer) for b in v.program._arenas[0][-1])


def test_the_runtime_arena_holds_intermediates_and_returned_views_leave_as_copies(rng):
    # the GEMM's result is an intermediate (in the arena); the returned reshape of it is a view that must be
    # copied out, or the next call would overwrite the first call's result
    f = tj.compile(lambda a, b: ((a @ b).reshape(-1), (a @ b).sum()))
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    first, _ = f(tj.from_numpy(a).to("cuda"), tj.from_numpy(b).to("cuda"))
    second, _ = f(tj.from_numpy(-a).to("cuda"), tj.from_numpy(b).to("cuda"))
    np.testing.assert_allclose(host(first), (a @ b).reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(host(second), -(a @ b).reshape(-1), rtol=1e-5)
    prog = f.latest().program
    assert prog.memory()["arena_values"] >= 1 and any(prog.arena.escapes)
    assert first._box.value.block.base is None  # a pool buffer of its own, not an arena view


def test_a_step_moves_only_cpu_scalars_between_host_and_device(monkeypatch):
    _, _, _, step = _train(mlp, "cuda", (6, 6), steps=3)
    mem = get_backend("cuda").mem
    moved = []
    to_device, to_host = mem.to_device, mem.to_host
    monkeypatch.setattr(mem, "to_device", lambda a: moved.append(("in", np.asarray(a).nbytes)) or to_device(a))
    monkeypatch.setattr(mem, "to_host", lambda b: moved.append(("out", b.nbytes)) or to_host(b))
    xs, ys = _data((6, 6), 1)
    x, y = tj.from_numpy(xs[0]).to("cuda"), tj.from_numpy(ys[0]).to("cuda")
    moved.clear()
    step(x, y)
    # learning rate, Adam's step counts and the generator state (CPU tensors, as in PyTorch) -- 16 bytes at most
    # each; parameters, grads, moments and BatchNorm statistics never cross
    assert moved and all(n <= 16 for _, n in moved), moved


def test_explain_shows_cuda_kernels_and_launch_counts():
    _, _, _, step = _train(CNN, "cuda", (4, 1, 8, 8), steps=2)
    x, y = tj.randn(4, 1, 8, 8).to("cuda"), tj.zeros(4, dtype=tj.int64).to("cuda")
    text = str(tj.explain(step, x, y))
    assert "(backend cuda on cuda:0)" in text
    assert "CUDA kernel launches per call" in text and "conv2d+bias+relu+max_pool2d" in text
    srcs = step.latest().program.sources()
    assert srcs and all("@cuda.jit(cache=True)" in src for _, src in srcs)


def test_generated_kernels_come_from_the_disk_cache_in_a_second_process(tmp_path):
    script = tmp_path / "again.py"
    script.write_text(
        "import tracejit as tj\n"
        "f = tj.compile(lambda a, b: ((a * b).tanh().sum(1), a @ b.T))\n"
        "a = tj.ones(3, 4).to('cuda')\n"
        "f(a, a)\n"
        "print('stats', *f.latest().program.cache_stats())\n")
    env = dict(os.environ, TRACEJIT_CACHE_DIR=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    stats = []
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
        stats.append([ln for ln in r.stdout.splitlines() if ln.startswith("stats")][0].split()[1:])
    n, hits = map(int, stats[0])
    assert n >= 2 and hits == 0
    assert list(map(int, stats[1])) == [n, n]


def test_the_report_page_shows_cuda_kernels_and_launches(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import tracejit as tj, tracejit.nn as nn, tracejit.nn.functional as F\n"
        "model = nn.Linear(4, 3).to('cuda')\n"
        "opt = tj.optim.SGD(model.parameters(), lr=0.1)\n"
        "@tj.compile\n"
        "def train_step(x, y):\n"
        "    opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step(); return loss\n"
        "x, y = tj.randn(2, 4).to('cuda'), tj.tensor([0, 2]).to('cuda')\n"
        "for _ in range(2):\n"
        "    train_step(x, y)\n")
    out = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "tracejit", "report", "--repeat", "1", str(script), "-o", str(out)],
                          env=dict(os.environ), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    page = out.read_text()
    assert "backend <code>cuda</code> on cuda:0" in page
    assert "CUDA kernel launches per call" in page and "@cuda.jit(cache=True)" in page
