"""RMSprop, Adadelta, Adagrad, LBFGS and the schedulers of issue 13, against torch.optim (the `ref` extra):
same updates, state and state_dict layout, errors; PyTorch checkpoints load; compiled steps equal eager and
never retrace while a scheduler changes the lr and the momentum."""

import os

os.environ.setdefault("TRACEJIT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".tracejit_cache", "tests"))

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tracejit as tj  # noqa: E402
import tracejit.nn as nn  # noqa: E402
import tracejit.nn.functional as F  # noqa: E402
from tracejit.errors import TraceError  # noqa: E402
from tracejit.optim import LBFGS, SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop, lr_scheduler  # noqa: E402

try:
    import torch
except ImportError:  # the comparisons with torch.optim are skipped; the rest runs
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch (the `ref` extra) not installed")

STEPS = 6
f32 = np.float32


def _problem(seed=0, shapes=((3, 4), (5,))):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(f32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(f32) for s in shapes] for _ in range(STEPS)]
    return init, grads


def _steps(lib, params, opt, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = lib.tensor(g)
        opt.step()


def _pair(name, cfg, init):
    ours = [tj.tensor(a, requires_grad=True) for a in init]
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    return ours, getattr(tj.optim, name)(ours, **cfg), theirs, getattr(torch.optim, name)(theirs, **cfg)


def _assert_same(ours, opt, theirs, topt, rtol=1e-5, atol=1e-6):
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=rtol, atol=atol)
        assert set(opt.state[p]) == set(topt.state[tp])
        for key, value in topt.state[tp].items():
            np.testing.assert_allclose(opt.state[p][key].numpy(), value.numpy(), rtol=rtol, atol=atol, err_msg=key)
            assert opt.state[p][key].shape == tuple(value.shape), key


CONFIGS = [
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.02, alpha=0.9, eps=1e-6)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4)),
    ("Adadelta", dict(weight_decay=0.1, maximize=True)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05)),
    ("Adagrad", dict(lr=0.05, weight_decay=0.1, initial_accumulator_value=0.5, eps=1e-6)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, maximize=True)),
]


def _id(c):
    return c[0] + ":" + ",".join(f"{k}={v}" for k, v in c[1].items())


# ------------------------------------------------------------------------------------------- updates and state

@needs_torch
@pytest.mark.parametrize("name,cfg", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_matches_torch(name, cfg):
    init, grads = _problem(1)
    ours, opt, theirs, topt = _pair(name, cfg, init)
    _steps(tj, ours, opt, grads)
    _steps(torch, theirs, topt, grads)
    _assert_same(ours, opt, theirs, topt)
    assert set(opt.param_groups[0]) == set(topt.param_groups[0])  # same hyperparameter keys
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert set(sd["state"][0]) == set(tsd["state"][0])
    assert opt.state[ours[0]]["step"].item() == STEPS and opt.state[ours[0]]["step"].dtype is tj.float32


@needs_torch
@pytest.mark.parametrize("name", ["RMSprop", "Adadelta", "Adagrad"])
def test_defaults_match_torch(name):
    opt = getattr(tj.optim, name)([tj.zeros(2, requires_grad=True)])
    topt = getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)])
    assert opt.defaults == topt.defaults
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == \
        {k: v for k, v in topt.param_groups[0].items() if k != "params"}


BAD_ARGS = [
    ("RMSprop", dict(lr=-1)), ("RMSprop", dict(eps=-1.0)), ("RMSprop", dict(momentum=-0.5)),
    ("RMSprop", dict(weight_decay=-1e-3)), ("RMSprop", dict(alpha=-0.1)),
    ("Adadelta", dict(lr=-1)), ("Adadelta", dict(rho=1.5)), ("Adadelta", dict(eps=-1.0)),
    ("Adadelta", dict(weight_decay=-1.0)),
    ("Adagrad", dict(lr=-1)), ("Adagrad", dict(lr_decay=-1.0)), ("Adagrad", dict(weight_decay=-1.0)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)), ("Adagrad", dict(eps=-1.0)),
    ("Adagrad", dict(fused=True, foreach=True)),
    ("LBFGS", dict(lr=-1)),
]


