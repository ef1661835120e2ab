"""Differential tests: N compiled steps (reference backend) leave exactly what N eager steps leave.

Each test builds two identical copies (same seed), runs one eagerly and one through
`tracejit.compile(..., backend="reference")`, both starting from the same default-generator state, and
compares parameters, grads, buffers, optimizer state, learning rates, RNG state and returned values with
np.array_equal.
"""

import numpy as np
import pytest

import tracejit
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler.ir import verify

from .conftest import (
    MLP,
    BNDropCNN,
    LeNet,
    assert_same_state,
    assert_same_values,
    batches,
    make_train_step,
    snapshot,
    twin,
)


def compile_ref(fn, **kw):
    return tracejit.compile(fn, backend="reference", **kw)


def run_differential(build, make_step, data, rng_seed=123, between=None):
    """build() -> (model, opt); returns (compiled fn, eager losses, compiled losses, eager/compiled state)."""
    (m_e, o_e), (m_c, o_c) = twin(build)
    assert_same_state(snapshot(m_e, o_e, rng=False), snapshot(m_c, o_c, rng=False))
    step_e = make_step(m_e, o_e)
    step_c = compile_ref(make_step(m_c, o_c))
    results = {}
    for label, model, opt, step in (("eager", m_e, o_e, step_e), ("compiled", m_c, o_c, step_c)):
        tracejit.manual_seed(rng_seed)
        outs = []
        for i, args in enumerate(data):
            outs.append(step(*args))
            if between is not None:
                between(model, opt, i)
        results[label] = (outs, snapshot(model, opt))
    return step_c, results["eager"], results["compiled"]


def check_equal(eager, compiled):
    (outs_e, snap_e), (outs_c, snap_c) = eager, compiled
    assert_same_state(snap_e, snap_c)
    flat_e = [t for o in outs_e for t in (o if isinstance(o, tuple) else (o,))]
    flat_c = [t for o in outs_c for t in (o if isinstance(o, tuple) else (o,))]
    assert_same_values(flat_e, flat_c)


# ------------------------------------------------------------------------------------------ training steps


def test_linear_regression_sgd_equals_eager():
    def build():
        model = nn.Linear(1, 1)
        return model, tracejit.optim.SGD(model.parameters(), lr=0.1)

    def make_step(model, opt):
        loss_fn = nn.MSELoss()
        return make_train_step(model, opt, loss_fn)

    rng = np.random.default_rng(1)
    xs = rng.standard_normal((5, 8, 1)).astype(np.float32)
    data = [(tracejit.tensor(x), tracejit.tensor(3 * x + 0.5)) for x in xs]
    cf, eager, compiled = run_differential(build, make_step, data)
    check_equal(eager, compiled)
    # plain SGD has no lazily created state: the very first call is already compiled; the second call may
    # retrace once because the parameters now have a .grad (zero_grad looked at it), then it is stable
    assert cf.eager_calls == 0 and len(cf.history) in (1, 2)
    assert cf.history[0].reason == "first call"
    assert all(".grad" in v.reason for v in cf.history[1:])
    losses = [float(t.item()) for t in compiled[0]]
    assert losses[-1] < losses[0]


def test_mlp_adam_equals_eager():
    def build():
        model = MLP()
        return model, tracejit.optim.Adam(model.parameters(), lr=0.01)

    cf, eager, compiled = run_differential(
        build, lambda m, o: make_train_step(m, o, F.mse_loss), batches(4, (6, 8), (6, 4)))
    check_equal(eager, compiled)
    snap = compiled[1]
    assert float(snap["opt state 0.step"]) == 4.0
    assert {"opt state 0.exp_avg", "opt state 0.exp_avg_sq", "opt state 3.exp_avg_sq"} <= snap.keys()
    # Adam creates its state on the first step: that call runs eagerly, the steady state is traced next
    assert cf.eager_calls == 1 and len(cf.history) == 1
    assert cf.history[0].reason == "first call"


