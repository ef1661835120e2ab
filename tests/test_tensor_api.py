"""The Tensor API the PyTorch tutorials use, against PyTorch: new_* factories, norms (Tensor.norm, tracejit.norm,
tracejit.linalg), tril/triu, eye(requires_grad=), normal (all its forms), ``size=`` on factories, ``out=`` on
ops, 0-d formatting and conversions, torch.nn.modules paths -- and the tutorials' tensor and autograd programs
run with ``import tracejit as torch``, eager and compiled."""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings

import numpy as np
import pytest

import tracejit as tj

torch = pytest.importorskip("torch")


def _arr(t):
    return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)


def _same(a, b, **kw):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y, **kw)
        return
    np.testing.assert_allclose(_arr(a), _arr(b), **kw)
    if hasattr(a, "dtype"):
        assert str(a.dtype).split(".")[-1] == str(b.dtype).split(".")[-1]


# ----------------------------------------------------------------------------------------------- new tensors


NEW = {
    "new_ones": lambda T, x: x.new_ones(2, 3),
    "new_ones-size-kw": lambda T, x: x.new_ones(size=(2,)),
    "new_zeros-tuple-dtype": lambda T, x: x.new_zeros((1, 2), dtype=T.float64),
    "new_full": lambda T, x: x.new_full((2,), 7),
    "new_empty-shape": lambda T, x: x.new_empty(3).shape,
    "new_tensor": lambda T, x: x.new_tensor([1, 2]),
    "new_tensor-int-self": lambda T, x: T.tensor([1, 2]).new_tensor([1.5]),
    "new_ones-requires-grad": lambda T, x: x.new_ones((), requires_grad=True).requires_grad,
    "zeros-size-kw": lambda T, x: T.zeros(size=(2, 2)),
    "ones-size-kw": lambda T, x: T.ones(size=[3]),
    "empty-size-kw": lambda T, x: T.empty(size=(2, 1)).shape,
    "full-keywords": lambda T, x: T.full(size=(2,), fill_value=3),
    "rand-size-kw": lambda T, x: T.rand(size=(2, 3)).shape,
    "randn-size-kw": lambda T, x: T.randn(size=(1, 2)).shape,
    "eye-requires-grad": lambda T, x: (T.eye(2, 3, requires_grad=True).requires_grad, T.eye(3)),
}


@pytest.mark.parametrize("case", sorted(NEW))
def test_new_tensors_and_size_keyword_match_torch(case):
    a, b = (NEW[case](T, T.tensor(3.0)) for T in (tj, torch))
    if isinstance(a, tuple) and not hasattr(a, "dtype") and not isinstance(a[0], bool):
        assert tuple(a) == tuple(b)
    elif isinstance(a, (bool, tuple)):
        assert a[0] == b[0] if isinstance(a, tuple) else a == b
        if isinstance(a, tuple):
            _same(a[1], b[1])
    else:
        _same(a, b)


@pytest.mark.parametrize("call, match", [
    (lambda T: T.zeros(2, size=(2, 2)), "got multiple values for argument 'size'"),
    (lambda T: T.tensor([1, 2]).new_ones(2, requires_grad=True), "floating point"),
])
def test_factory_errors_match_torch(call, match):
    for T in (tj, torch):
        with pytest.raises((TypeError, RuntimeError), match=match):
            call(T)


# ----------------------------------------------------------------------------------------------- norms

X = np.array([[3.0, -4.0, 0.0], [1.0, 2.0, -2.0]])

NORMS = {
    "default": lambda T, x: x.norm(),
    "p1": lambda T, x: x.norm(1),
    "pinf": lambda T, x: x.norm(float("inf")),
    "p-inf": lambda T, x: x.norm(-float("inf")),
    "fro": lambda T, x: x.norm(p="fro"),
    "dim1": lambda T, x: x.norm(dim=1),
    "dim0-keepdim": lambda T, x: x.norm(2, dim=0, keepdim=True),
    "p0": lambda T, x: x.norm(0),
    "p3": lambda T, x: x.norm(3),
    "fn-p1-dim": lambda T, x: T.norm(x, p=1, dim=1),
    "fn-dims": lambda T, x: T.norm(x, dim=(0, 1)),
    "linalg": lambda T, x: T.linalg.norm(x),
    "linalg-ord1": lambda T, x: T.linalg.norm(x, ord=1),
    "linalg-ordinf": lambda T, x: T.linalg.norm(x, ord=float("inf")),
    "linalg-fro": lambda T, x: T.linalg.norm(x, "fro"),
    "linalg-dim": lambda T, x: T.linalg.norm(x, dim=1),
    "linalg-vector": lambda T, x: T.linalg.norm(x[0], ord=1),
    "linalg-3d": lambda T, x: T.linalg.norm(x.reshape(1, 2, 3), dim=(1, 2)),
    "vector_norm": lambda T, x: T.linalg.vector_norm(x),
    "vector_norm-ord1-dim": lambda T, x: T.linalg.vector_norm(x, ord=1, dim=1),
    "vector_norm-inf": lambda T, x: T.linalg.vector_norm(x, float("inf")),
    "vector_norm-keepdim": lambda T, x: T.linalg.vector_norm(x, keepdim=True),
    "matrix_norm": lambda T, x: T.linalg.matrix_norm(x),
    "matrix_norm-1": lambda T, x: T.linalg.matrix_norm(x, ord=-1),
    "matrix_norm--inf": lambda T, x: T.linalg.matrix_norm(x, ord=-float("inf")),
    "norm-dtype": lambda T, x: x.float().norm(dtype=T.float64),
}


