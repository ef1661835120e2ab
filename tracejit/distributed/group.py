"""Process groups: who the ranks of a job are and how arrays travel between them (MPI, through mpi4py).

Works on NumPy arrays only -- the collective ops' `ref`s (tracejit/ops.py) and the tensor functions of
tracejit.distributed call it -- and imports no tensor code. Every collective is started non-blocking and completed
by polling: a collective whose peers never arrive fails after the group's timeout with an error naming the op and
the ranks that did not come (found by asking them on a private communicator), never a hang. `start_all_reduce` /
`wait` let compiled steps run kernels while a gradient bucket is in flight (passes/overlap_collectives.py).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import user_location

NOT_INITIALIZED = "Default process group has not been initialized, please make sure to call init_process_group."
DEFAULT_TIMEOUT_S = 1800.0  # PyTorch's default for CPU process groups (30 minutes)
TIMEOUT_ENV = "TRACEJIT_DIST_TIMEOUT"  # seconds; init_process_group(timeout=...) wins
_MPI_OP = {"sum": "SUM", "avg": "SUM", "max": "MAX", "min": "MIN", "product": "PROD"}
_BOOL_OP = {"sum": "LOR", "max": "LOR", "min": "LAND", "product": "LAND"}  # MPI defines only logical ops on bool
_QUERY, _REPLY = 1, 2  # tags on the diagnostic communicator
_SPIN_S = 0.05  # poll without sleeping this long (a 25 MB all-reduce takes ~30 ms here), then sleep between polls


class DistError(RuntimeError):
    """An error of tracejit.distributed (PyTorch: torch.distributed.DistError)."""

    __module__ = "tracejit.distributed"


class DistBackendError(DistError):
    """The communication backend (MPI) failed."""

    __module__ = "tracejit.distributed"


class DistTimeoutError(DistBackendError):
    """A collective did not complete within the process group's timeout (its message names the ranks missing)."""

    __module__ = "tracejit.distributed"


def _ranks(rs: list) -> str:
    return f"rank {rs[0]}" if len(rs) == 1 else "ranks " + ", ".join(map(str, rs))


@dataclass
class Stats:
    """What this rank's collectives cost since the last reset (the data-parallel benchmark reads it)."""

    collectives: int = 0
    bytes: int = 0  # payload of the all-reduces started
    start_s: float = 0.0  # inside the call that starts a collective
    wait_s: float = 0.0  # blocked until one completes: the communication other work did not hide
    window_s: float = 0.0  # between starting a split all-reduce and waiting for it: other work ran meanwhile
    split: int = 0  # all-reduces started early and waited for later (all_reduce_start / all_reduce_wait)


@dataclass
class _Pending:
    req: object
    send: np.ndarray  # kept alive until the request completes
    recv: np.ndarray
    reduce: str
    what: str
    started: float


def describe_array(x: np.ndarray) -> str:
    return f"{x.dtype.name}[{', '.join(str(s) for s in x.shape)}]"


