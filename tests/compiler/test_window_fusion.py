"""fuse_window and memory_plan: conv blocks become one kernel each, backward reads the pooling argmax,
the optimizer updates state in place, and compiled results equal eager."""

import os
import re

os.environ.setdefault("TRACEJIT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", ".tracejit_cache",
                                                         "tests"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tracejit as tj  # noqa: E402
import tracejit.nn as nn  # noqa: E402
import tracejit.nn.functional as F  # noqa: E402
from tracejit.compiler.backends.reference import run_graph  # noqa: E402
from tracejit.compiler.ir import FusedKind, Pattern, parse_graph, verify  # noqa: E402
from tracejit.compiler.passes.fuse_window import fuse_window  # noqa: E402


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def make(seed=0):
    tj.manual_seed(seed)
    model = SmallCNN()
    opt = tj.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return model, opt, step


def data():
    rng = np.random.default_rng(1)
    x = tj.from_numpy(rng.standard_normal((2, 3, 14, 14)).astype(np.float32))
    y = tj.tensor([1, 3])
    return x, y


def compiled_variant(backend):
    model, opt, step = make()
    x, y = data()
    step(x, y)  # creates the momentum buffers (the first call of a compiled step would run eagerly)
    cf = tj.compile(step, backend=backend)
    cf(x, y)
    return cf, model, opt, (x, y)


def test_each_conv_block_is_one_kernel_forward_and_backward():
    cf, *_ = compiled_variant("reference")
    g = cf.latest().graph
    patterns = [n.pattern.value for n in g.nodes if n.pattern is not None]
    # forward: one kernel per conv block (conv+bias+relu+pool+argmax); backward: one kernel per block too
    # (unpool, relu mask, dw, db, and dx for the second block; the first sees the data, which needs none);
    # the classifier's Linear: one GEMM with its bias epilogue
    assert sorted(patterns) == ["conv_pool", "conv_pool", "conv_pool_backward", "conv_pool_backward", "linear"]
    prims = [n.op.name for n in g.nodes if n.body is None]
    assert not {"conv2d", "max_pool2d", "max_pool2d_grad", "conv2d_grad_weight", "conv2d_grad_input"} & set(prims)
    bwd = [n for n in g.nodes if n.pattern is Pattern.CONV_POOL_BACKWARD]
    assert [[v.shape for v in n.outputs] for n in bwd] == [[(2, 4, 6, 6), (6, 4, 3, 3), (6,)],  # conv2: dx, dw, db
                                                           [(4, 3, 3, 3), (4,)]]  # conv1: dw, db
    assert [n.attrs["input_grad"] for n in bwd] == [True, False]
    fwd = next(n for n in g.nodes if n.pattern is Pattern.CONV_POOL)
    assert [o.dtype.name for o in fwd.outputs] == ["float32", "uint8"]  # pooled values + compact argmax
    assert [b.op.name for b in fwd.body.nodes][-2:] == ["max_pool2d", "max_pool2d_argmax"]


def test_fuse_window_preserves_values_exactly_on_the_reference_backend():
    cf, *_ = compiled_variant("reference")
    stages = dict(cf.latest().stage_graphs)
    before = [g for name, g in cf.latest().stage_graphs if name == "dce"][1]  # input of fuse_window
    after = fuse_window(before)
    rng = np.random.default_rng(2)
    inputs = []
    for v in before.inputs:
        if v.dtype.name == "int64":
            inputs.append(rng.integers(0, 5, v.shape))
        else:
            inputs.append(rng.standard_normal(v.shape).astype(v.dtype.np))
    for a, b in zip(run_graph(before, inputs), run_graph(after, inputs)):
        np.testing.assert_array_equal(a, b)
    assert "fuse_window" in stages


def test_reasons_are_recorded_when_a_pool_does_not_match():
    tj.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3)

    def f(x):
        y = F.relu(conv(x))
        return F.max_pool2d(y, 2) + y.sum()  # the activation is also read elsewhere: not fused

    cf = tj.compile(f, backend="reference")
    cf(tj.randn(1, 1, 8, 8))
    notes = [n for name, g in cf.latest().stage_graphs if name == "fuse_window" for n in g.notes]
    assert any("also read" in n for n in notes), notes


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compiled_cnn_steps_equal_eager(backend):
    model, opt, step = make()
    model2, opt2, step2 = make()
    x, y = data()
    cf = tj.compile(step, backend=backend)
    losses = [(cf(x, y).item(), step2(x, y).item()) for _ in range(4)]
    tol = dict(rtol=1e-5, atol=1e-6) if backend == "cpu" else dict(rtol=0, atol=0)
    for a, b in losses:
        np.testing.assert_allclose(a, b, **tol)
    for (name, p), (_, q) in zip(model.named_parameters(), model2.named_parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **tol, err_msg=name)
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), **tol, err_msg=name)
        np.testing.assert_allclose(opt.state[p]["momentum_buffer"].numpy(), opt2.state[q]["momentum_buffer"].numpy(),
                                   **tol, err_msg=name)