@pytest.mark.parametrize("case", sorted(NORMS))
def test_norms_match_torch_values_and_gradients(case):
    fn = NORMS[case]
    out = []
    for T in (tj, torch):
        x = T.tensor(X, dtype=T.float64, requires_grad=True)
        y = fn(T, x)
        if y.requires_grad:
            (y * (T.arange(y.numel(), dtype=y.dtype) + 1).reshape(y.shape)).sum().backward()
        out.append((y, x.grad))
    _same(out[0][0], out[1][0], rtol=1e-6)
    if out[1][1] is not None:
        _same(out[0][1], out[1][1], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("p", [2, 1, float("inf")])
def test_norm_gradient_at_zero_and_ties_match_torch(p):
    for data in ([0.0, 0.0, 0.0], [1.0, -3.0, 3.0]):
        grads = []
        for T in (tj, torch):
            z = T.tensor(data, requires_grad=True)
            z.norm(p).backward()
            grads.append(z.grad)
        _same(grads[0], grads[1])


@pytest.mark.parametrize("call, err, match", [
    (lambda T, x: T.linalg.norm(x, ord=3), RuntimeError, "Order 3 not supported"),
    (lambda T, x: T.linalg.norm(x[0], ord="fro"), RuntimeError, "must have at least 2 dimensions"),
    (lambda T, x: T.linalg.vector_norm(x, ord="fro"), TypeError, "argument 'ord' must be Number, not str"),
    (lambda T, x: T.norm(T.tensor([1, 2])), RuntimeError, "Expected a floating point or complex tensor as input"),
    (lambda T, x: T.norm(x.reshape(1, 2, 3), p="fro", dim=(0, 1, 2)), RuntimeError, "dim must be a 2-tuple"),
    (lambda T, x: T.linalg.norm(x.reshape(1, 2, 3), ord=1), RuntimeError, "the input must be 1D or 2D. Got 3D"),
])
def test_norm_errors_match_torch(call, err, match):
    for T in (tj, torch):
        with pytest.raises(err, match=match):
            call(T, T.tensor(X))


def test_spectral_norms_say_they_need_an_svd():
    for ord_ in (2, -2, "nuc"):
        with pytest.raises(RuntimeError, match="SVD"):
            tj.linalg.norm(tj.tensor(X), ord=ord_)


def test_norms_compiled_equal_eager():
    def fn(x):
        return x.norm(), x.norm(1, dim=0), tj.linalg.norm(x, ord=float("inf")), x.norm(dim=1, keepdim=True)

    x = tj.tensor(X, dtype=tj.float32)
    _same(tj.compile(fn)(x), fn(x), rtol=1e-6)


# ----------------------------------------------------------------------------------------------- tril / triu

TRI = {
    "tril": lambda T, x: x.tril(),
    "triu": lambda T, x: x.triu(),
    "tril-k1": lambda T, x: T.tril(x, diagonal=1),
    "triu-k-1": lambda T, x: T.triu(x, -1),
    "triu-k2-batched": lambda T, x: x.reshape(2, 2, 3).triu(2),
    "tril_": lambda T, x: (x * 1).tril_(-1),
    "triu-bool": lambda T, x: (x > 0).triu(),
}


@pytest.mark.parametrize("case", sorted(TRI))
def test_tril_triu_match_torch(case, rng):
    base = rng.standard_normal((4, 3))
    out = []
    for T in (tj, torch):
        x = T.tensor(base, requires_grad=True)
        y = TRI[case](T, x)
        if y.dtype == T.float32:
            (y * T.arange(12.0).reshape(y.shape)).sum().backward()
        out.append((y, x.grad))
    _same(out[0][0], out[1][0])
    if out[1][1] is not None:
        _same(out[0][1], out[1][1])
    fn = TRI[case]
    _same(tj.compile(lambda x: fn(tj, x))(tj.tensor(base)), fn(tj, tj.tensor(base)))


def test_tril_needs_two_dims():
    for T in (tj, torch):
        with pytest.raises(RuntimeError, match="at least 2 dimensions"):
            T.ones(3).tril()


# ----------------------------------------------------------------------------------------------- normal


def test_normal_forms_shapes_and_dtypes_match_torch():
    forms = [
        lambda T: T.normal(2.0, 3.0, size=(2, 3)),
        lambda T: T.normal(2.0, 3.0, (4,), generator=T.Generator().manual_seed(0)),
        lambda T: T.normal(T.zeros(2, 3), T.ones(2, 3)),
        lambda T: T.normal(T.zeros(2, 3), 1.0),
        lambda T: T.normal(0.0, T.ones(2, 3)),
        lambda T: T.normal(mean=T.zeros(2, 3), std=T.ones(2, 3)),
        lambda T: T.normal(T.zeros(3), T.ones(2, 1)),
        lambda T: T.normal(0.0, 1.0, size=(2,), dtype=T.float64),
        lambda T: T.normal(T.zeros(3, dtype=T.float64), 2.0),
        lambda T: T.normal(0.0, 1.0, size=(2,), requires_grad=True),
    ]
    for f in forms:
        a, b = f(tj), f(torch)
        assert tuple(a.shape) == tuple(b.shape) and str(a.dtype)[-7:] == str(b.dtype)[-7:]
        assert a.requires_grad == b.requires_grad


def test_normal_moments_generator_and_zero_gradients():
    m = tj.tensor([0.0, 10.0]).reshape(2, 1).expand(2, 20000)
    s = tj.tensor([1.0, 0.5]).reshape(2, 1).expand(2, 20000)
    z = tj.normal(m, s).numpy()
    np.testing.assert_allclose(z.mean(1), [0.0, 10.0], atol=0.05)
    np.testing.assert_allclose(z.std(1), [1.0, 0.5], rtol=0.05)
    g1, g2 = tj.Generator().manual_seed(3), tj.Generator().manual_seed(3)
    assert tj.normal(1.0, 2.0, (5,), generator=g1).tolist() == tj.normal(1.0, 2.0, (5,), generator=g2).tolist()
    for T in (tj, torch):  # not reparametrized: zero gradients to mean and std, as PyTorch's NormalBackward
        mm, ss = T.zeros(3, requires_grad=True), T.ones(3, requires_grad=True)
        T.normal(mm, ss).sum().backward()
        assert mm.grad.tolist() == [0.0] * 3 and ss.grad.tolist() == [0.0] * 3


@pytest.mark.parametrize("call, err, match", [
    (lambda T: T.normal(0.0, -1.0, (2,)), RuntimeError, "normal expects std >= 0.0, but found std -1"),
    (lambda T: T.normal(T.zeros(2), -T.ones(2)), RuntimeError, "normal expects all elements of std >= 0.0"),
    (lambda T: T.normal(2.0, 3.0), TypeError, "normal\\(\\) received an invalid combination of arguments"),
    (lambda T: T.normal(T.zeros(2), T.ones(2), (2,)), TypeError, "invalid combination of arguments"),
    (lambda T: T.normal(T.zeros(3), T.ones(2)), RuntimeError, "3.*2|2.*3"),
    (lambda T: T.normal(T.zeros(3, dtype=T.int64), 1.0), NotImplementedError, "normal"),
])
def test_normal_errors_match_torch(call, err, match):
    for T in (tj, torch):
        with pytest.raises(err, match=match):
            call(T)


def test_normal_traces_and_draws_fresh_numbers_each_call():
    step = tj.compile(lambda m: tj.normal(m, 1.0) + tj.normal(0.0, 2.0, (3,)))
    a, b = step(tj.zeros(3)), step(tj.zeros(3))
    assert a.shape == (3,) and a.tolist() != b.tolist()


# ----------------------------------------------------------------------------------------------- out=

OUT = {
    "add": (lambda T, a, b, o: T.add(a, b, out=o), (2, 3)),
    "mul": (lambda T, a, b, o: T.mul(a, b, out=o), (2, 3)),
    "sub-alpha": (lambda T, a, b, o: T.sub(a, b, alpha=2, out=o), (2, 3)),
    "div": (lambda T, a, b, o: T.div(a, b, out=o), (2, 3)),
    "matmul": (lambda T, a, b, o: T.matmul(a, b.t(), out=o), (2, 2)),
    "mm": (lambda T, a, b, o: T.mm(a, b.t(), out=o), (2, 2)),
    "cat": (lambda T, a, b, o: T.cat([a, b], 0, out=o), (4, 3)),
    "stack": (lambda T, a, b, o: T.stack([a, b], out=o), (2, 2, 3)),
    "sum-dim": (lambda T, a, b, o: T.sum(a, 1, out=o), (2,)),
    "mean-dim": (lambda T, a, b, o: T.mean(a, 1, out=o), (2,)),
    "exp": (lambda T, a, b, o: T.exp(a, out=o), (2, 3)),
    "clamp": (lambda T, a, b, o: T.clamp(a, 0.2, 0.5, out=o), (2, 3)),
    "where": (lambda T, a, b, o: T.where(a > 0.3, a, b, out=o), (2, 3)),
    "norm": (lambda T, a, b, o: T.norm(a, dim=1, out=o), (2,)),
    "into-empty": (lambda T, a, b, o: T.add(a, b, out=o), (0,)),
    "zeros-out": (lambda T, a, b, o: T.zeros(2, 3, out=o), (2, 3)),
}


@pytest.mark.parametrize("case", sorted(OUT))
def test_out_writes_into_and_returns_out_as_torch(case, rng):
    fn, shape = OUT[case]
    a0, b0 = rng.random((2, 3)), rng.random((2, 3))
    res = []
    for T in (tj, torch):
        o = T.empty(shape)
        r = fn(T, T.tensor(a0, dtype=T.float32), T.tensor(b0, dtype=T.float32), o)
        assert r is o
        res.append(o)
    _same(res[0], res[1], rtol=1e-6)


def test_out_with_dim_reductions_returns_values_and_indices():
    for T in (tj, torch):
        v, i = T.empty(2), T.empty(2, dtype=T.int64)
        r = T.max(T.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]]), 1, out=(v, i))
        assert r[0] is v and r[1] is i and v.tolist() == [5.0, 7.0] and i.tolist() == [1, 0]


