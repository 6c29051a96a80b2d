"""BERT's masked-token corruption and the label every loss ignores: shared by the data pipeline
(`data.collate_masked`) and the masked language model (`MaskedLM.mask_tokens`), neither of which imports
the other."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

IGNORE = -100  # F.cross_entropy's ignore_index: the label of a position no loss counts


def mask_tokens(tokens: Tensor, real: Tensor, mask_id: int, vocab_size: int, probability: float = 0.15,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """BERT's corruption (Devlin et al. 2019) -> (inputs, labels): each real token (real: bool, like
    tokens) is chosen with `probability`; of those 80% become mask_id, 10% a random token, 10% stay.
    labels hold the chosen tokens and -100 (ignored) elsewhere."""
    def uniform():
        return torch.rand(tokens.shape, generator=generator, device=tokens.device)

    chosen = real & (uniform() < probability)
    fate = uniform()
    masked, randomized = chosen & (fate < 0.8), chosen & (fate >= 0.8) & (fate < 0.9)
    random_tokens = torch.randint(vocab_size, tokens.shape, generator=generator, device=tokens.device)
    inputs = torch.where(masked, mask_id, torch.where(randomized, random_tokens, tokens))
    return inputs, tokens.masked_fill(~chosen, IGNORE)
