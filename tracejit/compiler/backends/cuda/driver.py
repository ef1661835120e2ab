"""Whether CUDA can run in this process, and what runs: numba-cuda imported once, behind one honest answer.

`cuda()` returns the `numba.cuda` module or raises BackendUnavailable saying why (numba-cuda not installed, no
NVIDIA driver, no GPU) and how to check -- never a Numba traceback. Under Numba's CUDA simulator
(`NUMBA_ENABLE_CUDASIM=1`, set before numba.cuda is first imported) CUDA is available and every kernel runs as
Python threads: slow, exact, and how the tests run without a GPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

from .. import BackendUnavailable

CHECK = ("check with `python -m tracejit info` (what tracejit sees), `nvidia-smi` (the driver) and "
         "`python -c \"from numba import cuda; cuda.detect()\"` (what numba-cuda sees)")
INSTALL = ("pip install 'tracejit[cuda]' (numba-cuda with the CUDA 12 toolkit wheels; for a CUDA 13 driver "
           "pip install 'numba-cuda[cu13]')")

_state: dict = {}


def numba_cuda_version() -> str | None:
    try:
        return importlib.metadata.version("numba-cuda")
    except importlib.metadata.PackageNotFoundError:
        return None


def simulated() -> bool:
    """True when numba.cuda runs (or will run) in the simulator: NUMBA_ENABLE_CUDASIM=1 when numba.cuda is
    first imported."""
    if "sim" in _state:
        return _state["sim"]
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def probe() -> str | None:
    """None when CUDA can run here, else why not and how to check -- cheaply, without importing Numba (asking
    `tracejit.cuda.is_available()` must not cost an eager user Numba's import): numba-cuda installed, and either
    the simulator or a driver library that initializes and sees a GPU (asked through ctypes, as numba-cuda would)."""
    if "probe" not in _state:
        _state["probe"] = _probe()
    return _state["probe"]


def _probe() -> str | None:
    if importlib.util.find_spec("numba_cuda") is None:
        # numba's own numba.cuda is deprecated and unmaintained: tracejit runs on NVIDIA's numba-cuda only
        return f"CUDA is not available to tracejit: numba-cuda is not installed; {INSTALL}; then {CHECK}"
    if simulated():
        return None
    why = _driver_problem()
    if why is None:
        return None
    return (f"CUDA is not available to tracejit: {why}; {CHECK}. Without a GPU, NUMBA_ENABLE_CUDASIM=1 (set before "
            f"tracejit is imported) runs the CUDA backend in Numba's simulator, slowly")


def _driver_problem() -> str | None:
    import ctypes

    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return "no NVIDIA driver was found (libcuda, the driver library, is not on this machine)"
    try:
        rc = lib.cuInit(0)
        if rc != 0:
            return f"the NVIDIA driver did not initialize (cuInit returned error {rc})"
        n = ctypes.c_int(0)
        rc = lib.cuDeviceGetCount(ctypes.byref(n))
    except (AttributeError, OSError) as e:
        return f"the NVIDIA driver library could not be used ({e})"
    if rc != 0 or n.value == 0:
        return "the NVIDIA driver is installed but sees no GPU" + (" (CUDA_VISIBLE_DEVICES hides them)"
                                                                   if "CUDA_VISIBLE_DEVICES" in os.environ else "")
    return None


def cuda():
    """The numba.cuda module, usable in this process; BackendUnavailable says why not."""
    mod = _state.get("module")
    if mod is not None:
        return mod
    why = probe() or _state.get("why")
    if why is not None:
        raise BackendUnavailable(why)
    try:
        mod = _load()
    except BackendUnavailable as e:
        _state["why"] = str(e)
        raise
    _state["module"] = mod
    return mod


def _load():
    try:
        from numba import config
        from numba import cuda as nc
    except Exception as e:  # a broken install: say what, not a traceback
        raise BackendUnavailable(f"CUDA is not available to tracejit: numba-cuda {numba_cuda_version()} failed to "
                                 f"import ({type(e).__name__}: {_first_line(e)}); {CHECK}") from None
    _state["sim"] = bool(getattr(config, "ENABLE_CUDASIM", 0))
    if _state["sim"]:
        return nc
    try:
        ok = nc.is_available()
    except Exception:  # noqa: BLE001 -- numba raises several kinds here; all mean "no"
        ok = False
    if not ok:
        raise BackendUnavailable(f"CUDA is not available to tracejit: the driver sees a GPU but numba-cuda "
                                 f"{numba_cuda_version()} cannot use it ({_numba_problem()}); {CHECK}")
    return nc


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and ln.strip() != ":"]
    return lines[0] if lines else type(e).__name__


def _numba_problem() -> str:
    try:
        from numba.cuda.cudadrv.driver import driver

        driver.get_device_count()
        return "numba-cuda's driver check failed"
    except Exception as e:  # noqa: BLE001
        return _first_line(e)


def device_info() -> dict:
    """What `python -m tracejit info` and describe() print: GPU name, memory, compute capability, driver and
    runtime versions, numba-cuda version, the cuBLAS library (through CuPy) if any."""
    nc = cuda()
    info = {"numba_cuda": numba_cuda_version(), "simulator": _state.get("sim", False)}
    if info["simulator"]:
        info.update(name="Numba CUDA simulator (no GPU: each thread is a Python thread)", sms=1)
        return info
    try:
        dev = nc.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        info.update(name=name, sms=int(dev.MULTIPROCESSOR_COUNT), compute_capability=dev.compute_capability)
        ctx = nc.current_context()
        free, total = ctx.get_memory_info()
        info.update(memory_gb=round(total / 2**30, 1))
    except Exception as e:  # noqa: BLE001
        info.update(name=f"unknown ({_first_line(e)})", sms=1)
    try:
        from numba.cuda.cudadrv.driver import driver

        v = driver.get_version()
        info["driver"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception:  # noqa: BLE001
        info["driver"] = None
    try:
        v = nc.runtime.get_version()
        info["runtime"] = ".".join(map(str, v))
    except Exception:  # noqa: BLE001
        info["runtime"] = None
    from . import blas

    info["cublas"] = blas.describe()
    return info


def sm_count() -> int:
    if "sms" not in _state:
        try:
            _state["sms"] = int(device_info().get("sms") or 1)
        except BackendUnavailable:
            _state["sms"] = 1
    return _state["sms"]


def env_flag(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip().lower()
