"""Differential tests: small training programs in the style of the PyTorch tutorials, run N steps eagerly and
N steps compiled from identical initial states and seeds; parameters, grads, optimizer state, buffers, the
RNG state and the losses must agree (float32 tolerance).

Each program is a `build()` returning a `World` (its step function, what to snapshot, the arguments of
call i, what the training loop does between calls). The same program is built twice, once per mode.
Programs whose Python code cannot be replayed (Python's `random`, a scheduler stepped inside the step, a
counter, a callback) check the documented behaviour: an error naming the user's line (and an eager run,
equal to eager, with fallback="eager"), or code that runs at trace time only, as the README says.
"""

from __future__ import annotations

import inspect
import os
import random
import warnings

import numpy as np
import pytest

import tracejit
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler.api import FallbackWarning
from tracejit.compiler.watch import SideEffectWarning
from tracejit.errors import TraceError

from .conftest import MLP, BNDropCNN, batches, snapshot

N = 4  # steps per run: 1 eager (lazily created optimizer state) + a trace + replays


class World:
    """One independently built copy of a program."""

    def __init__(self, step, models=(), opts=(), args=None, between=None, extra=()):
        self.step = step
        self.models, self.opts = list(models), list(opts)
        self.args = args  # i -> tuple of arguments of call i
        self.between = between  # i -> None, run after call i (the training loop's own code)
        self.extra = extra  # () -> list of tensors to compare too

    def snapshot(self):
        snap = {}
        for k, m in enumerate(self.models):
            snap.update({f"model{k} {n}": v for n, v in snapshot(m, rng=False).items()})
        for k, o in enumerate(self.opts):
            snap.update({f"opt{k} {n}": v for n, v in snapshot(opt=o, rng=False).items()})
        snap["rng"] = tracejit.default_generator.state.numpy().copy()
        for i, t in enumerate(self.extra() if self.extra else ()):
            snap[f"extra {i}"] = t.detach().numpy().copy()
        return snap


def _value(out):
    if isinstance(out, tracejit.Tensor):
        return out.detach().numpy().copy()
    if isinstance(out, (tuple, list)):
        return [_value(x) for x in out]
    return out


def _seed(seed=0):
    tracejit.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def run(build, compiled, n=N, backend="reference", **kw):
    """Build the program afresh (seeded), run n steps; (outputs, final snapshot, step function)."""
    _seed()
    world = build()
    step = tracejit.compile(world.step, backend=backend, **kw) if compiled else world.step
    outs = []
    for i in range(n):
        outs.append(_value(step(*world.args(i))))
        if world.between is not None:
            world.between(i)
    return outs, world.snapshot(), step


def assert_close(a, b, what):
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{what}[{i}]")
        return
    if a is None or b is None:
        assert a is None and b is None, f"{what}: {a!r} vs {b!r}"
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    if a.dtype.kind in "fc":
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=what)
    else:
        assert np.array_equal(a, b), f"{what}: {a} vs {b}"


def assert_same_run(eager, compiled):
    (out_e, snap_e, _), (out_c, snap_c, _) = eager, compiled
    assert_close(out_e, out_c, "returned values")
    assert snap_e.keys() == snap_c.keys(), sorted(snap_e.keys() ^ snap_c.keys())
    for k in snap_e:
        assert_close(snap_e[k], snap_c[k], k)


def line_of(fn, marker: str) -> str:
    lines, first = inspect.getsourcelines(fn)
    for i, text in enumerate(lines):
        if marker in text:
            return f"{os.path.abspath(inspect.getsourcefile(fn))}:{first + i}"
    raise AssertionError(f"{marker!r} not in {fn.__name__}")


def _data(n=N, x_shape=(6, 8), y=(6, 4), seed=0):
    return batches(n, x_shape, y, seed=seed)


def _standard(model, opt, loss_fn=F.mse_loss, data=None, between=None, extra=()):
    data = data or _data()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return World(step, [model], [opt], lambda i: data[i % len(data)], between, extra)


# --------------------------------------------------------------------------------------------- the corpus

