"""Reference multi-head scaled dot-product attention in plain PyTorch: the CPU fallback and the oracle the
fused backends are tested against (Vaswani et al. 2017; grouped heads as in Ainslie et al. 2023).

    S = scale · Q Kᵀ        (scale = 1/√D by default)
    P = softmax(S) over the keys a query may see
    O = P V

Shapes: q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv); Hkv divides Hq and query head h reads
key/value head h // (Hq / Hkv). Which keys a query sees:
    - key j of row b is padding when j >= lengths[b] or key_padding_mask[b, j] is True;
    - causal: query i sees keys j <= i + (Tk − Tq), the queries aligned to the *end* of the keys (the
      convention of KV-cache decoding, and of flash-attention; torch's is_causal aligns them to the
      start, which differs only when Tq != Tk);
    - attn_mask, 4-D and broadcastable to (B, Hq, Tq, Tk): bool, True where query i may not attend to key
      j (torch.nn.MultiheadAttention's convention), or float, added to S (a bias; -inf hides the key).
A query that sees no key gets a zero output and sends no gradient (lse = +inf, as in additive attention).

Dropout (p > 0) drops entries of P with a mask drawn from a torch.Generator seeded by `seed`, so the
backward redraws the same mask; kept entries are scaled by 1 / (1 − p).

Padded keys' rows of k and v are zeroed before use: whatever a padded position holds (NaN, Inf) never
reaches an output or a gradient (0 · NaN would).

Workspace from the forward to the backward: lse (B, Hq, Tq) in the accumulation dtype (float32; float64
for float64). Backward, with D_i = dO_i · O_i:
    dP = dO Vᵀ (∘ dropout mask)   dS = P ∘ (dP − D)   dQ = scale · dS K   dK = scale · dSᵀ Q   dV = P_dropᵀ dO
with dK and dV summed over the query heads that share a key/value head.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...masking import keep_mask
from ...numerics import acc_dtype


def visible(Tq: int, Tk: int, causal: bool, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
            batch: int, device: torch.device) -> Optional[Tensor]:
    """(B, 1, Tq, Tk) bool, True where query i may attend to key j; None when every query sees every key."""
    seen = None
    if causal:
        i = torch.arange(Tq, device=device)[:, None]
        j = torch.arange(Tk, device=device)[None, :]
        seen = (j <= i + (Tk - Tq))[None, None]
    keep = keep_mask(batch, Tk, lengths, key_padding_mask, device)
    if keep is not None:
        keep = keep[:, None, None, :]
        seen = keep if seen is None else seen & keep
    return None if seen is None else seen.expand(batch, 1, Tq, Tk)


def _expand_heads(t: Tensor, heads: int) -> Tensor:
    """(B, Hkv, T, D) -> (B, heads, T, D), each key/value head shared by heads / Hkv query heads."""
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def _fold_heads(t: Tensor, kv_heads: int) -> Tensor:
    """(B, Hq, T, D) -> (B, Hkv, T, D), summing the query heads that share a key/value head."""
    B, Hq, T, D = t.shape
    return t.view(B, kv_heads, Hq // kv_heads, T, D).sum(2)


def dropout_mask(shape: tuple[int, ...], p: float, seed: int, device: torch.device) -> Tensor:
    """The kept entries (bool) of a dropout of probability p, the same for the same seed."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=generator, device=device) >= p


def scores(q: Tensor, k: Tensor, scale: float, causal: bool, lengths: Optional[Tensor],
           key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor]) -> Tensor:
    """S (B, Hq, Tq, Tk) in q's dtype: scale · Q Kᵀ plus a float attn_mask, -inf where a key is hidden."""
    B, Hq, Tq, _ = q.shape
    s = scale * (q @ _expand_heads(k, Hq).transpose(-1, -2))
    if attn_mask is not None:
        s = s.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask.to(s.dtype)
    seen = visible(Tq, k.shape[2], causal, lengths, key_padding_mask, B, q.device)
    return s if seen is None else s.masked_fill(~seen, float("-inf"))


