"""Drop-in modules built on fastseq's ops."""
from .additive_attention import AdditiveAttention, PrecomputedKeys
from .convert import convert, revert
from .kv_cache import KVCache
from .linear import Linear
from .lstm import LSTM, LSTMCell
from .multihead_attention import MultiheadAttention, PrecomputedKV
from .transformer import (
                          Transformer,
                          TransformerDecoder,
                          TransformerDecoderLayer,
                          TransformerEncoder,
                          TransformerEncoderLayer,
)

__all__ = ["AdditiveAttention", "KVCache", "LSTM", "Linear", "LSTMCell", "MultiheadAttention", "PrecomputedKeys",
           "PrecomputedKV", "Transformer", "TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder",
           "TransformerEncoderLayer", "convert", "revert"]
