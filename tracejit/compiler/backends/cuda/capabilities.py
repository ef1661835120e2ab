"""What the CUDA backend runs natively: `supports(pattern, attrs) -> True | reason` (the fusion passes ask).

The fused conv/pool kernels (templates.conv_pool, unpool) take square pool windows without padding, dilation or
ceil_mode, up to 15 x 15 (the argmax is a*k + b in a uint8), as the CPU's do; GEMMs and the weight gradients take
float32 and float64.
"""

from __future__ import annotations

from .... import dtypes as D
from ...ir import Pattern

MAX_POOL = 15
FLOATS = (D.float32, D.float64)


def _pool(attrs: dict) -> bool | str:
    k, s = tuple(attrs["pool"]), tuple(attrs["pool_stride"])
    if tuple(attrs["pool_padding"]) != (0, 0) or tuple(attrs["pool_dilation"]) != (1, 1) or attrs["ceil_mode"]:
        return (f"its kernels pool without padding, dilation or ceil_mode (padding {attrs['pool_padding']}, "
                f"dilation {attrs['pool_dilation']}, ceil_mode {attrs['ceil_mode']})")
    if k[0] != k[1] or s[0] != s[1]:
        return f"its kernels take square pool windows and strides (kernel {k}, stride {s})"
    if k[0] > MAX_POOL:
        return f"its kernels take pool windows up to {MAX_POOL}x{MAX_POOL} (kernel {k})"
    return True


def supports(pattern, attrs: dict) -> bool | str:
    dtype = attrs.get("dtype")
    if dtype is not None and dtype not in FLOATS:
        return f"its window and GEMM kernels compute in float32 or float64, not {dtype.name}"
    if pattern in (Pattern.CONV_POOL, Pattern.UNPOOL, Pattern.CONV_POOL_BACKWARD):
        return _pool(attrs)
    if pattern in (Pattern.GRAD_WEIGHT_BIAS, Pattern.LINEAR):
        return True
    return f"no CUDA kernel for pattern {pattern}"
