"""Sequence models compiled: a 2-layer LSTM language-model step and a decoder-only Transformer step equal eager
over several steps (parameters, gradients, optimizer state, the carried hidden state), and the fusions the
dump promises: an LSTM cell's gate math is one elementwise kernel forward and one backward, a LayerNorm one
row kernel each way, attention's scale + mask + softmax one row kernel between the two batched matmuls.

Shapes are tiny; the kernels compiled here go to the tests' cache (.tracejit_cache/tests)."""

from __future__ import annotations

import numpy as np
import pytest

import tracejit
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler.ir import FusedKind

from .conftest import assert_same_state, snapshot, twin

RTOL, ATOL = 2e-4, 2e-5  # float32: the fused kernels sum in another order than NumPy


def assert_close_state(a: dict, b: dict):
    assert_same_state(a, b, rtol=RTOL, atol=ATOL)


class WordLM(nn.Module):
    def __init__(self, vocab=13, embed=6, hidden=8, layers=2):
        super().__init__()
        self.encoder = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, layers)
        self.decoder = nn.Linear(hidden, vocab)
        self.vocab = vocab

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.encoder(x), hidden)
        return self.decoder(out).view(-1, self.vocab), hidden


def _lstm_setup():
    model = WordLM()
    return model, tracejit.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)


def _lstm_step(model, opt):
    def train_step(x, y, h, c):
        opt.zero_grad()
        out, (h, c) = model(x, (h, c))
        loss = F.cross_entropy(out, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        return loss, h.detach(), c.detach()
    return train_step


def test_compiled_two_layer_lstm_lm_step_equals_eager_for_several_steps():
    (m1, o1), (m2, o2) = twin(_lstm_setup)
    eager, compiled = _lstm_step(m1, o1), tracejit.compile(_lstm_step(m2, o2), backend="cpu")
    rng = np.random.default_rng(0)
    T, B, H = 5, 3, 8
    s1 = [tracejit.zeros(2, B, H), tracejit.zeros(2, B, H)]
    s2 = [tracejit.zeros(2, B, H), tracejit.zeros(2, B, H)]
    for _ in range(4):
        x = tracejit.tensor(rng.integers(0, 13, (T, B)))
        y = tracejit.tensor(rng.integers(0, 13, T * B))
        l1, *s1 = eager(x, y, *s1)
        l2, *s2 = compiled(x, y, *s2)
        np.testing.assert_allclose(l2.item(), l1.item(), rtol=RTOL)
        assert_close_state(snapshot(m2, o2, rng=False, extra=s2), snapshot(m1, o1, rng=False, extra=s1))
    assert len(compiled.history) == 1 and getattr(compiled.latest().program, "fallbacks", []) == []


class TinyGPT(nn.Module):
    def __init__(self, vocab=11, d=8, heads=2, layers=2, context=6):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        block = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("positions", tracejit.arange(context), persistent=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, x):
        h = self.tok(x) + self.pos(self.positions)
        return self.head(self.ln(self.blocks(h, mask=self.mask, is_causal=True)))


def _gpt_setup():
    model = TinyGPT()
    # eps 1e-4: the key projection's bias has a zero gradient up to rounding (softmax ignores a per-row shift), and
    # Adam with a tiny eps turns that rounding noise into full-size steps that no two summation orders share
    return model, tracejit.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-4)


def _gpt_step(model, opt):
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).view(-1, 11), y.view(-1))
        loss.backward()
        opt.step()
        return loss
    return train_step


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compiled_transformer_step_equals_eager_for_several_steps(backend):
    (m1, o1), (m2, o2) = twin(_gpt_setup)
    eager, compiled = _gpt_step(m1, o1), tracejit.compile(_gpt_step(m2, o2), backend=backend)
    rng = np.random.default_rng(1)
    for _ in range(4):  # the first call runs eagerly (AdamW creates its state), the others compiled
        x = tracejit.tensor(rng.integers(0, 11, (3, 6)))
        y = tracejit.tensor(rng.integers(0, 11, (3, 6)))
        np.testing.assert_allclose(compiled(x, y).item(), eager(x, y).item(), rtol=RTOL)
        assert_close_state(snapshot(m2, o2, rng=False), snapshot(m1, o1, rng=False))
    assert len(compiled.history) == 1 and getattr(compiled.latest().program, "fallbacks", []) == []


# ------------------------------------------------------------------------------------------ fusion in the dump
def _final_graph(fn, *args):
    return tracejit.explain(tracejit.compile(fn, backend="cpu"), *args).variant.graph


