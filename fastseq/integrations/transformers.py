"""Hugging Face models on fastseq's attention, through transformers' own registry:

    import fastseq.integrations.transformers            # registers "fastseq"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="fastseq")
    model.set_attn_implementation("fastseq")            # or switch a loaded model

Registers an attention function with transformers' AttentionInterface and its mask builder (SDPA's: bool,
True = may attend) with AttentionMaskInterface, both as "fastseq". The function takes what transformers
hands its SDPA one (query (B, Hq, L, D), key/value (B, Hkv, S, D) with the model's KV cache applied, the
mask, scaling, dropout, is_causal, T5's position_bias) and serves it through
`fastseq.ops.scaled_dot_product_attention`, so grouped heads reach the kernels unrepeated.
transformers is an optional extra: importing this module without it raises naming it.
"""
from __future__ import annotations

from typing import Optional

import torch

try:
    import transformers
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
except ImportError as e:  # pragma: no cover - the optional extra
    raise ImportError("fastseq.integrations.transformers needs Hugging Face transformers: pip install "
                      "'fastseq[hf]' (or transformers>=4.48)") from e

from ..ops.attention.sdpa import scaled_dot_product_attention

NAME = "fastseq"


def _position_bias_mask(position_bias, attention_mask, is_causal, query, key):
    """T5's learned bias as an additive mask, -inf-like where a query may not attend (as transformers' SDPA path
    builds it)."""
    lowest = torch.finfo(key.dtype).min
    if attention_mask is None:
        if not is_causal:
            return position_bias
        L, S = query.shape[2], key.shape[2]
        seen = torch.arange(L, device=key.device)[:, None] >= torch.arange(S, device=key.device)[None, :]
        return torch.where(seen.view(1, 1, L, S), position_bias, lowest)
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, position_bias, lowest)
    return position_bias + attention_mask


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                      is_causal: Optional[bool] = None, position_bias: Optional[torch.Tensor] = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention function contract -> (output (B, L, Hq, Dv), no weights)."""
    if kwargs.get("softcap") is not None:
        raise ValueError("attn_implementation='fastseq' does not serve softcap; use 'eager'")
    L, S = query.shape[2], key.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(L > 1 and attention_mask is None and is_causal)
    if is_causal and S > L:  # an empty static cache at prefill: SDPA's causal rule aligns queries to the start
        key, value = key[:, :, :L], value[:, :, :L]
        position_bias = None if position_bias is None else position_bias[..., :L]
    if position_bias is not None:
        attention_mask, is_causal = _position_bias_mask(position_bias, attention_mask, is_causal, query, key), False
    if attention_mask is not None and attention_mask.dtype != torch.bool and attention_mask.dtype != query.dtype:
        attention_mask = attention_mask.to(query.dtype)
    out = scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                       is_causal=is_causal, scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register "fastseq" with transformers' attention and mask interfaces (done on import)."""
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


register()

__all__ = ["NAME", "attention_forward", "register", "transformers"]
