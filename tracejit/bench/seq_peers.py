"""The sequence workloads (seq_workloads.py: lstm, gpt) in PyTorch eager, torch.compile and jax.jit, from the same
initial arrays. The JAX versions are written as JAX code is: an LSTM layer is a `lax.scan` over time, the model a
pure function of a parameter dict, the optimizer update inside the jitted step (buffers donated).
"""

from __future__ import annotations

from collections.abc import Callable

from .peers import _jax_loop, _jax_params, _torch_module, _torch_value
from .workloads import Built


# ---------------------------------------------------------------------------------------------- torch
def _torch_word_lm(cfg: dict):
    import torch.nn as nn

    class WordLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(cfg["vocab"], cfg["embed"])
            self.rnn = nn.LSTM(cfg["embed"], cfg["hidden"], cfg["layers"])
            self.decoder = nn.Linear(cfg["hidden"], cfg["vocab"])

        def forward(self, x, hidden):
            out, hidden = self.rnn(self.encoder(x), hidden)
            return self.decoder(out).view(-1, cfg["vocab"]), hidden

    return WordLM()


def _torch_lstm(cfg: dict, arrays: dict, compiled: bool) -> Built:
    import torch
    import torch.nn.functional as F

    model = _torch_module(_torch_word_lm(cfg), arrays["params"])
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    x, y = torch.from_numpy(arrays["x"].copy()), torch.from_numpy(arrays["y"].copy())
    zeros = torch.zeros(cfg["layers"], cfg["batch"], cfg["hidden"])
    state = [zeros.clone(), zeros.clone()]

    def train_step(x, y, h, c):
        opt.zero_grad()
        out, (h, c) = model(x, (h, c))
        loss = F.cross_entropy(out, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        return loss, h.detach(), c.detach()

    step = torch.compile(train_step) if compiled else train_step

    def run():
        loss, state[0], state[1] = step(x, y, state[0], state[1])
        return loss

    return Built(run, _torch_value)


def _torch_gpt_module(cfg: dict):
    import torch
    import torch.nn as nn

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg["d"]
            self.tok = nn.Embedding(cfg["vocab"], d)
            self.pos = nn.Embedding(cfg["context"], d)
            block = nn.TransformerEncoderLayer(d, cfg["heads"], 4 * d, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, cfg["layers"], enable_nested_tensor=False)
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, cfg["vocab"])
            self.register_buffer("positions", torch.arange(cfg["context"]), persistent=False)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(cfg["context"]),
                                 persistent=False)

        def forward(self, x):
            h = self.tok(x) + self.pos(self.positions)
            h = self.blocks(h, mask=self.mask, is_causal=True)
            return self.head(self.ln(h))

    return GPT()


def _torch_gpt(cfg: dict, arrays: dict, compiled: bool) -> Built:
    import torch
    import torch.nn.functional as F

    model = _torch_module(_torch_gpt_module(cfg), arrays["params"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    x, y = torch.from_numpy(arrays["x"].copy()), torch.from_numpy(arrays["y"].copy())
    vocab = cfg["vocab"]

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).view(-1, vocab), y.view(-1))
        loss.backward()
        opt.step()
        return loss

    step = torch.compile(train_step) if compiled else train_step
    return Built(lambda: step(x, y), _torch_value)


SEQ_TORCH: dict[str, Callable[[dict, dict, bool], Built]] = {"lstm": _torch_lstm, "gpt": _torch_gpt}


# ------------------------------------------------------------------------------------------------ jax
def _jax_cross_entropy_flat(logits, y):
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def _jax_lstm_layer(p: dict, layer: int, x, h, c):
    """One LSTM layer over time-major x [T, B, in] with lax.scan (PyTorch's gate order i, f, g, o)."""
    import jax
    import jax.numpy as jnp

    w_ih, w_hh = p[f"rnn.weight_ih_l{layer}"], p[f"rnn.weight_hh_l{layer}"]
    xw = x @ w_ih.T + p[f"rnn.bias_ih_l{layer}"]
    b_hh = p[f"rnn.bias_hh_l{layer}"]

    def cell(carry, xw_t):
        h, c = carry
        gates = xw_t + h @ w_hh.T + b_hh
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    (h, c), out = jax.lax.scan(cell, (h, c), xw)
    return out, h, c


