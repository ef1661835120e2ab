"""Tiered execution's compile process (compiler/background.py): a child process compiles the kernels into the
disk caches and the parent loads every one of them from there; the child's failure, death or a Ctrl-C in the parent
never leaves a wrong result or a stray process; where no child can help (one CPU, no disk cache) a thread compiles."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tracejit
import tracejit.nn as nn
import tracejit.nn.functional as F
from tracejit.compiler import api, background
from tracejit.compiler.backends import get_backend
from tracejit.compiler.ir import print_graph

from .conftest import MLP, assert_same_state, batches, make_train_step, snapshot

# a compile process that never finishes (it dies with its parent as the real one does)
SLEEPER = ("import sys, time; from tracejit.compiler import background as b; "
           "b._die_with_parent(int(sys.argv[2])); time.sleep(600)")


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(tmp_path / "kernels"))
    monkeypatch.delenv("TRACEJIT_TIERED", raising=False)


def _mlp_steps(tiered, width, n=5, wait_at=1, on_start=None):
    tracejit.manual_seed(5)
    model = MLP(11, width, 5)
    opt = tracejit.optim.Adam(model.parameters(), lr=0.01)
    step = make_train_step(model, opt, F.mse_loss)
    data = batches(n + 1, (7, 11), (7, 5), seed=4)
    step(*data[0])  # eager: the optimizer's state
    cf = tracejit.compile(step, tiered=tiered, dynamic=False)
    losses = []
    for i, (x, y) in enumerate(data[1:]):
        losses.append(cf(x, y).item())
        tier = getattr(cf.history[-1], "tier", None)
        if tier is not None and i == 0 and on_start is not None:
            on_start(tier)
        if tier is not None and i == wait_at:
            assert tier.wait(300)
    return losses, snapshot(model, opt), cf


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether process `pid` ended (or is a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if any(line.startswith("State:") and "Z" in line for line in f):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def _child_started(tier, timeout=60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tier.child is not None and tier.child.pid is not None:
            return tier.child.pid
        time.sleep(0.02)
    raise AssertionError("no compile process started")


@pytest.mark.skipif(background.cpus() < 2, reason="a compile process needs a second CPU")
def test_child_compiles_and_the_parent_loads_every_kernel_from_the_disk_cache(fresh_kernels, monkeypatch):
    """A compile process started as a new interpreter (TRACEJIT_TIER_START=spawn; a fork: the next test)."""
    monkeypatch.setenv("TRACEJIT_TIER_START", "spawn")
    lt, st, cf = _mlp_steps(True, width=19)
    tier = cf.history[-1].tier
    assert tier.mode == "process" and tier.error is None and tier.switched and tier.child.how == "spawn"
    n = len(tier.compiled._generated())
    assert n >= 1 and tier.child.result["kernels"] == n and tier.child.result["compiled"] == n
    assert tier.loaded == (n, 0)  # Numba's index matched the parent's files: nothing compiled here
    assert "loaded here from the disk cache it filled" in tier.describe()
    lb, sb, cfb = _mlp_steps(False, width=19)
    assert getattr(cfb.history[-1], "tier", None) is None
    np.testing.assert_allclose(lt, lb, rtol=2e-5, atol=1e-6)
    assert_same_state(st, sb, rtol=2e-5, atol=2e-6)


FORKED = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from compiler.conftest import LeNet, batches, make_train_step, snapshot
    import tracejit
    import tracejit.nn.functional as F

    def run(tiered):
        tracejit.manual_seed(5)
        model = LeNet()
        opt = tracejit.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = make_train_step(model, opt, F.cross_entropy)
        data = batches(7, (4, 3, 32, 32), "class", seed=4)
        cf = tracejit.compile(step, tiered=tiered, dynamic=False)  # (before the eager step, as the examples do)
        step(*data[0])
        losses = []
        for i, (x, y) in enumerate(data[1:]):
            losses.append(cf(x, y).item())
            tier = getattr(cf.history[-1], "tier", None)
            if tier is not None and i == 1:
                assert tier.wait(300)
        state = {{k: None if v is None else np.asarray(v, np.float64).tolist()
                 for k, v in snapshot(model, opt).items()}}
        return cf, losses, state

    cf, lt, st = run(None)  # the default: tiered, a forked compile process (a fresh process's main thread)
    tier = cf.history[-1].tier
    facts = dict(mode=tier.mode, how=tier.child.how, error=repr(tier.error), switched=tier.switched,
                 loaded=list(tier.loaded), n=len(tier.compiled._generated()), reference_calls=tier.reference_calls,
                 child=tier.child.result)
    _, lb, sb = run(False)
    print("FORKED " + json.dumps(dict(facts, lt=lt, lb=lb, same=st.keys() == sb.keys(), st=st, sb=sb)))
""")


