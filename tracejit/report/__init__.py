"""`python -m tracejit report script.py -o report.html`: run a script, record every compiled function it
calls, and write one self-contained HTML page: why each variant compiled, the IR after each pass, fusion
decisions, generated kernels, per-kernel time, compile time, and eager vs compiled step time."""

from __future__ import annotations

import os
import sys
import time

from .page import build_html, plural
from .record import Record, Recorder, profile_variants, run_script, time_steps

__all__ = ["Record", "Recorder", "build_html", "make_report", "run_command", "split_out"]


def make_report(script: str, args: list[str], out: str, repeat: int = 5, variant: int | None = None) -> int:
    """Run `script` with `args`, measure what it compiled, write the page to `out`; the script's exit code."""
    rec = Recorder()
    t0 = time.perf_counter()
    code, error = run_script(script, args, rec)
    elapsed = time.perf_counter() - t0
    for r in rec.records:
        profile_variants(r, repeat)  # first: it reads state exactly as the script left it
    for r in rec.records:
        time_steps(r, repeat, variant)
    page = build_html(rec.records, script, args, code, error, elapsed)
    tmp = out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, out)
    used = [r for r in rec.records if r.calls or r.cf.history]
    n = sum(len(r.cf.history) for r in used)
    print(f"tracejit report: {os.path.abspath(out)} ({plural(len(used), 'compiled function')}, {plural(n, 'variant')})",
          file=sys.stderr)
    if error:
        print(error, file=sys.stderr)
    return code


def split_out(args: list[str]) -> tuple[list[str], str | None]:
    """A trailing `-o FILE` / `--out FILE` / `--out=FILE` after the script's arguments is the report's."""
    if len(args) >= 2 and args[-2] in ("-o", "--out"):
        return args[:-2], args[-1]
    if args and args[-1].startswith("--out="):
        return args[:-1], args[-1][len("--out="):]
    return args, None


def run_command(ns) -> int:
    """`python -m tracejit report`: the parsed namespace has script, args, out, repeat, variant."""
    args = list(ns.args)
    if args and args[0] == "--":
        args = args[1:]
    out = ns.out
    if out is None:
        args, out = split_out(args)
    return make_report(ns.script, args, out or "tracejit_report.html", repeat=max(1, ns.repeat),
                       variant=getattr(ns, "variant", None))
