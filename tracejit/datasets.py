"""MNIST, Fashion-MNIST and CIFAR-10 read from their official files, plus SyntheticImages (learnable, offline).

Items are ``(image, label)`` with the image a float32 tensor in [0, 1] of shape [C, H, W] — what
torchvision gives after ``ToTensor()``; `transform` receives that tensor (tracejit's ``ToTensor`` passes it
through, so torchvision pipelines such as ``Compose([RandomCrop(32, 4), ToTensor(), Normalize(m, s)])`` work).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

from ._tensor import Tensor
from .dispatch import _from_array
from .utils.data import Dataset

__all__ = ["MNIST", "FashionMNIST", "CIFAR10", "SyntheticImages", "read_idx", "download_url",
           "download_and_extract_archive", "extract_archive", "check_integrity"]

# ----------------------------------------------------------------------------------------------- downloads


def _md5(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)  # the official checksums are MD5: integrity, not security
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_integrity(path: str, md5: str | None = None) -> bool:
    """True when `path` exists and (if `md5` is given) has that MD5."""
    if not os.path.isfile(path):
        return False
    return md5 is None or _md5(path) == md5


def _temp_beside(path: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.",
                               suffix=".part")
    os.close(fd)
    return tmp


def download_url(url: str, root: str, filename: str | None = None, md5: str | None = None,
                 timeout: float = 60.0) -> str:
    """Download `url` to ``root/filename`` unless a file with the right MD5 is already there.

    The data goes to a temporary file beside the target and is renamed into place only after the
    checksum matched, so an interrupted or corrupted download never looks like a finished one.
    """
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, filename or os.path.basename(url))
    if check_integrity(path, md5):
        return path
    tmp = _temp_beside(path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None:
            got = _md5(tmp)
            if got != md5:
                raise RuntimeError(f"checksum mismatch for {url}: expected MD5 {md5}, got {got} (the "
                                   f"download is corrupted or the file on the server changed)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _safe_members(tar: tarfile.TarFile, dest: str) -> list[tarfile.TarInfo]:
    """Regular files and directories whose paths stay inside `dest` (Pythons without tar filters)."""
    base = os.path.realpath(dest)
    members = []
    for m in tar.getmembers():
        target = os.path.realpath(os.path.join(dest, m.name))
        if not (m.isfile() or m.isdir()) or os.path.commonpath([base, target]) != base:
            raise RuntimeError(f"refusing to extract {m.name!r}: links and paths outside the target "
                               f"directory are not allowed in dataset archives")
        members.append(m)
    return members


def extract_archive(from_path: str, to_path: str | None = None, remove_finished: bool = False) -> str:
    """Extract a .tar/.tar.gz/.tgz archive, or gunzip a .gz file, into `to_path` (default: its folder).

    Extraction happens in a temporary folder inside `to_path`; each top-level entry is then renamed into
    place, so a crash never leaves a half-extracted dataset that looks complete.
    """
    to_path = to_path or os.path.dirname(from_path)
    os.makedirs(to_path, exist_ok=True)
    name = os.path.basename(from_path)
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        staging = tempfile.mkdtemp(dir=to_path, prefix=".extract.")
        try:
            with tarfile.open(from_path) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, filter="data")
                else:  # pragma: no cover - Pythons before the 2023 tarfile security backports
                    tar.extractall(staging, members=_safe_members(tar, staging))
            for entry in os.listdir(staging):
                dest = os.path.join(to_path, entry)
                if os.path.isdir(dest) and not os.path.islink(dest):
                    shutil.rmtree(dest)  # an earlier, incomplete extraction
                os.replace(os.path.join(staging, entry), dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    elif name.endswith(".gz"):
        dest = os.path.join(to_path, name[:-3])
        tmp = _temp_beside(dest)
        try:
            with gzip.open(from_path, "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        raise ValueError(f"extract_archive: unsupported archive type {name!r} (expected .tar, .tar.gz, "
                         f".tgz or .gz)")
    if remove_finished:
        os.remove(from_path)
    return to_path


def download_and_extract_archive(url: str, download_root: str, extract_root: str | None = None,
                                 filename: str | None = None, md5: str | None = None,
                                 remove_finished: bool = False) -> None:
    """`download_url` (checksum verified) followed by `extract_archive`."""
    path = download_url(url, download_root, filename, md5)
    extract_archive(path, extract_root or download_root, remove_finished)


# ----------------------------------------------------------------------------------------------- file formats

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (MNIST's format; gzip-compressed when the name ends in .gz) into an array.

    Header: two zero bytes, a type code, the number of dimensions, then each size as a big-endian
    uint32. MNIST images have magic 2051 (uint8, 3 dims), labels 2049 (uint8, 1 dim).
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise RuntimeError(f"{path} is not an IDX file (bad header {raw[:4].hex()})")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise RuntimeError(f"{path}: IDX magic number is {magic}, expected {expected_magic}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise RuntimeError(f"{path}: IDX file of shape {dims} should be {expected} bytes, but is {len(raw)} "
                           f"(truncated or corrupted)")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _reconstruct():
    # numpy's array-unpickling function, wherever this numpy version keeps it
    return np.zeros(1).__reduce__()[0]


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR's batches: builtin containers and plain NumPy arrays, nothing else.

    The official batches are Python 2 pickles of a dict holding a uint8 ndarray, so NumPy's array
    reconstruction must be allowed; every other global (any class, any function) is refused.
    """

    _ALLOWED = {
        ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "bytes"): bytes,
        ("builtins", "str"): str, ("builtins", "int"): int,
        ("__builtin__", "dict"): dict, ("__builtin__", "list"): list, ("__builtin__", "str"): str,
        ("__builtin__", "int"): int, ("__builtin__", "long"): int,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes in protocol-2 pickles
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a dataset file "
                                     f"(only builtin containers and NumPy arrays are allowed)")


