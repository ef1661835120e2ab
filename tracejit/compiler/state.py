"""Finding the state a function can reach: modules, optimizers and generators referenced by its code.

Used to give lifted tensors readable names (`fc.weight`, `opt.state[fc.weight].exp_avg`), to know whose
`.grad` a box is, to find lazily created optimizer state and tensors a step kept (`losses.append(loss)`), to
undo what a discarded trace did to lists and plain globals, and to build the guards on module train/eval
flags and submodules, `.grad` presence, optimizer hyperparameters, the slots (attributes, dict and list
items) modules and optimizers were found in, and the Python values the trace read (from watch.Watch).
"""

from __future__ import annotations

import functools
import sys
import types

import numpy as np

from .._tensor import Tensor


def _is_module(x):
    mod = sys.modules.get("tracejit.nn.module")  # not imported -> no Module instances exist
    return mod is not None and isinstance(x, mod.Module)


def _is_optimizer(x):
    mod = sys.modules.get("tracejit.optim.optimizer")
    return mod is not None and isinstance(x, mod.Optimizer)


def _referenced_objects(fn):
    """(name, object) pairs a function refers to: closure cells, globals it names, bound self."""
    out = []
    if isinstance(fn, types.MethodType):
        out.append(("self", fn.__self__))
        fn = fn.__func__
    if isinstance(fn, types.FunctionType):
        code = fn.__code__
        names: set = set()
        _code_names(code, names)
        for n in sorted(names):
            if n in fn.__globals__:
                out.append((n, fn.__globals__[n]))
        if fn.__closure__:
            for n, cell in zip(code.co_freevars, fn.__closure__):
                try:
                    out.append((n, cell.cell_contents))
                except ValueError:
                    pass
    elif callable(fn) and _is_module(fn):
        out.append(("model", fn))
    return out


def _plain_slots(fn) -> list:
    """(globals dict or closure cell, name, value) for the plain values (numbers, strings, None) that `fn`'s
    globals it names and its closure variables hold now."""
    out = []
    fn = getattr(fn, "__func__", fn)
    if isinstance(fn, types.FunctionType):
        names: set = set()
        _code_names(fn.__code__, names)
        g = fn.__globals__
        out += [(g, n, g[n]) for n in sorted(names) if n in g and isinstance(g[n], _PLAIN)]
        for n, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                v = cell.cell_contents
            except ValueError:
                continue
            if isinstance(v, _PLAIN):
                out.append((cell, n, v))
    return out


def _code_names(code, names, depth=0):
    """Every name a code object and the functions, lambdas and comprehensions nested in it refer to."""
    names.update(code.co_names)
    if depth < 8:
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                _code_names(c, names, depth + 1)


# Module attributes that hold the module's own machinery (its parameters and buffers are named separately)
_MODULE_INTERNALS = frozenset(("training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules",
                               "_tensor_version"))
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_VISIT_BUDGET = 4000  # objects one walk may look at (a step's state is found long before; big data is not)
_MAX_DEPTH = 6
_MAX_ITEMS = 64  # items looked at per container / attributes per object


def _is_user_function(f) -> bool:
    from .watch import is_library

    return isinstance(f, types.FunctionType) and not is_library(f.__code__.co_filename)


def _py_rng_kind(x):
    """'random' / 'numpy' for a Python or NumPy random generator object, else None."""
    import random

    if isinstance(x, random.Random):
        return "random"
    np_random = sys.modules.get("numpy.random")
    if np_random is not None and isinstance(x, (np_random.RandomState, np_random.Generator)):
        return "numpy"
    return None


