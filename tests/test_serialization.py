"""save/load: exact round trips of nested state dicts, safetensors interoperability, atomic writes,
and clear errors for corrupted or foreign files."""

import collections
import json
import os
import pickle
import re

import numpy as np
import pytest
import safetensors.numpy

import tracejit as tj
from tracejit import serialization


def _arrays_equal(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, tj.Tensor):
        assert a.dtype is b.dtype and a.shape == b.shape and a.requires_grad == b.requires_grad
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _arrays_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _arrays_equal(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def test_exact_round_trip_of_nested_structures(tmp_path):
    rng = np.random.default_rng(0)
    obj = {
        "model": collections.OrderedDict([
            ("conv.weight", tj.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))),
            ("conv.bias", tj.zeros(4)),
            ("bn.num_batches_tracked", tj.tensor(7)),
        ]),
        "optim": {"state": {0: {"step": tj.tensor(3.0), "exp_avg": tj.tensor(rng.standard_normal(5))},
                            2: {"momentum_buffer": tj.tensor([1e-30, -0.0, np.inf], dtype=tj.float32)}},
                  "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "nesterov": False,
                                    "foreach": None, "params": [0, 1, 2]}]},
        "epoch": 12, "name": "run-α", "nan": float("nan"), "mask": tj.tensor([True, False]),
        "leaf": tj.ones(2, requires_grad=True), "dtype": tj.float64, "np": np.arange(6, dtype=np.uint8),
        "empty": tj.zeros(0, 3), "scalar64": tj.tensor(np.float64(1) / 3), "big": 2 ** 62,
        "keys": {1.5: "float key", None: "none", True: [1, (2, 3)]},
    }
    path = tmp_path / "ckpt.safetensors"
    tj.save(obj, path)
    back = tj.load(path)
    _arrays_equal(obj, back)
    assert back["optim"]["state"][0]["exp_avg"].dtype is tj.float64
    assert isinstance(back["model"], collections.OrderedDict)
    assert tj.load(str(path))["epoch"] == 12


def test_top_level_tensor_and_shared_tensors(tmp_path):
    t = tj.arange(5).float()
    tj.save(t, tmp_path / "t.safetensors")
    _arrays_equal(t, tj.load(tmp_path / "t.safetensors"))
    tied = {"enc.weight": t, "dec.weight": t}
    tj.save(tied, tmp_path / "tied.safetensors")
    back = tj.load(tmp_path / "tied.safetensors")
    assert back["enc.weight"] is back["dec.weight"]  # stored once, loaded as one tensor


def test_model_state_dict_is_a_plain_safetensors_file(tmp_path):
    sd = {"fc.weight": tj.ones(2, 3), "fc.bias": tj.tensor([1.0, 2.0])}
    path = tmp_path / "model.safetensors"
    tj.save(sd, path)
    raw = safetensors.numpy.load_file(str(path))  # another framework's reader sees the dotted names
    assert set(raw) == {"fc.weight", "fc.bias"}
    np.testing.assert_array_equal(raw["fc.bias"], [1.0, 2.0])
    assert raw["fc.weight"].dtype == np.float32


def test_loads_foreign_safetensors_files_as_flat_dicts(tmp_path):
    path = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file({"a.b": np.arange(4, dtype=np.int32), "c": np.ones((2, 2), np.float64)},
                                str(path))
    back = tj.load(path)
    assert set(back) == {"a.b", "c"} and back["a.b"].dtype is tj.int64 and back["c"].dtype is tj.float64
    assert back["a.b"].tolist() == [0, 1, 2, 3]


