"""The image functions behind `tracejit.transforms`, as ``torchvision.transforms.functional``.

An image is a tensor ``[..., C, H, W]`` (or ``[H, W]``), a NumPy array ``[H, W]`` or ``[H, W, C]`` (the
layout of a decoded file, as `to_tensor` reads it), or a PIL image when Pillow is installed. Every function
returns the kind it was given. Geometric functions copy values on the CPU; `normalize` is built from tensor
ops, so it is differentiable and traceable.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np

from .. import dtypes as D
from .._tensor import Tensor
from ..dispatch import _concrete_or_none, _from_array
from ..factories import as_tensor

__all__ = ["InterpolationMode", "to_tensor", "pil_to_tensor", "normalize", "resize", "pad", "crop", "center_crop",
           "hflip", "vflip", "get_dimensions", "get_image_size", "get_image_num_channels"]


class InterpolationMode(Enum):
    """Interpolation methods, with torchvision's names and values."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


# ----------------------------------------------------------------------------------------------- image kinds


def _is_pil(img: Any) -> bool:
    image_module = sys.modules.get("PIL.Image")  # never import Pillow just to ask: it cannot be one otherwise
    return image_module is not None and isinstance(img, image_module.Image)


def _check_image(img: Any, fn: str) -> None:
    if not (isinstance(img, (Tensor, np.ndarray)) or _is_pil(img)):
        raise TypeError(f"{fn}: img should be a tensor, a NumPy array or a PIL Image. Got {type(img)}")


class _Pixels:
    """An image as a NumPy array plus where its height and width axes are, and how to give back its kind."""

    def __init__(self, img: Any, fn: str):
        _check_image(img, fn)
        self.img = img
        if isinstance(img, Tensor):
            arr = _concrete_or_none(img)
            if arr is None:
                raise TypeError(f"{fn}: the image is a traced tensor; image transforms run on concrete tensors "
                                f"(apply them in the Dataset or DataLoader, outside @tracejit.compile)")
            if arr.ndim < 2:
                raise ValueError(f"{fn}: a tensor image has shape [..., H, W]; got {tuple(arr.shape)}")
            self.arr, self.h_axis, self.c_axis = arr, arr.ndim - 2, (arr.ndim - 3 if arr.ndim >= 3 else None)
        else:
            arr = np.asarray(img)
            if arr.ndim not in (2, 3):
                raise ValueError(f"{fn}: an array or PIL image has shape [H, W] or [H, W, C]; got {arr.shape}")
            self.arr, self.h_axis, self.c_axis = arr, 0, (2 if arr.ndim == 3 else None)

    @property
    def hw(self) -> tuple[int, int]:
        return self.arr.shape[self.h_axis], self.arr.shape[self.h_axis + 1]

    def channels(self) -> int:
        return 1 if self.c_axis is None else self.arr.shape[self.c_axis]

    def back(self, out: np.ndarray) -> Any:
        if isinstance(self.img, Tensor):
            return _from_array(np.ascontiguousarray(out))
        if isinstance(self.img, np.ndarray):
            return np.ascontiguousarray(out)
        from PIL import Image

        back = Image.fromarray(np.ascontiguousarray(out))
        if self.img.mode == "P":
            back.putpalette(self.img.getpalette())
        return back


def get_dimensions(img: Any) -> list[int]:
    """``[channels, height, width]`` of an image."""
    p = _Pixels(img, "get_dimensions")
    return [p.channels(), *p.hw]


def get_image_size(img: Any) -> list[int]:
    """``[width, height]``, as torchvision orders it."""
    _, h, w = get_dimensions(img)
    return [w, h]


def get_image_num_channels(img: Any) -> int:
    return get_dimensions(img)[0]


# ----------------------------------------------------------------------------------------------- conversion


