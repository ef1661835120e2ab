"""The fusion passes ask the compile target which window/GEMM patterns it runs natively (`supports`): the CPU
backend states its kernels' limits (cpu/capabilities.py), the reference backend runs every pattern through its
body, and a pattern a backend refuses stays unfused with the backend's reason in the dump -- and the program still
computes the same result."""

import glob
import os

os.environ.setdefault("TRACEJIT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", ".tracejit_cache",
                                                         "tests"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tracejit as tj  # noqa: E402
import tracejit.nn as nn  # noqa: E402
import tracejit.nn.functional as F  # noqa: E402
from tracejit import dtypes as D  # noqa: E402
from tracejit.compiler.backends import cpu, get_backend  # noqa: E402
from tracejit.compiler.backends.cpu import capabilities  # noqa: E402
from tracejit.compiler.backends.reference import run_graph  # noqa: E402
from tracejit.compiler.ir import Pattern, parse_graph  # noqa: E402
from tracejit.compiler.passes import PIPELINE, context, run_pipeline  # noqa: E402

from .test_window_fusion import data, make  # noqa: E402

LENET_POOL = {"relu": True, "bias": True, "pool": (2, 2), "pool_stride": (2, 2), "pool_padding": (0, 0),
              "pool_dilation": (1, 1), "ceil_mode": False, "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
              "groups": 1, "dtype": D.float32}


def test_the_cpu_backend_states_its_kernels_limits():
    ok = capabilities.supports
    assert ok(Pattern.CONV_POOL, LENET_POOL) is True
    assert ok(Pattern.CONV_POOL, {**LENET_POOL, "dtype": D.float64}) is True
    assert "square" in ok(Pattern.CONV_POOL, {**LENET_POOL, "pool": (2, 1)})
    assert "square" in ok(Pattern.UNPOOL, {**LENET_POOL, "pool_stride": (2, 1)})
    assert "up to 15x15" in ok(Pattern.CONV_POOL_BACKWARD, {**LENET_POOL, "pool": (16, 16), "pool_stride": (16, 16)})
    assert "padding" in ok(Pattern.CONV_POOL, {**LENET_POOL, "pool_padding": (1, 1)})
    assert "ceil_mode" in ok(Pattern.CONV_POOL, {**LENET_POOL, "ceil_mode": True})
    assert "float16" in ok(Pattern.CONV_POOL, {**LENET_POOL, "dtype": D.float16})
    assert ok(Pattern.LINEAR, {"relu": True, "dtype": D.float32}) is True
    assert "int64" in ok(Pattern.LINEAR, {"relu": False, "dtype": D.int64})
    assert all(get_backend("reference").supports(p, {}) is True for p in Pattern)
    assert get_backend("cpu").supports(Pattern.CONV_POOL, {**LENET_POOL, "pool": (2, 1)}) == \
        ok(Pattern.CONV_POOL, {**LENET_POOL, "pool": (2, 1)})  # what the compile target answers


def test_run_pipeline_sets_the_target_only_while_the_passes_run():
    seen = []

    def probe(g):
        seen.append(context.target())
        return g

    graph = parse_graph("graph f(%x: f32[2]) {\n  %y: f32[2] = exp(%x)\n  return %y\n}")
    ref = get_backend("reference")
    run_pipeline(graph, [probe], target=ref)
    run_pipeline(graph, [probe])
    assert seen == [ref, None] and context.target() is None


def _pools(g):
    return [n for n in g.nodes if n.pattern in (Pattern.CONV_POOL, Pattern.UNPOOL, Pattern.CONV_POOL_BACKWARD)]


def test_a_backend_that_refuses_a_pattern_gets_it_unfused_with_the_reason_in_the_dump(monkeypatch, tmp_path):
    def supports(pattern, attrs):
        return "this test has no conv+pool kernel" if pattern is Pattern.CONV_POOL else True

    monkeypatch.setattr(get_backend("reference"), "supports", supports)
    model, opt, step = make()
    model2, opt2, step2 = make()
    x, y = data()
    step(x, y), step2(x, y)  # the first call creates the momentum buffers (runs eagerly when compiled)
    cf = tj.compile(step, backend="reference", dump=str(tmp_path))
    for _ in range(3):
        assert cf(x, y).item() == step2(x, y).item()  # the reference backend is exact
    for p, q in zip(model.parameters(), model2.parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())
    g = cf.latest().graph
    assert not _pools(g)  # refused: conv, relu and pool stay separate ops (and their backward with them)
    assert {"conv2d", "max_pool2d", "max_pool2d_grad"} <= {n.op.name for n in g.nodes if n.body is None}
    # what it accepts is still fused: the classifier's GEMM, each conv's weight+bias gradient
    assert sorted(n.pattern.value for n in g.nodes if n.pattern is not None) == [
        "grad_weight_bias", "grad_weight_bias", "linear"]
    reason = "the reference backend does not run conv_pool natively: this test has no conv+pool kernel"
    notes = [n for name, sg in cf.latest().stage_graphs if name == "fuse_window" for n in sg.notes]
    assert sum(reason in n for n in notes) == 2, notes  # one per conv block
    (dumped,) = glob.glob(str(tmp_path / "*" / "*_fuse_window.ir"))
    assert reason in open(dumped).read()


class PoolNet(nn.Module):
    def __init__(self, features, **pool):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(features, 4)
        self.pool = pool

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), **self.pool).flatten(1))