@needs_torch
@pytest.mark.parametrize("name,cfg", BAD_ARGS, ids=[_id(c) for c in BAD_ARGS])
def test_bad_arguments_raise_torchs_error(name, cfg):
    with pytest.raises(Exception) as theirs:
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **cfg)
    with pytest.raises(type(theirs.value)) as ours:
        getattr(tj.optim, name)([tj.zeros(2, requires_grad=True)], **cfg)
    assert str(ours.value) == str(theirs.value)
    if cfg == dict(lr=-1):
        assert str(ours.value) == "Invalid learning rate: -1"


def test_adagrad_creates_its_state_when_built_as_pytorch_does():
    a, b = tj.zeros(2, requires_grad=True), tj.zeros(3, requires_grad=True)
    opt = Adagrad([a, b], initial_accumulator_value=0.25)
    assert set(opt.state_dict()["state"]) == {0, 1}
    assert opt.state[b]["sum"].numpy().tolist() == [0.25] * 3 and opt.state[b]["step"].item() == 0
    c = tj.zeros(1, requires_grad=True)
    opt.add_param_group({"params": [c]})
    c.grad = tj.ones(1)
    opt.step()  # a later group's parameter gets its state lazily, from the constructor's value
    assert opt.state[c]["sum"].item() == pytest.approx(1.25)


def test_rmsprop_momentum_switched_on_later_starts_a_zero_buffer():
    w = tj.tensor([1.0, -1.0], requires_grad=True)
    opt = RMSprop([w], lr=0.1)
    w.grad = tj.tensor([1.0, 2.0])
    opt.step()
    assert "momentum_buffer" not in opt.state[w]
    opt.param_groups[0]["momentum"] = 0.9
    opt.step()
    assert opt.state[w]["momentum_buffer"].shape == (2,)


# ------------------------------------------------------------------------------------------- state_dict

def _to_tj(x):
    if isinstance(x, torch.Tensor):
        return tj.tensor(x.detach().numpy().copy())
    if isinstance(x, dict):
        return {k: _to_tj(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_tj(v) for v in x)
    return x


def _to_torch(x):
    if isinstance(x, tj.Tensor):
        return torch.tensor(x.detach().numpy().copy())
    if isinstance(x, dict):
        return {k: _to_torch(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_torch(v) for v in x)
    return x


LOADED = [CONFIGS[4], CONFIGS[7], CONFIGS[10], CONFIGS[11]]


@needs_torch
@pytest.mark.parametrize("name,cfg", LOADED, ids=[_id(c) for c in LOADED])
def test_pytorch_state_dict_loads_and_training_continues_alike(name, cfg):
    init, grads = _problem(2)
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    topt = getattr(torch.optim, name)(theirs, **cfg)
    _steps(torch, theirs, topt, grads[:3])
    # a fresh optimizer (other lr) over parameters holding torch's values
    ours = [tj.tensor(p.detach().numpy().copy(), requires_grad=True) for p in theirs]
    opt = getattr(tj.optim, name)(ours, **{**cfg, "lr": 0.5})
    opt.load_state_dict(_to_tj(topt.state_dict()))
    assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
    assert opt.param_groups[0].tensor("lr").item() == pytest.approx(topt.param_groups[0]["lr"])
    _steps(tj, ours, opt, grads[3:])
    _steps(torch, theirs, topt, grads[3:])
    _assert_same(ours, opt, theirs, topt)
    # and back: our state_dict, as torch tensors, loads into torch.optim
    topt2 = getattr(torch.optim, name)([torch.tensor(p.detach().numpy().copy(), requires_grad=True) for p in ours],
                                       **cfg)
    topt2.load_state_dict(_to_torch(opt.state_dict()))
    for p, tp in zip(ours, topt2.param_groups[0]["params"]):
        for key, value in topt2.state[tp].items():
            np.testing.assert_array_equal(opt.state[p][key].numpy(), value.numpy())


@pytest.mark.parametrize("make", [lambda ps: RMSprop(ps, lr=0.01, momentum=0.9, centered=True),
                                  lambda ps: Adadelta(ps, weight_decay=0.01),
                                  lambda ps: Adagrad(ps, lr=0.1, lr_decay=0.01)],
                         ids=["rmsprop", "adadelta", "adagrad"])
def test_checkpoint_round_trip_continues_identically(tmp_path, make):
    init, grads = _problem(3)

    def fresh(values):
        params = [tj.tensor(a, requires_grad=True) for a in values]
        opt = make(params)
        return params, opt, lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS + 1) \
            if "momentum" in opt.defaults else lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=4)

    def run(params, opt, sched, gs):
        for step_grads in gs:
            for p, g in zip(params, step_grads):
                p.grad = tj.tensor(g)
            opt.step()
            sched.step()

    params, opt, sched = fresh(init)
    run(params, opt, sched, grads[:3])
    path = tmp_path / "ckpt.safetensors"
    tj.save({"params": [p.detach() for p in params], "optim": opt.state_dict(), "sched": sched.state_dict()}, path)
    params2, opt2, sched2 = fresh([np.zeros_like(a) for a in init])
    run(params2, opt2, sched2, grads[:1])
    before = {id(t) for p in params2 for t in opt2.state[p].values()}
    ckpt = tj.load(path)
    with tj.no_grad():
        for p, saved in zip(params2, ckpt["params"]):
            p.copy_(saved)
    opt2.load_state_dict(ckpt["optim"])
    sched2.load_state_dict(ckpt["sched"])
    assert {id(t) for p in params2 for t in opt2.state[p].values()} == before  # loaded in place
    run(params, opt, sched, grads[3:])
    run(params2, opt2, sched2, grads[3:])
    for p, p2 in zip(params, params2):
        np.testing.assert_array_equal(p.detach().numpy(), p2.detach().numpy())
    assert sched.get_last_lr() == sched2.get_last_lr()


