"""A decoder-only Transformer language model trained on the auto-regressive (next-token) objective, as
GPT (Radford et al., "Improving Language Understanding by Generative Pre-Training", 2018; GPT-2, 2019):
learned positions, pre-norm blocks with a final norm, GELU, the output layer tied to the embedding.

Every block is a fastseq.nn.TransformerEncoderLayer with causal self-attention; generation prefills a
KVCache per layer with the prompts (ragged prompts by their lengths), then decodes one token per step on
the split-cache decoding kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .. import nn as fnn
from .base import Model, check_config, check_tokens, compute_dtype, lengths_tensor
from .embeddings import Embedding
from .losses import shifted, token_loss
from .state import TransformerState
from .transformer import check_transformer, layer_stack


@dataclass
class CausalLMConfig:
    """vocab_size; d_model, num_heads, num_layers, dim_feedforward (default 4·d_model), dropout,
    activation; norm_first (pre-norm, GPT-2) or post-norm; positions "learned" or "sinusoidal"; max_len
    (positions); tie_weights; pad_id, eos_id (ends generation)."""

    vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 6
    dim_feedforward: Optional[int] = None
    dropout: float = 0.1
    activation: str = "gelu"
    norm_first: bool = True
    positions: str = "learned"
    max_len: int = 1024
    tie_weights: bool = True
    layer_norm_eps: float = 1e-5
    pad_id: Optional[int] = None
    eos_id: Optional[int] = None

    def __post_init__(self):
        if self.dim_feedforward is None:
            self.dim_feedforward = 4 * self.d_model
        check_config("CausalLMConfig", self, positive=("vocab_size", "d_model", "num_heads", "num_layers",
                                                       "dim_feedforward", "max_len"),
                     probabilities=("dropout",), token_ids=(("pad_id", "vocab_size"), ("eos_id", "vocab_size")))
        check_transformer("CausalLMConfig", self)


class CausalLM(Model):
    """forward(tokens (B, T), lengths=None) -> logits (B, T, V), position t seeing tokens[:, :t+1] only;
    features() the final hidden states (B, T, d_model); loss() the mean next-token cross-entropy."""

    config_class = CausalLMConfig

    @classmethod
    def from_hf(cls, path_or_model) -> "CausalLM":
        """A GPT-2 checkpoint (a directory or hub name transformers reads, or a GPT2LMHeadModel) as a
        CausalLM: the same logits and the same greedy and beam outputs."""
        from .hf import gpt2_to_causal_lm

        return gpt2_to_causal_lm(path_or_model)

    def __init__(self, config: CausalLMConfig) -> None:
        super().__init__(config)
        c = config
        self.embedding = Embedding(c.vocab_size, c.d_model, c.positions, c.max_len, pad_id=c.pad_id)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = layer_stack(fnn.TransformerEncoderLayer, c, c.num_layers)
        self.norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()
        self.output = fnn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_weights:
            self.output.weight = self.embedding.tokens.weight
        self.feature_size = c.d_model

    def run(self, tokens: Tensor, positions: Tensor, lengths=None, caches=None) -> Tensor:
        """Hidden states (B, T, d_model) of tokens at positions; with caches, lengths counts each row's
        new tokens (ragged prompts)."""
        x = self.dropout(self.embedding(tokens, positions))
        for i, layer in enumerate(self.layers):
            x = layer(x, is_causal=True, lengths=lengths, kv_cache=None if caches is None else caches[i])
        return self.norm(x)

    def features(self, tokens: Tensor, lengths=None) -> Tensor:
        check_tokens("CausalLM", "tokens", tokens, self.config.vocab_size)
        B, T = tokens.shape
        self.embedding.check_length("CausalLM", T)
        if lengths is not None:
            lengths = lengths_tensor("CausalLM", lengths, B, T, tokens.device)
        return self.run(tokens, torch.arange(T, device=tokens.device), lengths)

    def forward(self, tokens: Tensor, lengths=None) -> Tensor:
        return self.output(self.features(tokens, lengths))

    def loss(self, tokens: Tensor, lengths=None) -> Tensor:
        """Mean cross-entropy of predicting tokens[:, t+1] from tokens[:, :t+1], over real positions."""
        inputs, targets, lengths = shifted(tokens, lengths)
        return token_loss(self(inputs, lengths), targets, lengths)

    # ---------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def begin_decoding(self, prompt: Tensor, lengths=None, max_new_tokens: int = 0,
                       use_cache: bool = True) -> tuple[Tensor, TransformerState]:
        """Run the prompts (B, T), right-padded to their lengths -> (logits (B, V) of each prompt's next
        token, state). use_cache: prefill a KVCache per layer (else every step reruns every token)."""
        c = self.config
        check_tokens("CausalLM", "prompt", prompt, c.vocab_size)
        B, T = prompt.shape
        self.embedding.check_length("CausalLM", T + max_new_tokens)
        lengths = (torch.full((B,), T, device=prompt.device) if lengths is None
                   else lengths_tensor("CausalLM", lengths, B, T, prompt.device))
        state = TransformerState(positions=lengths.clone())
        if use_cache:
            head_dim = c.d_model // c.num_heads
            dtype = compute_dtype(self.output.weight)
            state.caches = [fnn.KVCache(B, c.num_heads, head_dim, T + max_new_tokens, dtype=dtype, device=prompt.device)
                            for _ in self.layers]
            hidden = self.run(prompt, torch.arange(T, device=prompt.device), lengths, state.caches)
        else:
            state.tokens = prompt
            hidden = self.run(prompt, torch.arange(T, device=prompt.device))
        return self.output(hidden[torch.arange(B, device=prompt.device), lengths - 1]), state

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, state: TransformerState) -> Tensor:
        """tokens (N,) -> logits (N, V) of the next token; state advances by one position per row."""
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        if state.caches is not None:
            hidden = self.run(tokens[:, None], state.positions[:, None], caches=state.caches)[:, 0]
        else:  # write each row's token after its last one, rerun everything
            width = state.tokens.shape[1]
            state.tokens = torch.cat([state.tokens, state.tokens.new_zeros(tokens.shape[0], 1)], dim=1)
            state.tokens[rows, state.positions] = tokens
            hidden = self.run(state.tokens, torch.arange(width + 1, device=tokens.device))[rows, state.positions]
        state.positions += 1  # in place: a CUDA graph's replay reads the same tensor
        return self.output(hidden)
