"""The ops of fastseq, each a torch custom op served by the backend fastseq.backends chooses."""
from .lstm import lstm_cell, lstm_layer

__all__ = ["lstm_cell", "lstm_layer"]
