"""nn.DataParallel over several devices in one process, PyTorch's semantics: the batch scattered in `chunk` pieces,
a replica per device whose parameters are differentiable copies, outputs gathered on device_ids[0], gradients
accumulated into the module's parameters. Numba's CUDA simulator has one device only, so two or three "CUDA"
devices are fake backends (tests/compiler/fake_device.py: host memory behind the Backend protocol, every transfer
a copy) registered as cuda:0, cuda:1, ... in place of the CUDA backend for the test."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
from compiler import fake_device  # tests/compiler/fake_device.py (tests/ is on sys.path)

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler import backends as B
from tracejit.nn.parallel import DataParallel, gather, scatter, scatter_kwargs


def _install_gpus(n):
    saved = B._REGISTRY.get("cuda")
    B.unregister_backend("cuda")
    for i in range(n):
        fake_device.install(f"fakecuda{i}", f"cuda:{i}")

    def restore():
        for i in range(n):
            fake_device.uninstall(f"fakecuda{i}")
        if saved is not None:
            B.register_backend("cuda", saved[0], device=saved[1])
    return restore


@pytest.fixture
def gpus(request):
    restore = _install_gpus(getattr(request, "param", 2))
    yield
    restore()


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def same_weights(model, make):
    other = make()
    other.load_state_dict({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    return other


def host(t):
    return t.detach().cpu().numpy()


def test_two_fake_gpus_are_cuda_devices(gpus):
    assert tj.cuda.is_available() and tj.cuda.device_count() == 2
    assert tj.ones(2, device="cuda:1").device == tj.device("cuda:1")
    with pytest.raises(RuntimeError, match=r"^CUDA error: invalid device ordinal \(cuda:2 was asked for; this "
                                           r"process has 2 CUDA devices: cuda:0, cuda:1\)"):
        tj.zeros(1, device="cuda:2")
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        tj.zeros(1).to("cuda:5")
    assert tj.device("cuda:7").index == 7  # as torch.device: naming a device checks nothing
    tj.cuda.set_device(1)
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        tj.cuda.set_device(2)


def test_a_missing_device_index_without_cuda_is_torchs_not_compiled_error():
    with pytest.raises(AssertionError, match="^Torch not compiled with CUDA enabled"):
        tj.zeros(1, device="cuda:1")
    with pytest.raises(RuntimeError, match="^Torch not compiled with CUDA enabled"):
        tj.zeros(1).to("cuda:3")


@pytest.mark.parametrize("gpus", [2, 3], indirect=True)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7])
def test_scatter_chunks_like_torch(gpus, n):
    torch = pytest.importorskip("torch")
    k = tj.cuda.device_count()
    devs = [tj.device("cuda", i) for i in range(k)]
    x = tj.arange(n * 2, dtype=tj.float32).reshape(n, 2)
    want = [c.numpy() for c in torch.arange(n * 2, dtype=torch.float32).reshape(n, 2).chunk(k, 0)]
    got = scatter(x, devs)
    assert len(got) == len(want) <= k
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.device == devs[i]
        np.testing.assert_array_equal(host(g), w)
    # keyword and positional arguments, non-tensors repeated; padded to the same count as in PyTorch
    ins, kws = scatter_kwargs((x, "tag", [x, 3]), {"m": x, "s": 2.0}, devs)
    assert len(ins) == len(kws) == len(want)
    for i, (a, kw) in enumerate(zip(ins, kws)):
        assert a[1] == "tag" and a[2][1] == 3 and kw["s"] == 2.0
        for t in (a[0], a[2][0], kw["m"]):
            assert t.device == devs[i]
            np.testing.assert_array_equal(host(t), want[i])


def test_gather_of_tensors_dicts_and_namedtuples(gpus):
    Out = namedtuple("Out", "a b")
    parts = [{"y": tj.full((2, 3), float(i), device=f"cuda:{i}"), "t": (tj.ones(1, device=f"cuda:{i}") * i, None),
              "n": Out(tj.zeros(2, 1, device=f"cuda:{i}"), tj.ones(2, 1, device=f"cuda:{i}"))} for i in range(2)]
    g = gather(parts, tj.device("cuda:0"))
    assert g["y"].device == tj.device("cuda:0") and g["y"].shape == (4, 3)
    np.testing.assert_array_equal(host(g["y"])[:, 0], [0, 0, 1, 1])
    assert isinstance(g["t"], tuple) and g["t"][1] is None
    np.testing.assert_array_equal(host(g["t"][0]), [0, 1])
    assert isinstance(g["n"], Out) and g["n"].a.shape == (4, 1)
    assert gather(parts, -1)["y"].device == tj.device("cpu")
    with pytest.warns(UserWarning, match="all input tensors were scalars"):
        v = gather([tj.tensor(1.0, device="cuda:0"), tj.tensor(2.0, device="cuda:1")], tj.device("cuda:0"))
    np.testing.assert_array_equal(host(v), [1, 2])


def test_wrapper_defaults_state_dict_and_errors(gpus):
    inner = mlp().to("cuda:0")
    dp = nn.DataParallel(inner)
    assert dp.device_ids == [0, 1] and dp.output_device == 0 and dp.dim == 0
    assert list(dp.state_dict()) == [f"module.{k}" for k in inner.state_dict()]
    assert [p is q for p, q in zip(dp.parameters(), inner.parameters())] == [True] * 4
    off = DataParallel(mlp())  # left on the CPU: PyTorch's error at the first forward
    with pytest.raises(RuntimeError, match=r"^module must have its parameters and buffers on device cuda:0 "
                                           r"\(device_ids\[0\]\) but found one of them on device: cpu$"):
        off(tj.randn(4, 6, device="cuda:0"))
    one = DataParallel(mlp(), device_ids=[1])  # one device: the module moves there and runs on the whole batch
    assert all(p.device == tj.device("cuda:1") for p in one.parameters())
    y = one(tj.randn(5, 6))
    assert y.device == tj.device("cuda:1") and y.shape == (5, 3)


class KwNet(nn.Module):
    """Takes keyword tensors and a non-tensor argument; returns a tuple and a dict of tensors."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x, *, scale, mask=None, tag="x"):
        assert isinstance(scale, float) and tag == "hi"
        y = self.lin(x) * scale
        if mask is not None:
            y = y * mask
        return y, {"sum": y.sum(1, keepdim=True), "dev": y.new_full((y.shape[0], 1), float(y.device.index or 0))}


