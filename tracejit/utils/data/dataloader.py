"""The DataLoader: batches from a dataset, in this process or in ``num_workers`` worker processes.

Both ways yield the same batches in the same order: the sampler always runs in this process (drawing from the
loader's generator, or tracejit's default one, after the per-iterator worker base seed, as PyTorch does), and
workers only fetch and collate the index lists they are sent; results are put back in order.

Worker processes start with Python's default method where that is safe. After OpenMP has run parallel kernels
in this process, a forked child that runs one is killed (DESIGN.md), and CUDA cannot be used in a forked child:
then workers start by "forkserver" (or "spawn"), and the dataset, collate_fn and worker_init_fn travel to them by
pickle.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import pickle
import queue
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ...dispatch import _from_array
from ...random import Generator, default_generator, randint
from ...serialization import dumps_tensors
from ._worker import ExceptionWrapper, IterableEnd, _worker_loop
from .collate import default_collate, default_convert
from .dataset import Dataset, IterableDataset, TensorDataset
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler

__all__ = ["DataLoader"]

_POLL_S = 0.2  # how often a waiting loader checks that its workers are alive
_JOIN_S = 5.0  # how long shutdown waits for a worker before terminating it
_tags = itertools.count(1)


class _Fetcher:
    """Turns what the sampler yields into a batch: a list of indices (auto-collation) or a single index. For an
    IterableDataset the sampler yields placeholders and the batch is the next ones of the dataset's iterator
    (StopIteration when it is exhausted, or when drop_last leaves only an incomplete batch)."""

    def __init__(self, dataset: Dataset, auto_collation: bool, collate_fn: Callable, drop_last: bool = False):
        self.dataset = dataset
        self.auto_collation = auto_collation
        self.collate_fn = collate_fn
        self.drop_last = drop_last
        self.iterable = isinstance(dataset, IterableDataset)
        self._it: Iterator[Any] | None = None

    def reset(self) -> None:
        """Start the dataset's iteration over (a new epoch)."""
        self._it = None

    def _next_of_stream(self, index: Any) -> Any:
        if self._it is None:
            self._it = iter(self.dataset)
        if not self.auto_collation:
            return self.collate_fn(next(self._it))
        batch = list(itertools.islice(self._it, len(index)))
        if not batch or (self.drop_last and len(batch) < len(index)):
            raise StopIteration
        return self.collate_fn(batch)

    def __call__(self, index: Any) -> Any:
        ds = self.dataset
        if self.iterable:
            return self._next_of_stream(index)
        if not self.auto_collation:
            return self.collate_fn(ds[index])
        indices = list(index)
        if type(ds) is TensorDataset and self.collate_fn is default_collate:
            # one gather per tensor gives exactly the stacked rows, without a Python loop per sample
            idx = _from_array(np.asarray(indices, dtype=np.int64))
            return [t[idx] for t in ds.tensors]
        getitems = getattr(ds, "__getitems__", None)
        samples = getitems(indices) if getitems is not None else [ds[i] for i in indices]
        return self.collate_fn(samples)


# ----------------------------------------------------------------------------------------------- start methods


def _fork_hazard() -> str | None:
    """Why a forked worker could die or hang, or None when forking this process is safe."""
    numba = sys.modules.get("numba")
    if numba is not None:
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run
            layer = None
        if layer == "omp":
            return "OpenMP has run parallel kernels in this process, and a forked child that runs one is killed"
    if "numba.cuda" in sys.modules:
        return "CUDA may be initialized in this process, and a forked child cannot use it"
    return None


def _resolve_context(ctx: Any) -> mp.context.BaseContext:
    if ctx is None:
        method = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]
        if method == "fork" and _fork_hazard() is not None:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
    elif ctx.get_start_method() == "fork" and (why := _fork_hazard()) is not None:
        warnings.warn(f"DataLoader: workers are forked as asked, but {why}; multiprocessing_context='forkserver' "
                      f"avoids that", RuntimeWarning, stacklevel=4)
    if ctx.get_start_method() == "forkserver":
        # the server imports tracejit once; each worker forked from it then starts in milliseconds
        ctx.set_forkserver_preload(["__main__", "tracejit.utils.data"])
    return ctx


