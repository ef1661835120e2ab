"""DistributedSampler: disjoint shards that together cover the dataset, padded to equal length (or the tail
dropped), reshuffled per epoch from a seed every rank shares -- PyTorch's index arithmetic."""

from __future__ import annotations

import pytest

import tracejit
from tracejit.distributed.group import single_process
from tracejit.utils.data import DataLoader, DistributedSampler, TensorDataset


def shards(n, world, **kw):
    return [list(DistributedSampler(range(n), num_replicas=world, rank=r, **kw)) for r in range(world)]


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (10, 3), (2, 3), (1, 4), (7, 7)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_unshuffled_shards_are_pytorchs(n, world, drop_last):
    TorchSampler = pytest.importorskip("torch.utils.data.distributed").DistributedSampler

    ours = shards(n, world, shuffle=False, drop_last=drop_last)
    theirs = [list(TorchSampler(range(n), num_replicas=world, rank=r, shuffle=False, drop_last=drop_last))
              for r in range(world)]
    assert ours == theirs
    assert [len(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False, drop_last=drop_last))
            for r in range(world)] == [len(s) for s in theirs]


@pytest.mark.parametrize("n,world", [(23, 2), (23, 3), (24, 4), (5, 3)])
def test_shuffled_shards_are_disjoint_and_cover_the_data(n, world):
    for drop_last in (False, True):
        s = shards(n, world, shuffle=True, seed=4, drop_last=drop_last)
        assert len({len(x) for x in s}) == 1  # every rank the same number of samples
        flat = [i for x in s for i in x]
        if drop_last:
            assert len(flat) == len(set(flat)) == (n // world) * world  # disjoint, the tail dropped
        else:
            assert set(flat) == set(range(n))  # covering
            assert len(flat) == -(-n // world) * world
            assert len(flat) - len(set(flat)) == len(flat) - n  # only the padding repeats


def test_set_epoch_reshuffles_the_same_way_on_every_rank():
    a = DistributedSampler(range(50), num_replicas=2, rank=0, seed=1)
    b = DistributedSampler(range(50), num_replicas=2, rank=0, seed=1)
    first = list(a)
    assert list(a) == first and list(b) == first  # the same epoch and seed: the same order
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(b) == list(a)
    assert list(DistributedSampler(range(50), num_replicas=2, rank=0, seed=2)) != first
    tracejit.manual_seed(123)  # the global generator plays no part
    assert list(DistributedSampler(range(50), num_replicas=2, rank=0, seed=1)) == first


def test_with_a_dataloader_the_last_batch_is_smaller_and_equal_on_every_rank():
    data = TensorDataset(tracejit.arange(11))
    sizes = [[len(b[0]) for b in DataLoader(data, batch_size=4,
                                            sampler=DistributedSampler(data, num_replicas=2, rank=r))]
             for r in range(2)]
    assert sizes == [[4, 2], [4, 2]]


def test_rank_and_world_from_the_process_group_or_errors():
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedSampler(range(4))
    with single_process():
        s = DistributedSampler(range(4), shuffle=False)
        assert (s.num_replicas, s.rank, list(s)) == (1, 0, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"Invalid rank 2, rank should be in the interval \[0, 1\]"):
        DistributedSampler(range(4), num_replicas=2, rank=2)