@pytest.mark.skipif(background.cpus() < 2 or not sys.platform.startswith("linux"), reason="a forked compile process")
def test_the_default_forks_the_compile_process_in_a_fresh_process(tmp_path):
    """compile() with the defaults in a fresh process (Linux, two CPUs; TRACEJIT_TIER_MIN_KERNELS=1: any kernel to
    compile): the variant is tiered, the compile process is a fork, the parent loads every kernel it compiled from
    the disk cache, and the losses and params, grads and optimizer state equal the blocking path's."""
    import json

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEJIT_")}
    env["TRACEJIT_CACHE_DIR"] = str(tmp_path / "kernels")
    env["TRACEJIT_TIER_MIN_KERNELS"] = "1"  # (this small LeNet has 2 kernels; the default tiers from 3 on a fork)
    res = subprocess.run([sys.executable, "-c", FORKED.format(tests=tests)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fork from a non-main thread" not in res.stderr  # (Numba's TBB pool: started by the main thread)
    got = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("FORKED ")][-1][7:])
    assert got["mode"] == "process" and got["how"] == "fork" and got["error"] == "None" and got["switched"]
    assert got["n"] >= 1 and got["loaded"] == [got["n"], 0] and got["reference_calls"] == 2
    # the compile process compiled every kernel: itself, or it shared them out over forks of its own
    # (background.compile_ahead: two processes on two CPUs) and loaded theirs from the disk cache
    child, ahead = got["child"], got["child"]["ahead"]
    assert child["how"] == "fork" and child["compiled"] + child["loaded"] == got["n"]
    assert ahead is not None and ahead["processes"] == 2 and ahead["failed"] == [] and ahead["functions"] == got["n"]
    assert child["loaded"] >= 1 and child["compiled"] >= 1
    np.testing.assert_allclose(got["lt"], got["lb"], rtol=2e-5, atol=1e-6)
    assert got["same"]
    for k in got["st"]:
        assert (got["st"][k] is None) == (got["sb"][k] is None), k
        if got["st"][k] is not None:
            np.testing.assert_allclose(got["st"][k], got["sb"][k], rtol=2e-5, atol=2e-6, err_msg=k)


def _tiered_then_blocking(width, on_start=None):
    """The tier of a tiered MLP run (`_mlp_steps`) after checking that its losses and final state equal a blocking
    run's: whatever happened to the compile process, the results are the foreground compile's."""
    lt, st, cf = _mlp_steps(True, width=width, on_start=on_start)
    lb, sb, _ = _mlp_steps(False, width=width)
    np.testing.assert_allclose(lt, lb, rtol=2e-5, atol=1e-6)
    assert_same_state(st, sb, rtol=2e-5, atol=2e-6)
    return cf.history[-1].tier


@pytest.mark.skipif(background.cpus() < 2, reason="a compile process needs a second CPU")
def test_a_failing_child_means_a_foreground_compile_with_the_same_results(fresh_kernels, monkeypatch):
    monkeypatch.setenv("TRACEJIT_TIER_START", "spawn")
    monkeypatch.setattr(background, "command", lambda job, ppid: [
        sys.executable, "-c", "import sys; sys.stderr.write('no luck today\\n'); sys.exit(5)", job, str(ppid)])
    tier = _tiered_then_blocking(width=17)  # (a width of its own: kernels no other test compiled in this process)
    assert isinstance(tier.error, api.BackgroundCompileError) and tier.switched
    assert "exited with code 5: no luck today" in str(tier.error)
    assert tier.loaded is None and sum(background.loads(tier.compiled, tier.backend)) == len(tier.compiled._generated())


@pytest.mark.skipif(background.cpus() < 2, reason="a compile process needs a second CPU")
def test_a_killed_child_means_a_foreground_compile(fresh_kernels, monkeypatch):
    monkeypatch.setenv("TRACEJIT_TIER_START", "spawn")
    monkeypatch.setattr(background, "command", lambda job, ppid: [sys.executable, "-c", SLEEPER, job, str(ppid)])
    pids = []

    def kill(tier):
        pids.append(_child_started(tier))
        os.kill(pids[0], signal.SIGKILL)

    tier = _tiered_then_blocking(width=13, on_start=kill)
    assert isinstance(tier.error, api.BackgroundCompileError) and "killed by signal 9" in str(tier.error)
    assert tier.switched and _gone(pids[0])


def _forked(work):
    """A forked child that does `work(program, inputs)` instead of compiling (the fork itself is the real one:
    these children fail before they run any kernel, so they do not need Numba's thread pool)."""
    def patch(monkeypatch):
        monkeypatch.setattr(background, "_forked_work", work)
        monkeypatch.setattr(background, "start_method", lambda backend=None: "fork")
    return patch


