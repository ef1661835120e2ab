"""Eager kernels: the CPU backend's shape-generic Numba kernels for the ops eager code spends its time in.

Eager tensors run each op's NumPy `ref` (ops.py), which for convolution and pooling builds im2col windows and
loops over taps in Python: a LeNet step spent ~90% of its time there (see benchmarks/RESULTS.md). The kernels
below call the window kernels the compiled path uses (window/: one compiled function per dtype serves every
shape, cached on disk by Numba like the rest of the package), choosing between the direct and the per-image GEMM
kernels as the compiled steps do (window/steps.py), and run matmuls with the backend's BLAS thread policy
(blas/control.py: OpenBLAS's threads and Numba's pool spin against each other on small machines).

`KERNELS` maps an op name to `kernel(arrays, attrs, out_type) -> array | None`; None means "not this case"
(float64, an empty or read-only array, an attribute the kernels do not take) and the caller runs the op's NumPy
`ref`, which stays the oracle. Every kernel returns a new array, never one of its inputs.

How they reach eager code: `tracejit.dispatch` asks the registry (compiler/backends: start_eager_kernels) the
first time an op that has one runs; the backend's `eager_kernels()` imports this module and calls `warm_up()`
(every kernel once on small shapes, each branch real calls take, checked against the refs), by default in a
background thread while the first steps go on with NumPy: importing tracejit and the first eager step wait for
no Numba import or compile (TRACEJIT_EAGER_KERNELS=sync waits instead, =off keeps NumPy throughout).
"""

from __future__ import annotations

import numba
import numpy as np

from ....ops import OPS
from .blas import control as blas
from .blas import segment as _gemm
from .window import backward as WB
from .window import conv as W
from .window import im2col as WG
from .window import pool as WP

F32 = np.dtype(np.float32)
_NO_IDX = np.zeros((1, 1, 1, 1), np.uint8)
_NO_AUX = np.zeros((1, 1, 1, 1), np.float32)


