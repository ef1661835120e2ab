"""The IR: text form (print -> parse -> print is the identity), verify(), Graphviz export."""

import math
import re

import numpy as np
import pytest

import tracejit
import tracejit.nn.functional as F
from tracejit import dtypes as D
from tracejit.compiler.backends.reference import run_graph
from tracejit.compiler.ir import (
    FUSED_OPS,
    FusedKind,
    Graph,
    Node,
    Pattern,
    Value,
    VerifyError,
    count_by_kind,
    format_attr,
    fused_label,
    parse_attrs,
    parse_graph,
    parse_type,
    print_graph,
    to_dot,
    verify,
)
from tracejit.ops import Kind, TensorType

from .conftest import MLP, BNDropCNN, batches, make_train_step

HEADER = ("graph step(%x: f32[4,3] {arg: x}, %w: f32[3,2] {state: model.fc.weight}, "
          "%lr: f32[] {state: opt.param_groups[0].lr}, %k: i64[2] {const}) {")
HAND_WRITTEN = HEADER + """
  %h: f32[4,2] = matmul(%x, %w)
  %c: f32[] = full() {shape=(), value=-0.5, dtype=f32}
  %s: f32[4,2], %t: f32[4,1] = fused(%h, %c) {kind='reduce'}
    body reduce_1(%a: f32[4,2], %b: f32[]) {
      %m: f32[4,2] = mul(%a, %b)
      %r: f32[4,1] = sum(%m) {axes=(1,), keepdim=True}
      return %m, %r
    }
  %p: f32[4,4] = pad(%s) {pads=((0, 0), (1, 1)), value=-inf}
  %q: f64[4,4] = cast(%p) {dtype=f64}
  %n: i64[] = full() {shape=(), value=-3, dtype=i64}
  %k2: i64[2] = add(%k, %n)
  %e: f32[4,2] = full() {shape=(4, 2), value=1e-08, dtype=f32}
  %g: f32[3,2] = mul(%w, %lr)
  %w2: f32[3,2] = sub(%w, %g)
  return %q, %t, %e ; model.fc.weight <- %w2, model.fc.weight.grad <- %g, rng <- %k2
}"""


def test_hand_written_ir_round_trips_exactly():
    g = parse_graph(HAND_WRITTEN)
    verify(g)
    assert print_graph(g) == HAND_WRITTEN
    assert str(g) == HAND_WRITTEN
    # and what was parsed is what the text says
    assert [g.input_meta[v.id] for v in g.inputs] == [
        {"arg": "x"}, {"state": "model.fc.weight"}, {"state": "opt.param_groups[0].lr"}, {"const": True}]
    assert [v.type for v in g.inputs] == [TensorType((4, 3), D.float32), TensorType((3, 2), D.float32),
                                          TensorType((), D.float32), TensorType((2,), D.int64)]
    fused = g.nodes[2]
    assert fused.fused_kind is FusedKind.REDUCE and fused.attrs == {"kind": FusedKind.REDUCE}
    assert fused.op.kind.value == "reduce" and len(fused.outputs) == 2
    assert [n.op.name for n in fused.body.nodes] == ["mul", "sum"]
    assert fused.body.nodes[1].attrs == {"axes": (1,), "keepdim": True}
    pad = g.nodes[3]
    assert pad.attrs["pads"] == ((0, 0), (1, 1)) and pad.attrs["value"] == -math.inf
    assert g.nodes[4].attrs == {"dtype": D.float64}
    assert g.nodes[1].attrs["value"] == -0.5 and g.nodes[5].attrs["value"] == -3
    assert g.nodes[7].attrs["value"] == 1e-08
    assert len(g.returns()) == 3
    assert [(m, v.name) for m, v in g.writes()] == [
        ("model.fc.weight", "w2"), ("model.fc.weight.grad", "g"), ("rng", "k2")]


def test_hand_written_ir_runs_on_the_reference_backend():
    g = parse_graph(HAND_WRITTEN)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = np.ones((3, 2), np.float32)
    lr = np.array(0.5, np.float32)
    k = np.array([7, 10], np.int64)
    q, t, e, w2, grad, k2 = run_graph(g, [x, w, lr, k])
    h = x @ w
    s = h * np.float32(-0.5)
    expected_q = np.pad(s, ((0, 0), (1, 1)), constant_values=-np.inf).astype(np.float64)
    assert q.dtype == np.float64 and np.array_equal(q, expected_q)
    assert np.array_equal(t, s.sum(axis=1, keepdims=True))
    assert np.array_equal(w2, w - w * lr) and np.array_equal(grad, w * lr)
    assert k2.dtype == np.int64 and np.array_equal(k2, [4, 7])
    assert e.shape == (4, 2) and np.all(e == np.float32(1e-08))


