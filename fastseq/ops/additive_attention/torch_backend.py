"""The `torch` backend of additive attention: the whole (B, Tq, Tk, H) tanh tensor built at once with torch's
ops, differentiated by torch's autograd (the form users write, `reference.naive`, with the op's padding rule
and workspace). Autograd keeps that tensor for the backward, where the reference recomputes it block by
block; on a CPU that makes a decoder's training steps faster (docs/benchmarks.md), so the family lists it
under `autograd` there.
Its memory is the tensor's, so the public op chooses it only for calls whose tensor stays within
`MATERIALIZED` elements; larger ones go to the blocked backends.

Padding as in reference.py: a padded key's projection and value are zeroed before use (whatever they hold
must not reach an output or a gradient), and a row with no key left gets a zero context, a +inf
log-sum-exp and zero gradients.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...masking import keep_mask
from ...numerics import acc_dtype

# Elements of (B, Tq, Tk, H) up to which this backend may serve a call (64 MiB in float32)
MATERIALIZED = 1 << 24


def additive_attention(
    query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
    lengths: Optional[Tensor], key_padding_mask: Optional[Tensor], save_scores: bool = False,
    padding_zeroed: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (context (B, Tq, Dv) in the input dtype, lse (B, Tq) in the accumulation dtype, not differentiated,
    the scores (B, Tq, Tk) when save_scores, else empty).
    padding_zeroed: the caller has zeroed the padded keys' rows of key_proj and values (a decoder's
    PrecomputedKeys, once per sequence), so this call need not."""
    acc = acc_dtype(query_proj.dtype)
    B, Tq, _ = query_proj.shape
    q, k, w, vals = (t.to(acc) for t in (query_proj, key_proj, v, values))
    keep = keep_mask(B, key_proj.shape[1], lengths, key_padding_mask, q.device)
    if keep is not None and not padding_zeroed:
        k, vals = zero_padding(k, vals, keep)
    scores = (q[:, :, None, :] + k[:, None]).tanh_() @ w  # in place: one (B, Tq, Tk, H) tensor, not two
    if keep is not None:
        empty = ~keep.any(-1)[:, None, None]  # rows with no key: scored as if all were kept, then zeroed
        scores = scores.masked_fill(~keep[:, None, :] & ~empty, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if keep is not None:
        weights = weights.masked_fill(empty, 0.0)
    context = (weights @ vals).to(query_proj.dtype)
    kept = scores.new_empty(0)
    if save_scores:
        kept = scores.detach() if keep is None else scores.detach().masked_fill(~keep[:, None, :], float("-inf"))
    lse = torch.logsumexp(scores.detach(), dim=-1)
    return context, lse if keep is None else lse.masked_fill(empty[..., 0], float("inf")), kept


def zero_padding(key_proj: Tensor, values: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """key_proj (B, Tk, H) and values (B, Tk, Dv) with the rows of the keys not kept ((B, Tk) False) zeroed,
    differentiably: whatever they held (NaN, Inf) reaches no output and no gradient."""
    keep = keep[..., None]
    return torch.where(keep, key_proj, 0.0), torch.where(keep, values, 0.0)


def additive_attention_decode(
    query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
    lengths: Optional[Tensor], key_padding_mask: Optional[Tensor], padding_zeroed: bool = False,
) -> Tensor:
    """One query per row, query_proj (B, H) -> context (B, Dv); padding_zeroed as in additive_attention."""
    return additive_attention(query_proj[:, None], key_proj, v, values, lengths, key_padding_mask,
                              padding_zeroed=padding_zeroed)[0][:, 0]
