"""The `torch` backend of the attention ops: torch's `scaled_dot_product_attention` (its flash, cuDNN,
memory-efficient or math kernel, which torch picks). It returns no log-sum-exp, so it implements no
`attention_backward`: without a gradient the custom op runs it, and where the family lists it under
`autograd` (a CPU) the public op calls it directly and torch's autograd differentiates it.

The contract is fastseq/ops/attention/reference.py's, which SDPA differs from in three places, handled
here: causal queries are aligned to the end of the keys (SDPA's is_causal aligns them to the start, so a
mask is passed when Tq != Tk); a query that sees no key gets zeros (SDPA gives NaN); padded keys' k and v
are zeroed first where they may hold NaN or Inf (0 · NaN in P V would reach the output); and a bool
attn_mask says True where a query may *not* attend (torch.nn.MultiheadAttention's convention, SDPA's
opposite). Dropout runs through the
reference, whose mask a seed reproduces (SDPA's draws from the global generator).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...masking import each_row_keeps_one, keep_mask, keeps_all
from ...numerics import acc_dtype
from ..checks import trusting
from . import reference


def _finite_padding(k: Tensor, v: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor]) -> bool:
    """On a CPU, whether the positions padding may cover hold finite keys and values only: then P = 0 there
    keeps them out of the output, and zeroing them (a copy of k and v: 0.58 of a decoding step's 0.82 ms
    here, against SDPA's 0.23 ms) is not needed. One sum of the positions past the shortest row (all of
    them under a key padding mask): NaN or Inf makes it non-finite (an overflow too, which only costs the
    zeroing). Never on a GPU, where reading the sum would synchronize; in a decoding step (checks.trusted)
    the cache's padding is trusted."""
    if torch.compiler.is_compiling():
        return False
    if trusting():  # a decoding step: a KVCache's padding holds zeros or the model's own values
        return True
    if k.device.type != "cpu":
        return False
    start = int(lengths.min()) if key_padding_mask is None and lengths is not None and lengths.numel() else 0
    return bool(torch.isfinite(k[:, :, start:].sum() + v[:, :, start:].sum()))


def _sdpa(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
          attn_mask: Optional[Tensor], causal: bool, scale: float, rows_see_a_key: bool = False) -> Tensor:
    """q (B, Hq, Tq, D) over k, v (B, Hkv, Tk, ·) -> (B, Hq, Tq, Dv) under the reference's rules.
    rows_see_a_key: every query is known to see at least one key (a decoding step on its own cache), so no
    row needs zeroing."""
    B, Hq, Tq, _ = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    keep = keep_mask(B, Tk, lengths, key_padding_mask, q.device)
    decoding = trusting()  # a decoding step reads nothing on the host
    if keep is not None and not decoding and keeps_all(keep):
        keep = None  # a padding that pads nothing: SDPA without a mask
    if keep is not None and not _finite_padding(k, v, lengths, key_padding_mask):
        padded = ~keep[:, None, :, None]
        k, v = k.masked_fill(padded, 0), v.masked_fill(padded, 0)
    gqa = Hq != Hkv
    if attn_mask is None and keep is None and (not causal or Tq == Tk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
    if causal:
        seen = reference.visible(Tq, Tk, causal, lengths, key_padding_mask, B, q.device)
    else:  # reference.visible's mask, from the keep mask already made
        seen = None if keep is None else keep[:, None, None, :].expand(B, 1, Tq, Tk)
        if attn_mask is None and seen is not None and not rows_see_a_key and not decoding:
            rows_see_a_key = each_row_keeps_one(keep)
    if attn_mask is None or attn_mask.dtype == torch.bool:  # SDPA's bool mask: True = may attend
        if attn_mask is not None:
            seen = ~attn_mask if seen is None else seen & ~attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=seen, scale=scale, enable_gqa=gqa)
        return out if rows_see_a_key else out.masked_fill(~seen.any(-1, keepdim=True), 0)
    bias = attn_mask.to(q.dtype)  # SDPA takes a float mask in the query's dtype
    if seen is not None:
        bias = bias.masked_fill(~seen, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=gqa)
    return out.masked_fill((bias == float("-inf")).all(-1, keepdim=True), 0)


def attention(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
              attn_mask: Optional[Tensor], causal: bool, scale: float, dropout_p: float,
              seed: int) -> tuple[Tensor, Tensor]:
    """-> (out (B, Hq, Tq, Dv), an empty workspace: the backward, where there is one, is autograd's)."""
    if dropout_p > 0:
        return reference.attention(q, k, v, lengths, key_padding_mask, attn_mask, causal, scale, dropout_p, seed)
    out = _sdpa(q, k, v, lengths, key_padding_mask, attn_mask, causal, scale)
    return out, q.new_empty(0, dtype=acc_dtype(q.dtype))


def attention_decode(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
                     scale: float) -> Tensor:
    """q (B, Hq, D) against k, v (B, Hkv, Tk, ·) -> (B, Hq, Dv). In a decoding step (checks.trusted) without
    a key padding mask, each row's query sees at least its own key, just appended to its cache."""
    own_key = key_padding_mask is None and not torch.compiler.is_compiling() and trusting()
    return _sdpa(q[:, :, None], k, v, lengths, key_padding_mask, None, False, scale, own_key)[:, :, 0]
