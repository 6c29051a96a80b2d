"""fastseq: fused sequence-model kernels and models for PyTorch.

    fastseq.ops        the ops (torch custom ops), each served by a chosen backend
    fastseq.nn         drop-in modules: LSTM, LSTMCell, AdditiveAttention, MultiheadAttention, Transformer layers
    fastseq.models     LSTMLM, Seq2Seq, Transformer, CausalLM, MaskedLM, SequenceClassifier (save/load)
    fastseq.generation greedy, sampling and beam search over any of their decoders
    fastseq.backends   which backend serves a call; `with fastseq.backends.use("triton"): ...`
    fastseq.info()     versions, device, what was built, and each op's backend
"""
from . import backends, generation, models, nn, ops
from .diagnostics import info

__version__ = "0.1.0"

__all__ = ["backends", "generation", "info", "models", "nn", "ops", "__version__"]