OPTIMIZERS = {
    "sgd_nesterov_wd": lambda ps: tracejit.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_dampening_maximize": lambda ps: tracejit.optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.1,
                                                            maximize=True),
    "adam_amsgrad_wd": lambda ps: tracejit.optim.Adam(ps, lr=0.01, amsgrad=True, weight_decay=0.1),
    "adamw": lambda ps: tracejit.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.05),
}


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_optimizer_variants_equal_eager(opt_name):
    def build():
        model = MLP()
        return model, OPTIMIZERS[opt_name](model.parameters())

    cf, eager, compiled = run_differential(
        build, lambda m, o: make_train_step(m, o, F.mse_loss), batches(4, (6, 8), (6, 4)))
    check_equal(eager, compiled)
    assert len(cf.history) == 1


def test_batchnorm_cumulative_average_equals_eager():
    def build():
        model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6, momentum=None), nn.ReLU(), nn.Linear(6, 4))
        return model, tracejit.optim.SGD(model.parameters(), lr=0.1)

    cf, eager, compiled = run_differential(
        build, lambda m, o: make_train_step(m, o, F.mse_loss), batches(4, (6, 8), (6, 4)))
    check_equal(eager, compiled)
    assert int(compiled[1]["buffer 1.num_batches_tracked"]) == 4


def test_lenet_sgd_momentum_equals_eager():
    def build():
        model = LeNet()
        return model, tracejit.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    cf, eager, compiled = run_differential(
        build, lambda m, o: make_train_step(m, o, F.cross_entropy), batches(3, (4, 3, 32, 32), "class"))
    check_equal(eager, compiled)
    assert "opt state 0.momentum_buffer" in compiled[1]
    assert cf.eager_calls == 1 and len(cf.history) == 1


def test_bn_dropout_cnn_equals_eager_including_running_stats_and_rng():
    def build():
        model = BNDropCNN()
        return model, tracejit.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)

    cf, eager, compiled = run_differential(
        build, lambda m, o: make_train_step(m, o, F.cross_entropy),
        batches(4, (4, 3, 8, 8), "class", n_classes=3))
    check_equal(eager, compiled)
    snap = compiled[1]
    assert int(snap["buffer bn.num_batches_tracked"]) == 4
    assert not np.array_equal(snap["buffer bn.running_mean"], np.zeros(4, np.float32))
    # the generator advanced by the dropout draws (its state is graph state, not a constant)
    assert snap["rng"][1] > 0
    assert len(cf.history) == 1


def test_dropout_draws_fresh_masks_every_call_and_matches_eager():
    def drop(x):
        return F.dropout(x, 0.5, training=True)

    cf = compile_ref(drop)
    x = tracejit.ones(64)
    tracejit.manual_seed(7)
    c1, c2, c3 = cf(x), cf(x), cf(x)
    rng_after_compiled = snapshot(rng=True)["rng"]
    assert len(cf.history) == 1
    m1, m2, m3 = (c.numpy() != 0 for c in (c1, c2, c3))
    assert not np.array_equal(m1, m2) and not np.array_equal(m2, m3)
    assert 0 < m1.sum() < 64
    tracejit.manual_seed(7)
    e1, e2, e3 = drop(x), drop(x), drop(x)
    assert_same_values([c1, c2, c3], [e1, e2, e3])
    assert np.array_equal(rng_after_compiled, snapshot(rng=True)["rng"])


def test_dropout_masks_differ_between_compiled_training_steps():
    tracejit.manual_seed(0)
    model = BNDropCNN(p=0.5)
    opt = tracejit.optim.SGD(model.parameters(), lr=0.0)  # lr 0: parameters stay, only masks change

    @tracejit.compile(backend="reference")
    def step(x, y):
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        return out

    (x, y), = batches(1, (4, 3, 8, 8), "class", n_classes=3)
    outs = [step(x, y).detach().numpy() for _ in range(3)]
    assert len(step.history) in (1, 2)  # the second call may retrace once: the parameters now have a .grad
    assert not np.array_equal(outs[1], outs[2])


