"""Tiered execution (compile(tiered=True)): the first calls run on the reference backend while the kernels
compile in a background thread; results equal the blocking path's; errors surface; cached kernels load at once.
Also: stage IR text rendered when asked for, verification after every pass on request."""

import threading

import numpy as np
import pytest

import tracejit
import tracejit.nn.functional as F
from tracejit.compiler import api, interrupt
from tracejit.compiler.ir import print_graph

from .conftest import MLP, BNDropCNN, LeNet, assert_same_state, batches, make_train_step, snapshot


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    """An empty kernel cache (the sizes below are this module's own, so no kernel is in the process either)."""
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(tmp_path / "kernels"))
    monkeypatch.delenv("TRACEJIT_TIERED", raising=False)


def _train(model_factory, opt_factory, loss, data, tiered, wait_after=1, **kw):
    tracejit.manual_seed(3)
    model = model_factory()
    opt = opt_factory(model.parameters())
    step = make_train_step(model, opt, loss)
    step(*data[0])  # eager: the optimizer's state
    cf = tracejit.compile(step, tiered=tiered, **kw)
    losses, ran = [], []
    for i, (x, y) in enumerate(data[1:]):
        losses.append(cf(x, y).item())
        tier = getattr(cf.history[-1], "tier", None)
        ran.append("compiled" if tier is None or tier.switched else "reference")
        if tier is not None and i == wait_after:
            assert tier.wait(300)
    return losses, ran, snapshot(model, opt), cf


def _assert_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, k
            continue
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=2e-5, atol=2e-6, err_msg=k)


@pytest.mark.parametrize("case", ["mlp_adam", "cnn_bn_dropout_sgd"])
def test_tiered_steps_equal_blocking_steps(fresh_kernels, case):
    if case == "mlp_adam":
        setup = (lambda: MLP(11, 23, 5), lambda ps: tracejit.optim.Adam(ps, lr=0.01), F.mse_loss,
                 batches(6, (7, 11), (7, 5)))
    else:
        setup = (lambda: BNDropCNN(), lambda ps: tracejit.optim.SGD(ps, lr=0.05, momentum=0.9), F.cross_entropy,
                 batches(6, (5, 3, 8, 8), "class", n_classes=3))
    lt, ran, st, cf = _train(*setup, tiered=True, dynamic=False)
    assert ran[:2] == ["reference", "reference"] and ran[-1] == "compiled", ran  # it switched
    v = cf.history[-1]
    assert v.tier.error is None and v.tier.reference_calls == 2
    text = str(tracejit.explain(cf, *batches(1, (7, 11), (7, 5))[0])) if case == "mlp_adam" else ""
    assert case != "mlp_adam" or "tiered: 2 calls ran on the reference backend" in text
    lb, ranb, sb, _ = _train(*setup, tiered=False, dynamic=False)
    assert set(ranb) == {"compiled"}
    np.testing.assert_allclose(lt, lb, rtol=2e-5, atol=1e-6)
    _assert_close(st, sb)


def test_cached_kernels_load_at_once_without_tiering(fresh_kernels):
    data = batches(3, (9, 11), (9, 5))
    _train(lambda: MLP(11, 19, 5), lambda ps: tracejit.optim.SGD(ps, lr=0.1), F.mse_loss, data, tiered=False)
    _, ran, _, cf = _train(lambda: MLP(11, 19, 5), lambda ps: tracejit.optim.SGD(ps, lr=0.1), F.mse_loss, data,
                           tiered=True)
    assert getattr(cf.history[-1], "tier", None) is None and set(ran) == {"compiled"}


def test_background_compile_error_is_raised_at_the_next_call(fresh_kernels, monkeypatch):
    from tracejit.compiler.backends.cpu.program import CpuProgram

    def broken(self, ins):
        raise RuntimeError("the kernels did not compile")

    monkeypatch.setattr(CpuProgram, "run", broken)
    cf = tracejit.compile(lambda x: (x * 3.0 + 1.0).sum(), tiered=True)
    x = tracejit.tensor(np.ones((3, 41), np.float32))
    assert cf(x).item() == 3 * 41 * 4.0  # on the reference backend
    tier = cf.history[-1].tier
    assert tier.wait(300) and isinstance(tier.error, RuntimeError)
    with pytest.raises(RuntimeError, match="did not compile"):
        cf(x)
    said = str(tracejit.explain(cf, x))  # (a forked compile process fails the same way: its error names it)
    assert "it raised " in said and "RuntimeError: the kernels did not compile" in said


def test_tiered_errors_name_the_users_line(fresh_kernels):
    lin = tracejit.nn.Linear(4, 3)
    cf = tracejit.compile(lambda x, y: F.cross_entropy(lin(x), y), tiered=True)
    x = tracejit.tensor(np.ones((13, 4), np.float32))
    with pytest.raises(Exception, match=r"target label 7 is out of range.*test_tiered\.py"):
        cf(x, tracejit.tensor(np.array([7] + [0] * 12)))


