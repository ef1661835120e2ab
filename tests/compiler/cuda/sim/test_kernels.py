"""Every CUDA kernel kind, compiled for `cuda` tensors and run in Numba's simulator, against eager CPU results:
fused elementwise (broadcasting, the vocabulary's NaN/inf rules, casts), reductions (one thread per row, the
block tree in shared memory, and the split into partials + a second pass), softmax / log-softmax / cross-entropy
forward and backward, GEMM (simple and tiled, transposed operands, batched, the linear epilogue), conv2d and its
gradients, the fused conv+relu+pool forward with its compact backward state and its backward, the multi-tensor
optimizer update, movement copies, and the index and random ops."""

import numpy as np
import pytest

import tracejit as tj
import tracejit.nn.functional as F
from tracejit import scalar as S
from tracejit.compiler.backends import get_backend
from tracejit.compiler.backends.cuda import blas
from tracejit.compiler.ir import FusedKind, Pattern
from tracejit.dispatch import apply
from tracejit.ops import OPS, Kind

from .conftest import SIM, host, on_cuda


def _compare(fn, *arrays, rtol=1e-5, atol=1e-6, expect_host=()):
    """fn compiled on cuda tensors == fn eager on cpu tensors; returns the variant."""
    want = fn(*[tj.from_numpy(a) for a in arrays])
    cf = tj.compile(fn)
    got = cf(*on_cuda(*arrays))
    v = cf.latest()
    assert v.backend == "cuda" and str(v.device) == "cuda:0"
    assert [f.split(":")[0] for f in v.program.fallbacks] == list(expect_host), v.program.fallbacks
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    for i, (g, w) in enumerate(zip(got, want)):
        assert str(g.device) == "cuda:0" and g.dtype == w.dtype and g.shape == w.shape, i
        np.testing.assert_allclose(host(g), host(w), rtol=rtol, atol=atol, err_msg=f"output {i}")
    return v


def _labels(v):
    return [s.label for s in v.program.steps()]


# ------------------------------------------------------------------------------------------- elementwise


def test_scalar_vocabulary_is_spelled_for_every_elementwise_op():
    table = get_backend("cuda").scalar_spelling
    for name, op in OPS.items():
        if op.kind is Kind.ELEMENTWISE:
            assert not S.missing(table, [op.expr]), name


def test_fused_elementwise_with_broadcasting_is_one_kernel(rng):
    a = rng.standard_normal((2, 3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 1)).astype(np.float32)
    c = rng.standard_normal(4).astype(np.float32)

    def f(a, b, c):
        return (a * b + c).tanh() + a.sigmoid() - (b * 0.5).exp() + a.relu().sqrt() * c.abs().log()

    v = _compare(f, a, b, c)
    assert all(n.fused_kind is FusedKind.ELEMENTWISE for n in v.graph.nodes)
    assert v.program.launches_per_call() == len(v.graph.nodes)  # one launch per fused node


X = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.0, 100.0, 1e-30, -0.25, 0.5, 3.0], np.float32)
Y = np.array([1.0, np.nan, 2.0, -0.0, 0.0, np.inf, np.nan, -1.0, 0.0, 3.0, -0.5, 2.0], np.float32)


def _all_float_ops(a, b):
    f32 = tj.float32
    return (a.log(), a.sqrt(), a.erf(), a.sin(), a.cos(), a.exp(), a.tanh(), a.sigmoid(), -a, a.abs(), a.sign(),
            a.relu(), a.pow(b), a / b, a + b, a - b, a * b, a.maximum(b), a.minimum(b),
            apply(OPS["where"], a > b, a, b), (a == b).to(f32), (a != b).to(f32), (a < b).to(f32),
            (a <= b).to(f32), (a >= b).to(f32), a.to(tj.bool).to(f32), (a > b).logical_not().to(f32),
            a.to(tj.float64).to(f32))


