"""ULMFiT (Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification", 2018) in three
stages, one command (`fastseq ulmfit --config configs/ulmfit_trec.yaml`), as fastai runs them:

1. pretrain an LSTMLM on a general corpus (its output bias from the corpus' log unigram frequencies), or
   take one pretrained earlier (`pretrained:` a folder holding its model.pt and tokenizer.json; the
   target's new words join the vocabulary, their embeddings the mean one);
2. fine-tune it on the target task's text with discriminative learning rates (each layer group's rate is
   the one above it divided by 2.6; the tied embedding and output layer are the top group) and the
   slanted triangular schedule;
3. train a SequenceClassifier on that body with gradual unfreezing: first the head alone, then one more
   layer group from the top per stage, the stages' top rates falling along a ladder (fastai: 2e-2, 1e-2,
   5e-3, 1e-3), each spread over the groups by 2.6, each stage a slanted triangular schedule of its own,
   one optimizer kept across the stages.

Texts start with <bos> (tokenizer.bos), in the LM's stream (each line a text) and in the classifier's
inputs, so the LM knows where a text begins.

The config:
    general:  [{dataset: wikitext-2, split: valid}, {dataset: multi30k, split: train}]   (text; pairs: English)
    target:   {dataset: trec, train: train, valid_fraction: 0.1}   (or valid: a split)
    tokenizer: {kind: word, min_freq: 2, lowercase: true, bos: true}   (fitted on general and target text)
    pretrained: runs/ulmfit_lm/pretrain   (optional: stage 1 done; general, model and pretrain then unused)
    stages:   [pretrain, finetune, classify]   (the default; [pretrain]: only the general LM, its vocabulary
              the general text's, checked on that text's last 1%; then no target is needed)
    model:    LSTMLMConfig settings
    pretrain: {steps, lr, block, batch, ...}   finetune: {steps, lr, block, batch, embedding: top, ...}
    classify: {steps_per_stage (one number, or one per stage), lr, ladder, keep_optimizer, decay, hidden_dim,
               dropout, norm, max_tokens, max_len, eval_every (steps; 0: each stage's end), keep_best (the
               weights of the lowest validation error seen, rather than the last), body (the classifier's
               own LM dropouts: {hidden_dropout: 0.3, ...})}
    out_dir:  runs/ulmfit_trec  (stages in pretrain/, finetune/, classify/; the classifier's run folder is out_dir)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch
from torch import nn

from .. import data as D
from ..models import LSTMLM, LSTMLMConfig, Model, SequenceClassifier
from ..models.base import init_output_bias
from .tasks import Run, classification_metrics, encode_labelled, epoch_batches, save_run, train_valid
from .trainer import TrainConfig, Trainer, make_optimizer

FACTOR = 2.6  # ULMFiT's ratio between the learning rates of adjacent layer groups
LADDER = (1.0, 0.5, 0.25, 0.05)  # each unfreezing stage's top rate / the first's (fastai: 2e-2, 1e-2, 5e-3, 1e-3)
STAGES = ("pretrain", "finetune", "classify")
HELD_OUT = 0.01  # the general LM trained alone (stages [pretrain]) is checked on the corpus' last 1%


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


def lm_stream(tokenizer: D.Tokenizer, text: str, bos: bool) -> torch.Tensor:
    """A text's token ids as one stream; with bos, each non-empty line (a paragraph, an example) starts with
    <bos>."""
    if not bos:
        return torch.tensor(tokenizer.encode(text))
    ids: list[int] = []
    for line in text.split("\n"):
        if line.strip():
            ids += tokenizer.encode(line, bos=True)
    return torch.tensor(ids)


def layer_groups(model: nn.Module, embedding: str = "top") -> list[list[nn.Parameter]]:
    """Parameters from the bottom group up. A classifier: the embedding, each LSTM layer, the head. An
    LSTMLM (fine-tuning): each LSTM layer, then the tied embedding and output layer with its bias
    (embedding="top", fastai's split), or the embedding first and the output bias on top ("bottom")."""
    if isinstance(model, SequenceClassifier):
        lm = model.body
        return [[lm.embedding.weight]] + [list(layer.parameters()) for layer in lm.layers] + [
            list(model.head.parameters())]
    layers = [list(layer.parameters()) for layer in model.layers]
    output = [p for p in model.output.parameters() if p is not model.embedding.weight]
    if embedding == "top":
        return layers + [[model.embedding.weight] + output]
    if embedding == "bottom":
        return [[model.embedding.weight]] + layers + [output]
    raise ValueError(f"ulmfit: finetune.embedding must be 'top' or 'bottom', got {embedding!r}")


def discriminative(groups: list[list[nn.Parameter]], lr: float) -> list[dict]:
    """Optimizer groups, the top one at lr, each lower one at the rate above it / 2.6 ("layer": its index)."""
    top = len(groups) - 1
    return [{"params": params, "lr": lr / FACTOR ** (top - i), "layer": i} for i, params in enumerate(groups)]


def lm_stage(name, model, tokenizer, text, valid_text, settings, out_dir, device, param_groups=None,
             init_bias: bool = False, bos: bool = False):
    """Train the LSTMLM `model` on `text` (windows of settings' block x batch), checking it on valid_text
    (None: not checked); logs and checkpoint in out_dir/name (out_dir None: nothing written). init_bias:
    start the output bias at the text's log unigram frequencies (pretraining from scratch). Returns the
    history."""
    settings = dict(settings)
    block, rows = int(settings.pop("block", 70)), int(settings.pop("batch", 32))
    settings.pop("embedding", None)
    config = TrainConfig(**{"out_dir": os.path.join(out_dir, name) if out_dir else None, **settings})
    ids = lm_stream(tokenizer, text, bos)
    valid = lm_stream(tokenizer, valid_text, bos) if valid_text else None
    if init_bias:
        init_output_bias(model, ids)

    def batches(i):
        return {"tokens": D.stream_windows(ids, rows, block, torch.Generator().manual_seed(config.seed * 7919 + i))}

    def evaluate(m):
        g = torch.Generator().manual_seed(config.seed)
        return {"loss": sum(m.loss(D.stream_windows(valid, rows, block, g).to(device)).item() for _ in range(4)) / 4}
    print(f"ulmfit {name}: {len(ids):,} tokens, {config.steps} steps")
    return Trainer(model, config, batches, lambda m, b: m.loss(b["tokens"]), evaluate if valid_text else None,
                   param_groups, device).fit()


def finetune_lm(lm, tokenizer, text, valid_text, settings, out_dir, device, name="finetune", bos: bool = False):
    """Stage 2: the LM on the target task's text, discriminative rates (settings' embedding: where the tied
    embedding and output layer go, "top" or "bottom"), slanted triangular schedule."""
    settings = {"schedule": "slanted_triangular", **settings}
    groups = discriminative(layer_groups(lm, settings.get("embedding", "top")), float(settings.get("lr", 1e-3)))
    return lm_stage(name, lm, tokenizer, text, valid_text, settings, out_dir, device, groups, bos=bos)


def train_classifier(lm, tokenizer, train_records, valid_records, settings: dict, out_dir, device, num_classes,
                     progress=True, wrap=None, bos: bool = False):
    """Stage 3: a SequenceClassifier on the LM's body, gradually unfrozen: the head alone, then one more
    layer group from the top per stage. Stage s trains at a top rate of lr * ladder[s] (the ladder's last
    rung repeats) spread down the groups by 2.6, on a slanted triangular schedule of its own, with one
    optimizer kept across the stages (keep_optimizer: false, a fresh one each stage). valid_records (None:
    none) are scored after each stage and every eval_every steps within one; keep_best: the classifier
    ends with the weights of the lowest validation error seen (needs valid_records). Each stage's log goes
    to out_dir/classify/stage<i> (out_dir None: nothing written). Returns (classifier, the metrics of the
    weights it ends with)."""
    c = dict(settings)
    steps, lr = c.pop("steps_per_stage", 200), float(c.pop("lr", 1e-2))
    ladder = [float(x) for x in c.pop("ladder", LADDER)]
    keep = bool(c.pop("keep_optimizer", True))
    decay = str(c.pop("decay", "matrices"))
    max_tokens, max_len = int(c.pop("max_tokens", 2048)), int(c.pop("max_len", 128))
    seed = int(c.pop("seed", 0))
    every, keep_best = int(c.pop("eval_every", 0)), bool(c.pop("keep_best", False))
    body = c.pop("body", None)
    if body:
        lm = with_dropouts(lm, body)
    if every < 0:
        raise ValueError(f"ulmfit: classify.eval_every must be >= 0 (0: each stage's end), got {every}")
    if keep_best and not valid_records:
        raise ValueError("ulmfit: classify.keep_best chooses weights on validation examples, and there are none "
                         "(target: give valid or valid_fraction)")
    model = (wrap or (lambda m: m))(SequenceClassifier.from_language_model(lm, num_classes, **c)).to(device)

    train_ids = encode_labelled(tokenizer, train_records, max_len, bos)
    valid_ids = encode_labelled(tokenizer, valid_records, max_len, bos) if valid_records else None
    batches = epoch_batches([len(t) for _, t in train_ids], max_tokens, seed,
                            lambda idx: D.collate_labelled([train_ids[i] for i in idx], tokenizer.pad_id))
    groups = layer_groups(model)
    n = len(groups)
    per_stage = list(steps) if isinstance(steps, (list, tuple)) else [int(steps)] * n
    if len(per_stage) != n or not ladder:
        raise ValueError(f"ulmfit: classify.steps_per_stage must be one number or {n} (one per stage), and "
                         f"classify.ladder not empty; got {steps!r}, {ladder!r}")
    metrics, optimizer, done, best = {}, None, 0, None

    def scored(m):  # validation metrics; with keep_best, the weights of the lowest error so far kept aside
        nonlocal best
        result = classification_metrics(m, valid_ids, tokenizer.pad_id, device)
        if keep_best and (best is None or result["error"] < best[0]["eval_error"]):
            best = ({f"eval_{k}": v for k, v in result.items()},
                    {k: v.detach().clone() for k, v in m.state_dict().items()})
        return result

    for stage in range(1, n + 1):
        for i, params in enumerate(groups):
            for p in params:
                p.requires_grad_(i >= n - stage)
        top = lr * ladder[min(stage, len(ladder)) - 1]
        config = TrainConfig(steps=per_stage[stage - 1], lr=top, schedule="slanted_triangular", progress=progress,
                             decay=decay,
                             out_dir=os.path.join(out_dir, "classify", f"stage{stage}") if out_dir else None,
                             eval_every=(min(every, per_stage[stage - 1]) if every else per_stage[stage - 1])
                             if valid_ids else 0,
                             log_every=max(1, per_stage[stage - 1] // 10), seed=seed + stage)
        rates = discriminative(groups, top)
        if keep and optimizer is None:  # every group, frozen ones too: they take no step until they thaw
            optimizer = make_optimizer(model, config, rates)
        if keep:
            for group in optimizer.param_groups:
                group["lr"] = rates[group["layer"]]["lr"]
        print(f"ulmfit classify stage {stage}/{n}: {sum(p.numel() for g in groups[n - stage:] for p in g):,} "
              f"trainable parameters, top rate {top:.3g}")
        first = done
        history = Trainer(model, config, lambda i: batches(i + first),
                          lambda m, b: m.loss(b["tokens"], b["labels"], b["lengths"]),
                          scored if valid_ids else None, None if keep else rates[n - stage:], device,
                          optimizer=optimizer).fit()
        done += per_stage[stage - 1]
        metrics = {k: v for k, v in history[-1].items() if k.startswith("eval_")}
    if best is not None:
        model.load_state_dict(best[1])
        metrics = best[0]
    for p in model.parameters():
        p.requires_grad_(True)
    return model, metrics


DROPOUTS = ("embed_dropout", "input_dropout", "hidden_dropout", "output_dropout", "weight_drop")
_WEIGHT_DROPPED = "parametrizations.weight_hh_l0.original"  # weight_drop's parametrization keeps the weight here


def with_dropouts(lm: LSTMLM, dropouts: dict) -> LSTMLM:
    """The LM with other dropout probabilities (fastai sets the classifier's apart from the LM's), its
    weights unchanged; weight_drop may turn on or off."""
    if not isinstance(dropouts, dict) or set(dropouts) - set(DROPOUTS):
        raise ValueError(f"ulmfit: classify.body takes a mapping of {', '.join(DROPOUTS)}, got {dropouts!r}")
    config = dataclasses.replace(lm.config, **{k: float(v) for k, v in dropouts.items()})
    new = LSTMLM(config).to(lm.embedding.weight.device)
    plain = {k.replace(_WEIGHT_DROPPED, "weight_hh_l0"): v for k, v in lm.state_dict().items()}
    new.load_state_dict({k: plain[k.replace(_WEIGHT_DROPPED, "weight_hh_l0")] for k in new.state_dict()})
    return new.train(lm.training)


def extend_vocabulary(lm: LSTMLM, old: D.WordTokenizer, new: D.WordTokenizer) -> LSTMLM:
    """The LM with `new`'s vocabulary (old's words first, in their order, then more): the known words keep
    their embeddings and output biases, new ones get the mean of them (fastai's)."""
    if new.words[:len(old.words)] != old.words:
        raise ValueError("ulmfit: the target vocabulary must extend the pretrained one")
    config = dataclasses.replace(lm.config, vocab_size=new.vocab_size)
    grown = LSTMLM(config).to(lm.embedding.weight.device)
    state = lm.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if value.shape[:1] == (old.vocab_size,) and name.split(".")[0] in ("embedding", "output"):
                extra = value.mean(0, keepdim=True).expand(new.vocab_size - old.vocab_size, *value.shape[1:])
                state[name] = torch.cat([value, extra])
    grown.load_state_dict(state)
    return grown


def _tokenizer(config: dict, general: str, target_text: str) -> tuple[D.Tokenizer, bool]:
    spec = dict(config.get("tokenizer", {"kind": "word", "min_freq": 2}))
    spec.pop("kind", None)
    bos = bool(spec.pop("bos", False))
    return D.WordTokenizer.fit([general, target_text], **spec), bos


def _pretrained(config: dict, target_text: str, device) -> tuple[LSTMLM, D.Tokenizer, bool]:
    """The pretrained LM of config['pretrained'] with the target's words added to its vocabulary."""
    folder = config["pretrained"]
    model_path, tokenizer_path = os.path.join(folder, "model.pt"), os.path.join(folder, "tokenizer.json")
    for path in (model_path, tokenizer_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"ulmfit: pretrained: {folder} has no {os.path.basename(path)} (a folder the "
                                    f"pretrain stage wrote: fastseq ulmfit with stages: [pretrain])")
    lm, general = Model.load(model_path), D.load_tokenizer(tokenizer_path)
    if not isinstance(lm, LSTMLM) or not isinstance(general, D.WordTokenizer):
        raise ValueError(f"ulmfit: pretrained: {folder} must hold an LSTMLM and a word tokenizer")
    spec = dict(config.get("tokenizer", {}))
    bos = bool(spec.get("bos", False))
    seen = D.WordTokenizer.fit([target_text], min_freq=int(spec.get("min_freq", 2)),
                               lowercase=general.lowercase).words
    known = set(general.words)
    tokenizer = D.WordTokenizer(general.words + [w for w in seen if w not in known], general.lowercase,
                                general.unk_token)
    return extend_vocabulary(lm, general, tokenizer).to(device), tokenizer, bos


def run(config: dict, device: torch.device, wrap=None) -> dict:
    """The stages; wrap(model) -> model, when given, is applied to the LM and to the classifier (the
    reproduction benchmark swaps their layers for torch.nn's). Returns the classifier's last metrics, or
    (stages [pretrain]) the LM's."""
    out_dir = config.get("out_dir", "runs/ulmfit")
    stages = tuple(config.get("stages", STAGES))
    if not stages or any(s not in STAGES for s in stages) or list(stages) != sorted(stages, key=STAGES.index):
        raise ValueError(f"ulmfit config: stages must be some of {list(STAGES)} in that order, got {list(stages)}")
    only_lm = stages == ("pretrain",)
    needed = ["model", "pretrain", "general"] if "pretrained" not in config else []
    needed += ([] if only_lm else ["target"]) + [s for s in stages if s != "pretrain"]
    for key in needed:
        if key not in config:
            raise ValueError(f"ulmfit config: '{key}' is missing (see fastseq.train.ulmfit)")
    if "pretrained" in config and "pretrain" in stages:
        raise ValueError("ulmfit config: with 'pretrained', leave the pretrain stage out of stages")
    if only_lm:  # the general LM alone, for any task: its vocabulary and held-out text are the corpus' own
        train_records, valid_records = [], []
        general = general_text(config["general"])
        cut = general.rfind("\n", 0, int(len(general) * (1 - HELD_OUT)))
        general, held_out = general[:cut], general[cut + 1:]
    else:
        target = config["target"]
        train_records, valid_records = train_valid(target)
        held_out = "\n".join(t for _, t in valid_records)
    target_text = "\n".join(t for _, t in train_records)
    if "pretrained" in config:
        lm, tokenizer, bos = _pretrained(config, target_text, device)
        lm = (wrap or (lambda m: m))(lm)
    else:
        general = general if only_lm else general_text(config["general"])
        tokenizer, bos = _tokenizer(config, general, target_text)
        torch.manual_seed(int(config["pretrain"].get("seed", 0)))
        lm = (wrap or (lambda m: m))(LSTMLM(LSTMLMConfig(tokenizer.vocab_size, **config["model"],
                                                         pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)))
        lm = lm.to(device)
        history = lm_stage("pretrain", lm, tokenizer, general, held_out, config["pretrain"], out_dir, device,
                           init_bias=True, bos=bos)  # 1. general text
        if out_dir:  # the general LM, loadable by a later run's `pretrained:`
            lm.save(os.path.join(out_dir, "pretrain", "model.pt"))
            tokenizer.save(os.path.join(out_dir, "pretrain", "tokenizer.json"))
        if stages == ("pretrain",):
            return {k: v for k, v in history[-1].items() if k.startswith("eval_")}
    if "finetune" in stages:
        finetune_lm(lm, tokenizer, target_text, held_out, config["finetune"], out_dir, device, bos=bos)  # 2.
    classify = config["classify"]  # 3. the classifier
    num_classes = max(label for label, _ in train_records) + 1
    model, metrics = train_classifier(lm, tokenizer, train_records, valid_records, classify, out_dir, device,
                                      num_classes, config.get("progress", True), wrap, bos)
    max_len = int(classify.get("max_len", 128))
    run_config = {"task": "classify", "data": {**target, "max_len": max_len, "bos": bos}, "ulmfit": config}
    steps = classify.get("steps_per_stage", 200)
    settings = TrainConfig(steps=int(sum(steps) if isinstance(steps, (list, tuple)) else steps), out_dir=out_dir)
    save_run(Run("classify", model, tokenizer, settings, None, None, None, run_config), out_dir)
    print("ulmfit: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()) + f"; run folder {out_dir}")
    return metrics


def pretrained_folder(out_dir: str) -> Optional[str]:
    """Where a run's general LM lies (out_dir/pretrain), when the pretrain stage wrote it."""
    folder = os.path.join(out_dir, "pretrain")
    return folder if os.path.exists(os.path.join(folder, "model.pt")) else None