def test_function_with_in_place_ops_equals_eager():
    def make(buf):
        def f(a, b):
            c = a * 2.0
            c.add_(b)
            c.mul_(c)
            c.copy_(c.masked_fill(c > 4.0, -1.0))
            c.clamp_(max=3.0)
            a.add_(1.0)  # mutating an argument is written back to the caller's tensor
            buf.sub_(c.sum(dim=0))  # and so is mutating a captured tensor
            return c, a * 1.0
        return f

    rng = np.random.default_rng(3)
    a0, b0 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    buf_e, buf_c = tracejit.zeros(4), tracejit.zeros(4)
    a_e, a_c = tracejit.tensor(a0), tracejit.tensor(a0)
    b = tracejit.tensor(b0)
    f_e, f_c = make(buf_e), compile_ref(make(buf_c))
    outs_e = [f_e(a_e, b) for _ in range(3)]
    outs_c = [f_c(a_c, b) for _ in range(3)]
    assert len(f_c.history) == 1
    assert_same_values([t for o in outs_e for t in o], [t for o in outs_c for t in o])
    assert np.array_equal(a_e.numpy(), a_c.numpy()) and np.array_equal(a_c.numpy(), a0 + 3)
    assert np.array_equal(buf_e.numpy(), buf_c.numpy())
    assert np.array_equal(b.numpy(), b0)
    writes = [m for m, _ in f_c.history[0].traced.writes()]
    assert "a" in writes and "buf" in writes


def test_lr_scheduler_changes_lr_without_retracing():
    def build():
        model = MLP()
        opt = tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        opt.scheduler = tracejit.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return model, opt

    def between(model, opt, i):
        opt.scheduler.step()

    cf, eager, compiled = run_differential(
        build, lambda m, o: make_train_step(m, o, F.mse_loss), batches(5, (6, 8), (6, 4)), between=between)
    check_equal(eager, compiled)
    assert cf.eager_calls == 1 and len(cf.history) == 1, cf.log
    assert compiled[1]["lr float 0"] == pytest.approx(0.1 * 0.5**5)
    assert float(compiled[1]["lr 0"]) == np.float32(0.1 * 0.5**5)


def test_lr_scheduler_lr_is_a_graph_input_not_a_constant():
    tracejit.manual_seed(0)
    w = nn.Parameter(tracejit.ones(3))
    opt = tracejit.optim.SGD([w], lr=1.0)

    @tracejit.compile(backend="reference")
    def step():
        opt.zero_grad()
        (w * w).sum().backward()
        opt.step()

    step()
    assert np.array_equal(w.detach().numpy(), np.full(3, -1.0, np.float32))  # 1 - 1.0 * 2
    step()  # may retrace once: w now has a .grad that zero_grad clears
    assert np.array_equal(w.detach().numpy(), np.full(3, 1.0, np.float32))  # -1 - 1.0 * -2
    n = len(step.history)
    opt.param_groups[0]["lr"] = 0.25
    step()
    assert np.array_equal(w.detach().numpy(), np.full(3, 0.5, np.float32))  # 1 - 0.25 * 2
    assert len(step.history) == n
    assert "opt.param_groups[0].lr" in step.ir("traced")


def test_zero_grad_set_to_none_false_equals_eager():
    def build():
        model = MLP()
        return model, tracejit.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    cf, eager, compiled = run_differential(
        build, lambda m, o: make_train_step(m, o, F.mse_loss, set_to_none=False), batches(4, (6, 8), (6, 4)))
    check_equal(eager, compiled)
    assert compiled[1]["grad fc1.weight"] is not None


def test_gradient_accumulation_two_backward_calls_in_one_step():
    def make_step(model, opt):
        def step(x1, y1, x2, y2):
            opt.zero_grad()
            loss1 = F.mse_loss(model(x1), y1)
            loss1.backward()
            loss2 = F.mse_loss(model(x2), y2)
            loss2.backward()
            opt.step()
            return loss1, loss2
        return step

    def build():
        model = MLP()
        return model, tracejit.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    data = batches(6, (6, 8), (6, 4))
    pairs = [data[i] + data[i + 1] for i in range(0, 6, 2)]
    cf, eager, compiled = run_differential(build, make_step, pairs)
    check_equal(eager, compiled)
    # the accumulated grad is the sum of both backward passes, not the last one
    tracejit.manual_seed(0)
    m1 = MLP()
    F.mse_loss(m1(pairs[0][0]), pairs[0][1]).backward()
    g1 = m1.fc1.weight.grad.numpy().copy()
    F.mse_loss(m1(pairs[0][2]), pairs[0][3]).backward()
    assert not np.array_equal(g1, m1.fc1.weight.grad.numpy())


