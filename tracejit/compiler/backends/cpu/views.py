"""Array headers for generated code: `view(a, shape)`, a C-contiguous array's data seen with another shape of
the same size; `empty(shape, dtype)`; `array_at(address, n, dtype)` with `addresses(arrays, table)`, arrays
passed as one table.

It replaces `a.reshape(shape)` there. Numba's reshape is general (contiguity test, stride search, size check
with a formatted error) and each call site lowered to ~200 lines of LLVM IR: the 24 reshapes of a LeNet
segment were half of its compile time. The renderer only asks for views of C-contiguous arrays whose sizes
it checked when rendering, so this intrinsic just builds the array header (a few multiplies).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array


@intrinsic
def view(typingctx, arr, shape):
    """`arr` (C-contiguous) with C-order `shape` (a tuple of ints, same element count), sharing its data."""
    if not isinstance(arr, types.Array) or arr.layout != "C":
        return None
    if not isinstance(shape, types.BaseTuple) or not all(isinstance(t, types.Integer) for t in shape):
        return None
    ret = arr.copy(ndim=len(shape), layout="C")

    def codegen(context, builder, sig, args):
        aryty, shapety = sig.args
        src = make_array(aryty)(context, builder, args[0])
        dims = [context.cast(builder, d, t, types.intp)
                for d, t in zip(cgutils.unpack_tuple(builder, args[1], len(shapety)), shapety)]
        strides = []
        step = src.itemsize
        for d in reversed(dims):
            strides.append(step)
            step = builder.mul(step, d)
        strides.reverse()
        out = make_array(sig.return_type)(context, builder)
        populate_array(out, data=src.data, shape=dims, strides=strides, itemsize=src.itemsize,
                       meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, sig.return_type, out._getvalue())

    return ret(arr, shape), codegen


@intrinsic
def empty(typingctx, shape, dtype):
    """A new uninitialized C-contiguous array of `shape` (a tuple of ints) and `dtype` (np.float32, ...).

    np.empty is a Numba overload: compiled once per signature in every process (~0.1 s before the first
    generated function could compile) and a call into that code per site; this is the allocation inline."""
    if not isinstance(shape, types.BaseTuple) or not all(isinstance(t, types.Integer) for t in shape):
        return None
    if not isinstance(dtype, (types.NumberClass, types.DType)):
        return None
    ret = types.Array(dtype.dtype, len(shape), "C")

    def codegen(context, builder, sig, args):
        shapety = sig.args[0]
        dims = [context.cast(builder, d, t, types.intp)
                for d, t in zip(cgutils.unpack_tuple(builder, args[0], len(shapety)), shapety)]
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(ret.dtype)))
        strides = []
        step = itemsize
        for d in reversed(dims):
            strides.append(step)
            step = builder.mul(step, d)
        strides.reverse()
        meminfo = context.nrt.meminfo_alloc_aligned(builder, step, context.get_preferred_array_alignment(ret.dtype))
        with builder.if_then(cgutils.is_null(builder, meminfo), likely=False):
            context.call_conv.return_user_exc(builder, MemoryError, ("cannot allocate an array",))
        data = context.nrt.meminfo_data(builder, meminfo)
        data = builder.bitcast(data, context.get_data_type(ret.dtype).as_pointer())
        out = make_array(ret)(context, builder)
        populate_array(out, data=data, shape=dims, strides=strides, itemsize=itemsize, meminfo=meminfo)
        return out._getvalue()

    return ret(shape, dtype), codegen


@intrinsic
def array_at(typingctx, addr, n, dtype):
    """The 1-D C-contiguous array of `n` elements of `dtype` (np.float32, ...) at address `addr`. It does
    not own its memory: the caller keeps the arrays whose `addresses` it was given alive during the call."""
    if not isinstance(addr, types.Integer) or not isinstance(n, types.Integer):
        return None
    if isinstance(dtype, (types.NumberClass, types.DType)):
        dt = dtype.dtype
    else:
        return None
    ret = types.Array(dt, 1, "C")

    def codegen(context, builder, sig, args):
        out = make_array(ret)(context, builder)
        ptr_t = context.get_value_type(dt).as_pointer()
        data = builder.inttoptr(context.cast(builder, args[0], sig.args[0], types.intp), ptr_t)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_value_type(dt)))
        populate_array(out, data=data, shape=[context.cast(builder, args[1], sig.args[1], types.intp)],
                       strides=[itemsize], itemsize=itemsize, meminfo=None)
        return out._getvalue()

    return ret(addr, n, dtype), codegen


@intrinsic
def _address(typingctx, arr):
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        ary = make_array(sig.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, context.get_value_type(types.int64))

    return types.int64(arr), codegen


CHUNKS = (16, 64)  # tuple sizes `addresses` passes: one Numba specialization each per dtype, cached per install


@numba.njit(cache=True)
def _fill_addresses(arrays, out, base):
    for i in range(len(arrays)):
        a = arrays[i]
        out[base + i, 0] = _address(a)
        out[base + i, 1] = a.size


def addresses(arrays: list):
    """An int64 table whose row i is (data address, element count) of arrays[i] (1-D, C-contiguous, one dtype;
    rows past len(arrays) are padding).

    A generated function with many array arguments is slow to compile: Numba's unboxing code for 60 arrays
    took ~0.4 s of LLVM time, growing faster than linearly. So a multi-tensor kernel takes this table, and
    this cached package function unboxes the arrays, 16 or 64 at a time (the last tuple padded with the first
    array): two Numba specializations per dtype and install whatever the model. (One tuple of all 60 arrays
    compiled for 0.5 s per model, 2 s with mixed ranks; 16 at a time cost LeNet's step 4 calls, 6 us more.)"""
    small, big = CHUNKS
    n = len(arrays)
    size = small if n <= small else big
    padded = list(arrays) + [arrays[0]] * (-n % size)
    table = np.empty((len(padded), 2), np.int64)
    for b in range(0, len(padded), size):
        _fill_addresses(tuple(padded[b:b + size]), table, b)
    return table
