"""Inspection: cf.ir(stage), tracejit.explain(), dumps (dump= and TRACEJIT_DUMP), history and log."""

import os
import re

import pytest

import tracejit
import tracejit.nn.functional as F
from tracejit.compiler.ir import parse_graph, print_graph, verify

from .conftest import MLP, make_train_step


def compiled_lenet(lenet_setup, **kw):
    model, opt, step, data = lenet_setup
    cf = tracejit.compile(step, backend="reference", **kw)
    for x, y in data[:2]:
        cf(x, y)
    return cf, data


def test_ir_before_compiling_says_to_call_first():
    cf = tracejit.compile(lambda x: x + 1.0, backend="reference")
    with pytest.raises(RuntimeError, match="has not been compiled yet"):
        cf.ir()


def test_ir_shows_the_whole_training_step(lenet_setup):
    cf, _ = compiled_lenet(lenet_setup)
    traced = cf.ir("traced")
    for op in ("conv2d(", "max_pool2d(", "matmul(", "relu(", "conv2d_grad_input(", "conv2d_grad_weight(",
               "max_pool2d_grad(", "amax(", "exp(", "log(", "gather("):
        assert op in traced, op
    # state is lifted to inputs with readable names and written back after ';'
    assert "{state: model.fc1.weight}" in traced
    assert "{state: opt.state[model.fc1.weight].momentum_buffer}" in traced
    assert "{state: opt.param_groups[0].lr}" in traced
    ret = [ln for ln in traced.splitlines() if ln.strip().startswith("return ")][0]
    for name in ("model.fc1.weight <-", "model.conv1.weight.grad <-",
                 "opt.state[model.fc2.bias].momentum_buffer <-"):
        assert name in ret, name
    final = cf.ir()
    assert final == cf.ir("final") == print_graph(cf.history[-1].graph)
    assert "conv2d(" in final and "matmul(" in final and "fc1.weight <-" in final
    assert " fused(" in final and " fused(" not in traced
    verify(parse_graph(final))


def test_ir_by_stage_name(lenet_setup):
    cf, _ = compiled_lenet(lenet_setup)
    v = cf.history[-1]
    assert list(v.stages)[0] == "traced"
    for name in v.stages:
        assert cf.ir(name) == v.stages[name]
    with pytest.raises(KeyError, match="no stage 'nope'"):
        cf.ir("nope")
    n_traced = len(parse_graph(cf.ir("traced")).nodes)
    n_final = len(parse_graph(cf.ir()).nodes)
    assert n_final < n_traced


def test_custom_pass_list_and_no_passes(lenet_setup):
    cf, _ = compiled_lenet(lenet_setup, passes=[])
    assert list(cf.history[-1].stages) == ["traced"]
    assert cf.ir() == cf.ir("traced")


def test_history_and_log_record_why_each_variant_exists(lenet_setup):
    cf, data = compiled_lenet(lenet_setup)
    assert cf.eager_calls == 1 and len(cf.history) == 1
    v = cf.history[0]
    assert v.number == 1 and v.reason == "first call" and v.backend == "reference"
    assert "momentum_buffer" in cf.log[0] and "eagerly" in cf.log[0]
    assert cf.log[-1] == "compiled variant 1: first call"
    assert set(v.timings) >= {"trace", "passes", "backend"} and all(t >= 0 for t in v.timings.values())
    assert v.program is not None and v.traced is v.stage_graphs[0][1]
    assert cf.variants[v.key] == [v]


def test_explain_reports_guards_io_node_counts_and_time(lenet_setup):
    cf, data = compiled_lenet(lenet_setup)
    e = tracejit.explain(cf, *data[2])
    text = str(e)
    assert e.variant is cf.history[-1] and len(cf.history) == 1  # reused, not recompiled
    assert text.startswith("train_step — variant 1 (backend reference); compiled because: first call")
    assert "guards:" in text
    assert "argument x: f32[4, 3, 32, 32]" in text and "argument y: i64[4]" in text
    assert "grad mode: enabled" in text
    assert "5 modules in train mode" in text  # LeNet + 2 convs + 2 linears
    assert "optimizer settings of SGD" in text
    assert "inputs: 2 arguments, 17 captured state, 0 constants" in text
    assert "state model.fc1.weight" in text and "state opt.param_groups[0].lr" in text
    assert "outputs: 1 returned, 24 state write-backs" in text
    assert "writes model.conv2.weight.grad" in text
    assert "nodes by stage:" in text
    for stage, g in cf.history[-1].stage_graphs:
        assert re.search(rf"^  {stage}\s+{len(g.nodes)} nodes  \(", text, re.M), stage
    traced_line = re.search(r"^  traced\s+\d+ nodes  \((.*)\)$", text, re.M).group(1)
    assert "window" in traced_line and "contraction 6" in traced_line
    assert re.search(r"^time: trace [\d.]+ ms, .*; total [\d.]+ ms$", text, re.M)
    assert repr(e) == text


