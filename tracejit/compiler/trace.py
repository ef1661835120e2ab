"""Tracing: run the user's function once with a Tracer installed, recording every `apply` as a Node.

Concrete tensors the function touches (parameters, grads, optimizer state, RNG state) are lifted to graph
inputs bound to live tensors; in-place mutation rebinds boxes to new Values (functionalization), and at the
end every changed box or `.grad` becomes a write-back output. All boxes are restored afterwards, so tracing
leaves no trace on the user's objects.
"""

from __future__ import annotations

import re

import numpy as np

from .. import dispatch as T
from .._tensor import Tensor
from ..devices import CPU
from ..errors import TraceError, shape_str, user_location
from ..ops import TensorType
from .ir import GraphBuilder, Value
from .state import StateIndex
from .watch import Watch


class TensorRef:
    """A tensor the compiled call must find again: the argument at a position, or a captured tensor."""

    __slots__ = ("tensor", "arg")

    def __init__(self, tensor, arg: int | None = None):
        self.tensor, self.arg = tensor, arg

    def get(self, args):
        return self.tensor if self.arg is None else args[self.arg]

    def expr(self, name) -> str:
        """`get` as Python source over `args`; `name(obj)` names an object the source refers to."""
        return f"args[{self.arg}]" if self.arg is not None else name(self.tensor)


class Binding:
    """Where a graph input comes from on each call (and where a write-back goes), and the device its storage
    was on when traced (the runner moves it where the program runs, when that is elsewhere)."""

    __slots__ = ("kind", "ref", "name", "device")

    def __init__(self, kind: str, ref, name: str, device=CPU):
        self.kind = kind  # 'arg' (ref = arg index), 'box' (ref = Box), 'grad' (ref = owner TensorRef), 'const'
        self.ref = ref
        self.name = name
        self.device = device

    def read(self, args):
        k = self.kind
        if k == "box":
            return self.ref.value
        if k == "arg":
            return args[self.ref]._box.value
        if k == "grad":
            return self.ref.get(args)._grad._box.value
        return self.ref  # const array

    def expr(self, name) -> str:
        """`read` as Python source over `args` (for generated runners); `name(obj)` names an object."""
        k = self.kind
        if k == "box":
            return f"{name(self.ref)}.value"
        if k == "arg":
            return f"args[{self.ref}]._box.value"
        if k == "grad":
            return f"{self.ref.expr(name)}._grad._box.value"
        return name(self.ref)

    def box_expr(self, name) -> str:
        """Source for the Box a write-back to this binding replaces the value of (not for 'const')."""
        k = self.kind
        if k == "box":
            return name(self.ref)
        if k == "arg":
            return f"args[{self.ref}]._box"
        return f"{self.ref.expr(name)}._grad._box"

    def __repr__(self):
        return f"Binding({self.kind}, {self.name})"


class Lifted:
    __slots__ = ("box", "orig", "orig_version", "orig_device", "value", "binding")

    def __init__(self, box, value, binding):
        self.box, self.orig, self.orig_version, self.orig_device = box, box.value, box.version, box.device
        self.value = value
        self.binding = binding


# dtypes tensors hold but compiled steps do not compute in (the pooling argmax's internal uint8 never meets a trace:
# a pass introduces it): name -> (its name, how to convert it)
_STORAGE_ONLY = {"float16": ("float16", "to float32 with .float()"),
                 "uint8": ("uint8", "with .float() (images: .float() / 255) or .long()")}


