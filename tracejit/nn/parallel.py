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

import warnings
import zlib
from contextlib import contextmanager

import numpy as np

from .. import devices as _devices
from .. import distributed as dist
from .. import ops as _ops
from .._tensor import Tensor, cat
from ..autograd import engine, is_grad_enabled, no_grad
from ..dispatch import apply, current_tracer
from ..factories import tensor, zeros
from .module import Module

__all__ = ["DistributedDataParallel", "DataParallel", "data_parallel", "replicate", "scatter", "scatter_kwargs",
           "gather", "parallel_apply"]

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
    """PyTorch's single-process `torch.nn.DataParallel`: each forward splits the batch over `device_ids` (all the
    accelerator's devices by default) along `dim`, runs a replica of `module` on each chunk and gathers the outputs
    on `output_device` (device_ids[0] by default). The module must live on device_ids[0]; the replicas' parameters
    are differentiable copies of it (the first replica uses the module's own), so backward accumulates every
    chunk's gradients into the module's parameters there. Buffers are copied detached: buffer updates made by the
    other replicas (BatchNorm running statistics) are lost, as in PyTorch.

    Without an accelerator (the CPU, or MPS) it runs `module` itself, and with one device it moves `module` there
    and runs it on the whole batch, as PyTorch. `.module` is the wrapped model; state_dict keys carry the
    `module.` prefix. The replicas run one after the other in this thread (PyTorch uses a thread per device).
    Inside `@tracejit.compile` only one device can take part: a compiled step is one program on one device
    (compiler/api.py), so a DataParallel over several devices refuses there, naming the devices;
    DistributedDataParallel with one process per device is the compiled form of data parallelism.

    The devices are those of the backends registered for the accelerator's type (compiler/backends): tracejit's
    CUDA backend drives one GPU (cuda:0) today, so on a machine with several GPUs `tracejit.cuda.device_count()` is
    1 and DataParallel runs the module on cuda:0; the tests split batches over fake devices registered as cuda:0
    and cuda:1 (tests/distributed/test_data_parallel.py).
    """

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0):
        super().__init__()
        acc = _devices.current_accelerator()
        if acc is None or acc.type == "mps":
            self.module = module
            self.device_ids = []
            return
        if device_ids is None:
            device_ids = list(range(_device_count(acc.type)))
        if not device_ids:
            raise RuntimeError("no available devices were found")
        if output_device is None:
            output_device = device_ids[0]
        self.dim = dim
        self.module = module
        self.device_ids = [_device_index(x) for x in device_ids]
        self.output_device = output_device if _is_cpu(output_device) else _device_index(output_device)
        self.device_type = acc.type
        self.src_device_obj = _devices.device(acc.type, self.device_ids[0])
        if len(self.device_ids) == 1:
            self.module.to(self.src_device_obj)

    def forward(self, *inputs, **kwargs):
        if not self.device_ids:
            return self.module(*inputs, **kwargs)
        src = self.src_device_obj
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            if t.device is not src:
                raise RuntimeError(f"module must have its parameters and buffers on device {src} (device_ids[0]) "
                                   f"but found one of them on device: {t.device}")
        inputs, module_kwargs = self.scatter(inputs, kwargs, self.device_ids)
        if not inputs and not module_kwargs:
            inputs, module_kwargs = ((),), ({},)
        if len(self.device_ids) == 1:
            return self.module(*inputs[0], **module_kwargs[0])
        used = self.device_ids[:len(inputs)]
        if current_tracer() is not None and len(used) > 1:
            from ..errors import user_location

            names = ", ".join(str(self._dev(i)) for i in used)
            raise RuntimeError(f"DataParallel over {len(used)} devices ({names}) cannot run inside a compiled "
                               f"function{user_location()}: a compiled step is one program on one device. Call the "
                               f"DataParallel model outside @tracejit.compile, or compile the step on one device, "
                               f"or use DistributedDataParallel with one process per device")
        replicas = self.replicate(self.module, used)
        outputs = self.parallel_apply(replicas, inputs, module_kwargs)
        return self.gather(outputs, self.output_device)

    def _dev(self, index):
        return _devices.device(self.device_type, index)

    def replicate(self, module: Module, device_ids) -> list:
        return replicate(module, [self._dev(i) for i in device_ids], not is_grad_enabled())

    def scatter(self, inputs, kwargs, device_ids):
        return scatter_kwargs(inputs, kwargs, [self._dev(i) for i in device_ids], dim=self.dim)

    def parallel_apply(self, replicas, inputs, kwargs) -> list:
        return parallel_apply(replicas, inputs, kwargs, [self._dev(i) for i in self.device_ids[:len(replicas)]])

    def gather(self, outputs, output_device):
        target = _devices.CPU if _is_cpu(output_device) else self._dev(output_device)
        return gather(outputs, target, dim=self.dim)


# ---------------------------------------------------------------- torch.nn.parallel's functions, on device objects


def _device_count(kind: str) -> int:
    """How many devices of type `kind` this process has (those of the backends registered for it)."""
    from ..compiler.backends import device_count

    return device_count(kind)


