"""What a traced function does in Python besides tensor operations, and what tracejit does about it.

Tracing runs the user's Python code once; later calls replay only the tensor operations it recorded. So
Python-level effects happen at trace time only and Python values the code reads are baked into the graph.
`Watch` is installed around the traced call (a profile hook on the tracing thread, for the trace only: it
costs tracing time, never a compiled call) and decides case by case:

- draws from Python's `random` module, NumPy's global generator (`np.random.*`), or a `random.Random` /
  NumPy generator that outlives the call: a TraceError naming the call and the user's file:line
  (`fallback="eager"` then runs the step eagerly, with a warning). The generators' states are put back, so
  an eager run draws exactly what it would have drawn. A generator created and seeded inside the step draws
  the same numbers on every call, and is allowed.
- an optimizer setting assigned inside the step (`scheduler.step()`, `group['lr'] = ...`): a TraceError
  (the value would be computed once, at trace time; the lr is a graph input precisely so that a scheduler
  stepped outside the compiled function needs no retrace).
- globals (and the compiled function's closure variables) that the traced code reads: guarded, plain values
  (numbers, strings, None, tuples of them) by value, other objects by identity; a change retraces and the
  log says which name changed. Names the traced code assigns are not guarded (they would change on every
  call): the assignment runs at trace time only, which a SideEffectWarning says once.
- `print()`, `time.time()` and friends run at trace time only: listed in the note `step.log` shows.
- optimizers whose `step()`/`zero_grad()` run are added to the StateIndex, however they were reached, so
  lazily created optimizer state is always found.

NumPy's generators are Cython, invisible to a profile hook: their states are compared before and after the
trace (NumPy's global one and those the StateIndex walk found), and the line is found in the bytecode of the
code that ran (`np.random.rand`, `from numpy.random import rand`, `rng.normal`); a change with no such call
site in the code that ran was another thread's draw and is left alone. When another profiler is installed
(`sys.getprofile()` is set) the hook is not: Python's generators are then compared likewise, and the line is
looked for in the function's own code and its module classes' methods.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import os
import random
import site
import sys
import sysconfig
import time
import types
import warnings

import numpy as np

from ..errors import TraceError


class SideEffectWarning(UserWarning):
    """A compiled function assigns a global or nonlocal Python variable: that happens at trace time only."""


# ------------------------------------------------------------------------------------------ user code or not

_lib_prefixes: tuple | None = None
_lib_cache: dict[str, bool] = {}


def _library_prefixes() -> tuple:
    global _lib_prefixes
    if _lib_prefixes is None:
        pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../tracejit
        paths = {pkg}
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            p = sysconfig.get_paths().get(key)
            if p:
                paths.add(p)
        try:
            paths.update(site.getsitepackages())
            paths.add(site.getusersitepackages())
        except AttributeError:  # some embedded interpreters' site module lacks these
            pass
        _lib_prefixes = tuple(os.path.abspath(p) + os.sep for p in paths)
    return _lib_prefixes


def is_library(filename: str) -> bool:
    """Whether code in `filename` belongs to tracejit, the standard library or an installed package (as
    opposed to the user's program, whose globals are guarded and whose lines errors point at)."""
    r = _lib_cache.get(filename)
    if r is None:
        if filename.startswith("<"):
            r = filename.startswith("<frozen")
        else:
            r = os.path.abspath(filename).startswith(_library_prefixes())
        _lib_cache[filename] = r
    return r


def warn_at_user(message: str, category) -> None:
    """warnings.warn attributed to the user's line: the first frame outside tracejit and its generated code."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    level, f = 1, sys._getframe(0)
    while f is not None and (os.path.abspath(f.f_code.co_filename).startswith(pkg)
                             or f.f_code.co_filename.startswith("<tracejit")):
        f, level = f.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _location(frame) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _user_frame(frame):
    while frame is not None and is_library(frame.f_code.co_filename):
        frame = frame.f_back
    return frame


# ------------------------------------------------------------------------------------------ bytecode facts

class CodeFacts:
    """Global names a code object reads and assigns, nonlocals it assigns, attribute-call sites."""

    __slots__ = ("reads", "writes", "nonlocal_writes", "attr_sites")

    def __init__(self, code):
        self.reads: list[str] = []
        self.writes: dict[str, int] = {}  # global name -> first line assigning it
        self.nonlocal_writes: dict[str, int] = {}
        self.attr_sites: list[tuple] = []  # (line, previous opname, previous argval, attribute)
        free = set(code.co_freevars)
        seen = set()
        prev = None
        line = code.co_firstlineno
        for ins in dis.get_instructions(code):
            pos = getattr(ins, "positions", None)
            if pos is not None and pos.lineno is not None:
                line = pos.lineno
            elif isinstance(ins.starts_line, int) and not isinstance(ins.starts_line, bool):
                line = ins.starts_line
            op = ins.opname
            if op in ("LOAD_GLOBAL", "LOAD_NAME"):
                if ins.argval not in seen:
                    seen.add(ins.argval)
                    self.reads.append(ins.argval)
            elif op in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                self.writes.setdefault(ins.argval, line)
            elif op in ("STORE_DEREF", "DELETE_DEREF") and ins.argval in free:
                self.nonlocal_writes.setdefault(ins.argval, line)
            elif op in ("LOAD_ATTR", "LOAD_METHOD") and prev is not None:
                self.attr_sites.append((line, prev.opname, prev.argval, ins.argval))
            if op not in ("CACHE", "EXTENDED_ARG", "PRECALL", "PUSH_NULL"):
                prev = ins


_facts: dict = {}


def code_facts(code) -> CodeFacts:
    f = _facts.get(code)
    if f is None:
        if len(_facts) > 4096:  # lambdas made per call would otherwise accumulate
            _facts.clear()
        f = _facts[code] = CodeFacts(code)
    return f


def _nested_codes(code, out, depth=0):
    out.append(code)
    if depth < 8:
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                _nested_codes(c, out, depth + 1)
    return out


# ------------------------------------------------------------------------------------------ generators

def _np_global():
    return np.random.mtrand._rand


def _rng_state(g):
    if isinstance(g, random.Random):
        return g.getstate()
    if isinstance(g, np.random.RandomState):
        return g.get_state()
    return g.bit_generator.state


def _set_rng_state(g, st) -> None:
    if isinstance(g, random.Random):
        g.setstate(st)
    elif isinstance(g, np.random.RandomState):
        g.set_state(st)
    else:
        g.bit_generator.state = st


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


_RNG_READS = frozenset(("getstate", "get_state", "__getstate__", "__reduce__", "__reduce_ex__"))
_RANDOM_FILE = random.__file__


def _random_types() -> frozenset:
    out, todo = set(), [random.Random]
    while todo:
        c = todo.pop()
        if c not in out:
            out.add(c)
            todo.extend(c.__subclasses__())
    return frozenset(out)


_NOTED_CALLS = {time.time: "time.time()", time.perf_counter: "time.perf_counter()",
                time.monotonic: "time.monotonic()", time.process_time: "time.process_time()",
                time.time_ns: "time.time_ns()", time.perf_counter_ns: "time.perf_counter_ns()",
                time.monotonic_ns: "time.monotonic_ns()", builtins.print: "print()",
                builtins.input: "input()"}


def _optimizer_codes() -> dict:
    """Code objects of every Optimizer subclass's step()/zero_grad() -> True."""
    mod = sys.modules.get("tracejit.optim.optimizer")
    if mod is None:
        return {}
    out, todo, seen = {}, [mod.Optimizer], set()
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        todo.extend(c.__subclasses__())
        for attr in ("step", "zero_grad"):
            f = c.__dict__.get(attr)
            if f is not None:
                f = inspect.unwrap(f)
                code = getattr(f, "__code__", None)
                if code is not None:
                    out[code] = True
    return out


def _param_group_setitem():
    mod = sys.modules.get("tracejit.optim.optimizer")
    f = getattr(getattr(mod, "ParamGroup", None), "__setitem__", None)
    return getattr(f, "__code__", None)


def _scheduler_codes() -> list:
    """Code objects of every LRScheduler subclass's step()."""
    mod = sys.modules.get("tracejit.optim.lr_scheduler")
    if mod is None:
        return []
    out, todo, seen = [], [mod.LRScheduler], set()
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        todo.extend(c.__subclasses__())
        f = c.__dict__.get("step")
        code = getattr(inspect.unwrap(f), "__code__", None) if f is not None else None
        if code is not None:
            out.append(code)
    return out


def _plain(v, depth=0) -> bool:
    t = type(v)
    if t in (type(None), bool, int, float, complex, str, bytes):
        return True
    if t in (tuple, frozenset) and depth < 3 and len(v) <= 64:
        return all(_plain(x, depth + 1) for x in v)
    return False


def _guard_kind(v):
    """True: guard by value; False: by identity; None: not guarded (modules, classes, library functions)."""
    if _plain(v):
        return True
    if isinstance(v, (types.ModuleType, type, types.BuiltinFunctionType)):
        return None
    if isinstance(v, types.FunctionType) and is_library(v.__code__.co_filename):
        return None
    return False


# ------------------------------------------------------------------------------------------ the watch

def guarded(handler, *args) -> None:
    """Run a hook handler: its TraceError reaches the user's code (that is the point); any other error is a
    bug of the watch, which must not break the user's program, so it is dropped."""
    try:
        handler(*args)
    except TraceError:
        raise
    except Exception:  # noqa: BLE001
        pass


class Watch:
    """Installed around `fn(*args)` while it is traced (see the module docstring)."""

    def __init__(self, fn, state, name: str):
        self.fn, self.state, self.name = fn, state, name
        self.codes: dict = {}  # code object run during the trace -> its globals
        self.rng_uses: dict[int, tuple] = {}  # id(generator) -> (generator, state before, call, location)
        self.notes: list[str] = []  # "print() at file:line"
        self.failure: str | None = None  # why the trace cannot be used, once the hook raised it
        self.hooked = False  # the profile hook is installed now
        self.used_hook = False  # it was installed for this trace (so `codes` lists the code that ran)

    # ---- the profile hook
    def __enter__(self):
        g = _np_global()
        self._np_before = [(g, "numpy.random's global generator", _rng_state(g))]
        for name, r in self.state.py_rngs:
            if isinstance(r, (np.random.RandomState, np.random.Generator)) and r is not g:
                self._np_before.append((r, f"the NumPy generator {name}", _rng_state(r)))
        if sys.getprofile() is None:
            self._install()
        else:  # somebody profiles: no hook, compare the Python generators' states afterwards
            self._py_before = [(random._inst, _rng_state(random._inst))] + [
                (r, _rng_state(r)) for _, r in self.state.py_rngs if isinstance(r, random.Random)]
        return self

    def __exit__(self, *exc):
        if self.hooked:
            sys.setprofile(None)
            self.hooked = False
        return False

    def _install(self):
        codes, special = self.codes, {}
        for code in _optimizer_codes():
            special[code] = self._on_optimizer
        setitem = _param_group_setitem()
        if setitem is not None:
            special[setitem] = self._on_setting
        for code in _scheduler_codes():
            special[code] = self._on_scheduler
        rng_types, noted = _random_types(), _NOTED_CALLS
        on_rng, on_noted = self._on_rng, self._on_noted

        def hook(frame, event, arg):
            if event == "call":
                code = frame.f_code
                if code not in codes:
                    codes[code] = frame.f_globals
                h = special.get(code)
                if h is not None:
                    guarded(h, frame)
            elif event == "c_call":
                s = getattr(arg, "__self__", None)
                if type(s) in rng_types:
                    guarded(on_rng, frame, arg, s)
                elif arg in noted:
                    guarded(on_noted, frame, arg)

        sys.setprofile(hook)
        self.hooked = self.used_hook = True

    def _on_optimizer(self, frame):
        opt = frame.f_locals.get("self")
        if opt is not None:
            self.state.add_optimizer(opt)

    def _fail(self, message: str):
        """Raise from the hook: the call the hook reports (a draw, a scheduler step) then does not happen,
        and the traceback points at the user's line. Remembered, should the user's code catch it."""
        self.failure = self.failure or message
        raise TraceError(message)

    def _setting_message(self, what, frame) -> str:
        user = _user_frame(frame)
        loc = _location(user) if user is not None else "<unknown>"
        return (f"{what} at {loc} inside {self.name}: the new value would be computed once, at trace time, and "
                f"replayed on every call. Step the scheduler (or set the value) outside the compiled function: "
                f"the lr is an input of the compiled step, so changing it there needs no retrace")

    def _on_scheduler(self, frame):
        sched = frame.f_locals.get("self")
        self._fail(self._setting_message(f"{type(sched).__name__}.step()", frame.f_back))

    def _on_setting(self, frame):
        loc = frame.f_locals
        group, key = loc.get("self"), loc.get("key")
        if isinstance(group, dict) and key in group and key != "params":  # a change, not a new group
            self._fail(self._setting_message(f"assigning the optimizer setting {key!r}", frame.f_back))

    def _on_rng(self, frame, fn, gen):
        if id(gen) in self.rng_uses or getattr(fn, "__name__", "") in _RNG_READS:
            return
        entry, caller = fn.__name__, frame
        while caller is not None and caller.f_code.co_filename == _RANDOM_FILE:
            entry, caller = caller.f_code.co_name, caller.f_back
        if gen is not random._inst and (caller is None or is_library(caller.f_code.co_filename)):
            return  # a library's private generator (tempfile's names): not the user's draw
        try:
            before = _rng_state(gen)
        except AttributeError:  # Random.__init__ seeding an instance being made: its draws come later
            return
        user = _user_frame(caller)
        what = "random." if gen is random._inst else f"{type(gen).__name__}."
        call, loc = f"{what}{entry}()", _location(user) if user is not None else "<unknown>"
        if gen is random._inst or any(r is gen for _, r in self.state.py_rngs):
            self._fail(_rng_message(f"{call} at {loc}", _rng_what(gen), self.name))  # before it draws
        self.rng_uses[id(gen)] = (gen, before, call, loc)  # made in the step? known once the call returned

    def _on_noted(self, frame, fn):
        if len(self.notes) < 8 and not is_library(frame.f_code.co_filename):
            note = f"{_NOTED_CALLS[fn]} at {_location(frame)}"
            if note not in self.notes:
                self.notes.append(note)

    # ---- after the call returned
    def executed_user_codes(self) -> list:
        """(code, globals) of the user's code that ran (or, without the hook, the function's own code)."""
        if self.used_hook:
            return [(c, g) for c, g in self.codes.items() if not is_library(c.co_filename)]
        return self._static_codes()

    def _static_codes(self) -> list:
        """Without the hook: the function, the user's functions it names, and the methods of the user's
        module classes it reaches (where a forward() would draw)."""
        funcs = []
        fn = inspect.unwrap(getattr(self.fn, "__func__", self.fn))
        if isinstance(fn, types.FunctionType):
            funcs.append(fn)
            from .state import _referenced_objects

            funcs += [x for _, x in _referenced_objects(fn) if isinstance(x, types.FunctionType)]
        classes = []
        for _, m in self.state.modules:
            for sub in m.modules():
                classes += [c for c in type(sub).__mro__ if c not in classes]
        for c in classes:
            funcs += [f for f in vars(c).values() if isinstance(f, types.FunctionType)]
        out, seen = [], set()
        for f in funcs:
            if is_library(f.__code__.co_filename):
                continue
            for c in _nested_codes(f.__code__, []):
                if c not in seen:
                    seen.add(c)
                    out.append((c, f.__globals__))
        return out

    def check(self) -> None:
        """After the call returned: raise a TraceError for Python-level randomness (generators whose draws
        the hook could not refuse beforehand: NumPy's, and objects found to outlive the call) or for a
        failure the hook raised and the user's code caught."""
        if self.failure:
            raise TraceError(self.failure)
        problems = []
        for gen, before, call, loc in self.rng_uses.values():
            # a generator nothing else refers to was made inside the step (seeded: the same draws on every
            # call); 3 references = rng_uses' tuple, `gen` here and getrefcount's argument
            if sys.getrefcount(gen) > 3:
                problems.append((gen, before, f"{call} at {loc}"))
        unknown = ("a call", f"{self.name}'s code (line not found)")
        if not self.used_hook:
            for gen, before in self._py_before:
                if not _same(before, _rng_state(gen)):
                    call, loc = self._find_site(gen) or unknown
                    problems.append((gen, before, f"{call} at {loc}"))
        for gen, _, before in self._np_before:
            if not _same(before, _rng_state(gen)):
                site = self._find_site(gen)
                if site is None and self.used_hook:
                    continue  # no code that ran calls it: another thread drew meanwhile
                call, loc = site or unknown
                problems.append((gen, before, f"{call} at {loc}"))
        if problems:
            for gen, before, _ in problems:
                _set_rng_state(gen, before)  # an eager run (fallback) then draws what it would have drawn
            gen, _, where = problems[0]
            raise TraceError(_rng_message(where, self._rng_what(gen), self.name))

    def _rng_what(self, gen) -> str:
        for g, what, _ in getattr(self, "_np_before", ()):
            if g is gen:
                return what
        return _rng_what(gen)

    def _find_site(self, gen):
        """(call, 'file:line') of the first place the code that ran (the user's first, then libraries')
        seems to call generator `gen`, or None."""
        codes = self.executed_user_codes()
        if self.used_hook:
            codes += [(c, g) for c, g in self.codes.items() if is_library(c.co_filename)]
        return self._site_in(gen, codes)

    def _site_in(self, gen, codes):
        np_random = np.random
        # the name the walk found it under (`rng`, `self.rng` -> `rng`): a load of that name, then the method
        known = next((n.rsplit(".", 1)[-1] for n, r in self.state.py_rngs if r is gen), None)
        for code, g in codes:
            facts = code_facts(code)
            for name in facts.reads:  # from numpy.random import rand / from random import randint
                v = g.get(name)
                if getattr(v, "__self__", None) is gen and not isinstance(v, types.ModuleType):
                    line = _first_line_loading(code, name)
                    return f"{name}()", f"{code.co_filename}:{line}"
            for line, prev_op, prev_arg, attr in facts.attr_sites:
                if known is not None and prev_arg == known and prev_op != "LOAD_CONST":
                    return f"{prev_arg}.{attr}()", f"{code.co_filename}:{line}"
                base = None
                if prev_op == "LOAD_GLOBAL":
                    base = g.get(prev_arg)
                elif prev_op in ("LOAD_ATTR", "LOAD_METHOD") and prev_arg == "random":
                    base = np_random if gen is _np_global() else random
                if base is None:
                    continue
                if (base is np_random and gen is _np_global()) or (base is random and gen is random._inst):
                    if getattr(getattr(base, attr, None), "__self__", None) is gen:
                        return f"{base.__name__}.{attr}()", f"{code.co_filename}:{line}"
                elif base is gen:
                    return f"{prev_arg}.{attr}()", f"{code.co_filename}:{line}"
        return None

    def global_writes(self) -> list[tuple[str, str, str]]:
        """('global' or 'nonlocal', name, 'file:line') of the variables the user's code that ran assigns."""
        out = []
        # without the hook, only the function's own code surely ran
        codes = self.executed_user_codes() if self.used_hook else self._static_codes()[:1]
        for code, _ in codes:
            facts = code_facts(code)
            for n, line in facts.writes.items():
                out.append(("global", n, f"{code.co_filename}:{line}"))
            for n, line in facts.nonlocal_writes.items():
                out.append(("nonlocal", n, f"{code.co_filename}:{line}"))
        return out

    def written_values(self) -> list[tuple[str, object]]:
        """(name, current value) of the globals the user's code assigned (to look for kept tensors)."""
        out = []
        for code, g in self.executed_user_codes():
            for n in code_facts(code).writes:
                if n in g:
                    out.append((n, g[n]))
        return out

    def guards(self) -> list[tuple]:
        """(namespace, name, value, by value, what) for the globals and closure variables the traced code
        read and did not assign: state.StateGuard compares them on every call."""
        codes = self.executed_user_codes()
        written = {(id(g), n) for c, g in codes for n in code_facts(c).writes}
        out, seen = [], set()
        for code, g in codes:
            for n in code_facts(code).reads:
                key = (id(g), n)
                if key in seen or key in written or n not in g:
                    continue
                seen.add(key)
                v = g[n]
                kind = _guard_kind(v)
                if kind is not None:
                    out.append((g, n, v, kind, "global"))
        fn = getattr(self.fn, "__func__", self.fn)
        if isinstance(fn, types.FunctionType) and fn.__closure__:
            assigned = set()
            for c in _nested_codes(fn.__code__, []):
                assigned |= set(code_facts(c).nonlocal_writes)
            for n, cell in zip(fn.__code__.co_freevars, fn.__closure__):
                if n in assigned:
                    continue
                try:
                    v = cell.cell_contents
                except ValueError:
                    continue
                kind = _guard_kind(v)
                if kind is not None:
                    out.append((cell, n, v, kind, "closure variable"))
        return out


def _rng_what(gen) -> str:
    return "Python's random module" if gen is random._inst else f"a {type(gen).__name__} object"


def _rng_message(where, what, name) -> str:
    return (f"{where} draws from {what} while {name} is traced: the numbers drawn now would be baked into "
            f"every later call. Use tracejit's random functions (tracejit.rand, randn, randint, nn.Dropout: "
            f"their generator state is part of the compiled step), or draw outside the compiled function and "
            f"pass the value in as an argument (Python numbers are guarded by value)")


def _first_line_loading(code, name) -> int:
    line = code.co_firstlineno
    for ins in dis.get_instructions(code):
        pos = getattr(ins, "positions", None)
        if pos is not None and pos.lineno is not None:
            line = pos.lineno
        elif isinstance(ins.starts_line, int) and not isinstance(ins.starts_line, bool):
            line = ins.starts_line
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval == name:
            return line
    return line
