"""The baseline for the model benchmarks: the same fastseq model with its fastseq.nn layers swapped for the
torch.nn ones a user would otherwise write, weights copied: torch.nn.LSTM (cuDNN; lengths through a
PackedSequence), torch.nn.LSTMCell, torch.nn.MultiheadAttention (lengths as key_padding_mask; a KVCache
attended with torch's scaled_dot_product_attention), and additive attention in its usual form, which
builds (B, Tq, Tk, H). Everything else in the model (embeddings, norms, the step loops) stays the same.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastseq import nn as fnn
from fastseq.ops.additive_attention.reference import naive


class TorchLSTM(nn.LSTM):
    """torch.nn.LSTM taking fastseq's `lengths` (packed for cuDNN, unpacked after)."""

    def forward(self, input, hx=None, lengths=None):
        if lengths is None:
            return super().forward(input, hx)
        steps = input.shape[1] if self.batch_first else input.shape[0]
        packed = pack_padded_sequence(input, torch.as_tensor(lengths).cpu(), batch_first=self.batch_first,
                                      enforce_sorted=False)
        out, state = super().forward(packed, hx)
        return pad_packed_sequence(out, batch_first=self.batch_first, total_length=steps)[0], state


class TorchMultiheadAttention(nn.MultiheadAttention):
    """torch.nn.MultiheadAttention taking fastseq's `lengths` and `kv_cache` (batch first)."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False, lengths=None, kv_cache=None):
        if kv_cache is not None:
            return self._cached(query, kv_cache, lengths), None
        if lengths is not None:
            S = key.shape[1] if self.batch_first else key.shape[0]
            lengths = torch.as_tensor(lengths, device=key.device)
            key_padding_mask = torch.arange(S, device=key.device)[None, :] >= lengths[:, None]
        if is_causal and attn_mask is None:
            L = query.shape[1] if self.batch_first else query.shape[0]
            attn_mask = torch.ones(L, L, dtype=torch.bool, device=query.device).triu(1)
        return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                               attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)

    def _cached(self, x, cache, counts):
        B, L, E = x.shape
        heads = lambda t: t.view(B, L, self.num_heads, E // self.num_heads).transpose(1, 2)  # noqa: E731
        q, k, v = (heads(t) for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        cache.append(k, v, counts=counts)
        keys, values = cache.keys(), cache.values()
        S = keys.shape[2]
        pos = torch.arange(S, device=x.device)
        mask = (pos[None, :] < cache.lengths[:, None])[:, None, None, :]
        if L > 1:
            mask = mask & (pos[None, :] <= torch.arange(L, device=x.device)[:, None] + S - L)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, E))


class NaiveAdditiveAttention(fnn.AdditiveAttention):
    """fastseq.nn.AdditiveAttention's parameters, computed as usually written: tanh over (B, Tq, Tk, H)."""

    def forward(self, query, keys, values=None, key_padding_mask=None, need_weights=False, lengths=None):
        cache = keys if isinstance(keys, fnn.PrecomputedKeys) else self.precompute_keys(keys, values,
                                                                                         key_padding_mask, lengths)
        mask = cache.key_padding_mask
        if cache.lengths is not None:
            Tk = cache.key_proj.shape[1]
            past = torch.arange(Tk, device=query.device)[None, :] >= cache.lengths.to(query.device)[:, None]
            mask = past if mask is None else mask | past
        step = query.dim() == 2
        q = self.query_proj(query)
        context, weights = naive(q[:, None] if step else q, cache.key_proj, self.v, cache.values, mask)
        if step:
            context, weights = context[:, 0], weights[:, 0]
        return context, weights if need_weights else None


def _convert(module: nn.Module):
    """The torch.nn counterpart of a fastseq.nn layer (same weights), or None."""
    try:
        p = next(module.parameters())
        factory = {"device": p.device, "dtype": p.dtype}
    except StopIteration:
        factory = {}
    if isinstance(module, fnn.LSTM):
        new = TorchLSTM(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                        batch_first=module.batch_first, dropout=module.dropout, bidirectional=module.bidirectional,
                        proj_size=module.proj_size, **factory)
    elif isinstance(module, fnn.LSTMCell):
        new = nn.LSTMCell(module.input_size, module.hidden_size, bias=module.bias, **factory)
    elif isinstance(module, fnn.MultiheadAttention):
        new = TorchMultiheadAttention(module.embed_dim, module.num_heads, dropout=module.dropout,
                                      bias=module.in_proj_bias is not None, add_bias_kv=module.bias_k is not None,
                                      add_zero_attn=module.add_zero_attn, kdim=module.kdim, vdim=module.vdim,
                                      batch_first=module.batch_first, **factory)
    elif isinstance(module, fnn.AdditiveAttention) and not isinstance(module, NaiveAdditiveAttention):
        new = copy.deepcopy(module)
        new.__class__ = NaiveAdditiveAttention
        return new
    else:
        return None
    if parametrize.is_parametrized(module):  # e.g. LSTMLM's weight drop: the same parametrizations
        for name, chain in module.parametrizations.items():
            for p in chain:
                parametrize.register_parametrization(new, name, copy.deepcopy(p))
    new.load_state_dict(module.state_dict())
    return new.train(module.training)


def torch_layers(model: nn.Module) -> nn.Module:
    """A copy of `model` with every fastseq.nn layer replaced by its torch.nn counterpart."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _convert(child)
            if new is not None:
                setattr(parent, name, new)
    return model
