"""Additive attention as the fused backends run it: two passes over (query, key, h) at the speed of the tanh
unit, and the rest as GEMMs.

    forward    S_ij = Σ_h v_h tanh(q_ih + k_jh)               (the scores pass: one tanh per element)
               lse, P = softmax(S), context = P values        (torch: a softmax and a batched GEMM)
    backward   dP = dC valuesᵀ, dvalues = Pᵀ dC, dS = P ∘ (dP − δ), r = Σ_j dS, c = Σ_i dS   (torch)
               with t = tanh(q_ih + k_jh) recomputed once:     (the gradient pass: one tanh per element)
               G_ih = Σ_j dS_ij t², F_jh = Σ_i dS_ij t², W_h = Σ_ij dS_ij t
               dq = v (r − G), dk = v (c − F), dv = W          (since 1 − t² is what the chain rule needs)

Two tanh per element in all, where recomputing S in the backward would take three: the forward keeps S
(B, Tq, Tk) in the accumulation dtype as its workspace beside the log-sum-exp, a key's share of memory
the naive form multiplies by H.

Part of the tanh on the FMA units: with A = e^{2q} and B = e^{2k} computed once per sequence,
tanh(q + k) = 1 − 2 / (1 + A B): one product, a reciprocal by Newton steps from a first guess read off the
exponent bits, one fused multiply-add, and no special-function instruction. The leading `h_fma` columns of
H take that path, the rest the tanh unit, so both units work at once (the share is measured on the GPU).
A row whose |q| or |k| passes RANGE anywhere takes the tanh unit for every column (A B stays within
float32 for |q|, |k| <= RANGE).

This module is that algorithm in PyTorch, the FMA path emulated in float32 step by step as the kernels run
it: the oracle the kernels' arithmetic is checked against, and the host side the fused backends share.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ...masking import keep_mask
from ...numerics import acc_dtype

RANGE = 15.0  # |q|, |k| up to which e^{2q} e^{2k} stays within float32 (e^60 < 3.4e38, e^-60 > 1.2e-38)
MAGIC = 0x7EF311C3  # a first guess of 1/d from d's bits: within 12% for every d >= 1


def newton_steps(dtype: torch.dtype) -> int:
    """Newton steps of the reciprocal: 2 for 16-bit inputs (within their rounding), 3 for float32."""
    return 2 if dtype in (torch.float16, torch.bfloat16) else 3


def _fma(a: Tensor, b: Tensor, c) -> Tensor:
    """float32 fmaf(a, b, c): the exact a*b + c, rounded once (float32 products are exact in float64)."""
    return (a.double() * b.double() + (c.double() if isinstance(c, Tensor) else c)).float()


def reciprocal(d: Tensor, steps: int) -> Tensor:
    """1/d (float32, d >= 1) as the kernels take it: the guess MAGIC - bits(d), then r = r (2 - d r)."""
    r = (MAGIC - d.view(torch.int32)).view(torch.float32)
    for _ in range(steps):
        r = r * _fma(-d, r, 2.0)
    return r


def fma_tanh(a_exp: Tensor, b_exp: Tensor, steps: int) -> Tensor:
    """tanh(q + k) from A = e^{2q}, B = e^{2k} (float32): 1 - 2 / (1 + A B), as the kernels compute it."""
    return _fma(torch.full_like(a_exp, -2.0), reciprocal(_fma(a_exp, b_exp, 1.0), steps), 1.0)


def exponentials(x: Tensor) -> Tensor:
    """e^{2x} in float32 (the FMA path's A or B), x clamped to RANGE (rows past it take the tanh unit)."""
    return torch.exp(2.0 * x.float().clamp(-RANGE, RANGE))


def fma_rows(q: Tensor, k: Tensor) -> Tensor:
    """(B,) bool: rows whose every |q| and |k| lies within RANGE, which may take the FMA path."""
    return (q.abs().amax((1, 2)) <= RANGE) & (k.abs().amax((1, 2)) <= RANGE)


def _tanh(q: Tensor, k: Tensor, h_fma: int, rows: Tensor, steps: int) -> Tensor:
    """t (B, Tq, Tk, H) = tanh(q_i + k_j): the FMA path for columns below h_fma of the rows it may take."""
    acc = acc_dtype(q.dtype)
    t = torch.tanh(q.to(acc)[:, :, None, :] + k.to(acc)[:, None, :, :])
    if h_fma > 0:
        fast = fma_tanh(exponentials(q[..., :h_fma])[:, :, None, :], exponentials(k[..., :h_fma])[:, None, :, :], steps)
        t[..., :h_fma] = torch.where(rows[:, None, None, None], fast.to(acc), t[..., :h_fma])
    return t


def scores_model(q: Tensor, k: Tensor, v: Tensor, keep: Optional[Tensor], h_fma: int = 0) -> Tensor:
    """The scores pass: S (B, Tq, Tk) in the accumulation dtype, -inf at keys not kept."""
    acc = acc_dtype(q.dtype)
    s = _tanh(q, k, h_fma, fma_rows(q, k), newton_steps(q.dtype)) @ v.to(acc)
    return s if keep is None else s.masked_fill(~keep[:, None, :], float("-inf"))


def gradient_pass_model(ds: Tensor, q: Tensor, k: Tensor, v: Tensor, h_fma: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The gradient pass: (G (B, Tq, H), F (B, Tk, H), W (H,)) from dS (B, Tq, Tk), t recomputed once."""
    acc = acc_dtype(q.dtype)
    t = _tanh(q, k, h_fma, fma_rows(q, k), newton_steps(q.dtype))
    e = ds.to(acc)[..., None] * t * t
    return e.sum(2), e.sum(1), torch.einsum("bij,bijh->h", ds.to(acc), t)


# ------------------------------------------------------------------------------------------ host side


def context(s: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """From the scores S (B, Tq, Tk, acc; -inf where a key is not kept): (context (B, Tq, Dv) in values'
    dtype, lse (B, Tq), +inf where a row keeps no key, whose context is zero)."""
    lse = torch.logsumexp(s, dim=-1)
    empty = lse == float("-inf")
    lse = lse.masked_fill(empty, float("inf"))
    p = torch.exp(s - lse[..., None])  # 0 at -inf scores and in empty rows
    return torch.bmm(p.to(values.dtype), values), lse


def from_sums(ds: Tensor, g: Tensor, f: Tensor, w: Tensor, q: Tensor, k: Tensor, v: Tensor):
    """(dq, dk, dv) in their inputs' dtypes from the gradient pass's sums G, F, W and dS's row and column sums."""
    w_acc = v.to(ds.dtype)
    dq = w_acc * (ds.sum(-1)[..., None] - g)
    dk = w_acc * (ds.sum(1)[..., None] - f)
    return dq.to(q.dtype), dk.to(k.dtype), w.to(v.dtype)


def gradients(grad_context: Tensor, values: Tensor, context_: Tensor, s: Tensor, lse: Tensor,
              keep: Optional[Tensor], gradient_pass: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]):
    """The backward from the forward's scores and log-sum-exp: the GEMMs here, the tanh pass by
    `gradient_pass(dS)` -> (dq, dk, dv). Returns (dq, dk, dv, dvalues) in their inputs' dtypes."""
    acc = s.dtype
    p = torch.exp(s - lse[..., None])
    dc = grad_context.to(acc)
    dvalues = torch.bmm(p.transpose(1, 2).to(values.dtype), grad_context)
    delta = (dc * context_.to(acc)).sum(-1)  # D_i = dc_i . c_i
    ds = p * (torch.bmm(grad_context, values.transpose(1, 2)).to(acc) - delta[..., None])
    if keep is not None:
        ds = ds.masked_fill(~keep[:, None, :], 0.0)
    return (*gradient_pass(ds), dvalues)


def forward(q: Tensor, k: Tensor, v: Tensor, values: Tensor, lengths: Optional[Tensor],
            key_padding_mask: Optional[Tensor], save_scores: bool,
            scores: Callable[[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]], Tensor]):
    """A fused backend's forward around its scores pass `scores(q, k, v, lengths, key_padding_mask)` (S with
    -inf at keys not kept, whatever padded keys hold) -> (context, lse, S or empty)."""
    keep = keep_mask(q.shape[0], k.shape[1], lengths, key_padding_mask, q.device)
    s = scores(q, k, v, lengths, key_padding_mask)
    c, lse = context(s, _zero_padded(values, keep))  # P = 0 at padded keys, but 0 * NaN must reach nothing
    return c.to(q.dtype), lse, s if save_scores else s.new_empty(0)