def test_out_rules_match_torch():
    for T in (tj, torch):
        a = T.ones(2, 3)
        with pytest.raises(RuntimeError, match="result type Float.* can't be cast to the desired output type "
                                               "(Long|int64)|can't be cast"):
            T.add(a, a, out=T.empty(2, 3, dtype=T.int64))
        o = T.empty(2)
        T.add(T.ones(2, dtype=T.int64), 1, out=o)  # int into float is fine
        assert o.tolist() == [2.0, 2.0]
        with pytest.raises(RuntimeError, match="out=... arguments don't support automatic differentiation"):
            T.add(T.ones(2, requires_grad=True), 1, out=T.empty(2))
        with T.no_grad():
            assert T.add(T.ones(2, requires_grad=True), 1, out=T.empty(2)).tolist() == [2.0, 2.0]
        o = T.empty(5)
        with pytest.warns(UserWarning, match="resized"):
            T.mul(a, a, out=o)
        assert tuple(o.shape) == (2, 3)
        with pytest.raises(TypeError):
            T.reshape(a, (3, 2), out=o)


def test_out_inside_compile_writes_the_state_tensor():
    buf = tj.zeros(2, 2)

    @tj.compile
    def step(x):
        tj.matmul(x, x, out=buf)
        return buf.sum()

    x = tj.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert step(x).item() == 54.0 and buf.tolist() == [[7.0, 10.0], [15.0, 22.0]]