class StateIndex:
    """The modules/optimizers/generators a function reaches, and names for their tensors.

    Found by walking from what the function refers to (its closure, the globals its code names, its
    arguments, bound `self`) through object attributes (modules' included), lists, tuples, dicts, bound
    methods, `functools.partial` and the user's own helper functions, within a budget. The tracer adds
    what it meets while tracing: modules called (`add_module`) and optimizers whose methods run
    (`add_optimizer`, from `watch.Watch`), so state reached in ways the walk cannot see is still found.
    """

    def __init__(self, fn, args=(), arg_names=()):
        from ..random import default_generator

        self.modules: list = []
        self.optimizers: list = []
        self.generators: list = [("rng", default_generator)]
        self.py_rngs: list = []  # (name, Python/NumPy generator object) found by the walk
        self._names: dict[int, str] = {}
        self._module_ids: set[int] = set()  # modules known, their submodules included
        self._opt_ids: set[int] = set()
        self._saved_opt: list = []  # (optimizer, copy of its state dict) to undo lazily created state
        self.params: list = []
        self._param_ids: set[int] = set()
        self._slots: dict[int, tuple] = {}  # id(module/optimizer) -> (container, key, object, name)
        self._lists: list = []  # (list, its length): undone if a discarded trace appended to it
        self._plain = _plain_slots(fn)  # (globals dict or cell, name, value): undone likewise
        self._roots = _referenced_objects(fn) + [
            (arg_names[i] if i < len(arg_names) else f"arg{i}", a) for i, a in enumerate(args)]
        self._walk(self._roots, self._on_found)
        for _, obj in self._roots:
            if isinstance(obj, Tensor) and obj.requires_grad:
                self._add_params([obj])
        for name, g in self.generators:
            self._names.setdefault(id(g.state._box), name)

    # ---- finding
    def _walk(self, roots, found):
        """Call `found(kind, name, obj, where)` for each tensor/module/optimizer/generator reachable from
        roots; `where` is (container, key) when obj was reached as an item of a dict, an attribute of an
        object or an item of a list (a slot a later call may find replaced), else None."""
        seen: set[int] = set()
        budget = [_VISIT_BUDGET]
        for name, obj in roots:
            self._visit(name, obj, seen, 0, found, budget, None)

    def _visit(self, name, obj, seen, depth, found, budget, where):
        if isinstance(obj, _PLAIN) or id(obj) in seen or depth > _MAX_DEPTH or budget[0] <= 0:
            return
        seen.add(id(obj))
        budget[0] -= 1
        from ..random import Generator

        visit = self._visit
        d1 = depth + 1
        if isinstance(obj, Tensor):
            found("tensor", name, obj, where)
        elif _is_module(obj):
            found("module", name, obj, where)
            # optimizers, generators and plain tensors kept as attributes of a module or of its submodules
            # (`layer.opt = Adam(layer.parameters())`): parameters and buffers are named by found()
            for mname, m in obj.named_modules():
                prefix = f"{name}.{mname}" if mname else name
                attrs = vars(m)
                for k, x in list(attrs.items())[:_MAX_ITEMS]:
                    if k not in _MODULE_INTERNALS:
                        visit(f"{prefix}.{k}", x, seen, d1, found, budget, (attrs, k))
        elif _is_optimizer(obj):
            found("optimizer", name, obj, where)
        elif isinstance(obj, Generator):
            found("generator", name, obj, where)
        elif isinstance(obj, list):
            found("list", name, obj, where)
            for i, x in enumerate(obj[:_MAX_ITEMS]):
                visit(f"{name}[{i}]", x, seen, d1, found, budget, (obj, i))
        elif isinstance(obj, (tuple, set, frozenset)):
            for i, x in enumerate(list(obj)[:_MAX_ITEMS]):
                visit(f"{name}[{i}]", x, seen, d1, found, budget, None)
        elif isinstance(obj, dict):
            for k, x in list(obj.items())[:_MAX_ITEMS]:
                visit(f"{name}[{k!r}]", x, seen, d1, found, budget, (obj, k))
        elif isinstance(obj, types.MethodType):
            visit(name, obj.__self__, seen, d1, found, budget, None)
        elif isinstance(obj, functools.partial):
            for i, x in enumerate((obj.func, *obj.args, *obj.keywords.values())):
                visit(f"{name}.<partial {i}>", x, seen, d1, found, budget, None)
        elif isinstance(obj, types.FunctionType):
            if _is_user_function(obj):  # a helper the step calls: what it refers to is reachable too
                for n, x in _referenced_objects(obj):
                    visit(n, x, seen, d1, found, budget, None)
        elif isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType, np.ndarray)):
            pass
        elif _py_rng_kind(obj) is not None:
            found("py_rng", name, obj, where)
        else:
            try:
                attrs = vars(obj)
            except TypeError:
                return
            for k, x in list(attrs.items())[:_MAX_ITEMS]:
                visit(f"{name}.{k}", x, seen, d1, found, budget, (attrs, k))

    def _on_found(self, kind, name, obj, where):
        if kind == "tensor":
            self._names.setdefault(id(obj._box), name)
        elif kind == "module":
            self.add_module(obj, name)
        elif kind == "optimizer":
            self.add_optimizer(obj, name)
        elif kind == "generator":
            self.generators.append((name, obj))
            self._names.setdefault(id(obj.state._box), name)
        elif kind == "py_rng":
            self.py_rngs.append((name, obj))
        elif kind == "list":
            self._lists.append((obj, len(obj)))
        if where is not None and kind in ("module", "optimizer"):
            self._slots.setdefault(id(obj), (where[0], where[1], obj, name))

    def add_module(self, m, name=None) -> None:
        """Know module `m` (and its submodules): their parameters, buffers and train/eval flags."""
        if id(m) in self._module_ids:
            return
        name = name if name is not None else self._invent(type(m).__name__.lower())
        self.modules.append((name, m))
        for _, sub in m.named_modules():
            self._module_ids.add(id(sub))
        for pname, p in m.named_parameters():
            self._names.setdefault(id(p._box), f"{name}.{pname}" if name else pname)
        for bname, b in m.named_buffers():
            self._names.setdefault(id(b._box), f"{name}.{bname}" if name else bname)
        self._add_params(m.parameters())

    def add_optimizer(self, opt, name=None) -> None:
        """Know optimizer `opt`: its parameters, lr tensors and per-parameter state (copied now, so that
        state it creates lazily while traced can be undone)."""
        if id(opt) in self._opt_ids:
            return
        self._opt_ids.add(id(opt))
        name = name if name is not None else self._invent(type(opt).__name__.lower())
        self.optimizers.append((name, opt))
        self._saved_opt.append((opt, {p: dict(st) for p, st in opt.state.items()}))
        for gi, group in enumerate(opt.param_groups):
            for key, value in getattr(group, "_tensors", {}).items():  # lr, and settings a scheduler cycles
                for k, t in enumerate(value if isinstance(value, tuple) else (value,)):
                    if isinstance(t, Tensor):
                        suffix = f"[{k}]" if isinstance(value, tuple) else ""
                        self._names.setdefault(id(t._box), f"{name}.param_groups[{gi}].{key}{suffix}")
            for p in group["params"]:
                pname = self._names.get(id(p._box), f"param{len(self._names)}")
                self._names.setdefault(id(p._box), pname)
                for key, t in opt.state.get(p, {}).items():
                    if isinstance(t, Tensor):
                        self._names.setdefault(id(t._box), f"{name}.state[{pname}].{key}")
            self._add_params(group["params"])

    def _add_params(self, params) -> None:
        for p in params:
            if id(p) not in self._param_ids:
                self._param_ids.add(id(p))
                self.params.append(p)

    def _invent(self, base: str) -> str:
        taken = {n for n, _ in self.modules} | {n for n, _ in self.optimizers}
        i = 1
        while f"{base}{i}" in taken:
            i += 1
        return f"{base}{i}"

    def undo_python_state(self) -> None:
        """Undo what a trace that is thrown away (its call runs eagerly instead) did to plain Python state
        the function reaches: items appended to lists (`losses.append(loss)`), numbers and strings assigned
        to the globals its code names and to its closure variables (`counter += 1`). So the eager run that
        follows changes them once, as an uncompiled call would."""
        for lst, n in self._lists:
            if len(lst) > n:
                del lst[n:]
        for ns, name, v in self._plain:
            if isinstance(ns, dict):
                ns[name] = v
            else:
                ns.cell_contents = v

    def restore_optimizer_state(self) -> None:
        """Undo state the known optimizers created while traced (the call then runs eagerly)."""
        for opt, st in self._saved_opt:
            opt.state.clear()
            opt.state.update(st)

    def computed_tensors(self, is_traced, extra_roots=()):
        """Names of tensors reachable from the function that hold a value computed by the trace
        (`is_traced(tensor)`): a step that stored them (`self.last = out`, `history.append(loss)`, a
        global assignment) would keep a placeholder of the trace, not each call's value."""
        out = []

        def found(kind, name, obj, where):
            if kind == "tensor" and is_traced(obj):
                out.append(name)
            elif kind == "module":  # a module created (or given new parameters) inside the step
                out.extend(f"{name}.{pn}" for pn, p in obj.named_parameters() if is_traced(p))

        self._walk(self._roots + list(extra_roots), found)
        return out

    def name_of(self, box) -> str | None:
        return self._names.get(id(box))

    def name_or_new(self, box) -> str:
        """The state name of `box`, inventing `captured<N>` (once per box) for unnamed tensors."""
        name = self._names.get(id(box))
        if name is None:
            name = f"captured{sum(1 for n in self._names.values() if n.startswith('captured')) + 1}"
            self._names[id(box)] = name
        return name

    def grad_owner(self, box):
        for p in self.params:
            if p._grad is not None and p._grad._box is box:
                return p
        return None

    def persistent_tensors(self):
        for name, opt in self.optimizers:
            for p, st in opt.state.items():
                for key, t in st.items():
                    if isinstance(t, Tensor):
                        yield f"{name}.state[{self._names.get(id(p._box), '?')}].{key}", t
        for name, m in self.modules:
            for bname, b in m.named_buffers():
                yield f"{name}.{bname}", b

    # ---- guards (cheap, checked on every call)
    def guard_snapshot(self, modules_called=(), grad_guards=(), python_guards=()):
        """The StateGuard of a trace that called `modules_called`, looked at .grad presence as in
        `grad_guards`, and read the Python values in `python_guards` (from watch.Watch.guards())."""
        mods = {id(m): m for _, m in self.modules}
        for m in modules_called:
            mods.setdefault(id(m), m)
        called = {id(m) for m in modules_called}
        # the slot (object attribute, dict or list item) each optimizer and each called module was found in:
        # replacing it (`layer.opt = Adam(...)`, `trainer.model = Net()`) must retrace
        slots = [(c, k, o, n) for i, (c, k, o, n) in self._slots.items()
                 if i in self._opt_ids or i in called]
        return StateGuard(list(mods.values()), list(grad_guards), self.optimizers, slots, list(python_guards))


