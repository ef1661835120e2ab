"""A second device behind the Backend protocol (fake_device.py: host memory, buffers that are not NumPy arrays,
copies on transfer) proves that nothing outside a backend assumes NumPy storage: models moved there with
`.to("fake")` train eagerly and compiled with exactly the CPU's results, values are read through `to_host`, and
tensors on two devices meeting in one op (eager or compiled) are PyTorch's error naming both."""

import numpy as np
import pytest

import tracejit as torch
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler.backends import BackendUnavailable, available, get_backend
from tracejit.compiler.ir import Pattern
from tracejit.devices import CPU

from . import fake_device
from .fake_device import FakeBuffer


@pytest.fixture
def fake():
    backend = fake_device.install()
    yield backend
    fake_device.uninstall()
    torch.set_default_device(None)


FAKE = "fake:0"


def _np(t):
    return t.detach().cpu().numpy()


# ------------------------------------------------------------------------------------------------ eager


def test_a_tensor_moved_to_the_fake_device_holds_a_backend_buffer_and_reads_through_to_host(fake):
    x = torch.tensor([[1.0, -2.0], [3.0, 4.5]])
    y = x.to("fake")
    assert y.device == torch.device(FAKE) and str(y.device) == FAKE and not y.is_cpu and not y.is_cuda
    assert isinstance(y._box.value, FakeBuffer) and y.get_device() == 0
    assert x.device is CPU and isinstance(x._box.value, np.ndarray)  # the source is untouched
    host_reads = fake.to_host_calls
    assert y.tolist() == x.tolist() and y[1, 1].item() == 4.5 and bool(y[0, 0] == 1.0)
    assert fake.to_host_calls > host_reads
    assert repr(y) == "tensor([[ 1.0000, -2.0000],\n        [ 3.0000,  4.5000]], device='fake:0')"
    assert repr(y.long()) == "tensor([[ 1, -2],\n        [ 3,  4]], device='fake:0')"
    with pytest.raises(TypeError, match="can't convert fake:0 device type tensor to numpy. Use Tensor.cpu"):
        y.numpy()
    with pytest.raises(TypeError, match="can't convert fake:0"):
        np.asarray(y)
    back = y.cpu()
    assert back.device is CPU and np.array_equal(back.numpy(), x.numpy())
    assert y.to("fake") is y and y.to(y) is y  # already there
    z = y.to("fake", copy=True)
    assert z is not y and z._box.value is not y._box.value and z.tolist() == y.tolist()


def test_transfers_copy_both_ways(fake):
    x = torch.zeros(3)
    y = x.to("fake")
    x.add_(1.0)
    assert y.tolist() == [0.0, 0.0, 0.0]
    back = y.cpu()
    y.add_(5.0)
    assert back.tolist() == [0.0, 0.0, 0.0] and y.tolist() == [5.0, 5.0, 5.0]


def test_eager_ops_on_the_fake_device_equal_the_cpu_and_stay_there(fake):
    rng = np.random.default_rng(0)
    a_np, b_np = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    a, b = torch.from_numpy(a_np), torch.from_numpy(b_np)
    fa, fb = a.to("fake"), b.to("fake")
    cases = [
        lambda a, b: a @ b, lambda a, b: (a * 2 - 1).exp().sum(dim=1), lambda a, b: a.softmax(-1),
        lambda a, b: a.max(dim=0).values, lambda a, b: a.argmax(dim=1), lambda a, b: a[1:, ::2].T,
        lambda a, b: torch.where(a > 0, a, a * 0.1), lambda a, b: torch.cat([a, a], 0).reshape(2, -1),
        lambda a, b: a.clamp(-0.5, 0.5) + 1, lambda a, b: a[torch.tensor([0, 2])],
        lambda a, b: F.cross_entropy(a, torch.tensor([0, 1, 2, 4], device=a.device)), lambda a, b: a.mean() + b.std(),
    ]
    for i, f in enumerate(cases):
        want, got = f(a, b), f(fa, fb)
        assert got.device == torch.device(FAKE), i
        assert isinstance(got._box.value, FakeBuffer), i
        np.testing.assert_array_equal(_np(got), _np(want), err_msg=str(i))
    assert fake.eager_ops > len(cases)


