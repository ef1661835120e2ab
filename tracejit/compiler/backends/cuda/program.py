"""The CUDA backend's Program: one step per node, each launching one (rarely two or three) generated kernels on
device buffers, loaded through the disk cache.

What runs where:
- fused elementwise / reduce / multi (optimizer) nodes: render.py's loop kernels (one launch each; a long
  reduction with few outputs two);
- window patterns (conv+bias+relu+pool forward writing pooled values and argmax; unpool; the conv backward;
  weight+bias gradients) and linear (GEMM + bias + relu): templates.py, when capabilities.supports says so, else
  the body op by op;
- primitives: elementwise / sum / amax wrapped as one-op loop kernels; reshape is free (a view); permute, expand,
  slice, pad, cat, full are copy/fill kernels, and a 2-D transpose read only by GEMMs is no kernel at all (the
  GEMM reads it transposed); matmul (tiled GEMM, or cuBLAS through CuPy); conv2d and its two gradients;
  gather, scatter_add, argmax, check_index, uniform;
- pooling outside a fused group (any stride, padding, dilation, ceil_mode) and its gradients: gathers, one
  thread per output element;
- anything else (dtypes the kernels do not take, e.g. float16): a host round trip through the op's NumPy ref,
  listed in `fallbacks` (explain prints them).
Index checks record the first bad position in a small device array of flags; the program reads it (one small
copy, a synchronization) right after the last node that can raise, before any state is written in place, and
raises the eager error.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from .... import dtypes as D
from ....ops import Kind, index_error, index_message
from ...ir import FusedKind, Graph, Node, Pattern, Value, fused, users
from ...runtime import Program
from ..kernel import LoweringError, lower
from . import blas, render, window
from . import templates as TM
from .capabilities import supports
from .steps import BodyStep, CheckedStep, GemmStep, HostStep, PassThrough, Step, ViewStep

RAISES = ("check_index", "gather", "scatter_add")
DTYPES = (D.float32, D.float64, D.int64, D.bool_, D.uint8)  # what generated kernels read and write


# ------------------------------------------------------------------------------------------- the program


class CudaProgram(Program):
    """A compiled graph on the GPU; buffers in and out are CudaBuffers (see memory.py)."""

    updates_in_place = False

    def __init__(self, graph: Graph, backend, dumper=None):
        self.backend, self.mem, self.cuda = backend, backend.mem, backend.cuda
        self.device = backend.device
        self.fallbacks: list[str] = []
        self.owned: dict = {}
        self.checks: list = []  # check number -> (error, message)
        self.check_args: dict = {}
        self.flags = None
        self._lock = threading.Lock()
        self._counter = 0
        self.dumper = dumper
        self._users = users(graph)
        self._n_nodes = len(graph.nodes)
        self._lazy_t = self._lazy_transposes(graph)
        last = [n for n in graph.nodes if n.body is None and n.op.name in RAISES]
        self._last_raise = last[-1] if last else None
        # intermediates live in the runtime's arena (backend.alloc + backend.view), as on the CPU
        super().__init__(graph, self.make_step, synchronize=self.sync, backend=backend)
        if self.checks:
            self.flags = self.mem.to_device(np.full(len(self.checks), np.iinfo(np.int64).max, np.int64))
        self.updates_in_place = self.tracks_ownership = any(getattr(s, "inplace", ()) for s, *_ in self.plan)

    def sync(self) -> None:
        self.cuda.synchronize()

    # ---- running
    def run(self, inputs: list) -> list:
        with self._lock:  # the flags and in-place ownership are per program
            outs = super().run(inputs)
            if self.tracks_ownership:
                counts: dict = {}
                for a in outs:
                    counts[id(a.block)] = counts.get(id(a.block), 0) + 1
                self.owned.clear()
                self.owned.update((id(a.block), a.block) for a in outs if counts[id(a.block)] == 1)
            return outs

    def _unshared(self, inputs: list) -> list:
        """`inputs` with the ones a run updates in place copied (profiling writes no user state)."""
        if not self.updates_in_place:
            return list(inputs)
        targets = {ins[ii] for step, ins, *_ in self.plan for _, ii in getattr(step, "inplace", ())}
        return [self.mem.copy(a) if i in targets else a for i, a in enumerate(inputs)]

    def raise_if_flagged(self) -> None:
        if self.flags is None:
            return
        host = self.flags.data.copy_to_host()
        bad = [k for k in range(len(self.checks)) if host[k] != np.iinfo(np.int64).max]
        if not bad:
            return
        k = min(bad)
        pos = int(host[k])
        idx = self.mem.to_host(self.check_args[k]).reshape(-1)
        self.flags.data.copy_to_device(np.full(len(self.checks), np.iinfo(np.int64).max, np.int64))
        raise index_error(int(idx[pos]), *self.checks[k])

    # ---- what it is made of
    def launches_per_call(self) -> int:
        return sum(getattr(s, "n_launches", 0) for s, *_ in self.plan)

    def cache_stats(self) -> tuple[int, int]:
        ks = [s for s, *_ in self.plan if getattr(s, "source", None)]
        return len(ks), sum(1 for s in ks if s.hit)

    def describe(self) -> str:
        steps = [s for s, *_ in self.plan]
        kinds: dict[str, int] = {}
        for s in steps:
            kinds[s.runs] = kinds.get(s.runs, 0) + 1
        lines = [f"steps: {len(steps)} on {self.device} ({', '.join(f'{n} {k}' for k, n in kinds.items())}); "
                 f"{self.launches_per_call()} CUDA kernel launches per call"]
        comp = [s.first_call_s for s in steps if getattr(s, "first_call_s", None) is not None]
        n, hits = self.cache_stats()
        lines.append(f"  CUDA compile/load + first run: {sum(comp) * 1e3:.0f} ms; source cache hits {hits}/{n}")
        counts: dict[str, int] = {}
        for s in steps:
            if getattr(s, "n_launches", 0):
                counts[s.label] = counts.get(s.label, 0) + s.n_launches
        lines.append("  kernels (launches): " + ", ".join(f"{lb} x{n}" if n > 1 else lb for lb, n in counts.items()))
        if any(isinstance(s, GemmStep) for s in steps):
            lines.append(f"  GEMMs: {blas.describe()}")
        for f in self.fallbacks:
            lines.append(f"  ran on the host: {f}")
        return "\n".join(lines)

    # ---- building
    def _lazy_transposes(self, g: Graph) -> set:
        """2-D transposes (or swaps of the last two dims) read only by GEMMs: the GEMM reads their input
        transposed, and the transpose launches nothing."""
        out = set()
        for n in g.nodes:
            if n.body is not None or n.op.name != "permute":
                continue
            dims, r = tuple(n.attrs["dims"]), len(n.attrs["dims"])
            if r < 2 or dims != tuple(range(r - 2)) + (r - 1, r - 2):
                continue
            v = n.outputs[0]
            readers = self._users.get(v.id, [])
            if readers and all(i < len(g.nodes) and _is_gemm(g.nodes[i], v) for i in readers):
                out.add(v.id)
        return out

    def _name(self, what: str) -> str:
        self._counter += 1
        return f"{what}_{self._counter}"

    def make_step(self, node: Node):
        try:
            step = self._make_step(node)
        except LoweringError as e:
            self.fallbacks.append(f"{_label(node)}: {e}")
            step = HostStep(self, node, str(e))
        if self.dumper and getattr(step, "source", None):
            self.dumper.kernel(f"{self._counter:02d}_{step.label.split()[0]}", step.source)
        if node is self._last_raise:
            step = CheckedStep(step, self)
        return step

    def _host(self, node: Node, why: str) -> HostStep:
        self.fallbacks.append(f"{_label(node)}: {why}")
        return HostStep(self, node, why)

    def _make_step(self, node: Node):
        odd = [v.dtype.name for v in list(node.inputs) + list(node.outputs) if v.dtype not in DTYPES]
        if odd:
            raise LoweringError(f"the CUDA kernels take {', '.join(d.name for d in DTYPES)}, not {odd[0]}")
        kind = node.fused_kind
        if kind is not None and kind.is_loop:
            return self._loop_step(node)
        if kind is not None:
            why = supports(node.pattern, {**node.attrs, "dtype": node.outputs[0].dtype})
            if why is not True:
                return BodyStep(self, node, why)
            return self._pattern_step(node)
        op = node.op
        name = op.name
        if op.kind is Kind.ELEMENTWISE and name != "full" or name in ("sum", "amax"):
            body = Graph(name, list(node.inputs), [node], list(node.outputs), {}, [None])
            return self._loop_step(fused(FusedKind.REDUCE if op.kind is Kind.REDUCE else FusedKind.ELEMENTWISE,
                                         node.inputs, node.outputs, body), label=name)
        return self._primitive_step(node)

    def _loop_step(self, node: Node, label=None):
        kind = node.fused_kind
        members = node.body.nodes if kind is FusedKind.MULTI else [node]
        pos = {v.id: i for i, v in enumerate(node.inputs)}
        out_pos = {v.id: i for i, v in enumerate(node.outputs)}
        kernels, maps = [], []
        for t, m in enumerate(members):
            k = lower(m, prefix=f"v{t}_" if kind is FusedKind.MULTI else "v")
            kernels.append(k)
            maps.append(([pos[v.id] for v in m.inputs], [out_pos[m.outputs[r.array.source].id] for r in k.results]))
        name = self._name("kernel")
        if kind is FusedKind.MULTI:
            rendered = render.render_multi(kernels, name)
            for ln in rendered.launches:
                ln.args = [("in", maps[t][0][kernels[t].loads[j].source]) if what == "load" else ("out", maps[t][1][j])
                           for what, (t, j) in ln.args]
            inplace = tuple(node.attrs.get("inplace", ()))
            label = label or f"{node.body.name} (multi-tensor update, {len(members)} tensors, one launch)"
        else:
            k = kernels[0]
            rendered = render.render_loop(k, name)
            for ln in rendered.launches:
                ln.args = [("in", maps[0][0][k.loads[j].source]) if what == "load" else
                           ("out", maps[0][1][j]) if what == "out" else (what, j) for what, j in ln.args]
            inplace = ()
            label = label or f"{node.body.name} ({kind.value})"
        return Step(self, node, label, rendered, [v.type for v in node.outputs], inplace)

    def _pattern_step(self, node: Node):
        p, a = node.pattern, node.attrs
        dtype = node.outputs[0].dtype
        name = self._name(p.value)
        if p is Pattern.LINEAR:
            x, w, _ = node.inputs
            return self._gemm(node, name, x, w, bias=True, relu=a["relu"],
                              label="linear (GEMM + bias" + (" + relu)" if a["relu"] else ")"))
        if p is Pattern.CONV_POOL:
            x, w = node.inputs[:2]
            pooled = node.outputs[0]
            k, s = a["pool"][0], a["pool_stride"][0]
            conv_hw = _conv_hw(x.shape, w.shape, a)
            c = window.conv_consts(x.shape, w.shape, conv_hw, a)
            r = window.conv_pool(name, c, dtype, a["bias"], a["relu"], k, s, pooled.shape[2:])
            return Step(self, node, "conv2d" + ("+bias" if a["bias"] else "") + ("+relu" if a["relu"] else "")
                        + "+max_pool2d (+argmax)", r, [v.type for v in node.outputs])
        if p is Pattern.UNPOOL:
            g = node.inputs[0]
            r = window.unpool(name, dtype, node.outputs[0].shape, g.shape[2:], a["pool"][0], a["pool_stride"][0],
                          a["relu"])
            return Step(self, node, "max_pool2d backward (argmax)" + (" + relu mask" if a["relu"] else ""), r,
                        [v.type for v in node.outputs])
        if p is Pattern.GRAD_WEIGHT_BIAS:
            x, g = node.inputs
            dw = node.outputs[0]
            c = window.conv_consts(x.shape, dw.shape, g.shape[2:], a)
            r = window.conv_grad_weight(name, c, dtype, weight=True, bias=True)
            return Step(self, node, "conv2d_grad_weight+bias", r, [v.type for v in node.outputs])
        if p is Pattern.CONV_POOL_BACKWARD:
            return self._conv_pool_backward(node, name)
        raise LoweringError(f"no CUDA kernel for pattern {p}")

    def _conv_pool_backward(self, node: Node, name: str):
        """unpool (+ relu mask) into a temporary dy, then dx (if asked) and dw + db from it: three launches."""
        a = node.attrs
        dtype = node.outputs[0].dtype
        has_dx = a["input_grad"]
        x = node.inputs[0]
        w_shape = node.outputs[1].shape if has_dx else node.outputs[0].shape
        g = node.inputs[2 if has_dx else 1]
        k, s, relu = a["pool"][0], a["pool_stride"][0], a["relu"]
        conv_hw = _conv_hw(x.shape, w_shape, a)
        dy_shape = (x.shape[0], w_shape[0]) + conv_hw
        c = window.conv_consts(x.shape, w_shape, conv_hw, a)
        gi = 2 if has_dx else 1
        ins = (("in", gi), ("in", gi + 1), ("in", gi + 2))
        parts = [window.unpool(f"{name}_unpool", dtype, dy_shape, g.shape[2:], k, s, relu, out_arg=("tmp", 0),
                           in_args=ins)]
        if has_dx:
            parts.append(window.conv_grad_input(f"{name}_dx", c, dtype, g_arg=("tmp", 0), w_arg=("in", 1),
                                            out_arg=("out", 0)))
        parts.append(window.conv_grad_weight(f"{name}_dw", c, dtype, weight=True, bias=True, x_arg=("in", 0),
                                         g_arg=("tmp", 0), dw_arg=("out", 1 if has_dx else 0),
                                         db_arg=("out", 2 if has_dx else 1)))
        r = render.Rendered("\n\n".join(p.source for p in parts), [ln for p in parts for ln in p.launches],
                            [(math.prod(dy_shape), dtype)])
        label = "unpool+relu+conv2d backward" if relu else "unpool+conv2d backward"
        return Step(self, node, label + (" (dx, dw, db)" if has_dx else " (dw, db)"), r,
                    [v.type for v in node.outputs])

    def _gemm(self, node, name, x, w, bias: bool, relu: bool, label: str):
        ta, tb = x.id in self._lazy_t, w.id in self._lazy_t
        out = node.outputs[0]
        m, k = x.shape[-2:]
        n = w.shape[-1]
        batch = math.prod(x.shape[:-2])
        dtype = out.dtype
        if k == 0:  # an empty sum
            if bias:
                raise LoweringError("a linear layer with an empty inner dimension")
            return Step(self, node, "matmul (empty inner dimension: zeros)", TM.fill(name, batch * m * n, 0, dtype),
                        [out.type])
        if blas.usable(dtype) and min(m, n, k) > 0:
            epi = TM.epilogue(name + "_epilogue", m, n, dtype, relu) if bias else None
            return GemmStep(self, node, label.replace("GEMM", "cuBLAS GEMM"), (batch, m, n, k, ta, tb), epi)
        r = TM.gemm(name, batch, m, n, k, ta, tb, dtype, bias, relu)
        return Step(self, node, label + (" (transposed operand read in place)" if ta or tb else ""), r, [out.type])

    def _primitive_step(self, node: Node):
        op, a = node.op, node.attrs
        name_ = op.name
        out = node.outputs[0]
        dtype = out.dtype
        name = self._name(name_)
        ins = node.inputs
        if name_ == "reshape":
            return ViewStep(node, "reshape (view)", tuple(out.shape))
        if name_ == "permute":
            if out.id in self._lazy_t:
                return ViewStep(node, "transpose (read in place by the GEMM)")
            return Step(self, node, "permute (copy)", TM.permute(name, ins[0].shape, a["dims"]), [out.type])
        if name_ == "expand":
            return Step(self, node, "expand (copy)", TM.expand(name, ins[0].shape, out.shape), [out.type])
        if name_ == "slice":
            return Step(self, node, "slice (copy)", TM.slice_(name, ins[0].shape, a["starts"], a["stops"], a["steps"],
                                                               out.shape), [out.type])
        if name_ == "pad":
            return Step(self, node, "pad", TM.pad(name, ins[0].shape, a["pads"], a.get("value", 0.0), dtype,
                                                  out.shape), [out.type])
        if name_ == "cat":
            return Step(self, node, "cat", TM.cat(name, [v.shape for v in ins], a["axis"] % len(out.shape),
                                                  out.shape), [out.type])
        if name_ == "full":
            return Step(self, node, "full", TM.fill(name, out.type.numel, a["value"], dtype), [out.type])
        if name_ == "matmul":
            if dtype not in (D.float32, D.float64, D.int64):
                return self._host(node, f"no CUDA GEMM for {dtype.name}")
            return self._gemm(node, name, ins[0], ins[1], bias=False, relu=False, label="matmul (GEMM)")
        if name_ in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"):
            if dtype not in (D.float32, D.float64):
                return self._host(node, f"the CUDA conv kernels compute in float32 or float64, not {dtype.name}")
            if name_ == "conv2d":
                c = window.conv_consts(ins[0].shape, ins[1].shape, out.shape[2:], a)
                return Step(self, node, "conv2d", window.conv2d(name, c, dtype), [out.type])
            if name_ == "conv2d_grad_input":
                c = window.conv_consts(out.shape, ins[1].shape, ins[0].shape[2:], a)
                return Step(self, node, "conv2d_grad_input", window.conv_grad_input(name, c, dtype), [out.type])
            c = window.conv_consts(ins[0].shape, out.shape, ins[1].shape[2:], a)
            return Step(self, node, "conv2d_grad_weight", window.conv_grad_weight(name, c, dtype, bias=False),
                        [out.type])
        if name_ in ("max_pool2d", "max_pool2d_argmax", "max_pool2d_grad", "max_pool2d_grad_argmax", "avg_pool2d",
                     "avg_pool2d_grad"):
            return self._pool_step(node, name)
        if name_ == "argmax":
            return Step(self, node, "argmax", TM.argmax(name, ins[0].shape, a["axis"] % max(1, len(ins[0].shape))),
                        [out.type])
        if name_ == "uniform":
            if dtype not in (D.float32, D.float64):
                return self._host(node, f"uniform in {dtype.name}")
            return Step(self, node, "uniform", TM.uniform(name, out.type.numel, dtype), [out.type])
        if name_ == "check_index":
            k = self._check(a.get("error", "index"), a["message"])
            r = TM.check_index(name, ins[0].type.numel, a["low"], a["high"], a.get("ignore"), k)
            return PassThrough(Step(self, node, "check_index", r, [], check=(k, 0)))
        if name_ == "gather":
            ax = a["axis"]
            k = self._check("index", index_message("gather", ax, ins[0].shape[ax]))
            return Step(self, node, "gather", TM.gather(name, ins[0].shape, ins[1].shape, ax, k), [out.type],
                        check=(k, 1))
        if name_ == "scatter_add":
            ax = a["axis"]
            k = self._check("index", index_message("scatter_add", ax, out.shape[ax]))
            return Step(self, node, "scatter_add", TM.scatter_add(name, ins[0].shape, out.shape, ax, dtype, k),
                        [out.type], check=(k, 0))
        return self._host(node, f"no CUDA kernel for {name_}")

    def _pool_step(self, node: Node, name: str):
        """Pooling outside a fused conv group: window maxima (and argmax), their gradient as a gather from the
        argmax (recomputed into a temporary for max_pool2d_grad: two launches), average pooling and its gradient."""
        op, a, out = node.op.name, node.attrs, node.outputs[0]
        dtype = out.dtype if op != "max_pool2d_argmax" else node.inputs[0].dtype
        if op == "max_pool2d":
            r = window.pool_max(name, node.inputs[0].shape, out.shape[2:], a, dtype, value_arg=("out", 0))
        elif op == "max_pool2d_argmax":
            r = window.pool_max(name, node.inputs[0].shape, out.shape[2:], a, dtype, idx_arg=("out", 0),
                            idx_type="np.uint8")
        elif op == "max_pool2d_grad":  # (x, g): the argmax of each window of x, then g routed to it
            x, g = node.inputs
            first = window.pool_max(name + "_argmax", x.shape, g.shape[2:], a, dtype, idx_arg=("tmp", 0))
            second = window.pool_grad_from_argmax(name, x.shape, g.shape[2:], a, dtype, ("in", 1), ("tmp", 0),
                                              ("out", 0))
            r = render.Rendered(first.source + "\n\n" + second.source, first.launches + second.launches,
                                [(g.type.numel, D.int64)])
        elif op == "max_pool2d_grad_argmax":  # (g, idx)
            g = node.inputs[0]
            r = window.pool_grad_from_argmax(name, out.shape, g.shape[2:], a, dtype, ("in", 0), ("in", 1), ("out", 0))
        elif op == "avg_pool2d":
            r = window.avg_pool(name, node.inputs[0].shape, out.shape[2:], a, dtype)
        else:  # avg_pool2d_grad (g)
            r = window.avg_pool_grad(name, out.shape, node.inputs[0].shape[2:], a, dtype)
        return Step(self, node, op, r, [out.type])

    def _check(self, error: str, message: str) -> int:
        self.checks.append((error, message))
        return len(self.checks) - 1


def _is_gemm(n: Node, v: Value) -> bool:
    if n.body is None:
        return n.op.name == "matmul"
    return n.pattern is Pattern.LINEAR and v in n.inputs[:2] and n.inputs[2] is not v  # (not also its bias)


def _conv_hw(x_shape, w_shape, a) -> tuple:
    (sh, sw), (ph, pw), (dh, dw) = TM._pair(a["stride"]), TM._pair(a["padding"]), TM._pair(a["dilation"])
    h, w = x_shape[2:]
    kh, kw = w_shape[2:]
    return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def _label(node: Node) -> str:
    return node.body.name if node.body is not None else node.op.name


def compile_graph(graph: Graph, backend, dumper=None, timings=None) -> CudaProgram:
    t0 = time.perf_counter()
    prog = CudaProgram(graph, backend, dumper)
    if timings is not None:
        timings["render+load"] = time.perf_counter() - t0
    return prog
