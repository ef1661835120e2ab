"""cpu_window_gemm (stride-1 ungrouped conv2d as one GEMM per image) against the NumPy references in
ref_kernels. Tolerances as in test_cpu_window (sums of R products: rtol 1e-5, atol 1e-6 * R in float32);
pooled values and argmax indices are compared exactly against pooling the same path's conv output."""

import numpy as np
import pytest

from tracejit import ref_kernels as K
from tracejit.compiler.backends.cpu.window import im2col as G

from .test_cpu_window import F32, F64, close, conv_ref, data, make, out_shape, reduction

# (x shape, w shape, stride, padding, dilation, groups): stride 1, groups 1; batches larger than the task count
CONVS = [
    ((7, 3, 9, 11), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((5, 3, 12, 10), (5, 3, 5, 5), (1, 1), (0, 0), (1, 1), 1),
    ((3, 2, 10, 9), (6, 2, 5, 3), (1, 1), (2, 1), (1, 2), 1),
    ((6, 3, 7, 7), (5, 3, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    ((2, 2, 7, 8), (3, 2, 1, 1), (1, 1), (1, 1), (1, 1), 1),
    ((9, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0), (1, 1), 1),  # LeNet's second layer, smaller batch
    # >= DW_GEMM_MIN_CHANNELS output channels: the weight gradient by im2col + GEMM (as the conv block's)
    ((3, 2, 6, 7), (32, 2, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((3, 3, 8, 8), (33, 3, 3, 2), (1, 1), (1, 0), (2, 1), 1),
    # 5 and 7 output channels (the weight gradient's dot blocks padded), 9 taps (not a multiple of 4), 17 images
    ((17, 1, 9, 8), (5, 1, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((4, 2, 6, 9), (7, 2, 2, 3), (1, 1), (0, 1), (1, 1), 1),
]
IDS = [f"x{list(c[0])}-w{list(c[1])}-p{c[3]}-d{c[4]}" for c in CONVS]
NO_IDX = np.zeros((1, 1, 1, 1), np.uint8)


def fwd(x, w, b, out, argmax, spec, relu, k=0, s=1):
    G.conv_forward(x, w, b, out, argmax, spec[3], spec[4], relu, k, s)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("spec", CONVS, ids=IDS)
def test_forward(spec, dtype):
    _, x, w, b = make(spec, dtype)
    for bias, relu in ((None, False), (b, False), (b, True)):
        out = np.full(out_shape(spec), np.nan, dtype)
        fwd(x, w, bias, out, NO_IDX, spec, relu)
        close(out, conv_ref(x, w, bias, spec, relu), reduction(spec), dtype)


@pytest.mark.parametrize("pool", [(2, 2), (3, 2), (2, 1)], ids=["k2s2", "k3s2", "k2s1"])
@pytest.mark.parametrize("spec", [c for c in CONVS if c[1][2] > 1], ids=[i for c, i in zip(CONVS, IDS) if c[1][2] > 1])
def test_pool_forward_and_backward(spec, pool):
    dtype = F32
    k, s = pool
    rng, x, w, b = make(spec, dtype)
    n, o, oh, ow = out_shape(spec)
    ph, pw = (oh - k) // s + 1, (ow - k) // s + 1
    attrs = ((k, k), (s, s), (0, 0))
    gp = data(rng, (n, o, ph, pw), dtype)
    for relu in (True, False):
        conv = np.empty((n, o, oh, ow), dtype)
        fwd(x, w, b, conv, NO_IDX, spec, relu)
        pooled, argmax = np.full((n, o, ph, pw), np.nan, dtype), np.full((n, o, ph, pw), 255, np.uint8)
        fwd(x, w, b, pooled, argmax, spec, relu, k, s)
        np.testing.assert_array_equal(pooled, K.max_pool2d(conv, *attrs))
        np.testing.assert_array_equal(argmax, K.max_pool2d_argmax(conv, *attrs))
        # backward from the pooled gradient: routed to the argmax, masked by pooled > 0 under ReLU
        g = K.max_pool2d_grad(conv, gp, *attrs)
        if relu:
            g = g * (conv > 0)
        dx, dw, db = np.full(x.shape, np.nan, dtype), np.full(w.shape, np.nan, dtype), np.full(o, np.nan, dtype)
        G.conv_backward(x, w, gp, G.MODE_POOL, argmax, pooled, spec[3], spec[4], dx, dw, db, relu=relu, pool_k=k,
                        pool_s=s)
        stride, padding, dilation = spec[2:5]
        close(dx, K.conv2d_grad_input(g, w, x.shape, stride, padding, dilation, 1), o * 25 * k * k, dtype)
        close(dw, K.conv2d_grad_weight(x, g, w.shape, stride, padding, dilation, 1), n * oh * ow, dtype)
        close(db, g.sum(axis=(0, 2, 3)), n * oh * ow, dtype)
        dw2 = np.full(w.shape, np.nan, dtype)
        G.conv_backward(x, w, gp, G.MODE_POOL, argmax, pooled, spec[3], spec[4], None, dw2, None, relu=relu,
                        pool_k=k, pool_s=s)
        np.testing.assert_array_equal(dw2, dw)  # same sums in the same order without dx


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("spec", CONVS, ids=IDS)
def test_backward_plain_and_relu_masked(spec, dtype):
    rng, x, w, b = make(spec, dtype)
    stride, padding, dilation = spec[2:5]
    y = conv_ref(x, w, b, spec, True)
    gy = data(rng, y.shape, dtype)
    n, o, oh, ow = y.shape
    for mode, aux, g in ((G.MODE_PLAIN, np.zeros((1, 1, 1, 1), dtype), gy), (G.MODE_RELU, y, gy * (y > 0))):
        dx, dw, db = np.full(x.shape, np.nan, dtype), np.full(w.shape, np.nan, dtype), np.full(o, np.nan, dtype)
        G.conv_backward(x, w, gy, mode, NO_IDX, aux, padding, dilation, dx, dw, db)
        close(dx, K.conv2d_grad_input(g, w, x.shape, stride, padding, dilation, 1), o * 25, dtype)
        close(dw, K.conv2d_grad_weight(x, g, w.shape, stride, padding, dilation, 1), n * oh * ow, dtype)
        close(db, g.sum(axis=(0, 2, 3)), n * oh * ow, dtype)
        only_dx = np.full(x.shape, np.nan, dtype)
        G.conv_backward(x, w, gy, mode, NO_IDX, aux, padding, dilation, only_dx, None, None)
        np.testing.assert_array_equal(only_dx, dx)


def test_prefer_covers_stride_one_ungrouped_short_runs(monkeypatch):
    # LeNet conv2: runs of (10-1)*14 + 10 = 136 -> GEMM; conv1: (28-1)*32 + 28 = 892, 6 output channels -> direct
    # kernels forward with OpenBLAS, GEMM with tracejit's own float32 GEMM (up to MAX_RUN_LONG); the 32x32 conv
    # block (L = 1086, 32 channels) by GEMM with either; every backward by GEMM up to MAX_RUN_LONG
    lenet1, lenet2 = ((64, 3, 32, 32), (6, 3, 5, 5), (1, 1), (0, 0), (1, 1), 1), \
        ((64, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0), (1, 1), 1)
    block = ((32, 16, 32, 32), (32, 16, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    too_long = ((2, 3, 70, 70), (32, 3, 5, 5), (1, 1), (0, 0), (1, 1), 1)  # L = 65*70 + 66 > 2048
    for gemm in ("openblas", "tracejit"):
        monkeypatch.setattr(G, "sgemm_choice", lambda gemm=gemm: (gemm, "test"))
        assert G.prefer(*lenet2) and G.prefer(*block)
        assert G.prefer(*lenet1) == (gemm == "tracejit")
        assert not G.prefer(*too_long) and not G.prefer(*too_long, backward=True)
        assert G.prefer(*lenet1, backward=True) and G.prefer(*lenet2, backward=True) and G.prefer(*block, backward=True)
        assert not G.prefer((2, 6, 14, 14), (16, 6, 5, 5), (2, 2), (0, 0), (1, 1), 1)
        assert not G.prefer((2, 6, 14, 14), (6, 2, 5, 5), (1, 1), (0, 0), (1, 1), 3)


def test_scratch_buffers_are_reused_and_results_stay_equal():
    spec = CONVS[5]
    _, x, w, b = make(spec, F32)
    out1, out2 = np.empty(out_shape(spec), F32), np.empty(out_shape(spec), F32)
    fwd(x, w, b, out1, NO_IDX, spec, True)
    pooled_buffers = sum(len(v) for v in G._pool.values())
    fwd(x, w, b, out2, NO_IDX, spec, True)
    assert sum(len(v) for v in G._pool.values()) == pooled_buffers  # taken and given back, none new
    np.testing.assert_array_equal(out1, out2)


@pytest.mark.parametrize("spec", CONVS, ids=IDS)
def test_forward_rows_in_place_equals_the_im2col_copy(spec, monkeypatch):
    # float32 with tracejit's GEMM reads the im2col rows where they lie in the padded input (gemm_rows_at); with
    # OpenBLAS chosen the cols copy and the BLAS call stay: both are the conv, the pooled outputs and argmax too
    _, x, w, b = make(spec, F32)
    n, o, oh, ow = out_shape(spec)
    ph, pw = (oh - 2) // 2 + 1, (ow - 2) // 2 + 1
    results = {}
    for which in ("tracejit", "mixed", "openblas"):
        monkeypatch.setattr(G, "sgemm_choice", lambda which=which: (which, "test"))
        assert G._rows_at_ok(F32, o) == (which != "openblas") and not G._rows_at_ok(F64, o)
        out = np.full(out_shape(spec), np.nan, F32)
        fwd(x, w, b, out, NO_IDX, spec, True)
        close(out, conv_ref(x, w, b, spec, True), reduction(spec), F32)
        if oh >= 2 and ow >= 2:
            pooled, argmax = np.full((n, o, ph, pw), np.nan, F32), np.full((n, o, ph, pw), 255, np.uint8)
            fwd(x, w, b, pooled, argmax, spec, True, 2, 2)
            np.testing.assert_array_equal(pooled, K.max_pool2d(out, (2, 2), (2, 2), (0, 0)))
            np.testing.assert_array_equal(argmax, K.max_pool2d_argmax(out, (2, 2), (2, 2), (0, 0)))
        results[which] = out
    np.testing.assert_array_equal(results["tracejit"], results["mixed"])  # the same kernel


@pytest.mark.parametrize("tasks_per_thread", [8, 1])  # one image per task, or many
@pytest.mark.parametrize("spec", CONVS, ids=IDS)
def test_weight_gradient_in_vector_lanes_equals_per_image_dots(spec, tasks_per_thread, monkeypatch):
    # float32 with tracejit's GEMM: the weight gradient summed over each task's images in vector lanes (DW_VEC;
    # channels padded to 4 or 3, taps to DOT_R); with OpenBLAS chosen, per-image dot products (DW_DOTS)
    monkeypatch.setattr(G, "TASKS_PER_THREAD", tasks_per_thread)
    rng, x, w, b = make(spec, F32)
    stride, padding, dilation = spec[2:5]
    y = conv_ref(x, w, b, spec, True)
    gy = data(rng, y.shape, F32)
    n, o, oh, ow = y.shape
    got = {}
    for which in ("tracejit", "openblas"):
        monkeypatch.setattr(G, "sgemm_choice", lambda which=which: (which, "test"))
        how = G._dw_how(F32, o, w[0].size, 4, 100)[0]
        vec = which == "tracejit" and G.V == 16  # lanes on AVX-512 only
        assert how == (G.DW_GEMM if o >= G.DW_GEMM_MIN_CHANNELS else G.DW_VEC if vec else G.DW_DOTS)
        for with_dx in (True, False):
            dx = np.full(x.shape, np.nan, F32) if with_dx else None
            dw, db = np.full(w.shape, np.nan, F32), np.full(o, np.nan, F32)
            G.conv_backward(x, w, gy, G.MODE_RELU, NO_IDX, y, padding, dilation, dx, dw, db)
            g = gy * (y > 0)
            close(dw, K.conv2d_grad_weight(x, g, w.shape, stride, padding, dilation, 1), n * oh * ow, F32)
            close(db, g.sum(axis=(0, 2, 3)), n * oh * ow, F32)
            if with_dx:
                close(dx, K.conv2d_grad_input(g, w, x.shape, stride, padding, dilation, 1), o * 25, F32)
            got[which, with_dx] = dw
        np.testing.assert_array_equal(got[which, True], got[which, False])  # the same sums without dx


def test_weight_gradient_pads_channels_to_the_dot_block():
    assert G._dw_how(F64, 6, 75, 8, 892)[0] == G.DW_DOTS  # float64: per-image dots
    if G._rows_at_ok(F32, 6) and G.V == 16:
        assert G._dw_how(F32, 6, 75, 8, 892) == (G.DW_VEC, 3)
        assert G._dw_how(F32, 16, 150, 8, 136) == (G.DW_VEC, 4)
        assert G._dw_how(F32, 5, 75, 8, 136) == (G.DW_VEC, 4)  # padded to 8 channels
        assert G._dw_how(F32, 6, 75, 64, 892)[0] == G.DW_DOTS  # 64 images' gradients kept: too much memory
    assert G._dw_how(F32, 32, 144, 8, 1086)[0] == G.DW_GEMM


@pytest.mark.parametrize("spec", CONVS, ids=IDS)
def test_input_gradient_as_full_correlation_equals_dcols_and_col2im(spec, monkeypatch):
    # float32 with tracejit's GEMM: dx as one full correlation per image (written in place without padding,
    # cropped from the padded plane with it; the default on AVX-512); DX_FULL off: dcols = w^T @ dy and col2im adds
    assert G.DX_FULL == (G.V == 16)
    rng, x, w, b = make(spec, F32)
    stride, padding, dilation = spec[2:5]
    y = conv_ref(x, w, b, spec, True)
    gy = data(rng, y.shape, F32)
    ref = K.conv2d_grad_input(gy * (y > 0), w, x.shape, stride, padding, dilation, 1)
    monkeypatch.setattr(G, "sgemm_choice", lambda: ("tracejit", "test"))
    for full in (True, False):
        monkeypatch.setattr(G, "DX_FULL", full)
        dx = np.full(x.shape, np.nan, F32)
        G.conv_backward(x, w, gy, G.MODE_RELU, NO_IDX, y, padding, dilation, dx, None, None)
        close(dx, ref, y.shape[1] * w.shape[2] * w.shape[3], F32)
