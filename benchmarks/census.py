"""The census: do real PyTorch programs run unchanged with ``import tracejit as torch``?

Runs the official PyTorch tutorials (beginner blitz, basics, "learning PyTorch with examples") and the
pytorch/examples programs from checkouts you give it, each in a fresh temporary directory and a fresh process,
with `torch` aliased to tracejit and small fake data sets written in the real file formats. No third-party
program text lives in this repository: point the script at your own checkouts.

    python benchmarks/census.py --examples ~/src/pytorch-examples --tutorials ~/src/pytorch-tutorials
    python benchmarks/census.py ... --mode torch         # the same harness on real PyTorch (validates it)
    python benchmarks/census.py ... --only vae,mnist -v  # some programs, with their output

`--examples`/`--tutorials` take a working tree, or a bare git directory (files are read with ``git show``).
Tutorial paths are the repository's (``beginner_source/...``).

What the shim maps (a finder in the child process, installed before the program runs):
- ``torch`` and every ``torch.<sub>`` import -> ``tracejit`` and ``tracejit.<sub>`` (a missing tracejit module is
  a failure, as for any program);
- ``torchvision.datasets`` -> ``tracejit.datasets``; ``torchvision.transforms`` -> ``tracejit.transforms``;
  ``torchvision.models`` -> torchvision's ResNet-18/VGG-16 class code as tests/test_torchvision_models.py holds it
  (``weights=`` is accepted and ignored: nothing is downloaded); ``torchvision.utils.make_grid``/``save_image``
  written here the way torchvision writes them (pure torch code, so they run on whichever `torch` is aliased);
- ``matplotlib``/``pandas``, when not installed, a stub whose every attribute is a no-op (the programs only plot).

Fake data: MNIST and Fashion-MNIST as IDX files in ``<root>/<Name>/raw``, CIFAR-10 as python batches in
``<root>/cifar-10-batches-py`` (their MD5s cannot match the official ones, so the shim tells the CIFAR10 class the
fake files' checksums), at every root the programs use (``data``, ``./data/``, ``../data``). Every class has at
least 2 examples (the siamese data set draws two distinct images of a class). A small wikitext-2 corpus in
``<root>/wikitext-2`` (the word language model), and time_sequence_prediction's ``traindata.pt`` written in the
program's process with its own ``torch.save`` (tracejit's, or PyTorch's in ``--mode torch``).

Command-line arguments only shrink run time (epochs, batch sizes); the programs' text is never changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

N_TRAIN, N_TEST = 128, 64  # images per fake data set split (MNIST-like); CIFAR-10: 5 x 24 train, 48 test


@dataclasses.dataclass
class Program:
    name: str
    source: str  # "examples" or "tutorials"
    path: str  # inside the checkout
    args: tuple[str, ...] = ()
    skip: str = ""  # why it is not run
    extra: tuple[str, ...] = ()  # further files of the checkout the program imports
    prepare: str = ""  # a data file written in the program's process before it runs (see PREPARE)


B = "beginner_source/"
# 1 epoch that stops after its first batch (--dry-run), then the whole (fake) validation and test sets; a small model
WORD_LM_ARGS = ("--epochs", "1", "--dry-run", "--batch_size", "4", "--bptt", "8", "--emsize", "16", "--nhid", "16",
                "--nlayers", "1")
PROGRAMS = [
    # the 60-minute blitz
    Program("blitz/tensor", "tutorials", B + "blitz/tensor_tutorial.py"),
    Program("blitz/autograd", "tutorials", B + "blitz/autograd_tutorial.py"),
    Program("blitz/neural_networks", "tutorials", B + "blitz/neural_networks_tutorial.py"),
    Program("blitz/cifar10", "tutorials", B + "blitz/cifar10_tutorial.py"),
    # learn the basics
    Program("basics/quickstart", "tutorials", B + "basics/quickstart_tutorial.py"),
    Program("basics/tensorqs", "tutorials", B + "basics/tensorqs_tutorial.py"),
    Program("basics/data", "tutorials", B + "basics/data_tutorial.py"),
    Program("basics/transforms", "tutorials", B + "basics/transforms_tutorial.py"),
    Program("basics/buildmodel", "tutorials", B + "basics/buildmodel_tutorial.py"),
    Program("basics/autogradqs", "tutorials", B + "basics/autogradqs_tutorial.py"),
    Program("basics/optimization", "tutorials", B + "basics/optimization_tutorial.py"),
    Program("basics/saveloadrun", "tutorials", B + "basics/saveloadrun_tutorial.py"),
    # learning PyTorch with examples
    Program("examples/polynomial_tensor", "tutorials", B + "examples_tensor/polynomial_tensor.py"),
    Program("examples/polynomial_autograd", "tutorials", B + "examples_autograd/polynomial_autograd.py"),
    Program("examples/polynomial_custom_function", "tutorials", B + "examples_autograd/polynomial_custom_function.py"),
    Program("examples/polynomial_nn", "tutorials", B + "examples_nn/polynomial_nn.py"),
    Program("examples/polynomial_optim", "tutorials", B + "examples_nn/polynomial_optim.py"),
    Program("examples/polynomial_module", "tutorials", B + "examples_nn/polynomial_module.py"),
    Program("examples/dynamic_net", "tutorials", B + "examples_nn/dynamic_net.py"),
    # pytorch/examples
    Program("mnist", "examples", "mnist/main.py", ("--epochs", "1", "--batch-size", "32", "--test-batch-size", "32")),
    Program("regression", "examples", "regression/main.py"),
    Program("vae", "examples", "vae/main.py", ("--epochs", "1", "--batch-size", "16")),
    Program("siamese_network", "examples", "siamese_network/main.py",
            ("--epochs", "1", "--batch-size", "16", "--test-batch-size", "16")),
    Program("mnist_forward_forward", "examples", "mnist_forward_forward/main.py",
            ("--epochs", "50", "--train_size", "128", "--test_size", "64")),
    Program("mnist_rnn", "examples", "mnist_rnn/main.py",
            ("--epochs", "1", "--batch-size", "16", "--test-batch-size", "16", "--dry-run")),
    Program("word_language_model (LSTM)", "examples", "word_language_model/main.py", WORD_LM_ARGS,
            extra=("data.py", "model.py")),
    Program("word_language_model (Transformer)", "examples", "word_language_model/main.py",
            WORD_LM_ARGS + ("--model", "Transformer", "--nhead", "2"), extra=("data.py", "model.py")),
    Program("time_sequence_prediction", "examples", "time_sequence_prediction/train.py", ("--steps", "1"),
            prepare="sine_wave"),
]


# ------------------------------------------------------------------------------------------------ fake data


def _idx(path: str, arr, magic: int) -> None:
    import numpy as np

    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape))
        f.write(arr.tobytes())


def _labels(n: int, rng):
    perm = rng.permutation(n)
    return (perm % 10).astype("uint8")  # every class appears >= 2 times when n >= 20


def write_fake_data(root: str, seed: int = 0) -> dict[str, str]:
    """MNIST, FashionMNIST and CIFAR-10 in their official formats under `root`; returns CIFAR files' MD5s."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for name in ("MNIST", "FashionMNIST"):
        raw = os.path.join(root, name, "raw")
        os.makedirs(raw, exist_ok=True)
        for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
            labels = _labels(n, rng)
            images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            images[:, 4:24, 4:24] //= 2  # some structure: darker centre, brighter by class
            images[:, 10:18, 10:18] = (labels[:, None, None] * 25).astype(np.uint8)
            _idx(os.path.join(raw, f"{split}-images-idx3-ubyte"), images, 2051)
            _idx(os.path.join(raw, f"{split}-labels-idx1-ubyte"), labels, 2049)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    md5 = {}
    for name, n in [(f"data_batch_{i}", 24) for i in range(1, 6)] + [("test_batch", 48)]:
        labels = [int(v) for v in _labels(n, rng)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        with open(path, "rb") as f:
            md5[name] = hashlib.md5(f.read(), usedforsecurity=False).hexdigest()
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                                      b"horse", b"ship", b"truck"]}, f, protocol=2)
    write_fake_wikitext(os.path.join(root, "wikitext-2"), rng)
    return md5