def test_memory_plan_updates_optimizer_state_in_place_but_never_a_users_array(monkeypatch):
    from tracejit.compiler.backends.cpu import program as cpu_program

    monkeypatch.setattr(cpu_program, "INPLACE_MIN", 0)  # this model is small: make its update a step of its own
    cf, model, opt, (x, y) = compiled_variant("cpu")
    g = cf.latest().graph
    multi = [n for n in g.nodes if n.fused_kind is FusedKind.MULTI]
    assert len(multi) == 1  # the whole SGD update is one kernel
    pairs = multi[0].attrs["inplace"]
    assert len(pairs) == 2 * len(list(model.parameters()))  # every parameter and momentum buffer
    assert any("memory_plan" in n for n in g.notes)
    w = model.conv1.weight
    cf(x, y)
    first = w._box.value  # now produced by the program itself
    snapshot = w.detach().clone()  # a user's copy: must never change
    before = snapshot.numpy().copy()
    cf(x, y)
    assert w._box.value is first  # updated in place
    np.testing.assert_array_equal(snapshot.numpy(), before)
    assert not np.array_equal(w.detach().numpy(), before)


def test_in_place_update_reads_and_writes_one_buffer_and_copies_arrays_it_cannot_write(monkeypatch):
    from tracejit.compiler.backends.cpu import program as cpu_program

    monkeypatch.setattr(cpu_program, "INPLACE_MIN", 0)
    model, opt, step = make()
    x, y = data()
    step(x, y)  # eager: creates the momentum buffers
    w, b = model.conv1.weight, model.conv1.bias
    held = w._box.value  # the parameter's storage: updated in place from the first call, as torch.optim does
    before = held.copy()
    b._box.value = b._box.value.copy()
    b._box.value.flags.writeable = False  # storage that cannot be written (a read-only mapped checkpoint)
    frozen = b._box.value
    frozen_before = frozen.copy()
    cf = tj.compile(step, backend="cpu")
    cf(x, y)
    assert w._box.value is held and not np.array_equal(held, before)
    np.testing.assert_array_equal(frozen, frozen_before)  # copied, not written
    assert b._box.value is not frozen and not np.array_equal(b._box.value, frozen_before)
    # the update's source writes each in-place result through the variable it reads (no second name for the
    # buffer, which would send LLVM's vectorized loop to its scalar fallback)
    multi = [s for s, *_ in cf.latest().program.plan if getattr(s, "aliased", None)]
    assert len(multi) == 1
    assert len(multi[0].aliased) == 2 * len(list(model.parameters()))
    assert re.search(r"\bo\d+_\d+ = a\d+_\d+\n", multi[0].source)
    # and from the second call on, the program's own arrays are updated in place
    first = w._box.value
    cf(x, y)
    assert w._box.value is first