def prog_sgd_plain():
    model = MLP()
    return _standard(model, tracejit.optim.SGD(model.parameters(), lr=0.1))


def prog_sgd_momentum_nesterov_weight_decay():
    model = MLP()
    return _standard(model, tracejit.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                               weight_decay=1e-2))


def prog_sgd_momentum_dampening_zero_grad_keep():
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.05, momentum=0.8, dampening=0.1)
    data = _data()

    def step(x, y):
        opt.zero_grad(set_to_none=False)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return World(step, [model], [opt], lambda i: data[i])


def prog_adam():
    model = MLP()
    return _standard(model, tracejit.optim.Adam(model.parameters(), lr=0.01))


def prog_adam_amsgrad_weight_decay():
    model = MLP()
    return _standard(model, tracejit.optim.Adam(model.parameters(), lr=0.01, amsgrad=True, weight_decay=0.1))


def prog_adamw_param_groups():
    model = MLP()
    opt = tracejit.optim.AdamW([{"params": model.fc1.parameters(), "lr": 0.02},
                                {"params": model.fc2.parameters(), "weight_decay": 0.5}], lr=0.01)
    return _standard(model, opt)


def prog_classification_cross_entropy():
    model = MLP(8, 16, 5)
    return _standard(model, tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.5), F.cross_entropy,
                     batches(N, (6, 8), "class", n_classes=5))


def prog_optimizer_as_attribute_of_an_object():
    class Trainer:
        def __init__(self):
            self.model = MLP()
            self.opt = tracejit.optim.Adam(self.model.parameters(), lr=0.01)

        def step(self, x, y):
            self.opt.zero_grad()
            loss = F.mse_loss(self.model(x), y)
            loss.backward()
            self.opt.step()
            return loss

    t, data = Trainer(), _data()
    return World(t.step, [t.model], [t.opt], lambda i: data[i])


class FFLayer(nn.Linear):
    """The forward-forward example's layer: it owns its optimizer."""

    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out)
        self.relu = nn.ReLU()
        self.opt = tracejit.optim.Adam(self.parameters(), lr=0.03)
        self.threshold = 2.0

    def forward(self, x):
        x = x / ((x * x).sum(1, keepdim=True).sqrt() + 1e-4)
        return self.relu(super().forward(x))


def ff_train_step(layer, x_pos, x_neg):
    g_pos = layer(x_pos).pow(2).mean(1)
    g_neg = layer(x_neg).pow(2).mean(1)
    loss = F.softplus(tracejit.cat([-g_pos + layer.threshold, g_neg - layer.threshold])).mean()
    layer.opt.zero_grad()
    loss.backward()
    layer.opt.step()
    return loss


def prog_optimizer_as_attribute_of_an_argument():
    """Forward-forward: the step reaches `layer.opt` through its argument; two layers, one compiled step."""
    layers = [FFLayer(8, 6), FFLayer(6, 6)]
    data = _data(N, (5, 8), (5, 8))

    def args(i):
        x_pos, x_neg = data[i]
        if i % 2:  # the second layer learns on the first one's outputs
            with tracejit.no_grad():
                x_pos, x_neg = layers[0](x_pos), layers[0](x_neg)
        return layers[i % 2], x_pos, x_neg

    return World(ff_train_step, layers, [lay.opt for lay in layers], args)


def prog_optimizers_in_a_list_and_a_dict():
    enc, dec = MLP(8, 6, 5), MLP(5, 6, 4)
    opts = [tracejit.optim.Adam(enc.parameters(), lr=0.01)]
    table = {"dec": tracejit.optim.SGD(dec.parameters(), lr=0.05, momentum=0.9)}
    data = _data()

    def step(x, y):
        for o in opts + list(table.values()):
            o.zero_grad()
        loss = F.mse_loss(dec(F.relu(enc(x))), y)
        loss.backward()
        opts[0].step()
        table["dec"].step()
        return loss

    return World(step, [enc, dec], [opts[0], table["dec"]], lambda i: data[i])


