"""Attention: scaled_dot_product_attention and multi_head_attention_forward with PyTorch's masks, scaling,
dropout and layouts, and the triangular masks they use.

Each is two batched matmuls around one row-wise chain (scale, mask, softmax, dropout) that a compiled step fuses
into one kernel per direction.
"""

from __future__ import annotations

import math

import numpy as np

from .. import dtypes as D
from .._tensor import Tensor, cat, where
from ..errors import OpError, shape_str
from ..factories import tensor, zeros
from ..random import rand


def causal_mask(length: int, source: int | None = None, device=None) -> Tensor:
    """The bool [length, source] mask of allowed positions (True on and below the diagonal)."""
    source = length if source is None else source
    return tensor(np.tril(np.ones((length, source), dtype=bool)), device=device)


def square_subsequent_mask(sz: int, device=None, dtype=None) -> Tensor:
    """nn.Transformer.generate_square_subsequent_mask: 0.0 on and below the diagonal, -inf above."""
    dtype = D.default_float if dtype is None else D.as_dtype(dtype)
    return tensor(np.triu(np.full((sz, sz), -np.inf), 1), dtype=dtype, device=device)


def _dropout_weights(w: Tensor, p: float) -> Tensor:
    if p <= 0.0:
        return w
    if p >= 1.0:
        return w * 0.0
    keep = rand(tuple(w.shape), dtype=w.dtype, device=w.device) >= p
    return w * (keep.to(w.dtype) * (1.0 / (1.0 - p)))


