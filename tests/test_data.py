"""Datasets, samplers, collation and the DataLoader: coverage of every sample, shuffling reproducible
from the generator, drop_last, collation of tuples/dicts/numbers/arrays; worker processes (same batches and
order, per-worker seeds, errors with the worker traceback, persistent workers, start methods, dead workers)."""

import collections

import numpy as np
import pytest

import tracejit as tj
from tracejit.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    RandomSampler,
    Subset,
    TensorDataset,
    default_collate,
    random_split,
)


class Squares(Dataset):
    """Items are dicts, to exercise the generic (per-sample) path of the loader."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": tj.tensor([float(i), float(i * i)]), "i": i, "name": f"s{i}"}


def _ids(loader):
    out = []
    for batch in loader:
        ids = batch[1] if isinstance(batch, list) else batch["i"]
        out.append(ids.tolist())
    return out


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("make", [lambda n: TensorDataset(tj.arange(n).float().reshape(n, 1), tj.arange(n)),
                                  Squares], ids=["tensor", "dict"])
def test_epoch_visits_every_sample_once(shuffle, drop_last, make):
    n, bs = 23, 5
    loader = DataLoader(make(n), batch_size=bs, shuffle=shuffle, drop_last=drop_last,
                        generator=tj.Generator().manual_seed(1))
    batches = _ids(loader)
    assert len(loader) == len(batches) == (n // bs if drop_last else -(-n // bs))
    assert all(len(b) == bs for b in batches[:-1])
    seen = [i for b in batches for i in b]
    if drop_last:
        assert len(seen) == (n // bs) * bs and len(set(seen)) == len(seen)
    else:
        assert sorted(seen) == list(range(n))
    assert (seen == sorted(seen)) == (not shuffle)


def test_tensor_dataset_batches_hold_the_right_rows():
    x = tj.tensor(np.arange(40, dtype=np.float32).reshape(10, 4))
    y = tj.arange(10) * 10
    for xb, yb in DataLoader(TensorDataset(x, y), batch_size=3, shuffle=True):
        assert xb.shape[1:] == (4,) and xb.dtype is tj.float32 and yb.dtype is tj.int64
        np.testing.assert_array_equal(xb.numpy()[:, 0], yb.numpy() / 10 * 4)


def test_shuffle_reproducible_with_seeded_generator_and_manual_seed():
    ds = TensorDataset(tj.arange(50), tj.arange(50))

    def epochs(loader, k=3):
        return [[b[0].tolist() for b in loader] for _ in range(k)]

    a = epochs(DataLoader(ds, batch_size=7, shuffle=True, generator=tj.Generator().manual_seed(3)))
    b = epochs(DataLoader(ds, batch_size=7, shuffle=True, generator=tj.Generator().manual_seed(3)))
    assert a == b
    assert a[0] != a[1]  # each epoch draws a new order
    tj.manual_seed(11)
    c = epochs(DataLoader(ds, batch_size=7, shuffle=True))
    tj.manual_seed(11)
    d = epochs(DataLoader(ds, batch_size=7, shuffle=True))
    assert c == d


def test_default_collate_structures():
    Point = collections.namedtuple("Point", "x y")
    batch = [
        {"img": tj.ones(2, 3) * i, "label": i, "w": 0.5 * i, "arr": np.full(2, i, dtype=np.float32),
         "pair": (i, tj.tensor([i])), "name": f"n{i}", "flag": i % 2 == 0, "pt": Point(i, float(i)),
         "np": np.float32(i)}
        for i in range(3)
    ]
    out = default_collate(batch)
    assert out["img"].shape == (3, 2, 3) and out["img"][2].numpy().max() == 2
    assert out["label"].dtype is tj.int64 and out["label"].tolist() == [0, 1, 2]
    assert out["w"].dtype is tj.float64 and out["w"].tolist() == [0.0, 0.5, 1.0]
    assert out["arr"].dtype is tj.float32 and out["arr"].shape == (3, 2)
    assert isinstance(out["pair"], list) and out["pair"][0].tolist() == [0, 1, 2]
    assert out["pair"][1].shape == (3, 1)
    assert out["name"] == ["n0", "n1", "n2"]
    assert out["flag"].dtype is tj.bool and out["flag"].tolist() == [True, False, True]
    assert isinstance(out["pt"], Point) and out["pt"].y.dtype is tj.float64
    assert out["np"].dtype is tj.float32
    tuples = default_collate([(tj.zeros(2), 1), (tj.ones(2), 2)])
    assert isinstance(tuples, list) and tuples[0].shape == (2, 2) and tuples[1].tolist() == [1, 2]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([tj.zeros(2), tj.zeros(3)])
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [1]])


def test_collate_keeps_autograd_for_samples_that_require_grad():
    w = tj.ones(2, requires_grad=True)
    out = default_collate([w * 2, w * 3])
    out.sum().backward()
    assert w.grad.tolist() == [5.0, 5.0]


def test_custom_collate_and_no_batching():
    ds = Squares(4)
    loader = DataLoader(ds, batch_size=2, collate_fn=lambda b: [s["i"] for s in b])
    assert list(loader) == [[0, 1], [2, 3]]
    singles = list(DataLoader(ds, batch_size=None))
    assert len(singles) == 4 and singles[1]["i"] == 1 and singles[1]["x"].shape == (2,)


def test_loader_argument_validation():
    ds = TensorDataset(tj.arange(4))
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler"):
        DataLoader(ds, batch_sampler=[[0, 1]], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, batch_size=0)
    custom = DataLoader(ds, batch_sampler=[[3, 0], [1]])
    assert [b[0].tolist() for b in custom] == [[3, 0], [1]]


def test_samplers():
    s = RandomSampler(range(10), generator=tj.Generator().manual_seed(0))
    assert sorted(s) == list(range(10)) and len(s) == 10
    gen = tj.Generator().manual_seed(0)
    r = list(RandomSampler(range(5), replacement=True, num_samples=40, generator=gen))
    assert len(r) == 40 and set(r) <= set(range(5)) and len(set(r)) > 1
    more = list(RandomSampler(range(4), num_samples=10, generator=tj.Generator().manual_seed(0)))
    assert len(more) == 10 and sorted(more[:8]) == sorted(list(range(4)) * 2)
    assert list(BatchSampler(range(7), 3, drop_last=False)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(BatchSampler(range(7), 3, drop_last=True)) == 2


def test_subset_random_split_concat():
    ds = TensorDataset(tj.arange(10))
    parts = random_split(ds, [3, 7], generator=tj.Generator().manual_seed(0))
    ids = sorted(int(parts[0][i][0]) for i in range(3)) + sorted(int(parts[1][i][0]) for i in range(7))
    assert sorted(ids) == list(range(10)) and [len(p) for p in parts] == [3, 7]
    fr = random_split(ds, [0.5, 0.3, 0.2], generator=tj.Generator().manual_seed(0))
    assert [len(p) for p in fr] == [5, 3, 2]
    with pytest.raises(ValueError, match="Sum of input lengths"):
        random_split(ds, [3, 3])
    sub = Subset(ds, [4, 2])
    assert [int(sub[i][0]) for i in range(2)] == [4, 2]
    both = ConcatDataset([Subset(ds, [0, 1]), Subset(ds, [9])])
    assert len(both) == 3 and int(both[2][0]) == 9 and int(both[-1][0]) == 9
    loader = DataLoader(ds + ds, batch_size=20)
    assert next(iter(loader))[0].tolist() == list(range(10)) * 2


def test_tensor_dataset_size_mismatch():
    with pytest.raises(ValueError, match="Size mismatch"):
        TensorDataset(tj.zeros(3), tj.zeros(4))


# ----------------------------------------------------------------------------------------------- worker processes
# Datasets live at module level so that "forkserver"/"spawn" workers can unpickle them.


class Traced(Dataset):
    """Each sample says which process loaded it, with draws from tracejit's, Python's and NumPy's generators."""

    def __init__(self, n=12, fail_at=(), key_error_at=(), exit_at=(), sleep_at=()):
        self.n, self.fail_at, self.key_error_at = n, fail_at, key_error_at
        self.exit_at, self.sleep_at = exit_at, sleep_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import os
        import random
        import time

        from tracejit.utils.data import get_worker_info

        if i in self.fail_at:
            raise ValueError(f"sample {i} is broken")
        if i in self.key_error_at:
            raise KeyError(f"no label for sample {i}")
        if i in self.exit_at:
            os._exit(3)
        if i in self.sleep_at:
            time.sleep(0.6)
        info = get_worker_info()
        return {"i": i, "x": tj.tensor([float(i), 2.0 * i]), "pid": os.getpid(),
                "worker": -1 if info is None else info.id, "seed": -1 if info is None else info.seed,
                "tj": float(tj.rand(1).item()), "py": random.random(), "np": float(np.random.rand())}


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