# ------------------------------------------------------------------------------------------ linear layers
LINEAR_IR = ("graph mlp(%0: f32[8,20] {arg: x}, %1: f32[16,20] {arg: w1}, %2: f32[16] {arg: b1}, "
             "%3: f32[4,16] {arg: w2}, %4: f32[4] {arg: b2}) {" + """
  %5: f32[20,16] = permute(%1) {dims=(1, 0)}
  %6: f32[8,16] = matmul(%0, %5)
  %7: f32[8,16] = add(%6, %2)
  %8: f32[8,16] = relu(%7)
  %9: f32[16,4] = permute(%3) {dims=(1, 0)}
  %10: f32[8,4] = matmul(%8, %9)
  %11: f32[1,4] = reshape(%4) {shape=(1, 4)}
  %12: f32[8,4] = add(%11, %10)
  %13: f32[8,4] = matmul(%8, %9)
  %14: f32[8,4] = mul(%13, %13)
  %15: f32[8,4] = add(%12, %14)
  return %15, %8
}
""")


def test_linear_layers_become_one_gemm_with_a_bias_and_relu_epilogue():
    g = parse_graph(LINEAR_IR.strip())
    out = fuse_window(g)
    verify(out)
    fused = [n for n in out.nodes if n.body is not None]
    assert [(n.pattern, n.attrs["relu"]) for n in fused] == [(Pattern.LINEAR, True), (Pattern.LINEAR, False)]
    first, second = fused
    # the first keeps relu (its pre-activation is read only by relu), the second takes the bias through its view
    # and the operand order add(bias, product); the relu output stays a graph output
    assert [b.op.name for b in first.body.nodes] == ["matmul", "add", "relu"]
    assert [b.op.name for b in second.body.nodes] == ["matmul", "reshape", "add"]
    assert [v.shape for v in second.inputs] == [(8, 16), (16, 4), (4,)]
    # a product read by something other than a bias add is left alone
    assert [n.op.name for n in out.nodes if n.body is None].count("matmul") == 1
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(v.shape).astype(np.float32) for v in g.inputs]
    for a, b in zip(run_graph(g, args), run_graph(out, args)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_linear_fusion_notes_why_not():
    text = """
graph f(%0: f32[8,20] {arg: x}, %1: f32[20,16] {arg: w}, %2: f32[8,16] {arg: b}) {
  %3: f32[8,16] = matmul(%0, %1)
  %4: f32[8,16] = add(%3, %2)
  return %4
}
"""
    out = fuse_window(parse_graph(text.strip()))
    assert all(n.body is None for n in out.nodes)
    assert any("not a bias over the output columns" in note for note in out.notes)


def test_mlp_forward_is_one_node_per_linear_layer_on_cpu():
    tj.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    x = tj.randn(5, 12)
    cf = tj.compile(lambda x: model(x), backend="cpu")
    with tj.no_grad():
        got = cf(x).numpy()
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    g = cf.latest().graph
    assert [(n.pattern, n.attrs.get("relu")) for n in g.nodes if n.body is not None] == \
        [(Pattern.LINEAR, True), (Pattern.LINEAR, False)]


def test_linear_fusion_follows_a_bias_through_several_views():
    text = """
graph f(%0: f32[8,20] {arg: x}, %1: f32[20,4] {arg: w}, %2: f32[4] {arg: b}) {
  %3: f32[8,4] = matmul(%0, %1)
  %4: f32[1,4] = reshape(%2) {shape=(1, 4)}
  %5: f32[8,4] = expand(%4) {shape=(8, 4)}
  %6: f32[8,4] = add(%3, %5)
  return %6
}
"""
    g = parse_graph(text.strip())
    out = fuse_window(g)
    verify(out)
    (node,) = out.nodes
    assert node.pattern is Pattern.LINEAR and [b.op.name for b in node.body.nodes] == [
        "matmul", "reshape", "expand", "add"]
    args = [np.random.default_rng(1).standard_normal(v.shape).astype(np.float32) for v in g.inputs]
    np.testing.assert_allclose(run_graph(out, args)[0], run_graph(g, args)[0], rtol=1e-6, atol=1e-6)
