"""Row kernels whose reductions read row values: a sum or max over no element at all (`s.sum()` of a 0-d loss)
fused with other 0-d arithmetic, and reductions of broadcast row values. These once failed to compile (a
KeyError in the CPU renderer, found by a random differential program) instead of giving eager's numbers."""

from __future__ import annotations

import numpy as np
import pytest

import tracejit as tj


def _close(got, want):
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6, atol=1e-6)


def test_the_sum_of_a_0d_loss_fused_with_other_scalars():
    a = tj.tensor(np.arange(5, dtype=np.float32))
    b = tj.tensor(np.linspace(-1, 1, 5, dtype=np.float32))

    def f(a, b):
        s, t = a.sum(), b.tanh().sum()
        return s * 0.1 + t * 2 + s.sum() * 5 + t.amax()

    cf = tj.compile(f)
    _close(cf(a, b), f(a, b))
    assert cf.latest().backend == "cpu"


def test_a_training_step_whose_loss_is_summed_again_equals_eager():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32)

    def run(compiled):
        tj.manual_seed(0)
        model = tj.nn.Linear(4, 2)
        opt = tj.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = tj.nn.functional.mse_loss(model(x), y) + model.weight.square().sum() * 1e-3
            loss.sum().backward()  # (a 0-d loss summed again, as user code often does)
            opt.step()
            return loss

        fn = tj.compile(step) if compiled else step
        losses = [fn(tj.tensor(x), tj.tensor(y)).item() for _ in range(3)]
        return losses, model.weight.detach().numpy(), model.bias.detach().numpy()

    (le, we, be), (lc, wc, bc) = run(False), run(True)
    np.testing.assert_allclose(lc, le, rtol=1e-6)
    np.testing.assert_allclose(wc, we, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bc, be, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("keepdim", [False, True])
def test_reductions_of_broadcast_row_values(keepdim):
    x = tj.tensor(np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32))

    def f(x):
        m = x.amax(-1, keepdim=True)
        s = x.sum(-1, keepdim=keepdim)
        return ((x - m).exp().sum(-1, keepdim=keepdim), m.expand(4, 6).sum(-1, keepdim=keepdim) + s,
                x.sum(-1, keepdim=True).expand(4, 6).amax(-1, keepdim=keepdim))

    _close(tj.compile(f)(x), f(x))
