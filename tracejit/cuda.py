"""`tracejit.cuda`, as `torch.cuda`: whether CUDA tensors can be made in this process, honestly.

CUDA is available when the CUDA backend (compiler/backends/cuda) can run here: numba-cuda is installed and an
NVIDIA driver sees a GPU, or Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1, set before tracejit is
imported). Asking costs no Numba import. Functions that need a GPU raise PyTorch's "Torch not compiled with CUDA
enabled" error followed by the reason (no driver, numba-cuda not installed) and how to check; the seeding and
cache functions are quiet no-ops without a GPU, as PyTorch's are. tracejit has one random generator for every
device (counter-based: the same numbers on the CPU and the GPU), so `manual_seed` here seeds nothing of its own.
"""

from __future__ import annotations

from .devices import DeviceUnavailableError, storage_device


def is_available() -> bool:
    from .compiler.backends import device_type_available

    return device_type_available("cuda")


def device_count() -> int:
    from .compiler.backends import device_count as count

    return count("cuda")


def is_initialized() -> bool:
    return is_available()


def _need() -> None:
    if not is_available():
        storage_device("cuda")  # raises with the reason
        raise DeviceUnavailableError("Torch not compiled with CUDA enabled")


def current_device() -> int:
    _need()
    return 0


def set_device(device) -> None:
    """Checks that `device` (an index or a cuda device) exists -- PyTorch's "invalid device ordinal" error if
    not; tracejit's CUDA backend runs on cuda:0 whatever is current."""
    _need()
    storage_device(device if not isinstance(device, int) else f"cuda:{device}")


def get_device_name(device=None) -> str:
    _need()
    from .compiler.backends import backend_for_device

    desc = backend_for_device(storage_device("cuda")).describe()
    return str(desc.get("gpu", {}).get("name") or desc.get("device"))


def synchronize(device=None) -> None:
    _need()
    from .compiler.backends import backend_for_device

    backend_for_device(storage_device(device if device is not None else "cuda")).synchronize()


def manual_seed(seed: int) -> None:
    """Seeds nothing of its own: tracejit's generator serves every device (tracejit.manual_seed seeds it)."""


def manual_seed_all(seed: int) -> None:
    """As manual_seed."""


def empty_cache() -> None:
    """Return the device memory tracejit keeps cached for reuse (freed tensors' blocks) to the driver."""
    if is_available():
        from .compiler.backends import backend_for_device

        backend_for_device(storage_device("cuda")).empty_cache()


class _NoPool:
    in_use = peak = cached = 0


def _pool():
    """The CUDA backend's memory pool; without CUDA one that holds nothing (PyTorch's statistics are 0 then)."""
    if not is_available():
        return _NoPool
    from .compiler.backends import backend_for_device

    return backend_for_device(storage_device("cuda")).mem.pool


def memory_allocated(device=None) -> int:
    """Bytes of device memory held by live tensors and compiled functions' arenas (torch.cuda.memory_allocated)."""
    return _pool().in_use


def max_memory_allocated(device=None) -> int:
    """The most `memory_allocated` has been since the start or `reset_peak_memory_stats()`."""
    return _pool().peak


def memory_reserved(device=None) -> int:
    """memory_allocated plus the freed blocks cached for reuse (`empty_cache()` returns those)."""
    pool = _pool()
    return pool.in_use + pool.cached


def reset_peak_memory_stats(device=None) -> None:
    pool = _pool()
    if pool is not _NoPool:
        with pool.lock:
            pool.peak = pool.in_use


def is_bf16_supported(including_emulation: bool = True) -> bool:
    return False
