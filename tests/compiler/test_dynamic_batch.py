"""New batch sizes on a compiled step (compile(dynamic=...), backends/sizes.py): every path -- a template hit,
a widened template, replayed size-dependent choices, a source that differs elsewhere (no template) -- gives
the results of a fresh compile at that size and of eager execution."""

import numpy as np
import pytest

import tracejit
import tracejit.nn.functional as F
from tracejit.compiler.backends import sizes as S
from tracejit.compiler.backends.cpu import render as cpu_render

from .conftest import MLP, assert_same_state, make_train_step, snapshot, twin

RNG = np.random.default_rng(0)
X = RNG.standard_normal((40, 8)).astype(np.float32)
Y = RNG.standard_normal((40, 4)).astype(np.float32)


def _train(batch_sizes, dynamic=None, eager=False):
    """MLP + Adam + MSE over the first rows of X, Y at each batch size: (compiled step or None, state, losses)."""
    tracejit.manual_seed(0)
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    step = make_train_step(model, opt, F.mse_loss)
    if not eager:
        step = tracejit.compile(step, backend="cpu", dynamic=dynamic)
    losses = [float(step(tracejit.tensor(X[:b]), tracejit.tensor(Y[:b])).detach().numpy()) for b in batch_sizes]
    return (None if eager else step), snapshot(model, opt), losses


def _close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is not None:
            np.testing.assert_allclose(np.asarray(a[k], float), np.asarray(b[k], float), rtol=2e-5, atol=1e-6,
                                       err_msg=k)


def _program_sources(v) -> list:
    return [s.source for s, *_ in v.program.plan if getattr(s, "source", None) is not None]


def _sources(step) -> list:
    return _program_sources(step.latest())


def _then(second: str):
    """A step at 8 rows, then one at 5 by the same compiled function ("same"), by a new one compiled at 5
    ("fresh", "static": dynamic=False) or eagerly: (the functions, state after, losses)."""
    tracejit.manual_seed(0)
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    fn = make_train_step(model, opt, F.mse_loss)
    first = tracejit.compile(fn, backend="cpu")
    second_fn = {"same": first, "fresh": tracejit.compile(fn, backend="cpu"),
                 "static": tracejit.compile(fn, backend="cpu", dynamic=False), "eager": fn}[second]
    losses = []
    for f, b in ((first, 8), (first, 8), (second_fn, 5)):
        losses.append(float(f(tracejit.tensor(X[:b]), tracejit.tensor(Y[:b])).detach().numpy()))
    return (first, second_fn), snapshot(model, opt), losses


def test_template_hit_a_partial_last_batch_runs_the_kernels_compiled_for_the_full_one():
    (step, _), state, losses = _then("same")
    v8, v5 = step.history
    assert v5.shared and step.eager_calls == 1  # (Adam's first step creates its state)
    assert any("SZ_" in s for s in _sources(step))
    assert "runs the kernels compiled for another batch size (no compile)" in " ".join(step.log) or v5.shared
    # a fresh compile at 5 rows (a new compiled function) gives the same bits
    (_, fresh), state_fresh, losses_fresh = _then("fresh")
    assert len(fresh.history) == 1 and fresh.history[0].arg_desc[0] == "f32[5, 8]"
    assert_same_state(state, state_fresh)
    assert losses == losses_fresh
    # every size compiled in (dynamic=False) and eager: the same values (a reduction may associate differently
    # when its trip count is an argument rather than a constant: not always the same bits)
    (_, static), state_static, losses_static = _then("static")
    assert not any("SZ_" in s for s in _sources(static))
    _close(state, state_static)
    np.testing.assert_allclose(losses, losses_static, rtol=2e-6)
    _, state_eager, losses_eager = _then("eager")
    _close(state, state_eager)
    np.testing.assert_allclose(losses, losses_eager, rtol=2e-5)
    text = str(tracejit.explain(step, tracejit.tensor(X[:5]), tracejit.tensor(Y[:5])))
    assert "dynamic dims: x[0], y[0] (batch size 5) (it runs kernels compiled for another batch size)" in text


