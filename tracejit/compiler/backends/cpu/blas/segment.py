"""GEMM for generated segment code, where every operand's layout is known when the code is rendered.

A segment's matmul operands are C-contiguous arrays or transposes of them, so the renderer passes the BLAS
transpose flags and leading dimensions as constants: no layout checks and no np.dot fallback.

Generated code reaches these GEMMs *by address*: in jitted code each of `gemm_nt`, `gemm_nt_par`, `gemm_bias_act`,
`gemm_bias_act_par`, `bgemm` and `bgemm_par` lowers to one call of an external symbol, `tracejit_gemm_f32` or
`tracejit_gemm_f64` (a C entry compiled once per process from `_entry`, or loaded from Numba's cache), with the
arrays' data pointers, the sizes, the epilogue and the thread count. Numba would otherwise link a callee's whole
LLVM module into every caller and optimize and code-generate it again there: each segment that called the
parallel (TBB) GEMM carried ~90 KB of its machine code and paid its LLVM time (gpt: 42 generated functions).
Cached callers stay valid across processes: their object code names the symbol, not an address, and every
caller's cache entry carries a `_Need` in its reload hooks, which registers the symbol (building or loading its
entry) before Numba loads the caller's code. A changed entry changes the generated sources' fingerprint
(render.FINGERPRINT hashes this folder), so callers compiled against an older entry miss the cache.

From Python the same names call the C entry through ctypes (eager matmuls, tests).
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.core.typing.templates import AbstractTemplate, infer_global
from numba.extending import lower_builtin
from numba.np.ufunc.parallel import _launch_threads

from ..jit import helper
from .calls import ensure_sgemm, gemm_at  # the one BLAS call, declared once


@helper(cache=True, fastmath=True, error_model="numpy")
def _bias_act(out, n, i0, i1, j0, j1, bias, relu):
    """out[i, j] = relu?(out[i, j] + bias[j]) on rows [i0, i1) and columns [j0, j1) of the C-contiguous m x n out
    (relu as the op table's: NaN stays NaN); relu < 0: no epilogue at all."""
    if relu < 0:
        return
    flat = out.reshape(-1)
    zero = out.dtype.type(0)
    for i in range(i0, i1):
        row = i * n
        if relu:
            for j in range(j0, j1):
                v = flat[row + j] + bias[j]
                flat[row + j] = zero if v < zero else v
        else:
            for j in range(j0, j1):
                flat[row + j] += bias[j]


@numba.njit(cache=True, error_model="numpy")
def _serial(ta, tb, batch, m, n, k, a, lda, b, ldb, bias, relu, out):
    """out[p] = op(a[p]) @ op(b[p]) (+ bias, relu) for p < batch, one thread."""
    zero = out.dtype.type(0)
    for p in range(batch):
        gemm_at(ta, tb, m, n, k, a, p * m * k, lda, b, p * k * n, ldb, out, p * m * n, n, zero)
        _bias_act(out, n, p * m, (p + 1) * m, 0, n, bias, relu)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _parallel(ta, tb, batch, m, n, k, a, lda, b, ldb, bias, relu, out, parts):
    """`_serial` split into `parts` blocks (one per thread), each a one-thread GEMM call inside Numba's (TBB) pool
    followed by its block's epilogue on the same thread: a batch splits by its entries, one product along the
    larger of m and n, so the operand every block packs again is the smaller one.

    The caller has set BLAS to one thread and passes numba.get_num_threads(). Big GEMMs then share the pool that
    runs every other kernel: OpenBLAS's own threads spin ~0.1 s after each call and, on 2 cores, halved the speed
    of the TBB kernels that came next (MLP Adam 0.12 ms alone, 0.35-0.5 ms after a 2-thread GEMM)."""
    zero = out.dtype.type(0)
    if batch > 1:
        for q in numba.prange(parts):
            for p in range(q * batch // parts, (q + 1) * batch // parts):
                gemm_at(ta, tb, m, n, k, a, p * m * k, lda, b, p * k * n, ldb, out, p * m * n, n, zero)
                _bias_act(out, n, p * m, (p + 1) * m, 0, n, bias, relu)
    elif m >= n:
        for q in numba.prange(parts):
            lo = q * m // parts
            hi = (q + 1) * m // parts
            if hi > lo:
                gemm_at(ta, tb, hi - lo, n, k, a, lo if ta else lo * lda, lda, b, 0, ldb, out, lo * n, n, zero)
                _bias_act(out, n, lo, hi, 0, n, bias, relu)
    else:
        for q in numba.prange(parts):
            lo = q * n // parts
            hi = (q + 1) * n // parts
            if hi > lo:
                gemm_at(ta, tb, m, hi - lo, k, a, 0, lda, b, lo * ldb if tb else lo, ldb, out, lo, n, zero)
                _bias_act(out, n, 0, m, lo, hi, bias, relu)


def _entry(ta, tb, batch, m, n, k, a, lda, b, ldb, bias, relu, out, parts):
    """The C entry: out = op(a) @ op(b) (+ bias, relu >= 0) on `batch` blocks of flat C-contiguous buffers (a
    transposed operand is its block's transpose; lda/ldb the buffers' row lengths), split over `parts` threads
    when parts > 1. m, n, k >= 1; bias may be NULL when relu < 0."""
    a_ = numba.carray(a, (batch * (k if ta else m) * lda,))
    b_ = numba.carray(b, (batch * (n if tb else k) * ldb,))
    out_ = numba.carray(out, (batch * m * n,))
    bias_ = numba.carray(bias, (n if relu >= 0 else 0,))
    if parts > 1:
        _parallel(ta, tb, batch, m, n, k, a_, lda, b_, ldb, bias_, relu, out_, parts)
    else:
        _serial(ta, tb, batch, m, n, k, a_, lda, b_, ldb, bias_, relu, out_)


_DTYPES = {"f32": types.float32, "f64": types.float64}
_INTS = ("ta", "tb", "batch", "m", "n", "k", "lda", "ldb", "relu", "parts")
_ORDER = ("ta", "tb", "batch", "m", "n", "k", "a", "lda", "b", "ldb", "bias", "relu", "out", "parts")


def symbol(dtype: str) -> str:
    """The external symbol of the C entry for `dtype` ("f32" or "f64")."""
    return f"tracejit_gemm_{dtype}"


def _signature(dtype: str):
    p = types.CPointer(_DTYPES[dtype])
    return types.void(*[types.intp if a in _INTS else p for a in _ORDER])


_entries: dict = {}  # dtype -> (cfunc, ctypes caller)


def ensure(dtype: str):
    """Build (or load from Numba's cache) the C entry for `dtype` and register its symbol, once per process."""
    got = _entries.get(dtype)
    if got is None:
        with global_compiler_lock:  # the lock Numba holds while it loads callers (and so runs `_Need`)
            got = _entries.get(dtype)
            if got is None:
                # the entry's parallel region needs Numba's thread pool, whose symbols its code names; a cfunc
                # loaded from Numba's cache does not start it (its reload hooks miss the linked parfor's)
                _launch_threads()
                # the entry calls gemm_at, whose float32 path names calls.SGEMM_SYMBOL: registered first (a cfunc's
                # cache entry does not carry its linked libraries' reload hooks, calls._NeedSgemm)
                ensure_sgemm()
                fn = numba.cfunc(_signature(dtype), cache=True, error_model="numpy")(_entry)
                llvm.add_symbol(symbol(dtype), fn.address)
                proto = ctypes.CFUNCTYPE(None, *[ctypes.c_ssize_t if a in _INTS else ctypes.c_void_p for a in _ORDER])
                got = _entries[dtype] = (fn, proto(fn.address))
    return got


class _Need:
    """A reload hook in a caller's cache entry: registers the entry's symbol before the caller's code loads."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def __call__(self):
        ensure(self.dtype)

    def __eq__(self, other):
        return isinstance(other, _Need) and other.dtype == self.dtype

    def __hash__(self):
        return hash((_Need, self.dtype))

    def __reduce__(self):
        return _Need, (self.dtype,)


# The six forms generated code calls: their parameters, each an _ORDER name (the others take their defaults).
_FORMS = {
    "gemm_nt": ("ta", "tb", "m", "n", "k", "a", "lda", "b", "ldb", "out"),
    "gemm_nt_par": ("ta", "tb", "m", "n", "k", "a", "lda", "b", "ldb", "out", "parts"),
    "gemm_bias_act": ("ta", "tb", "m", "n", "k", "a", "lda", "b", "ldb", "bias", "relu", "out"),
    "gemm_bias_act_par": ("ta", "tb", "m", "n", "k", "a", "lda", "b", "ldb", "bias", "relu", "out", "parts"),
    "bgemm": ("ta", "tb", "batch", "m", "n", "k", "a", "lda", "b", "ldb", "out"),
    "bgemm_par": ("ta", "tb", "batch", "m", "n", "k", "a", "lda", "b", "ldb", "out", "parts"),
}
_DEFAULTS = {"batch": 1, "bias": None, "relu": -1, "parts": 1}
_CODES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _dtype_code(out) -> str:
    code = _CODES.get(np.dtype(out))
    if code is None:
        raise TypeError(f"tracejit GEMM: {out} operands are not supported (float32 or float64)")
    return code


def _python_call(form: str, args) -> None:
    params = _FORMS[form]
    if len(args) != len(params):
        raise TypeError(f"{form}() takes {len(params)} arguments ({len(args)} given)")
    given = dict(zip(params, args))
    out = given["out"]
    _, call = ensure(_dtype_code(out.dtype))
    values = []
    for name in _ORDER:
        v = given.get(name, _DEFAULTS.get(name))
        if name in _INTS:
            values.append(int(v))
        else:
            if v is not None and v.dtype != out.dtype:
                raise TypeError(f"{form}: {name} is {v.dtype}, out is {out.dtype}")
            values.append(None if v is None else v.ctypes.data)
    call(*values)


def _template(form: str):
    params = _FORMS[form]

    class Template(AbstractTemplate):
        def generic(self, args, kws):
            if kws or len(args) != len(params):
                return None
            given = dict(zip(params, args))
            out = given["out"]
            if not isinstance(out, types.Array) or out.dtype not in _DTYPES.values():
                return None
            for name, t in given.items():
                if name in _INTS:
                    if not isinstance(types.unliteral(t), (types.Integer, types.Boolean)):
                        return None
                elif not isinstance(t, types.Array) or t.dtype != out.dtype:
                    return None
            return types.none(*args)

    Template.__name__ = f"{form}_template"
    return Template


def _lowering(form: str):
    params = _FORMS[form]

    def lower(context, builder, sig, args):
        given = dict(zip(params, zip(sig.args, args)))
        out_ty = given["out"][0]
        dtype = "f32" if out_ty.dtype == types.float32 else "f64"
        ensure(dtype)  # registered before this caller is finalized ...
        context.active_code_library._reload_init.add(_Need(dtype))  # ... and before it loads from a cache
        intp = context.get_value_type(types.intp)
        ptr = context.get_value_type(types.CPointer(out_ty.dtype))
        values = []
        for name in _ORDER:
            if name not in given:
                default = _DEFAULTS[name]
                values.append(ir.Constant(ptr, None) if default is None else ir.Constant(intp, default))
                continue
            ty, val = given[name]
            if name in _INTS:
                values.append(context.cast(builder, val, ty, types.intp))
            else:
                values.append(builder.bitcast(context.make_array(ty)(context, builder, val).data, ptr))
        fnty = ir.FunctionType(ir.VoidType(), [intp if a in _INTS else ptr for a in _ORDER])
        fn = cgutils.get_or_insert_function(builder.module, fnty, symbol(dtype))
        builder.call(fn, values)
        return context.get_dummy_value()
    return lower


def _define(form: str, doc: str):
    def call(*args):
        _python_call(form, args)

    call.__name__ = call.__qualname__ = form
    call.__doc__ = doc
    return call


gemm_nt = _define("gemm_nt", """out (C-contiguous m x n) = op(a) @ op(b), with op(a) m x k and op(b) k x n.

    `ta`/`tb` = 1 when the operand is the transpose of a C-contiguous array (F-contiguous), 0 when it is
    C-contiguous; `lda`/`ldb` are the leading dimensions of the underlying C-contiguous buffers. m, n, k >= 1.""")
gemm_nt_par = _define("gemm_nt_par", "gemm_nt split into `parts` blocks over Numba's pool (BLAS set to one thread).")
gemm_bias_act = _define("gemm_bias_act", """A linear layer: out = op(a) @ op(b) + bias (then relu if relu == 1),
    the epilogue run while out is in cache.""")
gemm_bias_act_par = _define("gemm_bias_act_par", "gemm_bias_act split into `parts` blocks over Numba's pool, "
                            "each block's epilogue on the thread that computed it.")
bgemm = _define("bgemm", """A batched matmul: out[p] = op(a[p]) @ op(b[p]) for p < batch, over flat C-contiguous
    buffers holding `batch` blocks of m*k, k*n and m*n elements (a transposed operand is its block's transpose, as in
    gemm_nt): the batch's attention scores and weighted values without copying transposed keys.""")
bgemm_par = _define("bgemm_par", "bgemm with the batch split into `parts` runs, one per thread of the pool.")


for _form in _FORMS:  # typed and lowered in jitted code (registered once the module holds the names)
    infer_global(globals()[_form])(_template(_form))
    lower_builtin(globals()[_form], types.VarArg(types.Any))(_lowering(_form))
