"""The CUDA program's steps: what one node of a compiled graph does when the program runs.

    Step          launches rendered kernels (render.py, templates.py) on the step's buffers, writing its outputs
                  into the runtime arena's views (intermediates), fresh pool buffers (returned values) or, for
                  the optimizer's owned state, the input buffers themselves
    ViewStep      reshape, and a transpose only GEMMs read: no kernel, the input's storage seen anew
    GemmStep      matmul / linear through cuBLAS (CuPy), the bias+ReLU epilogue as a following kernel
    HostStep      a node the kernels cannot take: host copies, the op's NumPy ref, copied back
    BodyStep      a fused node without a kernel for its pattern: its body op by op, each a step
    CheckedStep   the last step that can raise an index error, then the flag read (program.py)
    PassThrough   check_index: its check kernel, then the index itself
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ...runtime import Program
from . import blas, render
from .memory import CudaBuffer


class Step:
    """Launches rendered kernels: `launches` = [(configured kernel, arg spec)], arg spec items ('in', i),
    ('out', j), ('tmp', t), ('flags', None)."""

    runs = "generated"
    writes_into = True  # called as step(args, given): results go into the runtime arena's views where given

    def __init__(self, prog, node, label, rendered, out_types, inplace=(), check=None):
        self.prog, self.node, self.label = prog, node, label
        self.source = render.PRELUDE + rendered.source if rendered.source else None
        self.hit = None
        self.first_call_s = None
        self.out_types = [(tuple(t.shape), t.dtype.np) for t in out_types]
        self.temps = [(n, d.np) for n, d in rendered.temps]
        self.inplace = inplace  # (output, input) pairs that may share a buffer (memory_plan), for owned inputs
        self.check = check  # (check number, input position of the index) for index checks
        self.launch_specs = rendered.launches
        self.launches = []
        if rendered.launches:
            fns, self.hit, _ = render.load(rendered.source, sorted({ln.fn for ln in rendered.launches}))
            with warnings.catch_warnings():
                # numba-cuda warns about grids too small to fill the GPU: tiny tensors make tiny grids on purpose
                warnings.simplefilter("ignore")
                for ln in rendered.launches:
                    self.launches.append((fns[ln.fn][ln.blocks, ln.threads], tuple(ln.args)))
        self.n_launches = len(self.launches)

    def __call__(self, args, given=()):
        mem = self.prog.mem
        outs = list(given) if given else [None] * len(self.out_types)
        for oi, ii in self.inplace:
            a = args[ii]
            if self.prog.owned.get(id(a.block)) is a.block:
                outs[oi] = a
        outs = [mem.empty(s, d) if o is None else o for o, (s, d) in zip(outs, self.out_types)]
        temps = [mem.empty((n,), d) for n, d in self.temps]
        flags = self.prog.flags
        t0 = time.perf_counter() if self.first_call_s is None else None
        for fn, spec in self.launches:
            arrays = []
            for kind, i in spec:
                if kind == "in":
                    arrays.append(args[i].block.arr)
                elif kind == "out":
                    arrays.append(outs[i].block.arr)
                elif kind == "tmp":
                    arrays.append(temps[i].block.arr)
                else:
                    arrays.append(flags.block.arr)
            fn(*arrays)
        if t0 is not None:
            self.prog.sync()
            self.first_call_s = time.perf_counter() - t0
        if self.check is not None:
            self.prog.check_args[self.check[0]] = args[self.check[1]]
        return outs


class ViewStep:
    """reshape (and a transpose only GEMMs read): the input's storage itself, seen with the output's shape."""

    runs = "library"
    n_launches = 0
    aliases = {0: (0,)}  # (the runtime arena: the result is a view of the input)

    def __init__(self, node, label, shape=None):
        self.node, self.label, self.shape = node, label, shape

    def __call__(self, args):
        a = args[0]
        return [a if self.shape is None else CudaBuffer(a.block, self.shape, a.dtype)]


class GemmStep:
    """matmul / linear through cuBLAS (CuPy) with the bias+relu epilogue as a following kernel."""

    runs = "library"
    writes_into = True

    def __init__(self, prog, node, label, gemm_args, epilogue):
        self.prog, self.node, self.label = prog, node, label
        self.gemm_args = gemm_args  # (batch, m, n, k, trans_a, trans_b)
        self.epilogue = Step(prog, node, label + " epilogue", epilogue, node.outputs) if epilogue else None
        self.source = self.epilogue.source if self.epilogue else None
        self.hit = self.epilogue.hit if self.epilogue else None
        self.first_call_s = None
        self.out_type = (tuple(node.outputs[0].shape), node.outputs[0].dtype.np)
        self.n_launches = 1 + (1 if self.epilogue else 0)

    def __call__(self, args, given=()):
        out = given[0] if given and given[0] is not None else self.prog.mem.empty(*self.out_type)
        blas.matmul(args[0], args[1], out, *self.gemm_args)
        if self.epilogue is not None:
            for fn, spec in self.epilogue.launches:
                fn(*[args[i].block.arr if k == "in" else out.block.arr for k, i in spec])
        return [out]


class HostStep:
    """A node without a CUDA kernel: its inputs copied to the host, the op's NumPy ref, the result copied back."""

    runs = "library"
    n_launches = 0
    aliases: dict = {}  # fresh buffers

    def __init__(self, prog, node, why):
        self.prog, self.node, self.why = prog, node, why
        self.label = f"{node.op.name if node.body is None else node.body.name} (host round trip)"
        if node.body is not None:
            from ..reference import ref_step

            self.fn = ref_step(node)
        else:
            op, attrs, dt = node.op, node.attrs, node.outputs[0].dtype.np

            def fn(arrays):
                r = op.ref(*arrays, **attrs)
                return (r if isinstance(r, np.ndarray) and r.dtype == dt else np.asarray(r, dtype=dt),)
            self.fn = fn

    def __call__(self, args):
        mem = self.prog.mem
        host = [mem.to_host(a) for a in args]
        return [mem.to_device(np.ascontiguousarray(r)) for r in self.fn(host)]