# ----------------------------------------------------------------------------------------------- scalars out


def test_zero_dim_formatting_and_conversions_match_torch():
    for T in (tj, torch):
        t = T.tensor(2.5)
        assert f"{t:+.2f}" == "+2.50" and f"{t}" == "2.5" and f"{t:.3f}" == "2.500"
        assert f"{T.tensor(7):>4d}" == "   7"
        assert f"{T.tensor(0.5, requires_grad=True):.1f}" == "0.5"
        assert format(T.ones(2), "") == str(T.ones(2))
        with pytest.raises(TypeError, match="unsupported format string passed to Tensor.__format__"):
            format(T.ones(2), ".2f")
        with pytest.raises(TypeError, match="unsupported format string passed to Tensor.__format__"):
            format(T.ones(1), ".2f")
        with pytest.raises(TypeError, match="Parameter.__format__"):
            format(T.nn.Parameter(T.tensor(1.5)), ".2f")
        with pytest.raises(TypeError, match="__round__"):
            round(t)
        assert float(T.tensor(3)) == 3.0 and int(T.tensor(-2.7)) == -2 and int(T.tensor([5])) == 5
        for conv in (float, int):
            with pytest.raises(ValueError, match="only one element tensors can be converted to Python scalars"):
                conv(T.ones(2))
        with pytest.raises(RuntimeError, match="a Tensor with 2 elements cannot be converted to Scalar"):
            T.ones(2).item()