def _row_norms(x):
    """A reduction over dim 1 (its length is a literal of the kernels) and its gradient."""
    x = x.detach().requires_grad_()
    loss = (x.tanh().sum(1) ** 2).sum()
    (g,) = tracejit.autograd.grad(loss, [x])
    return loss, g


def _row_norms_ref(x):
    t = np.tanh(x.astype(np.float64))
    s = t.sum(1)
    return (s**2).sum(), 2 * s[:, None] * (1 - t**2)


def test_a_template_widens_when_another_dim_changes_and_the_next_change_hits_it():
    f = tracejit.compile(_row_norms, backend="cpu")
    static = tracejit.compile(_row_norms, backend="cpu", dynamic=False)
    for cols in (5, 7, 9, 5):
        x = RNG.standard_normal((6, cols)).astype(np.float32)
        loss, g = f(tracejit.tensor(x))
        loss_s, g_s = static(tracejit.tensor(x))
        np.testing.assert_allclose(loss.numpy(), loss_s.numpy(), rtol=1e-6)
        np.testing.assert_allclose(g.numpy(), g_s.numpy(), rtol=1e-6)
        want_loss, want_g = _row_norms_ref(x)
        np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
        np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-5, atol=1e-6)
    # 7 columns: the kernels differ from the 5-column ones at the number 7: a template taking it as an argument
    # is compiled (the first change); 9 columns runs that template; 5 again is the first variant
    v5, v7, v9 = f.history
    assert v9.shared and v7.program.parametric()[1] > v5.program.parametric()[1]
    assert len(static.history) == 3


def test_choices_made_for_the_full_batch_are_replayed_for_a_smaller_one(monkeypatch):
    # with PARALLEL_MIN at 40 the MLP's 32 x 16 hidden layer runs on threads in 16 blocks, its 2 x 16 one
    # would not: the batch of 2 replays the batch of 32's choices (it runs the same kernels, in 2 blocks); a
    # larger batch decides afresh
    monkeypatch.setattr(cpu_render, "PARALLEL_MIN", 40)
    step, state, losses = _train([32, 32, 2, 32])  # (the first call runs eagerly: it creates Adam's state)
    v32, v2 = step.history
    assert v2.shared and _program_sources(v2) == _program_sources(v32)
    assert any("numba.prange(nc" in s for s in _sources(step))
    static, state_static, losses_static = _train([32, 32, 2, 32], dynamic=False)
    _close(state, state_static)
    np.testing.assert_allclose(losses, losses_static, rtol=2e-6)
    # small first, then larger: automatic (None) gives the larger batch its own parallel kernels; True replays
    grown, state_grown, _ = _train([2, 2, 32])
    g2, g32 = grown.history
    assert _program_sources(g32) == _program_sources(v32) != _program_sources(g2)
    always, state_always, _ = _train([2, 2, 32], dynamic=True)
    a2, a32 = always.history
    assert a32.shared and _program_sources(a32) == _program_sources(a2) == _program_sources(g2)
    _, state_static2, _ = _train([2, 2, 32], dynamic=False)
    _close(state_grown, state_static2)
    _close(state_always, state_static2)


def _branchy(x):
    # what runs depends on the batch size: no template of the 4-row kernels fits the 8-row ones
    y = x.exp() if x.shape[0] > 6 else x.tanh()
    return (y * y).sum(0)


def test_a_source_that_differs_elsewhere_compiles_its_own_kernels():
    f = tracejit.compile(_branchy, backend="cpu")
    for rows in (4, 5, 8):
        x = RNG.standard_normal((rows, 3)).astype(np.float32)
        want = (np.exp(x) if rows > 6 else np.tanh(x)).astype(np.float64)
        np.testing.assert_allclose(f(tracejit.tensor(x)).numpy(), (want * want).sum(0), rtol=1e-5)
    v4, v5, v8 = f.history
    assert v5.shared and not set(_program_sources(v8)) & set(_program_sources(v4))


