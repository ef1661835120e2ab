"""tracejit.nn modules: the Module API (registration, state_dict, train/eval, dtype, repr) and every layer's
forward against NumPy references, plus PyTorch itself as an oracle when it is installed.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F

RNG = np.random.default_rng(0)


def t(a, requires_grad=False, dtype=None):
    return tj.tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad)


def arr(x) -> np.ndarray:
    return x.detach().numpy()


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = tj.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class SmallNet(nn.Module):
    """Conv + BatchNorm + pooling + MLP head: covers parameters, buffers and nesting."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 2, 8), nn.GELU(), nn.Dropout(0.25),
                                  nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------------- Module API


def test_parameter_is_tensor_sharing_storage():
    base = tj.zeros(3)
    p = nn.Parameter(base)
    assert isinstance(p, tj.Tensor) and isinstance(p, nn.Parameter)
    assert p.requires_grad and p.is_leaf and p.grad is None
    base.add_(1.0)  # in-place through the original is seen by the parameter (shared box)
    np.testing.assert_array_equal(arr(p), [1.0, 1.0, 1.0])
    assert repr(nn.Parameter(tj.ones(2))) == "Parameter containing:\ntensor([1., 1.], requires_grad=True)"
    assert not nn.Parameter(tj.ones(2), requires_grad=False).requires_grad
    with pytest.raises(RuntimeError, match="floating point"):
        nn.Parameter(tj.tensor([1, 2]))


def test_registration_and_traversal():
    m = SmallNet()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                     "head.1.weight", "head.1.bias", "head.4.weight", "head.4.bias"]
    assert [n for n, _ in m.named_buffers()] == ["features.1.running_mean", "features.1.running_var",
                                                 "features.1.num_batches_tracked"]
    assert [n for n, _ in m.named_children()] == ["features", "head"]
    assert [n for n, _ in m.named_modules()][:4] == ["", "features", "features.0", "features.1"]
    assert len(list(m.modules())) == 1 + 1 + 4 + 1 + 5
    assert len(list(m.parameters(recurse=False))) == 0
    assert sum(p.numel() for p in m.parameters()) == 4 * 2 * 9 + 4 + 4 + 4 + 16 * 8 + 8 + 8 * 3 + 3
    assert isinstance(m.features[1], nn.BatchNorm2d) and m.get_submodule("head.1") is m.head[1]


def test_shared_parameters_are_listed_once():
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(m.parameters())) == 2
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias"]
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # as PyTorch: not deduped


def test_setattr_rules():
    m = nn.Module()
    m.w = nn.Parameter(tj.ones(2))
    m.register_buffer("stat", tj.zeros(2))
    m.register_buffer("scratch", tj.zeros(1), persistent=False)
    m.register_parameter("nothing", None)
    m.sub = nn.Linear(2, 2)
    assert "w" in m._parameters and "stat" in m._buffers and "sub" in m._modules
    assert m.w is m._parameters["w"] and m.nothing is None
    with pytest.raises(TypeError, match="cannot assign 'tracejit.float32' as parameter 'w'"):
        m.w = tj.ones(2)
    m.stat = tj.ones(2)  # a tensor assigned to a buffer name replaces the buffer
    np.testing.assert_array_equal(arr(m._buffers["stat"]), [1, 1])
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("sub", tj.zeros(1))
    with pytest.raises(KeyError, match="contain"):
        m.register_parameter("a.b", None)
    assert list(m.state_dict()) == ["w", "stat", "sub.weight", "sub.bias"]  # no None, no non-persistent
    del m.w
    assert "w" not in m._parameters
    with pytest.raises(AttributeError, match="has no attribute 'w'"):
        _ = m.w
    with pytest.raises(AttributeError, match="before Module.__init__"):
        class Bad(nn.Module):
            def __init__(self):
                self.p = nn.Parameter(tj.ones(1))
        Bad()


def test_state_dict_order_and_values_are_views():
    m = SmallNet()
    sd = m.state_dict()
    assert list(sd) == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                        "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked",
                        "head.1.weight", "head.1.bias", "head.4.weight", "head.4.bias"]
    assert not sd["head.1.weight"].requires_grad
    assert sd["features.1.num_batches_tracked"].dtype is tj.int64
    with tj.no_grad():
        m.head[1].weight.mul_(0.0)
    assert float(sd["head.1.weight"].abs().sum()) == 0.0  # state_dict tensors alias the parameters


