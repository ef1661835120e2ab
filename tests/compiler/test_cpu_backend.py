"""The Numba CPU backend: render() is pure source text with the promised shape (loop nests, prange only for
large spaces, float32 constants, the cpu_math library, merged dims); compiled results equal eager ones
(tolerances stated per test) for every elementwise op with its gradient, reductions, broadcasting,
softmax/cross-entropy, and whole training steps; results are deterministic; kernel counts.

Numba compiles ~0.1-0.3 s per kernel, so shapes repeat across tests (identical kernels are loaded once
per process and from the disk cache across runs) and the graphs are small.
"""

import copy
import math
import os
import re
from pathlib import Path

os.environ.setdefault("TRACEJIT_CACHE_DIR", str(Path(__file__).resolve().parents[2] / ".tracejit_cache" / "tests"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tracejit  # noqa: E402
import tracejit.nn as nn  # noqa: E402
import tracejit.nn.functional as F  # noqa: E402
from tracejit.compiler.backends import cache as kernel_cache  # noqa: E402
from tracejit.compiler.backends import cpu  # noqa: E402
from tracejit.compiler.backends.cpu import render as cpu_render  # noqa: E402
from tracejit.compiler.backends.cpu import threads  # noqa: E402
from tracejit.compiler.backends.cpu.render import render, render_multi  # noqa: E402
from tracejit.compiler.backends.kernel import lower  # noqa: E402
from tracejit.compiler.backends.reference import run_graph  # noqa: E402
from tracejit.compiler.ir import FusedKind, parse_graph  # noqa: E402
from tracejit.compiler.passes import run_pipeline  # noqa: E402
from tracejit.ops import OPS, Kind  # noqa: E402

from .graphs import inputs_for, random_graph, random_inputs  # noqa: E402

# float32 tolerances: one or two roundings per op (FMA contraction, the cpu_math library's 1-2 ulp)
EW = dict(rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- helpers


def fused_node(text: str):
    """The single fused node of a one-node graph written as IR text."""
    g = parse_graph(text)
    (node,) = g.nodes
    assert node.fused_kind is not None
    return node


def source_of(text: str, parallel=None) -> str:
    return render(lower(fused_node(text)), "kernel", parallel)


def no_bare_floats(src: str) -> bool:
    """No float literal outside np.float32(...)/np.float64(...): Python floats promote float32 math."""
    stripped = re.sub(r"np\.float(32|64)\([^()]*\)", "", src)
    stripped = re.sub(r"fastmath=\{[^}]*\}", "", stripped)
    return re.search(r"(?<![\w.])(\d+\.\d*|\.\d+|\d+[eE][-+]?\d+)", stripped) is None


def compiled(fn):
    return tracejit.compile(fn, backend="cpu")


def generated_steps(cf) -> list:
    """Program steps that call generated Numba source (single kernels or whole segments of nodes)."""
    return [s for s, *_ in cf.history[-1].program.plan if isinstance(getattr(s, "source", None), str)]


def assert_ran_compiled(cf, eager_calls=0, variants=1):
    """The calls went through `variants` compiled variants whose fused nodes all became Numba kernels."""
    assert len(cf.history) == variants, cf.log
    assert cf.eager_calls == eager_calls, cf.log
    for v in cf.history:
        assert getattr(v.program, "fallbacks", []) == [], v.program.fallbacks
    assert generated_steps(cf), "no Numba kernel ran"


def t(a, requires_grad=False):
    return tracejit.tensor(np.array(a), requires_grad=requires_grad)


def close(got, want, name="", **tol):
    got = got.detach().numpy() if hasattr(got, "numpy") else np.asarray(got)
    want = want.detach().numpy() if hasattr(want, "numpy") else np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, want.shape, got.dtype, want.dtype)
    if got.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, err_msg=name, **tol)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


# --------------------------------------------------------------------------------------------- render

BIAS_NCHW = """
graph g(%x: f32[2,3,4,5] {arg: x}, %b: f32[1,3,1,1] {arg: b}) {
  %c: f32[2,3,4,5] = fused(%x, %b) {kind='elementwise'}
    body elementwise_0(%x: f32[2,3,4,5], %b: f32[1,3,1,1]) {
      %a: f32[2,3,4,5] = add(%x, %b)
      %h: f32[] = full() {shape=(), value=0.5, dtype=f32}
      %m: f32[2,3,4,5] = mul(%a, %h)
      %e: f32[2,3,4,5] = exp(%m)
      %s: f32[2,3,4,5] = sigmoid(%e)
      %c: f32[2,3,4,5] = tanh(%s)
      return %c
    }
  return %c
}
"""

LARGE_CHAIN = """
graph g(%x: f32[256,512] {arg: x}, %y: f32[256,512] {arg: y}) {
  %c: f32[256,512] = fused(%x, %y) {kind='elementwise'}
    body elementwise_0(%x: f32[256,512], %y: f32[256,512]) {
      %k: f32[] = full() {shape=(), value=1.5, dtype=f32}
      %a: f32[256,512] = mul(%x, %k)
      %e: f32[256,512] = exp(%a)
      %l: f32[256,512] = log(%e)
      %c: f32[256,512] = add(%l, %y)
      return %c
    }
  return %c
}
"""

SMALL_CHAIN = """
graph g(%x: f32[4,8,16] {arg: x}, %y: f32[4,8,16] {arg: y}) {
  %c: f32[4,8,16] = fused(%x, %y) {kind='elementwise'}
    body elementwise_0(%x: f32[4,8,16], %y: f32[4,8,16]) {
      %a: f32[4,8,16] = mul(%x, %y)
      %k: f32[] = full() {shape=(), value=0.25, dtype=f32}
      %b: f32[4,8,16] = sub(%a, %k)
      %c: f32[4,8,16] = relu(%b)
      return %c
    }
  return %c
}
"""

REDUCE_BOTH = """
graph g(%x: f32[256,512] {arg: x}) {
  %s: f32[256], %t: f32[512] = fused(%x) {kind='reduce'}
    body reduce_0(%x: f32[256,512]) {
      %e: f32[256,512] = exp(%x)
      %s: f32[256] = sum(%e) {axes=(1,), keepdim=False}
      %t: f32[512] = sum(%e) {axes=(0,), keepdim=False}
      return %s, %t
    }
  return %s, %t
}
"""


def test_render_merges_broadcast_dims_into_a_rank3_nest():
    k = lower(fused_node(BIAS_NCHW))
    assert k.space == (2, 3, 20)  # [N, C, H*W]: bias[1, C, 1, 1] keeps C apart, H and W merge
    src = render(k, "kernel")
    assert re.search(r"for i0 in range\(2\):", src)
    assert re.search(r"for i1 in range\(3\):", src)
    assert re.search(r"for i2 in range\(20\):", src)
    assert "i3" not in src
    assert re.search(r"a\d\[0, i1, 0\]", src), src  # the bias is read at its channel only


def test_render_same_shape_chain_is_one_flat_loop():
    k = lower(fused_node(SMALL_CHAIN))
    assert k.space == (512,)
    src = render(k, "kernel")
    assert re.search(r"for i0 in range\(512\):", src)
    assert "i1" not in src


def test_render_small_space_is_serial_and_large_space_uses_prange(monkeypatch):
    monkeypatch.setattr(cpu_render, "PARALLEL_MIN", 1 << 16)  # the sizes below straddle this threshold
    small = source_of(SMALL_CHAIN)
    assert "parallel=False" in small
    assert "prange" not in small
    large = source_of(LARGE_CHAIN)
    assert "parallel=True" in large
    assert "numba.prange(" in large
    # the decision can be forced either way
    assert "prange" not in source_of(LARGE_CHAIN, parallel=False)
    assert "numba.prange(" in source_of(SMALL_CHAIN, parallel=True)


def test_render_float32_constants_and_cpu_math_library():
    for text in (BIAS_NCHW, LARGE_CHAIN, SMALL_CHAIN, REDUCE_BOTH):
        src = source_of(text)
        assert no_bare_floats(src), src
        assert not re.search(r"\bmath\.", src), src  # libm is scalar: the cpu_math library vectorizes
        assert not re.search(r"\bnp\.(exp|log|tanh)\(", src), src
    src = source_of(BIAS_NCHW)
    assert "np.float32(0.5)" in src
    for fn in ("exp", "sigmoid", "tanh"):
        assert f"M.{fn}_f32(" in src
    src = source_of(LARGE_CHAIN)
    assert "np.float32(1.5)" in src
    assert "M.exp_f32(" in src and "M.log_f32(" in src
    assert "error_model='numpy'" in src


def test_render_float64_kernel_uses_float64_library_and_constants():
    src = source_of(BIAS_NCHW.replace("f32", "f64"))
    assert "np.float64(0.5)" in src
    assert "M.exp_f64(" in src and "M.tanh_f64(" in src and "M.sigmoid_f64(" in src
    assert "_f32" not in src.replace("Z_f32", "").replace("O_f32", "")
    assert no_bare_floats(src)


def test_render_reductions_inner_accumulator_and_ordered_outer_partials(monkeypatch):
    monkeypatch.setattr(cpu_render, "PARALLEL_MIN", 1 << 16)  # the sizes below straddle this threshold
    src = source_of(REDUCE_BOTH)
    assert "numba.prange(" in src
    # the inner-dim sum accumulates locally; the outer-dim sum writes per-block partials that are
    # combined after the parallel loop in a fixed order (serial range): same bits at any thread count
    assert re.search(r"acc\w* = Z_f32", src)
    prange_at = src.index("numba.prange(")
    combine = re.search(r"\n    for c in range\((\d+|nc\w*)\):", src)  # (nc = min(n, CHUNKS): see render)
    assert combine and combine.start() > prange_at, src
    assert no_bare_floats(src)


def test_render_is_pure(tmp_path, monkeypatch):
    cache_dir = tmp_path / "kernels"
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(cache_dir))
    node = fused_node(REDUCE_BOTH)
    k = lower(node)
    before = copy.deepcopy(k)
    a = render(k, "kernel")
    b = render(k, "kernel")
    assert a == b
    assert k == before  # the kernel description is not modified
    assert render(lower(fused_node(REDUCE_BOTH)), "kernel") == a  # same node, same text
    assert not cache_dir.exists()  # nothing written, nothing loaded
    assert "def kernel(" in a and render(k, "other").count("def other(") == 1


