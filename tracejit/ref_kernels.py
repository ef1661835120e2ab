"""NumPy reference kernels for the op table's larger primitives (window, index, random ops).

These are the `ref` functions of records in `ops.py`; they define the exact semantics every backend
is tested against.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _windows(xp, kh, kw, stride, dilation, oh, ow):
    """[N, C, oh, ow, kh, kw] strided view of padded input `xp`."""
    ekh, ekw = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    v = sliding_window_view(xp, (ekh, ekw), axis=(2, 3))
    v = v[:, :, : stride[0] * (oh - 1) + 1: stride[0], : stride[1] * (ow - 1) + 1: stride[1]]
    return v[..., :: dilation[0], :: dilation[1]]


def _pad_hw(x, ph, pw, value=0.0, extra_h=0, extra_w=0):
    if ph == pw == extra_h == extra_w == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=value)


def _conv_hw(h, w, kh, kw, stride, padding, dilation):
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def _im2col(x, kh, kw, stride, padding, dilation, groups):
    """cols[g]: [N*oh*ow, C/g*kh*kw] per group."""
    n, c, h, w = x.shape
    oh, ow = _conv_hw(h, w, kh, kw, stride, padding, dilation)
    win = _windows(_pad_hw(x, *padding), kh, kw, stride, dilation, oh, ow)  # N C oh ow kh kw
    cg = c // groups
    cols = []
    for gi in range(groups):
        part = win[:, gi * cg:(gi + 1) * cg]
        cols.append(np.ascontiguousarray(part.transpose(0, 2, 3, 1, 4, 5)).reshape(n * oh * ow, cg * kh * kw))
    return cols, oh, ow


def conv2d(x, w, stride, padding, dilation, groups):
    n = x.shape[0]
    o, cg, kh, kw = w.shape
    cols, oh, ow = _im2col(x, kh, kw, stride, padding, dilation, groups)
    og = o // groups
    out = np.empty((n, oh, ow, o), dtype=x.dtype)
    for gi in range(groups):
        wg = w[gi * og:(gi + 1) * og].reshape(og, -1)
        out[..., gi * og:(gi + 1) * og] = (cols[gi] @ wg.T).reshape(n, oh, ow, og)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def conv2d_grad_input(g, w, input_shape, stride, padding, dilation, groups):
    n, c, h, wd = input_shape
    o, cg, kh, kw = w.shape
    _, _, oh, ow = g.shape
    og = o // groups
    gr = g.transpose(0, 2, 3, 1).reshape(n * oh * ow, o)
    hp, wp = h + 2 * padding[0], wd + 2 * padding[1]
    dxp = np.zeros((n, c, hp, wp), dtype=g.dtype)
    for gi in range(groups):
        dcols = gr[:, gi * og:(gi + 1) * og] @ w[gi * og:(gi + 1) * og].reshape(og, -1)
        dcols = dcols.reshape(n, oh, ow, cg, kh, kw).transpose(0, 3, 4, 5, 1, 2)  # n cg kh kw oh ow
        for i in range(kh):
            for j in range(kw):
                hi, wj = i * dilation[0], j * dilation[1]
                dxp[:, gi * cg:(gi + 1) * cg,
                    hi: hi + stride[0] * (oh - 1) + 1: stride[0],
                    wj: wj + stride[1] * (ow - 1) + 1: stride[1]] += dcols[:, :, i, j]
    return np.ascontiguousarray(dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + wd])


def conv2d_grad_weight(x, g, weight_shape, stride, padding, dilation, groups):
    o, cg, kh, kw = weight_shape
    og = o // groups
    cols, oh, ow = _im2col(x, kh, kw, stride, padding, dilation, groups)
    gr = g.transpose(0, 2, 3, 1).reshape(-1, o)
    dw = np.empty(weight_shape, dtype=g.dtype)
    for gi in range(groups):
        dw[gi * og:(gi + 1) * og] = (gr[:, gi * og:(gi + 1) * og].T @ cols[gi]).reshape(og, cg, kh, kw)
    return dw


def pool_out_hw(hw, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    out = []
    for size, k, s, p, d in zip(hw, kernel, stride, padding, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + p:  # the last window must start inside the input or left pad
            o -= 1
        out.append(o)
    return tuple(out)


def _pool_windows(x, kernel, stride, padding, dilation, ceil_mode, value):
    oh, ow = pool_out_hw(x.shape[2:], kernel, stride, padding, dilation, ceil_mode)
    need_h = (oh - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
    need_w = (ow - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
    extra_h = max(0, need_h - (x.shape[2] + 2 * padding[0]))
    extra_w = max(0, need_w - (x.shape[3] + 2 * padding[1]))
    xp = _pad_hw(x, padding[0], padding[1], value, extra_h, extra_w)
    return _windows(xp, kernel[0], kernel[1], stride, dilation, oh, ow), oh, ow, xp.shape


def max_pool2d(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    win, *_ = _pool_windows(x, kernel, stride, padding, dilation, ceil_mode, -np.inf)
    return np.ascontiguousarray(win.max(axis=(4, 5)))


def max_pool2d_grad(x, g, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    win, oh, ow, pshape = _pool_windows(x, kernel, stride, padding, dilation, ceil_mode, -np.inf)
    n, c = x.shape[:2]
    arg = win.reshape(n, c, oh, ow, kernel[0] * kernel[1]).argmax(axis=-1)  # first maximum, as PyTorch
    dxp = np.zeros(pshape, dtype=g.dtype)
    kh, kw = kernel
    for i in range(kh):
        for j in range(kw):
            hi, wj = i * dilation[0], j * dilation[1]
            dxp[:, :, hi: hi + stride[0] * (oh - 1) + 1: stride[0],
                wj: wj + stride[1] * (ow - 1) + 1: stride[1]] += np.where(arg == i * kw + j, g, 0)
    h, w = x.shape[2:]
    return np.ascontiguousarray(dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w])


def max_pool2d_argmax(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    win, oh, ow, _ = _pool_windows(x, kernel, stride, padding, dilation, ceil_mode, -np.inf)
    n, c = x.shape[:2]
    return win.reshape(n, c, oh, ow, kernel[0] * kernel[1]).argmax(axis=-1).astype(np.uint8)


def max_pool2d_grad_argmax(g, idx, input_shape, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    n, c, h, w = input_shape
    oh, ow = g.shape[2:]
    hp = max(h + 2 * padding[0], (oh - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1)
    wp = max(w + 2 * padding[1], (ow - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1)
    dxp = np.zeros((n, c, hp, wp), dtype=g.dtype)
    kh, kw = kernel
    for i in range(kh):
        for j in range(kw):
            hi, wj = i * dilation[0], j * dilation[1]
            dxp[:, :, hi: hi + stride[0] * (oh - 1) + 1: stride[0],
                wj: wj + stride[1] * (ow - 1) + 1: stride[1]] += np.where(idx == i * kw + j, g, 0)
    return np.ascontiguousarray(dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w])


def _avg_divisor(shape, kernel, stride, padding, ceil_mode, count_include_pad, dtype):
    """Per-output-position divisor, as PyTorch computes it (windows clipped to input + padding)."""
    h, w = shape[2:]
    oh, ow = pool_out_hw((h, w), kernel, stride, padding, (1, 1), ceil_mode)
    divs = []
    for size, o, k, s, p in ((h, oh, kernel[0], stride[0], padding[0]), (w, ow, kernel[1], stride[1], padding[1])):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, size + p)
        if count_include_pad:
            d = end - start
        else:
            d = np.minimum(end, size) - np.maximum(start, 0)
        divs.append(d)
    return (divs[0][:, None] * divs[1][None, :]).astype(dtype)


def avg_pool2d(x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False, count_include_pad=True):
    win, *_ = _pool_windows(x, kernel, stride, padding, (1, 1), ceil_mode, 0.0)
    s = win.sum(axis=(4, 5), dtype=x.dtype)
    return np.ascontiguousarray(s / _avg_divisor(x.shape, kernel, stride, padding, ceil_mode,
                                                 count_include_pad, x.dtype))


def avg_pool2d_grad(g, input_shape, kernel, stride, padding, dilation=(1, 1), ceil_mode=False,
                    count_include_pad=True):
    n, c, h, w = input_shape
    oh, ow = g.shape[2:]
    gd = g / _avg_divisor(input_shape, kernel, stride, padding, ceil_mode, count_include_pad, g.dtype)
    hp = max(h + 2 * padding[0], (oh - 1) * stride[0] + kernel[0])
    wp = max(w + 2 * padding[1], (ow - 1) * stride[1] + kernel[1])
    dxp = np.zeros((n, c, hp, wp), dtype=g.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            dxp[:, :, i: i + stride[0] * (oh - 1) + 1: stride[0], j: j + stride[1] * (ow - 1) + 1: stride[1]] += gd
    return np.ascontiguousarray(dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w])


def scatter_add(idx, src, axis, shape):
    out = np.zeros(shape, dtype=src.dtype)
    index = list(np.indices(idx.shape, sparse=True))
    index[axis] = idx
    np.add.at(out, tuple(index), src)
    return out


# Counter-based generator: value i of a draw is a pure function of (seed, offset + i), so eager, traced and
# every backend produce the same bits, and the state is just two int64 numbers.
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_M4 = np.uint64(0xD1B54A32D192ED03)


def mix64(z):
    """splitmix64's finalizer on a uint64 array."""
    z = (z ^ (z >> np.uint64(30))) * _M2
    z = (z ^ (z >> np.uint64(27))) * _M3
    return z ^ (z >> np.uint64(31))


def uniform(state, shape, dtype):
    n = int(np.prod(shape, dtype=np.int64))
    seed = np.uint64(int(state[0]) % 2**64)
    counter = np.arange(n, dtype=np.uint64) + np.uint64(int(state[1]))
    with np.errstate(over="ignore"):
        z = mix64(counter * _M4 + mix64(np.asarray(seed * _M1 + _M1, dtype=np.uint64)))
    bits = (z >> np.uint64(40)).astype(np.float64) * (1.0 / (1 << 24))  # 24 random bits, exact in float32
    return bits.astype(dtype.np).reshape(shape)
