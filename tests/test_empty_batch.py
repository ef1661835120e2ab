"""A batch of 0 samples through a conv net (conv2d, relu, max_pool2d, linear, cross_entropy), eager and
compiled, against PyTorch: the mean loss is NaN (0/0), gradients are zero, parameters move only as the
optimizer moves them on zero gradients (they do not), and nothing raises or warns."""

import warnings

import numpy as np
import pytest

import tracejit as tj

torch = pytest.importorskip("torch")


def _train(T, batch, steps=2, compiled=False, reduction="mean"):
    nn = T.nn
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    grad_off = torch.no_grad() if T is torch else tj.no_grad()
    with grad_off:
        for i, p in enumerate(model.parameters()):
            p.copy_(T.tensor(np.random.default_rng(i).standard_normal(tuple(p.shape)).astype(np.float32)))
    opt = T.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = T.tensor(np.random.default_rng(9).standard_normal((batch, 1, 8, 8)).astype(np.float32))
    y = T.tensor(np.arange(batch) % 3)

    def step(x, y):
        opt.zero_grad()
        loss = T.nn.functional.cross_entropy(model(x), y, reduction=reduction)
        (loss.sum() if reduction == "none" else loss).backward()
        opt.step()
        return loss

    fn = tj.compile(step) if compiled else step
    losses = [fn(x, y).detach().numpy().copy() for _ in range(steps)]
    return losses, [p.detach().numpy().copy() for p in model.parameters()], \
        [p.grad.numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_matches_pytorch(compiled, reduction):
    expect = _train(torch, 0, reduction=reduction)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy "invalid value encountered in divide"
        got = _train(tj, 0, compiled=compiled, reduction=reduction)
    for e, g in zip(expect[0], got[0]):
        assert e.shape == g.shape
        np.testing.assert_array_equal(g, e)  # mean: NaN, sum: 0, none: empty
    for e, g in zip(expect[1] + expect[2], got[1] + got[2]):
        np.testing.assert_allclose(g, e, atol=1e-6)


def test_nonempty_batch_still_matches():  # the same net as a sanity check of the comparison itself
    expect, got = _train(torch, 4), _train(tj, 4, compiled=True)
    np.testing.assert_allclose(got[0], expect[0], rtol=1e-5)
    for e, g in zip(expect[1], got[1]):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
