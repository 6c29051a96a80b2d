"""The multi-head scaled dot-product attention op: `attention` (self or cross, causal, padded, grouped
heads, dropout), forward and backward. A torch custom op with a fake implementation and an autograd
formula, served by the backend `fastseq.backends` chooses; so far the reference serves it everywhere
(the fused kernels of the attention issue will register here).

The math, the masking rules and the workspace (the log-sum-exp) are in fastseq/reference/attention.py.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..reference.lstm import acc_dtype
from . import _checks as C
from ._dispatch import implementation, register

register("attention", reference="fastseq.reference.attention", triton=None)


def _impl(function: str, t: Tensor):
    return implementation("attention", function, t.device.type)


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
    for name, t in (("q", q), ("k", k), ("v", v)):
        C.check_float(op, name, t)
        C.check_like(op, name, t, "q", q)
        C.check_ndim(op, name, t, 4, "(B, H, T, D)")
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    C.check_shape(op, "k", k, (B, Hkv, Tk, D), "(B, Hkv, Tk, D) with the batch and head dim of q")
    C.check_shape(op, "v", v, (B, Hkv, Tk, v.shape[3]), "(B, Hkv, Tk, Dv) with the B, Hkv, Tk of k")
    if Hkv < 1 or Hq % Hkv:
        C.fail(op, f"the key/value heads Hkv = {Hkv} must divide the query heads Hq = {Hq}")
    if Tq < 1 or Tk < 1:
        C.fail(op, f"q and k must hold at least one position, got Tq = {Tq}, Tk = {Tk}")
    if not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        C.fail(op, f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if scale is not None and (not isinstance(scale, (int, float)) or not scale > 0):
        C.fail(op, f"scale must be a positive number or None, got {scale!r}")
    lengths = C.check_key_padding(op, key_padding_mask, lengths, B, Tk, q.device)
    mask = None if key_padding_mask is None else key_padding_mask.contiguous()
    seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0
    out, _ = _attention(q.contiguous(), k.contiguous(), v.contiguous(), lengths, mask, bool(causal),
                        float(D**-0.5 if scale is None else scale), float(dropout_p), seed)
    return out