def test_load_state_dict_copies_in_place():
    a, b = SmallNet(), SmallNet()
    w_obj = b.head[1].weight
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert b.head[1].weight is w_obj and isinstance(w_obj, nn.Parameter)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(arr(va), arr(vb))
    np.testing.assert_array_equal(arr(b.head[1].weight), arr(a.head[1].weight))
    # later changes to `a` do not leak into `b` (values were copied, not aliased)
    with tj.no_grad():
        a.head[1].weight.add_(1.0)
    assert not np.array_equal(arr(b.head[1].weight), arr(a.head[1].weight))


def test_load_state_dict_strict_errors():
    m = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    sd = m.state_dict()
    sd.pop("2.bias")
    sd["extra.weight"] = tj.zeros(1)
    sd["0.weight"] = tj.zeros(5, 3)
    with pytest.raises(RuntimeError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert msg.startswith("Error(s) in loading state_dict for Sequential:\n\t")
    assert 'Missing key(s) in state_dict: "2.bias". ' in msg
    assert 'Unexpected key(s) in state_dict: "extra.weight". ' in msg
    assert ("size mismatch for 0.weight: copying a param with shape tracejit.Size([5, 3]) from checkpoint, "
            "the shape in current model is tracejit.Size([2, 3]).") in msg
    sd["0.weight"] = tj.ones(2, 3)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["2.bias"] and unexpected == ["extra.weight"]
    np.testing.assert_array_equal(arr(m[0].weight), np.ones((2, 3)))


def test_train_eval_propagate():
    m = SmallNet()
    assert m.training and m.head[3].training
    assert m.eval() is m
    assert all(not mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    with pytest.raises(ValueError):
        m.train("no")


def test_to_float64_keeps_identity():
    m = SmallNet()
    params = list(m.parameters())
    x = t(RNG.standard_normal((2, 2, 4, 4)), dtype=tj.float64)
    m.to(tj.float64)
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert all(p.dtype is tj.float64 and p.requires_grad for p in m.parameters())
    assert m.features[1].running_mean.dtype is tj.float64
    assert m.features[1].num_batches_tracked.dtype is tj.int64  # non-float buffers are left alone
    out = m(x)
    assert out.dtype is tj.float64
    assert m.float() is m and m.head[1].weight.dtype is tj.float32
    assert m.to("cpu") is m and m.cpu() is m
    m.double()
    assert m.head[1].bias.dtype is tj.float64


def test_zero_grad_apply_requires_grad():
    m = nn.Linear(3, 2)
    m(tj.ones(4, 3)).sum().backward()
    assert m.weight.grad is not None
    m.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(arr(m.weight.grad), np.zeros((2, 3)))
    m.zero_grad()
    assert m.weight.grad is None and m.bias.grad is None
    seen = []
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert net.apply(lambda mod: seen.append(type(mod).__name__)) is net
    assert seen == ["Linear", "ReLU", "Sequential"]  # children first, as PyTorch
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())


def test_containers():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    assert len(seq) == 2 and isinstance(seq[-1], nn.ReLU)
    seq.append(nn.Linear(3, 1))
    assert len(seq) == 3 and list(seq._modules) == ["0", "1", "2"]
    sub = seq[1:]
    assert isinstance(sub, nn.Sequential) and len(sub) == 2 and sub[1] is seq[2]
    assert seq(tj.ones(5, 2)).shape == (5, 1)
    with pytest.raises(IndexError):
        seq[3]
    from collections import OrderedDict

    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.Tanh())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"] and named.act is named[1]
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    ml.append(nn.ReLU())
    assert len(ml) == 4 and len(list(ml.parameters())) == 6 and isinstance(ml[-1], nn.ReLU)
    md = nn.ModuleDict({"a": nn.Linear(1, 1), "b": nn.ReLU()})
    assert list(md.keys()) == ["a", "b"] and "a" in md and len(list(md.parameters())) == 2