def test_interleaved_train_and_eval_functions_share_the_model_state():
    def build():
        model = BNDropCNN()
        return model, tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def make(model, opt):
        def evaluate(x):
            with tracejit.no_grad():
                return model(x)
        return make_train_step(model, opt, F.cross_entropy), evaluate

    (m_e, o_e), (m_c, o_c) = twin(build)
    train_e, eval_e = make(m_e, o_e)
    train_c, eval_c = (compile_ref(f) for f in make(m_c, o_c))
    data = batches(4, (4, 3, 8, 8), "class", n_classes=3)
    results = []
    for model, train, evaluate in ((m_e, train_e, eval_e), (m_c, train_c, eval_c)):
        tracejit.manual_seed(1)
        outs = []
        for x, y in data:
            model.train()
            outs.append(train(x, y))
            model.eval()
            outs.append(evaluate(x))
        model.train()
        results.append(outs)
    assert_same_values(*results)
    assert_same_state(snapshot(m_e, o_e), snapshot(m_c, o_c))
    assert len(train_c.history) == 1 and len(eval_c.history) == 1


def test_gradient_accumulation_across_compiled_calls_with_eager_step():
    """Compiled forward+backward only; optimizer step and zero_grad eagerly every second call."""
    def build():
        model = MLP()
        return model, tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def make(model):
        def forward_backward(x, y):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss
        return forward_backward

    (m_e, o_e), (m_c, o_c) = twin(build)
    data = batches(6, (6, 8), (6, 4))
    losses = []
    for model, opt, fb in ((m_e, o_e, make(m_e)), (m_c, o_c, compile_ref(make(m_c)))):
        out = []
        for i, (x, y) in enumerate(data):
            out.append(fb(x, y))
            if i % 2 == 1:
                opt.step()
                model.zero_grad()
        losses.append(out)
    assert_same_values(*losses)
    assert_same_state(snapshot(m_e, o_e), snapshot(m_c, o_c))


def test_explicit_generator_state_is_graph_state():
    def make(gen):
        def noisy(x):
            return x * tracejit.rand(3, generator=gen)
        return noisy

    g_e, g_c = tracejit.Generator().manual_seed(3), tracejit.Generator().manual_seed(3)
    f_e, f_c = make(g_e), compile_ref(make(g_c))
    x = tracejit.ones(3)
    outs_e = [f_e(x) for _ in range(3)]
    outs_c = [f_c(x) for _ in range(3)]
    assert_same_values(outs_e, outs_c)
    assert not np.array_equal(outs_c[0].numpy(), outs_c[1].numpy())
    assert np.array_equal(g_e.state.numpy(), g_c.state.numpy()) and g_c.state.numpy()[1] == 9
    assert "{state: gen}" in f_c.ir("traced") and len(f_c.history) == 1


def test_inference_under_no_grad_compiles_and_equals_eager():
    tracejit.manual_seed(0)
    model = LeNet()
    (x, _), = batches(1, (2, 3, 32, 32), "class")

    def infer(x):
        with tracejit.no_grad():
            return F.softmax(model(x), dim=1)

    cf = compile_ref(infer)
    before = snapshot(model)
    outs = [cf(x) for _ in range(2)]
    assert len(cf.history) == 1 and cf.eager_calls == 0
    assert_same_values(outs, [infer(x), infer(x)])
    assert not outs[0].requires_grad
    assert_same_state(before, snapshot(model))
    assert "conv2d" in cf.ir() and "conv2d_grad" not in cf.ir("traced")


def test_inference_called_under_no_grad_and_eval_mode():
    tracejit.manual_seed(0)
    model = BNDropCNN()
    model.eval()
    cf = compile_ref(lambda x: model(x))
    (x, _), = batches(1, (4, 3, 8, 8), "class")
    before = snapshot(model)
    with tracejit.no_grad():
        out_c = cf(x)
        out_e = model(x)
    assert_same_values([out_c], [out_e])
    assert_same_state(before, snapshot(model))  # eval mode: running stats and RNG untouched
    assert "uniform" not in cf.ir("traced")