def _pool_step(features=27, **pool):
    tj.manual_seed(0)
    model = PoolNet(features, **pool)

    def step(x):
        model.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        return loss, model.conv.weight.grad, model.conv.bias.grad
    return step


# x [2, 2, 7, 8] -> conv [2, 3, 5, 6] -> pool [2, 3, 3, 3] (padded) or [2, 3, 2, 2] (non-square)
@pytest.mark.parametrize("pool", [dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=(2, 3), stride=(2, 2), features=12)], ids=["padded", "non-square"])
def test_the_cpu_target_leaves_pools_its_kernels_lack_unfused_and_the_reference_target_fuses_them(pool):
    x = tj.from_numpy(np.random.default_rng(3).standard_normal((2, 2, 7, 8)).astype(np.float32))
    want = [t.detach().numpy() for t in _pool_step(**pool)(x)]
    on_cpu = tj.compile(_pool_step(**pool), backend="cpu")
    got = [t.detach().numpy() for t in on_cpu(x)]
    assert not _pools(on_cpu.latest().graph) and on_cpu.latest().program.fallbacks == []
    notes = [n for name, sg in on_cpu.latest().stage_graphs if name == "fuse_window" for n in sg.notes]
    assert any("the cpu backend does not run conv_pool natively: its kernels" in n for n in notes), notes
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    on_ref = tj.compile(_pool_step(**pool), backend="reference")
    got = [t.detach().numpy() for t in on_ref(x)]
    assert [n.pattern for n in _pools(on_ref.latest().graph)] == [Pattern.CONV_POOL, Pattern.CONV_POOL_BACKWARD]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # fused through argmax, still exact


def test_a_pattern_formed_without_a_target_runs_on_cpu_through_its_body():
    x = np.random.default_rng(4).standard_normal((2, 2, 7, 8)).astype(np.float32)
    cf = tj.compile(_pool_step(kernel_size=3, stride=2, padding=1), backend="reference")
    cf(tj.from_numpy(x))
    traced = cf.latest().traced
    h = run_pipeline(traced, PIPELINE)  # no target: every structural match is fused
    assert [n.pattern for n in _pools(h)] == [Pattern.CONV_POOL, Pattern.CONV_POOL_BACKWARD]
    prog = cpu.compile_graph(h)
    assert any("no native kernel for pattern conv_pool (its kernels pool without padding" in f
               for f in prog.fallbacks), prog.fallbacks
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal(v.shape).astype(v.dtype.np) for v in traced.inputs]
    by_id = {v.id: a for v, a in zip(traced.inputs, inputs)}
    for g, w in zip(prog.run([by_id[v.id] for v in h.inputs]), run_graph(traced, inputs)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)  # float32 sums of O(100) values, other orders