def to_tensor(pic: Any) -> Tensor:
    """A PIL image or an ``[H, W(, C)]`` array as a ``[C, H, W]`` tensor; uint8 values are scaled to [0, 1]
    (float32), other dtypes keep their values, as ``torchvision.transforms.functional.to_tensor``.

    tracejit's datasets already yield ``[C, H, W]`` float tensors, so a tensor passes through unchanged
    (torchvision would refuse it): ``Compose([ToTensor(), Normalize(...)])`` works on both.
    """
    if isinstance(pic, Tensor):
        return pic
    if _is_pil(pic):
        mode_dtype = {"I": np.int32, "I;16" if sys.byteorder == "little" else "I;16B": np.int16, "F": np.float32}
        arr = np.array(pic, mode_dtype.get(pic.mode, np.uint8), copy=True)
        if pic.mode == "1":
            arr = 255 * arr
        arr = arr.reshape(pic.size[1], pic.size[0], len(pic.getbands()))
    elif isinstance(pic, np.ndarray):
        if pic.ndim not in (2, 3):
            raise ValueError(f"pic should be 2/3 dimensional. Got {pic.ndim} dimensions.")
        arr = pic[:, :, None] if pic.ndim == 2 else pic
    else:
        raise TypeError(f"pic should be PIL Image or ndarray. Got {type(pic)}")
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
    if chw.dtype == np.uint8:
        return _from_array(chw.astype(D.default_float.np) / D.default_float.np.type(255))
    return _from_array(chw)