# ------------------------------------------------------------------------------------------- LBFGS

W0 = np.array([-1.2, 1.0, -0.5, 0.8])


def _lbfgs(lib, w0, steps, **cfg):
    w = lib.tensor(w0.copy(), requires_grad=True)
    opt = (torch.optim.LBFGS if lib is torch else LBFGS)([w], **cfg)

    def closure():
        opt.zero_grad()
        x, y = w[:-1], w[1:]
        loss = ((1 - x) ** 2 + 100 * (y - x * x) ** 2).sum()  # Rosenbrock: curved, the line search works
        loss.backward()
        return loss

    losses = [float(opt.step(closure).detach()) for _ in range(steps)]
    return w, opt, closure, losses


LBFGS_CONFIGS = [dict(max_iter=5, lr=0.01), dict(max_iter=4, history_size=2, lr=0.002),
                 dict(line_search_fn="strong_wolfe", max_iter=5, lr=0.01),
                 dict(line_search_fn="strong_wolfe", history_size=3, max_iter=6, lr=0.5),
                 dict(line_search_fn="strong_wolfe", max_iter=10),
                 dict(line_search_fn="strong_wolfe", history_size=4, tolerance_change=1e-12)]


@needs_torch
@pytest.mark.parametrize("cfg", LBFGS_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_lbfgs_matches_torch(cfg):
    # float64: the line search branches on values, and float32 rounding (summation order of the dot
    # products) would flip a branch after enough iterations; in float64 the two runs take the same path
    w, opt, _, losses = _lbfgs(tj, W0, 3, **cfg)
    tw, topt, _, tlosses = _lbfgs(torch, W0, 3, **cfg)
    np.testing.assert_allclose(w.detach().numpy(), tw.detach().numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(losses, tlosses, rtol=1e-9, atol=1e-12)
    st, tst = opt.state[w], topt.state[tw]
    assert set(st) == set(tst)
    for key in ("func_evals", "n_iter"):
        assert st[key] == tst[key], key
    assert len(st["old_dirs"]) == len(tst["old_dirs"]) <= opt.param_groups[0]["history_size"]
    np.testing.assert_allclose(st["d"].numpy(), tst["d"].numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(float(st["t"]), float(tst["t"]), rtol=1e-9)


@needs_torch
def test_lbfgs_float32_first_step_matches_torch():
    w, opt, _, losses = _lbfgs(tj, W0.astype(f32), 1, max_iter=6, lr=0.01)
    tw, topt, _, tlosses = _lbfgs(torch, W0.astype(f32), 1, max_iter=6, lr=0.01)
    assert w.dtype is tj.float32
    np.testing.assert_allclose(w.detach().numpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert opt.state[w]["func_evals"] == topt.state[tw]["func_evals"]


def test_lbfgs_defaults_and_errors():
    w = tj.zeros(2, requires_grad=True)
    opt = LBFGS([w])
    g = opt.param_groups[0]
    assert (g["lr"], g["max_iter"], g["max_eval"], g["tolerance_grad"], g["tolerance_change"], g["history_size"],
            g["line_search_fn"]) == (1, 20, 25, 1e-7, 1e-9, 100, None)
    with pytest.raises(ValueError, match="doesn't support per-parameter options"):
        LBFGS([{"params": [w]}, {"params": [tj.zeros(1, requires_grad=True)]}])
    opt = LBFGS([w], line_search_fn="armijo")

    def closure():
        opt.zero_grad()
        loss = ((w - 1) ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):
        opt.step(closure)


def test_lbfgs_stops_at_once_when_the_gradient_is_zero():
    w = tj.ones(2, requires_grad=True)
    opt = LBFGS([w])

    def closure():
        opt.zero_grad()
        loss = ((w - 1) ** 2).sum()
        loss.backward()
        return loss
    assert opt.step(closure).item() == 0
    assert opt.state[w]["func_evals"] == 1 and opt.state[w]["n_iter"] == 0


@needs_torch
def test_lbfgs_state_dict_round_trip_and_pytorch_checkpoint():
    cfg = dict(line_search_fn="strong_wolfe", max_iter=3, history_size=4)
    w, opt, closure, _ = _lbfgs(tj, W0, 2, **cfg)
    tw, topt, tclosure, _ = _lbfgs(torch, W0, 2, **cfg)
    for sd in (opt.state_dict(), _to_tj(topt.state_dict())):
        w2, opt2, closure2, _ = _lbfgs(tj, W0, 0, **cfg)
        with tj.no_grad():
            w2.copy_(w.detach())
        opt2.load_state_dict(sd)
        assert opt2.state[w2]["n_iter"] == opt.state[w]["n_iter"] > 3
        assert len(opt2.state[w2]["old_dirs"]) == len(opt.state[w]["old_dirs"])
        for _ in range(2):
            opt2.step(closure2)
    for _ in range(2):
        opt.step(closure)
        topt.step(tclosure)
    np.testing.assert_allclose(w2.detach().numpy(), w.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(w.detach().numpy(), tw.detach().numpy(), rtol=1e-9)


def _lbfgs_setup():
    rng = np.random.default_rng(0)
    a = tj.tensor(rng.standard_normal((10, 3)).astype(f32))
    b = tj.tensor(rng.standard_normal(10).astype(f32))
    w = tj.zeros(3, requires_grad=True)
    opt = LBFGS([w], max_iter=5)

    def closure():
        opt.zero_grad()
        r = a @ w - b
        loss = (r * r).mean()
        loss.backward()
        return loss
    return w, opt, closure


def test_lbfgs_in_a_compiled_function_raises_a_trace_error_naming_the_reason():
    w, opt, closure = _lbfgs_setup()

    @tj.compile(backend="reference")
    def step():
        return opt.step(closure)

    with pytest.raises(TraceError, match=r"LBFGS.step\(\) cannot be compiled \(at .*test_optim13.py:\d+\).*data-"
                                         r"dependent.*fallback='eager'"):
        step()
    assert not opt.state[w] and w.detach().numpy().tolist() == [0, 0, 0]  # nothing happened

    w2, opt2, closure2 = _lbfgs_setup()
    eager = tj.compile(lambda: opt2.step(closure2), backend="reference", fallback="eager")
    with pytest.warns(UserWarning, match="runs eagerly: LBFGS.step"):
        eager()
    eager()
    w3, opt3, closure3 = _lbfgs_setup()
    opt3.step(closure3)
    opt3.step(closure3)
    np.testing.assert_array_equal(w2.detach().numpy(), w3.detach().numpy())


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_lbfgs_with_a_compiled_closure_equals_eager(backend):
    w, opt, closure = _lbfgs_setup()
    compiled = tj.compile(closure, backend=backend)
    w2, opt2, closure2 = _lbfgs_setup()
    for _ in range(3):
        opt.step(compiled)
        opt2.step(closure2)
    np.testing.assert_allclose(w.detach().numpy(), w2.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert len(compiled.history) == 1


# ------------------------------------------------------------------------------------------- schedulers

def _ours(name="SGD", groups=2, **kw):
    return getattr(tj.optim, name)([{"params": [tj.zeros(1, requires_grad=True)], "lr": 0.1 * (i + 1)}
                                    for i in range(groups)], **kw)


def _opts(name="SGD", groups=2, **kw):
    ours = _ours(name, groups, **kw)
    theirs = getattr(torch.optim, name)([{"params": [torch.zeros(1, requires_grad=True)], "lr": 0.1 * (i + 1)}
                                         for i in range(groups)], **kw)
    return ours, theirs


SCHEDULERS = [
    ("ConstantLR", dict(factor=0.5, total_iters=4), "SGD", {}),
    ("LinearLR", dict(start_factor=0.25, end_factor=0.9, total_iters=7), "SGD", {}),
    ("LinearLR", dict(), "SGD", {}),
    ("PolynomialLR", dict(total_iters=6, power=2.0), "SGD", {}),
    ("CosineAnnealingWarmRestarts", dict(T_0=3, T_mult=2, eta_min=0.001), "SGD", {}),
    ("CosineAnnealingWarmRestarts", dict(T_0=4), "SGD", {}),
    ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.95), "SGD", {}),
    ("OneCycleLR", dict(max_lr=[0.5, 1.0], total_steps=30), "SGD", dict(momentum=0.9)),
    ("OneCycleLR", dict(max_lr=0.5, total_steps=30, three_phase=True, anneal_strategy="linear"), "SGD",
     dict(momentum=0.9, nesterov=True)),
    ("OneCycleLR", dict(max_lr=0.5, epochs=3, steps_per_epoch=10, pct_start=0.25, base_momentum=0.8), "Adam", {}),
    ("OneCycleLR", dict(max_lr=0.05, total_steps=30, cycle_momentum=False), "Adagrad", {}),
    ("OneCycleLR", dict(max_lr=0.05, total_steps=30), "RMSprop", dict(momentum=0.5)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=4, mode="triangular2"), "SGD", dict(momentum=0.9)),
    ("CyclicLR", dict(base_lr=0.01, max_lr=0.1, step_size_up=3, step_size_down=5, mode="exp_range", gamma=0.9),
     "AdamW", {}),
]


@needs_torch
@pytest.mark.parametrize("name,kwargs,opt_name,opt_kwargs", SCHEDULERS,
                         ids=[f"{s[0]}-{s[2]}-{i}" for i, s in enumerate(SCHEDULERS)])
def test_schedulers_match_torch(name, kwargs, opt_name, opt_kwargs):
    ours, theirs = _opts(opt_name, **opt_kwargs)
    s = getattr(lr_scheduler, name)(ours, **kwargs)
    ts = getattr(torch.optim.lr_scheduler, name)(theirs, **kwargs)
    assert s.get_last_lr() == ts.get_last_lr()
    for _ in range(29):
        ours.step()
        theirs.step()
        s.step()
        ts.step()
        assert s.get_last_lr() == ts.get_last_lr()
        for g, tg in zip(ours.param_groups, theirs.param_groups):
            for key in ("momentum", "betas"):
                if key in tg:
                    assert tuple(np.atleast_1d(g[key])) == tuple(np.atleast_1d(tg[key])), key
            assert g.tensor("lr").item() == pytest.approx(g["lr"], rel=1e-7)
    assert s.last_epoch == ts.last_epoch
    assert set(s.state_dict()) == set(ts.state_dict())


@needs_torch
def test_one_cycle_too_many_steps_and_bad_arguments():
    ours, theirs = _opts()
    for kw, match in [(dict(max_lr=0.1), "total_steps OR"), (dict(max_lr=0.1, total_steps=0), "positive integer"),
                      (dict(max_lr=0.1, total_steps=5, pct_start=1.5), "pct_start"),
                      (dict(max_lr=0.1, total_steps=5, anneal_strategy="exp"), "anneal_strategy"),
                      (dict(max_lr=[0.1], total_steps=5), "max_lr must have the same length")]:
        with pytest.raises(ValueError) as e:
            torch.optim.lr_scheduler.OneCycleLR(theirs, **kw)
        with pytest.raises(ValueError, match=match) as f:
            lr_scheduler.OneCycleLR(ours, **kw)
        assert str(e.value) == str(f.value)
    with pytest.raises(ValueError, match="must support momentum"):
        lr_scheduler.OneCycleLR(Adadelta([tj.zeros(1, requires_grad=True)]), max_lr=0.1, total_steps=5)
    s = lr_scheduler.OneCycleLR(ours, max_lr=0.1, total_steps=3)
    for _ in range(3):
        s.step()
    with pytest.raises(ValueError, match="Tried to step 4 times. The specified number of total steps is 3"):
        s.step()


@needs_torch
@pytest.mark.parametrize("kwargs", [dict(patience=2),
                                    dict(mode="max", factor=0.5, patience=1, threshold=0.1, threshold_mode="abs",
                                         cooldown=2, min_lr=[0.01, 0.05]),
                                    dict(patience=0, eps=0.05, factor=0.5)])
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    ours, theirs = _opts()
    s = lr_scheduler.ReduceLROnPlateau(ours, **kwargs)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **kwargs)
    metrics = [1.0, 0.9, 0.95, 0.93, 0.92, 0.91, 0.95, 1.2, 1.1, 1.0, 1.0, 1.0, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9]
    for m in metrics:
        s.step(tj.tensor(m))  # a 0-d tensor (the loss) or a number
        ts.step(torch.tensor(m))
        assert s.get_last_lr() == ts.get_last_lr()
    assert (s.best, s.num_bad_epochs, s.cooldown_counter, s.last_epoch) == \
        (ts.best, ts.num_bad_epochs, ts.cooldown_counter, ts.last_epoch)
    assert set(s.state_dict()) == set(ts.state_dict())


def test_reduce_lr_on_plateau_errors():
    ours = _ours()
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        lr_scheduler.ReduceLROnPlateau(ours, factor=1.0)
    with pytest.raises(ValueError, match="mode avg is unknown!"):
        lr_scheduler.ReduceLROnPlateau(ours, mode="avg")
    with pytest.raises(ValueError, match="expected 2 min_lrs, got 1"):
        lr_scheduler.ReduceLROnPlateau(ours, min_lr=[0.1])


def _sequential(lib, o):
    L = lib.optim.lr_scheduler
    return L.SequentialLR(o, [L.LinearLR(o, start_factor=0.1, total_iters=3), L.ExponentialLR(o, gamma=0.9),
                              L.StepLR(o, 2, 0.5)], milestones=[4, 9])


def _chained(lib, o):
    L = lib.optim.lr_scheduler
    return L.ChainedScheduler([L.ConstantLR(o, factor=0.5, total_iters=3), L.ExponentialLR(o, gamma=0.9)])


@needs_torch
@pytest.mark.parametrize("build", [_sequential, _chained], ids=["sequential", "chained"])
def test_sequential_and_chained_match_torch_and_round_trip(tmp_path, build):
    ours, theirs = _opts()
    s, ts = build(tj, ours), build(torch, theirs)
    assert s.get_last_lr() == ts.get_last_lr()
    for i in range(15):
        ours.step()
        theirs.step()
        s.step()
        ts.step()
        assert s.get_last_lr() == ts.get_last_lr(), i
        if i == 6:
            tj.save(s.state_dict(), tmp_path / "s.safetensors")
            lrs = [g["lr"] for g in ours.param_groups]
    assert set(s.state_dict()) == set(ts.state_dict())
    assert [set(d) for d in s.state_dict()["_schedulers"]] == [set(d) for d in ts.state_dict()["_schedulers"]]
    ours2, _ = _opts()
    s2 = build(tj, ours2)
    s2.load_state_dict(tj.load(tmp_path / "s.safetensors"))
    for g, lr in zip(ours2.param_groups, lrs):
        g["lr"] = lr
    for _ in range(8):
        s2.step()
    assert s2.get_last_lr() == s.get_last_lr()


def test_sequential_and_chained_errors():
    ours, other = _ours(), _ours()
    L = lr_scheduler
    with pytest.raises(ValueError, match="expects at least one scheduler"):
        L.SequentialLR(ours, [], [])
    with pytest.raises(ValueError, match="number of milestones to be equal to 0"):
        L.SequentialLR(ours, [L.LinearLR(ours), L.LinearLR(ours)], [])
    with pytest.raises(ValueError, match="belong to the same optimizer"):
        L.SequentialLR(ours, [L.LinearLR(ours), L.LinearLR(other)], [2])
    with pytest.raises(ValueError, match="does not support `ReduceLROnPlateau`"):
        L.ChainedScheduler([L.ReduceLROnPlateau(ours)])


@needs_torch
def test_scheduler_argument_errors_match_torch():
    ours, theirs = _opts()
    cases = [("LinearLR", dict(start_factor=0)), ("LinearLR", dict(end_factor=2.0)), ("ConstantLR", dict(factor=2)),
             ("CosineAnnealingWarmRestarts", dict(T_0=0)), ("CosineAnnealingWarmRestarts", dict(T_0=2, T_mult=0)),
             ("CyclicLR", dict(base_lr=0.1, max_lr=1.0, mode="sine"))]
    for name, kw in cases:
        with pytest.raises(ValueError) as e:
            getattr(torch.optim.lr_scheduler, name)(theirs, **kw)
        with pytest.raises(ValueError) as f:
            getattr(lr_scheduler, name)(ours, **kw)
        assert str(f.value) == str(e.value), name


@needs_torch
def test_epoch_argument_uses_the_closed_form_and_warns():
    ours, theirs = _opts()
    s = lr_scheduler.LinearLR(ours, start_factor=0.2, total_iters=10)
    ts = torch.optim.lr_scheduler.LinearLR(theirs, start_factor=0.2, total_iters=10)
    with pytest.warns(UserWarning, match="epoch parameter"):
        s.step(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.step(6)
    assert s.get_last_lr() == ts.get_last_lr()
    w = lr_scheduler.CosineAnnealingWarmRestarts(ours, T_0=2, T_mult=2)
    tw = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(theirs, T_0=2, T_mult=2)
    for epoch in (0.5, 1.25, 3.0, 7.5, 2.0):  # fractional epochs, per batch
        w.step(epoch)
        tw.step(epoch)
        assert w.get_last_lr() == tw.get_last_lr() and w.T_i == tw.T_i


# ------------------------------------------------------------------------------------------- ParamGroup.mirror

def test_mirror_makes_a_setting_tensor_valued_and_zero_changes_the_trace():
    w = tj.zeros(2, requires_grad=True)
    opt = SGD([w], lr=0.1, momentum=0.9)
    g = opt.param_groups[0]
    with pytest.raises(KeyError, match="tensor-valued keys: lr"):
        g.tensor("momentum")
    assert g.hyper("momentum") == 0.9
    version = g.version
    t = g.mirror("momentum")
    assert g.version == version + 1  # a constant of the trace becomes an input: one retrace
    assert t.dtype is tj.float64 and t.item() == 0.9 and g.hyper("momentum") is t
    version = g.version
    g["momentum"] = 0.8
    assert g.tensor("momentum") is t and t.item() == 0.8 and g["momentum"] == 0.8 and g.version == version
    g["momentum"] = 0  # momentum off: no buffer update at all, another trace
    assert g.version == version + 1
    betas = Adam([w]).param_groups[0]
    b1, b2 = betas.mirror("betas")
    betas["betas"] = [0.5, 0.75]  # a checkpoint's list
    assert betas["betas"] == (0.5, 0.75) and (b1.item(), b2.item()) == (0.5, 0.75)
    assert betas.tensor("betas")[0] is b1
    copy = __import__("copy").deepcopy(betas)
    assert copy.tensor("betas")[0] is not b1 and copy["betas"] == (0.5, 0.75)


# ------------------------------------------------------------------------------------------- compiled steps

class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(self.fc1(x).tanh())


def _training(make_opt, make_sched):
    tj.manual_seed(0)
    model = _MLP()
    opt = make_opt(model.parameters())
    sched = make_sched(opt)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return model, opt, sched, step


L = lr_scheduler
COMPILED = {
    "sgd-nesterov+onecycle": (lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                              lambda o: L.OneCycleLR(o, max_lr=0.5, total_steps=20)),
    "sgd-no-momentum+onecycle": (lambda p: SGD(p, lr=0.1), lambda o: L.OneCycleLR(o, max_lr=0.5, total_steps=20)),
    "adam+onecycle": (lambda p: Adam(p, lr=0.01), lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=20,
                                                                          three_phase=True)),
    "adamw+cyclic": (lambda p: AdamW(p, lr=0.01, amsgrad=True), lambda o: L.CyclicLR(o, 0.001, 0.05, step_size_up=3)),
    "rmsprop+onecycle": (lambda p: RMSprop(p, lr=0.01, momentum=0.5, centered=True, weight_decay=0.01),
                         lambda o: L.OneCycleLR(o, max_lr=0.02, total_steps=20)),
    "rmsprop+chained": (lambda p: RMSprop(p, lr=0.01),
                        lambda o: L.ChainedScheduler([L.LinearLR(o, 0.2, total_iters=8), L.ExponentialLR(o, 0.9)])),
    "adadelta+sequential": (lambda p: Adadelta(p, lr=1.0, weight_decay=0.1),
                            lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, total_iters=3),
                                                         L.CosineAnnealingWarmRestarts(o, T_0=4)], [5])),
    "adagrad+polynomial": (lambda p: Adagrad(p, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
                           lambda o: L.PolynomialLR(o, total_iters=15, power=2.0)),
    "adagrad+plateau": (lambda p: Adagrad(p, lr=0.1), lambda o: L.ReduceLROnPlateau(o, patience=0, factor=0.5)),
}
CPU_CASES = ["sgd-nesterov+onecycle", "adam+onecycle", "rmsprop+onecycle", "adadelta+sequential",
             "adagrad+polynomial"]


