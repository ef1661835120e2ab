"""MNIST, Fashion-MNIST and CIFAR-10 readers on small files written in the official formats, download verification
and extraction through file:// URLs, and the SyntheticImages dataset."""

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest

import tracejit as tj
from tracejit import datasets as D
from tracejit.utils.data import DataLoader

# ----------------------------------------------------------------------------------------------- file writers


def _idx(arr: np.ndarray) -> bytes:
    """An IDX file of uint8 data: magic 0x00 0x00 0x08 ndim, big-endian uint32 sizes, then the bytes."""
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape) + arr.tobytes()


def _mnist_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _write_mnist(folder, n_train=5, n_test=3, gz=False):
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = _mnist_arrays(n, seed)
        arrays[prefix] = (images, labels)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = os.path.join(folder, f"{prefix}-{kind}-ubyte")
            if gz:
                with gzip.open(name + ".gz", "wb") as f:
                    f.write(_idx(arr))
            else:
                with open(name, "wb") as f:
                    f.write(_idx(arr))
    return arrays


def _s(b):  # a Python 2 str in a protocol-2 pickle
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _i(v):
    return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)


def _g(module, name):
    return b"c" + module + b"\n" + name + b"\n"


def _py2_batch(data, labels, label=b"training batch"):
    """The bytes cPickle.dump(batch, f, 2) wrote on Python 2 for CIFAR-10: a dict with str keys and a
    numpy uint8 array (reduced through numpy.core.multiarray._reconstruct and numpy.dtype)."""
    out = b"\x80\x02}(" + _s(b"batch_label") + _s(label)
    out += _s(b"labels") + b"](" + b"".join(_i(int(v)) for v in labels) + b"e"
    out += _s(b"data") + _g(b"numpy.core.multiarray", b"_reconstruct") + _g(b"numpy", b"ndarray")
    out += _i(0) + b"\x85" + _s(b"b") + b"\x87R"
    out += b"(" + _i(1) + _i(data.shape[0]) + _i(data.shape[1]) + b"\x86"
    out += _g(b"numpy", b"dtype") + _s(b"u1") + _i(0) + _i(1) + b"\x87R"
    minus_one = b"J" + struct.pack("<i", -1)
    out += b"(" + _i(3) + _s(b"|") + b"NNN" + minus_one + minus_one + _i(0) + b"tb"
    out += b"\x89" + _s(data.tobytes()) + b"tb"
    out += _s(b"filenames") + b"](" + b"".join(_s(b"img_%d.png" % k) for k in range(len(labels))) + b"e"
    return out + b"u."


CIFAR_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def _write_cifar(root, per_batch=2):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in CIFAR_FILES:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            f.write(_py2_batch(data, labels))
        written[name] = (data, labels)
    return written


def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


# ----------------------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz,where", [(False, "raw"), (True, "root")])
def test_mnist_reads_official_idx_files(tmp_path, gz, where):
    folder = tmp_path / "MNIST" / "raw" if where == "raw" else tmp_path
    arrays = _write_mnist(folder, gz=gz)
    train = D.MNIST(tmp_path)
    test = D.MNIST(str(tmp_path), train=False)
    assert len(train) == 5 and len(test) == 3
    img, label = train[2]
    assert img.shape == (1, 28, 28) and img.dtype is tj.float32 and isinstance(label, int)
    images, labels = arrays["train"]
    np.testing.assert_array_equal(img.numpy()[0], images[2].astype(np.float32) / 255)
    assert label == labels[2]
    assert test.targets.dtype is tj.int64 and test.targets.tolist() == arrays["t10k"][1].tolist()
    assert train.data.dtype is tj.uint8 and train.data.shape == (5, 28, 28)  # tensors, as torchvision's
    np.testing.assert_array_equal(train.data.numpy(), images)
    train.data, train.targets = train.data[1:3], train.targets[1:3]  # a program's subset is what it reads
    assert len(train) == 2 and train[1][1] == labels[2]
    np.testing.assert_array_equal(train[1][0].numpy()[0], images[2].astype(np.float32) / 255)
    assert float(img.numpy().min()) >= 0 and float(img.numpy().max()) <= 1


def test_mnist_transforms_and_loader(tmp_path):
    _write_mnist(tmp_path, n_train=7)
    ds = D.MNIST(tmp_path, transform=lambda x: (x - 0.5) / 0.5, target_transform=lambda y: y + 100)
    img, label = ds[0]
    assert float(img.numpy().min()) >= -1 and label >= 100
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 1, 28, 28) and yb.dtype is tj.int64