def _fail(program, inputs):
    raise RuntimeError("no luck in the fork")


def _sleep(program, inputs):
    time.sleep(600)


@pytest.mark.skipif(background.cpus() < 2 or not hasattr(os, "fork"), reason="a forked compile process")
def test_a_failing_forked_child_means_a_foreground_compile_with_the_same_results(fresh_kernels, monkeypatch):
    _forked(_fail)(monkeypatch)
    tier = _tiered_then_blocking(width=21)
    assert isinstance(tier.error, api.BackgroundCompileError) and tier.switched
    assert "forked compile process" in str(tier.error) and "exited with code 1" in str(tier.error)
    assert "RuntimeError: no luck in the fork" in str(tier.error)
    assert tier.loaded is None and sum(background.loads(tier.compiled, tier.backend)) == len(tier.compiled._generated())


@pytest.mark.skipif(background.cpus() < 2 or not sys.platform.startswith("linux"), reason="a forked compile process")
def test_a_forked_child_that_uses_no_cpu_is_killed_as_stuck(fresh_kernels, monkeypatch):
    """A forked child that waits (for a lock another thread of the parent held at the fork: here it sleeps) is
    killed once its CPU time has not grown for STUCK_S seconds; the parent compiles in the foreground."""
    _forked(_sleep)(monkeypatch)
    monkeypatch.setattr(background, "STUCK_S", 1.0)
    pids = []
    tier = _tiered_then_blocking(width=25, on_start=lambda tier: pids.append(_child_started(tier)))
    assert isinstance(tier.error, api.BackgroundCompileError) and "used no CPU for 1 s" in str(tier.error)
    assert tier.switched and _gone(pids[0])


@pytest.mark.skipif(background.cpus() < 2 or not hasattr(os, "fork"), reason="a forked compile process")
def test_a_killed_forked_child_means_a_foreground_compile(fresh_kernels, monkeypatch):
    _forked(_sleep)(monkeypatch)
    pids = []

    def kill(tier):
        pids.append(_child_started(tier))
        os.kill(pids[0], signal.SIGKILL)

    tier = _tiered_then_blocking(width=27, on_start=kill)
    assert isinstance(tier.error, api.BackgroundCompileError) and "killed by signal 9" in str(tier.error)
    assert tier.switched and _gone(pids[0])


