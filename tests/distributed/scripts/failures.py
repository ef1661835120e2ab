"""Run under mpiexec by tests/distributed/test_mpi.py: a job whose rank fails must end, with that rank's error.

    raise    the last rank raises before a collective the others wait in: the job aborts at once
    timeout  the last rank never joins an all_reduce the others wait in (timeout 2 s): DistTimeoutError names the
             collective and the rank missing, and the job aborts
"""

import sys
import time

import tracejit as torch
import tracejit.distributed as dist

mode = sys.argv[1]
dist.init_process_group("mpi", timeout=2 if mode == "timeout" else 600)
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.ones(4)
dist.all_reduce(t)  # everyone is here
if rank == world - 1:
    if mode == "raise":
        raise ValueError(f"rank {rank} fails on purpose")
    time.sleep(120)  # (the job is aborted long before)
dist.all_reduce(t)
print(f"rank {rank} finished, which it should not have", flush=True)
