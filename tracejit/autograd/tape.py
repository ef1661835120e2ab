"""Tape entries as data -- (op, inputs, attrs, output), never closures -- and the context a gradient rule sees.

Recorded by `dispatch.apply`; walked by the engine (engine.py)."""

from __future__ import annotations

from ..errors import shape_str

_FREED_MSG = ("Trying to backward through the graph a second time (or directly access saved tensors after "
              "they have already been freed). Saved intermediate values of the graph are freed when you "
              "call .backward() or autograd.grad(). Specify retain_graph=True if you need to backward "
              "through the graph a second time.")


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


class TapeEntry:
    """One recorded op: what backward needs to call `op.grad`. Exposed to users as ``tensor.grad_fn``."""

    __slots__ = ("op", "inputs", "attrs", "in_types", "out_type", "versions", "out_box", "out_version",
                 "next", "freed", "__weakref__")

    def __init__(self, op, inputs, attrs, out):
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.in_types = [t._type for t in inputs]
        self.out_type = out._type
        self.versions = [t._box.version for t in inputs]
        self.out_box = out._box
        self.out_version = out._box.version
        # where each input's gradient goes: its own tape entry (captured now, in-place ops may rebind it
        # later) or, for a leaf that requires grad, the tensor itself
        self.next = [(t.grad_fn if t.grad_fn is not None else t) if t.requires_grad else None
                     for t in inputs]
        self.freed = False

    def name(self) -> str:
        return f"{_camel(self.op.name)}Backward0"

    def __repr__(self) -> str:
        return f"<{self.name()}>"

    @property
    def next_functions(self):
        return tuple((n if isinstance(n, TapeEntry) else None, 0) for n in self.next)


class GradContext:
    """What a gradient rule sees: attrs, input/output types, and version-checked saved tensors."""

    __slots__ = ("entry", "attrs", "in_types", "out_type")

    def __init__(self, entry: TapeEntry):
        self.entry = entry
        self.attrs = entry.attrs
        self.in_types = entry.in_types
        self.out_type = entry.out_type

    def _modified(self, what, version, expected):
        raise RuntimeError(
            f"one of the variables needed for gradient computation has been modified by an inplace "
            f"operation: {what} of {self.entry.name()} ({self.entry.op.name}) is at version {version}; "
            f"expected version {expected} instead. Use out-of-place ops (x = x + y rather than x.add_(y)) "
            f"or .clone() before modifying it.")

    def input(self, i: int):
        t = self.entry.inputs[i]
        if t._box.version != self.entry.versions[i]:
            self._modified(f"input {i} of shape {shape_str(t.shape)}", t._box.version,
                           self.entry.versions[i])
        return t

    def output(self):
        box = self.entry.out_box
        if box.version != self.entry.out_version:
            self._modified(f"the output of shape {shape_str(self.out_type.shape)}", box.version,
                           self.entry.out_version)
        return type(self.entry.inputs[0])._from_box(box)  # (a Tensor: the tape knows no tensor module)
