"""Ctrl-C and compiled code: a KeyboardInterrupt, never a SystemError, and state either as before or as after a call.

Python runs a SIGINT handler between bytecodes. Inside a Numba function that happens only where the compiled
code calls back into Python (boxing a returned array's dtype, for one); the handler's KeyboardInterrupt then
surfaces as "SystemError: CPUDispatcher(...) returned a result with an exception set". `raised_interrupt`
finds the KeyboardInterrupt behind such an error. An interrupt inside Numba's compiler can leave a function
half-built ("no compiled object yet"), so compiles run under `deferred()`: a Ctrl-C there is held until the
kernel being compiled is done (`check()` at each kernel boundary raises it), and a second Ctrl-C interrupts
at once.
"""

from __future__ import annotations

import _signal  # the C module: `signal.signal/getsignal` convert to and from enums, ~8 us a pair per call
import signal
import threading

_SIGINT = int(signal.SIGINT)
_DEFAULT = signal.default_int_handler
_pending = False  # a held Ctrl-C (set and cleared on the main thread only: handlers run there)


def raised_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that caused `exc` (through __cause__/__context__), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _hold(signum, frame):
    global _pending
    if _pending:  # pressed twice: the user wants out now
        _pending = False
        raise KeyboardInterrupt
    _pending = True


class deferred:
    """While entered (main thread, default SIGINT handler only), Ctrl-C is held, not raised; on exit, or at a
    `check()`, a held interrupt is raised as KeyboardInterrupt. Nested uses share the outermost's handler.
    Entering and leaving cost well under a microsecond (it runs around every compiled call that updates state
    in place)."""

    __slots__ = ("installed",)

    def __enter__(self):
        self.installed = (threading.current_thread() is threading.main_thread()
                          and _signal.getsignal(_SIGINT) is _DEFAULT)
        if self.installed:
            _signal.signal(_SIGINT, _hold)
        return self

    def __exit__(self, exc_type, exc, tb):
        global _pending
        if not self.installed:
            return False
        _signal.signal(_SIGINT, _DEFAULT)
        if _pending:
            _pending = False
            if exc_type is None:
                raise KeyboardInterrupt
        return False


def check() -> None:
    """A safe point: raise a Ctrl-C that `deferred` held (on the main thread, whose Ctrl-C it is: a background
    compile (api.Tier) passes kernel boundaries too, and must not take it)."""
    global _pending
    if _pending and threading.current_thread() is threading.main_thread():
        _pending = False
        raise KeyboardInterrupt
