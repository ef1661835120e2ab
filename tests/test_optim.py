"""Optimizers and schedulers: NumPy reference updates, torch.optim as an oracle when installed,
tensor identity of state and learning rate, state_dict round trips, scheduler values."""

import math

import numpy as np
import pytest

import tracejit as tj
from tracejit.optim import SGD, Adam, AdamW, lr_scheduler

try:
    import torch
except ImportError:  # the torch comparisons are skipped; the NumPy references still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")

STEPS = 6
f32 = np.float32


def _problem(seed=0, shapes=((3, 4), (5,))):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(f32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(f32) for s in shapes] for _ in range(STEPS)]
    return init, grads


def _run_tracejit(make_opt, init, grads):
    params = [tj.tensor(a, requires_grad=True) for a in init]
    opt = make_opt(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = tj.tensor(g)
        opt.step()
    return [p.detach().numpy().copy() for p in params], opt


def _run_torch(make_opt, init, grads):
    params = [torch.tensor(a, requires_grad=True) for a in init]
    opt = make_opt(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy().copy() for p in params], opt


# ----------------------------------------------------------------------------------------------- SGD

def _ref_sgd(init, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    """PyTorch's single-tensor SGD written out in float32 NumPy."""
    lr = f32(lr)  # the lr lives in a float32 tensor
    out = []
    for i, p in enumerate(init):
        p, buf = p.copy(), None
        for step_grads in grads:
            g = -step_grads[i] if maximize else step_grads[i]
            if weight_decay:
                g = g + p * f32(weight_decay)
            if momentum:
                buf = g.copy() if buf is None else buf * f32(momentum) + g * f32(1 - dampening)
                g = g + buf * f32(momentum) if nesterov else buf
            p = p - g * lr
        out.append(p)
    return out


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.02, momentum=0.9, weight_decay=0.1),
    dict(lr=0.02, momentum=0.5, weight_decay=0.01, nesterov=True, maximize=True),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_numpy_reference(cfg):
    init, grads = _problem()
    got, _ = _run_tracejit(lambda ps: SGD(ps, **cfg), init, grads)
    for a, b in zip(got, _ref_sgd(init, grads, **cfg)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@needs_torch
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_torch(cfg):
    init, grads = _problem(1)
    got, opt = _run_tracejit(lambda ps: SGD(ps, **cfg), init, grads)
    want, topt = _run_torch(lambda ps: torch.optim.SGD(ps, **cfg, foreach=False), init, grads)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if cfg.get("momentum"):
        for p, tp in zip(opt.param_groups[0]["params"], topt.param_groups[0]["params"]):
            np.testing.assert_allclose(opt.state[p]["momentum_buffer"].numpy(),
                                       topt.state[tp]["momentum_buffer"].numpy(), rtol=1e-5, atol=1e-6)


def test_sgd_default_lr_and_validation():
    w = tj.zeros(2, requires_grad=True)
    assert SGD([w]).param_groups[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([w], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        SGD([w], lr=-1.0)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        SGD(w, lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        SGD([w * 2], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": [w]}, {"params": [w]}], lr=0.1)


def test_sgd_with_autograd_and_closure():
    w = tj.tensor([1.0, -2.0], requires_grad=True)
    opt = SGD([w], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    np.testing.assert_allclose(w.detach().numpy(), [0.5, -1.0])  # w - 0.25 * 2w


def test_params_without_grad_are_skipped_and_get_no_state():
    a = tj.tensor([1.0, 2.0], requires_grad=True)
    b = tj.tensor([3.0], requires_grad=True)
    for opt in (SGD([a, b], lr=0.1, momentum=0.9), Adam([a, b], lr=0.1)):
        a.grad = tj.tensor([1.0, 1.0])
        b.grad = None
        opt.step()
        assert b.detach().numpy().tolist() == [3.0]
        assert b not in opt.state and a in opt.state


def test_zero_grad_modes():
    w = tj.tensor([1.0, 2.0], requires_grad=True)
    opt = SGD([w], lr=0.1)
    (w * w).sum().backward()
    g = w.grad
    opt.zero_grad(set_to_none=False)
    assert w.grad is g and w.grad.numpy().tolist() == [0.0, 0.0]
    opt.zero_grad()
    assert w.grad is None


def test_param_groups_have_their_own_options():
    init, grads = _problem(2)
    a, b = (tj.tensor(x, requires_grad=True) for x in init)
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[0]["momentum"] == 0 and opt.param_groups[1]["momentum"] == 0.9
    for step_grads in grads:
        a.grad, b.grad = tj.tensor(step_grads[0]), tj.tensor(step_grads[1])
        opt.step()
    np.testing.assert_allclose(a.detach().numpy(), _ref_sgd([init[0]], [[g[0]] for g in grads], 0.1)[0],
                               rtol=1e-6)
    np.testing.assert_allclose(b.detach().numpy(),
                               _ref_sgd([init[1]], [[g[1]] for g in grads], 0.5, momentum=0.9)[0], rtol=1e-6)


def test_add_param_group_fills_defaults():
    a, b = tj.zeros(2, requires_grad=True), tj.zeros(3, requires_grad=True)
    opt = Adam([a], lr=0.01, betas=(0.8, 0.9))
    opt.add_param_group({"params": b, "lr": 0.5})
    g = opt.param_groups[1]
    assert g["params"] == [b] and g["lr"] == 0.5 and g["betas"] == (0.8, 0.9)
    assert g.tensor("lr").item() == pytest.approx(0.5)


def test_named_parameters_are_accepted():
    a = tj.zeros(2, requires_grad=True)
    opt = SGD([("w", a)], lr=0.1)
    assert opt.param_groups[0]["params"] == [a]
    assert opt.param_groups[0]["param_names"] == ["w"]


# ----------------------------------------------------------------------------------------------- Adam

def _ref_adam(init, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
              maximize=False, decoupled=False):
    """PyTorch's single-tensor Adam/AdamW: float32 tensors, bias corrections in double."""
    lr = float(f32(lr))  # the lr lives in a float32 tensor
    b1, b2 = betas
    out = []
    for i, p in enumerate(init):
        p = p.copy()
        m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        for t, step_grads in enumerate(grads, 1):
            g = -step_grads[i] if maximize else step_grads[i]
            if weight_decay:
                if decoupled:
                    p = p * f32(1 - lr * weight_decay)
                else:
                    g = g + p * f32(weight_decay)
            m = m + (g - m) * f32(1 - b1)
            v = v * f32(b2) + g * g * f32(1 - b2)
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            step_size = lr / bc1
            if amsgrad:
                vmax = np.maximum(vmax, v)
            denom = np.sqrt(vmax if amsgrad else v) / f32(math.sqrt(bc2)) + f32(eps)
            p = p + m / denom * f32(-step_size)
        out.append(p)
    return out


ADAM_CONFIGS = [
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6)),
    (Adam, dict(lr=0.01, weight_decay=0.1)),
    (Adam, dict(lr=0.01, amsgrad=True)),
    (Adam, dict(lr=0.01, maximize=True, weight_decay=0.05, amsgrad=True)),
    (AdamW, dict(lr=0.01)),
    (AdamW, dict(lr=0.03, weight_decay=0.2, amsgrad=True)),
]


def _adam_id(c):
    return c[0].__name__ + ":" + ",".join(f"{k}={v}" for k, v in c[1].items())


@pytest.mark.parametrize("cls_cfg", ADAM_CONFIGS, ids=_adam_id)
def test_adam_matches_numpy_reference(cls_cfg):
    cls, cfg = cls_cfg
    init, grads = _problem(3)
    got, opt = _run_tracejit(lambda ps: cls(ps, **cfg), init, grads)
    ref_cfg = dict(cfg)
    if cls is AdamW:
        ref_cfg.setdefault("weight_decay", 1e-2)
    want = _ref_adam(init, grads, decoupled=cls is AdamW, **ref_cfg)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    p = opt.param_groups[0]["params"][0]
    assert opt.state[p]["step"].item() == STEPS and opt.state[p]["step"].dtype is tj.float32
    assert ("max_exp_avg_sq" in opt.state[p]) == cfg.get("amsgrad", False)


@needs_torch
@pytest.mark.parametrize("cls_cfg", ADAM_CONFIGS, ids=_adam_id)
def test_adam_matches_torch(cls_cfg):
    cls, cfg = cls_cfg
    init, grads = _problem(4)
    got, opt = _run_tracejit(lambda ps: cls(ps, **cfg), init, grads)
    tcls = getattr(torch.optim, cls.__name__)
    want, topt = _run_torch(lambda ps: tcls(ps, **cfg, foreach=False), init, grads)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for p, tp in zip(opt.param_groups[0]["params"], topt.param_groups[0]["params"]):
        for key, value in topt.state[tp].items():
            np.testing.assert_allclose(opt.state[p][key].numpy(), value.numpy(), rtol=1e-5, atol=1e-7,
                                       err_msg=key)
    # same hyperparameter keys and state keys as PyTorch
    assert set(opt.param_groups[0]) == set(topt.param_groups[0])
    assert set(opt.state_dict()["state"][0]) == set(topt.state_dict()["state"][0])


def test_adam_default_hyperparameters_match_pytorch():
    w = tj.zeros(2, requires_grad=True)
    g = Adam([w]).param_groups[0]
    got = (g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"])
    assert got == (1e-3, (0.9, 0.999), 1e-8, 0, False)
    gw = AdamW([tj.zeros(2, requires_grad=True)]).param_groups[0]
    assert gw["weight_decay"] == 1e-2 and gw["decoupled_weight_decay"] is True
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        Adam([w], betas=(0.9, 1.0))


def test_state_and_lr_tensors_keep_their_identity():
    init, grads = _problem(5)
    params = [tj.tensor(a, requires_grad=True) for a in init]
    opt = Adam(params, lr=0.01, amsgrad=True)
    sgd_params = [tj.tensor(a, requires_grad=True) for a in init]
    sgd = SGD(sgd_params, lr=0.01, momentum=0.9)
    lr_t = opt.param_groups[0].tensor("lr")
    ids = None
    for step_grads in grads:
        for p, q, g in zip(params, sgd_params, step_grads):
            p.grad, q.grad = tj.tensor(g), tj.tensor(g)
        opt.step()
        sgd.step()
        now = [id(t) for p in params for t in opt.state[p].values()]
        now += [id(sgd.state[q]["momentum_buffer"]) for q in sgd_params]
        assert ids is None or now == ids
        ids = now
        assert opt.param_groups[0].tensor("lr") is lr_t


def test_lr_assignment_writes_the_same_tensor():
    w = tj.zeros(3, requires_grad=True)
    opt = SGD([w], lr=0.1)
    group = opt.param_groups[0]
    t = group.tensor("lr")
    assert isinstance(group["lr"], float) and group["lr"] == 0.1
    assert t.shape == () and t.dtype is tj.float32
    for g in opt.param_groups:
        g["lr"] = 0.5
    assert group.tensor("lr") is t and t.item() == 0.5 and group["lr"] == 0.5
    group["lr"] = tj.tensor(0.25)  # a tensor value is copied in, not aliased
    assert group.tensor("lr") is t and group["lr"] == 0.25
    group.update(lr=0.125)
    assert t.item() == 0.125
    w.grad = tj.ones(3)
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), [-0.125] * 3)
    assert f"{group['lr']}" == "0.125"


# ----------------------------------------------------------------------------------------------- state_dict

def test_state_dict_layout_matches_pytorch():
    a, b, c = (tj.zeros(s, requires_grad=True) for s in ((2,), (3,), (4,)))
    opt = Adam([{"params": [a, b]}, {"params": [c], "lr": 0.1}], lr=0.01)
    for p in (a, c):
        p.grad = tj.ones(p.shape)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0, 1] and sd["param_groups"][1]["params"] == [2]
    assert sd["param_groups"][1]["lr"] == 0.1 and isinstance(sd["param_groups"][1]["lr"], float)
    assert sorted(sd["state"]) == [0, 2]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["state"][2]["exp_avg"] is opt.state[c]["exp_avg"]


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                                  lambda ps: Adam(ps, lr=0.01, amsgrad=True),
                                  lambda ps: AdamW(ps, lr=0.01, weight_decay=0.1)],
                         ids=["sgd", "adam", "adamw"])
def test_state_dict_round_trip_through_checkpoint_continues_identically(tmp_path, make):
    init, grads = _problem(6)
    params = [tj.tensor(a, requires_grad=True) for a in init]
    opt = make(params)
    sched = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def run(params, opt, sched, grads):
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = tj.tensor(g)
            opt.step()
            sched.step()

    run(params, opt, sched, grads[:3])
    path = tmp_path / "ckpt.safetensors"
    tj.save({"params": [p.detach() for p in params], "optim": opt.state_dict(), "sched": sched.state_dict()},
            path)

    # a fresh optimizer that has already taken a step: load must write into its existing state tensors
    params2 = [tj.tensor(np.zeros_like(a), requires_grad=True) for a in init]
    opt2 = make(params2)
    sched2 = lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    run(params2, opt2, sched2, grads[:1])
    before = {id(t) for p in params2 for t in opt2.state[p].values()}
    lr_t = opt2.param_groups[0].tensor("lr")

    ckpt = tj.load(path)
    with tj.no_grad():
        for p, saved in zip(params2, ckpt["params"]):
            p.copy_(saved)
    opt2.load_state_dict(ckpt["optim"])
    sched2.load_state_dict(ckpt["sched"])
    assert {id(t) for p in params2 for t in opt2.state[p].values()} == before
    assert opt2.param_groups[0].tensor("lr") is lr_t
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert lr_t.item() == opt.param_groups[0].tensor("lr").item()
    for p, p2 in zip(params, params2):
        for key, value in opt.state[p].items():
            assert np.array_equal(opt2.state[p2][key].numpy(), value.numpy()), key

    run(params, opt, sched, grads[3:])
    run(params2, opt2, sched2, grads[3:])
    for p, p2 in zip(params, params2):
        assert np.array_equal(p.detach().numpy(), p2.detach().numpy())
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_load_state_dict_validates_and_names_the_problem():
    a, b = tj.zeros(2, requires_grad=True), tj.zeros(3, requires_grad=True)
    opt = Adam([a, b], lr=0.01)
    a.grad, b.grad = tj.ones(2), tj.ones(3)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="number of parameter groups"):
        Adam([{"params": [a]}, {"params": [b]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 0 has 2 saved parameters, the optimizer's has 1"):
        Adam([a]).load_state_dict(sd)
    other = Adam([tj.zeros(2, requires_grad=True), tj.zeros(4, requires_grad=True)], lr=0.5)
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 1 .* shape \[3\].* shape \[4\]"):
        other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.5 and not other.state  # nothing changed


def test_load_state_dict_into_fresh_optimizer_creates_state():
    a = tj.tensor([1.0, 2.0], requires_grad=True)
    opt = SGD([a], lr=0.1, momentum=0.9)
    a.grad = tj.tensor([1.0, -1.0])
    opt.step()
    b = tj.tensor([1.0, 2.0], requires_grad=True)
    opt2 = SGD([b], lr=0.3, momentum=0.9)
    opt2.load_state_dict(opt.state_dict())
    buf = opt2.state[b]["momentum_buffer"]
    assert buf is not opt.state[a]["momentum_buffer"]
    assert buf.numpy().tolist() == [1.0, -1.0] and opt2.param_groups[0]["lr"] == 0.1


# ----------------------------------------------------------------------------------------------- schedulers

def _sgd(lr=0.1, groups=1):
    return SGD([{"params": [tj.zeros(1, requires_grad=True)]} for _ in range(groups)], lr=lr)


def _trace(sched, epochs):
    lrs = [sched.get_last_lr()[0]]
    for _ in range(epochs):
        sched.optimizer.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    return lrs


def test_steplr_closed_form():
    lrs = _trace(lr_scheduler.StepLR(_sgd(0.1), step_size=3, gamma=0.5), 20)
    np.testing.assert_allclose(lrs, [0.1 * 0.5 ** (e // 3) for e in range(21)], rtol=1e-12)


def test_multisteplr_and_exponentiallr_closed_forms():
    lrs = _trace(lr_scheduler.MultiStepLR(_sgd(1.0), milestones=[2, 5, 5, 9], gamma=0.1), 12)
    counts = [sum(m <= e for m in [2, 5, 5, 9]) for e in range(13)]
    np.testing.assert_allclose(lrs, [0.1 ** c for c in counts], rtol=1e-12)
    lrs = _trace(lr_scheduler.ExponentialLR(_sgd(0.5), gamma=0.9), 15)
    np.testing.assert_allclose(lrs, [0.5 * 0.9 ** e for e in range(16)], rtol=1e-12)


@pytest.mark.parametrize("eta_min", [0.0, 0.01])
def test_cosine_annealing_recursive_equals_closed_form_over_several_periods(eta_min):
    base, T = 0.1, 7
    lrs = _trace(lr_scheduler.CosineAnnealingLR(_sgd(base), T_max=T, eta_min=eta_min), 5 * T)
    closed = [eta_min + (base - eta_min) * (1 + math.cos(math.pi * e / T)) / 2 for e in range(5 * T + 1)]
    np.testing.assert_allclose(lrs, closed, rtol=1e-9, atol=1e-12)
    assert lrs[T] == pytest.approx(eta_min) and lrs[2 * T] == pytest.approx(base)


def test_lambdalr_per_group():
    opt = _sgd(1.0, groups=2)
    sched = lr_scheduler.LambdaLR(opt, [lambda e: 0.5 ** e, lambda e: 1.0 / (e + 1)])
    for e in range(1, 6):
        opt.step()
        sched.step()
        assert sched.get_last_lr() == [0.5 ** e, 1.0 / (e + 1)]
    with pytest.raises(ValueError, match="Expected 2 lr_lambdas"):
        lr_scheduler.LambdaLR(opt, [lambda e: 1.0])


def test_schedulers_write_the_lr_tensor_in_place():
    opt = _sgd(0.1, groups=2)
    tensors = [g.tensor("lr") for g in opt.param_groups]
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    for _ in range(8):
        opt.step()
        sched.step()
        for g, t in zip(opt.param_groups, tensors):
            assert g.tensor("lr") is t
            assert t.item() == pytest.approx(g["lr"], rel=1e-7)  # float32 of the exact value
    assert opt.param_groups[0]["initial_lr"] == 0.1


@needs_torch
@pytest.mark.parametrize("name,kwargs", [("StepLR", dict(step_size=4, gamma=0.3)),
                                         ("MultiStepLR", dict(milestones=[3, 7, 7], gamma=0.5)),
                                         ("ExponentialLR", dict(gamma=0.95)),
                                         ("CosineAnnealingLR", dict(T_max=6, eta_min=0.001))])
def test_schedulers_match_torch_exactly(name, kwargs):
    ours = getattr(lr_scheduler, name)(_sgd(0.1), **kwargs)
    tw = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tw], lr=0.1)
    theirs = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    for _ in range(30):
        ours.optimizer.step()
        ours.step()
        topt.step()
        theirs.step()
        assert ours.get_last_lr() == theirs.get_last_lr()
    assert ours.last_epoch == theirs.last_epoch


def test_scheduler_state_dict_round_trip(tmp_path):
    opt = _sgd(0.1)
    sched = lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.5)
    for _ in range(3):
        opt.step()
        sched.step()
    tj.save(sched.state_dict(), tmp_path / "s.safetensors")
    opt2 = _sgd(0.1)
    sched2 = lr_scheduler.MultiStepLR(opt2, milestones=[9], gamma=0.5)
    sched2.load_state_dict(tj.load(tmp_path / "s.safetensors"))
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    assert sched2.last_epoch == 3 and sched2.milestones == {2: 1, 4: 1}
    for s in (sched, sched2):
        s.optimizer.step()
        s.step()
    assert sched.get_last_lr() == sched2.get_last_lr() == [0.025]


def test_resuming_scheduler_needs_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(_sgd(), step_size=2, last_epoch=3)