def test_deepcopy_module_is_independent():
    m = nn.Linear(2, 2)
    c = copy.deepcopy(m)
    assert isinstance(c.weight, nn.Parameter) and c.weight is not m.weight
    np.testing.assert_array_equal(arr(c.weight), arr(m.weight))
    with tj.no_grad():
        m.weight.add_(1.0)
    assert not np.array_equal(arr(c.weight), arr(m.weight))


# ----------------------------------------------------------------------------------------------- repr


def test_repr_matches_pytorch():
    assert repr(nn.Linear(4, 3)) == "Linear(in_features=4, out_features=3, bias=True)"
    assert repr(nn.Linear(4, 3, bias=False)) == "Linear(in_features=4, out_features=3, bias=False)"
    assert repr(nn.Conv2d(3, 6, 5)) == "Conv2d(3, 6, kernel_size=(5, 5), stride=(1, 1))"
    assert repr(nn.Conv2d(4, 8, (3, 1), stride=2, padding=1, dilation=2, groups=2, bias=False)) == (
        "Conv2d(4, 8, kernel_size=(3, 1), stride=(2, 2), padding=(1, 1), dilation=(2, 2), groups=2, "
        "bias=False)")
    assert repr(nn.Conv2d(1, 2, 3, padding="same")) == (
        "Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), padding=same)")
    assert repr(nn.MaxPool2d(2, 2)) == (
        "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)")
    assert repr(nn.AvgPool2d(3)) == "AvgPool2d(kernel_size=3, stride=3, padding=0)"
    assert repr(nn.AdaptiveAvgPool2d((1, 1))) == "AdaptiveAvgPool2d(output_size=(1, 1))"
    assert repr(nn.BatchNorm2d(6)) == ("BatchNorm2d(6, eps=1e-05, momentum=0.1, affine=True, bias=True, "
                                       "track_running_stats=True)")
    assert repr(nn.Dropout()) == "Dropout(p=0.5, inplace=False)"
    assert repr(nn.ReLU()) == "ReLU()" and repr(nn.ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert repr(nn.LeakyReLU()) == "LeakyReLU(negative_slope=0.01)"
    assert repr(nn.GELU()) == "GELU(approximate='none')"
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)" and repr(nn.LogSoftmax(1)) == "LogSoftmax(dim=1)"
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    assert repr(nn.Identity()) == "Identity()" and repr(nn.Sigmoid()) == "Sigmoid()"
    assert repr(nn.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 1)))) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Sequential(\n"
        "    (0): Linear(in_features=3, out_features=1, bias=True)\n"
        "  )\n"
        ")")
    assert repr(nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.Tanh()])) == (
        "ModuleList(\n  (0-1): 2 x ReLU()\n  (2): Tanh()\n)")


def test_lenet_repr():
    assert repr(LeNet()) == (
        "LeNet(\n"
        "  (conv1): Conv2d(3, 6, kernel_size=(5, 5), stride=(1, 1))\n"
        "  (pool): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)\n"
        "  (conv2): Conv2d(6, 16, kernel_size=(5, 5), stride=(1, 1))\n"
        "  (fc1): Linear(in_features=400, out_features=120, bias=True)\n"
        "  (fc2): Linear(in_features=120, out_features=84, bias=True)\n"
        "  (fc3): Linear(in_features=84, out_features=10, bias=True)\n"
        ")")


def test_repr_against_torch():
    torch = pytest.importorskip("torch")
    pairs = [(nn.Conv2d(4, 8, 3, stride=(2, 1), padding=(0, 1), groups=4),
              torch.nn.Conv2d(4, 8, 3, (2, 1), (0, 1), groups=4)),
             (nn.BatchNorm1d(5, momentum=None, affine=False),
              torch.nn.BatchNorm1d(5, momentum=None, affine=False)),
             (nn.BatchNorm2d(3, bias=False), torch.nn.BatchNorm2d(3, bias=False)),
             (nn.AvgPool2d(2, 1, 1), torch.nn.AvgPool2d(2, 1, 1)),
             (nn.GELU("tanh"), torch.nn.GELU("tanh")), (nn.Dropout(0.1), torch.nn.Dropout(0.1))]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


# -------------------------------------------------------------------------------------------- layers vs NumPy


