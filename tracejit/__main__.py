"""`python -m tracejit {dump,info,cache,warmup,bench,report}`: the command line.

    python -m tracejit dump train.py --epochs 1    # run a script with IR dumps on, list what was written
    python -m tracejit info                        # versions, threads, cache, CUDA
    python -m tracejit cache [--clear [--all]]     # where the kernel caches are, their sizes; empty them
    python -m tracejit warmup [--dtypes float32]   # compile the CPU backend's own kernels once, after installing
    python -m tracejit report train.py -o r.html   # one HTML page: IR per pass, kernels, compile and step time
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import subprocess
import sys
import time


def _run_script(script: str, args: list[str]) -> None:
    sys.argv = [script] + list(args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


def cmd_dump(ns) -> int:
    out = ns.out or os.path.join("tracejit_dump", time.strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(out) and os.listdir(out):
        print(f"tracejit dump: {out} is not empty; choose another with -o", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    os.environ["TRACEJIT_DUMP"] = os.path.abspath(out)
    try:
        _run_script(ns.script, ns.args)
    finally:
        print(summarize_dump(out, render_svg=not ns.no_svg))
    return 0


def summarize_dump(root: str, render_svg: bool = True) -> str:
    """What a dump directory holds, per compiled function and variant."""
    lines = [f"tracejit dump in {os.path.abspath(root)}"]
    dot = shutil.which("dot") if render_svg else None
    names = os.listdir(root) if os.path.isdir(root) else []
    variants = sorted(d for d in names if os.path.isdir(os.path.join(root, d)))
    if not variants:
        lines.append("  nothing was compiled (no @tracejit.compile function ran)")
    for v in variants:
        d = os.path.join(root, v)
        fn, _, num = v.rpartition(".")
        stages = sorted(f[:-3] for f in os.listdir(d) if f.endswith(".ir"))
        kernels = sorted(os.listdir(os.path.join(d, "kernels"))) if os.path.isdir(os.path.join(d, "kernels")) else []
        lines.append(f"  {fn}, variant {num}: {d}")
        lines.append(f"    IR after each stage: {', '.join(s + '.ir' for s in stages)}")
        svg = " (+ .svg)" if dot else " (install Graphviz `dot` for SVG)"
        lines.append(f"    graphs (.dot): {len(stages)}{svg}")
        if kernels:
            lines.append(f"    generated kernels: {len(kernels)} in {os.path.join(d, 'kernels')}")
        if os.path.exists(os.path.join(d, "explain.txt")):
            lines.append(f"    explanation: {os.path.join(d, 'explain.txt')}")
        if dot:
            for s in stages:
                src = os.path.join(d, s + ".dot")
                subprocess.run([dot, "-Tsvg", src, "-o", src[:-4] + ".svg"], check=False, capture_output=True)
    return "\n".join(lines)


def cmd_info(ns) -> int:
    if ns.api or ns.vs_torch:
        from tracejit import _surface

        print(_surface.listing(vs_torch=ns.vs_torch))
        return 0
    import numba
    import numpy

    import tracejit
    from tracejit.compiler.backends import BackendUnavailable, cache, get_backend, registered

    print(f"tracejit {tracejit.__version__}  python {sys.version.split()[0]}  numpy {numpy.__version__}  "
          f"numba {numba.__version__}")
    d = cache.configured_dir()
    print(f"kernel cache: {d} ({cache.size_bytes() / 1e6:.1f} MB); set TRACEJIT_CACHE_DIR to move it, "
          "`python -m tracejit cache` for details")
    ok, missing = [], []
    for name in registered():
        try:
            b = get_backend(name)
        except BackendUnavailable as e:
            missing.append((name, str(e)))
            continue
        ok.append(name)
        desc = b.describe()
        print(f"backend {name}: {desc.get('device')}")
        for line in desc.get("lines", ()):
            print(f"  {line}")
        for w in desc.get("warnings", ()):
            print(f"  warning: {w}")
    print(f"backends: {', '.join(ok)}" + "".join(f"; {n}: not available ({why})" for n, why in missing))
    print(f"CUDA: {'available' if tracejit.cuda.is_available() else 'not available'} "
          f"(tracejit.cuda.is_available(); devices: {tracejit.cuda.device_count()})")
    return 0


def cmd_cache(ns) -> int:
    from tracejit.compiler.backends import cache

    if ns.clear:
        removed = cache.clear(package=ns.all)
        by_dir: dict[str, int] = {}
        for p in removed:
            by_dir[os.path.dirname(p)] = by_dir.get(os.path.dirname(p), 0) + 1
        print(f"removed {len(removed)} files" + (":" if removed else " (the caches were empty)"))
        for d, n in sorted(by_dir.items()):
            print(f"  {n:5d} from {d}")
        if not ns.all:
            print("(tracejit's own kernels' machine code was kept; --all removes it too, it is rebuilt on first "
                  "use in ~20 s)")
        return 0
    print("tracejit kernel caches (`--clear` empties the generated kernels'; damaged or unreadable entries are "
          "rebuilt on their own):")
    for row in cache.info():
        unit = row.get("unit") or ("kernels" if row["what"].endswith("sources") else "functions")
        note = f" [{row['note']}]" if row["note"] else ""
        print(f"  {row['what']}: {row['path']}{note}")
        print(f"    {row['entries']} {unit}, {row['bytes'] / 1e6:.1f} MB")
    return 0


def cmd_warmup(ns) -> int:
    from tracejit.warmup import warmup

    t0 = time.perf_counter()
    dtypes = tuple(d.strip() for d in ns.dtypes.split(",") if d.strip())
    if ns.pack:
        from tracejit.compiler.backends import get_backend

        get_backend("cpu").build_prebuilt([t.strip() for t in ns.pack.split(",")], ns.pack_dir or None, dtypes)
        print(f"tracejit warmup: kernel packs built ({time.perf_counter() - t0:.1f} s)")
        return 0
    warmup(dtypes)
    print(f"tracejit warmup: the CPU backend's kernels are in Numba's cache ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_report(ns) -> int:
    from tracejit import report

    return report.run_command(ns)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tracejit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="run a script with TRACEJIT_DUMP on and list what was written")
    d.add_argument("-o", "--out", help="dump directory (default: a fresh tracejit_dump/<time>)")
    d.add_argument("--no-svg", action="store_true", help="do not render .dot files to SVG")
    d.add_argument("script")
    d.add_argument("args", nargs=argparse.REMAINDER)
    d.set_defaults(fn=cmd_dump)
    r = sub.add_parser("report", help="run a script and write one self-contained HTML page about what it compiled")
    r.add_argument("-o", "--out", help="HTML file (default tracejit_report.html); may also come last, after the "
                   "script's arguments")
    r.add_argument("--repeat", type=int, default=5, help="timed runs per step and per kernel profile (default 5)")
    r.add_argument("--variant", type=int, help="time this variant's steps (default: the variant that ran most, in the "
                   "train/eval mode it ran in)")
    r.add_argument("script")
    r.add_argument("args", nargs=argparse.REMAINDER)
    r.set_defaults(fn=cmd_report)
    i = sub.add_parser("info", help="versions, threads, kernel cache, CUDA; --api: the supported PyTorch API")
    i.add_argument("--api", action="store_true", help="list the PyTorch API surface tracejit provides, by namespace")
    i.add_argument("--vs-torch", action="store_true", help="with --api: compare with the installed PyTorch (how "
                   "many of its names exist here, which do not)")
    i.set_defaults(fn=cmd_info)
    c = sub.add_parser("cache", help="where the kernel caches are, their sizes and entry counts; --clear empties them")
    c.add_argument("--info", action="store_true", help="print the caches' locations, sizes, entries (the default)")
    c.add_argument("--clear", action="store_true", help="remove tracejit's generated kernels and their Numba files")
    c.add_argument("--all", action="store_true", help="with --clear: also the Numba files of tracejit's own kernels")
    c.set_defaults(fn=cmd_cache)
    w = sub.add_parser("warmup", help="compile the CPU backend's own kernels into Numba's cache (after installing)")
    w.add_argument("--dtypes", default="float32", help="comma-separated dtypes to compile for (default float32)")
    w.add_argument("--pack", default="", help="build kernel packs instead, for these LLVM targets (x86-64-v4,"
                   "x86-64-v3): the package's prebuilt kernels (compiler/backends/cpu/kernel_pack.py)")
    w.add_argument("--pack-dir", default="", help="where --pack writes (default: the package's packs folder)")
    w.set_defaults(fn=cmd_warmup)
    from tracejit.bench import cli as bench_cli

    bench_cli.add_parser(sub)
    ns = p.parse_args(argv)
    return ns.fn(ns)


if __name__ == "__main__":
    sys.exit(main())