PARENT = textwrap.dedent("""
    import sys, time
    import numpy as np
    import tracejit
    from tracejit.compiler import background
    background.command = lambda job, ppid: [sys.executable, "-c", {sleeper!r}, job, str(ppid)]
    background._forked_work = lambda program, inputs: time.sleep(600)
    cf = tracejit.compile(lambda x: (x * 3.0 + 1.0).sum(), tiered=True)
    x = tracejit.tensor(np.ones((3, 41), np.float32))
    cf(x)
    tier = cf.history[-1].tier
    while tier.child is None or tier.child.pid is None:
        time.sleep(0.01)
    print(tier.mode, tier.child.pid, tier.child.how, flush=True)
    while True:
        cf(x)
        time.sleep(0.01)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("start", ["fork", "spawn"])
@pytest.mark.parametrize("how", ["ctrl-c", "killed"])
def test_the_child_ends_with_its_parent(tmp_path, how, start):
    env = dict(os.environ, TRACEJIT_CACHE_DIR=str(tmp_path / "kernels"), TRACEJIT_TIERED="", TRACEJIT_TIER_START=start)
    # Ctrl-C as at a terminal: a suite started in the background of a shell (`pytest ... &`) ignores SIGINT, and
    # its children inherit that
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(sleeper=SLEEPER)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        mode, pid, started = parent.stdout.readline().split()
        assert mode == "process" and started == start
        pid = int(pid)
        assert not _gone(pid, 0.5)
        parent.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        rc = parent.wait(60)
        assert rc != 0
        if how == "ctrl-c":  # (the exit handlers run: they say which compile is lost)
            err = parent.stderr.read()
            assert "KeyboardInterrupt" in err and "<lambda>: its kernels were still compiling" in err
        assert _gone(pid)
    finally:
        parent.kill()
        parent.wait()


def test_one_cpu_or_no_disk_cache_compiles_in_a_thread_or_blocks(fresh_kernels, monkeypatch, tmp_path):
    sizes = iter(range(31, 60))  # (each compile a shape of its own: nothing in the process's kernels yet)

    def mode_of(**kw):
        x = tracejit.tensor(np.ones((3, next(sizes)), np.float32))
        want = x.numel() * 3.0
        cf = tracejit.compile(lambda x: (x * 2.0 + 1.0).sum(), dynamic=False, **kw)
        assert cf(x).item() == want
        tier = getattr(cf.history[-1], "tier", None)
        if tier is not None:
            assert tier.wait(300) and tier.error is None
            assert cf(x).item() == want
        return tier.mode if tier is not None else None

    monkeypatch.setattr(background, "cpus", lambda: 1)
    assert mode_of(tiered=True) == "thread"
    monkeypatch.setattr(api, "TIERED_DEFAULT", True)
    monkeypatch.setattr(api, "TIER_MIN_KERNELS", 1)
    assert mode_of() is None  # the default blocks where only a thread could compile
    monkeypatch.setattr(background, "cpus", lambda: 2)
    assert mode_of() == "process"
    monkeypatch.setattr(api, "TIER_MIN_KERNELS", 2)
    assert mode_of() is None  # the default blocks a short compile (one kernel here)
    assert mode_of(tiered=True) == "process"
    monkeypatch.setattr(api, "TIER_MIN_KERNELS", 1)
    monkeypatch.setenv("TRACEJIT_TIERED", "thread")
    assert mode_of() == "thread"
    monkeypatch.setenv("TRACEJIT_TIERED", "0")
    assert mode_of() is None
    monkeypatch.delenv("TRACEJIT_TIERED")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("TRACEJIT_CACHE_DIR", str(blocked))  # kernels go to a private directory: no child sees them
    with pytest.warns(Warning, match="cannot"):
        assert mode_of(tiered=True) == "thread"
    assert mode_of() is None


def test_the_job_rebuilds_the_same_program(fresh_kernels, tmp_path):
    """A Transformer step's graph and sources survive the job file, and the rebuilt program has the same steps
    (nothing is compiled here: kernels compile on their first call)."""
    tracejit.manual_seed(1)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    emb = nn.Embedding(13, 8)
    opt = tracejit.optim.AdamW(list(layer.parameters()) + list(emb.parameters()), lr=1e-3)
    mask = nn.Transformer.generate_square_subsequent_mask(5)

    def step(x, y):
        opt.zero_grad()
        out = layer(emb(x), src_mask=mask, is_causal=True)
        loss = F.cross_entropy(out.reshape(-1, 8), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    x = tracejit.tensor(np.arange(15).reshape(3, 5) % 13)
    y = tracejit.tensor(np.arange(15).reshape(3, 5) % 8)
    step(x, y)
    cf = tracejit.compile(step, tiered=False)
    v = cf.compile_variant((x, y))
    prog = v.program
    path = str(tmp_path / "job.pkl")
    backend = get_backend("cpu")
    background.write_job(path, prog, backend, [np.zeros(1)])
    import pickle

    with open(path, "rb") as f:
        job = pickle.load(f)
    assert print_graph(job["graph"]) == print_graph(prog.graph)
    assert job["backend"] == "cpu"
    again = backend.tier_rebuild(job)
    mine, theirs = prog._generated(), again._generated()
    assert [type(s) for s in theirs] == [type(s) for s in mine] and len(mine) >= 3
    assert [(s.source, s.sz) for s in theirs] == [(s.source, s.sz) for s in mine]
    assert all(s.hit for s in theirs)  # the same files in the kernel cache: Numba's index stays valid
    assert [type(s).__name__ for s, *_ in again.plan] == [type(s).__name__ for s, *_ in prog.plan]


def test_environment_values(monkeypatch):
    monkeypatch.setenv("TRACEJIT_TIERED", "thread")
    assert api._tiered_env() == "thread"
    monkeypatch.setenv("TRACEJIT_TIERED", "process")
    assert api._tiered_env() is True


@pytest.mark.skipif(background.cpus() < 2, reason="a compile process needs a second CPU")
def test_the_default_path_end_to_end(fresh_kernels, monkeypatch):
    """compile() with no tiered argument and TRACEJIT_TIERED unset (the suite's conftest sets it to 0): a variant
    with enough kernels to compile (here: any) starts on the reference backend, a child process compiles, the
    parent switches to the kernels it loads from the disk cache; the losses of every step, and params, grads and
    optimizer state after the last, equal the blocking path's."""
    monkeypatch.setattr(api, "TIER_MIN_KERNELS", 1)
    monkeypatch.setattr(api, "TIERED_DEFAULT", True)  # (what the package ships: see api.TIERED_DEFAULT)
    lt, st, cf = _mlp_steps(None, width=29, n=6, wait_at=2)
    tier = cf.history[-1].tier
    assert tier.mode == "process" and tier.switched and tier.error is None and tier.reference_calls == 3
    n = len(tier.compiled._generated())
    assert tier.loaded == (n, 0)
    lb, sb, cfb = _mlp_steps(False, width=29, n=6)
    np.testing.assert_allclose(lt, lb, rtol=2e-5, atol=1e-6)
    assert_same_state(st, sb, rtol=2e-5, atol=2e-6)