def write_fake_wikitext(folder: str, rng, lines=(240, 48, 48)) -> None:
    """wikitext-2's {train,valid,test}.txt as the word language model reads them: UTF-8 lines of space-separated
    tokens (its tokenizer splits on whitespace and adds <eos> per line), with the corpus' heading lines
    (` = Title = `), blank lines, `<unk>` and ` @-@ ` tokens; 60 words, every one of them in the training split."""
    os.makedirs(folder, exist_ok=True)
    words = [f"w{i}" for i in range(56)] + ["<unk>", "@-@", ",", "."]
    for split, n in zip(("train", "valid", "test"), lines):
        out = [" = Fake article = ", ""] if split != "train" else [" = Fake article = ", "", " ".join(words)]
        for i in range(n):
            if i % 20 == 19:
                out += ["", f" = = Section {i // 20} = = ", ""]
                continue
            k = int(rng.integers(4, 16))
            out.append(" " + " ".join(words[j] for j in rng.integers(0, len(words), k)) + " . ")
        with open(os.path.join(folder, f"{split}.txt"), "w", encoding="utf8") as f:
            f.write("\n".join(out) + "\n")


def _write_sine_wave() -> None:
    """time_sequence_prediction's traindata.pt as its generate_sine_wave.py makes it (a float64 NumPy array of
    shifted sine waves, saved with the program's `torch.save`: tracejit's or PyTorch's, whichever `torch` is), with
    8 series of 100 steps instead of 100 of 1000."""
    import numpy as np
    import torch  # (the aliased one)

    rng = np.random.RandomState(2)
    t, length, n = 20, 100, 8
    x = np.empty((n, length), "int64")
    x[:] = np.array(range(length)) + rng.randint(-4 * t, 4 * t, n).reshape(n, 1)
    with open("traindata.pt", "wb") as f:
        torch.save(np.sin(x / 1.0 / t).astype("float64"), f)


