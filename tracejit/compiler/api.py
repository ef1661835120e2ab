"""`tracejit.compile` and `tracejit.explain`: guards, the variant cache, eager fallback, inspection.

    @tracejit.compile
    def train_step(x, y):
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
        return loss
"""

from __future__ import annotations

import builtins
import functools
import inspect
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping

import numpy as np

from .. import _shared
from .. import dispatch as T
from .._tensor import Tensor
from ..autograd.mode import _mode as _grad_mode
from ..autograd.mode import _off as _grad_off
from ..devices import CPU, mixed_devices_message, transfer
from ..errors import OpError, TraceError
from ..factories import full
from ..ops import Kind
from . import interrupt, log
from .backends import backend_name_for_device, get_backend, note_compiling
from .dump import Dumper, dump_root
from .ir import count_by_kind, print_graph, verify
from .passes import PIPELINE, run_pipeline
from .state import StateIndex
from .trace import describe_arg, side_effect_note, trace, unflatten
from .watch import SideEffectWarning, warn_at_user

DEFAULT_BACKEND = "cpu"
# Held while a variant is traced and compiled and while `variants` changes (calls only read it): one compile
# at a time in the process (tracing, the passes and the backends share Value ids and caches), and a thread
# that waited finds the variant another thread just compiled instead of compiling it again. Compiled
# programs run without it.
COMPILE_LOCK = threading.RLock()


class RecompileWarning(UserWarning):
    pass


class _NeedsKernels(Exception):
    """compile_variant(shared_only=True): this variant would compile kernels (cache_limit is reached)."""


def _shares_all(program) -> bool:
    """Whether `program` compiles nothing new: all its generated kernels were compiled in this process already
    (by a variant of another batch size). Programs that cannot tell count as compiling."""
    stats = getattr(program, "shared_kernels", None)
    if stats is None:
        return False
    n, shared = stats()
    return n > 0 and shared == n


class FallbackWarning(UserWarning):
    pass


def _verify_each() -> bool:
    """TRACEJIT_VERIFY=each: verify the graph after every pass (default: the traced and the final graph only;
    verifying after each of the ~10 passes was ~0.9 s of a cold gpt compile). Pass tests verify each pass."""
    return os.environ.get("TRACEJIT_VERIFY", "").strip().lower() in ("each", "all", "1")


class StageText(Mapping):
    """{stage name: IR text} of a variant, each text rendered on first access from the stage's graph."""

    def __init__(self, stage_graphs):
        self._graphs = dict(stage_graphs)
        self._text: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        text = self._text.get(name)
        if text is None:
            text = self._text[name] = print_graph(self._graphs[name])
        return text

    def __iter__(self):
        return iter(self._graphs)

    def __len__(self):
        return len(self._graphs)


