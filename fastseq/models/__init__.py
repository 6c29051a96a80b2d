"""The models of the field, each a small file with a config dataclass, built from fastseq.nn so that they
run on fastseq's kernels; `save(path)` / `load(path)` keep config and weights in one file."""
from .base import Model, load
from .causal_lm import CausalLM, CausalLMConfig
from .classifier import SequenceClassifier, SequenceClassifierConfig
from .lstm_lm import LSTMLM, LSTMLMConfig
from .masked_lm import MaskedLM, MaskedLMConfig
from .ngram import NGramLM
from .seq2seq import Seq2Seq, Seq2SeqConfig
from .transformer import Transformer, TransformerConfig
from .word2vec import Word2Vec, Word2VecConfig, Word2VecData

__all__ = ["CausalLM", "CausalLMConfig", "LSTMLM", "LSTMLMConfig", "MaskedLM", "MaskedLMConfig", "Model", "Seq2Seq",
           "Seq2SeqConfig", "SequenceClassifier", "SequenceClassifierConfig", "Transformer", "TransformerConfig",
           "NGramLM", "Word2Vec", "Word2VecConfig", "Word2VecData", "load"]
