"""Data parallelism with PyTorch's names: DistributedDataParallel (one process per rank, gradients averaged over
the ranks after backward) and DataParallel (one process).

    model = DistributedDataParallel(Net())       # rank 0's parameters and buffers are broadcast to every rank
    loss = F.cross_entropy(model(x), y); loss.backward()   # .grad now holds the average over the ranks

Gradients are reduced in buckets of parameters (reverse registration order, one dtype each, up to bucket_cap_mb:
25 MiB, and 1 MiB for the first-defined parameters' bucket, by default, as in PyTorch), one all-reduce per bucket.
Eagerly they are reduced once backward() has accumulated every gradient; inside a compiled step each bucket is an
all_reduce node, which the passes start as soon as the bucket's gradients are complete so that it overlaps the rest
of backward (compiler/passes/overlap_collectives.py; the dump and the report show what overlaps).
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager

import numpy as np

from .. import distributed as dist
from .. import ops as _ops
from .._tensor import cat
from ..autograd import engine, is_grad_enabled, no_grad
from ..dispatch import apply, current_tracer
from ..factories import tensor, zeros
from .module import Module

__all__ = ["DistributedDataParallel", "DataParallel"]

FIRST_BUCKET_BYTES = 1024 * 1024  # PyTorch's dist._DEFAULT_FIRST_BUCKET_BYTES
MIB = 1024 * 1024


class _Bucket:
    __slots__ = ("params", "numels", "nbytes", "dtype")

    def __init__(self, dtype):
        self.params, self.numels, self.nbytes, self.dtype = [], [], 0, dtype


def bucket_plan(params: list, cap_bytes: int, first_cap_bytes: int = FIRST_BUCKET_BYTES) -> list:
    """Parameters grouped into buckets, in the order they are reduced: PyTorch's assignment (in registration order,
    one open bucket per dtype and device, closed once it holds the cap -- `first_cap_bytes` for each dtype's first
    bucket, `cap_bytes` after), then reversed, because backward produces the last layers' gradients first."""
    done: list[_Bucket] = []
    open_: dict = {}
    closed_per_key: dict = {}
    for p in params:
        key = (p.dtype, p.device)
        b = open_.get(key)
        if b is None:
            b = open_[key] = _Bucket(p.dtype)
        b.params.append(p)
        b.numels.append(p.numel())
        b.nbytes += p.numel() * p.dtype.itemsize
        cap = first_cap_bytes if closed_per_key.get(key, 0) == 0 else cap_bytes
        if b.nbytes >= cap:
            done.append(b)
            del open_[key]
            closed_per_key[key] = closed_per_key.get(key, 0) + 1
    done += open_.values()
    first = {id(p): i for i, p in enumerate(params)}
    done.sort(key=lambda b: first[id(b.params[0])])
    return done[::-1]


