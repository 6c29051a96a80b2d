"""Transformer encoder and decoder layers with torch.nn.TransformerEncoderLayer's and
TransformerDecoderLayer's arguments, submodule names and state_dict keys, on fastseq's attention
(Vaswani et al., "Attention Is All You Need", 2017).

Post-norm as in the paper, pre-norm with norm_first=True. Beyond torch's arguments they take
`lengths` (padding the kernels skip), a `KVCache` for the decoder's self-attention while generating,
and a precomputed `PrecomputedKV` memory for the cross-attention (see fastseq.nn.MultiheadAttention).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch.nn.functional as F
from torch import Tensor, nn

from .kv_cache import KVCache
from .multihead_attention import MultiheadAttention, PrecomputedKV

Lengths = Union[Tensor, Sequence[int], None]


def _activation(activation: Union[str, Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    if callable(activation):
        return activation
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    raise ValueError(f"activation must be 'relu', 'gelu' or a callable, got {activation!r}")


class _Layer(nn.Module):
    """What both layers hold: self-attention, the feed-forward network, the norms and dropouts."""

    has_cross_attention = False  # the decoder: cross-attention, a third norm and a third dropout

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, device=None,
                 dtype=None) -> None:
        """torch's arguments; submodules in torch's order (so state_dicts list the same keys in the same
        order)."""
        super().__init__()
        factory, cross = {"device": device, "dtype": dtype}, self.has_cross_attention
        attention = dict(dropout=dropout, bias=bias, batch_first=batch_first, **factory)
        self.self_attn = MultiheadAttention(d_model, nhead, **attention)
        if cross:
            self.multihead_attn = MultiheadAttention(d_model, nhead, **attention)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        for i in range(1, 4 if cross else 3):
            setattr(self, f"norm{i}", nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory))
        for i in range(1, 4 if cross else 3):
            setattr(self, f"dropout{i}", nn.Dropout(dropout))
        self.activation = _activation(activation)

    def _sa_block(self, x: Tensor, attn_mask, key_padding_mask, is_causal, lengths, kv_cache) -> Tensor:
        x = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False, attn_mask=attn_mask,
                           is_causal=is_causal, lengths=lengths, kv_cache=kv_cache)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor, dropout_out: nn.Dropout) -> Tensor:
        return dropout_out(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerEncoderLayer(_Layer):
    """Self-attention and a feed-forward network, each in a residual block with layer norm.

    Args (as torch.nn.TransformerEncoderLayer): d_model, nhead, dim_feedforward=2048, dropout=0.1,
    activation="relu" ("gelu" or a callable), layer_norm_eps=1e-5, batch_first=False, norm_first=False,
    bias=True, device=None, dtype=None.

    forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False, lengths=None, kv_cache=None):
    src (S, N, E) or (N, S, E) with batch_first. src_mask: only the causal mask (see MultiheadAttention).
    A decoder-only (GPT-style) model is a stack of these with is_causal=True, and a kv_cache to generate.
    """

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False, lengths: Lengths = None, kv_cache: Optional[KVCache] = None) -> Tensor:
        x = src
        attend = (src_mask, src_key_padding_mask, is_causal, lengths, kv_cache)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), *attend)
            return x + self._ff_block(self.norm2(x), self.dropout2)
        x = self.norm1(x + self._sa_block(x, *attend))
        return self.norm2(x + self._ff_block(x, self.dropout2))


class TransformerDecoderLayer(_Layer):
    """Causal self-attention, cross-attention to the encoder's memory, and a feed-forward network.

    Args as torch.nn.TransformerDecoderLayer (those of TransformerEncoderLayer).

    forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False,
            tgt_lengths=None, memory_lengths=None, kv_cache=None):
    memory (S, N, E) or a `PrecomputedKV` from `multihead_attn.precompute_kv` (whose batch may divide tgt's:
    beams); tgt_mask: only the causal mask; memory_mask is not served (None).
    """

    has_cross_attention = True

    def forward(self, tgt: Tensor, memory: Union[Tensor, PrecomputedKV], tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False, tgt_lengths: Lengths = None, memory_lengths: Lengths = None,
                kv_cache: Optional[KVCache] = None) -> Tensor:
        if memory_mask is not None or memory_is_causal:
            raise ValueError("TransformerDecoderLayer: memory_mask is not served; mark the memory's padding with "
                             "memory_key_padding_mask or memory_lengths")
        x = tgt
        attend = (tgt_mask, tgt_key_padding_mask, tgt_is_causal, tgt_lengths, kv_cache)
        cross = (memory, memory_key_padding_mask, memory_lengths)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), *attend)
            x = x + self._mha_block(self.norm2(x), *cross)
            return x + self._ff_block(self.norm3(x), self.dropout3)
        x = self.norm1(x + self._sa_block(x, *attend))
        x = self.norm2(x + self._mha_block(x, *cross))
        return self.norm3(x + self._ff_block(x, self.dropout3))

    def _mha_block(self, x: Tensor, memory, key_padding_mask, lengths) -> Tensor:
        if isinstance(memory, PrecomputedKV):
            if key_padding_mask is not None or lengths is not None:
                raise ValueError("TransformerDecoderLayer: a PrecomputedKV memory carries its own padding; pass no "
                                 "memory_key_padding_mask or memory_lengths")
            x = self.multihead_attn(x, memory, None, need_weights=False)[0]
        else:
            x = self.multihead_attn(x, memory, memory, key_padding_mask=key_padding_mask, need_weights=False,
                                    lengths=lengths)[0]
        return self.dropout2(x)