def prog_optimizer_in_a_config_dict_argument():
    model = MLP()
    cfg = {"model": model, "opt": tracejit.optim.Adam(model.parameters(), lr=0.02), "loss": F.mse_loss}
    data = _data()

    def step(c, x, y):
        c["opt"].zero_grad()
        loss = c["loss"](c["model"](x), y)
        loss.backward()
        c["opt"].step()
        return loss

    class Box:  # hashable (by identity) holder: dicts cannot be compiled-function arguments
        def __init__(self, d):
            self.d = d

        def __getitem__(self, k):
            return self.d[k]

    box = Box(cfg)
    return World(step, [model], [cfg["opt"]], lambda i: (box, *data[i]))


def _helper_backward(loss, opt):
    opt.zero_grad()
    loss.backward()
    opt.step()


def prog_step_through_a_helper_function():
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    data = _data()

    def step(x, y):
        loss = F.mse_loss(model(x), y)
        _helper_backward(loss, opt)
        return loss

    return World(step, [model], [opt], lambda i: data[i])


def _make_model_and_step():
    """A factory: the model and optimizer exist only in the closure of the returned step."""
    model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 4))
    opt = tracejit.optim.AdamW(model.parameters(), lr=0.01)

    def step(x, y):
        opt.zero_grad()
        loss = F.l1_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, opt, step


def prog_model_created_in_a_factory():
    model, opt, step = _make_model_and_step()
    data = _data()
    return World(step, [model], [opt], lambda i: data[i])


def prog_step_lr_scheduler_outside_the_step():
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = tracejit.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    return _standard(model, opt, between=lambda i: sched.step())


def prog_cosine_scheduler_and_adam():
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.05)
    sched = tracejit.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    return _standard(model, opt, between=lambda i: sched.step())


def prog_batchnorm_train_eval_switching():
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 4))
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)

    def between(i):
        model.train(i % 3 != 0)  # train, eval, train, train, eval, ...: two variants, re-used

    return _standard(model, opt, data=_data(6), between=between)


def prog_dropout_and_batchnorm_cnn():
    model = BNDropCNN(p=0.3)
    opt = tracejit.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = batches(N, (2, 3, 8, 8), "class", n_classes=3)
    return _standard(model, opt, F.cross_entropy, data)


def prog_dropout_functional_with_explicit_generator():
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    gen = tracejit.Generator().manual_seed(7)
    data = _data()

    def step(x, y):
        opt.zero_grad()
        noise = tracejit.rand(x.shape, generator=gen)
        loss = F.mse_loss(F.dropout(model(x + noise), 0.25), y)
        loss.backward()
        opt.step()
        return loss

    return World(step, [model], [opt], lambda i: data[i], extra=lambda: [gen.state])


def prog_callback_with_tensor_ops_between_backward_and_step():
    """A callback that works on gradients with tensor operations (traced: runs on every call)."""
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
    data = _data()

    def scale_grads(m):
        total = sum((p.grad * p.grad).sum() for p in m.parameters())
        factor = 1.0 / (total.sqrt() + 1.0)
        for p in m.parameters():
            p.grad.mul_(factor)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        scale_grads(model)
        opt.step()
        return loss

    return World(step, [model], [opt], lambda i: data[i])


def prog_gradient_accumulation_two_batches():
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    data = _data(2 * N)

    def step(x1, y1, x2, y2):
        opt.zero_grad()
        for x, y in ((x1, y1), (x2, y2)):
            (F.mse_loss(model(x), y) / 2).backward()
        opt.step()

    return World(step, [model], [opt], lambda i: (*data[2 * i], *data[2 * i + 1]))


SCALE = 1.0


def prog_global_scalar_read_by_the_step():
    """A global number the step reads, changed by the loop: guarded (retraces), so equal to eager."""
    global SCALE
    SCALE = 1.0
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
    data = _data()

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x) * SCALE, y)
        loss.backward()
        opt.step()
        return loss

    def between(i):
        global SCALE
        SCALE = 1.0 if i < 1 else 0.5

    return World(step, [model], [opt], lambda i: data[i], between)


