"""The device API against PyTorch's behaviour: device objects, `Tensor.to` and its variants, `device=` on the
factories, `set_default_device`, `Module.to` (Parameter identity kept), and the honest answers of
`cuda`/`accelerator`/`backends.mps` on a machine where tracejit has no GPU backend. (A second device behind the
backend protocol is tested in tests/compiler/test_fake_device.py.)"""

import copy
import pickle

import numpy as np
import pytest

import tracejit
import tracejit.nn as nn
from tracejit.devices import CPU

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _default_device_restored():
    yield
    tracejit.set_default_device(None)


SPECS = [("cpu",), ("cuda",), ("cuda:0",), ("cuda:1",), ("cuda", 2), ("cpu", 0), ("mps",), ("meta",), ("xla:3",),
         ("cuda:10",)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: repr(s))
def test_device_objects_print_and_compare_as_pytorchs(spec):
    d, t = tracejit.device(*spec), torch.device(*spec)
    assert (d.type, d.index, str(d), repr(d)) == (t.type, t.index, str(t), repr(t))
    assert d == tracejit.device(str(d)) and hash(d) == hash(tracejit.device(str(d)))
    assert tracejit.device(d) is d
    assert (d == str(d)) == (t == str(t))  # a device is not equal to its string, in PyTorch either
    assert pickle.loads(pickle.dumps(d)) == d and copy.deepcopy(d) == d


def test_different_devices_differ_as_in_pytorch():
    for a, b in [("cuda", "cuda:0"), ("cpu", "cpu:0"), ("cuda:0", "cuda:1"), ("cpu", "cuda")]:
        assert (tracejit.device(a) == tracejit.device(b)) == (torch.device(a) == torch.device(b))
    assert len({tracejit.device("cuda:0"), tracejit.device("cuda", 0), tracejit.device("cuda:1")}) == 2


@pytest.mark.parametrize("args", [("foo",), ("cuda:-1",), ("cuda:x",), ("cuda:0", 1), ("cuda", -1), ("",),
                                  (5,)], ids=repr)
def test_invalid_devices_raise_pytorchs_errors(args):
    with pytest.raises(Exception) as want:
        torch.device(*args)
    with pytest.raises(type(want.value)) as got:
        tracejit.device(*args)
    assert str(got.value) == str(want.value).replace("privateuseone", "privateuseone" + _extra_types())


def _extra_types():
    # backend registrations of other tests may have added device types after PyTorch's list
    from tracejit import devices

    extra = devices._types[len(devices._PYTORCH_TYPES):]
    return "".join(f", {k}" for k in extra)


def test_a_cpu_tensor_is_on_the_cpu_and_stays_a_numpy_array():
    t = tracejit.ones(2)
    assert t.device == tracejit.device("cpu") and t.device is CPU and repr(t.device) == "device(type='cpu')"
    assert isinstance(t._box.value, np.ndarray) and not t.is_cuda and t.is_cpu and t.get_device() == -1
    assert t.device == t.cpu().device and t.cpu() is t and t.to("cpu") is t and t.to(tracejit.device("cpu:0")) is t


def test_tensor_to_accepts_pytorchs_forms():
    t, p = tracejit.tensor([1.5, -2.0, 3.0]), torch.tensor([1.5, -2.0, 3.0])
    other_t, other_p = tracejit.zeros(1, dtype=tracejit.float64), torch.zeros(1, dtype=torch.float64)
    forms = [
        (lambda m, T, o: T.to(m.float64), "to(dtype)"),
        (lambda m, T, o: T.to("cpu", m.int64), "to(device, dtype)"),
        (lambda m, T, o: T.to(device="cpu", dtype=m.float64), "keywords"),
        (lambda m, T, o: T.to(m.device("cpu"), dtype=m.int64), "device object"),
        (lambda m, T, o: T.to(o), "to(tensor)"),
        (lambda m, T, o: T.to(m.float64, non_blocking=True), "non_blocking"),
        (lambda m, T, o: T.to("cpu", non_blocking=True, copy=True), "copy"),
        (lambda m, T, o: T.to(dtype=m.float32), "same dtype"),
    ]
    for f, what in forms:
        a, b = f(tracejit, t, other_t), f(torch, p, other_p)
        assert a.dtype.name == str(b.dtype).split(".")[1], what
        assert str(a.device) == str(b.device) and a.tolist() == b.tolist(), what
        assert (a is t) == (b is p), what  # no copy unless something changes or copy=True
    with pytest.raises(TypeError):
        t.to("cpu", device="cpu")


def test_cuda_is_pytorchs_error_where_it_is_not_available():
    assert tracejit.cuda.is_available() is torch.cuda.is_available() is False
    t = tracejit.ones(2)
    for make in (lambda: t.cuda(), lambda: t.to("cuda"), lambda: t.to("cuda:0"),
                 lambda: tracejit.zeros(2, device="cuda"), lambda: tracejit.tensor([1.0], device="cuda"),
                 lambda: nn.Linear(2, 2).cuda(),
                 lambda: nn.Linear(2, 2).to("cuda")):
        with pytest.raises(AssertionError, match="Torch not compiled with CUDA enabled"):
            make()
    with pytest.raises(RuntimeError, match="no backend for device type 'mps'"):
        t.to("mps")
    with pytest.raises(RuntimeError, match="Cannot access accelerator device when none is available"):
        t.to(0)


