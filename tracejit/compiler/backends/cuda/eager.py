"""Eager ops on CUDA tensors: one op at a time through the same kernels as compiled code (a one-node program per
op, attrs and input shapes, cached); None for the ops that take the backend's host round trip."""

from __future__ import annotations

from .... import dtypes as D
from ....ops import OPS, Kind, TensorType
from ...ir import Graph, Node, Value
from .memory import CudaBuffer
from .program import DTYPES, CudaProgram

EAGER_ON_DEVICE = {name for name, op in OPS.items() if op.kind is Kind.ELEMENTWISE} | {
    "sum", "amax", "argmax", "reshape", "permute", "expand", "slice", "pad", "cat", "matmul", "conv2d",
    "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d", "max_pool2d_grad", "avg_pool2d", "avg_pool2d_grad"}


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, float) and v != v:
        return "nan"
    return v


class Eager:
    """One op at a time on device buffers, through the same kernels (one small program per op, attrs and
    shapes; cached)."""

    def __init__(self, backend):
        self.backend = backend
        self.steps: dict = {}

    def run(self, op, buffers, attrs, out_type):
        if op.name not in EAGER_ON_DEVICE or any(not isinstance(b, CudaBuffer) for b in buffers) or \
                out_type.dtype not in DTYPES or any(D.from_numpy(b.dtype) not in DTYPES for b in buffers):
            return None
        key = (op.name, _freeze(attrs), tuple((b.shape, b.dtype.str) for b in buffers))
        prog = self.steps.get(key)
        if prog is None:
            ins = [Value(TensorType(b.shape, D.from_numpy(b.dtype))) for b in buffers]
            out = Value(out_type)
            g = Graph(f"eager_{op.name}", ins, [Node(op, tuple(ins), dict(attrs), (out,))], [out], {}, [None])
            prog = self.steps[key] = CudaProgram(g, self.backend)
            if prog.fallbacks:
                prog = self.steps[key] = False
        if prog is False:
            return None
        (r,) = prog.run(list(buffers))
        if any(r.block is b.block for b in buffers):  # a view: eager results never share an input's storage
            copy = self.backend.mem.empty(r.shape, r.dtype)
            if r.size:
                copy.data.copy_to_device(r.data)
            r = copy
        return r