def test_render_multi_runs_kernels_in_sequence_with_distinct_names():
    k1 = lower(fused_node(SMALL_CHAIN), prefix="v0_")
    k2 = lower(fused_node(BIAS_NCHW), prefix="v1_")
    src = render_multi([k1, k2], "kernel")
    header = re.search(r"def kernel\(([^)]*)\):", src).group(1).split(", ")
    assert header == ["a0_0", "a0_1", "a1_0", "a1_1", "o0_0", "o1_0"]
    assert src.count("@numba.njit") == 1
    assert src.index("v0_") < src.index("v1_")


# --------------------------------------------------------------------------------------------- elementwise ops


def _pos(rng, shape):
    return rng.uniform(0.5, 2.0, shape).astype(np.float32)


def _nonzero(rng, shape):
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)).astype(np.float32)


def _normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def _bool(rng, shape):
    return rng.random(shape) < 0.5


def _ties(rng, shape):
    """Two arrays with some equal elements (comparisons and maximum/minimum ties)."""
    a = _normal(rng, shape)
    b = np.where(rng.random(shape) < 0.3, a, _normal(rng, shape)).astype(np.float32)
    return a, b


# op name -> (function of tensors, input maker(rng, shape) -> list of arrays, differentiable inputs)
UNARY = {
    "neg": (lambda x: -x, _normal), "exp": (lambda x: x.exp(), _normal), "log": (lambda x: x.log(), _pos),
    "sqrt": (lambda x: x.sqrt(), _pos), "abs": (lambda x: x.abs(), _nonzero),
    "tanh": (lambda x: x.tanh(), _normal), "sigmoid": (lambda x: x.sigmoid(), _normal),
    "relu": (lambda x: x.relu(), _nonzero), "sin": (lambda x: x.sin(), _normal),
    "cos": (lambda x: x.cos(), _normal), "erf": (lambda x: x.erf(), _normal),
}
BINARY = {
    "add": (lambda a, b: a + b, lambda r, s: [_normal(r, s), _normal(r, s)]),
    "sub": (lambda a, b: a - b, lambda r, s: [_normal(r, s), _normal(r, s)]),
    "mul": (lambda a, b: a * b, lambda r, s: [_normal(r, s), _normal(r, s)]),
    "div": (lambda a, b: a / b, lambda r, s: [_normal(r, s), _nonzero(r, s)]),
    "pow": (lambda a, b: a.pow(b), lambda r, s: [_pos(r, s), r.uniform(-2, 2, s).astype(np.float32)]),
    "maximum": (lambda a, b: a.maximum(b), lambda r, s: list(_ties(r, s))),
    "minimum": (lambda a, b: a.minimum(b), lambda r, s: list(_ties(r, s))),
    "remainder": (lambda a, b: a % b, lambda r, s: [_normal(r, s) * 8, _nonzero(r, s)]),
    "fmod": (lambda a, b: a.fmod(b), lambda r, s: [_normal(r, s) * 8, _nonzero(r, s)]),
}
NO_GRAD = {
    "sign": (lambda x: x.sign(), lambda r, s: [np.where(r.random(s) < 0.2, 0, _normal(r, s)).astype(np.float32)]),
    "logical_not": (lambda x: x.logical_not(), lambda r, s: [_bool(r, s)]),
    **{name: (getattr(tracejit.Tensor, name), lambda r, s: list(_ties(r, s)))
       for name in ("eq", "ne", "lt", "le", "gt", "ge")},
    "floor_divide": (lambda a, b: a // b, lambda r, s: [_normal(r, s) * 8, _nonzero(r, s)]),
    "trunc_divide": (lambda a, b: a.div(b, rounding_mode="trunc"), lambda r, s: [_normal(r, s) * 8, _nonzero(r, s)]),
}
SHAPE = (6, 7)
ELEMENTWISE_ROWS = set(UNARY) | set(BINARY) | set(NO_GRAD) | {"where", "cast", "full"}


def test_every_elementwise_op_has_a_row():
    ew = {name for name, op in OPS.items() if op.kind is Kind.ELEMENTWISE}
    assert ew == ELEMENTWISE_ROWS


def _fwd_bwd(fn, arrays, grad_inputs, seed=1):
    """Run fn(*inputs).backward(g) eagerly and compiled; compare outputs and every input's .grad."""
    g_arr = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)

    def step(*args):
        *xs, g = args
        y = fn(*xs)
        y.backward(g)
        return y

    def inputs():
        return [t(a, requires_grad=i in grad_inputs) for i, a in enumerate(arrays)] + [t(g_arr)]

    eager_in, comp_in = inputs(), inputs()
    want = step(*eager_in)
    cf = compiled(step)
    got = cf(*comp_in)
    assert_ran_compiled(cf)
    close(got, want, "forward", **EW)
    for i in grad_inputs:
        close(comp_in[i].grad, eager_in[i].grad, f"grad of input {i}", **EW)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_op_forward_and_gradient(name):
    fn, make = UNARY[name]
    _fwd_bwd(fn, [make(np.random.default_rng(0), SHAPE)], [0])


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_op_forward_and_gradient(name):
    fn, make = BINARY[name]
    _fwd_bwd(fn, make(np.random.default_rng(0), SHAPE), [0, 1])


