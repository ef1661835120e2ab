"""`tracejit.accelerator`, as `torch.accelerator`: the accelerator this process can use, if any."""

from __future__ import annotations

from .devices import current_accelerator


def is_available() -> bool:
    return current_accelerator() is not None


def device_count() -> int:
    acc = current_accelerator()
    if acc is None:
        return 0
    from .compiler.backends import device_count as count

    return count(acc.type)


def current_device_index() -> int:
    if current_accelerator() is None:
        raise RuntimeError("Cannot access accelerator device when none is available.")
    return 0


__all__ = ["current_accelerator", "current_device_index", "device_count", "is_available"]