class Tracer:
    """Installed as the tensor module's trace context while the user's function runs."""

    def __init__(self, name: str, state: StateIndex):
        self.builder = GraphBuilder(name)
        self.state = state
        self.lifted: dict[int, Lifted] = {}
        self.defined: set[int] = set()
        self.grad_sets: dict[int, tuple] = {}
        self.modules_called: dict[int, object] = {}
        self.grad_first_access: dict[int, tuple] = {}
        self.arg_of: dict[int, int] = {}  # id(argument tensor) -> position

    # ---- hooks called from dispatch.py and _tensor.py
    def add_node(self, op, inputs, attrs, out_type: TensorType) -> Value:
        types = [t._box.type for t in inputs]
        storage = _STORAGE_ONLY.get(out_type.dtype.name) or next(
            (_STORAGE_ONLY[t.dtype.name] for t in types if t.dtype.name in _STORAGE_ONLY), None)
        if storage is not None:
            # float16 and uint8 are storage dtypes: the generated kernels compute in float32/float64/int64/bool
            name, how = storage
            raise TraceError(f"{op.name}: compiled steps do not support {name} (inputs "
                             f"{', '.join(map(str, types)) or 'none'}); convert {how} outside the compiled "
                             f"function, or compile with fallback='eager' (at {user_location()})")
        vals = [self.value_of(t) for t in inputs]
        v = self.builder.add_node(op, vals, attrs, out_type)
        self.defined.add(v.id)
        return v

    def value_of(self, t) -> Value:
        v = t._box.value
        if isinstance(v, Value):
            if v.id in self.defined:
                return v
            raise TraceError(f"a tensor of type {v.type} from another trace was used (at {user_location()}); "
                             f"tensors created inside a compiled function cannot be kept and reused later")
        return self._lift(t)

    def constant(self, arr: np.ndarray) -> Value:
        v = self.builder.add_input(TensorType(arr.shape, _dtype_of(arr)), {"const": True})
        self.defined.add(v.id)
        self.consts.append((v, arr))
        return v

    def before_mutation(self, t) -> None:
        self.value_of(t)

    def on_grad_set(self, t, new) -> None:
        if id(t) not in self.grad_sets:
            self.grad_sets[id(t)] = (t, t._grad)
        self.grad_first_access.setdefault(id(t), (t, "set", t._grad is not None))

    def on_grad_get(self, t) -> None:
        # the trace depends on whether .grad existed only if it was looked at before being assigned
        self.grad_first_access.setdefault(id(t), (t, "get", t._grad is not None))

    def ref(self, t) -> TensorRef:
        """Arguments are found by position on later calls; captured tensors by identity."""
        return TensorRef(t, self.arg_of.get(id(t)))

    def grad_guards(self) -> list:
        return [(self.ref(t), had) for t, kind, had in self.grad_first_access.values() if kind == "get"]

    def on_module_call(self, module) -> None:
        if id(module) not in self.modules_called:
            self.modules_called[id(module)] = module
            self.state.add_module(module)  # however it was reached: its parameters' grads are known as such

    # ---- lifting
    consts: list

    def lift_arg(self, t, index: int, name: str) -> None:
        self.arg_of.setdefault(id(t), index)
        box = t._box
        if id(box) in self.lifted:
            return
        v = self.builder.add_input(box.type, {"arg": name})
        self.defined.add(v.id)
        self.lifted[id(box)] = Lifted(box, v, Binding("arg", index, name, box.device))
        box.value = v

    def _lift(self, t) -> Value:
        box = t._box
        if box.device is CPU and not isinstance(box.value, np.ndarray):
            raise TraceError(f"cannot trace a tensor holding {type(box.value).__name__}")
        owner = self.state.grad_owner(box)
        if owner is not None:
            binding = Binding("grad", self.ref(owner), self.state.name_or_new(owner._box) + ".grad", box.device)
        else:
            binding = Binding("box", box, self.state.name_or_new(box), box.device)
        v = self.builder.add_input(box.type, {"state": binding.name})
        self.defined.add(v.id)
        self.lifted[id(box)] = Lifted(box, v, binding)
        box.value = v
        return v

    # ---- end of trace
    def finish(self, result):
        """Declare outputs: returned tensors, then write-backs. Returns (structure, writes, grad_clears).
        `out_devices[i]`: the device output i's tensor was on in the trace (where the runner puts it)."""
        b = self.builder
        leaves: list = []
        structure = _flatten(result, leaves)
        self.out_devices = devices = []
        for t in leaves:
            b.add_output(self.value_of(t), None)
            devices.append(t._box.device)
        writes = []  # (binding, output index)
        for lifted in list(self.lifted.values()):
            if lifted.box.value is not lifted.value:
                writes.append((lifted.binding, len(b.graph.outputs)))
                b.add_output(self.value_of(Tensor._from_box(lifted.box)), lifted.binding.name)
                devices.append(lifted.binding.device)
        grad_sets = []  # (owner tensor, output index or None to clear)
        for t, orig in self.grad_sets.values():
            final = t._grad
            if final is orig:
                continue
            name = self.state.name_or_new(t._box) + ".grad"
            if final is None:
                grad_sets.append((self.ref(t), None, name))
            else:
                grad_sets.append((self.ref(t), len(b.graph.outputs), name))
                b.add_output(self.value_of(final), name)
                devices.append(final._box.device)
        return structure, writes, grad_sets

    def new_state(self) -> list[str]:
        """Names of tensors that the trace created and stored in long-lived places (lazy optimizer state)."""
        found = []
        for name, t in self.state.persistent_tensors():
            if isinstance(t._box.value, Value) and id(t._box) not in self.lifted:
                found.append(name)  # a box that held no array before the trace: created inside it
        return found

    def check_kept_tensors(self, fn) -> None:
        """TraceError if places reachable from the function (attributes, containers, globals it assigned)
        now hold a tensor computed by the trace: each call would need its own value there, which a replay
        cannot give (`losses.append(loss)`: return the tensor instead)."""
        lifted = self.lifted

        def is_traced(t):
            return isinstance(t._box.value, Value) and id(t._box) not in lifted

        kept = self.state.computed_tensors(is_traced, self.watch.written_values())
        if not kept:
            return
        roots = {re.split(r"[.\[]", k)[0] for k in kept}
        where = next((loc for _, n, loc in self.watch.global_writes() if n in roots), None)
        code = getattr(getattr(fn, "__func__", fn), "__code__", None)
        if where is None and code is not None:
            where = f"{code.co_filename}:{code.co_firstlineno}"
        raise TraceError(f"{self.builder.graph.name} keeps a tensor it computed in {', '.join(kept[:3])} (at "
                         f"{where}): a compiled call cannot store a new value there on every call. Return the "
                         f"tensor from the function instead (or update an existing tensor in place with copy_)")

    def restore(self) -> None:
        for lifted in self.lifted.values():
            lifted.box.value = lifted.orig
            lifted.box.version = lifted.orig_version
            lifted.box.device = lifted.orig_device
        for t, orig in self.grad_sets.values():
            t._grad = orig