def test_where_forward_and_gradient():
    rng = np.random.default_rng(0)
    _fwd_bwd(lambda c, a, b: tracejit.where(c, a, b), [_bool(rng, SHAPE), _normal(rng, SHAPE), _normal(rng, SHAPE)],
             [1, 2])


def test_cast_forward_and_gradient():
    # float32 -> float64 -> float32 round trip with a float64 op in between
    _fwd_bwd(lambda x: (x.double() * 3.0).float(), [_normal(np.random.default_rng(0), SHAPE)], [0])


def test_full_constant_in_a_kernel():
    _fwd_bwd(lambda x: x * tracejit.full_like(x, 2.5) + tracejit.full(SHAPE, -0.75),
             [_normal(np.random.default_rng(0), SHAPE)], [0])


@pytest.mark.parametrize("name", sorted(NO_GRAD))
def test_op_without_gradient_forward(name):
    fn, make = NO_GRAD[name]
    arrays = make(np.random.default_rng(0), SHAPE)
    want = fn(*[t(a) for a in arrays])
    cf = compiled(fn)
    got = cf(*[t(a) for a in arrays])
    assert_ran_compiled(cf)
    close(got, want, name)  # bool / sign results: exact


def test_casts_to_int_and_bool():
    x = _normal(np.random.default_rng(0), SHAPE) * 4

    def fn(a):
        return (a.long() + 1), (a > 0).float() + a.bool().float()

    want = fn(t(x))
    cf = compiled(fn)
    got = cf(t(x))
    assert_ran_compiled(cf)
    for g_, w_ in zip(got, want):
        close(g_, w_)


