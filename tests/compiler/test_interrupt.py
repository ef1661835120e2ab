"""Ctrl-C during compiled steps: a KeyboardInterrupt (never a SystemError from inside Numba), with the model and
optimizer state exactly as before the interrupted call or exactly as after it, never in between."""

import gc
import os
import signal
import threading

import numpy as np
import pytest

import tracejit
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler import interrupt


@pytest.fixture
def default_sigint():
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def _state(model, opt):
    out = [p.detach().numpy().copy() for p in model.parameters()]
    for st in opt.state.values():
        out += [t.numpy().copy() for t in st.values() if isinstance(t, tracejit.Tensor)]
    return out


def _load(model, opt, state):
    params = list(model.parameters())
    with tracejit.no_grad():
        for p, a in zip(params, state):
            p.copy_(tracejit.from_numpy(a.copy()))
        rest = iter(state[len(params):])
        for st in opt.state.values():
            for t in st.values():
                if isinstance(t, tracejit.Tensor):
                    t.copy_(tracejit.from_numpy(next(rest).copy()))


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("width", [16, 192])  # 192: its optimizer kernel updates state in place
def test_sigint_during_compiled_steps_is_a_keyboard_interrupt_with_state_before_or_after(default_sigint, width):
    tracejit.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    opt = tracejit.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    @tracejit.compile
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x, y = tracejit.randn(128, width), tracejit.randint(0, 10, (128,))
    for _ in range(3):
        step(x, y)
    gc.disable()  # a KeyboardInterrupt raised inside a gc callback (hypothesis installs one) would be swallowed
    try:
        _interrupt_steps(step, model, opt, x, y, interrupts_wanted=12)
    finally:
        gc.enable()
    assert np.isfinite(step(x, y).item())  # and training goes on


def _interrupt_steps(step, model, opt, x, y, interrupts_wanted):
    interrupts = 0
    for delay in np.linspace(0.0002, 0.004, interrupts_wanted):
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        before = _state(model, opt)
        try:
            timer.start()  # inside the try: a short delay may fire before start() returns
            for _ in range(100000):
                before = _state(model, opt)
                step(x, y)
        except KeyboardInterrupt:  # a SystemError fails the test
            interrupts += 1
        timer.join()
        now = _state(model, opt)
        if not _same(now, before):  # then it must be exactly one whole step further
            _load(model, opt, before)
            step(x, y)
            assert _same(_state(model, opt), now), "state changed halfway through an interrupted step"
    assert interrupts == interrupts_wanted


def test_deferred_holds_ctrl_c_until_a_safe_point_and_a_second_press_interrupts_at_once(default_sigint):
    with pytest.raises(KeyboardInterrupt):
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler has run by now: held, not raised
                pass
            held = True
    assert held
    with pytest.raises(KeyboardInterrupt), interrupt.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        interrupt.check()  # a kernel boundary
        raise AssertionError("check() did not raise the held interrupt")
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupt.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        reached.append(1)
        os.kill(os.getpid(), signal.SIGINT)  # pressed twice: raised right here
        for _ in range(1000):
            pass
        reached.append(2)
    assert reached == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    interrupt.check()  # nothing held any more


def test_keyboard_interrupt_is_found_behind_a_numba_system_error():
    ki = KeyboardInterrupt()
    try:
        try:
            raise ki
        except KeyboardInterrupt as e:
            raise SystemError("CPUDispatcher(...) returned a result with an exception set") from e
    except SystemError as err:
        assert interrupt.raised_interrupt(err) is ki
    assert interrupt.raised_interrupt(SystemError("other")) is None
