"""cpu_window, cpu_window_bwd (+ cpu_window_dw) and cpu_window_pool kernels against the NumPy references in
ref_kernels (the op semantics).

Tolerance: values whose computation sums R products are compared with rtol 1e-5 and atol 1e-6 * R in
float32 (1e-12 * R and rtol 1e-12 in float64); pooled values and argmax indices taken from the same conv
output are compared exactly, since pooling only selects.
"""

import doctest

import numba
import numpy as np
import pytest

from tracejit import ref_kernels as K
from tracejit.compiler.backends.cpu.window import backward as B
from tracejit.compiler.backends.cpu.window import conv as W
from tracejit.compiler.backends.cpu.window import pool as P

F32, F64 = np.float32, np.float64


def close(got, want, reduction, dtype):
    """assert got ~ want for values that are sums of `reduction` products."""
    rtol, atol = (1e-5, 1e-6 * reduction) if dtype == F32 else (1e-12, 1e-12 * reduction)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def data(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# (x shape, w shape, stride, padding, dilation, groups): odd sizes, batch 1, every conv attribute
CONVS = [
    ((2, 3, 9, 11), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((1, 3, 12, 10), (5, 3, 5, 5), (1, 1), (0, 0), (1, 1), 1),
    ((2, 4, 10, 9), (6, 2, 5, 3), (1, 1), (2, 1), (1, 2), 2),
    ((2, 3, 12, 13), (5, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ((1, 2, 11, 12), (3, 2, 2, 4), (2, 1), (0, 2), (2, 1), 1),
    ((3, 3, 7, 7), (5, 3, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    ((2, 2, 7, 8), (3, 2, 1, 1), (1, 1), (1, 1), (1, 1), 1),  # padding > (k-1)*dilation
    ((2, 6, 8, 8), (6, 2, 3, 3), (1, 1), (1, 1), (1, 1), 3),
    ((1, 2, 9, 9), (4, 2, 3, 3), (3, 2), (2, 0), (1, 1), 1),
]
CONV_IDS = [f"x{list(c[0])}-w{list(c[1])}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}" for c in CONVS]


def conv_ref(x, w, b, spec, relu):
    _, _, stride, padding, dilation, groups = spec
    y = K.conv2d(x, w, stride, padding, dilation, groups)
    if b is not None:
        y = y + b[None, :, None, None]
    return np.maximum(y, y.dtype.type(0)) if relu else y


def make(spec, dtype, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    x, w = data(rng, spec[0], dtype), data(rng, spec[1], dtype)
    b = data(rng, spec[1][0], dtype) if bias else None
    return rng, x, w, b


def out_shape(spec):
    (n, _, h, wd), (o, _, kh, kw), stride, padding, dilation, _ = spec
    return (n, o) + W.conv_out_hw(h, wd, kh, kw, stride, padding, dilation)


def reduction(spec):
    _, (_, cg, kh, kw), *_ = spec
    return cg * kh * kw


# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("spec", CONVS, ids=CONV_IDS)
def test_conv2d_forward(spec, dtype):
    _, x, w, b = make(spec, dtype)
    for bias, relu in ((None, False), (b, False), (b, True)):
        out = np.full(out_shape(spec), np.nan, dtype)
        W.conv2d_forward(x, w, bias, out, *spec[2:], relu=relu)
        close(out, conv_ref(x, w, bias, spec, relu), reduction(spec), dtype)


POOLS = [(2, 2), (3, 3), (3, 2), (2, 1)]


@pytest.mark.parametrize("pool", POOLS, ids=[f"k{k}s{s}" for k, s in POOLS])
@pytest.mark.parametrize("spec", CONVS[:5], ids=CONV_IDS[:5])
def test_conv2d_pool_forward(spec, pool):
    dtype = F32
    k, s = pool
    _, x, w, b = make(spec, dtype)
    n, o, oh, ow = out_shape(spec)
    if oh < k or ow < k:
        pytest.skip("pool window larger than the conv output")
    for relu in (True, False):
        conv = np.empty((n, o, oh, ow), dtype)
        W.conv2d_forward(x, w, b, conv, *spec[2:], relu=relu)
        ph, pw = (oh - k) // s + 1, (ow - k) // s + 1
        pooled = np.full((n, o, ph, pw), np.nan, dtype)
        argmax = np.full((n, o, ph, pw), 255, np.uint8)
        W.conv2d_pool_forward(x, w, b, pooled, argmax, *spec[2:], relu=relu, pool_k=k, pool_s=s)
        # same conv output -> pooling selects exactly what the reference selects, first maximum on ties
        attrs = ((k, k), (s, s), (0, 0))
        np.testing.assert_array_equal(pooled, K.max_pool2d(conv, *attrs))
        np.testing.assert_array_equal(argmax, K.max_pool2d_argmax(conv, *attrs))
        close(pooled, K.max_pool2d(conv_ref(x, w, b, spec, relu), *attrs), reduction(spec), dtype)


def test_conv2d_pool_forward_float64_and_ties():
    # A negative bias makes most ReLU outputs 0: windows full of ties must report the first position.
    spec = ((2, 3, 10, 10), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    _, x, w, _ = make(spec, F64)
    b = np.full(4, -3.0)
    pooled, argmax = np.empty((2, 4, 5, 5)), np.empty((2, 4, 5, 5), np.uint8)
    W.conv2d_pool_forward(x, w, b, pooled, argmax, *spec[2:], relu=True, pool_k=2)
    r = conv_ref(x, w, b, spec, True)
    assert (r == 0).mean() > 0.5
    close(pooled, K.max_pool2d(r, (2, 2), (2, 2), (0, 0)), 27, F64)
    np.testing.assert_array_equal(argmax[pooled == 0], 0)


def test_conv2d_pool_forward_nan_and_exact_ties():
    # A 1x1 identity conv passes x through exactly, so NaN and duplicate values reach the pool unchanged.
    x = np.array([[1, 1, 5, 2, 0, np.nan],
                  [1, 0, 5, 5, np.nan, 3],
                  [-1, -1, 7, np.nan, 2, 2],
                  [-1, -1, 7, 1, 2, 2]], F32)[None, None]
    w = np.ones((1, 1, 1, 1), F32)
    pooled, argmax = np.empty((1, 1, 2, 3), F32), np.empty((1, 1, 2, 3), np.uint8)
    for relu in (False, True):
        W.conv2d_pool_forward(x, w, None, pooled, argmax, relu=relu, pool_k=2)
        r = np.maximum(x, F32(0)) if relu else x
        np.testing.assert_array_equal(pooled, K.max_pool2d(r, (2, 2), (2, 2), (0, 0)))
        np.testing.assert_array_equal(argmax, K.max_pool2d_argmax(r, (2, 2), (2, 2), (0, 0)))
    np.testing.assert_array_equal(argmax[0, 0], [[0, 0, 1], [0, 1, 0]])


# ------------------------------------------------------------------------------------------------ backward
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("spec", CONVS, ids=CONV_IDS)
def test_conv2d_grad_input_and_weight(spec, dtype):
    rng, x, w, _ = make(spec, dtype)
    stride, padding, dilation, groups = spec[2:]
    g = data(rng, out_shape(spec), dtype)
    dx = np.full(x.shape, np.nan, dtype)
    B.conv2d_grad_input(g, w, dx, stride, padding, dilation, groups)
    close(dx, K.conv2d_grad_input(g, w, x.shape, stride, padding, dilation, groups), w[:, 0].size, dtype)
    n, _, oh, ow = g.shape
    dw, db = np.full(w.shape, np.nan, dtype), np.full(w.shape[0], np.nan, dtype)
    B.conv2d_grad_weight(x, g, dw, db, stride, padding, dilation, groups)
    close(dw, K.conv2d_grad_weight(x, g, w.shape, stride, padding, dilation, groups), n * oh * ow, dtype)
    close(db, g.sum(axis=(0, 2, 3)), n * oh * ow, dtype)
    dw2 = np.empty_like(dw)
    B.conv2d_grad_weight(x, g, dw2, None, stride, padding, dilation, groups)
    np.testing.assert_array_equal(dw2, dw)


@pytest.mark.parametrize("blas", [False, True], ids=["direct", "gemm-col2im"])
@pytest.mark.parametrize("spec", CONVS, ids=CONV_IDS)
def test_conv2d_grad_input_both_algorithms(spec, blas, monkeypatch):
    monkeypatch.setattr(B, "_dx_by_blas", lambda geo: blas)
    rng, x, w, b = make(spec, F32)
    stride, padding, dilation, groups = spec[2:]
    g = data(rng, out_shape(spec), F32)
    want = K.conv2d_grad_input(g, w, x.shape, stride, padding, dilation, groups)
    dx = np.full(x.shape, np.nan, F32)
    B.conv2d_grad_input(g, w, dx, stride, padding, dilation, groups)
    close(dx, want, w[:, 0].size, F32)
    dx[:] = np.nan
    dw = np.empty_like(w)
    B.conv2d_backward(x, w, g, dx, dw, None, stride, padding, dilation, groups)
    close(dx, want, w[:, 0].size, F32)


def test_grad_weight_batch_blocks_are_deterministic():
    # 37 images: three partial-sum blocks of 16; the bits must not depend on the thread count.
    spec = ((37, 3, 6, 6), (5, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    rng, x, w, _ = make(spec, F32)
    g = data(rng, out_shape(spec), F32)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            dw, db = np.empty_like(w), np.empty(5, F32)
            B.conv2d_grad_weight(x, g, dw, db, 1, 1)
            results.append((dw, db))
    finally:
        numba.set_num_threads(before)
    for dw, db in results[1:]:
        np.testing.assert_array_equal(dw, results[0][0])
        np.testing.assert_array_equal(db, results[0][1])
    close(results[0][0], K.conv2d_grad_weight(x, g, w.shape, (1, 1), (1, 1), (1, 1), 1), 37 * 36, F32)


def pool_chain_ref(x, w, b, gp, spec, relu, k, s):
    """Reference backward of conv -> +b -> relu -> max_pool2d(k, s): (g at the conv output, dx, dw, db)."""
    stride, padding, dilation, groups = spec[2:]
    r = conv_ref(x, w, b, spec, relu)
    g = K.max_pool2d_grad(r, gp, (k, k), (s, s), (0, 0))
    if relu:
        g = g * (r > 0)
    return (g, K.conv2d_grad_input(g, w, x.shape, stride, padding, dilation, groups),
            K.conv2d_grad_weight(x, g, w.shape, stride, padding, dilation, groups), g.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("pool", POOLS, ids=[f"k{k}s{s}" for k, s in POOLS])
@pytest.mark.parametrize("spec", CONVS[:3] + CONVS[6:8], ids=CONV_IDS[:3] + CONV_IDS[6:8])
def test_conv2d_pool_backward(spec, pool):
    dtype = F32
    k, s = pool
    rng, x, w, b = make(spec, dtype)
    n, o, oh, ow = out_shape(spec)
    ph, pw = (oh - k) // s + 1, (ow - k) // s + 1
    pooled, argmax = np.empty((n, o, ph, pw), dtype), np.empty((n, o, ph, pw), np.uint8)
    gp = data(rng, pooled.shape, dtype)
    for relu in (True, False):
        W.conv2d_pool_forward(x, w, b, pooled, argmax, *spec[2:], relu=relu, pool_k=k, pool_s=s)
        g_ref, dx_ref, dw_ref, db_ref = pool_chain_ref(x, w, b, gp, spec, relu, k, s)
        g = np.full((n, o, oh, ow), np.nan, dtype)
        B.maxpool_relu_backward(gp, argmax, pooled, g, relu=relu, pool_k=k, pool_s=s)
        close(g, g_ref, k * k, dtype)  # overlapping windows add up to k*k terms
        dx, dw, db = np.full(x.shape, np.nan, dtype), np.full(w.shape, np.nan, dtype), np.empty(o, dtype)
        B.conv2d_pool_backward(x, w, gp, argmax, pooled, dx, dw, db, *spec[2:], relu=relu, pool_k=k, pool_s=s)
        close(dx, dx_ref, o * 9 * k * k, dtype)
        close(dw, dw_ref, n * oh * ow, dtype)
        close(db, db_ref, n * oh * ow, dtype)
        dw2 = np.empty_like(dw)
        B.conv2d_pool_backward(x, w, gp, argmax, pooled, None, dw2, None, *spec[2:], relu=relu, pool_k=k, pool_s=s)
        close(dw2, dw_ref, n * oh * ow, dtype)  # without dx, g sits at another row pitch: other rounding


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("spec", [CONVS[0], CONVS[2], CONVS[3], CONVS[6]], ids=[CONV_IDS[i] for i in (0, 2, 3, 6)])
def test_conv2d_backward_with_relu_mask(spec, dtype):
    rng, x, w, b = make(spec, dtype)
    stride, padding, dilation, groups = spec[2:]
    y = conv_ref(x, w, b, spec, True)
    gy = data(rng, y.shape, dtype)
    n, _, oh, ow = y.shape
    for relu_out in (y, None):
        g = gy * (y > 0) if relu_out is not None else gy
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
        B.conv2d_backward(x, w, gy, dx, dw, db, stride, padding, dilation, groups, relu_out=relu_out)
        close(dx, K.conv2d_grad_input(g, w, x.shape, stride, padding, dilation, groups), w.shape[0] * 25, dtype)
        close(dw, K.conv2d_grad_weight(x, g, w.shape, stride, padding, dilation, groups), n * oh * ow, dtype)
        close(db, g.sum(axis=(0, 2, 3)), n * oh * ow, dtype)
    masked = np.empty_like(gy)
    B.relu_backward(gy, y, masked)
    np.testing.assert_array_equal(masked, gy * (y > 0))
    db = np.empty_like(b)
    B.conv2d_grad_bias(gy, db)
    close(db, gy.sum(axis=(0, 2, 3)), n * oh * ow, dtype)


# ------------------------------------------------------------------------------------------------ pooling
# (x shape, kernel, stride, padding, dilation, ceil_mode)
MAX_POOLS = [
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 2, 9, 7), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((2, 2, 9, 7), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((1, 3, 10, 11), (3, 2), (1, 2), (1, 0), (2, 1), False),
    ((2, 1, 7, 7), (2, 2), (3, 3), (1, 1), (1, 1), True),
    ((1, 2, 5, 6), (4, 3), (1, 1), (2, 1), (1, 2), True),
    ((1, 2, 7, 9), (2, 2), (2, 2), (1, 1), (1, 1), True),
]
MAX_IDS = [f"x{list(p[0])}-k{p[1]}-s{p[2]}-p{p[3]}-d{p[4]}-ceil{int(p[5])}" for p in MAX_POOLS]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("spec", MAX_POOLS, ids=MAX_IDS)
def test_max_pool2d(spec, dtype):
    xs, kernel, stride, padding, dilation, ceil = spec
    rng = np.random.default_rng(1)
    x = data(rng, xs, dtype)
    x.reshape(-1)[::7] = 0.5  # exact ties inside windows
    x.reshape(-1)[5::11] = -np.inf
    attrs = (kernel, stride, padding, dilation, ceil)
    want = K.max_pool2d(x, *attrs)
    out, idx = np.empty_like(want), np.empty(want.shape, np.uint8)
    P.max_pool2d_forward(x, out, *attrs, out_argmax=idx)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(idx, K.max_pool2d_argmax(x, *attrs))
    g = data(rng, want.shape, dtype)
    dx = np.full_like(x, np.nan)
    P.max_pool2d_backward(x, g, dx, *attrs)
    close(dx, K.max_pool2d_grad(x, g, *attrs), kernel[0] * kernel[1], dtype)
    dx2 = np.full_like(x, np.nan)
    P.max_pool2d_grad_argmax(g, idx, dx2, *attrs)
    np.testing.assert_array_equal(dx2, dx)


def test_max_pool2d_nan_propagates_like_numpy():
    x = np.arange(16, dtype=F32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = x[0, 0, 3, 3] = np.nan
    out, idx = np.empty((1, 1, 2, 2), F32), np.empty((1, 1, 2, 2), np.uint8)
    P.max_pool2d_forward(x, out, 2, out_argmax=idx)
    np.testing.assert_array_equal(out, K.max_pool2d(x, (2, 2), (2, 2), (0, 0)))
    np.testing.assert_array_equal(idx, K.max_pool2d_argmax(x, (2, 2), (2, 2), (0, 0)))
    assert idx[0, 0].tolist() == [[1, 3], [3, 3]] and np.isnan(out[0, 0, 0, 0]) and np.isnan(out[0, 0, 1, 1])


# (x shape, kernel, stride, padding, ceil_mode)
AVG_POOLS = [
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), False),
    ((1, 2, 9, 7), (3, 3), (2, 2), (1, 1), False),
    ((2, 2, 9, 8), (3, 2), (2, 1), (1, 1), True),
    ((1, 1, 7, 7), (2, 2), (3, 3), (1, 1), True),
    ((1, 2, 5, 6), (4, 3), (1, 2), (2, 1), False),
]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("spec", AVG_POOLS, ids=[f"x{list(p[0])}-k{p[1]}-s{p[2]}-p{p[3]}-ceil{int(p[4])}"
                                                 for p in AVG_POOLS])
def test_avg_pool2d(spec, include_pad, dtype):
    xs, kernel, stride, padding, ceil = spec
    rng = np.random.default_rng(2)
    x = data(rng, xs, dtype)
    want = K.avg_pool2d(x, kernel, stride, padding, (1, 1), ceil, include_pad)
    out = np.full_like(want, np.nan)
    P.avg_pool2d_forward(x, out, kernel, stride, padding, ceil, include_pad)
    close(out, want, kernel[0] * kernel[1], dtype)
    g = data(rng, want.shape, dtype)
    dx = np.full_like(x, np.nan)
    P.avg_pool2d_backward(g, dx, kernel, stride, padding, ceil, include_pad)
    close(dx, K.avg_pool2d_grad(g, x.shape, kernel, stride, padding, (1, 1), ceil, include_pad),
          kernel[0] * kernel[1], dtype)


# ------------------------------------------------------------------------------------------------ API checks
def test_pooling_entry_points_are_reachable_from_cpu_window():
    assert W.max_pool2d_forward is P.max_pool2d_forward and W.avg_pool2d_backward is P.avg_pool2d_backward
    with pytest.raises(AttributeError):
        W.no_such_kernel  # noqa: B018


def test_wrong_output_shape_or_layout_is_an_error():
    x, w = np.ones((1, 2, 6, 6), F32), np.ones((3, 2, 3, 3), F32)
    with pytest.raises(ValueError, match=r"conv2d_forward out.*float32\[1, 3, 4, 4\]"):
        W.conv2d_forward(x, w, None, np.empty((1, 3, 5, 5), F32))
    with pytest.raises(ValueError, match="contiguous"):
        W.conv2d_forward(x, w, None, np.empty((1, 3, 4, 8), F32)[..., ::2])
    with pytest.raises(ValueError, match="float32"):
        W.conv2d_forward(x, w, None, np.empty((1, 3, 4, 4), F64))
    with pytest.raises(ValueError, match="uint8"):
        W.conv2d_pool_forward(x, w, None, np.empty((1, 3, 2, 2), F32), np.empty((1, 3, 2, 2), np.int64))


def test_strided_input_views_are_accepted():
    spec = CONVS[0]
    rng, x, w, b = make(spec, F32)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, not C-contiguous
    assert not xt.flags.c_contiguous
    out, want = np.empty(out_shape(spec), F32), np.empty(out_shape(spec), F32)
    W.conv2d_forward(xt, np.asfortranarray(w), b, out, *spec[2:])
    W.conv2d_forward(x, w, b, want, *spec[2:])
    np.testing.assert_array_equal(out, want)
    g = data(rng, out_shape(spec), F32)
    dw, dw_want = np.empty_like(w), np.empty_like(w)
    B.conv2d_grad_weight(xt, np.asfortranarray(g), dw, None, *spec[2:])
    B.conv2d_grad_weight(x, g, dw_want, None, *spec[2:])
    np.testing.assert_array_equal(dw, dw_want)


def test_docstring_examples():
    for module in (W, B, P):
        assert doctest.testmod(module).failed == 0, module.__name__