class DistributedDataParallel(Module):
    """`module` replicated on every rank of the default process group; backward averages its gradients over the
    ranks (PyTorch's `torch.nn.parallel.DistributedDataParallel`).

    At construction rank 0's parameters and buffers are broadcast to every rank (and the model's shape checked to
    be the same everywhere); with `broadcast_buffers` each forward first takes rank 0's buffers (BatchNorm
    statistics). Parameters that receive no gradient on a rank contribute zeros to their bucket; they get the
    average when another rank used them, and keep `.grad` None when no rank did. `no_sync()` accumulates gradients
    locally (gradient accumulation); the backward after it reduces them. `bucket_cap_mb` is in MiB, as in PyTorch.
    `device_ids`, `output_device`, `find_unused_parameters`, `static_graph` and `gradient_as_bucket_view` are
    accepted for PyTorch's scripts and change nothing here.
    """

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0,
                 broadcast_buffers: bool = True, init_sync: bool = True, process_group=None,
                 bucket_cap_mb: float | None = None, find_unused_parameters: bool = False,
                 check_reduction: bool = False, gradient_as_bucket_view: bool = False, static_graph: bool = False,
                 **kwargs):
        super().__init__()
        g = dist._check_group(process_group)
        self.module = module
        self.dim = dim
        self.device_ids, self.output_device = device_ids, output_device
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.gradient_as_bucket_view, self.static_graph = gradient_as_bucket_view, static_graph
        self.require_backward_grad_sync = True
        self.bucket_bytes_cap = int((25 if bucket_cap_mb is None else bucket_cap_mb) * MIB)
        self.world_size = g.size
        seen: set = set()
        params = []
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        self._params = params
        self._check_same_model(g)
        # PyTorch: with the default cap the first bucket (the first-defined parameters, reduced last) is closed at
        # 1 MiB so that the last all-reduce after backward is short; a cap the user gives applies to all
        first = FIRST_BUCKET_BYTES if bucket_cap_mb is None else self.bucket_bytes_cap
        self._buckets = bucket_plan(params, self.bucket_bytes_cap, first)
        if init_sync and g.size > 1:
            self._sync_from_rank0(list(module.parameters()) + list(module.buffers()))
        self._armed = False  # forward ran and backward has not reduced yet
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in params]

    # ---- what PyTorch users call
    def forward(self, *inputs, **kwargs):
        if self.broadcast_buffers and self.world_size > 1:
            buffers = list(self.module.buffers())
            if buffers:
                self._sync_from_rank0(buffers)
        self._armed = self.require_backward_grad_sync and is_grad_enabled()
        return self.module(*inputs, **kwargs)

    @contextmanager
    def no_sync(self):
        """Inside, backward() leaves the gradients local (accumulating them); the first backward after it reduces
        the accumulated gradients."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    @property
    def bucket_sizes(self) -> list:
        """(parameters, bytes) of each gradient bucket, in the order they are reduced."""
        return [(len(b.params), b.nbytes) for b in self._buckets]

    # ---- compiled steps retrace when no_sync() changes what backward does (compiler/state.py)
    def _trace_guard(self):
        return self.require_backward_grad_sync

    def _trace_guard_change(self, old) -> str:
        return "no_sync() " + ("ended" if self.require_backward_grad_sync else "began") + \
            " (backward now " + ("reduces" if self.require_backward_grad_sync else "skips reducing") + " gradients)"

    # ---- machinery
    def _check_same_model(self, g) -> None:
        """The ranks' models must agree (else the buckets' messages would not match): compare each rank's
        parameter count, element count and a checksum of the shapes and dtypes."""
        if g.size == 1:
            return
        layout = ";".join(f"{tuple(p.shape)}:{p.dtype.name}" for p in self._params)
        mine = np.array([len(self._params), sum(p.numel() for p in self._params), zlib.crc32(layout.encode())],
                        np.int64)
        every = g.all_gather(mine.reshape(1, 3), g.size)
        for r, row in enumerate(every):
            if (row != every[0]).any():
                raise RuntimeError(f"DistributedDataParallel expects the same model on every rank, but rank 0 has "
                                   f"{every[0][0]} parameters ({every[0][1]} elements) and rank {r} has {row[0]} "
                                   f"({row[1]} elements)" + (" of other shapes or dtypes" if
                                                             (row[:2] == every[0][:2]).all() else ""))

    def _sync_from_rank0(self, tensors: list) -> None:
        """Every tensor set to rank 0's values: one broadcast per dtype (tensors flattened into one message)."""
        by_dtype: dict = {}
        for t in tensors:
            by_dtype.setdefault((t.dtype, t.device), []).append(t)
        with no_grad():
            for ts in by_dtype.values():
                flat = cat([t.detach().reshape(-1) for t in ts]) if len(ts) > 1 else ts[0].detach().reshape(-1)
                flat = apply(_ops.BROADCAST, flat, src=0)
                at = 0
                for t in ts:
                    n = t.numel()
                    t.copy_(flat[at:at + n].reshape(tuple(t.shape)))
                    at += n

    def _grad_ready(self, param) -> None:
        if self._armed:
            self._armed = False
            engine.queue_callback(self._reduce_gradients)

    def _reduce_gradients(self) -> None:
        """Average every bucket's gradients over the ranks: cat -> all_reduce(avg) -> views back into `.grad`.

        Eagerly each bucket also carries one flag per parameter (1: it has a gradient on this rank), so that, as in
        PyTorch, a parameter unused here but used on another rank gets the average too (and one unused on every rank
        keeps `.grad` None): the ranks' parameters stay equal. A compiled step's graph is the same on every rank,
        so there the ranks agree on which gradients exist without asking."""
        eager = current_tracer() is None
        with no_grad():
            for b in self._buckets:
                grads = [p.grad for p in b.params]
                device = b.params[0].device
                parts = [g.reshape(-1) if g is not None else zeros(n, dtype=b.dtype, device=device)
                         for g, n in zip(grads, b.numels)]
                if eager:
                    parts.append(tensor([0.0 if g is None else 1.0 for g in grads], dtype=b.dtype, device=device))
                flat = cat(parts) if len(parts) > 1 else parts[0]
                flat = apply(_ops.ALL_REDUCE, flat, reduce="avg")
                total = sum(b.numels)
                used = [f > 0 for f in flat[total:].tolist()] if eager else [g is not None for g in grads]
                at = 0
                for p, n, u in zip(b.params, b.numels, used):
                    if u:
                        p.grad = flat[at:at + n].reshape(tuple(p.shape))
                    at += n


class DataParallel(Module):
    """PyTorch's single-process `torch.nn.DataParallel`: on the CPU (or one device) it runs `module` itself;
    `.module` is the wrapped model and the state_dict keys carry the `module.` prefix, as in PyTorch."""

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0):
        super().__init__()
        self.module = module
        self.device_ids = list(device_ids) if device_ids is not None else None
        self.output_device = output_device
        self.dim = dim
        if self.device_ids is not None and len(self.device_ids) > 1:
            from .. import cuda

            if cuda.device_count() > 1:
                raise NotImplementedError("DataParallel over several CUDA devices is not supported yet: use "
                                          "DistributedDataParallel with one process per device")

    def forward(self, *inputs, **kwargs):
        return self.module(*inputs, **kwargs)
