"""Drop-in modules built on fastseq's ops."""
from .lstm import LSTM, LSTMCell

__all__ = ["LSTM", "LSTMCell"]
