"""`torch.nn.functional.scaled_dot_product_attention`'s signature and conventions, served by fastseq's
attention op: code written for SDPA moves over by changing the import.

SDPA's conventions, where they differ from `fastseq.ops.attention` (whose bool masks follow
torch.nn.MultiheadAttention): a bool attn_mask is True where a query *may* attend; is_causal aligns the
queries to the start of the keys (query i sees keys j <= i); any number of leading batch dimensions;
grouped heads only with enable_gqa=True.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import checks as C

OP = "scaled_dot_product_attention"


def _mask(attn_mask: Optional[Tensor], batch: tuple[int, ...], L: int, S: int, is_causal: bool,
          device: torch.device) -> Optional[Tensor]:
    """SDPA's mask (broadcastable to (*batch, L, S); bool True = attend, or float added) as fastseq's: 4-D,
    bool True = blocked, or float; is_causal as a top-left causal mask when L != S."""
    if is_causal:
        if attn_mask is not None:
            C.fail(OP, "attn_mask and is_causal=True were both given; pass one of them (as torch's SDPA asks)")
        return None if L == S else torch.ones(L, S, dtype=torch.bool, device=device).triu(1)[None, None]
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, Tensor):
        C.fail(OP, f"attn_mask must be a tensor, got {type(attn_mask).__name__}", TypeError)
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        C.fail(OP, f"attn_mask must be bool (True = may attend) or float (added to the scores), got {attn_mask.dtype}",
               TypeError)
    full = (*batch, L, S)
    try:
        if attn_mask.dim() > len(full) or torch.broadcast_shapes(attn_mask.shape, full) != full:
            raise RuntimeError
    except RuntimeError:
        C.fail(OP, f"attn_mask must broadcast to {full}, got {tuple(attn_mask.shape)}")
    mask = attn_mask.reshape((1,) * (len(full) - attn_mask.dim()) + tuple(attn_mask.shape))
    lead = batch[:-1]  # the batch dims before the heads fold into one, as the inputs' do
    if any(n != 1 for n in mask.shape[:len(lead)]):
        mask = mask.expand(*lead, *mask.shape[len(lead):])
    mask = mask.reshape(-1, *mask.shape[len(lead):]) if lead else mask[None]
    return ~mask if mask.dtype == torch.bool else mask


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    """SDPA on fastseq's backends: query (..., Hq, L, E), key (..., Hkv, S, E), value (..., Hkv, S, Ev)
    -> (..., Hq, L, Ev). attn_mask: bool (True = may attend) or float (added), broadcastable to
    (..., Hq, L, S); is_causal: query i sees keys j <= i; enable_gqa: Hkv may divide Hq. A query that
    sees no key gets zeros, as torch's SDPA gives."""
    from . import attention

    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            C.fail(OP, f"{name} must be a tensor, got {type(t).__name__}", TypeError)
        if t.dim() < 2:
            C.fail(OP, f"{name} must have at least 2 dims (..., positions, features), got {t.dim()}")
    if not (query.dim() == key.dim() == value.dim()):
        C.fail(OP, f"query, key and value must have the same number of dims, got {query.dim()}, {key.dim()}, "
                   f"{value.dim()}")
    L, S = query.shape[-2], key.shape[-2]
    if key.shape[-1] != query.shape[-1] or value.shape[-2] != S:
        C.fail(OP, f"key must be (..., S, E={query.shape[-1]}) and value (..., S, Ev) with key's S, got key "
                   f"{tuple(key.shape)}, value {tuple(value.shape)}")
    if query.dim() == 2:
        query, key, value = query[None], key[None], value[None]
        squeeze = 1
    else:
        squeeze = 0
    if query.dim() == 3:
        out = scaled_dot_product_attention(query[:, None], key[:, None], value[:, None],
                                           None if attn_mask is None else (attn_mask if attn_mask.dim() < 3
                                                                           else attn_mask[:, None]),
                                           dropout_p, is_causal, scale, enable_gqa)[:, 0]
        return out[0] if squeeze else out
    batch, Hq, Hkv = tuple(query.shape[:-2]), query.shape[-3], key.shape[-3]
    if tuple(key.shape[:-3]) != batch[:-1] or tuple(value.shape[:-3]) != batch[:-1] or value.shape[-3] != Hkv:
        C.fail(OP, f"query, key and value must share their batch dims {batch[:-1]} (and key and value their heads), "
                   f"got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if Hkv != Hq and not enable_gqa:
        C.fail(OP, f"query has {Hq} heads and key {Hkv}: grouped heads need enable_gqa=True (as in torch's SDPA)")
    if enable_gqa and Hq % Hkv:
        C.fail(OP, f"enable_gqa: key's {Hkv} heads must divide query's {Hq}")
    mask = _mask(attn_mask, batch, L, S, is_causal, query.device)
    q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (query, key, value))
    out = attention(q, k, v, causal=bool(is_causal) and L == S, scale=scale, dropout_p=dropout_p, attn_mask=mask)
    return out.reshape(*batch, L, value.shape[-1])
