"""`python -m tracejit bench` (eager vs compiled vs peers) and `python -m tracejit ops` (the op table).

    python -m tracejit bench --peers --json out.json     # all workloads, all modes, PyTorch/JAX too
    python -m tracejit bench --workloads lenet --modes eager,cpu --passes 5
    python -m tracejit bench --data-parallel             # LeNet on 1 and 2 processes (MPI): scaling efficiency
    python -m tracejit bench --sections first-step          # time to the first compiled step, fresh processes
"""

from __future__ import annotations

import argparse
import json
import sys

from .harness import LOAD_THRESHOLD, format_table, plot, run_benchmarks
from .peers import PEERS
from .workloads import TRACEJIT_MODES, WORKLOADS


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub) -> None:
    """Register the `bench` and `ops` subcommands on an argparse subparsers object."""
    b = sub.add_parser("bench", help="time training steps: eager vs compiled (and PyTorch/JAX with --peers)",
                       description=__doc__.split("\n")[0])
    b.add_argument("--workloads", type=_csv, default=list(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)")
    b.add_argument("--modes", type=_csv, default=list(TRACEJIT_MODES),
                   help=f"comma-separated tracejit modes {','.join(TRACEJIT_MODES)} (default: all; cuda is "
                        f"skipped without a GPU) and/or peers {','.join(PEERS)}")
    b.add_argument("--peers", action="store_true", help=f"also run {', '.join(PEERS)} where installed")
    b.add_argument("--passes", type=int, default=3, help="timed passes over all modes (default 3)")
    b.add_argument("--reps", type=int, default=None,
                   help="calls per timed loop (default: enough for ~0.5 s, 5 to 200)")
    b.add_argument("--json", metavar="PATH", help="write the machine-readable report here")
    b.add_argument("--plot", metavar="PATH", help="write a bar chart (needs matplotlib: tracejit[plot])")
    b.add_argument("--quick", action="store_true", help="tiny sizes, 1 pass, 3 reps (for tests)")
    b.add_argument("--no-warm-probe", action="store_true",
                   help="skip the fresh-process measurement of compile time with a warm cache")
    b.add_argument("--cache-dir", help="compile caches here instead of a fresh temporary directory "
                                       "(then 'compile cold' is not cold)")
    b.add_argument("--load-threshold", type=float, default=LOAD_THRESHOLD,
                   help=f"flag results when other processes used more than this CPU share "
                        f"(default {LOAD_THRESHOLD})")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--sections", type=_csv, default=["steady"],
                   help=f"comma-separated sections: {','.join(SECTIONS)} (default: steady). first-step times the "
                        "first compiled LeNet step in fresh processes: fresh install, after warmup, package warm "
                        "and kernels cold, warm; and a new batch size")
    b.add_argument("--first-step-workload", choices=("lenet", "gpt"), default="lenet",
                   help="the step the first-step section times (default lenet; gpt: issue 16's cold compile)")
    b.add_argument("--first-step-cases", type=_csv, default=None,
                   help="comma-separated subset of the first-step cases by number, 1-5 (default: all)")
    dp = b.add_argument_group("data-parallel mode (needs tracejit[distributed]: mpi4py and an MPI)")
    dp.add_argument("--data-parallel", action="store_true",
                    help="LeNet's compiled step at a fixed global batch on 1 and N processes of 1 thread each "
                         "(mpiexec): scaling efficiency, all-reduce time and overlap, estimate for 8/64 machines")
    dp.add_argument("--global-batch", type=int, default=256, help="data-parallel global batch (default 256)")
    dp.add_argument("--procs", type=_csv, default=["1", "2"], help="process counts (default 1,2)")
    dp.add_argument("--steps", type=int, default=20, help="data-parallel steps per timed round (default 20)")
    dp.add_argument("--bucket-cap-mb", type=float, default=None,
                    help="DistributedDataParallel's bucket cap (default: PyTorch's, 25 MiB)")
    b.set_defaults(fn=cmd_bench)
    o = sub.add_parser("ops", help="list the primitive ops of the op table (markdown)")
    o.set_defaults(fn=cmd_ops)