def _dtype_of(arr):
    from .. import dtypes as D

    return D.from_numpy(arr.dtype)


def _flatten(obj, leaves):
    """Pytree of tensors -> structure with ('leaf', i) placeholders; leaves appended to `leaves`."""
    if isinstance(obj, Tensor):
        leaves.append(obj)
        return ("leaf", len(leaves) - 1)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return ("namedtuple", type(obj), [_flatten(x, leaves) for x in obj])
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [_flatten(x, leaves) for x in obj])
    if isinstance(obj, dict):
        return ("dict", [(k, _flatten(v, leaves)) for k, v in obj.items()])
    if obj is None or isinstance(obj, (int, float, bool, str)):
        return ("const", obj)
    raise TraceError(f"a compiled function can return tensors, numbers and tuples/lists/dicts of them, "
                     f"not {type(obj).__name__}")


def unflatten(structure, leaves):
    kind = structure[0]
    if kind == "leaf":
        return leaves[structure[1]]
    if kind == "const":
        return structure[1]
    if kind == "namedtuple":
        return structure[1](*[unflatten(s, leaves) for s in structure[2]])
    if kind == "list":
        return [unflatten(s, leaves) for s in structure[1]]
    if kind == "tuple":
        return tuple(unflatten(s, leaves) for s in structure[1])
    return {k: unflatten(s, leaves) for k, s in structure[1]}


def trace(fn, args, arg_names, state: StateIndex, name: str):
    """Run `fn(*args)` under a Tracer. Returns (tracer, structure, writes, grad_sets)."""
    tracer = Tracer(name, state)
    tracer.consts = []
    tracer.watch = watch = Watch(fn, state, name)
    # One trace at a time in the process: the captured tensors hold this trace's Values until restore(), and
    # an eager op in another thread that meets one waits on this lock (dispatch.py). The tracer is installed
    # before the first Value goes into a box and removed after the last one is gone.
    with T.TRACE_LOCK:
        prev = T.set_tracer(tracer)
        try:
            for i, a in enumerate(args):
                if isinstance(a, Tensor):
                    tracer.lift_arg(a, i, arg_names[i])
            with watch:
                result = fn(*args)
            watch.check()  # Python/NumPy random draws, optimizer settings assigned in the step: TraceError
            structure, writes, grad_sets = tracer.finish(result)
            new_state = tracer.new_state()
            if not new_state:
                tracer.check_kept_tensors(fn)
        finally:
            try:
                tracer.restore()
            finally:
                T.set_tracer(prev)
    return tracer, structure, writes, grad_sets, new_state


def describe_arg(a) -> str:
    if isinstance(a, Tensor):
        return (f"{a.dtype.short}{shape_str(a.shape)}" + (" requires_grad" if a.requires_grad else "")
                + ("" if a._box.device is CPU else f" on {a._box.device}"))
    return repr(a)


def side_effect_note(name: str, effects=()) -> str:
    """The one-time note for a function's first compilation: Python side effects run at trace time only."""
    s = (f"{name}: Python statements in a compiled function (print, logging, callbacks, counters, time.time()) "
         f"run only while it is traced; later calls replay its tensor operations")
    if effects:
        s += " (here: " + "; ".join(effects[:4]) + ")"
    return s
