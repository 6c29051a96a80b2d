"""An encoder-only Transformer trained on the auto-encoding objective: reconstruct the tokens hidden by
masking, as BERT (Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", 2019): learned positions, a normalized embedding, GELU, post-norm blocks (pre-norm as
an option), and a prediction head (dense, GELU, norm) whose output layer is tied to the embedding.

Attention is bidirectional; padded positions are skipped by length, never attended to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .. import nn as fnn
from ..masking import mask_tokens
from .base import Model, check_config, check_tokens, lengths_tensor, padding_mask
from .embeddings import Embedding
from .losses import token_loss
from .transformer import check_transformer, layer_stack

HEAD_ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
                    "relu": lambda: nn.ReLU()}


@dataclass
class MaskedLMConfig:
    """vocab_size; mask_id (the [MASK] token); d_model, num_heads, num_layers; mask_probability (of each
    real token being chosen: 80% become mask_id, 10% a random token, 10% stay); max_len, dim_feedforward
    (default 4·d_model), dropout, activation (the blocks'), head_activation (the prediction head's), norm_first,
    positions; pad_id (never chosen)."""

    vocab_size: int
    mask_id: int
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 4
    mask_probability: float = 0.15
    max_len: int = 512
    dim_feedforward: Optional[int] = None
    dropout: float = 0.1
    activation: str = "gelu"
    head_activation: str = "gelu"
    norm_first: bool = False
    positions: str = "learned"
    layer_norm_eps: float = 1e-5
    pad_id: Optional[int] = 0

    def __post_init__(self):
        if self.dim_feedforward is None:
            self.dim_feedforward = 4 * self.d_model
        check_config("MaskedLMConfig", self, positive=("vocab_size", "d_model", "num_heads", "num_layers",
                                                       "dim_feedforward", "max_len"),
                     probabilities=("dropout", "mask_probability"),
                     token_ids=(("mask_id", "vocab_size"), ("pad_id", "vocab_size")))
        check_transformer("MaskedLMConfig", self)
        if self.head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"MaskedLMConfig: head_activation must be one of {sorted(HEAD_ACTIVATIONS)}, got "
                             f"{self.head_activation!r}")
        if self.mask_id == self.pad_id:
            raise ValueError(f"MaskedLMConfig: mask_id and pad_id must differ, both are {self.mask_id}")


class MaskedLM(Model):
    """forward(tokens (B, T), lengths=None) -> logits (B, T, V); features() the encoder's states
    (B, T, d_model); mask_tokens() the BERT corruption; loss() the masked-token cross-entropy."""

    config_class = MaskedLMConfig

    @classmethod
    def from_hf(cls, path_or_model, mask_id: Optional[int] = None) -> "MaskedLM":
        """A BERT checkpoint (a directory or hub name transformers reads, or a BertForMaskedLM) as a MaskedLM:
        the same logits. mask_id: the [MASK] token's id (read from the checkpoint's tokenizer when not given)."""
        from .hf import bert_to_masked_lm

        return bert_to_masked_lm(path_or_model, mask_id)

    def __init__(self, config: MaskedLMConfig) -> None:
        super().__init__(config)
        c = config
        self.embedding = Embedding(c.vocab_size, c.d_model, c.positions, c.max_len, pad_id=c.pad_id)
        self.embedding_norm = nn.Identity() if c.norm_first else nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = layer_stack(fnn.TransformerEncoderLayer, c, c.num_layers)
        self.norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()
        self.head = nn.Sequential(nn.Linear(c.d_model, c.d_model), HEAD_ACTIVATIONS[c.head_activation](),
                                  nn.LayerNorm(c.d_model, eps=c.layer_norm_eps))
        self.output = nn.Linear(c.d_model, c.vocab_size)
        self.output.weight = self.embedding.tokens.weight
        nn.init.zeros_(self.output.bias)
        self.feature_size = c.d_model

    def features(self, tokens: Tensor, lengths=None) -> Tensor:
        check_tokens("MaskedLM", "tokens", tokens, self.config.vocab_size)
        B, T = tokens.shape
        self.embedding.check_length("MaskedLM", T)
        if lengths is not None:
            lengths = lengths_tensor("MaskedLM", lengths, B, T, tokens.device)
        x = self.dropout(self.embedding_norm(self.embedding(tokens, torch.arange(T, device=tokens.device))))
        for layer in self.layers:
            x = layer(x, lengths=lengths)
        return self.norm(x)

    def forward(self, tokens: Tensor, lengths=None) -> Tensor:
        return self.output(self.head(self.features(tokens, lengths)))

    def mask_tokens(self, tokens: Tensor, lengths=None, generator: Optional[torch.Generator] = None
                    ) -> tuple[Tensor, Tensor]:
        """BERT's corruption -> (inputs, labels): each real, non-pad token is chosen with mask_probability;
        of those 80% become mask_id, 10% a random token, 10% stay. labels hold the chosen tokens and
        -100 (ignored) elsewhere."""
        c = self.config
        check_tokens("MaskedLM", "tokens", tokens, c.vocab_size)
        real = torch.ones_like(tokens, dtype=torch.bool)
        if lengths is not None:
            real &= ~padding_mask(torch.as_tensor(lengths, device=tokens.device), tokens.shape[1])
        if c.pad_id is not None:
            real &= tokens != c.pad_id
        return mask_tokens(tokens, real, c.mask_id, c.vocab_size, c.mask_probability, generator)

    def loss(self, tokens: Tensor, lengths=None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Mask tokens (B, T) as BERT does and return the mean cross-entropy over the chosen positions."""
        inputs, labels = self.mask_tokens(tokens, lengths, generator)
        return token_loss(self(inputs, lengths), labels)
