"""Guards and retracing, bad arguments, untraceable operations, eager fallback, exceptions inside a trace."""

import inspect
import os
import re
import sys
import threading
import time
import traceback
import warnings

import numpy as np
import pytest

import tracejit
import tracejit.nn.functional as F
from tracejit.compiler.api import FallbackWarning, RecompileWarning
from tracejit.errors import TraceError

from .conftest import MLP, BNDropCNN, assert_same_state, batches, make_train_step, snapshot, twin


def compile_ref(fn, **kw):
    return tracejit.compile(fn, backend="reference", **kw)


def line_of(fn, marker: str) -> str:
    """'file:line' of the first source line of `fn` containing `marker`."""
    lines, first = inspect.getsourcelines(fn)
    for i, text in enumerate(lines):
        if marker in text:
            return f"{os.path.abspath(inspect.getsourcefile(fn))}:{first + i}"
    raise AssertionError(f"{marker!r} not in {fn.__name__}")


def f32(*shape, seed=0):
    return tracejit.tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# ------------------------------------------------------------------------------------------------ retracing


def test_new_shape_retraces_and_both_variants_are_kept():
    cf = compile_ref(lambda x: (x * 2.0).sum(dim=0))
    a, b = f32(2, 3), f32(5, 3)
    assert np.array_equal(cf(a).numpy(), (a.numpy() * 2).sum(0))
    assert np.array_equal(cf(b).numpy(), (b.numpy() * 2).sum(0))
    assert len(cf.history) == 2
    assert "x" in cf.history[1].reason or "argument 0" in cf.history[1].reason
    assert "[2, 3]" in cf.history[1].reason and "[5, 3]" in cf.history[1].reason
    cf(a)
    cf(b)
    assert len(cf.history) == 2  # both shapes are served from the cache
    assert [v.graph.inputs[0].shape for v in cf.history] == [(2, 3), (5, 3)]


def test_training_step_with_a_new_batch_size_retraces_and_matches_eager():
    def build():
        model = MLP()
        return model, tracejit.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    (m_e, o_e), (m_c, o_c) = twin(build)
    step_e = make_train_step(m_e, o_e, F.mse_loss)
    step_c = compile_ref(make_train_step(m_c, o_c, F.mse_loss))
    data = batches(3, (6, 8), (6, 4)) + batches(2, (3, 8), (3, 4), seed=1) + batches(2, (6, 8), (6, 4), seed=2)
    for x, y in data:
        assert np.array_equal(step_e(x, y).detach().numpy(), step_c(x, y).detach().numpy())
    assert_same_state(snapshot(m_e, o_e), snapshot(m_c, o_c))
    n = len(step_c.history)
    step_c(*data[0])
    step_c(*data[3])
    assert len(step_c.history) == n
    assert any("[3, 8]" in v.reason for v in step_c.history)


def test_dtype_change_retraces():
    cf = compile_ref(lambda x: x * 2)
    x = f32(3)
    cf(x)
    out = cf(x.double())
    assert out.dtype is tracejit.float64
    assert np.array_equal(out.numpy(), x.double().numpy() * 2)
    assert len(cf.history) == 2
    assert "f64" in cf.history[1].reason and "f32" in cf.history[1].reason


def test_requires_grad_change_retraces():
    def f(x):
        y = (x * x).sum()
        if x.requires_grad:
            y.backward()
        return y

    cf = compile_ref(f)
    x = f32(4)
    cf(x)
    w = f32(4).requires_grad_()
    cf(w)
    assert len(cf.history) == 2
    assert "requires_grad" in cf.history[1].reason
    assert np.array_equal(w.grad.numpy(), 2 * w.detach().numpy())


def test_non_tensor_argument_value_change_retraces():
    cf = compile_ref(lambda x, scale, mode: x * scale if mode == "mul" else x + scale)
    x = f32(3)
    assert np.array_equal(cf(x, 2.0, "mul").numpy(), x.numpy() * np.float32(2.0))
    assert np.array_equal(cf(x, 3.0, "mul").numpy(), x.numpy() * np.float32(3.0))
    assert np.array_equal(cf(x, 3.0, "add").numpy(), x.numpy() + np.float32(3.0))
    assert len(cf.history) == 3
    assert "2.0" in cf.history[1].reason and "3.0" in cf.history[1].reason
    assert "'mul'" in cf.history[2].reason and "'add'" in cf.history[2].reason
    cf(x, 2.0, "mul")
    assert len(cf.history) == 3