def test_nan_and_inf_rules_of_every_float_op_hold():
    with np.errstate(all="ignore"):
        _compare(_all_float_ops, X, Y, rtol=2e-6, atol=0)


def test_casts_and_integer_ops():
    xs = np.array([-7, -1, 0, 1, 5, 2**40], np.int64)
    ys = np.array([3, -1, 0, 2, -5, 7], np.int64)
    fin = np.array([-2.75, -0.5, 0.0, 0.5, 2.75, 1e10], np.float32)

    def fn(a, b, f):
        return (a + b, a - b, a * b, -a, a.abs(), a.sign(), a.relu(), a.maximum(b), a.minimum(b),
                f.to(tj.int64), a.to(tj.float32), a.to(tj.bool), (a == b), apply(OPS["where"], a < b, a, b))

    _compare(fn, xs, ys, fin, rtol=0, atol=0)


def test_rounded_divisions():
    """// and div(rounding_mode="trunc"): Python's fmod-based floor for floats (x // 0 is x / 0), C's integer
    division for trunc, the same as eager on the CPU."""
    ys = np.where(Y == 0, 0.1, Y).astype(np.float32)

    def fn(a, b, i, j):
        return a // b, a.div(b, rounding_mode="trunc"), a // 0.3, i // j, i.div(j, rounding_mode="trunc")

    with np.errstate(all="ignore"):
        _compare(fn, X, ys, np.array([-7, 7, -7, 7, 0, 2**40], np.int64), np.array([2, 2, -2, -2, 3, 7], np.int64),
                 rtol=0, atol=0)


def test_remainder_and_fmod():
    """% (the divisor's sign, PyTorch's: fmod moved by b) and fmod (the dividend's) for floats with +-0, inf and NaN
    and for integers, the same as eager on the CPU (float x % 0 is NaN)."""
    def fn(a, b, i, j):
        return a % b, a.fmod(b), a % 0.0, i % j, i.fmod(j)

    with np.errstate(all="ignore"):
        _compare(fn, X, Y, np.array([-7, 7, -7, 7, 0, 2**40], np.int64), np.array([2, 2, -2, -2, 3, 7], np.int64),
                 rtol=0, atol=0)