def _softmax(s: Tensor, safe: bool) -> Tensor:
    """softmax over the last dim; `safe`: a row whose every score is -inf gives zeros (not NaN), as PyTorch's
    scaled_dot_product_attention."""
    m = s.amax(-1, keepdim=True).detach()
    if safe:
        m = where(m == -math.inf, 0.0, m)
    e = (s - m).exp()
    total = e.sum(-1, keepdim=True)
    if safe:
        total = where(total == 0.0, 1.0, total)
    return e / total


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """softmax(q k^T * scale + mask) v over [..., L, E] queries and [..., S, E] keys/values.

    `attn_mask`: bool (True = may attend) or float (added to the scores), broadcast to [..., L, S];
    `is_causal`: the lower-triangular mask (no attn_mask then); dropout on the weights when dropout_p > 0.
    """
    if query.ndim < 2 or key.ndim < 2 or value.ndim < 2:
        raise OpError(f"scaled_dot_product_attention: expected query, key and value with at least 2 dims, got "
                      f"{shape_str(query.shape)}, {shape_str(key.shape)}, {shape_str(value.shape)}")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise OpError(f"scaled_dot_product_attention: query {shape_str(query.shape)}, key {shape_str(key.shape)} "
                      f"and value {shape_str(value.shape)} do not fit together (E of query and key, S of key and "
                      f"value must match)")
    if is_causal and attn_mask is not None:
        raise OpError("_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    L, S = query.shape[-2], key.shape[-2]
    if enable_gqa and query.ndim >= 3 and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = key.unsqueeze(-3).expand(*key.shape[:-2], rep, S, key.shape[-1]).flatten(-4, -3)
        value = value.unsqueeze(-3).expand(*value.shape[:-2], rep, S, value.shape[-1]).flatten(-4, -3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    scores = query.matmul(key.transpose(-2, -1)) * scale
    safe = False
    if is_causal:
        future = tensor(np.triu(np.ones((L, S), dtype=bool), 1), device=query.device)  # ~causal_mask
        scores = scores.masked_fill(future, -math.inf)
    elif attn_mask is not None:
        if attn_mask.dtype is D.bool_:
            scores = scores.masked_fill(attn_mask.logical_not(), -math.inf)
        else:
            scores = scores + attn_mask.to(scores.dtype)
        safe = True
    weights = _dropout_weights(_softmax(scores, safe), dropout_p)
    return weights.matmul(value)


def _canonical_mask(mask: Tensor | None, name: str, dtype) -> Tensor | None:
    """A bool mask (True = masked out) as a float one (-inf where masked), as torch.nn.functional._canonical_mask."""
    if mask is None:
        return None
    if mask.dtype is D.bool_:
        return zeros(tuple(mask.shape), dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)
    if not mask.dtype.is_floating_point:
        raise AssertionError(f"only bool and floating types of {name} are supported")
    return mask.to(dtype)


def _in_projection(query, key, value, w, b, e):
    if query is key and key is value:
        proj = query.matmul(w.t())
        if b is not None:
            proj = proj + b
        return proj.chunk(3, -1)
    ws = w.chunk(3)
    bs = b.chunk(3) if b is not None else (None, None, None)
    out = []
    for x, wi, bi in zip((query, key, value), ws, bs):
        y = x.matmul(wi.t())
        out.append(y if bi is None else y + bi)
    return out


def multi_head_attention_forward(query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int,
                                 in_proj_weight: Tensor | None, in_proj_bias: Tensor | None, bias_k: Tensor | None,
                                 bias_v: Tensor | None, add_zero_attn: bool, dropout_p: float,
                                 out_proj_weight: Tensor, out_proj_bias: Tensor | None, training: bool = True,
                                 key_padding_mask: Tensor | None = None, need_weights: bool = True,
                                 attn_mask: Tensor | None = None, use_separate_proj_weight: bool = False,
                                 q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
                                 v_proj_weight: Tensor | None = None, static_k: Tensor | None = None,
                                 static_v: Tensor | None = None, average_attn_weights: bool = True,
                                 is_causal: bool = False):
    """torch.nn.functional.multi_head_attention_forward over [L, N, E] (or unbatched [L, E]) inputs.

    Returns (output [L, N, E], weights [N, L, S] averaged over heads, [N, H, L, S], or None)."""
    if static_k is not None or static_v is not None:
        raise NotImplementedError("multi_head_attention_forward: static_k/static_v are not supported")
    batched = query.ndim == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    if embed_dim != embed_dim_to_check:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim_to_check}, but got {embed_dim}")
    if embed_dim % num_heads:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    head_dim = embed_dim // num_heads
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                           "method `generate_square_subsequent_mask` to create this mask.")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # the hint says attn_mask is the causal mask: SDPA's is_causal computes it
    else:
        attn_mask = _canonical_mask(attn_mask, "attn_mask", query.dtype)
        is_causal = False if key_padding_mask is not None else is_causal
    key_padding_mask = _canonical_mask(key_padding_mask, "key_padding_mask", query.dtype)

    if use_separate_proj_weight:
        q = query.matmul(q_proj_weight.t())
        k = key.matmul(k_proj_weight.t())
        v = value.matmul(v_proj_weight.t())
        if in_proj_bias is not None:
            bq, bk, bv = in_proj_bias.chunk(3)
            q, k, v = q + bq, k + bk, v + bv
    else:
        q, k, v = _in_projection(query, key, value, in_proj_weight, in_proj_bias, embed_dim)

    if attn_mask is not None:
        if attn_mask.ndim == 2:
            if tuple(attn_mask.shape) != (tgt_len, key.shape[0]):
                raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, but should be "
                                   f"{(tgt_len, key.shape[0])}.")
            attn_mask = attn_mask.unsqueeze(0)
        elif attn_mask.ndim == 3:
            if tuple(attn_mask.shape) != (bsz * num_heads, tgt_len, key.shape[0]):
                raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, but should be "
                                   f"{(bsz * num_heads, tgt_len, key.shape[0])}.")
        else:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.ndim} is not supported")

    if bias_k is not None and bias_v is not None:
        k = cat([k, bias_k.reshape(1, 1, embed_dim).expand(1, bsz, embed_dim)])
        v = cat([v, bias_v.reshape(1, 1, embed_dim).expand(1, bsz, embed_dim)])
        if attn_mask is not None:
            attn_mask = attn_mask.pad(((0, 0), (0, 0), (0, 1)))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.pad(((0, 0), (0, 1)))

    # [L, N, E] -> [N * H, L, D]
    q = q.reshape(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.reshape(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.reshape(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)

    if add_zero_attn:
        k = k.pad(((0, 0), (0, 1), (0, 0)))
        v = v.pad(((0, 0), (0, 1), (0, 0)))
        if attn_mask is not None:
            attn_mask = attn_mask.pad(((0, 0), (0, 0), (0, 1)))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.pad(((0, 0), (0, 1)))
    src_len = k.shape[1]

    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (bsz, src_len):
            raise AssertionError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but got "
                                 f"{tuple(key_padding_mask.shape)}")
        kpm = key_padding_mask.reshape(bsz, 1, 1, src_len).expand(bsz, num_heads, 1, src_len)
        kpm = kpm.reshape(bsz * num_heads, 1, src_len)
        attn_mask = kpm if attn_mask is None else attn_mask + kpm

    if not training:
        dropout_p = 0.0

    if need_weights:
        scores = (q * math.sqrt(1.0 / head_dim)).matmul(k.transpose(-2, -1))
        if attn_mask is not None:
            scores = scores + attn_mask
        weights = _dropout_weights(_softmax(scores, False), dropout_p)
        out = weights.matmul(v)  # [N * H, L, D]
        out = out.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
        out = out.matmul(out_proj_weight.t())
        if out_proj_bias is not None:
            out = out + out_proj_bias
        out = out.reshape(tgt_len, bsz, embed_dim)
        weights = weights.reshape(bsz, num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(1)
        if not batched:
            out, weights = out.squeeze(1), weights.squeeze(0)
        return out, weights

    if attn_mask is not None:
        attn_mask = attn_mask.unsqueeze(0) if attn_mask.shape[0] == 1 else \
            attn_mask.reshape(bsz, num_heads, -1, src_len)
    q = q.reshape(bsz, num_heads, tgt_len, head_dim)
    k = k.reshape(bsz, num_heads, src_len, head_dim)
    v = v.reshape(bsz, num_heads, src_len, head_dim)
    out = scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)  # [N, H, L, D]
    out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
    out = out.matmul(out_proj_weight.t())
    if out_proj_bias is not None:
        out = out + out_proj_bias
    out = out.reshape(tgt_len, bsz, embed_dim)
    if not batched:
        out = out.squeeze(1)
    return out, None