def _c(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _takes(*arrays) -> bool:
    """float32, nonempty and writable (a read-only array would make Numba compile another signature)."""
    for a in arrays:
        if a.dtype != F32 or not a.size or not a.flags.writeable:
            return False
    return True


def _conv_geometry(attrs):
    return tuple(attrs["stride"]), tuple(attrs["padding"]), tuple(attrs["dilation"]), int(attrs["groups"])


def conv2d(arrays, attrs, out_type):
    x, w = arrays
    if not _takes(x, w):
        return None
    st, pad, dil, groups = _conv_geometry(attrs)
    x, w = _c(x), _c(w)
    out = np.empty(out_type.shape, F32)
    if WG.prefer(x.shape, w.shape, st, pad, dil, groups):
        WG.conv_forward(x, w, None, out, _NO_IDX, pad, dil, False, 0, 1)
    else:
        W.conv2d_forward(x, w, None, out, st, pad, dil, groups)
    return out


def conv2d_grad_input(arrays, attrs, out_type):
    g, w = arrays
    if not _takes(g, w):
        return None
    st, pad, dil, groups = _conv_geometry(attrs)
    g, w = _c(g), _c(w)
    dx = np.empty(out_type.shape, F32)
    if WG.prefer(dx.shape, w.shape, st, pad, dil, groups, backward=True):
        # x is never read without dw: a placeholder of its shape
        WG.conv_backward(np.empty(dx.shape, F32), w, g, WG.MODE_PLAIN, _NO_IDX, _NO_AUX, pad, dil, dx, None, None)
    else:
        WB.conv2d_grad_input(g, w, dx, st, pad, dil, groups)
    return dx


def conv2d_grad_weight(arrays, attrs, out_type):
    x, g = arrays
    if not _takes(x, g):
        return None
    st, pad, dil, groups = _conv_geometry(attrs)
    x, g = _c(x), _c(g)
    dw = np.empty(out_type.shape, F32)
    if WG.prefer(x.shape, dw.shape, st, pad, dil, groups, backward=True):
        # w is never read without dx: a placeholder of its shape
        WG.conv_backward(x, np.empty(dw.shape, F32), g, WG.MODE_PLAIN, _NO_IDX, _NO_AUX, pad, dil, None, dw, None)
    else:
        WB.conv2d_grad_weight(x, g, dw, None, st, pad, dil, groups)
    return dw


def max_pool2d(arrays, attrs, out_type):
    (x,) = arrays
    if not _takes(x):
        return None
    out = np.empty(out_type.shape, F32)
    WP.max_pool2d_forward(
        _c(x),
        out,
        attrs["kernel"],
        attrs["stride"],
        attrs["padding"],
        attrs.get("dilation", (1, 1)),
        attrs.get("ceil_mode", False),
    )
    return out


def max_pool2d_grad(arrays, attrs, out_type):
    x, g = arrays
    if not _takes(x, g):
        return None
    dx = np.empty(out_type.shape, F32)
    WP.max_pool2d_backward(
        _c(x),
        _c(g),
        dx,
        attrs["kernel"],
        attrs["stride"],
        attrs["padding"],
        attrs.get("dilation", (1, 1)),
        attrs.get("ceil_mode", False),
    )
    return dx


def _avg_ok(attrs) -> bool:
    # the kernels clip ceil_mode's last windows differently: the compiled steps leave ceil_mode to NumPy too
    return not attrs.get("ceil_mode", False) and tuple(attrs.get("dilation", (1, 1))) == (1, 1)


def avg_pool2d(arrays, attrs, out_type):
    (x,) = arrays
    if not _takes(x) or not _avg_ok(attrs):
        return None
    out = np.empty(out_type.shape, F32)
    WP.avg_pool2d_forward(
        _c(x), out, attrs["kernel"], attrs["stride"], attrs["padding"], False, attrs.get("count_include_pad", True)
    )
    return out


def avg_pool2d_grad(arrays, attrs, out_type):
    (g,) = arrays
    if not _takes(g) or not _avg_ok(attrs):
        return None
    dx = np.empty(out_type.shape, F32)
    WP.avg_pool2d_backward(
        _c(g), dx, attrs["kernel"], attrs["stride"], attrs["padding"], False, attrs.get("count_include_pad", True)
    )
    return dx


def _gemm_layout(a: np.ndarray):
    """(1 when `a` is the transpose of a C-contiguous buffer, that buffer) or (0, a) for a C-contiguous a; None for
    other layouts. Numba then always sees C-contiguous 2-D buffers: one compiled signature."""
    if a.flags.c_contiguous:
        return 0, a
    if a.flags.f_contiguous:
        return 1, a.T
    return None


def matmul(arrays, attrs, out_type):
    """float32 2-D products of at least blas.SPLIT_GEMM_FLOPS: the compiled segments' GEMM (blas.segment), split
    over Numba's pool with one BLAS thread per block (tracejit's own float32 kernel where blas.calls picks it), so
    that OpenBLAS's threads never spin against the pool's. Other matmuls: NumPy's (the ref itself) under the
    backend's BLAS thread policy (one thread for small products; the window kernels leave BLAS at one)."""
    a, b = arrays
    if a.dtype != b.dtype or a.dtype.kind != "f":
        return None
    shape = out_type.shape
    flops = 2.0 * float(np.prod(shape, dtype=np.float64)) * a.shape[-1]
    if a.ndim == 2 and b.ndim == 2 and a.dtype == F32 and flops >= blas.SPLIT_GEMM_FLOPS:
        la, lb = _gemm_layout(a), _gemm_layout(b)
        if la is not None and lb is not None and a.flags.writeable and b.flags.writeable:
            (ta, abuf), (tb, bbuf) = la, lb
            m, k = a.shape
            n = b.shape[1]
            out = np.empty((m, n), F32)
            blas.set_threads(1)
            _gemm.gemm_nt_par(ta, tb, m, n, k, abuf, abuf.shape[1], bbuf, bbuf.shape[1], out, numba.get_num_threads())
            return out
    blas.set_threads(blas.threads_for(flops))
    return np.matmul(a, b)


# ------------------------------------------------------------------------------------ optimizer updates
# PyTorch's foreach optimizers, for eager steps: one pass over each parameter instead of ~5 (SGD) or ~12 (Adam)
# eager ops, each an array temporary. They compute exactly what the ops of tracejit/optim compute, operation by
# operation in float32 (no fastmath: no FMA contraction, no reassociation), so eager training gives the same bits
# with or without them (tests/compiler/test_eager_kernels.py); the scalars arrive as the ops would round them.
_plain = numba.njit(cache=True, error_model="numpy")


@_plain
def _sgd_kernel(p, g, buf, has_buf, lr, momentum, alpha, damp, new_p, new_buf):
    for i in range(p.size):
        d = g[i]
        if has_buf:
            b = buf[i] * momentum
            d = b + (g[i] * alpha if damp else g[i])
            new_buf[i] = d
        p_i = p[i]
        new_p[i] = p_i - d * lr


def sgd_update(p, g, buf, lr, momentum, dampening):
    """One SGD step of a float32 parameter (tracejit.optim.SGD without weight decay, Nesterov or maximize):
    returns (new p, new momentum buffer or None). `buf` None: the first step (the buffer is the gradient; with
    momentum 0 there is none). lr is the group's float32 tensor value, momentum/dampening Python floats."""
    p, g = _c(p), _c(g)
    new_p = np.empty_like(p)
    if momentum == 0 or buf is None:  # p -= grad * lr; with momentum the first buffer is grad.clone()
        _sgd_kernel(
            p.reshape(-1),
            g.reshape(-1),
            g.reshape(-1),
            False,
            np.float32(lr),
            np.float32(0),
            np.float32(1),
            False,
            new_p.reshape(-1),
            new_p.reshape(-1),
        )
        return new_p, (None if momentum == 0 else g.copy())
    new_buf = np.empty_like(p)
    alpha = 1 - dampening
    _sgd_kernel(
        p.reshape(-1),
        g.reshape(-1),
        _c(buf).reshape(-1),
        True,
        np.float32(lr),
        np.float32(momentum),
        np.float32(alpha),
        alpha != 1,
        new_p.reshape(-1),
        new_buf.reshape(-1),
    )
    return new_p, new_buf


@_plain
def _adam_kernel(p, g, m, v, w1, beta2, w2, inv_bc2, eps, neg_step, new_p, new_m, new_v):
    for i in range(p.size):
        gi = g[i]
        mi = m[i] + (gi - m[i]) * w1  # exp_avg.lerp_(grad, 1 - beta1)
        vi = v[i] * beta2  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        vi = vi + gi * gi * w2
        d = np.sqrt(vi) / inv_bc2  # (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        d = d + eps
        new_m[i] = mi
        new_v[i] = vi
        new_p[i] = p[i] + mi / d * neg_step  # p.addcdiv_(exp_avg, denom, value=-step_size)


def adam_update(p, g, m, v, beta1, beta2, eps, bc2_sqrt, step_size):
    """One Adam step of a float32 parameter (tracejit.optim.Adam without weight decay, amsgrad or maximize) from
    its moments m, v: returns (new p, new m, new v). beta1/beta2/eps are the group's Python floats; bc2_sqrt and
    step_size the float64 scalars the optimizer computed (bias corrections), rounded to float32 as its ops do."""
    p, g, m, v = _c(p), _c(g), _c(m), _c(v)
    new_p, new_m, new_v = np.empty_like(p), np.empty_like(p), np.empty_like(p)
    _adam_kernel(
        p.reshape(-1),
        g.reshape(-1),
        m.reshape(-1),
        v.reshape(-1),
        np.float32(1 - beta1),
        np.float32(beta2),
        np.float32(1 - beta2),
        np.float32(bc2_sqrt),
        np.float32(eps),
        np.float32(-step_size),
        new_p.reshape(-1),
        new_m.reshape(-1),
        new_v.reshape(-1),
    )
    return new_p, new_m, new_v


KERNELS = {
    "conv2d": conv2d,
    "conv2d_grad_input": conv2d_grad_input,
    "conv2d_grad_weight": conv2d_grad_weight,
    "max_pool2d": max_pool2d,
    "max_pool2d_grad": max_pool2d_grad,
    "avg_pool2d": avg_pool2d,
    "avg_pool2d_grad": avg_pool2d_grad,
    "matmul": matmul,
    "sgd_update": sgd_update,
    "adam_update": adam_update,
}

# Small cases that take every branch the kernels choose between (direct or per-image GEMM conv, strided,
# grouped, dilated, cropped by padding; max/avg pooling with padding, dilation, ceil_mode): x shape, w shape,
# stride, padding, dilation, groups.
_CONV_CASES = [
    ((2, 3, 9, 9), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1),  # per-image GEMM (short runs)
    ((1, 2, 48, 48), (2, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1),  # direct (long runs)
    ((2, 4, 11, 10), (4, 2, 3, 3), (2, 2), (1, 2), (2, 1), 2),  # strided, grouped, dilated
    ((1, 2, 40, 40), (2, 1, 5, 5), (1, 1), (2, 2), (1, 1), 2),
]  # grouped stride 1
_POOL_CASES = [
    ("max_pool2d", dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False)),
    ("max_pool2d", dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=True)),
    ("avg_pool2d", dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False, count_include_pad=True)),
    ("avg_pool2d", dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=False, count_include_pad=False)),
]


