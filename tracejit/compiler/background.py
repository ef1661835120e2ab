"""Compiling a CPU program's kernels in a child process (tiered execution, api.Tier): Numba's typing and lowering
are Python code that holds the GIL, so a compile in a thread slows the calls that run meanwhile and they slow it
(LeNet, fresh install, 2 cores: 1000 steps took 70 s tiered in a thread against 28 s blocking). A child process
competes for a core only.

The parent's program has already rendered its generated kernels and written them into the kernel cache (cache.py:
one k_<hash>.py file each); nothing is compiled yet. `Child` writes a job file -- the program's graph, the
size-dependent choices its rendering made (`decisions`), each generated step's final source, the thread count and
a snapshot of the first call's inputs -- and starts `python -m tracejit.compiler.background JOB PPID`
(never multiprocessing's spawn, which re-runs an unguarded `__main__`, nor fork: Numba's and TBB's threads). The
child rebuilds the same program from the graph, replaying the decisions, loads the same sources (cache hits: the
same files, so Numba's index is keyed on the same file stamps), runs it once on the snapshot -- every kernel
compiles and Numba saves it to its disk cache -- and exits. The parent then runs its own program once on the
snapshot in its thread: each kernel loads from the disk cache (`loads()` counts them).

The child dies with its parent (PR_SET_PDEATHSIG, and the parent kills live children at exit), ignores Ctrl-C
(its own session: the terminal's SIGINT reaches the parent only), prints nothing (its stderr is kept and shown
only when it fails). A failure is reported to the caller (`Child.run` returns why), which then compiles in the
foreground as without tiering.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ..ops import OPS, OpDef
from .backends import cache
from .ir import FUSED_OPS, FusedKind

TIMEOUT_S = float(os.environ.get("TRACEJIT_TIER_TIMEOUT", "1800"))  # a child running longer is killed (failure)
_live: set = set()  # children still running: killed at exit
_live_lock = threading.Lock()
_exit_hook = []


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def unusable(program, backend) -> str | None:
    """Why `program`'s kernels cannot be compiled in a child process (None: they can): a second CPU to run it on,
    and a backend that can rebuild the program there and share the kernels through its disk caches."""
    if cpus() < 2:
        return "one CPU"
    check = getattr(backend, "tier_unusable", None)
    if check is None:
        return f"the {getattr(backend, 'name', '?')} backend has no compile process"
    return check(program)


def loads(program, backend) -> tuple[int, int]:
    """(kernel compilations found in the disk cache, ones compiled) for `program`'s generated kernels."""
    return backend.tier_loads(program)


# ------------------------------------------------------------------------------------------------ the job file
def _op_named(name: str) -> OpDef:
    return OPS[name]


def _fused_op(kind: str) -> OpDef:
    return FUSED_OPS[FusedKind(kind)]


class _Pickler(pickle.Pickler):
    """Ops by name (their refs and gradient rules are functions of the op table, not picklable values)."""

    def reducer_override(self, obj):
        if isinstance(obj, OpDef):
            if OPS.get(obj.name) is obj:
                return _op_named, (obj.name,)
            for kind, op in FUSED_OPS.items():
                if op is obj:
                    return _fused_op, (kind.value,)
            raise pickle.PicklingError(f"op {obj.name!r} is not in the op table")
        return NotImplemented


def write_job(path: str, program, backend, inputs) -> None:
    job = dict(backend.tier_job(program), backend=backend.name, inputs=list(inputs))
    with open(path, "wb") as f:
        _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(job)


def _child_env() -> dict:
    """The parent's environment, with the caches it actually uses named explicitly and its tracejit importable."""
    import numba

    env = dict(os.environ)
    if numba.config.CACHE_DIR:
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
    else:
        env.pop("NUMBA_CACHE_DIR", None)
    env["TRACEJIT_CACHE_DIR"] = cache.configured_dir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["tracejit"].__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["TRACEJIT_PREPARE"] = "0"
    env["TRACEJIT_LOGS"] = "off"
    return env