@pytest.mark.parametrize("backend,case", [("reference", c) for c in COMPILED] + [("cpu", c) for c in CPU_CASES])
def test_compiled_step_equals_eager_and_never_retraces_with_a_scheduler(backend, case):
    make_opt, make_sched = COMPILED[case]
    model, opt, sched, step = _training(make_opt, make_sched)
    model2, opt2, sched2, step2 = _training(make_opt, make_sched)
    rng = np.random.default_rng(0)
    x = tj.tensor(rng.standard_normal((6, 4)).astype(f32))
    y = tj.tensor(rng.standard_normal((6, 2)).astype(f32))
    compiled = tj.compile(step, backend=backend)
    seen = set()
    for _ in range(19):
        compiled(x, y)
        step2(x, y)
        for s in (sched, sched2):
            s.step(1.0) if isinstance(s, L.ReduceLROnPlateau) else s.step()
        g = opt.param_groups[0]
        seen.add((g["lr"], g.get("momentum"), g.get("betas")))
    assert len(compiled.history) == 1, [v.reason for v in compiled.history]
    assert len(seen) > 5  # the schedule did change the settings between the compiled calls
    tol = dict(rtol=0, atol=0) if backend == "reference" else dict(rtol=1e-4, atol=1e-5)
    for p, q in zip(model.parameters(), model2.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **tol)
        assert set(opt.state[p]) == set(opt2.state[q])
        for key, value in opt2.state[q].items():
            np.testing.assert_allclose(opt.state[p][key].numpy(), value.numpy(), **tol, err_msg=key)
    # the multi-tensor update stays one kernel: every parameter and per-parameter buffer written back comes out
    # of fuse_optimizer's node (only the 0-d step counters, read by the update, run before it)
    v = compiled.latest()
    multi = [n for n in v.graph.nodes if n.attrs.get("kind") == "multi"]
    assert len(multi) == 1
    made = {o.id for o in multi[0].outputs}
    outside = [b.name for b, i in v.writes if v.graph.outputs[i].id not in made]
    assert all(name.endswith(".step") for name in outside), outside
    assert len(v.writes) - len(outside) >= 4 * (1 + sum(k != "step" for k in opt.state[model.fc1.weight]))


def test_a_scheduler_stepped_inside_the_compiled_step_is_refused():
    model, opt, sched, step = _training(*COMPILED["rmsprop+onecycle"])
    rng = np.random.default_rng(0)
    x = tj.tensor(rng.standard_normal((6, 4)).astype(f32))
    y = tj.tensor(rng.standard_normal((6, 2)).astype(f32))
    step(x, y)  # (creates the optimizer state)

    @tj.compile(backend="reference")
    def step_and_schedule(x, y):
        loss = step(x, y)
        sched.step()
        return loss

    with pytest.raises(TraceError, match=r"OneCycleLR.step\(\) at .*test_optim13.py:\d+.*outside the compiled"):
        step_and_schedule(x, y)
