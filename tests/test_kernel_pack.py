"""Kernel packs (compiler/backends/cpu/kernel_pack.py): the package's kernels prebuilt per ISA, merged into Numba's
cache on a miss, only where they fit."""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest

from tracejit.compiler.backends import numba_cache
from tracejit.compiler.backends.cpu import kernel_pack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh process with empty caches: the warmup's tiny conv net, one eager step (eager kernels loaded first, as a
# script's eager steps do), then two compiled steps on the CPU backend against the same on the reference backend.
SCRIPT = r"""
import json, os, sys
import numpy as np
import tracejit as tj
import tracejit.nn as nn
from llvmlite import binding as llvm
from tracejit.compiler.backends.cpu import kernel_pack
from tracejit.warmup import tiny_convnet

def setup():
    tj.manual_seed(0)
    net = tiny_convnet()
    opt = tj.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    def step(x, y):
        opt.zero_grad()
        loss = crit(net(x), y)
        loss.backward()
        opt.step()
        return loss
    return net, step

rng = np.random.default_rng(1)
x = tj.from_numpy(rng.standard_normal((5, 3, 32, 32)).astype(np.float32))
y = tj.from_numpy(rng.integers(0, 10, 5).astype(np.int64))
results = {}
for backend in ("cpu", "reference"):
    net, step = setup()
    step(x, y)  # eager
    fn = tj.compile(step, backend=backend, tiered=False)
    losses = [float(fn(x, y).item()) for _ in range(2)]
    results[backend] = (losses, [p.detach().numpy().tolist() for p in net.parameters()])
pack, notes = kernel_pack.choose()
host = {k for k, v in llvm.get_host_cpu_features().items() if v}
print("RESULT " + json.dumps({"pack": pack.target if pack else None, "notes": notes,
                              "fits": [t for t, f in kernel_pack.TARGETS.items() if set(f) <= host],
                              "results": results}))
"""


def _run(tmp_path, name, **env_more):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEJIT_", "NUMBA_CACHE_DIR"))}
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba"), TRACEJIT_CACHE_DIR=str(tmp_path / "kernels"),
               TRACEJIT_EAGER_KERNELS="sync", PYTHONPATH=ROOT)
    env.update(env_more)
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name}: {r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.split(" ", 1)[1]), r.stderr


def _compiled_here(numba_dir) -> list:
    """Data files Numba wrote for the package's own functions in this cache (a merged pack entry is named
    .pack-<hash>.nbc; a function compiled here gets Numba's numbered name)."""
    out = []
    for sub in os.listdir(numba_dir):
        if sub.startswith("kernels_"):  # the generated kernels' folder (TRACEJIT_CACHE_DIR=.../kernels)
            continue
        out += [f"{sub}/{n}" for n in os.listdir(os.path.join(numba_dir, sub))
                if n.endswith(".nbc") and ".pack-" not in n]
    return out


def _expected(fits):
    return "x86-64-v4" if "x86-64-v4" in fits else "x86-64-v3" if "x86-64-v3" in fits else None


