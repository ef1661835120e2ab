"""The sequence-model workloads (lstm, gpt) for tracejit; their PyTorch and JAX peers are in seq_peers.py.

lstm: the pytorch/examples word language model (Embedding 1000x128, 2-layer LSTM 256, Linear decoder), bptt 35,
batch 20, cross-entropy, gradient clipping at 0.25, SGD lr 20, the hidden state carried from step to step
(detached, as the example's repackage_hidden). gpt: a decoder-only Transformer (token and position embeddings,
4 pre-norm TransformerEncoderLayers with 4 heads, d=128, GELU, causal mask, final LayerNorm, Linear head),
context 64, batch 16, vocab 512, cross-entropy, AdamW. Dropout is 0 in both, so that every framework computes the
same numbers and their losses can be cross-checked.
"""

from __future__ import annotations

import numpy as np

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F

from .workloads import Built, Workload, _compiled, _load, _loss_value, _state_arrays, _tensor


# ------------------------------------------------------------------------------------------------ lstm
class WordLM(nn.Module):
    """pytorch/examples word_language_model's RNNModel (LSTM, untied weights)."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.encoder = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, layers)
        self.decoder = nn.Linear(hidden, vocab)
        self.vocab = vocab
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.encoder(x), hidden)
        return self.decoder(out).view(-1, self.vocab), hidden


def lstm_config(quick: bool) -> dict:
    if quick:
        return {"vocab": 50, "embed": 8, "hidden": 16, "layers": 2, "bptt": 5, "batch": 3, "lr": 20.0, "clip": 0.25}
    return {"vocab": 1000, "embed": 128, "hidden": 256, "layers": 2, "bptt": 35, "batch": 20, "lr": 20.0,
            "clip": 0.25}


def lstm_arrays(cfg: dict) -> dict:
    tj.manual_seed(5)
    rng = np.random.default_rng(5)
    shape = (cfg["bptt"], cfg["batch"])
    return {"params": _state_arrays(WordLM(cfg["vocab"], cfg["embed"], cfg["hidden"], cfg["layers"])),
            "x": rng.integers(0, cfg["vocab"], shape).astype(np.int64),
            "y": rng.integers(0, cfg["vocab"], shape[0] * shape[1]).astype(np.int64)}


def lstm_build(cfg: dict, arrays: dict, backend: str | None) -> Built:
    model = _load(WordLM(cfg["vocab"], cfg["embed"], cfg["hidden"], cfg["layers"]), arrays["params"])
    opt = tj.optim.SGD(model.parameters(), lr=cfg["lr"])
    x, y = _tensor(arrays["x"]), _tensor(arrays["y"])
    zeros = np.zeros((cfg["layers"], cfg["batch"], cfg["hidden"]), np.float32)
    state = [_tensor(zeros), _tensor(zeros)]
    clip = cfg["clip"]

    def train_step(x, y, h, c):
        opt.zero_grad()
        out, (h, c) = model(x, (h, c))
        loss = F.cross_entropy(out, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss, h.detach(), c.detach()

    step = _compiled(train_step, backend)

    def run():
        loss, state[0], state[1] = step(x, y, state[0], state[1])
        return loss

    return Built(run, _loss_value)


# ------------------------------------------------------------------------------------------------- gpt
class GPT(nn.Module):
    """A decoder-only Transformer from nn.TransformerEncoderLayer (pre-norm, GELU) with a causal mask."""

    def __init__(self, vocab: int, d: int, heads: int, layers: int, context: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("positions", tj.arange(context), persistent=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, x):
        h = self.tok(x) + self.pos(self.positions)
        h = self.blocks(h, mask=self.mask, is_causal=True)
        return self.head(self.ln(h))


def gpt_config(quick: bool) -> dict:
    if quick:
        return {"vocab": 32, "d": 16, "heads": 2, "layers": 2, "context": 8, "batch": 2, "lr": 3e-4}
    return {"vocab": 512, "d": 128, "heads": 4, "layers": 4, "context": 64, "batch": 16, "lr": 3e-4}


def gpt_model(cfg: dict) -> GPT:
    return GPT(cfg["vocab"], cfg["d"], cfg["heads"], cfg["layers"], cfg["context"])


def gpt_arrays(cfg: dict) -> dict:
    tj.manual_seed(6)
    rng = np.random.default_rng(6)
    shape = (cfg["batch"], cfg["context"])
    return {"params": _state_arrays(gpt_model(cfg)),
            "x": rng.integers(0, cfg["vocab"], shape).astype(np.int64),
            "y": rng.integers(0, cfg["vocab"], shape).astype(np.int64)}


def gpt_build(cfg: dict, arrays: dict, backend: str | None) -> Built:
    model = _load(gpt_model(cfg), arrays["params"])
    opt = tj.optim.AdamW(model.parameters(), lr=cfg["lr"])
    x, y = _tensor(arrays["x"]), _tensor(arrays["y"])
    vocab = cfg["vocab"]

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).view(-1, vocab), y.view(-1))
        loss.backward()
        opt.step()
        return loss

    step = _compiled(train_step, backend)
    return Built(lambda: step(x, y), _loss_value)


SEQ_WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("lstm", "word language model: Embedding 1000x128, 2-layer LSTM 256, bptt 35, batch 20, cross-entropy, "
             "clip 0.25, SGD", "step", lstm_config, lstm_arrays, lstm_build),
    Workload("gpt", "decoder-only Transformer: 4 layers, 4 heads, d=128, context 64, batch 16, vocab 512, AdamW",
             "step", gpt_config, gpt_arrays, gpt_build),
]}