class RaisesOddly(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise NeedsTwoArgs(1, 2)


def _set_flag(worker_id):
    import tracejit.utils.data as data

    data.get_worker_info().dataset.flag = 100 + worker_id


class Flagged(Dataset):
    flag = None

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.flag


def _epoch(loader):
    return [{k: (v.tolist() if isinstance(v, tj.Tensor) else v) for k, v in b.items()} for b in loader]


@pytest.mark.parametrize("kw", [dict(batch_size=5, shuffle=True), dict(batch_size=4, shuffle=True, drop_last=True),
                                dict(batch_size=None, shuffle=True), dict(batch_size=3)])
def test_workers_load_the_same_batches_in_the_same_order(kw):
    import os

    ds = Traced(n=13)
    ref = DataLoader(ds, generator=tj.Generator().manual_seed(5), **kw)
    par = DataLoader(ds, generator=tj.Generator().manual_seed(5), num_workers=2, **kw)
    for _ in range(2):  # two epochs: each draws a fresh order, the same one with and without workers
        a, b = _epoch(ref), _epoch(par)
        assert [x["i"] for x in a] == [x["i"] for x in b] and [x["x"] for x in a] == [x["x"] for x in b]
        assert len(b) == len(par)
        pids = {p for x in b for p in (x["pid"] if isinstance(x["pid"], list) else [x["pid"]])}
        assert len(pids) == 2 and os.getpid() not in pids  # really loaded by two other processes
    tensors = TensorDataset(tj.arange(20).float().reshape(10, 2), tj.arange(10))
    for xb, yb in DataLoader(tensors, batch_size=3, shuffle=True, num_workers=2):
        assert xb.dtype is tj.float32 and xb.numpy()[:, 0].tolist() == (yb.numpy() * 2).tolist()


def test_worker_seeds_are_per_worker_and_reproducible():
    def run():
        loader = DataLoader(Traced(n=8), batch_size=2, num_workers=2, generator=tj.Generator().manual_seed(9))
        return [(w, s, t, p, n) for b in loader
                for w, s, t, p, n in zip(b["worker"].tolist(), b["seed"].tolist(), b["tj"].tolist(),
                                         b["py"].tolist(), b["np"].tolist())]

    a, b = run(), run()
    assert a == b  # the loader's generator decides the base seed, so the workers' draws repeat
    seeds = {w: s for w, s, *_ in a}
    assert sorted(seeds) == [0, 1] and seeds[1] == seeds[0] + 1  # worker k: base seed + k, as PyTorch
    draws = [t for _, _, t, _, _ in a]
    assert len(set(draws)) == len(draws)  # the two workers' tracejit streams differ
    assert {w for w, *_ in a} == {0, 1} and len({p for *_, p, _ in a}) == len(a)
    with_other_seed = DataLoader(Traced(n=4), batch_size=2, num_workers=2, generator=tj.Generator().manual_seed(10))
    assert [b["tj"].tolist() for b in with_other_seed] != [[t for *_, t, _, _ in a][:2], [t for *_, t, _, _ in a][2:4]]


def test_worker_errors_are_raised_here_with_the_worker_traceback():
    loader = DataLoader(Traced(n=8, fail_at=(5,), key_error_at=(7,)), batch_size=2, num_workers=2)
    it = iter(loader)
    assert next(it)["i"].tolist() == [0, 1] and next(it)["i"].tolist() == [2, 3]
    with pytest.raises(ValueError) as err:
        next(it)
    text = str(err.value)
    assert text.startswith("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call")
    assert "in __getitem__" in text and 'raise ValueError(f"sample {i} is broken")' in text
    assert text.rstrip().endswith("ValueError: sample 5 is broken")
    with pytest.raises(KeyError) as err:  # the loader goes on after an error, as PyTorch's does
        next(it)
    assert "Caught KeyError in DataLoader worker process 1." in str(err.value) and "\\n" not in str(err.value)
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(RuntimeError, match=r"(?s)Caught NeedsTwoArgs in DataLoader worker process 0.*NeedsTwoArgs"):
        next(iter(DataLoader(RaisesOddly(), num_workers=1)))  # a type that cannot take one message


def test_worker_init_fn_runs_in_each_worker():
    out = [b.tolist() for b in DataLoader(Flagged(), batch_size=1, num_workers=2, worker_init_fn=_set_flag)]
    assert out == [[100], [101], [100], [101]]  # tasks go to the workers in turn
    err = DataLoader(Flagged(), num_workers=1, worker_init_fn=lambda w: 1 / 0)
    with pytest.raises(ZeroDivisionError, match="Caught ZeroDivisionError in DataLoader worker process 0"):
        list(err)


def test_persistent_workers_serve_every_epoch_and_drop_an_abandoned_epochs_batches():
    loader = DataLoader(Traced(n=10), batch_size=2, num_workers=2, persistent_workers=True, prefetch_factor=3)
    first = iter(loader)
    assert next(first)["i"].tolist() == [0, 1]  # abandoned: 5 more tasks were in flight
    pids = set()
    for _ in range(2):
        batches = list(loader)
        assert [b["i"].tolist() for b in batches] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
        pids |= {p for b in batches for p in b["pid"].tolist()}
    assert len(pids) == 2  # the same two processes every epoch
    assert loader._pool is not None and not loader._pool.shut
    loader._pool.shutdown()
    assert all(not w.is_alive() for w in loader._pool.workers)


def test_forkserver_and_spawn_workers():
    ds = Traced(n=6)
    expected = [b["i"].tolist() for b in DataLoader(ds, batch_size=2)]
    fs = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="forkserver", in_order=False)
    assert sorted(b["i"].tolist() for b in fs) == expected  # in_order=False: as they come
    sp = DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context="spawn")
    assert [b["i"].tolist() for b in sp] == expected
    unpicklable = DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context="forkserver",
                             collate_fn=lambda b: b)
    with pytest.raises(RuntimeError, match=r"starts its workers by 'forkserver'.*pickling failed.*module level"):
        iter(unpicklable)


