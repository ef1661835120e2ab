"""Run under `mpiexec -n 2 python -m mpi4py` with NUMBA_ENABLE_CUDASIM=1 by tests/distributed/test_mpi.py: CUDA
tensors (Numba's CUDA simulator) are staged through host memory for every collective -- eagerly, and in a compiled
step, where the CUDA backend runs all_reduce_start / all_reduce_wait as host round trips -- and a compiled DDP step
on the GPU equals single-process training on the CPU. Prints `OK <rank> <check>` per check passed."""

import sys

import numpy as np

import tracejit as torch
import tracejit.distributed as dist
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("mpi", timeout=120)
RANK, WORLD = dist.get_rank(), dist.get_world_size()
assert torch.cuda.is_available()


def ok(what):
    sys.stdout.write(f"OK {RANK} {what}\n")
    sys.stdout.flush()


t = torch.ones(3, device="cuda") * (RANK + 1)
dist.all_reduce(t)
assert t.device.type == "cuda"
np.testing.assert_array_equal(t.cpu().numpy(), np.full(3, WORLD * (WORLD + 1) / 2, np.float32))
ok("eager")


@torch.compile
def f(x, z):
    y = x * 2.0
    dist.all_reduce(y)  # split: a reduction of z runs while it is in flight
    return y + z.sum()


for k in range(2):
    out = f(torch.ones(4, device="cuda") * (RANK + 1 + k), torch.ones(8, device="cuda"))
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy(), 2.0 * sum(r + 1 + k for r in range(WORLD)) + 8)
names = [n.op.name for n in f.latest().graph.nodes]
assert names.index("all_reduce_start") + 1 < names.index("all_reduce_wait"), names
ok("compiled")

torch.manual_seed(1 + RANK)
model = DDP(nn.Linear(4, 3).to("cuda"))
ref = nn.Linear(4, 3)
ref.load_state_dict({k: v.detach().cpu() for k, v in model.module.state_dict().items()})
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
rng = np.random.default_rng(0)
x = torch.from_numpy(rng.standard_normal((2 * WORLD, 4), dtype=np.float32))
y = torch.from_numpy(rng.integers(0, 3, 2 * WORLD))


@torch.compile
def step(xb, yb):
    opt.zero_grad()
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    return loss


for _ in range(3):
    step(x[2 * RANK:2 * RANK + 2].to("cuda"), y[2 * RANK:2 * RANK + 2].to("cuda"))
    ref_opt.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    ref_opt.step()
for p, q in zip(model.module.parameters(), ref.parameters()):
    np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
ok("compiled DDP step")
dist.destroy_process_group()
ok("done")
