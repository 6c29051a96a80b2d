"""The Transformer encoder–decoder of Vaswani et al., "Attention Is All You Need", 2017: sinusoidal
positions, embeddings scaled by sqrt(d_model), post-norm layers as in the paper (pre-norm with
norm_first, then a final norm on each stack), source and target embeddings shared or separate, the
output layer tied to the target embedding.

Every attention runs on fastseq's kernels: padded source keys are skipped by length, the decoder's
self-attention is causal, and generation keeps a KVCache per layer and the encoder's keys and values
projected once per sentence (shared by its beams).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import nn as fnn
from .base import Model, check_config, check_tokens, compute_dtype, lengths_tensor
from .embeddings import Embedding
from .losses import TargetLoss
from .state import TransformerState


@dataclass
class TransformerConfig:
    """src_vocab_size, tgt_vocab_size; d_model, num_heads, num_encoder_layers, num_decoder_layers,
    dim_feedforward, dropout, activation ("relu" as in the paper, or "gelu"); norm_first (pre-norm);
    share_embeddings (one table for source and target: the vocabularies must be one); tie_output (the
    output layer is the target embedding); max_len (longest target generated); pad_id, bos_id, eos_id."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: str = "relu"
    norm_first: bool = False
    share_embeddings: bool = False
    tie_output: bool = True
    max_len: int = 1024
    layer_norm_eps: float = 1e-5
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        check_config("TransformerConfig", self, positive=("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads",
                                                          "num_encoder_layers", "num_decoder_layers",
                                                          "dim_feedforward", "max_len"),
                     probabilities=("dropout",),
                     token_ids=(("pad_id", "src_vocab_size"), ("pad_id", "tgt_vocab_size"),
                                ("bos_id", "tgt_vocab_size"), ("eos_id", "tgt_vocab_size")))
        check_transformer("TransformerConfig", self)
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(f"TransformerConfig: share_embeddings needs one vocabulary, got src_vocab_size="
                             f"{self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}")


def check_transformer(owner: str, config) -> None:
    """What the Transformer configs share: heads that divide d_model, an activation the layers know."""
    if config.d_model % config.num_heads:
        raise ValueError(f"{owner}: d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})")
    if config.activation not in ("relu", "gelu", "gelu_tanh"):
        raise ValueError(f"{owner}: activation must be 'relu', 'gelu' or 'gelu_tanh', got {config.activation!r}")


def layer_stack(layer_cls, config, num_layers: int) -> nn.ModuleList:
    """num_layers batch-first fastseq Transformer layers of `layer_cls` with the config's sizes."""
    return nn.ModuleList(layer_cls(config.d_model, config.num_heads, config.dim_feedforward, config.dropout,
                                   config.activation, config.layer_norm_eps, batch_first=True,
                                   norm_first=config.norm_first) for _ in range(num_layers))


