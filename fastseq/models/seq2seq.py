"""LSTM encoder–decoder for sequence-to-sequence learning, with or without additive attention.

attention=None: Sutskever, Vinyals & Le, "Sequence to Sequence Learning with Neural Networks", 2014: a
multi-layer LSTM reads the source (reversed, by default), its final states start a multi-layer LSTM
decoder; the whole target runs through the decoder in one fused LSTM call.

attention="additive": Bahdanau, Cho & Bengio, "Neural Machine Translation by Jointly Learning to Align
and Translate", 2015: a bidirectional encoder's states are the annotations; at step i the previous
decoder state s_{i-1} attends over them, the context c_i enters the recurrent step with the previous
word, and the output layer reads s_i, c_i and that word. The keys are projected once per sentence; the
decoder runs one fused LSTM cell and one fused attention step per token.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import nn as fnn
from .base import Model, check_config, check_tokens, lengths_tensor
from .losses import TargetLoss
from .state import RecurrentState


@dataclass
class Seq2SeqConfig:
    """src_vocab_size, tgt_vocab_size; embed_dim; hidden_size and num_layers of encoder and decoder;
    dropout (embeddings, between layers, before the output layer); attention None or "additive";
    attention_dim (default hidden_size); bidirectional_encoder (default: with attention);
    reverse_source (default: without attention); pad_id, bos_id, eos_id of the target vocabulary
    (pad_id also pads the source)."""

    src_vocab_size: int
    tgt_vocab_size: int
    embed_dim: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.2
    attention: Optional[str] = None
    attention_dim: Optional[int] = None
    bidirectional_encoder: Optional[bool] = None
    reverse_source: Optional[bool] = None
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        if self.attention is None and self.attention_dim is not None:
            warnings.warn(f"Seq2SeqConfig: attention_dim={self.attention_dim} changes nothing without attention "
                          "(attention: additive uses it)", stacklevel=3)
        if self.attention not in (None, "additive"):
            raise ValueError(f"Seq2SeqConfig: attention must be None or 'additive', got {self.attention!r}")
        if self.attention_dim is None:
            self.attention_dim = self.hidden_size
        if self.bidirectional_encoder is None:
            self.bidirectional_encoder = self.attention is not None
        if self.reverse_source is None:
            self.reverse_source = self.attention is None
        check_config("Seq2SeqConfig", self, positive=("src_vocab_size", "tgt_vocab_size", "embed_dim", "hidden_size",
                                                      "num_layers", "attention_dim"),
                     probabilities=("dropout",),
                     token_ids=(("pad_id", "tgt_vocab_size"), ("pad_id", "src_vocab_size"),
                                ("bos_id", "tgt_vocab_size"), ("eos_id", "tgt_vocab_size")))


class Seq2Seq(TargetLoss, Model):
    """An LSTM encoder–decoder (see the module): forward(src (B, S), tgt_in (B, T), src_lengths=None) ->
    logits (B, T, tgt_vocab_size), teacher forced (tgt_in starts with BOS); loss as TargetLoss."""

    config_class = Seq2SeqConfig

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config)
        c = config
        H, directions = c.hidden_size, 2 if c.bidirectional_encoder else 1
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.embed_dim, padding_idx=c.pad_id)
        self.tgt_embedding = nn.Embedding(c.tgt_vocab_size, c.embed_dim, padding_idx=c.pad_id)
        self.encoder = fnn.LSTM(c.embed_dim, H, c.num_layers, batch_first=True,
                                dropout=c.dropout if c.num_layers > 1 else 0.0, bidirectional=c.bidirectional_encoder)
        if c.bidirectional_encoder:  # each decoder layer starts from both directions' final states
            self.bridge_h = nn.Linear(2 * H, H)
            self.bridge_c = nn.Linear(2 * H, H)
        if c.attention is None:
            self.decoder = fnn.LSTM(c.embed_dim, H, c.num_layers, batch_first=True,
                                    dropout=c.dropout if c.num_layers > 1 else 0.0)
            self.output = fnn.Linear(H, c.tgt_vocab_size)
        else:
            annotation = directions * H
            self.attention = fnn.AdditiveAttention(H, annotation, c.attention_dim)
            self.cells = nn.ModuleList(fnn.LSTMCell(c.embed_dim + annotation if i == 0 else H, H)
                                       for i in range(c.num_layers))
            self.pre_output = fnn.Linear(H + annotation + c.embed_dim, c.embed_dim)
            self.output = fnn.Linear(c.embed_dim, c.tgt_vocab_size)

    # ------------------------------------------------------------------------------------ encoder

    def encode(self, src: Tensor, src_lengths=None) -> tuple[list, Optional[fnn.PrecomputedKeys]]:
        """-> the decoder's initial (h, c) per layer, and the attention's projected keys (with attention)."""
        c = self.config
        check_tokens("Seq2Seq", "src", src, c.src_vocab_size)
        B, S = src.shape
        lengths = None if src_lengths is None else lengths_tensor("Seq2Seq", src_lengths, B, S, src.device)
        if c.reverse_source:
            src = _reverse_within(src, lengths)
        x = F.dropout(self.src_embedding(src), c.dropout, self.training)
        annotations, (h, cell) = self.encoder(x, lengths=None if lengths is None else lengths.cpu())
        if c.bidirectional_encoder:
            h, cell = (t.view(c.num_layers, 2, B, -1).permute(0, 2, 1, 3).reshape(c.num_layers, B, -1)
                       for t in (h, cell))
            h, cell = torch.tanh(self.bridge_h(h)), self.bridge_c(cell)
        init = [(h[i], cell[i]) for i in range(c.num_layers)]
        memory = None
        if c.attention is not None:
            memory = self.attention.precompute_keys(annotations, lengths=lengths)
        return init, memory

    # ------------------------------------------------------------------------------------ decoder

    def _attend(self, query: Tensor, memory: fnn.PrecomputedKeys) -> Tensor:
        """query (N, H) -> context (N, A); the N = B·K rows are K beams of each of the memory's B rows."""
        B = memory.values.shape[0]
        if query.shape[0] == B:
            return self.attention(query, memory)[0]
        return self.attention(query.view(B, query.shape[0] // B, -1), memory)[0].reshape(query.shape[0], -1)

    def _attention_step(self, embedded: Tensor, layers: list, memory) -> tuple[Tensor, list]:
        """One Bahdanau decoder step: embedded (N, E) previous words, layers [(h, c)] (N, H) ->
        (output features (N, E), new layers)."""
        p = self.config.dropout if self.training else 0.0
        context = self._attend(layers[-1][0], memory)
        x = torch.cat([embedded, context], dim=-1)
        new = []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, layers[i])
            new.append((h, c))
            x = F.dropout(h, p, self.training) if i < len(self.cells) - 1 else h
        features = torch.tanh(self.pre_output(torch.cat([h, context, embedded], dim=-1)))
        return F.dropout(features, p, self.training), new

    def forward(self, src: Tensor, tgt_in: Tensor, src_lengths=None) -> Tensor:
        c = self.config
        check_tokens("Seq2Seq", "tgt_in", tgt_in, c.tgt_vocab_size)
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"Seq2Seq: src and tgt_in must share their batch size, got {src.shape[0]} and "
                             f"{tgt_in.shape[0]}")
        init, memory = self.encode(src, src_lengths)
        embedded = F.dropout(self.tgt_embedding(tgt_in), c.dropout, self.training)
        if c.attention is None:
            h0, c0 = torch.stack([h for h, _ in init]), torch.stack([s for _, s in init])
            y, _ = self.decoder(embedded, (h0, c0))
            return self.output(F.dropout(y, c.dropout, self.training))
        layers, outputs = init, []
        for t in range(tgt_in.shape[1]):
            features, layers = self._attention_step(embedded[:, t], layers, memory)
            outputs.append(features)
        return self.output(torch.stack(outputs, dim=1))

    # ---------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def begin_decoding(self, src: Tensor, lengths=None, max_new_tokens: int = 0,
                       use_cache: bool = True) -> tuple[Tensor, RecurrentState]:
        """Encode the sources (B, S) once and feed BOS -> (logits (B, V) of the first target token, state).
        The recurrent state is the decoder's cache; use_cache has no effect."""
        init, memory = self.encode(src, lengths)
        if self.config.attention is None:
            state = RecurrentState([(h[None], c[None]) for h, c in init])
        else:
            state = RecurrentState(init, batch_dim=0, memory=memory)
        bos = torch.full((src.shape[0],), self.config.bos_id, dtype=torch.long, device=src.device)
        return self.decode_step(bos, state), state

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, state: RecurrentState) -> Tensor:
        """tokens (N,) -> logits (N, V) of the next token; state advances by one step."""
        embedded = self.tgt_embedding(tokens)
        if self.config.attention is None:
            h = torch.cat([h for h, _ in state.layers]), torch.cat([c for _, c in state.layers])
            y, (h, c) = self.decoder(embedded[:, None], h)
            state.advance([(h[i:i + 1], c[i:i + 1]) for i in range(h.shape[0])])
            return self.output(y[:, 0])
        features, layers = self._attention_step(embedded, state.layers, state.memory)
        state.advance(layers)
        return self.output(features)


def _reverse_within(tokens: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Each row's first lengths[b] tokens in reverse order, the padding left in place."""
    B, S = tokens.shape
    t = torch.arange(S, device=tokens.device)[None, :].expand(B, S)
    if lengths is None:
        return tokens.flip(1)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return tokens.gather(1, index)