# ----------------------------------------------------------------------------------------------- workers


class _WorkerPool:
    """`num_workers` processes with one task queue each and one shared result queue."""

    def __init__(self, loader: DataLoader, base_seed: int):
        ctx = _resolve_context(loader.multiprocessing_context)
        self.method = ctx.get_start_method()
        spec: Any = (loader._fetcher(), loader.worker_init_fn)
        if self.method != "fork":
            try:
                spec = dumps_tensors(spec)
            except Exception as e:
                raise RuntimeError(
                    f"DataLoader(num_workers={loader.num_workers}) starts its workers by {self.method!r}, which "
                    f"sends them the dataset, collate_fn and worker_init_fn by pickle, and pickling failed: "
                    f"{type(e).__name__}: {e}. Define them at module level (not as lambdas or local functions), "
                    f"or pass multiprocessing_context='fork' where forking is safe") from e
        self.data_queue = ctx.Queue()
        self.done = ctx.Event()  # set at shutdown: workers drop the tasks still queued instead of loading them
        self.index_queues = []
        self.workers = []
        self.shut = False
        try:
            for worker_id in range(loader.num_workers):
                index_queue = ctx.Queue()
                index_queue.cancel_join_thread()  # never block this process's exit on tasks a dead worker left
                w = ctx.Process(target=_worker_loop, args=(spec, index_queue, self.data_queue, self.done, worker_id,
                                                           loader.num_workers, base_seed, os.getpid()),
                                daemon=True, name=f"tracejit-data-worker-{worker_id}")
                w.start()
                self.index_queues.append(index_queue)
                self.workers.append(w)
        except BaseException:
            self.shutdown()
            raise

    def check_alive(self) -> None:
        dead = [w for w in self.workers if not w.is_alive()]
        if dead and not self.shut:
            pids = ", ".join(str(w.pid) for w in dead)
            codes = ", ".join(str(w.exitcode) for w in dead)
            self.shutdown()
            raise RuntimeError(f"DataLoader worker (pid(s) {pids}) exited unexpectedly (exit code(s) {codes}; a "
                               f"negative code is the signal that killed it)")

    def shutdown(self) -> None:
        if self.shut:
            return
        self.shut = True
        self.done.set()
        for q in self.index_queues:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + _JOIN_S
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                w.terminate()
                w.join(1.0)
        for q in [*self.index_queues, self.data_queue]:
            q.cancel_join_thread()
            q.close()


