"""CPU steps for window ops: each primitive window node, and each pattern `fuse_window` forms, becomes a
call into the Numba kernel library (cpu_window, cpu_window_bwd) writing preallocated outputs.

Also matmul through BLAS (`np.matmul` into a preallocated output).
"""

from __future__ import annotations

import numpy as np

from ..ir import Node
from . import blas
from . import cpu_window as W
from . import cpu_window_bwd as WB


def as_c(a):
    """`a` itself when C-contiguous, else a C-contiguous copy (kernels index flat memory)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _conv_kw(a):
    return dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"])


def _empty(v):
    return np.empty(v.type.shape, v.type.dtype.np)


def window_step(node: Node):
    """A step for `node`, or None when it is not a window node this backend runs natively."""
    a = node.attrs
    if node.body is not None:
        pattern = a.get("pattern")
        outs = node.outputs
        if pattern == "conv_pool":
            kw = _conv_kw(a)
            relu, k, s, has_bias = a["relu"], a["pool"], a["pool_stride"], a["bias"]

            def conv_pool(args):
                pooled, idx = _empty(outs[0]), _empty(outs[1])
                W.conv2d_pool_forward(as_c(args[0]), as_c(args[1]), as_c(args[2]) if has_bias else None, pooled, idx,
                                      relu=relu, pool_k=k, pool_s=s, **kw)
                return pooled, idx
            return _label(conv_pool, "conv2d+bias+relu+max_pool2d" if relu else "conv2d+bias+max_pool2d")
        if pattern == "unpool":
            relu, k, s = a["relu"], a["pool"], a["pool_stride"]

            def unpool(args):
                out = np.empty(outs[0].type.shape, outs[0].type.dtype.np)
                pooled = as_c(args[2]) if relu else np.empty(args[0].shape, args[0].dtype)
                WB.maxpool_relu_backward(as_c(args[0]), as_c(args[1]), pooled, out, relu=relu, pool_k=k, pool_s=s)
                return (out,)
            return _label(unpool, "max_pool2d backward (argmax) + relu mask")
        if pattern == "conv_pool_backward":
            kw = _conv_kw(a)
            relu, k, s, has_dx = a["relu"], a["pool"], a["pool_stride"], a["input_grad"]

            def conv_pool_backward(args):
                res = [_empty(v) for v in outs]
                if has_dx:
                    x, w, gm, idx = args[:4]
                    dx, dw, db = res
                else:
                    (x, gm, idx), w = args[:3], None
                    dx, (dw, db) = None, res
                pooled = as_c(args[-1]) if relu else np.empty(gm.shape, gm.dtype)
                if w is None:  # no input gradient wanted: the weight's values are never read
                    w = np.empty(dw.shape, dw.dtype)
                WB.conv2d_pool_backward(as_c(x), as_c(w), as_c(gm), as_c(idx), pooled, dx, dw, db, relu=relu, pool_k=k,
                                        pool_s=s, **kw)
                return res
            return _label(conv_pool_backward, "unpool+relu+conv2d backward (dx, dw, db)")
        if pattern == "grad_weight_bias":
            kw = _conv_kw(a)

            def grad_wb(args):
                dw, db = _empty(outs[0]), _empty(outs[1])
                WB.conv2d_grad_weight(as_c(args[0]), as_c(args[1]), dw, db, **kw)
                return dw, db
            return _label(grad_wb, "conv2d_grad_weight+bias")
        return None
    name = node.op.name
    out = node.outputs[0]
    if out.type.dtype.np not in (np.float32, np.float64):
        return None
    if name == "conv2d":
        kw = _conv_kw(a)

        def conv(args):
            o = _empty(out)
            W.conv2d_forward(as_c(args[0]), as_c(args[1]), None, o, **kw)
            return (o,)
        return _label(conv, name)
    if name == "conv2d_grad_input":
        kw = _conv_kw(a)

        def grad_input(args):
            o = _empty(out)
            WB.conv2d_grad_input(as_c(args[0]), as_c(args[1]), o, **kw)
            return (o,)
        return _label(grad_input, name)
    if name == "conv2d_grad_weight":
        kw = _conv_kw(a)

        def grad_weight(args):
            o = _empty(out)
            WB.conv2d_grad_weight(as_c(args[0]), as_c(args[1]), o, None, **kw)
            return (o,)
        return _label(grad_weight, name)
    pool = dict(kernel=a.get("kernel"), stride=a.get("stride"), padding=a.get("padding"))
    if name == "max_pool2d":
        def max_pool(args):
            o = _empty(out)
            W.max_pool2d_forward(as_c(args[0]), o, dilation=a["dilation"], ceil_mode=a["ceil_mode"], **pool)
            return (o,)
        return _label(max_pool, name)
    if name == "max_pool2d_grad":
        def max_pool_grad(args):
            o = _empty(out)
            W.max_pool2d_backward(as_c(args[0]), as_c(args[1]), o, dilation=a["dilation"], ceil_mode=a["ceil_mode"],
                                  **pool)
            return (o,)
        return _label(max_pool_grad, name)
    if name == "avg_pool2d":
        def avg_pool(args):
            o = _empty(out)
            W.avg_pool2d_forward(as_c(args[0]), o, ceil_mode=a["ceil_mode"],
                                 count_include_pad=a["count_include_pad"], **pool)
            return (o,)
        return _label(avg_pool, name) if not a.get("ceil_mode") else None
    if name == "avg_pool2d_grad":
        def avg_pool_grad(args):
            o = _empty(out)
            W.avg_pool2d_backward(as_c(args[0]), o, ceil_mode=a["ceil_mode"],
                                  count_include_pad=a["count_include_pad"], **pool)
            return (o,)
        return _label(avg_pool_grad, name) if not a.get("ceil_mode") else None
    if name == "matmul":
        m, k = node.inputs[0].shape[-2:]
        flops = 2.0 * out.type.numel * k
        nthreads = blas.threads_for(flops)

        def matmul(args):
            o = _empty(out)
            blas.set_threads(nthreads)
            np.matmul(args[0], args[1], out=o)
            return (o,)
        return _label(matmul, "matmul (BLAS)")
    return None


def _label(fn, label):
    fn.label = label
    return fn