def _loops(g):
    """(index, node) of the graph's loop kernels."""
    return [(i, n) for i, n in enumerate(g.nodes) if n.fused_kind in (FusedKind.ELEMENTWISE, FusedKind.REDUCE)]


def _ops(n):
    return [m.op.name for m in n.body.nodes]


def test_lstm_cell_gate_math_is_one_elementwise_kernel_each_way():
    tracejit.manual_seed(0)
    cell, dec = nn.LSTMCell(5, 7), nn.Linear(7, 4)
    x, h, c = tracejit.randn(3, 5), tracejit.randn(3, 7), tracejit.randn(3, 7)

    def step(x, h, c):  # (a decoder GEMM between the forward and the backward, as in a model)
        h2, c2 = cell(x, (h, c))
        (dec(h2) ** 2).sum().backward()
        return cell.weight_ih.grad, cell.weight_hh.grad, cell.bias_ih.grad

    g = _final_graph(step, x, h, c)
    gates = [n for _, n in _loops(g) if {"sigmoid", "tanh"} <= set(_ops(n))]
    assert len(gates) == 1, [_ops(n) for _, n in _loops(g)]  # i, f, g, o and the new c and h: one kernel
    assert _ops(gates[0]).count("sigmoid") == 3 and _ops(gates[0]).count("tanh") == 2
    # backward: the four gate gradients, stored into one [B, 4H] array for the weight GEMMs, in one kernel
    back = [n for _, n in _loops(g) if "cat" in _ops(n) and "sigmoid" not in _ops(n)]
    assert len(back) == 1 and _ops(back[0]).count("mul") >= 10
    assert [tuple(v.shape) for v in back[0].outputs if v.shape == (3, 28)], "the gate gradients, concatenated"
    kinds = [n.fused_kind for _, n in _loops(g) if n.fused_kind is FusedKind.ELEMENTWISE]
    assert len(kinds) == 2, [_ops(n) for _, n in _loops(g)]


def test_layer_norm_is_one_row_kernel_forward_and_one_backward():
    tracejit.manual_seed(0)
    ln, lin = nn.LayerNorm(16), nn.Linear(16, 3)
    x = tracejit.randn(4, 5, 16, requires_grad=True)
    w = tracejit.randn(4, 5, 3)

    def step(x, w):
        (lin(ln(x)) * w).sum().backward()
        return x.grad, ln.weight.grad, ln.bias.grad

    g = _final_graph(step, x, w)
    loops = _loops(g)
    rows = [n for _, n in loops if n.attrs.get("rows") == 2]
    assert len(rows) == 2, [(_ops(n), n.attrs.get("rows")) for _, n in loops]
    fwd, bwd = rows
    assert _ops(fwd).count("sum") == 2 and "sqrt" in _ops(fwd)  # mean and variance, then normalize
    assert _ops(bwd).count("sum") >= 2  # the row sums of the input gradient
    # the weight and bias gradients' sums over rows may join the backward kernel or run apart; nothing else
    others = [_ops(n) for _, n in loops if not any(n is r for r in rows)]
    assert all(set(ops) <= {"sum", "reshape", "permute", "mul"} for ops in others), others


def test_attention_scale_mask_softmax_is_one_row_kernel_between_two_batched_matmuls():
    tracejit.manual_seed(0)
    q, k, v = (tracejit.randn(2, 3, 6, 4, requires_grad=True) for _ in range(3))

    def step(q, k, v):
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        return q.grad, k.grad, v.grad

    g = _final_graph(step, q, k, v)
    soft = [(i, n) for i, n in _loops(g) if {"amax", "exp", "where"} <= set(_ops(n))]
    assert len(soft) == 1 and soft[0][1].attrs.get("rows") == 3, [_ops(n) for _, n in _loops(g)]
    i = soft[0][0]
    mm = [j for j, n in enumerate(g.nodes) if n.body is None and n.op.name == "matmul"]
    assert any(j < i for j in mm) and any(j > i for j in mm)
    # nothing but views between the scores' matmul and the kernel, and between the kernel and the next matmul
    before, after = max(j for j in mm if j < i), min(j for j in mm if j > i)
    between = [g.nodes[j] for j in range(before + 1, after) if j != i]
    assert all(n.body is None and n.op.name in ("reshape", "permute", "expand", "full")
               for n in between), \
        [n.op.name if n.body is None else _ops(n) for n in between]
    # backward: the softmax gradient (with the scale and the mask) is one row kernel too
    back = [n for _, n in _loops(g) if "where" in _ops(n) and "exp" not in _ops(n) and n.attrs.get("rows") == 3]
    assert len(back) == 1