# ----------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("path", [
    "nn.modules.linear.Linear", "nn.modules.loss._Loss", "nn.modules.loss._WeightedLoss", "nn.modules.loss.MSELoss",
    "nn.modules.batchnorm._BatchNorm", "nn.modules.batchnorm.BatchNorm2d", "nn.modules.module.Module",
    "nn.modules.container.Sequential", "nn.modules.container.ModuleList", "nn.modules.conv.Conv2d",
    "nn.modules.activation.ReLU", "nn.modules.dropout.Dropout", "nn.modules.pooling.MaxPool2d",
    "nn.modules.flatten.Flatten", "nn.modules.Linear", "nn.parameter.Parameter", "autograd.Variable",
    "autograd.Function", "autograd.function.Function", "autograd.function.FunctionCtx",
    "autograd.function.once_differentiable", "linalg.norm", "linalg.vector_norm", "linalg.matrix_norm",
])
def test_pytorch_names_resolve(path):
    def get(mod):
        obj = mod
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    ours, theirs = get(tj), get(torch)
    assert callable(ours)
    if isinstance(theirs, type):
        assert ours.__name__ == theirs.__name__ or path.endswith("_IncompatibleKeys")
    if isinstance(theirs, type) and path.startswith("nn."):
        assert isinstance(ours, type) and issubclass(ours, (tj.nn.Module, tj.Tensor))
    import importlib

    if path.startswith("nn.modules.") and path.count(".") == 3:
        mod = importlib.import_module("tracejit." + path.rpartition(".")[0])
        assert getattr(mod, path.rpartition(".")[2]) is ours


def test_nn_modules_isinstance_checks_work():
    assert isinstance(tj.nn.BatchNorm2d(3), tj.nn.modules.batchnorm._BatchNorm)
    assert isinstance(tj.nn.MSELoss(), tj.nn.modules.loss._Loss)
    with pytest.raises(AttributeError, match="has no attribute 'NotALayer'"):
        tj.nn.modules.linear.NotALayer  # noqa: B018


# ----------------------------------------------------------------------------------------------- tutorials

TENSORS_TUTORIAL = '''
data = [[1, 2], [3, 4]]
x_data = torch.tensor(data)
np_array = np.array(data)
x_np = torch.from_numpy(np_array)
x_ones = torch.ones_like(x_data)
print(f"Ones Tensor: \\n {x_ones} \\n")
x_rand = torch.rand_like(x_data, dtype=torch.float)
shape = (2, 3,)
print(f"Ones Tensor: \\n {torch.ones(shape)}")
print(f"Zeros Tensor: \\n {torch.zeros(shape)}")
tensor = torch.rand(3, 4)
print(f"Shape of tensor: {tensor.shape}")
print(f"Datatype of tensor: {tensor.dtype}")
tensor = torch.ones(4, 4)
print(f"First row: {tensor[0]}")
print(f"First column: {tensor[:, 0]}")
print(f"Last column: {tensor[..., -1]}")
tensor[:, 1] = 0
print(tensor)
t1 = torch.cat([tensor, tensor, tensor], dim=1)
print(t1)
y1 = tensor @ tensor.T
y2 = tensor.matmul(tensor.T)
y3 = torch.rand_like(y1)
torch.matmul(tensor, tensor.T, out=y3)
print(y1, y2, y3)
z1 = tensor * tensor
z2 = tensor.mul(tensor)
z3 = torch.rand_like(tensor)
torch.mul(tensor, tensor, out=z3)
print(z1, z2, z3)
agg = tensor.sum()
agg_item = agg.item()
print(agg_item, type(agg_item))
print(f"{tensor} \\n")
tensor.add_(5)
print(tensor)
t = torch.ones(5)
print(f"t: {t}")
n = t.numpy()
print(f"n: {n}")
t.add_(1)
print(f"t: {t}")
print(f"n: {n}")
n = np.ones(5)
t = torch.from_numpy(n)
np.add(n, 1, out=n)
print(f"t: {t}")
print(f"n: {n}")
print(f"{agg}", '{:+.2f}'.format(agg), f"{agg:>8.1f}")
'''