class BodyStep:
    """A fused node the backend has no kernel for, run through its body op by op (each op its own step)."""

    runs = "generated"

    def __init__(self, prog, node, why):
        self.node, self.why = node, why
        self.inner = Program(node.body, prog.make_step, backend=prog.backend)  # its own arena, on the GPU
        self.label = f"{node.body.name} (op by op: {why})"
        steps = [s for s, *_ in self.inner.plan]
        srcs = [s.source for s in steps if isinstance(getattr(s, "source", None), str)]
        self.source = "\n\n".join(srcs) if srcs else None
        self.hit = all(getattr(s, "hit", True) is not False for s in steps)
        self.n_launches = sum(getattr(s, "n_launches", 0) for s in steps)
        self.first_call_s = None

    def __call__(self, args):
        return self.inner.run(list(args))


class CheckedStep:
    """The last step that can raise an index error, followed by the flag read (see module doc)."""

    def __init__(self, inner, prog):
        self.inner, self.prog = inner, prog
        for a in ("runs", "node", "label", "source", "hit", "n_launches", "writes_into", "aliases"):
            if hasattr(inner, a):
                setattr(self, a, getattr(inner, a))

    @property
    def first_call_s(self):
        return getattr(self.inner, "first_call_s", None)

    def __call__(self, args, given=()):
        out = self.inner(args, given) if given else self.inner(args)
        self.prog.raise_if_flagged()
        return out


class PassThrough:
    """check_index: runs its check kernel and returns the index itself."""

    aliases = {0: (0,)}  # the index itself

    def __init__(self, inner):
        self.inner = inner
        for a in ("runs", "node", "label", "source", "hit", "n_launches"):
            setattr(self, a, getattr(inner, a))

    @property
    def first_call_s(self):
        return self.inner.first_call_s

    def __call__(self, args):
        self.inner(args)
        return [args[0]]