PREPARE = {"sine_wave": _write_sine_wave}


# ------------------------------------------------------------------------------------------------ the shim


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``<prefix>[.sub]`` as the already-importable module ``<target>[.sub]``."""

    def __init__(self, prefix: str, target: str):
        self.prefix, self.target = prefix, target

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.prefix or fullname.startswith(self.prefix + "."):
            real_name = self.target + fullname[len(self.prefix):]
            if importlib.util.find_spec(real_name) is None:
                return None
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        real = importlib.import_module(self.target + spec.name[len(self.prefix):])
        self._saved = real.__dict__.get("__spec__")
        return real

    def exec_module(self, module):
        module.__spec__ = self._saved  # the real module keeps its own spec (pickling, workers)


class _Stub(types.ModuleType):
    """A module whose every attribute is a callable no-op returning another stub (plots, DataFrames)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return _Stub(self.__name__ + "()")

    def __iter__(self):
        return iter(())


def _stub_if_missing(name: str, *subs: str) -> None:
    if importlib.util.find_spec(name) is not None:
        return
    mod = _Stub(name)
    mod.__path__ = []
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    sys.modules[name] = mod
    for s in subs:
        sys.modules[f"{name}.{s}"] = getattr(mod, s)
        sys.modules[f"{name}.{s}"].__spec__ = importlib.machinery.ModuleSpec(f"{name}.{s}", None)
        setattr(mod, s, sys.modules[f"{name}.{s}"])


def _torchvision_models(torch):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    try:
        from test_torchvision_models import torchvision_models
    finally:
        sys.path.pop(0)
    tv = torchvision_models(torch)

    class _Weights:
        DEFAULT = IMAGENET1K_V1 = "IMAGENET1K_V1"

    mod = types.ModuleType("torchvision.models")

    def _build(fn):
        def build(*, weights=None, progress=True, **kwargs):  # weights are not downloaded: random init
            model = fn(**kwargs)
            for m in model.modules():  # torchvision's classes live in a module: make them picklable
                cls = type(m)
                if "<locals>" in cls.__qualname__:
                    cls.__module__, cls.__qualname__ = "torchvision.models", cls.__name__
                    setattr(mod, cls.__name__, cls)
            return model

        build.__name__ = fn.__name__
        return build

    mod.resnet18 = _build(tv.resnet18)
    mod.vgg16 = _build(tv.vgg16)
    mod.ResNet18_Weights = mod.VGG16_Weights = _Weights
    return mod