@pytest.mark.parametrize("value", [
    1, -1, 0, -7, 0.5, -2.5, 1e-08, -1e-08, 1e20, math.inf, -math.inf, True, False, None, "elementwise",
    (), (1,), (-1,), (1, 2), ((0, 0), (1, 2)), (2.5, -0.0), D.float32, D.float64, D.int64, D.bool_, D.uint8,
    (D.float32, D.int64),
])
def test_attribute_values_round_trip(value):
    text = format_attr(value)
    back = parse_attrs(f"v={text}")["v"]
    assert back == value and type(back) is type(value)
    assert format_attr(back) == text


def test_nan_attribute_round_trips():
    back = parse_attrs(f"v={format_attr(math.nan)}")["v"]
    assert isinstance(back, float) and math.isnan(back)


def test_parse_type():
    assert parse_type("f32[64,6,28,28]") == TensorType((64, 6, 28, 28), D.float32)
    assert parse_type("i64[]") == TensorType((), D.int64)
    assert parse_type("bool[3]") == TensorType((3,), D.bool_)
    with pytest.raises(ValueError):
        parse_type("f32(3)")


def test_parse_errors_name_the_line():
    bad_op = HAND_WRITTEN.replace("= matmul(", "= no_such_op(")
    with pytest.raises(ValueError, match=r"line 2: unknown op 'no_such_op'"):
        parse_graph(bad_op)
    undefined = HAND_WRITTEN.replace("matmul(%x, %w)", "matmul(%x, %nope)")
    with pytest.raises(ValueError, match=r"%nope is used before it is defined"):
        parse_graph(undefined)
    with pytest.raises(ValueError, match="missing '}'"):
        parse_graph(HAND_WRITTEN.rsplit("}", 1)[0])


WINDOW_TEXT = """graph f(%x: f32[2,1,6,6], %w: f32[3,1,3,3], %m: f32[2,8]) {
  %p: f32[2,3,2,2], %i: u8[2,3,2,2] = fused(%x, %w) {kind='window', pattern='conv_pool', relu=False, bias=False, \
pool=(2, 2), pool_stride=(2, 2), pool_padding=(0, 0), pool_dilation=(1, 1), ceil_mode=False, stride=(1, 1), \
padding=(0, 0), dilation=(1, 1), groups=1}
    body conv_pool_1(%a: f32[2,1,6,6], %b: f32[3,1,3,3]) {
      %c: f32[2,3,4,4] = conv2d(%a, %b) {stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1}
      %d: f32[2,3,2,2] = max_pool2d(%c) {kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), \
ceil_mode=False}
      %e: u8[2,3,2,2] = max_pool2d_argmax(%c) {kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), \
ceil_mode=False}
      return %d, %e
    }
  %t: f32[8,2] = permute(%m) {dims=(1, 0)}
  %q: f32[2,2] = fused(%m, %t) {kind='contraction', pattern='linear', relu=False}
    body linear_2(%u: f32[2,8], %v: f32[8,2]) {
      %r: f32[2,2] = matmul(%u, %v)
      %s: f32[2,2] = add(%r, %r)
      return %s
    }
  return %p, %i, %q
}"""  # (a backslash ends a line that continues on the next: the text form has one line per node)


def test_fused_kinds_and_patterns_are_typed_and_round_trip():
    g = _assert_round_trip(WINDOW_TEXT)
    conv, _, lin = g.nodes
    assert conv.fused_kind is FusedKind.WINDOW and conv.pattern is Pattern.CONV_POOL
    assert lin.fused_kind is FusedKind.CONTRACTION and lin.pattern is Pattern.LINEAR
    # the node's op kind is the group's: a window or GEMM group is not elementwise
    assert conv.op.kind is Kind.WINDOW and lin.op.kind is Kind.CONTRACTION
    assert fused_label(conv) == "window conv_pool" and g.nodes[1].fused_kind is None and g.nodes[1].pattern is None
    assert count_by_kind(g) == {"fused window": 1, "fused contraction": 1, "movement": 1}


