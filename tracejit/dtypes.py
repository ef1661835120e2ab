"""dtypes, PyTorch's type-promotion rules, and TensorType (a value's static shape and dtype).

A DType wraps a NumPy dtype with the short name the IR prints (`f32`, `i64`, ...).

float16 is a storage dtype: tensors hold it, convert to and from it, save and load it, and elementwise
math promotes as in PyTorch (float16 + float32 -> float32); eager math on it runs NumPy's float16 loops, and
compiled steps refuse it (see compiler/trace.py). There is no bfloat16 (NumPy has none): checkpoints
holding BF16 tensors load as float32 with a warning (serialization.py).

uint8 is a storage dtype too (MNIST's images, torchvision's ``save_image``): tensors hold it, `from_numpy` shares
uint8 arrays, conversions and eager math follow PyTorch (uint8 op uint8 stays uint8 and wraps, Python ints
wrap into it, an int64 or float operand promotes, `sum` gives int64); compiled steps refuse it like float16.
Other integer widths (int8, int16, int32, uint16, ...) are stored as int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class DType:
    """A tensor element type, e.g. ``tracejit.float32``."""

    __slots__ = ("name", "short", "np", "category")

    def __init__(self, name: str, short: str, np_dtype, category: int):
        self.name = name
        self.short = short
        self.np = np.dtype(np_dtype)
        self.category = category  # 0 bool, 1 integer, 2 floating

    @property
    def is_floating_point(self) -> bool:
        return self.category == 2

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    def __repr__(self) -> str:
        return f"tracejit.{self.name}"

    def __reduce__(self):
        return (from_name, (self.name,))


bool_ = DType("bool", "bool", np.bool_, 0)
uint8 = DType("uint8", "u8", np.uint8, 1)  # a storage dtype; also the compact pooling argmax indices
int64 = DType("int64", "i64", np.int64, 1)
float16 = DType("float16", "f16", np.float16, 2)
float32 = DType("float32", "f32", np.float32, 2)
float64 = DType("float64", "f64", np.float64, 2)

ALL = (bool_, uint8, int64, float16, float32, float64)
_BY_NAME = {d.name: d for d in ALL} | {d.short: d for d in ALL}
_BY_NAME.update({"float": float32, "double": float64, "long": int64, "half": float16, "byte": uint8})
default_float = float32


def from_name(name: str) -> DType:
    return _BY_NAME[name]


def from_numpy(np_dtype) -> DType:
    """The DType holding values of `np_dtype`: uint8 is itself, other ints widen to int64, longdouble narrows to
    float32."""
    dt = np.dtype(np_dtype)
    if dt == np.bool_:
        return bool_
    if dt == np.uint8:
        return uint8
    if dt.kind in "iu":
        return int64
    if dt == np.float64:
        return float64
    if dt == np.float16:
        return float16
    if dt.kind == "f":
        return float32
    raise TypeError(f"tracejit has no dtype for NumPy dtype {dt}")


def as_dtype(d) -> DType:
    """Accept a DType, a NumPy dtype, a name, or the Python types float/int/bool."""
    if isinstance(d, DType):
        return d
    if d is float:
        return default_float
    if d is int:
        return int64
    if d is bool:
        return bool_
    if isinstance(d, str):
        return from_name(d)
    return from_numpy(d)


def promote(a: DType, b: DType) -> DType:
    """The wider of two dtypes (bool < uint8 < int64 < float16 < float32 < float64)."""
    return a if _ORDER[a] >= _ORDER[b] else b


_ORDER = {bool_: 0, uint8: 1, int64: 2, float16: 3, float32: 4, float64: 5}


def scalar_dtype(x) -> DType:
    if isinstance(x, (bool, np.bool_)):
        return bool_
    if isinstance(x, (int, np.integer)):
        return int64
    return default_float


def result_type(*operands) -> DType:
    """PyTorch's promotion: dimensioned tensors > zero-dim tensors > Python scalars, per category.

    >>> result_type(tensor([1, 2]), 2.5)   # int tensor with float scalar
    tracejit.float32
    """
    groups: list[list[DType]] = [[], [], []]
    for x in operands:
        if hasattr(x, "dtype") and hasattr(x, "ndim") and isinstance(x.dtype, DType):
            groups[0 if x.ndim > 0 else 1].append(x.dtype)
        else:
            groups[2].append(scalar_dtype(x))
    result = None
    for group in groups:
        if not group:
            continue
        g = group[0]
        for d in group[1:]:
            g = promote(g, d)
        if result is None:
            result = g
        elif g.category > result.category:
            result = g
    return result


@dataclass(frozen=True, eq=False)
class TensorType:
    """Static type of a value: shape and dtype.

    Compared and hashed on every compiled call (the variant key holds the arguments' types), so equality
    tries identity first and the hash is computed once (kept out of pickles: DType hashes by identity)."""

    shape: tuple
    dtype: DType

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if other.__class__ is not TensorType:
            return NotImplemented
        return self.dtype is other.dtype and self.shape == other.shape

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.shape, self.dtype))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        return {"shape": self.shape, "dtype": self.dtype}

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype.short}[{','.join(map(str, self.shape))}]"
