"""GEMM for generated code with transpose flags: BLAS reads a transposed operand where it lies (numba's
np.dot copies it or takes a slow path: 6.4 ms vs 1.5 ms for 128x784 @ 784x512 on one thread).

float64 calls Numba's own `numba_xxgemm` helper (SciPy's BLAS, resolved by symbol name at link time); float32
calls the symbol `tracejit_sgemm`, which this module points at OpenBLAS or at tracejit's own GEMM (blas.gemm)
when the first caller is compiled or loaded (`ensure_sgemm`, `sgemm_choice`). Either way callers stay cacheable:
Numba links neither into them.
Row-major C = A @ B is column-major C^T = B^T @ A^T.
"""

from __future__ import annotations

import os
import warnings

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic

from ..jit import helper
from . import gemm as cpu_gemm

_xxgemm = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp, types.voidptr,
               types.voidptr, types.intp, types.voidptr, types.intp, types.voidptr, types.voidptr, types.intp))


@intrinsic
def _ptr(typingctx, arr):
    """The data pointer of an array (or of a 1-element scalar holder) as void*."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.bitcast(ary.data, cgutils.voidptr_t)
    return types.voidptr(arr), codegen


@intrinsic
def _ptr_at(typingctx, arr, offset):
    """void* to element `offset` (counted in elements of the flat buffer) of an array."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.bitcast(builder.gep(ary.data, [args[1]]), cgutils.voidptr_t)
    return types.voidptr(arr, types.intp), codegen


# ------------------------------------------------------------------------------------------ float32 GEMM
# Generated code and the window kernels call one external symbol for float32 GEMMs; which function it names
# is decided once per process (`sgemm_choice`), so cached machine code stays valid whichever runs.
SGEMM_SYMBOL = "tracejit_sgemm"
_SGEMM_SIG = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.voidptr, types.intp,
                        types.voidptr, types.intp, types.voidptr, types.intp, types.float32)


class _NeedSgemm:
    """A reload hook in a caller's cache entry: registers the float32 entry's symbol before the caller's code loads
    (Numba copies a linked library's hooks into its callers' entries)."""

    def __call__(self):
        ensure_sgemm()

    def __eq__(self, other):
        return isinstance(other, _NeedSgemm)

    def __hash__(self):
        return hash(_NeedSgemm)

    def __reduce__(self):
        return _NeedSgemm, ()


@intrinsic
def _sgemm(typingctx, ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta):
    """A call of the external symbol tracejit_sgemm (C ABI, `_SGEMM_SIG`). The symbol is registered when the first
    caller is lowered or loaded from a cache (`ensure_sgemm`), not when this module is imported: a fresh install's
    entry takes ~4 s to compile, which a tiered first call need not wait for (its compile process builds it)."""
    def codegen(context, builder, sig, args):
        ensure_sgemm()  # registered before this caller is finalized ...
        context.active_code_library._reload_init.add(_NeedSgemm())  # ... and before it loads from a cache
        fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in _SGEMM_SIG.args])
        fn = cgutils.get_or_insert_function(builder.module, fnty, SGEMM_SYMBOL)
        builder.call(fn, list(args))
        return context.get_dummy_value()
    return _SGEMM_SIG, codegen


@helper(cache=True)
def _blas_gemm(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta):
    """The one call into SciPy's BLAS (Numba's `numba_xxgemm` helper): C = op(A) @ op(B) + beta * C, sgemm or
    dgemm by beta's type. Row-major C = A @ B is column-major C^T = B^T @ A^T, and a C-order array is its own
    transpose there."""
    scal = np.full(2, beta)
    scal[0] = 1
    kind = np.int8(115) if scal.itemsize == 4 else np.int8(100)  # 's' / 'd'
    _xxgemm(kind, np.int8(84 if tb else 78), np.int8(84 if ta else 78), n, m, k, _ptr(scal[0:1]), b_ptr, ldb,
            a_ptr, lda, _ptr(scal[1:2]), c_ptr, ldc)


def _sgemm_openblas(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta):
    """SciPy's OpenBLAS sgemm as the float32 entry."""
    _blas_gemm(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta)


# Without AVX-512 (the 6 x 16 AVX2 kernel): products with few rows of C, or few columns, run tracejit's kernel,
# the rest OpenBLAS. One thread, this Zen 5 with LLVM held to AVX2 (TRACEJIT_FAKE_ISA=avx2) against OpenBLAS's
# Haswell kernels (OPENBLAS_CORETYPE=Haswell) -- a stand-in for a Zen 3, under load ~6, GFLOP/s own / OpenBLAS:
# 6x75x892 69/16, 6x892x75 70/18 (LeNet's conv), 75x6x892 A@B^T 56/30, 128x10x512 63/56, 16x150x1568 65/40,
# 20x1024x256 A@B^T 71/44 and 20x256x1024 69/44 (the LSTM's recurrent GEMMs), 32x1024x256 75/58, 64x120x400
# 82/75, 64x512x256 87/75, 96x512x256 89/83; but 128x512x1024 A^T@B 70/78, 400x120x64 69/90, 700x256x1024
# 70/96, 1024x512x128 67/92: OpenBLAS's Haswell kernels stay ahead on big products.
MIXED_OWN_ROWS = 96  # at most this many rows of C: tracejit's kernel
MIXED_OWN_COLS = 16  # or at most this many columns (one NR panel)


