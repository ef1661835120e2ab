"""Run under `mpiexec -n N python -m mpi4py` by tests/distributed/test_mpi.py: data-parallel training equals
single-process training on the whole batch.

Each rank trains a DistributedDataParallel model on its shard of every global batch (compiled, and eagerly) and,
alongside, a plain copy of the model on the whole batch (eager, the oracle). After the steps the parameters and
the optimizer state must agree within float32 tolerance. Prints `OK <rank> <check>` per check passed.
"""

import sys

import numpy as np

import tracejit as torch
import tracejit.distributed as dist
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.bench.workloads import LeNet, mlp_model
from tracejit.nn.parallel import DistributedDataParallel as DDP
from tracejit.utils.data import DataLoader, TensorDataset
from tracejit.utils.data.distributed import DistributedSampler

TOL = dict(rtol=2e-4, atol=2e-5)
dist.init_process_group("mpi", timeout=120)
RANK, WORLD = dist.get_rank(), dist.get_world_size()


def ok(what):
    sys.stdout.write(f"OK {RANK} {what}\n")  # one write: the launcher interleaves the ranks' output
    sys.stdout.flush()


def arrays(t):
    return t.detach().numpy().copy()


def same_model(a, b):
    b.load_state_dict({k: v.detach().clone() for k, v in a.state_dict().items()})
    return b


def check_equal(what, ddp_model, ref_model, ddp_opt, ref_opt):
    for (name, p), q in zip(ddp_model.module.named_parameters(), ref_model.parameters()):
        np.testing.assert_allclose(arrays(p), arrays(q), **TOL, err_msg=f"{what}: parameter {name}")
    for p, q in zip(ddp_model.module.parameters(), ref_model.parameters()):
        sa, sb = ddp_opt.state.get(p, {}), ref_opt.state.get(q, {})
        assert sorted(sa) == sorted(sb), (what, sorted(sa), sorted(sb))
        for key in sa:
            va, vb = sa[key], sb[key]
            va = arrays(va) if hasattr(va, "detach") else va
            vb = arrays(vb) if hasattr(vb, "detach") else vb
            np.testing.assert_allclose(va, vb, **TOL, err_msg=f"{what}: optimizer state {key}")
    # and every rank holds the same parameters
    for name, p in ddp_model.module.named_parameters():
        every = [torch.zeros_like(p.detach()) for _ in range(WORLD)]
        dist.all_gather(every, p.detach())
        for r, e in enumerate(every):
            np.testing.assert_array_equal(arrays(e), arrays(p), err_msg=f"{what}: {name} differs on rank {r}")
    ok(what)


def train(what, make_model, make_opt, x, y, steps, compiled, loss_fn=F.cross_entropy):
    torch.manual_seed(100 + RANK)  # different on every rank: DDP must broadcast rank 0's parameters
    model = DDP(make_model(), bucket_cap_mb=0.05)
    ref = same_model(model.module, make_model())
    opt, ref_opt = make_opt(model.parameters()), make_opt(ref.parameters())
    b = x.shape[0] // WORLD
    xs, ys = x[RANK * b:(RANK + 1) * b], y[RANK * b:(RANK + 1) * b]

    def step(m, o, xb, yb):
        o.zero_grad()
        loss = loss_fn(m(xb), yb)
        loss.backward()
        o.step()
        return loss

    run = torch.compile(step) if compiled else step
    for _ in range(steps):
        run(model, opt, xs, ys)
        step(ref, ref_opt, x, y)
    check_equal(what, model, ref, opt, ref_opt)
    return run, model


def lenet_and_mlp():
    rng = np.random.default_rng(0)
    gb = 4 * WORLD
    x = torch.from_numpy(rng.standard_normal((gb, 3, 32, 32), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, gb))
    sgd = lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)  # noqa: E731
    run, model = train("lenet compiled", LeNet, sgd, x, y, 3, compiled=True)
    v = run.latest()
    ir = str(v.graph)
    starts, waits = ir.count("all_reduce_start("), ir.count("all_reduce_wait(")
    assert starts == waits == len(model.bucket_sizes) > 1, (starts, waits, model.bucket_sizes)
    notes = [n for n in dict(v.stage_graphs)["overlap_collectives"].notes if n.startswith("overlap_collectives")]
    assert len(notes) == starts and any("in flight meanwhile: nothing" not in n for n in notes), notes
    assert "all_reduce(" in v.stages["traced"]
    ok("lenet ir")
    train("lenet eager", LeNet, sgd, x, y, 2, compiled=False)
    x2 = torch.from_numpy(rng.standard_normal((gb, 20), dtype=np.float32))
    y2 = torch.from_numpy(rng.integers(0, 5, gb))
    adam = lambda ps: torch.optim.Adam(ps, lr=0.01)  # noqa: E731
    train("mlp compiled", lambda: mlp_model((20, 16, 5)), adam, x2, y2, 3, compiled=True)
    train("mlp eager", lambda: mlp_model((20, 16, 5)), adam, x2, y2, 2, compiled=False)