def prog_python_int_argument_picks_the_depth():
    """The dynamic_net tutorial done the traceable way: the depth is drawn outside and passed in."""
    model = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
    opt = tracejit.optim.SGD(model.parameters(), lr=0.05)
    data = _data(N, (5, 4), (5, 4))
    depths = [1, 3, 1, 2]

    def step(x, y, depth):
        opt.zero_grad()
        for layer in model[:depth]:
            x = F.relu(layer(x))
        loss = F.mse_loss(x, y)
        loss.backward()
        opt.step()
        return loss

    return World(step, [model], [opt], lambda i: (*data[i], depths[i]))


def prog_submodule_replaced_between_calls():
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
    data = _data()

    def between(i):
        if i == 1:  # a new head the optimizer does not know: not stepped, its grads accumulate
            model.fc2 = nn.Linear(16, 4)

    return World(_standard(model, opt).step, [model], [opt], lambda i: data[i], between)


def prog_optimizer_attribute_replaced_between_calls():
    layer = FFLayer(8, 6)
    data = _data(N, (5, 8), (5, 8))

    def between(i):
        if i == 1:
            layer.opt = tracejit.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)

    return World(ff_train_step, [layer], [], lambda i: (layer, *data[i]), between,
                 extra=lambda: [t for st in layer.opt.state.values() for t in st.values()])


def prog_global_model_reassigned_between_calls():
    g = {}
    data = _data()

    def build_pair():
        g["model"] = MLP()
        g["opt"] = tracejit.optim.SGD(g["model"].parameters(), lr=0.1)

    build_pair()
    first = g["model"]

    def step(x, y):
        g["opt"].zero_grad()
        loss = F.mse_loss(g["model"](x), y)
        loss.backward()
        g["opt"].step()
        return loss

    def between(i):
        if i == 1:
            build_pair()

    return World(step, [first], [], lambda i: data[i], between,
                 extra=lambda: [p for p in g["model"].parameters()])


PROGRAMS = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("prog_")}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_compiled_program_equals_eager(name):
    build = PROGRAMS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no side-effect warning: these programs compile
        compiled = run(build, True)
    assert_same_run(run(build, False), compiled)
    step = compiled[2]
    assert step.history, f"{name} never compiled: {step.log}"
    assert len(step.history) <= 3, step.log


CPU_PROGRAMS = ["adam", "dropout_and_batchnorm_cnn", "sgd_momentum_nesterov_weight_decay"]


@pytest.mark.parametrize("name", CPU_PROGRAMS)
def test_compiled_program_equals_eager_on_the_cpu_backend(name):
    build = PROGRAMS[name]
    assert_same_run(run(build, False), run(build, True, backend="cpu"))


def test_argument_attribute_optimizer_state_is_created_eagerly_then_traced():
    """The forward-forward drift: Adam's state created lazily on the first call through `layer.opt`."""
    _, _, step = run(prog_optimizer_as_attribute_of_an_argument, True)
    assert sum("creates state" in line for line in step.log) == 2, step.log  # one eager call per layer
    assert any("layer.opt.state[layer.weight].exp_avg" in line for line in step.log), step.log
    assert len(step.history) == 2  # one variant per layer (the argument's identity is part of the key)


def test_guard_reasons_name_what_changed():
    _, _, step = run(prog_global_scalar_read_by_the_step, True)
    assert any("global 'SCALE' changed from 1.0 to 0.5" in line for line in step.log), step.log
    _, _, step = run(prog_submodule_replaced_between_calls, True)
    assert any("submodule of MLP was replaced" in line for line in step.log), step.log
    _, _, step = run(prog_optimizer_attribute_replaced_between_calls, True)
    assert any("now refers to another object" in line and "opt" in line for line in step.log), step.log
    _, _, step = run(prog_global_model_reassigned_between_calls, True)
    assert any("another object" in line for line in step.log), step.log


# --------------------------------------------------------------------------------- documented behaviours