def _sgemm_mixed(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta):
    """tracejit's kernel for skinny products, OpenBLAS for the rest (CPUs without AVX-512)."""
    if m <= MIXED_OWN_ROWS or n <= MIXED_OWN_COLS:
        cpu_gemm.sgemm_ptrs(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta)
    else:
        _blas_gemm(ta, tb, m, n, k, a_ptr, lda, b_ptr, ldb, c_ptr, ldc, beta)


SGEMMS = {"tracejit": cpu_gemm.sgemm_c, "openblas": _sgemm_openblas, "mixed": _sgemm_mixed}
ENV_SGEMM = "TRACEJIT_SGEMM"


def _decide() -> tuple[str, str]:
    forced = os.environ.get(ENV_SGEMM, "").strip().lower()
    if forced:
        if forced not in SGEMMS:
            raise ValueError(f"{ENV_SGEMM}={forced!r}: choose one of {', '.join(SGEMMS)}")
        return forced, f"{ENV_SGEMM}={forced}"
    if cpu_gemm.V == 16:
        return "tracejit", "AVX-512 CPU: tracejit's kernel, the faster in split training-step GEMMs"
    return "mixed", (f"no AVX-512: tracejit's kernel for products of at most {MIXED_OWN_ROWS} rows or "
                     f"{MIXED_OWN_COLS} columns, OpenBLAS for the rest")


def _register() -> tuple[str, str]:
    # each C entry is defined in the module of the code it runs, whose edits thereby invalidate the cfunc's
    # Numba cache (which is keyed on the defining file alone)
    name, why = _decide()
    try:
        fn = numba.cfunc(_SGEMM_SIG, cache=True, error_model="numpy")(SGEMMS[name])
    except Exception as e:  # tracejit's kernel failed to build here: OpenBLAS still computes the same thing
        if name == "openblas":
            raise
        warnings.warn(f"tracejit's float32 GEMM could not be compiled ({type(e).__name__}: {e}); using OpenBLAS",
                      stacklevel=2)
        name, why = "openblas", f"tracejit's kernel failed to compile: {type(e).__name__}"
        fn = numba.cfunc(_SGEMM_SIG, cache=True, error_model="numpy")(SGEMMS[name])
    if name != "openblas":  # verify the kernel this CPU built before anything trusts it
        err = _check_entry_once(fn, name)
        if not err < SELF_CHECK_TOL:
            warnings.warn(f"tracejit's float32 GEMM disagrees with a float64 product on this CPU (relative error "
                          f"{err:.2g}); using OpenBLAS. Please report this CPU ({llvm.get_host_cpu_name()})",
                          RuntimeWarning, stacklevel=2)
            name, why = "openblas", f"tracejit's kernel failed its self-check here (error {err:.2g})"
            fn = numba.cfunc(_SGEMM_SIG, cache=True, error_model="numpy")(SGEMMS[name])
    llvm.add_symbol(SGEMM_SYMBOL, fn.address)
    return name, why


SELF_CHECK_TOL = 1e-5


def _check_entry(fn) -> float:
    """blas.gemm.self_check through the compiled C entry itself (the code generated code will call): ~1 ms."""
    import ctypes

    def via_entry(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta):
        fn.ctypes(ta, tb, m, n, k, a.ctypes.data_as(ctypes.c_void_p), lda, b.ctypes.data_as(ctypes.c_void_p), ldb,
                  c.ctypes.data_as(ctypes.c_void_p), ldc, beta)

    try:
        return cpu_gemm.self_check(via_entry)
    except Exception:  # a crash in the check is a failed check
        return float("inf")


def _check_entry_once(fn, name: str) -> float:
    """`_check_entry(fn)`, measured once per machine code and CPU: the error is kept in the kernel cache (a
    record keyed by the digest of the cfunc's Numba cache file, the CPU's name and features, and the check), so
    that a warm process skips the check (~0.1 s of a warm process's first compiled call)."""
    from ... import cache, numba_cache

    digest = numba_cache.code_digest(fn)
    if digest is None:  # not cached: no identity to key a record on
        return _check_entry(fn)
    try:
        target = fn._library.codegen.magic_tuple()
    except AttributeError:
        return _check_entry(fn)
    what = f"sgemm self-check {name} {digest} {target} {cpu_gemm.SELF_CHECK_SHAPES}"
    try:
        return float(cache.read_record(what).removeprefix("ERROR = "))
    except (AttributeError, ValueError):  # no record (or not a number)
        err = _check_entry(fn)
        cache.write_record(what, f"ERROR = {err!r}\n")
        return err