def backward(grad_context: Tensor, q: Tensor, k: Tensor, v: Tensor, values: Tensor, lengths: Optional[Tensor],
             key_padding_mask: Optional[Tensor], context_: Tensor, lse: Tensor, s: Tensor, scores: Callable,
             gradient_pass: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]):
    """A fused backend's backward around its passes: `gradient_pass(dS, q, k, v)` -> (dq, dk, dv), k's padded
    rows zeroed; the scores from the forward (recomputed by `scores` when a forward kept none)."""
    keep = keep_mask(q.shape[0], k.shape[1], lengths, key_padding_mask, q.device)
    if s.numel() == 0:
        s = scores(q, k, v, lengths, key_padding_mask)
    k0, values0 = _zero_padded(k, keep), _zero_padded(values, keep)
    return gradients(grad_context, values0, context_, s, lse, keep, lambda ds: gradient_pass(ds, q, k0, v))


def entry_points(scores_pass: Callable, gradient_pass: Callable) -> tuple[Callable, Callable]:
    """A fused backend's additive_attention and additive_attention_backward, as the schema calls them, from its
    two passes."""
    def additive_attention(query_proj, key_proj, v, values, lengths, key_padding_mask, save_scores,
                           padding_zeroed=False):  # padded keys are skipped, whatever they hold
        return forward(query_proj, key_proj, v, values, lengths, key_padding_mask, save_scores, scores_pass)

    def additive_attention_backward(grad_context, query_proj, key_proj, v, values, lengths, key_padding_mask,
                                    context, lse, scores):
        return backward(grad_context, query_proj, key_proj, v, values, lengths, key_padding_mask, context, lse,
                        scores, scores_pass, gradient_pass)
    return additive_attention, additive_attention_backward


def model_forward(q, k, v, values, lengths, key_padding_mask, h_fma: int = 0):
    """The fused backends' forward in PyTorch -> (context, lse, scores)."""
    keep = keep_mask(q.shape[0], k.shape[1], lengths, key_padding_mask, q.device)
    k, values = _zero_padded(k, keep), _zero_padded(values, keep)
    s = scores_model(q, k, v, keep, h_fma)
    c, lse = context(s, values)
    return c.to(q.dtype), lse, s


def model_backward(grad_context, q, k, v, values, lengths, key_padding_mask, context_, lse, s, h_fma: int = 0):
    """The fused backends' backward in PyTorch -> (dq, dk, dv, dvalues)."""
    keep = keep_mask(q.shape[0], k.shape[1], lengths, key_padding_mask, q.device)
    k, values = _zero_padded(k, keep), _zero_padded(values, keep)
    return gradients(grad_context, values, context_, s, lse, keep,
                     lambda ds: from_sums(ds, *gradient_pass_model(ds, q, k, v, h_fma), q, k, v))


def _zero_padded(t: Tensor, keep: Optional[Tensor]) -> Tensor:
    return t if keep is None else t.masked_fill(~keep[..., None], 0.0)
