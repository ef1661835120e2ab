"""The examples run at tiny sizes and print what they promise: recovered parameters, one compiled variant
under a schedule, IR and a dump, finite losses and an accuracy. Conv examples use the reference backend
here, so that the suite does not pay a cold Numba compile of their kernels."""

import importlib.util
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# kernels compiled here go to the repository's (ignored) cache, as in the compiler tests
os.environ.setdefault("TRACEJIT_CACHE_DIR", os.path.join(ROOT, ".tracejit_cache", "tests"))


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_regression_recovers_w_and_b_with_the_cpu_backend(capsys):
    out = load_example("linear_regression").main(["--quick"])
    assert abs(out["w"] - 2) < 0.1 and abs(out["b"] - 3) < 0.1
    assert out["loss"] < 0.01
    printed = capsys.readouterr().out
    assert "learned w = " in printed and "(true 2)" in printed


def test_lr_schedule_changes_lr_without_recompiling(capsys):
    out = load_example("lr_schedule").main(["--quick", "--backend", "reference"])
    assert out["lrs"] == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    assert out["variants"] == 1
    printed = capsys.readouterr().out
    assert "compiled variants: 1 (the lr changed 2 times" in printed


def test_train_lenet_prints_step_times_and_accuracy(capsys):
    out = load_example("train_lenet").main(["--quick", "--backend", "reference", "--no-progress"])
    assert math.isfinite(out["loss"]) and 0.0 <= out["accuracy"] <= 1.0
    assert out["eager_ms"] > 0 and out["compiled_ms"] > 0
    assert out["variants"] == 1  # drop_last keeps batch shapes fixed: no recompilation
    printed = capsys.readouterr().out
    assert "eager step" in printed and "compiled step" in printed and "test accuracy" in printed


def test_mnist_cnn_trains_with_log_softmax_and_nll_loss(capsys):
    out = load_example("mnist_cnn").main(["--quick", "--backend", "reference", "--no-progress"])
    assert math.isfinite(out["loss"]) and math.isfinite(out["test_loss"])
    assert 0.0 <= out["accuracy"] <= 1.0 and out["variants"] == 1
    assert "accuracy" in capsys.readouterr().out


def test_inspect_ir_prints_traced_and_optimized_ir_and_writes_a_dump(tmp_path, capsys):
    out = load_example("inspect_ir").main(["--backend", "reference", "--dump", str(tmp_path)])
    assert out["traced"].startswith("graph train_step(") and "matmul" in out["traced"]
    assert "fused" in out["final"]  # the pipeline fused something
    assert "nodes by stage:" in out["explain"]
    variant_dir = tmp_path / "train_step.1"
    assert (variant_dir / "00_traced.ir").exists() and (variant_dir / "explain.txt").exists()
    printed = capsys.readouterr().out
    assert "=== traced IR" in printed and f"dump written to {tmp_path}" in printed


def test_train_lenet_runs_as_a_script():
    res = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train_lenet.py"), "--quick", "--backend",
                          "reference", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "test accuracy" in res.stdout


def test_char_lm_trains_a_compiled_lstm_and_prints_a_sample(capsys):
    out = load_example("char_lm").main(["--quick", "--backend", "reference"])
    losses = out["losses"]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # it learns
    assert out["variants"] == 1  # fixed bptt chunks: one compiled variant
    assert len(out["sample"]) == 30 and set(out["sample"]) <= set(out["chars"])
    printed = capsys.readouterr().out
    assert "step   40  loss" in printed and "sample: " in printed
