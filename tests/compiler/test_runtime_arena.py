"""The runtime owns memory: the results of a program's native steps live in an arena of buffers allocated once per
variant (and thread) and reused by every call, results with disjoint lifetimes share a buffer, nothing a call
returns or writes back shares memory with the arena, state is updated in its own storage, and profiling a
program changes no state."""

import threading

import numpy as np

import tracejit as tj
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler.runtime import ArenaPlan

from .conftest import LeNet, assert_same_state, make_train_step, snapshot, twin


def _lenet_step():
    tj.manual_seed(0)
    model = LeNet()
    opt = tj.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    @tj.compile(backend="cpu")
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, opt, step


def test_native_step_results_live_in_one_arena_reused_by_every_call():
    model, opt, step = _lenet_step()
    x, y = tj.randn(4, 3, 32, 32), tj.randint(0, 10, (4,))
    for _ in range(3):
        step(x, y)
    prog = step.latest().program
    mem = prog.memory()
    assert mem["arena_values"] >= 4  # conv/pool forward results and their gradients
    assert mem["arena_buffers"] <= mem["arena_values"]  # (LeNet's all live until backward: no sharing here)
    assert mem["arena_bytes"] > 0 and mem["arenas"] == 1  # one arena, back in the pool between calls
    arena = prog._arenas[0]
    buffers = [id(b) for b in arena[-1]]
    step(x, y)
    assert [id(b) for b in prog._arenas[0][-1]] == buffers  # the same buffers, not new ones
    text = str(tj.explain(step, x, y))
    assert "runtime arena:" in text and "allocated once, reused by every call" in text


def test_compiled_steps_with_the_arena_equal_eager():
    (m1, m2) = twin(LeNet)
    o1 = tj.optim.SGD(m1.parameters(), lr=0.05, momentum=0.9)
    o2 = tj.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9)
    eager = make_train_step(m1, o1, F.cross_entropy)
    compiled = tj.compile(make_train_step(m2, o2, F.cross_entropy), backend="cpu")
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = tj.tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
        y = tj.tensor(rng.integers(0, 10, 4))
        le, lc = eager(x, y), compiled(x, y)
        np.testing.assert_allclose(lc.item(), le.item(), rtol=1e-5)
    a, b = snapshot(m1, o1, rng=False), snapshot(m2, o2, rng=False)
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is not None:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_nothing_returned_shares_memory_with_the_arena():
    # the pooled conv output is an arena result; returned through a view (flatten), it must leave as its own
    # array: the next call overwrites the arena
    tj.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3)

    @tj.compile(backend="cpu")
    def features(x):
        return F.max_pool2d(F.relu(conv(x)), 2).flatten(1), F.max_pool2d(F.relu(conv(x)), 2).sum()

    a, b = tj.randn(2, 3, 10, 10), tj.randn(2, 3, 10, 10)
    first, _ = features(a)
    kept = first.numpy().copy()
    second, _ = features(b)
    np.testing.assert_array_equal(first.numpy(), kept)  # untouched by the second call
    assert not np.array_equal(second.numpy(), kept)
    want = F.max_pool2d(F.relu(conv(b)), 2).flatten(1)
    np.testing.assert_allclose(second.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_threads_running_one_program_get_an_arena_each():
    model, opt, step = _lenet_step()
    x, y = tj.randn(4, 3, 32, 32), tj.randint(0, 10, (4,))
    step(x, y)
    step(x, y)
    prog = step.latest().program
    inputs = [b.read((x, y)) for b in step.latest().bindings]
    inputs = prog._unshared(inputs)  # (run it as a pure function: copies of the state it updates in place)
    want = [np.array(o) for o in prog.run([np.array(i) for i in inputs])]
    barrier, results = threading.Barrier(2), [None, None]

    def run(k):
        mine = [np.array(i) for i in inputs]
        barrier.wait()
        for _ in range(5):
            results[k] = [np.array(o) for o in prog.run([np.array(i) for i in mine])]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        for w, g in zip(want, r):
            np.testing.assert_array_equal(w, g)
    assert len(prog._arenas) >= 1


def test_profiling_a_program_changes_no_state():
    model, opt, step = _lenet_step()
    x, y = tj.randn(4, 3, 32, 32), tj.randint(0, 10, (4,))
    step(x, y)
    step(x, y)
    before = snapshot(model, opt)
    v = step.latest()
    v.program.profile([b.read((x, y)) for b in v.bindings], repeat=2)
    assert_same_state(snapshot(model, opt), before)


class _Step:
    def __init__(self, writes_into, aliases=None):
        self.writes_into = writes_into
        if aliases is not None:
            self.aliases = aliases


class _T:
    def __init__(self, n):
        self.numel = n
        self.shape = (n,)
        self.dtype = tj.float32


def test_arena_plan_reuses_buffers_only_after_every_possible_view_is_dead():
    # slots 0: input; step0 writes 1 (arena); step1 (a view step, aliases unknown) makes 2 from 1; step2 writes
    # 3; step3 reads 2 -> 1's buffer stays busy until step3, so 3 cannot take it
    plan = [(_Step(True), [0], [1], []), (_Step(False), [1], [2], []), (_Step(True), [0], [3], []),
            (_Step(False, aliases={0: ()}), [2, 3], [4], [])]
    types = [_T(16)] * 5
    a = ArenaPlan(plan, types, [4], alloc=lambda n: np.empty(n, np.uint8))
    assert a.where[0][0][0] != a.where[2][0][0]  # two buffers
    assert a.escapes == [()]  # the output is declared fresh: no copy
    # with step3 no longer reading the view, 3 reuses 1's buffer
    plan[3] = (_Step(False, aliases={0: ()}), [3], [4], [])
    a = ArenaPlan(plan, types, [4], alloc=lambda n: np.empty(n, np.uint8))
    assert a.where[0][0][0] == a.where[2][0][0] and len(a.sizes) == 1
    # an output that may be a view of an arena result is copied out at the end of the call
    plan[3] = (_Step(False), [1], [4], [])
    a = ArenaPlan(plan, types, [4], alloc=lambda n: np.empty(n, np.uint8))
    assert a.escapes == [(a.where[0][0][0],)]
