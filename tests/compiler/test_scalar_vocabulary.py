"""One scalar vocabulary: every elementwise op declares its value once (OpDef.expr, tracejit/scalar.py), every
registered backend that generates code spells every function those declarations use, and the CPU backend's
kernels keep the NaN/inf rules the vocabulary states (against eager, which is PyTorch's behaviour)."""

import os

os.environ.setdefault("TRACEJIT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", ".tracejit_cache",
                                                         "tests"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tracejit as tj  # noqa: E402
from tracejit import dtypes as D  # noqa: E402
from tracejit import scalar as S  # noqa: E402
from tracejit.compiler import backends  # noqa: E402
from tracejit.compiler.backends.cpu.render import render_multi  # noqa: E402
from tracejit.compiler.backends.kernel import LoopArray, LoopKernel, Result, Stmt  # noqa: E402
from tracejit.dispatch import apply  # noqa: E402
from tracejit.ops import OPS, Kind  # noqa: E402

ELEMENTWISE = {name: op for name, op in OPS.items() if op.kind is Kind.ELEMENTWISE}


def test_every_elementwise_op_declares_its_value_in_the_vocabulary():
    for name, op in OPS.items():
        if op.kind is not Kind.ELEMENTWISE:
            assert op.expr is None, name
            continue
        assert isinstance(op.expr, S.Call), f"{name}: expr {op.expr!r} is not a vocabulary expression"
        assert S.functions(op.expr) <= set(S.FUNCTIONS), name
    for fn in S.FUNCTIONS.values():
        assert fn.rule, f"{fn.name} states no rule"
    with pytest.raises(TypeError, match="maximum takes 2 arguments"):
        S.maximum(S.X)


@pytest.mark.parametrize("name", backends.available())
def test_every_registered_backend_spells_every_elementwise_op(name):
    backend = backends.get_backend(name)
    assert hasattr(backend, "scalar_spelling"), f"backend {name} must say how it spells the scalar vocabulary " \
                                                f"(a dict), or None when it interprets ops with their refs"
    table = backend.scalar_spelling
    if table is None:
        return
    lacking = {op_name: sorted(S.missing(table, [op.expr])) for op_name, op in ELEMENTWISE.items()
               if S.missing(table, [op.expr])}
    assert not lacking, f"backend {name} has no spelling for {lacking}"
    assert set(table) <= set(S.FUNCTIONS), f"backend {name} spells unknown functions {set(table) - set(S.FUNCTIONS)}"
    for op_name, op in ELEMENTWISE.items():
        dtype = D.bool_ if op_name == "logical_not" else D.float32
        text = S.spell(op.expr, table, ["a", "b", "c"], S.Ctx(dtype, (dtype,) * 3, {"value": 1.0, "dtype": dtype}))
        assert isinstance(text, str) and text, op_name


def test_the_cpu_backend_renders_the_declared_expression(monkeypatch):
    # the loop text comes from the op table's declaration through the backend's spelling: change the declaration
    # and the kernel changes with it
    def kernel():
        arr = LoopArray(0, (8,), D.float32)
        stmts = [Stmt("v1", "load", (0,), D.float32), Stmt("v2", "relu", ("v1",), D.float32)]
        return render_multi([LoopKernel((8,), [arr], stmts, [Result(LoopArray(0, (8,), D.float32), "v2", "store")])],
                            "kernel")
    assert "v2 = (v1 if not (v1 < Z_f32) else Z_f32)" in kernel()
    monkeypatch.setitem(OPS, "relu", OPS["relu"].__class__(**{**OPS["relu"].__dict__, "expr": S.maximum(S.X, S.X)}))
    assert "v2 = (v1 if (v1 >= v1 or v1 != v1) else v1)" in kernel()


X = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.0, 100.0, 1e-30, -0.25, 0.5, 3.0], np.float32)
Y = np.array([1.0, np.nan, 2.0, -0.0, 0.0, np.inf, np.nan, -1.0, 0.0, 3.0, -0.5, 2.0], np.float32)


def _all_float_ops(a, b):
    f32 = tj.float32
    return (a.log(), a.sqrt(), a.erf(), a.sin(), a.cos(), a.exp(), a.tanh(), a.sigmoid(), -a, a.abs(), a.sign(),
            a.relu(), a.pow(b), a / b, a + b, a - b, a * b, a.maximum(b), a.minimum(b),
            apply(OPS["where"], a > b, a, b), apply(OPS["where"], a != a, b, a),
            (a == b).to(f32), (a != b).to(f32), (a < b).to(f32), (a <= b).to(f32), (a >= b).to(f32),
            a.to(tj.bool).to(f32), (a > b).logical_not().to(f32), a.to(tj.float64).to(f32))


def test_nan_and_inf_rules_of_every_float_elementwise_op_hold_compiled_on_cpu():
    with np.errstate(all="ignore"):
        want = _all_float_ops(tj.from_numpy(X), tj.from_numpy(Y))
        cf = tj.compile(_all_float_ops, backend="cpu")
        got = cf(tj.from_numpy(X), tj.from_numpy(Y))
    assert cf.latest().program.fallbacks == []
    assert {n.op.name for n in cf.latest().graph.nodes} == {"fused"}  # all of it ran as generated loops
    for i, (g, w) in enumerate(zip(got, want)):
        # NaN where eager has NaN, inf where it has inf; transcendental values within vecmath's few ulp
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=2e-6, atol=0, err_msg=f"output {i}")


def test_casts_and_integer_ops_compiled_on_cpu_equal_eager():
    xs = np.array([-7, -1, 0, 1, 5, 2**40], np.int64)
    ys = np.array([3, -1, 0, 2, -5, 7], np.int64)
    fin = np.array([-2.75, -0.5, 0.0, 0.5, 2.75, 1e10], np.float32)

    def fn(a, b, f):
        return (a + b, a - b, a * b, -a, a.abs(), a.sign(), a.relu(), a.maximum(b), a.minimum(b),
                f.to(tj.int64), a.to(tj.float32), a.to(tj.bool), (a == b), apply(OPS["where"], a < b, a, b))

    want = fn(tj.from_numpy(xs), tj.from_numpy(ys), tj.from_numpy(fin))
    cf = tj.compile(fn, backend="cpu")
    got = cf(tj.from_numpy(xs), tj.from_numpy(ys), tj.from_numpy(fin))
    assert cf.latest().program.fallbacks == []
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, i
        np.testing.assert_array_equal(g.numpy(), w.numpy(), err_msg=f"output {i}")


def test_non_finite_constants_compile_on_cpu():
    # a constant's spelling once printed np.float32(-inf): a NameError in the generated module
    def fn(a):
        return (a.maximum(tj.full((4,), float("-inf"))) * 2, a + float("inf"), a.masked_fill(a > 1, float("nan")),
                tj.full((3,), float("-inf")) * 1)

    x = tj.from_numpy(np.arange(4, dtype=np.float32))
    cf = tj.compile(fn, backend="cpu")
    got = cf(x)
    assert cf.latest().program.fallbacks == []
    g = cf.latest().graph
    assert any(n.op.name == "full" for n in g.nodes)  # a full the segment fills itself
    assert any(m.op.name == "full" for n in g.nodes if n.body is not None for m in n.body.nodes)  # one in a loop
    for out, want in zip(got, fn(x)):
        np.testing.assert_array_equal(out.numpy(), want.numpy())
