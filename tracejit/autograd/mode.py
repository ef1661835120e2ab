"""Grad mode, per thread (as PyTorch's): `no_grad`, `enable_grad`, `set_grad_enabled`, `inference_mode`.

A thread evaluating under `no_grad` never changes another thread's training."""

from __future__ import annotations

import contextlib
import functools
import threading


class _GradMode(threading.local):
    enabled = True  # the class attribute is every thread's starting mode


_mode = _GradMode()  # grad mode is per thread (as PyTorch's): an evaluating thread never changes another's
# The threads whose grad mode is off right now (by thread id). While it is empty (the common case) every
# thread's mode is on, and the hot readers (`tensor.apply`) skip the thread-local lookup:
# `not _off or _mode.enabled`. Each thread adds or removes only its own id, with single set operations
# (atomic, no lock), whenever its own mode changes: a thread whose mode is off always finds the set nonempty.
# (A thread that ends inside no_grad leaves its id behind: that only costs the fast path.)
_off: set = set()


def is_grad_enabled() -> bool:
    return not _off or _mode.enabled


def _set_mode(mode: bool) -> bool:
    """Set this thread's grad mode; returns the previous one."""
    prev = _mode.enabled
    if mode != prev:
        if mode:
            _mode.enabled = True
            _off.discard(threading.get_ident())
        else:
            _off.add(threading.get_ident())
            _mode.enabled = False
    return prev


class set_grad_enabled(contextlib.ContextDecorator):
    """Context manager / decorator that sets this thread's grad mode (``with tracejit.no_grad(): ...``)."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)
        self.prev = None

    def __enter__(self):
        self.prev = _set_mode(self.mode)
        return self

    def __exit__(self, *exc):
        _set_mode(self.prev)
        return False

    def _recreate_cm(self):
        # a decorated function gets a fresh context per call: one shared `prev` would let two threads
        # calling it at once restore each other's mode
        return set_grad_enabled(self.mode)


class no_grad(set_grad_enabled):
    """Disable gradient recording. Use as ``with no_grad():`` or as ``@no_grad()``."""

    def __init__(self, fn=None):
        super().__init__(False)
        if callable(fn):  # allow bare @no_grad
            self._fn = fn
            functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if hasattr(self, "_fn"):
            with set_grad_enabled(False):
                return self._fn(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class enable_grad(set_grad_enabled):
    def __init__(self):
        super().__init__(True)


class inference_mode(no_grad):
    pass
