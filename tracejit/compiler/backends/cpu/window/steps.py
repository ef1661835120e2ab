"""CPU steps for window ops: each primitive window node, and each pattern `fuse_window` forms, becomes a
call into the Numba kernel library (window.conv, window.backward) writing preallocated outputs.

Also matmul through BLAS (`np.matmul` into a preallocated output).
"""

from __future__ import annotations

import numpy as np

from ....ir import Node, Pattern
from ..blas import control as blas
from ..capabilities import supports
from . import backward as WB
from . import conv as W
from . import im2col as WG


def as_c(a):
    """`a` itself when C-contiguous, else a C-contiguous copy (kernels index flat memory)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _conv_kw(a):
    return dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])


def _by_gemm(a, x_shape, w_shape, backward=False) -> bool:
    """Whether the per-image GEMM kernels (window.im2col) run this conv (or its backward) rather than the
    direct ones."""
    return WG.prefer(x_shape, w_shape, W._pair(a["stride"]), W._pair(a["padding"]), W._pair(a["dilation"]),
                     a["groups"], backward)


def _gemm_grads(a, outs, x_shape, w_shape, label, g_at, x_at=None, w_at=None, dx=False, dw=False, db=False):
    """A step computing the requested conv gradients (in that order) from a plain output gradient with
    window.im2col; x or w, where the node does not take it, is a shape-only placeholder never read."""
    pad, dil = W._pair(a["padding"]), W._pair(a["dilation"])

    def grads(args, given=()):
        res = _take_all(given, outs)
        it = iter(res)
        g = as_c(args[g_at])
        x = as_c(args[x_at]) if x_at is not None else np.empty(x_shape, g.dtype)
        w = as_c(args[w_at]) if w_at is not None else np.empty(w_shape, g.dtype)
        WG.conv_backward(x, w, g, WG.MODE_PLAIN, _NO_IDX, _no_aux(g.dtype), pad, dil,
                         next(it) if dx else None, next(it) if dw else None, next(it) if db else None)
        return res
    return _label(grads, label)


_NO_IDX = np.zeros((1, 1, 1, 1), np.uint8)

# A conv+pool backward with an input gradient that the per-image GEMM kernels do not take (long runs) runs the
# direct kernels as ONE step (conv2d_pool_backward: the pool/ReLU backward writes the padded gradient both conv
# gradients read) rather than unpool, conv2d_grad_input, conv2d_grad_weight+bias on a separate [N, O, OH, OW]
# gradient. One-thread CPU ms, interleaved, conv block x[32,16,32,32] w[32,16,3,3] p1: 9.4 vs 12.1 (split); LeNet
# conv2 (2.4 vs 2.2, split) runs the GEMM kernels instead.
SPLIT_BACKWARD = False


def _no_aux(dtype):
    return np.zeros((1, 1, 1, 1), dtype)


def _empty(v):
    return np.empty(v.type.shape, v.type.dtype.np)


def _take(given, i, v):
    """The step's i-th result array: the runtime's preallocated one (its arena) when given, else a new one."""
    o = given[i] if i < len(given) else None
    return o if o is not None else _empty(v)


def _take_all(given, outs):
    return [_take(given, i, v) for i, v in enumerate(outs)]


def _conv_pool_backward_args(args, outs, has_dx, given=()):
    """(x, w, pooled gradient, argmax, dx, dw, db, results) of a conv_pool_backward step, its results newly
    allocated. Without an input gradient (dx None) w is a placeholder of dw's shape: its values are never read."""
    res = _take_all(given, outs)
    if has_dx:
        (x, w, gm, idx), (dx, dw, db) = args[:4], res
    else:
        (x, gm, idx), (dw, db) = args[:3], res
        w, dx = np.empty(dw.shape, dw.dtype), None
    return x, w, gm, idx, dx, dw, db, res


