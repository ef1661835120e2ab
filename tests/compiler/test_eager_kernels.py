"""The CPU backend's eager kernels (compiler/backends/cpu/eager.py) against the NumPy references: values and
gradients of eager code with the kernels installed in dispatch's table equal those with the refs alone (odd shapes,
strides, padding, dilation, groups, non-contiguous inputs); float64 and what the kernels do not take run the refs;
the table's stubs load the kernels on first use (TRACEJIT_EAGER_KERNELS)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import tracejit as tj
import tracejit.nn.functional as F
from tracejit import dispatch
from tracejit.compiler import backends
from tracejit.compiler.backends.cpu import eager as E


@pytest.fixture(scope="module")
def kernels():
    return backends.get_backend("cpu").eager_kernels()


@pytest.fixture
def with_kernels(kernels, monkeypatch):
    """Run eager ops with the kernels (function) or with the NumPy refs only (function(False))."""

    def use(on=True):
        monkeypatch.setattr(dispatch, "_eager_kernels", dict(kernels) if on else {})

    return use


def _run(fn, arrays, grad=True):
    ts = [tj.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    out = fn(*ts)
    value = out.detach().numpy().copy()
    if not grad:
        return value, []
    out.backward(tj.tensor(np.linspace(-1, 1, out.numel(), dtype=value.dtype).reshape(out.shape)))
    return value, [t.grad.numpy().copy() for t in ts if t.grad is not None]


def _compare(with_kernels, fn, arrays, tol=1e-4, grad=True):
    with_kernels(False)
    want, want_g = _run(fn, arrays, grad)
    with_kernels(True)
    got, got_g = _run(fn, arrays, grad)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert len(got_g) == len(want_g)
    for a, b in zip(got_g, want_g):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


CONV_CASES = [  # x shape, w shape, stride, padding, dilation, groups
    ((3, 3, 13, 11), (5, 3, 5, 5), 1, 0, 1, 1),  # LeNet-like, odd sizes (per-image GEMM)
    ((2, 4, 9, 7), (6, 2, 3, 3), 1, 1, 1, 2),  # grouped
    ((2, 3, 12, 10), (4, 3, 3, 2), (2, 3), (1, 0), 1, 1),  # strided, rectangular kernel
    ((1, 2, 15, 16), (3, 2, 3, 3), 1, (2, 1), (2, 3), 1),  # dilated
    ((2, 2, 7, 7), (2, 2, 3, 3), 1, 3, 1, 1),  # padding larger than the kernel's reach (cropped)
    ((1, 1, 50, 45), (2, 1, 3, 3), 1, 1, 1, 1),  # long runs: the direct kernels
    ((2, 6, 8, 8), (6, 1, 3, 3), 2, 1, 1, 6),  # depthwise, strided
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[0])) + "-" + "x".join(map(str, c[1])))
def test_conv2d_values_and_gradients(with_kernels, case, rng):
    xs, ws, st, pad, dil, groups = case
    x, w = rng.standard_normal(xs, dtype=np.float32), rng.standard_normal(ws, dtype=np.float32)
    _compare(with_kernels, lambda x, w: F.conv2d(x, w, None, st, pad, dil, groups), [x, w])


def test_conv2d_non_contiguous_inputs(with_kernels, rng):
    x = rng.standard_normal((3, 2, 12, 14), dtype=np.float32)
    w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)

    def fn(x, w):  # a permuted input and a sliced weight: strided views reach the kernels
        return F.conv2d(x.permute(1, 0, 2, 3)[:, :, ::2], w[:, :, :, :].transpose(2, 3), padding=1)

    _compare(with_kernels, fn, [x, w])


def test_lenet_like_layer_with_bias_relu_pool(with_kernels, rng):
    x = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)
    w = rng.standard_normal((6, 3, 5, 5), dtype=np.float32) * 0.1
    b = rng.standard_normal(6, dtype=np.float32)
    _compare(with_kernels, lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b)), 2, 2), [x, w, b])


POOL_CASES = [
    ("max", dict(kernel_size=2, stride=2)),
    ("max", dict(kernel_size=3, stride=2, padding=1)),
    ("max", dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=True)),
    ("max", dict(kernel_size=3, stride=3, ceil_mode=True)),
    ("avg", dict(kernel_size=2, stride=2)),
    ("avg", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("avg", dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1))),
    ("avg", dict(kernel_size=3, stride=2, ceil_mode=True)),  # not taken by the kernels: the ref runs
]


@pytest.mark.parametrize("kind, kw", POOL_CASES, ids=lambda c: str(c))
def test_pooling_values_and_gradients(with_kernels, kind, kw, rng):
    x = rng.standard_normal((2, 3, 11, 10), dtype=np.float32)
    x[0, 0, :3, :3] = 1.0  # ties: the first maximum gets the gradient, as in NumPy's argmax and PyTorch
    pool = F.max_pool2d if kind == "max" else F.avg_pool2d
    _compare(with_kernels, lambda x: pool(x, **kw), [x])


def test_max_pool_nan_and_inf_follow_the_reference(with_kernels, rng):
    x = rng.standard_normal((1, 2, 6, 6), dtype=np.float32)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 2:4, 2:4] = -np.inf
    _compare(with_kernels, lambda x: F.max_pool2d(x, 2, padding=1), [x], grad=False)


def test_matmul_and_linear(with_kernels, rng):
    a = rng.standard_normal((7, 33), dtype=np.float32)
    w = rng.standard_normal((5, 33), dtype=np.float32)
    _compare(with_kernels, lambda a, w: F.linear(a, w), [a, w])
    # big enough for the split GEMM (forward x @ w.T, backward g @ w and x.T @ g: transposed operands)
    a = rng.standard_normal((64, 200), dtype=np.float32)
    w = rng.standard_normal((160, 200), dtype=np.float32)
    bias = rng.standard_normal(160, dtype=np.float32)
    _compare(with_kernels, lambda a, w, bias: F.relu(F.linear(a, w, bias)), [a, w, bias], tol=2e-3)
    b = rng.standard_normal((3, 4, 6), dtype=np.float64)
    c = rng.standard_normal((3, 6, 2), dtype=np.float64)
    _compare(with_kernels, lambda b, c: b.matmul(c), [b, c], tol=1e-12)


def test_float64_and_empty_run_the_reference(kernels, rng):
    x64 = rng.standard_normal((1, 2, 6, 6))
    w64 = rng.standard_normal((3, 2, 3, 3))
    attrs = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    assert kernels["conv2d"]([x64, w64], attrs, E._Type((1, 3, 4, 4))) is None
    assert (
        kernels["max_pool2d"]([x64], dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0)), E._Type((1, 2, 3, 3))) is None
    )
    empty = np.zeros((0, 2, 6, 6), np.float32)
    assert kernels["conv2d"]([empty, w64.astype(np.float32)], attrs, E._Type((0, 3, 4, 4))) is None
    ro = rng.standard_normal((1, 2, 6, 6), dtype=np.float32)
    ro.flags.writeable = False
    assert (
        kernels["max_pool2d"]([ro], dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0)), E._Type((1, 2, 3, 3))) is None
    )


def test_float64_model_matches_through_dispatch(with_kernels, rng):
    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3))
    _compare(with_kernels, lambda x, w: F.max_pool2d(F.conv2d(x, w, padding=1), 2), [x, w], tol=1e-12)


def test_kernels_return_new_arrays(kernels, rng):
    x = rng.standard_normal((1, 1, 4, 4), dtype=np.float32)
    out = kernels["max_pool2d"]([x], dict(kernel=(1, 1), stride=(1, 1), padding=(0, 0)), E._Type(x.shape))
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)


def test_warm_up_checks_against_the_refs(monkeypatch):
    E.warm_up()  # (loaded: cheap) every branch agrees
    monkeypatch.setitem(E.KERNELS, "max_pool2d", lambda arrays, attrs, out_type: np.zeros(out_type.shape, np.float32))
    monkeypatch.setattr(E, "max_pool2d", E.KERNELS["max_pool2d"])
    with pytest.raises(RuntimeError, match="max_pool2d disagrees"):
        E.warm_up()


def test_eager_mode_setting(monkeypatch):
    for value, mode in [("", "background"), ("sync", "sync"), ("0", "off"), ("OFF", "off"), ("1", "sync")]:
        monkeypatch.setenv(backends.ENV_EAGER, value)
        assert backends.eager_mode() == mode
    monkeypatch.setenv(backends.ENV_EAGER, "sometimes")
    with pytest.warns(RuntimeWarning, match="not one of"):
        assert backends.eager_mode() == "background"


_CHILD = """
import sys, threading
import numpy as np
import tracejit as tj, tracejit.nn.functional as F
from tracejit import dispatch
assert 'numba' not in sys.modules  # importing tracejit loads no Numba
x = tj.tensor(np.random.default_rng(0).standard_normal((2, 3, 9, 9), dtype=np.float32))
w = tj.tensor(np.ones((2, 3, 3, 3), np.float32))
first = F.conv2d(x, w).numpy()
mode = sys.argv[1]
if mode == 'background':
    for t in threading.enumerate():
        if t.name == 'tracejit-eager-kernels':
            t.join()
