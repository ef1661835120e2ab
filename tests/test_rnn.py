"""Sequence layers against PyTorch: Embedding (padding_idx, max_norm, scale_grad_by_freq), one_hot, RNN/LSTM/GRU
(layers, directions, batch_first, dropout, initial states, proj_size, packed sequences) and their cells --
forward values, input, state and parameter gradients, parameter names, shapes and initialization ranges.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.nn.utils import rnn as rnn_utils

torch = pytest.importorskip("torch")

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


def arr(x) -> np.ndarray:
    return x.detach().numpy()


def twin(ours, theirs, dtype=np.float64):
    """Copy torch module `theirs`'s parameters into `ours` (same names), both in `dtype`."""
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    state = {k: tj.tensor(v.detach().numpy().astype(dtype)) for k, v in theirs.state_dict().items()}
    assert list(state) == list(ours.state_dict()), (list(state), list(ours.state_dict()))
    ours.load_state_dict(state)
    if dtype == np.float64:
        ours.double()
    return ours, theirs


def leaves(*arrays):
    """(tracejit tensors, torch tensors) requiring grad, from the same arrays."""
    return ([tj.tensor(a, requires_grad=True) for a in arrays],
            [torch.tensor(a, requires_grad=True) for a in arrays])


def flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    return [out]


def check_backward(ours_out, theirs_out, our_leaves, their_leaves, our_params=(), their_params=(), tol=None,
                   seed=0):
    """Backward of sum(out_i * G_i) over every output; compare the gradients of leaves and parameters."""
    rng = np.random.default_rng(seed)
    ours_out, theirs_out = flat(ours_out), flat(theirs_out)
    gs = [rng.standard_normal(tuple(o.shape)) for o in theirs_out]
    loss_o = sum((o * tj.tensor(g.astype(arr(o).dtype))).sum() for o, g in zip(ours_out, gs))
    loss_t = sum((o * torch.tensor(g.astype(o.detach().numpy().dtype))).sum() for o, g in zip(theirs_out, gs))
    loss_o.backward()
    loss_t.backward()
    for a, b in zip(list(our_leaves) + list(our_params), list(their_leaves) + list(their_params)):
        if b.grad is None:
            assert a.grad is None or np.all(arr(a.grad) == 0)
            continue
        np.testing.assert_allclose(arr(a.grad), b.grad.numpy(), **tol)


# ----------------------------------------------------------------------------------------------- Embedding


def test_embedding_matches_torch_forward_and_dense_gradient():
    emb, ref = twin(nn.Embedding(10, 4), torch.nn.Embedding(10, 4))
    idx = np.array([[1, 3, 3], [9, 0, 1]])
    out, expect = emb(tj.tensor(idx)), ref(torch.tensor(idx))
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [], [], [emb.weight], [ref.weight], tol=TOL[np.float64])


@pytest.mark.parametrize("padding_idx", [0, -1])
def test_embedding_padding_idx_row_is_zero_and_gets_no_gradient(padding_idx):
    tj.manual_seed(0)
    emb = nn.Embedding(6, 3, padding_idx=padding_idx)
    row = padding_idx % 6
    assert emb.padding_idx == row and np.all(arr(emb.weight)[row] == 0)
    _, ref = twin(emb, torch.nn.Embedding(6, 3, padding_idx=padding_idx))
    idx = np.array([row, 2, row, 5])
    out, expect = emb(tj.tensor(idx)), ref(torch.tensor(idx))
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [], [], [emb.weight], [ref.weight], tol=TOL[np.float64])
    assert np.all(arr(emb.weight.grad)[row] == 0)


def test_embedding_max_norm_renormalizes_used_rows_in_place():
    emb, ref = twin(nn.Embedding(5, 3, max_norm=1.0), torch.nn.Embedding(5, 3, max_norm=1.0))
    with torch.no_grad():
        ref.weight.mul_(3.0)
    emb.load_state_dict({"weight": tj.tensor(ref.weight.detach().numpy())})
    idx = np.array([0, 2, 2])
    out, expect = emb(tj.tensor(idx)), ref(torch.tensor(idx))
    np.testing.assert_allclose(arr(out), expect.detach().numpy(), rtol=1e-7)
    np.testing.assert_allclose(arr(emb.weight), ref.weight.detach().numpy(), rtol=1e-7)  # rows 1, 3, 4 untouched