def test_the_second_trace_at_another_batch_size_leaves_no_python_effects(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(tmp_path))  # (nothing learnt for these kernels before)
    calls = []
    a, b = twin(MLP)

    def fwd(model):
        def f(x):
            calls.append(x.shape[0])
            return model(x).sum()
        return f

    f = tracejit.compile(fwd(a), backend="cpu")
    x = tracejit.tensor(X[:6])
    np.testing.assert_allclose(f(x).numpy(), fwd(b)(x).detach().numpy(), rtol=1e-6)
    assert calls == [6, 6]  # the trace and the eager call: the trace at 7 rows was undone (the list restored)
    assert "probe" in f.history[0].timings


def test_template_values_check_every_literal():
    src = "def k(a):\n    for i in range(12):\n        a[i] = a[i] * 3 + 0.5 / 12\n"
    other = src.replace("12", "13")
    skel, nums = S.split_numbers(src)
    t = S.make_template(src, nums, skel, {i for i, (p, q) in enumerate(zip(nums, S.split_numbers(other)[1]))
                                           if p != q}, S.split_numbers(other)[1])
    assert t.n_args == 1 and "def k(SZ_, a):" in t.text and "range(sz0)" in t.text and "/ sz0" in t.text
    assert t.values(S.split_numbers(other)[1]) == (13,)
    assert t.values(S.split_numbers(src.replace("* 3", "* 4"))[1]) is None  # differs outside the arguments
    assert t.values(S.split_numbers(src.replace("range(12)", "range(14)"))[1]) is None  # one argument, 2 values
    assert t.values(S.split_numbers(src.replace("range(12)", "range(12.0)").replace("/ 12", "/ 12.0"))[1]) is None
    ns: dict = {}
    exec(t.text, ns)
    a = np.ones(13)
    ns["k"]((13,), a)
    np.testing.assert_allclose(a, 3 + 0.5 / 13)


def test_calls_between_functions_of_a_template_pass_the_sizes_on():
    src = "def inner(a):\n    return a * 7\n\ndef outer(a):\n    return inner(a) + 7\n"
    other = src.replace("7", "8")
    skel, nums = S.split_numbers(src)
    t = S.make_template(src, nums, skel, {0, 1}, S.split_numbers(other)[1])
    ns: dict = {}
    exec(t.text, ns)
    assert ns["outer"]((8,), 2) == 24


@pytest.mark.parametrize("bad", [2, "yes"])
def test_dynamic_must_be_none_true_or_false(bad):
    with pytest.raises(ValueError, match="dynamic must be None, True or False"):
        tracejit.compile(lambda x: x, dynamic=bad)


def test_a_later_compile_of_the_same_kernels_recalls_their_sizes_instead_of_tracing_again(tmp_path, monkeypatch):
    from tracejit.compiler.backends import cache

    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(tmp_path))
    first, _, losses = _train([8, 8, 5])
    assert "probe" in first.history[0].timings  # traced again at 9 rows to find the sizes
    records = [p for p in tmp_path.glob("k_*.py") if "size arguments" in p.read_text()]
    assert records
    again, _, losses_again = _train([8, 8, 5])  # a new compiled function (as in a new process): nothing learnt yet
    assert "probe" not in again.history[0].timings and again.history[1].shared
    assert losses == losses_again
    # damaged records are misses: the compile traces again, and the results stay the same
    for p in records:
        p.write_text(p.read_text().replace("[[", "[[99999, "))
    damaged, _, losses_damaged = _train([8, 8, 5])
    assert "probe" in damaged.history[0].timings and losses_damaged == losses
    cache.clear()
    assert not list(tmp_path.glob("k_*.py"))