def test_float64_chain(rng):
    a = rng.standard_normal((3, 5))
    _compare(lambda a: (a * a + 1).log() * a.tanh(), a, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------- reductions


def _reductions(x):
    return (x.sum(), x.sum(0), x.sum(1, keepdim=True), x.amax(0), x.amax(1), (x * x).mean(1), x.max())


@pytest.mark.parametrize("path", ["serial", "block_tree", "split"])
def test_reductions_over_every_axis(path, limits, rng):
    if path != "serial":
        limits.serial_max = 0  # every row through the shared-memory tree
    if path == "split":
        limits.split_min_len, limits.split_rows = 8, 4  # few long rows: partials + a second pass
    x = rng.standard_normal((5, 37)).astype(np.float32)
    x[2, 3] = np.nan  # max lets NaN win, as eager
    v = _compare(_reductions, x, rtol=1e-5, atol=1e-5)
    srcs = "\n".join(s for _, s in v.program.sources())
    if path == "serial":
        assert "cuda.shared.array" not in srcs
    else:
        assert "cuda.shared.array" in srcs and "cuda.syncthreads()" in srcs
    if path == "split":
        assert "_finish(" in srcs


def test_a_reduce_kernel_with_two_reduced_shapes_and_stores(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal((4, 1)).astype(np.float32)

    def f(x, b):
        y = (x - b).exp()
        return y, y.sum(0), y.sum(1)

    _compare(f, x, b)


@pytest.mark.parametrize("path", ["serial", "block_tree"])
def test_softmax_log_softmax_cross_entropy_forward_and_backward(path, limits, rng):
    if path == "block_tree":
        limits.serial_max = 0
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    target = rng.integers(0, 5, 6).astype(np.int64)

    def f(z, y):
        z = z.requires_grad_()
        loss = F.cross_entropy(z, y) + (z.softmax(-1) * F.log_softmax(z, -1)).sum() * 0.1
        (g,) = tj.autograd.grad(loss, [z])
        return loss, g, z.softmax(1), F.log_softmax(z, 0)

    v = _compare(f, logits, target, rtol=1e-5, atol=1e-6)
    kinds = {n.fused_kind for n in v.graph.nodes if n.body is not None}
    assert FusedKind.REDUCE in kinds


# ------------------------------------------------------------------------------------------- GEMM


class FakeCupy:
    """CuPy's asarray / matmul over the simulator's device arrays (NumPy arrays underneath, memory shared): the
    cuBLAS path's wiring -- operands handed over zero-copy, transposed reads, the bias+ReLU epilogue kernel after
    the GEMM, results written into the runtime arena -- checked without a GPU."""

    __version__ = "(simulated)"
    calls = 0

    @staticmethod
    def asarray(a):
        return a._ary  # the simulator's FakeCUDAArray: the very memory, no copy

    @classmethod
    def matmul(cls, a, b, out):
        cls.calls += 1
        np.matmul(a, b, out=out)


@pytest.mark.parametrize("path", ["simple", "tiled", "cublas"])
def test_gemm_plain_transposed_batched_and_linear(path, limits, rng, monkeypatch):
    if path == "cublas":
        if SIM:
            monkeypatch.setattr(blas, "_state", {"cupy": FakeCupy, "why": None})
        elif blas._cupy() is None:
            pytest.skip("CuPy is not installed next to this GPU")
    else:
        monkeypatch.setattr(blas, "_state", {"cupy": None, "why": "tracejit's GEMM asked for by the test"})
    if path == "tiled":
        limits.gemm_simple_max = 0
        limits.tile, limits.reg, limits.bk = 2, 2, 3  # several tiles, partial tiles and k steps on tiny shapes
    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal((7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 7)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    p = rng.standard_normal((2, 3, 5)).astype(np.float32)
    q = rng.standard_normal((2, 5, 4)).astype(np.float32)
    c = rng.standard_normal((4, 7)).astype(np.float32)

    def f(a, b, w, bias, p, q, c):
        return a @ b, a @ w.T, b.T @ a.T, p @ q, F.relu(F.linear(c, w, bias)), F.linear(c * 2, w, bias)

    v = _compare(f, a, b, w, bias, p, q, c, rtol=1e-5, atol=1e-5)
    labels = _labels(v)
    if path == "cublas":  # every GEMM through the library, the linear layers' bias (+relu) in a following kernel
        assert sum("cuBLAS GEMM" in lb for lb in labels) == 6, labels
        assert "cuBLAS through CuPy" in v.program.describe()
        assert not SIM or FakeCupy.calls >= 6
        return
    assert any("transposed operand read in place" in lb for lb in labels), labels
    assert any(n.pattern is Pattern.LINEAR for n in v.graph.nodes)
    assert "transpose (read in place by the GEMM)" in labels
    if path == "tiled":
        assert "sa = cuda.shared.array((3, 4)" in "\n".join(s for _, s in v.program.sources())


def test_integer_matmul(rng):
    a = rng.integers(-5, 5, (3, 4)).astype(np.int64)
    b = rng.integers(-5, 5, (4, 2)).astype(np.int64)
    _compare(lambda a, b: a @ b, a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- window


@pytest.mark.parametrize("kw", [dict(), dict(padding=1), dict(stride=2, padding=1), dict(dilation=2),
                                dict(groups=2, padding=(1, 0))])
def test_conv2d_forward_and_both_gradients(kw, rng):
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4 // kw.get("groups", 1), 3, 3)).astype(np.float32)
    g_shape = F.conv2d(tj.from_numpy(x), tj.from_numpy(w), **kw).shape
    gout = rng.standard_normal(tuple(g_shape)).astype(np.float32)

    def f(x, w, gout):
        x, w = x.requires_grad_(), w.requires_grad_()
        y = F.conv2d(x, w, **kw)
        gx, gw = tj.autograd.grad((y * gout).sum(), [x, w])
        return y, gx, gw

    v = _compare(f, x, w, gout, rtol=1e-4, atol=1e-4)
    labels = " ".join(_labels(v))
    assert "conv2d" in labels and "conv2d_grad_input" in labels and "conv2d_grad_weight" in labels


@pytest.mark.parametrize("path", ["serial", "block_tree"])
@pytest.mark.parametrize("first_layer", [True, False])
def test_conv_relu_pool_fused_forward_and_backward(path, first_layer, limits, rng):
    if path == "block_tree":
        limits.serial_max = 0
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    gout = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)

    def f(x, w, b, gout):
        w, b = w.requires_grad_(), b.requires_grad_()
        wrt = [w, b]
        if not first_layer:
            x = x.requires_grad_()
            wrt = [x] + wrt
        y = F.max_pool2d(F.relu(F.conv2d(x, w, b)), 2)
        return (y,) + tuple(tj.autograd.grad((y * gout).sum(), wrt))

    v = _compare(f, x, w, b, gout, rtol=1e-4, atol=1e-4)
    patterns = [n.pattern for n in v.graph.nodes if n.pattern is not None]
    assert Pattern.CONV_POOL in patterns and Pattern.CONV_POOL_BACKWARD in patterns, patterns
    fwd = next(n for n in v.graph.nodes if n.pattern is Pattern.CONV_POOL)
    assert fwd.outputs[1].dtype is tj.uint8 if hasattr(tj, "uint8") else True  # the compact argmax state
    labels = _labels(v)
    assert "conv2d+bias+relu+max_pool2d (+argmax)" in labels
    assert any(lb.startswith("unpool+relu+conv2d backward") for lb in labels), labels


def test_pooling_with_ties_and_nan_follows_the_first_maximum(rng):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 1] = np.nan
    w = np.ones((1, 1, 1, 1), np.float32)
    gout = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2) + 1

    def f(x, w, gout):
        x = x.requires_grad_()
        y = F.max_pool2d(F.relu(F.conv2d(x, w)), 2)
        (gx,) = tj.autograd.grad((y * gout).sum(), [x])
        return y, gx

    _compare(f, x, w, gout, rtol=0, atol=0)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=2, stride=1, dilation=2),
                                dict(kernel_size=3, stride=2, ceil_mode=True),
                                dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))])