def test_embedding_scale_grad_by_freq_and_from_pretrained():
    emb, ref = twin(nn.Embedding(5, 2, scale_grad_by_freq=True), torch.nn.Embedding(5, 2, scale_grad_by_freq=True))
    idx = np.array([[1, 1, 4], [1, 0, 4]])
    out, expect = emb(tj.tensor(idx)), ref(torch.tensor(idx))
    check_backward(out, expect, [], [], [emb.weight], [ref.weight], tol=TOL[np.float64])
    w = np.arange(6.0).reshape(3, 2)
    frozen = nn.Embedding.from_pretrained(tj.tensor(w))
    assert not frozen.weight.requires_grad and frozen.num_embeddings == 3
    np.testing.assert_array_equal(arr(frozen(tj.tensor([2, 0]))), w[[2, 0]])
    assert nn.Embedding.from_pretrained(tj.tensor(w), freeze=False).weight.requires_grad


def test_embedding_init_repr_and_errors():
    tj.manual_seed(1)
    emb = nn.Embedding(2000, 8)
    w = arr(emb.weight)
    assert abs(w.mean()) < 0.05 and abs(w.std() - 1.0) < 0.05  # N(0, 1), as PyTorch
    assert repr(nn.Embedding(10, 3, padding_idx=2)) == repr(torch.nn.Embedding(10, 3, padding_idx=2))
    assert list(emb.state_dict()) == ["weight"]
    with pytest.raises(IndexError, match="out of range"):
        emb(tj.tensor([2000]))
    with pytest.raises(TypeError, match="int64"):
        emb(tj.tensor([1.0]))


def test_one_hot_matches_torch():
    idx = np.array([[0, 3], [2, 1]])
    np.testing.assert_array_equal(arr(F.one_hot(tj.tensor(idx))), torch.nn.functional.one_hot(torch.tensor(idx)))
    np.testing.assert_array_equal(arr(F.one_hot(tj.tensor(idx), 6)),
                                  torch.nn.functional.one_hot(torch.tensor(idx), 6))
    assert F.one_hot(tj.tensor(idx)).dtype == tj.int64
    with pytest.raises(IndexError):
        F.one_hot(tj.tensor([4]), 3)


# ----------------------------------------------------------------------------------------------- RNN layers

CASES = [
    # mode, num_layers, bidirectional, batch_first, bias
    ("LSTM", 1, False, False, True),
    ("LSTM", 2, True, True, True),
    ("LSTM", 2, False, False, False),
    ("GRU", 2, True, False, True),
    ("GRU", 1, False, True, True),
    ("RNN", 2, True, True, True),
    ("RNN_relu", 1, False, False, False),
]


def _layers(mode, *args, **kwargs):
    if mode == "RNN_relu":
        return nn.RNN(*args, nonlinearity="relu", **kwargs), torch.nn.RNN(*args, nonlinearity="relu", **kwargs)
    return getattr(nn, mode)(*args, **kwargs), getattr(torch.nn, mode)(*args, **kwargs)


@pytest.mark.parametrize("mode,layers,bidir,batch_first,bias", CASES)
def test_recurrent_layer_matches_torch(mode, layers, bidir, batch_first, bias):
    ours, theirs = twin(*_layers(mode, 3, 5, layers, bias=bias, batch_first=batch_first, bidirectional=bidir))
    rng = np.random.default_rng(hash((mode, layers, bidir)) % 2**32)
    T, B, D = 4, 2, 2 if bidir else 1
    x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
    h0 = rng.standard_normal((layers * D, B, 5))
    c0 = rng.standard_normal((layers * D, B, 5))
    lstm = mode == "LSTM"
    (xo, ho, co), (xt, ht, ct) = leaves(x, h0, c0)
    out, state = ours(xo, (ho, co) if lstm else ho)
    expect, estate = theirs(xt, (ht, ct) if lstm else ht)
    assert tuple(out.shape) == tuple(expect.shape)
    for a, b in zip(flat((out, state)), flat((expect, estate))):
        np.testing.assert_allclose(arr(a), b.detach().numpy(), **TOL[np.float64])
    check_backward((out, state), (expect, estate), [xo, ho] + ([co] if lstm else []),
                   [xt, ht] + ([ct] if lstm else []), list(ours.parameters()), list(theirs.parameters()),
                   tol=TOL[np.float64])


