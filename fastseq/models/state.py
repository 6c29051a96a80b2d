"""What a model carries from one generated token to the next (see fastseq.generation): per-row state that
beam search reorders, and the encoder's memory, which every beam of a sentence shares and nothing copies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor


@dataclass
class RecurrentState:
    """An LSTM decoder's (h, c) per layer, batch along `batch_dim`; extras (N, ...) such as the previous
    attention context; memory (encoder keys, one row per sentence), left as is by reorder."""

    layers: list
    batch_dim: int = 1
    extras: Optional[dict] = None
    memory: Any = None

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (N',) in that order: each beam's parent, or the beams of each sentence."""
        self.layers = [(h.index_select(self.batch_dim, index), c.index_select(self.batch_dim, index))
                       for h, c in self.layers]
        if self.extras:
            self.extras = {k: v.index_select(0, index) for k, v in self.extras.items()}


@dataclass
class TransformerState:
    """A Transformer decoder's per-layer KVCache (or, without a cache, every token so far), the next
    position of each row, and the per-layer PrecomputedKV cross-attention memory (None for decoder-only)."""

    positions: Tensor
    caches: Optional[list] = None  # of fastseq.nn.KVCache
    tokens: Optional[Tensor] = None
    memory: Optional[list] = None

    def reorder(self, index: Tensor) -> None:
        self.positions = self.positions.index_select(0, index)
        for cache in self.caches or ():
            cache.reorder(index)
        if self.tokens is not None:
            self.tokens = self.tokens.index_select(0, index)

