"""ULMFiT (Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification", 2018) in three
stages, one command (`fastseq ulmfit --config configs/ulmfit_trec.yaml`):

1. pretrain an LSTMLM on a general corpus;
2. fine-tune it on the target task's text with discriminative learning rates (each layer group's rate is
   the one above it divided by 2.6) and the slanted triangular schedule;
3. train a SequenceClassifier on that body with gradual unfreezing: first the head alone, then one more
   layer group from the top per stage, each stage with discriminative rates and a slanted triangular
   schedule of its own.

The config:
    general:  [{dataset: wikitext-2, split: valid}, {dataset: multi30k, split: train}]   (text; pairs: English)
    target:   {dataset: trec, train: train, valid_fraction: 0.1}   (or valid: a split)
    tokenizer: {kind: word, min_freq: 2, lowercase: true}   (fitted on general and target text)
    model:    LSTMLMConfig settings
    pretrain: {steps, lr, block, batch, ...}   finetune: {steps, lr, block, batch, ...}   (TrainConfig + block, batch)
    classify: {steps_per_stage, lr, hidden_dim, dropout, max_tokens, max_len}
    out_dir:  runs/ulmfit_trec       (stages in pretrain/, finetune/, classify/; the classifier's run folder is out_dir)
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .. import data as D
from ..models import LSTMLM, LSTMLMConfig, SequenceClassifier
from ..models.base import init_output_bias
from .tasks import Run, classification_metrics, encode_labelled, epoch_batches, save_run, train_valid
from .trainer import TrainConfig, Trainer

FACTOR = 2.6  # ULMFiT's ratio between the learning rates of adjacent layer groups


def general_text(sources: list) -> str:
    """The text of the general-domain sources, one after another (pairs: one side; labelled: the texts)."""
    parts = []
    for source in sources:
        records = D.load(source["dataset"], source["split"])
        if isinstance(records, str):
            parts.append(records)
        elif records and isinstance(records[0][0], str):  # parallel pairs: one side
            parts.append("\n".join(r[int(source.get("side", 0))] for r in records))
        else:  # labelled texts
            parts.append("\n".join(t for _, t in records))
    return "\n".join(parts)


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """An LSTMLM's (or a classifier's) parameters from the bottom group up: the embedding, each LSTM layer,
    then the output bias (LM) or the head (classifier)."""
    lm = model.body if isinstance(model, SequenceClassifier) else model
    groups = [[lm.embedding.weight]] + [list(layer.parameters()) for layer in lm.layers]
    groups.append(list(model.head.parameters()) if isinstance(model, SequenceClassifier) else [lm.output.bias])
    return groups


def discriminative(groups: list[list[nn.Parameter]], lr: float) -> list[dict]:
    """Optimizer groups, the top one at lr, each lower one at the rate above it / 2.6."""
    top = len(groups) - 1
    return [{"params": params, "lr": lr / FACTOR ** (top - i)} for i, params in enumerate(groups)]


def lm_stage(name, model, tokenizer, text, valid_text, settings, out_dir, device, param_groups=None,
             init_bias: bool = False):
    """Train the LSTMLM `model` on `text` (windows of settings' block x batch), checking it on valid_text
    (None: not checked); logs and checkpoint in out_dir/name (out_dir None: nothing written). init_bias:
    start the output bias at the text's log unigram frequencies (pretraining from scratch)."""
    settings = dict(settings)
    block, rows = int(settings.pop("block", 70)), int(settings.pop("batch", 32))
    config = TrainConfig(**{"out_dir": os.path.join(out_dir, name) if out_dir else None, **settings})
    ids = torch.tensor(tokenizer.encode(text))
    valid = torch.tensor(tokenizer.encode(valid_text)) if valid_text else None
    if init_bias:
        init_output_bias(model, ids)

    def batches(i):
        return {"tokens": D.stream_windows(ids, rows, block, torch.Generator().manual_seed(config.seed * 7919 + i))}

    def evaluate(m):
        g = torch.Generator().manual_seed(config.seed)
        return {"loss": sum(m.loss(D.stream_windows(valid, rows, block, g).to(device)).item() for _ in range(4)) / 4}
    print(f"ulmfit {name}: {len(ids):,} tokens, {config.steps} steps")
    Trainer(model, config, batches, lambda m, b: m.loss(b["tokens"]), evaluate if valid_text else None, param_groups,
            device).fit()


def finetune_lm(lm, tokenizer, text, valid_text, settings, out_dir, device, name="finetune"):
    """Stage 2: the LM on the target task's text, discriminative rates, slanted triangular schedule."""
    settings = {"schedule": "slanted_triangular", **settings}
    groups = discriminative(layer_groups(lm), float(settings.get("lr", 1e-3)))
    lm_stage(name, lm, tokenizer, text, valid_text, settings, out_dir, device, groups)


def train_classifier(lm, tokenizer, train_records, valid_records, settings: dict, out_dir, device, num_classes,
                     progress=True, wrap=None):
    """Stage 3: a SequenceClassifier on the LM's body, gradually unfrozen: the head alone, then one more
    layer group from the top per stage, each stage with discriminative rates and a slanted triangular
    schedule. valid_records (None: none) are scored after each stage; each stage's log goes to
    out_dir/classify/stage<i> (out_dir None: nothing written). Returns (classifier, last metrics)."""
    c = dict(settings)
    steps, lr = int(c.pop("steps_per_stage", 200)), float(c.pop("lr", 1e-2))
    max_tokens, max_len = int(c.pop("max_tokens", 2048)), int(c.pop("max_len", 128))
    seed = int(c.pop("seed", 0))
    model = (wrap or (lambda m: m))(SequenceClassifier.from_language_model(lm, num_classes, **c)).to(device)

    train_ids = encode_labelled(tokenizer, train_records, max_len)
    valid_ids = encode_labelled(tokenizer, valid_records, max_len) if valid_records else None
    batches = epoch_batches([len(t) for _, t in train_ids], max_tokens, seed,
                             lambda idx: D.collate_labelled([train_ids[i] for i in idx], tokenizer.pad_id))
    groups = layer_groups(model)
    metrics = {}
    for stage in range(1, len(groups) + 1):
        for i, params in enumerate(groups):
            for p in params:
                p.requires_grad_(i >= len(groups) - stage)
        trainable = groups[len(groups) - stage:]
        config = TrainConfig(steps=steps, lr=lr, schedule="slanted_triangular", progress=progress,
                             out_dir=os.path.join(out_dir, "classify", f"stage{stage}") if out_dir else None,
                             eval_every=steps if valid_ids else 0, log_every=max(1, steps // 10), seed=seed + stage)
        print(f"ulmfit classify stage {stage}/{len(groups)}: {sum(p.numel() for g in trainable for p in g):,} "
              f"trainable parameters")
        history = Trainer(model, config, lambda i: batches(i + (stage - 1) * steps),
                          lambda m, b: m.loss(b["tokens"], b["labels"], b["lengths"]),
                          (lambda m: classification_metrics(m, valid_ids, tokenizer.pad_id, device)) if valid_ids
                          else None, discriminative(trainable, lr), device).fit()
        metrics = {k: v for k, v in history[-1].items() if k.startswith("eval_")}
    for p in model.parameters():
        p.requires_grad_(True)
    return model, metrics


def run(config: dict, device: torch.device, wrap=None) -> dict:
    """The three stages; wrap(model) -> model, when given, is applied to the LM and to the classifier (the
    reproduction benchmark swaps their layers for torch.nn's)."""
    out_dir = config.get("out_dir", "runs/ulmfit")
    for key in ("general", "target", "model", "pretrain", "finetune", "classify"):
        if key not in config:
            raise ValueError(f"ulmfit config: '{key}' is missing (see fastseq.train.ulmfit)")
    target = config["target"]
    train_records, valid_records = train_valid(target)
    general = general_text(config["general"])
    target_text = "\n".join(t for _, t in train_records)
    tok_spec = dict(config.get("tokenizer", {"kind": "word", "min_freq": 2}))
    tok_spec.pop("kind", None)
    tokenizer = D.WordTokenizer.fit([general, target_text], **tok_spec)
    torch.manual_seed(int(config["pretrain"].get("seed", 0)))
    lm = (wrap or (lambda m: m))(LSTMLM(LSTMLMConfig(tokenizer.vocab_size, **config["model"], pad_id=tokenizer.pad_id,
                                                     eos_id=tokenizer.eos_id))).to(device)
    held_out = "\n".join(t for _, t in valid_records)

    lm_stage("pretrain", lm, tokenizer, general, held_out, config["pretrain"], out_dir, device,
             init_bias=True)  # 1. general text
    finetune_lm(lm, tokenizer, target_text, held_out, config["finetune"], out_dir, device)  # 2. the task's text
    classify = config["classify"]  # 3. the classifier
    num_classes = max(label for label, _ in train_records) + 1
    model, metrics = train_classifier(lm, tokenizer, train_records, valid_records, classify, out_dir, device,
                                      num_classes, config.get("progress", True), wrap)
    max_len = int(classify.get("max_len", 128))
    run_config = {"task": "classify", "data": {**target, "max_len": max_len}, "ulmfit": config}
    settings = TrainConfig(steps=int(classify.get("steps_per_stage", 200)), out_dir=out_dir)
    save_run(Run("classify", model, tokenizer, settings, None, None, None, run_config), out_dir)
    print("ulmfit: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + f"; run folder {out_dir}")
    return metrics
