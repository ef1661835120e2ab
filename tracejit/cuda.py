"""`tracejit.cuda`, as `torch.cuda`: whether CUDA tensors can be made in this process, honestly.

CUDA is available when a backend for device "cuda" is registered and can run here (compiler/backends: the CUDA
backend is its own issue; until it exists every answer here is "no"). Functions that need a GPU raise PyTorch's
"Torch not compiled with CUDA enabled" error; the seeding and cache functions are quiet no-ops, as PyTorch's are
without a GPU.
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
    _need()


def get_device_name(device=None) -> str:
    _need()
    from .compiler.backends import backend_for_device

    return str(backend_for_device(storage_device("cuda")).describe().get("device"))


def synchronize(device=None) -> None:
    _need()
    from .compiler.backends import backend_for_device

    backend_for_device(storage_device(device if device is not None else "cuda")).synchronize()


def manual_seed(seed: int) -> None:
    """Seeds nothing of its own: tracejit's generator serves every device (tracejit.manual_seed seeds it)."""


def manual_seed_all(seed: int) -> None:
    """As manual_seed."""


def empty_cache() -> None:
    pass


def is_bf16_supported(including_emulation: bool = True) -> bool:
    return False
