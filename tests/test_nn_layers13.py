"""The layers, losses and utilities of issue 13 against PyTorch itself: GroupNorm, Dropout1d/2d/3d,
Upsample/interpolate, ConvTranspose2d, clip_grad_*, SmoothL1/Huber/BCE/KLDiv/TripletMargin losses,
cosine_similarity and pairwise_distance -- forward values, input and parameter gradients in float32 and float64,
module semantics (constructor, parameter names and shapes, init, repr, train/eval), and a few inside compiled
training steps (reference and cpu backends) against eager.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

RNG = np.random.default_rng(13)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}
DTYPES = [np.float32, np.float64]


def arr(x) -> np.ndarray:
    return x.detach().numpy()


def randn(*shape, dtype=np.float64, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def compare(ours, theirs, arrays, grads=None, dtype=np.float64, tol=None, upstream=None):
    """Run `ours` on tracejit tensors and `theirs` on torch tensors made from the same arrays; compare the
    outputs, then the gradients of sum(out * G) for a random G with respect to every array flagged in `grads`.
    Returns (our output, their output)."""
    tol = tol or TOL[dtype]
    grads = [a.dtype.kind == "f" for a in arrays] if grads is None else grads
    a_in = [tj.tensor(a, requires_grad=g) for a, g in zip(arrays, grads)]
    b_in = [torch.tensor(a, requires_grad=bool(g)) for a, g in zip(arrays, grads)]
    out_a, out_b = ours(*a_in), theirs(*b_in)
    np.testing.assert_allclose(arr(out_a), out_b.detach().numpy(), **tol, err_msg="forward")
    if any(grads):
        # (np.asarray: tracejit.tensor(np.float64 scalar) is float32 today, unlike torch.tensor)
        g = np.asarray(randn(*out_b.shape, dtype=dtype) if upstream is None else upstream)
        (out_a * tj.tensor(g)).sum().backward()
        (out_b * torch.tensor(g)).sum().backward()
        for i, (x, y) in enumerate(zip(a_in, b_in)):
            if grads[i]:
                assert x.grad is not None, f"input {i} got no gradient"
                np.testing.assert_allclose(arr(x.grad), y.grad.numpy(), **tol, err_msg=f"grad of input {i}")
    return out_a, out_b


def to_torch(ours, theirs):
    """Load our module's state_dict into the torch module (same keys, shapes and dtypes)."""
    sd = {k: torch.from_numpy(np.array(arr(v))) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd)


def compare_modules(ours, theirs, x, dtype, tol=None):
    """Forward and backward of two modules with the same weights: output, input grad and every parameter grad."""
    tol = tol or TOL[dtype]
    to_torch(ours, theirs)
    compare(ours, theirs, [x], dtype=dtype, tol=tol)
    for (name, p), (tname, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == tname
        np.testing.assert_allclose(arr(p.grad), q.grad.numpy(), **tol, err_msg=f"grad of {name}")


# ---------------------------------------------------------------------------------------------- ConvTranspose2d

CONVT_CASES = [
    dict(),
    dict(stride=2),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2)),
    dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(stride=2, padding=1, output_padding=2, dilation=3),  # output_padding >= stride (dilation allows it)
    dict(groups=2, stride=2, padding=1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kw", CONVT_CASES, ids=[str(i) for i in range(len(CONVT_CASES))])
def test_conv_transpose2d_matches_torch(kw, dtype):
    groups = kw.get("groups", 1)
    x, w, b = randn(2, 4, 5, 4, dtype=dtype), randn(4, 6 // groups, 3, 2, dtype=dtype), randn(6, dtype=dtype)
    tol = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: TOL[np.float64]}[dtype]
    compare(lambda *t: F.conv_transpose2d(*t, **kw), lambda *t: TF.conv_transpose2d(*t, **kw), [x, w, b],
            dtype=dtype, tol=tol)


def test_conv_transpose2d_unbatched_and_no_bias():
    x, w = randn(3, 4, 4), randn(3, 2, 3, 3)
    compare(lambda *t: F.conv_transpose2d(*t, stride=2), lambda *t: TF.conv_transpose2d(*t, stride=2), [x, w])


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    # <conv2d(y, w), x> == <y, conv_transpose2d(x, w)>: the transposed convolution is conv2d's adjoint
    x, y, w = randn(2, 4, 3, 3), randn(2, 3, 7, 7), randn(4, 3, 3, 3)
    lhs = (F.conv2d(tj.tensor(y), tj.tensor(w), stride=2) * tj.tensor(x)).sum()
    rhs = (tj.tensor(y) * F.conv_transpose2d(tj.tensor(x), tj.tensor(w), stride=2)).sum()
    assert math.isclose(lhs.item(), rhs.item(), rel_tol=1e-12)


def test_conv_transpose2d_errors():
    x = tj.randn(2, 5, 4, 4)
    with pytest.raises(RuntimeError, match="expected input\\[2, 5, 4, 4\\] to have 4 channels, but got 5"):
        F.conv_transpose2d(x, tj.randn(4, 3, 3, 3))
    with pytest.raises(RuntimeError, match="output padding must be smaller than either stride or dilation"):
        F.conv_transpose2d(tj.randn(2, 4, 4, 4), tj.randn(4, 3, 3, 3), output_padding=1)
    with pytest.raises(RuntimeError, match="expected bias to be 1-dimensional with 3 elements"):
        F.conv_transpose2d(tj.randn(2, 4, 4, 4), tj.randn(4, 3, 3, 3), tj.randn(4))
    with pytest.raises(RuntimeError, match="empty output"):
        F.conv_transpose2d(tj.randn(2, 4, 1, 1), tj.randn(4, 3, 3, 3), padding=2)
    with pytest.raises(TypeError, match="same dtype"):
        F.conv_transpose2d(tj.randn(2, 4, 4, 4), tj.randn(4, 3, 3, 3, dtype=tj.float64))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_conv_transpose2d_module_matches_torch(dtype):
    ours = nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, output_padding=1, groups=2, dilation=(1, 2),
                              dtype=tj.float64 if dtype == np.float64 else None)
    theirs = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=2, padding=1, output_padding=1, groups=2,
                                      dilation=(1, 2), dtype=torch.float64 if dtype == np.float64 else None)
    assert ours.weight.shape == theirs.weight.shape == (4, 3, 3, 2)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == repr(theirs)
    tol = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: TOL[np.float64]}[dtype]
    compare_modules(ours, theirs, randn(2, 4, 4, 5, dtype=dtype), dtype, tol)