def cmd_data_parallel(ns) -> int:
    from .dataparallel import format_report, run_data_parallel

    report = run_data_parallel(ns.global_batch, procs=[int(p) for p in ns.procs], steps=ns.steps,
                               rounds=1 if ns.quick else max(ns.passes, 5), bucket_cap_mb=ns.bucket_cap_mb,
                               quick=ns.quick, progress=not ns.no_progress)
    print(format_report(report))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"report written to {ns.json}")
    return 0


SECTIONS = ("steady", "first-step")


def cmd_bench(ns) -> int:
    if getattr(ns, "data_parallel", False):
        return cmd_data_parallel(ns)
    sections = getattr(ns, "sections", ["steady"])
    if [s for s in sections if s not in SECTIONS]:
        print(f"tracejit bench: unknown section in {','.join(sections)}; choose from {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    report = {}
    if "steady" in sections:
        rc = _steady(ns, report)
        if rc:
            return rc
    if "first-step" in sections:
        from .first_step import CASES, format_first_step, run_first_step

        cases = CASES
        if getattr(ns, "first_step_cases", None):
            try:
                cases = tuple(CASES[int(c) - 1] for c in ns.first_step_cases if int(c) >= 1)
            except (ValueError, IndexError):
                print(f"tracejit bench: --first-step-cases takes numbers 1-{len(CASES)}: "
                      + ", ".join(f"{i + 1} = {c}" for i, c in enumerate(CASES)), file=sys.stderr)
                return 2
        report["first_step"] = run_first_step(quick=ns.quick, progress=not ns.no_progress, cases=cases,
                                              workload=getattr(ns, "first_step_workload", "lenet"))
        print(format_first_step(report["first_step"]))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"report written to {ns.json}")
    return 0


def _steady(ns, out: dict) -> int:
    modes = list(ns.modes) + (list(PEERS) if ns.peers else [])
    unknown = [m for m in modes if m not in TRACEJIT_MODES + PEERS] + \
              [w for w in ns.workloads if w not in WORKLOADS]
    if unknown:
        print(f"tracejit bench: unknown workload or mode {', '.join(unknown)}; workloads: "
              f"{', '.join(WORKLOADS)}; modes: {', '.join(TRACEJIT_MODES + PEERS)}", file=sys.stderr)
        return 2
    passes = 1 if ns.quick and ns.passes == 3 else ns.passes
    command = getattr(ns, "command", None)  # set by main(); else this is `python -m tracejit bench ...`
    if command is None and sys.argv[1:2] == ["bench"]:
        command = "python -m tracejit " + " ".join(sys.argv[1:])
    report = run_benchmarks(ns.workloads, modes, passes=passes, reps=ns.reps, quick=ns.quick,
                            progress=not ns.no_progress, warm_probe=not ns.no_warm_probe,
                            cache_dir=ns.cache_dir, load_threshold=ns.load_threshold, command=command)
    print(format_table(report))
    out.update(report)
    if ns.plot:
        err = plot(report, ns.plot)
        print(err if err else f"chart written to {ns.plot}", file=sys.stderr if err else sys.stdout)
    return 0


def op_list() -> str:
    """The primitive ops of `tracejit.OPS`, grouped by kind, as a markdown table (the README's op list)."""
    from .. import OPS

    kinds: dict[str, tuple[list[str], list[str]]] = {}
    for name, op in OPS.items():
        with_grad, without = kinds.setdefault(op.kind.value, ([], []))
        (with_grad if op.grad is not None else without).append(f"`{name}`")
    lines = ["| kind | with a gradient rule | without |", "| --- | --- | --- |"]
    lines += [f"| {kind} ({len(a) + len(b)}) | {', '.join(a) or '-'} | {', '.join(b) or '-'} |"
              for kind, (a, b) in kinds.items()]
    lines.append(f"\n{len(OPS)} primitives in `tracejit/ops.py`; every other operation is a composite of these.")
    return "\n".join(lines)


def cmd_ops(ns) -> int:
    print(op_list())
    return 0


def main(argv: list[str] | None = None) -> int:
    """`main(['--quick'])` is `python -m tracejit bench --quick` (benchmarks/run.py uses it)."""
    script = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="tracejit")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    ns = p.parse_args(["bench"] + argv)
    ns.command = " ".join([f"python {sys.argv[0]}" if script else "tracejit.bench.cli.main:"] + argv)
    return ns.fn(ns)