def test_tiered_calls_from_threads_agree(fresh_kernels):
    cf = tracejit.compile(lambda x: (x * x).sum(1), tiered=True)
    x = tracejit.tensor(np.arange(6 * 43, dtype=np.float32).reshape(6, 43))
    want = (x.numpy() ** 2).sum(1)
    cf(x)
    got, errors = [], []

    def worker():
        try:
            for _ in range(5):
                got.append(cf(x).numpy())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(got) == 15
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-6)
    assert cf.wait_compiled(300) and cf.history[-1].tier.done.is_set()
    np.testing.assert_allclose(cf(x).numpy(), want, rtol=1e-6)
    assert cf.history[-1].tier.switched


def test_tiered_option_and_environment(monkeypatch):
    with pytest.raises(ValueError, match="tiered must be"):
        tracejit.compile(lambda x: x, tiered="yes")
    monkeypatch.setenv("TRACEJIT_TIERED", "1")
    assert api._tiered_env() is True
    monkeypatch.setenv("TRACEJIT_TIERED", "0")
    assert api._tiered_env() is False
    monkeypatch.setenv("TRACEJIT_TIERED", "maybe")
    with pytest.raises(ValueError, match="TRACEJIT_TIERED"):
        api._tiered_env()


def test_held_ctrl_c_is_raised_on_the_main_thread_only(monkeypatch):
    monkeypatch.setattr(interrupt, "_pending", True)
    seen = []
    t = threading.Thread(target=lambda: seen.append(interrupt.check()))
    t.start()
    t.join()
    assert seen == [None] and interrupt._pending  # a background compile's kernel boundary leaves it
    with pytest.raises(KeyboardInterrupt):
        interrupt.check()
    assert not interrupt._pending


def test_stage_text_is_rendered_on_demand_and_verify_each_pass(monkeypatch):
    from tracejit.compiler import passes

    calls = []
    real = passes.verify
    monkeypatch.setattr(passes, "verify", lambda g: calls.append(g) or real(g))
    cf = tracejit.compile(lambda x: (x * 2.0).relu().sum(), backend="reference")
    x = tracejit.tensor(np.ones((2, 3), np.float32))
    cf(x)
    v = cf.history[-1]
    assert calls == [] and v.stages._text == {}  # nothing rendered, passes not verified one by one
    for name, g in dict(v.stage_graphs).items():  # (a pass run twice, dce: its last run, as before)
        assert v.stages[name] == print_graph(g) == cf.ir(name)
    monkeypatch.setenv("TRACEJIT_VERIFY", "each")
    cf2 = tracejit.compile(lambda x: (x * 2.0).relu().sum(), backend="reference")
    cf2(x)
    assert len(calls) == len(cf2.history[-1].stage_graphs) - 1


def test_a_new_batch_size_while_the_kernels_compile_waits_for_them_on_the_reference_backend(fresh_kernels,
                                                                                           monkeypatch):
    """A new batch size (an epoch's partial last batch) that arrives while the first variant's kernels still
    compile in the background shares those kernels: it runs on the reference backend too, and both switch once
    they are ready -- it never compiles them again in the foreground. Every loss and the final state equal the
    blocking path's."""
    from tracejit.compiler import background

    monkeypatch.setattr(background, "cpus", lambda: 1)  # (a compile thread: this test holds it with a gate)
    gate = threading.Event()
    original = api.Tier._compile

    def gated(self, inputs):
        if self.mode != "after":
            assert gate.wait(300)
        original(self, inputs)

    monkeypatch.setattr(api.Tier, "_compile", gated)
    sizes = [11, 11, 9, 9, 11, 9, 11, 9]
    # the kernels take the batch size as an argument: another test's LeNet step compiled in this worker would load
    # at once, so this step's loss has a form of its own (tanh-squashed logits)
    loss_fn = lambda out, y: F.cross_entropy(out.tanh() * 3.0, y)  # noqa: E731
    rng = np.random.default_rng(8)
    data = [(tracejit.tensor(rng.standard_normal((n, 3, 32, 32)).astype(np.float32)),
             tracejit.tensor(rng.integers(0, 10, n))) for n in sizes]

    def run(tiered):
        tracejit.manual_seed(3)
        model = LeNet()
        opt = tracejit.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = make_train_step(model, opt, loss_fn)
        step(*data[0])
        cf = tracejit.compile(step, tiered=tiered)
        losses, tiers = [], []
        for i, (x, y) in enumerate(data[1:]):
            if i == 4:
                gate.set()
                assert cf.wait_compiled(300)
            losses.append(cf(x, y).item())
            tier = getattr(cf.history[-1] if len(cf.history) == 1 or x.shape[0] == 9 else cf.history[0], "tier",
                           None)
            tiers.append(None if tier is None else (tier.mode, tier.switched))
        return losses, snapshot(model, opt), cf, tiers

    lt, st, cf, tiers = run(True)
    assert len(cf.history) == 2
    assert tiers[:4] == [("thread", False), ("after", False), ("after", False), ("thread", False)]
    assert tiers[4:] == [("after", True), ("thread", True), ("after", True)]
    assert cf.history[1].tier.reference_calls == 2 and cf.history[1].tier.error is None
    assert "another batch size's background compile" in cf.history[1].tier.describe()
    lb, sb, _, _ = run(False)
    np.testing.assert_allclose(lt, lb, rtol=2e-5, atol=1e-6)
    assert_same_state(st, sb, rtol=2e-5, atol=2e-6)
