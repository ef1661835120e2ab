"""A character-level language model (Embedding -> LSTM -> Linear) trained with a compiled step on a small text,
then sampled one character at a time, the way pytorch/examples' word_language_model trains (truncated
backpropagation through time: the hidden state is carried from batch to batch, detached).

The text is generated (a few thousand characters of simple sentences from a fixed grammar, so the model has
something to learn) unless --text names a file.

    python examples/char_lm.py [--steps 300] [--text FILE] [--backend cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tracejit as torch
import tracejit.nn as nn
import tracejit.nn.functional as F

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the old man", "a small child"]
VERBS = ["sees", "likes", "finds", "follows", "watches"]
OBJECTS = ["the ball", "a red box", "the river", "some bread", "the moon", "a green tree"]
PLACES = ["in the park", "at home", "by the sea", "on the hill", "after dinner"]


def make_text(n_sentences: int, seed: int = 0) -> str:
    """Simple sentences from a fixed grammar: regular enough to learn in a few hundred steps."""
    rng = np.random.default_rng(seed)
    pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
    return " ".join(f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)} {pick(PLACES)}." for _ in range(n_sentences))


class CharLM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


def batches(data: np.ndarray, batch: int, bptt: int):
    """pytorch/examples' batchify + get_batch, batch_first: `batch` parallel streams cut into `bptt` chunks."""
    n = (len(data) - 1) // (batch * bptt) * bptt
    streams = data[: batch * n + 1]
    x = streams[:-1].reshape(batch, n)
    y = streams[1: batch * n + 1].reshape(batch, n)
    for i in range(0, n, bptt):
        yield x[:, i: i + bptt], y[:, i: i + bptt]


def sample(model: CharLM, chars: list[str], start: str, length: int, temperature: float, seed: int) -> str:
    """Feed `start`, then draw `length` characters from the model's softmax (eager, one step at a time)."""
    index = {c: i for i, c in enumerate(chars)}
    rng = np.random.default_rng(seed)
    layers, hidden = model.rnn.num_layers, model.rnn.hidden_size
    state = (torch.zeros(layers, 1, hidden), torch.zeros(layers, 1, hidden))
    out = list(start)
    with torch.no_grad():
        logits, state = model(torch.tensor([[index[c] for c in start]]), state)
        for _ in range(length):
            p = F.softmax(logits[0, -1] / temperature, dim=-1).numpy().astype(np.float64)
            c = int(rng.choice(len(chars), p=p / p.sum()))
            out.append(chars[c])
            logits, state = model(torch.tensor([[c]]), state)
    return "".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", help="a UTF-8 text file to train on (default: generated sentences)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--bptt", type=int, default=32, help="characters per step (the LSTM unrolls this many cells)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--backend", default="cpu", help="compile backend: cpu, reference or cuda")
    p.add_argument("--quick", action="store_true", help="a tiny run for tests")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.bptt, args.hidden = 40, 4, 8, 16

    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    else:
        text = make_text(60 if args.quick else 1500)
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text], dtype=np.int64)
    print(f"text: {len(text)} characters, {len(chars)} distinct")

    torch.manual_seed(0)
    model = CharLM(len(chars), 32 if not args.quick else 8, args.hidden, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    @torch.compile(backend=args.backend)
    def train_step(x, y, h, c):
        opt.zero_grad()
        logits, (h, c) = model(x, (h, c))
        loss = F.cross_entropy(logits.reshape(-1, len(chars)), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss, h.detach(), c.detach()

    losses, step, t0 = [], 0, time.perf_counter()
    while step < args.steps:
        h = torch.zeros(args.layers, args.batch, args.hidden)
        c = torch.zeros(args.layers, args.batch, args.hidden)
        for x, y in batches(data, args.batch, args.bptt):
            loss, h, c = train_step(torch.tensor(x), torch.tensor(y), h, c)
            losses.append(loss.item())
            step += 1
            if step % max(1, args.steps // 10) == 0 or step == 1:
                print(f"step {step:4d}  loss {losses[-1]:.3f}")
            if step >= args.steps:
                break
    seconds = time.perf_counter() - t0
    print(f"trained {step} steps in {seconds:.1f} s (compiled variants: {len(train_step.history)})")
    text_out = sample(model, chars, text[:10], 80 if not args.quick else 20, temperature=0.8, seed=0)
    print(f"sample: {text_out!r}")
    return {"losses": losses, "loss": losses[-1], "sample": text_out, "chars": chars,
            "variants": len(train_step.history)}


if __name__ == "__main__":
    main()
