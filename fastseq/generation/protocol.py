"""The decoding contract between the search (greedy, sampling, beam) and the models it drives. The search
imports nothing of fastseq's models: any object with these methods generates, and a type checker holds
a model to them (`isinstance(model, Decoder)` checks the methods are there at run time)."""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class DecodingState(Protocol):
    """What a decoder carries from one generated token to the next: per-row state (KV caches, (h, c),
    positions) that beam search reorders, and an encoder's memory, which every beam of a sentence shares
    and nothing copies (beams ride in the query dimension)."""

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (N',) of the per-row state, in that order (each beam's parent, or the K beams
        of each sentence, rows b·K … b·K+K−1); the memory keeps its B rows."""


@runtime_checkable
class Decoder(Protocol):
    """A model that generates one token at a time."""

    def begin_decoding(self, inputs: Tensor, lengths: Optional[Tensor], max_new_tokens: int,
                       use_cache: bool) -> tuple[Tensor, DecodingState]:
        """Run right-padded prompts (a language model; a KVCache per layer holding each row's own count)
        or encode sources once and feed BOS (an encoder–decoder) -> (logits (B, V) of each row's first new
        token, the state)."""

    def decode_step(self, tokens: Tensor, state: DecodingState) -> Tensor:
        """One token per row, tokens (N,), N = B or B·K -> logits (N, V), advancing `state` by one token."""
