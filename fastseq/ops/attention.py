"""The multi-head scaled dot-product attention ops: `attention` (self or cross, causal, padded, grouped
heads, dropout), forward and backward, and `attention_decode` (one new query per sequence against a KV
cache, as a decoder calls it once per generated token). Torch custom ops with fake implementations (and
an autograd formula for `attention`), served by the backend `fastseq.backends` chooses: "triton" or
"reference" for `attention`; "cuda" (fastseq._C), "triton" or "reference" for `attention_decode`.

The math, the masking rules and the workspace (the log-sum-exp) are in fastseq/reference/attention.py.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..reference.attention import attention_weights as reference_weights
from ..reference.lstm import acc_dtype
from . import _checks as C
from ._dispatch import implementation, register

register("attention", ("attention_forward", "attention_backward"), reference="fastseq.reference.attention",
         triton="fastseq.triton.attention")
register("attention_decode", ("attention_decode",), reference="fastseq.reference.attention",
         triton="fastseq.triton.attention", extension=("cuda",))


def _impl(function: str, t: Tensor, family: str = "attention"):
    return implementation(family, function, t.device.type)


@torch.library.custom_op("fastseq::attention", mutates_args=())
def _attention(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
               causal: bool, scale: float, dropout_p: float, seed: int) -> tuple[Tensor, Tensor]:
    return _impl("attention_forward", q)(q, k, v, causal, lengths, key_padding_mask, scale, dropout_p, seed)


@_attention.register_fake
def _(q, k, v, lengths, key_padding_mask, causal, scale, dropout_p, seed):
    B, Hq, Tq, _ = q.shape
    return q.new_empty(B, Hq, Tq, v.shape[3]), q.new_empty(B, Hq, Tq, dtype=acc_dtype(q.dtype))


@torch.library.custom_op("fastseq::attention_backward", mutates_args=())
def _attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor],
                        key_padding_mask: Optional[Tensor], causal: bool, scale: float, dropout_p: float, seed: int,
                        out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return _impl("attention_backward", q)(grad_out, q, k, v, causal, lengths, key_padding_mask, scale, dropout_p,
                                          seed, out, lse)


@_attention_backward.register_fake
def _(grad_out, q, k, v, lengths, key_padding_mask, causal, scale, dropout_p, seed, out, lse):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, lengths, key_padding_mask, causal, scale, dropout_p, seed = inputs
    ctx.flags = (causal, scale, dropout_p, seed)
    ctx.save_for_backward(q, k, v, lengths, key_padding_mask, *output)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, lengths, key_padding_mask, out, lse = ctx.saved_tensors
    grads = _attention_backward(grad_out.contiguous(), q, k, v, lengths, key_padding_mask, *ctx.flags, out, lse)
    return (*grads, None, None, None, None, None, None)


_attention.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("fastseq::attention_decode", mutates_args=())
def _attention_decode(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
                      scale: float) -> Tensor:
    return _impl("attention_decode", q, "attention_decode")(q, k, v, lengths, key_padding_mask, scale)


@_attention_decode.register_fake
def _(q, k, v, lengths, key_padding_mask, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[3])


def _check_heads(op: str, q: Tensor, k: Tensor, v: Tensor, q_dims: str) -> None:
    C.check_float(op, "q", q)
    C.check_ndim(op, "q", q, len(q_dims.split(",")), q_dims)
    for name, t in (("k", k), ("v", v)):
        C.check_float(op, name, t)
        C.check_like(op, name, t, "q", q)
    C.check_ndim(op, "k", k, 4, "(B, Hkv, Tk, D)")
    C.check_ndim(op, "v", v, 4, "(B, Hkv, Tk, Dv)")
    B, Hq, D = q.shape[0], q.shape[1], q.shape[-1]
    Hkv, Tk = k.shape[1], k.shape[2]
    C.check_shape(op, "k", k, (B, Hkv, Tk, D), "(B, Hkv, Tk, D) with the batch and head dim of q")
    C.check_shape(op, "v", v, (B, Hkv, Tk, v.shape[3]), "(B, Hkv, Tk, Dv) with the B, Hkv, Tk of k")
    if Hkv < 1 or Hq % Hkv:
        C.fail(op, f"the key/value heads Hkv = {Hkv} must divide the query heads Hq = {Hq}")
    if Tk < 1:
        C.fail(op, f"k must hold at least one position, got Tk = {Tk}")


def _check_scale(op: str, scale) -> None:
    if scale is not None and (not isinstance(scale, (int, float)) or not scale > 0):
        C.fail(op, f"scale must be a positive number or None, got {scale!r}")


def _cache_layout(t: Tensor) -> Tensor:
    """t itself when each (batch row, head) holds its positions as contiguous rows, whatever its batch and
    head strides (a view of the first positions of a longer cache, a batch expanded from one row, a single
    head's odd stride): the decode kernels read those strides. Else a copy in the standard layout."""
    T, D = t.shape[2], t.shape[3]
    if (D == 1 or t.stride(3) == 1) and (T == 1 or t.stride(2) == D):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    key_padding_mask: Optional[Tensor] = None,
    lengths: Union[Tensor, Sequence[int], None] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Scaled dot-product attention of q (B, Hq, Tq, D) over k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, Hq, Tq, Dv).

    Hkv must divide Hq (grouped-query and multi-query attention). causal: query i sees keys
    j <= i + Tk − Tq (aligned to the end of the keys, as in KV-cache decoding). Keys are padded where
    key_padding_mask (B, Tk, bool) is True or at j >= lengths[b]. A query that sees no key gets zeros.
    scale defaults to 1/√D. dropout_p drops attention probabilities (pass 0.0 at evaluation).
    """
    op = "attention"
    q, k, v = C.autocast(q, k, v)
    _check_heads(op, q, k, v, "(B, Hq, Tq, D)")
    B, Hq, Tq, D = q.shape
    Tk = k.shape[2]
    if Tq < 1:
        C.fail(op, f"q must hold at least one position, got Tq = {Tq}")
    if not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        C.fail(op, f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    _check_scale(op, scale)
    lengths = C.check_key_padding(op, key_padding_mask, lengths, B, Tk, q.device)
    mask = None if key_padding_mask is None else key_padding_mask.contiguous()
    seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0
    out, _ = _attention(q.contiguous(), k.contiguous(), v.contiguous(), lengths, mask, bool(causal),
                        float(D**-0.5 if scale is None else scale), float(dropout_p), seed)
    return out


def attention_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lengths: Union[Tensor, Sequence[int], None] = None,
    key_padding_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """One new query per sequence, q (B, Hq, D), against cached keys k (B, Hkv, Tk, D) and values
    v (B, Hkv, Tk, Dv) -> (B, Hq, Dv): a decoder's attention at one generation step.

    Row b sees its keys j < lengths[b] that key_padding_mask does not pad (a query at the end of its
    sequence sees every earlier position, so no causal flag is needed). k and v may be views of the
    first Tk positions of a longer cache (`fastseq.nn.KVCache.keys()`); they are read in place. When a
    gradient is needed the call goes through the differentiable `attention` op with Tq = 1.
    """
    op = "attention_decode"
    _check_heads(op, q, k, v, "(B, Hq, D)")
    _check_scale(op, scale)
    lengths = C.check_key_padding(op, key_padding_mask, lengths, q.shape[0], k.shape[2], q.device)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return attention(q[:, :, None], k, v, key_padding_mask=key_padding_mask, lengths=lengths, scale=scale)[:, :, 0]
    mask = None if key_padding_mask is None else key_padding_mask.contiguous()
    return _attention_decode(q.contiguous(), _cache_layout(k), _cache_layout(v), lengths, mask,
                             float(q.shape[-1] ** -0.5 if scale is None else scale))


def attention_weights(
    q: Tensor,
    k: Tensor,
    causal: bool = False,
    key_padding_mask: Optional[Tensor] = None,
    lengths: Union[Tensor, Sequence[int], None] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """The attention probabilities P (B, Hq, Tq, Tk) of `attention(q, k, v, ...)` before dropout,
    differentiable; zero rows for queries that see no key. They take O(B·Hq·Tq·Tk) memory: the fused
    op never builds them, so ask only when they are needed (the reference computes them)."""
    op = "attention_weights"
    _check_heads(op, q, k, k, "(B, Hq, Tq, D)")
    _check_scale(op, scale)
    lengths = C.check_key_padding(op, key_padding_mask, lengths, q.shape[0], k.shape[2], q.device)
    return reference_weights(q, k, bool(causal), lengths, key_padding_mask, scale)
