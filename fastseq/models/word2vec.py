"""word2vec (Mikolov et al., "Efficient Estimation of Word Representations in Vector Space" and
"Distributed Representations of Words and Phrases and their Compositionality", 2013): CBOW (the context's
mean predicts the word) and skip-gram (the word predicts each context word), trained with the full
softmax or with negative sampling (k words drawn from the unigram distribution to the 3/4), frequent
words subsampled (kept with probability sqrt(t/f) + t/f). Queries: most_similar and analogies by cosine.

    model = Word2Vec(Word2VecConfig(vocab_size, dim=100, mode="skipgram", negative=5))
    pairs = Word2VecData(ids, model.config)            # ids: a corpus as one token-id tensor
    loss = model.loss(**pairs.batch(4096, generator))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Model, check_config


@dataclass
class Word2VecConfig:
    """vocab_size; dim; mode "skipgram" or "cbow"; window (largest distance; each example draws its own,
    as word2vec does); negative (samples per positive; 0: the full softmax); subsample (t; 0: none)."""

    vocab_size: int
    dim: int = 100
    mode: str = "skipgram"
    window: int = 5
    negative: int = 5
    subsample: float = 1e-3

    def __post_init__(self):
        check_config("Word2VecConfig", self, positive=("vocab_size", "dim", "window"))
        if self.mode not in ("skipgram", "cbow"):
            raise ValueError(f"Word2VecConfig: mode must be 'skipgram' or 'cbow', got {self.mode!r}")
        if not isinstance(self.negative, int) or self.negative < 0:
            raise ValueError(f"Word2VecConfig: negative must be an int >= 0, got {self.negative!r}")


class Word2Vec(Model):
    """Input vectors (the embeddings one keeps) and output vectors.

    loss(centers (B,), contexts (B, 2·window), context_mask (B, 2·window) bool, negatives (B, k) or None):
    skip-gram scores every (center, real context word) pair, CBOW the mean of the real context against
    the center; with negatives, the logistic loss of positives against the k samples; else the softmax."""

    config_class = Word2VecConfig

    def __init__(self, config: Word2VecConfig) -> None:
        super().__init__(config)
        self.input = nn.Embedding(config.vocab_size, config.dim)
        self.output = nn.Embedding(config.vocab_size, config.dim)
        nn.init.uniform_(self.input.weight, -0.5 / config.dim, 0.5 / config.dim)
        nn.init.zeros_(self.output.weight)

    def loss(self, centers: Tensor, contexts: Tensor, context_mask: Tensor,
             negatives: Optional[Tensor] = None) -> Tensor:
        mask = context_mask.to(self.input.weight.dtype)
        if self.config.mode == "cbow":  # mean of the real context words predicts the center
            hidden = (self.input(contexts) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            targets, weights = centers[:, None], mask.amax(1, keepdim=True)
        else:  # the center predicts each real context word
            hidden, targets, weights = self.input(centers), contexts, mask
        if negatives is None:
            logits = hidden @ self.output.weight.T  # (B, V)
            logp = logits.log_softmax(-1).gather(1, targets)
            return -(logp * weights).sum() / weights.sum()
        positive = F.logsigmoid((self.output(targets) * hidden[:, None]).sum(-1))  # (B, P)
        negative = F.logsigmoid(-(self.output(negatives) * hidden[:, None]).sum(-1)).sum(-1, keepdim=True)
        return -((positive + negative) * weights).sum() / weights.sum()

    def vectors(self) -> Tensor:
        """The word vectors, unit length."""
        return F.normalize(self.input.weight.detach(), dim=-1)

    def most_similar(self, word: int, k: int = 10) -> list[tuple[int, float]]:
        """The k nearest words to `word` by cosine, itself left out."""
        return self._nearest(self.vectors()[word], k, exclude={word})

    def analogy(self, a: int, b: int, c: int, k: int = 1) -> list[tuple[int, float]]:
        """a is to b as c is to ?: the words nearest to b − a + c (a, b, c left out)."""
        v = self.vectors()
        return self._nearest(v[b] - v[a] + v[c], k, exclude={a, b, c})

    def _nearest(self, query: Tensor, k: int, exclude: set) -> list[tuple[int, float]]:
        scores = self.vectors() @ F.normalize(query, dim=-1)
        scores[list(exclude)] = float("-inf")
        top = scores.topk(k)
        return list(zip(top.indices.tolist(), top.values.tolist()))


class Word2VecData:
    """Training examples from a corpus (one 1-D tensor of token ids): subsampling, windows, negatives."""

    def __init__(self, ids: Tensor, config: Word2VecConfig) -> None:
        if ids.dim() != 1 or ids.numel() < 2:
            raise ValueError(f"Word2VecData: ids must be a 1-D tensor of at least 2 tokens, got {tuple(ids.shape)}")
        self.ids, self.config = ids.long(), config
        counts = torch.bincount(self.ids, minlength=config.vocab_size).double()
        freq = counts / counts.sum()
        t = config.subsample
        self.keep = ((t / freq).sqrt() + t / freq).clamp(max=1.0) if t > 0 else torch.ones_like(freq)
        self.noise = counts.pow(0.75)
        self.noise /= self.noise.sum()

    def batch(self, size: int, generator: torch.Generator) -> dict:
        """`size` centers drawn from the subsampled corpus, their windows (padding masked), negatives."""
        c = self.config
        n = self.ids.numel()
        centers_at = torch.randint(0, n, (size * 2,), generator=generator)
        kept = torch.rand(size * 2, generator=generator, dtype=torch.float64) < self.keep[self.ids[centers_at]]
        centers_at = centers_at[kept][:size]
        offsets = torch.cat([torch.arange(-c.window, 0), torch.arange(1, c.window + 1)])
        positions = centers_at[:, None] + offsets[None, :]
        reach = torch.randint(1, c.window + 1, (centers_at.numel(), 1), generator=generator)
        mask = (positions >= 0) & (positions < n) & (offsets.abs()[None, :] <= reach)
        contexts = self.ids[positions.clamp(0, n - 1)]
        mask &= torch.rand(mask.shape, generator=generator, dtype=torch.float64) < self.keep[contexts]
        out = {"centers": self.ids[centers_at], "contexts": contexts, "context_mask": mask}
        if c.negative:
            # k noise words per center, shared by its context words (word2vec draws them per pair)
            draws = torch.multinomial(self.noise, centers_at.numel() * c.negative, replacement=True,
                                      generator=generator)
            out["negatives"] = draws.view(-1, c.negative)
        return out