def _is_cpu(d) -> bool:
    return d == -1 or d == "cpu" or (isinstance(d, _devices.device) and d.type == "cpu")


def _device_index(d) -> int:
    """PyTorch's _get_device_index(d, optional=True): an int as it is, a device's index (0 when it has none)."""
    if isinstance(d, str):
        d = _devices.device(d)
    if isinstance(d, _devices.device):
        if d.type == "cpu":
            raise ValueError(f"Expected a non cpu device, but got: {d}")
        return 0 if d.index is None else d.index
    if isinstance(d, bool) or not isinstance(d, int):
        raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{d}")
    return d


def _as_device(d) -> _devices.device:
    if isinstance(d, _devices.device):
        return d
    if isinstance(d, str):
        return _devices.device(d)
    acc = _devices.current_accelerator()
    if acc is None:
        raise RuntimeError("Cannot access accelerator device when none is available.")
    return _devices.device(acc.type, d)


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_asdict") and hasattr(obj, "_fields")


def _scatter_tensor(t, devices: list, dim: int) -> tuple:
    """PyTorch's Scatter: `t.chunk(len(devices), dim)`, chunk i copied to devices[i] (differentiably: the
    gradients of the chunks come back to `t`). Fewer chunks than devices when the batch is small."""
    return tuple(c.to(d) for c, d in zip(t.chunk(len(devices), dim), devices))


def scatter(inputs, target_gpus, dim: int = 0):
    """Tensors split into about equal chunks along `dim`, one per device (fewer when the batch is smaller than
    the devices); tuples, lists, dicts and namedtuples of them scattered element-wise (and truncated to the
    shortest); other objects repeated for each device (torch.nn.parallel.scatter)."""
    devices = [_as_device(d) for d in target_gpus]

    def scatter_map(obj):
        if isinstance(obj, Tensor):
            return _scatter_tensor(obj, devices, dim)
        if _is_namedtuple(obj):
            return [type(obj)(*args) for args in zip(*map(scatter_map, obj))]
        if isinstance(obj, tuple) and len(obj) > 0:
            return list(zip(*map(scatter_map, obj)))
        if isinstance(obj, list) and len(obj) > 0:
            return [list(i) for i in zip(*map(scatter_map, obj))]
        if isinstance(obj, dict) and len(obj) > 0:
            return [type(obj)(i) for i in zip(*map(scatter_map, obj.items()))]
        return [obj for _ in devices]

    return scatter_map(inputs)


def scatter_kwargs(inputs: tuple, kwargs: dict | None, target_gpus, dim: int = 0) -> tuple:
    """scatter() of the positional and the keyword arguments, padded to the same count (PyTorch's, including
    its padding rule)."""
    scattered_inputs = scatter(inputs, target_gpus, dim) if inputs else []
    scattered_kwargs = scatter(kwargs, target_gpus, dim) if kwargs else []
    if len(scattered_inputs) < len(scattered_kwargs):
        scattered_inputs.extend(() for _ in range(len(scattered_kwargs) - len(scattered_inputs)))
    elif len(scattered_kwargs) < len(inputs):
        scattered_kwargs.extend({} for _ in range(len(scattered_inputs) - len(scattered_kwargs)))
    return tuple(scattered_inputs), tuple(scattered_kwargs)


def _replica_of(m: Module) -> Module:
    """PyTorch's Module._replicate_for_data_parallel: a shallow copy without registered parameters (the replica's
    are set as plain attributes), with its own buffer and child dicts."""
    r = m.__new__(type(m))
    d = dict(m.__dict__)
    d["_parameters"] = type(m._parameters)()
    d["_buffers"] = type(m._buffers)(m._buffers)
    d["_modules"] = type(m._modules)(m._modules)
    d["_is_replica"] = True
    object.__setattr__(r, "__dict__", d)
    return r


def _copies(tensors: list, devices: list, detach: bool) -> list:
    """tensors on devices[0] as they are there, copied to each other device: differentiable copies (gradients
    flow back to the originals) unless `detach`."""
    out = [list(tensors)]
    for d in devices[1:]:
        if detach:
            with no_grad():
                out.append([t.detach().to(d) for t in tensors])
        else:
            out.append([t.to(d) for t in tensors])
    return out


