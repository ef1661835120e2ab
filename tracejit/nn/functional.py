"""nn.functional: activations, linear/conv/pooling, normalization, dropout and losses, PyTorch-style.

Everything is a composite of Tensor methods and the window primitives (conv2d, max_pool2d, avg_pool2d),
so it runs eagerly and traces alike. NumPy only touches concrete values for input validation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import dtypes as D
from .._tensor import Tensor, where
from ..autograd import is_grad_enabled as _grad_enabled
from ..autograd import no_grad
from ..dispatch import _concrete_or_none, apply
from ..errors import OpError, OpTypeError, TargetIndexError, TraceError, shape_str, user_location  # noqa: F401
from ..factories import arange, tensor
from ..indexing import check_index
from ..ops import OPS, broadcast_shapes, check_same_dtype
from ..random import rand

__all__ = [
    "relu", "relu6", "leaky_relu", "elu", "gelu", "silu", "softplus", "sigmoid", "tanh", "softmax",
    "log_softmax", "linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "dropout",
    "batch_norm", "flatten", "pad", "one_hot", "cross_entropy", "nll_loss", "mse_loss", "l1_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "dropout1d", "dropout2d", "dropout3d",
    "group_norm", "conv_transpose2d",
]


class TargetShapeError(OpError, ValueError):
    """Input and target shapes that do not go together (PyTorch raises ValueError here)."""


def _pair(v, name: str = "argument") -> tuple:
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return (int(v[0]),) * 2
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v}")
        return tuple(int(a) for a in v)
    return (int(v), int(v))


def _batched(x: Tensor, name: str) -> tuple[Tensor, bool]:
    """4-D view of a [C, H, W] or [N, C, H, W] input, and whether it had no batch dimension."""
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim != 4:
        raise OpError(f"{name}: expected a 3-D [C, H, W] or 4-D [N, C, H, W] input, got shape "
                      f"{shape_str(x.shape)}")
    return x, False


# ----------------------------------------------------------------------------------------------- activations


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    return input.relu()


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    return input.clamp(0.0, 6.0)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    return where(input > 0, input, input * negative_slope)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    # exp of the clamped input: the unused branch must stay finite, or where's gradient becomes 0 * inf
    return where(input > 0, input, (input.clamp(max=0.0).exp() - 1.0) * alpha)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """0.5 x (1 + erf(x / sqrt 2)); approximate='tanh' uses PyTorch's tanh formula."""
    if approximate == "none":
        return input * 0.5 * ((input * (1.0 / math.sqrt(2.0))).erf() + 1.0)
    if approximate == "tanh":
        inner = (input + input * input * input * 0.044715) * math.sqrt(2.0 / math.pi)
        return input * 0.5 * (inner.tanh() + 1.0)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    return input * input.sigmoid()