def test_openmp_in_this_process_makes_workers_start_by_forkserver(monkeypatch):
    import multiprocessing as mp

    from tracejit.utils.data import dataloader

    monkeypatch.setattr(dataloader, "_fork_hazard", lambda: "OpenMP has run parallel kernels in this process")
    monkeypatch.setattr(mp, "get_start_method", lambda allow_none=False: "fork")
    assert dataloader._resolve_context(None).get_start_method() == "forkserver"
    with pytest.warns(RuntimeWarning, match="workers are forked as asked, but OpenMP"):
        dataloader._resolve_context(mp.get_context("fork"))
    monkeypatch.setattr(dataloader, "_fork_hazard", lambda: None)
    assert dataloader._resolve_context(None).get_start_method() == "fork"


_OMP_SCRIPT = """
import numba, numpy as np
from tracejit.compiler.backends.cpu import threads
from tracejit.utils.data import dataloader

@numba.njit(parallel=True)
def total(a):
    s = 0.0
    for i in numba.prange(a.shape[0]):
        s += a[i]
    return s

assert dataloader._fork_hazard() is None
assert threads.configure()["layer"] == "omp" and total(np.ones(10)) == 10.0
print(dataloader._resolve_context(None).get_start_method(), dataloader._fork_hazard())
"""


