"""Datasets, samplers, collation and the DataLoader: coverage of every sample, shuffling reproducible
from the generator, drop_last, collation of tuples/dicts/numbers/arrays."""

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