def test_keyword_arguments_bind_like_positional_ones():
    cf = compile_ref(lambda x, scale=2.0: x * scale)
    x = f32(3)
    assert np.array_equal(cf(x).numpy(), cf(x, scale=2.0).numpy())
    assert np.array_equal(cf(x, scale=4.0).numpy(), x.numpy() * np.float32(4.0))
    assert len(cf.history) == 2


def test_grad_mode_change_retraces():
    tracejit.manual_seed(0)
    model = MLP()
    cf = compile_ref(lambda x: model(x))
    (x, _), = batches(1, (2, 8), (2, 4))
    with_grad = cf(x)
    with tracejit.no_grad():
        without = cf(x)
    assert len(cf.history) == 2
    assert "grad mode" in cf.history[1].reason
    assert np.array_equal(with_grad.detach().numpy(), without.numpy())


def test_eval_and_train_switch_retraces_with_a_reason_naming_the_module():
    tracejit.manual_seed(0)
    model = BNDropCNN()
    cf = compile_ref(lambda x: model(x))
    (x, _), = batches(1, (4, 3, 8, 8), "class", n_classes=3)
    with tracejit.no_grad():
        cf(x)
        model.eval()
        before = snapshot(model)
        out_eval = cf(x)
        assert_same_state(before, snapshot(model))  # eval: no running-stat update, no dropout draw
        assert np.array_equal(out_eval.numpy(), model(x).numpy())
        assert len(cf.history) == 2
        reason = cf.history[1].reason
        assert "eval" in reason and "BNDropCNN" in reason
        model.train()
        cf(x)
        assert len(cf.history) == 2  # back to the first variant


def test_submodule_eval_retraces_with_a_reason_naming_the_submodule():
    tracejit.manual_seed(0)
    model = BNDropCNN()
    cf = compile_ref(lambda x: model(x))
    (x, _), = batches(1, (4, 3, 8, 8), "class", n_classes=3)
    with tracejit.no_grad():
        cf(x)
        model.bn.eval()
        cf(x)
    assert len(cf.history) == 2
    assert "BatchNorm2d switched to eval mode" in cf.history[1].reason


def test_recompile_reason_describes_the_change_since_the_previous_call():
    """With several cached variants, the reason compares against what the previous call ran, not against
    whichever variant happened to be compiled last."""
    tracejit.manual_seed(0)
    model = BNDropCNN()
    cf = compile_ref(lambda x: model(x))
    (x, _), = batches(1, (4, 3, 8, 8), "class", n_classes=3)
    with tracejit.no_grad():
        cf(x)  # variant 1: all train
        model.eval()
        cf(x)  # variant 2: all eval
        model.train()
        cf(x)  # variant 1 again
        model.bn.eval()  # the only change since the previous call
        cf(x)
    assert len(cf.history) == 3
    assert "BatchNorm2d switched to eval mode" in cf.history[2].reason, cf.history[2].reason


def test_replacing_a_captured_tensor_with_another_shape_retraces():
    tracejit.manual_seed(0)
    state = {"w": f32(3)}
    holder = type("Holder", (), {})()
    holder.w = state["w"]

    def f(x):
        return x * holder.w

    cf = compile_ref(f)
    x = f32(3, seed=1)
    cf(x)
    holder.w.data = f32(3, seed=2)  # same shape, new values: read on every call, no retrace
    assert np.array_equal(cf(x).numpy(), x.numpy() * holder.w.numpy())
    assert len(cf.history) == 1
    holder.w.data = f32(1, seed=3)  # new shape of the captured tensor: guard fails, retrace
    assert np.array_equal(cf(x).numpy(), x.numpy() * holder.w.numpy())
    assert len(cf.history) == 2


def test_replacing_a_parameter_object_is_seen_by_the_next_call():
    """A module attribute rebound to a new Parameter (same shape): the compiled call must use the new
    tensor, as eager does (guards on the identity of captured tensors), not the one it captured."""
    tracejit.manual_seed(0)
    lin = tracejit.nn.Linear(3, 2)
    cf = compile_ref(lambda x: lin(x))
    x = tracejit.ones(1, 3)
    with tracejit.no_grad():
        cf(x)
        lin.weight = tracejit.nn.Parameter(tracejit.zeros(2, 3))
        out, expected = cf(x), lin(x)
    assert np.array_equal(out.numpy(), expected.numpy()), (out, expected)