def test_kwargs_scattered_outputs_gathered(gpus):
    tj.manual_seed(0)
    net = KwNet().to("cuda:0")
    ref = same_weights(net, KwNet)
    x, mask = tj.randn(5, 4), tj.randn(5, 2)
    y, d = DataParallel(net)(x, scale=2.0, mask=mask, tag="hi")
    ry, rd = ref(x, scale=2.0, mask=mask, tag="hi")
    assert y.device == tj.device("cuda:0")
    np.testing.assert_allclose(host(y), host(ry), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(d["sum"]), host(rd["sum"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(host(d["dev"])[:, 0], [0, 0, 0, 1, 1])  # rows 0-2 ran on cuda:0, 3-4 on cuda:1


def _train(model, opt, batches, to):
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x.to(to)), y.to(to))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("gpus", [2, 3], indirect=True)
@pytest.mark.parametrize("batch", [7, 8, 1, 2])
@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_training_steps_equal_one_device(gpus, batch, optim):
    """N DataParallel steps over the fake GPUs give the parameters, gradients and optimizer state of the same
    steps on one device (uneven chunks for 7, one chunk for a batch of 1, fewer chunks than devices)."""
    tj.manual_seed(3)
    base = mlp()
    ref = same_weights(base, mlp)
    dp = DataParallel(same_weights(base, mlp).to("cuda:0"))

    def make_opt(params):
        return tj.optim.SGD(params, lr=0.1, momentum=0.9) if optim == "sgd" else tj.optim.Adam(params, lr=0.01)

    opt, ref_opt = make_opt(dp.parameters()), make_opt(ref.parameters())
    rng = np.random.default_rng(batch)
    batches = [(tj.from_numpy(rng.standard_normal((batch, 6)).astype(np.float32)),
                tj.from_numpy(rng.integers(0, 3, batch))) for _ in range(3)]
    second = B.get_backend("fakecuda1")
    before = second.eager_ops
    got = _train(dp, opt, batches, "cuda:0")
    assert (second.eager_ops > before) == (batch > 1)  # the second device ran a replica unless the batch is 1
    want = _train(ref, ref_opt, batches, "cpu")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(dp.module.named_parameters(), ref.parameters()):
        assert p.device == tj.device("cuda:0") and p.grad.device == tj.device("cuda:0"), name
        np.testing.assert_allclose(host(p), host(q), rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(host(p.grad), host(q.grad), rtol=1e-5, atol=1e-6, err_msg=name)
        for k, v in opt.state[p].items():
            if isinstance(v, tj.Tensor):
                np.testing.assert_allclose(host(v), host(ref_opt.state[q][k]), rtol=1e-5, atol=1e-6,
                                           err_msg=f"{name} {k}")


def test_buffers_of_the_first_replica_update_the_module(gpus):
    """BatchNorm in training: the first replica runs on the module's own buffers (its chunk's statistics update
    them), the others on detached copies whose updates are dropped -- PyTorch's behaviour."""
    tj.manual_seed(1)
    bn = nn.BatchNorm1d(3).to("cuda:0")
    x = tj.randn(6, 3)
    DataParallel(bn)(x)
    ref = nn.BatchNorm1d(3)
    ref(x[:3])
    np.testing.assert_allclose(host(bn.running_mean), host(ref.running_mean), rtol=1e-6, atol=1e-7)
    assert int(bn.num_batches_tracked.item()) == 1


def test_no_grad_forward_and_eval(gpus):
    net = mlp().to("cuda:0")
    dp = DataParallel(net).eval()
    with tj.no_grad():
        y = dp(tj.randn(3, 6))
    assert not y.requires_grad and y.shape == (3, 3)


def test_compiled_step_refuses_several_devices_and_runs_on_one(gpus):
    net = mlp().to("cuda:0")
    dp = DataParallel(net)

    @tj.compile
    def fwd(x):
        return dp(x).sum()

    with pytest.raises(RuntimeError, match=r"DataParallel over 2 devices \(cuda:0, cuda:1\) cannot run inside a "
                                           r"compiled function.*one program on one device"):
        fwd(tj.randn(4, 6, device="cuda:0"))
    one = DataParallel(mlp().to("cuda:0"), device_ids=[0])

    @tj.compile
    def fwd1(x):
        return one(x).sum()

    x = tj.randn(4, 6, device="cuda:0")
    np.testing.assert_allclose(host(fwd1(x)), host(one.module(x).sum()), rtol=1e-5)
    # a batch of one scatters into one chunk: one device takes part, so the compiled step runs
    np.testing.assert_allclose(host(fwd(x[:1])), host(net(x[:1]).sum()), rtol=1e-5)


def test_an_error_in_a_replica_names_it(gpus):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(tj.ones(1))

        def forward(self, x):
            if x.device.index == 1:
                raise ValueError("boom")
            return x * self.w

    with pytest.raises(ValueError, match="boom") as e:
        DataParallel(Bad().to("cuda:0"))(tj.ones(4, 1))
    assert "DataParallel replica 1 on device cuda:1" in "".join(getattr(e.value, "__notes__", []))


def test_functional_form_device_objects_and_a_cpu_output(gpus):
    tj.manual_seed(2)
    net = mlp().to("cuda:0")
    x = tj.randn(5, 6)
    want = host(net(x.to("cuda:0")))
    np.testing.assert_allclose(host(tj.nn.parallel.data_parallel(net, x)), want, rtol=1e-6, atol=1e-6)
    dp = DataParallel(net, device_ids=[tj.device("cuda:0"), tj.device("cuda:1")], output_device=-1)
    assert dp.device_ids == [0, 1]
    y = dp(x)
    assert y.device == tj.device("cpu")
    np.testing.assert_allclose(host(y), want, rtol=1e-6, atol=1e-6)
    y.sum().backward()  # the gradient comes back from the CPU to the module on cuda:0
    assert all(p.grad is not None and p.grad.device == tj.device("cuda:0") for p in net.parameters())
