"""Compile every CUDA kernel the simulated tests launch for a real GPU (PTX for sm_90, the H100), without a GPU.

The simulator runs kernels as Python: it accepts code numba-cuda's real compiler (typing, NVVM) may reject. This
runs tests/compiler/cuda/sim in Numba's simulator recording each launched kernel with its argument dtypes
(TRACEJIT_RECORD_CUDA_KERNELS, see sim/conftest.py), then, in a process without the simulator, compiles each one
with `numba.cuda.compile_ptx` (every kernel argument is a 1-D C-contiguous device array). Needs libNVVM and
libdevice (a CUDA toolkit: CUDA_HOME, e.g. /usr/local/cuda-13.0, or the numba-cuda[cu12] wheels); no driver, no
GPU and no NVRTC (numba-cuda asks NVRTC only which architectures exist: answered here).

    CUDA_HOME=/usr/local/cuda-13.0 python benchmarks/cuda_ptx_check.py [--cc 9.0] [--modules test_kernels.py,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(ROOT, "tests", "compiler", "cuda", "sim")


def record(modules: list[str], path: str) -> None:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", TRACEJIT_RECORD_CUDA_KERNELS=path,
               TRACEJIT_CACHE_DIR=os.path.join(os.path.dirname(path), "cache"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-W", "ignore::RuntimeWarning"] + [os.path.join(SIM, m) for m in modules],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])


def _without_nvrtc(ccs) -> None:
    from numba.cuda import cuda_paths

    cuda_paths._get_nvrtc_path = lambda: ("not needed for PTX", None)
    from numba.cuda.cudadrv import nvrtc

    nvrtc.get_supported_ccs = lambda: tuple(ccs)


def compile_all(path: str, cc: tuple) -> int:
    import numpy as np

    _without_nvrtc([(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), cc])
    from numba import cuda
    from numba.core import types as nt
    from numba.np.numpy_support import from_dtype

    with open(path) as fh:
        entries = [json.loads(line) for line in fh]
    modules: dict[str, types.ModuleType] = {}
    failures, t0 = [], time.perf_counter()
    for e in entries:
        mod = modules.get(e["source"])
        if mod is None:
            mod = types.ModuleType("tracejit_cuda_kernel")
            exec(compile(e["source"].replace("@cuda.jit(cache=True)", "@cuda.jit"), "<kernel>", "exec"),
                 mod.__dict__)
            modules[e["source"]] = mod
        sig = tuple(nt.Array(from_dtype(np.dtype(d)), 1, "C") for d in e["dtypes"])
        try:
            cuda.compile_ptx(getattr(mod, e["fn"]).py_func, sig, cc=cc)
        except Exception as exc:  # noqa: BLE001 -- reported, with the kernel's source
            failures.append((e, f"{type(exc).__name__}: {str(exc)[:2000]}"))
    print(f"compiled {len(entries) - len(failures)}/{len(entries)} kernels ({len(modules)} modules) to PTX for "
          f"sm_{cc[0]}{cc[1]} in {time.perf_counter() - t0:.0f} s")
    for e, why in failures:
        print(f"\n--- {e['fn']}{tuple(e['dtypes'])}: {why}\n{e['source']}")
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cc", default="9.0", help="compute capability (default 9.0: H100)")
    ap.add_argument("--modules", default="test_kernels.py,test_training.py,test_eager.py")
    ap.add_argument("--kernels", help="a JSON lines file recorded earlier (skips the simulated run)")
    ns = ap.parse_args(argv)
    cc = tuple(int(x) for x in ns.cc.split("."))
    path = ns.kernels
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="tracejit-ptx-"), "kernels.jsonl")
        record(ns.modules.split(","), path)
    return compile_all(path, cc)


if __name__ == "__main__":
    raise SystemExit(main())
