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
    static: bool = False  # see make_static

    def make_static(self) -> None:
        """From now on `advance` and `reorder` write into the tensors the state holds, so a decode step
        reads and writes fixed addresses (a CUDA graph replays it)."""
        self.static = True

    def advance(self, layers: list) -> None:
        """The decoder's new (h, c) per layer: taken as they are, or copied into the held ones (static)."""
        if not self.static:
            self.layers = layers
            return
        for (h, c), (h_new, c_new) in zip(self.layers, layers):
            h.copy_(h_new)
            c.copy_(c_new)

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (N',) in that order: each beam's parent, or the beams of each sentence."""
        layers = [(h.index_select(self.batch_dim, index), c.index_select(self.batch_dim, index))
                  for h, c in self.layers]
        extras = {k: v.index_select(0, index) for k, v in (self.extras or {}).items()}
        if self.static and index.shape[0] == self.layers[0][0].shape[self.batch_dim]:
            self.advance(layers)
            for k, v in extras.items():
                self.extras[k].copy_(v)
            return
        self.layers = layers
        if self.extras:
            self.extras = extras


@dataclass
class TransformerState:
    """A Transformer decoder's per-layer KVCache (or, without a cache, every token so far), the next
    position of each row, and the per-layer PrecomputedKV cross-attention memory (None for decoder-only)."""

    positions: Tensor
    caches: Optional[list] = None  # of fastseq.nn.KVCache
    tokens: Optional[Tensor] = None
    memory: Optional[list] = None

    def make_static(self) -> None:
        """Fixed shapes and addresses for every decode step (a CUDA graph replays it): the caches made
        static, positions updated in place. Needs the caches (use_cache=True)."""
        if self.caches is None:
            raise ValueError("CUDA-graph decoding needs the KV caches (use_cache=True)")
        for cache in self.caches:
            cache.make_static()

    def reorder(self, index: Tensor) -> None:
        if index.shape[0] == self.positions.shape[0]:
            self.positions.copy_(self.positions.index_select(0, index))
        else:
            self.positions = self.positions.index_select(0, index)
        for cache in self.caches or ():
            cache.reorder(index)
        if self.tokens is not None:
            self.tokens = self.tokens.index_select(0, index)