def _check_equal(results):
    import numpy as np

    (l_cpu, p_cpu), (l_ref, p_ref) = results["cpu"], results["reference"]
    np.testing.assert_allclose(l_cpu, l_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(p_cpu, p_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def _skip_unless_x86():
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("kernel packs are built for x86-64")


def test_fresh_process_takes_the_package_kernels_from_the_pack(tmp_path):
    """Empty caches: the fitting pack serves every package kernel (none compiled here), results equal the reference
    backend's; a later process with packs off finds them in its own cache."""
    _skip_unless_x86()
    out, err = _run(tmp_path, "with pack")
    assert out["pack"] == _expected(out["fits"]), out["notes"]
    _check_equal(out["results"])
    if out["pack"] is not None:
        assert _compiled_here(str(tmp_path / "numba")) == [], err[-2000:]
        merged = [n for _, _, names in os.walk(tmp_path / "numba") for n in names if ".pack-" in n]
        assert len(merged) >= 10 and all(re.search(r"\.pack-[0-9a-f]{16}\.nbc$", n) for n in merged)
        shutil.rmtree(tmp_path / "kernels")
        out2, _ = _run(tmp_path, "packs off, cache warm", TRACEJIT_KERNEL_PACK="0")
        assert out2["pack"] is None and out2["results"] == out["results"]
        assert _compiled_here(str(tmp_path / "numba")) == []


def test_avx2_machine_takes_the_v3_pack(tmp_path):
    """As on a Zen 3 (tests/isa: LLVM sees no AVX-512): the x86-64-v3 pack, its 8-wide kernels run and agree."""
    _skip_unless_x86()
    isa = os.path.join(ROOT, "tests", "isa")
    out, err = _run(tmp_path, "avx2", TRACEJIT_FAKE_ISA="avx2", PYTHONPATH=isa + os.pathsep + ROOT)
    assert "x86-64-v4" not in out["fits"]
    assert out["pack"] == _expected(out["fits"]), out["notes"]
    _check_equal(out["results"])
    if out["pack"] is not None:
        assert _compiled_here(str(tmp_path / "numba")) == [], err[-2000:]


def test_committed_packs_match_the_sources():
    """Every committed pack was built from these sources (else it is ignored and a fresh install compiles)."""
    packs = {}
    for name in sorted(os.listdir(kernel_pack.PACK_DIR)):
        if name.endswith(".json"):
            p = kernel_pack.Pack(os.path.join(kernel_pack.PACK_DIR, name))
            packs[p.target] = p
    assert sorted(packs) == sorted(kernel_pack.TARGETS)
    for target, p in packs.items():
        assert p.manifest["fingerprint"] == numba_cache.kernel_fingerprint(), (
            f"the {target} kernel pack is stale (compiler/backends changed since it was built): run "
            f"`{kernel_pack.BUILD_COMMAND}` and commit compiler/backends/cpu/packs/")
        assert p.manifest["features"] == list(kernel_pack.TARGETS[target])
        assert p.manifest["magic"][1:] == [target, kernel_pack.features_string(target)]
        assert p.manifest["avx512"] == ("avx512f" in kernel_pack.TARGETS[target])
        files = p.files()  # (checks the archive's sha256)
        assert len([n for n in files if n.endswith(".nbi")]) == p.manifest["functions"] >= 20
        assert all(n.startswith("tracejit/compiler/backends/") for n in files)


def _fake_pack(tmp_path, **changes):
    src = os.path.join(kernel_pack.PACK_DIR, "x86-64-v3.json")
    with open(src) as f:
        m = json.load(f)
    m.update(changes)
    with open(tmp_path / "x86-64-v3.json", "w") as f:
        json.dump(m, f)
    shutil.copy(src[: -len(".json")] + ".tar.gz", tmp_path / "x86-64-v3.tar.gz")
    return kernel_pack.Pack(str(tmp_path / "x86-64-v3.json"))


def test_a_pack_that_does_not_fit_says_why(tmp_path):
    fp = numba_cache.kernel_fingerprint()
    v3 = kernel_pack.features_string("x86-64-v3")
    host = ("x86_64-unknown-linux-gnu", "znver3", v3 + ",-avx512f")
    assert _fake_pack(tmp_path, fingerprint=fp).unfit(host, False, fp) is None
    assert "other sources" in _fake_pack(tmp_path, fingerprint="0" * 16).unfit(host, False, fp)
    assert "numba 0.1" in _fake_pack(tmp_path, fingerprint=fp, numba="0.1").unfit(host, False, fp)
    assert "python" in _fake_pack(tmp_path, fingerprint=fp, python="cpython 2.7").unfit(host, False, fp)
    no_fma = host[:2] + (v3.replace("+fma", "-fma"),)
    assert "lacks: fma" in _fake_pack(tmp_path, fingerprint=fp).unfit(no_fma, False, fp)
    assert "AVX2" in _fake_pack(tmp_path, fingerprint=fp).unfit(host, True, fp)  # 16-wide kernels expected here
    assert "aarch64" in _fake_pack(tmp_path, fingerprint=fp).unfit(("aarch64-unknown-linux-gnu",) + host[1:],
                                                                   False, fp)


def test_a_damaged_pack_is_refused(tmp_path):
    p = _fake_pack(tmp_path, fingerprint=numba_cache.kernel_fingerprint())
    with open(p.archive, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(OSError, match="checksum"):
        p.files()


def test_a_failing_miss_hook_warns_and_compiles():
    """A hook that raises (a damaged pack) is a plain miss: one warning, Numba compiles."""
    def broken(cache, target_context):
        raise OSError("x86-64-v4.tar.gz: checksum mismatch")

    class FakeCache:
        _name = "kernel"

    numba_cache.miss_hooks.insert(0, broken)
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert numba_cache._after_hooks(FakeCache(), None, None, lambda *a: pytest.fail("loaded")) is None
        assert any("checksum mismatch" in str(x.message) and "compiling instead" in str(x.message) for x in w)
    finally:
        numba_cache.miss_hooks.remove(broken)