def test_openmp_parallel_kernels_are_detected_as_a_fork_hazard(tmp_path):
    # DESIGN.md: after OpenMP ran, a forked child that runs a parallel kernel is killed (measured: such workers die
    # by SIGTERM, and the same loader with forkserver workers runs their parallel kernels fine)
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRACEJIT_THREADING_LAYER="omp", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = subprocess.run([sys.executable, "-c", _OMP_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "forkserver OpenMP has run parallel kernels in this process, and a forked child " \
                                 "that runs one is killed"


def test_dead_worker_and_timeout_are_errors_not_hangs():
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid\(s\) \d+\) exited unexpectedly \(exit code"):
        list(DataLoader(Traced(n=4, exit_at=(2,)), batch_size=1, num_workers=1))
    with pytest.raises(RuntimeError, match=r"DataLoader timed out after 0.3 seconds"):
        list(DataLoader(Traced(n=2, sleep_at=(0,)), batch_size=1, num_workers=1, timeout=0.3))


def test_worker_options_are_checked_as_pytorch_checks_them():
    ds = Traced(n=4)
    with pytest.raises(ValueError, match="prefetch_factor option could only be specified in multiprocessing"):
        DataLoader(ds, prefetch_factor=2)
    with pytest.raises(ValueError, match="persistent_workers option needs num_workers > 0"):
        DataLoader(ds, persistent_workers=True)
    with pytest.raises(ValueError, match="timeout option should be non-negative"):
        DataLoader(ds, timeout=-1)
    with pytest.raises(ValueError, match="num_workers option should be non-negative"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="should specify a valid start method"):
        DataLoader(ds, num_workers=1, multiprocessing_context="threads")
    with pytest.raises(ValueError, match="multiprocessing_context can only be used with multi-process loading"):
        DataLoader(ds, multiprocessing_context="spawn")
    loader = DataLoader(ds, batch_size=2, num_workers=2, pin_memory=True, pin_memory_device="")
    assert loader.prefetch_factor == 2 and len(loader) == 2 and len(iter(loader)) == 2
    assert [b["i"].tolist() for b in DataLoader(ds, batch_size=2, pin_memory=True)] == [[0, 1], [2, 3]]


def test_random_split_fractions_and_subset_random_sampler():
    from tracejit.utils.data import SubsetRandomSampler

    ds = TensorDataset(tj.arange(10))
    # floor(10 * 0.25) = 2 twice and floor(10 * 0.5) = 5: the remainder goes to the first split
    assert [len(p) for p in random_split(ds, [0.25, 0.25, 0.5], generator=tj.Generator().manual_seed(0))] == [3, 2, 5]
    with pytest.raises(ValueError, match="Fraction at index 1 is not between 0 and 1"):
        random_split(ds, [0.75, 1.25, -1.0])
    with pytest.warns(UserWarning, match="Length of split at index 1 is 0"):
        random_split(TensorDataset(tj.arange(1)), [0.5, 0.5])
    a = random_split(ds, [4, 6], generator=tj.Generator().manual_seed(7))
    b = random_split(ds, [4, 6], generator=tj.Generator().manual_seed(7))
    assert a[0].indices == b[0].indices and sorted(a[0].indices + a[1].indices) == list(range(10))
    s = SubsetRandomSampler([3, 5, 7], generator=tj.Generator().manual_seed(0))
    assert sorted(s) == [3, 5, 7] and len(s) == 3


def test_default_collate_copies_mapping_types():
    class Record(dict):
        pass

    out = default_collate([Record(a=1), Record(a=2)])
    assert type(out) is Record and out["a"].tolist() == [1, 2]
    od = default_collate([collections.OrderedDict(b=1.0, a=2.0)] * 2)
    assert isinstance(od, collections.OrderedDict) and list(od) == ["b", "a"] and od["a"].dtype is tj.float64


# ---- iterable-style datasets, against PyTorch


class _StreamMixin:
    """Samples start..end-1, split between workers in uneven contiguous chunks (worker 0 gets the most), the way
    PyTorch's IterableDataset documentation splits them."""

    def __init__(self, start, end, with_len=True):
        self.start, self.end, self.with_len = start, end, with_len

    def __iter__(self):
        info = self._worker_info()
        lo, hi = self.start, self.end
        if info is not None:
            per = -(-(hi - lo) // info.num_workers)
            lo = self.start + info.id * per
            hi = min(lo + per, self.end)
        for i in range(lo, hi):
            yield {"i": i, "x": np.float32(i) * 0.5}

    def __len__(self):
        if not self.with_len:
            raise TypeError("no length")
        return self.end - self.start


class TjStream(_StreamMixin, tj.utils.data.IterableDataset):
    @staticmethod
    def _worker_info():
        return tj.utils.data.get_worker_info()


def _torch_stream():
    torch = pytest.importorskip("torch")

    class TorchStream(_StreamMixin, torch.utils.data.IterableDataset):
        @staticmethod
        def _worker_info():
            return torch.utils.data.get_worker_info()

    return torch, TorchStream


def _items(loader):
    return [b["i"].tolist() if hasattr(b["i"], "tolist") else b["i"] for b in loader]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # (torch, on 2 cores)
@pytest.mark.parametrize("kw", [dict(batch_size=4), dict(batch_size=4, drop_last=True), dict(batch_size=None),
                                dict(batch_size=3, num_workers=2), dict(batch_size=3, num_workers=2, drop_last=True),
                                dict(batch_size=None, num_workers=3)])
def test_iterable_dataset_batches_as_torch(kw):
    torch, TorchStream = _torch_stream()
    theirs = _items(torch.utils.data.DataLoader(TorchStream(0, 11), **kw))
    ours_loader = DataLoader(TjStream(0, 11), **kw)
    ours = _items(ours_loader)
    assert ours == theirs  # with workers: their batches in turn, a worker whose chunk ran out skipped
    assert len(ours_loader) == len(torch.utils.data.DataLoader(TorchStream(0, 11), **kw))
    batch = next(iter(DataLoader(TjStream(0, 11), batch_size=2)))
    assert batch["x"].dtype is tj.float32 and batch["x"].tolist() == [0.0, 0.5]


def test_iterable_dataset_persistent_workers_start_over_each_epoch():
    loader = DataLoader(TjStream(0, 7), batch_size=2, num_workers=2, persistent_workers=True)
    first = _items(loader)
    assert sorted(i for b in first for i in b) == list(range(7))
    assert _items(loader) == first and _items(loader) == first
    loader._pool.shutdown()


def test_iterable_dataset_options_and_chain_as_torch():
    torch, TorchStream = _torch_stream()
    for kw in (dict(shuffle=True), dict(sampler=[0, 1]), dict(batch_sampler=[[0]])):
        with pytest.raises(ValueError) as ours:
            DataLoader(TjStream(0, 3), **kw)
        with pytest.raises(ValueError) as theirs:
            torch.utils.data.DataLoader(TorchStream(0, 3), **kw)
        assert str(ours.value).split(",")[0] == str(theirs.value).split(",")[0]
    with pytest.raises(TypeError):
        len(DataLoader(TjStream(0, 3, with_len=False)))
    assert _items(DataLoader(TjStream(0, 3, with_len=False), batch_size=2)) == [[0, 1], [2]]
    chained = TjStream(0, 2) + TjStream(5, 7)
    assert isinstance(chained, tj.utils.data.ChainDataset) and len(chained) == 4
    assert [s["i"] for s in chained] == [0, 1, 5, 6]
    with pytest.raises(AssertionError, match="does not support IterableDataset"):
        ConcatDataset([TjStream(0, 2)])
