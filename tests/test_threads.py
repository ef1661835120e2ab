"""Grad mode and the trace context are per thread; compiled functions are safe to call from several threads.

Overlaps are forced with events and barriers (a thread waits inside a trace until another one has done its
part), never left to timing. (tests/compiler/test_threads.py is about Numba's threading layers.)
"""

import sys
import threading

import numpy as np
import pytest

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit import dispatch as T  # noqa: E402
from tracejit.compiler.api import CompiledFunction
from tracejit.compiler.trace import trace as trace_fn
from tracejit.errors import TraceError

WAIT = 30  # seconds: only reached when something is broken (an event never comes)


def _mlp(seed):
    tj.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return (tj.tensor(rng.standard_normal((16, 4)).astype(np.float32)),
            tj.tensor(rng.standard_normal((16, 1)).astype(np.float32)))


def _params(model):
    return [p.detach().numpy().copy() for p in model.parameters()]


def _run(*targets):
    """Run each target in its own thread; re-raise the first exception one of them raised."""
    errors = []

    def wrap(fn):
        def body():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001  (reported below)
                errors.append(e)
        return body

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
        assert not t.is_alive(), "a thread hung"
    if errors:
        raise errors[0]


def _wait_until_in(thread, code, what):
    """Block until `thread` is running (or blocked) inside the function with code object `code`."""
    ev = threading.Event()
    for _ in range(WAIT * 1000):
        f = sys._current_frames().get(thread.ident)
        while f is not None and f.f_code is not code:
            f = f.f_back
        if f is not None:
            return
        ev.wait(0.001)
    raise AssertionError(f"the other thread never reached {what}")


# ------------------------------------------------------------------------------------------------ grad mode

def test_no_grad_in_another_thread_leaves_this_threads_training_alone():
    model, evaluator = _mlp(0), _mlp(1)
    x, y = _data()
    inside, done = threading.Event(), threading.Event()
    seen = []

    def evaluate():
        with tj.no_grad():
            inside.set()
            while not done.is_set():
                out = evaluator(x)
                seen.append((tj.is_grad_enabled(), out.requires_grad, out.grad_fn is None))

    def train(m):
        grads = []
        for _ in range(10):
            assert tj.is_grad_enabled()
            m.zero_grad()
            loss = F.mse_loss(m(x), y)
            assert loss.requires_grad
            loss.backward()
            grads.append([p.grad.numpy().copy() for p in m.parameters()])
        return grads

    def train_while_evaluating():
        assert inside.wait(WAIT)
        try:
            got.extend(train(model))
        finally:
            done.set()

    got = []
    _run(evaluate, train_while_evaluating)
    want = train(_mlp(0))
    assert seen and all(s == (False, False, True) for s in seen)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(a, b)


def test_grad_mode_is_per_thread_and_new_threads_start_enabled():
    modes = {}

    def child(name):
        modes[name] = tj.is_grad_enabled()

    with tj.no_grad():
        _run(lambda: child("under no_grad"))
        assert not tj.is_grad_enabled()
    with tj.set_grad_enabled(False), tj.inference_mode():
        _run(lambda: child("under inference_mode"))
    assert modes == {"under no_grad": True, "under inference_mode": True}
    assert tj.is_grad_enabled()


def test_a_decorated_no_grad_function_called_from_two_threads_restores_each_threads_mode():
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    after = {}

    @tj.no_grad()
    def work(who):
        assert not tj.is_grad_enabled()
        if who == "a":
            a_in.set()
            assert b_in.wait(WAIT)  # b entered the same decorated function (from grad mode off) after a
        else:
            b_in.set()
            assert a_out.wait(WAIT)

    def a():
        work("a")
        after["a"] = tj.is_grad_enabled()  # a entered with grad on: it must be on again
        a_out.set()

    def b():
        assert a_in.wait(WAIT)
        with tj.no_grad():
            work("b")
            after["b"] = tj.is_grad_enabled()
        after["b after"] = tj.is_grad_enabled()

    _run(a, b)
    assert after == {"a": True, "b": False, "b after": True}


