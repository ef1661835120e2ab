"""Checkpoints the PyTorch way: whole modules pickled by save(model) and loaded only with weights_only=False (as
PyTorch >= 2.6); PyTorch's own .pt/.pth files (zip and legacy) read without PyTorch by a restricted unpickler that
rebuilds tensors and containers and refuses every other global before it can run."""

import collections
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import tracejit as tj
from tracejit import nn
from tracejit import serialization as S


class Net(nn.Module):
    """A small model with a buffer, a shared (tied) parameter and a non-tensor attribute."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(8, 3)
        self.tail = nn.Linear(8, 3)
        self.tail.weight = self.head.weight
        self.label = "net-α"

    def forward(self, x):
        h = self.features(x)
        return self.head(h) + self.tail(h)


class Config:
    def __init__(self, lr):
        self.lr = lr


# ----------------------------------------------------------------------------------------------- whole modules


def test_whole_module_round_trip_needs_weights_only_false(tmp_path):
    tj.manual_seed(0)
    model = Net()
    x = tj.randn(2, 1, 4, 4)
    model(x).sum().backward()  # a training step's state: BN statistics moved, grads exist
    model.eval()
    path = tmp_path / "model.pth"
    tj.save(model, path)
    with pytest.raises(pickle.UnpicklingError, match=r"(?s)Weights only load failed.*model\.pth' needs the global "
                                                     r"test_checkpoints_torch\.Net.*weights_only=False"):
        tj.load(path)
    back = tj.load(path, weights_only=False)
    assert type(back) is Net and back.label == "net-α" and not back.training
    assert back.tail.weight is back.head.weight  # tied parameters stay one parameter
    assert isinstance(back.head.weight, nn.Parameter) and back.head.weight.requires_grad
    assert back.head.weight.grad is None  # as torch.save: values, not gradients
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and a.dtype is b.dtype and np.array_equal(a.numpy(), b.numpy()), k
    np.testing.assert_array_equal(back(x).detach().numpy(), model(x).detach().numpy())
    # the loaded model trains: its parameters are ordinary leaves
    back.train()
    back(x).sum().backward()
    assert back.head.weight.grad is not None and back.head.weight.grad.shape == (3, 8)


def test_safe_globals_allow_a_trusted_class_in_a_weights_only_load(tmp_path):
    path = tmp_path / "ckpt.pt"
    tj.save({"config": Config(0.1), "w": tj.ones(2), "steps": {(1, 2): 3}}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"Unsupported global: GLOBAL test_checkpoints_torch\.Config"):
        tj.load(path)
    with S.safe_globals([Config]):
        back = tj.load(path)
    assert back["config"].lr == 0.1 and back["w"].tolist() == [1.0, 1.0] and back["steps"] == {(1, 2): 3}
    assert S.get_safe_globals() == []
    S.add_safe_globals([Config])
    try:
        assert tj.load(path)["config"].lr == 0.1
    finally:
        S.clear_safe_globals()


def test_pickles_that_only_hold_tensors_load_weights_only(tmp_path):
    p = nn.Parameter(tj.ones(2))
    obj = {"params": [p, p.detach()], "keys": {(0, 1): tj.tensor([1, 2])}}
    tj.save(obj, tmp_path / "t.pt")  # tuple keys: not safetensors, a pickle of tensors and containers
    back = tj.load(tmp_path / "t.pt")
    assert isinstance(back["params"][0], nn.Parameter) and back["params"][0].requires_grad
    assert type(back["params"][1]) is tj.Tensor and back["params"][1].tolist() == [1.0, 1.0]
    assert back["keys"][(0, 1)].dtype is tj.int64
    with pytest.raises(RuntimeError, match="Cowardly refusing to serialize non-leaf tensor which requires_grad"):
        tj.save({(0,): p * 2}, tmp_path / "u.pt")


# ----------------------------------------------------------------------------------------------- refusing code


def _zip_checkpoint(path, data_pkl, records=()):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for name, raw in records:
            z.writestr(f"archive/data/{name}", raw)
        z.writestr("archive/version", "3\n")


def _system_call(marker):
    # what pickle.dumps of os.system("touch <marker>") is: GLOBAL posix.system, the argument, REDUCE
    cmd = f"touch {marker}".encode()
    return b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = _system_call(marker)
    _zip_checkpoint(tmp_path / "evil.pt", payload)
    (tmp_path / "evil.tj").write_bytes(b"tracejit.pickle\n" + payload)
    legacy = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    legacy += pickle.dumps({"little_endian": True}, protocol=2) + payload
    (tmp_path / "evil.legacy").write_bytes(legacy)
    for name in ("evil.pt", "evil.tj", "evil.legacy"):
        with pytest.raises(pickle.UnpicklingError, match=r"Unsupported global: GLOBAL posix\.system"):
            tj.load(tmp_path / name)
        with pytest.raises(pickle.UnpicklingError, match=r"posix\.system"):
            tj.load(tmp_path / name, map_location="cpu", weights_only=True)
    assert not marker.exists()
    # codecs are limited to text encodings (no decompression bombs through _codecs.encode)
    bomb = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x0a\x00\x00\x00zlib_codec\x86R."
    _zip_checkpoint(tmp_path / "codec.pt", bomb)
    with pytest.raises(pickle.UnpicklingError, match="refusing _codecs.encode with encoding 'zlib_codec'"):
        tj.load(tmp_path / "codec.pt")


def _rebuild_pickle(numel, offset, size, stride):
    """data.pkl of one tensor, as torch writes it: _rebuild_tensor_v2(persistent storage, offset, size, stride,
    False, OrderedDict())."""
    def ints(values):
        return b"(" + b"".join(b"K" + bytes([v]) for v in values) + b"t"

    pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK" + bytes([numel])
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"tQK" + bytes([offset]) + ints(size)
            + ints(stride) + b"\x89ccollections\nOrderedDict\n)RtR.")


def test_views_outside_their_storage_are_refused(tmp_path):
    data = np.arange(4, dtype="<f4").tobytes()
    _zip_checkpoint(tmp_path / "ok.pt", _rebuild_pickle(4, 1, (3,), (1,)), [("0", data)])
    assert tj.load(tmp_path / "ok.pt").tolist() == [1.0, 2.0, 3.0]  # the hand-written file is well formed
    _zip_checkpoint(tmp_path / "oob.pt", _rebuild_pickle(4, 1, (2, 2), (4, 1)), [("0", data)])
    with pytest.raises(pickle.UnpicklingError, match=r"reaches element 6 of a storage of 4"):
        tj.load(tmp_path / "oob.pt")
    _zip_checkpoint(tmp_path / "short.pt", _rebuild_pickle(4, 0, (4,), (1,)), [("0", data[:8])])
    with pytest.raises(pickle.UnpicklingError, match="storage 0 should hold 16 bytes, but its record has 8 bytes"):
        tj.load(tmp_path / "short.pt")
    legacy = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    legacy += pickle.dumps({"little_endian": True}, protocol=2) + _rebuild_pickle(255, 0, (255,), (1,))
    (tmp_path / "huge.legacy").write_bytes(legacy)  # 255 floats claimed, fewer bytes in the whole file
    with pytest.raises(pickle.UnpicklingError, match="storage 0 claims 255 elements, more than the file holds"):
        tj.load(tmp_path / "huge.legacy")
    _zip_checkpoint(tmp_path / "missing.pt", _rebuild_pickle(4, 0, (4,), (1,)))
    with pytest.raises(pickle.UnpicklingError, match="storage record archive/data/0 is missing"):
        tj.load(tmp_path / "missing.pt")
    with zipfile.ZipFile(tmp_path / "script.pt", "w") as z:
        z.writestr("model/constants.pkl", b"")
        z.writestr("model/code/__torch__.py", b"")
    with pytest.raises(RuntimeError, match="TorchScript archive"):
        tj.load(tmp_path / "script.pt")


# ----------------------------------------------------------------------------------------------- PyTorch's files

_LOAD_WITHOUT_TORCH = r"""
import sys, warnings

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("PyTorch is blocked in this process")