def test_verify_and_the_parser_reject_untyped_or_incomplete_fused_nodes():
    g = parse_graph(WINDOW_TEXT)
    conv = g.nodes[0]
    no_stride = {k: v for k, v in conv.attrs.items() if k != "pool_stride"}
    for attrs, match in [({**conv.attrs, "kind": "window"}, "is not a FusedKind"),
                         (no_stride, r"lacks attrs \['pool_stride'\]"),
                         ({**conv.attrs, "pattern": Pattern.LINEAR}, "needs a Pattern of its kind"),
                         ({"kind": FusedKind.WINDOW}, "needs a Pattern of its kind")]:
        bad = g.replace(nodes=[Node(conv.op, conv.inputs, attrs, conv.outputs, conv.body)] + g.nodes[1:])
        with pytest.raises(VerifyError, match=match):
            verify(bad)
    with pytest.raises(VerifyError, match="is not a FusedKind matching its op"):
        verify(g.replace(nodes=[Node(FUSED_OPS[FusedKind.ELEMENTWISE], conv.inputs, conv.attrs, conv.outputs,
                                     conv.body)] + g.nodes[1:]))
    with pytest.raises(ValueError, match="needs kind= one of"):
        parse_graph(WINDOW_TEXT.replace("kind='window'", "kind='conv'"))
    with pytest.raises(ValueError, match="needs kind= one of"):
        parse_graph(WINDOW_TEXT.replace("pattern='linear'", "pattern='gemm'"))


# --------------------------------------------------------------------------------------- traced graphs


def _lenet_variant(lenet_setup):
    model, opt, step, data = lenet_setup
    cf = tracejit.compile(step, backend="reference")
    for x, y in data[:2]:
        cf(x, y)
    return cf, cf.history[-1], data


def _assert_round_trip(text):
    g = parse_graph(text)
    verify(g)
    assert print_graph(g) == text
    return g


def test_traced_lenet_step_round_trips_at_every_stage(lenet_setup):
    cf, v, _ = _lenet_variant(lenet_setup)
    assert set(v.stages) >= {"traced", "dce", "cse", "simplify", "fuse_elementwise", "fuse_optimizer"}
    for _name, text in v.stages.items():
        _assert_round_trip(text)
    for _name, g in v.stage_graphs:
        _assert_round_trip(print_graph(g))
    assert " fused(" in v.stages["fuse_elementwise"]  # the round trip above covered fused bodies
    assert "    body " in v.stages["fuse_elementwise"]


def test_traced_adam_and_batchnorm_steps_round_trip(mlp_setup):
    model, opt, step, data = mlp_setup
    cf = tracejit.compile(step, backend="reference")
    for x, y in data[:2]:
        cf(x, y)
    tracejit.manual_seed(0)
    cnn = BNDropCNN()
    opt2 = tracejit.optim.SGD(cnn.parameters(), lr=0.1)
    cf2 = tracejit.compile(make_train_step(cnn, opt2, F.cross_entropy), backend="reference")
    for x, y in batches(3, (4, 3, 8, 8), "class", n_classes=3):
        cf2(x, y)
    for f in (cf, cf2):
        for v in f.history:
            for text in v.stages.values():
                _assert_round_trip(text)
    assert "exp_avg_sq" in cf.ir() and "running_var" in cf2.ir() and "uniform(" in cf2.ir("traced")


def test_parsed_graph_computes_what_the_original_computes(lenet_setup):
    cf, v, data = _lenet_variant(lenet_setup)
    arrays = [np.array(b.read(data[2]), copy=True) for b in v.bindings]
    for g in (v.graph, v.traced):
        if len(g.inputs) != len(arrays):
            continue
        want = run_graph(g, arrays)
        got = run_graph(parse_graph(print_graph(g)), arrays)
        assert len(want) == len(got)
        for a, b in zip(want, got):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_printed_form_follows_the_documented_line_shape(lenet_setup):
    cf, v, _ = _lenet_variant(lenet_setup)
    text = v.stages["traced"]
    lines = text.splitlines()
    assert re.match(r"^graph train_step\(%\w+: f32\[4,3,32,32\] \{arg: x\}, %\w+: i64\[4\] \{arg: y\}, ", lines[0])
    assert lines[0].endswith(") {") and lines[-1] == "}"
    assert lines[-2].startswith("  return %") and " ; " in lines[-2]
    conv = [ln for ln in lines if "= conv2d(" in ln][0]
    assert re.match(r"^  %\w+: f32\[4,4,28,28\] = conv2d\(%\w+, %\w+\) \{stride=\(1, 1\), padding=\(0, 0\)", conv)
    for ln in lines[1:-2]:
        assert re.match(r"^  %\w+: \w+\[[\d,]*\](, %\w+: \w+\[[\d,]*\])* = \w+\(.*\)( \{.*\})?$", ln), ln


