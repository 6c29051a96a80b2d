"""Whole-model benchmark (run by fastseq.bench.sweep): training throughput (tokens per second: forward, backward and an
AdamW step) of every fastseq model against the same model on torch.nn layers (torch_layers.py), and
generation speed (new tokens per second, greedy and beam 5); for the CausalLM and the Transformer also
greedy decoding without a KV cache, and for the CausalLM with torch's scaled_dot_product_attention on the
same cache. Models run in the benchmark's dtype (parameters cast), in train mode with dropout for
training, eval mode for generation. The implementations of a case are timed side by side, taking turns
(timing.measure_together).
"""
from __future__ import annotations

import torch

from fastseq.generation import generate
from fastseq.models import (
    LSTMLM,
    CausalLM,
    CausalLMConfig,
    LSTMLMConfig,
    MaskedLM,
    MaskedLMConfig,
    Seq2Seq,
    Seq2SeqConfig,
    Transformer,
    TransformerConfig,
)

from . import timing
from .timing import DTYPES
from .torch_layers import torch_layers

FAMILIES = ("lstm", "additive_attention", "attention")  # the ops the models run on (for sweep.py)

# model: (model class, config class, fixed config arguments, the config's leading arguments per preset);
# "gpu" holds each model's paper size or its usual small configuration
MODELS = {
    "lstm_lm": (LSTMLM, LSTMLMConfig, {}, {"quick": (100, 16, 24, 2), "cpu": (2000, 128, 256, 2),
                                           "gpu": (10000, 400, 1150, 3)}),  # AWD-LSTM on PTB
    "seq2seq": (Seq2Seq, Seq2SeqConfig, {}, {"quick": (100, 100, 16, 24, 2), "cpu": (2000, 2000, 128, 256, 2),
                                             "gpu": (16000, 16000, 512, 1024, 4)}),  # Sutskever (smaller)
    "seq2seq_additive": (Seq2Seq, Seq2SeqConfig, {"attention": "additive"},  # RNNsearch
                         {"quick": (100, 100, 16, 24, 1), "cpu": (2000, 2000, 128, 256, 1),
                          "gpu": (16000, 16000, 512, 1024, 1)}),
    "transformer": (Transformer, TransformerConfig, {},  # base
                    {"quick": (100, 100, 16, 2, 1, 1, 32), "cpu": (2000, 2000, 128, 4, 2, 2, 512),
                     "gpu": (16000, 16000)}),
    "causal_lm": (CausalLM, CausalLMConfig, {"max_len": 1024},  # GPT-2 small
                  {"quick": (100, 16, 2, 2), "cpu": (2000, 128, 4, 2), "gpu": (16000, 768, 12, 12)}),
    "masked_lm": (MaskedLM, MaskedLMConfig, {},  # BERT-base
                  {"quick": (100, 3, 16, 2, 2), "cpu": (2000, 3, 128, 4, 2), "gpu": (16000, 3, 768, 12, 12)}),
}
# training: (batch, source length (0: a language model), target length) per preset and model
TRAINING = {"quick": {"lm": (2, 0, 8), "translation": (2, 6, 5)}, "cpu": {"lm": (8, 0, 64), "translation": (8, 20, 20)},
            "gpu": {"lm": (32, 0, 256), "translation": (64, 30, 30)}}


def _build(name: str, preset: str):
    model_class, config_class, fixed, sizes = MODELS[name]
    return model_class(config_class(*sizes[preset], **fixed))


def _shape(name: str, preset: str) -> tuple[int, int, int]:
    """(batch, source length, target length) of a training step."""
    return TRAINING[preset]["translation" if name in ("seq2seq", "seq2seq_additive", "transformer") else "lm"]


# generation: (batch, prompt or source length, new tokens)
GENERATION = {"quick": (2, 6, 4), "cpu": (4, 16, 16), "gpu": (16, 64, 128)}
GENERATORS = ("lstm_lm", "seq2seq", "seq2seq_additive", "transformer", "causal_lm")


def _batch(name, model, B, S, T, device):
    c = model.config
    vocab = getattr(c, "vocab_size", None) or c.tgt_vocab_size
    tokens = torch.randint(4, vocab, (B, T + (1 if S == 0 and name != "masked_lm" else 0)), device=device)
    if S == 0:
        return (tokens,)
    src = torch.randint(4, c.src_vocab_size, (B, S), device=device)
    return src, tokens