# -------------------------------------------------------------------------------------------- trace context

def test_eager_ops_in_another_thread_are_not_captured_by_a_trace():
    tracing, b_done = threading.Event(), threading.Event()
    x = tj.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))

    def f(x):
        y = x * 2
        if not tracing.is_set():  # this Python runs while tracing only
            tracing.set()
            assert b_done.wait(WAIT)  # thread b does its eager math now, in the middle of this trace
        return (y + 1).sum()

    b_out = {}

    def b():
        assert tracing.wait(WAIT)
        w = tj.tensor(np.array([1.0, 2.0, 3.0], np.float32), requires_grad=True)
        loss = (w.exp() * 3).sum()
        loss.backward()
        b_out["loss"], b_out["grad"] = loss.item(), w.grad.numpy().copy()
        b_out["grad mode"] = tj.is_grad_enabled()
        b_done.set()

    cf = tj.compile(f, backend="reference")
    out = {}
    _run(lambda: out.setdefault("a", cf(x).item()), b)
    alone = tj.compile(f, backend="reference").compile_variant((x,))  # (`tracing` is set: no waiting)
    assert out["a"] == float((np.arange(6) * 2 + 1).sum())
    assert cf.ir("traced") == alone.stages["traced"]  # no node of thread b's in a's graph
    w = np.array([1.0, 2.0, 3.0], np.float32)
    assert b_out["loss"] == pytest.approx(float((np.exp(w) * 3).sum()), rel=1e-6)
    np.testing.assert_allclose(b_out["grad"], np.exp(w) * 3, rtol=1e-6)
    assert b_out["grad mode"]


@pytest.mark.parametrize("how", ["eager", "compiled"])
def test_using_a_model_that_another_thread_is_tracing_waits_for_the_trace(how):
    model = _mlp(0)
    x, _ = _data()
    x_b = tj.tensor(x.numpy().copy())
    with tj.no_grad():
        want = model(x).numpy().copy()
        evaluate = tj.compile(lambda x: model(x), backend="reference")
        evaluate(x_b)  # compiled before the other thread's trace starts
    tracing = threading.Event()

    def f(x):
        out = model(x) * 2 + tj.rand(16, 1)  # the trace now holds the weights and the generator's state
        if not tracing.is_set():
            tracing.set()
            _wait_until_in(thread_b, T._concrete_values.__code__, "the wait")  # b waits for this trace
            assert type(model[0].weight._box.value).__name__ == "Value"
        return out

    got = {}

    def b():
        assert tracing.wait(WAIT)
        with tj.no_grad():
            got["out"] = (model(x_b) if how == "eager" else evaluate(x_b)).numpy().copy()
        got["default rng"] = tj.rand(3).numpy()  # the default generator's state was captured too

    cf = tj.compile(f, backend="reference")
    thread_b = threading.Thread(target=b, daemon=True)
    tj.manual_seed(5)
    thread_b.start()
    tj.explain(cf, x)  # traces (and compiles) without running: the default generator stays put
    thread_b.join(WAIT)
    assert set(got) == {"out", "default rng"}
    np.testing.assert_array_equal(got["out"], want)
    tj.manual_seed(5)
    np.testing.assert_array_equal(got["default rng"], tj.rand(3).numpy())
    assert isinstance(model[0].weight._box.value, np.ndarray) and "uniform" in cf.ir("traced")
    assert len(evaluate.history) == 1


def test_an_eager_op_waiting_on_a_trace_that_waits_for_it_raises_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(T, "TRACE_WAIT_S", 0.2)
    model = _mlp(0)
    x, _ = _data()
    tracing, b_done = threading.Event(), threading.Event()
    raised = []

    def f(x):
        if not tracing.is_set():
            tracing.set()
            assert b_done.wait(WAIT)  # a trace that waits for the thread that waits for it
        return model(x)

    def b():
        assert tracing.wait(WAIT)
        try:
            with tj.no_grad():
                model(x)
        except TraceError as e:
            raised.append(str(e))
        finally:
            b_done.set()

    cf = tj.compile(f, backend="reference")
    _run(lambda: cf(x), b)
    assert len(raised) == 1
    assert "holds a traced value" in raised[0] and "did not end within 0.2 s" in raised[0]
    assert "test_threads.py" in raised[0]  # the user's line