def test_the_accelerator_questions_are_answered_honestly():
    assert tracejit.cuda.is_available() == torch.cuda.is_available()
    assert tracejit.cuda.device_count() == torch.cuda.device_count() == 0
    assert tracejit.accelerator.is_available() == torch.accelerator.is_available()
    assert tracejit.accelerator.current_accelerator() == torch.accelerator.current_accelerator() is None
    assert tracejit.accelerator.device_count() == 0
    assert tracejit.backends.mps.is_available() == torch.backends.mps.is_available() is False
    assert tracejit.backends.cudnn.is_available() is False
    tracejit.backends.cudnn.benchmark = True  # accepted, as scripts set it
    tracejit.backends.cudnn.benchmark = False
    tracejit.cuda.manual_seed(0)
    tracejit.cuda.manual_seed_all(0)
    tracejit.cuda.empty_cache()
    with pytest.raises(AssertionError, match="Torch not compiled with CUDA enabled"):
        tracejit.cuda.current_device()
    # the idiom of the tutorials
    device = tracejit.device("cuda" if tracejit.cuda.is_available() else "cpu")
    assert tracejit.zeros(1, device=device).device == tracejit.device("cpu")
    acc = tracejit.accelerator.current_accelerator().type if tracejit.accelerator.is_available() else "cpu"
    assert acc == "cpu"


FACTORIES = {
    "tensor": lambda m, **k: m.tensor([1.0, 2.0], **k), "zeros": lambda m, **k: m.zeros(2, 3, **k),
    "ones": lambda m, **k: m.ones((2,), **k), "full": lambda m, **k: m.full((2,), 3.0, **k),
    "empty": lambda m, **k: m.empty(2, **k), "arange": lambda m, **k: m.arange(0, 4, **k),
    "linspace": lambda m, **k: m.linspace(0, 1, 3, **k), "eye": lambda m, **k: m.eye(2, **k),
    "rand": lambda m, **k: m.rand(2, **k), "randn": lambda m, **k: m.randn(2, **k),
    "randint": lambda m, **k: m.randint(0, 3, (2,), **k), "randperm": lambda m, **k: m.randperm(3, **k),
    "zeros_like": lambda m, **k: m.zeros_like(m.ones(2), **k), "ones_like": lambda m, **k: m.ones_like(m.ones(2), **k),
    "full_like": lambda m, **k: m.full_like(m.ones(2), 2.0, **k),
    "empty_like": lambda m, **k: m.empty_like(m.ones(2), **k), "rand_like": lambda m, **k: m.rand_like(m.ones(2), **k),
    "randn_like": lambda m, **k: m.randn_like(m.ones(2), **k), "as_tensor": lambda m, **k: m.as_tensor([1, 2], **k),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("device", ["cpu", "cpu:0", "device"])
def test_every_factory_takes_device_as_pytorchs(name, device):
    f = FACTORIES[name]
    dev_t = tracejit.device("cpu") if device == "device" else device
    dev_p = torch.device("cpu") if device == "device" else device
    a, b = f(tracejit, device=dev_t), f(torch, device=dev_p)
    assert str(a.device) == str(b.device) == "cpu" and a.device is CPU
    assert tuple(a.shape) == tuple(b.shape) and a.dtype.name == str(b.dtype).split(".")[1]


def test_set_default_device_and_the_device_context_as_pytorch():
    assert tracejit.get_default_device() == tracejit.device("cpu")
    tracejit.set_default_device("cpu")
    assert tracejit.zeros(1).device is CPU
    with tracejit.device("cpu"):
        assert tracejit.get_default_device() is CPU and tracejit.ones(1).device is CPU
    with pytest.raises(AssertionError, match="Torch not compiled with CUDA enabled"):
        tracejit.set_default_device("cuda")
    tracejit.set_default_device(None)
    assert tracejit.get_default_device() is CPU


def test_module_to_keeps_the_parameter_objects_as_pytorch():
    m_t, m_p = nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for m, lib in ((m_t, tracejit), (m_p, torch)):
        params = list(m.parameters())
        m(lib.ones(4, 3)).sum().backward()
        grads = [p.grad for p in params]
        assert m.to("cpu") is m and m.to(lib.device("cpu")) is m and m.cpu() is m
        assert m.to(lib.float64) is m
        assert all(a is b for a, b in zip(params, m.parameters()))
        assert all(p.dtype == lib.float64 and p.grad.dtype == lib.float64 for p in params)
        assert all(p.grad is g for p, g in zip(params, grads))
        assert m.to("cpu", lib.float32) is m and all(p.dtype == lib.float32 for p in m.parameters())
        assert m.to(lib.zeros(1, dtype=lib.float64)) is m and m.weight.dtype == lib.float64
        assert m.float().weight.dtype == lib.float32 and isinstance(m.weight, lib.nn.Parameter)
    with pytest.raises(TypeError, match="nn.Module.to only accepts floating point dtypes"):
        m_t.to(tracejit.int64)
