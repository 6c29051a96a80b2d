"""fastseq: fused sequence-model kernels and models for PyTorch.

    fastseq.ops        the ops (torch custom ops), each served by a chosen backend
    fastseq.nn         drop-in modules: LSTM, LSTMCell, AdditiveAttention
    fastseq.backends   which backend serves a call; `with fastseq.backends.use("triton"): ...`
    fastseq.info()     versions, device, what was built, and each op's backend
"""
from . import backends, nn, ops
from .diagnostics import info

__version__ = "0.1.0"

__all__ = ["backends", "info", "nn", "ops", "__version__"]
