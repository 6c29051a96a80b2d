"""The ops of fastseq, each a torch custom op served by the backend fastseq.backends chooses. One package
per op family (lstm, additive, dot_product): its declaration and public functions in __init__.py, its
reference and its Triton kernels beside them; registry.py holds the declarations."""
from .additive_attention import additive_attention, additive_attention_step
from .attention import attention, attention_decode, attention_weights
from .attention.sdpa import scaled_dot_product_attention
from .lstm import lstm_cell, lstm_layer, lstm_step

__all__ = ["additive_attention", "additive_attention_step", "attention", "attention_decode", "attention_weights",
           "lstm_cell", "lstm_layer", "lstm_step", "scaled_dot_product_attention"]
