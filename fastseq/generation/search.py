"""Greedy search, sampling and beam search over any fastseq decoder (see fastseq.generation).

All three keep their bookkeeping on the device; the only synchronization per step is the check whether
every sequence has ended. Each step runs under fastseq.ops.checks.trusted: the inputs were checked once,
and the tensors a step passes on are the search's own, so no check reads their values. Beam search is
batched: B sentences × K beams run as B·K rows, each sentence's finished hypotheses are kept in (B, K)
tensors, and the encoder's memory stays at B rows (the models fold the K beams of a sentence into one
attention call over its memory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from ..ops.checks import trusted
from .graphs import decode_steps
from .logits import block_repeated_ngrams, end_blocked_rows, top_k_filter, top_p_filter
from .protocol import Decoder

FIRST_COLUMNS = 64  # tokens a row (greedy, sampled or a beam) holds at first; doubled as it grows


@dataclass
class Generation:
    """tokens (B, L): each row's generated tokens, its EOS included, then pad_id; lengths (B,): how many
    tokens each row generated; scores (B,): greedy and sampling, the total log-probability of the tokens
    under the distribution they were chosen from; beam search, that total / length ** length_penalty;
    token_scores (B, L): each token's log-probability (natural log; 0 past a row's length). With n
    sequences returned per input, rows i·n … i·n+n-1 are input i's, best first for beam search."""

    tokens: Tensor
    lengths: Tensor
    scores: Tensor
    token_scores: Optional[Tensor] = None


def sequential(model: Decoder, inputs: Tensor, lengths, max_new_tokens: int, eos_id: Optional[int], pad_id: int,
               no_repeat_ngram_size: int, use_cache: bool, sample: bool = False, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, generator: Optional[torch.Generator] = None,
               cuda_graph: bool = False) -> Generation:
    """One token per row per step: the most likely one (greedy), or one drawn from the filtered
    distribution (sample). Rows that emitted EOS get pad_id from then on. cuda_graph: decode through
    fastseq.generation.graphs (static state; on CUDA, a captured graph)."""
    logits, state = model.begin_decoding(inputs, lengths, max_new_tokens=max_new_tokens, use_cache=use_cache)
    B, device = logits.shape[0], logits.device
    step = decode_steps(model, state, cuda_graph, device, B)
    tokens = torch.full((B, min(max_new_tokens, FIRST_COLUMNS)), pad_id, dtype=torch.long, device=device)
    token_scores = torch.zeros(tokens.shape, dtype=torch.float32, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out_lengths = torch.zeros(B, dtype=torch.long, device=device)
    scores = torch.zeros(B, dtype=torch.float32, device=device)
    for t in range(max_new_tokens):
        logits = logits.float()
        logits = end_blocked_rows(block_repeated_ngrams(logits, tokens[:, :t], no_repeat_ngram_size), logits, eos_id,
                                  no_repeat_ngram_size)
        if sample:
            logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
            token = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]
        else:
            token = logits.argmax(dim=-1)
        logp = logits.log_softmax(dim=-1).gather(1, token[:, None])[:, 0].masked_fill(finished, 0.0)
        token = token.masked_fill(finished, pad_id)
        scores += logp
        out_lengths += (~finished).long()
        if t == tokens.shape[1]:  # grown as generation goes, never sized by max_new_tokens up front
            width = t + min(tokens.shape[1], max_new_tokens - t)
            tokens, token_scores = _widen(tokens, width, pad_id), _widen(token_scores, width, 0.0)
        tokens[:, t], token_scores[:, t] = token, logp
        if eos_id is not None:
            finished |= token == eos_id
            if bool(finished.all()):
                break
        if t + 1 < max_new_tokens:
            with trusted():
                logits = step(token)
    n = int(out_lengths.max())
    return Generation(tokens[:, :n], out_lengths, scores, token_scores[:, :n])