def uneven_batches():
    """22 samples over the ranks with a DistributedSampler (padded shards) and batch 4: the last batch is smaller;
    the reference trains on the concatenation of all ranks' batches."""
    rng = np.random.default_rng(1)
    n = 22
    data = TensorDataset(torch.from_numpy(rng.standard_normal((n, 6), dtype=np.float32)),
                         torch.from_numpy(rng.integers(0, 3, n)))
    torch.manual_seed(7)
    model = DDP(mlp_model((6, 8, 3)))
    ref = same_model(model.module, mlp_model((6, 8, 3)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    samplers = [DistributedSampler(data, num_replicas=WORLD, rank=r, shuffle=True, seed=3) for r in range(WORLD)]

    @torch.compile
    def step(xb, yb):
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    sizes = []
    for epoch in range(2):
        for s in samplers:
            s.set_epoch(epoch)
        mine = DataLoader(data, batch_size=4, sampler=samplers[RANK])
        every = [list(DataLoader(data, batch_size=4, sampler=s)) for s in samplers]
        for j, (xb, yb) in enumerate(mine):
            step(xb, yb)
            sizes.append(xb.shape[0])
            ref_opt.zero_grad()
            F.cross_entropy(ref(torch.cat([e[j][0] for e in every])), torch.cat([e[j][1] for e in every])).backward()
            ref_opt.step()
    assert sorted(set(sizes)) == sorted({4, -(-n // WORLD) % 4 or 4}), sizes
    check_equal("uneven last batches", model, ref, opt, ref_opt)


def accumulation_and_unused():
    """no_sync() accumulates locally (compiled: the step retraces when no_sync begins and ends); a parameter that
    gets no gradient keeps .grad None, a frozen one is left out of the buckets."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)
            self.unused = nn.Linear(2, 2)
            self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

        def forward(self, x):
            return self.fc(x) * self.frozen

    rng = np.random.default_rng(2)
    torch.manual_seed(5)
    model = DDP(Net())
    ref = same_model(model.module, Net())
    assert sum(n for n, _ in model.bucket_sizes) == 4  # fc and unused's weights and biases; frozen is not there
    xs = [torch.from_numpy(rng.standard_normal((2 * WORLD, 5), dtype=np.float32)) for _ in range(3)]

    @torch.compile
    def backward_only(x):
        loss = model(x).square().mean()
        loss.backward()
        return loss

    for m in (model, ref):
        m.zero_grad()
    for i, x in enumerate(xs):
        part = x[RANK * 2:(RANK + 1) * 2]
        if i < len(xs) - 1:
            with model.no_sync():
                backward_only(part)
        else:
            backward_only(part)
        ref(x).square().mean().backward()
    reasons = [v.reason for v in backward_only.history]
    assert any("no_sync() ended" in r for r in reasons), reasons
    assert model.module.unused.weight.grad is None and ref.unused.weight.grad is None
    np.testing.assert_allclose(arrays(model.module.fc.weight.grad), arrays(ref.fc.weight.grad), **TOL)
    np.testing.assert_allclose(arrays(model.module.fc.bias.grad), arrays(ref.fc.bias.grad), **TOL)
    ok("no_sync accumulation and parameters without gradients")


def used_on_one_rank():
    """Eager: a parameter only rank 0 uses gets the average (rank 0's gradient / WORLD) on every rank, as in
    PyTorch, so that every rank's optimizer updates it alike; one no rank uses keeps .grad None everywhere."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)
            self.rank0 = nn.Linear(5, 3)
            self.nobody = nn.Linear(5, 3)

        def forward(self, x, extra):
            return self.fc(x) + self.rank0(x) if extra else self.fc(x)

    rng = np.random.default_rng(4)
    torch.manual_seed(9)
    model = DDP(Net())
    x = torch.from_numpy(rng.standard_normal((2 * WORLD, 5), dtype=np.float32))
    model(x[RANK * 2:(RANK + 1) * 2], RANK == 0).square().mean().backward()
    ref = same_model(model.module, Net())
    ref(x[0:2], True).square().mean().backward()  # rank 0's shard: the only gradient of rank0.*
    assert model.module.nobody.weight.grad is None and model.module.nobody.bias.grad is None
    for name in ("weight", "bias"):
        got = getattr(model.module.rank0, name).grad
        assert got is not None, f"rank0.{name}.grad is None on rank {RANK}"
        np.testing.assert_allclose(arrays(got), arrays(getattr(ref.rank0, name).grad) / WORLD, **TOL)
    ok("a parameter used on one rank only")


def checkpoint(path):
    torch.manual_seed(RANK)
    model = DDP(nn.Linear(3, 2))
    dist.save(model.module.state_dict(), path)
    loaded = torch.load(path)  # every rank: the file is complete once save returns
    np.testing.assert_array_equal(arrays(loaded["weight"]), arrays(model.module.weight))
    assert sorted(model.state_dict()) == ["module.bias", "module.weight"]
    ok("checkpoint by rank 0")


if __name__ == "__main__":
    lenet_and_mlp()
    uneven_batches()
    accumulation_and_unused()
    used_on_one_rank()
    checkpoint(sys.argv[1])
    dist.barrier()
    dist.destroy_process_group()
    ok("done")
