"""render_packed splits a loop kernel that computes independent updates (same-size parameters fused by
fuse_elementwise) into them, so that equal ones share one loop nest: a small source, a fast compile."""

import numpy as np

import tracejit
from tracejit import dtypes as D
from tracejit.compiler.backends.cpu.render import render_packed, split_independent
from tracejit.compiler.backends.kernel import LoopArray, LoopKernel, Result, Stmt


def _two_updates(shared_load=False):
    f = D.float32
    loads = [LoopArray(0, (8,), f), LoopArray(1, (8,), f), LoopArray(2, (1,), f)]
    stmts = [Stmt("x", "load", (0,), f), Stmt("y", "load", (0 if shared_load else 1,), f),
             Stmt("lr", "load", (2,), f), Stmt("two", "const", (2.0,), f), Stmt("s", "mul", ("lr", "two"), f),
             Stmt("a", "mul", ("x", "s"), f), Stmt("b", "mul", ("y", "s"), f)]
    results = [Result(LoopArray(0, (8,), f), "a", "store"), Result(LoopArray(1, (8,), f), "b", "store")]
    return LoopKernel((8,), loads, stmts, results)


def test_independent_updates_become_parts_sharing_the_invariants():
    parts = split_independent(_two_updates(), {0: 0})
    assert len(parts) == 2
    (k0, pos0, al0), (k1, pos1, al1) = parts
    assert pos0 == [0, 2, 3] and pos1 == [1, 2, 4]  # (its load, the learning rate, its result) in k's positions
    assert al0 == {0: 0} and al1 == {}
    assert [s.var for s in k0.stmts] == ["x", "lr", "two", "s", "a"]  # the invariant chain is in both parts
    assert [s.var for s in k1.stmts] == ["y", "lr", "two", "s", "b"] and k1.stmts[0].args == (0,)


def test_updates_reading_one_array_stay_one_kernel():
    k = _two_updates(shared_load=True)
    [(same, positions, _)] = split_independent(k, {})
    assert same is k and positions == list(range(5))


def test_packed_source_loops_over_equal_parts():
    src, rows = render_packed([_two_updates()], "kernel", [{}], [False])
    assert "for m0_ in range(2):" in src  # one loop nest for both parts
    assert rows == [(0, 0), (0, 2), (0, 3), (0, 1), (0, 2), (0, 4)]  # each part's rows; the learning rate twice


def test_adam_over_equal_size_parameters_matches_eager():
    def build():
        tracejit.manual_seed(1)
        ps = [tracejit.nn.Parameter(tracejit.randn(37)) for _ in range(4)]
        return ps, tracejit.optim.AdamW(ps, lr=0.01)

    def step_of(ps, opt):
        def step(x):
            opt.zero_grad()
            loss = sum(((p * x) ** 2).sum() for p in ps)
            loss.backward()
            opt.step()
            return loss
        return step

    x = tracejit.tensor(np.linspace(-1, 1, 37).astype(np.float32))
    pe, oe = build()
    pc, oc = build()
    eager, compiled = step_of(pe, oe), tracejit.compile(step_of(pc, oc))
    for _ in range(4):
        np.testing.assert_allclose(compiled(x).item(), eager(x).item(), rtol=1e-5)
    for a, b in zip(pe, pc):
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-5, atol=1e-6)
