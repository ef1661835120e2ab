"""DataParallel, DistributedDataParallel in a world of one rank (no MPI: tests/distributed/test_mpi.py runs real
ranks), PyTorch's bucket assignment, the post-accumulate-grad hooks DDP reduces from, and the API's errors."""

from __future__ import annotations

import numpy as np
import pytest

import tracejit as tj
import tracejit.distributed as dist
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.autograd import engine
from tracejit.distributed.group import single_process
from tracejit.nn.parallel import DataParallel, DistributedDataParallel, bucket_plan


def mlp():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def copy_of(model, make):
    other = make()
    other.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    return other


def test_data_parallel_is_the_module_with_prefixed_state_dict_keys():
    inner = mlp()
    dp = nn.DataParallel(inner)
    assert dp.module is inner and isinstance(dp, nn.parallel.DataParallel)
    assert list(dp.state_dict()) == [f"module.{k}" for k in inner.state_dict()]
    x = tj.randn(4, 6)
    np.testing.assert_array_equal(dp(x).detach().numpy(), inner(x).detach().numpy())
    fresh = DataParallel(mlp())
    fresh.load_state_dict(dp.state_dict())
    np.testing.assert_array_equal(fresh(x).detach().numpy(), inner(x).detach().numpy())
    assert [p is q for p, q in zip(dp.parameters(), inner.parameters())] == [True] * 4


@pytest.mark.parametrize("limits", [[1600, 2000], [2000], [10**6], [1, 1]])
def test_buckets_are_pytorchs_reversed(limits):
    torch_dist = pytest.importorskip("torch.distributed")
    import torch

    sizes = [(100, "f32"), (300, "f32"), (50, "f64"), (1000, "f32"), (10, "f32"), (7, "f64")]
    ours = [tj.zeros(n, dtype=tj.float32 if d == "f32" else tj.float64) for n, d in sizes]
    theirs = [torch.zeros(n, dtype=torch.float32 if d == "f32" else torch.float64) for n, d in sizes]
    expect, _ = torch_dist._compute_bucket_assignment_by_size(theirs, limits)
    plan = bucket_plan(ours, limits[-1], limits[0])
    index = {id(t): i for i, t in enumerate(ours)}
    assert [[index[id(p)] for p in b.params] for b in reversed(plan)] == [list(b) for b in expect]


def test_ddp_needs_a_process_group():
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        DistributedDataParallel(mlp())
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        dist.get_rank()
    assert not dist.is_initialized() and dist.is_available()


def test_init_refuses_unknown_backends():
    with pytest.raises(ValueError, match="tracejit runs collectives on MPI"):
        dist.init_process_group("ucc")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_ddp_compiled_step_in_a_world_of_one_equals_plain_training(backend):
    with single_process():
        tj.manual_seed(3)
        model = DistributedDataParallel(mlp(), bucket_cap_mb=0.0001)  # 104 B: several buckets
        assert model.bucket_sizes == [(1, 12), (2, 128), (1, 192)]  # reverse order: b1 | b0, w1 | w0
        plain = copy_of(model.module, mlp)
        opt = tj.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        popt = tj.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)

        def step(m, o, x, y):
            o.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            o.step()
            return loss

        compiled = tj.compile(step, backend=backend)
        for _ in range(4):
            x, y = tj.randn(5, 6), tj.randint(0, 3, (5,))
            a, b = compiled(model, opt, x, y), step(plain, popt, x, y)
            np.testing.assert_allclose(a.item(), b.item(), rtol=1e-5)
        for p, q in zip(model.module.parameters(), plain.parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-5, atol=1e-6)
        v = compiled.latest()
        assert v.stages["traced"].count("= all_reduce(") == 3
        final = [n.op.name for n in v.graph.nodes]
        assert final.count("all_reduce_start") == final.count("all_reduce_wait") == 3
        assert "collective" in str(tj.explain(compiled, model, opt, x, y))


def test_no_sync_accumulates_and_a_compiled_step_retraces_for_it():
    with single_process():
        model = DistributedDataParallel(mlp())

        @tj.compile
        def backward(x):
            model(x).sum().backward()

        x = tj.randn(2, 6)
        model.zero_grad()
        with model.no_sync():
            backward(x)
        backward(x)
        backward(x)
        assert [v.reason for v in backward.history][-1] == \
            "DistributedDataParallel: no_sync() ended (backward now reduces gradients)"
        assert "all_reduce" not in backward.history[0].stages["traced"]
        assert "all_reduce" in backward.history[-1].stages["traced"]
        plain = copy_of(model.module, mlp)
        for _ in range(3):
            plain(x).sum().backward()
        np.testing.assert_allclose(model.module[0].weight.grad.numpy(), plain[0].weight.grad.numpy(), rtol=1e-6)


def test_post_accumulate_grad_hooks_and_queued_callbacks():
    w = tj.ones(3, requires_grad=True)
    seen = []

    def hook(p):
        seen.append(("hook", p.grad.numpy().tolist()))
        engine.queue_callback(lambda: seen.append("after"))

    handle = w.register_post_accumulate_grad_hook(hook)
    (w * 2).sum().backward()
    assert seen == [("hook", [2.0, 2.0, 2.0]), "after"]
    (w * 3).sum().backward()  # accumulated: the hook sees the sum
    assert seen[2] == ("hook", [5.0, 5.0, 5.0])
    handle.remove()
    (w * 1).sum().backward()
    assert len(seen) == 4
    with pytest.raises(RuntimeError, match="non-leaf"):
        (w * 2).register_post_accumulate_grad_hook(hook)
    with pytest.raises(RuntimeError, match="no backward"):
        engine.queue_callback(lambda: None)


def test_collectives_in_a_world_of_one_and_their_errors():
    with single_process():
        t = tj.tensor([1.0, 2.0])
        assert dist.all_reduce(t, op=dist.ReduceOp.AVG) is None
        assert t.tolist() == [1.0, 2.0]
        assert dist.get_world_size() == 1 and dist.get_rank() == 0 and dist.get_backend() == "mpi"
        with pytest.raises(TypeError, match="all_reduce: ReduceOp.AVG needs a floating-point tensor"):
            dist.all_reduce(tj.tensor([1, 2]), op=dist.ReduceOp.AVG)
        with pytest.raises(dist.DistError, match="broadcast: src 1 is not a rank of this group"):
            dist.broadcast(t, src=1)
        with pytest.raises(ValueError, match="output has shape"):
            dist.all_gather_into_tensor(tj.zeros(3), tj.zeros(2))
        with pytest.raises(ValueError, match="op must be a tracejit.distributed.ReduceOp"):
            dist.all_reduce(t, op="mean")


def test_a_step_with_collectives_is_never_tiered(tmp_path, monkeypatch):
    """Tiered execution's background run would start all-reduces the other ranks never match: such a step
    compiles blocking even when tiering is asked for."""
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(tmp_path))  # cold kernels: tiering would apply otherwise
    with single_process():
        tj.manual_seed(3)
        model = DistributedDataParallel(mlp())
        opt = tj.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        compiled = tj.compile(step, backend="cpu", tiered=True)
        x, y = tj.randn(5, 6), tj.randint(0, 3, (5,))
        compiled(x, y)
        assert getattr(compiled.latest(), "tier", None) is None
        assert "tiered" not in compiled.log[-1]
