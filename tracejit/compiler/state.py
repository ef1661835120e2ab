"""Finding the state a function can reach: modules, optimizers and generators referenced by its code.

Used to give lifted tensors readable names (`fc.weight`, `opt.state[fc.weight].exp_avg`), to know whose
`.grad` a box is, to find lazily created optimizer state, and to build the guards on module train/eval
flags, `.grad` presence and optimizer hyperparameters.
"""

from __future__ import annotations

import sys
import types

import tracejit.tensor  # noqa: F401  (the package attribute `tensor` is the factory function)

T = sys.modules["tracejit.tensor"]



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
        names = set(code.co_names)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                names |= set(c.co_names)
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


class StateIndex:
    """The modules/optimizers/generators a function reaches, and names for their tensors."""

    def __init__(self, fn, args=()):
        from ..random import default_generator

        self.modules: list = []
        self.optimizers: list = []
        self.generators: list = [("rng", default_generator)]
        self._names: dict[int, str] = {}
        seen: set[int] = set()
        roots = _referenced_objects(fn) + [(f"arg{i}", a) for i, a in enumerate(args)]
        for name, obj in roots:
            self._visit(name, obj, seen, depth=0)
        self.tensors_params = [obj for _, obj in roots if isinstance(obj, T.Tensor) and obj.requires_grad]
        for name, m in self.modules:
            for pname, p in m.named_parameters():
                self._names.setdefault(id(p._box), f"{name}.{pname}" if name else pname)
            for bname, b in m.named_buffers():
                self._names.setdefault(id(b._box), f"{name}.{bname}" if name else bname)
        for name, g in self.generators:
            self._names.setdefault(id(g.state._box), name)
        for name, opt in self.optimizers:
            for gi, group in enumerate(opt.param_groups):
                lr = group.tensor("lr") if hasattr(group, "tensor") else None
                if isinstance(lr, T.Tensor):
                    self._names.setdefault(id(lr._box), f"{name}.param_groups[{gi}].lr")
                for p in group["params"]:
                    pname = self._names.get(id(p._box), f"param{len(self._names)}")
                    self._names.setdefault(id(p._box), pname)
                    for key, t in opt.state.get(p, {}).items():
                        if isinstance(t, T.Tensor):
                            self._names.setdefault(id(t._box), f"{name}.state[{pname}].{key}")
        self.params = self._params()

    def _visit(self, name, obj, seen, depth):
        if id(obj) in seen or depth > 2:
            return
        seen.add(id(obj))
        from ..random import Generator

        if isinstance(obj, T.Tensor):
            self._names.setdefault(id(obj._box), name)
        elif _is_module(obj):
            self.modules.append((name, obj))
        elif _is_optimizer(obj):
            self.optimizers.append((name, obj))
        elif isinstance(obj, Generator):
            self.generators.append((name, obj))
        elif isinstance(obj, (list, tuple)):
            for i, x in enumerate(obj[:64]):
                self._visit(f"{name}[{i}]", x, seen, depth + 1)
        elif isinstance(obj, dict) and depth > 0:
            for k, x in list(obj.items())[:64]:
                self._visit(f"{name}[{k!r}]", x, seen, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            for k, x in list(vars(obj).items())[:64]:
                if _is_module(x) or _is_optimizer(x) or isinstance(x, (list, tuple, Generator, T.Tensor)):
                    self._visit(f"{name}.{k}", x, seen, depth + 1)

    def _params(self):
        out, seen = [], set()
        for _, m in self.modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        for _, opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) not in seen:
                        seen.add(id(p))
                        out.append(p)
        for p in self.tensors_params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
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
                    if isinstance(t, T.Tensor):
                        yield f"{name}.state[{self._names.get(id(p._box), '?')}].{key}", t
        for name, m in self.modules:
            for bname, b in m.named_buffers():
                yield f"{name}.{bname}", b

    # ---- guards (cheap, checked on every call)
    def guard_snapshot(self, modules_called=(), grad_guards=()):
        mods = {id(m): m for _, m in self.modules}
        for m in modules_called:
            mods.setdefault(id(m), m)
        return StateGuard(list(mods.values()), list(grad_guards), self.optimizers)


class StateGuard:
    """Module train/eval flags, `.grad` presence where the trace looked at it, optimizer settings.

    Kept flat and compared field by field on every call, building a sentence only on a mismatch (linreg's
    guard check 2.1 -> ~1.2 us a call)."""

    __slots__ = ("mods", "grads", "opts")

    def __init__(self, modules, grad_guards, optimizers):
        self.mods = [(m, m.training, _ident(m)) for m in modules]
        self.grads = list(grad_guards)  # (TensorRef, whether it had a .grad)
        self.opts = [(opt, len(opt.state), _hyper(opt)[0]) for _, opt in optimizers]

    def check(self, args) -> str | None:
        """None when everything matches, else a sentence saying what changed."""
        for m, t, ident in self.mods:
            if m.training != t:
                return f"{type(m).__name__} switched to {'train' if m.training else 'eval'} mode"
            if _ident(m) != ident:
                return f"a parameter or buffer of {type(m).__name__} was replaced by another tensor"
        for ref, had in self.grads:
            p = ref.get(args)
            if (p._grad is None) == had:
                return f"a tensor of shape {list(p.shape)} {'no longer has' if had else 'now has'} a .grad"
        for o, n, versions in self.opts:  # _hyper's two parts, compared without building its tuple
            pg = o.param_groups
            if len(o.state) != n or len(pg) != len(versions) or any(
                    getattr(g, "version", id(g)) != v for g, v in zip(pg, versions)):
                return f"{type(o).__name__} hyperparameters or state changed"
        return None


def _ident(m) -> int:
    """Which tensor objects a module holds directly, as a counter Module bumps whenever its parameter or buffer
    dicts change (replacing one must retrace: the trace is bound to the old object)."""
    return m.__dict__.get("_tensor_version", 0)


def _hyper(opt):
    """Optimizer settings baked into a trace (everything but params and the lr tensor), and how much
    state each parameter has (lazily created state changes the trace)."""
    # ParamGroup bumps `version` on every change but the lr; lazily created state shows in len(opt.state)
    return tuple(getattr(g, "version", id(g)) for g in opt.param_groups), len(opt.state)