def _train_step(model, batch):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=next(model.parameters()).is_cuda)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(*batch).backward()
        opt.step()
    return step


def _training(device, preset, dtype_name):
    rows = []
    for name in MODELS:
        B, S, T = _shape(name, preset)
        torch.manual_seed(0)
        model = _build(name, preset).to(device=device, dtype=DTYPES[dtype_name]).train()
        batch = _batch(name, model, B, S, T, device)
        measured, steps = {}, {}
        for impl, m in (("fastseq", model), ("torch.nn", torch_layers(model))):
            step = _train_step(m, batch)
            try:
                step()  # a first step: what cannot run on these layers is recorded, not timed
                steps[impl] = step
            except (RuntimeError, NotImplementedError) as e:
                measured[impl] = {"error": str(e).splitlines()[0][:200]}
        measured.update(timing.measure_together(steps, device, warmup=2, min_reps=10))  # taking turns
        tokens = B * T
        rows.append(_row("train", name, dtype_name, {"B": B, "S": S, "T": T}, measured, tokens, "fastseq"))
    return rows


def _generation(device, preset, dtype_name):
    B, S, new = GENERATION[preset]
    rows = []
    for name in GENERATORS:
        torch.manual_seed(0)
        model = _build(name, preset).to(device=device, dtype=DTYPES[dtype_name]).eval()
        vocab = getattr(model.config, "src_vocab_size", None) or model.config.vocab_size
        inputs = torch.randint(4, vocab, (B, S), device=device)
        for method, beams in (("greedy", 1), ("beam", 5)):
            runs = {"fastseq": (model, True)}
            if name in ("causal_lm", "transformer") and method == "greedy":
                runs["no-cache"] = (model, False)
            if name == "causal_lm" and method == "greedy":
                runs["torch.nn+sdpa-cache"] = (torch_layers(model), True)
            fns = {impl: (lambda m=m, cache=cache:  # eos_id=None: every row generates `new` tokens
                          generate(m, inputs, max_new_tokens=new, method=method, beams=beams, eos_id=None,
                                   use_cache=cache))
                   for impl, (m, cache) in runs.items()}
            measured = timing.measure_together(fns, device, warmup=1, min_reps=5, min_seconds=0.2)
            rows.append(_row(f"generate-{method}", name, dtype_name, {"B": B, "S": S, "new": new, "beams": beams},
                             measured, B * new, "fastseq"))
    return rows


def _row(case, model, dtype_name, sizes, measured, tokens, ours):
    t = measured[ours]
    row = {"op": "models", "case": case, "model": model, "dtype": dtype_name, "sizes": sizes, "backend": ours, **t,
           "baselines": {k: v for k, v in measured.items() if k != ours}, "unit": "tokens/s", "work": tokens}
    if "median_ms" in t:
        row["rate"] = tokens / (t["median_ms"] * 1e-3)
        row.update(timing.speedups(t, row["baselines"]))
    return row


def run(device, preset, dtype_names, fused_backends, ceilings):
    rows = []
    for dtype_name in dtype_names:
        for part in (_training(device, preset, dtype_name), _generation(device, preset, dtype_name)):
            for r in part:
                rows.append(r)
                rate = f"{r['rate']:12.0f} tokens/s" if "rate" in r else r.get("error", "n/a")
                vs = "  ".join(f"x{r[k]:.2f} vs {k[11:]}" for k in r if k.startswith("speedup_vs_"))
                print(f"models {r['case']:<16} {r['model']:<17} {dtype_name} {r['sizes']}  {rate}  {vs}", flush=True)
    return rows


def plot(rows, path):
    """Speed-up of fastseq over each baseline, one bar per (case, model, baseline)."""
    labels, values = [], []
    for r in rows:
        for k in r:
            if k.startswith("speedup_vs_"):
                labels.append(f"{r['case']} {r['model']} {r['dtype']} vs {k[11:]}")
                values.append(r[k])
    fig, ax = timing.figure()
    fig.set_size_inches(9, 0.3 * len(labels) + 1.5)
    ax.barh(labels, values)
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xlabel("speed-up of fastseq (x)")
    ax.set_title("Models: training and generation throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