def _softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) without overflow: max(x, 0) + log(1 + exp(-|x|)).

    |x| is written x.maximum(-x) so that at x == 0 both kinks take the same side (maximum sends a tie to
    its first operand) and the gradient is exactly sigmoid(0) = 0.5, as PyTorch's analytic backward.
    """
    return x.clamp(min=0.0) + ((-x.maximum(-x)).exp() + 1.0).log()


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    # the stable form differs from PyTorch's linear region above `threshold` by < 2e-9
    return _softplus(input * beta) / beta if beta != 1.0 else _softplus(input)


def sigmoid(input: Tensor) -> Tensor:
    return input.sigmoid()


def tanh(input: Tensor) -> Tensor:
    return input.tanh()


def _softmax_dim(name: str, ndim: int) -> int:
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call to include "
                  f"dim=X as an argument.", stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    x = input if dtype is None else input.to(dtype)
    return x.softmax(_softmax_dim("softmax", x.ndim) if dim is None else dim)


def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    x = input if dtype is None else input.to(dtype)
    return x.log_softmax(_softmax_dim("log_softmax", x.ndim) if dim is None else dim)


# ----------------------------------------------------------------------------------------------- layers


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """input @ weight.T + bias, for input [..., in_features] and weight [out_features, in_features]."""
    if input.shape[-1] != weight.shape[-1]:
        raise OpError(f"linear: input of shape {shape_str(input.shape)} has {input.shape[-1]} features but "
                      f"weight {shape_str(weight.shape)} expects {weight.shape[-1]} (mat1 and mat2 shapes "
                      f"cannot be multiplied)")
    _check_dtypes("linear", input, weight, bias)
    out = input.matmul(weight.t())
    return out if bias is None else out + bias


def _check_dtypes(name: str, input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """PyTorch's rule: input, weight and bias share one dtype (a float64 batch into a float32 model raises
    rather than silently promoting the whole step to float64)."""
    fix = f"convert the input with .to(tracejit.{weight.dtype.name})"
    if input.dtype.is_floating_point and weight.dtype.is_floating_point:
        fix += f" or the model with .to(tracejit.{input.dtype.name})"
    try:
        check_same_dtype(name, input, weight, ("input", "weight"), fix)
        if bias is not None:
            check_same_dtype(name, bias, weight, ("bias", "weight"), f"convert the bias with "
                             f".to(tracejit.{weight.dtype.name})")
    except OpError as e:
        raise type(e)(f"{e} (at {user_location()})") from None


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """2-D cross-correlation; padding is an int, a pair, 'valid' or 'same' (stride 1 only)."""
    _check_dtypes("conv2d", input, weight, bias)
    x, unbatched = _batched(input, "conv2d")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pad_hw = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
            pad_hw = tuple(t // 2 for t in totals)
            if any(t % 2 for t in totals):
                # even kernels need one more row/column on the bottom/right, as PyTorch pads them
                x = x.pad(((0, 0), (0, 0), (0, totals[0] % 2), (0, totals[1] % 2)))
        else:
            raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    else:
        pad_hw = _pair(padding, "padding")
    out = apply(OPS["conv2d"], x, weight, stride=stride, padding=pad_hw, dilation=dilation,
                groups=int(groups))
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out.squeeze(0) if unbatched else out


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """The adjoint of conv2d ("deconvolution"): weight [C_in, C_out/groups, kH, kW], output side
    (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1.

    It is conv2d's input gradient with the weight used as is (the conv2d_grad_input primitive).
    """
    _check_dtypes("conv_transpose2d", input, weight, bias)
    x, unbatched = _batched(input, "conv_transpose2d")
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    output_padding, dilation = _pair(output_padding, "output_padding"), _pair(dilation, "dilation")
    if weight.ndim != 4:
        raise OpError(f"conv_transpose2d: expected a 4-D weight [C_in, C_out/groups, kH, kW], got "
                      f"{shape_str(weight.shape)}")
    n, cin, h, w = x.shape
    if weight.shape[0] != cin or cin % groups:
        raise OpError(f"Given transposed=1, weight of size {shape_str(weight.shape)}, expected input"
                      f"{shape_str(x.shape)} to have {weight.shape[0]} channels, but got {cin} channels instead "
                      f"(groups={groups})")
    cout = weight.shape[1] * groups
    if bias is not None and tuple(bias.shape) != (cout,):
        raise OpError(f"Given transposed=1, weight of size {shape_str(weight.shape)}, expected bias to be "
                      f"1-dimensional with {cout} elements, but got bias of size {shape_str(bias.shape)} instead")
    if any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation)):
        raise OpError(f"output padding must be smaller than either stride or dilation, but got "
                      f"output_padding_height: {output_padding[0]} output_padding_width: {output_padding[1]} "
                      f"stride_height: {stride[0]} stride_width: {stride[1]} dilation_height: {dilation[0]} "
                      f"dilation_width: {dilation[1]}")
    k = weight.shape[2:]
    full = tuple((size - 1) * s + d * (kk - 1) + 1 for size, s, d, kk in zip((h, w), stride, dilation, k))
    out_hw = tuple(f - 2 * p + op for f, p, op in zip(full, padding, output_padding))
    if min(out_hw) <= 0:
        raise OpError(f"conv_transpose2d: input {shape_str(x.shape)} with weight {shape_str(weight.shape)}, "
                      f"stride {stride}, padding {padding} gives an empty output {out_hw}")
    attrs = dict(stride=stride, dilation=dilation, groups=int(groups))
    if all(op < s for op, s in zip(output_padding, stride)):
        out = apply(OPS["conv2d_grad_input"], x, weight, input_shape=(n, cout) + out_hw, padding=padding, **attrs)
    else:
        # output_padding >= stride (allowed when dilation is larger): conv2d of the wanted output would not give
        # back H rows, so compute the unpadded result and crop (or zero-extend) it to the output window
        out = apply(OPS["conv2d_grad_input"], x, weight, input_shape=(n, cout) + full, padding=(0, 0), **attrs)
        out = pad(out, (-padding[1], out_hw[1] + padding[1] - full[1], -padding[0], out_hw[0] + padding[0] - full[0]))
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out.squeeze(0) if unbatched else out


def _pool_stride(stride, kernel: tuple) -> tuple:
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return kernel
    return _pair(stride, "stride")


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False) -> Tensor:
    if return_indices:
        raise NotImplementedError("max_pool2d: return_indices=True is not supported")
    x, unbatched = _batched(input, "max_pool2d")
    k = _pair(kernel_size, "kernel_size")
    out = apply(OPS["max_pool2d"], x, kernel=k, stride=_pool_stride(stride, k),
                padding=_pair(padding, "padding"), dilation=_pair(dilation, "dilation"),
                ceil_mode=bool(ceil_mode))
    return out.squeeze(0) if unbatched else out


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    x, unbatched = _batched(input, "avg_pool2d")
    k = _pair(kernel_size, "kernel_size")
    if divisor_override is not None:
        if ceil_mode:
            raise NotImplementedError("avg_pool2d: divisor_override with ceil_mode=True is not supported")
        count_include_pad = True  # then every window's divisor is kh*kw, which the override replaces
    out = apply(OPS["avg_pool2d"], x, kernel=k, stride=_pool_stride(stride, k),
                padding=_pair(padding, "padding"), ceil_mode=bool(ceil_mode),
                count_include_pad=bool(count_include_pad))
    if divisor_override is not None:
        out = out * (k[0] * k[1] / float(divisor_override))
    return out.squeeze(0) if unbatched else out


def _adaptive_matrix(size: int, out: int, dtype, device=None) -> Tensor:
    """[out, size] averaging matrix over PyTorch's windows [floor(i*size/out), ceil((i+1)*size/out))."""
    m = np.zeros((out, size))
    for i in range(out):
        a, b = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, a:b] = 1.0 / (b - a)
    return tensor(m, dtype=dtype, device=device)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    x, unbatched = _batched(input, "adaptive_avg_pool2d")
    h, w = x.shape[2:]
    oh, ow = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
    oh, ow = h if oh is None else int(oh), w if ow is None else int(ow)
    if (oh, ow) == (1, 1):
        out = x.mean((2, 3), keepdim=True)
    elif h % oh == 0 and w % ow == 0:
        out = avg_pool2d(x, (h // oh, w // ow))
    else:
        # overlapping windows of unequal sizes: two small matmuls with constant averaging matrices
        out = _adaptive_matrix(h, oh, x.dtype, x.device).matmul(x.matmul(_adaptive_matrix(w, ow, x.dtype,
                                                                                           x.device).t()))
    return out.squeeze(0) if unbatched else out


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not training.

    The mask comes from the default generator, whose state is a tensor, so a compiled step carries it.
    """
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    keep = rand(tuple(input.shape), dtype=input.dtype, device=input.device) >= p
    return input * (keep.to(input.dtype) * (1.0 / (1.0 - p)))


def _feature_dropout(input: Tensor, p: float, training: bool) -> Tensor:
    """Zero whole channels (dim 1 of [N, C, ...]) with probability p, scaling the rest by 1/(1-p)."""
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    if input.ndim < 2:
        raise OpError(f"Feature dropout requires at least 2 dimensions in the input, got {shape_str(input.shape)}")
    keep = rand(tuple(input.shape[:2]) + (1,) * (input.ndim - 2), dtype=input.dtype) >= p
    return input * (keep.to(input.dtype) * (1.0 / (1.0 - p)))


def _check_p(p: float) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Channel-wise dropout of [N, C, L] (or unbatched [C, L]) inputs."""
    _check_p(p)
    if input.ndim not in (2, 3):
        raise OpError(f"dropout1d: Expected 2D or 3D input, but received a {input.ndim}D input. Note that dropout1d "
                      f"exists to provide channel-wise dropout on inputs with 1 spatial dimension, a channel "
                      f"dimension, and an optional batch dimension (i.e. 2D or 3D inputs).")
    if input.ndim == 2:
        return _feature_dropout(input.unsqueeze(0), p, training).squeeze(0)
    return _feature_dropout(input, p, training)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Channel-wise dropout of [N, C, H, W] inputs; a 3-D input is taken as [N, C, L], as PyTorch does (with its
    warning)."""
    _check_p(p)
    if input.ndim not in (3, 4):
        warnings.warn(f"dropout2d: Received a {input.ndim}-D input to dropout2d, which is deprecated and will "
                      f"result in an error in a future release. To retain the behavior and silence this warning, "
                      f"please use dropout instead. Note that dropout2d exists to provide channel-wise dropout on "
                      f"inputs with 2 spatial dimensions, a channel dimension, and an optional batch dimension "
                      f"(i.e. 3D or 4D inputs).", stacklevel=2)
    if input.ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel dim. "
                      "This behavior will change in a future release to interpret the input as one without a "
                      "batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise dropout behavior, "
                      "please switch to using dropout1d instead.", stacklevel=2)
    return _feature_dropout(input, p, training)


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Channel-wise dropout of [N, C, D, H, W] (or unbatched [C, D, H, W]) inputs."""
    _check_p(p)
    if input.ndim not in (4, 5):
        warnings.warn(f"dropout3d: Received a {input.ndim}-D input to dropout3d, which is deprecated and will "
                      f"result in an error in a future release. To retain the behavior and silence this warning, "
                      f"please use dropout instead. Note that dropout3d exists to provide channel-wise dropout on "
                      f"inputs with 3 spatial dimensions, a channel dimension, and an optional batch dimension "
                      f"(i.e. 4D or 5D inputs).", stacklevel=2)
    if input.ndim != 5:
        return _feature_dropout(input.unsqueeze(0), p, training).squeeze(0)
    return _feature_dropout(input, p, training)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float | Tensor = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalize over every dim but 1; in training, update running stats in place (unbiased var)."""
    if input.ndim < 2:
        raise ValueError(f"batch_norm: expected an input with at least 2 dimensions, got "
                         f"{shape_str(input.shape)}")
    c = input.shape[1]
    axes = (0,) + tuple(range(2, input.ndim))
    shape = (1, c) + (1,) * (input.ndim - 2)
    if training:
        n = input.numel() // c
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{input.shape}")
        mean = input.mean(axes)
        centered = input - mean.reshape(shape)
        var = (centered * centered).mean(axes)  # biased: this is what normalizes the batch
        if running_mean is not None and running_var is not None:
            with no_grad():
                running_mean.copy_(running_mean * (1.0 - momentum) + mean.detach() * momentum)
                running_var.copy_(running_var * (1.0 - momentum) + var.detach() * (momentum * n / (n - 1)))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are required when training=False")
        centered = input - running_mean.reshape(shape)
        var = running_var
    out = centered * (var + eps).rsqrt().reshape(shape)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Normalize each sample over groups of channels (C / num_groups channels and all spatial positions),
    then scale and shift per channel. The same in training and evaluation (no running statistics)."""
    if input.ndim < 2:
        raise OpError(f"Expected at least 2 dimensions for input tensor but received {input.ndim}")
    n, c = input.shape[:2]
    if num_groups <= 0 or c % num_groups:
        raise OpError(f"Expected number of channels in input to be divisible by num_groups, but got input of shape "
                      f"{shape_str(input.shape)} and num_groups={num_groups}")
    spatial = math.prod(input.shape[2:])
    if n * c // num_groups * spatial == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{[n * c // num_groups, num_groups] + list(input.shape[2:])}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise OpError(f"Expected {name} to be a vector of size equal to the number of channels in input, but "
                          f"got {name} of shape {shape_str(t.shape)} and input of shape {shape_str(input.shape)}")
    x = input.reshape(n, num_groups, c // num_groups * spatial)
    centered = x - x.mean(-1, keepdim=True)
    var = (centered * centered).mean(-1, keepdim=True)
    out = (centered * (var + eps).rsqrt()).reshape(tuple(input.shape))
    shape = (1, c) + (1,) * (input.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    return input.flatten(start_dim, end_dim)


def pad(input: Tensor, pad: tuple, mode: str = "constant", value: float | None = None) -> Tensor:
    """Pad (negative values crop); `pad` lists (before, after) pairs from the last dimension backwards."""
    if len(pad) % 2:
        raise ValueError("Padding length must be divisible by 2")
    if len(pad) // 2 > input.ndim:
        raise ValueError(f"Padding length too large: {len(pad)} values for a {input.ndim}-D input")
    if mode != "constant":
        raise NotImplementedError(f"pad: mode {mode!r} is not supported (only 'constant')")
    pairs = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        pairs[input.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    out = input
    if any(a > 0 or b > 0 for a, b in pairs):
        fill = 0.0 if value is None else value
        out = out.pad(tuple((max(a, 0), max(b, 0)) for a, b in pairs),
                      float(fill) if input.dtype.is_floating_point else fill)
    if any(a < 0 or b < 0 for a, b in pairs):
        starts = tuple(max(-a, 0) for a, _ in pairs)
        stops = tuple(s - max(-b, 0) for s, (_, b) in zip(out.shape, pairs))
        out = out._slice(starts, stops, (1,) * out.ndim)
    return out


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    if tensor.dtype is not D.int64:
        raise OpTypeError(f"one_hot is only applicable to index tensor of dtype int64, got "
                          f"{tensor.dtype.name}")
    values = _concrete_or_none(tensor)
    if num_classes == -1:
        if values is None:
            raise TraceError("one_hot: num_classes=-1 needs the tensor's values, which are not known while "
                             "tracing; pass num_classes")
        num_classes = int(values.max()) + 1 if values.size else 0
    tensor = check_index(tensor, 0, num_classes, f"one_hot: class values must be in [0, {num_classes}), got {{value}}",
                         error="target")
    return (tensor.unsqueeze(-1) == arange(num_classes, device=tensor.device)).long()


# ----------------------------------------------------------------------------------------------- losses


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    if size_average is None and reduce is None:
        return reduction
    warnings.warn("size_average and reduce args will be deprecated, please use reduction instead.",
                  stacklevel=3)
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "none" if not reduce else ("mean" if size_average else "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def _check_class_target(fname: str, input: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """`target` after checking its dtype, shape and range (labels in [0, classes) or ignore_index): read the
    labels only through the returned tensor, so that a traced step checks them before it uses them."""
    if not isinstance(target, Tensor):
        raise OpTypeError(f"{fname}: target must be a Tensor, got {type(target).__name__}")
    shapes = f"input of shape {shape_str(input.shape)}, target of shape {shape_str(target.shape)}"
    if target.dtype is not D.int64:
        hint = " (for class probabilities the target must have the input's shape)" \
            if target.dtype.is_floating_point and fname == "cross_entropy" else ""
        raise OpTypeError(f"{fname}: expected a target of class indices with dtype int64 "
                          f"(use target.long()), got {target.dtype.name}; {shapes}{hint}")
    if input.ndim == 0:
        raise OpError(f"{fname}: input must have a class dimension, got a 0-d input")
    expected = () if input.ndim == 1 else (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != expected:
        if input.ndim >= 2 and (target.ndim == 0 or target.shape[0] != input.shape[0]):
            got = target.shape[0] if target.ndim else "none"
            raise TargetShapeError(f"{fname}: expected input batch_size ({input.shape[0]}) to match target "
                                   f"batch_size ({got}); {shapes}")
        raise TargetShapeError(f"{fname}: expected a target of shape {shape_str(expected)}; {shapes}")
    classes = input.shape[1 if input.ndim >= 2 else 0]
    # concrete labels are checked now; traced ones by a check_index node the compiled program runs
    return check_index(target, 0, classes, f"{fname}: target label {{value}} is out of range for {classes} classes "
                       f"(labels must be in [0, {classes - 1}] or ignore_index={ignore_index}); {shapes}",
                       ignore=ignore_index, error="target")


def _class_weights(target: Tensor, weight: Tensor | None, ignore_index: int, dtype) -> tuple[Tensor, Tensor]:
    """(target with ignored labels replaced by 0, per-element weight: 0 where ignored, else weight[label])."""
    valid = target != ignore_index
    # target is checked (_check_class_target); gather needs in-range indices even where the result is masked out
    safe = where(valid, target, 0)
    w = valid.to(dtype)
    if weight is not None:
        w = w * apply(OPS["gather"], weight.to(dtype), safe.reshape(-1), axis=0).reshape(tuple(target.shape))
    return safe, w


def _nll(logp: Tensor, target: Tensor, weight, ignore_index: int, reduction: str) -> Tensor:
    cdim = 1 if logp.ndim >= 2 else 0
    safe, w = _class_weights(target, weight, ignore_index, logp.dtype)
    picked = apply(OPS["gather"], logp, safe.unsqueeze(cdim), axis=cdim).squeeze(cdim)
    loss = -picked * w
    if reduction == "mean":
        return loss.sum() / w.sum()  # PyTorch: divide by the total weight of the non-ignored targets
    return _reduce(loss, reduction)


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of log-probabilities `input` [N, C, ...] at class indices `target` [N, ...]."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    target = _check_class_target("nll_loss", input, target, ignore_index)
    return _nll(input, target, weight, ignore_index, reduction)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
                  ignore_index: int = -100, reduce=None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """log_softmax + nll_loss over logits [N, C, ...]; `target` holds class indices or probabilities.

    >>> F.cross_entropy(tracejit.tensor([[2.0, 0.0]]), tracejit.tensor([0]))
    tensor(0.1269)
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    cdim = 1 if input.ndim >= 2 else 0
    wshape = tuple(-1 if i == cdim else 1 for i in range(input.ndim))
    soft = isinstance(target, Tensor) and target.dtype.is_floating_point
    if soft and tuple(target.shape) == tuple(input.shape):
        logp = input.log_softmax(cdim)
        classes = input.shape[cdim]
        probs = target
        if label_smoothing:
            probs = target * (1.0 - label_smoothing) + label_smoothing / classes
        if weight is not None:
            logp = logp * weight.reshape(wshape)
        return _reduce(-(logp * probs).sum(cdim), reduction)
    target = _check_class_target("cross_entropy", input, target, ignore_index)
    logp = input.log_softmax(cdim)
    nll = _nll(logp, target, weight, ignore_index, reduction)
    if label_smoothing == 0.0:
        return nll
    # PyTorch's formula: (1 - eps) * nll + eps / C * (sum over classes of -w_c * logp_c, reduced like nll)
    safe, w = _class_weights(target, weight, ignore_index, logp.dtype)
    smooth = -(logp if weight is None else logp * weight.reshape(wshape)).sum(cdim)
    smooth = where(target != ignore_index, smooth, 0.0)
    if reduction == "mean":
        smooth = smooth.sum() / w.sum()
    else:
        smooth = _reduce(smooth, reduction)
    return nll * (1.0 - label_smoothing) + smooth * (label_smoothing / input.shape[cdim])


def _warn_shape(input: Tensor, target: Tensor) -> None:
    if tuple(input.shape) != tuple(target.shape):
        warnings.warn(f"Using a target size ({target.shape}) that is different to the input size "
                      f"({input.shape}). This will likely lead to incorrect results due to broadcasting. "
                      f"Please ensure they have the same size.", stacklevel=3)


def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
             reduction: str = "mean") -> Tensor:
    """Mean squared error; like PyTorch it warns (and broadcasts) when the shapes differ."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    _warn_shape(input, target)
    d = input - target
    return _reduce(d * d, reduction)


def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    _warn_shape(input, target)
    return _reduce((input - target).abs(), reduction)


def _clamped_log(x: Tensor) -> Tensor:
    """log(x) clamped at -100 as PyTorch's BCE, with a zero (not NaN) gradient where x == 0."""
    positive = x > 0
    return where(positive, where(positive, x, 1.0).log(), -100.0).clamp(min=-100.0)


def _log1p(u: Tensor) -> Tensor:
    """log(1 + u), accurate for tiny u (the value of log(w) * u / (w - 1), w = 1 + u, as in Goldberg's trick);
    its derivatives are those of log(1 + u)."""
    w = u + 1.0
    plain = where(w > 0, w, 1.0).log()
    same = w == 1.0
    accurate = where(same, u, plain * (u / where(same, 1.0, w - 1.0)))
    return plain + (accurate - plain).detach()


def _bce_terms(x: Tensor, y: Tensor) -> Tensor:
    """PyTorch's pointwise BCE: (y - 1) * max(log1p(-x), -100) - y * max(log(x), -100)."""
    log_1mx = where(x < 1.0, _log1p(-where(x < 1.0, x, 0.0)), -100.0).clamp(min=-100.0)
    return (y - 1.0) * log_1mx - y * _clamped_log(x)


_BCE_EPSILON = float(np.float32(1e-12))  # PyTorch's EPSILON, a C float, also for double inputs


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
                         reduce=None, reduction: str = "mean") -> Tensor:
    """-(y log x + (1 - y) log(1 - x)) for probabilities x in [0, 1], each log clamped at -100 as PyTorch.

    The input's gradient is PyTorch's (x - y) / max(x (1 - x), 1e-12): the derivative of the formula where
    x (1 - x) >= 1e-12 (so double backward works there), that constant-clamped value at x = 0 or 1.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise TargetShapeError(f"Using a target size ({target.shape}) that is different to the input size "
                               f"({input.shape}) is deprecated. Please ensure they have the same size.")
    values = _concrete_or_none(input)
    if values is not None and values.size and not (values.min() >= 0 and values.max() <= 1):
        raise OpError(f"binary_cross_entropy: all elements of input should be between 0 and 1 (got values in "
                      f"[{values.min():g}, {values.max():g}]); apply sigmoid first or use "
                      f"binary_cross_entropy_with_logits")
    if input.requires_grad and _grad_enabled():
        inside = input * (1.0 - input) >= _BCE_EPSILON
        xd = input.detach()
        edge = _bce_terms(xd, target) + (input - xd) * ((xd - target.detach()) / _BCE_EPSILON)
        loss = where(inside, _bce_terms(where(inside, input, 0.5), target), edge)
    else:
        loss = _bce_terms(input, target)
    if weight is not None:
        if tuple(broadcast_shapes("binary_cross_entropy", tuple(target.shape), tuple(weight.shape))) \
                != tuple(target.shape):
            raise OpError(f"binary_cross_entropy: weight of shape {shape_str(weight.shape)} does not broadcast to "
                          f"the target's shape {shape_str(target.shape)}")
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     size_average=None, reduce=None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """Sigmoid + BCE in one stable formula: (1 - y) x + softplus(-x) (times pos_weight's factor)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise TargetShapeError(f"Target size ({target.shape}) must be the same as input size ({input.shape})")
    sp = _softplus(-input)
    if pos_weight is not None:
        sp = sp * ((pos_weight - 1.0) * target + 1.0)
    loss = (1.0 - target) * input + sp
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


# composites grouped by idea in their own modules (they use the helpers above), re-exported here as PyTorch has them
from ._attention import multi_head_attention_forward, scaled_dot_product_attention  # noqa: E402
from ._distance import cosine_similarity, pairwise_distance  # noqa: E402
from ._embedding import embedding  # noqa: E402
from ._losses import huber_loss, kl_div, smooth_l1_loss, triplet_margin_loss  # noqa: E402
from ._normalization import layer_norm, rms_norm  # noqa: E402
from ._resample import interpolate, upsample, upsample_bilinear, upsample_nearest  # noqa: E402

__all__ += ["cosine_similarity", "pairwise_distance", "huber_loss", "kl_div", "smooth_l1_loss",
            "triplet_margin_loss", "interpolate", "upsample", "upsample_bilinear", "upsample_nearest",
            "multi_head_attention_forward", "scaled_dot_product_attention", "embedding", "layer_norm", "rms_norm"]