def window_step(node: Node):
    """A step for `node`, or None when it is not a window node this backend runs natively."""
    a = node.attrs
    if node.body is not None:
        pattern = node.pattern
        if pattern is None or supports(pattern, {**a, "dtype": node.outputs[0].dtype}) is not True:
            return None  # formed for another target: the body runs op by op
        outs = node.outputs
        if pattern is Pattern.CONV_POOL:
            kw = _conv_kw(a)
            relu, k, s, has_bias = a["relu"], a["pool"][0], a["pool_stride"][0], a["bias"]
            if _by_gemm(a, node.inputs[0].shape, node.inputs[1].shape):
                pad, dil = W._pair(a["padding"]), W._pair(a["dilation"])

                def conv_pool_gemm(args, given=()):
                    pooled, idx = _take(given, 0, outs[0]), _take(given, 1, outs[1])
                    WG.conv_forward(as_c(args[0]), as_c(args[1]), as_c(args[2]) if has_bias else None, pooled, idx,
                                    pad, dil, relu, k, s)
                    return pooled, idx
                return _label(conv_pool_gemm, ("conv2d+bias+relu+max_pool2d" if relu else "conv2d+bias+max_pool2d")
                              + " (per-image GEMM)")

            def conv_pool(args, given=()):
                pooled, idx = _take(given, 0, outs[0]), _take(given, 1, outs[1])
                W.conv2d_pool_forward(as_c(args[0]), as_c(args[1]), as_c(args[2]) if has_bias else None, pooled, idx,
                                      relu=relu, pool_k=k, pool_s=s, **kw)
                return pooled, idx
            return _label(conv_pool, "conv2d+bias+relu+max_pool2d" if relu else "conv2d+bias+max_pool2d")
        if pattern is Pattern.UNPOOL:
            relu, k, s = a["relu"], a["pool"][0], a["pool_stride"][0]

            def unpool(args, given=()):
                out = _take(given, 0, outs[0])
                pooled = as_c(args[2]) if relu else np.empty(args[0].shape, args[0].dtype)
                WB.maxpool_relu_backward(as_c(args[0]), as_c(args[1]), pooled, out, relu=relu, pool_k=k, pool_s=s)
                return (out,)
            return _label(unpool, "max_pool2d backward (argmax) + relu mask")
        if pattern is Pattern.CONV_POOL_BACKWARD:
            kw = _conv_kw(a)
            relu, k, s, has_dx = a["relu"], a["pool"][0], a["pool_stride"][0], a["input_grad"]
            x_shape = node.inputs[0].shape
            w_shape = outs[1].shape if has_dx else outs[0].shape
            if _by_gemm(a, x_shape, w_shape, backward=True):
                pad, dil = W._pair(a["padding"]), W._pair(a["dilation"])

                def conv_pool_backward_gemm(args, given=()):
                    x, w, gm, idx, dx, dw, db, res = _conv_pool_backward_args(args, outs, has_dx, given)
                    aux = as_c(args[-1]) if relu else _no_aux(gm.dtype)
                    WG.conv_backward(as_c(x), as_c(w), as_c(gm), WG.MODE_POOL, as_c(idx), aux, pad, dil, dx, dw, db,
                                     relu=relu, pool_k=k, pool_s=s)
                    return res
                return _label(conv_pool_backward_gemm, "unpool+relu+conv2d backward (dx, dw, db; per-image GEMM)"
                              if has_dx else "unpool+relu+conv2d backward (dw, db; per-image GEMM)")
            if has_dx and SPLIT_BACKWARD:
                dy_shape = (x_shape[0], w_shape[0]) + W.conv_out_hw(
                    x_shape[2], x_shape[3], w_shape[2], w_shape[3], W._pair(a["stride"]), W._pair(a["padding"]),
                    W._pair(a["dilation"]))

                # the direct kernels are faster unfused here (LeNet conv2 one-kernel backward with dx: 2.4-3.8 ms
                # against 2.2 ms as unpool, grad_input, grad_weight+bias)
                def conv_pool_backward_split(args, given=()):
                    x, w, gm, idx = args[:4]
                    dx, dw, db = res = _take_all(given, outs)
                    dy = np.empty(dy_shape, gm.dtype)
                    pooled = as_c(args[-1]) if relu else np.empty(gm.shape, gm.dtype)
                    WB.maxpool_relu_backward(as_c(gm), as_c(idx), pooled, dy, relu=relu, pool_k=k, pool_s=s)
                    WB.conv2d_grad_input(dy, as_c(w), dx, **kw)
                    WB.conv2d_grad_weight(as_c(x), dy, dw, db, **kw)
                    return res
                return _label(conv_pool_backward_split, "unpool+relu, conv2d_grad_input, conv2d_grad_weight+bias")

            def conv_pool_backward(args, given=()):
                x, w, gm, idx, dx, dw, db, res = _conv_pool_backward_args(args, outs, has_dx, given)
                pooled = as_c(args[-1]) if relu else np.empty(gm.shape, gm.dtype)
                WB.conv2d_pool_backward(as_c(x), as_c(w), as_c(gm), as_c(idx), pooled, dx, dw, db, relu=relu, pool_k=k,
                                        pool_s=s, **kw)
                return res
            return _label(conv_pool_backward, "unpool+relu+conv2d backward (dw, db)")
        if pattern is Pattern.GRAD_WEIGHT_BIAS:
            kw = _conv_kw(a)
            x_shape, w_shape = node.inputs[0].shape, outs[0].shape
            if _by_gemm(a, x_shape, w_shape, backward=True):
                return _gemm_grads(a, outs, x_shape, w_shape, "conv2d_grad_weight+bias (per-image GEMM)",
                                   g_at=1, x_at=0, dw=True, db=True)

            def grad_wb(args, given=()):
                dw, db = _take(given, 0, outs[0]), _take(given, 1, outs[1])
                WB.conv2d_grad_weight(as_c(args[0]), as_c(args[1]), dw, db, **kw)
                return dw, db
            return _label(grad_wb, "conv2d_grad_weight+bias")
        return None
    name = node.op.name
    out = node.outputs[0]
    if out.type.dtype.np not in (np.float32, np.float64):
        return None
    if name == "conv2d" and _by_gemm(a, node.inputs[0].shape, node.inputs[1].shape):
        pad, dil = W._pair(a["padding"]), W._pair(a["dilation"])

        def conv_gemm(args, given=()):
            o = _take(given, 0, out)
            WG.conv_forward(as_c(args[0]), as_c(args[1]), None, o, _NO_IDX, pad, dil, False, 0, 1)
            return (o,)
        return _label(conv_gemm, "conv2d (per-image GEMM)")
    if name == "conv2d_grad_input" and _by_gemm(a, out.shape, node.inputs[1].shape, backward=True):
        return _gemm_grads(a, node.outputs, out.shape, node.inputs[1].shape, "conv2d_grad_input (per-image GEMM)",
                           g_at=0, w_at=1, dx=True)
    if name == "conv2d_grad_weight" and _by_gemm(a, node.inputs[0].shape, out.shape, backward=True):
        return _gemm_grads(a, node.outputs, node.inputs[0].shape, out.shape, "conv2d_grad_weight (per-image GEMM)",
                           g_at=1, x_at=0, dw=True)
    if name == "conv2d":
        kw = _conv_kw(a)

        def conv(args, given=()):
            o = _take(given, 0, out)
            W.conv2d_forward(as_c(args[0]), as_c(args[1]), None, o, **kw)
            return (o,)
        return _label(conv, name)
    if name == "conv2d_grad_input":
        kw = _conv_kw(a)

        def grad_input(args, given=()):
            o = _take(given, 0, out)
            WB.conv2d_grad_input(as_c(args[0]), as_c(args[1]), o, **kw)
            return (o,)
        return _label(grad_input, name)
    if name == "conv2d_grad_weight":
        kw = _conv_kw(a)

        def grad_weight(args, given=()):
            o = _take(given, 0, out)
            WB.conv2d_grad_weight(as_c(args[0]), as_c(args[1]), o, None, **kw)
            return (o,)
        return _label(grad_weight, name)
    pool = dict(kernel=a.get("kernel"), stride=a.get("stride"), padding=a.get("padding"))
    if name == "max_pool2d":
        def max_pool(args, given=()):
            o = _take(given, 0, out)
            W.max_pool2d_forward(as_c(args[0]), o, dilation=a["dilation"], ceil_mode=a["ceil_mode"], **pool)
            return (o,)
        return _label(max_pool, name)
    if name == "max_pool2d_grad":
        def max_pool_grad(args, given=()):
            o = _take(given, 0, out)
            W.max_pool2d_backward(as_c(args[0]), as_c(args[1]), o, dilation=a["dilation"], ceil_mode=a["ceil_mode"],
                                  **pool)
            return (o,)
        return _label(max_pool_grad, name)
    if name == "avg_pool2d":
        def avg_pool(args, given=()):
            o = _take(given, 0, out)
            W.avg_pool2d_forward(as_c(args[0]), o, ceil_mode=a["ceil_mode"],
                                 count_include_pad=a["count_include_pad"], **pool)
            return (o,)
        return _label(avg_pool, name) if not a.get("ceil_mode") else None
    if name == "avg_pool2d_grad":
        def avg_pool_grad(args, given=()):
            o = _take(given, 0, out)
            W.avg_pool2d_backward(as_c(args[0]), o, ceil_mode=a["ceil_mode"],
                                  count_include_pad=a["count_include_pad"], **pool)
            return (o,)
        return _label(avg_pool_grad, name) if not a.get("ceil_mode") else None
    if name == "matmul":
        m, k = node.inputs[0].shape[-2:]
        flops = 2.0 * out.type.numel * k
        nthreads = blas.threads_for(flops)

        def matmul(args, given=()):
            o = _take(given, 0, out)
            blas.set_threads(nthreads)
            np.matmul(args[0], args[1], out=o)
            return (o,)
        return _label(matmul, "matmul (BLAS)")
    return None


def _label(fn, label):
    fn.label = label
    fn.writes_into = True  # called as fn(args, given): writes its results into the runtime's given arrays
    return fn
