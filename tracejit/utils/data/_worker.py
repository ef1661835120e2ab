"""What runs inside a DataLoader worker process: seeding, the fetch loop, and errors sent back with their traceback.

A worker receives tasks ``(tag, index, sampler_output)`` on its own queue and answers ``(tag, index, result)`` on
the shared result queue, where result is the pickled batch or an `ExceptionWrapper`. ``None`` or the loader's
`done` event ends it; so does the death of the process that started it.
"""

from __future__ import annotations

import os
import pickle
import queue
import random
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["WorkerInfo", "get_worker_info", "ExceptionWrapper", "IterableEnd"]

POLL_S = 1.0  # how often an idle worker checks that its parent is still alive


@dataclass(frozen=True)
class WorkerInfo:
    """Inside a worker: its ``id`` (0..num_workers-1), ``num_workers``, ``seed`` and its copy of ``dataset``."""

    id: int
    num_workers: int
    seed: int
    dataset: Any


_worker_info: WorkerInfo | None = None


@dataclass(frozen=True)
class IterableEnd:
    """A worker's answer when its copy of an IterableDataset is exhausted; it answers no later task of the epoch."""

    worker_id: int


def get_worker_info() -> WorkerInfo | None:
    """The `WorkerInfo` of the calling DataLoader worker process; None in the main process."""
    return _worker_info


class _KeyErrorMessage(str):
    """KeyError prints the repr of its argument; this str's repr is itself, so the traceback stays readable."""

    def __repr__(self) -> str:
        return self


class ExceptionWrapper:
    """An exception caught in a worker, with its formatted traceback, to be raised again in the main process."""

    def __init__(self, exc_info: tuple | None = None, where: str = "in background"):
        exc_info = exc_info or sys.exc_info()
        self.exc_type = exc_info[0]
        self.exc_msg = "".join(traceback.format_exception(*exc_info))
        self.where = where

    def reraise(self) -> None:
        """Raise ``exc_type("Caught <type> <where>.\\nOriginal Traceback ...")`` as PyTorch does (a RuntimeError
        when the type cannot be built from one message)."""
        msg = f"Caught {self.exc_type.__name__} {self.where}.\nOriginal {self.exc_msg}"
        if self.exc_type is KeyError:
            msg = _KeyErrorMessage(msg)
        try:
            exception = self.exc_type(msg)
        except Exception:
            raise RuntimeError(msg) from None
        raise exception


def _seed_everything(base_seed: int, worker_id: int) -> int:
    from ...random import manual_seed

    seed = base_seed + worker_id
    random.seed(seed)
    manual_seed(seed)
    np.random.seed(np.random.SeedSequence([worker_id, base_seed & 0xFFFFFFFF, base_seed >> 32]).generate_state(4))
    return seed


def _one_thread() -> None:
    # N workers on a machine of N cores: each computes on one thread, as PyTorch's workers do
    os.environ.setdefault("TRACEJIT_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # threadpoolctl missing or a BLAS it cannot drive: only a matter of speed
        pass


def _worker_loop(spec: Any, index_queue: Any, data_queue: Any, done: Any, worker_id: int, num_workers: int,
                 base_seed: int, parent_pid: int) -> None:
    """Serve fetch tasks until told to stop. `spec` is ``(fetcher, worker_init_fn)`` (the fetcher holds the
    dataset and collate_fn), pickled to bytes when the process was not forked."""
    global _worker_info
    from ...serialization import dumps_tensors

    try:
        _one_thread()
        seed = _seed_everything(base_seed, worker_id)
        init_error = None
        fetch = None
        epoch, ended = None, False
        try:
            fetch, init_fn = pickle.loads(spec) if isinstance(spec, bytes) else spec
            _worker_info = WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed, dataset=fetch.dataset)
            if init_fn is not None:
                init_fn(worker_id)
        except Exception:
            init_error = ExceptionWrapper(where=f"in DataLoader worker process {worker_id}")
        while True:
            try:
                task = index_queue.get(timeout=POLL_S)
            except queue.Empty:
                if os.getppid() != parent_pid:  # the loader's process is gone: nobody will read our results
                    break
                continue
            if task is None or done.is_set():
                break
            tag, idx, index = task
            if tag != epoch:  # a new epoch (persistent workers): an IterableDataset starts over
                epoch, ended = tag, False
                if fetch is not None:
                    fetch.reset()
            if ended:
                continue  # this epoch's stream ended here; the loader knows and skips our remaining tasks
            if init_error is not None:
                result: Any = init_error
            else:
                try:
                    result = dumps_tensors(fetch(index))
                except StopIteration:
                    result, ended = IterableEnd(worker_id), True
                except Exception:
                    result = ExceptionWrapper(where=f"in DataLoader worker process {worker_id}")
            if isinstance(result, ExceptionWrapper):
                try:
                    pickle.dumps(result.exc_type)
                except Exception:  # an exception class the main process could not import
                    result.exc_type = RuntimeError
            data_queue.put((tag, idx, result))
            del result, task, index
    except KeyboardInterrupt:
        pass  # the main process gets its own KeyboardInterrupt and stops us
    # what is still buffered for the parent is of no use to it any more: do not block the exit on it
    data_queue.cancel_join_thread()
    data_queue.close()