AUTOGRAD_TUTORIAL = '''
x = torch.ones(5)
y = torch.zeros(3)
w = torch.tensor([[0.1, -0.2, 0.3]] * 5, requires_grad=True)
b = torch.tensor([0.5, -0.5, 0.0], requires_grad=True)
z = torch.matmul(x, w) + b
loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
print(f"Gradient function for z = {z.grad_fn is not None}")
loss.backward()
print(w.grad)
print(b.grad)
z = torch.matmul(x, w) + b
print(z.requires_grad)
with torch.no_grad():
    z = torch.matmul(x, w) + b
print(z.requires_grad)
z_det = (torch.matmul(x, w) + b).detach()
print(z_det.requires_grad)
inp = torch.eye(4, 5, requires_grad=True)
out = (inp + 1).pow(2).t()
out.backward(torch.ones_like(out), retain_graph=True)
print(f"First call\\n{inp.grad}")
out.backward(torch.ones_like(out), retain_graph=True)
print(f"\\nSecond call\\n{inp.grad}")
inp.grad.zero_()
out.backward(torch.ones_like(out), retain_graph=True)
print(f"\\nCall after zeroing gradients\\n{inp.grad}")
a = torch.tensor([2., 3.], requires_grad=True)
b = torch.tensor([6., 4.], requires_grad=True)
Q = 3 * a ** 3 - b ** 2
Q.backward(gradient=torch.tensor([1., 1.]))
print(9 * a ** 2 == a.grad)
print(-2 * b == b.grad)
v = torch.autograd.Variable(torch.ones(2), requires_grad=True)
(v * 3).sum().backward()
print(v.grad, isinstance(v, torch.autograd.Variable))
x = torch.tensor([1.5, 2.5])
print(x.new_ones(2), x.new_zeros((1, 2)), x.new_full((2,), 3), x.new_tensor([1, 2]))
print(torch.norm(torch.tensor([3., 4.])), torch.tensor([[1., 2.], [3., 4.]]).tril())
'''

EXAMPLES_SNIPPETS = '''
# pytorch/examples forward_forward: overlay the label on the input
x = torch.tensor([[0.5, 0.2, 0.9, 0.1], [0.3, 0.8, 0.4, 0.6]])
y = torch.tensor([1, 3])
x_ = x.clone()
x_[:, :2] *= 0.0
x_[range(x.shape[0]), y] = x.max()
print(x_, x[range(2), y])
print(x / (x.norm(2, 1, keepdim=True) + 1e-4))
# pytorch/examples regression: poly_desc formats 0-d tensors
W = torch.tensor([[1.5], [-2.25], [0.125]])
b = torch.tensor([0.5])
result = 'y = '
for i, w in enumerate(W.view(-1)):
    result += '{:+.2f} x^{} '.format(w, i + 1)
result += '{:+.2f}'.format(b[0])
print(result)
# word_language_model: the square subsequent mask and positional encoding slices
mask = torch.triu(torch.ones(4, 4) * float('-inf'), diagonal=1)
print(mask)
pe = torch.zeros(3, 4)
position = torch.arange(0, 3, dtype=torch.float).unsqueeze(1)
pe[:, 0::2] = torch.sin(position)
pe[:, 1::2] = torch.cos(position)
print(pe)
'''


def _run_program(src, module):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(src, {"torch": module, "np": np})
    return re.sub(r"\b(torch|tracejit)\.", "T.", buf.getvalue())


@pytest.mark.parametrize("src", [TENSORS_TUTORIAL, AUTOGRAD_TUTORIAL, EXAMPLES_SNIPPETS],
                         ids=["tensors", "autograd", "examples"])
def test_tutorial_programs_print_what_pytorch_prints(src):
    # (rand_like results are overwritten by out= before they are printed: the output is deterministic)
    assert _run_program(src, tj) == _run_program(src, torch)


