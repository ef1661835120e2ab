"""The benchmark harness at tiny sizes: table and JSON with the expected keys, the load measurement, compiled
losses agreeing with eager, the warm-cache probe, and peers skipping cleanly when not installed."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from tracejit.bench import harness, peers
from tracejit.bench.cli import op_list

RESULT_KEYS = {"workload", "mode", "label", "unit", "median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms",
               "pass_medians_ms", "samples_ms", "passes_used", "samples", "reps", "other_load", "other_load_max",
               "first_call_s", "compile_cold_s", "compile_warm_s", "losses", "flags", "speedup"}


def test_loaded_passes_are_left_out_when_a_quiet_one_exists():
    case = harness.Case("linreg", "eager", passes=[[0.010, 0.011], [0.001, 0.002]], loads=[0.9, 0.05])
    summary = harness._summary(case, threshold=0.25)
    assert summary["passes_used"] == [1] and summary["median_ms"] == pytest.approx(1.5)
    assert summary["other_load_max"] == 0.05
    noisy = harness.Case("linreg", "eager", passes=[[0.010], [0.002]], loads=[0.9, None])
    assert harness._summary(noisy, threshold=0.25)["passes_used"] == [0, 1]  # none quiet: all, flagged


def test_other_load_arithmetic():
    before = (10.0, 100.0, 1.0, 0.0)
    assert harness.other_load(before, (11.5, 102.0, 1.5, 1.0)) == pytest.approx(0.5)  # 1 of 2 s was others'
    assert harness.other_load(before, (12.0, 102.0, 3.5, 1.0)) == 0.0  # rounding never goes negative
    assert harness.other_load(before, (10.0, 100.05, 1.0, 0.1)) is None  # too short to measure
    assert harness.other_load(None, before) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat")
def test_measure_load_returns_a_share_in_unit_interval():
    def spin():
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass

    load = harness.measure_load(spin)
    assert load is not None and 0.0 <= load <= 1.0


def test_quick_run_gives_table_and_json_with_expected_keys():
    report = harness.run_benchmarks(["linreg", "ewchain"], ["eager", "reference", "cpu"], passes=1, quick=True,
                                    progress=False, warm_probe=False)
    report = json.loads(json.dumps(report))  # JSON-serializable
    assert {"date", "machine", "settings", "results", "copy_bandwidth_gbs", "floors", "unavailable"} <= set(report)
    rows = {(r["workload"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(w, m) for w in ("linreg", "ewchain") for m in ("eager", "reference", "cpu")}
    for r in rows.values():
        assert "error" not in r, r.get("error")
        assert RESULT_KEYS <= set(r)
        assert r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] and r["samples"] == 3
        assert r["speedup"]["eager"] > 0
        if r["mode"] != "eager":
            assert r["check_vs"] == "eager" and r["check_rel_diff"] < 1e-4  # compiled losses equal eager's
    assert report["floors"]["ewchain"]["bytes"] == 2**12 * 8 and report["copy_bandwidth_gbs"] > 0
    table = harness.format_table(report)
    assert "linreg (20 steps)" in table  # the unit names what one timed call is
    for text in ("ms/unit", "vs tracejit eager", "tracejit cpu", "tracejit reference", "ewchain DRAM floor"):
        assert text in table
    # the BLAS the compiled GEMMs called, and its kernels, are part of the record
    assert report["blas"]["used"].startswith("openblas") and "kernels" in report["blas"]["used"]
    assert report["blas"]["sgemm"] in ("tracejit", "openblas") and report["blas"]["sgemm_why"]
    assert f"tracejit's GEMMs: {report['blas']['summary']}" in table
    assert (report["blas"]["warning"] is None) == (f"! {report['blas']['warning']}" not in table)


def test_cli_quick_json_and_warm_cache_probe(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "tracejit", "bench", "--quick", "--workloads", "linreg",
                          "--modes", "eager,cpu", "--json", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "tracejit cpu" in res.stdout and f"report written to {out}" in res.stdout
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m tracejit bench --quick")
    cpu = next(r for r in report["results"] if r["mode"] == "cpu")
    assert cpu.get("compile_warm_note") is None and cpu["compile_warm_s"] >= 0.0


def test_unknown_mode_is_a_usage_error():
    res = subprocess.run([sys.executable, "-m", "tracejit", "bench", "--modes", "tpu"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "unknown workload or mode tpu" in res.stderr


def test_jax_peer_skips_cleanly_when_jax_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    assert "jax not installed" in peers.availability("jax.jit")
    report = harness.run_benchmarks(["linreg"], ["eager", "jax.jit"], passes=1, quick=True, progress=False,
                                    bandwidth=False)
    jax_row = next(r for r in report["results"] if r["mode"] == "jax.jit")
    assert "jax not installed" in jax_row["skipped"] and "median_ms" not in jax_row
    table = harness.format_table(report)
    assert "jax.jit: skipped (jax not installed" in table and "vs jax.jit" not in table


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_torch_peer_runs_the_same_numbers():
    report = harness.run_benchmarks(["linreg", "convblock"], ["eager", "torch"], passes=1, quick=True,
                                    progress=False, bandwidth=False)
    for r in report["results"]:
        assert "error" not in r, r.get("error")
        if r["mode"] == "torch":
            assert r["check_rel_diff"] < 1e-4  # same initial weights and data, same losses
            assert "vs torch eager" in harness.format_table(report)


def test_plot_writes_a_chart_or_says_what_is_missing(tmp_path):
    report = harness.run_benchmarks(["linreg"], ["eager"], passes=1, quick=True, progress=False, bandwidth=False)
    err = harness.plot(report, str(tmp_path / "chart.png"))
    if importlib.util.find_spec("matplotlib") is None:
        assert "pip install 'tracejit[plot]'" in err
    else:
        assert err is None and (tmp_path / "chart.png").stat().st_size > 0


def test_op_list_is_generated_from_the_op_table():
    import tracejit

    text = op_list()
    assert "| window (" in text and "`conv2d`," in text
    assert "| `sign`, `logical_not`, `eq`," in text  # the ops without a gradient rule have their column
    assert all(f"`{name}`" in text for name in tracejit.OPS)


def test_first_step_section_times_each_case_in_a_fresh_process(tmp_path):
    from tracejit.bench import first_step

    report = first_step.run_first_step(quick=True, backend="reference", root=str(tmp_path),
                                       cases=("fresh install", "warm"), progress=False)
    rows = {r["case"]: r for r in report["rows"]}
    assert list(rows) == ["fresh install", "warm"]
    for r in rows.values():
        assert "error" not in r, r
        assert r["first_s"] > 0 and r["new_batch_s"] > 0 and r["process_s"] >= r["to_first_step_s"] > 0
        assert r["first_compiles"] == 0 and r["steady_ms"] > 0  # the reference backend compiles nothing
    assert "NUMBA_CACHE_DIR" in rows["fresh install"]["caches"]
    table = first_step.format_first_step(report)
    assert "| fresh install |" in table and "| warm |" in table and report["machine"]["cores"] >= 1


def test_unknown_section_is_a_usage_error():
    res = subprocess.run([sys.executable, "-m", "tracejit", "bench", "--sections", "latency"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "unknown section" in res.stderr


def test_first_step_cases_are_numbers_of_the_cases():
    res = subprocess.run([sys.executable, "-m", "tracejit", "bench", "--sections", "first-step",
                          "--first-step-cases", "1,9"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "1 = fresh install" in res.stderr and "5 = warm" in res.stderr