def test_lstm_float32_default_state_and_unbatched_input():
    ours, theirs = twin(nn.LSTM(4, 6, 2), torch.nn.LSTM(4, 6, 2), dtype=np.float32)
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)  # unbatched [T, in]
    (xo,), (xt,) = leaves(x)
    out, (h, c) = ours(xo)
    expect, (eh, ec) = theirs(xt)
    assert tuple(out.shape) == (5, 6) and tuple(h.shape) == (2, 6) and out.dtype == tj.float32
    for a, b in zip((out, h, c), (expect, eh, ec)):
        np.testing.assert_allclose(arr(a), b.detach().numpy(), **TOL[np.float32])
    check_backward((out, h, c), (expect, eh, ec), [xo], [xt], list(ours.parameters()), list(theirs.parameters()),
                   tol=TOL[np.float32])


def test_lstm_proj_size_matches_torch():
    ours, theirs = twin(nn.LSTM(3, 6, 2, proj_size=2, bidirectional=True),
                        torch.nn.LSTM(3, 6, 2, proj_size=2, bidirectional=True))
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    x = np.random.default_rng(4).standard_normal((3, 2, 3))
    (xo,), (xt,) = leaves(x)
    out, state = ours(xo)
    expect, estate = theirs(xt)
    assert tuple(state[0].shape) == (4, 2, 2) and tuple(state[1].shape) == (4, 2, 6)
    check_backward((out, state), (expect, estate), [xo], [xt], list(ours.parameters()), list(theirs.parameters()),
                   tol=TOL[np.float64])


def test_dropout_between_layers_only_in_training():
    tj.manual_seed(0)
    lstm = nn.LSTM(3, 4, 3, dropout=0.5)
    x = tj.randn(5, 2, 3)
    lstm.eval()
    a, _ = lstm(x)
    b, _ = lstm(x)
    np.testing.assert_array_equal(arr(a), arr(b))
    lstm.train()
    c, _ = lstm(x)
    assert not np.allclose(arr(a), arr(c))  # the masks after layers 0 and 1 change the output
    nodrop = nn.LSTM(3, 4, 3, dropout=0.0)
    nodrop.load_state_dict(lstm.state_dict())
    np.testing.assert_array_equal(arr(nodrop(x)[0]), arr(a))
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        nn.GRU(2, 2, 1, dropout=0.2)