def test_large_elementwise_chain_runs_in_parallel(monkeypatch):
    monkeypatch.setattr(cpu_render, "PARALLEL_MIN", 1 << 16)  # the sizes below straddle this threshold
    # 2**17 elements: above the parallel threshold; a tanh/sigmoid/exp chain and its gradient
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1 << 17).astype(np.float32)
    g = rng.standard_normal(1 << 17).astype(np.float32)

    def step(a, g_):
        y = a.tanh() * a.sigmoid() + (-a * a).exp()
        y.backward(g_)
        return y

    xe, xc = t(x, True), t(x, True)
    want = step(xe, t(g))
    cf = compiled(step)
    got = cf(xc, t(g))
    assert_ran_compiled(cf)
    assert any("prange" in k.source for k in generated_steps(cf))
    close(got, want, "forward", **EW)
    close(xc.grad, xe.grad, "grad", **EW)


# --------------------------------------------------------------------------------------------- reductions

# (shape, dtype, function); long float32 sums get rtol 1e-4 (chunked vs NumPy's pairwise summation)
REDUCTIONS = [
    ((1001,), np.float32, lambda x: x.sum()),  # odd full reduction
    ((13, 17, 19), np.float32, lambda x: x.sum()),  # odd full reduction over three dims
    ((33, 17), np.float32, lambda x: x.sum(0)),  # over the outer dim
    ((33, 17), np.float32, lambda x: x.sum(1)),  # over the inner dim
    ((5, 6, 7), np.float32, lambda x: x.sum(1, keepdim=True)),  # over a middle dim
    ((5, 6, 7), np.float32, lambda x: x.sum((0, 2))),  # outer and inner together
    ((5, 6, 7), np.float32, lambda x: x.amax(0, keepdim=True)),
    ((5, 6, 7), np.float32, lambda x: x.amax((1, 2))),
    ((1001,), np.float32, lambda x: x.amax()),
    ((7, 9), np.int64, lambda x: x.sum(0)),  # int64 sums: exact
    ((7, 9), np.int64, lambda x: x.sum()),
    ((7, 9), np.float32, lambda x: (x > 0).sum(1)),  # bool -> int64 count
]  # parallel (prange) reductions: test_parallel_reductions_are_bit_identical_at_any_thread_count


@pytest.mark.parametrize("shape, dtype, fn", REDUCTIONS, ids=[f"r{i}" for i in range(len(REDUCTIONS))])
def test_reduction(shape, dtype, fn):
    rng = np.random.default_rng(0)
    x = rng.integers(-1000, 1000, shape) if dtype == np.int64 else rng.standard_normal(shape)
    x = x.astype(dtype)
    want = fn(t(x))
    cf = compiled(fn)
    got = cf(t(x))
    assert_ran_compiled(cf)
    n = math.prod(shape)
    tol = dict(rtol=1e-4, atol=1e-4) if n > 1000 else dict(rtol=1e-5, atol=1e-5)
    close(got, want, **tol)


