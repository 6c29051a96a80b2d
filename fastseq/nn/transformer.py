"""Transformer encoder and decoder layers, their stacks and the encoder-decoder Transformer, with
torch.nn.TransformerEncoderLayer's, TransformerDecoderLayer's, TransformerEncoder's, TransformerDecoder's
and Transformer's arguments, submodule names, state_dict keys and mask semantics, on fastseq's attention
(Vaswani et al., "Attention Is All You Need", 2017).

Post-norm as in the paper, pre-norm with norm_first=True. Beyond torch's arguments they take
`lengths` (padding the kernels skip), a `KVCache` for the decoder's self-attention while generating,
and a precomputed `PrecomputedKV` memory for the cross-attention (see fastseq.nn.MultiheadAttention).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..masking import fused_takes_padding, pads_nothing
from ..ops import tuning
from .kv_cache import KVCache
from .linear import Linear
from .multihead_attention import MultiheadAttention, PrecomputedKV, fast_path_tensors

Lengths = Union[Tensor, Sequence[int], None]


def _activation(activation: Union[str, Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    if callable(activation):
        return activation
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if activation == "gelu_tanh":  # GPT-2's approximation
        return _gelu_tanh
    raise ValueError(f"activation must be 'relu', 'gelu', 'gelu_tanh' or a callable, got {activation!r}")


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


class _Layer(nn.Module):
    """What both layers hold: self-attention, the feed-forward network, the norms and dropouts."""

    has_cross_attention = False  # the decoder: cross-attention, a third norm and a third dropout

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = "relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, device=None,
                 dtype=None) -> None:
        """torch's arguments; submodules in torch's order (so state_dicts list the same keys in the same
        order)."""
        super().__init__()
        factory, cross = {"device": device, "dtype": dtype}, self.has_cross_attention
        attention = dict(dropout=dropout, bias=bias, batch_first=batch_first, **factory)
        self.self_attn = MultiheadAttention(d_model, nhead, **attention)
        if cross:
            self.multihead_attn = MultiheadAttention(d_model, nhead, **attention)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **factory)
        self.norm_first = norm_first
        for i in range(1, 4 if cross else 3):
            setattr(self, f"norm{i}", nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory))
        for i in range(1, 4 if cross else 3):
            setattr(self, f"dropout{i}", nn.Dropout(dropout))
        self.activation = _activation(activation)

    def _sa_block(self, x: Tensor, attn_mask, key_padding_mask, is_causal, lengths, kv_cache) -> Tensor:
        x = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False, attn_mask=attn_mask,
                           is_causal=is_causal, lengths=lengths, kv_cache=kv_cache)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor, dropout_out: nn.Dropout) -> Tensor:
        return dropout_out(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TransformerEncoderLayer(_Layer):
    """Self-attention and a feed-forward network, each in a residual block with layer norm.

    Args (as torch.nn.TransformerEncoderLayer): d_model, nhead, dim_feedforward=2048, dropout=0.1,
    activation="relu" ("gelu" or a callable), layer_norm_eps=1e-5, batch_first=False, norm_first=False,
    bias=True, device=None, dtype=None.

    forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False, lengths=None, kv_cache=None):
    src (S, N, E) or (N, S, E) with batch_first; masks as torch's (see MultiheadAttention).
    A decoder-only (GPT-style) model is a stack of these with is_causal=True, and a kv_cache to generate.
    """

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False, lengths: Lengths = None, kv_cache: Optional[KVCache] = None) -> Tensor:
        weights = None
        if src_mask is None and not is_causal and lengths is None and kv_cache is None:
            weights = self._fused(src)
        if weights is not None:
            pad = src_key_padding_mask
            if pad is None or pads_nothing(pad):
                return self._fused_forward(src, weights, None)
            if fused_takes_padding(pad, src) and self._fused_wins(src, weights, pad):
                return self._fused_forward(src, weights, pad)
        return self._composed(src, src_mask, src_key_padding_mask, is_causal, lengths, kv_cache)

    def _composed(self, src: Tensor, *attend) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), *attend)
            return x + self._ff_block(self.norm2(x), self.dropout2)
        x = self.norm1(x + self._sa_block(x, *attend))
        return self.norm2(x + self._ff_block(x, self.dropout2))

    def _fused(self, src: Tensor) -> Optional[tuple]:
        """The weights of torch's fused inference layer (torch.nn.TransformerEncoderLayer's fast path) where it
        serves this call under torch's own conditions (one C++ call, where this layer's Python composition costs
        more per call); else None."""
        attn = self.self_attn
        if (self.training or src.dim() != 3 or src.is_nested or not attn.batch_first or attn.in_proj_bias is None
                or not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn
                or self.activation not in (F.relu, F.gelu) or self.norm1.eps != self.norm2.eps
                or attn.num_heads % 2 or not torch.backends.mha.get_fastpath_enabled()
                or torch.is_autocast_enabled() or torch.compiler.is_compiling()):
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in self.modules()):
            return None
        weights = (attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias,
                   self.norm1.weight, self.norm1.bias, self.norm2.weight, self.norm2.bias, self.linear1.weight,
                   self.linear1.bias, self.linear2.weight, self.linear2.bias)
        return weights if fast_path_tensors((src, *weights)) else None

    def _fused_forward(self, src: Tensor, weights: tuple, key_padding_mask: Optional[Tensor]) -> Tensor:
        (wi, bi, wo, bo, n1w, n1b, n2w, n2b, w1, b1, w2, b2) = weights
        return torch._transformer_encoder_layer_fwd(
            src, self.self_attn.embed_dim, self.self_attn.num_heads, wi, bi, wo, bo, self.activation is F.gelu,
            self.norm_first, self.norm1.eps, n1w, n1b, n2w, n2b, w1, b1, w2, b2, key_padding_mask,
            None if key_padding_mask is None else 1)

    def _fused_wins(self, src: Tensor, weights: tuple, key_padding_mask: Tensor) -> bool:
        """Under key padding, whether torch's fused layer (its masked softmax over every key) is the faster here
        than this layer's composition (attention that skips the padded keys), as the chooser measures the
        shape's bucket (fastseq.ops.tuning; the composition where nothing is measured)."""
        B, T, E = src.shape

        def run(how: str) -> None:
            if how == "fused":
                self._fused_forward(src, weights, key_padding_mask)
            else:
                self._composed(src, None, key_padding_mask, False, None, None)
        call = tuning.Call(src.device, src.dtype, False, (B, T, E, self.linear1.out_features),
                           (self.norm_first, self.self_attn.num_heads), run)
        return tuning.pick("encoder_layer", ("fused", "composed"), call) == "fused"


