"""Item assignment (`x[index] = v`), in-place ops through views (`x[:, :k] *= 0`, `x[0].zero_()`) and NumPy
memory sharing (`numpy()`, `from_numpy`), against PyTorch: values, gradients, errors; eager and compiled."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import tracejit as tj

torch = pytest.importorskip("torch")


def _arr(t):
    return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)


def _run(T, fn, base):
    """fn(T, x) on a fresh float64 copy of `base` (requires_grad off); returns x afterwards."""
    x = T.tensor(base.copy(), dtype=T.float64)
    fn(T, x)
    return x


BASE = np.arange(24, dtype=np.float64).reshape(4, 6) - 10

# id: fn(T, x) assigning into x (same code for tracejit and torch)
CASES = {
    "column-scalar": lambda T, x: x.__setitem__((slice(None), 1), 0),
    "row-tensor": lambda T, x: x.__setitem__(0, T.arange(6, dtype=T.float64)),
    "strided-cols": lambda T, x: x.__setitem__((slice(None), slice(0, None, 2)), T.ones(4, 3, dtype=T.float64)),
    "strided-rows-broadcast": lambda T, x: x.__setitem__(slice(1, None, 2), T.tensor([1.0, 2, 3, 4, 5, 6],
                                                                                  dtype=T.float64)),
    "ellipsis-last": lambda T, x: x.__setitem__((Ellipsis, -1), 7.5),
    "none-index": lambda T, x: x.__setitem__((Ellipsis, None, 2), 3),
    "value-leading-ones": lambda T, x: x.__setitem__((slice(None), 2), T.ones(1, 4, dtype=T.float64)),
    "slice-empty": lambda T, x: x.__setitem__(slice(2, 2), 5),
    "full-slice": lambda T, x: x.__setitem__(slice(None), T.zeros(6, dtype=T.float64)),
    "mask-scalar": lambda T, x: x.__setitem__(x < 0, 0),
    "mask-rows-vector": lambda T, x: x.__setitem__(T.tensor([True, False, True, False]),
                                                   T.arange(6, dtype=T.float64)),
    "mask-values-per-element": lambda T, x: x.__setitem__(x > 10, T.arange(3, dtype=T.float64) + 0.5),
    "mask-list": lambda T, x: x.__setitem__((slice(None), [True, False, True, False, False, True]), -1),
    "index-tensor-rows": lambda T, x: x.__setitem__(T.tensor([3, 0]), 9),
    "index-negative": lambda T, x: x.__setitem__(T.tensor([-1]), T.ones(1, 6, dtype=T.float64)),
    "index-pairs": lambda T, x: x.__setitem__((T.tensor([0, 1, 2]), T.tensor([5, 4, 3])),
                                              T.tensor([1.0, 2.0, 3.0], dtype=T.float64)),
    "index-list-and-slice": lambda T, x: x.__setitem__(([0, 2], slice(1, 3)), T.tensor([[1.0], [2.0]],
                                                                                     dtype=T.float64)),
    "int-then-index": lambda T, x: x.__setitem__((1, T.tensor([0, 5])), 4),
    "imul-slice": lambda T, x: x[:, :3].__imul__(0),
    "iadd-augmented": lambda T, x: _augmented(x),
    "view-row-inplace": lambda T, x: x[1].add_(100),
    "view-chain": lambda T, x: x[1:3][:, 2].fill_(-1),
    "view-reshape": lambda T, x: x.view(-1)[:5].zero_(),
    "view-transpose": lambda T, x: x.t()[0].mul_(2),
    "view-narrow": lambda T, x: x.narrow(1, 2, 2).add_(1),
    "view-chunks-both": lambda T, x: [c.mul_(-1) for c in x.chunk(2, 1)],
    "view-unbind-copy": lambda T, x: x.unbind(0)[2].copy_(T.ones(6, dtype=T.float64)),
    "nested-setitem": lambda T, x: x[2].__setitem__(3, 42),
    "view-of-detach": lambda T, x: x.detach()[0].fill_(5),
    "view-of-data": lambda T, x: x.data[:, 0].add_(1),
    "view-iteration": lambda T, x: [row.__setitem__(0, i) for i, row in enumerate(x)],
}


def _augmented(x):
    x[:, 1:4] += 1  # getitem, in-place on the view, setitem back
    x[::2] *= 2


@pytest.mark.parametrize("case", sorted(CASES))
def test_assignment_matches_torch(case):
    fn = CASES[case]
    np.testing.assert_array_equal(_arr(_run(tj, fn, BASE)), _arr(_run(torch, fn, BASE)))


DATA_DEPENDENT = {"mask-values-per-element", "mask-list"}  # one value per selected element: eager only (below)


@pytest.mark.parametrize("case", sorted(set(CASES) - DATA_DEPENDENT))
def test_assignment_compiled_equals_eager(case):
    fn = CASES[case]

    @tj.compile
    def step(x):
        y = x * 1.0
        fn(tj, y)
        return y

    x = tj.tensor(BASE.copy(), dtype=tj.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            got = step(x)
    np.testing.assert_array_equal(_arr(got), _arr(_run(tj, fn, BASE)))


def test_mask_selecting_per_element_values_is_eager_only():
    @tj.compile
    def step(x):
        y = x * 1.0
        y[y > 10] = tj.arange(3, dtype=tj.float64)
        return y

    with pytest.raises(tj.TraceError, match="boolean-mask"):
        step(tj.tensor(BASE.copy(), dtype=tj.float64))


@pytest.mark.parametrize("index, value, err, match", [
    ((slice(None), 1), "ones6", RuntimeError, "expanded size of the tensor \\(4\\) must match the existing "
                                              "size \\(6\\)"),
    ((slice(None), 1), "ones41", RuntimeError, "number of sizes provided \\(1\\) must be greater or equal"),
    ((0, 9), 1.0, IndexError, "index 9 is out of bounds for dimension 1 with size 6"),
    ("idx9", 1.0, IndexError, "index 9 is out of bounds"),
    ("mask", "two", RuntimeError, "shape mismatch: value tensor of shape \\[2\\] cannot be broadcast to indexing "
                                  "result of shape \\[10\\]"),
    ("idx02", "int0d", RuntimeError, "Index put requires the source and destination dtypes match"),
    ("badmask", 1.0, IndexError, "mask"),
])
def test_assignment_errors_match_torch(index, value, err, match):
    for T in (tj, torch):
        x = T.tensor(BASE.copy(), dtype=T.float32)
        idx = {"idx9": T.tensor([9]), "mask": x < 0, "idx02": T.tensor([0, 2]),
               "badmask": T.ones(3, dtype=T.bool)}.get(index, index) if isinstance(index, str) else index
        v = {"ones6": T.ones(6), "ones41": T.ones(4, 1), "two": T.ones(2),
             "int0d": T.tensor(5)}.get(value, value) if isinstance(value, str) else value
        with pytest.raises(err, match=match if T is tj else None):
            x[idx] = v


def test_assignment_casts_python_numbers_and_basic_index_values():
    for T in (tj, torch):
        x = T.zeros(2, 3, dtype=T.int64)
        x[:, 1] = 2.7  # truncates, as a copy into an int tensor
        x[0] = T.tensor([1.9, 2.0, 3.5])  # basic indexing converts a tensor value (copy_ semantics)
        assert x.tolist() == [[1, 2, 3], [0, 2, 0]]
        b = T.zeros(4, dtype=T.bool)
        b[T.tensor([0, 2])] = True
        assert b.tolist() == [True, False, True, False]


def test_duplicate_indices_write_the_mean_in_eager_and_compiled():
    # PyTorch leaves it undefined; tracejit writes the mean of the values sent to one place, in both modes
    x = tj.zeros(3)
    x[tj.tensor([1, 1, 2])] = tj.tensor([2.0, 4.0, 5.0])
    assert x.tolist() == [0.0, 3.0, 5.0]

    @tj.compile
    def step(x, idx, v):
        y = x * 1.0
        y[idx] = v
        return y

    got = step(tj.zeros(3), tj.tensor([1, 1, 2]), tj.tensor([2.0, 4.0, 5.0]))
    assert got.tolist() == [0.0, 3.0, 5.0]


# ----------------------------------------------------------------------------------------------- autograd


GRAD_CASES = {
    "slice": lambda T, y, v: y.__setitem__((slice(None), 1), v[:3] * 2),
    "strided": lambda T, y, v: y.__setitem__((slice(None), slice(0, None, 2)), v[:2]),
    "mask": lambda T, y, v: y.__setitem__(y.detach() > 0, v[0]),
    "index": lambda T, y, v: y.__setitem__(T.tensor([2, 0]), v[:4]),
    "index-dup": lambda T, y, v: y.__setitem__(T.tensor([1]), v[:4].unsqueeze(0)),
    "view-inplace": lambda T, y, v: y[1].mul_(v[:4]),
    "augmented": lambda T, y, v: y[:, :2].__imul__(v[:2]),
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_assignment_gradients_match_torch(case, rng):
    fn = GRAD_CASES[case]
    base, vals = rng.standard_normal((3, 4)), rng.standard_normal(4)
    grads = []
    for T in (tj, torch):
        x = T.tensor(base, dtype=T.float64, requires_grad=True)
        v = T.tensor(vals, dtype=T.float64, requires_grad=True)
        y = x * 1.0
        fn(T, y, v)
        (y * T.arange(12, dtype=T.float64).reshape(3, 4)).sum().backward()
        grads.append((_arr(y), _arr(x.grad), None if v.grad is None else _arr(v.grad)))
    (y1, gx1, gv1), (y2, gx2, gv2) = grads
    np.testing.assert_allclose(y1, y2)
    np.testing.assert_allclose(gx1, gx2)
    if case != "index-dup":
        np.testing.assert_allclose(gv1, gv2)


def test_assignment_gradient_compiled_equals_eager(rng):
    x0, v0 = rng.standard_normal((3, 4)), rng.standard_normal(3)

    def step(x, v):
        y = x * 1.0
        y[:, 2] = v.exp()
        y[y < 0] = 0.0
        y[:, ::2] *= 3.0
        loss = (y * y).sum()
        loss.backward()
        return loss

    results = []
    for fn in (step, tj.compile(step)):
        x = tj.tensor(x0, requires_grad=True)
        v = tj.tensor(v0, requires_grad=True)
        loss = fn(x, v)
        results.append((loss.item(), x.grad.numpy().copy(), v.grad.numpy().copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_assignment_to_a_leaf_that_requires_grad_raises_as_torch():
    for T in (tj, torch):
        w = T.ones(3, requires_grad=True)
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            w[0] = 5.0
        with pytest.raises(RuntimeError, match="view of a leaf Variable that requires grad"):
            w[1:].zero_()
        with T.no_grad():
            w[0] = 5.0
            w[1:].mul_(2)
        assert w.tolist() == [5.0, 2.0, 2.0]


def test_assignment_bumps_the_version_checked_by_backward():
    for T in (tj, torch):
        x = T.ones(3, requires_grad=True)
        y = x * 2
        z = y * y  # saves y
        y[0] = 5.0
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            z.sum().backward()


def test_inplace_on_an_expanded_view_raises_as_torch():
    for T in (tj, torch):
        e = T.ones(3).expand(2, 3)
        with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
            e.add_(1)


def test_sibling_views_see_each_others_writes_before_an_inplace_op():
    for T in (tj, torch):
        x = T.zeros(4)
        a, b = x[:3], x[1:]
        a.add_(1)  # writes x[0:3]
        b.add_(1)  # b is re-derived from x first: x[1:3] now holds 2
        assert x.tolist() == [1.0, 2.0, 2.0, 1.0]


# ----------------------------------------------------------------------------------------------- NumPy sharing


def test_numpy_shares_memory_as_in_the_tensors_tutorial():
    t = tj.ones(5)
    n = t.numpy()
    t.add_(1)
    assert n.tolist() == [2.0] * 5
    n[0] = 7
    assert t.tolist() == [7.0, 2.0, 2.0, 2.0, 2.0]
    n = np.ones(5)
    t = tj.from_numpy(n)
    np.add(n, 1, out=n)
    assert t.tolist() == [2.0] * 5 and t.dtype is tj.float64
    t.mul_(3)
    t[1] = -1
    assert n.tolist() == [6.0, -1.0, 6.0, 6.0, 6.0]


def test_numpy_sharing_survives_aliases_views_and_compiled_updates():
    w = tj.zeros(4)
    p = tj.nn.Parameter(w)
    n = w.numpy()
    with tj.no_grad():
        p.add_(1)  # the Parameter shares w's storage
        w[2:].fill_(5)
        w.view(2, 2)[0].mul_(3)
    assert n.tolist() == [3.0, 3.0, 5.0, 5.0]
    a = np.asarray(w)  # np.asarray shares too, as t.numpy()

    @tj.compile
    def step(d):
        with tj.no_grad():
            w.add_(d)

    for _ in range(3):
        step(tj.ones(4))
    assert n.tolist() == [6.0, 6.0, 8.0, 8.0] and w.tolist() == n.tolist()
    assert np.shares_memory(a, n)
    w.data = tj.zeros(4)  # the storage is replaced, as in PyTorch: NumPy's array is not it any more
    w.add_(1)
    assert n.tolist() == [6.0, 6.0, 8.0, 8.0] and w.tolist() == [1.0] * 4


def test_numpy_sharing_keeps_autograd_values():
    x = tj.from_numpy(np.array([1.0, 2.0, 3.0]))
    w = tj.tensor([2.0, 2.0, 2.0], dtype=tj.float64, requires_grad=True)
    z = w * x  # saves x
    x.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()
    a = tj.ones(3, requires_grad=True)
    v = a * 3.0
    s = v.detach().numpy()
    v.pow_(2)  # saves the old value of v: a copy, since the new one is written into the array NumPy holds
    v.sum().backward()
    assert s.tolist() == [9.0] * 3 and a.grad.tolist() == [18.0] * 3


def test_from_numpy_says_when_it_cannot_share_memory():
    a = np.ones(3, dtype=np.int32)
    with pytest.warns(UserWarning, match="no int32 dtype, so the tensor is a copy \\(in int64\\) that does not share"):
        t = tj.from_numpy(a)
    assert t.dtype is tj.int64 and (t.float() / 255).tolist() == pytest.approx([1 / 255] * 3)
    u = np.ones(3, dtype=np.uint8)  # uint8 is stored: shared, as in PyTorch
    t = tj.from_numpy(u)
    t.add_(254)
    assert t.dtype is tj.uint8 and u.tolist() == [255] * 3
    with pytest.raises(TypeError, match="expected np.ndarray"):
        tj.from_numpy([1.0])
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.warns(UserWarning, match="not writable"):
        t = tj.from_numpy(ro)
    t.add_(1)
    assert ro.tolist() == [1.0] * 3 and t.tolist() == [2.0] * 3
    a = np.arange(3.0)
    assert np.shares_memory(tj.as_tensor(a).numpy(), a)  # as_tensor of an array shares, as in PyTorch


def test_numpy_refuses_tensors_that_require_grad():
    for T in (tj, torch):
        with pytest.raises(RuntimeError, match="Can't call numpy\\(\\) on Tensor that requires grad"):
            T.ones(2, requires_grad=True).numpy()


def test_views_of_captured_state_write_back_from_compiled_steps():
    def make():
        return tj.nn.Parameter(tj.arange(12.0).reshape(3, 4))

    def step(w, x):
        loss = (w * x).sum()
        loss.backward()
        with tj.no_grad():
            w[:, 0].zero_()  # a view of the parameter: written back into it
            w[1:] -= 0.5 * w.grad[1:]
            w.grad = None
        return loss

    w_e, w_c = make(), make()
    compiled = tj.compile(lambda x: step(w_c, x))
    for i in range(3):
        x = tj.full((3, 4), float(i + 1))
        assert step(w_e, x).item() == compiled(x).item()
    assert w_e.tolist() == w_c.tolist()


# ----------------------------------------------------------------------------------------------- other devices


@pytest.fixture
def fake():
    fake_device = pytest.importorskip("compiler.fake_device")  # (tests/compiler/fake_device.py)
    yield fake_device.install()
    fake_device.uninstall()
    tj.set_default_device(None)


DEVICE_CASES = ["column-scalar", "strided-cols", "mask-scalar", "mask-list", "index-pairs", "iadd-augmented",
                "view-row-inplace", "view-reshape"]


@pytest.mark.parametrize("case", DEVICE_CASES)
def test_assignment_on_another_device_equals_the_cpu(fake, case):
    fn = CASES[case]
    x = tj.tensor(BASE.copy(), dtype=tj.float64).to("fake")
    fn(tj, x)
    assert str(x.device) == "fake:0"
    np.testing.assert_array_equal(x.cpu().numpy(), _arr(_run(tj, fn, BASE)))


def test_api_factories_and_triangles_on_another_device(fake):
    x = tj.tensor(BASE[:3, :3].copy()).to("fake")
    for y in (x.tril(), x.triu(1), x.new_ones(2), x.new_tensor([1.0]), tj.normal(x, 1.0), x.norm(dim=1),
              x.flip(0), tj.zeros(size=(2,), device="fake")):
        assert str(y.device) == "fake:0"
    np.testing.assert_array_equal(x.tril().cpu().numpy(), np.tril(BASE[:3, :3]))


def test_compiled_assignment_on_another_device(fake):
    @tj.compile
    def step(x, v):
        y = x * 1.0
        y[:, 1] = v
        y[y < 0] = 0.0
        y[:, ::2] *= 2.0
        return y

    x, v = tj.tensor(BASE.copy()), tj.arange(4.0)
    want = step(x, v).numpy()
    got = step(x.to("fake"), v.to("fake"))
    assert str(got.device) == "fake:0"
    np.testing.assert_array_equal(got.cpu().numpy(), want)
