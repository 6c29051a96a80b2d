"""Data: tokenizers, the registry of named public data sets (cached under $FASTSEQ_DATA), a user's own
files, and batching (padding, token-budget buckets, stream windows, BERT masking)."""
from .batching import (
                       collate_labelled,
                       collate_lm,
                       collate_masked,
                       collate_pairs,
                       mask_tokens,
                       pad,
                       stream_windows,
                       token_budget_batches,
)
from .files import read_labelled, read_lines, read_parallel, read_text
from .registry import DATASETS, data_dir, describe, fetch, load
from .tokenizers import SPECIALS, BPETokenizer, CharTokenizer, Tokenizer, WordTokenizer, load_tokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "DATASETS", "SPECIALS", "Tokenizer", "WordTokenizer", "collate_labelled",
           "collate_lm", "collate_masked", "collate_pairs", "data_dir", "describe", "fetch", "load", "load_tokenizer",
           "mask_tokens", "pad", "read_labelled", "read_lines", "read_parallel", "read_text", "stream_windows",
           "token_budget_batches"]
