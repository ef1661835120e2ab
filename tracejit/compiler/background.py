"""Compiling a CPU program's kernels in a child process (tiered execution, api.Tier): Numba's typing and lowering
are Python code that holds the GIL, so a compile in a thread slows the calls that run meanwhile and they slow it
(LeNet, fresh install, 2 cores: 1000 steps took 70 s tiered in a thread against 28 s blocking). A child process
competes for a core only.

The parent's program has already rendered its generated kernels and written them into the kernel cache (cache.py:
one k_<hash>.py file each); nothing is compiled yet. The child runs that program once on a snapshot of the first
call's inputs -- every kernel compiles and Numba saves it to its disk cache -- and exits. The parent then runs its
own program once on the snapshot in its thread: each kernel loads from the disk cache (`loads()` counts them).

Two ways to start the child (`Child`, `start_method()`):
- **fork** (Linux, the default there): `os.fork()` from the thread that made the call (Tier.start), when it is
  the main thread. The child is this process as it is -- the program object, the imported package, Numba's
  initialized target, the package's helpers already loaded -- so it starts in milliseconds, where a new
  interpreter took 1.7 s to import NumPy, SciPy, Numba and tracejit and 0.6 s to rebuild the program (LeNet,
  package warm; the compile itself then took 1.4 s). A fork of a process with threads is safe only for what the
  child does afterwards: its one thread must not wait for a lock that another thread held at the fork. So the fork
  happens while this thread holds Numba's compiler lock (no other thread is inside Numba's compiler or LLVM),
  never while the backend's preparation or the eager kernels' loading thread runs (they import modules:
  start_method() then spawns), only where Numba's thread pool survives it (its TBB pool stops and restarts its
  workers around a fork from the thread that started it: the backend's `tier_fork_unsafe`; OpenBLAS has its own
  fork hooks), and the child touches nothing but the program, Numba and its own files. It leaves with os._exit
  (no atexit handler, no buffer of the parent's). A child whose CPU time stops growing before it finishes (a lock
  it can never get) is killed after STUCK_S seconds and the parent compiles in the foreground. Not under MPI
  (Open MPI forbids forks of its processes).
- **spawn** (elsewhere, or TRACEJIT_TIER_START=spawn): `python -m tracejit.compiler.background JOB PPID` with a
  job file -- the program's graph, the size-dependent choices its rendering made (`decisions`), each generated
  step's final source, the thread count and the snapshot -- (never multiprocessing's spawn, which re-runs an
  unguarded `__main__`). The child rebuilds the same program from the graph, replaying the decisions, and loads
  the same sources (cache hits: the same files, so Numba's index is keyed on the same file stamps).

Either child dies with its parent (PR_SET_PDEATHSIG, and the parent kills live children at exit), ignores Ctrl-C
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
import warnings

from ..ops import OPS, OpDef
from .backends import cache
from .ir import FUSED_OPS, FusedKind

TIMEOUT_S = float(os.environ.get("TRACEJIT_TIER_TIMEOUT", "1800"))  # a child running longer is killed (failure)
# a forked child whose CPU time has not grown for this long is stuck (compiling is CPU work all the way): killed
STUCK_S = float(os.environ.get("TRACEJIT_TIER_STUCK", "10"))
_live: set = set()  # children still running: killed at exit
_live_lock = threading.Lock()
_exit_hook = []


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def start_method(backend=None) -> str:
    """How a compile process started by this thread now starts: "fork" (Linux, from the main thread, unless
    TRACEJIT_TIER_START=spawn, MPI is initialized, JAX is imported, a thread of tracejit that imports modules is
    running, or the backend's thread pool would not survive it) or "spawn"."""
    how = os.environ.get("TRACEJIT_TIER_START", "").strip().lower()
    if how not in ("", "fork", "spawn"):
        raise ValueError(f"TRACEJIT_TIER_START={how!r}: choose fork or spawn")
    if how == "spawn" or not hasattr(os, "fork") or not sys.platform.startswith("linux"):
        return "spawn"  # (macOS: a forked child must not use most system frameworks)
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        try:
            if mpi.Is_initialized() and not mpi.Is_finalized():
                return "spawn"
        except Exception:  # noqa: BLE001 -- an MPI we cannot ask: do not fork it
            return "spawn"
    if threading.current_thread() is not threading.main_thread():
        return "spawn"  # (Numba's TBB pool is valid in the child of a fork from the main thread only)
    if "jax" in sys.modules:
        return "spawn"  # (JAX's threads: it warns at every fork of its process that one may deadlock)
    busy = {"tracejit-prepare", "tracejit-eager-kernels"}
    if any(t.name in busy and t.is_alive() for t in threading.enumerate()):
        return "spawn"  # (they import modules: the child could wait forever for a module lock they hold)
    unsafe = getattr(backend, "tier_fork_unsafe", None)
    if unsafe is None or unsafe() is not None:
        return "spawn"  # (a backend that does not say, or a thread pool that would not survive the fork)
    return "fork"


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
    """At exit: end the compile processes still running, saying which compiles are lost."""
    with _live_lock:
        procs = list(_live)
    for p in procs:
        try:
            if p.poll() is None and getattr(p, "tracejit_label", None):
                from . import log

                log.emit(f"{p.tracejit_label}: its kernels were still compiling in the background at exit (for "
                         f"{time.monotonic() - p.tracejit_started:.0f} s) and are not saved: the next run compiles "
                         f"them again. Call wait_compiled() on the compiled function before the end to keep "
                         f"them, or compile it with tiered=False")
            p.kill()
        except OSError:
            pass


class _Forked:
    """A forked child, as much of subprocess.Popen as Child uses, and the wait that notices a stuck child."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # (reaped elsewhere)
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cpu_ticks(self) -> int | None:
        """The child's user + system CPU time so far (clock ticks); None where /proc cannot tell."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return None

    def wait(self, timeout: float, stuck: float, wake: int | None = None) -> int | str:
        """The exit code, or why the child was killed: it ran longer than `timeout` seconds, or its CPU time did
        not grow for `stuck` seconds (compiling is CPU work: a child idle that long waits for a lock that another
        thread of the parent held at the fork, which nothing in the child will ever release). `wake`: a pipe's
        read end that reaches EOF when the child exits (no wait for the next look)."""
        import select

        start = last_change = time.monotonic()
        last = self.cpu_ticks()
        while self.poll() is None:
            if wake is not None:
                ready, _, _ = select.select([wake], [], [], 0.25)
                if ready and not os.read(wake, 64):
                    wake = None  # (EOF: the child is gone; poll reaps it)
            else:
                time.sleep(0.05)
            if self.poll() is not None:
                break
            now, cpu = time.monotonic(), self.cpu_ticks()
            if cpu != last:
                last, last_change = cpu, now
            if now - start > timeout:
                self._end()
                return f"the compile process ran longer than {timeout:.0f} s (TRACEJIT_TIER_TIMEOUT) and was killed"
            if cpu is not None and now - last_change > stuck:
                self._end()
                return (f"the forked compile process used no CPU for {stuck:.0f} s before it finished (a lock another "
                        f"thread held at the fork?) and was killed; TRACEJIT_TIER_START=spawn starts a new "
                        f"interpreter instead")
        return self.returncode

    def _end(self) -> None:
        self.kill()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self.returncode = -signal.SIGKILL


def _forked_child(work, folder: str, ppid: int) -> None:
    """A forked child: run `work(t0)` (the child's start on the wall clock; it returns a JSON-able dict), write
    the dict to done.json, and leave with os._exit -- never returning into the parent's stack, running no atexit
    handler of the parent's and flushing none of its buffers."""
    code = 1
    try:
        t0 = time.time()
        os.setsid()  # its own session: the terminal's Ctrl-C reaches the parent only
        null = os.open(os.devnull, os.O_RDWR)
        err = os.open(os.path.join(folder, "stderr.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        # the parent's sys.stdout/stderr may be anything (pytest's capture, a notebook's socket): these are files
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        os.environ["TRACEJIT_LOGS"] = "off"
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent(ppid)
        result = work(t0)
        tmp = os.path.join(folder, "done.json.tmp")
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, os.path.join(folder, "done.json"))
        code = 0
    except BaseException:  # noqa: BLE001 -- reported through stderr.txt and the exit code
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _tier_work(program, backend, inputs):
    """A tier's forked child: compile every kernel of `program` by running it once on `inputs`."""
    def work(t0: float) -> dict:
        t1 = time.time()
        ahead = compile_ahead(program, backend, inputs, _child_processes())
        _forked_work(program, inputs)
        hits, misses = backend.tier_loads(program)
        return {"kernels": hits + misses, "compiled": misses, "loaded": hits, "started_s": t0, "how": "fork",
                "job_s": 0.0, "rebuild_s": t1 - t0, "run_s": time.time() - t1, "cpu_s": time.process_time(),
                "ahead": ahead}
    return work


def _forked_work(program, inputs) -> None:
    """What the forked child does (tests replace it to make the child fail or hang)."""
    program.run(inputs)


class Child:
    """One background compile: `run()` starts the child (`start_method()`: a fork of this process, or a new
    interpreter given a job file) and waits for it; returns None when it compiled every kernel into the disk
    caches, else why not. `kill()` ends it early."""

    def __init__(self, program, backend, inputs, how: str | None = None, name: str | None = None):
        self.program, self.backend, self.inputs = program, backend, inputs
        self.name = name  # (the compiled function's name, for the message at exit)
        self.how = how or start_method(backend)
        self.proc: subprocess.Popen | _Forked | None = None
        self.dir: str | None = None
        self.result: dict = {}
        self.killed = False
        self.failed: str | None = None  # (why a fork did not start)
        self._wake: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def run(self) -> str | None:
        """Start the child (unless `start()` did) and wait for it."""
        try:
            if self.how != "fork":
                return self._run()
            if self.proc is None and self.failed is None:
                self.start()
            return self.failed if self.failed is not None else self._wait_fork()
        finally:
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def start(self) -> None:
        """Fork the child now, in the calling thread (the fork way; Numba's TBB pool survives a fork only from the
        main thread: start_method() spawns elsewhere). `run()` then waits for it."""
        self.dir = tempfile.mkdtemp(prefix="tracejit-compile-")
        with _live_lock:
            if self.killed:
                self.failed = "killed before it started"
                return
        self.spawned_s = time.time()
        self.proc, self._wake = _fork(_tier_work(self.program, self.backend, self.inputs), self.dir, self.name)
        with _live_lock:
            if self.killed:
                self.proc.kill()
        self.inputs = None

    def _wait_fork(self) -> str | None:
        try:
            rc = self.proc.wait(TIMEOUT_S, STUCK_S, self._wake)
        finally:
            os.close(self._wake)
            with _live_lock:
                _live.discard(self.proc)
        if isinstance(rc, str):
            return rc
        return self._outcome(rc, os.path.join(self.dir, "stderr.txt"))

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
                self.proc.tracejit_label, self.proc.tracejit_started = self.name, time.monotonic()
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
        return self._outcome(rc, err_path)

    def _outcome(self, rc: int, err_path: str) -> str | None:
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
        what = "forked compile process" if self.how == "fork" else "compile process"
        return f"the {what} (pid {self.proc.pid}) {how}" + (f": {tail.splitlines()[-1]}" if tail else "")

    def kill(self) -> None:
        with _live_lock:
            self.killed = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()


# ------------------------------------------------------------------------------------------------ compile ahead
PROCESSES_ENV = "TRACEJIT_COMPILE_PROCESSES"


def compile_processes() -> int:
    """How many processes a blocking compile may use (TRACEJIT_COMPILE_PROCESSES; default: the CPUs this process
    may run on; 1: compile in this process only)."""
    v = os.environ.get(PROCESSES_ENV, "").strip()
    if not v:
        return cpus()
    try:
        return max(1, int(v))
    except ValueError:
        raise ValueError(f"{PROCESSES_ENV}={v!r}: give a number of processes (1: compile in this one)") from None


def _child_processes() -> int:
    """The processes a tiered variant's compile process shares its kernels out over: one fewer than a blocking
    compile (its parent runs the reference steps on a core), but two on two CPUs (gpt, 2 cores: the kernels were
    not all compiled 15 s in with one, from 15.5-18.4 s on with two; the reference steps ran 10-20 % slower)."""
    n = compile_processes()
    return n - 1 if n > 2 else n


def compile_ahead(program, backend, inputs, processes: int | None = None) -> dict | None:
    """Compile what `program`'s first run on `inputs` will compile (backend.compile_work: one piece per generated
    function), shared out by cost over `processes` processes (default compile_processes()): this one and forks of
    it, each compiling its share into the disk caches, from which the run then loads the children's shares.

    Returns {"processes", "functions", "s", "failed"} (failed: why children did not finish), or None when it did
    nothing (fewer than two processes or pieces of work, or no safe fork: start_method): the run then compiles as
    it would have. A child that fails, hangs (STUCK_S without CPU) or is killed costs only time: the run compiles
    what it did not leave in the cache. Numba's GIL-holding front end is most of a compile, so processes, not
    threads; a fork starts in milliseconds with everything the work needs already in memory."""
    limit = compile_processes() if processes is None else processes
    if limit < 2 or start_method(backend) != "fork":
        return None
    t0 = time.perf_counter()
    work = backend.compile_work(program, inputs)
    n = min(limit, len(work))
    if n < 2:
        return None
    t1 = time.perf_counter()
    shares: list[list] = [[] for _ in range(n)]
    totals = [0.0] * n
    for cost, job in sorted(work, key=lambda w: -w[0]):  # longest first, each to the least loaded process
        i = totals.index(min(totals))
        shares[i].append(job)
        totals[i] += cost
    folder = tempfile.mkdtemp(prefix="tracejit-compile-")
    children: list = []
    failed: list[str] = []
    try:
        for k, share in enumerate(shares[1:]):
            try:
                children.append(_fork_share(share, os.path.join(folder, str(k))))
            except OSError as e:  # (no fork: out of memory or processes) the run compiles the rest
                failed.append(f"no fork: {e}")
                break
        for job in shares[0]:
            try:
                job()
            except Exception:  # noqa: BLE001 -- the run compiles it again and reports it (or falls back)
                pass
        t2 = time.perf_counter()
        for proc, wake in children:
            try:
                rc = proc.wait(TIMEOUT_S, STUCK_S, wake)
            finally:
                os.close(wake)
                with _live_lock:
                    _live.discard(proc)
            if rc != 0:
                failed.append(rc if isinstance(rc, str) else f"pid {proc.pid} exited with code {rc}")
        children = []
    finally:
        for proc, _ in children:  # (an exception or Ctrl-C here: no child outlives the compile it served)
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
    t3 = time.perf_counter()
    return {"processes": n, "functions": len(work), "s": t3 - t0, "failed": failed,
            "dry_run_s": t1 - t0, "own_s": t2 - t1, "wait_s": t3 - t2}


def _fork(work, folder: str, label: str | None):
    """Fork a child that runs `work` (_forked_child) and leaves; returns (its _Forked, registered as live; a pipe end
    that reaches EOF when it exits: the caller closes it). While this thread holds Numba's compiler lock no other
    thread is inside Numba's compiler or LLVM; the child's one thread is this one, holding it there."""
    from numba.core.compiler_lock import global_compiler_lock

    if not _exit_hook:
        _exit_hook.append(atexit.register(_kill_live))
    ppid = os.getpid()
    wake, keep = os.pipe()
    try:
        with global_compiler_lock:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: a fork of a process with threads)
                try:
                    pid = os.fork()
                except OSError:
                    os.close(wake)
                    raise
            if pid == 0:
                os.close(wake)
                _forked_child(work, folder, ppid)  # (never returns)
        proc = _Forked(pid)
        proc.tracejit_label, proc.tracejit_started = label, time.monotonic()
        with _live_lock:
            _live.add(proc)
        return proc, wake
    finally:
        os.close(keep)


def _fork_share(share: list, folder: str):
    """Fork a child that compiles the jobs in `share`: (its _Forked, its wake pipe end), as `_fork`."""
    os.makedirs(folder)
    return _fork(_share_work(share), folder, "compile share")


def _share_work(share: list):
    def work(t0: float) -> dict:
        for job in share:
            try:
                job()
            except Exception:  # noqa: BLE001 -- the parent's run compiles it and reports it
                pass
        return {"jobs": len(share), "cpu_s": time.process_time()}
    return work


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
    ahead = compile_ahead(prog, backend, job["inputs"], _child_processes())
    prog.run(job["inputs"])
    hits, misses = backend.tier_loads(prog)
    tmp = os.path.join(os.path.dirname(job_path), "done.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"kernels": hits + misses, "compiled": misses, "loaded": hits, "started_s": t0,
                   "job_s": t1 - t0, "rebuild_s": t2 - t1, "run_s": time.time() - t2,
                   "cpu_s": time.process_time(), "fallbacks": prog.fallbacks, "ahead": ahead}, f)
    os.replace(tmp, os.path.join(os.path.dirname(job_path), "done.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
