"""Composite Tensor methods (forward vs NumPy, gradients by finite differences), type promotion, repr and
the random number functions. Each composite row is written once against the module `T`, so the same lambda
runs on tracejit and (when it imports) on torch as a second oracle.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracejit as tj
from tracejit.autograd import gradcheck

try:
    import torch
except ImportError:  # torch is an extra oracle; every test below also checks against NumPy
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def _softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _var(a, axis, ddof, keepdims=False):
    m = a.mean(axis=axis, keepdims=True)
    n = a.size if axis is None else np.prod([a.shape[i] for i in np.atleast_1d(axis)])
    return ((a - m) ** 2).sum(axis=axis, keepdims=keepdims) / (n - ddof)


X3 = (3, 4, 5)
MASK_ROWS = np.array([True, False, True])
MASK_2D = np.arange(20).reshape(4, 5) % 3 == 0

# id: (input shapes, fn(T, *tensors), numpy expected(*arrays), gradcheck?)
COMPOSITES = {
    "softmax-last": ([X3], lambda T, x: x.softmax(-1), lambda a: _softmax(a, -1), True),
    "softmax-large-values": ([(2, 3)], lambda T, x: (x * 1000.0).softmax(1),
                             lambda a: _softmax(a * 1000.0, 1), False),
    "log_softmax-0": ([X3], lambda T, x: x.log_softmax(0), lambda a: np.log(_softmax(a, 0)), True),
    "mean-all": ([X3], lambda T, x: x.mean(), lambda a: a.sum() / a.size, True),
    "mean-dims-keepdim": ([X3], lambda T, x: x.mean((0, 2), keepdim=True),
                          lambda a: a.sum(axis=(0, 2), keepdims=True) / 15, True),
    "var-all": ([X3], lambda T, x: x.var(), lambda a: _var(a, None, 1), True),
    "var-dim-keepdim": ([X3], lambda T, x: x.var(1, keepdim=True), lambda a: _var(a, 1, 1, True), True),
    "var-biased": ([X3], lambda T, x: x.var(0, unbiased=False), lambda a: _var(a, 0, 0), True),
    "var-correction0": ([X3], lambda T, x: x.var(dim=(0, 2), correction=0), lambda a: _var(a, (0, 2), 0),
                        True),
    "std-dim": ([X3], lambda T, x: x.std(1), lambda a: np.sqrt(_var(a, 1, 1)), True),
    "max-dim": ([X3], lambda T, x: tuple(x.max(1)), lambda a: (a.max(1), a.argmax(1)), True),
    "min-dim-keepdim": ([X3], lambda T, x: tuple(x.min(dim=-1, keepdim=True)),
                        lambda a: (a.min(-1, keepdims=True), a.argmin(-1)[..., None]), True),
    "max-all": ([X3], lambda T, x: x.max(), lambda a: a.max(), True),
    "min-all": ([X3], lambda T, x: x.min(), lambda a: a.min(), True),
    "max-binary": ([X3, (5,)], lambda T, x, y: x.max(y), lambda a, b: np.maximum(a, b), True),
    "amax-dims": ([X3], lambda T, x: x.amax((0, 2)), lambda a: a.max(axis=(0, 2)), True),
    "amin-neg-dim": ([X3], lambda T, x: x.amin(-1), lambda a: a.min(axis=-1), True),
    "argmax-flat": ([X3], lambda T, x: x.argmax(), lambda a: np.argmax(a), False),
    "argmax-keepdim": ([X3], lambda T, x: x.argmax(1, keepdim=True), lambda a: a.argmax(1)[:, None], False),
    "argmin": ([X3], lambda T, x: x.argmin(0), lambda a: a.argmin(0), False),
    "clamp-min": ([X3], lambda T, x: x.clamp(min=-0.5), lambda a: np.where(a < -0.5, -0.5, a), True),
    "clamp-max": ([X3], lambda T, x: x.clamp(max=0.3), lambda a: np.where(a > 0.3, 0.3, a), True),
    "clamp-both": ([X3], lambda T, x: x.clamp(-0.5, 0.3), lambda a: np.minimum(np.maximum(a, -0.5), 0.3),
                   True),
    "clamp-tensor-bounds": ([X3, (5,)], lambda T, x, lo: x.clamp(min=lo, max=lo + 1.0),
                            lambda a, lo: np.minimum(np.maximum(a, lo), lo + 1.0), True),
    "clip": ([X3], lambda T, x: x.clip(-1.0, 1.0), lambda a: np.clip(a, -1.0, 1.0), True),
    "where-scalar": ([X3], lambda T, x: T.where(x > 0, x, 0.5), lambda a: np.where(a > 0, a, 0.5), True),
    "where-broadcast": ([X3, (4, 1)], lambda T, x, y: T.where(x > 0, x, y),
                        lambda a, b: np.where(a > 0, a, b), True),
    "masked_fill": ([X3], lambda T, x: x.masked_fill(x < 0, 2.0), lambda a: np.where(a < 0, 2.0, a), True),
    "matmul-1d-1d": ([(4,), (4,)], lambda T, a, b: a @ b, lambda a, b: np.dot(a, b), True),
    "matmul-1d-2d": ([(4,), (4, 3)], lambda T, a, b: T.matmul(a, b), lambda a, b: a @ b, True),
    "matmul-2d-1d": ([(3, 4), (4,)], lambda T, a, b: a.matmul(b), lambda a, b: a @ b, True),
    "matmul-3d-2d": ([(2, 3, 4), (4, 2)], lambda T, a, b: a @ b, lambda a, b: a @ b, True),
    "matmul-broadcast": ([(2, 1, 3, 4), (5, 4, 2)], lambda T, a, b: a @ b, lambda a, b: a @ b, True),
    "matmul-1d-3d": ([(3,), (2, 3, 4)], lambda T, a, b: a @ b, lambda a, b: a @ b, True),
    "matmul-3d-1d": ([(2, 3, 4), (4,)], lambda T, a, b: a @ b, lambda a, b: a @ b, True),
    "mm": ([(2, 3), (3, 4)], lambda T, a, b: a.mm(b), lambda a, b: a @ b, True),
    "bmm": ([(2, 2, 3), (2, 3, 4)], lambda T, a, b: a.bmm(b), lambda a, b: a @ b, True),
    "flatten-all": ([X3], lambda T, x: x.flatten(), lambda a: a.reshape(-1), True),
    "flatten-1": ([X3], lambda T, x: x.flatten(1), lambda a: a.reshape(3, 20), True),
    "flatten-0-1": ([X3], lambda T, x: x.flatten(0, 1), lambda a: a.reshape(12, 5), True),
    "view-infer": ([X3], lambda T, x: x.view(-1, 10), lambda a: a.reshape(6, 10), True),
    "squeeze-all": ([(1, 3, 1, 2)], lambda T, x: x.squeeze(), lambda a: a.reshape(3, 2), True),
    "squeeze-dim": ([(1, 3, 1, 2)], lambda T, x: x.squeeze(2), lambda a: a.reshape(1, 3, 2), True),
    "squeeze-non-1-dim": ([(1, 3, 1, 2)], lambda T, x: x.squeeze(1), lambda a: a, True),
    "unsqueeze-neg": ([(3, 2)], lambda T, x: x.unsqueeze(-1), lambda a: a[:, :, None], True),
    "unsqueeze-0": ([(3, 2)], lambda T, x: x.unsqueeze(0), lambda a: a[None], True),
    "expand": ([(3, 1)], lambda T, x: x.expand(2, -1, 5), lambda a: np.broadcast_to(a, (2, 3, 5)), True),
    "expand_as": ([(3, 1), (3, 4)], lambda T, x, y: x.expand_as(y) * y, lambda a, b: a * b, True),
    "transpose": ([X3], lambda T, x: x.transpose(0, -1), lambda a: np.swapaxes(a, 0, -1), True),
    "permute": ([X3], lambda T, x: x.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1), True),
    "permute-tuple": ([X3], lambda T, x: x.permute((1, 2, 0)), lambda a: a.transpose(1, 2, 0), True),
    "T-2d": ([(3, 4)], lambda T, x: x.T, lambda a: a.T, True),
    "t": ([(3, 4)], lambda T, x: x.t(), lambda a: a.T, True),
    "repeat-more-dims": ([(2, 3)], lambda T, x: x.repeat(2, 1, 3), lambda a: np.tile(a, (2, 1, 3)), True),
    "repeat": ([(2, 3)], lambda T, x: x.repeat(2, 3), lambda a: np.tile(a, (2, 3)), True),
    "split-size": ([(3, 7)], lambda T, x: x.split(3, 1),
                   lambda a: (a[:, :3], a[:, 3:6], a[:, 6:]), True),
    "split-sizes": ([(3, 7)], lambda T, x: x.split([1, 6], -1), lambda a: (a[:, :1], a[:, 1:]), True),
    "chunk-uneven": ([(3, 7)], lambda T, x: x.chunk(3, 1), lambda a: (a[:, :3], a[:, 3:6], a[:, 6:]), True),
    "chunk-0": ([(4, 2)], lambda T, x: x.chunk(2), lambda a: (a[:2], a[2:]), True),
    "unbind": ([(3, 2)], lambda T, x: x.unbind(1), lambda a: (a[:, 0], a[:, 1]), True),
    "narrow": ([X3], lambda T, x: x.narrow(1, 1, 2), lambda a: a[:, 1:3], True),
    "cat-neg-dim": ([(2, 3), (2, 1)], lambda T, a, b: T.cat([a, b, a], -1),
                    lambda a, b: np.concatenate([a, b, a], -1), True),
    "stack-1": ([(2, 3), (2, 3)], lambda T, a, b: T.stack([a, b], 1), lambda a, b: np.stack([a, b], 1), True),
    "stack-last": ([(2, 3), (2, 3)], lambda T, a, b: T.stack((a, b), dim=-1),
                   lambda a, b: np.stack([a, b], -1), True),
    "gather": ([(3, 4)], lambda T, x: x.gather(1, T.tensor([[0, 0, 3], [1, 2, 1], [3, 3, 3]])),
               lambda a: np.take_along_axis(a, np.array([[0, 0, 3], [1, 2, 1], [3, 3, 3]]), 1), True),
    "index_select": ([X3], lambda T, x: x.index_select(1, T.tensor([3, 0, 3])), lambda a: a[:, [3, 0, 3]],
                     True),
    "square-rsqrt": ([(2, 3)], lambda T, x: x.square() + (x * x + 1.0).rsqrt(),
                     lambda a: a * a + 1 / np.sqrt(a * a + 1), True),
    "log1p-reciprocal": ([(2, 3)], lambda T, x: (x * x).log1p() + (x * x + 1).reciprocal(),
                         lambda a: np.log1p(a * a) + 1 / (a * a + 1), True),
    "pow-tensor-exponent": ([(2, 3), (2, 3)], lambda T, x, y: (x * x + 0.5) ** y,
                            lambda a, b: (a * a + 0.5) ** b, True),
    "rpow": ([(3,)], lambda T, x: 2.0 ** x, lambda a: 2.0 ** a, True),
    "rsub-rdiv": ([(3,)], lambda T, x: 1.0 - x + 2.0 / (x * x + 1.0), lambda a: 1.0 - a + 2.0 / (a * a + 1),
                  True),
}

GETITEM = {  # id: (fn(T, x), expected(a)) on a [3, 4, 5] tensor
    "int": (lambda T, x: x[1], lambda a: a[1]),
    "negative-int": (lambda T, x: x[-1], lambda a: a[-1]),
    "two-negative-ints": (lambda T, x: x[-1, -2], lambda a: a[-1, -2]),
    "three-ints": (lambda T, x: x[0, 3, 4], lambda a: a[0, 3, 4]),
    "slice": (lambda T, x: x[1:3], lambda a: a[1:3]),
    "slice-step": (lambda T, x: x[::2, 1::3], lambda a: a[::2, 1::3]),
    "slice-negative-bounds": (lambda T, x: x[:, -3:-1], lambda a: a[:, -3:-1]),
    "slice-out-of-range-clipped": (lambda T, x: x[1:10], lambda a: a[1:10]),
    "none": (lambda T, x: x[:, None], lambda a: a[:, None]),
    "ellipsis-int": (lambda T, x: x[..., 1], lambda a: a[..., 1]),
    "none-ellipsis-slice": (lambda T, x: x[None, ..., -2:], lambda a: a[None, ..., -2:]),
    "list": (lambda T, x: x[[0, 2, 0]], lambda a: a[[0, 2, 0]]),
    "list-negative": (lambda T, x: x[:, [-1, 0]], lambda a: a[:, [-1, 0]]),
    "tensor-2d": (lambda T, x: x[T.tensor([[0, 1], [2, 0]])], lambda a: a[np.array([[0, 1], [2, 0]])]),
    "tensor-0d": (lambda T, x: x[:, T.tensor(2)], lambda a: a[:, 2]),
    "slice-list-int": (lambda T, x: x[:, [0, 2], 1], lambda a: a[:, [0, 2], 1]),
    # PyTorch applies integer indices first (NumPy would move the list's dimension to the front here)
    "int-slice-list": (lambda T, x: x[1, :, [0, 2]], lambda a: a[1][:, [0, 2]]),
    "two-lists-adjacent": (lambda T, x: x[[0, 1], [1, 2]], lambda a: a[[0, 1], [1, 2]]),
    "two-lists-apart": (lambda T, x: x[[0, 1], :, [1, 2]], lambda a: a[[0, 1], :, [1, 2]]),
    "broadcast-lists": (lambda T, x: x[T.tensor([[0], [2]]), T.tensor([1, 3])],
                        lambda a: a[np.array([[0], [2]]), np.array([1, 3])]),
    "bool-mask-full": (lambda T, x: x[x > 0], lambda a: a[a > 0]),
    "bool-mask-rows": (lambda T, x: x[T.tensor(MASK_ROWS)], lambda a: a[MASK_ROWS]),
    "bool-list": (lambda T, x: x[[True, False, True]], lambda a: a[MASK_ROWS]),
    "bool-mask-after-slice": (lambda T, x: x[:, T.tensor(MASK_2D)], lambda a: a[:, MASK_2D]),
    "bool-mask-after-ellipsis": (lambda T, x: x[..., T.tensor(MASK_2D[0])], lambda a: a[..., MASK_2D[0]]),
    "ellipsis-only": (lambda T, x: x[...], lambda a: a),
}


def _inputs(rng, shapes, dtype=np.float64):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _check(got, expected, rtol=1e-10, atol=1e-12):
    got, expected = _as_list(got), _as_list(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = np.asarray(e)
        assert tuple(g.shape) == e.shape
        if e.dtype.kind in "iub":
            assert g.dtype is (tj.bool if e.dtype.kind == "b" else tj.int64)
            np.testing.assert_array_equal(g.numpy(), e)
        else:
            np.testing.assert_allclose(g.detach().numpy(), e, rtol=rtol, atol=atol)


def _torch_check(fn, arrays, got):
    if torch is None:
        return
    ref = _as_list(fn(torch, *[torch.from_numpy(a.copy()) for a in arrays]))
    for g, r in zip(_as_list(got), ref):
        assert str(r.dtype).replace("torch.", "") == g.dtype.name
        np.testing.assert_allclose(g.detach().numpy(), r.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_forward(name, rng):
    shapes, fn, expect, _ = COMPOSITES[name]
    arrays = _inputs(rng, shapes)
    got = fn(tj, *[tj.from_numpy(a) for a in arrays])
    _check(got, expect(*arrays))
    _torch_check(fn, arrays, got)


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_float32_forward(name, rng):
    shapes, fn, expect, _ = COMPOSITES[name]
    arrays = _inputs(rng, shapes, np.float32)
    got = fn(tj, *[tj.from_numpy(a) for a in arrays])
    for g in _as_list(got):
        assert g.dtype in (tj.float32, tj.int64)
    _check(got, expect(*[a.astype(np.float64) for a in arrays]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n, row in COMPOSITES.items() if row[3]])
def test_composite_gradient(name, rng):
    shapes, fn, _, _ = COMPOSITES[name]
    args = [tj.from_numpy(a).requires_grad_() for a in _inputs(rng, shapes)]
    assert gradcheck(lambda *ts: fn(tj, *ts), args)


@pytest.mark.parametrize("name", list(GETITEM))
def test_getitem(name, rng):
    fn, expect = GETITEM[name]
    a = rng.standard_normal(X3)
    got = fn(tj, tj.from_numpy(a))
    _check(got, expect(a))
    _torch_check(fn, [a], got)


@pytest.mark.parametrize("name", [n for n in GETITEM if "bool" not in n])
def test_getitem_gradient(name, rng):
    fn, _ = GETITEM[name]
    x = tj.from_numpy(rng.standard_normal(X3)).requires_grad_()
    assert gradcheck(lambda t: fn(tj, t), [x])


def test_getitem_bool_mask_gradient(rng):
    x = tj.from_numpy(rng.standard_normal((3, 4))).requires_grad_()
    mask = tj.tensor([[True, False, True, True], [False] * 4, [True, False, False, True]])
    assert gradcheck(lambda t: t[mask] * 2.0, [x])
    (x[mask] * tj.arange(5.0).double()).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 1, 2], [0, 0, 0, 0], [3, 0, 0, 4]])


def test_max_with_dim_is_a_named_pair():
    x = tj.tensor([[1.0, 5.0, 5.0], [7.0, 2.0, 7.0]])
    values, indices = x.max(1)
    assert x.max(1).values is not None and x.max(dim=1).indices.tolist() == [1, 0]  # ties: first index
    assert values.tolist() == [5.0, 7.0] and indices.dtype is tj.int64
    assert x.min(0).indices.tolist() == [0, 1, 0]
    assert tj.max(x, 1).values.tolist() == [5.0, 7.0]


def test_amax_splits_the_gradient_between_ties():
    x = tj.tensor([1.0, 3.0, 3.0], requires_grad=True)
    x.amax().backward()
    assert x.grad.tolist() == [0.0, 0.5, 0.5]  # as torch.amax


def test_softmax_rows_sum_to_one_and_are_stable():
    x = tj.tensor([[1000.0, 1000.0], [-1000.0, 0.0]])
    p = x.softmax(-1)
    np.testing.assert_allclose(p.numpy(), [[0.5, 0.5], [0.0, 1.0]])
    assert np.isfinite(x.log_softmax(-1).numpy()).all()


def test_repeat_and_cat_of_ints_and_bools():
    assert tj.tensor([[1, 2]]).repeat(2, 2).tolist() == [[1, 2, 1, 2], [1, 2, 1, 2]]
    assert tj.cat([tj.tensor([True]), tj.tensor([False, True])]).tolist() == [True, False, True]
    assert tj.stack([tj.tensor([1, 2]), tj.tensor([3, 4])]).tolist() == [[1, 2], [3, 4]]


def test_zero_dim_tensors_accept_dim_0_and_minus_1():
    x = tj.tensor(3.0, requires_grad=True)
    assert x.sum(0).item() == 3.0 and x.mean(-1).item() == 3.0 and x.amax(0).item() == 3.0
    assert x.softmax(0).item() == 1.0 and x.log_softmax(-1).item() == 0.0
    x.sum(0, keepdim=True).backward()
    assert x.grad.item() == 1.0 and x.grad.shape == ()
    assert tj.tensor(2.0).unsqueeze(0).shape == (1,) and tj.tensor(2.0).flatten().shape == (1,)


def test_clamp_int_tensor_with_float_bound_promotes():
    out = tj.tensor([-2, 0, 3]).clamp(min=0.5)
    assert out.dtype is tj.float32 and out.tolist() == [0.5, 0.5, 3.0]
    out = tj.tensor([-2, 0, 3]).clamp(-1, 1)
    assert out.dtype is tj.int64 and out.tolist() == [-1, 0, 1]


def test_int_power_stays_int():
    x = tj.tensor([1, 2, -3])
    assert (x ** 2).dtype is tj.int64 and (x ** 2).tolist() == [1, 4, 9]
    assert (x ** 3).dtype is tj.int64 and (x ** 3).tolist() == [1, 8, -27]
    assert (x ** 0).tolist() == [1, 1, 1]
    assert (x.abs() ** 0.5).dtype is tj.float32


# ----------------------------------------------------------------------------------------------- promotion

PROMOTION = {  # id: (fn(T), expected dtype name), as PyTorch
    "int-tensor + float-scalar": (lambda T: T.tensor([1, 2]) + 1.5, "float32"),
    "int-tensor + float64-0d": (lambda T: T.tensor([1, 2]) + T.tensor(1.5, dtype=T.float64), "float64"),
    "float32 + float64-0d": (lambda T: T.tensor([1.0, 2.0]) + T.tensor(1.5, dtype=T.float64), "float32"),
    "float32-0d + float64-0d": (lambda T: T.tensor(1.0) + T.tensor(1.5, dtype=T.float64), "float64"),
    "float32 + int64-0d": (lambda T: T.tensor([1.0]) * T.tensor(2), "float32"),
    "int64-0d + float32": (lambda T: T.tensor(2) + T.tensor([1.0]), "float32"),
    "int-0d + float-scalar": (lambda T: T.tensor(1) + 2.5, "float32"),
    "float64 + float32": (lambda T: T.tensor([1.0], dtype=T.float64) + T.tensor([1.0]), "float64"),
    "float64 + int": (lambda T: T.tensor([1.0], dtype=T.float64) - T.tensor([1]), "float64"),
    "float32 * float-scalar": (lambda T: T.tensor([1.0]) * 2.5, "float32"),
    "bool + int-scalar": (lambda T: T.tensor([True]) + 1, "int64"),
    "bool + int-tensor": (lambda T: T.tensor([True]) + T.tensor([3]), "int64"),
    "bool * float-scalar": (lambda T: T.tensor([True]) * 2.5, "float32"),
    "int + bool-scalar": (lambda T: T.tensor([1]) + True, "int64"),
    "int / int": (lambda T: T.tensor([1, 2]) / T.tensor([2, 2]), "float32"),
    "int / int-scalar": (lambda T: T.tensor([1, 2]) / 2, "float32"),
    "int-scalar / int": (lambda T: 1 / T.tensor([1, 2]), "float32"),
    "int - int-scalar": (lambda T: 1 - T.tensor([1, 2]), "int64"),
    "int < float": (lambda T: T.tensor([1, 2]) < 1.5, "bool"),
    "float == float": (lambda T: T.tensor([1.0]) == T.tensor([1.0], dtype=T.float64), "bool"),
    "sum of bool": (lambda T: T.tensor([True, True]).sum(), "int64"),
    "sum of int": (lambda T: T.tensor([1, 2]).sum(0), "int64"),
    "sum of float64": (lambda T: T.ones(2, dtype=T.float64).sum(), "float64"),
    "int ** float": (lambda T: T.tensor([1, 2]) ** 0.5, "float32"),
    "exp of int": (lambda T: T.tensor([1]).exp(), "float32"),
    "abs of int": (lambda T: T.tensor([-1]).abs(), "int64"),
    "where int/float-scalar": (lambda T: T.where(T.tensor([True]), T.tensor([1]), 2.5), "float32"),
    "cat int/float": (lambda T: T.cat([T.tensor([1]), T.tensor([1.0])]), "float32"),
    "maximum int/float": (lambda T: T.maximum(T.tensor([1]), T.tensor([1.5])), "float32"),
    "tensor of floats": (lambda T: T.tensor([1.0, 2]), "float32"),
    "tensor of ints": (lambda T: T.tensor([1, 2]), "int64"),
    "from_numpy float64": (lambda T: T.from_numpy(np.array([1.0])), "float64"),
    "arange ints": (lambda T: T.arange(5), "int64"),
    "arange floats": (lambda T: T.arange(0, 1, 0.25), "float32"),
    "full int": (lambda T: T.full((2,), 3), "int64"),
    "full bool": (lambda T: T.full((2,), True), "bool"),
    "zeros": (lambda T: T.zeros(2, 3), "float32"),
}


@pytest.mark.parametrize("name", list(PROMOTION))
def test_type_promotion(name):
    fn, expected = PROMOTION[name]
    assert fn(tj).dtype.name == expected
    if torch is not None:
        assert str(fn(torch).dtype) == f"torch.{expected}"


def test_promoted_values():
    np.testing.assert_allclose((tj.tensor([1, 2]) / 2).numpy(), [0.5, 1.0])
    assert (tj.tensor([True, False]) + 1).tolist() == [2, 1]
    assert (tj.tensor([3]) + tj.tensor(0.25, dtype=tj.float64)).tolist() == [3.25]


# ----------------------------------------------------------------------------------------------- repr

REPRS = {  # literal expectations, as PyTorch prints them
    "tensor([1., 2., 3.])": lambda: tj.tensor([1.0, 2.0, 3.0]),
    "tensor([1, 2])": lambda: tj.tensor([1, 2]),
    "tensor(3.5000)": lambda: tj.tensor(3.5),
    "tensor([0.1000, 2.0000])": lambda: tj.tensor([0.1, 2.0]),
    "tensor([ True, False])": lambda: tj.tensor([True, False]),
    "tensor([1.0000, 2.5000], dtype=tracejit.float64)": lambda: tj.tensor([1.0, 2.5], dtype=tj.float64),
    "tensor([1., 2.], requires_grad=True)": lambda: tj.tensor([1.0, 2.0], requires_grad=True),
    "tensor([2., 4.], grad_fn=<MulBackward0>)": lambda: tj.tensor([1.0, 2.0], requires_grad=True) * 2,
    "tensor(6., grad_fn=<SumBackward0>)": lambda: (tj.tensor([1.0, 2.0, 3.0], requires_grad=True)).sum(),
    "tensor([[  1.0000,   2.5000],\n        [100.0000,  -4.0000]])": lambda: tj.tensor([[1, 2.5], [100, -4]]),
    "tensor([[ 1, 20],\n        [-3,  4]])": lambda: tj.tensor([[1, 20], [-3, 4]]),
    "tensor([1.0000e-05, 1.0000e+00])": lambda: tj.tensor([1e-5, 1.0]),
    "tensor([1.0000e+00, 2.0000e+03])": lambda: tj.tensor([1.0, 2000.0]),
    "tensor([nan, 1., inf])": lambda: tj.tensor([float("nan"), 1.0, float("inf")]),
    "tensor(3)": lambda: tj.tensor(3),
    "tensor(True)": lambda: tj.tensor(True),
    "tensor([])": lambda: tj.tensor([]),
    "tensor([], size=(2, 0))": lambda: tj.zeros(2, 0),
    "tensor([], dtype=tracejit.int64)": lambda: tj.zeros(0, dtype=tj.int64),
    "tensor(2.5000, dtype=tracejit.float64)": lambda: tj.tensor(2.5, dtype=tj.float64),
    "tensor([[[1., 2.]],\n\n        [[3., 4.]]])": lambda: tj.tensor([[[1.0, 2.0]], [[3.0, 4.0]]]),
    ("tensor([[0., 1., 2., 3., 4., 5., 6., 7., 8., 9.]], dtype=tracejit.float64,\n"
     "       requires_grad=True)"): lambda: tj.arange(10.0).double().reshape(1, 10).requires_grad_(),
}


@pytest.mark.parametrize("expected", list(REPRS))
def test_repr_literal(expected):
    assert repr(REPRS[expected]()) == expected


def _repr_cases():
    r = np.random.default_rng(3)
    return {
        "floats": [1.5, -2.25, 3.0], "ints": [[1, -20], [300, 4]], "bools": [[True, False], [False, True]],
        "int-valued": [[1.0, 2.0], [-3.0, 4.0]], "wrap-9-per-line": [[0.1] * 10] * 3,
        "randn-3d": r.standard_normal((3, 4, 5)).astype(np.float32),
        "randn-f64": r.standard_normal((2, 3)), "scientific": [1e-5, 123.0, 1e9],
        "summarized-ints": np.arange(3000).reshape(30, 100), "summarized-floats": np.arange(2000.0) * 0.5,
        "summarized-3d": r.standard_normal((2, 3, 200)).astype(np.float32),
        "long-vector": np.arange(40.0).astype(np.float32) * 1.5, "negative-zero": [0.0, -0.0],
        "small": [1e-3, 0.5], "scalar-float": 0.1, "scalar-nan": float("nan"), "zeros": [[0.0, 0.0]],
    }


@needs_torch
@pytest.mark.parametrize("name", list(_repr_cases()))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_repr_matches_torch(name, requires_grad):
    data = np.asarray(_repr_cases()[name])
    mine, theirs = tj.from_numpy(data.copy()), torch.from_numpy(data.copy())
    if requires_grad:
        if data.dtype.kind != "f":
            pytest.skip("only floating-point tensors require grad")
        mine, theirs = mine.requires_grad_(), theirs.requires_grad_()
    assert _same_repr(mine, theirs)
    if data.ndim:
        assert _same_repr(mine * 2, theirs * 2)


def _same_repr(mine, theirs):
    return _unwrap_suffixes(repr(mine)) == _unwrap_suffixes(repr(theirs).replace("torch.", "tracejit."))


def _unwrap_suffixes(text):
    # "tracejit." is 3 characters longer than "torch.", which can move a suffix to its own line
    return re.sub(r",\n {7}(dtype=|requires_grad=|grad_fn=)", r", \1", text)


def test_size_repr_and_metadata():
    x = tj.zeros(2, 3, 4)
    assert repr(x.shape) == "tracejit.Size([2, 3, 4])" and x.shape == (2, 3, 4)
    assert x.size(-1) == 4 and x.dim() == 3 and x.numel() == 24 and len(x) == 2
    assert tj.tensor([2.5]).item() == 2.5 and tj.tensor([[1, 2]]).tolist() == [[1, 2]]


# ----------------------------------------------------------------------------------------------- RNG

FACTORIES = {
    "rand": lambda g=None: tj.rand(3, 4, generator=g),
    "randn": lambda g=None: tj.randn(5, generator=g),
    "randn-f64": lambda g=None: tj.randn((2, 3), generator=g, dtype=tj.float64),
    "randint": lambda g=None: tj.randint(0, 10, (20,), generator=g),
    "randperm": lambda g=None: tj.randperm(10, generator=g),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_manual_seed_reproduces(name):
    make = FACTORIES[name]
    tj.manual_seed(123)
    a, b = make(), make()
    tj.manual_seed(123)
    np.testing.assert_array_equal(make().numpy(), a.numpy())
    np.testing.assert_array_equal(make().numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), b.numpy())  # successive draws differ
    tj.manual_seed(124)
    assert not np.array_equal(make().numpy(), a.numpy())


@pytest.mark.parametrize("name", list(FACTORIES))
def test_generator_is_independent_of_the_default(name):
    make = FACTORIES[name]
    g = tj.Generator().manual_seed(5)
    first = make(g)
    tj.manual_seed(0)
    make()  # draws from the default stream do not move g
    second = make(g)
    g2 = tj.Generator().manual_seed(5)
    np.testing.assert_array_equal(make(g2).numpy(), first.numpy())
    np.testing.assert_array_equal(make(g2).numpy(), second.numpy())
    tj.manual_seed(0)
    default_first = make()
    tj.manual_seed(0)
    make(tj.Generator().manual_seed(99))  # and draws from g do not move the default stream
    np.testing.assert_array_equal(make().numpy(), default_first.numpy())


def test_random_values_and_ranges():
    u = tj.rand(10_000)
    assert u.dtype is tj.float32 and 0.0 <= u.min().item() and u.max().item() < 1.0
    z = tj.randn(100_000).numpy().astype(np.float64)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02
    assert abs(np.mean(z ** 3)) < 0.05 and abs(np.mean(z ** 4) - 3.0) < 0.1  # symmetric, Gaussian tails
    assert tj.randn(7, 3).shape == (7, 3) and tj.randn(()).shape == ()
    assert tj.randint(10, (3,)).shape == (3,) and tj.randint(10, size=(2, 2)).numpy().max() < 10
    r = tj.randint(-3, 4, (5000,)).numpy()
    assert r.dtype == np.int64 and r.min() == -3 and r.max() == 3
    assert sorted(tj.randperm(50).tolist()) == list(range(50))


def test_generator_state_round_trip():
    g = tj.Generator().manual_seed(11)
    state = g.get_state()
    a = tj.rand(6, generator=g)
    g.set_state(state)
    np.testing.assert_array_equal(tj.rand(6, generator=g).numpy(), a.numpy())
    assert g.initial_seed() == 11


# ----------------------------------------------------------------------------------------------- property


@st.composite
def _basic_index(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    k = draw(st.integers(0, len(shape)))
    from_end = draw(st.booleans())  # index the last k dims after an Ellipsis, or the first k
    parts = []
    for size in shape[len(shape) - k:] if from_end else shape[:k]:
        kind = draw(st.sampled_from(["int", "slice", "none"]))
        if kind == "int":
            parts.append(draw(st.integers(-size, size - 1)))
        elif kind == "slice":
            parts.append(slice(draw(st.none() | st.integers(-size - 2, size + 2)),
                               draw(st.none() | st.integers(-size - 2, size + 2)),
                               draw(st.none() | st.integers(1, 3))))
        else:
            parts.extend([None, slice(None)])
    if from_end:
        parts.insert(0, Ellipsis)
    elif draw(st.booleans()):
        parts.append(Ellipsis)
    return shape, tuple(parts)


@settings(max_examples=150, deadline=None)
@given(_basic_index())
def test_basic_indexing_matches_numpy_forward_and_backward(case):
    shape, index = case
    a = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    x = tj.from_numpy(a.copy()).requires_grad_()
    y = x[index]
    np.testing.assert_array_equal(y.detach().numpy(), a[index])
    g = np.arange(1.0, 1.0 + y.numel()).reshape(y.shape)
    y.backward(tj.from_numpy(g))
    expected = np.zeros(shape)
    expected[index] = g  # basic indexing never repeats an element
    np.testing.assert_array_equal(x.grad.numpy(), expected)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(2, 3), max_size=4), st.integers(0, 4), st.booleans(), st.integers(0, 2**31))
def test_broadcast_gradients_sum_over_broadcast_dims(full, nb, mismatch, seed):
    r = np.random.default_rng(seed)
    sa = [1 if r.random() < 0.4 else s for s in full]
    sb = [1 if r.random() < 0.4 else s for s in full[len(full) - min(nb, len(full)):]]
    if r.random() < 0.5:
        sa, sb = sb, sa
    if mismatch and sb and sb[-1] != 1 and sa and sa[-1] != 1:
        sb[-1] += 1
        with pytest.raises(tj.OpError, match="cannot be broadcast"):
            tj.ones(*sa) * tj.ones(*sb)
        return
    out_shape = np.broadcast_shapes(tuple(sa), tuple(sb))
    a, b = r.standard_normal(sa), r.standard_normal(sb)
    x, y = tj.from_numpy(a).requires_grad_(), tj.from_numpy(b).requires_grad_()
    g = r.standard_normal(out_shape)
    (x * y).backward(tj.from_numpy(g))
    ga = g * b
    gb = g * a
    np.testing.assert_allclose(x.grad.numpy(), _sum_to(ga, a.shape), rtol=1e-12)
    np.testing.assert_allclose(y.grad.numpy(), _sum_to(gb, b.shape), rtol=1e-12)


def _sum_to(g, shape):
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    return g.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True).reshape(shape)


def test_random_fill_in_place_and_like_functions():
    g = tj.Generator().manual_seed(3)
    w = tj.zeros(4000, dtype=tj.float64)
    w.uniform_(-2.0, 3.0, generator=g)
    a = w.numpy().copy()
    assert w.dtype is tj.float64 and a.min() >= -2.0 and a.max() < 3.0 and abs(a.mean() - 0.5) < 0.1
    w.normal_(1.0, 0.5, generator=tj.Generator().manual_seed(3))
    assert abs(w.numpy().mean() - 1.0) < 0.05 and abs(w.numpy().std() - 0.5) < 0.05
    assert tj.rand_like(w).dtype is tj.float64 and tj.randn_like(tj.zeros(2, 3)).shape == (2, 3)
    p = tj.full((20_000,), 0.3)
    b = tj.bernoulli(p, generator=g).numpy()
    assert set(np.unique(b)) <= {0.0, 1.0} and abs(b.mean() - 0.3) < 0.02
    with pytest.raises(TypeError, match="floating-point dtype"):
        tj.rand(2, dtype=tj.int64)
