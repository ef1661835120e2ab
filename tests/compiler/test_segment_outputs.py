"""A fused elementwise node with many outputs (an optimizer's bookkeeping on 0-d tensors: AdamW over the gpt bench's
parameters made one segment function returning 164 values, ~13 CPU s of Numba typing) runs as several segments of
about segment.MAX_OUTPUTS outputs each. The same ops in the same order, but fastmath (contract, reassoc) no longer
spans a cut: results may differ from the single function's in the last bit."""

from __future__ import annotations

import numpy as np

import tracejit
from tracejit.compiler.backends.cpu import segment
from tracejit.compiler.backends.cpu.program import SegmentStep

PARAMS = 8


def _run(monkeypatch, cap):
    monkeypatch.setattr(segment, "MAX_OUTPUTS", cap)
    rng = np.random.default_rng(0)
    ps = [tracejit.tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True) for _ in range(PARAMS)]
    opt = tracejit.optim.AdamW(ps, lr=1e-2)

    def step(x):
        opt.zero_grad()
        loss = sum(((p * x) ** 2).sum() for p in ps)
        loss.backward()
        opt.step()
        return loss

    f = tracejit.compile(step, backend="cpu")
    x = tracejit.tensor(np.float32(0.5))
    losses = [f(x).detach().numpy().copy() for _ in range(3)]
    # (outputs, nodes) of each segment, from its label "segment k (n nodes)"
    outs = [(len(o), int(s.label.split("(")[1].split()[0])) for s, _, o, _ in f.history[-1].program.plan
            if isinstance(s, SegmentStep)]
    state = [v.numpy() for p in ps for v in opt.state[p].values() if isinstance(v, tracejit.Tensor)]
    return losses, [p.detach().numpy() for p in ps], state, outs


def _eager():
    rng = np.random.default_rng(0)
    ps = [tracejit.tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True) for _ in range(PARAMS)]
    opt = tracejit.optim.AdamW(ps, lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        loss = sum(((p * 0.5) ** 2).sum() for p in ps)
        loss.backward()
        opt.step()
    return [p.detach().numpy() for p in ps]


def test_wide_elementwise_node_split_into_capped_segments(monkeypatch):
    big = _run(monkeypatch, 10**9)
    capped = _run(monkeypatch, 8)
    assert max(o for o, _ in big[3]) > 16, big[3]  # one wide segment without the cap
    # the wide node's parts: segments of one node each, at most the cap's outputs
    assert len(capped[3]) > len(big[3]) and max(o for o, k in capped[3] if k == 1) <= 8, (big[3], capped[3])
    for a, b in zip(big[:3], capped[:3]):
        assert len(a) == len(b)
        for u, v in zip(a, b):  # within an ulp or two (fastmath across the cut), see the docstring
            np.testing.assert_allclose(u, v, rtol=3e-7, atol=1e-12)
    for got, want in zip(capped[1], _eager()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