def _torchvision_utils(torch):
    mod = types.ModuleType("torchvision.utils")

    def make_grid(tensor, nrow=8, padding=2, normalize=False, value_range=None, scale_each=False, pad_value=0.0):
        if isinstance(tensor, list):
            tensor = torch.stack(tensor, dim=0)
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.dim() == 3:
            if tensor.size(0) == 1:
                tensor = torch.cat((tensor, tensor, tensor), 0)
            tensor = tensor.unsqueeze(0)
        if tensor.dim() == 4 and tensor.size(1) == 1:
            tensor = torch.cat((tensor, tensor, tensor), 1)
        if normalize:
            tensor = tensor.clone()
            lo, hi = value_range if value_range is not None else (float(tensor.min()), float(tensor.max()))
            tensor.clamp_(min=lo, max=hi)
            tensor.sub_(lo).div_(max(hi - lo, 1e-5))
        if tensor.size(0) == 1:
            return tensor.squeeze(0)
        nmaps = tensor.size(0)
        xmaps = min(nrow, nmaps)
        ymaps = int(math.ceil(float(nmaps) / xmaps))
        height, width = int(tensor.size(2) + padding), int(tensor.size(3) + padding)
        grid = tensor.new_full((tensor.size(1), height * ymaps + padding, width * xmaps + padding), pad_value)
        k = 0
        for y in range(ymaps):
            for x in range(xmaps):
                if k >= nmaps:
                    break
                grid.narrow(1, y * height + padding, height - padding).narrow(
                    2, x * width + padding, width - padding).copy_(tensor[k])
                k += 1
        return grid

    def save_image(tensor, fp, format=None, **kwargs):
        grid = make_grid(tensor, **kwargs)
        ndarr = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()
        try:
            from PIL import Image
        except ImportError:
            return
        Image.fromarray(ndarr).save(fp, format=format)

    mod.make_grid, mod.save_image = make_grid, save_image
    return mod


def _torch_flavoured_vision(torch):
    """torchvision.datasets/transforms for the real-PyTorch run: the same files, torch tensors."""
    import numpy as np

    from tracejit import datasets as tjd

    datasets = types.ModuleType("torchvision.datasets")

    class MNIST(torch.utils.data.Dataset):
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            ours = getattr(tjd, type(self).__name__)(root, train=train)
            self.data = torch.from_numpy(np.array(ours.data))
            self.targets = torch.from_numpy(np.array(ours._labels))
            self.transform, self.target_transform = transform, target_transform

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            img, target = self.data[i][None].float() / 255, int(self.targets[i])
            if self.transform is not None:
                img = self.transform(img)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return img, target

    class FashionMNIST(MNIST):
        pass

    class CIFAR10(torch.utils.data.Dataset):
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            ours = tjd.CIFAR10(root, train=train)
            self.data, self.targets = ours.data, ours.targets
            self.transform, self.target_transform = transform, target_transform

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            img = torch.from_numpy(self.data[i].transpose(2, 0, 1).copy()).float() / 255
            target = self.targets[i]
            if self.transform is not None:
                img = self.transform(img)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return img, target

    datasets.MNIST, datasets.FashionMNIST, datasets.CIFAR10 = MNIST, FashionMNIST, CIFAR10

    transforms = types.ModuleType("torchvision.transforms")

    class Compose:
        def __init__(self, ts):
            self.ts = ts

        def __call__(self, x):
            for t in self.ts:
                x = t(x)
            return x

    class ToTensor:
        def __call__(self, x):
            return x

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

        def __call__(self, x):
            return (x - self.mean) / self.std

    class Lambda:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, x):
            return self.fn(x)

    transforms.Compose, transforms.ToTensor, transforms.Normalize, transforms.Lambda = (
        Compose, ToTensor, Normalize, Lambda)
    return datasets, transforms


def install_shim(mode: str, cifar_md5: dict[str, str]) -> None:
    """Make `torch`/`torchvision` imports in this process resolve as described in the module docstring."""
    if mode == "tracejit":
        sys.meta_path.insert(0, _Alias("torch", "tracejit"))
        import tracejit as torch
        from tracejit import datasets, transforms

        datasets.CIFAR10.train_list = [[n, cifar_md5[n]] for n, _ in datasets.CIFAR10.train_list]
        datasets.CIFAR10.test_list = [[n, cifar_md5[n]] for n, _ in datasets.CIFAR10.test_list]
    else:
        import torch

        datasets, transforms = _torch_flavoured_vision(torch)
    tv = types.ModuleType("torchvision")
    tv.__path__ = []
    tv.datasets, tv.transforms = datasets, transforms
    tv.models, tv.utils = _torchvision_models(torch), _torchvision_utils(torch)
    tv.io = types.ModuleType("torchvision.io")

    def read_image(path, *args, **kwargs):
        raise NotImplementedError("census shim: torchvision.io.read_image is not provided")

    tv.io.read_image = read_image
    sys.modules["torchvision"] = tv
    for sub in ("datasets", "transforms", "models", "utils", "io"):
        sys.modules[f"torchvision.{sub}"] = getattr(tv, sub)
    _stub_if_missing("matplotlib", "pyplot")
    _stub_if_missing("pandas")


# ------------------------------------------------------------------------------------------------ running


