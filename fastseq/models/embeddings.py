"""Token and position embeddings for the Transformer models: sinusoidal positions (Vaswani et al. 2017),
computed for any position, or learned ones (GPT, BERT) up to max_len."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal(positions: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/dim)), PE(pos, 2i+1) = cos(...), for positions of any shape."""
    i = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64)
    angles = positions.to(torch.float64)[..., None] * torch.exp(-math.log(10000.0) * i / dim)
    out = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., :dim]
    return out.to(dtype)


class Embedding(nn.Module):
    """tokens (B, T) and their positions (B, T) or (T,) -> (B, T, dim): token embedding times `scale`
    plus the position's. positions "sinusoidal" or "learned" (then max_len of them); the token table
    starts normal with std init_std (the pad row at zero)."""

    def __init__(self, vocab_size: int, dim: int, positions: str, max_len: int, scale: float = 1.0,
                 init_std: float = 0.02, pad_id=None) -> None:
        super().__init__()
        if positions not in ("sinusoidal", "learned"):
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', got {positions!r}")
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.tokens.weight, std=init_std)
        if pad_id is not None:
            with torch.no_grad():
                self.tokens.weight[pad_id].zero_()
        self.positions = nn.Embedding(max_len, dim) if positions == "learned" else None
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=0.02)
        self.kind, self.max_len, self.scale, self.dim = positions, max_len, scale, dim

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        x = self.tokens(tokens)
        if self.scale != 1.0:
            x = x * self.scale
        if self.positions is not None:
            return x + self.positions(positions)
        return x + sinusoidal(positions, self.dim, x.dtype)

    def check_length(self, owner: str, length: int) -> None:
        """Learned positions end at max_len: a longer sequence is an error, not a wrap-around."""
        if self.positions is not None and length > self.max_len:
            raise ValueError(f"{owner}: sequences of {length} positions exceed max_len={self.max_len} (learned "
                             f"positions)")
