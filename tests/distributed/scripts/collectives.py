"""Run under `mpiexec -n N python -m mpi4py` by tests/distributed/test_mpi.py: every collective, eagerly on every
reduce op and dtype and inside a compiled function; DistributedSampler shards across real ranks. Prints
`OK <rank> <check>` per check passed."""

import sys

import numpy as np

import tracejit as torch
import tracejit.distributed as dist
from tracejit.ops import OpTypeError
from tracejit.utils.data.distributed import DistributedSampler

dist.init_process_group("mpi", timeout=120)
RANK, WORLD = dist.get_rank(), dist.get_world_size()
R = dist.ReduceOp


def ok(what):
    sys.stdout.write(f"OK {RANK} {what}\n")  # one write: the launcher interleaves the ranks' output
    sys.stdout.flush()


def values(r, dtype):
    """Rank r's input: different on every rank, exactly representable."""
    base = np.array([[3, -1, 2], [0, 5, -4]])
    if dtype == np.bool_:
        return (base + r) % 2 == 0
    if dtype == np.float16:
        return (base * (r + 1) / 4).astype(dtype)
    return (base * (r + 1) + r).astype(dtype)


EXPECT = {R.SUM: lambda a: a.sum(0), R.PRODUCT: lambda a: a.prod(0), R.MAX: lambda a: a.max(0),
          R.MIN: lambda a: a.min(0), R.AVG: lambda a: a.sum(0) / WORLD}
BOOL_EXPECT = {R.SUM: lambda a: a.any(0), R.MAX: lambda a: a.any(0), R.MIN: lambda a: a.all(0),
               R.PRODUCT: lambda a: a.all(0)}


def all_reduce_every_op_and_dtype():
    for dtype in (np.float32, np.float64, np.int64, np.bool_, np.float16):
        every = np.stack([values(r, dtype) for r in range(WORLD)])
        for op in R:
            t = torch.from_numpy(values(RANK, dtype).copy())
            if op is R.AVG and dtype in (np.int64, np.bool_):
                try:
                    dist.all_reduce(t, op=op)
                except OpTypeError as e:
                    assert "AVG" in str(e) and "floating-point" in str(e), e
                    continue
                raise AssertionError(f"AVG on {dtype} did not raise")
            expect = (BOOL_EXPECT if dtype == np.bool_ else EXPECT)[op](every)
            assert dist.all_reduce(t, op=op) is None
            got = t.numpy()
            assert got.dtype == dtype, (op, dtype, got.dtype)
            np.testing.assert_allclose(got.astype(np.float64), np.asarray(expect, np.float64), rtol=1e-3 if
                                       dtype == np.float16 else 1e-6, err_msg=f"{op} {dtype}")
    ok("all_reduce every op and dtype")


def compiled_every_op_and_dtype():
    """The same inside @compile: one traced function holding an all_reduce node per op and dtype (compiled steps
    take no float16)."""
    dtypes = (np.float32, np.float64, np.int64, np.bool_)
    cases = [(d, op) for d in dtypes for op in R if not (op is R.AVG and d in (np.int64, np.bool_))]

    @torch.compile
    def reduce_all(*xs):
        outs = []
        for (_, op), x in zip(cases, xs):
            y = x.clone()
            dist.all_reduce(y, op=op)
            outs.append(y)
        return outs

    for k in range(2):  # the second call replays the compiled program
        ins = [torch.from_numpy(values(RANK + k, d).copy()) for d, _ in cases]
        outs = reduce_all(*ins)
        for (d, op), got in zip(cases, outs):
            every = np.stack([values(r + k, d) for r in range(WORLD)])
            expect = (BOOL_EXPECT if d == np.bool_ else EXPECT)[op](every)
            got = got.numpy()
            assert got.dtype == d, (op, d, got.dtype)
            np.testing.assert_allclose(got.astype(np.float64), np.asarray(expect, np.float64),
                                       rtol=1e-3 if d == np.float16 else 1e-6, err_msg=f"compiled {op} {d}")
    v = reduce_all.latest()
    assert sum(n.op.name == "all_reduce_start" for n in v.graph.nodes) == len(cases)
    ok("compiled all_reduce every op and dtype")