def test_printing_is_stable_across_independent_traces():
    """Two traces of the same step print the same text (names are positions, not global ids)."""
    tracejit.manual_seed(0)
    model = MLP()
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)
    step = make_train_step(model, opt, F.mse_loss)
    (x, y), = batches(1, (6, 8), (6, 4))
    texts = [print_graph(tracejit.compile(step, backend="reference").compile_variant((x, y)).traced)
             for _ in range(2)]
    assert texts[0] == texts[1]
    assert "%0: f32[6,8] {arg: x}" in texts[0]


# ----------------------------------------------------------------------------------------------- verify


SMALL = """\
graph f(%x: f32[2,3] {arg: x}, %w: f32[3,4] {arg: w}) {
  %a: f32[2,4] = matmul(%x, %w)
  %b: f32[2,4] = relu(%a)
  %c: f32[2,1] = sum(%b) {axes=(1,), keepdim=True}
  return %c
}"""


def test_verify_accepts_a_valid_graph():
    g = parse_graph(SMALL)
    assert verify(g) is g


def test_verify_catches_use_before_definition():
    g = parse_graph(SMALL)
    bad = g.replace(nodes=[g.nodes[1], g.nodes[0], g.nodes[2]])
    with pytest.raises(VerifyError, match=r"node 0 \(relu\) uses %a before its definition"):
        verify(bad)


def test_verify_catches_a_value_used_from_nowhere():
    g = parse_graph(SMALL)
    stray = Value(TensorType((2, 4), D.float32), "stray")
    n = g.nodes[1]
    bad = g.replace(nodes=[g.nodes[0], Node(n.op, (stray,), n.attrs, n.outputs), g.nodes[2]])
    with pytest.raises(VerifyError, match="stray"):
        verify(bad)


def test_verify_catches_double_definition():
    g = parse_graph(SMALL)
    a = g.nodes[0].output
    n = g.nodes[1]
    redefine = Node(n.op, n.inputs, n.attrs, (a,))  # relu writes %a again
    with pytest.raises(VerifyError, match="defined twice"):
        verify(g.replace(nodes=[g.nodes[0], redefine, g.nodes[2]]))
    x = g.inputs[0]
    with pytest.raises(VerifyError, match="defined twice"):
        verify(g.replace(inputs=[x, x]))
    y = Value(TensorType((2, 4), D.float32), "y")  # an input that a node then defines again
    with pytest.raises(VerifyError, match="%y defined twice"):
        verify(g.replace(inputs=g.inputs + [y], nodes=[g.nodes[0], Node(n.op, n.inputs, n.attrs, (y,))]))


def test_double_definition_in_text_is_rejected():
    """SSA in the text form: a second `%a = ...` must not silently shadow the first."""
    text = SMALL.replace("%b: f32[2,4] = relu(%a)", "%a: f32[2,4] = relu(%a)").replace("sum(%b)", "sum(%a)")
    with pytest.raises(ValueError, match="%a"):
        verify(parse_graph(text))


def test_verify_catches_a_type_inconsistent_with_infer():
    bad = SMALL.replace("%a: f32[2,4] = matmul", "%a: f32[2,3] = matmul")
    with pytest.raises(VerifyError, match=r"node 0 \(matmul\) has type f32\[2,3\], its op infers f32\[2,4\]"):
        verify(parse_graph(bad))
    wrong_dtype = SMALL.replace("%b: f32[2,4] = relu", "%b: f64[2,4] = relu")
    with pytest.raises(VerifyError, match="relu"):
        verify(parse_graph(wrong_dtype))


def test_verify_catches_a_wrong_reduction_attribute():
    bad = SMALL.replace("keepdim=True", "keepdim=False")
    with pytest.raises(VerifyError, match="sum"):
        verify(parse_graph(bad))


def test_verify_catches_an_undefined_output():
    g = parse_graph(SMALL)
    ghost = Value(TensorType((2, 1), D.float32), "ghost")
    with pytest.raises(VerifyError, match=r"output %ghost is never defined"):
        verify(g.replace(outputs=[ghost], output_meta=[None]))
    with pytest.raises(VerifyError, match="output metas"):
        verify(g.replace(output_meta=[None, "extra"]))


