"""Evaluation metrics: perplexity from a mean cross-entropy, corpus BLEU with sacrebleu on detokenized
text, accuracy."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def perplexity(mean_nll: float) -> float:
    """exp of a mean negative log-likelihood in nats per token."""
    return math.exp(min(mean_nll, 700.0))


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenization, cased) of detokenized hypotheses against one
    reference each."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"bleu: {len(hypotheses)} hypotheses for {len(references)} references")
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score


def bleu_signed(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """`bleu` and sacreBLEU's signature of it (what a paper reports beside the score)."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"bleu: {len(hypotheses)} hypotheses for {len(references)} references")
    metric = sacrebleu.BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)]).score
    return score, str(metric.get_signature())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()
