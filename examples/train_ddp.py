"""Data-parallel training with PyTorch's names: every process trains the same model on its shard of each epoch,
gradients averaged over the processes after backward (DistributedDataParallel), the step compiled.

    mpiexec -n 2 python -m mpi4py examples/train_ddp.py          # 2 processes (pip install -e '.[distributed]')
    python -m tracejit.distributed.run -n 2 examples/train_ddp.py # the same, with this environment's mpiexec
    python examples/train_ddp.py --quick                          # a world of one process works too

Prints each epoch's mean loss over all ranks (rank 0), writes a checkpoint from rank 0 only, and shows where the
compiled step runs its gradient all-reduce.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

import tracejit as torch
import tracejit.distributed as dist
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.nn.parallel import DistributedDataParallel as DDP
from tracejit.utils.data import DataLoader, TensorDataset
from tracejit.utils.data.distributed import DistributedSampler


def make_data(n: int, features: int, classes: int):
    """Synthetic classification: labels from a fixed random linear map (every rank builds the same set)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x @ rng.standard_normal((features, classes))).argmax(1)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--quick", action="store_true", help="tiny sizes")
    p.add_argument("--checkpoint", default=os.path.join(tempfile.gettempdir(), "train_ddp.safetensors"))
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.samples, args.batch_size = 2, 512, 32
    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = make_data(args.samples, 32, 4)
    sampler = DistributedSampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    torch.manual_seed(rank)  # different on every rank on purpose: DDP starts every rank from rank 0's weights
    model = DDP(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    @torch.compile
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    losses = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2)
        for x, y in loader:
            total += torch.stack([train_step(x, y).detach(), torch.tensor(1.0)])
        dist.all_reduce(total)  # summed over the ranks: the epoch's mean loss everywhere
        losses.append(float(total[0] / total[1]))
        if rank == 0:
            print(f"epoch {epoch}: mean loss {losses[-1]:.4f} over {world} process{'es' if world > 1 else ''}")
    dist.save(model.module.state_dict(), args.checkpoint)
    if rank == 0:
        notes = [n for n in dict(train_step.latest().stage_graphs)["overlap_collectives"].notes]
        print("gradient all-reduce in the compiled step:", *notes, sep="\n  ")
        print(f"checkpoint (rank 0 wrote it): {args.checkpoint}")
    dist.destroy_process_group()
    return {"losses": losses, "world": world, "checkpoint": args.checkpoint}


if __name__ == "__main__":
    main()
