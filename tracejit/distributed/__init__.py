"""Data-parallel training across processes and machines, with PyTorch's names, on MPI (mpi4py).

    import tracejit.distributed as dist
    dist.init_process_group("mpi")              # rank and world size from the MPI launcher
    t = tracejit.ones(3) * dist.get_rank()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)    # in place on every rank; inside @compile an IR node

Launch with ``mpiexec -n 2 python -m mpi4py train.py`` (``python -m mpi4py`` aborts the whole job when one rank
raises; tracejit also aborts it on an uncaught exception once a group of several ranks exists). Collectives work
eagerly on tensors and trace into compiled steps as collective nodes (`all_reduce`, ...) that the passes keep in
order and the backend runs between kernels. A collective whose peers never arrive raises DistTimeoutError after
the group's timeout (init_process_group(timeout=...), or TRACEJIT_DIST_TIMEOUT seconds; default 30 minutes),
naming the op and the missing ranks. Tensors on another device are staged through host memory (the MPI is not
assumed to be CUDA-aware).
"""

from __future__ import annotations

import datetime
import enum
import importlib.util
import os

from .. import ops as _ops
from ..autograd import no_grad
from ..dispatch import apply
from . import group as _group
from .group import DistBackendError, DistError, DistTimeoutError, ProcessGroup

__all__ = ["init_process_group", "destroy_process_group", "is_initialized", "is_available", "is_mpi_available",
           "get_rank", "get_world_size", "get_backend", "ReduceOp", "all_reduce", "broadcast", "all_gather",
           "all_gather_into_tensor", "barrier", "save", "Work", "DistError", "DistBackendError", "DistTimeoutError",
           "ProcessGroup", "GroupMember"]

_BACKENDS = ("mpi", "gloo", "nccl")  # gloo and nccl scripts run unchanged: the collectives go through MPI


class ReduceOp(enum.Enum):
    """How all_reduce combines the ranks' tensors (bool tensors: SUM and MAX are a logical or, MIN and PRODUCT a
    logical and; AVG needs a floating-point tensor)."""

    SUM = "sum"
    AVG = "avg"
    MAX = "max"
    MIN = "min"
    PRODUCT = "product"


class GroupMember:
    WORLD = None  # the default group (the only one: new_group is not supported)


class Work:
    """What an `async_op=True` collective returns. tracejit's eager collectives complete before returning, so
    `wait()` returns at once (inside compiled steps the passes overlap all-reduces with backward instead)."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True


def is_available() -> bool:
    """Whether mpi4py is installed (the `distributed` extra: `pip install 'tracejit[distributed]'`)."""
    return importlib.util.find_spec("mpi4py") is not None


is_mpi_available = is_available


def _seconds(timeout) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        return timeout.total_seconds()
    return float(timeout)


def init_process_group(backend: str | None = None, init_method: str | None = None, timeout=None,
                       world_size: int = -1, rank: int = -1, store=None, group_name: str = "", pg_options=None,
                       device_id=None) -> None:
    """Join the job's default process group: every rank of the MPI job this process was launched in
    (`mpiexec -n N python -m mpi4py script.py`; a single process without a launcher is a world of one).

    `backend`: "mpi" (also accepted: "gloo" and "nccl", which run on MPI here). `timeout` (a timedelta or seconds)
    bounds each collective's wait for the other ranks. `world_size` and `rank`, when given, must agree with the
    launcher's."""
    if _group.is_initialized():
        raise RuntimeError("trying to initialize the default process group twice!")
    name = (backend or "mpi").lower().split(":")[0]
    if name not in _BACKENDS:
        raise ValueError(f"init_process_group: unknown backend {backend!r}; tracejit runs collectives on MPI "
                         f"(backend 'mpi'; 'gloo' and 'nccl' are accepted and run on MPI)")
    limit = _seconds(timeout)
    g = _group.init_mpi(_group.default_timeout() if limit is None else limit)
    env_size = os.environ.get("WORLD_SIZE")
    launched = [("world_size", world_size, g.size), ("rank", rank, g.rank)]
    if env_size and world_size in (-1, None) and int(env_size) != g.size:
        launched.append(("WORLD_SIZE (environment)", int(env_size), g.size))
    for what, asked, actual in launched:
        if asked not in (-1, None) and int(asked) != actual:
            _group.set_default(None)
            raise RuntimeError(f"init_process_group: {what}={asked} but the MPI launcher started this process as "
                               f"rank {g.rank} of {g.size}; tracejit takes ranks from MPI: launch with "
                               f"`mpiexec -n N python -m mpi4py script.py` (not torchrun)")