def test_conv_transpose2d_module_init_repr_and_output_size():
    m = nn.ConvTranspose2d(8, 16, 3)
    # kaiming_uniform(a=sqrt 5) on a [in, out/groups, k, k] weight: fan_in = out/groups * k * k
    bound = 1 / math.sqrt(16 * 9)
    w, b = arr(m.weight), arr(m.bias)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound and abs(w.mean()) < 0.1 * bound
    assert np.abs(b).max() <= bound
    for args, kw in [((8, 16, 3), {}), ((4, 2, 2), dict(stride=2, bias=False)),
                     ((4, 4, (3, 1)), dict(stride=(2, 1), padding=1, output_padding=(1, 0), groups=2))]:
        assert repr(nn.ConvTranspose2d(*args, **kw)) == repr(torch.nn.ConvTranspose2d(*args, **kw))
    m, t = nn.ConvTranspose2d(4, 3, 3, stride=2), torch.nn.ConvTranspose2d(4, 3, 3, stride=2)
    to_torch(m, t)
    x = randn(1, 4, 5, 5, dtype=np.float32)
    for size in [(11, 11), (12, 12), [1, 3, 12, 11]]:
        a, b = m(tj.tensor(x), output_size=size), t(torch.tensor(x), output_size=size)
        assert a.shape == b.shape
        np.testing.assert_allclose(arr(a), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="requested an output size of \\[13, 13\\], but valid sizes range from"):
        m(tj.tensor(x), output_size=[13, 13])
    with pytest.raises(ValueError, match="zeros"):
        nn.ConvTranspose2d(4, 3, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        nn.ConvTranspose2d(3, 4, 3, groups=2)


def test_conv_transpose2d_loads_a_torch_state_dict():
    theirs = torch.nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1)
    ours = nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1)
    ours.load_state_dict({k: tj.tensor(v.numpy()) for k, v in theirs.state_dict().items()})
    x = randn(2, 3, 6, 6, dtype=np.float32)
    np.testing.assert_allclose(arr(ours(tj.tensor(x))), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)


# ---------------------------------------------------------------------------------------------- GroupNorm


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,groups", [((2, 6, 4, 3), 3), ((3, 4, 5), 2), ((2, 4), 2), ((2, 6, 2, 2, 2), 1),
                                          ((1, 8, 3, 3), 8)])
def test_group_norm_matches_torch(shape, groups, dtype):
    c = shape[1]
    x, w, b = randn(*shape, dtype=dtype, scale=3.0), randn(c, dtype=dtype), randn(c, dtype=dtype)
    tol = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-9, atol=1e-10)}[dtype]
    compare(lambda *t: F.group_norm(t[0], groups, t[1], t[2], eps=1e-3),
            lambda *t: TF.group_norm(t[0], groups, t[1], t[2], eps=1e-3), [x, w, b], dtype=dtype, tol=tol)
    compare(lambda t: F.group_norm(t, groups), lambda t: TF.group_norm(t, groups), [x], dtype=dtype, tol=tol)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_module(affine):
    ours, theirs = nn.GroupNorm(2, 6, affine=affine), torch.nn.GroupNorm(2, 6, affine=affine)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(nn.GroupNorm(3, 6, eps=1e-3, bias=False)) == repr(torch.nn.GroupNorm(3, 6, eps=1e-3, bias=False))
    if affine:
        np.testing.assert_array_equal(arr(ours.weight), np.ones(6, np.float32))
        np.testing.assert_array_equal(arr(ours.bias), np.zeros(6, np.float32))
        with tj.no_grad():
            ours.weight.copy_(tj.tensor(randn(6, dtype=np.float32)))
            ours.bias.copy_(tj.tensor(randn(6, dtype=np.float32)))
    x = randn(3, 6, 4, 4, dtype=np.float32)
    compare_modules(ours, theirs, x, np.float32, dict(rtol=1e-4, atol=1e-5))
    ours.eval()
    theirs.eval()  # no running statistics: eval computes the same thing
    np.testing.assert_allclose(arr(ours(tj.tensor(x))), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)


