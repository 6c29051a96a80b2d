"""The training objectives the models share: next-token and target-sequence cross-entropy over real
(unpadded) positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masking import IGNORE


def token_loss(logits: Tensor, targets: Tensor, lengths=None, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), over the targets not -100 and
    (with lengths) at t < lengths[b]; zero, not NaN, when there are none."""
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=targets.device)
        pad = torch.arange(targets.shape[1], device=targets.device)[None, :] >= lengths[:, None]
        targets = targets.masked_fill(pad, IGNORE)
    logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    targets = targets.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, ignore_index=IGNORE,
                            label_smoothing=label_smoothing, reduction="sum")
    return total / (targets != IGNORE).sum().clamp(min=1)


def shifted(tokens: Tensor, lengths=None) -> tuple[Tensor, Tensor, Tensor | None]:
    """A language model's inputs tokens[:, :-1], targets tokens[:, 1:] and the inputs' lengths (>= 1)."""
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"next-token loss needs tokens (B, T) with T >= 2, got shape {tuple(tokens.shape)}")
    if lengths is not None:
        lengths = (torch.as_tensor(lengths, device=tokens.device) - 1).clamp(min=1)
    return tokens[:, :-1], tokens[:, 1:], lengths


def teacher_forcing(tgt: Tensor, bos_id: int) -> Tensor:
    """The decoder's inputs for targets tgt (B, T): BOS, then tgt[:, :-1]."""
    if tgt.dim() != 2 or tgt.shape[1] < 1:
        raise ValueError(f"targets must have shape (B, T) with T >= 1, got {tuple(tgt.shape)}")
    return torch.cat([tgt.new_full((tgt.shape[0], 1), bos_id), tgt[:, :-1]], dim=1)


class TargetLoss:
    """The loss of an encoder–decoder model (a mixin: Seq2Seq, Transformer), called as model(src, tgt_in,
    src_lengths) -> logits with its config's bos_id."""

    def loss(self, src: Tensor, tgt: Tensor, src_lengths=None, tgt_lengths=None,
             label_smoothing: float = 0.0) -> Tensor:
        """Mean cross-entropy of tgt (B, T) (ending with EOS, no BOS) given src, over real target positions:
        the decoder reads BOS + tgt[:, :-1] (teacher forcing)."""
        logits = self(src, teacher_forcing(tgt, self.config.bos_id), src_lengths)
        return token_loss(logits, tgt, tgt_lengths, label_smoothing)