def test_cpu_zero_dim_tensors_join_ops_on_any_device_as_in_pytorch(fake):
    y = torch.ones(3, device="fake")
    out = y * torch.tensor(2.0) + 1.0
    assert out.device == torch.device(FAKE) and out.tolist() == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("mix", [lambda f, c: f + c, lambda f, c: c * f, lambda f, c: f @ c.reshape(3, 1),
                                 lambda f, c: torch.cat([f, c]), lambda f, c: f.add_(c)])
def test_tensors_on_two_devices_in_one_eager_op_are_pytorchs_error_naming_both(fake, mix):
    f, c = torch.ones(3, device="fake"), torch.ones(3)
    with pytest.raises(RuntimeError, match=r"Expected all tensors to be on the same device, but found at least two "
                                           r"devices, (fake:0 and cpu|cpu and fake:0)! \(at .*test_fake_device.py"):
        mix(f, c)


def test_autograd_through_a_device_move_returns_gradients_to_the_source_device(fake):
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x = torch.tensor([4.0, 5.0, 6.0], device="fake")
    loss = (w.to("fake") * x).sum()
    assert loss.grad_fn is not None and loss.device == torch.device(FAKE)
    loss.backward()
    assert w.grad.device is CPU and w.grad.tolist() == [4.0, 5.0, 6.0]
    assert w.to("fake").grad_fn.name() == "ToCopyBackward0"
    leaf = torch.ones(3, device="fake", requires_grad=True)
    assert leaf.is_leaf and leaf.device == torch.device(FAKE)
    (leaf * x).sum().backward()
    assert leaf.grad.device == torch.device(FAKE) and leaf.grad.tolist() == [4.0, 5.0, 6.0]


def test_factories_make_tensors_on_the_fake_device(fake):
    made = [torch.zeros(2, 3, device="fake"), torch.ones(2, device=FAKE), torch.full((2,), 7.0, device="fake"),
            torch.empty(2, device=torch.device("fake")), torch.tensor([1, 2], device="fake"),
            torch.arange(4, device="fake"), torch.linspace(0, 1, 5, device="fake"), torch.eye(2, device="fake"),
            torch.rand(3, device="fake"), torch.randn(3, device="fake"), torch.randint(0, 5, (3,), device="fake"),
            torch.randperm(4, device="fake")]
    x = torch.ones(2, 2, device="fake")
    made += [torch.zeros_like(x), torch.ones_like(x), torch.full_like(x, 2), torch.empty_like(x),
             torch.rand_like(x), torch.randn_like(x)]
    for t in made:
        assert t.device == torch.device(FAKE) and isinstance(t._box.value, FakeBuffer), t
    assert torch.zeros_like(x, device="cpu").device is CPU
    torch.manual_seed(3)
    want = torch.randn(5)
    torch.manual_seed(3)
    assert torch.randn(5, device="fake").tolist() == want.tolist()  # one stream serves every device
    with torch.device("fake"):
        assert torch.zeros(2).device == torch.device(FAKE) and torch.tensor(1.0).device == torch.device(FAKE)
    assert torch.zeros(2).device is CPU
    torch.set_default_device("fake")
    assert torch.get_default_device() == torch.device(FAKE) and torch.ones(1).device == torch.device(FAKE)
    torch.set_default_device(None)
    assert torch.ones(1).device is CPU


def test_in_place_ops_keep_the_storage_on_its_device_and_copy_crosses_devices(fake):
    y = torch.zeros(3, device="fake")
    y.fill_(2.0)
    y.uniform_()
    y.normal_()
    y.zero_()
    assert y.device == torch.device(FAKE) and isinstance(y._box.value, FakeBuffer)
    y.copy_(torch.tensor([1.0, 2.0, 3.0]))  # from the CPU
    assert y.device == torch.device(FAKE) and y.tolist() == [1.0, 2.0, 3.0]
    c = torch.zeros(3)
    c.copy_(y)  # to the CPU
    assert c.device is CPU and isinstance(c._box.value, np.ndarray) and c.tolist() == [1.0, 2.0, 3.0]


def test_layers_made_with_device_live_there(fake):
    for m in (nn.Linear(2, 3, device="fake"), nn.Conv2d(1, 2, 3, device="fake"), nn.BatchNorm2d(2, device="fake")):
        for t in list(m.parameters()) + list(m.buffers()):
            assert t.device == torch.device(FAKE) and isinstance(t._box.value, FakeBuffer)