def _probabilities(q, k, scale, causal, lengths, key_padding_mask, attn_mask):
    """P (B, Hq, Tq, Tk) and lse (B, Hq, Tq) in the accumulation dtype."""
    s = scores(q, k, scale, causal, lengths, key_padding_mask, attn_mask)
    empty = (s == float("-inf")).all(dim=-1)  # no visible key (a float mask may hide every one): P = 0
    # logsumexp's gradient on a row of -inf is NaN (0 · NaN upstream): such rows take it over zeros
    lse = torch.logsumexp(s.masked_fill(empty[..., None], 0.0), dim=-1).masked_fill(empty, float("inf"))
    return torch.exp(s - lse[..., None]), lse


def _unpadded(t: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor]) -> Tensor:
    """k or v (B, Hkv, Tk, ·) with the padded keys' rows zeroed: whatever they hold (NaN, Inf) must not
    reach an output or a gradient through 0 · NaN."""
    keep = keep_mask(t.shape[0], t.shape[2], lengths, key_padding_mask, t.device)
    return t if keep is None else t.masked_fill(~keep[:, None, :, None], 0.0)


def attention(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
              attn_mask: Optional[Tensor], causal: bool, scale: float, dropout_p: float,
              seed: int) -> tuple[Tensor, Tensor]:
    """-> (out (B, Hq, Tq, Dv) in the input dtype, lse (B, Hq, Tq) in the accumulation dtype). Made of
    differentiable torch ops: autograd through it gives a float attn_mask its gradient."""
    acc = acc_dtype(q.dtype)
    qa, ka, va = q.to(acc), _unpadded(k.to(acc), lengths, key_padding_mask), _unpadded(v.to(acc), lengths,
                                                                                       key_padding_mask)
    p, lse = _probabilities(qa, ka, scale, causal, lengths, key_padding_mask, attn_mask)
    if dropout_p > 0:
        p = p * dropout_mask(p.shape, dropout_p, seed, q.device) / (1 - dropout_p)
    return (p @ _expand_heads(va, q.shape[1])).to(q.dtype), lse


def attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor],
                       key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], causal: bool, scale: float,
                       dropout_p: float, seed: int, out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (grad_q, grad_k, grad_v), each in its input's dtype."""
    acc = acc_dtype(q.dtype)
    qa, do = q.to(acc), grad_out.to(acc)
    ka, va = (_unpadded(t.to(acc), lengths, key_padding_mask) for t in (k, v))
    Hq, Hkv = q.shape[1], k.shape[1]
    s = scores(qa, ka, scale, causal, lengths, key_padding_mask, attn_mask)
    p = torch.exp(s - lse[..., None])
    dp = do @ _expand_heads(va, Hq).transpose(-1, -2)
    p_used = p
    if dropout_p > 0:
        keep = dropout_mask(p.shape, dropout_p, seed, q.device) / (1 - dropout_p)
        p_used, dp = p * keep, dp * keep
    delta = (do * out.to(acc)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = scale * (ds @ _expand_heads(ka, Hq))
    dk = _fold_heads(scale * (ds.transpose(-1, -2) @ qa), Hkv)
    dv = _fold_heads(p_used.transpose(-1, -2) @ do, Hkv)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def attention_weights(q: Tensor, k: Tensor, causal: bool = False, lengths: Optional[Tensor] = None,
                      key_padding_mask: Optional[Tensor] = None, scale: Optional[float] = None,
                      attn_mask: Optional[Tensor] = None) -> Tensor:
    """P (B, Hq, Tq, Tk) before dropout, differentiable, in the input dtype (zero rows where no key is seen)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p, _ = _probabilities(q.to(acc_dtype(q.dtype)), k.to(acc_dtype(k.dtype)), scale, causal, lengths,
                          key_padding_mask, attn_mask)
    return p.to(q.dtype)


def attention_decode(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
                     scale: float) -> Tensor:
    """One query per row: q (B, Hq, D) against k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, Hq, Dv)."""
    out, _ = attention(q[:, :, None], k, v, lengths, key_padding_mask, None, False, scale, 0.0, 0)
    return out[:, :, 0]
