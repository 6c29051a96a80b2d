"""Drop-in modules built on fastseq's ops."""
from .additive_attention import AdditiveAttention, PrecomputedKeys
from .lstm import LSTM, LSTMCell

__all__ = ["AdditiveAttention", "LSTM", "LSTMCell", "PrecomputedKeys"]