def staged_through_host():
    """A tensor on another device (tests/compiler/fake_device.py: buffers NumPy must not see) is staged through host
    memory by its backend (to_host, the collective, to_device) and stays on its device."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "compiler"))
    import fake_device

    be = fake_device.install("fakedist", "fakedist:0")
    try:
        t = torch.from_numpy(values(RANK, np.float32).copy()).to("fakedist")
        before = be.to_host_calls
        dist.all_reduce(t, op=R.SUM)
        assert str(t.device) == "fakedist:0", t.device
        assert be.to_host_calls > before
        expect = np.stack([values(r, np.float32) for r in range(WORLD)]).sum(0)
        np.testing.assert_array_equal(t.cpu().numpy(), expect)
        b = torch.from_numpy(values(RANK, np.float32).copy()).to("fakedist")
        dist.broadcast(b, src=0)
        np.testing.assert_array_equal(b.cpu().numpy(), values(0, np.float32))

        @torch.compile
        def summed(x):
            y = x * 2.0
            dist.all_reduce(y)
            return y

        for _ in range(2):
            c = torch.from_numpy(values(RANK, np.float32).copy()).to("fakedist")
            out = summed(c)
            assert str(out.device) == "fakedist:0", out.device
            np.testing.assert_array_equal(out.cpu().numpy(), 2 * expect)
        assert summed.latest().program.runs >= 1  # the fake device's program ran it
    finally:
        fake_device.uninstall("fakedist")
    ok("tensors on another device staged through host")


def in_flight_views():
    """A split all-reduce of a view: writing into the viewed array before the wait does not reach the message."""
    from tracejit.distributed import group

    g = group.current()
    base = np.arange(12, dtype=np.float32) * (RANK + 1)
    h = g.start_all_reduce(base.reshape(3, 4), "sum")
    base[:] = -1  # (an in-place optimizer update of the parameter being sent)
    got = g.wait(h)
    np.testing.assert_array_equal(got, np.arange(12, dtype=np.float32).reshape(3, 4) * sum(range(1, WORLD + 1)))
    # a device backend stages the start's result through its memory: the wait gets a copy of the handle, taken
    # before the message completed, and must still complete the right all-reduce (the oldest of its shape in flight)
    a = g.start_all_reduce(np.full(5, RANK + 1.0, np.float32), "sum")
    b = g.start_all_reduce(np.full(5, 10.0 * (RANK + 1), np.float32), "sum")
    total = sum(range(1, WORLD + 1))
    np.testing.assert_array_equal(g.wait(np.array(a)), np.full(5, total, np.float32))
    np.testing.assert_array_equal(g.wait(np.array(b)), np.full(5, 10.0 * total, np.float32))
    assert not g._inflight
    ok("a message in flight is its own copy")


def other_collectives(path):
    for src in range(WORLD):
        t = torch.from_numpy(values(RANK, np.float32).copy())
        dist.broadcast(t, src=src)
        np.testing.assert_array_equal(t.numpy(), values(src, np.float32))
    outs = [torch.zeros(2, 3, dtype=torch.int64) for _ in range(WORLD)]
    dist.all_gather(outs, torch.from_numpy(values(RANK, np.int64)))
    for r, o in enumerate(outs):
        np.testing.assert_array_equal(o.numpy(), values(r, np.int64))
    cat = torch.zeros(2 * WORLD, 3)
    dist.all_gather_into_tensor(cat, torch.from_numpy(values(RANK, np.float32)))
    np.testing.assert_array_equal(cat.numpy(), np.concatenate([values(r, np.float32) for r in range(WORLD)]))
    stacked = torch.zeros(WORLD, 2, 3)
    work = dist.all_gather_into_tensor(stacked, torch.from_numpy(values(RANK, np.float32)), async_op=True)
    assert work.wait() and work.is_completed()
    np.testing.assert_array_equal(stacked.numpy(), np.stack([values(r, np.float32) for r in range(WORLD)]))
    dist.barrier()
    ok("broadcast, all_gather, barrier")


def compiled():
    w = torch.ones(3, requires_grad=True)

    @torch.compile
    def step(x):
        y = x * 2.0
        dist.all_reduce(y)  # sum over ranks
        z = y + 1.0
        dist.broadcast(z, src=WORLD - 1)
        g = torch.zeros(WORLD, 3)
        dist.all_gather_into_tensor(g, x)
        dist.barrier()
        m = x.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        return z, g, m, (w * y).sum()

    for k in range(3):
        x = torch.arange(3, dtype=torch.float32) * (RANK + 1) + k
        z, g, m, s = step(x)
        xs = np.stack([np.arange(3, dtype=np.float32) * (r + 1) + k for r in range(WORLD)])
        np.testing.assert_allclose(z.numpy(), 2 * xs.sum(0) + 1)
        np.testing.assert_allclose(g.numpy(), xs)
        np.testing.assert_allclose(m.numpy(), xs.max(0))
    v = step.latest()
    traced = v.stages["traced"]
    names = [line.split("= ")[1].split("(")[0] for line in traced.splitlines() if "= " in line]
    coll = [n for n in names if n in ("all_reduce", "broadcast", "all_gather", "barrier")]
    assert coll == ["all_reduce", "broadcast", "all_gather", "barrier", "all_reduce"], coll
    final = [n.op.name for n in v.graph.nodes if n.op.kind.value == "collective"]
    assert final.count("all_reduce_start") == final.count("all_reduce_wait") == 2, final
    assert [n for n in final if n not in ("all_reduce_wait",)] == \
        ["all_reduce_start", "broadcast", "all_gather", "barrier", "all_reduce_start"], final
    ok("compiled collectives")


def sampler():
    n = 23
    for drop_last in (False, True):
        for epoch in (0, 1):
            shards = []
            for r in range(WORLD):
                s = DistributedSampler(range(n), shuffle=True, seed=5, drop_last=drop_last) if r == RANK else \
                    DistributedSampler(range(n), num_replicas=WORLD, rank=r, shuffle=True, seed=5,
                                       drop_last=drop_last)
                s.set_epoch(epoch)
                shards.append(list(s))
            mine = torch.tensor(shards[RANK])
            every = [torch.zeros(len(shards[RANK]), dtype=torch.int64) for _ in range(WORLD)]
            dist.all_gather(every, mine)  # what the other ranks really drew
            got = [e.tolist() for e in every]
            assert got == shards, (got, shards)
            flat = [i for s in got for i in s]
            if drop_last:
                assert len(set(flat)) == len(flat) == (n // WORLD) * WORLD
            else:
                assert set(flat) == set(range(n)) and len(flat) == -(-n // WORLD) * WORLD
        assert shards  # epochs differ
    ok("DistributedSampler shards")


def ddp_buffers():
    """DDP broadcasts rank 0's parameters at construction and its buffers (BatchNorm statistics) before each
    forward; eager backward averages the gradients."""
    import tracejit.nn as nn
    from tracejit.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(10 + RANK)
    model = DDP(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
    w = model.module[0].weight.detach().clone()
    every = [torch.zeros_like(w) for _ in range(WORLD)]
    dist.all_gather(every, w)
    assert all(np.array_equal(e.numpy(), every[0].numpy()) for e in every)
    x = torch.randn(5, 4) + RANK  # different statistics on every rank
    model(x).sum().backward()
    g = model.module[0].weight.grad.clone()
    mean = model.module[1].running_mean.clone()
    grads = [torch.zeros_like(g) for _ in range(WORLD)]
    dist.all_gather(grads, g)
    assert all(np.array_equal(e.numpy(), grads[0].numpy()) for e in grads)  # averaged: the same everywhere
    means = [torch.zeros_like(mean) for _ in range(WORLD)]
    dist.all_gather(means, mean)
    model.eval()
    with torch.no_grad():
        model(x)  # eval: no update, but rank 0's buffers arrive first
    np.testing.assert_array_equal(model.module[1].running_mean.numpy(), means[0].numpy())
    ok("DDP broadcasts parameters and buffers")


if __name__ == "__main__":
    import sys

    all_reduce_every_op_and_dtype()
    compiled_every_op_and_dtype()
    staged_through_host()
    in_flight_views()
    ddp_buffers()
    other_collectives(sys.argv[1] if len(sys.argv) > 1 else None)
    compiled()
    sampler()
    dist.destroy_process_group()
    ok("done")