def beam_search(model: Decoder, inputs: Tensor, lengths, max_new_tokens: int, beams: int, length_penalty: float,
                eos_id: Optional[int], pad_id: int, no_repeat_ngram_size: int, use_cache: bool,
                cuda_graph: bool = False, early_stopping: Union[bool, str] = "never", n_best: int = 1) -> Generation:
    """The best of `beams` hypotheses per sentence by total log-probability / length ** length_penalty.

    Each step ranks the 2K best continuations of a sentence's K beams: those ending in EOS among the
    first K join its finished hypotheses, the K best others continue; at max_new_tokens the first K all
    finish. A sentence is done when it holds K finished hypotheses and (early_stopping, as Hugging Face's
    generate() names it) "never": no live beam can still beat the worst of them. Log-probabilities only
    fall, so a beam's best reachable score is its total over the longest length it may reach
    (max_new_tokens when length_penalty > 0, else its length now): exact, the answer of a search that never
    stops early. False: no live beam beats it at its length now (Hugging Face's default; it may stop before
    a longer, better hypothesis when length_penalty > 0). True: at once (fairseq's). n_best: each
    sentence's n best hypotheses, best first (n <= beams). cuda_graph: decode through
    fastseq.generation.graphs, the reorder working in place between replays."""
    logits, state = model.begin_decoding(inputs, lengths, max_new_tokens=max_new_tokens, use_cache=use_cache)
    B, V = logits.shape
    K, T, device = beams, max_new_tokens, logits.device
    rows = torch.arange(B, device=device)
    state.reorder(rows.repeat_interleave(K))  # K beams of each sentence; the encoder memory stays at B rows
    step = decode_steps(model, state, cuda_graph, device, B * K)  # after the reorder that sets the batch to B·K
    logits = logits.repeat_interleave(K, dim=0)
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # one live beam at first, so the K beams start different
    width = min(T, FIRST_COLUMNS)  # token columns held: grown as generation goes, never sized by T up front
    alive = torch.full((B, K, width), pad_id, dtype=torch.long, device=device)
    alive_logp = torch.zeros(B, K, width, device=device)  # each token's log-probability
    finished = _Hypotheses(B, K, width, pad_id, device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    penalty = lambda n: float(n) ** length_penalty  # noqa: E731
    n_candidates = min(2 * K, K * V)
    for t in range(T):
        if t == width:
            width = min(2 * width, T)
            alive, alive_logp = _widen(alive, width, pad_id), _widen(alive_logp, width, 0.0)
            finished.widen(width, pad_id)
        logp = logits.float().log_softmax(dim=-1)
        logp = end_blocked_rows(block_repeated_ngrams(logp, alive.view(B * K, width)[:, :t], no_repeat_ngram_size),
                                logp, eos_id, no_repeat_ngram_size)
        candidates = (beam_scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        top_scores, top = candidates.topk(n_candidates, dim=-1)
        parent, token = top // V, top % V
        sequences = alive.gather(1, parent[:, :, None].expand(B, n_candidates, width)).clone()
        sequences[:, :, t] = token
        sequences_logp = alive_logp.gather(1, parent[:, :, None].expand(B, n_candidates, width)).clone()
        sequences_logp[:, :, t] = logp.view(B, K * V).gather(1, top)
        last = t + 1 == T
        if eos_id is not None or last:  # the first K candidates that end (EOS, or the last step) are finished
            is_eos = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
            first_k = torch.arange(n_candidates, device=device)[None, :] < K
            ended = (is_eos | last) & first_k & ~done[:, None] & torch.isfinite(top_scores)
            finished.add(torch.where(ended, top_scores / penalty(t + 1), float("-inf")), sequences, sequences_logp,
                         t + 1)
            top_scores = top_scores.masked_fill(is_eos, float("-inf"))
        beam_scores, keep = top_scores.topk(K, dim=-1)
        parents = parent.gather(1, keep)
        alive = sequences.gather(1, keep[:, :, None].expand(B, K, width))
        alive_logp = sequences_logp.gather(1, keep[:, :, None].expand(B, K, width))
        if eos_id is not None:
            if early_stopping is True:
                done |= finished.scores[:, -1] > float("-inf")
            else:
                longest = T if length_penalty > 0 and early_stopping == "never" else t + 1
                done |= finished.scores[:, -1] >= beam_scores[:, 0] / penalty(longest)
            if bool(done.all()):
                break
        if t + 1 < T:
            with trusted():
                state.reorder((rows[:, None] * K + parents).view(-1))
                logits = step(alive[:, :, t].reshape(-1))
    lengths = finished.lengths[:, :n_best].reshape(-1)
    L = int(lengths.max())
    return Generation(finished.tokens[:, :n_best, :L].reshape(-1, L), lengths, finished.scores[:, :n_best].reshape(-1),
                      finished.token_scores[:, :n_best, :L].reshape(-1, L))


class _Hypotheses:
    """Each sentence's K best finished hypotheses, best first: scores (B, K), tokens (B, K, T), their tokens'
    log-probabilities token_scores (B, K, T), lengths."""

    def __init__(self, B: int, K: int, T: int, pad_id: int, device) -> None:
        self.scores = torch.full((B, K), float("-inf"), device=device)
        self.tokens = torch.full((B, K, T), pad_id, dtype=torch.long, device=device)
        self.token_scores = torch.zeros(B, K, T, device=device)
        self.lengths = torch.zeros(B, K, dtype=torch.long, device=device)

    def widen(self, width: int, pad_id: int) -> None:
        self.tokens, self.token_scores = _widen(self.tokens, width, pad_id), _widen(self.token_scores, width, 0.0)

    def add(self, scores: Tensor, tokens: Tensor, token_scores: Tensor, length: int) -> None:
        """Merge candidates scores (B, M) (-inf: not a candidate), tokens and token_scores (B, M, T), all of
        `length`."""
        K = self.scores.shape[1]
        all_scores = torch.cat([self.scores, scores], dim=1)
        self.scores, pick = all_scores.topk(K, dim=-1)
        rows = pick[:, :, None].expand_as(self.tokens)
        self.tokens = torch.cat([self.tokens, tokens], dim=1).gather(1, rows)
        self.token_scores = torch.cat([self.token_scores, token_scores], dim=1).gather(1, rows)
        new_lengths = torch.full_like(scores, length, dtype=torch.long)
        self.lengths = torch.cat([self.lengths, new_lengths], dim=1).gather(1, pick)


def _widen(tokens: Tensor, width: int, fill) -> Tensor:
    """tokens (..., T) padded with `fill` to (..., width)."""
    return torch.nn.functional.pad(tokens, (0, width - tokens.shape[-1]), value=fill)