class TransformerDecoderLayer(_Layer):
    """Causal self-attention, cross-attention to the encoder's memory, and a feed-forward network.

    Args as torch.nn.TransformerDecoderLayer (those of TransformerEncoderLayer).

    forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False,
            tgt_lengths=None, memory_lengths=None, kv_cache=None):
    memory (S, N, E) or a `PrecomputedKV` from `multihead_attn.precompute_kv` (whose batch may divide tgt's:
    beams; it takes no memory_mask); masks as torch's (see MultiheadAttention).
    """

    has_cross_attention = True

    def forward(self, tgt: Tensor, memory: Union[Tensor, PrecomputedKV], tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False, tgt_lengths: Lengths = None, memory_lengths: Lengths = None,
                kv_cache: Optional[KVCache] = None) -> Tensor:
        x = tgt
        attend = (tgt_mask, tgt_key_padding_mask, tgt_is_causal, tgt_lengths, kv_cache)
        cross = (memory, memory_mask, memory_key_padding_mask, memory_is_causal, memory_lengths)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), *attend)
            x = x + self._mha_block(self.norm2(x), *cross)
            return x + self._ff_block(self.norm3(x), self.dropout3)
        x = self.norm1(x + self._sa_block(x, *attend))
        x = self.norm2(x + self._mha_block(x, *cross))
        return self.norm3(x + self._ff_block(x, self.dropout3))

    def _mha_block(self, x: Tensor, memory, attn_mask, key_padding_mask, is_causal, lengths) -> Tensor:
        if isinstance(memory, PrecomputedKV):
            if key_padding_mask is not None or lengths is not None or attn_mask is not None or is_causal:
                raise ValueError("TransformerDecoderLayer: a PrecomputedKV memory carries its own padding; pass no "
                                 "memory_mask, memory_is_causal, memory_key_padding_mask or memory_lengths")
            x = self.multihead_attn(x, memory, None, need_weights=False)[0]
        else:
            x = self.multihead_attn(x, memory, memory, key_padding_mask=key_padding_mask, need_weights=False,
                                    attn_mask=attn_mask, is_causal=is_causal, lengths=lengths)[0]
        return self.dropout2(x)