def _fetch(checkout: str, path: str, dest: str) -> None:
    """Copy `path` from a working tree or a bare git directory to `dest`."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.exists(os.path.join(checkout, path)):
        shutil.copyfile(os.path.join(checkout, path), dest)
        return
    blob = subprocess.run(["git", "--git-dir", checkout, "show", f"HEAD:{path}"], capture_output=True, check=True)
    with open(dest, "wb") as f:
        f.write(blob.stdout)


def _error_summary(stderr: str, script: str) -> tuple[str, str]:
    """(the exception line, the last traceback frame in the program or in tracejit)"""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    exc = next((ln for ln in reversed(lines) if not ln.startswith(" ") and ":" in ln
                and not ln.startswith("Traceback")), lines[-1] if lines else "")
    where = ""
    for i, ln in enumerate(lines):
        s = ln.strip()
        if s.startswith("File ") and (os.path.basename(script) in s):
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            line_no = s.split("line ")[1].split(",")[0] if "line " in s else "?"
            where = f"line {line_no}: {code}"
    return exc[:300], where[:200]


def run_program(prog: Program, checkouts: dict[str, str], mode: str, timeout: float, verbose: bool) -> dict:
    row = {"name": prog.name, "path": prog.path, "status": "skip", "seconds": 0.0, "error": prog.skip, "where": ""}
    if prog.skip:
        return row
    checkout = checkouts.get(prog.source)
    if not checkout:
        row["error"] = f"no --{prog.source} checkout given"
        return row
    tmp = tempfile.mkdtemp(prefix="census-")
    try:
        md5 = write_fake_data(os.path.join(tmp, "data"))
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        os.symlink(os.path.join(tmp, "data"), os.path.join(work, "data"))
        os.makedirs(os.path.join(work, "results"))  # vae writes its images there
        script = os.path.join(work, os.path.basename(prog.path))
        _fetch(checkout, prog.path, script)
        for extra in prog.extra:
            _fetch(checkout, os.path.join(os.path.dirname(prog.path), extra), os.path.join(work, extra))
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   MPLBACKEND="Agg", TRACEJIT_LOGS="off", CENSUS_MD5=json.dumps(md5), CENSUS_PREPARE=prog.prepare)
        cmd = [sys.executable, os.path.abspath(__file__), "--run-one", mode, script, *prog.args]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, e.stdout or "", (e.stderr or "") if isinstance(e.stderr, str) else ""
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if verbose:
            print(f"----- {prog.name} stdout (tail)\n{out[-3000:]}\n----- stderr (tail)\n{err[-3000:]}")
        if rc == 0:
            row.update(status="ok", error="")
        elif rc is None:
            row.update(status="timeout", error=f"still running after {timeout:.0f} s")
        else:
            row["status"] = "FAIL"
            row["error"], row["where"] = _error_summary(err, script)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return row


def _run_one(mode: str, script: str, args: list[str]) -> None:
    import runpy

    install_shim(mode, json.loads(os.environ.get("CENSUS_MD5", "{}")))
    if os.environ.get("CENSUS_PREPARE"):
        PREPARE[os.environ["CENSUS_PREPARE"]]()
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--run-one":
        _run_one(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", help="a pytorch/examples checkout (working tree or bare git directory)")
    p.add_argument("--tutorials", help="a pytorch/tutorials checkout (working tree or bare git directory)")
    p.add_argument("--mode", choices=("tracejit", "torch"), default="tracejit")
    p.add_argument("--only", help="comma-separated program names (or name prefixes)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per program (default 600)")
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("-v", "--verbose", action="store_true", help="print each program's output tail")
    ns = p.parse_args(argv)
    checkouts = {"examples": ns.examples, "tutorials": ns.tutorials}
    progs = PROGRAMS
    if ns.only:
        wanted = [w.strip() for w in ns.only.split(",")]
        progs = [q for q in PROGRAMS if any(q.name == w or q.name.startswith(w) for w in wanted)]
    rows = []
    for prog in progs:
        row = run_program(prog, checkouts, ns.mode, ns.timeout, ns.verbose)
        rows.append(row)
        detail = f"  {row['error']}" + (f"  [{row['where']}]" if row["where"] else "")
        print(f"{row['status']:8s} {row['seconds']:7.1f}s  {row['name']}{detail}", flush=True)
    ran = [r for r in rows if r["status"] != "skip"]
    ok = sum(r["status"] == "ok" for r in ran)
    print(f"\n{ns.mode}: {ok} of {len(ran)} programs ran unchanged ({len(rows) - len(ran)} skipped)")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