def test_group_norm_errors():
    with pytest.raises(ValueError, match="num_channels \\(6\\) must be divisible by num_groups \\(4\\)"):
        nn.GroupNorm(4, 6)
    with pytest.raises(RuntimeError, match="Expected number of channels in input to be divisible by num_groups"):
        F.group_norm(tj.randn(2, 6, 4), 4)
    with pytest.raises(RuntimeError, match="Expected weight to be a vector of size equal to the number of channels"):
        F.group_norm(tj.randn(2, 6, 4), 3, tj.ones(5))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        F.group_norm(tj.randn(1, 3, 1), 3)
    with pytest.raises(RuntimeError, match="at least 2 dimensions"):
        F.group_norm(tj.randn(4), 2)


# ---------------------------------------------------------------------------------------------- Dropout1d/2d/3d


def test_dropout2d_zeroes_whole_channels_and_scales_the_rest():
    x = tj.tensor(randn(8, 16, 3, 4, dtype=np.float32) + 5.0, requires_grad=True)
    m = nn.Dropout2d(0.25)
    assert repr(m) == repr(torch.nn.Dropout2d(0.25)) == "Dropout2d(p=0.25, inplace=False)"
    out = m(x)
    y, xv = arr(out), arr(x)
    kept = np.abs(y).reshape(8, 16, -1).min(-1) > 0
    dropped = np.abs(y).reshape(8, 16, -1).max(-1) == 0
    assert (kept | dropped).all(), "a channel is either all kept or all zero"
    np.testing.assert_allclose(y[kept], xv[kept] / 0.75, rtol=1e-6)
    assert 0.1 < dropped.mean() < 0.4
    out.sum().backward()
    np.testing.assert_allclose(arr(x.grad), np.broadcast_to((kept / 0.75)[:, :, None, None], x.shape), rtol=1e-6)
    m.eval()
    assert m(x) is x
    assert arr(F.dropout2d(x, 1.0)).max() == 0 and F.dropout2d(x, 0.0) is x
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        nn.Dropout2d(1.5)


def test_dropout2d_on_3d_input_warns_and_drops_dim_1_as_pytorch():
    x = tj.ones(4, 32, 5)
    with pytest.warns(UserWarning, match="Received a 3D input to dropout2d"):
        y = arr(F.dropout2d(x, 0.5))
    per_channel = y.reshape(4, 32, 5)
    assert ((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1)).all()
    with pytest.warns(UserWarning, match="Received a 2-D input to dropout2d"):
        F.dropout2d(tj.ones(4, 8), 0.5)


def test_dropout1d_and_3d():
    y = arr(F.dropout1d(tj.ones(32, 6), 0.5))  # unbatched [C, L]
    assert ((y == 0).all(-1) | (y == 2.0).all(-1)).all() and (y == 0).any()
    y = arr(nn.Dropout3d(0.5)(tj.ones(2, 16, 2, 2, 2)))
    flat = y.reshape(2, 16, -1)
    assert ((flat == 0).all(-1) | (flat == 2.0).all(-1)).all()
    with pytest.raises(RuntimeError, match="dropout1d: Expected 2D or 3D input, but received a 4D input"):
        F.dropout1d(tj.ones(1, 2, 3, 4))
    assert repr(nn.Dropout1d()) == repr(torch.nn.Dropout1d())
    assert repr(nn.Dropout3d(0.1)) == "Dropout3d(p=0.1, inplace=False)"


# ---------------------------------------------------------------------------------------------- interpolate