def test_mnist_errors(tmp_path):
    with pytest.raises(RuntimeError, match="Dataset not found.*download=True"):
        D.MNIST(tmp_path)
    arrays = _write_mnist(tmp_path)
    images = arrays["train"][0]
    # labels where images belong: magic 2049 instead of 2051
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(arrays["train"][1]))
    with pytest.raises(RuntimeError, match="magic number is 2049, expected 2051"):
        D.MNIST(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(images)[:-7])
    with pytest.raises(RuntimeError, match="truncated"):
        D.MNIST(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x89PNG....")
    with pytest.raises(RuntimeError, match="not an IDX file"):
        D.MNIST(tmp_path)


def test_read_idx_other_types(tmp_path):
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    path = tmp_path / "x-idx2-int"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">II", 2, 3) + arr.tobytes())
    got = D.read_idx(str(path))
    assert got.tolist() == [[0, 1, 2], [3, 4, 5]] and got.dtype.isnative


def test_mnist_download_verifies_and_decompresses(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _write_mnist(mirror, gz=True)
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    monkeypatch.setattr(D.MNIST, "mirrors", ["file:///nonexistent/mirror/", mirror.as_uri() + "/"])
    monkeypatch.setattr(D.MNIST, "resources", [(n, _md5(mirror / n)) for n in names])
    root = tmp_path / "data"
    ds = D.MNIST(root, download=True)
    assert len(ds) == 5
    raw = root / "MNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(names + [n[:-3] for n in names])
    # a wrong checksum on every mirror: a clear error and nothing half-written left behind
    monkeypatch.setattr(D.MNIST, "resources", [(n, "0" * 32) for n in names])
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        D.MNIST(tmp_path / "other", download=True)
    assert os.listdir(tmp_path / "other" / "MNIST" / "raw") == []


def test_fashion_mnist_reads_its_own_folder_and_names_its_classes(tmp_path, monkeypatch):
    arrays = _write_mnist(tmp_path / "FashionMNIST" / "raw", n_train=4, n_test=2, gz=True)
    ds = D.FashionMNIST(tmp_path)
    assert isinstance(ds, D.MNIST) and len(ds) == 4 and len(D.FashionMNIST(tmp_path, train=False)) == 2
    img, label = ds[3]
    np.testing.assert_array_equal(img.numpy()[0], arrays["train"][0][3].astype(np.float32) / 255)
    assert label == arrays["train"][1][3] and img.shape == (1, 28, 28)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    assert ds.class_to_idx["Sneaker"] == 7 and D.MNIST.classes[7] == "7 - seven"
    with pytest.raises(RuntimeError, match="Dataset not found"):
        D.MNIST(tmp_path)  # MNIST looks in MNIST/raw, not in FashionMNIST/raw
    # download: the four official names (with Fashion-MNIST's own checksums) into FashionMNIST/raw
    assert [n for n, _ in D.FashionMNIST.resources] == [n for n, _ in D.MNIST.resources]
    assert D.FashionMNIST.resources[0][1] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    mirror = tmp_path / "FashionMNIST" / "raw"
    monkeypatch.setattr(D.FashionMNIST, "mirrors", [mirror.as_uri() + "/"])
    monkeypatch.setattr(D.FashionMNIST, "resources", [(n, _md5(mirror / (n))) for n, _ in D.MNIST.resources])
    fresh = D.FashionMNIST(tmp_path / "data", train=False, download=True)
    assert len(fresh) == 2 and os.path.isfile(tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte")


# ----------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_official_python_batches(tmp_path):
    written = _write_cifar(tmp_path)
    train, test = D.CIFAR10(tmp_path), D.CIFAR10(tmp_path, train=False)
    assert len(train) == 10 and len(test) == 2
    assert train.data.shape == (10, 32, 32, 3) and train.data.dtype == np.uint8
    data3, labels3 = written["data_batch_3"]
    img, label = train[5]  # first image of the third batch
    assert img.shape == (3, 32, 32) and img.dtype is tj.float32 and label == labels3[1]
    np.testing.assert_array_equal(img.numpy(), data3[1].reshape(3, 32, 32).astype(np.float32) / 255)
    assert test.targets == written["test_batch"][1]
    xb, yb = next(iter(DataLoader(train, batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and yb.tolist() == train.targets[:4]


def test_cifar10_accepts_python3_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(3072, dtype=np.uint8)[None].repeat(1, 0)
    for name in CIFAR_FILES:
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": [4]}, protocol=2))
    ds = D.CIFAR10(tmp_path)
    assert len(ds) == 5 and ds[0][1] == 4


def test_cifar10_refuses_arbitrary_globals(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    for name in CIFAR_FILES:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(RuntimeError, match="refusing to load global"):
        D.CIFAR10(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar10_missing_and_malformed(tmp_path):
    with pytest.raises(RuntimeError, match="Dataset not found"):
        D.CIFAR10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in CIFAR_FILES:
        (folder / name).write_bytes(_py2_batch(np.zeros((2, 100), np.uint8), [1, 2]))
    with pytest.raises(RuntimeError, match=r"shape \[N, 3072\]"):
        D.CIFAR10(tmp_path)


def _cifar_archive(tmp_path):
    src = tmp_path / "src"
    _write_cifar(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_cifar10_download_and_extract_from_file_url(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path)
    monkeypatch.setattr(D.CIFAR10, "url", archive.as_uri())
    monkeypatch.setattr(D.CIFAR10, "tgz_md5", _md5(archive))
    root = tmp_path / "data"
    ds = D.CIFAR10(root, download=True)
    assert len(ds) == 10
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert sorted(os.listdir(root / "cifar-10-batches-py")) == sorted(CIFAR_FILES)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path):
    archive = _cifar_archive(tmp_path)
    root = tmp_path / "data"
    with pytest.raises(RuntimeError, match="checksum mismatch.*expected MD5 " + "f" * 32):
        D.download_and_extract_archive(archive.as_uri(), str(root), md5="f" * 32)
    assert os.listdir(root) == []


def test_download_skips_a_verified_file(tmp_path):
    archive = _cifar_archive(tmp_path)
    root = tmp_path / "data"
    path = D.download_url(archive.as_uri(), str(root), md5=_md5(archive))
    mtime = os.stat(path).st_mtime_ns
    again = D.download_url("file:///nonexistent", str(root), "cifar-10-python.tar.gz", md5=_md5(archive))
    assert again == path
    assert os.stat(path).st_mtime_ns == mtime


def test_extract_refuses_paths_outside_the_target(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    out = tmp_path / "out"
    with pytest.raises((RuntimeError, tarfile.TarError)):
        D.extract_archive(str(evil), str(out))
    assert not (tmp_path / "escaped.txt").exists() and os.listdir(out) == []


def test_extract_gz(tmp_path):
    gz = tmp_path / "blob.bin.gz"
    with gzip.open(gz, "wb") as f:
        f.write(b"payload")
    D.extract_archive(str(gz))
    assert (tmp_path / "blob.bin").read_bytes() == b"payload"
    assert sorted(os.listdir(tmp_path)) == ["blob.bin", "blob.bin.gz"]


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_images_are_deterministic_and_balanced():
    a, b = D.SyntheticImages(50, seed=3), D.SyntheticImages(50, seed=3)
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, D.SyntheticImages(50, seed=4).data)
    img, label = a[7]
    assert img.shape == (3, 32, 32) and img.dtype is tj.float32 and 0 <= label < 10
    assert np.bincount(a.targets, minlength=10).tolist() == [5] * 10
    assert a.data.min() >= 0 and a.data.max() <= 1
    small = D.SyntheticImages(12, shape=(1, 8, 8), num_classes=3, transform=lambda x: x * 2)
    x, y = small[0]
    assert x.shape == (1, 8, 8) and float(x.numpy().max()) <= 2 and y in (0, 1, 2)


def test_synthetic_images_have_learnable_class_structure():
    train, test = D.SyntheticImages(500, seed=0), D.SyntheticImages(300, seed=0, train=False)
    assert not np.array_equal(train.data[:10], test.data[:10])
    flat = train.data.reshape(len(train), -1)
    centroids = np.stack([flat[train.targets == k].mean(0) for k in range(10)])
    dist = ((test.data.reshape(len(test), -1)[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(1) == test.targets).mean()
    assert accuracy > 0.8  # chance is 0.1: the classes are separable, but not by a single pixel
    one_pixel = train.data[:, 0, 16, 16]
    assert np.corrcoef(one_pixel, train.targets)[0, 1] ** 2 < 0.5


def test_synthetic_images_train_a_softmax_regression_with_optim_and_loader():
    shape = (1, 8, 8)
    train = D.SyntheticImages(300, shape=shape, num_classes=4)
    test = D.SyntheticImages(200, shape=shape, num_classes=4, train=False)
    w = tj.zeros(64, 4, requires_grad=True)
    b = tj.zeros(4, requires_grad=True)
    opt = tj.optim.Adam([w, b], lr=0.05)
    sched = tj.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=tj.Generator().manual_seed(0))
    losses = []
    for _ in range(5):
        total = 0.0
        for x, y in loader:
            logits = x.reshape(x.shape[0], -1) @ w + b
            loss = -logits.log_softmax(1).gather(1, y.reshape(-1, 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        losses.append(total)
    assert losses[-1] < 0.5 * losses[0]
    x = tj.tensor(test.data.reshape(len(test), -1))
    assert ((x @ w + b).argmax(1).numpy() == test.targets).mean() > 0.9
