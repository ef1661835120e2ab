"""A transposed weight made in one segment and multiplied in later ones (the unrolled time steps of a recurrent
layer, in graphs large enough that segments end before each GEMM) reaches those segments' GEMMs as its
C-contiguous original with a transpose flag: no segment copies it on each call, and results equal eager."""

from __future__ import annotations

import numpy as np

import tracejit
from tracejit.compiler.backends.cpu.program import SegmentStep

STEPS = 100  # a few nodes a step: over segment.CUT_AT_GEMMS_NODES


def _rnn(x, w, u):
    ut = u.t()
    h = (x[0] @ w).tanh()
    for t in range(1, STEPS):
        h = (h @ ut + x[t]).tanh()
    return h.sum(), h


def test_transposed_weight_reaches_later_gemms_without_copies():
    rng = np.random.default_rng(0)
    x = tracejit.tensor(rng.standard_normal((STEPS, 3, 16)).astype(np.float32))
    w = tracejit.tensor(rng.standard_normal((16, 16)).astype(np.float32) * 0.3)
    u = tracejit.tensor(rng.standard_normal((16, 16)).astype(np.float32) * 0.3)
    f = tracejit.compile(_rnn, backend="cpu")
    for got, want in zip(f(x, w, u), _rnn(x, w, u)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=2e-6)
    prog = f.history[-1].program
    steps = [s for s, *_ in prog.plan if isinstance(s, SegmentStep)]
    flagged = [s for s in steps if s.transposed]
    assert len(flagged) >= STEPS - 2, [s.label for s in steps]
    for s in flagged:  # the GEMM reads the passed C-contiguous array with the transpose flag
        assert any("gemm_nt(0, 1, " in line and f"in{i}, " in line for line in s.source.splitlines()
                   for i in s.transposed), s.source
