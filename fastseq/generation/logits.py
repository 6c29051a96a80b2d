"""What shapes the next-token distribution before a token is chosen: temperature, top-k and nucleus (top-p)
filtering for sampling, and n-gram blocking. Each takes logits (N, V) and returns new ones; all stay on
the device, with no synchronization."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties at the k-th value kept too); the rest -> -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability reaches p (always the most likely one); the rest -> -inf."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def block_repeated_ngrams(logits: Tensor, tokens: Tensor, n: int) -> Tensor:
    """Forbid each row the tokens that would repeat one of its n-grams: tokens (N, t) generated so far; a
    token x is blocked when tokens[-(n-1):] + [x] already occurs in the row (n = 1: every token seen)."""
    t = tokens.shape[1]
    if n <= 0 or t < n:
        return logits
    windows = tokens.unfold(1, n, 1)  # (N, t - n + 1, n): every n-gram so far
    prefix = tokens[:, t - n + 1:]  # the last n - 1 tokens
    match = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)
    banned = torch.zeros_like(logits).scatter_add_(1, windows[:, :, -1], match.to(logits.dtype))
    return logits.masked_fill(banned > 0, float("-inf"))


def end_blocked_rows(blocked: Tensor, logits: Tensor, eos_id: Optional[int], n: int) -> Tensor:
    """A row whose every token n-gram blocking forbids ends: EOS stays allowed there, with its logit in
    `logits` (before blocking), so greedy, sampling and beam search alike emit EOS. Without an eos_id
    such a row is a ValueError naming the setting (found with one host read per step, in that
    configuration only)."""
    if n <= 0:
        return blocked
    stuck = (blocked == float("-inf")).all(dim=-1, keepdim=True) & (logits > float("-inf")).any(dim=-1, keepdim=True)
    if eos_id is None:
        if bool(stuck.any()):
            raise ValueError(f"generate: no_repeat_ngram_size={n} bans every token of a row and the model has no "
                             f"eos_id to end it with; lower no_repeat_ngram_size or give an eos_id")
        return blocked
    eos = torch.arange(logits.shape[-1], device=logits.device) == eos_id
    return torch.where(stuck & eos, logits, blocked)