def test_a_tensor_kept_from_a_trace_is_named_when_used_eagerly():
    kept = []
    sink = kept.append  # a builtin bound method: the compile-time kept-tensor check cannot see through it

    def f(x):
        y = x + 1
        sink(y)
        return y

    x = tj.tensor(np.ones(3, np.float32))
    tj.compile(f, backend="reference")(x)
    with pytest.raises(TraceError, match="created inside a compiled function and kept"):
        kept[0].tolist()


# ------------------------------------------------------------------------------------- compiled functions

def test_first_calls_from_two_threads_compile_the_variant_once():
    tracing = threading.Event()
    x = tj.tensor(np.arange(4, dtype=np.float32))
    thread_b = []

    def f(x):
        if not tracing.is_set():
            tracing.set()
            # b is inside the same compiled function's compile path now, waiting for this trace
            _wait_until_in(thread_b[0], CompiledFunction._compile_and_run.__code__, "_compile_and_run")
        return (x * 3).sum()

    cf = tj.compile(f, backend="reference")
    out = {}

    def b():
        thread_b.append(threading.current_thread())
        assert tracing.wait(WAIT)
        out["b"] = cf(x).item()

    def a():
        while not thread_b:
            threading.Event().wait(0.001)
        out["a"] = cf(x).item()

    _run(a, b)
    assert out == {"a": 18.0, "b": 18.0}
    assert len(cf.history) == 1
    assert [line for line in cf.log if line.startswith("compiled variant")] == ["compiled variant 1: first call"]


def test_two_threads_train_compiled_while_a_third_evaluates_under_no_grad():
    n = 6

    def setup(seed):
        model = _mlp(seed)
        opt = tj.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = _data()  # each thread its own tensors (one that another thread's trace holds waits for it)
        calls, hook = [], []

        def step(x, y):
            calls.append(1)
            if len(calls) == 2 and hook:  # the second call traces (the first creates the momentum buffers)
                hook[0]()
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss

        # bit-for-bit equal to the sequential run with size templates (the default) too: a sum beside stores
        # in one loop used to take LLVM's scalar fallback where malloc put an output just after an input, which
        # the other threads' allocations decided (1 ulp; tests/compiler/test_cpu_backend.py, STORE_AND_SUM)
        return model, tj.compile(step, backend="cpu"), x, y, hook

    want = []  # sequentially, in this thread
    for seed in (0, 1):
        model, cf, x, y, _ = setup(seed)
        want.append(([cf(x, y).item() for _ in range(n)], _params(model), list(cf.log)))
    evaluator = _mlp(2)
    x_eval, _ = _data()
    with tj.no_grad():
        eval_want = evaluator(x_eval).numpy().copy()
        eval_cf = tj.compile(lambda x: evaluator(x) * 1, backend="cpu")
        eval_cf(x_eval)  # compiled now (grad mode off is part of its key)

    m1, cf1, x1, y1, hook1 = setup(0)
    m2, cf2, x2, y2, _ = setup(1)
    t2_compiled, t1_tracing, t2_stepped = threading.Event(), threading.Event(), threading.Event()
    eval_tick, done = threading.Event(), threading.Event()

    def in_t1_trace():  # t1 traces while t2 runs a compiled step and the evaluator evaluates twice
        t1_tracing.set()
        assert t2_stepped.wait(WAIT)
        for _ in range(2):
            eval_tick.clear()
            assert eval_tick.wait(WAIT)

    hook1.append(in_t1_trace)
    got, evals = {}, []

    def t1():
        losses = [cf1(x1, y1).item()]  # eager: creates the momentum buffers
        assert t2_compiled.wait(WAIT)  # (one trace at a time: t2's is done before t1's starts)
        got[1] = losses + [cf1(x1, y1).item() for _ in range(n - 1)]

    def t2():
        losses = [cf2(x2, y2).item() for _ in range(3)]  # eager, traced, compiled
        t2_compiled.set()
        assert t1_tracing.wait(WAIT)
        losses.append(cf2(x2, y2).item())
        t2_stepped.set()
        got[2] = losses + [cf2(x2, y2).item() for _ in range(n - 4)]

    def evaluate():
        with tj.no_grad():
            while not done.is_set():
                evals.append(evaluator(x_eval).numpy().copy())
                evals.append(eval_cf(x_eval).numpy().copy())
                eval_tick.set()

    def trainers():
        try:
            _run(t1, t2)
        finally:
            done.set()

    _run(evaluate, trainers)
    for i, (model, cf) in ((1, (m1, cf1)), (2, (m2, cf2))):
        losses, params, log = want[i - 1]
        assert got[i] == losses
        for a, b in zip(_params(model), params):
            np.testing.assert_array_equal(a, b)
        assert cf.log == log and len(cf.history) == 1
    assert len(evals) >= 4
    for e in evals:
        np.testing.assert_allclose(e, eval_want, rtol=1e-6, atol=1e-7)
    assert len(eval_cf.history) == 1