def pil_to_tensor(pic: Any) -> Tensor:
    """A PIL image as a ``[C, H, W]`` tensor of its raw values (no scaling)."""
    if not _is_pil(pic):
        raise TypeError(f"pic should be PIL Image. Got {type(pic)}")
    arr = np.array(pic, copy=True)
    arr = arr.reshape(pic.size[1], pic.size[0], len(pic.getbands()))
    return _from_array(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def normalize(tensor: Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> Tensor:
    """``(tensor - mean) / std`` per channel of a float ``[..., C, H, W]`` tensor."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"img should be Tensor Image. Got {type(tensor)}")
    if not tensor.dtype.is_floating_point:
        raise TypeError(f"Input tensor should be a float tensor. Got {tensor.dtype}.")
    if tensor.ndim < 3:
        raise ValueError(f"Expected tensor to be a tensor image of size (..., C, H, W). Got tensor.size() = "
                         f"{tensor.shape}")
    dtype = tensor.dtype
    mean_t = as_tensor(mean, dtype=dtype)
    std_t = as_tensor(std, dtype=dtype)
    if (np.asarray(std_t.numpy()) == 0).any():
        raise ValueError(f"std evaluated to zero after conversion to {dtype}, leading to division by zero.")
    if mean_t.ndim == 1:
        mean_t = mean_t.view(-1, 1, 1)
    if std_t.ndim == 1:
        std_t = std_t.view(-1, 1, 1)
    if inplace:
        return tensor.sub_(mean_t).div_(std_t)
    return (tensor - mean_t) / std_t


# ----------------------------------------------------------------------------------------------- geometry


def hflip(img: Any) -> Any:
    """Mirror left to right."""
    p = _Pixels(img, "hflip")
    return p.back(np.flip(p.arr, axis=p.h_axis + 1))


def vflip(img: Any) -> Any:
    """Mirror top to bottom."""
    p = _Pixels(img, "vflip")
    return p.back(np.flip(p.arr, axis=p.h_axis))


def _padding_ltrb(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, numbers.Number) and not isinstance(padding, bool):
        p = int(padding)
        return p, p, p, p
    if isinstance(padding, Sequence) and len(padding) in (1, 2, 4):
        if len(padding) == 1:
            return (int(padding[0]),) * 4
        if len(padding) == 2:  # (left/right, top/bottom)
            return int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])
        return tuple(int(v) for v in padding)
    raise ValueError(f"Padding must be an int or a 1, 2, or 4 element tuple, not {padding!r}")


def _pad_array(p: _Pixels, ltrb: tuple[int, int, int, int], fill: Any, padding_mode: str) -> np.ndarray:
    left, top, right, bottom = ltrb
    if min(ltrb) < 0:
        raise ValueError(f"pad: negative padding {list(ltrb)} is not supported (crop instead)")
    widths = [(0, 0)] * p.arr.ndim
    widths[p.h_axis] = (top, bottom)
    widths[p.h_axis + 1] = (left, right)
    if padding_mode != "constant":
        return np.pad(p.arr, widths, mode=padding_mode)
    fill = 0 if fill is None else fill
    if isinstance(fill, numbers.Number):
        return np.pad(p.arr, widths, mode="constant", constant_values=np.asarray(fill).astype(p.arr.dtype))
    values = np.asarray(fill, dtype=p.arr.dtype).reshape(-1)
    c = p.channels()
    if values.size == 1:
        values = np.repeat(values, c)
    if values.size != c:
        raise ValueError(f"pad: fill has {values.size} values but the image has {c} channels")
    shape = list(p.arr.shape)
    shape[p.h_axis] += top + bottom
    shape[p.h_axis + 1] += left + right
    view = [1] * len(shape)
    if p.c_axis is not None:
        view[p.c_axis] = c
    out = np.empty(shape, p.arr.dtype)
    out[...] = values.reshape(view)
    inner = [slice(None)] * len(shape)
    inner[p.h_axis] = slice(top, top + p.hw[0])
    inner[p.h_axis + 1] = slice(left, left + p.hw[1])
    out[tuple(inner)] = p.arr
    return out


_PADDING_MODES = ("constant", "edge", "reflect", "symmetric")


def pad(img: Any, padding: int | Sequence[int], fill: Any = 0, padding_mode: str = "constant") -> Any:
    """Pad the borders: `padding` is one int (all sides), (left/right, top/bottom) or (left, top, right,
    bottom); `padding_mode` is constant (with `fill`, a number or one value per channel), edge, reflect
    (without repeating the edge) or symmetric (repeating it)."""
    if padding_mode not in _PADDING_MODES:
        raise ValueError("Padding mode should be either constant, edge, reflect or symmetric")
    p = _Pixels(img, "pad")
    return p.back(_pad_array(p, _padding_ltrb(padding), fill, padding_mode))


def crop(img: Any, top: int, left: int, height: int, width: int) -> Any:
    """The `height` x `width` window at (`top`, `left`); parts outside the image are zero, as in torchvision."""
    p = _Pixels(img, "crop")
    h, w = p.hw
    outside = (max(0, -left), max(0, -top), max(0, left + width - w), max(0, top + height - h))
    arr = _pad_array(p, outside, 0, "constant") if any(outside) else p.arr
    top, left = top + outside[1], left + outside[0]
    index = [slice(None)] * arr.ndim
    index[p.h_axis] = slice(top, top + height)
    index[p.h_axis + 1] = slice(left, left + width)
    return p.back(arr[tuple(index)])


def _pair(size: int | Sequence[int], what: str = "size") -> tuple[int, int]:
    if isinstance(size, numbers.Number) and not isinstance(size, bool):
        return int(size), int(size)
    if isinstance(size, Sequence) and len(size) == 1:
        return int(size[0]), int(size[0])
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"Please provide only two dimensions (h, w) for {what}.")


def center_crop(img: Any, output_size: int | Sequence[int]) -> Any:
    """The central window of `output_size`; an image smaller than that is first padded with zeros."""
    crop_h, crop_w = _pair(output_size, "size")
    _, h, w = get_dimensions(img)
    if crop_w > w or crop_h > h:
        padding = [(crop_w - w) // 2 if crop_w > w else 0, (crop_h - h) // 2 if crop_h > h else 0,
                   (crop_w - w + 1) // 2 if crop_w > w else 0, (crop_h - h + 1) // 2 if crop_h > h else 0]
        img = pad(img, padding, fill=0)
        _, h, w = get_dimensions(img)
        if crop_w == w and crop_h == h:
            return img
    top = int(round((h - crop_h) / 2.0))  # Python's round (half to even), as torchvision
    left = int(round((w - crop_w) / 2.0))
    return crop(img, top, left, crop_h, crop_w)


# ----------------------------------------------------------------------------------------------- resize


def _resized_size(h: int, w: int, size: int | Sequence[int] | None, max_size: int | None) -> tuple[int, int]:
    if isinstance(size, numbers.Number):
        size = [int(size)]
    if size is None or len(size) == 1:
        short, long = (w, h) if w <= h else (h, w)
        if size is None:
            if max_size is None:
                raise ValueError("resize: size=None needs max_size")
            new_short, new_long = int(max_size * short / long), max_size
        else:
            requested = int(size[0])
            new_short, new_long = requested, int(requested * long / short)
            if max_size is not None:
                if max_size <= requested:
                    raise ValueError(f"max_size = {max_size} must be strictly greater than the requested size "
                                     f"for the smaller edge size = {list(size)}")
                if new_long > max_size:
                    new_short, new_long = int(max_size * new_short / new_long), max_size
        return (new_long, new_short) if w <= h else (new_short, new_long)
    if max_size is not None:
        raise ValueError("max_size should only be passed if size specifies the length of the smaller edge, i.e. "
                         "size should be an int or a sequence of length 1")
    return int(size[0]), int(size[1])


def _linear_weights(n_in: int, n_out: int, antialias: bool, dtype: np.dtype) -> np.ndarray:
    """[n_out, n_in] weights of bilinear resampling with half-pixel centres (align_corners=False).

    With `antialias` and downscaling, the triangle filter is widened by the scale (PIL's method, which
    PyTorch's antialiased interpolate follows); otherwise each output takes its two nearest inputs."""
    scale = n_in / n_out
    wide = antialias and scale > 1.0
    support = scale if wide else 1.0
    inv = 1.0 / scale if wide else 1.0
    weights = np.zeros((n_out, n_in), dtype)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        x = np.abs((np.arange(lo, hi) - center + 0.5) * inv)
        w = np.where(x < 1.0, 1.0 - x, 0.0)
        weights[i, lo:hi] = w / w.sum()
    return weights


def _nearest_index(n_in: int, n_out: int, exact: bool) -> np.ndarray:
    i = np.arange(n_out)
    if exact:  # "nearest-exact": the input pixel whose centre is nearest
        return np.minimum(np.floor((i + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)
    if n_in == n_out:
        return i
    # PyTorch's legacy "nearest": floor(i * scale) with a float32 scale
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), n_in - 1)


def _resample(arr: np.ndarray, axis: int, n_out: int, mode: InterpolationMode, antialias: bool) -> np.ndarray:
    n_in = arr.shape[axis]
    if n_in == n_out:
        return arr
    if mode in (InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT):
        return np.take(arr, _nearest_index(n_in, n_out, mode is InterpolationMode.NEAREST_EXACT), axis=axis)
    weights = _linear_weights(n_in, n_out, antialias, arr.dtype)
    return np.moveaxis(np.tensordot(weights, arr, axes=([1], [axis])), 0, axis)


def resize(img: Any, size: int | Sequence[int] | None, interpolation: InterpolationMode = InterpolationMode.BILINEAR,
           max_size: int | None = None, antialias: bool | None = True) -> Any:
    """Resize to `size`: (h, w), or an int that the shorter edge becomes (keeping the aspect ratio).

    Tensors and arrays support nearest, nearest-exact and bilinear (antialiased when downscaling, as
    PyTorch's ``interpolate(..., antialias=True)``); integer images are interpolated in float32 and
    rounded back. PIL images are resized by Pillow itself, with any of its filters.
    """
    mode = InterpolationMode(interpolation) if not isinstance(interpolation, InterpolationMode) else interpolation
    p = _Pixels(img, "resize")
    out_h, out_w = _resized_size(*p.hw, size, max_size)
    if (out_h, out_w) == p.hw:
        return img
    if _is_pil(img):
        from PIL import Image

        filters = {InterpolationMode.NEAREST: Image.NEAREST, InterpolationMode.NEAREST_EXACT: Image.NEAREST,
                   InterpolationMode.BILINEAR: Image.BILINEAR, InterpolationMode.BICUBIC: Image.BICUBIC,
                   InterpolationMode.BOX: Image.BOX, InterpolationMode.HAMMING: Image.HAMMING,
                   InterpolationMode.LANCZOS: Image.LANCZOS}
        return img.resize((out_w, out_h), filters[mode])
    if mode not in (InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT, InterpolationMode.BILINEAR):
        raise NotImplementedError(f"resize: interpolation {mode.value!r} is supported for PIL images only; tensors "
                                  f"and arrays support nearest, nearest-exact and bilinear")
    arr = p.arr
    is_int = arr.dtype.kind in "iub"
    if is_int and mode is InterpolationMode.BILINEAR:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    out = _resample(arr, p.h_axis, out_h, mode, bool(antialias))
    out = _resample(out, p.h_axis + 1, out_w, mode, bool(antialias))
    if out.dtype != p.arr.dtype:
        if is_int:
            info = np.iinfo(p.arr.dtype) if p.arr.dtype.kind in "iu" else None
            out = np.round(out)
            if info is not None:
                out = np.clip(out, info.min, info.max)
        out = out.astype(p.arr.dtype)
    return p.back(out)
