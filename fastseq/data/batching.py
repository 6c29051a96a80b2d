"""Batches: padding, length-bucketed batches under a token budget, contiguous windows of a token stream,
and BERT's masking. Batches are dicts of tensors, batch first, right-padded with `lengths`.

A language model's batch holds T+1 tokens per row; the model's loss shifts it (inputs tokens[:, :-1],
targets tokens[:, 1:]). A masked LM's collator replaces tokens and keeps the originals as labels.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..masking import mask_tokens


def pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """-> (tokens (B, max length) int64 right-padded with pad_id, lengths (B,) int64)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    if len(sequences) == 0 or int(lengths.min()) < 1:
        raise ValueError("pad: every sequence must hold at least one token")
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return tokens, lengths


def token_budget_batches(lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                         bucket: int = 100) -> list[list[int]]:
    """Indices grouped into batches of similar lengths whose padded size (rows × longest) stays within
    max_tokens: sort within windows of `bucket` batches' worth of examples (so that batches are random
    but padding is small), cut, then shuffle the batches. Deterministic in seed."""
    if not lengths:
        return []
    if max_tokens < max(lengths):
        raise ValueError(f"token_budget_batches: max_tokens ({max_tokens}) must hold the longest example "
                         f"({max(lengths)} tokens)")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    window = max(1, bucket * max(1, max_tokens // max(1, int(sum(lengths) / len(lengths)))))
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        current, longest = [], 0
        for i in chunk:
            longest_if = max(longest, lengths[i])
            if current and longest_if * (len(current) + 1) > max_tokens:
                batches.append(current)
                current, longest_if = [], lengths[i]
            current.append(i)
            longest = longest_if
        if current:
            batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def stream_windows(stream: Tensor, batch: int, block: int, generator: torch.Generator) -> Tensor:
    """`batch` random windows of block+1 consecutive tokens of a 1-D token stream -> (batch, block+1)."""
    if stream.dim() != 1 or stream.numel() < block + 2:
        raise ValueError(f"stream_windows: the stream must be 1-D and longer than block + 1 = {block + 1} tokens, "
                         f"got shape {tuple(stream.shape)}")
    starts = torch.randint(0, stream.numel() - block - 1, (batch,), generator=generator)
    return torch.stack([stream[s:s + block + 1] for s in starts.tolist()])


def collate_lm(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> dict:
    tokens, lengths = pad(sequences, pad_id)
    return {"tokens": tokens, "lengths": lengths}


def collate_pairs(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0) -> dict:
    """(source ids, target ids ending in EOS) pairs -> src, src_lengths, tgt, tgt_lengths."""
    src, src_lengths = pad([p[0] for p in pairs], pad_id)
    tgt, tgt_lengths = pad([p[1] for p in pairs], pad_id)
    return {"src": src, "src_lengths": src_lengths, "tgt": tgt, "tgt_lengths": tgt_lengths}


def collate_labelled(examples: Sequence[tuple[int, Sequence[int]]], pad_id: int = 0) -> dict:
    """(label, ids) examples -> tokens, lengths, labels."""
    tokens, lengths = pad([e[1] for e in examples], pad_id)
    return {"tokens": tokens, "lengths": lengths, "labels": torch.tensor([e[0] for e in examples])}


def collate_masked(sequences: Sequence[Sequence[int]], pad_id: int, mask_id: int, vocab_size: int,
                   probability: float = 0.15, generator: Optional[torch.Generator] = None) -> dict:
    """Padded sequences with BERT's masking -> inputs, labels, lengths."""
    tokens, lengths = pad(sequences, pad_id)
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    inputs, labels = mask_tokens(tokens, real, mask_id, vocab_size, probability, generator)
    return {"inputs": inputs, "labels": labels, "lengths": lengths}