def test_optimizer_hyperparameter_change_retraces():
    w = tracejit.nn.Parameter(tracejit.ones(3))
    opt = tracejit.optim.SGD([w], lr=1.0)

    @tracejit.compile(backend="reference")
    def step():
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()

    step()
    step()
    n = len(step.history)
    opt.param_groups[0]["weight_decay"] = 0.5  # baked into the trace (unlike lr): must retrace
    step()
    assert len(step.history) == n + 1 and "SGD" in step.history[-1].reason
    # w: 1 -> -1 -> 1 -> 1 - (2 * 1 + 0.5 * 1)
    assert np.array_equal(w.detach().numpy(), np.full(3, -1.5, np.float32))


def test_aliased_arguments_are_guarded():
    """A trace made with the same tensor passed twice must not be reused for two distinct tensors."""
    def f(a, b):
        a.add_(1.0)
        return b * 1.0

    cf = compile_ref(f)
    x = tracejit.zeros(3)
    assert np.array_equal(cf(x, x).numpy(), np.ones(3, np.float32))  # b is a: it sees the add
    y, z = tracejit.zeros(3), tracejit.full((3,), 5.0)
    out = cf(y, z)
    assert np.array_equal(y.numpy(), np.ones(3, np.float32))
    assert np.array_equal(out.numpy(), np.full(3, 5.0, np.float32)), out


def test_grad_of_a_tensor_argument_goes_to_the_tensor_passed_in():
    def input_grad(x):
        (x * x).sum().backward()
        return x.grad * 1.0

    cf = compile_ref(input_grad)
    x1 = tracejit.ones(3).requires_grad_()
    cf(x1)
    assert np.array_equal(x1.grad.numpy(), np.full(3, 2.0, np.float32))
    x1.grad = None
    x2 = tracejit.full((3,), 7.0).requires_grad_()
    out = cf(x2)
    assert np.array_equal(out.numpy(), np.full(3, 14.0, np.float32))
    assert x2.grad is not None and np.array_equal(x2.grad.numpy(), np.full(3, 14.0, np.float32))
    assert x1.grad is None  # the trace-time tensor is not the one that receives this call's grad


def test_fresh_requires_grad_inputs_do_not_retrace_every_call():
    """Input-gradient functions (adversarial examples, saliency) get a new leaf tensor every call."""
    def input_grad(x):
        (x * x).sum().backward()
        return x.grad * 1.0

    cf = compile_ref(input_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecompileWarning)
        for i in range(10):
            x = tracejit.full((3,), float(i)).requires_grad_()
            assert np.array_equal(cf(x).numpy(), np.full(3, 2.0 * i, np.float32))
            assert np.array_equal(x.grad.numpy(), np.full(3, 2.0 * i, np.float32))
    assert len(cf.history) <= 2, [v.reason for v in cf.history]


