"""`python -m tracejit bench --data-parallel`: LeNet's compiled training step at a fixed global batch on 1 and 2
processes (one thread each), as scaling efficiency, with the time all-reduce took per step and how much of it
overlapped backward, and an estimate for 8 and 64 machines over 10 and 100 Gb/s links.

Each process count is one MPI job, `mpiexec -n P python -m mpi4py -m tracejit.bench.dataparallel --worker ...`, with
TRACEJIT_NUM_THREADS=1: one process on 1 core holds the whole global batch (a plain compiled step, no DDP), P
processes hold global/P each (DistributedDataParallel). Efficiency = T1 / (P * TP), the throughput gained over the
ideal P-fold. On a shared machine the load changes between the two jobs, so the P-process job also times the
1-process step itself (rank 0, whole batch, while the others wait at a barrier) in rounds alternating with its own:
the interleaved efficiency compares steps that saw the same load. Rank 0 of each job prints one `DPRESULT {json}`
line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LINKS_GBPS = (10, 100)
MACHINES = (8, 64)
LINK_LATENCY_S = 20e-6  # per message and ring hop: a typical TCP/Ethernet figure (RDMA is a few us)
BIG_MESSAGE = 25 * 1024 * 1024  # bandwidth probe: PyTorch's bucket cap


# ------------------------------------------------------------------------------------------------ worker
def _other_load(before, after, job_cpu_s: float):
    """Share of the machine's CPU that processes outside this job used between two harness.cpu_snapshot()s."""
    if before is None or after is None or after[1] - before[1] < 0.1:
        return None
    busy, total = after[0] - before[0], after[1] - before[1]
    return min(1.0, max(0.0, (busy - job_cpu_s) / total))


