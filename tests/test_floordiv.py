"""`//`, floor_divide and div(rounding_mode=...) against PyTorch: floor and trunc rounding for integers and floats
(fmod-based for floats: 1.0 // 0.1 is 9.0), x // 0 for floats as x / 0, integer division by zero an error eagerly,
PyTorch's dtype promotion, zero gradients, in place, and the same values from a compiled step."""

from __future__ import annotations

import numpy as np
import pytest

import tracejit as tj

torch = pytest.importorskip("torch")

EDGE = [1.0, -1.0, 0.0, -0.0, 7.5, -7.5, 1e30, -1e-30, float("inf"), float("-inf"), float("nan"), 0.3, 2.0, -2.0]


def floats(dtype):
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.standard_normal(40) * 10, np.array(EDGE)]).astype(dtype)
    b = np.concatenate([rng.standard_normal(40) * 3, np.array(EDGE[::-1])]).astype(dtype)
    b[3] = 0.1
    b[4] = 0.0
    b[5] = -0.0
    return a, b


def ints():
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.integers(-50, 50, 40), [7, -7, 7, -7, 0, 2**40 + 1, -(2**40) - 1]])
    b = np.concatenate([rng.integers(1, 9, 40) * rng.choice([-1, 1], 40), [2, 2, -2, -2, 3, 3, -3]])
    return a, b


def torch_of(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def check(got, want):
    got = got.detach().numpy()
    want = want.numpy()
    assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    np.testing.assert_array_equal(got, want)
    if got.dtype.kind == "f":
        num = ~np.isnan(want)
        np.testing.assert_array_equal(np.signbit(got[num]), np.signbit(want[num]))  # -0.0 where PyTorch has it


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
@pytest.mark.parametrize("mode", ["floor", "trunc"])
def test_values_eager_and_compiled_equal_torch(dtype, mode):
    a, b = ints() if dtype == "int64" else floats(dtype)
    want = torch.div(torch_of(a), torch_of(b), rounding_mode=mode)
    ta, tb = tj.from_numpy(a), tj.from_numpy(b)
    check(tj.div(ta, tb, rounding_mode=mode), want)
    if mode == "floor":
        check(ta // tb, want)
        check(tj.floor_divide(ta, tb), want)

    @tj.compile
    def step(x, y):
        return x.div(y, rounding_mode=mode) + 0  # fused with an op after it

    for _ in range(3):
        check(step(ta, tb), want)
    assert step.latest() is not None


def test_scalars_promotion_and_reflected():
    a = tj.tensor([7, -7, 8])
    ta = torch.tensor([7, -7, 8])
    check(a // 2, ta // 2)
    check(a // 2.5, ta // 2.5)  # an int tensor and a float: the default float dtype
    check(7 // a, 7 // ta)
    check(-7.5 // a, -7.5 // ta)
    check(tj.tensor([True, False]) // 2, torch.tensor([True, False]) // 2)
    check(a // tj.tensor([2.0, 3.0, -3.0]), ta // torch.tensor([2.0, 3.0, -3.0]))
    check(tj.tensor([3], dtype=tj.uint8) // tj.tensor([2], dtype=tj.uint8),
          torch.tensor([3], dtype=torch.uint8) // torch.tensor([2], dtype=torch.uint8))
    check(tj.div(a, 3, rounding_mode="trunc"), torch.div(ta, 3, rounding_mode="trunc"))
    check(tj.divide(a, 2), torch.divide(ta, 2))


def test_errors_as_torch():
    a = tj.tensor([7, -7])
    for f in (lambda: a // 0, lambda: a // tj.tensor([1, 0]), lambda: tj.div(a, 0, rounding_mode="trunc"),
              lambda: 5 // tj.tensor([0, 1])):
        with pytest.raises(RuntimeError, match="^ZeroDivisionError"):
            f()
    with pytest.raises(RuntimeError, match="rounding_mode to be one of None, 'trunc', or 'floor' but found 'round'"):
        tj.div(a, 2, rounding_mode="round")
    with pytest.raises(TypeError, match="not implemented for bool"):
        tj.tensor([True]) // tj.tensor([True])
    t = tj.tensor([7, 8])
    with pytest.raises(RuntimeError, match="can't be cast to the desired output type int64"):
        t //= 2.5


def test_in_place():
    t = tj.tensor([7, -8])
    t //= 3
    check(t, torch.tensor([7, -8]) // 3)
    f = tj.tensor([7.0, -8.0])
    f //= 3
    check(f, torch.tensor([7.0, -8.0]) // 3)
    g = tj.tensor([7.0, -8.0])
    g.div_(3, rounding_mode="trunc")
    check(g, torch.tensor([-8.0, 7.0]).flip(0).div(3, rounding_mode="trunc"))


def test_gradients_are_zero_eager_and_compiled():
    x = tj.tensor([5.0, -3.0], requires_grad=True)
    y = tj.tensor([2.0, 2.0], requires_grad=True)
    ((x // y) * 3 + x.div(y, rounding_mode="trunc")).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0])
    np.testing.assert_array_equal(y.grad.numpy(), [0, 0])
    w = tj.nn.Parameter(tj.tensor([5.0, -3.0]))
    opt = tj.optim.SGD([w], lr=0.1)

    @tj.compile
    def step(z):
        opt.zero_grad()
        loss = (w * z + w // 2).sum()
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step(tj.ones(2))
    np.testing.assert_allclose(w.detach().numpy(), [5.0 - 0.3, -3.0 - 0.3], rtol=1e-6)
