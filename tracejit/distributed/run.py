"""`python -m tracejit.distributed.run -n 2 train.py [args]`: start a data-parallel script on N processes.

A thin wrapper over MPI's launcher: it runs `mpiexec -n N <this python> -m mpi4py train.py [args]` with the
`mpiexec` of this environment (the mpich wheel's, beside the interpreter) before the one on PATH, so that the
launcher and mpi4py agree on the MPI. `python -m mpi4py` makes an exception on any rank abort the whole job.

    -n / --nproc-per-node N     processes (torchrun's --nproc_per_node is accepted too)
    --hostfile FILE             one host name per line: the processes spread over those machines (MPICH's -f)
    --ppn K                     processes per host (with --hostfile)
    --timeout SECONDS           end the whole job after this long (MPIEXEC_TIMEOUT)
    --threads T                 TRACEJIT_NUM_THREADS for every process (default: the cores / N on one machine)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def find_mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel installs it into the environment
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        raise SystemExit("tracejit.distributed.run: mpiexec not found: pip install 'tracejit[distributed]' (mpi4py "
                         "and the mpich wheel), or put your cluster's MPI launcher on PATH")
    return found


def command(ns) -> tuple[list[str], dict]:
    """(the mpiexec command line, its environment) for parsed arguments `ns`."""
    cmd = [find_mpiexec()]
    if ns.hostfile:
        cmd += ["-f", ns.hostfile]
        if ns.ppn:
            cmd += ["-ppn", str(ns.ppn)]
    cmd += ["-n", str(ns.nproc), sys.executable, "-m", "mpi4py", ns.script, *ns.args]
    env = dict(os.environ)
    if ns.timeout:
        env["MPIEXEC_TIMEOUT"] = str(int(ns.timeout))
    threads = ns.threads
    if threads is None and not ns.hostfile and "TRACEJIT_NUM_THREADS" not in env:
        threads = max(1, (os.cpu_count() or 1) // ns.nproc)  # one machine: its cores shared out, none oversubscribed
    if threads is not None:
        env["TRACEJIT_NUM_THREADS"] = str(threads)
    return cmd, env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tracejit.distributed.run",
                                description="Run a data-parallel script on N processes (mpiexec ... python -m "
                                            "mpi4py script).")
    p.add_argument("-n", "--nproc-per-node", "--nproc_per_node", "--nproc", dest="nproc", type=int, default=2,
                   help="number of processes (default 2)")
    p.add_argument("--hostfile", help="host file: one machine name per line (MPICH's mpiexec -f)")
    p.add_argument("--ppn", type=int, help="processes per host, with --hostfile")
    p.add_argument("--timeout", type=float, help="end the whole job after this many seconds (MPIEXEC_TIMEOUT)")
    p.add_argument("--threads", type=int, help="TRACEJIT_NUM_THREADS per process")
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    ns = p.parse_args(argv)
    if ns.nproc < 1:
        p.error("-n must be at least 1")
    cmd, env = command(ns)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)  # the launcher takes this process's place: signals and the exit status are its
    return 0  # (not reached)


if __name__ == "__main__":
    sys.exit(main())