def test_one_compiled_function_trains_two_models_from_two_threads():
    x, y = _data()
    n = 5

    def step(model, opt, x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def make(seed):
        model = _mlp(seed)
        return model, tj.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    seq = tj.compile(step, backend="reference")
    want = []
    for seed in (0, 1):
        model, opt = make(seed)
        want.append(([seq(model, opt, x, y).item() for _ in range(n)], _params(model)))

    cf = tj.compile(step, backend="reference")
    models = [make(0), make(1)]
    start = threading.Barrier(2, timeout=WAIT)
    got = {}

    def train(i):
        start.wait()
        got[i] = [cf(*models[i], x, y).item() for _ in range(n)]

    _run(lambda: train(0), lambda: train(1))
    for i in (0, 1):
        assert got[i] == want[i][0]
        for a, b in zip(_params(models[i][0]), want[i][1]):
            np.testing.assert_array_equal(a, b)
    assert len(cf.history) == 2  # one variant per model, each compiled once
    assert sum(line.startswith("compiled variant") for line in cf.log) == 2


def test_one_compiled_program_runs_in_two_threads_at_once():
    def f(x, w):
        return (x @ w).relu().sum(dim=1) * 0.5

    cf = tj.compile(f, backend="cpu")
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((8, 5)).astype(np.float32) for _ in range(2)]
    w = rng.standard_normal((5, 3)).astype(np.float32)
    tw = tj.tensor(w)
    cf(tj.tensor(xs[0]), tw)  # compiled
    start = threading.Barrier(2, timeout=WAIT)
    got = {0: [], 1: []}

    def run(i):
        t = tj.tensor(xs[i])
        start.wait()
        for _ in range(50):
            got[i].append(cf(t, tw).numpy().copy())

    _run(lambda: run(0), lambda: run(1))
    for i in (0, 1):
        want = np.maximum(xs[i] @ w, 0).sum(axis=1) * 0.5
        for g in got[i]:
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    assert len(cf.history) == 1


def test_the_trace_helper_installs_the_tracer_for_this_thread_only():
    from tracejit.compiler.state import StateIndex

    seen = {}
    x = tj.tensor(np.ones(2, np.float32))

    def f(x):
        seen["here"] = T.current_tracer() is not None
        _run(lambda: seen.setdefault("other thread", T.current_tracer()))
        return x + 1

    trace_fn(f, (x,), ["x"], StateIndex(f, (x,)), "f")
    assert seen == {"here": True, "other thread": None}
    assert T.current_tracer() is None and not T._tracing