sys.meta_path.insert(0, BlockTorch())
import numpy as np
import tracejit as tj
from tracejit import nn

folder = sys.argv[1]
ref = np.load(folder + "/ref.npz")

# a model trained in PyTorch, loaded into the same architecture written with tracejit
sd = tj.load(folder + "/model_sd.pth")
assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                    "1.num_batches_tracked", "4.weight", "4.bias"], list(sd)
assert sd["1.num_batches_tracked"].dtype is tj.int64 and sd["1.num_batches_tracked"].item() == 3
model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
model.load_state_dict(sd)
model.eval()
out = model(tj.tensor(ref["x"])).detach().numpy()
np.testing.assert_allclose(out, ref["y"], rtol=1e-5, atol=1e-6)

for name in ("mixed.pt", "mixed_legacy.pt"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = tj.load(folder + "/" + name)
    assert any("bfloat16" in str(w.message) for w in caught), name
    checks = {"f32": tj.float32, "f64": tj.float64, "i64": tj.int64, "b": tj.bool, "f16": tj.float16,
              "transposed": tj.float32, "tail": tj.float32, "strided": tj.float32, "scalar": tj.float64,
              "empty": tj.float32, "bf16": tj.float32, "i32": tj.int64}
    for key, dtype in checks.items():
        t = m["tensors"][key]
        assert t.dtype is dtype, (name, key, t.dtype)
        assert t.shape == ref[key].shape and np.array_equal(t.numpy(), ref[key]), (name, key)
    assert m["nested"]["deeper"]["w"].tolist() == ref["nested_w"].tolist()
    assert m["nested"]["list"][1].tolist() == [1.0, 2.0] and m["nested"]["tuple"] == (1, "two", None)
    assert m["nested"]["size"] == (2, 3) and m["nested"]["dtype"] is tj.float64
    assert type(m["ordered"]).__name__ == "OrderedDict" and list(m["ordered"]) == ["z", "a"]
    p = m["param"]
    assert isinstance(p, nn.Parameter) and p.requires_grad and p.tolist() == [0.5, 1.5]
    assert m["epoch"] == 7 and m["name"] == "run" and m["lr"] == 0.01
    assert m["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)

try:
    tj.load(folder + "/whole_model.pt")
    raise SystemExit("a whole PyTorch module loaded weights-only")
except Exception as e:
    assert "Unsupported global: GLOBAL torch.nn.modules" in str(e), str(e)
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("ok")
"""


def test_pytorch_checkpoints_load_without_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(), torch.nn.Flatten(),
                             torch.nn.Linear(8, 3))
    x = torch.randn(4, 1, 4, 4)
    for _ in range(3):  # moves the BatchNorm statistics and counts num_batches_tracked
        tm(x)
    tm.eval()
    torch.save(tm.state_dict(), tmp_path / "model_sd.pth")
    torch.save(tm, tmp_path / "whole_model.pt")
    with torch.no_grad():
        y = tm(x).numpy()

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "f32": torch.randn(2, 3), "f64": torch.randn(3, dtype=torch.float64), "i64": torch.arange(5) - 2,
        "b": torch.tensor([True, False, True]), "f16": torch.tensor([0.5, -1.25, 65504.0], dtype=torch.float16),
        "transposed": base.t(), "tail": base.view(-1)[5:], "strided": base[:, ::2],  # views sharing one storage
        "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 3),
        "bf16": torch.tensor([1.5, -2.0, 3.0e38], dtype=torch.bfloat16),
        "i32": torch.tensor([7, -8], dtype=torch.int32),
    }
    mixed = {
        "tensors": tensors,
        "nested": {"deeper": {"w": torch.ones(2, 2) * 3}, "list": [1, torch.tensor([1.0, 2.0])],
                   "tuple": (1, "two", None), "size": torch.Size([2, 3]), "dtype": torch.float64},
        "ordered": collections.OrderedDict([("z", 1), ("a", torch.zeros(1))]),
        "param": torch.nn.Parameter(torch.tensor([0.5, 1.5])), "epoch": 7, "name": "run", "lr": 0.01,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0, 1]}]},
    }
    torch.save(mixed, tmp_path / "mixed.pt")
    torch.save(mixed, tmp_path / "mixed_legacy.pt", _use_new_zipfile_serialization=False)
    ref = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()}
    np.savez(tmp_path / "ref.npz", x=x.numpy(), y=y, nested_w=np.full((2, 2), 3.0, np.float32), **ref)

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(tj.__file__)),
                                                        os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_TORCH, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_a_pytorch_state_dict_loads_into_the_same_tracejit_layer(tmp_path):
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(3, 2)
    torch.save(lin.state_dict(), tmp_path / "lin.pt")
    mine = nn.Linear(3, 2)
    mine.load_state_dict(tj.load(tmp_path / "lin.pt"))
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with torch.no_grad():
        expected = lin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mine(tj.tensor(x)).detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    # and a tracejit state dict saved with tracejit.save is a safetensors file PyTorch's ecosystem reads
    tj.save(mine.state_dict(), tmp_path / "mine.safetensors")
    import safetensors.torch

    assert safetensors.torch.load_file(str(tmp_path / "mine.safetensors"))["weight"].shape == (2, 3)


# ----------------------------------------------------------------------------------------------- the tutorials

_QUICKSTART = '''
import tracejit as torch
from tracejit import nn
from tracejit.utils.data import DataLoader
from tracejit import datasets
from tracejit.transforms import ToTensor

training_data = datasets.FashionMNIST(root=ROOT, train=True, download=True, transform=ToTensor())
test_data = datasets.FashionMNIST(root=ROOT, train=False, download=True, transform=ToTensor())
train_dataloader = DataLoader(training_data, batch_size=4, shuffle=True, num_workers=2)
test_dataloader = DataLoader(test_data, batch_size=4)
for X, y in test_dataloader:
    shapes = (tuple(X.shape), tuple(y.shape), y.dtype)
    break

class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(nn.Linear(28 * 28, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.linear_relu_stack(self.flatten(x))

model = NeuralNetwork()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
for X, y in train_dataloader:
    loss = loss_fn(model(X), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.eval()
correct = 0
with torch.no_grad():
    for X, y in test_dataloader:
        correct += (model(X).argmax(1) == y).type(torch.float).sum().item()

torch.save(model.state_dict(), OUT + "/model_weights.pth")
model2 = NeuralNetwork()
model2.load_state_dict(torch.load(OUT + "/model_weights.pth", weights_only=True))
model2.eval()
torch.save(model, OUT + "/model.pth")
model3 = torch.load(OUT + "/model.pth", weights_only=False)
classes = test_data.classes
x, y = test_data[0][0], test_data[0][1]
with torch.no_grad():
    predicted = [classes[m(x).argmax(1).item()] for m in (model, model2, model3)]
'''


def test_the_quickstart_and_save_load_tutorials_run_unchanged(tmp_path, monkeypatch):
    import types

    from test_datasets import _write_mnist

    _write_mnist(tmp_path / "FashionMNIST" / "raw", n_train=12, n_test=5, gz=True)
    script = types.ModuleType("quickstart")  # a real module, as a script's __main__ is: its classes pickle
    monkeypatch.setitem(sys.modules, "quickstart", script)
    scope = script.__dict__
    scope.update(ROOT=str(tmp_path), OUT=str(tmp_path))
    exec(compile(_QUICKSTART, "quickstart.py", "exec"), scope)
    assert scope["shapes"] == ((4, 1, 28, 28), (4,), tj.int64)
    assert 0 <= scope["correct"] <= 5
    assert len(set(scope["predicted"])) == 1 and scope["predicted"][0] in scope["classes"]
    assert type(scope["model3"]).__name__ == "NeuralNetwork"