class _Type:  # what the kernels read of an out_type
    def __init__(self, shape):
        self.shape = tuple(shape)


def _check(name, got, arrays, attrs):
    want = OPS[name].ref(*arrays, **attrs)
    if got is None or got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise RuntimeError(
            f"eager kernel {name} disagrees with the NumPy reference on shapes {[a.shape for a in arrays]} {attrs}"
        )
    return got


def warm_up() -> None:
    """Run every kernel once on small shapes, through each branch real calls take, so that Numba loads (or
    compiles and caches) every function they call; each result is checked against the op's NumPy ref (a kernel
    that disagrees raises, and eager ops stay on NumPy)."""
    rng = np.random.default_rng(0)
    for xs, ws, st, pad, dil, groups in _CONV_CASES:
        x, w = rng.standard_normal(xs, dtype=F32), rng.standard_normal(ws, dtype=F32)
        attrs = dict(stride=st, padding=pad, dilation=dil, groups=groups)
        y = _check("conv2d", conv2d([x, w], attrs, _Type(OPS["conv2d"].ref(x, w, **attrs).shape)), [x, w], attrs)
        g = rng.standard_normal(y.shape, dtype=F32)
        _check("conv2d_grad_input", conv2d_grad_input([g, w], attrs, _Type(xs)), [g, w], dict(attrs, input_shape=xs))
        _check("conv2d_grad_weight", conv2d_grad_weight([x, g], attrs, _Type(ws)), [x, g], dict(attrs, weight_shape=ws))
    x = rng.standard_normal((2, 3, 9, 8), dtype=F32)
    for name, attrs in _POOL_CASES:
        y = _check(name, KERNELS[name]([x], attrs, _Type(OPS[name].ref(x, **attrs).shape)), [x], attrs)
        g = rng.standard_normal(y.shape, dtype=F32)
        if name == "max_pool2d":
            _check("max_pool2d_grad", max_pool2d_grad([x, g], attrs, _Type(x.shape)), [x, g], attrs)
        else:
            _check(
                "avg_pool2d_grad", avg_pool2d_grad([g], attrs, _Type(x.shape)), [g], dict(attrs, input_shape=x.shape)
            )
    a, b = rng.standard_normal((2, 5, 3), dtype=F32), rng.standard_normal((2, 3, 4), dtype=F32)
    _check("matmul", matmul([a, b], {}, _Type((2, 5, 4))), [a, b], {})
    a, b = rng.standard_normal((96, 128), dtype=F32), rng.standard_normal((256, 128), dtype=F32)
    _check("matmul", matmul([a, b.T], {}, _Type((96, 256))), [a, b.T], {})  # split over the pool
    _check("matmul", matmul([a.T.copy().T, b.T], {}, _Type((96, 256))), [a, b.T], {})
