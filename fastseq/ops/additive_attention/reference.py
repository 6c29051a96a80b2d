"""Reference additive (Bahdanau) attention in plain PyTorch: the CPU fallback, the oracle the fused
backends are tested against, and (`naive`) the form users would write, which the benchmarks compare with.

Bahdanau, Cho & Bengio 2015, with the projections done by the caller (fastseq.nn.AdditiveAttention):

    q_i = W_q query_i + b        (query_proj, B × Tq × H)
    k_j = W_k key_j              (key_proj,   B × Tk × H)
    s_ij = Σ_h v_h tanh(q_ih + k_jh)
    a_ij = softmax_j(s_ij)       over the keys that are not padded
    c_i  = Σ_j a_ij values_j     (context, B × Tq × Dv)

Backward, with D_i = Σ_j a_ij dA_ij = dc_i · c_i and t_ijh = tanh(q_ih + k_jh):

    dvalues_j = Σ_i a_ij dc_i          dA_ij = dc_i · values_j      dS_ij = a_ij (dA_ij − D_i)
    g_ijh = dS_ij v_h (1 − t_ijh²)     dq_ih = Σ_j g_ijh            dk_jh = Σ_i g_ijh
    dv_h = Σ_ij dS_ij t_ijh

Padding: key j of row b is used when j < lengths[b] (if given) and not key_padding_mask[b, j] (if given).
A row whose keys are all padded attends to nothing: its context and weights are zero, and so are the
gradients it sends. Its log-sum-exp is +inf, which makes exp(s − lse) zero without a special case.

The workspace every backend's forward returns and its backward reads is that log-sum-exp, `lse`
(B, Tq) in the accumulation dtype (float32; float64 for float64 inputs), and, when the forward was asked
to keep them (a gradient will be needed), the scores s (B, Tq, Tk) in the accumulation dtype, -inf at keys
not kept, from which the fused backends' backward takes the weights without recomputing a tanh. Every backend
computes in the accumulation dtype. The reference computes a block of queries at a time, so its memory is
O(block · Tk · H), never O(B · Tq · Tk · H).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor

from ...masking import keep_mask
from ...numerics import acc_dtype

# Elements of the (B, block, Tk, H) tanh tensor materialised at once.
_BLOCK_ELEMENTS = 1 << 22


def _query_blocks(query_proj: Tensor, key_proj: Tensor) -> Iterator[slice]:
    B, Tq, H = query_proj.shape
    step = max(1, _BLOCK_ELEMENTS // max(1, B * key_proj.shape[1] * H))
    for start in range(0, Tq, step):
        yield slice(start, min(start + step, Tq))


def _tanh_block(q: Tensor, k: Tensor) -> Tensor:
    """t (B, block, Tk, H) = tanh(q_i + k_j) for a block of queries."""
    return torch.tanh(q[:, :, None, :] + k[:, None, :, :])


def _masked(s: Tensor, keep: Optional[Tensor]) -> Tensor:
    return s if keep is None else s.masked_fill(~keep[:, None, :], float("-inf"))


def _unpadded(t: Tensor, keep: Optional[Tensor]) -> Tensor:
    """key_proj or values (B, Tk, ·) with the padded keys' rows zeroed: whatever they hold (NaN, Inf)
    must not reach an output or a gradient through 0 · NaN."""
    return t if keep is None else t.masked_fill(~keep[:, :, None], 0.0)


def additive_attention(
    query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
    lengths: Optional[Tensor], key_padding_mask: Optional[Tensor], save_scores: bool = False,
    padding_zeroed: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (context (B, Tq, Dv) in the input dtype, lse (B, Tq) in the accumulation dtype, the scores
    (B, Tq, Tk) in the accumulation dtype, -inf at keys not kept, when save_scores, else empty). The padded
    keys are masked whatever they hold, so padding_zeroed changes nothing here."""
    acc = acc_dtype(query_proj.dtype)
    B, Tq, _ = query_proj.shape
    q, k, w, vals = (t.to(acc) for t in (query_proj, key_proj, v, values))
    keep = keep_mask(B, key_proj.shape[1], lengths, key_padding_mask, q.device)
    k, vals = _unpadded(k, keep), _unpadded(vals, keep)
    context = query_proj.new_empty(B, Tq, values.shape[2])
    lse = q.new_empty(B, Tq)
    scores = q.new_empty(B, Tq, key_proj.shape[1]) if save_scores else q.new_empty(0)
    for rows in _query_blocks(query_proj, key_proj):
        s = _masked(_tanh_block(q[:, rows], k) @ w, keep)
        m = torch.logsumexp(s, dim=-1)
        m = m.masked_fill(m == float("-inf"), float("inf"))  # no key: the rule in the module docstring
        context[:, rows] = (torch.exp(s - m[..., None]) @ vals).to(context.dtype)
        lse[:, rows] = m
        if save_scores:
            scores[:, rows] = s
    return context, lse, scores


