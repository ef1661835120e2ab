"""sort, argsort, msort, topk, cumsum and prod against PyTorch: values, indices (ties and NaN in PyTorch's
stable order), dtypes, gradients, errors, and inside compiled steps (argsort is a primitive; the rest are
composites: gather for the values, shifted additions for cumsum, a tree of products for prod)."""

import numpy as np
import pytest

import tracejit as tj

torch = pytest.importorskip("torch")

X = np.array([[3.0, 1.0, 2.0, 1.0, np.nan], [0.0, -1.0, 5.0, 5.0, 2.0]])


def _same(ours, theirs, **tol):
    assert ours.dtype.name == str(theirs.dtype).removeprefix("torch."), (ours.dtype, theirs.dtype)
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), **(tol or dict(rtol=1e-6)))


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("dim", [1, 0, -1])
def test_sort_orders_ties_and_nan_as_torch_stable(descending, dim):
    ours = tj.tensor(X).sort(dim, descending=descending)
    theirs = torch.tensor(X).sort(dim=dim, descending=descending, stable=True)
    _same(ours.values, theirs.values, equal_nan=True)
    _same(ours.indices, theirs.indices)
    _same(tj.tensor(X).argsort(dim, descending=descending),
          torch.tensor(X).argsort(dim=dim, descending=descending, stable=True))
    values, indices = tj.sort(tj.tensor(X), dim, descending)  # a (values, indices) pair, as torch.return_types
    _same(indices, theirs.indices)


def test_sort_family_on_ints_bools_0d_and_msort():
    a = np.array([[4, -1, 4, 0], [2, 2, 9, -5]])
    _same(tj.tensor(a).sort(descending=True).values, torch.tensor(a).sort(descending=True).values)
    _same(tj.tensor(a).msort(), torch.tensor(a).msort())
    _same(tj.msort(tj.tensor(a)), torch.msort(torch.tensor(a)))
    b = np.array([True, False, True])
    _same(tj.tensor(b).sort().values, torch.tensor(b).sort().values)
    s = tj.tensor(2.5).sort()
    assert s.values.item() == 2.5 and s.indices.item() == 0 and s.indices.dtype is tj.int64


CASES = {
    "sort values": lambda m, t: t.sort(1).values,
    "sort descending dim 0": lambda m, t: m.sort(t, 0, descending=True)[0],
    "topk": lambda m, t: t.topk(3).values,
    "topk smallest dim 0": lambda m, t: m.topk(t, 2, dim=0, largest=False).values,
    "cumsum": lambda m, t: t.cumsum(1),
    "cumsum dim 0": lambda m, t: m.cumsum(t, 0),
    "cumsum float64": lambda m, t: t.float().cumsum(-1, dtype=m.float64),
    "prod": lambda m, t: t.prod(),
    "prod dim keepdim": lambda m, t: t.prod(1, keepdim=True),
    "prod odd length": lambda m, t: t[:, :5].prod(1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_torch(case, rng):
    x = rng.standard_normal((3, 7))
    ta, tb = tj.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ra, rb = CASES[case](tj, ta), CASES[case](torch, tb)
    tol = dict(rtol=1e-6, atol=1e-6) if "float64" in case else dict(rtol=1e-9, atol=1e-12)  # (via float32)
    _same(ra, rb, **tol)
    w = rng.standard_normal(tuple(rb.shape))
    (ra * tj.tensor(w)).sum().backward()
    (rb * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(ta.grad.numpy(), tb.grad.numpy(), **tol)


def test_topk_indices_and_errors_match_torch(rng):
    x = rng.permutation(20).reshape(4, 5).astype(np.float32)  # distinct: torch's tie order is unspecified
    ours, theirs = tj.tensor(x).topk(2, dim=1), torch.tensor(x).topk(2, dim=1)
    _same(ours.indices, theirs.indices)
    _same(ours.values, theirs.values)
    assert tj.tensor(x).topk(0).values.shape == (4, 0)
    with pytest.raises(RuntimeError, match="selected index k out of range"):
        tj.tensor(x).topk(6)
    with pytest.raises(IndexError, match="Dimension out of range"):
        tj.tensor(x).sort(2)


def test_prod_with_zeros_has_torchs_gradient():
    z = np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 1.0], [1.5, -2.0, 4.0]])
    ta, tb = tj.tensor(z, requires_grad=True), torch.tensor(z, requires_grad=True)
    ta.prod(1).sum().backward()
    tb.prod(1).sum().backward()
    np.testing.assert_array_equal(ta.grad.numpy(), tb.grad.numpy())


@pytest.mark.parametrize("make", [
    lambda m: m.tensor([1, 2, 3]).cumsum(0),
    lambda m: m.tensor([True, False, True]).cumsum(0),
    lambda m: m.tensor([[2, 3], [4, 5]]).prod(1),
    lambda m: m.tensor([True, True]).prod(),
    lambda m: m.tensor([]).prod(),
    lambda m: m.zeros(2, 0).prod(1),
    lambda m: m.tensor([1, 2]).prod(dtype=m.float64),
    lambda m: m.tensor(3.0).cumsum(0),
], ids=["cumsum int", "cumsum bool", "prod int", "prod bool", "prod empty", "prod empty dim", "prod dtype",
        "cumsum 0-d"])
def test_scan_and_product_dtypes_match_torch(make):
    _same(make(tj), make(torch))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compiled_step_with_sort_topk_cumsum_prod_equals_eager(backend, rng):
    w0 = rng.standard_normal((4, 6)).astype(np.float32)

    def make():
        w = tj.tensor(w0.copy(), requires_grad=True)
        opt = tj.optim.SGD([w], lr=0.1)

        def step(x):
            opt.zero_grad()
            h = x @ w
            vals, idx = h.topk(3, dim=1)
            loss = vals.sum() * 0.1 + h.sort(0, descending=True).values[0].sum() * 0.01
            loss = loss + h.cumsum(1)[:, -1].mean() * 0.1 + (h[:, :3] * 0.5).tanh().prod(1).sum()
            loss.backward()
            opt.step()
            return loss, idx, h.argsort(1)

        return w, step

    xs = [tj.tensor(rng.standard_normal((5, 4)).astype(np.float32)) for _ in range(3)]
    w_e, step_e = make()
    eager = [[v.detach().numpy().copy() for v in step_e(x)] for x in xs]
    w_c, step_c = make()
    compiled = tj.compile(step_c, backend=backend)
    got = [[v.detach().numpy().copy() for v in compiled(x)] for x in xs]
    assert len(compiled.variants) == 1
    for a, b in zip(eager, got):
        np.testing.assert_allclose(b[0], a[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(b[1], a[1])
        np.testing.assert_array_equal(b[2], a[2])
    np.testing.assert_allclose(w_c.detach().numpy(), w_e.detach().numpy(), rtol=1e-5, atol=1e-6)