def test_parameter_names_shapes_init_and_repr():
    for mode in ("RNN", "LSTM", "GRU"):
        ours, theirs = _layers(mode, 3, 8, 2, bidirectional=True)
        assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
            [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
        assert repr(ours) == repr(theirs)
        bound = 1 / math.sqrt(8)
        for p in ours.parameters():
            assert np.all(np.abs(arr(p)) <= bound)
    assert repr(nn.RNN(2, 3, nonlinearity="relu", batch_first=True)) == \
        repr(torch.nn.RNN(2, 3, nonlinearity="relu", batch_first=True))
    with pytest.raises(RuntimeError, match="input_size"):
        nn.LSTM(3, 4)(tj.zeros(2, 1, 5))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        nn.GRU(3, 4)(tj.zeros(2, 1, 3), tj.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="proj_size"):
        nn.GRU(3, 4, proj_size=2)


# ----------------------------------------------------------------------------------------------- packed


def test_pack_and_pad_round_trip_matches_torch():
    x = np.arange(24.0).reshape(4, 3, 2)
    for lengths, enforce in (([4, 4, 4], True), ([4, 3, 1], True), ([2, 4, 3], False)):
        ours = rnn_utils.pack_padded_sequence(tj.tensor(x), lengths, enforce_sorted=enforce)
        theirs = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), lengths, enforce_sorted=enforce)
        np.testing.assert_array_equal(arr(ours.data), theirs.data.numpy())
        np.testing.assert_array_equal(arr(ours.batch_sizes), theirs.batch_sizes.numpy())
        if not enforce:
            np.testing.assert_array_equal(arr(ours.sorted_indices), theirs.sorted_indices.numpy())
        padded, lens = rnn_utils.pad_packed_sequence(ours, batch_first=True, padding_value=-1.0)
        epadded, elens = torch.nn.utils.rnn.pad_packed_sequence(theirs, batch_first=True, padding_value=-1.0)
        np.testing.assert_array_equal(arr(padded), epadded.numpy())
        np.testing.assert_array_equal(arr(lens), elens.numpy())
    seqs = [np.ones((3, 2)), np.zeros((1, 2)), np.full((2, 2), 2.0)]
    np.testing.assert_array_equal(arr(rnn_utils.pad_sequence([tj.tensor(s) for s in seqs], batch_first=True)),
                                  torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs],
                                                                  batch_first=True).numpy())
    with pytest.raises(RuntimeError, match="sorted in decreasing order"):
        rnn_utils.pack_padded_sequence(tj.tensor(x), [1, 2, 3])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_packed_input_runs_each_sequence_to_its_own_length(mode):
    ours, theirs = twin(*_layers(mode, 2, 3, 2, bidirectional=True))
    x = np.random.default_rng(5).standard_normal((4, 3, 2))
    for lengths in ([4, 4, 4], [3, 4, 1]):
        (xo,), (xt,) = leaves(x)
        po = rnn_utils.pack_padded_sequence(xo, lengths, enforce_sorted=False)
        pt = torch.nn.utils.rnn.pack_padded_sequence(xt, lengths, enforce_sorted=False)
        out, state = ours(po)
        expect, estate = theirs(pt)
        np.testing.assert_array_equal(arr(out.batch_sizes), expect.batch_sizes.numpy())
        np.testing.assert_allclose(arr(out.data), expect.data.detach().numpy(), **TOL[np.float64])
        for a, b in zip(flat(state), flat(estate)):
            np.testing.assert_allclose(arr(a), b.detach().numpy(), **TOL[np.float64])
        check_backward((out.data, state), (expect.data, estate), [xo], [xt], tol=TOL[np.float64])


# ----------------------------------------------------------------------------------------------- cells


@pytest.mark.parametrize("cell", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_match_torch(cell):
    ours, theirs = twin(getattr(nn, cell)(3, 4), getattr(torch.nn, cell)(3, 4))
    rng = np.random.default_rng(6)
    x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    (xo, ho, co), (xt, ht, ct) = leaves(x, h, c)
    lstm = cell == "LSTMCell"
    out = ours(xo, (ho, co) if lstm else ho)
    expect = theirs(xt, (ht, ct) if lstm else ht)
    for a, b in zip(flat(out), flat(expect)):
        np.testing.assert_allclose(arr(a), b.detach().numpy(), **TOL[np.float64])
    check_backward(out, expect, [xo, ho] + ([co] if lstm else []), [xt, ht] + ([ct] if lstm else []),
                   list(ours.parameters()), list(theirs.parameters()), tol=TOL[np.float64])
    # unbatched input and the default zero state
    single = ours(tj.tensor(x[0]))
    esingle = theirs(torch.tensor(x[0]))
    for a, b in zip(flat(single), flat(esingle)):
        np.testing.assert_allclose(arr(a), b.detach().numpy(), **TOL[np.float64])
    assert repr(ours) == repr(theirs)


def test_rnn_cell_relu_and_no_bias():
    ours, theirs = twin(nn.RNNCell(3, 2, bias=False, nonlinearity="relu"),
                        torch.nn.RNNCell(3, 2, bias=False, nonlinearity="relu"))
    assert list(ours.state_dict()) == ["weight_ih", "weight_hh"]
    x = np.random.default_rng(7).standard_normal((4, 3))
    np.testing.assert_allclose(arr(ours(tj.tensor(x))), theirs(torch.tensor(x)).detach().numpy(), **TOL[np.float64])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.LSTMCell(2, 3)