def test_polynomial_fit_tutorials_eager_compiled_and_torch():
    """"Learning PyTorch with examples": the nn version (Sequential, Linear, Flatten, MSELoss(sum), manual
    update under no_grad) and the custom Module + SGD version."""

    def run(T, compiled):
        x = T.linspace(-math.pi, math.pi, 200)
        y = T.sin(x)
        p = T.tensor([1, 2, 3])
        xx = x.unsqueeze(-1).pow(p)
        model = T.nn.Sequential(T.nn.Linear(3, 1), T.nn.Flatten(0, 1))
        with T.no_grad():
            model[0].weight.copy_(T.tensor([[0.1, -0.2, 0.05]]))
            model[0].bias.fill_(0.0)
        loss_fn = T.nn.MSELoss(reduction="sum")

        def step(xx, y):
            loss = loss_fn(model(xx), y)
            model.zero_grad()
            loss.backward()
            with T.no_grad():
                for param in model.parameters():
                    param -= 1e-6 * param.grad
            return loss

        class Polynomial3(T.nn.Module):
            def __init__(self):
                super().__init__()
                self.a = T.nn.Parameter(T.tensor(0.1))
                self.b = T.nn.Parameter(T.tensor(0.2))
                self.c = T.nn.Parameter(T.tensor(-0.1))
                self.d = T.nn.Parameter(T.tensor(0.05))

            def forward(self, x):
                return self.a + self.b * x + self.c * x ** 2 + self.d * x ** 3

            def string(self):
                return f"y = {self.a.item():.4f} + {self.b.item():.4f} x + {self.c.item():.4f} x^2"

        model2 = Polynomial3()
        optimizer = T.optim.SGD(model2.parameters(), lr=1e-6)

        def step2(x, y):
            loss = T.nn.MSELoss(reduction="sum")(model2(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss

        if compiled:
            step, step2 = tj.compile(step), tj.compile(step2)
        losses = [step(xx, y).item() for _ in range(40)] + [step2(x, y).item() for _ in range(40)]
        lin = model[0]
        return losses, [lin.bias.item()] + [lin.weight[:, i].item() for i in range(3)], model2.string()

    (l_e, w_e, s_e), (l_c, w_c, s_c), (l_t, w_t, s_t) = run(tj, False), run(tj, True), run(torch, False)
    np.testing.assert_allclose(l_e, l_t, rtol=1e-4)
    np.testing.assert_allclose(w_e, w_t, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(l_c, l_e, rtol=1e-4)
    np.testing.assert_allclose(w_c, w_e, rtol=1e-4, atol=1e-7)
    assert s_e == s_t == s_c


def test_positional_encoding_and_masking_patterns_compile():
    """pytorch/examples word_language_model's PositionalEncoding and a column-zeroing training step."""

    def encoding(T, d_model=6, max_len=5):
        pe = T.zeros(max_len, d_model)
        position = T.arange(0, max_len, dtype=T.float).unsqueeze(1)
        div_term = T.exp(T.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = T.sin(position * div_term)
        pe[:, 1::2] = T.cos(position * div_term)
        return pe.unsqueeze(0).transpose(0, 1)

    _same(encoding(tj), encoding(torch), rtol=1e-6)
    w = tj.nn.Parameter(tj.ones(3, 4))

    def step(x, k: int):
        h = x @ w
        h[:, :k] *= 0
        h[h > 5] = 5.0
        loss = h.sum()
        loss.backward()
        return loss

    x = tj.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss_c = tj.compile(step)(x, 2).item()
    g_c = w.grad.numpy().copy()
    w.grad = None
    assert loss_c == step(x, 2).item()
    np.testing.assert_array_equal(g_c, w.grad.numpy())


# ----------------------------------------------------------------------------------------------- more methods

MORE = {
    "abs_": lambda T, x: (x * 1).abs_(),
    "neg_": lambda T, x: (x * 1).neg_(),
    "exp_": lambda T, x: (x * 1).exp_(),
    "sigmoid_": lambda T, x: (x * 1).sigmoid_(),
    "tanh_": lambda T, x: (x * 1).tanh_(),
    "relu_": lambda T, x: (x * 1).relu_(),
    "masked_fill_": lambda T, x: (x * 1).masked_fill_(x > 0.5, -1.0),
    "clamp_min": lambda T, x: x.clamp_min(0.1),
    "clamp_max_": lambda T, x: (x * 1).clamp_max_(0.2),
    "addcmul": lambda T, x: T.addcmul(x, x, x, value=0.5),
    "addcdiv": lambda T, x: x.addcdiv(x, x + 2, value=2),
    "lerp": lambda T, x: T.lerp(x, x * 3, 0.25),
    "dot": lambda T, x: T.dot(x[0], x[1]),
    "mv": lambda T, x: T.mv(x, x[0]),
    "outer": lambda T, x: T.outer(x[0], x[1, :2]),
    "logsumexp": lambda T, x: T.logsumexp(x * 50, 1),
    "logsumexp-keepdim": lambda T, x: x.logsumexp(0, keepdim=True),
    "isnan": lambda T, x: T.isnan(T.log(x - 0.5)),
    "isinf": lambda T, x: T.isinf(1 / (x * 0)),
    "isfinite": lambda T, x: T.isfinite(T.log(x - 0.5)),
    "logical": lambda T, x: (T.logical_and(x > 0.3, x < 0.7), T.logical_or(x > 0.9, x < 0.1),
                             T.logical_xor(x > 0.3, x < 0.7)),
    "count_nonzero": lambda T, x: (T.count_nonzero(x > 0.5), (x > 0.5).count_nonzero(1)),
    "flip": lambda T, x: T.flip(x, (0, 1)),
    "fliplr": lambda T, x: x.fliplr(),
    "tile": lambda T, x: T.tile(x, (2,)),
    "repeat_interleave": lambda T, x: (x.repeat_interleave(2), x.repeat_interleave(3, dim=1)),
    "movedim": lambda T, x: T.movedim(x.reshape(1, 3, 4), 0, -1),
    "broadcast": lambda T, x: (T.broadcast_to(x[0], (2, 4)), *T.broadcast_tensors(x[:, :1], x[0])),
    "stacks": lambda T, x: (T.hstack([x, x]), T.vstack([x[0], x[1]]), T.hstack([x[0], x[1]])),
}


@pytest.mark.parametrize("case", sorted(MORE))
def test_more_methods_match_torch(case, rng):
    base = rng.random((3, 4))
    out = []
    for T in (tj, torch):
        x = T.tensor(base, requires_grad=True)
        with np.errstate(all="ignore"):  # (log of negatives, 1/0: nan and inf, silently as in PyTorch)
            y = MORE[case](T, x)
        ys = y if isinstance(y, tuple) else (y,)
        floats = [t for t in ys if t.dtype == T.float32 and t.requires_grad]
        if floats:
            sum(((t * t).sum() for t in floats), T.tensor(0.0)).backward()
        out.append((ys, x.grad))
    _same(out[0][0], out[1][0], rtol=1e-5)
    if out[1][1] is not None:
        _same(out[0][1], out[1][1], rtol=1e-5)


def test_layout_queries_and_value_comparisons_match_torch():
    for T in (tj, torch):
        x = T.ones(2, 3, 4)
        assert x.is_contiguous() and x.stride() == (12, 4, 1) and x.stride(1) == 4 and x.ndimension() == 3
        assert x.nbytes == 96 and x.itemsize == 4 and not x.is_complex() and x.is_signed()
        assert isinstance(x.data_ptr(), int)
        assert T.allclose(x, x + 1e-9) and not T.allclose(x, x + 1) and T.equal(x, x * 1)
        assert not T.equal(x, T.ones(2, 3)) and T.is_floating_point(x)
        assert T.finfo(T.float32).eps == np.finfo(np.float32).eps and T.get_default_dtype() == T.float32
        assert T.iinfo(T.int64).max == 2 ** 63 - 1
        with pytest.raises(RuntimeError, match="1D tensors expected"):
            T.dot(x, x)


# ---- dtype inference of tensor() and the uint8 storage dtype, against PyTorch

_INFER = {
    "empty": lambda m: m.tensor([]),
    "python float": lambda m: m.tensor(1.5),
    "np.float64 scalar": lambda m: m.tensor(np.float64(0.25)),
    "np.float32 scalar": lambda m: m.tensor(np.float32(2)),
    "np.float64 in a list": lambda m: m.tensor([np.float64(1), 2.0]),
    "np.float16 alone": lambda m: m.tensor([np.float16(1)]),
    "np.float16 with a float": lambda m: m.tensor([np.float16(1), 2.0]),
    "int and np.float64": lambda m: m.tensor([1, np.float64(2)]),
    "nested empty": lambda m: m.tensor([[]]),
    "uint8 array": lambda m: m.tensor(np.array([1, 2], np.uint8)),
}


@pytest.mark.parametrize("case", list(_INFER))
def test_tensor_infers_dtypes_as_torch(case):
    ours, theirs = _INFER[case](tj), _INFER[case](torch)
    assert ours.dtype.name == str(theirs.dtype).removeprefix("torch.")
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


_U8 = {
    "add wraps": lambda m, t: t + 300,
    "mul wraps": lambda m, t: t * t,
    "neg wraps": lambda m, t: -t,
    "sub wraps": lambda m, t: t - 10,
    "true div": lambda m, t: t / 2,
    "to float": lambda m, t: t.float() / 255,
    "sum is int64": lambda m, t: t.sum(),
    "int64 tensor promotes": lambda m, t: t + m.tensor([1, 1, 1, 1]),
    "float scalar promotes": lambda m, t: t + 1.5,
    "compare": lambda m, t: t > 100,
    "min": lambda m, t: t.min(),
    "argmin": lambda m, t: t.argmin(),
    "clamp": lambda m, t: t.clamp(10, 100),
    "float to uint8 wraps": lambda m, t: (t.float() * 1.7).to(m.uint8),
    "byte()": lambda m, t: t.long().byte(),
}


@pytest.mark.parametrize("case", list(_U8))
def test_uint8_eager_math_as_torch(case):
    a = np.array([0, 5, 200, 255], np.uint8)
    ours, theirs = _U8[case](tj, tj.tensor(a)), _U8[case](torch, torch.tensor(a))
    assert ours.dtype.name == str(theirs.dtype).removeprefix("torch.")
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_uint8_is_refused_in_compiled_steps_with_a_hint():
    @tj.compile
    def f(x):
        return x.float() * 2

    with pytest.raises(tj.TraceError, match=r"compiled steps do not support uint8.*\.float\(\) / 255"):
        f(tj.tensor(np.array([1, 2], np.uint8)))
    with pytest.raises(RuntimeError, match="cannot be converted to type uint8 without overflow"):
        tj.tensor([1, 300], dtype=tj.uint8)