def test_module_to_moves_parameters_buffers_and_grads_in_place(fake):
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m(torch.randn(5, 3)).sum().backward()
    params, bufs = list(m.parameters()), list(m.buffers())
    grads = [p.grad for p in params]
    assert m.to("fake") is m
    assert all(a is b for a, b in zip(params, m.parameters())) and all(a is b for a, b in zip(bufs, m.buffers()))
    assert all(p.grad is g for p, g in zip(params, grads))  # the grad tensors too, as PyTorch
    for t in params + bufs + grads:
        assert t.device == torch.device(FAKE) and isinstance(t._box.value, FakeBuffer)
    assert isinstance(params[0], nn.Parameter) and params[0].requires_grad
    out = m(torch.randn(5, 3, device="fake"))
    assert out.device == torch.device(FAKE)
    m.cpu()
    assert all(t.device is CPU and isinstance(t._box.value, np.ndarray) for t in params + bufs + grads)


# ------------------------------------------------------------------------------------------------ training


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.flatten(1))


def _mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.25), nn.Linear(8, 3))


def _train(make_model, make_opt, device, compiled, steps=4, shape=(8, 6)):
    torch.manual_seed(0)
    model = make_model()
    rng = np.random.default_rng(1)
    xs = [torch.from_numpy(rng.standard_normal(shape).astype(np.float32)) for _ in range(steps)]
    ys = [torch.from_numpy(rng.integers(0, 3, shape[0]).astype(np.int64)) for _ in range(steps)]
    model.to(device)
    opt = make_opt(model.parameters())

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        step = torch.compile(step)
    losses = [step(x.to(device), y.to(device)) for x, y in zip(xs, ys)]
    return model, opt, losses, step


def _state(model, opt):
    out = {f"param {n}": _np(p) for n, p in model.named_parameters()}
    out.update({f"grad {n}": _np(p.grad) for n, p in model.named_parameters()})
    for i, p in enumerate(model.parameters()):
        for k, v in opt.state[p].items():
            out[f"state {i}.{k}"] = _np(v) if isinstance(v, torch.Tensor) else np.asarray(v)
    return out