def _load_cifar_batch(path: str) -> tuple[np.ndarray, list[int]]:
    with open(path, "rb") as f:
        try:
            entry = _BatchUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise RuntimeError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    if not isinstance(entry, dict):
        raise RuntimeError(f"{path} is not a CIFAR-10 python batch (holds a {type(entry).__name__})")

    def get(key: str) -> Any:
        for k in (key.encode(), key):  # b'data' when read as bytes, 'data' if written by Python 3
            if k in entry:
                return entry[k]
        raise RuntimeError(f"{path}: CIFAR batch has no {key!r} entry (keys: {sorted(map(str, entry))})")

    data = get("data")
    labels = get("labels") if any(k in entry for k in (b"labels", "labels")) else get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise RuntimeError(f"{path}: 'data' should be a uint8 array of shape [N, 3072]")
    labels = [int(v) for v in labels]
    if len(labels) != data.shape[0]:
        raise RuntimeError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
    return data, labels


def _image(arr_chw_uint8: np.ndarray) -> Tensor:
    return _from_array(arr_chw_uint8.astype(np.float32) / np.float32(255.0))


# ----------------------------------------------------------------------------------------------- datasets


class MNIST(Dataset):
    """The MNIST digits from the official IDX files in ``root/MNIST/raw`` (or directly in ``root``).

    Items are ``(float32 tensor [1, 28, 28] in [0, 1], int label)``. As in torchvision, ``data`` holds the
    images as a uint8 tensor [N, 28, 28] and ``targets`` the labels as an int64 tensor (the siamese-network
    example does ``dataset.data.unsqueeze(1).clone()``).
    """

    mirrors = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
    resources = [
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ]
    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
               "7 - seven", "8 - eight", "9 - nine"]

    def __init__(self, root: str | os.PathLike, train: bool = True, transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False):
        self.root = os.path.expanduser(os.fspath(root))
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        if download:
            self.download()
        prefix = "train" if train else "t10k"
        images = read_idx(self._find(f"{prefix}-images-idx3-ubyte"), expected_magic=2051)
        labels = read_idx(self._find(f"{prefix}-labels-idx1-ubyte"), expected_magic=2049)
        if images.shape[0] != labels.shape[0]:
            raise RuntimeError(f"{type(self).__name__}: {images.shape[0]} images but {labels.shape[0]} labels in "
                               f"{self.root}")
        self._images, self._labels = images.astype(np.uint8), labels.astype(np.int64)
        self.data = self._data = _from_array(self._images)
        self.targets = self._targets = _from_array(self._labels)

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, type(self).__name__, "raw")

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def _find(self, name: str) -> str:
        for folder in (self.raw_folder, self.root):
            for candidate in (name, name + ".gz"):
                path = os.path.join(folder, candidate)
                if os.path.isfile(path):
                    return path
        raise RuntimeError(f"Dataset not found: {name}[.gz] is in neither {self.raw_folder} nor {self.root}. "
                           f"You can use download=True to download it")

    def _exists(self) -> bool:
        try:
            for file, _ in self.resources:
                self._find(file[:-3])
        except RuntimeError:
            return False
        return True

    def download(self) -> None:
        """Fetch the four .gz files (MD5-checked) into ``raw_folder`` and decompress them."""
        if self._exists():
            return
        os.makedirs(self.raw_folder, exist_ok=True)
        for file, md5 in self.resources:
            errors = []
            for mirror in self.mirrors:
                try:
                    download_and_extract_archive(mirror + file, self.raw_folder, filename=file, md5=md5)
                    break
                except (urllib.error.URLError, OSError, RuntimeError) as e:
                    errors.append(f"{mirror + file}: {e}")
            else:
                raise RuntimeError(f"{type(self).__name__} download failed:\n  " + "\n  ".join(errors))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        # the arrays read at load time, unless the program replaced `data`/`targets` (ds.data = ds.data[:100])
        images = self._images if self.data is self._data else np.asarray(self.data)
        labels = self._labels if self.targets is self._targets else np.asarray(self.targets)
        img = _image(images[index][None])
        target = int(labels[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


class FashionMNIST(MNIST):
    """Zalando's Fashion-MNIST: MNIST's file format and shapes, ten kinds of clothing (`classes`), read from
    ``root/FashionMNIST/raw`` (or directly from ``root``)."""

    mirrors = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
    resources = [
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ]
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


class CIFAR10(Dataset):
    """CIFAR-10 from the official python batches in ``root/cifar-10-batches-py``.

    Items are ``(float32 tensor [3, 32, 32] in [0, 1], int label)``. As in torchvision, ``data`` is
    the uint8 NumPy array [N, 32, 32, 3] (HWC) and ``targets`` a list of ints.
    """

    base_folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    filename = "cifar-10-python.tar.gz"
    tgz_md5 = "c58f30108f718f92721af3b95e74349a"
    train_list = [
        ["data_batch_1", "c99cafc152244af753f735de768cd75f"],
        ["data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"],
        ["data_batch_3", "54ebc095f3ab1f0389bbae665268c751"],
        ["data_batch_4", "634d18415352ddfa80567beed471001a"],
        ["data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"],
    ]
    test_list = [["test_batch", "40351d587109b95175f43aff81a1287e"]]
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, root: str | os.PathLike, train: bool = True, transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False):
        self.root = os.path.expanduser(os.fspath(root))
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        if download:
            self.download()
        folder = os.path.join(self.root, self.base_folder)
        datas, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise RuntimeError(f"Dataset not found: {path} is missing. You can use download=True to "
                                   f"download it")
            data, labels = _load_cifar_batch(path)
            datas.append(data)
            self.targets.extend(labels)
        self.data = np.concatenate(datas).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        files = self.train_list + self.test_list
        return all(check_integrity(os.path.join(folder, n), md5) for n, md5 in files)

    def download(self) -> None:
        """Fetch the official archive (MD5-checked) and extract it, unless the batches are already there."""
        if self._check_integrity():
            return
        download_and_extract_archive(self.url, self.root, filename=self.filename, md5=self.tgz_md5)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img = _image(self.data[index].transpose(2, 0, 1))
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


class SyntheticImages(Dataset):
    """Labelled images with class structure a small CNN learns in a few epochs; no files needed.

    Each class has a fixed pattern (a smooth random field plus oriented stripes of a class-specific
    frequency), drawn from `seed`; a sample is its class pattern with random contrast, a shift of up
    to 2 pixels (at 32x32) and Gaussian noise, clipped to [0, 1]. ``train=False`` draws fresh samples
    of the same classes (a test split). Items are ``(float32 tensor of `shape`, int label)``.
    """

    def __init__(self, n: int, shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                 seed: int = 0, train: bool = True, noise: float = 0.2, transform: Callable | None = None,
                 target_transform: Callable | None = None):
        c, h, w = shape
        classes = np.random.default_rng(seed)
        coarse = classes.standard_normal((num_classes, c, 4, 4))
        field = coarse[:, :, np.arange(h) * 4 // h][:, :, :, np.arange(w) * 4 // w]
        angle = classes.uniform(0, np.pi, num_classes)
        freq = classes.uniform(1.5, 4.0, num_classes) * 2 * np.pi / max(h, w)
        phase = classes.uniform(0, 2 * np.pi, (num_classes, c))
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        proj = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy) * freq[:, None, None]
        stripes = np.sin(proj[:, None] + phase[:, :, None, None])
        self.patterns = (0.5 * field / np.abs(field).max() + 0.5 * stripes).astype(np.float32)

        samples = np.random.default_rng([seed, 1 if train else 2])
        labels = samples.permutation(np.arange(n) % num_classes)
        contrast = samples.uniform(0.15, 0.3, (n, 1, 1, 1))
        reach = max(h, w) // 16  # 2 pixels at 32x32; none for tiny test images
        shifts = samples.integers(-reach, reach + 1, (n, 2))
        base = self.patterns[labels]
        for s in range(n):  # np.roll per sample: a translation the network must be invariant to
            base[s] = np.roll(base[s], tuple(shifts[s]), axis=(1, 2))
        images = 0.5 + contrast * base + noise * samples.standard_normal((n, c, h, w))
        self.data = np.clip(images, 0.0, 1.0).astype(np.float32)
        self.targets = labels.astype(np.int64)
        self.classes = [str(i) for i in range(num_classes)]
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img = _from_array(self.data[index].copy())
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