def destroy_process_group(group=None) -> None:
    """Leave the default process group (MPI itself is finalized when the process exits)."""
    _check_group(group)
    _group.set_default(None)


def is_initialized() -> bool:
    return _group.is_initialized()


def _check_group(group) -> _group.ProcessGroup:
    if group is not None and group is not _group._default:
        raise ValueError("tracejit.distributed supports only the default process group (group=None)")
    return _group.current()


def get_rank(group=None) -> int:
    return _check_group(group).rank


def get_world_size(group=None) -> int:
    return _check_group(group).size


def get_backend(group=None) -> str:
    return _check_group(group).backend


def _reduce_name(op) -> str:
    if isinstance(op, ReduceOp):
        return op.value
    if isinstance(op, str) and op.lower() in _ops.REDUCE_OPS:
        return op.lower()
    raise ValueError(f"all_reduce: op must be a tracejit.distributed.ReduceOp (SUM, AVG, MAX, MIN, PRODUCT), got "
                     f"{op!r}")


def _done(async_op):
    return Work() if async_op else None


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce `tensor` over all ranks, in place: afterwards every rank holds the same result.

    >>> t = tracejit.tensor([1.0, 2.0]) * (dist.get_rank() + 1)
    >>> dist.all_reduce(t)          # world of 2: tensor([3., 6.]) on both ranks
    """
    _check_group(group)
    reduce = _reduce_name(op)
    with no_grad():
        tensor._inplace(lambda s: apply(_ops.ALL_REDUCE, s, reduce=reduce), "all_reduce")
    return _done(async_op)


def broadcast(tensor, src: int | None = None, group=None, async_op: bool = False, group_src: int | None = None):
    """Rank `src`'s `tensor` copied into `tensor` on every rank, in place."""
    g = _check_group(group)
    src = group_src if src is None else src
    if src is None:
        raise ValueError("broadcast: give src, the rank whose tensor is sent")
    g._check_rank("broadcast", int(src), "src")
    with no_grad():
        tensor._inplace(lambda s: apply(_ops.BROADCAST, s, src=int(src)), "broadcast")
    return _done(async_op)


def _gathered(tensor, g):
    """[world, *tensor.shape]: every rank's tensor, in rank order."""
    return apply(_ops.ALL_GATHER, tensor.reshape((1,) + tuple(tensor.shape)), world_size=g.size)


def all_gather(tensor_list: list, tensor, group=None, async_op: bool = False):
    """Fill `tensor_list[r]` (one tensor per rank, of `tensor`'s shape) with rank r's `tensor`, in place."""
    g = _check_group(group)
    if len(tensor_list) != g.size:
        raise ValueError(f"all_gather: tensor_list holds {len(tensor_list)} tensors for a group of {g.size} ranks")
    with no_grad():
        out = _gathered(tensor, g)
        for r, t in enumerate(tensor_list):
            if tuple(t.shape) != tuple(tensor.shape):
                raise ValueError(f"all_gather: tensor_list[{r}] has shape {list(t.shape)}, the input "
                                 f"{list(tensor.shape)}")
            t.copy_(out[r])
    return _done(async_op)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op: bool = False):
    """Every rank's `input_tensor` into `output_tensor`, in rank order: concatenated along dimension 0
    ([world * n, ...]) or stacked ([world, n, ...]), whichever shape `output_tensor` has."""
    g = _check_group(group)
    shape = tuple(input_tensor.shape)
    stacked = (g.size,) + shape
    concat = ((g.size * shape[0],) + shape[1:]) if shape else (g.size,)
    if tuple(output_tensor.shape) not in (stacked, concat):
        raise ValueError(f"all_gather_into_tensor: output has shape {list(output_tensor.shape)}; for an input of "
                         f"shape {list(shape)} and {g.size} ranks it must be {list(concat)} or {list(stacked)}")
    with no_grad():
        output_tensor.copy_(_gathered(input_tensor, g).reshape(tuple(output_tensor.shape)))
    return _done(async_op)


def barrier(group=None, async_op: bool = False, device_ids=None):
    """Return once every rank has called barrier."""
    _check_group(group)
    with no_grad():
        apply(_ops.BARRIER)
    return _done(async_op)


def save(obj, f, src: int = 0) -> None:
    """A checkpoint written by rank `src` only (atomically: `tracejit.save` writes a temporary file and renames it),
    while the other ranks wait at a barrier; every rank returns once the file is complete.

    >>> dist.save(model.module.state_dict(), "ckpt.safetensors")
    """
    from ..serialization import save as _save

    g = _check_group(None)
    g._check_rank("save", src, "src")
    if g.rank == src:
        _save(obj, f)
    barrier()