class Variant:
    """One compiled specialization of a function: its graphs, program, bindings and guards."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def guard_failure(self, args) -> str | None:
        why = self.state_guard.check(args)
        if why:
            return why
        for b, t in self.box_guards:
            if b.kind == "box":
                if b.ref.type != t:
                    return f"{b.name} changed type from {t} to {b.ref.type}"
            elif b.kind == "grad":
                g = b.ref.get(args)._grad
                if g is None or g._box.type != t:
                    return f"{b.name} is missing or changed type"
                if g._box.device is not b.device:
                    return f"{b.name} moved from {b.device} to {g._box.device}"
        if self.device_moves != T._device_moves:  # some tensor moved to another device in place since last look
            for b, _ in self.box_guards:
                if b.kind == "box" and b.ref.device is not b.device:
                    return f"{b.name} moved from {b.device} to {b.ref.device}"
            self.device_moves = T._device_moves
        return None

    def inputs(self, args) -> list:
        """The program's input buffers for a call with `args` (what the runner reads, on the program's device)."""
        return [transfer(b.read(args), b.device, self.device) for b in self.bindings]


def _arg_key(a):
    if isinstance(a, Tensor):
        return ("T", a._box.type, a.requires_grad, a._box.device)
    if isinstance(a, np.ndarray):
        return None
    if a is None or isinstance(a, (bool, int, float, str)):
        return ("V", type(a), a)
    if isinstance(a, (tuple, list)):
        if any(isinstance(x, Tensor) for x in a):
            return None
        return ("S", type(a), tuple(_arg_key(x) for x in a))
    return ("O", id(a))


# compile(tiered=None) and TRACEJIT_TIERED unset: tiered in a compile process (see Tier, _tier_mode), where one can
# run and at least TIER_MIN_KERNELS kernels must compile. First-step bench, fresh processes, 2-core Zen 5 at load
# 7-12 (other jobs), first call returned / time to 1000 steps, blocking -> process: gpt fresh install 97.5 ->
# 13.9 s / 358 -> 306 s, gpt kernels cold 71.5 -> 3.8 s / 329 -> 249 s, LeNet fresh install 62.9 -> 12.9 s /
# 78.7 -> 81.7 s and 74.1 -> 13.0 s / 87.9 -> 90.2 s; LeNet kernels cold (4 kernels: blocks by default) 6.6 ->
# 0.8 s / 21.3 -> 23.6 s and 19.4 -> 24.4 s. In a thread (TRACEJIT_TIERED=thread) LeNet fresh took 131-238 s.
TIERED_DEFAULT = True
# TRACEJIT_TIER_PACE=k: after each reference call while the kernels compile, the calling thread waits k times
# that call's duration (less if the kernels get ready), leaving the compile thread the GIL. LeNet, fresh install,
# batch 64, load ~5 on 2 cores: k=0 first compiled step at 64 s (459 reference steps), 100 steps 17 s, 1000 steps
# 70 s; k=2: 40 s (99 steps), 40 s, 47 s; blocking: 23 s, 23 s, 28 s. Tiered is for the first steps: k=0.
TIER_PACE = float(os.environ.get("TRACEJIT_TIER_PACE", "0"))
# The default (tiered=None, TRACEJIT_TIERED unset) tiers a variant only when at least this many generated kernels
# must compile (TRACEJIT_TIER_MIN_KERNELS; None: TIER_MIN_KERNELS_AUTO by how the compile process starts). A forked
# one starts in milliseconds; a new interpreter in 2-5 s (Python, tracejit, Numba), which a short compile does not
# repay (LeNet, kernels cold, 4 kernels: first compiled step at 4.5 s and 1000 steps in 6.8-7.1 s, blocking 1.6 s
# and 4.6 s; forked: see TIER_MIN_KERNELS_AUTO).
TIER_MIN_KERNELS = int(os.environ["TRACEJIT_TIER_MIN_KERNELS"]) if os.environ.get("TRACEJIT_TIER_MIN_KERNELS") else None
TIER_MIN_KERNELS_AUTO = {"fork": 3, "spawn": 8}


def _tiered_env() -> bool | str | None:
    """TRACEJIT_TIERED: True (1), False (0), "thread" (tiered, compiling in a thread of this process), or None."""
    raw = os.environ.get("TRACEJIT_TIERED", "").strip().lower()
    if raw in ("", "default"):
        return None
    if raw in ("1", "on", "true", "yes", "process"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    if raw == "thread":
        return "thread"
    raise ValueError(f"TRACEJIT_TIERED={raw!r}: choose 1 (tiered), 0 (blocking) or thread (tiered, compiling in a "
                     f"thread of this process)")


class Tier:
    """Tiered execution of one variant: its first calls run the optimized graph on the reference backend (each
    op's NumPy ref: the values eager computes, the same inputs, outputs and write-back) while the kernels compile
    in the background; the first call after that is done switches the variant to the compiled program.

    Where (`mode`): "process" (the default where possible): a child process (compiler/background.py: a fork of
    this process made by the calling thread, or a new interpreter that rebuilds the program from its graph) runs
    the program once on a copy of the first call's inputs, which makes Numba compile every kernel into its disk
    cache; then a daemon thread here runs the program once on that copy, which loads each kernel from the disk
    cache. "thread": the daemon thread runs the program itself, compiling every kernel
    in this process -- Numba's typing and lowering hold the GIL, so the reference steps slow down while it
    compiles and the compile while they run (LLVM's optimization releases it); the child process only competes
    for a core.

    No step waits for Numba (with TRACEJIT_TIER_PACE=k a reference call is followed by a pause of k times its
    duration, which ends when the kernels are ready). The background run's results are discarded and it writes
    no state. An exception in it, or a child process that fails (crashes, is killed, cannot compile), is kept
    (`error`), logged, and the switch happens anyway: the compiled program then runs in the foreground, where it
    compiles and a compile error is raised at the user's call, as without tiering."""

    def __init__(self, variant: Variant, name: str, mode: str = "thread", after=()):
        self.name = name
        self.variant = variant
        self.mode = mode  # "process", "thread" or "after" (kernels another variant's tier is compiling: `after`)
        self.after = list(after)
        self.compiled = variant.program
        self.backend = get_backend(variant.backend)
        self.reference = get_backend("reference").compile(variant.graph)  # (runs any graph after the passes)
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self.error: BaseException | None = None
        self.reference_calls = 0
        self.started_at: float | None = None
        self.compile_s: float | None = None  # the background compile's wall seconds, once done
        self.switched = False
        self.child = None  # the compile process (mode "process"): background.Child
        self.loaded: tuple[int, int] | None = None  # (kernels loaded from the disk cache, compiled) by the thread

    def run(self, ins):
        """The runner's program: reference steps until the compiled program is ready, then the compiled one."""
        if self.done.is_set():
            if not self.switched:
                self.switched = True
                self.variant.runner = None  # the next call gets a runner around the compiled program itself
                if self.error is not None:
                    log.emit(f"{self.name}: the background compile failed ({type(self.error).__name__}: "
                             f"{self.error}); this call runs the compiled program in the foreground")
            return self.compiled.run(ins)
        self.reference_calls += 1
        if self.thread is None and self._starting.acquire(blocking=False):  # (one thread starts the compile)
            try:
                snapshot = [a.copy() if isinstance(a, np.ndarray) else a for a in ins]  # (state changes in place)
                outs = self._reference_run(ins)  # (raises as eager would; the compile then starts on the next call)
                if self.thread is None:
                    self.start(snapshot)
            finally:
                self._starting.release()
        else:
            t0 = time.perf_counter()
            outs = self._reference_run(ins)
            if TIER_PACE > 0:  # leave the compile the GIL for a while (it returns as soon as the kernels are ready)
                self.done.wait((time.perf_counter() - t0) * TIER_PACE)
        # a ref output may be a view of an input or of another output: the compiled program may later update
        # state in place, so each written value gets storage of its own (as the compiled program's outputs have)
        return [o.copy() if isinstance(o, np.ndarray) and o.base is not None else o for o in outs]

    def _reference_run(self, ins):
        """The reference program, in the backend's context for it (the CPU backend: one BLAS thread, so that
        NumPy's GEMMs do not spin on both cores against the compile)."""
        quiet = getattr(self.backend, "tier_reference_calls", None)
        if quiet is None:
            return self.reference.run(ins)
        with quiet():
            return self.reference.run(ins)

    def start(self, inputs) -> None:
        self.started_at = time.perf_counter()
        if self.mode == "process":
            from . import background

            try:
                self.child = background.Child(self.compiled, self.backend, inputs, name=self.name)
                if self.child.how == "fork":
                    self.child.start()  # (here: Numba's TBB pool survives a fork from the main thread only)
            except Exception as e:  # noqa: BLE001 -- no compile process: compile in the thread instead
                self.child = None
                self.mode = "thread"
                log.emit(f"{self.name}: no compile process ({type(e).__name__}: {e}); compiling in a thread",
                         at=log.VERBOSE)
        self.thread = threading.Thread(target=self._compile, args=(inputs,), name=f"tracejit-compile {self.name}",
                                       daemon=True)
        self.thread.start()

    def _compile(self, inputs) -> None:
        try:
            for other in self.after:  # (the kernels it shares are theirs: compiled once, there)
                other.wait()
            if self.mode == "process":
                self._in_child(inputs)
            self.compiled.run(inputs)  # each kernel's first call compiles or loads it; the results are dropped
            if self.mode == "process":
                from . import background

                self.loaded = background.loads(self.compiled, self.backend)
        except BaseException as e:  # noqa: BLE001 -- kept and reported by the foreground (run, explain)
            self.error = e
        finally:
            self.compile_s = time.perf_counter() - self.started_at
            self.done.set()
            loaded = f", {self.loaded[0]} kernels loaded from the disk cache" if self.loaded else ""
            log.emit(f"{self.name}: kernels ready after {self.compile_s:.1f} s in the background {self.mode}"
                     f"{loaded} ({self.reference_calls} calls ran on the reference backend meanwhile)", at=log.VERBOSE)

    def _in_child(self, inputs) -> None:
        """Compile every kernel into the disk caches in a child process; raise BackgroundCompileError if it
        fails. A job that cannot be written (an attribute that does not pickle) compiles in this thread."""
        try:
            why = self.child.run()
        except Exception as e:  # noqa: BLE001 -- writing or starting the job failed: compile here instead
            self.mode = "thread"
            log.emit(f"{self.name}: no compile process ({type(e).__name__}: {e}); compiling in a thread",
                     at=log.VERBOSE)
            return
        if why is not None:
            raise BackgroundCompileError(why)

    def wait(self, timeout: float | None = None) -> bool:
        """Until the background compile is done (True) or `timeout` seconds passed (False)."""
        if self.thread is None:
            return self.done.is_set()
        return self.done.wait(timeout)

    def describe(self) -> str:
        where = {"process": "a background process", "after": "another batch size's background compile"}.get(
            self.mode, "a background thread")
        if self.thread is None:
            state = "the background compile starts after the first call that succeeds"
        elif not self.done.is_set():
            state = f"compiling in {where} for {time.perf_counter() - self.started_at:.1f} s so far"
        else:
            state = f"kernels ready after {self.compile_s:.1f} s in {where}"
            if self.loaded is not None:
                state += (f" ({self.loaded[0]} loaded here from the disk cache it filled, {self.loaded[1]} "
                          f"compiled here)")
            if self.error is not None:
                state += f" (it raised {type(self.error).__name__}: {self.error})"
        return (f"tiered: {self.reference_calls} calls ran on the reference backend (NumPy) while the kernels "
                f"compiled; {state}" + ("; calls now run the compiled program" if self.switched else ""))


class BackgroundCompileError(RuntimeError):
    """The compile process of a tiered variant failed (its exit code and last line of stderr)."""


def make_runner(v: Variant):
    """A Python function, generated for this variant, that reads its inputs, runs its program and writes
    state back: the binding kinds are resolved once, so a call is straight-line code (linreg: 4.1 -> ~1.5 us
    of Python per step around the program, which is most of what a tiny compiled step costs).

    State is written back only after the whole program ran, so a failing call leaves it untouched."""
    tier = getattr(v, "tier", None)
    prog_run = v.program.run if tier is None or tier.switched else tier.run
    ns: dict = {"_prog_run": prog_run, "_make": Tensor._make, "_make_on": Tensor._make_on,
                "_unflatten": unflatten, "_structure": v.structure, "_interrupted": interrupt.raised_interrupt,
                "_deferred": interrupt.deferred, "_T": T, "_tracing": T._tracing, "_settle": T._concrete_values,
                "_xfer": transfer, "_shared": _shared, "_SB": _shared.SharedBox}
    named: dict[int, str] = {}

    def obj(o):  # a name in the runner's namespace for an object its source refers to
        if id(o) in named:
            return named[id(o)]
        name = named[id(o)] = f"_o{len(ns)}"
        ns[name] = o
        return name

    here = v.device  # where the program's buffers live: storage elsewhere is moved on the way in and out

    def moved(expr, src, dst):
        return expr if src is dst else f"_xfer({expr}, {obj(src)}, {obj(dst)})"

    def made(idx):
        d = v.out_devices[idx]
        out = moved(f"outs[{idx}]", here, d)
        return f"_make({out}, {obj(v.out_types[idx])})" if d is CPU else \
            f"_make_on({out}, {obj(v.out_types[idx])}, {obj(d)})"

    reads = ", ".join(moved(b.expr(obj), b.device, here) for b in v.bindings)
    # while another thread traces (or did since the first read), inputs it captured may hold its Values:
    # `_settle` waits for that trace to end (tensor._concrete_values).
    # Ctrl-C inside a kernel surfaces as a SystemError: raise the KeyboardInterrupt behind it (nothing was
    # written back yet). A program that updates state in place cannot be undone halfway, so there Ctrl-C is held
    # until the step and its write-back are complete: state is always as before a call or as after it.
    what = repr(f"compiled {v.traced.name}")
    body = ["ev = _T._trace_events", f"ins = [{reads}]", "if _tracing or ev != _T._trace_events:",
            f"    ins = _settle({what}, lambda: [{reads}])",
            "try:", "    outs = _prog_run(ins)", "except SystemError as e:",
            "    ki = _interrupted(e)", "    if ki is None:", "        raise", "    raise ki from None"]
    writes = []
    for b, idx in v.writes:
        writes += [f"box = {b.box_expr(obj)}", f"box.value = {moved(f'outs[{idx}]', here, b.device)}",
                   "box.version += 1"]
    if writes and not v.program.updates_in_place:
        # a box whose array NumPy shares (t.numpy(), from_numpy) is written by copying into that array
        # (tracejit/_shared.py): once any exists, the write-back holds Ctrl-C too, so it is never left halfway
        # (only these boxes matter: a type check each, after one flag read when nothing was ever shared)
        any_shared = " or ".join(f"type({b.box_expr(obj)}) is _SB" for b, _ in v.writes)
        writes = [f"if _shared.ever and ({any_shared}):", "    with _deferred():"] + \
                 ["        " + w for w in writes] + \
                 ["else:"] + ["    " + w for w in writes]
    body += writes
    for ref, idx, _ in v.grad_sets:
        value = "None" if idx is None else made(idx)
        body.append(f"{ref.expr(obj)}._grad = {value}")
    leaves = ", ".join(made(i) for i in range(v.n_returns))
    body.append(f"result = _unflatten(_structure, [{leaves}])")
    if v.program.updates_in_place:
        body = ["with _deferred():"] + ["    " + line for line in body]
    lines = ["def run(args):"] + ["    " + line for line in body] + ["    return result"]
    exec(builtins.compile("\n".join(lines) + "\n", f"<tracejit runner {v.number}>", "exec"), ns)
    run = ns["run"]
    run.source = "\n".join(lines)
    return run


def _prepare_default_backend() -> None:
    """compile() without a backend: make the CPU backend now, as compile(backend="cpu") does, so that it gets
    ready (imports, Numba's initialization: backends/cpu/prepare.py) in the background while the user's code
    runs on, not in the first call (~0.4 s of a warm LeNet first call). A function whose tensors live elsewhere
    gets its own backend at its first call, as before."""
    try:
        get_backend(DEFAULT_BACKEND)
    except Exception:  # noqa: BLE001 -- unavailable here: the first call says why, where it is needed
        pass


class CompiledFunction:
    """What `@tracejit.compile` returns. Call it like the function; inspect with `.ir()`, `explain()`."""

    def __init__(self, fn, backend=None, dump=None, fallback=None, cache_limit=8, passes=None, dynamic=None,
                 tiered=None):
        if fallback not in (None, "eager"):
            raise ValueError("fallback must be None or 'eager'")
        if dynamic not in (None, True, False):
            raise ValueError("dynamic must be None, True or False")
        if tiered not in (None, True, False):
            raise ValueError("tiered must be None, True or False")
        self.tiered = tiered
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "fn")
        note_compiling()  # eager ops in this process keep their NumPy refs unless asked (backends.eager_mode)
        functools.update_wrapper(self, fn)
        # backend=None: each variant runs on the backend of the device its tensors live on ("cpu" on the CPU)
        self.backend_name = backend or DEFAULT_BACKEND
        self.backend = get_backend(backend) if backend is not None else None
        if backend is None:
            _prepare_default_backend()
        self.dump = dump
        self.fallback = fallback
        self.cache_limit = cache_limit
        self.passes = passes
        self.dynamic = dynamic
        self._sizes: dict = {}  # per backend: kernels shared across batch sizes
        self._numbered = 0  # variants compiled so far (history keeps the live ones)
        self.variants: dict = {}
        self.history: list[Variant] = []
        self.eager_keys: set = set()
        self._over_keys: set = set()  # keys that would need kernels of their own past cache_limit: eager
        self.eager_calls = 0
        self.log: list[str] = []
        self._warned = set()
        self._limit_warned = False
        self._noted = False
        self._last: Variant | None = None
        try:
            self._sig = inspect.signature(fn)
            self._names = [p for p in self._sig.parameters]
        except (TypeError, ValueError):
            self._sig, self._names = None, []

    # ---- calling
    def _bind(self, args, kwargs):
        if self._sig is not None and (kwargs or len(args) < len(self._names)):
            ba = self._sig.bind(*args, **kwargs)
            ba.apply_defaults()
            return tuple(ba.args) + tuple(ba.kwargs.values())
        return args

    def _arg_name(self, i):
        return self._names[i] if i < len(self._names) else f"arg{i}"

    def _key(self, args):
        keys = []
        first_of: dict[int, int] = {}
        aliases = []  # the same storage passed twice is traced as one input: it must stay so
        for i, a in enumerate(args):
            k = _arg_key(a)
            if k is None:
                what = "a numpy.ndarray" if isinstance(a, np.ndarray) else "a list/tuple containing tensors"
                raise TypeError(f"{self.__name__}: argument {i} ({self._arg_name(i)!r}) is {what}; compiled "
                                f"functions take tracejit tensors (use tracejit.from_numpy / tracejit.tensor), "
                                f"numbers and other hashable values")
            keys.append(k)
            if k[0] == "T":
                aliases.append(first_of.setdefault(id(a._box), i))
        return (not _grad_off or _grad_mode.enabled, tuple(keys), tuple(aliases))  # (grad mode)

    def __call__(self, *args, **kwargs):
        args = self._bind(args, kwargs)
        if T.current_tracer() is not None:
            return self.fn(*args)  # nested inside another trace: inline
        key = self._key(args)
        if key in self.eager_keys:
            return self.fn(*args)
        candidates = self.variants.get(key, ())
        for i, v in enumerate(candidates):
            if v.guard_failure(args) is None:
                if i and COMPILE_LOCK.acquire(blocking=False):  # (busy: another thread compiles; skip it)
                    try:  # most recently used first: a steady loop checks one variant's guards per call
                        if i < len(candidates) and candidates[i] is v:  # (unchanged meanwhile)
                            candidates.insert(0, candidates.pop(i))
                    finally:
                        COMPILE_LOCK.release()
                return self._run(v, args)
        return self._compile_and_run(args, key)

    def _run(self, v: Variant, args):
        if v.runner is None:
            v.runner = make_runner(v)
        out = v.runner(args)
        self._last = v
        return out

    # ---- compiling
    def _why_new(self, args, key) -> str:
        if not self.history:
            return "first call"
        last = self._last or self.history[-1]  # the variant the previous call ran
        if last.key == key:
            return last.guard_failure(args) or "guards changed"
        if last.key[0] != key[0]:
            return f"grad mode changed to {'enabled' if key[0] else 'disabled'}"
        for i, (a, b) in enumerate(zip(last.key[1], key[1])):
            if a != b:
                return (f"argument {i} ({self._arg_name(i)!r}) changed from {last.arg_desc[i]} to "
                        f"{describe_arg(args[i])}")
        if last.key[2] != key[2]:
            return "tensor arguments now share storage differently"
        return "argument count changed"

    def compile_variant(self, args, key=None, reason=None, shared_only=False) -> Variant | None:
        """Trace and compile for `args` without running. None when the call must run eagerly. With
        `shared_only`, _NeedsKernels when the variant would compile kernels (instead of sharing those of another
        batch size), after undoing what the trace did."""
        key = key or self._key(args)
        reason = reason or self._why_new(args, key)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        names = [self._arg_name(i) for i in range(len(args))]
        state = StateIndex(self.fn, args, names)
        try:
            tracer, structure, writes, grad_sets, new_state = trace(self.fn, args, names, state, self.__name__)
        except TraceError as e:
            state.restore_optimizer_state()
            state.undo_python_state()
            if self.fallback == "eager":
                if str(e) not in self._warned:
                    self._warned.add(str(e))
                    warn_at_user(f"{self.__name__} runs eagerly: {e}", FallbackWarning)
                self.eager_keys.add(key)
                return None
            raise
        except BaseException:
            state.restore_optimizer_state()
            raise
        if new_state:
            # e.g. an optimizer's first step creates its state lazily: run this call eagerly and trace the
            # steady state on the next call (tracing it now would bake "create" into every call)
            state.restore_optimizer_state()
            state.undo_python_state()
            self.log.append(f"call ran eagerly: it creates state ({', '.join(new_state[:3])}...)")
            return None
        timings["trace"] = time.perf_counter() - t0
        self._note_python_effects(tracer.watch)
        graph = verify(tracer.builder.graph)
        backend_name, backend = self._backend_for(tracer)
        variant_no = self._numbered + 1
        root = dump_root(self.dump)
        dumper = Dumper(root, self.__name__, variant_no) if root else None
        if dumper:
            dumper.stage("00_traced", graph)
        t1 = time.perf_counter()
        stage_graphs = [("traced", graph)]
        g = graph
        each = _verify_each() or dumper is not None
        for i, p in enumerate(self.passes if self.passes is not None else PIPELINE, start=1):
            g = run_pipeline(g, [p], None, timings, check=each, target=backend)
            stage_graphs.append((p.__name__, g))
            if dumper:
                dumper.stage(f"{i:02d}_{p.__name__}", g)
        if not each:
            verify(g)  # (the final graph always; after every pass with TRACEJIT_VERIFY=each or a dump)
        # each stage's IR text is rendered when asked for (cf.ir(stage), v.stages[...]): rendering all of them
        # took ~0.7 s of a cold gpt compile. A pass returns a new graph (stage_graphs keeps each one).
        stages = StageText(stage_graphs)
        timings["passes"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        sizes = self._sizes_for(backend_name, backend)
        if shared_only and (sizes is None or not sizes.templates):  # nothing to share: it would compile
            state.restore_optimizer_state()
            state.undo_python_state()
            raise _NeedsKernels
        if sizes is None:
            program = backend.compile(g, dumper=dumper, timings=timings)
        else:
            # the backend traces this function at another batch size (`_probe`) only if it has no templates yet
            sizes.probe = lambda: self._probe(args, names, backend, timings)
            sizes.batch = (self._batch_group(args) or (None,))[0]
            sizes.always_replay = self.dynamic is True
            try:
                program = backend.compile(g, dumper=dumper, timings=timings, sizes=sizes)
            finally:
                sizes.probe = sizes.batch = None
        timings["backend"] = time.perf_counter() - t2
        if shared_only and not _shares_all(program):
            state.restore_optimizer_state()
            state.undo_python_state()
            raise _NeedsKernels
        bind_of = {lf.value.id: lf.binding for lf in tracer.lifted.values()}
        from .trace import Binding

        here = backend.device
        for v, arr in tracer.consts:  # host arrays: moved once to where the program runs
            bind_of[v.id] = Binding("const", arr if here is CPU else backend.to_device(arr), "const", here)
        bindings = [bind_of[v.id] for v in g.inputs]
        box_guards = [(b, lf.value.type) for lf in tracer.lifted.values()
                      for b in [lf.binding] if b.kind in ("box", "grad")]
        variant = Variant(
            key=key, number=variant_no, reason=reason, graph=g, traced=graph, stages=stages,
            stage_graphs=stage_graphs, program=program, bindings=bindings,
            writes=[(b, i) for b, i in writes], grad_sets=grad_sets, structure=structure,
            n_returns=len(g.returns()), out_types=[v.type for v in g.outputs],
            state_guard=state.guard_snapshot(tracer.modules_called.values(), tracer.grad_guards(),
                                             tracer.watch.guards()),
            box_guards=box_guards, runner=None,
            arg_desc=[describe_arg(a) for a in args], timings=timings, backend=backend_name, device=here,
            out_devices=list(tracer.out_devices), device_moves=T._device_moves,
            batch=self._batch_group(args) if sizes is not None else None,
            shared=bool(self.history) and _shares_all(program),  # (another variant of this function's kernels)
            total_time=time.perf_counter() - t0)
        if dumper:
            dumper.text("explain.txt", explain_variant(self, variant) + "\n")
            variant.dump_dir = dumper.dir
        return variant

    # ---- kernels shared across batch sizes (backends/sizes.py)
    def _sizes_for(self, backend_name, backend):
        """The backend's record of what this function's variants share (Backend.size_reuse), or None."""
        if self.dynamic is False:
            return None
        if backend_name not in self._sizes:
            self._sizes[backend_name] = backend.size_reuse()
        return self._sizes[backend_name]

    @staticmethod
    def _batch_group(args) -> tuple:
        """(batch size, positions of the tensor arguments whose first dim is it): the first dim of the first
        tensor argument of rank >= 1, when >= 2 (sizes 0 and 1 change what broadcasts: never shared)."""
        first = next((a for a in args if isinstance(a, Tensor) and a.ndim >= 1), None)
        if first is None or first.shape[0] < 2:
            return ()
        n = first.shape[0]
        return n, tuple(i for i, a in enumerate(args) if isinstance(a, Tensor) and a.ndim >= 1 and a.shape[0] == n)

    def _probe(self, args, names, backend, timings):
        """This function's optimized graph at batch size n + 1 (tensors of zeros in the batch arguments), or
        None when it has no batch or does not trace there: the backend compares its kernels' sources with the
        ones at n to find the numbers that follow the batch size. What the trace did to Python state (lists,
        counters, lazily created optimizer state) is undone, as for a discarded trace."""
        t0 = time.perf_counter()
        group = self._batch_group(args)
        if not group:
            return None
        n, where = group
        probe_args = list(args)
        for i in where:
            a = args[i]
            probe_args[i] = full((n + 1,) + tuple(a.shape[1:]), 0, dtype=a.dtype, device=a._box.device,
                                 requires_grad=a.requires_grad)
        state = StateIndex(self.fn, probe_args, names)
        try:
            tracer, _, _, _, new_state = trace(self.fn, probe_args, names, state, self.__name__)
        except Exception:  # noqa: BLE001 -- it traces at n (it did), not at n + 1: its kernels stay static
            return None
        finally:
            state.restore_optimizer_state()
            state.undo_python_state()
        if new_state:
            return None
        g = run_pipeline(tracer.builder.graph, self.passes if self.passes is not None else PIPELINE,
                         check=_verify_each(), target=backend)  # (its kernels are compared, never run)
        if timings is not None:
            timings["probe"] = time.perf_counter() - t0
        return g

    def _backend_for(self, tracer):
        """(name, backend) that runs this variant: the one asked for, else the backend of the device where the
        traced tensors (arguments and captured state) live. Two such devices: PyTorch's error, naming both and
        a tensor on each. CPU tensors may join a program on another device (0-d hyperparameters, the generator's
        state): they are moved on each call."""
        where: dict = {}
        for lf in tracer.lifted.values():
            if lf.binding.device is not CPU:
                where.setdefault(lf.binding.device, lf.binding.name)
        if len(where) > 1:
            (d1, n1), (d2, n2) = list(where.items())[:2]
            raise OpError(f"{self.__name__}: {mixed_devices_message(d1, d2)} ({n1} is on {d1}, {n2} on {d2})")
        if self.backend is not None:
            return self.backend_name, self.backend
        name = backend_name_for_device(next(iter(where), CPU))
        return name, get_backend(name)

    def _note_python_effects(self, watch):
        """Once per function: the log says Python side effects run at trace time only; assigning a global or
        nonlocal variable (a counter) warns, once per variable, since the compiled calls will not."""
        if not self._noted:
            self._noted = True
            self.log.append(side_effect_note(self.__name__, watch.notes))
        for kind, name, loc in watch.global_writes():
            if (kind, name) not in self._warned:
                self._warned.add((kind, name))
                warn_at_user(f"{self.__name__} assigns the {kind} variable {name!r} (at {loc}): Python "
                             f"statements run only while the function is traced, not on every compiled call",
                             SideEffectWarning)

    def _compile_and_run(self, args, key):
        with COMPILE_LOCK:  # one compile at a time in the process (ids, caches); the first run compiles kernels
            variant = self._lookup(args, key)  # compiled by another thread while this one waited?
            if variant is None and key not in self.eager_keys:
                reason = self._why_new(args, key)
                # past cache_limit variants that compiled kernels, a new call may still get a variant that shares
                # the kernels of another batch size (it costs a trace, no compile)
                over_limit = key in self._over_keys
                if not over_limit:
                    try:
                        variant = self._compile_first_run(args, key, reason,
                                                          self._kernel_variants() >= self.cache_limit)
                    except _NeedsKernels:
                        self._over_keys.add(key)
                        over_limit = True
                    if variant is not None:
                        out, variant.first_out = variant.first_out, None
                        return out
            if variant is not None:
                return self._run(variant, args)
        # eager calls run outside the lock: user code must not hold up other threads' compiles
        if key in self.eager_keys:
            return self.fn(*args)
        if over_limit:
            return self._over_limit(args, reason)
        self.eager_calls += 1
        return self.fn(*args)

    def _compile_first_run(self, args, key, reason, shared_only=False) -> Variant | None:
        """Compile a variant for this call and run it once (its output in `first_out`); None: run eagerly.
        shared_only: only a variant that shares all its kernels will do (else _NeedsKernels)."""
        number = self._numbered + 1
        rss0 = log.rss_bytes()
        what = f"{self.__name__} ({reason})" if number == 1 else f"{self.__name__} variant {number}"
        # Ctrl-C while Numba compiles is held until the kernel at hand is built (interrupt.check() between kernels)
        with interrupt.deferred(), log.CompileProgress(what) as progress:
            variant = self.compile_variant(args, key, reason, shared_only)
            if variant is None:
                return None  # this call runs eagerly
            if self.history:
                if variant.shared:
                    log.emit(f"{self.__name__}: variant {number} runs the kernels compiled for another batch size "
                             f"(no compile): {reason}")
                else:
                    n, k = getattr(variant.program, "shared_kernels", lambda: (0, 0))()
                    reuse = f"; {k} of its {n} kernels reuse another batch size's" if k else ""
                    log.emit(f"recompiling {self.__name__} (variant {number}, cache_limit={self.cache_limit}): "
                             f"{reason}{reuse}")
            self._add(variant)
            mode = self._tier_mode(variant)
            if mode is not None:  # the first calls run on the reference backend while Numba compiles
                after = self._compiling_for(variant) if mode == "after" else ()  # (the other modes wait for none)
                variant.tier = Tier(variant, self.__name__, mode, after)
            else:  # (blocking) several kernels to compile: share them out over processes first
                variant.ahead = self._compile_ahead(variant, args)
            variant.first_out = self._run(variant, args)  # Numba compiles (or loads) the kernels on their first call
            progress.finish(self._compile_summary(variant))
        log.emit(f"{self.__name__} variant {number}: " + ", ".join(f"{k} {_ms(t)}" for k, t in variant.timings.items())
                 + f"; first call {_ms(time.perf_counter() - progress.t0)}", at=log.VERBOSE)
        rss1 = log.rss_bytes()
        variant.rss_added = None if rss0 is None or rss1 is None else rss1 - rss0
        variant.first_call_s = time.perf_counter() - progress.t0
        return variant

    def _compile_ahead(self, variant, args) -> dict | None:
        """Before a blocking first run that compiles at least two kernels: compile them in several processes
        (compiler/background.compile_ahead; TRACEJIT_COMPILE_PROCESSES), the run then loads them. None when that
        was not done (one CPU, no safe fork, one kernel, a backend that compiles nothing on first run)."""
        if variant.shared or variant.device is not CPU:
            return None
        if any(n.body is None and n.op.kind is Kind.COLLECTIVE for n in variant.graph.nodes):
            return None  # (the dry run would start collectives no other rank matches)
        stats = getattr(variant.program, "cache_stats", None)
        if stats is None:
            return None
        n, hits = stats()
        if n - hits < 2:
            return None
        from . import background

        try:
            done = background.compile_ahead(variant.program, get_backend(variant.backend), variant.inputs(args))
        except Exception as e:  # noqa: BLE001 -- an optimization: the run compiles the kernels as it would have
            log.emit(f"{self.__name__}: compiling in several processes failed ({type(e).__name__}: {e}); the "
                     f"kernels compile in this one")
            return None
        if done is not None:
            log.emit(f"{self.__name__}: {done['functions']} kernels compiled in {done['processes']} processes in "
                     f"{done['s']:.2f} s (finding their argument types {done['dry_run_s']:.2f} s, this process's "
                     f"share {done['own_s']:.2f} s, then waiting {done['wait_s']:.2f} s)"
                     + (f"; {'; '.join(done['failed'])}" if done["failed"] else ""), at=log.VERBOSE)
        return done

    def _compiling_for(self, variant) -> list:
        """The tiers of other variants still compiling in the background every kernel `variant` needs (a new batch
        size whose size templates are theirs): `variant` then runs on the reference backend until they are done
        ("after"), rather than compiling the same kernels again in the foreground."""
        pending = [v.tier for v in self.history
                   if v is not variant and getattr(v, "tier", None) is not None and not v.tier.done.is_set()]
        mine = {id(s.fn) for s in getattr(variant.program, "_generated", list)()}
        if not pending or not mine:
            return []
        theirs = {id(s.fn) for t in pending for s in getattr(t.compiled, "_generated", list)()}
        return pending if mine <= theirs else []

    def _tier_mode(self, variant) -> str | None:
        """Tiered execution (Tier) for this variant: "process", "thread" or None (blocking). Asked for
        (compile(tiered=True), TRACEJIT_TIERED=1 or thread, else TIERED_DEFAULT), a CPU program, and something to
        compile: a variant whose kernels are all in the kernel cache or shared with another batch size loads them
        at once (blocking: that is fast), and one whose kernels another variant's tier is still compiling runs on
        the reference backend until that is done ("after"). A child process compiles where it can (two CPUs, the
        disk caches: compiler/background.unusable); elsewhere a thread does when tiering was asked for, and the default
        blocks (a compile thread fights the steps for the GIL: slower to 1000 steps than blocking)."""
        if self._compiling_for(variant):
            return "after"
        want = self.tiered if self.tiered is not None else _tiered_env()
        default = want is None
        if default:
            want = TIERED_DEFAULT
        if not want or variant.shared or variant.device is not CPU:
            return None
        if any(n.body is None and n.op.kind is Kind.COLLECTIVE for n in variant.graph.nodes):
            # the background run would start collectives no other rank matches (a data-parallel step blocks)
            return None
        prog = variant.program
        if getattr(prog, "shared_kernels", None) is None:  # (only the CPU backend's programs compile on first call)
            return None
        n, hits = prog.cache_stats()
        if hits >= n:
            return None
        if want == "thread":
            return "thread"
        from . import background

        backend = get_backend(variant.backend)
        why = background.unusable(prog, backend)
        if default:
            least = TIER_MIN_KERNELS
            if least is None:
                least = TIER_MIN_KERNELS_AUTO[background.start_method(backend)] if why is None else 1
            if n - hits < least:
                return None  # a short compile: the compile process's start would cost more than early steps gain
        if why is None:
            return "process"
        if default:
            return None
        log.emit(f"{self.__name__}: the kernels compile in a background thread, not a process ({why})", at=log.VERBOSE)
        return "thread"

    def _compile_summary(self, variant) -> str:
        n, hits = variant.program.cache_stats()
        kernels = f": {n} kernels, {hits} from the cache" if n else ""
        if getattr(variant, "tier", None) is not None:
            kernels += "; tiered: this call ran on the reference backend, the kernels compile in the background"
        ahead = getattr(variant, "ahead", None)
        if ahead is not None:
            kernels += f", compiled in {ahead['processes']} processes"
        shared = getattr(variant.program, "shared_kernels", lambda: (0, 0))()[1]
        if shared:
            kernels += f", {shared} compiled for another batch size (size templates)"
        note = next((line for line in self.log if line.startswith(f"{self.__name__}: Python statements")), None)
        first = "; " + note.split(": ", 1)[1] if variant.number == 1 and note else ""
        return kernels + first

    def _over_limit(self, args, reason):
        """Past cache_limit variants, a call that matches none of them runs eagerly (as torch.compile does):
        compiling on would make every call a slow cold compile and memory grow without bound."""
        self.eager_calls += 1
        if not self._limit_warned:
            self._limit_warned = True
            self.log.append(f"cache_limit={self.cache_limit} reached: calls that match no variant run eagerly "
                            f"(first because {reason})")
            warn_at_user(f"{self.__name__} reached cache_limit={self.cache_limit} compiled variants; calls that "
                       f"match none of them now run eagerly (slower). This call: {reason}. {self._churn(reason)}",
                       RecompileWarning)
        return self.fn(*args)

    def _churn(self, reason: str) -> str:
        """What kept changing across the recompiles, and how to stop it."""
        subjects = Counter(_reason_subject(v.reason) for v in self.history[1:])
        subjects[_reason_subject(reason)] += 1
        top = ", ".join(f"{s} ({n}x)" for s, n in subjects.most_common(3))
        if any(s.startswith("argument") for s in subjects):
            fix = ("keep argument shapes, dtypes and Python values fixed between calls (a DataLoader with "
                   "drop_last=True avoids a smaller last batch; pass changing numbers as tensors)")
        else:
            fix = "keep module modes, optimizer settings and the tensors the function reaches fixed between calls"
        return (f"What kept changing: {top}. To fix: {fix}, or raise the limit with "
                f"tracejit.compile(..., cache_limit=N). step.log lists every recompile.")

    def _lookup(self, args, key) -> Variant | None:
        return next((v for v in self.variants.get(key, ()) if v.guard_failure(args) is None), None)

    def _kernel_variants(self) -> int:
        """Live variants that compiled kernels of their own (what cache_limit bounds)."""
        return sum(1 for v in self.history if not v.shared)

    def _add(self, variant):
        self._numbered = max(self._numbered, variant.number)
        self.history.append(variant)
        self.variants.setdefault(variant.key, []).append(variant)
        self.log.append(f"compiled variant {variant.number}: {variant.reason}"
                        + (" (kernels shared with another batch size)" if variant.shared else ""))
        shared = [v for v in self.history if v.shared]
        if len(shared) > self.cache_limit:  # the oldest goes: its trace is redone if its shapes come back
            self._evict(shared[0])

    def _evict(self, v: Variant):
        """Forget a variant (one sharing another's kernels): its program, arena and graphs go with it."""
        self.history.remove(v)
        same = self.variants.get(v.key, [])
        if v in same:
            same.remove(v)
        if not same:
            self.variants.pop(v.key, None)
        if self._last is v:
            self._last = None
        release = getattr(v.program, "release", None)
        if release is not None:
            release()
        v.runner = None
        self.log.append(f"evicted variant {v.number} (more than cache_limit={self.cache_limit} batch sizes)")

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Until the background compiles of tiered variants (compile(tiered=True)) are done: True when none is
        still running after `timeout` seconds (None: no limit). The next call of each then runs its kernels."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        for v in list(self.history):
            tier = getattr(v, "tier", None)
            if tier is not None and tier.thread is not None:
                left = None if deadline is None else max(0.0, deadline - time.perf_counter())
                if not tier.wait(left):
                    return False
        return True

    # ---- inspection
    def latest(self) -> Variant:
        if not self.history:
            raise RuntimeError(f"{self.__name__} has not been compiled yet: call it (or tracejit.explain it) "
                               f"with example arguments first")
        return self.history[-1]

    def ir(self, stage: str | None = None) -> str:
        """IR text of the latest variant: stage 'traced', a pass name, or the final graph (default)."""
        v = self.latest()
        if stage is None or stage == "final":
            return print_graph(v.graph)
        if stage not in v.stages:
            raise KeyError(f"no stage {stage!r}; stages are {list(v.stages)}")
        return v.stages[stage]


def _reason_subject(reason: str) -> str:
    """What a recompile reason is about: "argument 0 ('x')" of "argument 0 ('x') changed from ... to ..."."""
    return re.split(r" (?:changed|switched|was replaced|no longer|now has|is missing|hyperparameters)", reason)[0]


def compile(fn=None, *, backend: str | None = None, dump: str | None = None, fallback: str | None = None,
            cache_limit: int = 8, passes=None, dynamic: bool | None = None, tiered: bool | None = None):
    """Trace `fn` (forward, backward, optimizer step) into one graph and run it compiled.

    backend: 'cpu' (Numba kernels), 'reference' (NumPy interpreter), 'cuda'; dump: a directory for IR
    dumps (or TRACEJIT_DUMP); fallback='eager' runs untraceable functions eagerly with a warning.

    dynamic: which sizes the kernels take as arguments rather than compiled-in constants (torch.compile's
    option). None (default, automatic): the batch size -- the first dim of the tensor arguments, when >= 2 --
    and the sizes that follow it, from the first compile (which traces `fn` a second time, at batch size
    n + 1, to find them); any other size after its first change (that change compiles kernels taking it as an
    argument; later values of it do not). A new batch size -- an epoch's partial last batch -- is then traced
    again (tens of ms) and runs the kernels already compiled with the choices of the batch size above it; a
    batch larger than all before decides its own (threads, GEMM splits) and compiles only if they differ.
    True: the same, but every batch size replays the first one's choices (never compiles). False: every size
    is compiled in, one set of kernels per shape. cache_limit bounds the variants that compiled kernels of
    their own and, separately, those that share them (the oldest is traced again if its shapes come back).

    Later calls replay the traced tensor operations: Python code in `fn` (print, logging, callbacks,
    counters, time.time()) runs only while it is traced. Python values it reads are guarded (arguments,
    and the globals and closure variables it reads: plain values by value, objects by identity), so a change
    retraces; Python's `random`, NumPy's global generator and schedulers stepped inside `fn` are refused
    with a TraceError naming the line. See the README's "Compile" section.

    tiered: True runs a new variant's first calls on the reference backend (NumPy, the values eager computes)
    while its kernels compile in a child process (a thread where none can run: one CPU, no disk cache), and
    switches to them once they are ready, so that no call waits for Numba; False compiles before the first call
    returns. None (default): TRACEJIT_TIERED (1, 0 or thread), else tiered in a child process when one can run
    and at least 3 kernels must compile (8 where the child cannot be a fork: TIER_MIN_KERNELS), blocking
    otherwise. Kernels found in the kernel
    cache are loaded at once either way. `explain` shows the state.
    """
    if fn is None:
        return functools.partial(compile, backend=backend, dump=dump, fallback=fallback,
                                 cache_limit=cache_limit, passes=passes, dynamic=dynamic, tiered=tiered)
    return CompiledFunction(fn, backend=backend, dump=dump, fallback=fallback, cache_limit=cache_limit,
                            passes=passes, dynamic=dynamic, tiered=tiered)


class Explanation:
    def __init__(self, text: str, variant: Variant | None):
        self.text = text
        self.variant = variant

    def __str__(self):
        return self.text

    __repr__ = __str__


def explain(fn, *args, **kwargs) -> Explanation:
    """Compile `fn` for these arguments (if needed, without running it) and describe the result."""
    cf = fn if isinstance(fn, CompiledFunction) else compile(fn)
    args = cf._bind(args, kwargs)
    key = cf._key(args)
    with COMPILE_LOCK:
        variant = cf._lookup(args, key)
        if variant is None:
            variant = cf.compile_variant(args, key)
            if variant is None:
                return Explanation(f"{cf.__name__}: this call runs eagerly "
                                   f"({cf.log[-1] if cf.log else 'fallback'})", None)
            cf._add(variant)
    return Explanation(explain_variant(cf, variant), variant)


def _memory_words(v: Variant) -> str:
    """What a variant costs in memory: memory_plan's planned peak (node by node, with reuse) against what eager
    allocates; what the runtime holds (its arena: step results in buffers allocated once, reused every call) and
    still allocates per call; and what compiling and loading its kernels added to the process (measured around
    its first call; kernels shared with other variants cost once)."""
    plan = next((n.split(": ", 1)[1] for n in v.graph.notes if n.startswith("memory_plan:")), None)
    parts = [f"planned: {plan}" if plan else "no memory plan"]
    mem = getattr(v.program, "memory", None)
    if mem is not None:
        m = mem()
        parts.append(f"runtime arena: {m['arena_bytes'] / 1e6:.2f} MB in {m['arena_buffers']} buffers for "
                     f"{m['arena_values']} step results (allocated once, reused by every call); "
                     f"{m['per_call_bytes'] / 1e6:.2f} MB of step results allocated per call (returned values, "
                     f"state not updated in place, generated segments' own arrays)")
    added = getattr(v, "rss_added", None)
    if added is None:
        parts.append("its first call has not run yet (that is when kernels are compiled or loaded)")
    else:
        parts.append(f"compiling and loading its kernels added {max(added, 0) / 1e6:.1f} MB resident")
    return "; ".join(parts)


def _dynamic_words(cf: CompiledFunction, v: Variant) -> str:
    """Which argument sizes are dynamic for this variant's kernels, and what a new batch size costs."""
    parametric = getattr(v.program, "parametric", None)
    n_par = parametric()[0] if parametric is not None else 0
    if not getattr(v, "batch", None) or not n_par:
        why = ("compiled with dynamic=False" if cf.dynamic is False else
               "its backend compiles every size in" if cf._sizes.get(v.backend) is None else
               "no tensor argument has a batch dim >= 2" if not getattr(v, "batch", None) else
               "no generated kernel depends on the batch size")
        return f"dynamic dims: none ({why}): a new shape compiles new kernels"
    n, where = v.batch
    dims = ", ".join(f"{cf._arg_name(i)}[0]" for i in where)
    shared = " (it runs kernels compiled for another batch size)" if v.shared else ""
    return (f"dynamic dims: {dims} (batch size {n}){shared}: the kernels take the sizes that follow the batch as "
            f"arguments, so another batch size >= 2 is traced again and runs them without compiling (the other "
            f"dims stay guarded)")


def _ms(s):
    return f"{s * 1e3:.1f} ms"


def explain_variant(cf: CompiledFunction, v: Variant) -> str:
    g = v.graph
    metas = [g.input_meta.get(x.id, {}) for x in g.inputs]
    n_args = sum(1 for m in metas if "arg" in m)
    n_const = sum(1 for m in metas if m.get("const"))
    state_names = [m["state"] for m in metas if "state" in m]
    writes = [m for m, _ in g.writes()] + [name for _, idx, name in v.grad_sets if idx is None]
    on = "" if v.device is CPU else f" on {v.device}"
    lines = [f"{cf.__name__} — variant {v.number} (backend {v.backend}{on}); compiled because: {v.reason}"]
    lines.append("guards:")
    for i, d in enumerate(v.arg_desc):
        lines.append(f"  argument {cf._arg_name(i)}: {d}")
    lines.append(f"  grad mode: {'enabled' if v.key[0] else 'disabled'}")
    sg = v.state_guard
    if sg.mods:
        lines.append(f"  {len(sg.mods)} modules in " +
                     ", ".join(sorted({'train' if t else 'eval' for _, t, _ in sg.mods})) + " mode")
    if sg.grads:
        lines.append(f"  .grad presence of {len(sg.grads)} tensors ({sum(h for _, h in sg.grads)} with a .grad)")
    if sg.opts:
        lines.append("  optimizer settings of " + ", ".join(type(o).__name__ for o, _, _ in sg.opts))
    if sg.py:
        lines.append("  Python values read: " + ", ".join(f"{what} {n}" for _, n, _, _, what in sg.py))
    lines.append(f"  {len(v.box_guards)} captured tensors keep their shape and dtype")
    lines.append("  " + _dynamic_words(cf, v))
    lines.append(f"inputs: {n_args} arguments, {len(state_names)} captured state, {n_const} constants")
    for s in state_names:
        lines.append(f"  state {s}")
    lines.append(f"outputs: {v.n_returns} returned, {len(writes)} state write-backs")
    for w in writes:
        lines.append(f"  writes {w}")
    lines.append("nodes by stage:")
    for name, sgph in v.stage_graphs:
        counts = ", ".join(f"{k} {n}" for k, n in sorted(count_by_kind(sgph).items()))
        lines.append(f"  {name:<18} {len(sgph.nodes):>5} nodes  ({counts})")
    lines.append(v.program.describe())
    if getattr(v, "tier", None) is not None:
        lines.append(v.tier.describe())
    ahead = getattr(v, "ahead", None)
    if ahead is not None:
        failed = f"; {len(ahead['failed'])} failed ({'; '.join(ahead['failed'])}), their share compiled here" \
            if ahead["failed"] else ""
        lines.append(f"compiled in {ahead['processes']} processes (TRACEJIT_COMPILE_PROCESSES): {ahead['functions']} "
                     f"functions in {ahead['s']:.2f} s: finding their argument types {ahead['dry_run_s']:.2f} s, "
                     f"this process's share {ahead['own_s']:.2f} s, then waiting {ahead['wait_s']:.2f} s" + failed)
    lines.append("memory: " + _memory_words(v))
    lines.append("time: " + ", ".join(f"{k} {_ms(t)}" for k, t in v.timings.items()) +
                 f"; total {_ms(v.total_time)}")
    if getattr(v, "dump_dir", None):
        lines.append(f"dump: {v.dump_dir}")
    return "\n".join(lines)
