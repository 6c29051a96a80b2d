"""Hugging Face checkpoints into fastseq's models: GPT-2 into CausalLM, BERT into MaskedLM (weights mapped
name by name; HF's Conv1D weights transposed). transformers is needed only to read the checkpoint."""
from __future__ import annotations

import os
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


def _mask_id(path_or_model, mask_id):
    """mask_id, or the [MASK] id of the tokenizer beside the checkpoint (a folder without tokenizer files has
    none: transformers would make up an empty vocabulary with its own [MASK])."""
    if mask_id is not None:
        return mask_id
    files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    readable = isinstance(path_or_model, (str, os.PathLike)) and (
        not os.path.isdir(path_or_model) or any(os.path.exists(os.path.join(path_or_model, f)) for f in files))
    found = None
    if readable:
        try:
            import transformers

            found = transformers.AutoTokenizer.from_pretrained(path_or_model).mask_token_id
        except Exception:  # no tokenizer to be had: the caller names the id
            found = None
    if found is None:
        raise ValueError("MaskedLM.from_hf: mask_id is needed (the [MASK] token's id): the checkpoint has no "
                         "tokenizer that names it")
    return found


def bert_to_masked_lm(path_or_model: Union[str, nn.Module], mask_id=None):
    """A fastseq MaskedLM holding a BERT checkpoint's weights (a directory, a hub name, or the model). The
    token-type embedding of type 0 (what BERT adds when no token types are given) is folded into the
    position table."""
    from .masked_lm import MaskedLM, MaskedLMConfig

    hf = _hf_model(path_or_model, "BertForMaskedLM")
    c = hf.config
    if getattr(c, "model_type", None) != "bert":
        raise ValueError(f"MaskedLM.from_hf: a BERT checkpoint is expected, got model_type {c.model_type!r}")
    if getattr(c, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"MaskedLM.from_hf: position_embedding_type {c.position_embedding_type!r} is not served "
                         f"(absolute positions only)")
    if getattr(c, "is_decoder", False):
        raise ValueError("MaskedLM.from_hf: a BERT decoder (is_decoder=True) is not a masked LM")
    activations = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
    if c.hidden_act not in activations:
        raise ValueError(f"MaskedLM.from_hf: activation {c.hidden_act!r} is not served ({sorted(activations)})")
    bert, predictions = hf.bert, hf.cls.predictions
    if predictions.decoder.weight.data_ptr() != bert.embeddings.word_embeddings.weight.data_ptr():
        raise ValueError("MaskedLM.from_hf: the checkpoint's output layer is not tied to its embedding "
                         "(tie_word_embeddings=False); MaskedLM ties them")
    mask_id = _mask_id(path_or_model, mask_id)
    pad = c.pad_token_id if isinstance(c.pad_token_id, int) and 0 <= c.pad_token_id < c.vocab_size else None
    act = activations[c.hidden_act]
    config = MaskedLMConfig(c.vocab_size, mask_id, c.hidden_size, c.num_attention_heads, c.num_hidden_layers,
                            max_len=c.max_position_embeddings, dim_feedforward=c.intermediate_size,
                            dropout=c.hidden_dropout_prob, activation=act, head_activation=act, norm_first=False,
                            positions="learned", layer_norm_eps=c.layer_norm_eps, pad_id=pad)
    model = MaskedLM(config)
    p = next(hf.parameters())
    model.to(device=p.device, dtype=p.dtype)
    e = bert.embeddings
    _copy(model.embedding.tokens.weight, e.word_embeddings.weight, "word_embeddings")
    _copy(model.embedding.positions.weight, e.position_embeddings.weight + e.token_type_embeddings.weight[0],
          "position_embeddings")
    _copy(model.embedding_norm.weight, e.LayerNorm.weight, "embeddings.LayerNorm.weight")
    _copy(model.embedding_norm.bias, e.LayerNorm.bias, "embeddings.LayerNorm.bias")
    for i, (block, layer) in enumerate(zip(bert.encoder.layer, model.layers)):
        a = block.attention
        q, k, v = a.self.query, a.self.key, a.self.value
        pairs = [(layer.self_attn.in_proj_weight, torch.cat([q.weight, k.weight, v.weight])),
                 (layer.self_attn.in_proj_bias, torch.cat([q.bias, k.bias, v.bias])),
                 (layer.self_attn.out_proj.weight, a.output.dense.weight),
                 (layer.self_attn.out_proj.bias, a.output.dense.bias),
                 (layer.norm1.weight, a.output.LayerNorm.weight), (layer.norm1.bias, a.output.LayerNorm.bias),
                 (layer.linear1.weight, block.intermediate.dense.weight),
                 (layer.linear1.bias, block.intermediate.dense.bias),
                 (layer.linear2.weight, block.output.dense.weight), (layer.linear2.bias, block.output.dense.bias),
                 (layer.norm2.weight, block.output.LayerNorm.weight), (layer.norm2.bias, block.output.LayerNorm.bias)]
        for j, (target, source) in enumerate(pairs):
            _copy(target, source, f"layer.{i} weight {j}")
    t = predictions.transform
    _copy(model.head[0].weight, t.dense.weight, "transform.dense.weight")
    _copy(model.head[0].bias, t.dense.bias, "transform.dense.bias")
    _copy(model.head[2].weight, t.LayerNorm.weight, "transform.LayerNorm.weight")
    _copy(model.head[2].bias, t.LayerNorm.bias, "transform.LayerNorm.bias")
    _copy(model.output.bias, predictions.decoder.bias if predictions.decoder.bias is not None else predictions.bias,
          "predictions.bias")
    return model.train(hf.training)