@pytest.mark.parametrize("what", ["mlp-sgd-momentum", "cnn-adam"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_model_moved_to_the_fake_device_trains_with_exactly_the_cpus_results(fake, what, compiled):
    if what == "mlp-sgd-momentum":
        args = (_mlp, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
        kw = {}
    else:
        args = (_CNN, lambda ps: torch.optim.Adam(ps, lr=0.01))
        kw = {"shape": (4, 1, 8, 8)}
    m_cpu, o_cpu, l_cpu, _ = _train(*args, "cpu", compiled, **kw)
    m_fake, o_fake, l_fake, step = _train(*args, "fake", compiled, **kw)
    assert [loss.device for loss in l_fake] == [torch.device(FAKE)] * len(l_fake)
    np.testing.assert_array_equal([x.item() for x in l_fake], [x.item() for x in l_cpu])
    want, got = _state(m_cpu, o_cpu), _state(m_fake, o_fake)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for p in m_fake.parameters():
        assert p.device == torch.device(FAKE) and isinstance(p._box.value, FakeBuffer)
        assert p.grad.device == torch.device(FAKE) and isinstance(p.grad._box.value, FakeBuffer)
    for s in o_fake.state.values():
        for k, v in s.items():
            if k != "step":  # Adam's step count stays a CPU scalar, as in PyTorch
                assert v.device == torch.device(FAKE) and isinstance(v._box.value, FakeBuffer), k
    if compiled:
        v = step.latest()
        assert v.backend == "fake" and v.device == torch.device(FAKE) and v.program.runs >= 2
        text = str(torch.explain(step, torch.randn(*kw.get("shape", (8, 6)), device="fake"),
                                 torch.zeros(kw.get("shape", (8,))[0], dtype=torch.long, device="fake")))
        assert "(backend fake on fake:0)" in text and "fake device: steps:" in text


def test_compiled_steps_move_nothing_but_cpu_scalars_between_devices(fake):
    _, _, _, step = _train(_mlp, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "fake", True, steps=3)
    x, y = torch.randn(8, 6, device="fake"), torch.zeros(8, dtype=torch.long, device="fake")
    step(x, y)
    to_dev, to_host = fake.to_device_calls, fake.to_host_calls
    step(x, y)
    # the learning rate (a CPU 0-d tensor, as PyTorch keeps Python hyperparameters) goes in, and dropout's generator
    # state (a CPU tensor: one stream serves every device) goes in and comes back; nothing else moves
    assert (fake.to_device_calls - to_dev, fake.to_host_calls - to_host) == (2, 1)


def test_a_compiled_function_follows_its_tensors_to_another_device_and_back(fake):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @torch.compile
    def step(x):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss

    x = torch.ones(4, 3)
    step(x)
    step(x)
    assert step.latest().backend == "cpu"
    model.to("fake")
    step(x.to("fake"))
    assert step.latest().backend == "fake" and model.weight.device == torch.device(FAKE)
    assert step.latest().reason == "argument 0 ('x') changed from f32[4, 3] to f32[4, 3] on fake:0"
    model.cpu()
    n = len(step.history)
    step(x)  # the CPU variant again, no recompile
    assert len(step.history) == n and step.latest().backend == "fake"
    assert step._last.backend == "cpu" and model.weight.device is CPU


def test_moving_captured_state_alone_retraces_with_the_reason(fake):
    model = nn.Linear(3, 1)

    @torch.compile
    def total():
        return (model.weight + model.bias).sum()

    want = total().item()
    assert total.latest().backend == "cpu"
    model.to("fake")
    out = total()
    assert out.device == torch.device(FAKE) and out.item() == pytest.approx(want)
    assert [v.backend for v in total.history] == ["cpu", "fake"]
    assert total.history[1].reason in ("model.weight moved from cpu to fake:0", "model.bias moved from cpu to fake:0")
    model.weight.data = model.weight.data.cpu()  # now the weight and the bias live on two devices
    with pytest.raises(RuntimeError, match=r"Expected all tensors to be on the same device, but found at least two "
                                           r"devices, (fake:0 and cpu|cpu and fake:0)!"):
        total()
    assert total.history[1].guard_failure(()) == "model.weight moved from fake:0 to cpu"


def test_a_compiled_function_with_tensors_on_two_devices_is_pytorchs_error_naming_both(fake):
    second = fake_device.install("fake1", "fake:1")
    try:
        @torch.compile
        def f(a, b):
            return a * 2, b * 2  # never meet in one op: the program would need two devices

        with pytest.raises(RuntimeError, match=r"f: Expected all tensors to be on the same device, but found at least "
                                               r"two devices, fake:0 and fake:1! \(a is on fake:0, b on fake:1\)"):
            f(torch.ones(2, device="fake"), torch.ones(2, device="fake:1"))
        assert second.to_device_calls == 1
        model = nn.Linear(2, 1).to("fake")

        @torch.compile
        def g(x):
            return model(x).sum()

        with pytest.raises(RuntimeError, match=r"addmm|matmul|linear|: Expected all tensors to be on the same device, "
                                               r"but found at least two devices, fake:1 and fake:0!"):
            g(torch.ones(3, 2, device="fake:1"))
    finally:
        fake_device.uninstall("fake1")


def test_cpu_tensors_returned_or_created_inside_a_compiled_function_stay_where_the_trace_put_them(fake):
    @torch.compile
    def f(x):
        y = x * 2
        return y, y.cpu(), torch.ones(2, device="fake") + 1, torch.tensor([1.0, 2.0], device="fake") * x[:2]

    x = torch.arange(3.0, device="fake")
    for _ in range(2):
        a, b, c, d = f(x)
        assert (a.device, b.device, c.device, d.device) == (torch.device(FAKE), CPU, torch.device(FAKE),
                                                            torch.device(FAKE))
        assert isinstance(b._box.value, np.ndarray) and b.tolist() == [0.0, 2.0, 4.0]
        assert c.tolist() == [2.0, 2.0] and d.tolist() == [0.0, 2.0]
    assert f.latest().backend == "fake"


def test_an_explicit_backend_runs_device_tensors_through_host_copies(fake):
    @torch.compile(backend="reference")
    def f(x):
        return (x * 3).sum()

    out = f(torch.ones(4, device="fake"))
    assert f.latest().backend == "reference" and out.device == torch.device(FAKE) and out.item() == 12.0


# ------------------------------------------------------------------------------------------------ registry


def test_the_registry_lists_backends_and_cuda_says_why_it_is_not_available(fake):
    assert {"reference", "cpu", "fake"} <= set(available()) and "cuda" not in available()
    with pytest.raises(BackendUnavailable, match="CUDA is not available to tracejit: .*; check with `python -m "
                                                 "tracejit info`"):
        get_backend("cuda")  # (no GPU here; tests/compiler/cuda runs the backend in Numba's simulator)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        get_backend("nope")
    with pytest.raises(RuntimeError, match="CUDA is not available to tracejit"):
        torch.compile(lambda x: x, backend="cuda")
    cpu = get_backend("cpu")
    assert cpu.device is CPU and cpu.name == "cpu"
    assert cpu.supports(Pattern.LINEAR, {"relu": True, "dtype": torch.float32}) is True  # (limits: test_fusion_targets)
    d = cpu.describe()
    assert d["device"].startswith("cpu") and d["threads"] and any(line.startswith("threads:") for line in d["lines"])
    assert isinstance(cpu.to_device(np.ones(2)), np.ndarray) and cpu.alloc((2, 3), torch.float32).shape == (2, 3)
    cpu.synchronize()
    ref = get_backend("reference")
    assert ref.device is CPU and ref.describe()["lines"]


def test_the_report_of_a_fake_device_program_reads_only_the_protocol(fake, tmp_path):
    from tracejit.report import make_report

    script = tmp_path / "train_fake.py"
    script.write_text(
        "import tracejit\nimport tracejit.nn as nn\nimport tracejit.nn.functional as F\n"
        "tracejit.manual_seed(0)\nmodel = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to('fake')\n"
        "opt = tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)\n\n\n@tracejit.compile\n"
        "def train_step(x, y):\n    opt.zero_grad()\n    loss = F.cross_entropy(model(x), y)\n    loss.backward()\n"
        "    opt.step()\n    return loss\n\n\nx = tracejit.randn(6, 4, device='fake')\n"
        "y = tracejit.tensor([0, 1, 2, 1, 0, 2], device='fake')\nfor _ in range(3):\n    train_step(x, y)\n")
    out = tmp_path / "report.html"
    assert make_report(str(script), [], str(out), repeat=1) == 0
    page = out.read_text()
    assert "backend <code>fake</code> on fake:0" in page and "fake: fake:0" in page
    assert "not profiled" not in page and "Per-kernel time" in page and "generated kernel" in page
    assert "speedup:" in page


def test_checkpoints_of_a_model_on_the_fake_device_round_trip_through_the_host(fake, tmp_path):
    torch.manual_seed(0)
    m = nn.Linear(3, 2).to("fake")
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    m(torch.ones(4, 3, device="fake")).sum().backward()
    opt.step()
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt")
    assert all(t.device is CPU for t in ck["model"].values())  # loaded on the host
    m2 = nn.Linear(3, 2).to("fake")
    m2.load_state_dict(ck["model"])  # copied into the parameters where they live
    opt2 = torch.optim.Adam(m2.parameters(), lr=0.1)
    opt2.load_state_dict(ck["opt"])
    for p, q in zip(m.parameters(), m2.parameters()):
        assert q.device == torch.device(FAKE) and isinstance(q._box.value, FakeBuffer)
        np.testing.assert_array_equal(_np(q), _np(p))
        s = opt2.state[q]
        assert s["exp_avg"].device == torch.device(FAKE) and s["step"].device is CPU  # as PyTorch
        np.testing.assert_array_equal(_np(s["exp_avg_sq"]), _np(opt.state[p]["exp_avg_sq"]))


def test_gradcheck_runs_on_the_fake_device(fake):
    x = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64, device="fake", requires_grad=True)
    w = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64, device="fake", requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: (w @ x.tanh()).exp(), (x, w))


def test_a_whole_model_on_the_fake_device_pickles_its_values_from_the_host(fake, tmp_path):
    m = nn.Linear(3, 2).to("fake")
    torch.save(m, tmp_path / "m.pt")
    m2 = torch.load(tmp_path / "m.pt", weights_only=False)
    assert m2.weight.device is CPU and isinstance(m2.weight, nn.Parameter)
    np.testing.assert_array_equal(m2.weight.detach().numpy(), _np(m.weight))
