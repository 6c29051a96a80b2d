"""Masks more than one layer uses: which keys a padded batch attends to (every attention op's references and
backends), and BERT's masked-token corruption with the label every loss ignores (the data pipeline's
`data.collate_masked` and the masked language model's `MaskedLM.mask_tokens`, neither of which imports the
other)."""
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


def keep_mask(batch: int, num_keys: int, lengths: Optional[Tensor], key_padding_mask: Optional[Tensor],
              device: torch.device) -> Optional[Tensor]:
    """(B, Tk) bool, True for the keys attended to (j < lengths[b] and not key_padding_mask[b, j]); None when
    every key is."""
    keep = None
    if lengths is not None:
        keep = torch.arange(num_keys, device=device)[None, :] < lengths.to(device)[:, None]
    if key_padding_mask is not None:
        unpadded = ~key_padding_mask.to(device=device, dtype=torch.bool)
        keep = unpadded if keep is None else keep & unpadded
    return keep


def _readable(mask: Tensor) -> bool:
    """Whether reading the mask's values costs no sync: a CPU tensor outside torch.compile."""
    return mask.device.type == "cpu" and not torch.compiler.is_compiling()


def keeps_all(keep: Tensor) -> bool:
    """Whether a bool keep mask (True = attended) keeps every key, read only where that costs no sync
    (elsewhere False, and the caller takes its masked path)."""
    return _readable(keep) and bool(keep.all())


def each_row_keeps_one(keep: Tensor) -> bool:
    """Whether every row of a (B, Tk) keep mask keeps at least one key, read only where that costs no sync (as
    keeps_all): then no query of a padding-only mask sees nothing, and no output row needs zeroing."""
    return _readable(keep) and bool(keep.any(1).all())


def pads_nothing(key_padding_mask: Tensor) -> bool:
    """Whether a bool key padding mask (True = ignored) ignores no key, read only where that costs no sync."""
    return key_padding_mask.dtype == torch.bool and keeps_all(~key_padding_mask)


def fused_takes_padding(key_padding_mask: Tensor, x: Tensor) -> bool:
    """Whether torch's fused inference functions may take this key padding mask for batch-first x (N, S, E):
    bool (N, S) with a key kept in every row (torch's give NaN for a row that keeps none, fastseq's contract
    zeros), read only where that costs no sync."""
    return (key_padding_mask.dtype == torch.bool and tuple(key_padding_mask.shape) == tuple(x.shape[:2])
            and each_row_keeps_one(~key_padding_mask))