class ProcessGroup:
    """The ranks of a communicator and the collectives over them, on arrays. Each collective returns a new array
    (its inputs are never written). `timeout` (seconds) bounds how long a collective waits for the others."""

    backend = "mpi"

    def __init__(self, comm=None, timeout: float = DEFAULT_TIMEOUT_S):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.timeout = float(timeout)
        self.seq = 0  # collectives started on this rank: every rank numbers them alike
        self.stats = Stats()
        self._inflight: dict[int, _Pending] = {}
        self._waiting: tuple | None = None  # (seq, what) while blocked in a collective: the answer to queries
        self._diag = comm.Dup() if comm is not None and self.size > 1 else None
        self._replies: list = []  # isend requests of answers to queries (kept alive until sent)

    # ---- the collectives
    def all_reduce(self, x: np.ndarray, reduce: str) -> np.ndarray:
        return self.wait(self.start_all_reduce(x, reduce))

    def start_all_reduce(self, x: np.ndarray, reduce: str) -> np.ndarray:
        """Start reducing `x` over the ranks; returns the array the result lands in, valid after `wait(it)`."""
        if x.dtype == np.float16:  # no MPI type: reduce in float32 (blocking) and round once
            return self.all_reduce(x.astype(np.float32), reduce).astype(np.float16)
        # MPI reads `send` until the wait: a view (of a parameter the optimizer may update in place meanwhile, of a
        # buffer the runtime may reuse) is copied first; an array of its own stays read by the wait's node
        send = x if x.flags.c_contiguous and x.base is None else np.array(x, order="C")
        recv = np.empty_like(send)
        if self.size == 1:
            recv[...] = send
            return recv
        self.seq += 1
        what = f"all_reduce #{self.seq} ({describe_array(x)}, {reduce})"
        op = self._op(reduce, x.dtype)
        t0 = time.perf_counter()
        req = self._call(what, lambda: self.comm.Iallreduce(send, recv, op))
        t1 = time.perf_counter()
        st = self.stats
        st.collectives += 1
        st.bytes += recv.nbytes
        st.start_s += t1 - t0
        self._inflight[id(recv)] = _Pending(req, send, recv, reduce, what, t1)
        return recv

    def wait(self, buf: np.ndarray) -> np.ndarray:
        """`buf` once the all-reduce that `start_all_reduce` returned it for is complete (at once otherwise)."""
        p = self._inflight.pop(id(buf), None)
        if p is None:
            # a copy of the handle: a device backend staged the start's result through its own memory (and back),
            # as it stages every node without a kernel of its own. The waits come in the order of their starts
            # (overlap_collectives keeps both orders), so it is the oldest all-reduce in flight of its shape and dtype
            same = (k for k, q in self._inflight.items() if q.recv.shape == buf.shape and q.recv.dtype == buf.dtype)
            key = next(same, None)
            if key is None:  # completed already (a world of one, float16)
                return buf
            p = self._inflight.pop(key)
            buf = p.recv
        t0 = time.perf_counter()
        self._complete(p.req, p.what)
        t1 = time.perf_counter()
        st = self.stats
        st.wait_s += t1 - t0
        window = t0 - p.started
        if window > 2e-5:  # more than the few microseconds between two steps: split, other work ran
            st.window_s += window
            st.split += 1
        if p.reduce == "avg":
            np.divide(buf, buf.dtype.type(self.size), out=buf)
        return buf

    def broadcast(self, x: np.ndarray, src: int) -> np.ndarray:
        self._check_rank("broadcast", src, "src")
        buf = np.array(x, order="C", copy=True) if self.rank == src else np.empty(x.shape, x.dtype)
        if self.size > 1:
            self._blocking("broadcast", f"{describe_array(x)} from rank {src}",
                           lambda: self.comm.Ibcast(self._typed(buf), root=src))
        return buf

    def all_gather(self, x: np.ndarray, world_size: int) -> np.ndarray:
        if world_size != self.size:
            raise DistError(f"all_gather: traced for a group of {world_size} ranks, running in one of {self.size}")
        send = np.ascontiguousarray(x)
        recv = np.empty((self.size * x.shape[0],) + x.shape[1:], x.dtype)
        if self.size == 1:
            recv[...] = send
        else:
            self._blocking("all_gather", describe_array(x),
                           lambda: self.comm.Iallgather(self._typed(send), self._typed(recv)))
        return recv

    def barrier(self) -> np.ndarray:
        if self.size > 1:
            self._blocking("barrier", "", lambda: self.comm.Ibarrier())
        return np.array(True)

    def stats_reset(self) -> Stats:
        """The stats so far, and start counting afresh."""
        st, self.stats = self.stats, Stats()
        return st

    # ---- MPI details
    def _op(self, reduce, dtype):
        from mpi4py import MPI

        name = _BOOL_OP[reduce] if dtype == np.bool_ else _MPI_OP[reduce]
        return getattr(MPI, name)

    @staticmethod
    def _typed(a: np.ndarray):
        if a.dtype == np.float16:  # MPI has no half type: move the bytes (broadcast and gather do not compute)
            return a.view(np.uint8)
        return a

    def _check_rank(self, what, r, name):
        if not 0 <= r < self.size:
            raise DistError(f"{what}: {name} {r} is not a rank of this group (ranks 0..{self.size - 1})")

    def _call(self, what, start):
        try:
            return start()
        except Exception as e:  # mpi4py.MPI.Exception: name the collective
            raise DistBackendError(f"{what} failed on rank {self.rank} of {self.size}: {e}") from e

    def _blocking(self, name, detail, start) -> None:
        self.seq += 1
        what = f"{name} #{self.seq}" + (f" ({detail})" if detail else "")
        t0 = time.perf_counter()
        req = self._call(what, start)
        self._complete(req, what)
        self.stats.collectives += 1
        self.stats.wait_s += time.perf_counter() - t0

    def _complete(self, req, what: str) -> None:
        """Poll `req` until it completes; past the timeout, find out which ranks never came and raise."""
        if req.Test():
            return
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        self._waiting = (self.seq, what)
        spins, next_serve = 0, t0 + 0.1
        try:
            while not req.Test():
                spins += 1
                if spins & 31:
                    continue
                now = time.monotonic()
                if now >= deadline:
                    raise DistTimeoutError(self._timeout_message(what, now - t0))
                if now - t0 < _SPIN_S:
                    os.sched_yield()  # more ranks than cores: let the one we wait for run
                else:
                    time.sleep(0.0005 if now - t0 < 1.0 else 0.002)
                if now >= next_serve:
                    self._serve_queries()
                    next_serve = now + 0.05
        finally:
            self._waiting = None

    def _serve_queries(self) -> None:
        """Answer other ranks that timed out and ask where this rank is: (collective number, what)."""
        if self._diag is None:
            return
        from mpi4py import MPI

        st = MPI.Status()
        while self._diag.Iprobe(source=MPI.ANY_SOURCE, tag=_QUERY, status=st):
            self._diag.recv(source=st.Get_source(), tag=_QUERY)
            self._replies.append(self._diag.isend(self._waiting, dest=st.Get_source(), tag=_REPLY))
        self._replies = [r for r in self._replies if not r.Test()]

    def _timeout_message(self, what: str, waited: float) -> str:
        seq = self.seq if self._waiting is None else self._waiting[0]
        where = {}
        if self._diag is not None:
            peers = [r for r in range(self.size) if r != self.rank]
            sends = [self._diag.isend(seq, dest=r, tag=_QUERY) for r in peers]
            recvs = {r: self._diag.irecv(source=r, tag=_REPLY) for r in peers}
            end = time.monotonic() + min(3.0, max(0.5, self.timeout))
            while recvs and time.monotonic() < end:
                for r, q in list(recvs.items()):
                    done, answer = q.test()
                    if done:
                        where[r] = answer
                        del recvs[r]
                self._serve_queries()
                time.sleep(0.001)
            del sends  # unanswered queries die with the job
        same = sorted(r for r, a in where.items() if a is not None and a[0] == seq)
        elsewhere = {r: a for r, a in where.items() if a is not None and a[0] != seq}
        missing = sorted(r for r in range(self.size) if r != self.rank and r not in same and r not in elsewhere)
        parts = []
        if missing:
            parts.append(f"{_ranks(missing)} never arrived (not waiting in any collective: still computing, stuck "
                         f"or dead)")
        for r, (_, w) in sorted(elsewhere.items()):
            parts.append(f"rank {r} waits in {w} instead")
        if same:
            parts.append(f"{_ranks(same)} wait{'' if len(same) > 1 else 's'} in it too")
        return (f"{what} timed out on rank {self.rank} of {self.size} after {waited:.1f} s (at {user_location()}): "
                + "; ".join(parts) + f". The limit is init_process_group(timeout=...) or {TIMEOUT_ENV} (seconds)")

    def close(self) -> None:
        if self._diag is not None:
            self._diag.Free()
            self._diag = None


