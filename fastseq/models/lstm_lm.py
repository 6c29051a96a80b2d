"""An LSTM language model in the style of AWD-LSTM: embedding, stacked LSTM layers, an output layer tied to
the embedding, AWD-LSTM's dropouts (whole words dropped from the embedding; variational dropout, one mask
per sequence across time, on the embedded input, between layers and before the output layer) and optional
weight drop (DropConnect) on the recurrent weights.

Merity, Keskar & Socher, "Regularizing and Optimizing LSTM Language Models", 2017; the tied output layer
from Press & Wolf 2017 and Inan et al. 2017. The LM body of ULMFiT (Howard & Ruder 2018).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import nn as fnn
from .base import Model, check_config, check_tokens, lengths_tensor
from .losses import shifted, token_loss
from .state import RecurrentState


@dataclass
class LSTMLMConfig:
    """vocab_size; embed_dim; hidden_size of every layer but the last, whose size is embed_dim when the
    output is tied (else hidden_size); num_layers; tie_weights; AWD-LSTM's dropouts: embed_dropout (whole
    words: a dropped word's embedding is zero wherever it occurs in the batch), input_dropout (on the
    embedded input), hidden_dropout (between layers), output_dropout (before the output layer, not on the
    features a classifier pools), each of the last three one mask per sequence across time (variational;
    variational=False: a fresh mask per element, embed_dropout too); weight_drop (DropConnect on the
    recurrent weights); pad_id (its embedding stays zero), eos_id (ends generation)."""

    vocab_size: int
    embed_dim: int = 400
    hidden_size: int = 1150
    num_layers: int = 3
    tie_weights: bool = True
    embed_dropout: float = 0.1
    input_dropout: float = 0.0
    hidden_dropout: float = 0.3
    output_dropout: float = 0.4
    weight_drop: float = 0.0
    variational: bool = True
    pad_id: Optional[int] = None
    eos_id: Optional[int] = None

    def __post_init__(self):
        if self.num_layers == 1 and self.tie_weights and self.hidden_size != LSTMLMConfig.hidden_size:
            warnings.warn(f"LSTMLMConfig: hidden_size={self.hidden_size} changes nothing: with num_layers=1 and "
                          f"tie_weights the one layer's size is embed_dim ({self.embed_dim})", stacklevel=3)
        check_config("LSTMLMConfig", self, positive=("vocab_size", "embed_dim", "hidden_size", "num_layers"),
                     probabilities=("embed_dropout", "input_dropout", "hidden_dropout", "output_dropout",
                                    "weight_drop"),
                     token_ids=(("pad_id", "vocab_size"), ("eos_id", "vocab_size")))


class WeightDrop(nn.Module):
    """DropConnect as a parametrization: in training, each forward sees the weight with entries dropped."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, weight: Tensor) -> Tensor:
        return F.dropout(weight, self.p, self.training)


class LSTMLM(Model):
    """Next-token LSTM language model on fastseq.nn.LSTM.

    forward(tokens (B, T), lengths=None, state=None) -> (logits (B, T, V), state): state is a list of
    (h, c) per layer, to carry across truncated-BPTT windows. features(tokens, lengths) gives the last
    layer's outputs (B, T, feature_size) before the output dropout, what a SequenceClassifier pools;
    loss() the mean next-token cross-entropy over real positions.
    """

    config_class = LSTMLMConfig
    LEGACY = {"variational": False}

    def __init__(self, config: LSTMLMConfig) -> None:
        super().__init__(config)
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_id)
        last = c.embed_dim if c.tie_weights else c.hidden_size
        sizes = [c.embed_dim] + [c.hidden_size] * (c.num_layers - 1) + [last]
        self.layers = nn.ModuleList(fnn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(c.num_layers))
        if c.weight_drop > 0:
            for layer in self.layers:
                parametrize.register_parametrization(layer, "weight_hh_l0", WeightDrop(c.weight_drop))
        self.output = fnn.Linear(last, c.vocab_size)
        if c.tie_weights:
            self.output.weight = self.embedding.weight
        self.feature_size = last
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if c.pad_id is not None:
            with torch.no_grad():
                self.embedding.weight[c.pad_id].zero_()
        nn.init.zeros_(self.output.bias)

    def run(self, tokens: Tensor, lengths=None, state: Optional[list] = None) -> tuple[Tensor, list]:
        """(B, T) ids -> the last layer's outputs (B, T, feature_size) before the output dropout, zero past
        each row's length, and the final (h, c) of every layer (at each row's last real token)."""
        check_tokens("LSTMLM", "tokens", tokens, self.config.vocab_size)
        if lengths is not None:
            lengths = lengths_tensor("LSTMLM", lengths, tokens.shape[0], tokens.shape[1], torch.device("cpu"))
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"LSTMLM: state must hold one (h, c) per layer ({len(self.layers)}), got {len(state)}")
        c = self.config
        x = self._embed(tokens)
        x = self._dropout(x, c.input_dropout)
        new_state = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, None if state is None else state[i], lengths=lengths)
            new_state.append(s)
            if i < len(self.layers) - 1:
                x = self._dropout(x, c.hidden_dropout)
        return x, new_state

    def _embed(self, tokens: Tensor) -> Tensor:
        """The embedded tokens; in training with embed_dropout, whole words dropped (AWD-LSTM: rows of the
        embedding zeroed for this batch, the rest scaled by 1 / (1 - p))."""
        c = self.config
        if not self.training or c.embed_dropout == 0:
            return self.embedding(tokens)
        if not c.variational:
            return F.dropout(self.embedding(tokens), c.embed_dropout, True)
        weight = self.embedding.weight
        keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - c.embed_dropout) / (1 - c.embed_dropout)
        return F.embedding(tokens, weight * keep, self.embedding.padding_idx)

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        """Dropout of x (B, T, D): one mask per sequence across its time steps (variational), or per element."""
        if not self.training or p == 0:
            return x
        if not self.config.variational:
            return F.dropout(x, p, True)
        return x * x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p) / (1 - p)

    def features(self, tokens: Tensor, lengths=None) -> Tensor:
        return self.run(tokens, lengths)[0]

    def forward(self, tokens: Tensor, lengths=None, state: Optional[list] = None) -> tuple[Tensor, list]:
        x, state = self.run(tokens, lengths, state)
        return self.output(self._dropout(x, self.config.output_dropout)), state

    def loss(self, tokens: Tensor, lengths=None) -> Tensor:
        """Mean cross-entropy of predicting tokens[:, t+1] from tokens[:, :t+1], over real positions."""
        inputs, targets, lengths = shifted(tokens, lengths)
        return token_loss(self(inputs, lengths)[0], targets, lengths)

    # ---------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def begin_decoding(self, prompt: Tensor, lengths=None, max_new_tokens: int = 0,
                       use_cache: bool = True) -> tuple[Tensor, RecurrentState]:
        """Run the prompts (B, T) -> (logits (B, V) of the token after each prompt, state). A recurrent
        model's state is its cache: use_cache is accepted for the common interface and has no effect."""
        x, state = self.run(prompt, lengths)
        last = (torch.full((prompt.shape[0],), prompt.shape[1], device=prompt.device) if lengths is None
                else torch.as_tensor(lengths, device=prompt.device)) - 1
        logits = self.output(x[torch.arange(prompt.shape[0], device=prompt.device), last.long()])
        return logits, RecurrentState(state)

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, state: RecurrentState) -> Tensor:
        """tokens (N,) -> logits (N, V) of the next token; state advances by one step."""
        x, layers = self.run(tokens[:, None], None, state.layers)
        state.advance(layers)
        return self.output(x[:, 0])