def np_conv2d(x, w, b=None, stride=(1, 1), padding=(0, 1), dilation=(1, 1), groups=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                hs, ws = i * stride[0], j * stride[1]
                patch = xp[:, g * cg:(g + 1) * cg, hs:hs + dilation[0] * (kh - 1) + 1:dilation[0],
                           ws:ws + dilation[1] * (kw - 1) + 1:dilation[1]]
                out[:, oc, i, j] = (patch * w[oc]).sum((1, 2, 3))
    return out if b is None else out + b[None, :, None, None]


def test_linear_forward_and_default_init():
    tj.manual_seed(0)
    lin = nn.Linear(20, 7)
    bound = 1 / math.sqrt(20)
    w, b = arr(lin.weight), arr(lin.bias)
    assert w.shape == (7, 20) and b.shape == (7,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.8 * bound  # kaiming_uniform(a=sqrt 5) spans the whole range
    x = RNG.standard_normal((3, 5, 20)).astype(np.float32)
    np.testing.assert_allclose(arr(lin(t(x))), x @ w.T + b, rtol=1e-5, atol=1e-5)
    tj.manual_seed(0)
    np.testing.assert_array_equal(arr(nn.Linear(20, 7).weight), w)  # reproducible after manual_seed


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=(1, 2), dilation=(2, 1)),
                                dict(groups=2, bias=False), dict(padding="same", dilation=2)])
def test_conv2d_forward(kw):
    conv = nn.Conv2d(4, 6, 3, **kw)
    x = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = arr(conv.weight)
    b = None if conv.bias is None else arr(conv.bias)
    pad = conv.padding if conv.padding != "same" else (conv.dilation[0], conv.dilation[1])
    ref = np_conv2d(x, w, b, conv.stride, pad, conv.dilation, conv.groups)
    np.testing.assert_allclose(arr(conv(t(x))), ref, rtol=1e-4, atol=1e-5)
    fan_in = 4 // conv.groups * 9
    assert np.abs(w).max() <= 1 / math.sqrt(fan_in)