def worker(ns) -> int:
    import tracejit as torch
    import tracejit.distributed as dist
    import tracejit.nn as nn
    from tracejit.distributed import group as G
    from tracejit.nn.parallel import DistributedDataParallel

    from .harness import cpu_snapshot
    from .workloads import LeNet

    dist.init_process_group("mpi")
    g = G.current()
    rank, world = g.rank, g.size
    b = ns.global_batch // world
    torch.manual_seed(0)
    model = LeNet()
    rng = np.random.default_rng(0)
    x_all = rng.standard_normal((ns.global_batch, 3, 32, 32), dtype=np.float32)
    y_all = rng.integers(0, 10, ns.global_batch)
    x = torch.from_numpy(x_all[rank * b:(rank + 1) * b])
    y = torch.from_numpy(y_all[rank * b:(rank + 1) * b])
    net = model if world == 1 else DistributedDataParallel(model, bucket_cap_mb=ns.bucket_cap_mb)
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    criterion = nn.CrossEntropyLoss()

    @torch.compile
    def train_step(x, y):
        opt.zero_grad()
        loss = criterion(net(x), y)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    for _ in range(3):  # call 1 runs eagerly (the optimizer creates its state), call 2 compiles
        train_step(x, y)
    warmup_s = time.perf_counter() - t0
    # on several processes, rank 0 also times the 1-process step on the whole batch (its own model, a plain compiled
    # step) in rounds interleaved with the data-parallel ones, while the other ranks wait at a barrier: both sides of
    # the efficiency ratio then see the same load on a shared machine
    alone = None
    if world > 1 and rank == 0:
        torch.manual_seed(0)
        model1 = LeNet()
        x1, y1 = torch.from_numpy(x_all), torch.from_numpy(y_all)
        opt1 = torch.optim.SGD(model1.parameters(), lr=0.001, momentum=0.9)

        @torch.compile
        def alone_step(x, y):
            opt1.zero_grad()
            loss = criterion(model1(x), y)
            loss.backward()
            opt1.step()
            return loss

        for _ in range(3):
            alone_step(x1, y1)
        alone = alone_step
    rounds, alone_rounds = [], []
    for _ in range(ns.rounds):
        if world > 1:
            dist.barrier()
            if alone is not None:
                before, cpu0 = cpu_snapshot(), time.process_time()
                t0 = time.perf_counter()
                for _ in range(ns.steps):
                    alone(x1, y1)
                dt = (time.perf_counter() - t0) / ns.steps
                after = cpu_snapshot()
                alone_rounds.append({"step_s": dt, "load": _other_load(before, after, time.process_time() - cpu0)})
        dist.barrier()
        g.stats_reset()
        before, cpu0 = cpu_snapshot(), time.process_time()
        t0 = time.perf_counter()
        for _ in range(ns.steps):
            train_step(x, y)
        dist.barrier()
        dt = (time.perf_counter() - t0) / ns.steps
        own = np.array([time.process_time() - cpu0])
        st = g.stats_reset()
        after = cpu_snapshot()
        job_cpu = float(g.all_reduce(own, "sum")[0]) if world > 1 else float(own[0])
        rounds.append({"step_s": dt, "load": _other_load(before, after, job_cpu),
                       "start_s": st.start_s / ns.steps, "wait_s": st.wait_s / ns.steps,
                       "window_s": st.window_s / ns.steps, "split": st.split / ns.steps,
                       "bytes": st.bytes / ns.steps, "collectives": st.collectives / ns.steps})
    by_time = sorted(rounds, key=lambda r: r["step_s"])
    # the median round, and the fastest: on a shared machine the least disturbed one
    result = {"procs": world, "batch_per_proc": b, "warmup_s": warmup_s, "rounds": rounds,
              "median": by_time[len(rounds) // 2], "best": by_time[0]}
    if alone_rounds:
        # per round pair: the 1-process step just before the data-parallel one
        result["interleaved"] = [{"alone_s": a["step_s"], "step_s": r["step_s"],
                                  "efficiency": a["step_s"] / (world * r["step_s"]), "load": r["load"]}
                                 for a, r in zip(alone_rounds, rounds)]
    if world > 1:
        buckets = net.bucket_sizes
        result["buckets"] = buckets
        result["grad_bytes"] = sum(n for _, n in buckets)
        # the same all-reduces alone, one message per bucket as in the step: what overlapping could hide
        msgs = [np.ones(n // 4, np.float32) for _, n in buckets]
        for m in msgs:
            g.all_reduce(m, "avg")
        dist.barrier()
        t0 = time.perf_counter()
        reps = 50
        for _ in range(reps):
            for m in msgs:
                g.all_reduce(m, "avg")
        result["allreduce_alone_s"] = (time.perf_counter() - t0) / reps
        big = np.ones(BIG_MESSAGE // 4, np.float32)
        g.all_reduce(big, "sum")
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(5):
            g.all_reduce(big, "sum")
        result["big_allreduce_s"] = (time.perf_counter() - t0) / 5
        v = train_step.latest()
        stages = dict(v.stage_graphs)
        result["overlap_notes"] = [n.split(": ", 1)[1] for n in stages["overlap_collectives"].notes
                                   if n.startswith("overlap_collectives")]
    if rank == 0:
        print("DPRESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------------------------------------ driver
def _mpiexec() -> str:
    import shutil

    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        raise RuntimeError("mpiexec not found: pip install 'tracejit[distributed]' (mpi4py and the mpich wheel)")
    return found


def run_job(procs: int, global_batch: int, steps: int, rounds: int, bucket_cap_mb, timeout: float = 900) -> dict:
    env = {**os.environ, "TRACEJIT_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MPIEXEC_TIMEOUT": str(int(timeout))}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    cmd = [_mpiexec(), "-n", str(procs), sys.executable, "-m", "mpi4py", "-m", "tracejit.bench.dataparallel",
           "--worker", "--global-batch", str(global_batch), "--steps", str(steps), "--rounds", str(rounds)]
    if bucket_cap_mb is not None:
        cmd += ["--bucket-cap-mb", str(bucket_cap_mb)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout + 60)
    for line in p.stdout.splitlines():
        if line.startswith("DPRESULT "):
            return json.loads(line[len("DPRESULT "):])
    raise RuntimeError(f"data-parallel job with {procs} processes failed ({p.returncode}):\n{p.stdout[-2000:]}\n"
                       f"{p.stderr[-4000:]}")


def ring_allreduce_s(nbytes: float, machines: int, gbps: float, messages: int = 1,
                     latency_s: float = LINK_LATENCY_S) -> float:
    """A ring all-reduce's time: each machine sends and receives 2 (N-1)/N of the bytes, in 2 (N-1) hops a
    message (the bandwidth-optimal algorithm MPI and NCCL use for large messages)."""
    return 2 * (machines - 1) / machines * nbytes / (gbps * 1e9 / 8) + 2 * (machines - 1) * latency_s * messages


def estimate(t1_s: float, tcompute_local_s: float, local_batch: int, global_batch: int, grad_bytes: int,
             messages: int, hidden_s: float = 0.0) -> list[dict]:
    """Efficiency at 8 and 64 machines for both ways of scaling: the global batch fixed (each machine computes
    global/N; compute time scaled from the 1-process step) and the per-machine batch fixed (compute as measured
    here per process). No overlap is assumed beyond `hidden_s` (what overlapped here)."""
    out = []
    for n in MACHINES:
        for gbps in LINKS_GBPS:
            ar = ring_allreduce_s(grad_bytes, n, gbps, messages)
            exposed = max(0.0, ar - hidden_s)
            strong = t1_s / n
            weak = tcompute_local_s
            out.append({"machines": n, "link_gbps": gbps, "allreduce_s": ar,
                         "strong": {"batch_per_machine": global_batch / n, "compute_s": strong,
                                    "efficiency": strong / (strong + exposed)},
                         "weak": {"batch_per_machine": local_batch, "compute_s": weak,
                                  "efficiency": weak / (weak + exposed)}})
    return out


def run_data_parallel(global_batch: int = 256, procs=(1, 2), steps: int = 20, rounds: int = 5,
                      bucket_cap_mb: float | None = None, quick: bool = False, progress: bool = True) -> dict:
    if quick:
        global_batch, steps, rounds = 8, 3, 1
    t0 = time.perf_counter()
    jobs = {}
    for p in procs:
        if progress:
            print(f"tracejit bench --data-parallel: {p} process{'es' if p > 1 else ''} x 1 thread, global batch "
                  f"{global_batch} ...", file=sys.stderr, flush=True)
        jobs[p] = run_job(p, global_batch, steps, rounds, bucket_cap_mb)
    report = {"workload": "lenet", "global_batch": global_batch, "steps": steps, "rounds": rounds,
              "bucket_cap_mb": bucket_cap_mb, "jobs": {str(p): j for p, j in jobs.items()},
              "elapsed_s": time.perf_counter() - t0}
    if 1 in jobs:
        t1 = jobs[1]["median"]["step_s"]
        t1_best = jobs[1]["best"]["step_s"]
        for p, j in jobs.items():
            j["efficiency"] = t1 / (p * j["median"]["step_s"])
            j["efficiency_best"] = t1_best / (p * j["best"]["step_s"])
        multi = [p for p in jobs if p > 1]
        if multi:
            j = jobs[max(multi)]
            m = j["median"]
            exposed = m["start_s"] + m["wait_s"]
            hidden = max(0.0, j["allreduce_alone_s"] - exposed)
            j["allreduce"] = {"alone_s": j["allreduce_alone_s"], "exposed_s": exposed, "hidden_s": hidden,
                              "in_flight_window_s": m["window_s"],
                              "overlapped_fraction": hidden / j["allreduce_alone_s"] if j["allreduce_alone_s"] else 0}
            j["bandwidth_GBps"] = BIG_MESSAGE / j["big_allreduce_s"] / 1e9
            pairs = sorted(j.get("interleaved", []), key=lambda e: e["efficiency"])
            if pairs:
                j["efficiency_interleaved"] = {"median": pairs[len(pairs) // 2]["efficiency"],
                                               "best": pairs[-1]["efficiency"]}
            report["estimate"] = estimate(t1, m["step_s"] - exposed, j["batch_per_proc"], global_batch,
                                          j["grad_bytes"], len(j["buckets"]), hidden)
    return report


def format_report(r: dict) -> str:
    lines = [f"data-parallel LeNet step, global batch {r['global_batch']}, 1 thread per process "
             f"(median of {r['rounds']} rounds x {r['steps']} steps)"]
    lines.append(f"{'processes':>9}  {'batch/proc':>10}  {'ms/step':>8}  {'efficiency':>10}  {'other load':>10}  "
                 f"{'best ms/step':>12}  {'efficiency':>10}  {'other load':>10}")
    for p, j in sorted(r["jobs"].items(), key=lambda kv: int(kv[0])):
        cols = []
        for m, eff in ((j["median"], j.get("efficiency")), (j["best"], j.get("efficiency_best"))):
            load = "-" if m["load"] is None else f"{m['load']:.0%}"
            cols.append((m["step_s"] * 1e3, "-" if eff is None else f"{eff:.1%}", load))
        (a, ea, la), (b, eb, lb) = cols
        lines.append(f"{p:>9}  {j['batch_per_proc']:>10}  {a:>8.2f}  {ea:>10}  {la:>10}  {b:>12.2f}  {eb:>10}  "
                     f"{lb:>10}")
    lines.append("(median round; best = the fastest round, on a shared machine the least disturbed; other load = "
                 "CPU share of processes outside the job)")
    for p, j in sorted(r["jobs"].items(), key=lambda kv: int(kv[0])):
        if "efficiency_interleaved" in j:
            e = j["efficiency_interleaved"]
            per = ", ".join(f"{x['efficiency']:.0%}" for x in j["interleaved"])
            lines.append(f"efficiency with the 1-process step timed in the same job, in rounds alternating with the "
                         f"{p}-process ones (same load): median {e['median']:.1%}, best {e['best']:.1%} "
                         f"(rounds: {per})")
    for p, j in r["jobs"].items():
        if "allreduce" not in j:
            continue
        a = j["allreduce"]
        lines.append(f"all-reduce on {p} processes: {len(j['buckets'])} bucket(s), {j['grad_bytes'] / 1e3:.1f} KB of "
                     f"gradients per step; alone {a['alone_s'] * 1e3:.3f} ms, exposed in the step "
                     f"{a['exposed_s'] * 1e3:.3f} ms (start + wait), so {a['hidden_s'] * 1e3:.3f} ms "
                     f"({a['overlapped_fraction']:.0%}) overlapped; compute ran {a['in_flight_window_s'] * 1e3:.3f} ms "
                     f"while a bucket was in flight")
        for note in j.get("overlap_notes", []):
            lines.append(f"  {note}")
        lines.append(f"measured all-reduce bandwidth ({p} processes, shared memory): {BIG_MESSAGE / 2**20:.0f} MiB in "
                     f"{j['big_allreduce_s'] * 1e3:.1f} ms = {j['bandwidth_GBps']:.2f} GB/s")
    if "estimate" in r:
        lines.append(f"estimate (ring all-reduce, {LINK_LATENCY_S * 1e6:.0f} us per hop and message, no more overlap "
                     f"than measured here):")
        lines.append(f"{'machines':>8}  {'link':>8}  {'all-reduce':>10}  {'global batch fixed':>22}  "
                     f"{'batch/machine fixed':>22}")
        for e in r["estimate"]:
            s, w = e["strong"], e["weak"]
            lines.append(f"{e['machines']:>8}  {e['link_gbps']:>5} Gb/s  {e['allreduce_s'] * 1e3:>7.3f} ms  "
                         f"{s['efficiency']:>8.1%} ({s['batch_per_machine']:g}/machine)  "
                         f"{w['efficiency']:>8.1%} ({w['batch_per_machine']}/machine)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tracejit.bench.dataparallel")
    p.add_argument("--worker", action="store_true", help="(internal) run as one rank of the MPI job")
    p.add_argument("--global-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bucket-cap-mb", type=float, default=None)
    ns = p.parse_args(argv)
    if ns.worker:
        return worker(ns)
    report = run_data_parallel(ns.global_batch, steps=ns.steps, rounds=ns.rounds, bucket_cap_mb=ns.bucket_cap_mb)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