def test_amax_propagates_nan_like_eager():
    # NumPy (the eager kernel) returns NaN for a max over a slice holding NaN, wherever the NaN sits
    x = np.array([[1.0, np.nan, 2.0], [np.nan, 1.0, 0.5], [3.0, 1.0, 2.0], [-1.0, -2.0, np.nan]], np.float32)

    def fn(a):
        return a.amax(1), a.amax(0)

    want = fn(t(x))
    cf = compiled(fn)
    got = cf(t(x))
    assert_ran_compiled(cf)
    for g_, w_ in zip(got, want):
        close(g_, w_)  # NaN must sit where eager has it


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_row_max_and_softmax_keep_nan_and_inf_like_eager(dtype):
    # rows long enough for the vectorized max (vecmath.maximum): NaN first, inside and in the tail, +inf, a row
    # of -inf; amax over rows and columns, and a softmax (a rows kernel: max, exp-sum, divide)
    x = np.random.default_rng(4).standard_normal((7, 131)).astype(dtype)
    x[0, 0] = x[1, 64] = x[2, 130] = np.nan
    x[3, 9] = np.inf
    x[4, :] = -np.inf
    x[5, 3] = -np.inf

    def fn(a):
        return a.amax(1), a.amax(0), a.softmax(1)

    with np.errstate(all="ignore"):
        want = fn(t(x))
        cf = compiled(fn)
        got = cf(t(x))
    assert_ran_compiled(cf)
    for i, (g_, w_) in enumerate(zip(got, want)):
        close(g_, w_, f"output {i}", rtol=1e-5, atol=1e-7)


def test_nan_and_inf_through_elementwise_ops_and_sums_like_eager():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.0, 100.0], np.float32)
    y = np.array([1.0, np.nan, 2.0, -0.0, 0.0, np.inf, np.nan, -1.0], np.float32)

    def fn(a, b):
        return (a.maximum(b), a.minimum(b), a.relu(), a.sign(), a.exp(), a.sigmoid(), a.tanh(), (a * b).sum(),
                a.clamp(-1, 1), a.abs())

    with np.errstate(all="ignore"):
        want = fn(t(x), t(y))
        cf = compiled(fn)
        got = cf(t(x), t(y))
    assert_ran_compiled(cf)
    for i, (g_, w_) in enumerate(zip(got, want)):
        close(g_, w_, f"output {i}", rtol=1e-6, atol=0)


def test_reductions_of_one_input_share_one_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6, 7)).astype(np.float32)

    def fn(a):
        return a.sum(0), a.sum(2), a.amax(1, keepdim=True), (a * a).sum()

    want = fn(t(x))
    cf = compiled(fn)
    got = cf(t(x))
    assert_ran_compiled(cf)
    assert [n.op.name for n in cf.history[-1].graph.nodes] == ["fused"]
    for g_, w_ in zip(got, want):
        close(g_, w_, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [lambda x: x.amax(1), lambda x: x.sum(0).tanh(), lambda x: x.mean((0, 1))],
                         ids=["amax", "sum-tanh", "mean"])
