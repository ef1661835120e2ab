"""Data parallelism across real processes: the scripts in scripts/ run under `mpiexec -n N python -m mpi4py` (the
MPI the `dev` extra installs: mpi4py and the mpich wheel), 2 ranks and once 3, one thread each. Every rank prints
`OK <rank> <check>` per check passed; a failed check raises, which aborts the job with a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
JOB_TIMEOUT_S = 300  # MPIEXEC_TIMEOUT: a job that hangs is ended by the launcher, and the test fails


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel installs it into the environment
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found: pip install -e '.[dev]' brings mpi4py and the mpich wheel"
    return found


def run_job(script: str, n: int, *args: str, module: bool = True, timeout: int = JOB_TIMEOUT_S,
            tmp_path=None, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPIEXEC_TIMEOUT": str(timeout), "TRACEJIT_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           **(env or {})}
    cmd = [mpiexec(), "-n", str(n), sys.executable] + (["-m", "mpi4py"] if module else []) + \
          [str(SCRIPTS / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, env=env,
                          cwd=tmp_path or ROOT)


def oks(out: str, n: int) -> dict:
    """check -> set of ranks that printed OK for it."""
    found: dict = {}
    for rank, what in re.findall(r"OK (\d+) (.+?)(?=OK \d+ |\n|$)", out):
        found.setdefault(what, set()).add(int(rank))
    return found


def assert_ok(p: subprocess.CompletedProcess, n: int, checks: list) -> None:
    assert p.returncode == 0, f"job failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    found = oks(p.stdout, n)
    for c in checks + ["done"]:
        assert found.get(c) == set(range(n)), f"{c}: ranks {found.get(c)} of {n}\n{p.stdout[-3000:]}"


@pytest.mark.parametrize("n", [2, 3])
def test_collectives(n):
    p = run_job("collectives.py", n)
    assert_ok(p, n, ["all_reduce every op and dtype", "compiled all_reduce every op and dtype",
                     "tensors on another device staged through host", "a message in flight is its own copy",
                     "DDP broadcasts parameters and buffers",
                     "broadcast, all_gather, barrier", "compiled collectives",
                     "DistributedSampler shards"])


def test_cuda_tensors_are_staged_through_host(tmp_path):
    # Numba's CUDA simulator stands in for a GPU (numba-cuda comes with the dev extra); a private kernel cache
    p = run_job("cuda_sim.py", 2, env={"NUMBA_ENABLE_CUDASIM": "1", "TRACEJIT_CACHE_DIR": str(tmp_path / "cache")})
    assert_ok(p, 2, ["eager", "compiled", "compiled DDP step"])


def test_data_parallel_training_equals_single_process(tmp_path):
    p = run_job("ddp_train.py", 2, str(tmp_path / "ckpt.safetensors"), tmp_path=tmp_path)
    assert_ok(p, 2, ["lenet compiled", "lenet ir", "lenet eager", "mlp compiled", "mlp eager", "uneven last batches",
                     "no_sync accumulation and parameters without gradients", "a parameter used on one rank only",
                     "checkpoint by rank 0"])
    assert (tmp_path / "ckpt.safetensors").exists()
    assert not [f for f in os.listdir(tmp_path) if f != "ckpt.safetensors"]  # no temporary left behind


@pytest.mark.parametrize("module", [True, False], ids=["python -m mpi4py", "plain python"])
def test_a_rank_that_raises_ends_the_job_with_its_error(module):
    # without -m mpi4py tracejit's own excepthook aborts the job (a process group of several ranks exists)
    p = run_job("failures.py", 2, "raise", module=module, timeout=60)
    assert p.returncode != 0
    assert "ValueError: rank 1 fails on purpose" in p.stderr
    assert "finished" not in p.stdout
    assert "MPIEXEC_TIMEOUT" not in p.stderr and "timeout" not in p.stderr.lower()  # aborted, not timed out


def test_the_launcher_wrapper_ends_a_failing_job_with_the_error():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "tracejit.distributed.run", "-n", "2", "--timeout", "60",
                        str(SCRIPTS / "failures.py"), "raise"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode != 0
    assert "ValueError: rank 1 fails on purpose" in p.stderr
    assert "finished" not in p.stdout


def test_the_launcher_wrapper_command():
    from tracejit.distributed import run

    ns = argparse.Namespace(nproc=8, hostfile="hosts", ppn=1, timeout=600, threads=None, script="train.py",
                            args=["--epochs", "2"])
    cmd, env = run.command(ns)
    assert cmd[0].endswith("mpiexec")
    assert cmd[1:] == ["-f", "hosts", "-ppn", "1", "-n", "8", sys.executable, "-m", "mpi4py", "train.py", "--epochs",
                       "2"]
    assert env["MPIEXEC_TIMEOUT"] == "600"


def test_a_collective_whose_peer_never_arrives_times_out_naming_it():
    p = run_job("failures.py", 3, "timeout", timeout=60)
    assert p.returncode != 0
    assert "DistTimeoutError: all_reduce #2 (float32[4], sum) timed out on rank" in p.stderr, p.stderr[-3000:]
    assert "rank 2 never arrived" in p.stderr
    assert "failures.py:23" in p.stderr  # the user's line
    assert "finished" not in p.stdout


def test_bench_data_parallel_mode(tmp_path):
    out = tmp_path / "dp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "tracejit", "bench", "--data-parallel", "--quick", "--no-progress",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "efficiency" in p.stdout and "estimate (ring all-reduce" in p.stdout
    report = json.loads(out.read_text())
    one, two = report["jobs"]["1"], report["jobs"]["2"]
    assert (one["batch_per_proc"], two["batch_per_proc"]) == (8, 4)
    assert one["efficiency"] == 1.0 and 0 < two["efficiency"]
    assert two["grad_bytes"] == 62006 * 4 and len(two["buckets"]) == 1  # LeNet: one 248 KB bucket
    assert two["median"]["collectives"] >= 1 and two["allreduce"]["alone_s"] > 0
    assert len(two["interleaved"]) == 1 and 0 < two["efficiency_interleaved"]["median"]  # 1-process rounds in the job
    assert "rounds alternating with the 2-process ones" in p.stdout
    assert [(e["machines"], e["link_gbps"]) for e in report["estimate"]] == [(8, 10), (8, 100), (64, 10), (64, 100)]


def test_the_ddp_example_trains_on_two_processes(tmp_path):
    # launched through tracejit.distributed.run (mpiexec -n 2 python -m mpi4py, the environment's mpiexec)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ckpt = tmp_path / "ddp.safetensors"
    p = subprocess.run([sys.executable, "-m", "tracejit.distributed.run", "-n", "2", "--timeout", "300",
                        str(ROOT / "examples" / "train_ddp.py"), "--quick", "--checkpoint", str(ckpt)],
                       capture_output=True, text=True, timeout=360, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    losses = [float(line.split("mean loss ")[1].split()[0]) for line in p.stdout.splitlines() if "mean loss" in line]
    assert len(losses) == 2 and losses[1] < losses[0]  # printed once (rank 0), and it learns
    assert "over 2 processes" in p.stdout and "all_reduce of f32[2372]" in p.stdout and ckpt.exists()