INTERP_CASES = [
    ("nearest", 4, dict(scale_factor=2)),
    ("nearest", 4, dict(size=(7, 3))),
    ("nearest", 4, dict(scale_factor=1.7)),
    ("nearest", 4, dict(scale_factor=(0.5, 3))),
    ("nearest", 4, dict(scale_factor=1.3, recompute_scale_factor=True)),
    ("nearest", 3, dict(size=9)),
    ("nearest", 5, dict(scale_factor=(2, 1.5, 0.7))),
    ("nearest-exact", 4, dict(size=(7, 3))),
    ("nearest-exact", 3, dict(scale_factor=2.5)),
    ("bilinear", 4, dict(scale_factor=2)),
    ("bilinear", 4, dict(size=(7, 3))),
    ("bilinear", 4, dict(scale_factor=1.7)),
    ("bilinear", 4, dict(scale_factor=(0.5, 2.5))),
    ("bilinear", 4, dict(scale_factor=2.5, recompute_scale_factor=True)),
    ("bilinear_ac", 4, dict(scale_factor=2)),
    ("bilinear_ac", 4, dict(size=(7, 3))),
    ("bilinear_ac", 4, dict(size=(1, 9))),
    ("bilinear_ac", 4, dict(scale_factor=1.7)),
    ("linear", 3, dict(scale_factor=3)),
    ("linear_ac", 3, dict(size=4)),
    ("trilinear", 5, dict(size=(3, 5, 2))),
    ("area", 4, dict(size=(3, 2))),
    ("area", 4, dict(scale_factor=0.5)),
    ("area", 3, dict(size=4)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("mode,ndim,kw", INTERP_CASES, ids=[f"{m}-{n}d-{i}" for i, (m, n, _) in
                                                            enumerate(INTERP_CASES)])
def test_interpolate_matches_torch(mode, ndim, kw, dtype):
    kw = dict(kw)
    if mode.endswith("_ac"):
        mode, kw["align_corners"] = mode[:-3], True
    spatial = {3: (6,), 4: (5, 6), 5: (3, 4, 5)}[ndim]
    x = randn(2, 3, *spatial, dtype=dtype)
    tol = {np.float32: dict(rtol=1e-5, atol=5e-6), np.float64: TOL[np.float64]}[dtype]
    compare(lambda t: F.interpolate(t, mode=mode, **kw), lambda t: TF.interpolate(t, mode=mode, **kw), [x],
            dtype=dtype, tol=tol)


def test_interpolate_picks_the_same_pixels_as_torch_over_many_sizes():
    """Forward only, many (input, output, scale) combinations: the index arithmetic is PyTorch's, bit for bit."""
    for mode in ("nearest", "nearest-exact", "bilinear"):
        for n in (1, 3, 5, 8):
            for kw in [dict(size=(s, s + 1)) for s in (1, 2, 4, 7, 16)] + \
                      [dict(scale_factor=f) for f in (0.3, 0.5, 1.1, 1.3, 2.0, 2.2, 2.5, 3.0)]:
                x = randn(1, 2, n, n + 2)
                if min(int(n * kw.get("scale_factor", 1)), int((n + 2) * kw.get("scale_factor", 1))) == 0:
                    continue  # an empty output: both raise
                a = arr(F.interpolate(tj.tensor(x), mode=mode, **kw))
                b = TF.interpolate(torch.tensor(x), mode=mode, **kw).numpy()
                np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14, err_msg=f"{mode} {n} {kw}")


def test_upsample_modules():
    x = randn(2, 3, 4, 5, dtype=np.float32)
    for ours, theirs in [(nn.Upsample(scale_factor=2), torch.nn.Upsample(scale_factor=2)),
                         (nn.Upsample(size=(3, 7), mode="bilinear"), torch.nn.Upsample(size=(3, 7), mode="bilinear")),
                         (nn.Upsample(scale_factor=(2, 1.5), mode="bilinear", align_corners=True),
                          torch.nn.Upsample(scale_factor=(2, 1.5), mode="bilinear", align_corners=True)),
                         (nn.UpsamplingNearest2d(scale_factor=3), torch.nn.UpsamplingNearest2d(scale_factor=3)),
                         (nn.UpsamplingBilinear2d(size=(8, 9)), torch.nn.UpsamplingBilinear2d(size=(8, 9)))]:
        assert repr(ours) == repr(theirs)
        compare(ours, theirs, [x], dtype=np.float32, tol=dict(rtol=1e-5, atol=5e-6))


def test_interpolate_errors_and_warnings():
    x = tj.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="align_corners option can only be set with the interpolating modes"):
        F.interpolate(x, scale_factor=2, align_corners=True)
    with pytest.raises(ValueError, match="only one of size or scale_factor should be defined"):
        F.interpolate(x, size=3, scale_factor=2)
    with pytest.raises(ValueError, match="either size or scale_factor should be defined"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="Input and output must have the same number of spatial dimensions"):
        F.interpolate(x, size=(2, 3, 4))
    with pytest.raises(ValueError, match="recompute_scale_factor is not meaningful with an explicit size"):
        F.interpolate(x, size=3, recompute_scale_factor=True)
    with pytest.raises(NotImplementedError, match="Got 4D input, but linear mode needs 3D input"):
        F.interpolate(x, scale_factor=2, mode="linear")
    with pytest.raises(NotImplementedError, match="Only 3D, 4D and 5D input Tensors supported \\(got 2D\\)"):
        F.interpolate(tj.randn(4, 4), size=3)
    with pytest.raises(RuntimeError, match="Input and output sizes should be greater than 0, but got input "
                                           "\\(H: 4, W: 4\\) output \\(H: 0, W: 0\\)"):
        F.interpolate(x, scale_factor=0.1)
    with pytest.raises(NotImplementedError, match="bicubic"):
        F.interpolate(x, scale_factor=2, mode="bicubic")
    with pytest.warns(UserWarning, match="upsample_bilinear` is deprecated"):
        y = F.upsample_bilinear(x, scale_factor=2)
    np.testing.assert_allclose(arr(y), TF.interpolate(torch.tensor(arr(x)), scale_factor=2, mode="bilinear",
                                                      align_corners=True).numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- losses

REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
def test_smooth_l1_loss(beta, reduction, dtype):
    x, y = randn(4, 5, dtype=dtype), randn(4, 5, dtype=dtype)
    y[0, :3] = x[0, :3] + np.array([0.0, beta, -beta], dtype)  # the kinks: d == 0 and |d| == beta
    compare(lambda a, b: F.smooth_l1_loss(a, b, reduction=reduction, beta=beta),
            lambda a, b: TF.smooth_l1_loss(a, b, reduction=reduction, beta=beta), [x, y], dtype=dtype)
    m, t = nn.SmoothL1Loss(reduction=reduction, beta=beta), torch.nn.SmoothL1Loss(reduction=reduction, beta=beta)
    assert repr(m) == repr(t)
    compare(m, t, [x, y], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_loss(delta, reduction, dtype):
    x, y = randn(3, 6, dtype=dtype, scale=2.0), randn(3, 6, dtype=dtype)
    y[0, :2] = x[0, :2] + np.array([delta, -delta], dtype)
    compare(lambda a, b: F.huber_loss(a, b, reduction=reduction, delta=delta),
            lambda a, b: TF.huber_loss(a, b, reduction=reduction, delta=delta), [x, y], dtype=dtype)
    compare(nn.HuberLoss(reduction, delta), torch.nn.HuberLoss(reduction, delta), [x, y], dtype=dtype)
    w = RNG.random((3, 6)).astype(dtype)
    compare(lambda a, b, c: F.huber_loss(a, b, reduction=reduction, delta=delta, weight=c),
            lambda a, b, c: TF.huber_loss(a, b, reduction=reduction, delta=delta, weight=c), [x, y, w], dtype=dtype)


def test_regression_losses_broadcast_warning_and_errors():
    x, y = tj.randn(3, 4), tj.randn(4)
    with pytest.warns(UserWarning, match="Using a target size"):
        a = F.smooth_l1_loss(x, y)
    with pytest.warns(UserWarning):
        b = TF.smooth_l1_loss(torch.tensor(arr(x)), torch.tensor(arr(y)))
    np.testing.assert_allclose(arr(a), b.numpy(), rtol=1e-6)
    with pytest.raises(RuntimeError, match="smooth_l1_loss does not support negative values for beta"):
        F.smooth_l1_loss(x, x, beta=-1)
    with pytest.raises(ValueError, match="Weights and input must have the same size"):
        F.huber_loss(x, x, weight=tj.ones(4))
    with pytest.raises(ValueError, match="foo is not a valid value for reduction"):
        F.huber_loss(x, x, reduction="foo")
    with pytest.raises(TypeError, match="delta must be a float or int"):
        nn.HuberLoss(delta="1")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_loss_with_weights(reduction, dtype):
    x, y = RNG.uniform(0.02, 0.98, (4, 5)).astype(dtype), RNG.random((4, 5)).astype(dtype)
    for w in [None, RNG.random((4, 5)).astype(dtype), RNG.random(5).astype(dtype)]:
        arrays = [x, y] if w is None else [x, y, w]
        compare(lambda *t: F.binary_cross_entropy(*t[:2], weight=t[2] if len(t) > 2 else None, reduction=reduction),
                lambda *t: TF.binary_cross_entropy(*t[:2], weight=t[2] if len(t) > 2 else None, reduction=reduction),
                arrays, grads=[True, True, False][:len(arrays)], dtype=dtype)
    m, t = nn.BCELoss(weight=tj.tensor(w), reduction=reduction), torch.nn.BCELoss(torch.tensor(w), reduction=reduction)
    compare(m, t, [x, y], grads=[True, False], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_bce_at_the_edges_clamps_like_pytorch(dtype):
    # log clamped at -100; the input's gradient is (x - y) / max(x (1 - x), 1e-12), also at x = 0 and 1
    x = np.array([0.0, 1.0, 1e-30, 0.5, 1.0 - 1e-7, 0.0, 1.0, 1e-9, 3e-6, 0.999], dtype)
    y = np.array([1.0, 0.0, 1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.5, 1.0], dtype)
    tol = {np.float32: dict(rtol=1e-5, atol=1e-12), np.float64: dict(rtol=1e-9, atol=1e-15)}[dtype]
    compare(lambda a, b: F.binary_cross_entropy(a, b, reduction="none"),
            lambda a, b: TF.binary_cross_entropy(a, b, reduction="none"), [x, y], grads=[True, False], dtype=dtype,
            tol=tol, upstream=np.ones(len(x), dtype))


def test_bce_double_backward_inside_the_interval():
    x = tj.tensor(RNG.uniform(0.1, 0.9, 6), requires_grad=True)
    y = tj.tensor(RNG.random(6))
    (g,) = tj.autograd.grad(F.binary_cross_entropy(x, y, reduction="sum"), [x], create_graph=True)
    xt = torch.tensor(arr(x), requires_grad=True)
    (gt,) = torch.autograd.grad(TF.binary_cross_entropy(xt, torch.tensor(arr(y)), reduction="sum"), [xt],
                                create_graph=True)
    np.testing.assert_allclose(arr(g), gt.detach().numpy(), rtol=1e-10)
    (g * g).sum().backward()
    (gt * gt).sum().backward()
    np.testing.assert_allclose(arr(x.grad), xt.grad.numpy(), rtol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none", "mean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div(log_target, reduction, dtype):
    x = np.log(RNG.dirichlet(np.ones(5), 4)).astype(dtype)
    p = RNG.dirichlet(np.ones(5), 4).astype(dtype)
    p[0, 1] = 0.0  # xlogy(0, 0) = 0
    y = np.log(p + 1e-3).astype(dtype) if log_target else p
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'mean' warns in both
        compare(lambda a, b: F.kl_div(a, b, reduction=reduction, log_target=log_target),
                lambda a, b: TF.kl_div(a, b, reduction=reduction, log_target=log_target), [x, y],
                grads=[True, log_target], dtype=dtype)
        m = nn.KLDivLoss(reduction=reduction, log_target=log_target)
        t = torch.nn.KLDivLoss(reduction=reduction, log_target=log_target)
        compare(m, t, [x, y], grads=[True, False], dtype=dtype)
    assert repr(m) == "KLDivLoss()"


def test_kl_div_warnings_and_errors():
    x, y = tj.randn(2, 3).log_softmax(1), tj.rand(2, 3)
    with pytest.warns(UserWarning, match="'batchmean' divides only by the batch size"):
        F.kl_div(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.kl_div(x, y, reduction="batchmean")
    with pytest.raises(ValueError, match="foo is not a valid value for reduction"):
        F.kl_div(x, y, reduction="foo")
    # legacy arguments: size_average=False means 'sum'
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        np.testing.assert_allclose(arr(F.kl_div(x, y, size_average=False)), arr(F.kl_div(x, y, reduction="sum")))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kw", [dict(), dict(p=1.0), dict(p=3.0, margin=0.5), dict(swap=True),
                                dict(reduction="sum", eps=1e-3), dict(reduction="none", p=float("inf"))],
                         ids=["default", "p1", "p3", "swap", "sum", "none-inf"])
def test_triplet_margin_loss(kw, dtype):
    a, p, n = randn(6, 4, dtype=dtype), randn(6, 4, dtype=dtype), randn(6, 4, dtype=dtype, scale=0.5)
    tol = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: TOL[np.float64]}[dtype]
    compare(lambda *t: F.triplet_margin_loss(*t, **kw), lambda *t: TF.triplet_margin_loss(*t, **kw), [a, p, n],
            dtype=dtype, tol=tol)
    compare(nn.TripletMarginLoss(**kw), torch.nn.TripletMarginLoss(**kw), [a, p, n], dtype=dtype, tol=tol)


def test_triplet_margin_loss_errors_and_1d():
    with pytest.raises(ValueError, match="margin must be greater than 0, got 0"):
        F.triplet_margin_loss(tj.randn(3, 4), tj.randn(3, 4), tj.randn(3, 4), margin=0)
    with pytest.raises(ValueError, match="TripletMarginLoss: expected margin to be greater than 0"):
        nn.TripletMarginLoss(margin=-1)
    with pytest.raises(RuntimeError, match="anchor 2D, positive 1D, and negative 2D inputs"):
        F.triplet_margin_loss(tj.randn(3, 4), tj.randn(4), tj.randn(3, 4))
    compare(F.triplet_margin_loss, TF.triplet_margin_loss, [randn(4), randn(4), randn(4)])


# ---------------------------------------------------------------------------------------------- distances


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shapes,dim", [(((4, 5), (4, 5)), 1), (((3, 4), (4,)), 0), (((3, 4), (1, 4)), 1),
                                        (((2, 3, 4), (2, 3, 4)), -1)])
