"""Additive (Bahdanau) attention as a module, on fastseq's fused op.

    s_ij = vᵀ tanh(W_q query_i + b + W_k key_j),   a_i = softmax_j(s_ij),   c_i = Σ_j a_ij value_j

Bahdanau, Cho & Bengio, "Neural Machine Translation by Jointly Learning to Align and Translate", 2015.
A recurrent decoder attends once per output token against the same keys: `precompute_keys` projects
them once, and each step's call then costs one projection of the query and one kernel launch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import ops
from ..ops.additive_attention import zero_padded_keys
from ..ops.checks import check_index
from .linear import Linear


@dataclass(frozen=True)
class PrecomputedKeys:
    """Keys projected once for many queries: key_proj (B, Tk, H), values (B, Tk, Dv) and the padding;
    padding_zeroed: the padded keys' rows of key_proj and values are zero (ops.additive_attention.zero_padded_keys),
    so no step has to zero them again."""

    key_proj: Tensor
    values: Tensor
    key_padding_mask: Optional[Tensor] = None
    lengths: Optional[Tensor] = None
    padding_zeroed: bool = False

    def index_select(self, index: Tensor) -> "PrecomputedKeys":
        """The rows `index` of the batch (beam search reorders or repeats rows)."""
        check_index("PrecomputedKeys.index_select", index, self.key_proj.shape[0])

        def pick(t):
            return None if t is None else t.index_select(0, index.to(t.device))

        return PrecomputedKeys(pick(self.key_proj), pick(self.values), pick(self.key_padding_mask),
                               pick(self.lengths), self.padding_zeroed)


class AdditiveAttention(nn.Module):
    """Additive attention of queries over keys, batch first.

    Args:
        query_dim: size of each query; key_dim: size of each key; attention_dim: H, the size of the
        tanh layer; value_dim: size of each value (default key_dim, when the keys are the values);
        bias: add a learned bias b to the query projection; device, dtype: of the parameters.

    Parameters: query_proj (Linear query_dim → H, with bias b), key_proj (Linear key_dim → H, no bias), v (H,).

    forward(query, keys, values=None, key_padding_mask=None, need_weights=False, lengths=None):
        query (B, Tq, query_dim), or (B, query_dim) for one decoder step; keys (B, Tk, key_dim) or a
        PrecomputedKeys; values (B, Tk, value_dim), default the keys; key_padding_mask (B, Tk) bool,
        True where a key is padding; lengths (B,) ints, keys at j >= lengths[b] are padding.
        Returns (context (B, Tq, value_dim) or (B, value_dim), weights (B, Tq, Tk) or (B, Tk), or None
        unless need_weights). A row whose keys are all padding gets a zero context.
    """

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int, value_dim: Optional[int] = None,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attention_dim", attention_dim),
                            ("value_dim", key_dim if value_dim is None else value_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"AdditiveAttention: {name} must be a positive int, got {value!r}")
        factory = {"device": device, "dtype": dtype}
        self.query_dim, self.key_dim, self.attention_dim = query_dim, key_dim, attention_dim
        self.value_dim = key_dim if value_dim is None else value_dim
        self.query_proj = Linear(query_dim, attention_dim, bias=bias, **factory)
        self.key_proj = Linear(key_dim, attention_dim, bias=False, **factory)
        self.v = nn.Parameter(torch.empty(attention_dim, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.query_proj.reset_parameters()
        self.key_proj.reset_parameters()
        bound = 1 / math.sqrt(self.attention_dim)
        nn.init.uniform_(self.v, -bound, bound)

    def extra_repr(self) -> str:
        return (f"query_dim={self.query_dim}, key_dim={self.key_dim}, attention_dim={self.attention_dim}, "
                f"value_dim={self.value_dim}, bias={self.query_proj.bias is not None}")

    def _check_shape(self, name: str, t: Tensor, ndims: tuple[int, ...], dim: str, layout: str) -> None:
        """t has one of `ndims` dimensions, the last of size self.<dim>."""
        size = getattr(self, dim)
        if not isinstance(t, Tensor) or t.dim() not in ndims or t.shape[-1] != size:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"AdditiveAttention: {name} must have shape {layout} with {dim} = {size}, got {got}")

    def precompute_keys(self, keys: Tensor, values: Optional[Tensor] = None,
                        key_padding_mask: Optional[Tensor] = None,
                        lengths: Union[Tensor, Sequence[int], None] = None) -> PrecomputedKeys:
        """Project the keys once, for a decoder that attends to them at every step."""
        self._check_shape("keys", keys, (3,), "key_dim", "(B, Tk, key_dim)")
        values = keys if values is None else values
        self._check_shape("values", values, (3,), "value_dim", "(B, Tk, value_dim)")
        if lengths is not None and not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        key_proj, values = zero_padded_keys(self.key_proj(keys), values, key_padding_mask, lengths,
                                            "AdditiveAttention")
        return PrecomputedKeys(key_proj, values, key_padding_mask, lengths, True)

    def forward(self, query: Tensor, keys: Union[Tensor, PrecomputedKeys], values: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = False,
                lengths: Union[Tensor, Sequence[int], None] = None) -> tuple[Tensor, Optional[Tensor]]:
        if isinstance(keys, PrecomputedKeys):
            if values is not None or key_padding_mask is not None or lengths is not None:
                raise ValueError("AdditiveAttention: with PrecomputedKeys, give values, key_padding_mask and "
                                 "lengths to precompute_keys, not to forward")
            cache = keys
        else:
            cache = self.precompute_keys(keys, values, key_padding_mask, lengths)
        self._check_shape("query", query, (2, 3), "query_dim", "(B, Tq, query_dim) or (B, query_dim)")
        query_proj = self.query_proj(query)
        pad = {"key_padding_mask": cache.key_padding_mask, "lengths": cache.lengths,
               "padding_zeroed": cache.padding_zeroed}
        if query.dim() == 2 and not need_weights:
            return ops.additive_attention_step(query_proj, cache.key_proj, self.v, cache.values, **pad), None
        step = query.dim() == 2
        out = ops.additive_attention(query_proj[:, None] if step else query_proj, cache.key_proj, self.v,
                                     cache.values, return_weights=need_weights, **pad)
        context, weights = out if need_weights else (out, None)
        if step:
            context = context[:, 0]
            weights = None if weights is None else weights[:, 0]
        return context, weights
