"""The ops of fastseq, each a torch custom op served by the backend fastseq.backends chooses."""
from .additive_attention import additive_attention, additive_attention_step
from .attention import attention, attention_decode, attention_weights
from .lstm import lstm_cell, lstm_layer

__all__ = ["additive_attention", "additive_attention_step", "attention", "attention_decode", "attention_weights", "lstm_cell", "lstm_layer"]