def command(job: str, ppid: int) -> list[str]:
    """The child's command line (a module run with -m: never multiprocessing's spawn, which would import the
    user's __main__ again)."""
    return [sys.executable, "-m", __name__, job, str(ppid)]


def _kill_live() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        try:
            p.kill()
        except OSError:
            pass


class Child:
    """One background compile: `run()` writes the job, starts the child, waits for it; returns None when it
    compiled every kernel into the disk caches, else why not. `kill()` ends it early."""

    def __init__(self, program, backend, inputs):
        self.program, self.backend, self.inputs = program, backend, inputs
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None
        self.result: dict = {}
        self.killed = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def run(self) -> str | None:
        try:
            return self._run()
        finally:
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self) -> str | None:
        self.dir = tempfile.mkdtemp(prefix="tracejit-compile-")
        job = os.path.join(self.dir, "job.pkl")
        write_job(job, self.program, self.backend, self.inputs)
        self.inputs = None
        if not _exit_hook:
            _exit_hook.append(atexit.register(_kill_live))
        err_path = os.path.join(self.dir, "stderr.txt")
        with open(err_path, "wb") as err:
            self.spawned_s = time.time()
            with _live_lock:
                if self.killed:
                    return "killed before it started"
                # its own session: Ctrl-C at the terminal goes to the parent's process group, not to it
                self.proc = subprocess.Popen(command(job, os.getpid()),
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                             env=_child_env(), cwd=self.dir, start_new_session=True, close_fds=True)
                _live.add(self.proc)
        try:
            rc = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            return f"the compile process ran longer than {TIMEOUT_S:.0f} s (TRACEJIT_TIER_TIMEOUT) and was killed"
        finally:
            with _live_lock:
                _live.discard(self.proc)
        try:
            with open(os.path.join(self.dir, "done.json")) as f:
                self.result = json.load(f)
        except (OSError, ValueError):
            self.result = {}
        if rc == 0 and self.result:
            self.result["startup_s"] = self.result.get("started_s", self.spawned_s) - self.spawned_s
            self.result["wall_s"] = time.time() - self.spawned_s
            return None
        try:
            with open(err_path, "rb") as f:
                tail = f.read()[-2000:].decode("utf-8", "replace").strip()
        except OSError:
            tail = ""
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        return f"the compile process (pid {self.proc.pid}) {how}" + (f": {tail.splitlines()[-1]}" if tail else "")

    def kill(self) -> None:
        with _live_lock:
            self.killed = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()


# ------------------------------------------------------------------------------------------------ the child
def _die_with_parent(ppid: int) -> None:
    """SIGKILL when the parent's thread that started this process ends (Linux); exit now if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        watch = False
    except (OSError, AttributeError):
        watch = True
    if os.getppid() != ppid:
        os._exit(3)
    if watch:  # no prctl: look every second
        def poll():
            while os.getppid() == ppid:
                time.sleep(1.0)
            os._exit(3)
        threading.Thread(target=poll, daemon=True).start()


def main(argv: list[str]) -> int:
    job_path, ppid = argv[0], int(argv[1])
    _die_with_parent(ppid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    t0 = time.time()  # (wall clock: the parent's start time is compared with it)
    from .ir import Value

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    Value._next_id = max(Value._next_id, 1 << 40)  # (values made here never meet the graph's ids)
    t1 = time.time()
    from .backends import get_backend

    backend = get_backend(job["backend"])
    prog = backend.tier_rebuild(job)
    t2 = time.time()
    prog.run(job["inputs"])
    hits, misses = backend.tier_loads(prog)
    tmp = os.path.join(os.path.dirname(job_path), "done.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"kernels": hits + misses, "compiled": misses, "loaded": hits, "started_s": t0,
                   "job_s": t1 - t0, "rebuild_s": t2 - t1, "run_s": time.time() - t2,
                   "cpu_s": time.process_time(), "fallbacks": prog.fallbacks}, f)
    os.replace(tmp, os.path.join(os.path.dirname(job_path), "done.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
