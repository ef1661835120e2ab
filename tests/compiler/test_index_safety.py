"""Never a wrong number, never a crash: indices in compiled code.

Out-of-range class labels, gather/scatter indices and integer subscripts raise the eager error (same class,
same message: op, offending value, the user's line) on every backend, and a failed call leaves parameters,
grads and optimizer state untouched. Integer types that store window positions (max-pool argmax) are wide
enough for the window.
"""

from __future__ import annotations

import numpy as np
import pytest

import tracejit
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit import dtypes as D
from tracejit.dispatch import apply
from tracejit.errors import OpIndexError, TargetIndexError
from tracejit.ops import OPS

from .conftest import assert_same_state, snapshot

BACKENDS = ["reference", "cpu"]
CLASSES = 3


class Wide(nn.Module):
    """Big enough (> 16k parameters) that the CPU backend updates the optimizer state in place."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 1024)
        self.fc2 = nn.Linear(1024, CLASSES)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def _loss(kind):
    if kind == "cross_entropy":
        return F.cross_entropy
    return lambda logits, y: F.nll_loss(logits.log_softmax(1), y)


def _setup(kind, backend):
    tracejit.manual_seed(0)
    model = Wide()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = _loss(kind)

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    rng = np.random.default_rng(0)
    x = tracejit.tensor(rng.standard_normal((4, 16)).astype(np.float32))
    compiled = tracejit.compile(step, backend=backend)
    for _ in range(3):  # the first call creates Adam's state eagerly; then compiled calls (in place on CPU)
        compiled(x, tracejit.tensor([0, 1, 2, 1]))
    assert compiled.history, "the step never compiled"
    return model, opt, step, compiled, x


def _eager_error(fn, *args):
    with pytest.raises(Exception) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("bad", [CLASSES, 4, 10**6, -1, -101])
def test_bad_label_raises_the_eager_error_and_changes_no_state(backend, kind, bad):
    model, opt, step, compiled, x = _setup(kind, backend)
    y = tracejit.tensor([0, bad, 1, 2])
    before = snapshot(model, opt)
    with pytest.raises(TargetIndexError) as info:
        compiled(x, y)
    msg = str(info.value)
    assert msg.startswith(f"{kind}: target label {bad} is out of range for {CLASSES} classes "
                          f"(labels must be in [0, {CLASSES - 1}] or ignore_index=-100)"), msg
    assert __file__ in msg  # the user's line: where the loss is computed in the step
    assert isinstance(info.value, IndexError)
    assert_same_state(before, snapshot(model, opt))
    loss = compiled(x, tracejit.tensor([2, 1, 0, 0]))  # the program still runs after the failure
    assert np.isfinite(loss.item())
    # eager raises the same error (class and message, the same line of the step)
    eager = _eager_error(step, x, y)
    assert type(eager) is TargetIndexError and str(eager) == msg


def test_a_check_after_the_update_leaves_state_unchanged():
    """A label check traced after opt.step() (a metric on the step's logits): the update still runs last, so
    the failed call changes nothing; and memory_plan never lets state be updated in place before a node that
    can still raise (were the update not last)."""
    tracejit.manual_seed(0)
    model = Wide()
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)

    def step(x, y, y_eval):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        return loss, F.cross_entropy(logits.detach(), y_eval)

    compiled = tracejit.compile(step, backend="cpu")
    x, y = tracejit.randn(4, 16), tracejit.tensor([0, 1, 2, 1])
    for _ in range(3):
        compiled(x, y, y)
    before = snapshot(model, opt)
    with pytest.raises(TargetIndexError, match="target label 5"):
        compiled(x, y, tracejit.tensor([0, 1, 5, 1]))
    assert_same_state(before, snapshot(model, opt))

    from tracejit.compiler.ir import Node, Value
    from tracejit.compiler.passes.memory_plan import memory_plan

    g = compiled.latest().graph
    multi = g.nodes[-1]
    assert multi.attrs.get("inplace")  # the update is last and in place
    plain = Node(multi.op, multi.inputs, {k: v for k, v in multi.attrs.items() if k != "inplace"}, multi.outputs,
                 multi.body)
    check = next(n for n in g.nodes if n.body is None and n.op.name == "check_index")
    late = Node(check.op, check.inputs, check.attrs, (Value(check.outputs[0].type),))
    moved = memory_plan(g.replace(nodes=g.nodes[:-1] + [plain, late]))
    assert "inplace" not in moved.nodes[-2].attrs
    assert any("no in-place state updates" in note for note in moved.notes)
    assert memory_plan(g.replace(nodes=g.nodes[:-1] + [plain])).nodes[-1].attrs["inplace"] == multi.attrs["inplace"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_is_accepted_and_matches_eager(backend):
    tracejit.manual_seed(0)
    logits = tracejit.randn(5, CLASSES)
    y = tracejit.tensor([0, -100, 2, -100, 1])
    fn = tracejit.compile(lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1), backend=backend)
    np.testing.assert_allclose(fn(logits, y).item(), F.cross_entropy(logits, y, label_smoothing=0.1).item(),
                               rtol=1e-6)
    with pytest.raises(TargetIndexError, match="target label -1 is out of range"):
        fn(logits, tracejit.tensor([0, -100, 2, -1, 1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unread_loss_still_checks_its_labels(backend):
    """dce keeps check_index even when nothing reads its output: eager would raise there too."""
    def fn(logits, y):
        F.cross_entropy(logits, y)
        return logits * 2.0

    compiled = tracejit.compile(fn, backend=backend)
    logits = tracejit.randn(2, CLASSES)
    compiled(logits, tracejit.tensor([0, 1]))
    with pytest.raises(TargetIndexError, match="target label 7"):
        compiled(logits, tracejit.tensor([0, 7]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_checks_traced_labels(backend):
    fn = tracejit.compile(lambda y: F.one_hot(y, 4).sum(0), backend=backend)
    np.testing.assert_array_equal(fn(tracejit.tensor([0, 3, 3])).numpy(), [1, 0, 0, 2])
    for bad in (4, -1):
        with pytest.raises(TargetIndexError, match=rf"one_hot: class values must be in \[0, 4\), got {bad}"):
            fn(tracejit.tensor([0, bad, 3]))


# ---- gather, index_select, integer subscripts


def _train_lookup(table, opt, use):
    def step(idx):
        opt.zero_grad()
        loss = (use(table, idx) ** 2).sum()
        loss.backward()
        opt.step()
        return loss
    return step


USES = {
    "gather": (lambda t, i: t.gather(1, i), lambda n: np.array([[0, n - 1], [1, 0]])),
    "index_select": (lambda t, i: t.index_select(1, i), lambda n: np.array([0, n - 1, 1])),
    "subscript": (lambda t, i: t[:, i], lambda n: np.array([[0, -1], [n - 1, -n]])),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use", list(USES))
def test_bad_indices_raise_and_change_no_state(backend, use):
    fn, good = USES[use]
    table = tracejit.randn(2, 5, requires_grad=True)
    opt = tracejit.optim.SGD([table], lr=0.1, momentum=0.9)
    step = _train_lookup(table, opt, fn)
    compiled = tracejit.compile(step, backend=backend)
    idx = tracejit.tensor(good(5))
    for _ in range(3):
        compiled(idx)
    # PyTorch: gather and index_select take indices in [0, size); subscripts also take [-size, 0)
    bads = [5, 10**6, -1] if use != "subscript" else [5, 10**6, -6]
    for bad in bads:
        a = good(5)
        a.flat[1] = bad
        before = snapshot(extra=(table, table.grad, opt.state[table]["momentum_buffer"]))
        with pytest.raises(OpIndexError) as info:
            compiled(tracejit.tensor(a))
        msg = str(info.value)
        assert f"index {bad} is out of bounds for dimension" in msg and "with size 5" in msg, msg
        assert __file__ in msg
        if use != "subscript":
            assert msg.startswith(f"{use}: "), msg
        assert_same_state(before, snapshot(extra=(table, table.grad, opt.state[table]["momentum_buffer"])))
        eager = _eager_error(step, tracejit.tensor(a))  # (its zero_grad clears the grad: the next call retraces)
        assert type(eager) is OpIndexError and str(eager) == msg


def test_gather_rejects_negative_indices_like_torch():
    torch = pytest.importorskip("torch")
    x = tracejit.randn(2, 3)
    with pytest.raises(OpIndexError, match="gather: index -1 is out of bounds for dimension 1 with size 3"):
        x.gather(1, tracejit.tensor([[0, -1]]))
    with pytest.raises(RuntimeError, match="index -1 is out of bounds for dimension 1 with size 3"):
        torch.gather(torch.zeros(2, 3), 1, torch.tensor([[0, -1]]))
    with pytest.raises(RuntimeError, match="index_select: index -1 is out of bounds"):  # torch raises here too
        x.index_select(1, tracejit.tensor([-1]))
    np.testing.assert_array_equal(x[:, tracejit.tensor([-1])].numpy(), x.numpy()[:, [-1]])  # subscripts wrap


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["gather", "scatter_add"])
def test_index_kernels_reject_unchecked_indices(backend, op):
    """Defence in depth: the primitives themselves never touch memory out of bounds, even when no check_index
    runs before them (here they are applied directly)."""
    if op == "gather":
        def fn(x, idx):
            return apply(OPS["gather"], x, idx, axis=1)
    else:
        def fn(x, idx):
            return apply(OPS["scatter_add"], idx, x, axis=1, shape=(2, 3))
    compiled = tracejit.compile(fn, backend=backend)
    x = tracejit.randn(2, 3) if op == "gather" else tracejit.randn(2, 2)
    good = compiled(x, tracejit.tensor([[0, 2], [1, 1]]))
    np.testing.assert_array_equal(good.numpy(), fn(x, tracejit.tensor([[0, 2], [1, 1]])).numpy())
    for bad in (3, -1, 10**6, -(10**6)):
        with pytest.raises(OpIndexError, match=rf"{op}: index {bad} is out of bounds for dimension 1 with size 3"):
            compiled(x, tracejit.tensor([[0, 2], [bad, 1]]))


def _reaches_check(graph):
    """For every gather/scatter_add: does each non-constant int64 path into its index come from check_index?"""
    producer = {v.id: n for n in graph.nodes for v in n.outputs}

    def checked(v):
        n = producer.get(v.id)
        if n is None:
            return False  # a graph input read as an index without a check
        if n.op.name in ("check_index", "full"):
            return True
        ints = [u for u in n.inputs if u.dtype is tracejit.int64]
        return bool(ints) and all(checked(u) for u in ints)

    reads = [(n.op.name, n.inputs[1] if n.op.name == "gather" else n.inputs[0]) for n in graph.nodes
             if n.op.name in ("gather", "scatter_add")]
    return reads, all(checked(v) for _, v in reads)


def test_every_gather_and_scatter_in_a_training_step_reads_a_checked_index():
    tracejit.manual_seed(0)
    model = Wide()
    table = tracejit.randn(CLASSES, 4, requires_grad=True)
    opt = tracejit.optim.SGD(list(model.parameters()) + [table], lr=0.1, momentum=0.9)

    def step(x, y, rows):
        opt.zero_grad()
        w = tracejit.ones(CLASSES) + table.sum(1).sigmoid()
        loss = F.cross_entropy(model(x), y, weight=w, label_smoothing=0.1) + table[rows].sum() \
            + F.nll_loss(model(x).log_softmax(1), y)
        loss.backward()
        opt.step()
        return loss

    compiled = tracejit.compile(step, backend="reference")
    args = (tracejit.randn(4, 16), tracejit.tensor([0, 1, 2, 1]), tracejit.tensor([2, -1]))
    for _ in range(2):
        compiled(*args)
    reads, ok = _reaches_check(compiled.latest().traced)
    assert len(reads) >= 6 and ok, reads


# ---- integer types that store window positions


def _pool_grads(k, conv, backend):
    rng = np.random.default_rng(k)
    side = k + 2 if conv else k
    x0 = rng.standard_normal((2, 1, side, side)).astype(np.float32)
    w0 = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)

    def fn(x, w):
        h = F.relu(F.conv2d(x, w)) if conv else x
        F.max_pool2d(h, k).sum().backward()
        grads = (x.grad, w.grad) if conv else (x.grad,)
        x.grad = w.grad = None
        return grads

    def run(f):
        x = tracejit.tensor(x0, requires_grad=True)
        w = tracejit.tensor(w0, requires_grad=conv)
        f(x, w)  # twice: the second call runs the cached program
        grads = [g.numpy() for g in f(x, w)]
        return grads + [None] * (2 - len(grads))

    return x0, w0, run(fn), run(tracejit.compile(fn, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("conv", [False, True], ids=["pool", "conv-relu-pool"])
@pytest.mark.parametrize("k", [2, 16, 20, 32])
def test_max_pool_gradient_with_large_windows(k, conv, backend):
    torch = pytest.importorskip("torch")
    x0, w0, (ex, ew), (cx, cw) = _pool_grads(k, conv, backend)
    tx = torch.tensor(x0, requires_grad=True)
    tw = torch.tensor(w0, requires_grad=True)
    h = torch.relu(torch.nn.functional.conv2d(tx, tw)) if conv else tx
    torch.nn.functional.max_pool2d(h, k).sum().backward()
    if not conv:  # the gradient (ones) lands on each window's maximum, exactly
        np.testing.assert_array_equal(ex, tx.grad.numpy())
        np.testing.assert_array_equal(cx, tx.grad.numpy())
        return
    for got in (ex, cx):
        np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    for got in (ew, cw):
        np.testing.assert_allclose(got, tw.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [16, 17, 20, 300])
def test_cpu_pool_argmax_type_holds_the_window(k):
    from tracejit import ref_kernels as K
    from tracejit.compiler.backends.cpu.window import pool as P

    dtype = P.argmax_dtype((k, k))
    assert np.iinfo(dtype).max >= k * k - 1 and (k > 16 or dtype == np.uint8)
    rng = np.random.default_rng(0)
    side = k if k < 100 else 1
    x = rng.standard_normal((1, 2, k, side)).astype(np.float32)
    kernel = (k, side)
    out, idx = np.empty((1, 2, 1, 1), np.float32), np.empty((1, 2, 1, 1), P.argmax_dtype(kernel))
    P.max_pool2d_forward(x, out, kernel, out_argmax=idx)
    np.testing.assert_array_equal(idx.reshape(-1), x.reshape(2, -1).argmax(1))
    g = np.ones((1, 2, 1, 1), np.float32)
    dx = np.empty_like(x)
    P.max_pool2d_backward(x, g, dx, kernel)
    np.testing.assert_array_equal(dx, K.max_pool2d_grad(x, g, kernel, kernel, (0, 0)))
    with pytest.raises(ValueError, match="argmax"):
        if dtype == np.uint8:
            P.max_pool2d_forward(x, out, kernel, out_argmax=np.empty((1, 2, 1, 1), np.uint16))
        else:
            P.max_pool2d_forward(x, out, kernel, out_argmax=np.empty((1, 2, 1, 1), np.uint8))


def test_argmax_op_refuses_windows_beyond_uint8():
    x = tracejit.randn(1, 1, 17, 17)
    a = dict(stride=(16, 16), padding=(0, 0))
    assert apply(OPS["max_pool2d_argmax"], x, kernel=(16, 16), **a).dtype is D.uint8
    with pytest.raises(tracejit.OpError, match="17x17 window has 289 positions"):
        apply(OPS["max_pool2d_argmax"], x, kernel=(17, 17), **a)