def test_cosine_similarity(shapes, dim, dtype):
    x1, x2 = randn(*shapes[0], dtype=dtype), randn(*shapes[1], dtype=dtype)
    # a broadcast operand's gradient sums terms of size ~1 that nearly cancel: float32 leaves ~1e-6 of rounding
    # in it (seen: 1.7e-6 against torch's -9.5e-7 for the (4,) operand of (3, 4) at dim 0)
    tol = dict(rtol=2e-5, atol=1e-5) if dtype == np.float32 else None
    compare(lambda a, b: F.cosine_similarity(a, b, dim=dim), lambda a, b: TF.cosine_similarity(a, b, dim=dim),
            [x1, x2], dtype=dtype, tol=tol)
    compare(nn.CosineSimilarity(dim=dim), torch.nn.CosineSimilarity(dim=dim), [x1, x2], dtype=dtype, tol=tol)


def test_cosine_similarity_of_a_zero_vector_has_pytorchs_gradient():
    # the norms are clamped at eps without cutting their gradient, as PyTorch's in-place clamp under no_grad
    x1 = np.zeros((2, 3))
    x1[1] = [1e-9, 0.0, 0.0]
    compare(lambda a, b: F.cosine_similarity(a, b), lambda a, b: TF.cosine_similarity(a, b), [x1, randn(2, 3)],
            tol=dict(rtol=1e-7, atol=1e-9))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 0.5, float("inf"), 0.0])
