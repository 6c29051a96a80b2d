"""Generation for every fastseq decoder: greedy search, sampling (temperature, top-k, top-p) and batched
beam search (length penalty, n-gram blocking), with EOS handling, a length limit and a seed.

    out = fastseq.generation.generate(model, prompt_or_source, lengths, max_new_tokens=50,
                                      method="beam", beams=5)
    out.tokens, out.lengths, out.scores

A decoder is any model that keeps the `Decoder` protocol (protocol.py): begin_decoding(inputs, lengths,
max_new_tokens, use_cache) -> (logits of each row's first new token, state); decode_step(tokens, state)
-> logits; state.reorder(index) keeping rows `index` (beam search: each beam's parent).
fastseq.models' LSTMLM, CausalLM, Seq2Seq and Transformer are decoders: Transformers keep a KVCache per
layer, recurrent models their (h, c) and the attention's projected keys.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .logits import block_repeated_ngrams, top_k_filter, top_p_filter
from .protocol import Decoder, DecodingState
from .search import Generation, beam_search, sequential

METHODS = ("greedy", "sample", "beam")
EARLY_STOPPING = (True, False, "never")


def generate(model: Decoder, inputs: Tensor, lengths=None, *, max_new_tokens: int, method: str = "greedy",
             beams: int = 4,
             length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, eos_id: Union[int, None, str] = "model", pad_id: Union[int, str] = "model",
             seed: Optional[int] = None, use_cache: bool = True, cuda_graph: bool = False,
             early_stopping: Union[bool, str] = "never", num_return_sequences: int = 1) -> Generation:
    """Generate up to max_new_tokens tokens per row of inputs (B, S) (prompts or sources; lengths (B,) when
    they are right-padded).

    method: "greedy", "sample" (temperature, top_k (0: all), top_p (1: all), seed for a reproducible
    draw) or "beam" (beams, length_penalty α: scores are log-probability / length^α; early_stopping as
    Hugging Face's generate() takes it: "never", exact, the answer of a search that never stops early, so
    with α > 0 a sentence runs until no live beam could beat its finished ones at max_new_tokens; False,
    Hugging Face's default, bounds a live beam at its present length; True stops a sentence once it holds
    `beams` finished hypotheses, as fairseq does). num_return_sequences n: beam search's n best hypotheses of
    each input (n <= beams), or n samples of each; rows i·n … i·n+n-1 of the outputs are input i's. eos_id ("model":
    the model's config.eos_id): a row ends when it emits it; None: every row runs max_new_tokens.
    pad_id ("model": the model's config.pad_id, else 0) fills rows that ended. no_repeat_ngram_size n > 0: no n-gram
    occurs twice among a row's generated tokens. use_cache=False reruns the whole sequence each step
    (for comparison; Transformer models only differ). cuda_graph (CUDA tensors, use_cache): capture the
    decode step once in a CUDA graph (per batch and cache capacity) and replay it for every token
    (fastseq.generation.graphs); the KV caches are then read whole, masked by their lengths.
    """
    if not isinstance(model, Decoder):
        raise TypeError(f"generate: model must be a decoder (begin_decoding and decode_step, see "
                        f"fastseq.generation.Decoder), got {type(model).__name__}")
    config = getattr(model, "config", None)
    if eos_id == "model":
        eos_id = getattr(config, "eos_id", None)
    if pad_id == "model":
        pad_id = getattr(config, "pad_id", None)
        pad_id = 0 if pad_id is None else pad_id
    check_options(method=method, max_new_tokens=max_new_tokens, beams=beams, temperature=temperature, top_k=top_k,
                  top_p=top_p, no_repeat_ngram_size=no_repeat_ngram_size, length_penalty=length_penalty,
                  early_stopping=early_stopping)
    vocab = _vocab_size(model)
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is None and name == "eos_id":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or (vocab is not None and not 0 <= value < vocab):
            raise ValueError(f"generate: {name} must be a token id in [0, {vocab}) (the model's vocabulary), got "
                             f"{value}")
    if cuda_graph and not (isinstance(inputs, Tensor) and inputs.is_cuda and use_cache):
        raise ValueError("generate: cuda_graph=True needs CUDA inputs and use_cache=True, got "
                         f"{'inputs on ' + str(inputs.device) if isinstance(inputs, Tensor) else type(inputs).__name__}"
                         f"{'' if use_cache else ' and use_cache=False'}")
    _check_inputs(model, inputs, lengths)
    _check_return_sequences(num_return_sequences, method, beams)
    if isinstance(inputs, Tensor) and inputs.dim() == 2 and inputs.shape[0] == 0:  # no rows: nothing to generate
        return Generation(inputs.new_empty(0, 0), inputs.new_empty(0), torch.empty(0, device=inputs.device),
                          torch.empty(0, 0, device=inputs.device))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if method == "beam":
                return beam_search(model, inputs, lengths, max_new_tokens, beams, length_penalty, eos_id, pad_id,
                                   no_repeat_ngram_size, use_cache, cuda_graph, early_stopping, num_return_sequences)
            if num_return_sequences > 1:  # n draws of each input: its row repeated n times
                inputs = inputs.repeat_interleave(num_return_sequences, dim=0)
                if lengths is not None:
                    lengths = torch.as_tensor(lengths).repeat_interleave(num_return_sequences)
            generator = None
            if method == "sample" and seed is not None:
                generator = torch.Generator(device=inputs.device).manual_seed(seed)
            return sequential(model, inputs, lengths, max_new_tokens, eos_id, pad_id, no_repeat_ngram_size,
                              use_cache, sample=method == "sample", temperature=temperature, top_k=top_k,
                              top_p=top_p, generator=generator, cuda_graph=cuda_graph)
    finally:
        model.train(was_training)


def _check_return_sequences(n, method: str, beams: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"generate: num_return_sequences must be an int >= 1, got {n!r}")
    if method == "greedy" and n > 1:
        raise ValueError(f"generate: num_return_sequences={n} with method='greedy' would repeat one answer; use "
                         "'beam' (the n best) or 'sample' (n draws)")
    if method == "beam" and n > beams:
        raise ValueError(f"generate: num_return_sequences must be <= beams ({beams}), got {n}")


def _vocab_size(model) -> Optional[int]:
    config = getattr(model, "config", None)
    for name in ("vocab_size", "tgt_vocab_size"):
        if hasattr(config, name):
            return getattr(config, name)
    return None


def _check_inputs(model, inputs, lengths) -> None:
    """Prompts of token ids on the model's device (never the meta device: it holds no values), and lengths
    of an integer type."""
    if not isinstance(inputs, Tensor):
        return
    if inputs.is_meta:
        raise ValueError("generate: inputs are on the meta device, which holds no token ids")
    if inputs.dtype == torch.bool or inputs.is_floating_point() or inputs.is_complex():
        raise TypeError(f"generate: inputs must be integer token ids, got {inputs.dtype}")
    param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    if param is not None and inputs.device != param.device:
        raise ValueError(f"generate: inputs are on {inputs.device}, the model on {param.device}; move one of them")
    if isinstance(lengths, Tensor) and (lengths.dtype == torch.bool or lengths.is_floating_point()
                                        or lengths.is_complex()):
        raise TypeError(f"generate: lengths must be integers, got {lengths.dtype}")


def check_options(*, method, max_new_tokens, beams, temperature, top_k, top_p, no_repeat_ngram_size,
                  length_penalty, early_stopping="never") -> None:
    """generate()'s options are valid; else a ValueError naming the option (a run config checks its
    generate: section with it before training)."""
    if method not in METHODS:
        raise ValueError(f"generate: method must be one of {METHODS}, got {method!r}")
    for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("beams", beams, 1), ("top_k", top_k, 0),
                             ("no_repeat_ngram_size", no_repeat_ngram_size, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"generate: {name} must be an int >= {low}, got {value!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"generate: temperature must be > 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p must lie in (0, 1], got {top_p!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not math.isfinite(length_penalty):
        raise ValueError(f"generate: length_penalty must be a finite number, got {length_penalty!r}")
    if early_stopping not in EARLY_STOPPING or not isinstance(early_stopping, (bool, str)):
        raise ValueError(f"generate: early_stopping must be True, False or 'never', got {early_stopping!r}")
    if isinstance(temperature, float) and not math.isfinite(temperature):
        raise ValueError(f"generate: temperature must be finite, got {temperature!r}")


__all__ = ["Decoder", "DecodingState", "Generation", "block_repeated_ngrams", "check_options", "generate",
           "top_k_filter", "top_p_filter"]
