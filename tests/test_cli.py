"""`python -m tracejit dump script.py` and `python -m tracejit info`, run as a user would (subprocess)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tracejit
from tracejit.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    import tracejit
    import tracejit.nn as nn
    import tracejit.nn.functional as F

    tracejit.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1)

    @tracejit.compile(backend="reference")
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x = tracejit.randn(6, 4)
    y = tracejit.tensor([0, 1, 0, 1, 1, 0])
    for _ in range(3):
        loss = train_step(x, y)
    print("script args:", sys.argv[1:])
    print("final loss", round(float(loss), 4))
""")


def run_cli(*args, cwd, tmp_path, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEJIT_")}
    env.update(TRACEJIT_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "tracejit", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def test_dump_runs_the_script_and_lists_the_stages(script, tmp_path):
    out = tmp_path / "dump"
    proc = run_cli("dump", "-o", str(out), "--no-svg", str(script), "--epochs", "1", cwd=tmp_path,
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stdout = proc.stdout
    assert "script args: ['--epochs', '1']" in stdout and "final loss" in stdout
    assert f"tracejit dump in {out}" in stdout
    # the first call traces without .grad, the second may retrace with one: one or two variants
    variants = sorted(os.listdir(out))
    assert variants in (["train_step.1"], ["train_step.1", "train_step.2"])
    for v in variants:
        assert f"train_step, variant {v[-1]}: {out / v}" in stdout
        stages = sorted(f[:-3] for f in os.listdir(out / v) if f.endswith(".ir"))
        assert stages[0] == "00_traced" and "01_dce" in stages
        listed = "IR after each stage: " + ", ".join(s + ".ir" for s in stages)
        assert listed in stdout
        assert f"graphs (.dot): {len(stages)}" in stdout
        assert f"explanation: {out / v / 'explain.txt'}" in stdout
        assert all((out / v / f"{s}.dot").exists() for s in stages)
    assert "conv2d" not in (out / "train_step.1" / "00_traced.ir").read_text()
    assert "matmul(" in (out / "train_step.1" / "00_traced.ir").read_text()


def test_dump_default_directory_and_refuses_a_non_empty_one(script, tmp_path, capsys):
    proc = run_cli("dump", "--no-svg", str(script), cwd=tmp_path, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = os.listdir(tmp_path / "tracejit_dump")
    assert len(runs) == 1
    assert "train_step, variant 1" in proc.stdout
    full = tmp_path / "tracejit_dump" / runs[0]
    # refusing happens before the script runs, so this part can run in-process
    assert main(["dump", "-o", str(full), "--no-svg", str(script)]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_dump_of_a_script_that_compiles_nothing(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("print('hello')\n")
    proc = run_cli("dump", "-o", str(tmp_path / "d"), "--no-svg", str(path), cwd=tmp_path, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hello" in proc.stdout and "nothing was compiled" in proc.stdout


def test_info_prints_versions(tmp_path):
    import numba
    import numpy

    proc = run_cli("info", cwd=tmp_path, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert f"tracejit {tracejit.__version__}" in first
    assert f"numpy {numpy.__version__}" in first and f"numba {numba.__version__}" in first
    assert f"python {sys.version.split()[0]}" in first
    assert "backends:" in proc.stdout and "reference" in proc.stdout
    assert "BLAS for compiled GEMMs: openblas" in proc.stdout and "kernels" in proc.stdout
    assert str(tmp_path / "cache") in proc.stdout  # the kernel cache honours TRACEJIT_CACHE_DIR


def _section(out: str, head: str) -> str:
    """The names listed under the namespace heading that starts with `head`."""
    blocks = out.split("\n\n")
    return next(b for b in blocks if b.startswith(head)).split("\n", 1)[1]


def test_info_api_lists_the_supported_pytorch_surface(capsys):
    assert main(["info", "--api"]) == 0
    out = capsys.readouterr().out
    top = _section(out, "torch (").split()
    assert {"tensor", "zeros", "no_grad", "manual_seed", "uint8", "nn", "optim", "compile"} <= set(top)
    assert not {"OPS", "dispatch", "annotations", "ref_kernels", "np"} & set(top)  # internals and imports are not API
    assert "view" in _section(out, "torch.Tensor (").split() and "backward" in _section(out, "torch.Tensor (").split()
    assert "Conv2d" in _section(out, "torch.nn (").split()
    functional = _section(out, "torch.nn.functional (").split()
    assert "cross_entropy" in functional and "Tensor" not in functional and "apply" not in functional
    assert "OneCycleLR" in _section(out, "torch.optim.lr_scheduler (").split()
    assert "DataLoader" in _section(out, "torch.utils.data (").split()
    assert "ToTensor" in _section(out, "torchvision.transforms (").split()
    assert out.rstrip().splitlines()[-1].split()[1:4] == ["names", "in", "17"]


def test_info_api_vs_torch_counts_and_names_what_is_missing(capsys):
    torch = pytest.importorskip("torch")
    assert main(["info", "--api", "--vs-torch"]) == 0
    out = capsys.readouterr().out
    theirs = {n for n in dir(torch.optim) if not n.startswith("_")}
    ours = set(tracejit.optim.__all__) | {"lr_scheduler"}
    head = next(line for line in out.splitlines() if line.startswith("torch.optim:"))
    assert head == (f"torch.optim: {len(ours & theirs)} of the installed torch's {len(theirs)} names "
                    f"({100 * len(ours & theirs) / len(theirs):.0f}%)")
    assert _section(out, "torch.optim:").split("not in tracejit:")[1].split() == sorted(theirs - ours)
    assert "explain" in _section(out, "torch:").split("tracejit's own:")[1].split("not in tracejit:")[0].split()


def test_unknown_command_fails_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2 and "usage:" in capsys.readouterr().err


def _fake_caches(tmp_path, monkeypatch):
    """A TRACEJIT_CACHE_DIR with two generated kernels, a private Numba cache with their machine code and
    two of the package's own kernels', and a file of the user's that must survive --clear."""
    import numba

    from tracejit.compiler.backends import cache

    d, numba_dir = tmp_path / "kernels", tmp_path / "numba"
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(d))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(numba_dir))
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(numba_dir))
    dirs = cache.numba_dirs()
    generated, packages = Path(dirs["generated"]), [Path(p) for p in dirs["package"]]
    # one location per folder of the backends package (backends/, cpu/, cpu/blas/, cpu/window/)
    assert len(packages) >= 4 and all(p.parent == numba_dir for p in packages) and generated not in packages
    package = packages[0]
    d.mkdir()
    generated.mkdir(parents=True)
    package.mkdir(parents=True)
    for key in ("a" * 24, "b" * 24):
        (d / f"k_{key}.py").write_text("x" * 1000)
        (generated / f"k_{key}.kernel-4.py311.nbi").write_bytes(b"i" * 100)
        (generated / f"k_{key}.kernel-4.py311.1.nbc").write_bytes(b"c" * 400_000)
    for name in ("vecmath.exp_f32-79", "calls._blas_gemm-57"):
        (package / f"{name}.py311.nbi").write_bytes(b"i" * 100)
        (package / f"{name}.py311.1.nbc").write_bytes(b"c" * 100_000)
    (d / "notes.txt").write_text("mine")
    return d, generated, package


def cache_numba_dirs():
    from tracejit.compiler.backends import cache

    return cache.numba_dirs()


def test_cache_lists_locations_sizes_and_entries(tmp_path, monkeypatch, capsys):
    d, generated, package = _fake_caches(tmp_path, monkeypatch)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"  generated kernel sources: {d} [TRACEJIT_CACHE_DIR]" in lines
    assert "    2 kernels, 0.0 MB" in lines
    assert f"  Numba machine code, generated kernels: {generated} [NUMBA_CACHE_DIR]" in lines
    assert "    2 functions, 0.8 MB" in lines
    n = len(cache_numba_dirs()["package"])
    assert f"  Numba machine code, tracejit's own kernels: {package.parent} ({n} folders) [NUMBA_CACHE_DIR]" in lines
    assert "    2 functions, 0.2 MB" in lines
    assert main(["cache", "--info"]) == 0 and capsys.readouterr().out == out


def test_cache_clear_removes_generated_kernels_only(tmp_path, monkeypatch, capsys):
    d, generated, package = _fake_caches(tmp_path, monkeypatch)
    assert main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["removed 6 files:", f"      2 from {d}", f"      4 from {generated}"]
    assert "--all" in out
    assert sorted(os.listdir(d)) == ["notes.txt"] and not generated.exists()
    assert len(os.listdir(package)) == 4  # the package's own kernels are kept
    assert main(["cache", "--clear", "--all"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["removed 4 files:", f"      4 from {package}"]
    assert not os.listdir(package) and sorted(os.listdir(d)) == ["notes.txt"]
    assert main(["cache", "--clear"]) == 0
    assert capsys.readouterr().out.startswith("removed 0 files (the caches were empty)")


def test_cache_command_in_a_fresh_process(tmp_path):
    proc = run_cli("cache", cwd=tmp_path, tmp_path=tmp_path, extra_env={"NUMBA_CACHE_DIR": str(tmp_path / "nb")})
    assert proc.returncode == 0, proc.stderr
    assert f"generated kernel sources: {tmp_path / 'cache'} [TRACEJIT_CACHE_DIR]" in proc.stdout
    assert f"Numba machine code, generated kernels: {tmp_path / 'nb' / 'cache_'}" in proc.stdout
    assert f"Numba machine code, tracejit's own kernels: {tmp_path / 'nb'} (5 folders)" in proc.stdout
    assert not (tmp_path / "cache").exists()  # looking creates nothing