class _MultiProcessingIter:
    """One epoch over a worker pool: keeps `prefetch_factor` tasks per worker in flight, yields in order."""

    def __init__(self, loader: DataLoader, pool: _WorkerPool):
        self.pool = pool
        self.persistent = loader.persistent_workers
        self.timeout = loader.timeout
        self.in_order = loader.in_order
        self.tag = next(_tags)  # results of an abandoned earlier epoch (persistent workers) carry another tag
        self.sampler_iter = iter(loader._index_sampler)
        self.loader = loader
        self.worker_cycle = itertools.cycle(range(len(pool.workers)))
        self.active = [True] * len(pool.workers)  # an IterableDataset's worker whose copy ran out gets no more tasks
        self.task_worker: dict[int, int] = {}
        self.send_idx = 0
        self.rcvd_idx = 0
        self.pending: dict[int, Any] = {}  # send index -> result that came early (None: not yet here)
        for _ in range(loader.prefetch_factor * len(pool.workers)):
            if not self._put_task():
                break

    def _put_task(self) -> bool:
        if not any(self.active):
            return False
        try:
            index = next(self.sampler_iter)
        except StopIteration:
            return False
        worker = next(self.worker_cycle)
        while not self.active[worker]:
            worker = next(self.worker_cycle)
        self.pool.index_queues[worker].put((self.tag, self.send_idx, index))
        self.pending[self.send_idx] = None
        self.task_worker[self.send_idx] = worker
        self.send_idx += 1
        return True

    def _worker_ended(self, worker: int, at: int) -> None:
        """An IterableDataset worker's copy ran out at task `at`: it answers none of its later tasks either (as
        PyTorch's); its earlier tasks' batches are real."""
        self.active[worker] = False
        for idx in [i for i, w in self.task_worker.items() if w == worker and i >= at and i in self.pending]:
            del self.pending[idx]
            del self.task_worker[idx]
        self._advance()
        while len(self.pending) < self.loader.prefetch_factor * sum(self.active) and self._put_task():
            pass

    def _advance(self) -> None:
        while self.rcvd_idx < self.send_idx and self.rcvd_idx not in self.pending:
            self.rcvd_idx += 1  # already delivered out of order, or never to come (an ended worker's)

    def __iter__(self) -> _MultiProcessingIter:
        return self

    def __next__(self) -> Any:
        if self.pool.shut:
            raise StopIteration
        while True:
            if not self.pending:
                if not self.persistent:
                    self.pool.shutdown()
                raise StopIteration
            if self.in_order and self.pending.get(self.rcvd_idx) is not None:
                return self._deliver(self.rcvd_idx)
            tag, idx, result = self._get()
            if tag != self.tag or idx not in self.pending:
                continue  # left over from an earlier epoch
            if isinstance(result, IterableEnd):
                self._worker_ended(result.worker_id, idx)
                continue
            self.pending[idx] = result
            if not self.in_order or idx == self.rcvd_idx:
                return self._deliver(idx)

    def _deliver(self, idx: int) -> Any:
        result = self.pending.pop(idx)
        self.task_worker.pop(idx, None)
        if idx == self.rcvd_idx:
            self.rcvd_idx += 1
            self._advance()
        self._put_task()
        if isinstance(result, ExceptionWrapper):
            result.reraise()
        return pickle.loads(result)

    def _get(self) -> tuple[int, int, Any]:
        start = time.monotonic()
        while True:
            wait = _POLL_S if self.timeout <= 0 else min(_POLL_S, self.timeout - (time.monotonic() - start))
            try:
                return self.pool.data_queue.get(timeout=max(wait, 0.0))
            except queue.Empty:
                self.pool.check_alive()
                if self.timeout > 0 and time.monotonic() - start >= self.timeout:
                    raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds") from None

    def __len__(self) -> int:
        return len(self.loader)


def _single_process_iter(loader: DataLoader) -> Iterator[Any]:
    fetch = loader._fetcher()
    for index in loader._index_sampler:
        try:
            batch = fetch(index)
        except StopIteration:  # an IterableDataset ran out
            return
        yield batch


class _InfiniteConstantSampler(Sampler):
    """The sampler of an IterableDataset: placeholders, forever (the dataset's iterator decides when to stop)."""

    def __iter__(self) -> Iterator[None]:
        while True:
            yield None


# ----------------------------------------------------------------------------------------------- DataLoader


def _base_seed(generator: Generator | None) -> int:
    """The per-iterator seed workers derive theirs from (worker k: base + k); drawn from the loader's generator
    in both modes, so that the sampler's draws come after it and the order is the same with or without workers."""
    hi, lo = randint(0, 2**31, (2,), generator=generator or default_generator).tolist()
    return (hi << 31) | lo


