"""tracejit.nn.functional and nn.init: values against NumPy (and PyTorch when installed), gradients of the
composites by finite differences in float64, numerical stability and the errors users see.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import special

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F
import tracejit.nn.init as init
from tracejit.autograd import gradcheck
from tracejit.errors import OpError, OpTypeError

RNG = np.random.default_rng(1)


def t(a, requires_grad=False, dtype=None):
    return tj.tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad)


def d(*shape, scale=1.0):
    """A float64 tensor requiring grad, for gradcheck."""
    return t(RNG.standard_normal(shape) * scale, requires_grad=True, dtype=tj.float64)


def arr(x) -> np.ndarray:
    return x.detach().numpy()


def np_log_softmax(x, axis):
    s = x - x.max(axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis, keepdims=True))


# ----------------------------------------------------------------------------------------------- activations


def test_activations_values():
    x = (RNG.standard_normal((4, 5)) * 3).astype(np.float32)
    x[0, 0] = 0.0
    xt = t(x)
    np.testing.assert_allclose(arr(F.relu(xt)), np.maximum(x, 0))
    np.testing.assert_allclose(arr(F.relu6(xt * 3)), np.clip(x * 3, 0, 6), rtol=1e-6)
    np.testing.assert_allclose(arr(F.leaky_relu(xt)), np.where(x > 0, x, 0.01 * x), rtol=1e-6)
    np.testing.assert_allclose(arr(F.elu(xt)), np.where(x > 0, x, np.expm1(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr(F.gelu(xt)), 0.5 * x * (1 + special.erf(x / math.sqrt(2))), rtol=1e-5,
                               atol=1e-6)
    tanh_ref = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(arr(F.gelu(xt, approximate="tanh")), tanh_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr(F.silu(xt)), x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr(F.softplus(xt)), np.logaddexp(0, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr(F.softplus(xt, beta=2.0)), np.logaddexp(0, 2 * x) / 2, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(arr(F.sigmoid(xt)), special.expit(x), rtol=1e-5)
    np.testing.assert_allclose(arr(F.tanh(xt)), np.tanh(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr(F.log_softmax(xt, dim=0)), np_log_softmax(x, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arr(F.softmax(xt, dim=-1)), np.exp(np_log_softmax(x, 1)), rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        np.testing.assert_allclose(arr(F.softmax(xt)), np.exp(np_log_softmax(x, 1)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(xt, approximate="fast")


@pytest.mark.parametrize("fn", [
    lambda x: F.gelu(x), lambda x: F.gelu(x, approximate="tanh"), lambda x: F.leaky_relu(x, 0.1),
    lambda x: F.elu(x), lambda x: F.silu(x), lambda x: F.softplus(x), lambda x: F.softmax(x, 1),
    lambda x: F.log_softmax(x, 0), lambda x: F.relu6(x * 4)],
    ids=["gelu", "gelu_tanh", "leaky_relu", "elu", "silu", "softplus", "softmax", "log_softmax", "relu6"])
def test_activation_gradients(fn):
    assert gradcheck(fn, (d(3, 4, scale=2.0),))


def test_softplus_gradient_at_zero_is_half():
    x = t([0.0, 0.0], requires_grad=True)
    F.softplus(x).sum().backward()
    np.testing.assert_allclose(arr(x.grad), [0.5, 0.5])


# ----------------------------------------------------------------------------------------------- layers


def test_linear_functional_and_gradients():
    x, w, b = d(3, 4), d(2, 4), d(2)
    np.testing.assert_allclose(arr(F.linear(x, w, b)), arr(x) @ arr(w).T + arr(b))
    assert F.linear(d(4), w).shape == (2,)
    assert gradcheck(lambda x, w, b: F.linear(x, w, b), (x, w, b))
    with pytest.raises(OpError, match=r"linear: input of shape \[3, 4\] has 4 features"):
        F.linear(x, d(2, 5))


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1), dict(padding=(0, 1), dilation=(2, 1)),
                                dict(groups=2), dict(padding="same"), dict(padding="valid")])
def test_conv2d_gradients(kw):
    x, w, b = d(2, 2, 5, 4), d(4, 2 // kw.get("groups", 1), 3, 2), d(4)
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), (x, w, b))


def test_conv2d_unbatched_and_errors():
    x, w = d(2, 5, 5), d(3, 2, 3, 3)
    np.testing.assert_allclose(arr(F.conv2d(x, w)), arr(F.conv2d(x.unsqueeze(0), w))[0])
    with pytest.raises(ValueError, match="strided"):
        F.conv2d(x, w, padding="same", stride=2)
    with pytest.raises(ValueError, match="Invalid padding string"):
        F.conv2d(x, w, padding="full")
    with pytest.raises(OpError, match="channels"):
        F.conv2d(d(1, 3, 5, 5), w)


def test_pool_functionals_values():
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    xt = t(x)
    # ceil_mode: the last window hangs over the edge and is clipped
    out = arr(F.max_pool2d(xt, 2, ceil_mode=True))
    assert out.shape == (1, 2, 3, 3)
    assert out[0, 0, 2, 2] == x[0, 0, 4, 4] and out[0, 1, 0, 2] == x[0, 1, 0:2, 4].max()
    # default stride is the kernel size; stride may differ
    np.testing.assert_allclose(arr(F.max_pool2d(xt, 3, stride=1))[0, 0, 1, 2], x[0, 0, 1:4, 2:5].max())
    # count_include_pad: padded zeros count in the divisor only when asked
    avg_in = arr(F.avg_pool2d(xt, 3, stride=2, padding=1))
    avg_ex = arr(F.avg_pool2d(xt, 3, stride=2, padding=1, count_include_pad=False))
    np.testing.assert_allclose(avg_in[0, 0, 0, 0], x[0, 0, :2, :2].sum() / 9, rtol=1e-5)
    np.testing.assert_allclose(avg_ex[0, 0, 0, 0], x[0, 0, :2, :2].mean(), rtol=1e-5)
    np.testing.assert_allclose(avg_in[0, 1, 1, 1], x[0, 1, 1:4, 1:4].mean(), rtol=1e-5)
    np.testing.assert_allclose(arr(F.avg_pool2d(xt, 2, divisor_override=1)), arr(F.avg_pool2d(xt, 2)) * 4,
                               rtol=1e-6)
    np.testing.assert_allclose(arr(F.adaptive_avg_pool2d(xt, (1, None)))[0, :, 0, :], x[0].mean(1), rtol=1e-5,
                               atol=1e-6)
    assert F.max_pool2d(t(x[0]), 2).shape == (2, 2, 2)  # unbatched [C, H, W]


@pytest.mark.parametrize("fn", [
    lambda x: F.max_pool2d(x, 2, stride=1, padding=1), lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True),
    lambda x: F.avg_pool2d(x, 2, padding=1, count_include_pad=False),
    lambda x: F.avg_pool2d(x, 3, 2, 1, True),
    lambda x: F.adaptive_avg_pool2d(x, 1), lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
    lambda x: F.adaptive_avg_pool2d(x, 2)], ids=["max", "max_ceil", "avg_excl", "avg_ceil", "adaptive1",
                                                 "adaptive_uneven", "adaptive_even"])
def test_pool_gradients(fn):
    assert gradcheck(fn, (d(1, 2, 4, 5),))


def test_batch_norm_functional():
    x = d(4, 3, 2)
    rm, rv = tj.zeros(3, dtype=tj.float64), tj.ones(3, dtype=tj.float64)
    w, b = d(3), d(3)
    out = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-3)
    xa = arr(x)
    m, v = xa.mean((0, 2)), xa.var((0, 2))
    ref = (xa - m[:, None]) / np.sqrt(v[:, None] + 1e-3) * arr(w)[:, None] + arr(b)[:, None]
    np.testing.assert_allclose(arr(out), ref, rtol=1e-10)
    np.testing.assert_allclose(arr(rm), 0.2 * m)
    np.testing.assert_allclose(arr(rv), 0.8 + 0.2 * xa.var((0, 2), ddof=1))
    assert not rm.requires_grad
    assert gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (x, w, b))
    assert gradcheck(lambda x, w: F.batch_norm(x, rm, rv, w, None), (x, w))
    with pytest.raises(ValueError, match="required when training=False"):
        F.batch_norm(x, None, None)


def test_dropout_functional_gradient_and_eval():
    x = d(5, 4)
    assert F.dropout(x, 0.5, training=False) is x

    def fn(x):
        tj.manual_seed(7)  # the same mask on every evaluation
        return F.dropout(x, 0.4)

    assert gradcheck(fn, (x,))
    kept = arr(fn(x)) != 0
    np.testing.assert_allclose(arr(fn(x))[kept], arr(x)[kept] / 0.6)


def test_pad_reversed_convention_and_crop():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    out = arr(F.pad(t(x), (1, 2)))
    np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (0, 0), (1, 2))))
    out = arr(F.pad(t(x), (1, 0, 0, 2), value=7.0))
    np.testing.assert_array_equal(out, np.pad(x, ((0, 0), (0, 2), (1, 0)), constant_values=7.0))
    np.testing.assert_array_equal(arr(F.pad(t(x), (-1, 1, 1, -2))),
                                  np.pad(x, ((0, 0), (1, 0), (0, 1)))[:, :2, 1:])
    assert gradcheck(lambda x: F.pad(x, (1, -1, 2, 0)), (d(2, 3),))
    with pytest.raises(ValueError, match="divisible by 2"):
        F.pad(t(x), (1,))
    with pytest.raises(NotImplementedError, match="reflect"):
        F.pad(t(x), (1, 1), mode="reflect")


def test_one_hot_and_flatten():
    y = tj.tensor([0, 2, 1])
    np.testing.assert_array_equal(arr(F.one_hot(y)), np.eye(3, dtype=np.int64)[[0, 2, 1]])
    assert F.one_hot(y, 5).shape == (3, 5) and F.one_hot(y).dtype is tj.int64
    with pytest.raises(OpTypeError, match="int64"):
        F.one_hot(tj.tensor([0.0, 1.0]))
    with pytest.raises(IndexError, match="3"):
        F.one_hot(tj.tensor([3]), 3)
    assert F.flatten(tj.ones(2, 3, 4)).shape == (24,) and F.flatten(tj.ones(2, 3, 4), 1).shape == (2, 12)


# ----------------------------------------------------------------------------------------------- losses


def np_nll(logp, y, w=None, ignore=-100, reduction="mean"):
    n, c = logp.shape[:2]
    lp = np.moveaxis(logp, 1, -1).reshape(-1, c)
    yy = y.reshape(-1)
    valid = yy != ignore
    safe = np.where(valid, yy, 0)
    wt = (np.ones(c) if w is None else w)[safe] * valid
    loss = -lp[np.arange(len(yy)), safe] * wt
    if reduction == "none":
        return loss.reshape(y.shape)
    return loss.sum() / wt.sum() if reduction == "mean" else loss.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_and_nll_values(reduction):
    x = RNG.standard_normal((5, 4)).astype(np.float64)
    y = np.array([0, 3, -100, 1, 3])
    w = np.array([0.5, 1.0, 2.0, 1.5])
    ref = np_nll(np_log_softmax(x, 1), y, w, reduction=reduction)
    got = F.cross_entropy(t(x), t(y), weight=t(w), reduction=reduction)
    np.testing.assert_allclose(arr(got), ref, rtol=1e-10)
    got = F.nll_loss(F.log_softmax(t(x), 1), t(y), weight=t(w), reduction=reduction)
    np.testing.assert_allclose(arr(got), ref, rtol=1e-10)
    # spatial targets [N, d1, d2] with logits [N, C, d1, d2]
    x4 = RNG.standard_normal((2, 3, 2, 2))
    y4 = RNG.integers(0, 3, (2, 2, 2))
    ref4 = np_nll(np_log_softmax(x4, 1), y4, reduction=reduction)
    np.testing.assert_allclose(arr(F.cross_entropy(t(x4), t(y4), reduction=reduction)), ref4, rtol=1e-10)
    # unbatched: logits [C], target a 0-d label
    assert np.isclose(F.cross_entropy(t(x[0]), tj.tensor(3)).item(), -np_log_softmax(x[:1], 1)[0, 3])


def test_cross_entropy_label_smoothing_and_probabilities():
    x = RNG.standard_normal((4, 3))
    y = np.array([2, 0, -100, 1])
    w = np.array([1.0, 2.0, 0.5])
    eps = 0.2
    logp = np_log_softmax(x, 1)
    valid = y != -100
    smooth = -(logp * w).sum(1) * valid
    for reduction in ("mean", "sum"):
        nll = np_nll(logp, y, w, reduction=reduction)
        sm = smooth.sum() / w[np.where(valid, y, 0)][valid].sum() if reduction == "mean" else smooth.sum()
        got = F.cross_entropy(t(x), t(y), weight=t(w), label_smoothing=eps, reduction=reduction)
        np.testing.assert_allclose(got.item(), (1 - eps) * nll + eps / 3 * sm, rtol=1e-10)
    p = special.softmax(RNG.standard_normal((4, 3)), 1)
    got = F.cross_entropy(t(x), t(p), label_smoothing=eps)
    np.testing.assert_allclose(got.item(), -((p * (1 - eps) + eps / 3) * logp).sum(1).mean(), rtol=1e-10)


def test_cross_entropy_torch_oracle():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((6, 5)).astype(np.float32)
    y = np.array([4, 0, -100, 2, 2, 1])
    w = np.array([1.0, 0.3, 2.0, 1.0, 0.7], dtype=np.float32)
    for kw in (dict(), dict(label_smoothing=0.1), dict(reduction="sum", label_smoothing=0.3)):
        xa = t(x, requires_grad=True)
        xb = torch.tensor(x, requires_grad=True)
        a = F.cross_entropy(xa, t(y), weight=t(w), **kw)
        b = torch.nn.functional.cross_entropy(xb, torch.from_numpy(y), weight=torch.from_numpy(w), **kw)
        a.backward()
        b.backward()
        np.testing.assert_allclose(a.item(), b.item(), rtol=1e-5)
        np.testing.assert_allclose(arr(xa.grad), xb.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_loss_gradients():
    y = t([2, 0, 1, -100])
    w = t([1.0, 2.0, 0.5], dtype=tj.float64)
    assert gradcheck(lambda x: F.cross_entropy(x, y, weight=w, label_smoothing=0.1), (d(4, 3),))
    assert gradcheck(lambda x: F.nll_loss(x, y, reduction="sum"), (d(4, 3),))
    target = t(RNG.standard_normal((3, 2)), dtype=tj.float64)
    assert gradcheck(lambda x: F.mse_loss(x, target), (d(3, 2),))
    assert gradcheck(lambda x: F.l1_loss(x, target, reduction="sum"), (d(3, 2),))
    yb = t((RNG.random((3, 2)) > 0.5).astype(np.float64))
    assert gradcheck(lambda x: F.binary_cross_entropy_with_logits(x, yb, pos_weight=t([2.0, 0.5],
                                                                                      dtype=tj.float64)),
                     (d(3, 2, scale=3.0),))
    p = t(RNG.uniform(0.1, 0.9, (3, 2)), requires_grad=True, dtype=tj.float64)
    assert gradcheck(lambda p: F.binary_cross_entropy(p, yb, weight=t([1.0, 3.0], dtype=tj.float64)), (p,))


def test_cross_entropy_is_stable_for_huge_logits():
    x = t([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], requires_grad=True)
    y = t([0, 2])
    loss = F.cross_entropy(x, y, reduction="none")
    np.testing.assert_allclose(arr(loss), [0.0, math.log(2.0)], atol=1e-6)
    F.cross_entropy(x, y).backward()
    g = arr(x.grad)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, [[0, 0, 0], [0, 0.25, -0.25]], atol=1e-6)
    assert np.isfinite(F.cross_entropy(t([[1e4, -1e4]]), t([1])).item())  # loss 2e4, not inf
    assert np.isclose(F.cross_entropy(t([[1e4, -1e4]]), t([1])).item(), 2e4)


def test_bce_with_logits_stable_and_correct():
    x = np.array([-1e4, -30.0, -1.0, 0.0, 2.0, 40.0, 1e4], dtype=np.float32)
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=np.float32)
    ref = np.logaddexp(0, x.astype(np.float64)) - x * y
    got = arr(F.binary_cross_entropy_with_logits(t(x), t(y), reduction="none"))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    xt = t(x, requires_grad=True)
    F.binary_cross_entropy_with_logits(xt, t(y), reduction="sum").backward()
    np.testing.assert_allclose(arr(xt.grad), special.expit(x) - y, atol=1e-6)  # sigmoid(0) - 1 at x = 0
    pw = np.float32(3.0)
    got = arr(F.binary_cross_entropy_with_logits(t(x), t(y), pos_weight=t([pw]), reduction="none"))
    x64 = x.astype(np.float64)
    ref = pw * y * np.logaddexp(0, -x64) + (1 - y) * np.logaddexp(0, x64)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_bce_clamps_log_and_checks_range():
    p = t([0.0, 1.0, 0.5], requires_grad=True)
    y = t([1.0, 0.0, 1.0])
    loss = F.binary_cross_entropy(p, y, reduction="none")
    np.testing.assert_allclose(arr(loss), [100.0, 100.0, math.log(2.0)], rtol=1e-6)
    loss.sum().backward()
    assert np.isfinite(arr(p.grad)).all()
    with pytest.raises(OpError, match="between 0 and 1"):
        F.binary_cross_entropy(t([1.5]), t([1.0]))
    with pytest.raises(ValueError, match="different to the input size"):
        F.binary_cross_entropy(t([0.5, 0.5]), t([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="must be the same as input size"):
        F.binary_cross_entropy_with_logits(t([0.5, 0.5]), t([1.0]))


def test_loss_errors_name_function_dtype_and_shapes():
    x = tj.randn(4, 3)
    with pytest.raises(OpTypeError) as e:
        F.cross_entropy(x, tj.tensor([0.0, 1.0, 2.0, 1.0]))
    msg = str(e.value)
    assert "cross_entropy" in msg and "float32" in msg and "[4, 3]" in msg and "[4]" in msg
    assert isinstance(e.value, TypeError)
    with pytest.raises(OpTypeError, match=r"nll_loss.*float32.*\[4, 3\]"):
        F.nll_loss(x, tj.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(IndexError, match=r"target label 3 is out of range for 3 classes"):
        F.cross_entropy(x, tj.tensor([0, 3, 1, 1]))
    with pytest.raises(IndexError, match=r"label -1 is out of range"):
        F.nll_loss(x, tj.tensor([0, -1, 1, 1]))
    F.cross_entropy(x, tj.tensor([0, -100, 1, 1]))  # ignore_index is not a bad label
    with pytest.raises(ValueError, match=r"batch_size \(4\) to match target batch_size \(3\).*\[4, 3\]"):
        F.cross_entropy(x, tj.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        F.mse_loss(x, x, reduction="avg")


def test_mse_l1_warn_on_broadcasting_shapes():
    a, b = tj.randn(3), tj.randn(3, 1)
    with pytest.warns(UserWarning, match="different to the input size"):
        out = F.mse_loss(a, b)
    # it broadcasts, as PyTorch does
    np.testing.assert_allclose(out.item(), ((arr(a) - arr(b)) ** 2).mean(), rtol=1e-6)
    with pytest.warns(UserWarning, match="different to the input size"):
        F.l1_loss(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.mse_loss(a, a)
    with pytest.warns(UserWarning, match="deprecated"):
        assert np.isclose(F.mse_loss(a, a * 2, size_average=False).item(), (arr(a) ** 2).sum(), rtol=1e-6)


# ----------------------------------------------------------------------------------------------- init


def test_calculate_gain_and_fans():
    assert init.calculate_gain("linear") == 1 and init.calculate_gain("conv2d") == 1
    assert init.calculate_gain("relu") == math.sqrt(2) and init.calculate_gain("tanh") == 5 / 3
    assert init.calculate_gain("leaky_relu") == math.sqrt(2 / (1 + 0.01**2))
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == math.sqrt(2 / 6)
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        init.calculate_gain("swish")
    assert init._calculate_fan_in_and_fan_out(tj.empty(6, 3, 5, 5)) == (75, 150)
    assert init._calculate_fan_in_and_fan_out(tj.empty(10, 4)) == (4, 10)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(tj.empty(3))


def test_initializers_distributions():
    tj.manual_seed(0)
    w = tj.empty(200, 300)
    bound = math.sqrt(6 / 300)  # kaiming_uniform_, relu: gain sqrt 2, fan_in 300
    assert init.kaiming_uniform_(w, nonlinearity="relu") is w
    a = arr(w)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.99 * bound
    assert abs(a.std() - bound / math.sqrt(3)) < 0.01 * bound
    init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert abs(arr(w).std() - math.sqrt(2 / 200)) < 0.02 * math.sqrt(2 / 200)
    init.xavier_uniform_(w, gain=2.0)
    xb = 2.0 * math.sqrt(6 / 500)
    assert np.abs(arr(w)).max() <= xb and np.abs(arr(w)).max() > 0.99 * xb
    init.xavier_normal_(w)
    assert abs(arr(w).std() - math.sqrt(2 / 500)) < 0.02 * math.sqrt(2 / 500)
    init.uniform_(w, -0.5, 2.0)
    assert arr(w).min() >= -0.5 and arr(w).max() < 2.0 and abs(arr(w).mean() - 0.75) < 0.01
    init.normal_(w, 1.0, 0.1)
    assert abs(arr(w).mean() - 1.0) < 0.002 and abs(arr(w).std() - 0.1) < 0.002
    init.trunc_normal_(w, std=1.0, a=-1.0, b=1.5)
    assert arr(w).min() >= -1.0 and arr(w).max() <= 1.5 and arr(w).min() < -0.99
    assert np.all(arr(init.constant_(w, 0.25)) == 0.25)
    assert np.all(arr(init.ones_(w)) == 1) and np.all(arr(init.zeros_(w)) == 0)


def test_init_under_no_grad_on_parameters_and_reproducible():
    p = nn.Parameter(tj.empty(4, 4))
    tj.manual_seed(3)
    init.kaiming_uniform_(p, a=math.sqrt(5))
    first = arr(p).copy()
    assert p.requires_grad and p.is_leaf and p.grad_fn is None
    tj.manual_seed(3)
    init.kaiming_uniform_(p, a=math.sqrt(5))
    np.testing.assert_array_equal(arr(p), first)


def test_default_layer_init_matches_pytorch_recipe():
    conv = nn.Conv2d(4, 8, 3, groups=2)
    bound = 1 / math.sqrt(2 * 9)
    assert np.abs(arr(conv.weight)).max() <= bound and np.abs(arr(conv.bias)).max() <= bound
    bn = nn.BatchNorm2d(5)
    np.testing.assert_array_equal(arr(bn.weight), np.ones(5))
    np.testing.assert_array_equal(arr(bn.bias), np.zeros(5))
    np.testing.assert_array_equal(arr(bn.running_var), np.ones(5))


# --------------------------------------------------------------------------------------------- PyTorch oracle

ORACLE_CASES = {
    "conv_same_even": ((2, 3, 6, 5), lambda F, x, w: F.conv2d(x, w[0], w[1], padding="same",
                                                              dilation=(1, 2))),
    "conv_stride_groups": ((2, 4, 7, 7), lambda F, x, w: F.conv2d(x, w[2], None, stride=(2, 1), padding=1,
                                                                  groups=2)),
    "max_ceil_pad": ((1, 2, 7, 6), lambda F, x, w: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True)),
    "max_dilated": ((1, 2, 7, 6), lambda F, x, w: F.max_pool2d(x, 2, 1, dilation=2)),
    "avg_ceil_excl": ((1, 2, 7, 6), lambda F, x, w: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True,
                                                                 count_include_pad=False)),
    "adaptive_uneven": ((1, 2, 7, 5), lambda F, x, w: F.adaptive_avg_pool2d(x, (3, 2))),
    "gelu_tanh": ((3, 4), lambda F, x, w: F.gelu(x, approximate="tanh")),
    "bce_logits_pos_weight": ((3, 4), lambda F, x, w: F.binary_cross_entropy_with_logits(
        x * 5, w[3], weight=w[4], pos_weight=w[4] * 2)),
    "batch_norm_3d": ((4, 3, 5), lambda F, x, w: F.batch_norm(x, None, None, w[4][:3], w[4][1:],
                                                              training=True)),
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note about its padded copy
@pytest.mark.parametrize("name", list(ORACLE_CASES))
def test_functional_matches_torch(name):
    torch = pytest.importorskip("torch")
    shape, fn = ORACLE_CASES[name]
    rng = np.random.default_rng(5)
    xs = rng.standard_normal(shape).astype(np.float32)
    ws = [rng.standard_normal((4, 3, 2, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32),
          rng.standard_normal((6, 2, 3, 3)).astype(np.float32), (rng.random((3, 4)) > 0.5).astype(np.float32),
          rng.random(4).astype(np.float32)]
    xa, xb = t(xs, requires_grad=True), torch.tensor(xs, requires_grad=True)
    a = fn(F, xa, [t(w) for w in ws])
    b = fn(torch.nn.functional, xb, [torch.from_numpy(w) for w in ws])
    np.testing.assert_allclose(arr(a), b.detach().numpy(), rtol=1e-4, atol=1e-5)
    ga = rng.standard_normal(tuple(a.shape)).astype(np.float32)
    a.backward(t(ga))
    b.backward(torch.from_numpy(ga))
    np.testing.assert_allclose(arr(xa.grad), xb.grad.numpy(), rtol=1e-4, atol=1e-5)