class Transformer(TargetLoss, Model):
    """The Transformer (see the module); its forward and loss are those of every encoder–decoder here
    (TargetLoss): logits (B, T, tgt_vocab_size) of src (B, S) and tgt_in (B, T), which starts with BOS."""

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        c = config
        embed = dict(positions="sinusoidal", max_len=c.max_len, scale=math.sqrt(c.d_model),
                     init_std=c.d_model ** -0.5, pad_id=c.pad_id)
        self.src_embedding = Embedding(c.src_vocab_size, c.d_model, **embed)
        self.tgt_embedding = self.src_embedding if c.share_embeddings else Embedding(c.tgt_vocab_size, c.d_model,
                                                                                     **embed)
        self.encoder = layer_stack(fnn.TransformerEncoderLayer, c, c.num_encoder_layers)
        self.decoder = layer_stack(fnn.TransformerDecoderLayer, c, c.num_decoder_layers)
        self.encoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()
        self.dropout = nn.Dropout(c.dropout)
        self.output = fnn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        if c.tie_output:
            self.output.weight = self.tgt_embedding.tokens.weight

    def encode(self, src: Tensor, src_lengths=None) -> tuple[Tensor, Tensor | None]:
        """-> memory (B, S, d_model) and the source lengths on its device (or None)."""
        check_tokens("Transformer", "src", src, self.config.src_vocab_size)
        B, S = src.shape
        lengths = None if src_lengths is None else lengths_tensor("Transformer", src_lengths, B, S, src.device)
        x = self.dropout(self.src_embedding(src, torch.arange(S, device=src.device)))
        for layer in self.encoder:
            x = layer(x, lengths=lengths)
        return self.encoder_norm(x), lengths

    def decode(self, tgt_in: Tensor, memory, memory_lengths=None, positions: Tensor | None = None,
               caches=None) -> Tensor:
        """Decoder over tgt_in (N, T) -> logits (N, T, V). memory: (B, S, d) with memory_lengths, or one
        PrecomputedKV per layer; positions (N, T) (default 0..T-1); caches: a KVCache per layer."""
        check_tokens("Transformer", "tgt_in", tgt_in, self.config.tgt_vocab_size)
        T = tgt_in.shape[1]
        if positions is None:
            positions = torch.arange(T, device=tgt_in.device)
        x = self.dropout(self.tgt_embedding(tgt_in, positions))
        for i, layer in enumerate(self.decoder):
            static = isinstance(memory, list)
            x = layer(x, memory[i] if static else memory, tgt_is_causal=True, memory_lengths=None if static
                      else memory_lengths, kv_cache=None if caches is None else caches[i])
        return self.output(self.decoder_norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor, src_lengths=None) -> Tensor:
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"Transformer: src and tgt_in must share their batch size, got {src.shape[0]} and "
                             f"{tgt_in.shape[0]}")
        memory, lengths = self.encode(src, src_lengths)
        return self.decode(tgt_in, memory, lengths)

    # ---------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def begin_decoding(self, src: Tensor, lengths=None, max_new_tokens: int = 0,
                       use_cache: bool = True) -> tuple[Tensor, TransformerState]:
        """Encode the sources (B, S) once, project each layer's cross-attention keys and values once, feed
        BOS -> (logits (B, V) of the first target token, state). use_cache: keep a KVCache per layer
        (else every step reruns the decoder over all the tokens so far)."""
        c = self.config
        if max_new_tokens + 1 > c.max_len:
            raise ValueError(f"Transformer: max_new_tokens + 1 = {max_new_tokens + 1} exceeds max_len={c.max_len}")
        memory, src_lengths = self.encode(src, lengths)
        B = src.shape[0]
        statics = [layer.multihead_attn.precompute_kv(memory, memory, lengths=src_lengths) for layer in self.decoder]
        caches = None
        if use_cache:
            head_dim = c.d_model // c.num_heads
            dtype = compute_dtype(self.output.weight)
            caches = [fnn.KVCache(B, c.num_heads, head_dim, max_new_tokens + 1, dtype=dtype, device=memory.device)
                      for _ in self.decoder]
        bos = torch.full((B, 1), c.bos_id, dtype=torch.long, device=src.device)
        state = TransformerState(positions=torch.zeros(B, dtype=torch.long, device=src.device), caches=caches,
                                 tokens=None if use_cache else bos[:, :0], memory=statics)
        return self.decode_step(bos[:, 0], state), state

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, state: TransformerState) -> Tensor:
        """tokens (N,) -> logits (N, V) of the next token; state advances by one position."""
        if state.caches is not None:
            logits = self.decode(tokens[:, None], state.memory, positions=state.positions[:, None],
                                 caches=state.caches)[:, 0]
        else:
            state.tokens = torch.cat([state.tokens, tokens[:, None]], dim=1)
            logits = self.decode(state.tokens, state.memory)[:, -1]
        state.positions += 1  # in place: a CUDA graph's replay reads the same tensor
        return logits