_SGEMM_CHOICE: tuple[str, str] | None = None  # (set by ensure_sgemm)


def ensure_sgemm() -> tuple[str, str]:
    """Build (or load from Numba's cache) the float32 entry this CPU runs and register its symbol, once per process:
    before any caller of the symbol is compiled or loaded from a cache (`_sgemm`, `_NeedSgemm`)."""
    global _SGEMM_CHOICE
    if _SGEMM_CHOICE is None:
        with global_compiler_lock:  # (the lock Numba holds while it lowers and loads callers)
            if _SGEMM_CHOICE is None:
                _SGEMM_CHOICE = _register()
    return _SGEMM_CHOICE


def sgemm_choice() -> tuple[str, str]:
    """(which float32 GEMM compiled code runs: "tracejit", "openblas" or "mixed", why). On AVX-512 CPUs tracejit's own
    GEMM: one thread, it matches OpenBLAS's SkylakeX kernels on the MLP's shapes and trails them on tiny ones
    (blas.gemm's table); in the benchmark's MLP step, where each GEMM is split over the threads, it made the step
    10-20% faster (against jax.jit: 1.10-1.23x vs 0.98-1.03x, three alternations), LeNet the same; and it does not
    depend on OPENBLAS_CORETYPE. Elsewhere "mixed": its AVX2 kernel for skinny products, OpenBLAS for big ones
    (`_sgemm_mixed`); TRACEJIT_SGEMM chooses any of the three. Before the entry is built (`ensure_sgemm`): the
    choice it will make unless the kernel fails to build or fails its self-check here."""
    return _SGEMM_CHOICE if _SGEMM_CHOICE is not None else _decide()


def sgemm_description() -> str:
    """`sgemm_choice` in words: "tracejit's own kernel (why)" or "OpenBLAS (why)" (builds the entry first)."""
    which, why = ensure_sgemm()
    name = {"tracejit": "tracejit's own kernel", "mixed": "tracejit's own kernel and OpenBLAS"}.get(which, "OpenBLAS")
    return f"{name} ({why})"


@helper(cache=True)
def gemm_at(ta, tb, m, n, k, a, a_off, lda, b, b_off, ldb, out, out_off, ldc, beta):
    """The one BLAS call: out = op(a) @ op(b) + beta * out on blocks given by element offsets into the
    row-major buffers a, b, out (leading dimensions lda, ldb, ldc); ta/tb = 1 where the operand is the
    transpose of the buffer. m, n, k >= 1."""
    if out.itemsize == 4:
        _sgemm(ta, tb, m, n, k, _ptr_at(a, a_off), lda, _ptr_at(b, b_off), ldb, _ptr_at(out, out_off), ldc,
               np.float32(beta))
    else:  # float64 always goes to BLAS
        _blas_gemm(ta, tb, m, n, k, _ptr_at(a, a_off), lda, _ptr_at(b, b_off), ldb, _ptr_at(out, out_off), ldc,
                   np.float64(beta))


@helper(cache=True)
def _layout(a):
    """(transposed?, leading dimension) of a C- or F-contiguous 2-D array; (-1, 0) for other layouts."""
    isz = a.itemsize
    if a.strides[1] == isz and a.strides[0] >= max(1, a.shape[1]) * isz:
        return 0, a.strides[0] // isz
    if a.strides[0] == isz and a.strides[1] >= max(1, a.shape[0]) * isz:
        return 1, a.strides[1] // isz
    return -1, 0


@helper(cache=True)
def gemm_beta(a, b, out, beta):
    """out[...] = a @ b + beta * out, for C- or F-contiguous 2-D a and b and a C-contiguous out: the window
    kernels accumulate per-image products with beta=1. Safe to call from parallel (TBB) tasks when BLAS
    runs one thread (the window steps set that)."""
    m, k = a.shape
    n = b.shape[1]
    ta, lda = _layout(a)
    tb, ldb = _layout(b)
    if ta < 0 or tb < 0 or m == 0 or n == 0 or k == 0:
        prod = np.dot(np.ascontiguousarray(a), np.ascontiguousarray(b))
        for i in range(m):
            for j in range(n):
                out[i, j] = prod[i, j] + beta * out[i, j] if beta != 0 else prod[i, j]
        return
    gemm_at(ta, tb, m, n, k, a, 0, lda, b, 0, ldb, out, 0, n, beta)


@helper(cache=True)
def gemm(a, b, out):
    """out[...] = a @ b for 2-D arrays of one float dtype; out C-contiguous; a, b C- or F-contiguous."""
    gemm_beta(a, b, out, out.dtype.type(0))