def _jax_lstm(cfg: dict, arrays: dict) -> Built:
    import jax
    import jax.numpy as jnp

    layers, lr, clip, vocab = cfg["layers"], cfg["lr"], cfg["clip"], cfg["vocab"]

    def loss_fn(p, x, y, h0, c0):
        out = p["encoder.weight"][x]
        hs, cs = [], []
        for layer in range(layers):
            out, h, c = _jax_lstm_layer(p, layer, out, h0[layer], c0[layer])
            hs.append(h)
            cs.append(c)
        logits = (out @ p["decoder.weight"].T + p["decoder.bias"]).reshape(-1, vocab)
        return _jax_cross_entropy_flat(logits, y), (jnp.stack(hs), jnp.stack(cs))

    def step(p, state, x, y):
        (loss, (h, c)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y, state[0], state[1])
        norm = jnp.sqrt(sum(jnp.sum(v * v) for v in g.values()))
        scale = jnp.minimum(1.0, clip / (norm + 1e-6))  # clip_grad_norm_
        p = {k: p[k] - lr * (g[k] * scale) for k in p}
        return p, (jax.lax.stop_gradient(h), jax.lax.stop_gradient(c)), loss

    p = _jax_params(arrays["params"])
    shape = (layers, cfg["batch"], cfg["hidden"])
    state = (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))  # two buffers: both are donated
    return _jax_loop(jax.jit(step, donate_argnums=(0, 1)), p, state, jnp.asarray(arrays["x"]),
                     jnp.asarray(arrays["y"]))


def _jax_layer_norm(x, w, b, eps=1e-5):
    import jax.numpy as jnp

    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, -1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * w + b


def _jax_gpt(cfg: dict, arrays: dict) -> Built:
    import jax
    import jax.numpy as jnp

    d, heads, T, vocab, lr = cfg["d"], cfg["heads"], cfg["context"], cfg["vocab"], cfg["lr"]
    hd = d // heads
    b1, b2, eps, wd = 0.9, 0.999, 1e-8, 0.01
    causal = jnp.tril(jnp.ones((T, T), bool))

    def block(p, i, x):
        pre = f"blocks.layers.{i}."
        B = x.shape[0]
        h = _jax_layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
        qkv = h @ p[pre + "self_attn.in_proj_weight"].T + p[pre + "self_attn.in_proj_bias"]
        q, k, v = (t.reshape(B, T, heads, hd).transpose(0, 2, 1, 3) for t in jnp.split(qkv, 3, axis=-1))
        s = (q @ k.transpose(0, 1, 3, 2)) / jnp.sqrt(hd)
        s = jnp.where(causal, s, -jnp.inf)
        a = jax.nn.softmax(s, axis=-1) @ v
        a = a.transpose(0, 2, 1, 3).reshape(B, T, d)
        x = x + a @ p[pre + "self_attn.out_proj.weight"].T + p[pre + "self_attn.out_proj.bias"]
        h = _jax_layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"])
        h = jax.nn.gelu(h @ p[pre + "linear1.weight"].T + p[pre + "linear1.bias"], approximate=False)
        return x + h @ p[pre + "linear2.weight"].T + p[pre + "linear2.bias"]

    def loss_fn(p, x, y):
        h = p["tok.weight"][x] + p["pos.weight"][jnp.arange(T)]
        for i in range(cfg["layers"]):
            h = block(p, i, h)
        logits = _jax_layer_norm(h, p["ln.weight"], p["ln.bias"]) @ p["head.weight"].T + p["head.bias"]
        return _jax_cross_entropy_flat(logits.reshape(-1, vocab), y.reshape(-1))

    def step(p, st, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        t = st["t"] + 1.0
        m = {k: b1 * st["m"][k] + (1 - b1) * g[k] for k in p}
        v = {k: b2 * st["v"][k] + (1 - b2) * g[k] * g[k] for k in p}
        c1, c2 = 1 - b1**t, 1 - b2**t  # PyTorch's AdamW: decoupled weight decay, bias-corrected moments
        p = {k: p[k] * (1 - lr * wd) - lr * (m[k] / c1) / (jnp.sqrt(v[k] / c2) + eps) for k in p}
        return p, {"t": t, "m": m, "v": v}, loss

    p = _jax_params(arrays["params"])
    st = {"t": jnp.zeros((), jnp.float32), "m": {k: jnp.zeros_like(v) for k, v in p.items()},
          "v": {k: jnp.zeros_like(v) for k, v in p.items()}}
    return _jax_loop(jax.jit(step, donate_argnums=(0, 1)), p, st, jnp.asarray(arrays["x"]), jnp.asarray(arrays["y"]))


SEQ_JAX: dict[str, Callable[[dict, dict], Built]] = {"lstm": _jax_lstm, "gpt": _jax_gpt}