class DataLoader:
    """Iterate over a dataset in (shuffled) batches, optionally loaded by worker processes.

    >>> loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, num_workers=2)
    >>> for xb, yb in loader: ...

    With ``num_workers > 0`` each batch is fetched and collated in one of N processes (seeded per worker:
    ``tracejit``, ``random`` and ``numpy.random`` get base_seed + worker id; see ``get_worker_info``); the batches
    and their order are those of ``num_workers=0``. An exception in a worker is raised here, with the worker's
    traceback in its message. ``persistent_workers`` keeps the processes between epochs, ``prefetch_factor``
    batches per worker are loaded ahead, ``timeout`` bounds the wait for one batch. ``pin_memory`` is accepted
    and does nothing (there is no accelerator to pin memory for).
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Sampler | Iterable[int] | None = None,
                 batch_sampler: Sampler | Iterable[list[int]] | None = None, num_workers: int = 0,
                 collate_fn: Callable[[list[Any]], Any] | None = None, pin_memory: bool = False,
                 drop_last: bool = False, timeout: float = 0, worker_init_fn: Callable[[int], None] | None = None,
                 multiprocessing_context: str | mp.context.BaseContext | None = None,
                 generator: Generator | None = None, *, prefetch_factor: int | None = None,
                 persistent_workers: bool = False, pin_memory_device: str = "", in_order: bool = True):
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to disable "
                             "multiprocessing.")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("prefetch_factor option could only be specified in multiprocessing.let num_workers > 0 "
                             "to enable multiprocessing, otherwise set prefetch_factor to None.")
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        elif prefetch_factor is not None and prefetch_factor < 0:
            raise ValueError("prefetch_factor option should be non-negative")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")
        if multiprocessing_context is not None:
            if num_workers == 0:
                raise ValueError(f"multiprocessing_context can only be used with multi-process loading "
                                 f"(num_workers > 0), but got num_workers={num_workers}")
            if isinstance(multiprocessing_context, str):
                methods = mp.get_all_start_methods()
                if multiprocessing_context not in methods:
                    raise ValueError(f"multiprocessing_context option should specify a valid start method in "
                                     f"{methods!r}, but got multiprocessing_context={multiprocessing_context!r}")
                multiprocessing_context = mp.get_context(multiprocessing_context)
            if not isinstance(multiprocessing_context, mp.context.BaseContext):
                raise TypeError(f"multiprocessing_context option should be a valid context object or a string "
                                f"specifying the start method, but got "
                                f"multiprocessing_context={multiprocessing_context}")
        if isinstance(dataset, IterableDataset):
            if shuffle not in (None, False):
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified shuffle option, but got "
                                 f"shuffle={shuffle}")
            if sampler is not None:
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified sampler option, but got "
                                 f"sampler={sampler}")
            if batch_sampler is not None:
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified batch_sampler option, but "
                                 f"got batch_sampler={batch_sampler}")
            sampler = _InfiniteConstantSampler()
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, "
                                 "sampler, and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError("batch_size=None option disables auto-batching and is mutually exclusive with "
                             "drop_last")
        if sampler is None:
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.generator = generator
        self.num_workers = num_workers
        self.collate_fn = collate_fn or (default_collate if batch_sampler is not None else default_convert)
        self.pin_memory = pin_memory
        self.pin_memory_device = pin_memory_device
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = persistent_workers
        self.in_order = in_order
        self._pool: _WorkerPool | None = None  # the persistent workers, once started

    @property
    def _index_sampler(self) -> Iterable[Any]:
        return self.batch_sampler if self.batch_sampler is not None else self.sampler

    def _fetcher(self) -> _Fetcher:
        return _Fetcher(self.dataset, self.batch_sampler is not None, self.collate_fn, self.drop_last)

    def __iter__(self) -> Iterator[Any]:
        if self.num_workers == 0:
            _base_seed(self.generator)  # drawn (and unused) as with workers, so both give the same order
            return _single_process_iter(self)
        if self.persistent_workers:
            if self._pool is None or self._pool.shut:
                self._pool = _WorkerPool(self, _base_seed(self.generator))
                weakref.finalize(self, self._pool.shutdown)
            return _MultiProcessingIter(self, self._pool)
        pool = _WorkerPool(self, _base_seed(self.generator))
        it = _MultiProcessingIter(self, pool)
        weakref.finalize(it, pool.shutdown)  # an epoch left unfinished still stops its workers
        return it

    def __len__(self) -> int:
        if isinstance(self.dataset, IterableDataset):  # the dataset's own length, in batches (TypeError if none)
            n = len(self.dataset)
            if self.batch_size is not None:
                n = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
            return n
        return len(self._index_sampler)