def test_verify_checks_fused_bodies_against_their_node():
    g = parse_graph(HAND_WRITTEN)
    verify(g)
    bad = HAND_WRITTEN.replace("body reduce_1(%a: f32[4,2], %b: f32[])", "body reduce_1(%a: f32[4,2], %b: f32[1])")
    with pytest.raises(VerifyError, match="body inputs"):
        verify(parse_graph(bad))
    bad_inner = HAND_WRITTEN.replace("%r: f32[4,1] = sum(%m)", "%r: f32[4,2] = sum(%m)")
    with pytest.raises(VerifyError):
        verify(parse_graph(bad_inner))


def test_verify_runs_on_every_real_stage(lenet_setup):
    cf, v, _ = _lenet_variant(lenet_setup)
    for name, g in v.stage_graphs:
        assert verify(g) is g, name


# --------------------------------------------------------------------------------------------- graphviz


def _all_op_names(g: Graph) -> set:
    names = set()
    for n in g.nodes:
        names.add(n.op.name)
        if n.body is not None:
            names |= _all_op_names(n.body)
    return names


def test_to_dot_mentions_every_op_and_draws_fused_nodes_as_clusters(lenet_setup):
    cf, v, _ = _lenet_variant(lenet_setup)
    for name, g in v.stage_graphs:
        dot = to_dot(g)
        assert dot.startswith(f'digraph "{g.name}" {{') and dot.rstrip().endswith("}")
        assert dot.count("{") == dot.count("}")
        for op in _all_op_names(g) - {"fused"}:
            assert f'label="{op}\\n' in dot, (name, op)
        n_fused = sum(1 for n in g.nodes if n.body is not None)
        assert dot.count("subgraph cluster_") == n_fused, name
        assert "model.fc1.weight" in dot  # state inputs and write-backs are labelled
    assert "subgraph cluster_" in to_dot(v.graph)


def test_to_dot_of_hand_written_graph():
    g = parse_graph(HAND_WRITTEN)
    dot = to_dot(g)
    assert dot.count("subgraph cluster_") == 1 and "fused #2" in dot
    for op in ("matmul", "full", "mul", "sum", "pad", "cast", "add", "sub"):
        assert f'label="{op}\\n' in dot
    # one edge per node input (fused: into the cluster), one per graph output
    n_edges = len(re.findall(r"-> (n\d+|n\d+_\d+|out\d+);", dot))
    assert n_edges == sum(len(n.inputs) for n in g.nodes) + len(g.outputs)
    for label in ("model.fc.weight", "model.fc.weight.grad", "rng", "return"):
        assert f'label="{label}"' in dot


def test_program_runs_as_straight_line_code_that_frees_each_value_after_its_last_use():
    from tracejit.compiler.backends.reference import ref_step
    from tracejit.compiler.runtime import Program

    g = parse_graph(HAND_WRITTEN)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = np.ones((3, 2), np.float32)
    lr = np.array(0.5, np.float32)
    k = np.array([7, 10], np.int64)
    prog = Program(g, ref_step)
    got = prog.run([x, w, lr, k])
    for a, b in zip(got, run_graph(g, [x, w, lr, k])):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    src = prog._run.source
    deleted = [name for line in src.splitlines() if line.strip().startswith("del ")
               for name in line.strip()[4:].split(", ")]
    freed = [f"e{i}" for _, _, _, free in prog.plan for i in free]
    assert sorted(deleted) == sorted(freed) and len(set(deleted)) == len(deleted)
    assert not set(deleted) & {f"e{i}" for i in prog.out_slots}  # outputs are returned, never deleted
    assert f"e{len(g.inputs)}" in deleted  # the first intermediate (x @ w) dies before the return


def test_a_call_that_fails_in_its_program_leaves_parameters_and_grads_as_they_were():
    import tracejit.nn as nn

    tracejit.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)

    @tracejit.compile(backend="cpu")
    def step(x):
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        opt.step()
        return loss

    x = tracejit.randn(4, 3)
    step(x)
    step(x)
    v = step.latest()
    before = [p.detach().numpy().copy() for p in model.parameters()]
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    step_fn, ins, outs, free = v.program.plan[-1]

    def failing(args):
        raise RuntimeError("kernel failed")

    v.program.plan[-1] = (failing, ins, outs, free)
    v.program._run = None  # rebuilt from the plan on the next call
    with pytest.raises(RuntimeError, match="kernel failed"):
        step(x)
    for p, b, gr in zip(model.parameters(), before, grads):
        assert np.array_equal(p.detach().numpy(), b) and np.array_equal(p.grad.numpy(), gr)
    v.program.plan[-1] = (step_fn, ins, outs, free)
    v.program._run = None
    step(x)
    assert not np.array_equal(model.weight.detach().numpy(), before[0])