def test_explain_compiles_without_running(mlp_setup):
    model, opt, step, data = mlp_setup
    tracejit.manual_seed(0)
    plain = MLP()
    sgd = tracejit.optim.SGD(plain.parameters(), lr=0.1)
    fn = make_train_step(plain, sgd, F.mse_loss)
    e = tracejit.explain(fn, *data[0])  # a plain function: compiled on the fly
    assert "variant 1" in str(e) and e.variant is not None
    assert all(p.grad is None for p in plain.parameters())  # explained, not run
    # which float32 GEMM the step's matmuls call, and why
    from tracejit.compiler.backends.cpu.blas.calls import sgemm_choice, sgemm_description

    assert f"float32 GEMMs: {sgemm_description()}" in str(e)
    assert sgemm_choice()[1] in sgemm_description()
    # a step whose call would create optimizer state runs eagerly: explain says so instead
    cf = tracejit.compile(step, backend="reference")
    e2 = tracejit.explain(cf, *data[0])
    assert e2.variant is None and "runs eagerly" in str(e2) and "exp_avg" in str(e2)
    assert len(opt.state) == 0


def test_explain_lists_constants_and_no_grad():
    cf = tracejit.compile(lambda x: x * tracejit.tensor([1.0, 2.0, 3.0]), backend="reference")
    with tracejit.no_grad():
        text = str(tracejit.explain(cf, tracejit.ones(3)))
    assert "inputs: 1 arguments, 0 captured state, 1 constants" in text
    assert "grad mode: disabled" in text
    assert "outputs: 1 returned, 0 state write-backs" in text


def _expected_stage_files(cf):
    v = cf.history[-1]
    names = ["00_traced"] + [f"{i:02d}_{name}" for i, (name, _) in enumerate(v.stage_graphs[1:], start=1)]
    return names


def test_dump_argument_writes_numbered_ir_and_dot_per_stage_and_explain(lenet_setup, tmp_path):
    cf, _ = compiled_lenet(lenet_setup, dump=str(tmp_path))
    d = tmp_path / "train_step.1"
    assert sorted(os.listdir(tmp_path)) == ["train_step.1"]
    assert cf.history[-1].dump_dir == str(d)
    stages = _expected_stage_files(cf)
    assert stages[:4] == ["00_traced", "01_dce", "02_cse", "03_simplify"]
    files = set(os.listdir(d))
    for s in stages:
        assert f"{s}.ir" in files and f"{s}.dot" in files, s
    assert "explain.txt" in files
    # each .ir holds that stage's graph (plus '#' notes), parseable and equal to the in-memory stage
    for s, (_name, g) in zip(stages, cf.history[-1].stage_graphs):
        text = (d / f"{s}.ir").read_text()
        assert text.startswith(print_graph(g) + "\n"), s
        assert print_graph(parse_graph(text)) == print_graph(g)
        assert (d / f"{s}.dot").read_text().startswith('digraph "train_step"')
    explain = (d / "explain.txt").read_text()
    assert "guards:" in explain and "nodes by stage:" in explain and "variant 1" in explain


def test_dump_env_var_and_one_directory_per_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEJIT_DUMP", str(tmp_path))
    cf = tracejit.compile(lambda x: (x * 2.0).exp(), backend="reference")
    cf.__name__ = "double_exp"
    cf(tracejit.ones(2))
    cf(tracejit.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["double_exp.1", "double_exp.2"]
    for v in ("double_exp.1", "double_exp.2"):
        assert (tmp_path / v / "00_traced.ir").exists() and (tmp_path / v / "explain.txt").exists()
    assert "f32[3]" in (tmp_path / "double_exp.2" / "00_traced.ir").read_text()
    assert "changed from f32[2] to f32[3]" in (tmp_path / "double_exp.2" / "explain.txt").read_text()


def test_no_dump_without_request(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACEJIT_DUMP", raising=False)
    monkeypatch.chdir(tmp_path)
    cf = tracejit.compile(lambda x: x + 1.0, backend="reference")
    cf(tracejit.ones(2))
    assert os.listdir(tmp_path) == []
    assert getattr(cf.history[-1], "dump_dir", None) is None