def test_warnings_point_at_the_users_call():
    cf = compile_ref(_item, fallback="eager")
    cr = compile_ref(lambda x: x + 1.0, cache_limit=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cf(f32(2))
        cr(f32(2))
        cr(f32(3))
    assert [w.category for w in record] == [FallbackWarning, RecompileWarning]
    for w in record:
        assert w.filename == __file__, (w.category.__name__, w.filename, w.lineno)


def test_nested_compiled_function_is_inlined():
    inner = compile_ref(lambda x: x * 2.0)
    outer = compile_ref(lambda x: inner(x) + 1.0)
    assert np.array_equal(outer(tracejit.ones(2)).numpy(), np.full(2, 3.0, np.float32))
    assert len(outer.history) == 1 and inner.history == []
    assert "mul(" in outer.ir("traced") and "add(" in outer.ir("traced")


def test_past_cache_limit_new_guard_failures_run_eagerly_with_one_warning():
    cf = compile_ref(lambda x: x + 1.0, cache_limit=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecompileWarning)
        cf(f32(1))
        cf(f32(2))
    with pytest.warns(RecompileWarning) as record:
        out = cf(f32(3))
    assert len(record) == 1
    msg = str(record[0].message)
    assert "cache_limit=2" in msg and "run eagerly" in msg
    assert "'x'" in msg and "[2]" in msg and "[3]" in msg  # this call's reason
    assert "What kept changing: argument 0 ('x') (2x)" in msg and "drop_last=True" in msg
    assert np.array_equal(out.numpy(), f32(3).numpy() + 1)
    with warnings.catch_warnings():  # one warning, then quietly eager; the compiled variants keep running
        warnings.simplefilter("error", RecompileWarning)
        for n in (4, 5, 1, 2):
            assert np.array_equal(cf(f32(n)).numpy(), f32(n).numpy() + 1)
    assert len(cf.history) == 2 and cf.eager_calls == 3
    assert sum(len(vs) for vs in cf.variants.values()) == 2
    assert "cache_limit=2 reached" in cf.log[-1]


def test_each_recompile_says_why_on_stderr_unless_silenced(capsys, monkeypatch):
    monkeypatch.delenv("TRACEJIT_LOGS", raising=False)
    cf = compile_ref(lambda x: x * 2.0)
    cf(f32(1))
    assert capsys.readouterr().err == ""  # a fast first compile is silent
    cf(f32(2))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tracejit: recompiling")
    assert "variant 2" in err[0] and "argument 0 ('x') changed from f32[1] to f32[2]" in err[0]
    monkeypatch.setenv("TRACEJIT_LOGS", "off")
    cf(f32(3))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TRACEJIT_LOGS", "loud")
    with pytest.raises(ValueError, match="TRACEJIT_LOGS='loud'"):
        cf(f32(4))


def test_a_slow_compile_says_what_is_compiling_and_then_what_it_cost(capsys, monkeypatch):
    from tracejit.compiler import log

    monkeypatch.delenv("TRACEJIT_LOGS", raising=False)
    monkeypatch.setattr(log, "SLOW_COMPILE_S", 0.05)
    started = threading.Event()

    def slow(x):
        started.set()
        time.sleep(0.3)  # tracing runs the Python body once: a stand-in for a slow compile
        return x + 1.0

    cf = compile_ref(slow)
    cf(f32(2))
    assert started.is_set()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "tracejit: compiling slow (first call) ...", err
    assert err[1].startswith("tracejit: compiled slow (first call) in 0.") and "run only while it is traced" in err[1]


def test_compile_lines_go_above_an_active_tqdm_bar(capsys, monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    from tracejit.compiler import log

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, file=None: written.append(s)))
    with tqdm.tqdm(total=3, disable=False, file=sys.stderr) as bar:
        bar.update(1)
        log.emit("recompiling f (variant 2): because")
    assert written == ["tracejit: recompiling f (variant 2): because"]


@pytest.mark.parametrize("bad, what", [
    (np.zeros(3, np.float32), "numpy"),
    ([tracejit.zeros(3), tracejit.zeros(3)], "list"),
    ((tracejit.zeros(3),), "tuple"),
])
def test_numpy_array_or_list_of_tensors_is_a_type_error_naming_the_argument(bad, what):
    cf = compile_ref(lambda x, inputs: x + 1.0)
    with pytest.raises(TypeError) as e:
        cf(tracejit.zeros(3), bad)
    msg = str(e.value)
    assert "'inputs'" in msg and "argument 1" in msg
    assert what in msg.lower() or "list/tuple" in msg
    assert cf.history == []


def test_integer_input_follows_eager_semantics():
    tracejit.manual_seed(0)
    model = MLP()
    cf = compile_ref(lambda x: model(x))
    x = tracejit.arange(16).reshape(2, 8)
    # an int64 batch into a float32 model raises in both, as in PyTorch (it used to promote silently)
    with pytest.raises(TypeError, match=r"linear: expected input and weight to have the same dtype, but got: int64"):
        model(x)
    with pytest.raises(TypeError, match=r"linear: expected input and weight to have the same dtype, but got: int64"):
        cf(x)
    out = cf(x.float())
    expected = model(x.float())
    assert out.dtype is expected.dtype
    assert np.array_equal(out.detach().numpy(), expected.detach().numpy())


# ------------------------------------------------------------------------------------- untraceable operations


def _item(x):
    return x * x.sum().item()


def _numpy(x):
    return x * float(x.sum().numpy())


def _bool(x):
    loss = (x * x).mean()
    if loss > 0:
        return loss * 2.0
    return loss


def _print(x):
    y = x * 2.0
    print(y)
    return y


def _tolist(x):
    return x * len([v for v in x.tolist() if v > 0])