def test_plain_function_of_tensors_compiles():
    def f(x, y):
        return (x @ y).relu().sum(dim=1), x.exp() - y.t()

    cf = compile_ref(f)
    rng = np.random.default_rng(0)
    x = tracejit.tensor(rng.standard_normal((3, 3)).astype(np.float32))
    y = tracejit.tensor(rng.standard_normal((3, 3)).astype(np.float32))
    out = cf(x, y)
    assert isinstance(out, tuple) and len(out) == 2
    assert_same_values(out, f(x, y))
    assert cf.eager_calls == 0 and len(cf.history) == 1
    g = cf.history[0].traced
    verify(g)
    assert [m for m in (g.input_meta[v.id] for v in g.inputs)] == [{"arg": "x"}, {"arg": "y"}]
    assert g.writes() == []


def test_returned_structure_is_preserved():
    def f(x):
        return {"double": x * 2.0, "pair": [x + 1.0, (x - 1.0, 3)], "none": None}

    cf = compile_ref(f)
    x = tracejit.arange(4).to(tracejit.float32)
    out = cf(x)
    assert set(out) == {"double", "pair", "none"} and out["none"] is None
    assert isinstance(out["pair"], list) and isinstance(out["pair"][1], tuple) and out["pair"][1][1] == 3
    assert np.array_equal(out["pair"][1][0].numpy(), x.numpy() - 1)


def test_compiled_loss_is_a_plain_tensor_and_grads_are_tensors():
    tracejit.manual_seed(0)
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
    step = compile_ref(make_train_step(model, opt, F.mse_loss))
    (x, y), = batches(1, (6, 8), (6, 4))
    loss = step(x, y)
    assert isinstance(loss, tracejit.Tensor) and loss.shape == () and loss.dtype is tracejit.float32
    assert isinstance(model.fc1.weight.grad, tracejit.Tensor)
    assert model.fc1.weight.grad.shape == model.fc1.weight.shape
    # the live parameter objects are the same ones, updated in place (their identity is what's captured)
    assert model.fc1.weight is opt.param_groups[0]["params"][0]


def test_tracing_leaves_no_trace_on_user_objects():
    """explain() traces without running: parameters, grads, optimizer state and RNG are untouched."""
    tracejit.manual_seed(0)
    model = BNDropCNN()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
    step = compile_ref(make_train_step(model, opt, F.cross_entropy))
    (x, y), = batches(1, (4, 3, 8, 8), "class", n_classes=3)
    before = snapshot(model, opt)
    tracejit.explain(step, x, y)
    assert_same_state(before, snapshot(model, opt))
    assert len(step.history) == 1
    for p in model.parameters():
        assert isinstance(p._box.value, np.ndarray)


def test_every_stage_of_a_traced_step_verifies_and_runs_to_the_same_values(lenet_setup):
    """Each stage graph (traced, after every pass) interpreted on the same inputs gives identical outputs."""
    from tracejit.compiler.backends.reference import run_graph

    model, opt, step, data = lenet_setup
    cf = compile_ref(step)
    cf(*data[0])
    cf(*data[1])
    v = cf.history[-1]
    arrays = [np.array(b.read(data[2]), copy=True) for b in v.bindings]
    traced_inputs = {id(x): a for x, a in zip(v.graph.inputs, arrays)}
    stage_outputs = []
    for name, g in v.stage_graphs:
        verify(g)
        # every stage keeps the same input values (passes never reorder or drop inputs)
        ins = [traced_inputs.get(id(x)) for x in g.inputs]
        if any(a is None for a in ins):
            continue
        stage_outputs.append((name, run_graph(g, ins)))
    assert len(stage_outputs) >= 2
    first_name, first = stage_outputs[0]
    for name, outs in stage_outputs[1:]:
        assert len(outs) == len(first)
        for a, b in zip(first, outs):
            assert np.array_equal(a, b), f"stage {name} differs from {first_name}"
