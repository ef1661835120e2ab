"""Dtype rules as PyTorch's: the same operation on the same operand dtypes runs in torch (the oracle) and
in tracejit; both must raise, or both must give the same result dtype and values.

Contractions (matmul, mm, bmm, linear, conv2d) need operands of one dtype -- PyTorch raises "expected m1
and m2 to have the same dtype" instead of promoting, so a float64 batch fed to a float32 model fails loudly
instead of silently training in float64. Elementwise ops (add, mul, div, where, comparisons) promote.
"""

import itertools

import numpy as np
import pytest

import tracejit as tj
import tracejit.nn.functional as tjF

torch = pytest.importorskip("torch")
import torch.nn.functional as torchF  # noqa: E402

DTYPES = ("float16", "float32", "float64", "int64", "bool")


def _values(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype == "int64":
        return rng.integers(1, 4, shape)
    return rng.integers(1, 8, shape) / 4.0  # exact in float16, so results agree across libraries


class Operand:
    """A tensor of a shape and dtype (shape () is a 0-d tensor), or a Python scalar (shape None)."""

    def __init__(self, dtype, shape, seed=0):
        self.dtype, self.shape, self.seed = dtype, shape, seed

    def make(self, lib):
        v = _values(self.shape or (), self.dtype, self.seed)
        if self.shape is None:
            return v.item()
        return lib.tensor(v, dtype=getattr(lib, self.dtype))

    def __repr__(self):
        kind = "scalar" if self.shape is None else ("0d" if self.shape == () else "tensor")
        return f"{self.dtype}-{kind}"


def _outcome(lib, F, fn, operands):
    try:
        with np.errstate(all="ignore"):  # x / False is inf in both libraries
            out = fn(lib, F, *[o.make(lib) for o in operands])
    except (RuntimeError, TypeError, ValueError) as e:  # tracejit's OpError is a RuntimeError
        return "raises", e
    dt = str(out.dtype).split(".")[-1]
    vals = out.float().numpy() if dt != "bool" else out.numpy()
    return dt, np.asarray(vals, dtype=np.float64)


def _check(fn, operands):
    t_kind, t_val = _outcome(torch, torchF, fn, operands)
    j_kind, j_val = _outcome(tj, tjF, fn, operands)
    assert (t_kind == "raises") == (j_kind == "raises"), (
        f"{operands}: torch gives {t_kind} {t_val if t_kind == 'raises' else ''}, "
        f"tracejit gives {j_kind} {j_val if j_kind == 'raises' else ''}")
    if t_kind != "raises":
        assert j_kind == t_kind, f"{operands}: torch gives {t_kind}, tracejit gives {j_kind}"
        tol = 1e-2 if "float16" in t_kind else 1e-6
        np.testing.assert_allclose(j_val, t_val, rtol=tol, atol=tol)
    return j_kind, j_val


# ----------------------------------------------------------------------------------------------- elementwise

ELEMENTWISE = {
    "add": lambda T, F, a, b: a + b,
    "radd": lambda T, F, a, b: b + a,
    "mul": lambda T, F, a, b: a * b,
    "div": lambda T, F, a, b: a / b,
    "rdiv": lambda T, F, a, b: b / a,
    "sub": lambda T, F, a, b: a - b,
    "lt": lambda T, F, a, b: a < b,
    "eq": lambda T, F, a, b: a == b,
    "ge": lambda T, F, a, b: b >= a,
    "maximum": lambda T, F, a, b: T.maximum(a, b) if not isinstance(b, (int, float)) else T.maximum(a, a),
    "where": lambda T, F, a, b: T.where(T.tensor([True, False, True]), a, b),
    # alpha is checked against the result's dtype (a float alpha on integers, a bool alpha on numbers raise)
    "add_alpha_int": lambda T, F, a, b: T.add(a, b, alpha=2),
    "add_alpha_zero": lambda T, F, a, b: T.add(a, b, alpha=0),
    "add_alpha_float": lambda T, F, a, b: T.add(a, b, alpha=0.5),
    "add_alpha_bool": lambda T, F, a, b: a.add(b, alpha=True),
    "sub_alpha_int": lambda T, F, a, b: a.sub(b, alpha=3),
    "sub_alpha_float": lambda T, F, a, b: T.sub(a, b, alpha=1.5),
    "pow": lambda T, F, a, b: a ** b,
    "rpow": lambda T, F, a, b: b ** a,
}


def _pairs():
    kinds = [((3,), (3,)), ((3,), ()), ((), (3,)), ((3,), None), ((), ()), ((), None)]
    for da, db in itertools.product(DTYPES, DTYPES):
        for sa, sb in kinds:
            if sb is None and db == "float16":
                continue  # a Python scalar is bool, int or float
            yield Operand(da, sa, 1), Operand(db, sb, 2)


def _check_all(fn, cases):
    failures = []
    for operands in cases:
        try:
            _check(fn, operands)
        except AssertionError as e:
            failures.append(str(e).splitlines()[0])
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_promotion_matches_pytorch(op):
    _check_all(ELEMENTWISE[op], _pairs())


# ----------------------------------------------------------------------------------------------- contractions

CONTRACTIONS = {
    "matmul": (lambda T, F, a, b: T.matmul(a, b), (2, 3), (3, 2)),
    "@": (lambda T, F, a, b: a @ b, (2, 3), (3, 2)),
    "matmul-1d": (lambda T, F, a, b: a @ b, (3,), (3, 2)),
    "matmul-batched": (lambda T, F, a, b: a @ b, (2, 2, 3), (3, 2)),
    "mm": (lambda T, F, a, b: a.mm(b), (2, 3), (3, 2)),
    "bmm": (lambda T, F, a, b: T.bmm(a, b), (2, 2, 3), (2, 3, 2)),
    "linear": (lambda T, F, a, b: F.linear(a, b), (2, 3), (4, 3)),
    "conv2d": (lambda T, F, a, b: F.conv2d(a, b), (1, 2, 4, 4), (3, 2, 3, 3)),
}


@pytest.mark.parametrize("op", list(CONTRACTIONS))
def test_contraction_dtype_rules_match_pytorch(op):
    fn, sa, sb = CONTRACTIONS[op]
    _check_all(fn, [(Operand(da, sa, 1), Operand(db, sb, 2)) for da, db in itertools.product(DTYPES, DTYPES)])


BIASED = {
    "linear": (lambda T, F, x, w, b: F.linear(x, w, b), (2, 3), (4, 3), (4,)),
    "conv2d": (lambda T, F, x, w, b: F.conv2d(x, w, b, padding=1), (1, 2, 4, 4), (3, 2, 3, 3), (3,)),
}


@pytest.mark.parametrize("op", list(BIASED))
def test_bias_dtype_must_match_too(op):
    fn, sx, sw, sb = BIASED[op]
    _check_all(fn, [(Operand(d, sx, 1), Operand(d, sw, 2), Operand(db, sb, 3))
                    for d, db in itertools.product(DTYPES, DTYPES)])


# ----------------------------------------------------------------------------------------------- messages


def _mlp_step():
    model = tj.nn.Sequential(tj.nn.Linear(3, 4), tj.nn.ReLU(), tj.nn.Linear(4, 2))
    opt = tj.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = tjF.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step


@pytest.mark.parametrize("compiled", [False, True])
def test_float64_batch_into_float32_model_raises(compiled):
    model, step = _mlp_step()
    if compiled:
        step = tj.compile(step)
    x, y = tj.from_numpy(np.ones((5, 3))), tj.tensor([0, 1, 0, 1, 1])
    with pytest.raises(tj.OpError, match=r"linear: expected input and weight to have the same dtype, but got: "
                                         r"float64 != float32 \(input \[5, 3\], weight \[4, 3\]\); convert the "
                                         r"input with \.to\(tracejit\.float32\).*test_dtype_rules\.py:\d+"):
        step(x, y)
    w = model[0].weight.detach().numpy().copy()
    assert step(x.float(), y).dtype is tj.float32  # the fix the message names works
    assert not np.array_equal(w, model[0].weight.detach().numpy())
    model.double()  # ... and so does the other one
    assert step(x, y).dtype is tj.float64


@pytest.mark.parametrize("compiled", [False, True])
def test_mixed_dtype_conv_and_matmul_raise_with_op_and_shapes(compiled):
    conv = tj.nn.Conv2d(2, 3, 3)

    def run(x, a, b):
        return conv(x).sum() + (a @ b).sum()

    fn = tj.compile(run) if compiled else run
    x, a, b = tj.ones(1, 2, 5, 5), tj.ones(2, 3), tj.ones(3, 2)
    assert float(fn(x, a, b)) == pytest.approx(float(run(x, a, b)))
    with pytest.raises(tj.OpError, match=r"conv2d: .*float64 != float32 \(input \[1, 2, 5, 5\], weight \[3, 2, 3, 3\]"):
        fn(x.double(), a, b)
    with pytest.raises(tj.OpError, match=r"matmul: expected m1 and m2 to have the same dtype, but got: float32 != "
                                         r"int64 \(m1 \[2, 3\], m2 \[3, 2\]\)"):
        fn(x, a, b.long())


def test_module_half_and_integer_conv():
    lin = tj.nn.Linear(3, 2).half()
    assert lin.weight.dtype is tj.float16 and lin(tj.ones(4, 3).half()).dtype is tj.float16
    x = tj.arange(2 * 2 * 4 * 4).reshape(2, 2, 4, 4)
    w = tj.tensor(np.arange(3 * 2 * 3 * 3).reshape(3, 2, 3, 3) % 3 - 1)
    expect = torchF.conv2d(torch.tensor(x.numpy()), torch.tensor(w.numpy()), padding=1)
    got = tj.compile(lambda x, w: tjF.conv2d(x, w, padding=1))(x, w)  # PyTorch's CPU convolves int64 too
    assert got.dtype is tj.int64 and got.tolist() == expect.tolist()


# ----------------------------------------------------------------------------------------------- float16


def test_float16_is_a_storage_dtype():
    assert tj.half is tj.float16 and tj.float16.itemsize == 2 and tj.float16.is_floating_point
    assert tj.zeros(2, dtype=tj.float16).dtype is tj.float16
    assert tj.tensor([1.5], dtype=tj.half).dtype is tj.float16
    assert tj.from_numpy(np.ones(2, np.float16)).dtype is tj.float16
    assert tj.tensor(np.ones(2, np.float16)).dtype is tj.float16  # as torch.tensor keeps an array's dtype
    x = tj.tensor([1.0, 2.5, 70000.0])
    h = x.half()
    assert h.dtype is tj.float16 and h.to(tj.float32).dtype is tj.float32 and h.float().dtype is tj.float32
    assert h.tolist() == [1.0, 2.5, float("inf")]  # 70000 overflows float16, as in PyTorch
    assert x.to(tj.float16).dtype is tj.float16 and x.type(tj.half).dtype is tj.float16
    assert repr(h[:2]) == "tensor([1.0000, 2.5000], dtype=tracejit.float16)"
    assert repr(torch.tensor([1.0, 2.5]).half()) == "tensor([1.0000, 2.5000], dtype=torch.float16)"


def test_float16_training_math_matches_pytorch():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((4, 1, 6, 6)).astype(np.float16)
    ws = rng.standard_normal((2, 1, 3, 3)).astype(np.float16)
    ls = rng.standard_normal((3, 8)).astype(np.float16)

    def run(T, F):
        x, w = T.tensor(xs), T.tensor(ws).requires_grad_(True)
        lw = T.tensor(ls).requires_grad_(True)
        h = F.max_pool2d(F.relu(F.conv2d(x, w)), 2).flatten(1)
        loss = F.cross_entropy(F.linear(h, lw), T.tensor([0, 1, 2, 1]))
        loss.backward()
        return loss, w.grad, lw.grad

    for e, g in zip(run(torch, torchF), run(tj, tjF)):
        assert str(g.dtype) == "tracejit.float16" and e.dtype == torch.float16
        np.testing.assert_allclose(g.detach().float().numpy(), e.detach().float().numpy(), rtol=2e-2, atol=2e-2)


def test_compiled_steps_refuse_float16_naming_the_op():
    lin = tj.nn.Linear(3, 2).half()

    def fn(x):
        return lin(x).sum()

    x = tj.ones(4, 3).half()
    with pytest.raises(tj.TraceError, match=r"permute: compiled steps do not support float16 \(inputs f16\[2,3\]\)"
                                            r".*\.float\(\).*test_dtype_rules\.py:\d+"):
        tj.compile(fn)(x)
    with pytest.warns(UserWarning, match="runs eagerly: permute: compiled steps do not support float16"):
        out = tj.compile(fn, fallback="eager")(x)
    assert out.dtype is tj.float16 and float(out) == pytest.approx(float(fn(x)))


def test_integer_powers_are_exact_integers_and_negative_scalar_exponents_raise_as_in_pytorch():
    base, exp = [2, 3, -2, 7, 0], [10, 20, 3, 0, 0]
    got = tj.tensor(base) ** tj.tensor(exp)
    want = torch.tensor(base) ** torch.tensor(exp)
    assert got.dtype == tj.int64 and got.tolist() == want.tolist() == [1024, 3486784401, -8, 1, 1]
    assert (tj.tensor(base) ** 3).tolist() == [8, 27, -8, 343, 0]
    for lib in (torch, tj):
        with pytest.raises(RuntimeError, match="negative integer powers"):
            lib.tensor(base) ** -1
        with pytest.raises(RuntimeError, match="alpha must not be a floating point"):
            lib.add(lib.tensor(base), lib.tensor(exp), alpha=0.5)
    # alpha scales the second operand in the result's dtype
    assert tj.tensor([1, 2]).sub(tj.tensor([1, 0]), alpha=3).tolist() == [-2, 2]
    assert tj.tensor([True, False]).add(tj.tensor([False, False]), alpha=0).tolist() == [True, False]


def test_a_tensor_alpha_scales_without_being_read_back_in_a_compiled_step():
    # PyTorch wants a number; a learning rate lifted into a compiled step is a tensor and must stay one
    step = tj.compile(lambda p, g, lr: p.sub(g, alpha=lr))
    p, g = tj.tensor([1.0, 2.0]), tj.tensor([2.0, 4.0])
    assert step(p, g, tj.tensor(0.5)).tolist() == [0.0, 0.0]
    assert step(p, g, tj.tensor(0.25)).tolist() == [0.5, 1.0]  # the same program, another lr
    assert len(step.history) == 1