def test_plain_max_and_avg_pooling_forward_and_backward(kw, rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    x[0, 0, 1, 1] = x[0, 0, 1, 2]  # a tie: the first maximum wins

    def f(x):
        x = x.requires_grad_()
        m = F.max_pool2d(x * 1.5, **kw)  # not after a conv: no fused group
        avg_kw = {k: v for k, v in kw.items() if k != "dilation"}
        a = F.avg_pool2d(x, **avg_kw) + F.avg_pool2d(x, count_include_pad=False, **avg_kw)
        gx, = tj.autograd.grad((m * m).sum() + (a * a).sum(), [x])
        return m, a, gx

    v = _compare(f, x, rtol=1e-5, atol=1e-5)
    labels = _labels(v)
    assert {"max_pool2d", "max_pool2d_grad", "avg_pool2d", "avg_pool2d_grad"} <= set(labels), labels


# ------------------------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("make", [lambda ps: tj.optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: tj.optim.Adam(ps, lr=0.01)], ids=["sgd", "adam"])
def test_the_optimizer_update_is_one_launch_for_all_parameters(make):
    def run(device):
        tj.manual_seed(0)
        ps = [tj.randn(3, 4).to(device).requires_grad_(), tj.randn(5).to(device).requires_grad_(),
              tj.randn(2, 2).to(device).requires_grad_()]
        opt = make(ps)

        @tj.compile
        def step(s):
            opt.zero_grad()
            loss = sum((p * p).sum() for p in ps) * s
            loss.backward()
            opt.step()
            return loss

        for _ in range(3):
            step(tj.tensor(0.5).to(device))
        return ps, opt, step

    pc, oc, _ = run("cpu")
    pg, og, step = run("cuda")
    for p, q in zip(pc, pg):
        np.testing.assert_allclose(host(q), host(p), rtol=1e-5, atol=1e-6)
        for k, val in oc.state[p].items():
            np.testing.assert_allclose(np.asarray(host(og.state[q][k]) if hasattr(val, "shape") else og.state[q][k]),
                                       np.asarray(host(val) if hasattr(val, "shape") else val), rtol=1e-5, atol=1e-6)
    multi = [s for s in step.latest().program.steps() if s.nodes and s.nodes[0].fused_kind is FusedKind.MULTI]
    assert len(multi) == 1 and "one launch" in multi[0].label
    assert step.latest().program.updates_in_place


# ------------------------------------------------------------------------------------------- movement


def test_movement_copies(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    y = rng.standard_normal((3, 1)).astype(np.float32)

    def f(x, y):
        return (x.permute(2, 0, 1) * 1, y.expand(2, 3, 5) + 0, x[:, 1:, ::2] * 1, F.pad(x, (1, 2)) + 0,
                F.pad(x, (0, 1, 2, 0), value=3.0) * 1, tj.cat([x, x * 2], 1), x.reshape(6, 4) * 1)

    _compare(f, x, y)


# ------------------------------------------------------------------------------------------- index, random


def test_gather_scatter_add_argmax(rng, monkeypatch):
    from tracejit.compiler.backends.cuda import templates

    x = rng.standard_normal((4, 6)).astype(np.float32)
    idx = rng.integers(0, 6, (4, 3)).astype(np.int64)
    src = rng.standard_normal((4, 3)).astype(np.float32)

    def f(x, idx, src):
        x = x.requires_grad_()
        gathered = x.gather(1, idx)
        (gx,) = tj.autograd.grad((gathered * src).sum(), [x])  # scatter_add of src at idx
        return gathered, gx, x.argmax(1), x.argmax(0, keepdim=True)

    _compare(f, x, idx, src)
    monkeypatch.setattr(templates, "GATHER_SCATTER_MAX", 0)  # the atomic form
    _compare(f, x, idx, src, rtol=1e-6)


def test_a_bad_index_raises_the_eager_error_and_leaves_state_alone():
    w = tj.ones(3, 4).to("cuda").requires_grad_()
    opt = tj.optim.SGD([w], lr=0.1)

    @tj.compile
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(x @ w, y)
        loss.backward()
        opt.step()
        return loss

    x = tj.ones(2, 3).to("cuda")
    step(x, tj.tensor([0, 3]).to("cuda"))
    before = host(w).copy()
    with pytest.raises(IndexError, match="target label 7 is out of range for 4 classes"):
        step(x, tj.tensor([0, 7]).to("cuda"))
    np.testing.assert_array_equal(host(w), before)
    step(x, tj.tensor([1, 2]).to("cuda"))  # the flags were reset: the next call runs
    assert not np.array_equal(host(w), before)


def test_dropout_draws_the_same_bits_as_the_cpu():
    def f(x):
        return F.dropout(x, 0.5, training=True)

    x = np.ones((4, 8), np.float32)
    tj.manual_seed(5)
    want = f(tj.from_numpy(x))
    tj.manual_seed(5)
    cf = tj.compile(f)
    got = cf(*on_cuda(x))
    np.testing.assert_array_equal(host(got), host(want))
    assert any(s.label == "uniform" for s in cf.latest().program.steps())