UNTRACEABLE = [
    (_item, "item()", ".item()"),
    (_numpy, "numpy()", ".numpy()"),
    (_bool, "bool(tensor)", "if loss > 0"),
    (_print, "print", "print(y)"),
    (_tolist, "tolist()", ".tolist()"),
]


@pytest.mark.parametrize("fn, op, marker", UNTRACEABLE, ids=[u[0].__name__ for u in UNTRACEABLE])
def test_untraceable_operation_raises_trace_error_naming_op_and_user_line(fn, op, marker, capsys):
    cf = compile_ref(fn)
    x = f32(4)
    with pytest.raises(TraceError) as e:
        cf(x)
    msg = str(e.value)
    assert op in msg, msg
    assert line_of(fn, marker) in msg, msg
    assert "fallback='eager'" in msg  # says how to fix it
    assert cf.history == []


@pytest.mark.parametrize("fn, op, marker", UNTRACEABLE, ids=[u[0].__name__ for u in UNTRACEABLE])
def test_fallback_eager_warns_once_and_gives_eager_results(fn, op, marker, capsys):
    cf = compile_ref(fn, fallback="eager")
    x = f32(4)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = cf(x)
        second = cf(x)
    fallback = [w for w in record if issubclass(w.category, FallbackWarning)]
    assert len(fallback) == 1, [str(w.message) for w in record]
    assert op in str(fallback[0].message)
    assert line_of(fn, marker) in str(fallback[0].message)
    expected = fn(x)
    assert np.array_equal(first.numpy(), expected.numpy())
    assert np.array_equal(second.numpy(), expected.numpy())
    assert cf.history == []


def test_fallback_eager_training_step_matches_eager_and_warns_once():
    def build():
        model = MLP()
        return model, tracejit.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def make(model, opt):
        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()  # a Python float: cannot be traced
        return step

    (m_e, o_e), (m_c, o_c) = twin(build)
    step_e, step_c = make(m_e, o_e), compile_ref(make(m_c, o_c), fallback="eager")
    data = batches(3, (6, 8), (6, 4))
    with pytest.warns(FallbackWarning) as record:
        losses_c = [step_c(x, y) for x, y in data]
    assert len([w for w in record if issubclass(w.category, FallbackWarning)]) == 1
    losses_e = [step_e(x, y) for x, y in data]
    assert losses_c == losses_e and isinstance(losses_c[0], float)
    assert_same_state(snapshot(m_e, o_e), snapshot(m_c, o_c))


def test_untraceable_in_training_step_leaves_state_unchanged():
    tracejit.manual_seed(0)
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.05)
    step = compile_ref(make_train_step(model, opt, lambda out, y: F.mse_loss(out, y) * out.sum().item()))
    (x, y), = batches(1, (6, 8), (6, 4))
    before = snapshot(model, opt)
    with pytest.raises(TraceError, match=r"item\(\)"):
        step(x, y)
    assert_same_state(before, snapshot(model, opt))


def test_trace_error_is_not_swallowed_by_a_later_call():
    cf = compile_ref(_item)
    for _ in range(2):
        with pytest.raises(TraceError):
            cf(f32(4))


# ------------------------------------------------------------------------------------ exceptions inside a trace


class Boom(Exception):
    pass


def _make_exploding_step(model, opt):
    def step(x, y, explode):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if explode:
            raise Boom("inside the step")
        return loss
    return step


def test_exception_inside_traced_function_propagates_and_leaves_state_unchanged():
    def build():
        model = BNDropCNN()
        return model, tracejit.optim.Adam(model.parameters(), lr=0.01)

    def make(model, opt):
        def step(x, y, explode):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if explode:
                raise Boom("inside the step")
            return loss
        return step

    (m_e, o_e), (m_c, o_c) = twin(build)
    step_e, step_c = make(m_e, o_e), compile_ref(make(m_c, o_c))
    data = batches(4, (4, 3, 8, 8), "class", n_classes=3)
    tracejit.manual_seed(5)
    rng_e = tracejit.default_generator.get_state()
    for x, y in data[:2]:
        step_e(x, y, False)
    rng_e_after = tracejit.default_generator.get_state()
    tracejit.default_generator.set_state(rng_e)
    for x, y in data[:2]:
        step_c(x, y, False)
    assert len(step_c.history) == 1

    before = snapshot(m_c, o_c)
    with pytest.raises(Boom) as e:
        step_c(*data[2], True)
    # the user's own frame is in the traceback, at the raise
    frames = traceback.extract_tb(e.value.__traceback__)
    assert any(f.filename == __file__ and "raise Boom" in (f.line or "") for f in frames)
    assert_same_state(before, snapshot(m_c, o_c))
    for p in m_c.parameters():
        assert isinstance(p._box.value, np.ndarray) and isinstance(p.grad._box.value, np.ndarray)

    # the next call works and still matches eager (both continue from the same generator state)
    assert np.array_equal(before["rng"], rng_e_after.numpy())
    for x, y in data[2:]:
        step_c(x, y, False)
    tracejit.default_generator.set_state(rng_e_after)
    for x, y in data[2:]:
        step_e(x, y, False)
    assert_same_state(snapshot(m_e, o_e), snapshot(m_c, o_c))
    assert len(step_c.history) == 1  # the failed explode=True trace added no variant


