"""CUDA tensors outside compiled code (Numba's simulator): PyTorch's device habits -- `.to("cuda")`, `.cuda()`,
`device=` on factories and layers, `Module.to` -- eager ops one at a time through the backend's kernels, values read
through copies to the host, `.numpy()` refused as in PyTorch, and the `tracejit.cuda` functions."""

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

from .conftest import SIM, host

CUDA = tj.device("cuda:0")


def test_tracejit_cuda_answers():
    assert tj.cuda.is_available() and tj.cuda.device_count() == 1 and tj.cuda.current_device() == 0
    assert ("simulator" in tj.cuda.get_device_name().lower()) == SIM
    tj.cuda.synchronize()
    tj.cuda.manual_seed(1)
    tj.cuda.manual_seed_all(1)
    tj.cuda.empty_cache()
    assert tj.cuda.is_initialized()


def test_memory_statistics_count_live_tensors_and_the_cache():
    tj.cuda.empty_cache()
    base = tj.cuda.memory_allocated()
    x = tj.zeros(1000, device="cuda")  # float32: 4000 bytes
    assert tj.cuda.memory_allocated() == base + 4000 and tj.cuda.max_memory_allocated() >= base + 4000
    del x
    assert tj.cuda.memory_allocated() == base and tj.cuda.memory_reserved() >= base + 4000  # cached for reuse
    tj.cuda.empty_cache()
    tj.cuda.reset_peak_memory_stats()
    assert tj.cuda.memory_reserved() == tj.cuda.max_memory_allocated() == base


def test_tensors_move_to_cuda_and_read_through_host_copies():
    x = tj.tensor([[1.0, -2.0], [3.0, 4.5]])
    for y in (x.to("cuda"), x.cuda(), x.to(CUDA), x.to("cuda:0"), x.to(tj.device("cuda"))):
        assert y.device == CUDA and y.is_cuda and not y.is_cpu and isinstance(y._box.value, CudaBuffer)
        assert y.tolist() == x.tolist() and y[1, 1].item() == 4.5
    y = x.cuda()
    assert repr(y) == "tensor([[ 1.0000, -2.0000],\n        [ 3.0000,  4.5000]], device='cuda:0')"
    with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu"):
        y.numpy()
    assert np.array_equal(y.cpu().numpy(), x.numpy()) and y.cpu().device == tj.device("cpu")
    assert y.cuda() is y and y.to("cuda") is y
    z = tj.zeros(2, 3, device="cuda")
    assert z.device == CUDA and z.sum().item() == 0.0
    assert tj.ones(3, device="cuda").is_cuda and tj.randn(2, device="cuda").is_cuda


def test_eager_ops_on_cuda_run_through_device_kernels_and_equal_the_cpu(rng):
    backend = get_backend("cuda")
    backend.host_eager_ops.clear()
    a_np, b_np = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    a, b = tj.from_numpy(a_np), tj.from_numpy(b_np)
    ga, gb = a.cuda(), b.cuda()
    cases = [lambda a, b: a @ b, lambda a, b: (a * 2 - 1).exp().sum(dim=1), lambda a, b: a.softmax(-1),
             lambda a, b: a.max(dim=0).values, lambda a, b: a.argmax(dim=1), lambda a, b: a[1:, ::2].T,
             lambda a, b: tj.where(a > 0, a, a * 0.1), lambda a, b: tj.cat([a, a], 0).reshape(2, -1),
             lambda a, b: a.clamp(-0.5, 0.5) + 1, lambda a, b: a.mean() + b.std()]
    for i, f in enumerate(cases):
        want, got = f(a, b), f(ga, gb)
        assert got.device == CUDA and isinstance(got._box.value, CudaBuffer), i
        np.testing.assert_allclose(host(got), host(want), rtol=1e-5, atol=1e-6, err_msg=str(i))
    x4 = tj.from_numpy(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    for f in (lambda t: F.max_pool2d(t, 2), lambda t: F.avg_pool2d(t, 3, 1, 1), lambda t: F.conv2d(t, t[:, :, :2, :2])):
        np.testing.assert_allclose(host(f(x4.cuda())), host(f(x4)), rtol=1e-5, atol=1e-6)
    assert backend.host_eager_ops == {}  # all of these ran on the device
    idx = tj.tensor([0, 2]).cuda()
    got = ga[idx]  # an index op: the host round trip, with eager's checks
    np.testing.assert_array_equal(host(got), a_np[[0, 2]])
    assert backend.host_eager_ops and got.device == CUDA
    with pytest.raises(IndexError):
        ga[tj.tensor([9]).cuda()]


def test_in_place_ops_and_views_keep_storage_apart():
    y = tj.zeros(4, device="cuda")
    r = y.reshape(2, 2)
    y.add_(1.0)
    assert r.tolist() == [[0.0, 0.0], [0.0, 0.0]] or r.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    y.fill_(2.0)
    y.copy_(tj.tensor([1.0, 2.0, 3.0, 4.0]))
    assert y.device == CUDA and y.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_a_model_trains_eagerly_on_cuda_with_the_cpus_results():
    def run(device):
        tj.manual_seed(0)
        m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(device)
        opt = tj.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        x, y = tj.randn(5, 3).to(device), tj.tensor([0, 1, 1, 0, 1]).to(device)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        return m

    mc, mg = run("cpu"), run("cuda")
    for p, q in zip(mc.parameters(), mg.parameters()):
        assert q.is_cuda and q.grad.is_cuda
        np.testing.assert_allclose(host(q), host(p), rtol=1e-5, atol=1e-6)


def test_layers_made_with_device_cuda_live_there():
    for m in (nn.Linear(2, 3, device="cuda"), nn.Conv2d(1, 2, 3, device="cuda"), nn.BatchNorm2d(2, device="cuda")):
        for t in list(m.parameters()) + list(m.buffers()):
            assert t.device == CUDA and isinstance(t._box.value, CudaBuffer)


def test_buffers_expose_the_cuda_array_interface():
    y = tj.arange(6.0).reshape(2, 3).cuda()
    cai = y._box.value.__cuda_array_interface__ if hasattr(y._box.value.data, "__cuda_array_interface__") else None
    if cai is not None:  # the simulator's arrays have no device pointer
        assert cai["shape"] == (2, 3)
    with pytest.raises(TypeError, match="cannot be turned into a NumPy array"):
        np.asarray(y._box.value)


def test_info_reports_the_gpu_and_numba_cuda():
    out = subprocess.run([sys.executable, "-m", "tracejit", "info"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "CUDA: available" in text and "numba-cuda" in text and ("simulator" in text.lower()) == SIM, text
