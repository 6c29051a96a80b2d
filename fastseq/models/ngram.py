"""An n-gram language model with interpolated Kneser–Ney smoothing (Kneser & Ney 1995; the interpolated
form of Chen & Goodman, "An Empirical Study of Smoothing Techniques for Language Modeling", 1998): the
count-based baseline the neural language models are measured against.

For the highest order, with history h and its one-shorter suffix h':
    P(w | h) = max(c(h w) − D, 0) / c(h) + D · N1+(h •) / c(h) · P(w | h')
Lower orders use continuation counts N1+(• h w) (how many different words precede h w) in place of
c(h w); the unigram level interpolates with the uniform distribution over the vocabulary, so every word
of the vocabulary has a probability. A history never seen backs off wholly to the shorter one.
Sentences are padded with order−1 <s> and end with </s>; words outside the vocabulary become <unk>.
"""
from __future__ import annotations

import collections
import math
from typing import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class NGramLM:
    """NGramLM(order=3, discount=0.75).fit(sentences); logprob(word, history); perplexity(sentences)."""

    def __init__(self, order: int = 3, discount: float = 0.75) -> None:
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"NGramLM: order must be an int >= 1, got {order!r}")
        if not 0 < discount < 1:
            raise ValueError(f"NGramLM: discount must lie in (0, 1), got {discount!r}")
        self.order, self.discount = order, discount
        self.vocab: set = set()

    def fit(self, sentences: Iterable[Sequence[str]], min_count: int = 1) -> "NGramLM":
        sentences = [list(s) for s in sentences]
        counts = collections.Counter(w for s in sentences for w in s)
        self.vocab = {w for w, c in counts.items() if c >= min_count} | {EOS, UNK}
        n = self.order
        # counts[k][(h, w)]: for the highest order raw counts, for lower orders continuation counts
        self.counts = [collections.Counter() for _ in range(n + 1)]
        seen_left: list[set] = [set() for _ in range(n + 1)]
        for s in sentences:
            words = [BOS] * (n - 1) + [self._word(w) for w in s] + [EOS]
            for i in range(n - 1, len(words)):
                self.counts[n][tuple(words[i - n + 1:i + 1])] += 1
                for k in range(1, n):  # the k-gram ending at i, continued by the word before it
                    gram = tuple(words[i - k + 1:i + 1])
                    left = words[i - k] if i - k >= 0 else None
                    if (left, gram) not in seen_left[k]:
                        seen_left[k].add((left, gram))
                        self.counts[k][gram] += 1
        # per history: total count and number of distinct followers, for every order
        self.totals = [collections.Counter() for _ in range(n + 1)]
        self.followers = [collections.Counter() for _ in range(n + 1)]
        for k in range(1, n + 1):
            for gram, c in self.counts[k].items():
                self.totals[k][gram[:-1]] += c
                self.followers[k][gram[:-1]] += 1
        self._uniform = 1 / len(self.vocab - {BOS})  # every predictable word, <s> never is
        return self

    def _word(self, w: str) -> str:
        return w if w in self.vocab else UNK

    def prob(self, word: str, history: Sequence[str] = ()) -> float:
        """P(word | the last order−1 words of history), history padded with <s> on the left."""
        if not self.vocab:
            raise ValueError("NGramLM: fit the model before asking for probabilities")
        history = ([BOS] * (self.order - 1) + [self._word(w) if w != BOS else w for w in history])[-(self.order - 1):] \
            if self.order > 1 else []
        return self._prob(self._word(word) if word != EOS else EOS, tuple(history), self.order)

    def _prob(self, word: str, history: tuple, k: int) -> float:
        if k == 1:
            total = self.totals[1][()]
            kept = max(self.counts[1][(word,)] - self.discount, 0) / total
            return kept + self.discount * self.followers[1][()] / total * self._uniform
        total = self.totals[k][history]
        lower = self._prob(word, history[1:], k - 1)
        if total == 0:
            return lower
        kept = max(self.counts[k][history + (word,)] - self.discount, 0) / total
        return kept + self.discount * self.followers[k][history] / total * lower

    def logprob(self, word: str, history: Sequence[str] = ()) -> float:
        return math.log(self.prob(word, history))

    def sentence_logprob(self, sentence: Sequence[str]) -> tuple[float, int]:
        """(total natural-log probability of the sentence and its </s>, number of predicted tokens)."""
        words, context = list(sentence) + [EOS], self.order - 1
        total = sum(self.logprob(w, words[max(i - context, 0):i]) for i, w in enumerate(words))
        return total, len(words)

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> float:
        """exp of the mean negative log-probability per predicted token (</s> included)."""
        total, count = 0.0, 0
        for s in sentences:
            lp, n = self.sentence_logprob(s)
            total, count = total + lp, count + n
        return math.exp(-total / count)