def test_exception_on_the_first_call_leaves_lazy_optimizer_state_uncreated():
    tracejit.manual_seed(0)
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    step = compile_ref(_make_exploding_step(model, opt))
    (x, y), = batches(1, (6, 8), (6, 4))
    before = snapshot(model, opt)
    with pytest.raises(Boom):
        step(x, y, True)
    assert_same_state(before, snapshot(model, opt))
    assert len(opt.state) == 0 and all(p.grad is None for p in model.parameters())
    step(x, y, False)  # runs (eagerly: it creates Adam's state) and the next call compiles
    step(x, y, False)
    assert step.eager_calls == 1 and len(step.history) == 1


def test_op_error_inside_trace_names_the_users_line():
    tracejit.manual_seed(0)

    def f(x):
        return x @ x  # [3, 2] @ [3, 2]: shapes do not match

    cf = compile_ref(f)
    with pytest.raises(Exception) as e:
        cf(f32(3, 2))
    assert line_of(f, "x @ x") in str(e.value)
    assert "[3, 2]" in str(e.value)
    assert cf.history == []
    assert np.array_equal(cf(f32(2, 2)).numpy(), f32(2, 2).numpy() @ f32(2, 2).numpy())


def _over_30_batch_sizes(**kw):
    from tracejit.compiler import log

    model = tracejit.nn.Linear(6, 3)
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)

    @tracejit.compile(cache_limit=3, **kw)
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    rss = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecompileWarning)
        for b in range(1, 31):
            for _ in range(2):
                step(tracejit.randn(b, 6), tracejit.randint(0, 3, (b,)))
            rss[b] = log.rss_bytes()
    return step, rss


def test_memory_stays_bounded_over_30_batch_sizes_and_explain_reports_it():
    # dynamic=False: every new batch size is a guard failure that compiles; past cache_limit they run eagerly
    # instead of compiling (and keeping) ever more kernels: resident memory stops growing once the limit is reached
    step, rss = _over_30_batch_sizes(dynamic=False)
    assert len(step.history) == 3 and step.eager_calls == 2 * 27
    assert rss[30] - rss[4] < 8e6, (rss[4], rss[30])
    text = str(tracejit.explain(step, tracejit.randn(2, 6), tracejit.randint(0, 3, (2,))))
    assert re.search(r"memory: .*compiling and loading its kernels added [\d.]+ MB resident", text), text


def test_dynamic_batch_sizes_share_kernels_and_keep_cache_limit_of_them():
    # by default batch sizes >= 2 after the first share its kernels: no eager calls; the variants that share
    # are kept up to cache_limit (the oldest is evicted), so memory stays bounded as well
    step, rss = _over_30_batch_sizes()
    assert step.eager_calls == 0
    # batch 1 broadcasts (never shared); batch 2 compiles the kernels (unless an earlier test in this process
    # compiled the same ones); every later batch size runs them
    assert all(v.shared for v in step.history if v.arg_desc[0] not in ("f32[1, 6]", "f32[2, 6]"))
    assert [v.arg_desc[0] for v in step.history[-3:]] == ["f32[28, 6]", "f32[29, 6]", "f32[30, 6]"]
    assert len(step.history) <= 2 + 3 and sum("evicted variant" in line for line in step.log) >= 28 - 3
    assert rss[30] - rss[6] < 8e6, (rss[6], rss[30])
    text = str(tracejit.explain(step, tracejit.randn(29, 6), tracejit.randint(0, 3, (29,))))
    assert "runs kernels compiled for another batch size" in text, text