def replicate(network: Module, devices, detach: bool = False) -> list:
    """One replica of `network` per device (torch.nn.parallel.replicate): the first uses `network`'s own
    parameters and buffers, the others differentiable copies of the parameters (detached when `detach`: no grad
    mode) and detached copies of the buffers (differentiable for buffers that require grad)."""
    devices = [_as_device(d) for d in devices]
    if not devices:
        return []
    n = len(devices)
    params = list(network.parameters())
    param_index = {id(p): i for i, p in enumerate(params)}
    param_copies = _copies(params, devices, detach)
    buffers = list(network.buffers())
    rg = [b for b in buffers if b.requires_grad and not detach]
    not_rg = [b for b in buffers if not (b.requires_grad and not detach)]
    rg_index = {id(b): i for i, b in enumerate(rg)}
    not_rg_index = {id(b): i for i, b in enumerate(not_rg)}
    rg_copies = _copies(rg, devices, detach)
    not_rg_copies = _copies(not_rg, devices, True)

    modules = list(network.modules())
    module_index = {id(m): i for i, m in enumerate(modules)}
    copies = [[_replica_of(m) for m in modules] for _ in range(n)]
    for i, m in enumerate(modules):
        for key, child in m._modules.items():
            for j in range(n):
                copies[j][i]._modules[key] = None if child is None else copies[j][module_index[id(child)]]
        for key, p in m._parameters.items():
            for j in range(n):
                r = copies[j][i]
                if p is None:
                    r._parameters[key] = None
                else:
                    r.__dict__[key] = param_copies[j][param_index[id(p)]]  # a plain attribute: not a leaf
        for key, b in m._buffers.items():
            for j in range(n):
                r = copies[j][i]
                if b is None:
                    r._buffers[key] = None
                elif id(b) in rg_index:
                    r._buffers[key] = rg_copies[j][rg_index[id(b)]]
                else:
                    r._buffers[key] = not_rg_copies[j][not_rg_index[id(b)]]
    return [copies[j][0] for j in range(n)]


def parallel_apply(modules, inputs, kwargs_tup=None, devices=None) -> list:
    """modules[i](*inputs[i], **kwargs_tup[i]) for each i, in order (PyTorch runs them in threads, one per
    device); an error says which replica and device raised it."""
    if len(modules) != len(inputs):
        raise AssertionError(f"The number of modules {len(modules)} is not equal to the number of inputs "
                             f"{len(inputs)}")
    kwargs_tup = kwargs_tup if kwargs_tup is not None else ({},) * len(modules)
    devices = devices if devices is not None else [None] * len(modules)
    outputs = []
    for i, (m, inp, kw, d) in enumerate(zip(modules, inputs, kwargs_tup, devices)):
        if not isinstance(inp, (list, tuple)):
            inp = (inp,)
        try:
            outputs.append(m(*inp, **kw))
        except Exception as e:
            e.add_note(f"(in DataParallel replica {i}" + (f" on device {d})" if d is not None else ")"))
            raise
    return outputs


def gather(outputs, target_device, dim: int = 0):
    """The replicas' outputs on `target_device` (a device; -1 or "cpu": the CPU), tensors concatenated along
    `dim` (0-d tensors with dim 0: stacked into a vector, with PyTorch's warning), dicts, tuples, lists and
    namedtuples gathered element-wise (torch.nn.parallel.gather). Differentiable."""
    target = _devices.CPU if _is_cpu(target_device) else _as_device(target_device)

    def gather_map(outs):
        out = outs[0]
        if isinstance(out, Tensor):
            parts = list(outs)
            if dim == 0 and all(t.ndim == 0 for t in parts):
                warnings.warn("Was asked to gather along dimension 0, but all input tensors were scalars; will "
                              "instead unsqueeze and return a vector.", stacklevel=3)
                parts = [t.reshape(1) for t in parts]
            return cat([t.to(target) for t in parts], dim)
        if out is None:
            return None
        if isinstance(out, dict):
            if not all(len(out) == len(d) for d in outs):
                raise ValueError("All dicts must have the same number of keys")
            return type(out)((k, gather_map([d[k] for d in outs])) for k in out)
        if _is_namedtuple(out):
            return type(out)._make(map(gather_map, zip(*outs)))
        return type(out)(map(gather_map, zip(*outs)))

    return gather_map(outputs)


def data_parallel(module: Module, inputs, device_ids=None, output_device=None, dim: int = 0,
                  module_kwargs=None):
    """The functional form of DataParallel (torch.nn.parallel.data_parallel): one forward of `module` over
    `inputs` split across `device_ids`."""
    if not isinstance(inputs, tuple):
        inputs = (inputs,) if inputs is not None else ()
    acc = _devices.current_accelerator()
    if acc is None:
        return module(*inputs, **(module_kwargs or {}))
    if device_ids is None:
        device_ids = list(range(_device_count(acc.type)))
    if output_device is None:
        output_device = device_ids[0]
    device_ids = [_device_index(x) for x in device_ids]
    src = _devices.device(acc.type, device_ids[0])
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device is not src:
            raise RuntimeError(f"module must have its parameters and buffers on device {src} (device_ids[0]) but "
                               f"found one of them on device: {t.device}")
    devs = [_devices.device(acc.type, i) for i in device_ids]
    inputs, module_kwargs = scatter_kwargs(inputs, module_kwargs, devs, dim)
    if not inputs and not module_kwargs:
        inputs, module_kwargs = ((),), ({},)
    if len(device_ids) == 1:
        return module(*inputs[0], **module_kwargs[0])
    used = devs[:len(inputs)]
    replicas = replicate(module, used, not is_grad_enabled())
    outputs = parallel_apply(replicas, inputs, module_kwargs, used)
    return gather(outputs, output_device if _is_cpu(output_device) else _devices.device(acc.type, output_device),
                  dim)
