"""Hugging Face checkpoints into fastseq's models: GPT-2 into CausalLM, BERT into MaskedLM (weights mapped
name by name; HF's Conv1D weights transposed). transformers is needed only to read the checkpoint."""
from __future__ import annotations

from typing import Union

import torch
from torch import nn


def _hf_model(path_or_model, loader: str) -> nn.Module:
    if isinstance(path_or_model, nn.Module):
        return path_or_model
    try:
        import transformers
    except ImportError as e:
        raise ImportError("from_hf reads Hugging Face checkpoints through transformers: pip install transformers") \
            from e
    return getattr(transformers, loader).from_pretrained(path_or_model)


def _copy(target: torch.Tensor, source: torch.Tensor, name: str) -> None:
    if target.shape != source.shape:
        raise ValueError(f"from_hf: {name} has shape {tuple(source.shape)}, fastseq's {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(source)


def gpt2_to_causal_lm(path_or_model: Union[str, nn.Module]):
    """A fastseq CausalLM holding a GPT-2 checkpoint's weights (a directory, a hub name, or the model)."""
    from .causal_lm import CausalLM, CausalLMConfig

    hf = _hf_model(path_or_model, "GPT2LMHeadModel")
    c = hf.config
    if getattr(c, "model_type", None) != "gpt2":
        raise ValueError(f"CausalLM.from_hf: a GPT-2 checkpoint is expected, got model_type {c.model_type!r}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if getattr(c, flag, False):
            raise ValueError(f"CausalLM.from_hf: GPT-2's {flag}=True is not served")
    if not getattr(c, "scale_attn_weights", True):
        raise ValueError("CausalLM.from_hf: GPT-2's scale_attn_weights=False is not served")
    activations = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
    if c.activation_function not in activations:
        raise ValueError(f"CausalLM.from_hf: activation {c.activation_function!r} is not served "
                         f"({sorted(activations)})")
    eos = c.eos_token_id if isinstance(c.eos_token_id, int) and 0 <= c.eos_token_id < c.vocab_size else None
    config = CausalLMConfig(c.vocab_size, c.n_embd, c.n_head, c.n_layer, c.n_inner or 4 * c.n_embd,
                            dropout=c.resid_pdrop, activation=activations[c.activation_function], norm_first=True,
                            positions="learned", max_len=c.n_positions, tie_weights=True,
                            layer_norm_eps=c.layer_norm_epsilon, eos_id=eos)
    model = CausalLM(config)
    p = next(hf.parameters())
    model.to(device=p.device, dtype=p.dtype)
    t = hf.transformer
    _copy(model.embedding.tokens.weight, t.wte.weight, "wte")
    _copy(model.embedding.positions.weight, t.wpe.weight, "wpe")
    for i, (block, layer) in enumerate(zip(t.h, model.layers)):
        pairs = [(layer.norm1.weight, block.ln_1.weight), (layer.norm1.bias, block.ln_1.bias),
                 (layer.norm2.weight, block.ln_2.weight), (layer.norm2.bias, block.ln_2.bias),
                 (layer.self_attn.in_proj_weight, block.attn.c_attn.weight.t()),
                 (layer.self_attn.in_proj_bias, block.attn.c_attn.bias),
                 (layer.self_attn.out_proj.weight, block.attn.c_proj.weight.t()),
                 (layer.self_attn.out_proj.bias, block.attn.c_proj.bias),
                 (layer.linear1.weight, block.mlp.c_fc.weight.t()), (layer.linear1.bias, block.mlp.c_fc.bias),
                 (layer.linear2.weight, block.mlp.c_proj.weight.t()), (layer.linear2.bias, block.mlp.c_proj.bias)]
        for j, (target, source) in enumerate(pairs):
            _copy(target, source, f"h.{i} weight {j}")
    _copy(model.norm.weight, t.ln_f.weight, "ln_f.weight")
    _copy(model.norm.bias, t.ln_f.bias, "ln_f.bias")
    return model.train(hf.training)