if mode == 'off':
    assert 'numba' not in sys.modules and 'conv2d' not in dispatch._eager_kernels
else:
    assert dispatch._eager_kernels['conv2d'].__module__.endswith('cpu.eager'), dispatch._eager_kernels['conv2d']
np.testing.assert_allclose(F.conv2d(x, w).numpy(), first, rtol=1e-5, atol=1e-5)
print('ok', mode)
"""


@pytest.mark.parametrize("mode", ["background", "sync", "off"])
def test_first_use_loads_the_kernels(mode):
    env = dict(os.environ, TRACEJIT_EAGER_KERNELS=mode)
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"ok {mode}" in proc.stdout


# ---------------------------------------------------------------------------------------- fused optimizer updates
def _train(opt_fn, steps, rng_seed=0, scheduler=None):
    rng = np.random.default_rng(rng_seed)
    tj.manual_seed(0)
    model = tj.nn.Sequential(tj.nn.Linear(7, 5), tj.nn.ReLU(), tj.nn.Linear(5, 3))
    opt = opt_fn(model.parameters())
    sched = scheduler(opt) if scheduler else None
    x = tj.tensor(rng.standard_normal((6, 7), dtype=np.float32))
    y = tj.tensor(rng.integers(0, 3, 6))
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if sched:
            sched.step()
    params = [p.detach().numpy().copy() for p in model.parameters()]
    state = [
        {k: v.detach().numpy().copy() if isinstance(v, tj.Tensor) else v for k, v in s.items()}
        for s in opt.state_dict()["state"].values()
    ]
    return params, state


OPTIMIZERS = {
    "sgd": lambda ps: tj.optim.SGD(ps, lr=0.1),
    "sgd-momentum": lambda ps: tj.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd-dampening": lambda ps: tj.optim.SGD(ps, lr=0.05, momentum=0.8, dampening=0.3),
    "sgd-nesterov-wd": lambda ps: tj.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda ps: tj.optim.Adam(ps, lr=1e-2),
    "adam-betas": lambda ps: tj.optim.Adam(ps, lr=3e-3, betas=(0.8, 0.95), eps=1e-6),
    "adamw": lambda ps: tj.optim.AdamW(ps, lr=1e-2),
    "adam-amsgrad": lambda ps: tj.optim.Adam(ps, lr=1e-2, amsgrad=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_optimizer_updates_are_bit_identical(with_kernels, kernels, name):
    with_kernels(False)
    want_p, want_s = _train(OPTIMIZERS[name], 4)
    with_kernels(True)
    calls = []
    for k in ("sgd_update", "adam_update"):
        dispatch._eager_kernels[k] = lambda *a, _k=kernels[k], **kw: calls.append(1) or _k(*a, **kw)
    got_p, got_s = _train(OPTIMIZERS[name], 4)
    fused = name in ("sgd", "sgd-momentum", "sgd-dampening", "adam", "adam-betas")
    assert bool(calls) == fused
    for a, b in zip(got_p, want_p):
        np.testing.assert_array_equal(a, b)
    assert len(got_s) == len(want_s)
    for sa, sb in zip(got_s, want_s):
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k])


def test_fused_sgd_under_a_momentum_scheduler_runs_the_tensor_ops(with_kernels):
    sched = lambda opt: tj.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)  # noqa: E731
    with_kernels(False)
    want, _ = _train(lambda ps: tj.optim.SGD(ps, lr=0.05, momentum=0.9), 3, scheduler=sched)
    with_kernels(True)
    got, _ = _train(lambda ps: tj.optim.SGD(ps, lr=0.05, momentum=0.9), 3, scheduler=sched)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_fused_update_writes_into_numpy_shared_parameters(with_kernels):
    with_kernels(True)
    arr = np.ones((3, 2), np.float32)
    w = tj.from_numpy(arr).requires_grad_()
    opt = tj.optim.SGD([w], lr=0.5, momentum=0.9)
    (w * 2.0).sum().backward()
    opt.step()
    np.testing.assert_array_equal(arr, np.zeros((3, 2), np.float32))  # 1 - 0.5 * 2, written into the array
    assert w.detach().numpy() is arr