def test_conv2d_same_even_kernel_pads_bottom_right():
    conv = nn.Conv2d(1, 1, 2, padding="same", bias=False)
    x = RNG.standard_normal((1, 1, 4, 5)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    out = arr(conv(t(x)))
    assert out.shape == (1, 1, 4, 5)
    np.testing.assert_allclose(out, np_conv2d(xp, arr(conv.weight), padding=(0, 0)), rtol=1e-5, atol=1e-6)


def test_pooling_layers():
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    win = x.reshape(2, 3, 3, 2, 3, 2)
    np.testing.assert_allclose(arr(nn.MaxPool2d(2)(t(x))), win.max((3, 5)))
    np.testing.assert_allclose(arr(nn.AvgPool2d(2)(t(x))), win.mean((3, 5)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(arr(nn.AdaptiveAvgPool2d(1)(t(x))), x.mean((2, 3), keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(arr(nn.AdaptiveAvgPool2d((3, 3))(t(x))), win.mean((3, 5)), rtol=1e-5,
                               atol=1e-6)
    # non-divisible: PyTorch's windows [floor(i*5/3), ceil((i+1)*5/3)) = [0,2), [1,4), [3,5)
    y = RNG.standard_normal((1, 1, 5, 5)).astype(np.float32)
    spans = [(0, 2), (1, 4), (3, 5)]
    ref = np.array([[y[0, 0, a:b, c:d].mean() for c, d in spans] for a, b in spans])
    np.testing.assert_allclose(arr(nn.AdaptiveAvgPool2d(3)(t(y)))[0, 0], ref, rtol=1e-5, atol=1e-6)
    # max pool with padding: padded cells never win
    z = -np.abs(RNG.standard_normal((1, 1, 4, 4))).astype(np.float32) - 1
    out = arr(nn.MaxPool2d(3, stride=2, padding=1)(t(z)))
    zp = np.pad(z, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ref = np.array([[zp[0, 0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(out[0, 0], ref)


def test_batchnorm2d_running_stats_two_steps():
    bn = nn.BatchNorm2d(3)
    xs = [RNG.standard_normal((4, 3, 2, 2)).astype(np.float32) * 2 + 1 for _ in range(2)]
    mean, var = np.zeros(3), np.ones(3)
    for x in xs:
        out = arr(bn(t(x)))
        m, v = x.mean((0, 2, 3)), x.var((0, 2, 3))
        ref = (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        mean = 0.9 * mean + 0.1 * m
        var = 0.9 * var + 0.1 * v * 16 / 15  # unbiased variance for the running estimate
    np.testing.assert_allclose(arr(bn.running_mean), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr(bn.running_var), var, rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == 2 and bn.num_batches_tracked.dtype is tj.int64
    bn.eval()
    x = xs[0]
    with tj.no_grad():
        bn.weight.fill_(2.0)
        bn.bias.fill_(0.5)
    ref = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5) * 2 + 0.5
    np.testing.assert_allclose(arr(bn(t(x))), ref, rtol=1e-4, atol=1e-4)
    assert bn.num_batches_tracked.item() == 2  # eval does not count batches


def test_batchnorm1d_2d_3d_and_cumulative_momentum():
    bn = nn.BatchNorm1d(4, momentum=None)
    x2 = RNG.standard_normal((5, 4)).astype(np.float32)
    x3 = RNG.standard_normal((3, 4, 2)).astype(np.float32)
    out2 = arr(bn(t(x2)))
    np.testing.assert_allclose(out2, (x2 - x2.mean(0)) / np.sqrt(x2.var(0) + 1e-5), rtol=1e-4, atol=1e-4)
    out3 = arr(bn(t(x3)))
    m3, v3 = x3.mean((0, 2)), x3.var((0, 2))
    np.testing.assert_allclose(out3, (x3 - m3[:, None]) / np.sqrt(v3[:, None] + 1e-5), rtol=1e-4, atol=1e-4)
    # momentum=None: running stats are the plain average over the batches seen
    np.testing.assert_allclose(arr(bn.running_mean), (x2.mean(0) + m3) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arr(bn.running_var), (x2.var(0, ddof=1) + x3.transpose(1, 0, 2).reshape(4, -1)
                                                      .var(1, ddof=1)) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        bn(tj.ones(2, 4, 1, 1))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(tj.ones(1, 4))
    with pytest.raises(ValueError, match="expected 4D input"):
        nn.BatchNorm2d(4)(tj.ones(2, 4))


def test_batchnorm_without_running_stats_uses_batch_in_eval():
    bn = nn.BatchNorm1d(2, track_running_stats=False, affine=False).eval()
    x = RNG.standard_normal((6, 2)).astype(np.float32)
    ref = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(arr(bn(t(x))), ref, rtol=1e-4, atol=1e-4)
    assert list(bn.state_dict()) == []


def test_dropout_masks():
    drop = nn.Dropout(0.3)
    x = tj.ones(200, 50)
    tj.manual_seed(123)
    a, b = arr(drop(x)), arr(drop(x))
    assert not np.array_equal(a, b)  # a fresh mask per call
    kept = a != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(a[kept], 1 / 0.7, rtol=1e-6)
    tj.manual_seed(123)
    np.testing.assert_array_equal(arr(drop(x)), a)  # reproducible after manual_seed
    drop.eval()
    assert drop(x) is x
    assert arr(F.dropout(x, 1.0)).sum() == 0
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
    xg = tj.ones(4, 5, requires_grad=True)
    tj.manual_seed(1)
    y = F.dropout(xg, 0.5)
    y.sum().backward()
    np.testing.assert_allclose(arr(xg.grad), arr(y))  # gradient passes through the same mask and scale


def test_activation_layers():
    x = RNG.standard_normal((3, 4)).astype(np.float32) * 3
    xt = t(x)
    np.testing.assert_allclose(arr(nn.ReLU()(xt)), np.maximum(x, 0))
    np.testing.assert_allclose(arr(nn.LeakyReLU(0.2)(xt)), np.where(x > 0, x, 0.2 * x), rtol=1e-6)
    np.testing.assert_allclose(arr(nn.Sigmoid()(xt)), 1 / (1 + np.exp(-x)), rtol=1e-5)
    np.testing.assert_allclose(arr(nn.Tanh()(xt)), np.tanh(x), rtol=1e-5, atol=1e-6)
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(arr(nn.Softmax(dim=1)(xt)), e / e.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(arr(nn.LogSoftmax(dim=1)(xt)), np.log(e / e.sum(1, keepdims=True)), rtol=1e-5,
                               atol=1e-5)
    assert nn.Flatten()(tj.ones(2, 3, 4, 5)).shape == (2, 60)
    assert nn.Flatten(0, 1)(tj.ones(2, 3, 4)).shape == (6, 4)
    assert nn.Identity(54, unused=1)(xt) is xt


def test_losses_modules():
    logits = RNG.standard_normal((4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ref = -logp[np.arange(4), labels]
    lt, yt = t(logits), t(labels)
    np.testing.assert_allclose(nn.CrossEntropyLoss()(lt, yt).item(), ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(arr(nn.CrossEntropyLoss(reduction="none")(lt, yt)), ref, rtol=1e-5)
    np.testing.assert_allclose(nn.NLLLoss(reduction="sum")(t(logp), yt).item(), ref.sum(), rtol=1e-5)
    w = np.array([1.0, 2.0, 0.5], dtype=np.float32)
    ce = nn.CrossEntropyLoss(weight=t(w))
    assert list(ce.state_dict()) == ["weight"]
    np.testing.assert_allclose(ce(lt, yt).item(), (ref * w[labels]).sum() / w[labels].sum(), rtol=1e-5)
    a, b = RNG.standard_normal((2, 5)).astype(np.float32)
    assert np.isclose(nn.MSELoss()(t(a), t(b)).item(), ((a - b) ** 2).mean(), rtol=1e-5)
    assert np.isclose(nn.L1Loss(reduction="sum")(t(a), t(b)).item(), np.abs(a - b).sum(), rtol=1e-5)
    y = (b > 0).astype(np.float32)
    p = 1 / (1 + np.exp(-a))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert np.isclose(nn.BCELoss()(t(p), t(y)).item(), bce.mean(), rtol=1e-5)
    assert np.isclose(nn.BCEWithLogitsLoss()(t(a), t(y)).item(), bce.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        nn.MSELoss(reduction="avg")


def test_smallnet_trains():
    tj.manual_seed(0)
    m = SmallNet()
    x = tj.randn(8, 2, 4, 4)
    y = tj.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(m(x), y)
        m.zero_grad()
        loss.backward()
        with tj.no_grad():
            for p in m.parameters():
                p.sub_(p.grad * 0.1)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in m.parameters())


# --------------------------------------------------------------------------------------------- PyTorch oracle


def _copy_to_torch(ours, theirs, torch):
    sd = {k: torch.from_numpy(np.array(arr(v))) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(sd)


def test_lenet_with_batchnorm_matches_torch():
    torch = pytest.importorskip("torch")

    def build(lib):
        return lib.Sequential(lib.Conv2d(3, 6, 5, padding=1), lib.BatchNorm2d(6), lib.ReLU(),
                              lib.MaxPool2d(2), lib.Conv2d(6, 8, 3, stride=2, groups=2),
                              lib.AdaptiveAvgPool2d(1), lib.Flatten(), lib.Linear(8, 16), lib.GELU(),
                              lib.Dropout(0.0), lib.Linear(16, 4), lib.LogSoftmax(dim=1))

    ours, theirs = build(nn), build(torch.nn)
    _copy_to_torch(ours, theirs, torch)
    x = RNG.standard_normal((3, 3, 14, 14)).astype(np.float32)
    y = np.array([0, 3, 1])
    for _ in range(2):  # the second step sees updated running stats
        out_a = ours(t(x))
        out_b = theirs(torch.from_numpy(x))
        np.testing.assert_allclose(arr(out_a), out_b.detach().numpy(), rtol=1e-4, atol=1e-5)
        loss_a = F.nll_loss(out_a, t(y))
        loss_b = torch.nn.functional.nll_loss(out_b, torch.from_numpy(y))
        ours.zero_grad()
        theirs.zero_grad()
        loss_a.backward()
        loss_b.backward()
        for (name, pa), pb in zip(ours.named_parameters(), theirs.parameters()):
            np.testing.assert_allclose(arr(pa.grad), pb.grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        np.testing.assert_allclose(arr(a), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(arr(ours(t(x))), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)