class DynamicNet(nn.Module):
    """PyTorch's dynamic_net tutorial: the forward pass picks its depth with Python's random module."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.e = (nn.Parameter(tracejit.randn(())) for _ in range(3))

    def forward(self, x):
        y = self.a + self.b * x
        for exp in range(4, random.randint(4, 6)):  # the draw
            y = y + self.e * x ** exp
        return y


def prog_dynamic_depth_with_python_random():
    model = DynamicNet()
    opt = tracejit.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = tracejit.linspace(-1, 1, 16)
    y = x * 0.5 + 0.1
    return World(_standard(model, opt).step, [model], [opt], lambda i: (x, y))


def test_python_random_in_the_forward_is_an_error_naming_the_line():
    with pytest.raises(TraceError) as e:
        run(prog_dynamic_depth_with_python_random, True)
    msg = str(e.value)
    assert "random.randint()" in msg and line_of(DynamicNet.forward, "# the draw") in msg
    assert "tracejit.rand" in msg and "argument" in msg


def test_python_random_with_fallback_runs_eagerly_and_equals_eager():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        compiled = run(prog_dynamic_depth_with_python_random, True, n=6, fallback="eager")
    assert_same_run(run(prog_dynamic_depth_with_python_random, False, n=6), compiled)
    falls = [x for x in w if issubclass(x.category, FallbackWarning)]
    assert len(falls) == 1 and "random.randint()" in str(falls[0].message)
    assert not compiled[2].history


def prog_numpy_global_noise():
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
    data = _data()

    def step(x, y):
        opt.zero_grad()
        noise = tracejit.from_numpy(np.random.randn(*x.shape).astype(np.float32))  # the draw
        loss = F.mse_loss(model(x + noise), y)
        loss.backward()
        opt.step()
        return loss

    return World(step, [model], [opt], lambda i: data[i])


def test_numpy_global_rng_is_an_error_and_fallback_equals_eager():
    with pytest.raises(TraceError, match=r"numpy\.random\.randn\(\) at .*test_differential\.py:\d+"):
        run(prog_numpy_global_noise, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        compiled = run(prog_numpy_global_noise, True, fallback="eager")
    assert_same_run(run(prog_numpy_global_noise, False), compiled)


def prog_scheduler_stepped_inside_the_step():
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
    sched = tracejit.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    data = _data()

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()  # inside
        return loss

    return World(step, [model], [opt], lambda i: data[i], extra=lambda: [opt.param_groups[0].tensor("lr")])


def test_scheduler_inside_the_step_is_an_error_and_fallback_equals_eager():
    with pytest.raises(TraceError, match="StepLR.step()") as e:
        run(prog_scheduler_stepped_inside_the_step, True)
    assert line_of(prog_scheduler_stepped_inside_the_step, "# inside") in str(e.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        compiled = run(prog_scheduler_stepped_inside_the_step, True, fallback="eager")
    assert_same_run(run(prog_scheduler_stepped_inside_the_step, False), compiled)


COUNTER = 0


def prog_step_counting_in_a_global():
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    data = _data()

    def step(x, y):
        global COUNTER
        COUNTER += 1  # the count
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return World(step, [model], [opt], lambda i: data[i])


def test_global_counter_runs_at_trace_time_only_with_a_warning():
    global COUNTER
    COUNTER = 0
    eager = run(prog_step_counting_in_a_global, False)
    assert COUNTER == N
    COUNTER = 0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        compiled = run(prog_step_counting_in_a_global, True)
    assert_same_run(eager, compiled)  # the tensors agree ...
    # ... the counter does not: the eager first call (Adam creates its state) and the trace ran it
    assert COUNTER == 2
    side = [x for x in w if issubclass(x.category, SideEffectWarning)]
    assert len(side) == 1 and "'COUNTER'" in str(side[0].message)
    assert side[0].filename == __file__  # attributed to the caller of the compiled step (run() here)
    assert line_of(prog_step_counting_in_a_global, "# the count") in str(side[0].message)
    assert any("run only while it is traced" in line for line in compiled[2].log)


def test_python_callback_between_backward_and_step_runs_at_trace_time_only():
    """The third call's planned raise never happens compiled: documented, and said in the log."""
    calls = []

    def callback(loss):
        calls.append(len(calls))
        if len(calls) == 3:
            raise RuntimeError("third call")

    def build():
        model = MLP()
        opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
        data = _data()

        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            callback(loss)
            opt.step()
            return loss

        return World(step, [model], [opt], lambda i: data[i])

    with pytest.raises(RuntimeError, match="third call"):
        run(build, False)
    calls.clear()
    out = run(build, True)
    assert calls == [0]  # SGD without momentum creates no state: the first call is the trace
    assert any("run only while it is traced" in line and "callbacks" in line for line in out[2].log)
    calls.clear()
    eager = run(build, False, n=2)
    calls.clear()
    assert_same_run(eager, run(build, True, n=2))