def test_reduction_gradients(fn):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6, 7)).astype(np.float32)
    x[:, 2, :] = x[:, 3, :]  # ties for amax: the gradient is split between them
    out_shape = fn(t(x)).shape
    g = rng.standard_normal(out_shape).astype(np.float32)

    def step(a, g_):
        y = fn(a)
        y.backward(g_)
        return y

    xe, xc = t(x, True), t(x, True)
    want = step(xe, t(g))
    cf = compiled(step)
    got = cf(xc, t(g))
    assert_ran_compiled(cf)
    close(got, want, "forward", rtol=1e-5, atol=1e-6)
    close(xc.grad, xe.grad, "grad", rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- broadcasting

BROADCASTS = [((8, 5), (5,)), ((8, 1), (1, 5)), ((2, 3, 4, 5), (1, 3, 1, 1)), ((), (4, 5)), ((4, 1, 3), (5, 1))]


@pytest.mark.parametrize("sa, sb", BROADCASTS, ids=[f"{a}x{b}" for a, b in BROADCASTS])
def test_broadcasting_forward_and_gradient(sa, sb):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    out_shape = np.broadcast_shapes(sa, sb)
    g = rng.standard_normal(out_shape).astype(np.float32)

    def step(x, y, g_):
        z = (x * y + y).tanh() - x
        z.backward(g_)
        return z

    ae, be, ac, bc = t(a, True), t(b, True), t(a, True), t(b, True)
    want = step(ae, be, t(g))
    cf = compiled(step)
    got = cf(ac, bc, t(g))
    assert_ran_compiled(cf)
    close(got, want, "forward", **EW)
    # the gradient of a broadcast operand is a sum over the broadcast dims
    close(ac.grad, ae.grad, "grad a", rtol=1e-5, atol=1e-5)
    close(bc.grad, be.grad, "grad b", rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- softmax and losses

LOGITS = np.random.default_rng(3).standard_normal((8, 10)).astype(np.float32) * 3
LABELS = np.random.default_rng(4).integers(0, 10, 8)


@pytest.mark.parametrize("fn", [lambda x: x.softmax(1), lambda x: x.log_softmax(-1), lambda x: F.softmax(x, 0),
                                lambda x: F.log_softmax(x, 0)],
                         ids=["softmax1", "log_softmax-1", "softmax0", "log_softmax0"])
def test_softmax_forward_and_backward(fn):
    g = np.random.default_rng(5).standard_normal(LOGITS.shape).astype(np.float32)

    def step(x, g_):
        y = fn(x)
        y.backward(g_)
        return y

    xe, xc = t(LOGITS, True), t(LOGITS, True)
    want = step(xe, t(g))
    cf = compiled(step)
    got = cf(xc, t(g))
    assert_ran_compiled(cf)
    close(got, want, "forward", **EW)
    close(xc.grad, xe.grad, "grad", **EW)


def test_cross_entropy_forward_and_backward():
    def step(x, y):
        loss = F.cross_entropy(x, y)
        loss.backward()
        return loss

    xe, xc = t(LOGITS, True), t(LOGITS, True)
    want = step(xe, t(LABELS))
    cf = compiled(step)
    got = cf(xc, t(LABELS))
    assert_ran_compiled(cf)
    close(got, want, "loss", **EW)
    close(xc.grad, xe.grad, "grad", **EW)


# --------------------------------------------------------------------------------------------- training steps


def _mlp(seed):
    tracejit.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


MLP_X = np.random.default_rng(10).standard_normal((5, 8)).astype(np.float32)
MLP_Y = np.array([0, 1, 2, 3, 1])


def _train_step(model, opt, loss_fn=F.cross_entropy):
    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _compare_models(me, mc, oe, oc, tol, what=""):
    for (name, pe), (_, pc) in zip(me.named_parameters(), mc.named_parameters()):
        close(pc, pe, f"{what}{name}", **tol)
        close(pc.grad, pe.grad, f"{what}{name}.grad", **tol)
        for key, ve in oe.state[pe].items():
            vc = oc.state[pc][key]
            if isinstance(ve, tracejit.Tensor):
                close(vc, ve, f"{what}{name} {key}", **tol)
            else:
                assert vc == ve
    for (name, be), (_, bc) in zip(me.named_buffers(), mc.named_buffers()):
        close(bc, be, f"{what}buffer {name}", **tol)


def test_mlp_adam_three_steps():
    # Adam divides by sqrt(v): one-ulp differences in early gradients show up amplified in the update
    tol = dict(rtol=1e-4, atol=1e-6)
    me, mc = _mlp(0), _mlp(0)
    oe = tracejit.optim.Adam(me.parameters(), lr=1e-2)
    oc = tracejit.optim.Adam(mc.parameters(), lr=1e-2)
    eager, comp = _train_step(me, oe), compiled(_train_step(mc, oc))
    for i in range(3):
        le = eager(t(MLP_X), t(MLP_Y))
        lc = comp(t(MLP_X), t(MLP_Y))
        close(lc, le, f"step {i} loss", **tol)
        _compare_models(me, mc, oe, oc, tol, f"step {i}: ")
    # the first call creates Adam's state (so it runs eagerly); the next two run the compiled step
    assert_ran_compiled(comp, eager_calls=1)
    assert set(oc.state[next(iter(mc.parameters()))]) >= {"exp_avg", "exp_avg_sq", "step"}


def test_linear_regression_sgd():
    tol = dict(rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    tracejit.manual_seed(1)
    me = nn.Linear(3, 1)
    tracejit.manual_seed(1)
    mc = nn.Linear(3, 1)
    oe, oc = tracejit.optim.SGD(me.parameters(), lr=0.1), tracejit.optim.SGD(mc.parameters(), lr=0.1)
    eager, comp = _train_step(me, oe, F.mse_loss), compiled(_train_step(mc, oc, F.mse_loss))
    losses = []
    for i in range(5):
        le = eager(t(x), t(y))
        lc = comp(t(x), t(y))
        close(lc, le, f"step {i} loss", **tol)
        _compare_models(me, mc, oe, oc, tol, f"step {i}: ")
        losses.append(float(lc.detach().numpy()))
    # zero_grad() assigns .grad = None without looking, so the steady state is the first variant
    assert_ran_compiled(comp, variants=1)
    assert losses[-1] < losses[0]


class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + x)


def _resnet(seed):
    tracejit.manual_seed(seed)
    return nn.Sequential(ResidualBlock(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_residual_block_sgd_momentum():
    # convolutions and batch-norm statistics sum over 72-288 products: rtol 1e-4
    tol = dict(rtol=1e-4, atol=1e-5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    y = np.array([0, 2])
    me, mc = _resnet(0), _resnet(0)
    oe = tracejit.optim.SGD(me.parameters(), lr=0.05, momentum=0.9)
    oc = tracejit.optim.SGD(mc.parameters(), lr=0.05, momentum=0.9)
    eager, comp = _train_step(me, oe), compiled(_train_step(mc, oc))
    for i in range(3):
        le = eager(t(x), t(y))
        lc = comp(t(x), t(y))
        close(lc, le, f"step {i} loss", **tol)
        _compare_models(me, mc, oe, oc, tol, f"step {i}: ")
    # step 1 creates the momentum buffers (eager); steps 2 and 3 are compiled
    assert_ran_compiled(comp, eager_calls=1)


def test_float64_step():
    # float64 end to end: the f64 math library is within 3 ulp
    tol = dict(rtol=1e-12, atol=1e-14)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5))
    w = rng.standard_normal((5, 4))

    def step(a, b):
        h = (a.matmul(b)).tanh()
        loss = (h.exp() * h.sigmoid()).sum(1).log().mean()
        loss.backward()
        return loss, h

    ae, be, ac, bc = t(x, True), t(w, True), t(x, True), t(w, True)
    want = step(ae, be)
    cf = compiled(step)
    got = cf(ac, bc)
    assert_ran_compiled(cf)
    assert got[0].dtype is tracejit.float64
    for g_, w_ in zip(got, want):
        close(g_, w_, **tol)
    close(ac.grad, ae.grad, "grad a", **tol)
    close(bc.grad, be.grad, "grad b", **tol)


# --------------------------------------------------------------------------------------------- random graphs


@pytest.mark.parametrize("seed", range(6))
def test_random_graph_cpu_equals_reference(seed):
    # fused random graphs compiled to Numba against the reference interpreter of the unoptimized graph
    g = random_graph(seed)
    arrays = random_inputs(g, seed)
    by_id = {v.id: a for v, a in zip(g.inputs, arrays)}
    want = run_graph(g, arrays)
    h = run_pipeline(g)
    prog = cpu.compile_graph(h)
    assert prog.fallbacks == []
    got = prog.run(inputs_for(h, by_id))
    for w_, g_ in zip(want, got):
        close(g_, w_, f"seed {seed}", rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- determinism


def _state_arrays(model, opt):
    out = {}
    for name, p in model.named_parameters():
        out[name] = p.detach().numpy().copy()
        for key, v in opt.state[p].items():
            if isinstance(v, tracejit.Tensor):
                out[f"{name} {key}"] = v.detach().numpy().copy()
    return out


def _state_tensors(model, opt):
    out = {}
    for name, p in model.named_parameters():
        out[name] = p
        for key, v in opt.state[p].items():
            if isinstance(v, tracejit.Tensor):
                out[f"{name} {key}"] = v
    return out


def test_same_step_from_the_same_state_is_bit_identical():
    model = _mlp(0)
    opt = tracejit.optim.Adam(model.parameters(), lr=1e-2)
    step = compiled(_train_step(model, opt))
    step(t(MLP_X), t(MLP_Y))  # creates Adam's state (eager)
    saved = _state_arrays(model, opt)
    runs = []
    for _ in range(2):
        for name, tensor in _state_tensors(model, opt).items():
            tensor.data = tracejit.tensor(saved[name].copy())
        loss = step(t(MLP_X), t(MLP_Y))
        after = _state_arrays(model, opt)
        after["loss"] = loss.numpy().copy()
        after.update({f"{n}.grad": p.grad.numpy().copy() for n, p in model.named_parameters()})
        runs.append(after)
    assert_ran_compiled(step, eager_calls=1)
    assert runs[0].keys() == runs[1].keys()
    for name in runs[0]:
        np.testing.assert_array_equal(runs[1][name], runs[0][name], err_msg=name)


def test_parallel_reductions_are_bit_identical_at_any_thread_count(monkeypatch):
    monkeypatch.setattr(cpu_render, "PARALLEL_MIN", 1 << 16)  # the sizes below straddle this threshold
    if threads.max_threads() < 2:
        pytest.skip("needs a pool of at least 2 threads")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 301)) * 100).astype(np.float32)

    def fn(a):
        # 90k elements: a parallel kernel reducing over the outer dim, the inner dim and everything
        return a.sum(0), a.sum(1), a.sum(), (a * a).amax()

    cf = compiled(fn)
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(2)
        two = [r.numpy().copy() for r in cf(t(x))]
        two_again = [r.numpy().copy() for r in cf(t(x))]
        threads.set_num_threads(1)
        one = [r.numpy().copy() for r in cf(t(x))]
    finally:
        threads.set_num_threads(before)
    assert_ran_compiled(cf)
    assert any("prange" in k.source for k in generated_steps(cf))
    for a, b, c in zip(two, two_again, one):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(c, a)
    want = fn(t(x))
    # float32 sums of 300-90k terms of size ~100: chunked vs NumPy's pairwise order
    for g_, w_ in zip(two, want):
        close(g_, w_, rtol=1e-4, atol=1e-1)


STORE_AND_SUM = """
graph g(%x: f32[40] {arg: x}) {
  %d: f32[40], %s: f32[] = fused(%x) {kind='reduce'}
    body reduce_0(%x: f32[40]) {
      %k: f32[] = full() {shape=(), value=3.0, dtype=f32}
      %a: f32[40] = mul(%x, %k)
      %q: f32[40] = mul(%a, %a)
      %s: f32[] = sum(%q) {axes=(0,), keepdim=False}
      return %a, %s
    }
  return %d, %s
}
"""


def test_a_sum_beside_stores_has_the_same_bits_wherever_the_output_lies():
    # A loop that stored one result and summed another ran, behind LLVM's runtime overlap check, its scalar
    # fallback (another summation order) whenever an output lay < 256 bytes after an input: the same inputs
    # summed 1 ulp apart depending on where malloc put the arrays, which other threads' allocations change
    # (tests/test_threads.py: a training step's loss changed while other threads ran). Sums now run in a loop
    # that only loads. The size is read at run time, as in a size template (a literal one is not versioned).
    src = render(lower(fused_node(STORE_AND_SUM)), "kernel")
    fn, _ = kernel_cache.load(cpu_render.PRELUDE + src.replace("range(40)", "range(a0.shape[0])"), "kernel")
    for seed in range(5):
        x = np.random.default_rng(seed).standard_normal(40).astype(np.float32)
        sums = []
        for gap in (0, 1000):  # the output 160 bytes after the input (overlap check fails), or far from it
            buf = np.zeros(80 + gap, np.float32)
            a, d, s = buf[:40], buf[40 + gap:], np.zeros(1, np.float32)
            a[:] = x
            fn(a, s, d)
            np.testing.assert_array_equal(d, x * np.float32(3))
            sums.append(s[0])
        assert sums[0] == sums[1], (seed, sums)
        close(sums[0], np.float32((x.astype(np.float64) * 3) @ (x.astype(np.float64) * 3)), rtol=1e-6)
    sum_loop = src[src.index("for i0 in range(40):"):src.index("acc0 += ")]
    assert "o1[" not in sum_loop and src.count("for i0 in range(40):") == 2


# --------------------------------------------------------------------------------------------- kernel counts


def test_sgd_momentum_update_of_every_parameter_is_one_kernel():
    model = _mlp(0)
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = compiled(_train_step(model, opt))
    for _ in range(2):
        step(t(MLP_X), t(MLP_Y))
    assert_ran_compiled(step, eager_calls=1)
    g = step.history[-1].graph
    multi = [n for n in g.nodes if n.fused_kind is FusedKind.MULTI]
    assert len(multi) == 1
    produced = {v.id for v in multi[0].outputs}
    n_params = len(list(model.parameters()))
    updates = [(m, v) for m, v in g.writes() if not m.endswith(".grad")]
    # every parameter and every momentum buffer
    assert len(updates) == 2 * n_params and sum("momentum_buffer" in m for m, _ in updates) == n_params
    assert all(v.id in produced for _, v in updates), [m for m, v in updates if v.id not in produced]


def test_elementwise_chain_of_ten_ops_is_one_kernel():
    def fn(x, y):
        a = x * y
        b = a.tanh()
        c = b + x
        d = c.sigmoid()
        e = d * 2.0
        f = e - y
        g = f.exp()
        h = g.relu()
        i = h / (y.abs() + 1.0)
        return i.sin()

    rng = np.random.default_rng(0)
    x, y = _normal(rng, SHAPE), _normal(rng, SHAPE)
    want = fn(t(x), t(y))
    cf = compiled(fn)
    got = cf(t(x), t(y))
    assert_ran_compiled(cf)
    close(got, want, **EW)
    g = cf.history[-1].graph
    assert [n.op.name for n in g.nodes] == ["fused"]
    assert len(g.nodes[0].body.nodes) >= 10
    assert len(cf.history[-1].program.plan) == 1
    assert len(generated_steps(cf)) == 1


def test_tanh_and_sigmoid_of_one_value_share_one_call():
    src = """graph f(%x: f32[64]) {
  %t: f32[64] = tanh(%x)
  %s: f32[64] = sigmoid(%x)
  %y: f32[64] = mul(%t, %s)
  %e: f32[64] = sigmoid(%y)
  return %y, %e
}"""
    g = run_pipeline(parse_graph(src))
    fused = [n for n in g.nodes if n.body is not None]
    assert len(fused) == 1
    code = render_multi([lower(fused[0])], "kernel")
    assert code.count("M.tanh_sigmoid_f32(") == 1  # tanh(x), sigmoid(x): one call
    assert code.count("M.sigmoid_f32(") == 1 and "M.tanh_f32(" not in code  # sigmoid(y) stays alone
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(64) * 4).astype(np.float32)
    cf = compiled(lambda a: (a.tanh() * a.sigmoid(), (a.tanh() * a.sigmoid()).sigmoid()))
    got = [r.numpy() for r in cf(t(x))]
    assert_ran_compiled(cf)
    y = np.tanh(x.astype(np.float64)) / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(got[0], y, rtol=3e-6, atol=1e-7)
    np.testing.assert_allclose(got[1], 1 / (1 + np.exp(-y)), rtol=3e-6, atol=1e-7)
