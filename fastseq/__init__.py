"""fastseq: fused sequence-model kernels and models for PyTorch.

    fastseq.ops        the ops (torch custom ops), each served by a chosen backend
    fastseq.nn         drop-in modules: LSTM, LSTMCell, AdditiveAttention, MultiheadAttention, Transformer layers
    fastseq.models     LSTMLM, Seq2Seq, Transformer, CausalLM, MaskedLM, SequenceClassifier (save/load)
    fastseq.generation greedy, sampling and beam search over any of their decoders
    fastseq.backends   which backend serves a call; `with fastseq.backends.use("triton"): ...`
    fastseq.info()     versions, device, what was built, and each op's backend
"""
import importlib

__version__ = "0.1.0"

# Submodules load on first use (PEP 562): `fastseq --help` and `--version` start without importing torch.
_SUBMODULES = ("atomic", "backends", "cli", "data", "diagnostics", "generation", "integrations", "masking", "models",
               "nn", "numerics", "ops", "train", "triton")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "info":
        from .diagnostics import info

        return info
    raise AttributeError(f"module 'fastseq' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES, "info"])

__all__ = ["backends", "generation", "info", "models", "nn", "ops", "__version__"]
