"""`%` / remainder (the divisor's sign, PyTorch's) and fmod (the dividend's, C's) against PyTorch: floats with
edge values (+-0, inf, NaN, zero divisors) bit for bit, integers, promotion, gradients, in place, eagerly and
compiled; and an integer division by zero stopping a compiled step with PyTorch's error before any state is
written (its kernels alone would give 0)."""

from __future__ import annotations

import numpy as np
import pytest

import tracejit as tj

torch = pytest.importorskip("torch")

from test_floordiv import check, floats, ints, torch_of  # noqa: E402  (same edge values and comparison)


def torch_one_by_one(name, a, b):
    """PyTorch's values element by element: its vectorized float32 fmod is not exact where the quotient overflows
    (fmod(1e30, -1e-30) is NaN in a 64-element tensor, 8.17e-31 -- the exact value -- in a 1-element one)."""
    f = getattr(torch, name)
    return torch.cat([f(torch_of(a[i:i + 1]), torch_of(b[i:i + 1])) for i in range(len(a))])


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
@pytest.mark.parametrize("name", ["remainder", "fmod"])
def test_values_eager_and_compiled_equal_torch(dtype, name):
    a, b = ints() if dtype == "int64" else floats(dtype)
    want = torch_one_by_one(name, a, b)
    ta, tb = tj.from_numpy(a), tj.from_numpy(b)
    check(getattr(tj, name)(ta, tb), want)
    check(getattr(ta, name)(tb), want)
    if name == "remainder":
        check(ta % tb, want)

    @tj.compile
    def step(x, y):
        return getattr(x, name)(y) + 0  # fused with an op after it

    for _ in range(2):
        check(step(ta, tb), want)
    assert step.latest() is not None


def test_scalars_promotion_reflected_and_in_place():
    a, ta = tj.tensor([7, -7, 8]), torch.tensor([7, -7, 8])
    check(a % 3, ta % 3)
    check(a % -2.5, ta % -2.5)  # an int tensor and a float: the default float dtype
    check(7 % a, 7 % ta)
    check(tj.remainder(5, tj.tensor([2, -3])), torch.remainder(5, torch.tensor([2, -3])))
    check(tj.fmod(a, -3), torch.fmod(ta, -3))
    t, tt = tj.tensor([7, -8]), torch.tensor([7, -8])
    t %= 3
    tt %= 3
    check(t, tt)
    f = tj.tensor([7.5, -8.5])
    f.fmod_(2)
    check(f, torch.tensor([7.5, -8.5]).fmod_(2))
    with pytest.raises(RuntimeError, match="can't be cast to the desired output type int64"):
        tj.tensor([7, 8]).remainder_(2.5)
    with pytest.raises(TypeError, match="not implemented for bool"):
        tj.tensor([True]) % tj.tensor([True])


def test_integer_zero_divisor_raises_like_torch():
    a = tj.tensor([7, -7])
    for f in (lambda: a % 0, lambda: a % tj.tensor([1, 0]), lambda: tj.fmod(a, 0), lambda: 5 % tj.tensor([0, 1])):
        with pytest.raises(RuntimeError, match="^ZeroDivisionError"):
            f()
    # floats: NaN, as PyTorch
    assert np.isnan((tj.tensor([1.0]) % 0).numpy()).all() and np.isnan(tj.fmod(tj.tensor([1.0]), 0.0).numpy()).all()


@pytest.mark.parametrize("name", ["remainder", "fmod"])
def test_gradients_eager_and_compiled_equal_torch(name):
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((3, 4)) * 5).astype(np.float32)
    b = (rng.uniform(0.5, 2, (4,)) * rng.choice([-1, 1], 4)).astype(np.float32)
    wx, wy = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (getattr(torch, name)(wx, wy) * torch.arange(12.0).reshape(3, 4)).sum().backward()

    def run(x, y):
        (getattr(tj, name)(x, y) * tj.arange(12.0).reshape(3, 4)).sum().backward()
        return x.grad, y.grad

    for fn in (run, tj.compile(run)):
        x, y = tj.tensor(a, requires_grad=True), tj.tensor(b, requires_grad=True)
        gx, gy = fn(x, y)
        np.testing.assert_array_equal(gx.numpy(), wx.grad.numpy())
        np.testing.assert_allclose(gy.numpy(), wy.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("op", ["floor", "trunc", "remainder", "fmod"])
def test_compiled_integer_division_by_zero_raises_before_state_is_written(op):
    """A zero divisor that only the data holds: the compiled step raises PyTorch's error at the user's line and
    leaves the parameters and optimizer state as they were; a later good call runs on."""
    w = tj.nn.Parameter(tj.tensor([1.0, 2.0, 3.0]))
    opt = tj.optim.SGD([w], lr=0.1, momentum=0.9)
    ops = {"floor": lambda a, b: a // b, "trunc": lambda a, b: a.div(b, rounding_mode="trunc"),
           "remainder": lambda a, b: a % b, "fmod": lambda a, b: a.fmod(b)}

    @tj.compile
    def step(a, b):
        opt.zero_grad()
        loss = (w * ops[op](a, b).float()).sum()
        loss.backward()
        opt.step()
        return loss

    a = tj.tensor([5, -7, 3])
    step(a, tj.tensor([2, 3, 1]))
    before = w.detach().numpy().copy()
    buf = opt.state[w]["momentum_buffer"].numpy().copy()
    with pytest.raises(RuntimeError, match=r"^ZeroDivisionError: integer \w+ by zero \(at .*test_remainder.py:\d+\)"):
        step(a, tj.tensor([2, 0, 1]))
    np.testing.assert_array_equal(w.detach().numpy(), before)
    np.testing.assert_array_equal(opt.state[w]["momentum_buffer"].numpy(), buf)
    step(a, tj.tensor([2, 3, 1]))
    assert not np.array_equal(w.detach().numpy(), before)
    assert step.latest() is not None
