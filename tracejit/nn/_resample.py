"""interpolate (and the deprecated upsample*): nearest, nearest-exact, linear/bilinear/trilinear and area
resampling of [N, C, *spatial] inputs, with PyTorch's argument rules and index arithmetic.

Each spatial axis is resampled on its own. Its source indices and linear weights are computed once, in NumPy,
with PyTorch's formulas in PyTorch's precision (float32 for float32 inputs), so the same pixels are picked;
the resampling itself is gathers and multiply-adds of existing primitives, which trace and differentiate like
any composite. Nearest upscaling by an integer factor becomes a broadcast, downscaling a strided slice.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import dtypes as D
from .._tensor import Tensor
from ..errors import OpError, OpTypeError
from ..factories import tensor
from ..indexing import take

_LINEAR = {"linear": 3, "bilinear": 4, "trilinear": 5}  # mode -> the input rank it needs
_MODES = "nearest | linear | bilinear | bicubic | trilinear | lanczos | area | nearest-exact"


def _opmath(dtype) -> type:
    """The type PyTorch computes source positions in: double for float64 inputs, float otherwise."""
    return np.float64 if dtype is D.float64 else np.float32


def _scale(in_size: int, out_size: int, align_corners: bool, scale: float | None, mt) -> np.floating:
    """area_pixel_compute_scale: input pixels per output pixel."""
    if align_corners:
        return mt(in_size - 1) / mt(out_size - 1) if out_size > 1 else mt(0)
    if scale is not None and scale > 0:
        return mt(1.0 / scale)
    return mt(in_size) / mt(out_size)


def _nearest_indices(in_size: int, out_size: int, scale: float | None, exact: bool, mt,
                     legacy: bool = False) -> np.ndarray:
    """Source index of each output position. `legacy`: PyTorch's 2-D nearest kernel (nearest_idx), which
    copies when the size is kept, halves the index when it doubles, and computes in float32 otherwise."""
    if legacy:
        if out_size == in_size:
            return np.arange(out_size)
        if out_size == 2 * in_size:
            return np.arange(out_size) >> 1
        mt = np.float32
    s = _scale(in_size, out_size, False, scale, mt)
    i = np.arange(out_size).astype(mt)
    if exact:
        src = np.maximum(s * (i + mt(0.5)) - mt(0.5), mt(0)) + mt(0.5)
    else:
        src = s * i
    # PyTorch floors with floorf: the position is rounded to float first
    return np.minimum(np.floor(src.astype(np.float32)).astype(np.int64), in_size - 1)


def _linear_indices(in_size: int, out_size: int, align_corners: bool, scale: float | None, mt):
    """(index0, index1, lambda0, lambda1) as compute_source_index_and_lambda; None when out == in (a copy)."""
    if in_size == out_size:
        return None
    s = _scale(in_size, out_size, align_corners, scale, mt)
    i = np.arange(out_size).astype(mt)
    src = s * i if align_corners else np.maximum(s * (i + mt(0.5)) - mt(0.5), mt(0))
    i0 = np.minimum(np.floor(src.astype(np.float32)).astype(np.int64), in_size - 1)
    lam1 = np.minimum(np.maximum(src - i0.astype(mt), mt(0)), mt(1))
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (mt(1) - lam1).astype(mt), lam1.astype(mt)


def _index(idx: np.ndarray) -> Tensor:
    return tensor(np.ascontiguousarray(idx, dtype=np.int64))


def _weights(w: np.ndarray, axis: int, ndim: int, dtype) -> Tensor:
    return tensor(w.reshape((-1,) + (1,) * (ndim - 1 - axis)), dtype=dtype)


def _pick(x: Tensor, idx: np.ndarray, axis: int) -> Tensor:
    """x with `axis` replaced by x[..., idx, ...]: a broadcast, a strided slice or a gather."""
    n, m = x.shape[axis], len(idx)
    steps = np.arange(m)
    if m == n and np.array_equal(idx, steps):
        return x
    if m % n == 0 and np.array_equal(idx, steps // (m // n)):
        shape = tuple(x.shape)
        wide = x.unsqueeze(axis + 1).expand(shape[:axis + 1] + (m // n,) + shape[axis + 1:])
        return wide.reshape(shape[:axis] + (m,) + shape[axis + 1:])
    if m > 1 and idx[0] == 0 and idx[1] >= 1 and np.array_equal(idx, steps * idx[1]):
        starts, stops, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
        stops[axis], step[axis] = int(idx[-1]) + 1, int(idx[1])
        return x._slice(tuple(starts), tuple(stops), tuple(step))
    return take(x, _index(idx), axis)


def _resample_axis(x: Tensor, axis: int, out_size: int, mode: str, align_corners: bool,
                   scale: float | None) -> Tensor:
    in_size = x.shape[axis]
    mt = _opmath(x.dtype)
    if mode in ("nearest", "nearest-exact"):
        legacy = mode == "nearest" and x.ndim == 4
        return _pick(x, _nearest_indices(in_size, out_size, scale, mode == "nearest-exact", mt, legacy), axis)
    found = _linear_indices(in_size, out_size, align_corners, scale, mt)
    if found is None:
        return x
    i0, i1, w0, w1 = found
    out = _pick(x, i0, axis) * _weights(w0, axis, x.ndim, x.dtype)
    if np.any(w1 != 0):
        out = out + _pick(x, i1, axis) * _weights(w1, axis, x.ndim, x.dtype)
    return out


def _as_list(value, dim: int, what: str, input: Tensor) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != dim:
            if what == "size":
                raise ValueError(
                    f"Input and output must have the same number of spatial dimensions, but got input with "
                    f"spatial dimensions of {list(input.shape[2:])} and output size of {value}. Please provide "
                    f"input tensor in (N, C, d1, d2, ...,dK) format and output size in (o1, o2, ...,oK) format.")
            raise ValueError(
                f"Input and scale_factor must have the same number of spatial dimensions, but got input with "
                f"spatial dimensions of {list(input.shape[2:])} and scale_factor of shape {value}. Please "
                f"provide input tensor in (N, C, d1, d2, ...,dK) format and scale_factor in (s1, s2, ...,sK) "
                f"format.")
        return list(value)
    return [value] * dim


def _is_integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None, antialias: bool = False) -> Tensor:
    """Resample the spatial dims of an [N, C, L], [N, C, H, W] or [N, C, D, H, W] input to `size` (or by
    `scale_factor`), as torch.nn.functional.interpolate.

    >>> F.interpolate(tracejit.tensor([[[1.0, 2.0]]]), scale_factor=2, mode="linear").tolist()
    [[[1.0, 1.25, 1.75, 2.0]]]
    """
    if mode in ("nearest", "area", "nearest-exact"):
        if align_corners is not None:
            raise ValueError("align_corners option can only be set with the interpolating modes: "
                             "linear | bilinear | bicubic | trilinear")
    elif align_corners is None:
        align_corners = False
    dim = input.ndim - 2
    if size is not None and scale_factor is not None:
        raise ValueError("only one of size or scale_factor should be defined")
    if size is not None:
        output_size, scales = _as_list(size, dim, "size", input), None
        if not all(_is_integer(s) for s in output_size):
            raise TypeError(f"expected size to be one of int or Tuple[int] or Tuple[int, int] or Tuple[int, int, int], "
                            f"but got size with types {[type(s) for s in output_size]}")
    elif scale_factor is not None:
        output_size, scales = None, [float(s) for s in _as_list(scale_factor, dim, "scale_factor", input)]
    else:
        raise ValueError("either size or scale_factor should be defined")
    if recompute_scale_factor and size is not None:
        raise ValueError("recompute_scale_factor is not meaningful with an explicit size.")
    if mode == "area" and output_size is None:
        recompute_scale_factor = True
    if recompute_scale_factor:
        output_size, scales = [int(input.shape[i + 2] * scales[i]) for i in range(dim)], None
    if antialias and not (mode in ("bilinear", "bicubic", "lanczos") and input.ndim == 4):
        raise ValueError("Anti-alias option is restricted to bilinear, bicubic, and lanczos modes and requires a "
                         "4-D tensor as input")
    if input.ndim in (3, 4, 5):
        if mode in _LINEAR and input.ndim != _LINEAR[mode]:
            raise NotImplementedError(f"Got {input.ndim}D input, but {mode} mode needs {_LINEAR[mode]}D input")
        if antialias or (mode in ("bicubic", "lanczos") and input.ndim == 4):
            raise NotImplementedError(f"interpolate: mode={mode!r} with antialias={antialias} is not supported "
                                      f"(supported: nearest, nearest-exact, linear, bilinear, trilinear, area)")
    if input.ndim not in (3, 4, 5) or mode not in ("nearest", "nearest-exact", "area", *_LINEAR):
        raise NotImplementedError(f"Input Error: Only 3D, 4D and 5D input Tensors supported (got {input.ndim}D) for "
                                  f"the modes: {_MODES} (got {mode})")
    if output_size is None:
        output_size = [int(input.shape[i + 2] * scales[i]) for i in range(dim)]
    in_sizes = list(input.shape[2:])
    if any(s <= 0 for s in in_sizes + output_size) and not (mode == "area" and min(in_sizes) > 0 <= min(output_size)):
        names = "DHW"[3 - dim:]
        fmt = ", ".join
        raise OpError(f"Input and output sizes should be greater than 0, but got input "
                      f"({fmt(f'{n}: {s}' for n, s in zip(names, in_sizes))}) output "
                      f"({fmt(f'{n}: {s}' for n, s in zip(names, output_size))})")
    if mode == "area":
        return _area(input, output_size)
    if mode in _LINEAR and not input.dtype.is_floating_point:
        raise OpTypeError(f"interpolate: mode={mode!r} needs a floating-point input, got {input.dtype.name}")
    out = input
    # innermost axis first: the same multiply-add order as PyTorch's kernel (rows of the last axis, then up)
    for axis in reversed(range(dim)):
        out = _resample_axis(out, axis + 2, int(output_size[axis]), mode, align_corners,
                             None if scales is None else scales[axis])
    return out


def _area(input: Tensor, output_size: list) -> Tensor:
    """Adaptive average pooling (PyTorch's route for 'area'), one spatial axis at a time."""
    out = input
    for axis, size in enumerate(output_size, start=2):
        n = out.shape[axis]
        if size == n:
            continue
        if size == 0:  # an empty result, as adaptive pooling to size 0 gives
            stops = list(out.shape)
            stops[axis] = 0
            out = out._slice((0,) * out.ndim, tuple(stops), (1,) * out.ndim)
            continue
        if n % size == 0:
            shape = tuple(out.shape)
            out = out.reshape(shape[:axis] + (size, n // size) + shape[axis + 1:]).mean(axis + 1)
            continue
        # windows [floor(i n / size), ceil((i + 1) n / size)) of unequal sizes: a small averaging matmul
        m = np.zeros((size, n))
        for i in range(size):
            a, b = (i * n) // size, -((-(i + 1) * n) // size)
            m[i, a:b] = 1.0 / (b - a)
        moved = out.transpose(axis, -1)
        out = moved.matmul(tensor(m.T, dtype=out.dtype)).transpose(axis, -1)
    return out


def upsample(input: Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners=None) -> Tensor:
    warnings.warn("`nn.functional.upsample` is deprecated. Use `nn.functional.interpolate` instead.", stacklevel=2)
    return interpolate(input, size, scale_factor, mode, align_corners)


def upsample_nearest(input: Tensor, size=None, scale_factor=None) -> Tensor:
    warnings.warn("`nn.functional.upsample_nearest` is deprecated. Use `nn.functional.interpolate` instead.",
                  stacklevel=2)
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input: Tensor, size=None, scale_factor=None) -> Tensor:
    warnings.warn("`nn.functional.upsample_bilinear` is deprecated. Use `nn.functional.interpolate` instead.",
                  stacklevel=2)
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)


__all__ = ["interpolate", "upsample", "upsample_nearest", "upsample_bilinear"]
