"""Attention and Transformer layers against PyTorch: LayerNorm/RMSNorm, GELU, scaled_dot_product_attention (masks,
causal, scale, dropout), MultiheadAttention (batch_first, key_padding_mask, need_weights, average_attn_weights,
kdim/vdim, bias_kv, zero_attn), TransformerEncoder/Decoder layers and Transformer (norm_first, activation,
batch_first), generate_square_subsequent_mask, masked_fill -- values and gradients, names, init.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_rnn import TOL, arr, check_backward, flat, leaves, twin

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional
pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # torch's note on its fast path


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ----------------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("shape,normalized", [((4, 6), (6,)), ((2, 3, 4, 5), (4, 5))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_matches_torch(shape, normalized, dtype):
    ours, theirs = twin(nn.LayerNorm(normalized), torch.nn.LayerNorm(normalized), dtype)
    with torch.no_grad():  # non-trivial affine parameters
        theirs.weight.add_(torch.tensor(rand(*normalized, seed=1).astype(dtype)))
        theirs.bias.add_(torch.tensor(rand(*normalized, seed=2).astype(dtype)))
    twin(ours, theirs, dtype)
    x = (rand(*shape) * 3 + 1).astype(dtype)
    (xo,), (xt,) = leaves(x)
    out, expect = ours(xo), theirs(xt)
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[dtype])
    check_backward(out, expect, [xo], [xt], list(ours.parameters()), list(theirs.parameters()), tol=TOL[dtype])


def test_layer_norm_options_repr_and_errors():
    for kw in ({}, {"elementwise_affine": False}, {"bias": False}, {"eps": 1e-3}):
        ours, theirs = nn.LayerNorm(5, **kw), torch.nn.LayerNorm(5, **kw)
        assert repr(ours) == repr(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        x = rand(3, 5)
        twin(ours, theirs)
        np.testing.assert_allclose(arr(ours(tj.tensor(x))), theirs(torch.tensor(x)).detach().numpy(),
                                   **TOL[np.float64])
    with pytest.raises(RuntimeError, match="normalized_shape"):
        F.layer_norm(tj.zeros(3, 4), (5,))
    rms, trms = twin(nn.RMSNorm(4), torch.nn.RMSNorm(4))
    x = rand(2, 4)
    (xo,), (xt,) = leaves(x)
    out, expect = rms(xo), trms(xt)
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [xo], [xt], [rms.weight], [trms.weight], tol=TOL[np.float64])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(approximate):
    x = rand(50) * 3
    (xo,), (xt,) = leaves(x)
    out, expect = nn.GELU(approximate)(xo), torch.nn.GELU(approximate)(xt)
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [xo], [xt], tol=TOL[np.float64])
    assert repr(nn.GELU(approximate)) == repr(torch.nn.GELU(approximate))


def test_masked_fill_and_square_subsequent_mask():
    x = rand(3, 3)
    mask = np.triu(np.ones((3, 3), bool), 1)
    (xo,), (xt,) = leaves(x)
    out, expect = xo.masked_fill(tj.tensor(mask), -1.5), xt.masked_fill(torch.tensor(mask), -1.5)
    np.testing.assert_array_equal(arr(out), expect.detach().numpy())
    check_backward(out, expect, [xo], [xt], tol=TOL[np.float64])
    np.testing.assert_array_equal(arr(nn.Transformer.generate_square_subsequent_mask(4)),
                                  torch.nn.Transformer.generate_square_subsequent_mask(4).numpy())
    assert nn.Transformer.generate_square_subsequent_mask(2, dtype=tj.float64).dtype == tj.float64


# ----------------------------------------------------------------------------------------------- SDPA

SDPA_CASES = {
    "plain": {},
    "causal": {"is_causal": True},
    "scale": {"scale": 0.3},
    "float-mask": {"attn_mask": "float"},
    "bool-mask": {"attn_mask": "bool"},
    "causal-rect": {"is_causal": True, "S": 5},
}


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_scaled_dot_product_attention_matches_torch(case):
    kw = dict(SDPA_CASES[case])
    S = kw.pop("S", 4)
    q, k, v = rand(2, 3, 4, 8, seed=1), rand(2, 3, S, 8, seed=2), rand(2, 3, S, 6, seed=3)
    (qo, ko, vo), (qt, kt, vt) = leaves(q, k, v)
    mo = mt = None
    if kw.get("attn_mask") == "float":
        m = rand(4, S, seed=4)
        mo, mt = tj.tensor(m), torch.tensor(m)
    elif kw.get("attn_mask") == "bool":
        m = rand(2, 1, 4, S, seed=5) > -0.5
        m[0, 0, 1] = False  # a row that may attend nowhere: zeros, as PyTorch's math
        mo, mt = tj.tensor(m), torch.tensor(m)
    kw.pop("attn_mask", None)
    out = F.scaled_dot_product_attention(qo, ko, vo, attn_mask=mo, **kw)
    expect = TF.scaled_dot_product_attention(qt, kt, vt, attn_mask=mt, **kw)
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [qo, ko, vo], [qt, kt, vt], tol=TOL[np.float64])


def test_sdpa_dropout_keeps_expected_mass_and_errors():
    tj.manual_seed(0)
    q = tj.tensor(rand(1, 1, 64, 4))
    v = tj.ones(1, 1, 64, 1, dtype=tj.float64)
    out = F.scaled_dot_product_attention(q, q, v, dropout_p=0.5)
    values = arr(out).ravel()
    assert 0.7 < values.mean() < 1.3 and values.std() > 0.05  # rows of weights*mask/(1-p) summing to ~1
    np.testing.assert_allclose(arr(F.scaled_dot_product_attention(q, q, v)).ravel(), 1.0, rtol=1e-12)
    with pytest.raises(RuntimeError, match="is_causal"):
        F.scaled_dot_product_attention(q, q, v, attn_mask=tj.ones(64, 64), is_causal=True)


def test_sdpa_grouped_query_attention():
    q, k, v = rand(1, 4, 3, 2, seed=1), rand(1, 2, 3, 2, seed=2), rand(1, 2, 3, 2, seed=3)
    (qo, ko, vo), (qt, kt, vt) = leaves(q, k, v)
    out = F.scaled_dot_product_attention(qo, ko, vo, enable_gqa=True)
    expect = TF.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [qo, ko, vo], [qt, kt, vt], tol=TOL[np.float64])


# ----------------------------------------------------------------------------------------------- MHA

MHA_CASES = {
    "self": dict(),
    "batch-first": dict(batch_first=True),
    "no-weights": dict(need_weights=False),
    "per-head": dict(average_attn_weights=False),
    "kpm": dict(kpm=True, batch_first=True),
    "kpm-no-weights": dict(kpm=True, need_weights=False),
    "causal": dict(causal=True, need_weights=False, batch_first=True),
    "bool-mask": dict(bool_mask=True),
    "kdim": dict(kdim=3, vdim=5),
    "bias-kv": dict(add_bias_kv=True, add_zero_attn=True, kpm=True),
    "no-bias": dict(bias=False),
    "unbatched": dict(unbatched=True),
}


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_multihead_attention_matches_torch(case):
    kw = dict(MHA_CASES[case])
    call = {k: kw.pop(k) for k in ("need_weights", "average_attn_weights") if k in kw}
    kpm, causal, bool_mask, unbatched = (kw.pop(k, False) for k in ("kpm", "causal", "bool_mask", "unbatched"))
    E, H, L, S, N = 8, 2, 3, 4, 2
    ours, theirs = twin(nn.MultiheadAttention(E, H, **kw), torch.nn.MultiheadAttention(E, H, **kw))
    bf = kw.get("batch_first", False)
    kdim, vdim = kw.get("kdim", E), kw.get("vdim", E)

    def shape(t, d):
        return (t, d) if unbatched else ((N, t, d) if bf else (t, N, d))

    self_attn = kdim == E and vdim == E and not causal and not kpm
    q = rand(*shape(L if not self_attn else S, E), seed=1)
    if self_attn:
        (qo,), (qt,) = leaves(q)
        args_o, args_t = (qo, qo, qo), (qt, qt, qt)
        lo, lt = [qo], [qt]
    else:
        k, v = rand(*shape(S, kdim), seed=2), rand(*shape(S, vdim), seed=3)
        if causal:
            q, k, v = rand(*shape(S, E), seed=1), None, None
            (qo,), (qt,) = leaves(q)
            args_o, args_t, lo, lt = (qo, qo, qo), (qt, qt, qt), [qo], [qt]
        else:
            (qo, ko, vo), (qt, kt, vt) = leaves(q, k, v)
            args_o, args_t, lo, lt = (qo, ko, vo), (qt, kt, vt), [qo, ko, vo], [qt, kt, vt]
    extra_o, extra_t = {}, {}
    if kpm:
        m = np.zeros((N, S), bool)
        m[0, -1] = m[1, 0] = True
        extra_o["key_padding_mask"], extra_t["key_padding_mask"] = tj.tensor(m), torch.tensor(m)
    if causal:
        extra_o["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(S)
        extra_t["attn_mask"] = torch.nn.Transformer.generate_square_subsequent_mask(S)
        extra_o["is_causal"] = extra_t["is_causal"] = True
    if bool_mask:
        m = np.triu(np.ones((S, S), bool), 1)
        extra_o["attn_mask"], extra_t["attn_mask"] = tj.tensor(m), torch.tensor(m)
    out = ours(*args_o, **extra_o, **call)
    expect = theirs(*args_t, **extra_t, **call)
    assert (out[1] is None) == (expect[1] is None)
    for a, b in zip(flat([o for o in out if o is not None]), flat([e for e in expect if e is not None])):
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_allclose(arr(a), b.detach().numpy(), **TOL[np.float64])
    check_backward([o for o in out if o is not None], [e for e in expect if e is not None], lo, lt,
                   list(ours.parameters()), list(theirs.parameters()), tol=TOL[np.float64])


def test_multihead_attention_names_init_and_dropout():
    ours, theirs = nn.MultiheadAttention(8, 2, add_bias_kv=True), torch.nn.MultiheadAttention(8, 2, add_bias_kv=True)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    assert repr(ours) == repr(theirs)
    assert np.all(arr(ours.in_proj_bias) == 0) and np.all(arr(ours.out_proj.bias) == 0)
    bound = math.sqrt(6 / (8 + 24))  # xavier_uniform of [3E, E]
    assert np.abs(arr(ours.in_proj_weight)).max() <= bound
    sep = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    assert sep.in_proj_weight is None and tuple(sep.k_proj_weight.shape) == (8, 4)
    tj.manual_seed(0)
    drop = nn.MultiheadAttention(4, 1, dropout=0.5)
    x = tj.tensor(rand(5, 1, 4).astype(np.float32))
    drop.eval()
    a = drop(x, x, x)[0]
    np.testing.assert_array_equal(arr(a), arr(drop(x, x, x)[0]))
    drop.train()
    assert not np.allclose(arr(a), arr(drop(x, x, x)[0]))
    with pytest.raises(AssertionError, match="divisible"):
        nn.MultiheadAttention(6, 4)


# ----------------------------------------------------------------------------------------------- Transformer


@pytest.mark.parametrize("norm_first,activation,batch_first", [(False, "relu", False), (True, "gelu", True),
                                                               (False, "gelu", True)])
def test_transformer_encoder_matches_torch(norm_first, activation, batch_first):
    layer_o = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation, norm_first=norm_first,
                                         batch_first=batch_first)
    layer_t = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation, norm_first=norm_first,
                                               batch_first=batch_first)
    ours, theirs = twin(nn.TransformerEncoder(layer_o, 2, nn.LayerNorm(8)),
                        torch.nn.TransformerEncoder(layer_t, 2, torch.nn.LayerNorm(8), enable_nested_tensor=False))
    x = rand(*((2, 5, 8) if batch_first else (5, 2, 8)))
    mask_o, mask_t = nn.Transformer.generate_square_subsequent_mask(5), \
        torch.nn.Transformer.generate_square_subsequent_mask(5)
    kpm = np.zeros((2, 5), bool)
    kpm[1, 3:] = True
    for kw_o, kw_t in (({}, {}), ({"mask": mask_o}, {"mask": mask_t}),
                       ({"mask": mask_o, "is_causal": True}, {"mask": mask_t, "is_causal": True}),
                       ({"src_key_padding_mask": tj.tensor(kpm)}, {"src_key_padding_mask": torch.tensor(kpm)})):
        (xo,), (xt,) = leaves(x)
        out, expect = ours(xo, **kw_o), theirs(xt, **kw_t)
        np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
        for p in list(ours.parameters()) + list(theirs.parameters()):
            p.grad = None
        check_backward(out, expect, [xo], [xt], list(ours.parameters()), list(theirs.parameters()),
                       tol=TOL[np.float64])


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_matches_torch(norm_first):
    kw = dict(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=12, dropout=0.0,
              norm_first=norm_first, batch_first=True)
    ours, theirs = twin(nn.Transformer(**kw), torch.nn.Transformer(**kw))
    src, tgt = rand(2, 4, 8, seed=1), rand(2, 3, 8, seed=2)
    (so, to), (st, tt) = leaves(src, tgt)
    mask_o, mask_t = nn.Transformer.generate_square_subsequent_mask(3), \
        torch.nn.Transformer.generate_square_subsequent_mask(3)
    out = ours(so, to, tgt_mask=mask_o)
    expect = theirs(st, tt, tgt_mask=mask_t)
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [so, to], [st, tt], list(ours.parameters()), list(theirs.parameters()),
                   tol=TOL[np.float64])


def test_transformer_structure_and_init():
    ours = nn.Transformer(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=16)
    theirs = torch.nn.Transformer(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=16)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    assert repr(ours) == repr(theirs)
    w = arr(ours.encoder.layers[0].linear1.weight)  # xavier_uniform over every 2-D weight
    assert np.abs(w).max() <= math.sqrt(6 / (8 + 16))
    layers = ours.encoder.layers
    assert layers[0].linear1.weight is not layers[1].linear1.weight  # deep copies
    dec = nn.TransformerDecoderLayer(8, 2, 16, batch_first=True)
    assert list(dec.state_dict()) == list(torch.nn.TransformerDecoderLayer(8, 2, 16, batch_first=True).state_dict())
    with pytest.raises(RuntimeError, match="relu/gelu"):
        nn.TransformerEncoderLayer(8, 2, activation="swish")


def test_decoder_layer_with_callable_activation_and_memory_mask():
    kw = dict(dim_feedforward=10, dropout=0.0, activation=F.gelu)
    ours = nn.TransformerDecoder(nn.TransformerDecoderLayer(6, 3, **kw), 1)
    theirs = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(6, 3, **{**kw, "activation": TF.gelu}), 1)
    twin(ours, theirs)
    tgt, mem = rand(3, 2, 6, seed=1), rand(4, 2, 6, seed=2)
    mm = np.zeros((3, 4), bool)
    mm[0, 1] = True
    (to, mo), (tt, mt) = leaves(tgt, mem)
    out = ours(to, mo, memory_mask=tj.tensor(mm))
    expect = theirs(tt, mt, memory_mask=torch.tensor(mm))
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [to, mo], [tt, mt], list(ours.parameters()), list(theirs.parameters()),
                   tol=TOL[np.float64])