# ---------------------------------------------------------------------------------------------- the default group

_default: ProcessGroup | None = None
_prev_excepthook = None


def current() -> ProcessGroup:
    if _default is None:
        raise ValueError(NOT_INITIALIZED)
    return _default


def is_initialized() -> bool:
    return _default is not None


def default_timeout() -> float:
    v = os.environ.get(TIMEOUT_ENV)
    if v:
        try:
            return float(v)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={v!r} is not a number of seconds") from None
    return DEFAULT_TIMEOUT_S


def init_mpi(timeout: float) -> ProcessGroup:
    """The world communicator of the MPI job this process belongs to (world size 1 without a launcher)."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(f"tracejit.distributed runs on MPI through mpi4py, which is not importable here ({e}): "
                           f"pip install 'tracejit[distributed]' (mpi4py and the mpich wheel), or mpi4py built "
                           f"against your cluster's MPI") from None
    return set_default(ProcessGroup(MPI.COMM_WORLD, timeout))


def set_default(group: ProcessGroup | None) -> ProcessGroup | None:
    """Make `group` the default (None: none); with several ranks, an uncaught exception then aborts the job."""
    global _default, _prev_excepthook
    if _default is not None and group is not _default:
        _default.close()
    _default = group
    if group is not None and group.size > 1 and _prev_excepthook is None:
        _prev_excepthook = sys.excepthook
        sys.excepthook = _abort_job
    elif group is None and _prev_excepthook is not None:
        sys.excepthook, _prev_excepthook = _prev_excepthook, None
    return group


@contextmanager
def single_process(timeout: float = DEFAULT_TIMEOUT_S):
    """Inside, the default group is a world of one rank without MPI (tests; running a traced step alone)."""
    prev = _default
    group = ProcessGroup(None, timeout)
    globals()["_default"] = group
    try:
        yield group
    finally:
        globals()["_default"] = prev


def _abort_job(tp, value, tb):
    """An exception nobody caught on one rank: print it, then end every rank of the job (MPI_Abort). Without this
    the other ranks would wait for this one in their next collective forever (`python -m mpi4py script.py` does
    the same for the exceptions it sees)."""
    (_prev_excepthook or sys.__excepthook__)(tp, value, tb)
    group = _default
    if group is not None and group.comm is not None:
        try:
            sys.stderr.write(f"tracejit.distributed: rank {group.rank} raised {tp.__name__}; aborting the job\n")
            sys.stderr.flush()
            time.sleep(0.25)  # the launcher forwards this rank's output before it kills the job (else it may not)
        finally:
            group.comm.Abort(1)
