"""Multi-head attention with torch.nn.MultiheadAttention's constructor, parameters, state_dict keys and
forward signature, on fastseq's fused attention op (Vaswani et al. 2017).

Masks as torch's: attn_mask (L, S) or (N·heads, L, S), bool (True = may not attend) or float (added to
the scores, its gradient computed when it requires one); key_padding_mask (N, S), bool or float; is_causal
as torch's hint that attn_mask is the causal mask (then served by the kernels' causal path). A query
that sees no key gets zeros (torch's gives NaN). The weights, computed only when need_weights, are the
attention probabilities before dropout, through the reference path.

Incremental decoding: pass a `KVCache` as `kv_cache`; the new positions' keys and values are appended
to it and the queries attend to everything it holds (causally when several queries come at once).
Cross-attention to a fixed memory: `precompute_kv(memory)` projects its keys and values once; pass the
`PrecomputedKV` as `key` at every step. Its batch may divide the query's: rows b·K … b·K+K-1 of the queries
(K beams of one sentence) then all attend to row b of the memory, without copies of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..masking import fused_takes_padding, pads_nothing
from ..ops import registry, tuning
from ..ops.checks import check_key_padding
from .kv_cache import KVCache
from .linear import Linear, linear


def fast_path_tensors(tensors: tuple) -> bool:
    """Whether torch's fused inference functions take these tensors as torch's own modules check them: none
    missing or overriding torch functions, each on a CPU or CUDA device, no gradient to record."""
    if any(t is None for t in tensors) or torch.overrides.has_torch_function(tensors):
        return False
    if any(t.device.type not in ("cpu", "cuda") for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


@dataclass(frozen=True)
class PrecomputedKV:
    """A memory's keys k (B, heads, S, head_dim) and values v (B, heads, S, head_dim), projected once by
    `MultiheadAttention.precompute_kv`, with its padding (bool key_padding_mask (B, S) and/or lengths (B,))."""

    k: Tensor
    v: Tensor
    key_padding_mask: Optional[Tensor] = None
    lengths: Optional[Tensor] = None


class MultiheadAttention(nn.MultiheadAttention):
    """Allows the model to attend to information from different representation subspaces.
    A torch.nn.MultiheadAttention (its subclass, with its attributes and parameters), so code that checks
    the type keeps working; fastseq's forward.

    Args (as torch.nn.MultiheadAttention): embed_dim, num_heads, dropout=0.0 (on the attention
    probabilities, in training), bias=True, add_bias_kv=False, add_zero_attn=False, kdim=None,
    vdim=None, batch_first=False, device=None, dtype=None.

    forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
            average_attn_weights=True, is_causal=False, lengths=None, kv_cache=None)
        query (L, N, E) or (N, L, E) with batch_first, or (L, E) unbatched; key (S, N, kdim), value
        (S, N, vdim) likewise, or key a `PrecomputedKV` and value None. key_padding_mask (N, S): bool, True =
        ignore, or float with 0 / -inf. lengths (N,) ints: row n's real keys are the first lengths[n] of
        the keys this call passes, the rest padding (cheaper than a mask: the kernels skip them); with a
        kv_cache the keys a call passes are its L new positions, so lengths says how many each row
        appends (ragged prompts). Returns (attn_output like query, weights (N, L, S) averaged over heads,
        (N, heads, L, S) unless average_attn_weights, or None unless need_weights).
    """

    __constants__ = ["batch_first"]

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = False, device=None, dtype=None) -> None:
        if not isinstance(embed_dim, int) or embed_dim <= 0 or not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be positive ints, got "
                             f"embed_dim={embed_dim!r}, num_heads={num_heads!r}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        if not 0 <= dropout < 1:
            raise ValueError(f"MultiheadAttention: dropout must lie in [0, 1), got {dropout!r}")
        factory = {"device": device, "dtype": dtype}
        nn.Module.__init__(self)  # torch's __init__ would build the same parameters once more
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch's initialization: Xavier-uniform projections, zero biases, Xavier-normal bias_k/v."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    # ------------------------------------------------------------------------------------- forward

    def precompute_kv(self, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                      lengths: Union[Tensor, Sequence[int], None] = None) -> PrecomputedKV:
        """Project a memory's keys and values once, for queries that attend to it at every decoding step.
        key (S, N, kdim) / value (S, N, vdim), batch first with batch_first; masks as in forward."""
        if key.dim() != 3 or value.dim() != 3:
            raise ValueError(f"MultiheadAttention.precompute_kv: key and value must be batched (3-D), got "
                             f"{key.dim()}-D and {value.dim()}-D")
        if self.bias_k is not None or self.add_zero_attn:
            raise ValueError("MultiheadAttention.precompute_kv does not serve add_bias_kv or add_zero_attn")
        if not self.batch_first:
            key, value = key.transpose(0, 1), value.transpose(0, 1)
        self._check_inputs(key.new_empty(key.shape[0], 0, self.embed_dim), key, value)
        (_, wk, wv), (_, bk, bv) = self._weights()
        k, v = linear(key, wk, bk), linear(value, wv, bv)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=k.device)
        return PrecomputedKV(self._heads(k), self._heads(v), _bool_padding(key_padding_mask), lengths)

    def forward(self, query: Tensor, key: Union[Tensor, PrecomputedKV], value: Optional[Tensor],
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True, is_causal: bool = False,
                lengths: Union[Tensor, Sequence[int], None] = None,
                kv_cache: Optional[KVCache] = None) -> tuple[Tensor, Optional[Tensor]]:
        if isinstance(key, PrecomputedKV):
            return self._forward_static(query, key, value, key_padding_mask, need_weights, attn_mask,
                                        average_attn_weights, is_causal, lengths, kv_cache)
        if (not need_weights and attn_mask is None and not is_causal and lengths is None and kv_cache is None
                and query is key and key is value):
            weights = self._native(query)
            if weights is not None:
                pad = key_padding_mask
                if pad is None or pads_nothing(pad):
                    return self._native_forward(query, weights, None), None
                if fused_takes_padding(pad, query) and self._native_wins(query, weights, pad):
                    return self._native_forward(query, weights, pad), None
        return self._forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                             is_causal, lengths, kv_cache)

    def _forward(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal,
                 lengths, kv_cache) -> tuple[Tensor, Optional[Tensor]]:
        """fastseq's composition: the projections, fastseq's attention op, the output projection."""
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"MultiheadAttention: query, key and value must all be 3-D (batched) or 2-D "
                             f"(unbatched), got {query.dim()}-D, {key.dim()}-D, {value.dim()}-D")
        if not batched:  # (L, E) -> one batch row
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        self._check_inputs(query, key, value)
        B, L, _ = query.shape
        q, k, v = self._project(query, key, value)
        if kv_cache is not None:
            out, weights = self._attend_cache(q, k, v, kv_cache, key_padding_mask, attn_mask, is_causal, lengths,
                                              need_weights)
        else:
            out, weights = self._attend(q, k, v, key_padding_mask, attn_mask, is_causal, lengths, need_weights)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, self.embed_dim))
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _native(self, x: Tensor) -> Optional[tuple]:
        """The weights of torch's fused inference attention (torch.nn.MultiheadAttention's fast path) where it
        serves this self-attention under torch's own conditions (one C++ call, where this module's Python
        composition costs more per call); else None."""
        if (self.training or x.dim() != 3 or x.is_nested or not self.batch_first or self.in_proj_bias is None
                or not self._qkv_same_embed_dim or self.bias_k is not None or self.add_zero_attn
                or self.num_heads % 2 or x.shape[-1] != self.embed_dim or not torch.backends.mha.get_fastpath_enabled()
                or torch.is_autocast_enabled() or torch.compiler.is_compiling()
                or self.out_proj._forward_hooks or self.out_proj._forward_pre_hooks):
            return None
        weights = (self.in_proj_weight, self.in_proj_bias, self.out_proj.weight, self.out_proj.bias)
        if not fast_path_tensors((x, *weights)) or any(w.dtype != x.dtype for w in weights):
            return None
        return weights

    def _native_forward(self, x: Tensor, weights: tuple, key_padding_mask: Optional[Tensor]) -> Tensor:
        if key_padding_mask is not None:  # as torch's forward hands it over: additive, of the query's dtype
            key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                                 other_type=None, other_name="attn_mask", target_type=x.dtype)
        mask, mask_type = self.merge_masks(None, key_padding_mask, x)
        return torch._native_multi_head_attention(x, x, x, self.embed_dim, self.num_heads, *weights, mask, False,
                                                  True, mask_type)[0]

    def _native_wins(self, x: Tensor, weights: tuple, key_padding_mask: Tensor) -> bool:
        """Under key padding, whether torch's fused attention (its masked softmax over every key) is the faster
        here than this module's composition (attention that skips the padded keys), as the chooser measures
        the shape's bucket (fastseq.ops.tuning; the composition where nothing is measured)."""
        B, T, E = x.shape

        def run(how: str) -> None:
            if how == "fused":
                self._native_forward(x, weights, key_padding_mask)
            else:
                self._forward(x, x, x, key_padding_mask, False, None, True, False, None, None)
        call = tuning.Call(x.device, x.dtype, False, (B, T, E), (self.num_heads,), run)
        with registry.trials():
            return tuning.pick("multihead_attention", ("fused", "composed"), call) == "fused"

    def _forward_static(self, query, memory: PrecomputedKV, value, key_padding_mask, need_weights, attn_mask,
                        average_attn_weights, is_causal, lengths, kv_cache):
        """Queries (batched) against a precomputed memory; K = N / B query rows per memory row."""
        if value is not None or key_padding_mask is not None or lengths is not None:
            raise ValueError("MultiheadAttention: with a PrecomputedKV key, give the memory's value and padding to "
                             "precompute_kv, and pass value=None")
        if attn_mask is not None or is_causal or kv_cache is not None:
            raise ValueError("MultiheadAttention: attention to a PrecomputedKV memory takes no attn_mask, is_causal "
                             "or kv_cache")
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiheadAttention: query must be batched with {self.embed_dim} features, got shape "
                             f"{tuple(query.shape)}")
        x = query if self.batch_first else query.transpose(0, 1)
        N, L, E = x.shape
        B, H, S, hd = memory.k.shape
        if N % B:
            raise ValueError(f"MultiheadAttention: the query batch ({N}) must be a multiple of the memory batch "
                             f"({B}): K query rows (beams) per memory row")
        beams = N // B
        (wq, _, _), (bq, _, _) = self._weights()
        q = linear(x, wq, bq).view(B, beams * L, H, hd).transpose(1, 2)  # beams ride in the query dimension
        out = ops.attention(q, memory.k, memory.v, key_padding_mask=memory.key_padding_mask, lengths=memory.lengths,
                            dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(N, L, E))
        weights = None
        if need_weights:
            weights = ops.attention_weights(q, memory.k, False, memory.key_padding_mask, memory.lengths)
            weights = weights.view(B, H, beams, L, S).transpose(1, 2).reshape(N, H, L, S)
            if average_attn_weights:
                weights = weights.mean(1)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, t, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != dim:
                raise ValueError(f"MultiheadAttention: {name} must have {dim} features in its last dim, got "
                                 f"shape {tuple(t.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(f"MultiheadAttention: key and value must share their batch and sequence sizes, and "
                             f"the batch of query; got query {tuple(query.shape)}, key {tuple(key.shape)}, value "
                             f"{tuple(value.shape)} (batch_first={self.batch_first})")

    def _weights(self) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Optional[Tensor], ...]]:
        """The (q, k, v) projection weights and biases."""
        biases = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        if self._qkv_same_embed_dim:
            return self.in_proj_weight.chunk(3), biases
        return (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight), biases

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, L, E), (B, S, kdim), (B, S, vdim) -> q (B, heads, L, hd), k and v (B, S, E)."""
        if self._qkv_same_embed_dim and query is key and key is value:
            q, k, v = linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            (wq, wk, wv), (bq, bk, bv) = self._weights()
            q, k, v = linear(query, wq, bq), linear(key, wk, bk), linear(value, wv, bv)
        return self._heads(q), k, v

    def _heads(self, t: Tensor) -> Tensor:
        B, S, _ = t.shape
        return t.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)

    def _attend(self, q, k, v, key_padding_mask, attn_mask, is_causal, lengths, need_weights):
        B, _, L, _ = q.shape
        S = k.shape[1]
        causal, attn = self._masks(attn_mask, is_causal, L, S, B)
        mask = key_padding_mask
        if mask is not None:
            if mask.dtype != torch.bool and not mask.is_floating_point():
                raise TypeError(f"MultiheadAttention: key_padding_mask must be bool (True = ignore) or float (added "
                                f"to the scores), got {mask.dtype}")
            if tuple(mask.shape) != (B, S):
                raise ValueError(f"MultiheadAttention: key_padding_mask must have shape (N, S) = {(B, S)}, got "
                                 f"{tuple(mask.shape)}")
            if mask.is_floating_point():  # additive, as torch merges it: into the float mask
                attn = _merged(attn, mask[:, None, None, :])
                mask = None
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)
        if extra:
            if causal:  # the extra keys come after the causal band and every query sees them, as in torch
                attn = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)[None, None]
                causal = False
            if lengths is not None:  # the extra keys come after the padded ones: a mask says which are which
                lengths = check_key_padding("MultiheadAttention", None, lengths, B, S, k.device)
                past = torch.arange(S, device=k.device)[None, :] >= lengths[:, None]
                mask, lengths = (past if mask is None else mask | past), None
            if mask is not None:
                mask = torch.cat([mask, mask.new_zeros(B, extra)], dim=1)
            if attn is not None:
                attn = F.pad(attn, (0, extra), value=False if attn.dtype == torch.bool else 0.0)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(B, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(B, 1, -1)], dim=1)
        k, v = self._heads(k), self._heads(v)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(B, self.num_heads, 1, self.head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(B, self.num_heads, 1, self.head_dim)], dim=2)
        out = ops.attention(q, k, v, causal=causal, key_padding_mask=mask, lengths=lengths,
                            dropout_p=self.dropout if self.training else 0.0, attn_mask=attn)
        weights = ops.attention_weights(q, k, causal, mask, lengths, attn_mask=attn) if need_weights else None
        return out, weights

    def _attend_cache(self, q, k, v, cache, key_padding_mask, attn_mask, is_causal, lengths, need_weights):
        if attn_mask is not None and not is_causal:
            raise ValueError("MultiheadAttention: with a kv_cache the attention is causal over the cached and new "
                             "positions; an attn_mask is not served (pass none, or is_causal=True with the causal "
                             "mask)")
        if key_padding_mask is not None:
            raise ValueError("MultiheadAttention: with a kv_cache the cache's lengths say which keys each row "
                             "holds; pass no key_padding_mask (lengths: how many of the new positions each row "
                             "appends)")
        if self.bias_k is not None or self.add_zero_attn:
            raise ValueError("MultiheadAttention: kv_cache does not serve add_bias_kv or add_zero_attn")
        L = q.shape[2]
        if L > 1 and not cache.uniform:
            raise ValueError("MultiheadAttention: several queries at once need a kv_cache whose rows hold equal "
                             "lengths; append ragged prompts with their counts, then decode one token at a time")
        if attn_mask is not None:  # is_causal=True: a hint that attn_mask is the causal mask; checked, not trusted
            _check_causal_mask(attn_mask, L, cache.max_length + L if not cache.static else None)
        cache.append(self._heads(k), self._heads(v), counts=lengths)
        keys, values = cache.keys(), cache.values()
        lengths = None if cache.uniform else cache.lengths  # every row holding every position: no padding
        if L == 1:
            out = cache.attend(q[:, :, 0])[:, :, None]
        else:
            out = ops.attention(q, keys, values, causal=True, lengths=lengths,
                                dropout_p=self.dropout if self.training else 0.0)
        weights = ops.attention_weights(q, keys, L > 1, None, lengths) if need_weights else None
        return out, weights

    def _masks(self, attn_mask: Optional[Tensor], is_causal: bool, L: int, S: int,
               B: int) -> tuple[bool, Optional[Tensor]]:
        """(causal, mask for the op) from torch's attn_mask and is_causal: is_causal is torch's hint that
        attn_mask is the causal mask, served by the kernels' causal path without reading the mask; any
        other attn_mask, (L, S) or (N·num_heads, L, S), bool (True = may not attend) or float (added to
        the scores), goes to the op as (1, 1, L, S) or (N, num_heads, L, S)."""
        if is_causal and L == S:
            if attn_mask is not None:
                self._mask_view(attn_mask, L, S, B)  # checked all the same
            return True, None
        if attn_mask is None:
            if is_causal:
                raise ValueError(f"MultiheadAttention: is_causal without an attn_mask needs as many queries as keys, "
                                 f"got L={L}, S={S}; pass the attn_mask")
            return False, None
        return False, self._mask_view(attn_mask, L, S, B)

    def _mask_view(self, attn_mask: Tensor, L: int, S: int, B: int) -> Tensor:
        if not isinstance(attn_mask, Tensor) or (attn_mask.dtype != torch.bool and not attn_mask.is_floating_point()):
            got = attn_mask.dtype if isinstance(attn_mask, Tensor) else type(attn_mask).__name__
            raise TypeError(f"MultiheadAttention: attn_mask must be a bool (True = may not attend) or float (added to "
                            f"the scores) tensor, got {got}")
        shapes = ((L, S), (B * self.num_heads, L, S))
        if tuple(attn_mask.shape) not in shapes:
            raise ValueError(f"MultiheadAttention: attn_mask must have shape (L, S) = {shapes[0]} or "
                             f"(N·num_heads, L, S) = {shapes[1]}, got {tuple(attn_mask.shape)}")
        return attn_mask[None, None] if attn_mask.dim() == 2 else attn_mask.view(B, self.num_heads, L, S)


def _merged(attn: Optional[Tensor], bias: Tensor) -> Tensor:
    """An additive key padding mask merged into the attention mask, as torch merges them: a bool mask
    becomes -inf where True, and the two are added."""
    if attn is None:
        return bias
    if attn.dtype == torch.bool:
        attn = torch.zeros(attn.shape, dtype=bias.dtype, device=attn.device).masked_fill(attn, float("-inf"))
    return attn + bias


def _bool_padding(key_padding_mask: Optional[Tensor]) -> Optional[Tensor]:
    """torch's key_padding_mask as bool (True = padded): bool as is; float with 0 (keep) or -inf (pad)."""
    if key_padding_mask is None or key_padding_mask.dtype == torch.bool:
        return key_padding_mask
    if not key_padding_mask.is_floating_point():
        raise TypeError(f"MultiheadAttention: key_padding_mask must be bool or float, got {key_padding_mask.dtype}")
    padded = key_padding_mask == float("-inf")
    if not bool((key_padding_mask.masked_fill(padded, 0) == 0).all()):
        raise ValueError("MultiheadAttention: a float key_padding_mask must hold only 0 (keep) and -inf (pad)")
    return padded


def _check_causal_mask(attn_mask: Tensor, L: int, S: Optional[int]) -> None:
    """attn_mask (L, S) is the causal mask over a cache's positions (the new L at the end): bool True where a
    query may not attend, or float -inf there and 0 elsewhere; anything else would be silently ignored."""
    if attn_mask.dim() != 2 or attn_mask.shape[0] != L or (S is not None and attn_mask.shape[1] != S):
        raise ValueError(f"MultiheadAttention: with a kv_cache and is_causal=True, attn_mask must be the causal "
                         f"mask ({L}, {S if S is not None else 'S'}), got shape {tuple(attn_mask.shape)}")
    S = attn_mask.shape[1]
    blocked = torch.ones(L, S, dtype=torch.bool, device=attn_mask.device).triu(S - L + 1)
    expected = blocked if attn_mask.dtype == torch.bool else torch.zeros(L, S, dtype=attn_mask.dtype,
                                                                          device=attn_mask.device).masked_fill(
        blocked, float("-inf"))
    if not torch.equal(attn_mask, expected):
        raise ValueError("MultiheadAttention: with a kv_cache the attention is causal over the cached and new "
                         "positions; is_causal=True says attn_mask is that causal mask, and this one is not (pass "
                         "no attn_mask)")
