"""A sequence classifier over a language model's body, as ULMFiT (Howard & Ruder, "Universal Language Model
Fine-tuning for Text Classification", 2018): the body's states (before the LM's output dropout) are pooled
by concatenating the last real state, the max and the mean over real positions, then a two-layer head
(norm, dropout, linear, ReLU, norm, dropout, linear) gives the classes. The norms are batch norms, as in
ULMFiT and fastai (norm="layer": layer norms, which make an example's prediction independent of its
batch); a training batch of one row normalizes by the running statistics (batch statistics of one row
are undefined). The body is an LSTMLM, CausalLM or MaskedLM, loaded from a pretrained one with
`from_language_model`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Model, check_config, lengths_tensor, model_class, padding_mask
from .losses import token_loss

BODIES = ("LSTMLM", "CausalLM", "MaskedLM")
NORMS = ("batch", "layer")


class RowBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose training batch of one row is normalized by the running statistics (and leaves them
    as they are): one row has no batch statistics."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


@dataclass
class SequenceClassifierConfig:
    """body: "LSTMLM", "CausalLM" or "MaskedLM"; body_config: that model's config as a dict; num_classes;
    hidden_dim of the head (ULMFiT: 50); dropout in the head; norm: "batch" (ULMFiT's) or "layer"."""

    body: str
    body_config: dict = field(default_factory=dict)
    num_classes: int = 2
    hidden_dim: int = 50
    dropout: float = 0.1
    norm: str = "batch"

    def __post_init__(self):
        if self.body not in BODIES:
            raise ValueError(f"SequenceClassifierConfig: body must be one of {BODIES}, got {self.body!r}")
        if self.norm not in NORMS:
            raise ValueError(f"SequenceClassifierConfig: norm must be one of {NORMS}, got {self.norm!r}")
        check_config("SequenceClassifierConfig", self, positive=("num_classes", "hidden_dim"),
                     probabilities=("dropout",))


class SequenceClassifier(Model):
    """forward(tokens (B, T), lengths=None) -> class logits (B, num_classes); loss(tokens, labels, lengths)."""

    unused_parameters = True  # its body's output layer takes no part in the loss (DDP must look for it)

    config_class = SequenceClassifierConfig
    LEGACY = {"norm": "layer"}

    def __init__(self, config: SequenceClassifierConfig) -> None:
        super().__init__(config)
        body_cls = model_class(config.body)
        self.body = body_cls(body_cls.saved_config(config.body_config))
        pooled = 3 * self.body.feature_size
        norm = RowBatchNorm if config.norm == "batch" else nn.LayerNorm
        self.head = nn.Sequential(
            norm(pooled), nn.Dropout(config.dropout), nn.Linear(pooled, config.hidden_dim), nn.ReLU(),
            norm(config.hidden_dim), nn.Dropout(config.dropout), nn.Linear(config.hidden_dim, config.num_classes))

    @classmethod
    def from_language_model(cls, lm: Union[Model, str, os.PathLike], num_classes: int, hidden_dim: int = 50,
                            dropout: float = 0.1, norm: str = "batch") -> "SequenceClassifier":
        """A classifier whose body is the language model `lm` (a model, or the path it was saved to)."""
        if not isinstance(lm, Model):
            lm = Model.load(lm)
        config = SequenceClassifierConfig(type(lm).__name__, dataclasses.asdict(lm.config), num_classes, hidden_dim,
                                          dropout, norm)
        model = cls(config)
        model.load_body(lm)
        return model.to(next(lm.parameters()).device)

    def load_body(self, lm: Model) -> None:
        """Copy a pretrained language model's weights into the body; it must be the same model."""
        mine, theirs = dataclasses.asdict(self.body.config), dataclasses.asdict(lm.config)
        if type(lm) is not type(self.body) or mine != theirs:
            diff = {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
            raise ValueError(f"SequenceClassifier: the pretrained {type(lm).__name__} does not match the body "
                             f"{type(self.body).__name__}; differing config fields (body, pretrained): {diff}")
        self.body.load_state_dict(lm.state_dict())

    def pool(self, states: Tensor, lengths=None) -> Tensor:
        """ULMFiT's concat pooling of states (B, T, D) -> (B, 3D): [last real state, max, mean]."""
        B, T, _ = states.shape
        if lengths is None:
            return torch.cat([states[:, -1], states.max(1).values, states.mean(1)], dim=-1)
        pad = padding_mask(lengths, T)[..., None]
        last = states[torch.arange(B, device=states.device), lengths - 1]
        largest = states.masked_fill(pad, float("-inf")).max(1).values
        mean = states.masked_fill(pad, 0.0).sum(1) / lengths[:, None].to(states.dtype)
        return torch.cat([last, largest, mean], dim=-1)

    def forward(self, tokens: Tensor, lengths=None) -> Tensor:
        if lengths is not None:
            lengths = lengths_tensor("SequenceClassifier", lengths, tokens.shape[0], tokens.shape[1], tokens.device)
        return self.head(self.pool(self.body.features(tokens, lengths), lengths))

    def loss(self, tokens: Tensor, labels: Tensor, lengths=None) -> Tensor:
        """Mean cross-entropy of the class logits against labels (B,) in [0, num_classes)."""
        if labels.shape != (tokens.shape[0],) or labels.dtype.is_floating_point:
            raise ValueError(f"SequenceClassifier: labels must be {tokens.shape[0]} class ids, got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        return token_loss(self(tokens, lengths)[:, None], labels[:, None])