def additive_attention_backward(
    grad_context: Tensor, query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
    lengths: Optional[Tensor], key_padding_mask: Optional[Tensor], context: Tensor, lse: Tensor,
    scores: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (grad_query_proj, grad_key_proj, grad_v, grad_values), each in its input's dtype. The reference
    recomputes the scores block by block whatever `scores` a forward kept (it stays the oracle of the
    fused backends, which read them)."""
    acc = acc_dtype(query_proj.dtype)
    B, Tq, _ = query_proj.shape
    q, k, w, vals, dc = (t.to(acc) for t in (query_proj, key_proj, v, values, grad_context))
    keep = keep_mask(B, key_proj.shape[1], lengths, key_padding_mask, q.device)
    k, vals = _unpadded(k, keep), _unpadded(vals, keep)
    delta = (dc * context.to(acc)).sum(-1)  # D_i = dc_i · c_i
    dq = torch.empty_like(q)
    dk, dw, dvals = torch.zeros_like(k), torch.zeros_like(w), torch.zeros_like(vals)
    for rows in _query_blocks(query_proj, key_proj):
        t = _tanh_block(q[:, rows], k)
        p = torch.exp(_masked(t @ w, keep) - lse[:, rows, None])
        dvals += p.transpose(1, 2) @ dc[:, rows]
        ds = p * (dc[:, rows] @ vals.transpose(1, 2) - delta[:, rows, None])
        g = ds[..., None] * (1 - t * t) * w
        dq[:, rows] = g.sum(2)
        dk += g.sum(1)
        dw += torch.einsum("bij,bijh->h", ds, t)
    return (dq.to(query_proj.dtype), dk.to(key_proj.dtype), dw.to(v.dtype), dvals.to(values.dtype))


def additive_attention_decode(
    query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
    lengths: Optional[Tensor], key_padding_mask: Optional[Tensor], padding_zeroed: bool = False,
) -> Tensor:
    """One query per row, query_proj (B, H) -> context (B, Dv): a decoder's step, no gradient."""
    context, _, _ = additive_attention(query_proj[:, None], key_proj, v, values, lengths, key_padding_mask)
    return context[:, 0]


def attention_weights(
    query_proj: Tensor, key_proj: Tensor, v: Tensor,
    lengths: Optional[Tensor] = None, key_padding_mask: Optional[Tensor] = None,
) -> Tensor:
    """The weights a (B, Tq, Tk), differentiable, in the input dtype (zero rows where no key is kept)."""
    acc = acc_dtype(query_proj.dtype)
    keep = keep_mask(query_proj.shape[0], key_proj.shape[1], lengths, key_padding_mask, query_proj.device)
    q, k, w = query_proj.to(acc), _unpadded(key_proj.to(acc), keep), v.to(acc)
    blocks = []
    for rows in _query_blocks(query_proj, key_proj):
        s = _masked(_tanh_block(q[:, rows], k) @ w, keep)
        blocks.append(torch.softmax(s, dim=-1).nan_to_num(nan=0.0))
    return torch.cat(blocks, dim=1).to(query_proj.dtype)


def naive(query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
          key_padding_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Additive attention as it is usually written in PyTorch, materialising (B, Tq, Tk, H), with autograd:
    the benchmarks' baseline and an independent oracle for the backward. -> (context, weights)."""
    scores = torch.tanh(query_proj.unsqueeze(2) + key_proj.unsqueeze(1)) @ v
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, weights
