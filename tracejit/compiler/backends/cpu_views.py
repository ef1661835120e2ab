"""`view(a, shape)`: a C-contiguous array's data seen with another shape of the same size, for generated code.

It replaces `a.reshape(shape)` there. Numba's reshape is general (contiguity test, stride search, size check
with a formatted error) and each call site lowered to ~200 lines of LLVM IR: the 24 reshapes of a LeNet
segment were half of its compile time. The renderer only asks for views of C-contiguous arrays whose sizes
it checked when rendering, so this intrinsic just builds the array header (a few multiplies).
"""

from __future__ import annotations

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