def test_torch_reads_our_model_checkpoint(tmp_path):
    pytest.importorskip("torch")
    import safetensors.torch

    sd = {"fc.weight": tj.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))}
    tj.save(sd, tmp_path / "m.safetensors")
    loaded = safetensors.torch.load_file(str(tmp_path / "m.safetensors"))
    assert loaded["fc.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_file_objects(tmp_path):
    import io

    buf = io.BytesIO()
    tj.save({"x": tj.tensor([1.0, 2.0]), "n": 3}, buf)
    buf.seek(0)
    back = tj.load(buf)
    assert back["n"] == 3 and back["x"].tolist() == [1.0, 2.0]


def test_objects_safetensors_cannot_hold_are_pickled_and_refused_on_a_weights_only_load(tmp_path):
    # as torch.save: any picklable object can be saved; loading a pickle needs weights_only=False (PyTorch >= 2.6)
    tj.save({"optim": {"hook": collections.Counter("aab")}, "w": tj.ones(2)}, tmp_path / "x.pt")
    back = tj.load(tmp_path / "x.pt")  # Counter is on the weights-only allowlist, as in PyTorch
    assert back["optim"]["hook"]["a"] == 2 and back["w"].tolist() == [1.0, 1.0]
    tj.save({"hook": re.compile("a+")}, tmp_path / "y.pt")
    with pytest.raises(pickle.UnpicklingError, match=r"(?s)y\.pt' needs the global re\._compile.*weights_only=False"):
        tj.load(tmp_path / "y.pt")
    assert tj.load(tmp_path / "y.pt", weights_only=False)["hook"].pattern == "a+"
    with pytest.raises(TypeError, match=r"neither a tree of tensors.*nor picklable"):
        tj.save({"f": lambda: 1}, tmp_path / "z.pt")
    assert not os.path.exists(tmp_path / "z.pt")


def _listing(d):
    return sorted(os.listdir(d))


def test_failure_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    tj.save({"w": tj.ones(3)}, path)
    old = path.read_bytes()

    def crash_mid_write(f, tensors, meta):
        f.write(b"\x10\x00\x00\x00partial")  # half a header, then the write fails
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "_write", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        tj.save({"w": tj.zeros(1000)}, path)
    assert path.read_bytes() == old
    assert _listing(tmp_path) == ["ckpt.safetensors"]  # no temp file left behind
    assert tj.load(path)["w"].tolist() == [1.0, 1.0, 1.0]


def test_failure_before_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    tj.save({"w": tj.ones(2)}, path)

    def no_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(serialization.os, "fsync", no_fsync)
    with pytest.raises(OSError, match="I/O error"):
        tj.save({"w": tj.zeros(2)}, path)
    monkeypatch.undo()
    assert tj.load(path)["w"].tolist() == [1.0, 1.0]
    assert _listing(tmp_path) == ["ckpt.safetensors"]


def test_new_file_has_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        tj.save({"w": tj.ones(1)}, tmp_path / "p.safetensors")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "p.safetensors").st_mode & 0o777 == 0o644


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x89PNG this is an image")
    with pytest.raises(RuntimeError, match=r"model\.pt.*not a readable safetensors checkpoint"):
        tj.load(path)
    path.write_bytes(b"PK\x03\x04 a zip file's start, as torch.save writes, and then garbage")
    with pytest.raises(RuntimeError, match=r"model\.pt.*damaged zip file"):
        tj.load(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tj.save({"w": tj.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RuntimeError, match=r"ckpt\.safetensors.*not a readable"):
        tj.load(path)


def test_flipped_data_byte_is_detected(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    tj.save({"w": tj.ones(100)}, path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # inside the tensor data: the header is still valid
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"ckpt\.safetensors' is corrupted"):
        tj.load(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        tj.load("/nonexistent/dir/ckpt.safetensors")


# ----------------------------------------------------------------------------------------------- killed saves

_KILLED_SAVE = """
import sys, time
import tracejit as tj
from tracejit import serialization

def stalled_write(f, tensors, meta):
    f.write(b"\\0" * 4096)  # part of the file, then the process is killed
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

serialization._write = stalled_write
tj.save({"w": tj.ones(1000)}, sys.argv[1])
"""


def _orphans(d):
    return [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_killed_save_leaves_an_orphan_that_the_next_save_removes(tmp_path):
    import signal
    import subprocess
    import sys

    path = tmp_path / "ckpt.safetensors"
    tj.save({"w": tj.zeros(2)}, path)
    child = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
        (orphan,) = _orphans(tmp_path)
        assert orphan.startswith(".ckpt.safetensors.tracejit-") and f"-{child.pid}-" in orphan
        assert tj.load(path)["w"].tolist() == [0.0, 0.0]  # the old checkpoint is intact meanwhile
        tj.save({"w": tj.ones(1)}, path)  # the child is still alive: its file is not touched
        assert _orphans(tmp_path) == [orphan]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert _orphans(tmp_path) == [orphan]  # a killed save leaves its temporary file behind ...
    tj.save({"w": tj.ones(3)}, path)  # ... and the next save to the same path removes it
    assert _orphans(tmp_path) == []
    assert tj.load(path)["w"].tolist() == [1.0, 1.0, 1.0]


def test_only_our_dead_orphans_for_this_path_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited: its pid is free (reuse within this test is vanishingly unlikely)
    host = serialization._HOST
    ours = f".ckpt.safetensors.tracejit-{host}-{dead_pid}-0a1b2c3d.tmp"
    keep = [
        f".ckpt.safetensors.tracejit-{host}-{os.getpid()}-0a1b2c3d.tmp",  # a live process (this one)
        f".ckpt.safetensors.tracejit-otherhost-{dead_pid}-0a1b2c3d.tmp",  # another host's save
        f".other.safetensors.tracejit-{host}-{dead_pid}-0a1b2c3d.tmp",  # another checkpoint's
        ".tmpAbC123", "ckpt.safetensors.tmp", ".ckpt.safetensors.0a1b2c3d4e5f.tmp",  # not our pattern
    ]
    for name in [ours] + keep:
        (tmp_path / name).write_bytes(b"partial")
    tj.save({"w": tj.ones(1)}, tmp_path / "ckpt.safetensors")
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["ckpt.safetensors"])


# ----------------------------------------------------------------------------------------------- dtypes


def test_float16_is_stored_as_f16_and_loads_as_float16(tmp_path):
    t = tj.tensor([0.5, -2.0, 65504.0]).half()
    path = tmp_path / "h.safetensors"
    tj.save({"h": t, "np16": np.ones(2, np.float16)}, path)
    raw = safetensors.numpy.load_file(str(path))
    assert raw["h"].dtype == np.float16 and raw["np16"].dtype == np.float16
    back = tj.load(path)
    assert back["h"].dtype is tj.float16 and back["h"].tolist() == [0.5, -2.0, 65504.0]
    assert back["np16"].dtype == np.float16
    foreign = tmp_path / "foreign16.safetensors"
    safetensors.numpy.save_file({"w": np.arange(3, dtype=np.float16)}, str(foreign))
    assert tj.load(foreign)["w"].dtype is tj.float16  # not widened to float32


def test_bfloat16_tensors_load_as_float32_with_a_warning(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    path = tmp_path / "bf16.safetensors"
    w = torch.tensor([[1.5, -3.0e38], [1.0e-38, 0.0078125]], dtype=torch.bfloat16)
    safetensors.torch.save_file({"w": w, "b": torch.ones(2)}, str(path))
    with pytest.warns(UserWarning, match=r"bf16\.safetensors.*bfloat16 tensors \('w'\).*loaded as float32"):
        back = tj.load(path)
    assert back["w"].dtype is tj.float32 and back["b"].dtype is tj.float32
    np.testing.assert_array_equal(back["w"].numpy(), w.float().numpy())  # exact
    with pytest.warns(UserWarning, match="bfloat16"):
        back = tj.load(open(path, "rb"))
    np.testing.assert_array_equal(back["w"].numpy(), w.float().numpy())


def _raw_file(path, header, data=b""):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


@pytest.mark.parametrize("header, data, why", [
    ([1, 2, 3], b"", "header is a JSON list"),
    ("text", b"", "header is a JSON str"),
    (b"\xff\xfe{", b"", "not valid JSON"),
    ({"w": [1, 2]}, b"", "'w' is not a tensor description"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"a": 1}}, b"\0" * 8,
     "__metadata__ is not an object of strings"),
    ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "dtype F8_E4M3"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "'v' starts at byte 4"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "need 77 bytes but the file has 81"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "not a tensor description"),
])
def test_malformed_headers_are_refused_naming_the_file(tmp_path, header, data, why):
    path = tmp_path / "bad.safetensors"
    _raw_file(path, header, data)
    with pytest.raises(RuntimeError, match=r"bad\.safetensors' is not a readable safetensors checkpoint.*"
                                           + re.escape(why)):
        tj.load(path)
    with open(path, "rb") as f:
        with pytest.raises(RuntimeError, match=re.escape(why)):
            tj.load(f)


def test_header_length_larger_than_the_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(RuntimeError, match=r"short\.safetensors.*claims 1099511627776 bytes"):
        tj.load(path)