def prog_losses_kept_in_a_list():
    model = MLP()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    data = _data()
    losses = []

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        return loss

    return World(step, [model], [opt], lambda i: data[i], extra=lambda: list(losses))


def test_a_tensor_kept_in_a_list_is_an_error_and_fallback_equals_eager():
    with pytest.raises(TraceError, match=r"keeps a tensor it computed in losses\[1\]"):
        run(prog_losses_kept_in_a_list, True, n=2)  # call 1 eager (Adam state), call 2 traced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        compiled = run(prog_losses_kept_in_a_list, True, fallback="eager")
    assert_same_run(run(prog_losses_kept_in_a_list, False), compiled)  # as many losses, the same values


def test_print_and_time_in_a_step_are_listed_in_the_note(capsys):
    import time

    x = tracejit.ones(3)

    def f(x):
        print("tracing")
        time.time()
        return x * 2

    cf = tracejit.compile(f, backend="reference")
    for _ in range(3):
        cf(x)
    assert capsys.readouterr().out == "tracing\n"
    note = next(line for line in cf.log if "run only while it is traced" in line)
    assert "print() at" in note and "time.time() at" in note


def test_seeded_generator_made_inside_the_step_is_allowed():
    """Same draws on every call, eager or compiled: not an error."""
    x = tracejit.ones(3)

    def f(x):
        r = np.random.default_rng(0)
        p = random.Random(0)
        return x * float(r.standard_normal()) + p.random()

    cf = tracejit.compile(f, backend="reference")
    assert np.allclose(cf(x).numpy(), f(x).numpy())
    assert np.allclose(cf(x).numpy(), f(x).numpy())
    assert len(cf.history) == 1


def test_module_level_generator_object_is_an_error():
    rng = np.random.default_rng(0)
    py = random.Random(0)
    x = tracejit.ones(3)

    def f(x):
        return x * float(rng.standard_normal())

    with pytest.raises(TraceError, match=r"rng\.standard_normal\(\) at .*draws from the NumPy generator rng"):
        tracejit.compile(f, backend="reference")(x)
    state = py.getstate()

    def g(x):
        return x * py.random()

    with pytest.raises(TraceError, match=r"Random\.random\(\) at "):
        tracejit.compile(g, backend="reference")(x)
    assert py.getstate() == state  # the draw was refused before it happened


def test_under_another_profiler_detection_falls_back_to_state_comparison():
    """With sys.setprofile taken (a profiler), no hook: draws are found by comparing generator states and
    the line in the code; state is still found by the walk (layer.opt as an argument's attribute)."""
    import sys

    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(event) if len(calls) < 1 else None)
    try:
        with pytest.raises(TraceError) as e:
            run(prog_dynamic_depth_with_python_random, True)
        compiled = run(prog_optimizer_as_attribute_of_an_argument, True)
    finally:
        sys.setprofile(None)
    assert "random.randint()" in str(e.value) and line_of(DynamicNet.forward, "# the draw") in str(e.value)
    assert_same_run(run(prog_optimizer_as_attribute_of_an_argument, False), compiled)


def test_numpy_draws_by_another_thread_during_a_trace_are_not_blamed_on_the_step():
    import threading

    x = tracejit.ones(3)

    def draw():
        np.random.rand(3)

    def f(x):  # stands for any other thread drawing while this one traces
        t = threading.Thread(target=draw)
        t.start()
        t.join()
        return x * 2

    cf = tracejit.compile(f, backend="reference")
    assert np.array_equal(cf(x).numpy(), [2, 2, 2])