_MISSING = object()


class StateGuard:
    """Module train/eval flags and children, `.grad` presence where the trace looked at it, optimizer
    settings, the slots modules and optimizers were found in, and the Python values the trace read
    (globals and closure variables: plain values by value, other objects by identity).

    Kept flat and compared field by field on every call, building a sentence only on a mismatch (linreg's
    guard check 2.1 -> ~1.2 us a call)."""

    __slots__ = ("mods", "children", "grads", "opts", "slots", "py", "traced_as")

    def __init__(self, modules, grad_guards, optimizers, slots=(), python_guards=()):
        self.mods = [(m, m.training, _ident(m)) for m in modules]
        # modules whose `_trace_guard()` says what else of them a trace depends on (DistributedDataParallel: whether
        # backward reduces the gradients, which no_sync() turns off)
        self.traced_as = [(m, m._trace_guard()) for m in modules if hasattr(type(m), "_trace_guard")]
        # a container module's children are compared by identity: a replaced submodule has other parameters
        self.children = [(m, list(m._modules.values())) for m in modules if m._modules]
        self.grads = list(grad_guards)  # (TensorRef, whether it had a .grad)
        self.opts = [(opt, len(opt.state), _hyper(opt)[0]) for _, opt in optimizers]
        self.slots = list(slots)  # (container, key, object, name)
        self.py = list(python_guards)  # (namespace dict or cell, name, value, compare by value, what)

    def check(self, args) -> str | None:
        """None when everything matches, else a sentence saying what changed."""
        for m, t, ident in self.mods:
            if m.training != t:
                return f"{type(m).__name__} switched to {'train' if m.training else 'eval'} mode"
            if _ident(m) != ident:
                return f"a parameter or buffer of {type(m).__name__} was replaced by another tensor"
        for m, key in self.traced_as:
            if m._trace_guard() != key:
                return f"{type(m).__name__}: {m._trace_guard_change(key)}"
        for m, children in self.children:
            if list(m._modules.values()) != children:
                return f"a submodule of {type(m).__name__} was replaced"
        for ref, had in self.grads:
            p = ref.get(args)
            if (p._grad is None) == had:
                return f"a tensor of shape {list(p.shape)} {'no longer has' if had else 'now has'} a .grad"
        for o, n, versions in self.opts:  # _hyper's two parts, compared without building its tuple
            pg = o.param_groups
            if len(o.state) != n or len(pg) != len(versions) or any(
                    getattr(g, "version", id(g)) != v for g, v in zip(pg, versions)):
                return f"{type(o).__name__} hyperparameters or state changed"
        for c, k, o, name in self.slots:
            if (c.get(k, _MISSING) if isinstance(c, dict) else (c[k] if k < len(c) else _MISSING)) is not o:
                return f"{name} now refers to another object (the compiled step used the {type(o).__name__} " \
                       f"it held before)"
        for ns, name, v, by_value, what in self.py:
            try:  # a globals dict or a closure cell
                cur = ns[name] if what == "global" else ns.cell_contents
            except (KeyError, ValueError):
                cur = _MISSING
            if cur is not v and (not by_value or type(cur) is not type(v) or cur != v):
                return _changed(what, name, v, cur, by_value)
        return None


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _changed(what, name, old, new, by_value) -> str:
    if new is _MISSING:
        return f"{what} {name!r} was deleted"
    if by_value:
        return f"{what} {name!r} changed from {_short(old)} to {_short(new)}"
    return f"{what} {name!r} now refers to another object ({type(new).__name__})"


def _ident(m) -> int:
    """Which tensor objects a module holds directly, as a counter Module bumps whenever its parameter or buffer
    dicts change (replacing one must retrace: the trace is bound to the old object)."""
    return m.__dict__.get("_tensor_version", 0)


def _hyper(opt):
    """Optimizer settings baked into a trace (everything but params and the lr tensor), and how much
    state each parameter has (lazily created state changes the trace)."""
    # ParamGroup bumps `version` on every change but the lr; lazily created state shows in len(opt.state)
    return tuple(getattr(g, "version", id(g)) for g in opt.param_groups), len(opt.state)
