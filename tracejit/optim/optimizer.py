"""Optimizer base class: parameter groups, lazily created per-parameter state, state_dict round trips.

Everything a `step()` reads or changes per call (moments, step counts and the learning rate) lives in
tensors, so a compiled step binds them as graph inputs/outputs and a scheduler never forces a retrace.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import numpy as np

from .. import dispatch
from .. import dtypes as D
from .._tensor import Tensor
from ..autograd import enable_grad, no_grad
from ..devices import CPU as _CPU
from ..errors import shape_str
from ..factories import full, tensor


def fused_update(name: str, *tensors):
    """The CPU backend's fused (foreach-style) update kernel `name` ("sgd_update", "adam_update") when an eager
    step may use it for `tensors` -- nobody traces, and each is a float32 CPU tensor holding a plain array, not a
    view -- else None (the step runs its tensor ops). The kernels compute what those ops compute, bit for bit;
    they load with the eager kernels (tracejit.dispatch.eager_kernel: in the background, NumPy meanwhile)."""
    if dispatch.current_tracer() is not None:
        return None
    for t in tensors:
        b = t._box
        if b.type.dtype is not D.float32 or t._view is not None or not isinstance(b.value, np.ndarray) or \
                b.device is not _CPU:
            return None
    return dispatch.eager_kernel(name)


def rebind(t: Tensor, value: np.ndarray, updates: int = 1) -> None:
    """Give `t` the new value an eager in-place update computed (as Tensor._inplace does: a NumPy-shared array
    is written into), counting `updates` in-place ops on its version."""
    box = t._box
    box.value = value
    box.version += updates


class _RequiredParameter:
    """Marks a hyperparameter that every param group must give (PyTorch's ``optim.optimizer.required``)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _RequiredParameter()


class ParamGroup(dict):
    """One parameter group: a dict whose learning rate is mirrored into a 0-d float32 tensor.

    ``group['lr']`` reads the Python float last assigned, so schedulers compute exactly PyTorch's
    numbers; ``group['lr'] = x`` also writes ``x`` into ``group.tensor('lr')`` with an eager in-place
    update, so that tensor keeps its identity and a compiled ``step()`` sees the new value as an input.

    Other settings are constants of a compiled step (a change bumps ``version``: a retrace) until
    ``group.mirror(key)`` makes them tensor-valued too, as a scheduler that cycles ``momentum`` or
    ``betas`` every step does (OneCycleLR). Mirrored settings other than the lr are float64 tensors,
    so ``1 - beta`` and ``beta ** step`` are PyTorch's Python-double numbers, cast to the parameter's
    dtype where they meet it (as a Python float is); optimizers read them with ``group.hyper(key)``.

    >>> g = opt.param_groups[0]; t = g.tensor('lr'); g['lr'] = 0.01
    >>> g['lr'], g.tensor('lr') is t
    (0.01, True)
    """

    TENSOR_KEYS = ("lr",)
    tensor_keys: tuple[str, ...] = TENSOR_KEYS  # per group (set by the optimizer that makes it)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self._tensors: dict[str, Any] = {}
        self.update(*args, **kwargs)

    @classmethod
    def _make(cls, items: dict[str, Any], tensor_keys: Iterable[str] = TENSOR_KEYS) -> ParamGroup:
        """A group whose ``tensor_keys`` are mirrored into tensors (set before the first item arrives)."""
        group = cls.__new__(cls)
        dict.__init__(group)
        group._tensors = {}
        group.tensor_keys = tuple(tensor_keys)
        group.update(items)
        return group

    def mirror(self, key: str) -> Any:
        """Make setting ``key`` tensor-valued from now on (a scheduler about to change it every step):
        later assignments write the tensor in place instead of retracing. Returns ``tensor(key)``."""
        if key not in self.tensor_keys:
            if key not in self:
                raise KeyError(f"param group has no setting {key!r}")
            self.tensor_keys = (*self.tensor_keys, key)
            self[key] = dict.__getitem__(self, key)
            self.version = getattr(self, "version", 0) + 1  # a constant of the trace becomes an input
        return self.tensor(key)

    def hyper(self, key: str) -> Any:
        """What ``step()`` computes with: the tensor(s) of a mirrored setting, else its Python value."""
        t = self._tensors.get(key)
        return t if t is not None else self[key]

    def tensor(self, key: str = "lr") -> Any:
        """The 0-d tensor that mirrors ``self[key]`` (what ``step()`` computes with); for a tuple-valued
        setting (``betas``) a tuple of 0-d tensors."""
        if key not in self._tensors:
            raise KeyError(f"param group has no tensor-valued hyperparameter {key!r} "
                           f"(tensor-valued keys: {', '.join(self.tensor_keys)})")
        return self._tensors[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.tensor_keys:
            old = dict.get(self, key)
            value = self._write(key, value)
            if key != "lr" and old is not None and _zero_pattern(old) != _zero_pattern(value):
                self.version = getattr(self, "version", 0) + 1  # e.g. momentum on/off: another trace
        else:
            # settings other than the lr are constants in a compiled step: a change must retrace
            self.version = getattr(self, "version", 0) + 1
        super().__setitem__(key, value)

    def _write(self, key: str, value: Any) -> Any:
        dtype = D.float32 if key == "lr" else D.float64
        if isinstance(value, (tuple, list)):
            values = tuple(_scalar(key, v) for v in value)
            ts = self._tensors.get(key)
            if not (isinstance(ts, tuple) and len(ts) == len(values)):
                with no_grad():
                    self._tensors[key] = tuple(full((), v, dtype=dtype) for v in values)
            else:
                with no_grad():
                    for t, v in zip(ts, values):
                        t.fill_(v)
            return values
        if value is None:  # (a setting some optimizers leave unset): nothing to mirror
            self._tensors.pop(key, None)
            return value
        value = _scalar(key, value)
        t = self._tensors.get(key)
        if t is None or isinstance(t, tuple):
            with no_grad():
                self._tensors[key] = full((), value, dtype=dtype)
        else:
            with no_grad():
                t.fill_(value)  # in place: the tensor a compiled step captured stays the one that changes
        return value

    # dict's own update/setdefault bypass __setitem__; route them through it so the tensor stays in sync
    def update(self, *args: Any, **kwargs: Any) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: dict[str, Any]) -> ParamGroup:
        self.update(other)
        return self

    def __reduce__(self):
        # copies (and unpickled groups) get a tensor of their own: a shared one would let writing the
        # copy's lr change the original's
        return (ParamGroup._make, (dict(self), self.tensor_keys))


def _scalar(key: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {key} must be 1-element, got shape {shape_str(value.shape)}")
        value = value.item()
    return float(value)


def _zero_pattern(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(v == 0 for v in value)
    return value == 0


class Optimizer:
    """Base class of all optimizers (PyTorch's ``torch.optim.Optimizer`` contract).

    Subclasses implement ``step()``, reading the learning rate as ``group.tensor('lr')`` and keeping
    per-parameter state in ``self.state[p]`` as tensors updated in place, and the other settings a
    scheduler may change between compiled steps (``momentum``, ``betas``) as ``group.hyper(key)``.
    ``TENSOR_HYPERPARAMETERS`` names the settings mirrored into tensors from the start.
    """

    TENSOR_HYPERPARAMETERS: tuple[str, ...] = ("lr",)

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]):
        self.defaults = defaults
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[ParamGroup] = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or "
                            "dicts, but got a Tensor")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters (with its own hyperparameters) to optimize."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but the "
                            "ordering of tensors in sets will change between runs. Please use a list "
                            "instead.")
        else:
            params = list(params)
        names = None
        if params and isinstance(params[0], tuple):  # named_parameters()
            names = [n for n, _ in params]
            params = [p for _, p in params]
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        group = ParamGroup._make({k: v for k, v in param_group.items() if k != "params"},
                                 self.TENSOR_HYPERPARAMETERS)
        group["params"] = params
        if names is not None:
            group["param_names"] = names
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization "
                                 f"parameter {name}")
            group.setdefault(name, default)
        if len({id(p) for p in params}) != len(params):
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in future, this "
                          "will cause an error", stacklevel=3)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: drop them (default) or, with ``set_to_none=False``, zero them in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    # assign without looking first: a compiled step then does not depend on (and is not
                    # guarded by) whether the gradients existed before the call
                    p.grad = None
                    continue
                if p.grad is None:
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                with no_grad():
                    p.grad.zero_()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        raise NotImplementedError

    @staticmethod
    def _closure_loss(closure: Callable[[], Any] | None) -> Any:
        # step() itself runs under no_grad; the closure recomputes the loss and needs the tape
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # ---- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: ``{'state': {index: {...}}, 'param_groups': [{..., 'params': [indices]}]}``.

        The state tensors are the live ones (not copies), as in PyTorch.
        """
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            for p in g["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in g["params"]]
            groups.append(packed)
        state = {index[id(p)]: s for p, s in self.state.items() if isinstance(p, Tensor) and id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and state; existing state tensors receive the values in place.

        Everything is validated before anything changes, so a mismatching state dict leaves the
        optimizer as it was.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)}) than the optimizer ({len(self.param_groups)})")
        for i, (g, s) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(f"loaded state dict contains a parameter group that doesn't match the size "
                                 f"of optimizer's group: group {i} has {len(s['params'])} saved parameters, "
                                 f"the optimizer's has {len(g['params'])}")
        id_map = dict(zip(chain.from_iterable(s["params"] for s in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        where = {pid: (gi, j) for gi, s in enumerate(saved_groups) for j, pid in enumerate(s["params"])}
        new_state: dict[int, dict[str, Any]] = {}
        for pid, entries in state_dict["state"].items():
            if pid not in id_map:
                raise ValueError(f"loaded state dict has state for parameter index {pid}, which is in none "
                                 f"of its param groups")
            p = id_map[pid]
            new_state[id(p)] = {k: self._cast_state(p, k, v, pid, where[pid]) for k, v in entries.items()}

        for g, s in zip(self.param_groups, saved_groups):
            for k, v in s.items():
                if k == "params":
                    continue
                if isinstance(g.get(k), tuple) and isinstance(v, list):
                    v = tuple(v)
                g[k] = copy.deepcopy(v) if not isinstance(v, Tensor) else v
        for p in chain.from_iterable(g["params"] for g in self.param_groups):
            loaded = new_state.get(id(p))
            if loaded is None:
                self.state.pop(p, None)
                continue
            current = self.state.get(p, {})
            merged = {}
            for k, v in loaded.items():
                old = current.get(k)
                if (isinstance(v, Tensor) and isinstance(old, Tensor) and old.shape == v.shape
                        and old.dtype is v.dtype):
                    with no_grad():
                        old.copy_(v)  # keep the identity a compiled step has captured
                    merged[k] = old
                else:
                    merged[k] = v
            current.clear()
            current.update(merged)
            self.state[p] = current

    def _cast_state(self, p: Tensor, key: str, value: Any, pid: int, where: tuple[int, int]) -> Any:
        """A fresh copy of a loaded state value; checks param-shaped state and casts it to p's dtype."""
        if not isinstance(value, Tensor):
            return copy.deepcopy(value)
        if key == "step":
            return tensor(value.detach())
        if value.ndim > 0 and tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"loaded optimizer state {key!r} of parameter {pid} (group {where[0]}, position "
                             f"{where[1]}) has shape {shape_str(value.shape)}, but the parameter has shape "
                             f"{shape_str(p.shape)}")
        dtype = p.dtype if p.dtype.is_floating_point and value.dtype.is_floating_point else value.dtype
        return tensor(value.detach(), dtype=dtype, device=p.device)  # on the parameter's device, as PyTorch

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k not in ("params", "param_names")]
        return "\n".join(lines) + "\n)"
