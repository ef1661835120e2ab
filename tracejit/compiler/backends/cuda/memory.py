"""Device memory for the CUDA backend: `CudaBuffer` (a tensor's storage on the GPU) and a caching pool.

A buffer is a flat 1-D device array (its `Block`) plus a shape: reshaping is free (another buffer over the
same block), 0-d tensors are one element, and every kernel indexes flat memory with offsets computed from
static shapes. Blocks come from a pool keyed by byte size: when the last buffer over a block dies its device
array goes back to the pool and the next allocation of that size reuses it (cuMemAlloc costs ~10 us; a
training step allocates dozens of outputs). All work runs on the default stream, so memory reused by a later
kernel is only touched after the earlier kernels that read it.

Nothing outside the backend looks inside a buffer: tensors read values through `to_host`. A buffer refuses
`np.asarray` (it would silently copy), and exposes `__cuda_array_interface__` so CuPy, PyTorch and Numba can
use it zero-copy.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np

POOL_BYTES = 1 << 30  # most bytes the pool keeps cached; beyond this freed arrays go back to the driver


class Block:
    """One device array of `n` elements, owned by the buffers that view it; `base` is the block whose memory
    it reinterprets (the runtime arena's typed views of its raw byte buffers), kept alive by it."""

    __slots__ = ("arr", "base", "__weakref__")

    def __init__(self, arr, base=None):
        self.arr, self.base = arr, base


class CudaBuffer:
    """Storage of a tensor on the GPU: `block.arr` (flat) seen with `shape`."""

    __slots__ = ("block", "shape", "dtype")

    def __init__(self, block: Block, shape: tuple, dtype: np.dtype):
        self.block, self.shape, self.dtype = block, tuple(shape), np.dtype(dtype)

    @property
    def data(self):
        """The flat 1-D device array (numel elements)."""
        return self.block.arr

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def reshape(self, shape) -> CudaBuffer:
        shape = tuple(shape)
        assert math.prod(shape) == self.size, (shape, self.shape)
        return CudaBuffer(self.block, shape, self.dtype)

    def __array__(self, *a, **k):
        raise TypeError("a CUDA buffer cannot be turned into a NumPy array implicitly: copy it to the host "
                        "(tensor.cpu()) first")

    @property
    def __cuda_array_interface__(self) -> dict:
        cai = dict(self.block.arr.__cuda_array_interface__)
        cai["shape"] = self.shape
        cai["strides"] = None
        return cai

    def __repr__(self) -> str:
        return f"CudaBuffer({self.dtype}{list(self.shape)})"


class Pool:
    """Free device arrays by (bytes, dtype); thread-safe."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.free: dict[tuple, list] = {}
        self.cached = 0
        self.in_use = self.peak = 0  # bytes of blocks alive (tensors, arenas), and the most since reset
        self.lock = threading.Lock()
        self.allocs = self.reuses = 0

    def block(self, n: int, dtype) -> Block:
        dtype = np.dtype(dtype)
        key = (n, dtype.str)
        arr = None
        with self.lock:
            lst = self.free.get(key)
            if lst:
                arr = lst.pop()
                self.cached -= n * dtype.itemsize
                self.reuses += 1
        if arr is None:
            arr = self.cuda.device_array(n, dtype)
            self.allocs += 1
        b = Block(arr)
        if n:
            nbytes = n * dtype.itemsize
            with self.lock:
                self.in_use += nbytes
                self.peak = max(self.peak, self.in_use)
            f = weakref.finalize(b, self._release, key, arr, nbytes)
            f.atexit = False
        return b

    def _release(self, key, arr, nbytes) -> None:
        with self.lock:
            self.in_use -= nbytes
            if self.cached + nbytes > POOL_BYTES:
                return  # dropped: numba frees it
            self.free.setdefault(key, []).append(arr)
            self.cached += nbytes

    def clear(self) -> None:
        with self.lock:
            self.free.clear()
            self.cached = 0


class Memory:
    """alloc / to_device / to_host of the backend, over one pool."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.pool = Pool(cuda)

    def empty(self, shape, np_dtype) -> CudaBuffer:
        shape = tuple(int(s) for s in shape)
        return CudaBuffer(self.pool.block(math.prod(shape), np_dtype), shape, np_dtype)

    def to_device(self, array: np.ndarray) -> CudaBuffer:
        array = np.asarray(array)
        buf = self.empty(array.shape, array.dtype)
        if buf.size:
            buf.data.copy_to_device(np.ascontiguousarray(array).reshape(-1))
        return buf

    def view(self, buf: CudaBuffer, shape, np_dtype) -> CudaBuffer:
        """The start of `buf` (raw bytes: one of the runtime arena's buffers) seen as `shape` and `np_dtype`."""
        shape, np_dtype = tuple(int(s) for s in shape), np.dtype(np_dtype)
        n = math.prod(shape) * np_dtype.itemsize
        return CudaBuffer(Block(buf.block.arr[:n].view(np_dtype), buf.block), shape, np_dtype)

    def copy(self, buf: CudaBuffer) -> CudaBuffer:
        """A new buffer with `buf`'s values (a device-to-device copy)."""
        out = self.empty(buf.shape, buf.dtype)
        if buf.size:
            out.data.copy_to_device(buf.data)
        return out

    def to_host(self, buf: CudaBuffer) -> np.ndarray:
        if not isinstance(buf, CudaBuffer):
            raise TypeError(f"to_host: expected a CUDA buffer, got {type(buf).__name__}")
        if buf.size == 0:
            return np.empty(buf.shape, buf.dtype)
        return np.asarray(buf.data.copy_to_host()).reshape(buf.shape)
