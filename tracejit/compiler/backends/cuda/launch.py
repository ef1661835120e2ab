"""Launch configurations, computed from shapes.

Every generated kernel loops grid-stride (over elements, output rows, ...), so any configuration is correct and
this module only chooses a fast one: on a GPU enough blocks to fill the SMs a few times over, 256-thread blocks
for elementwise work and a power of two up to 256 for block reductions; in the simulator (one Python thread per
GPU thread) 32-thread blocks and at most a few blocks, which also exercises the grid-stride loops in tests.
"""

from __future__ import annotations

from .driver import simulated, sm_count


class Limits:
    """The numbers the choices below use (the simulator's small ones by default there; tests may lower them)."""

    def __init__(self, sim: bool):
        self.threads = 32 if sim else 256  # elementwise block size
        self.max_blocks = 3 if sim else 32 * max(1, sm_count())  # grid-stride beyond this
        self.reduce_threads = 32 if sim else 256  # largest block of a block reduction (a power of two)
        # GEMM blocking: tile x tile threads, each computing reg x reg outputs, k in steps of bk
        self.tile, self.reg, self.bk = (2, 2, 4) if sim else (16, 4, 16)
        # the smallest block: a warp on a GPU; in the simulator every thread costs a Python thread, so tiny
        # kernels get as few as they need
        self.min_threads = 1 if sim else 32
        # reductions this short run one thread per output row (no shared memory, no barriers): on a GPU a row of
        # a warp's length; in the simulator, where each barrier stops every Python thread, nearly all
        self.serial_max = 4096 if sim else 32
        # GEMMs with fewer multiply-adds than this run one thread per output (the tiled kernel's barriers are
        # what the simulator is slow at)
        self.gemm_simple_max = 1 << 16 if sim else 0
        # a reduction with few outputs over many elements is split over several blocks and finished by a second
        # pass: when the rows alone would leave the GPU idle
        self.split_min_len = 64 if sim else 16384
        self.split_rows = 2 if sim else 2 * max(1, sm_count())
        self.max_split = 64 if sim else 4 * max(1, sm_count())  # blocks sharing one row: a few per SM


_limits: list = []


def limits() -> Limits:
    if not _limits:
        _limits.append(Limits(simulated()))
    return _limits[0]


def blocks_for(n: int, threads: int) -> int:
    return max(1, min(limits().max_blocks, -(-n // threads)))


def elementwise(n: int) -> tuple[int, int]:
    """(blocks, threads) for `n` independent elements."""
    lim = limits()
    threads = lim.threads if n >= lim.threads else max(lim.min_threads, 1 << max(0, (n - 1).bit_length()))
    threads = min(threads, lim.threads)
    return blocks_for(n, threads), threads


def reduce_threads(length: int) -> int:
    """Threads of a block reducing `length` elements: a power of two, at least a warp."""
    t = limits().min_threads
    while t < length and t < limits().reduce_threads:
        t *= 2
    return t


def split(rows: int, length: int, threads: int) -> int:
    """How many blocks share one output row of a reduction (1: one block per row)."""
    lim = limits()
    if length < lim.split_min_len or rows >= lim.split_rows:
        return 1
    want = -(-2 * lim.split_rows // rows)
    return max(1, min(want, -(-length // (threads * 4)), lim.max_split))


def gemm_blocking(m: int, n: int, batch: int = 1) -> tuple[int, int, int]:
    """(threads per block edge, outputs per thread edge, k step) of the tiled GEMM: the largest register block
    that still gives every SM a tile (a 256 x 120 product in 64 x 64 tiles would keep 8 of 132 SMs busy), and no
    block larger than the output."""
    lim = limits()
    reg = lim.reg
    while reg > 1 and (lim.tile * reg // 2 >= max(m, n) or
                       batch * -(-m // (lim.tile * reg)) * -(-n // (lim.tile * reg)) < lim.max_blocks // 32):
        reg //= 2
    return lim.tile, reg, lim.bk


def rows(n_rows: int) -> int:
    """Blocks for `n_rows` rows of block-per-row work."""
    return max(1, min(limits().max_blocks, n_rows))