def _is_causal(mask: Optional[Tensor], is_causal: Optional[bool], size: int) -> bool:
    """torch's rule: an is_causal given is taken as is; None with a mask asks whether the mask is the
    square causal mask of `size` (True or -inf above the diagonal, False or 0 elsewhere)."""
    if is_causal is not None or mask is None:
        return bool(is_causal)
    if tuple(mask.shape) != (size, size):
        return False
    causal = Transformer.generate_square_subsequent_mask(size, device=mask.device, dtype=mask.dtype)
    return bool((mask == causal).all())


def _stack(layer: nn.Module, num_layers: int) -> nn.ModuleList:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    return nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])


def _seq_len(x: Tensor, batch_first: bool) -> int:
    return x.shape[0] if x.dim() == 2 or not batch_first else x.shape[1]


class TransformerEncoder(nn.Module):
    """A stack of num_layers copies of encoder_layer, then `norm` if given (as torch.nn.TransformerEncoder).

    enable_nested_tensor and mask_check are kept for torch's signature: fastseq's layers skip padded keys
    through the key padding mask (or `lengths`) instead of nested tensors, so no fast path depends on them.

    forward(src, mask=None, src_key_padding_mask=None, is_causal=None, lengths=None): is_causal None
    detects whether `mask` is the causal mask, as torch does (then served by the kernels' causal path).
    """

    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True) -> None:
        super().__init__()
        self.layers = _stack(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor = enable_nested_tensor
        self.use_nested_tensor = False
        self.mask_check = mask_check

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None, lengths: Lengths = None) -> Tensor:
        batch_first = getattr(self.layers[0].self_attn, "batch_first", False)
        is_causal = _is_causal(mask, is_causal, _seq_len(src, batch_first))
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal,
                      **({} if lengths is None else {"lengths": lengths}))
        return x if self.norm is None else self.norm(x)


class TransformerDecoder(nn.Module):
    """A stack of num_layers copies of decoder_layer, then `norm` if given (as torch.nn.TransformerDecoder).

    forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
            memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False,
            tgt_lengths=None, memory_lengths=None)
    """

    def __init__(self, decoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.layers = _stack(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: Optional[bool] = None,
                memory_is_causal: bool = False, tgt_lengths: Lengths = None, memory_lengths: Lengths = None) -> Tensor:
        batch_first = getattr(self.layers[0].self_attn, "batch_first", False)
        tgt_is_causal = _is_causal(tgt_mask, tgt_is_causal, _seq_len(tgt, batch_first))
        extra = {name: value for name, value in (("tgt_lengths", tgt_lengths), ("memory_lengths", memory_lengths))
                 if value is not None}
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                      memory_is_causal=memory_is_causal, **extra)
        return x if self.norm is None else self.norm(x)


class Transformer(nn.Module):
    """The encoder-decoder Transformer, as torch.nn.Transformer: its arguments (d_model=512, nhead=8,
    num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048, dropout=0.1, activation=F.relu,
    custom_encoder=None, custom_decoder=None, layer_norm_eps=1e-5, batch_first=False, norm_first=False,
    bias=True, device=None, dtype=None), its submodules (encoder, decoder, each with a final LayerNorm),
    state_dict keys and Xavier initialisation.

    forward(src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
            tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None,
            tgt_is_causal=None, memory_is_causal=False) -> (T, N, E), or (N, T, E) with batch_first.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = F.relu, custom_encoder: Optional[Any] = None,
                 custom_decoder: Optional[Any] = None, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        layer = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first, bias)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
            self.encoder = TransformerEncoder(TransformerEncoderLayer(*layer, **factory), num_encoder_layers, norm)
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            norm = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)
            self.decoder = TransformerDecoder(TransformerDecoderLayer(*layer, **factory), num_decoder_layers, norm)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.d_model = d_model
        self.nhead = nhead
        self.batch_first = batch_first

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Optional[Tensor] = None, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                tgt_key_padding_mask: Optional[Tensor] = None, memory_key_padding_mask: Optional[Tensor] = None,
                src_is_causal: Optional[bool] = None, tgt_is_causal: Optional[bool] = None,
                memory_is_causal: bool = False) -> Tensor:
        batch = 0 if self.batch_first else 1
        if src.dim() == 3 and src.size(batch) != tgt.size(batch):
            raise RuntimeError("the batch number of src and tgt must be equal")
        if src.size(-1) != self.d_model or tgt.size(-1) != self.d_model:
            raise RuntimeError("the feature number of src and tgt must be equal to d_model")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device=None, dtype=None) -> Tensor:
        """The square causal mask: -inf above the diagonal (True for a bool dtype), 0 elsewhere."""
        return torch.triu(torch.full((sz, sz), float("-inf"), dtype=dtype, device=device), diagonal=1)