@pytest.mark.parametrize("keepdim", [False, True])
def test_pairwise_distance(p, keepdim, dtype):
    x1, x2 = randn(5, 4, dtype=dtype), randn(5, 4, dtype=dtype)
    x2[0] = x1[0]  # a zero distance (only eps apart)
    tol = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: TOL[np.float64]}[dtype]
    compare(lambda a, b: F.pairwise_distance(a, b, p=p, keepdim=keepdim),
            lambda a, b: TF.pairwise_distance(a, b, p=p, keepdim=keepdim), [x1, x2], grads=[p != 0.0, False],
            dtype=dtype, tol=tol)
    m, t = nn.PairwiseDistance(p=p, keepdim=keepdim), torch.nn.PairwiseDistance(p=p, keepdim=keepdim)
    compare(m, t, [x1, x2], grads=[False, False], dtype=dtype, tol=tol)


def test_pairwise_distance_broadcasts():
    compare(F.pairwise_distance, TF.pairwise_distance, [randn(3, 4), randn(4)])
    compare(F.pairwise_distance, TF.pairwise_distance, [randn(4), randn(4)])


# ---------------------------------------------------------------------------------------------- clip_grad


def _twin_params(dtype=np.float32):
    shapes = [(3, 4), (4,), (2, 2, 3)]
    values = [randn(*s, dtype=dtype) for s in shapes]
    grads = [randn(*s, dtype=dtype, scale=2.0) for s in shapes]
    ours = [nn.Parameter(tj.tensor(v)) for v in values]
    theirs = [torch.nn.Parameter(torch.tensor(v)) for v in values]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = tj.tensor(g), torch.tensor(g)
    return ours, theirs


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("norm_type", [2.0, 1, 3.0, float("inf"), "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e4])
def test_clip_grad_norm_matches_torch(max_norm, norm_type, dtype):
    ours, theirs = _twin_params(dtype)
    total_a = nn.utils.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    total_b = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(total_a, tj.Tensor) and total_a.shape == () and total_a.dtype.name == str(total_b.dtype)[6:]
    np.testing.assert_allclose(arr(total_a), total_b.numpy(), **TOL[dtype])
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(arr(p.grad), q.grad.numpy(), **TOL[dtype])
    assert not total_a.requires_grad


def test_clip_grad_norm_edge_cases():
    assert arr(nn.utils.clip_grad_norm_([], 1.0)) == 0.0
    p = nn.Parameter(tj.ones(2))  # no grad: skipped
    np.testing.assert_array_equal(arr(nn.utils.clip_grad_norm_(p, 1.0)), 0.0)
    with pytest.warns(UserWarning, match="`parameters` is an empty generator"):
        nn.utils.clip_grad_norm_((q for q in []), 1.0)
    ours, theirs = _twin_params()
    with pytest.warns(FutureWarning, match="clip_grad_norm` is now deprecated"):
        total = nn.utils.clip_grad_norm(iter(ours), 1.0)
    np.testing.assert_allclose(arr(total), torch.nn.utils.clip_grad_norm_(theirs, 1.0).numpy(), rtol=1e-6)
    ours[0].grad = tj.tensor(np.full((3, 4), np.inf, np.float32))
    with pytest.raises(RuntimeError, match="The total norm of order 2.0 for gradients from `parameters` is "
                                           "non-finite, so it cannot be clipped"):
        nn.utils.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    assert np.isinf(arr(ours[0].grad)).all()  # nothing was scaled
    nn.utils.clip_grad_norm_(ours, 1.0, foreach=True)  # foreach is accepted; a non-finite norm scales by 0 / nan
    assert np.isnan(arr(ours[0].grad)).all() and (arr(ours[1].grad) == 0).all()


def test_get_total_norm_clip_grads_with_norm_and_clip_grad_value():
    ours, theirs = _twin_params()
    total_a = nn.utils.get_total_norm([p.grad for p in ours], 3.0)
    total_b = torch.nn.utils.get_total_norm([q.grad for q in theirs], 3.0)
    np.testing.assert_allclose(arr(total_a), total_b.numpy(), rtol=1e-6)
    nn.utils.clip_grads_with_norm_(ours, 1.0, total_a)
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, total_b)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(arr(p.grad), q.grad.numpy(), rtol=1e-6)
    ours, theirs = _twin_params()
    assert nn.utils.clip_grad_value_(ours, 0.7) is None
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, q in zip(ours, theirs):
        np.testing.assert_array_equal(arr(p.grad), q.grad.numpy())
    vec = nn.utils.parameters_to_vector(ours)
    np.testing.assert_array_equal(arr(vec), torch.nn.utils.parameters_to_vector(theirs).detach().numpy())
    nn.utils.vector_to_parameters(vec * 2.0, ours)
    np.testing.assert_array_equal(arr(ours[2]), 2 * theirs[2].detach().numpy())
    with pytest.raises(TypeError, match="expected torch.Tensor"):
        nn.utils.vector_to_parameters([1.0], ours)


# ---------------------------------------------------------------------------------------------- compiled steps


class _Decoder(nn.Module):
    """A small encoder/decoder touching most of this issue's layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.drop = nn.Dropout2d(0.25)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.resize = nn.Upsample(size=(10, 10), mode="bilinear")
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = self.drop(F.relu(self.norm(self.conv(x))))
        return self.head(self.resize(F.relu(self.up(h))))


def _snapshot(model):
    out = {}
    for name, p in model.named_parameters():
        out[name] = arr(p).copy()
        out[name + ".grad"] = arr(p.grad).copy()
    return out


def _train_decoder(data, backend=None):
    """Three SGD steps of _Decoder with both clip_grad utilities; eager when backend is None."""
    tj.manual_seed(0)
    model = _Decoder()
    opt = tj.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.smooth_l1_loss(model(x), y, beta=0.5) + F.huber_loss(model.resize(x), y, delta=0.3)
        loss.backward()
        total = nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        nn.utils.clip_grad_value_(model.parameters(), 0.05)
        opt.step()
        return loss, total

    run = step if backend is None else tj.compile(step, backend=backend)
    tj.manual_seed(1)
    losses = [[arr(v).copy() for v in run(x, y)] for x, y in data]
    return losses, _snapshot(model)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compiled_training_step_matches_eager(backend):
    data = [(tj.tensor(randn(2, 3, 8, 8, dtype=np.float32)), tj.tensor(randn(2, 3, 10, 10, dtype=np.float32)))
            for _ in range(3)]
    eager_losses, eager_state = _train_decoder(data)
    comp_losses, comp_state = _train_decoder(data, backend)
    tol = dict(rtol=0, atol=0) if backend == "reference" else dict(rtol=2e-4, atol=1e-6)
    for a, b in zip(eager_losses, comp_losses):
        np.testing.assert_allclose(b, a, **tol)
    for k in eager_state:
        np.testing.assert_allclose(comp_state[k], eager_state[k], **tol, err_msg=k)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy on the inf step
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compiled_metric_losses_and_nonfinite_check(backend):
    tj.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    opt = tj.optim.Adam(net.parameters(), lr=0.01)

    def step(a, p, n, scale):
        opt.zero_grad()
        ea, ep, en = net(a), net(p), net(n)
        loss = (F.triplet_margin_loss(ea, ep, en, swap=True)
                + F.kl_div(ea.log_softmax(1), ep.softmax(1), reduction="batchmean")
                + F.binary_cross_entropy(F.cosine_similarity(ea, en).sigmoid(), tj.ones(4) * 0.5)
                + F.pairwise_distance(ep, en).mean() * 0.01) * scale
        loss.backward()
        total = nn.utils.clip_grad_norm_(net.parameters(), 1.0, error_if_nonfinite=True)
        opt.step()
        return loss, total

    batch = [tj.tensor(randn(4, 6, dtype=np.float32)) for _ in range(3)]
    eager = [arr(v).copy() for v in step(*batch, tj.tensor(1.0))]
    compiled = tj.compile(step, backend=backend)
    compiled(*batch, tj.tensor(1.0))  # the first call creates Adam's state eagerly
    out = [arr(v) for v in compiled(*batch, tj.tensor(1.0))]
    assert np.isfinite(out[0]) and np.isfinite(out[1]) and out[1] > 0 and eager[1] > 0
    good = {k: arr(v).copy() for k, v in net.state_dict().items()}
    good_grads = [arr(p.grad).copy() for p in net.parameters()]
    with pytest.raises(RuntimeError, match="non-finite, so it cannot be clipped"):
        compiled(*batch, tj.tensor(float("inf")))
    for k, v in net.state_dict().items():  # the failed call wrote nothing back
        np.testing.assert_array_equal(arr(v), good[k], err_msg=k)
    for p, g in zip(net.parameters(), good_grads):
        np.testing.assert_array_equal(arr(p.grad), g)
    again = [arr(v) for v in compiled(*batch, tj.tensor(1.0))]
    assert np.isfinite(again[0])
