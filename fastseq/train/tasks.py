"""A training run from one config (YAML or a dict): the task, its data and tokenizer, the model, the
training settings. `fastseq train --config run.yaml` builds it with `build_run` and fits it; `fastseq eval`
and `fastseq generate` reopen the run's folder.

    task: causal_lm | masked_lm | seq2seq | classify
    data:  {dataset: tinyshakespeare, train: train, valid: val, tokenizer: {kind: char}, block: 256, batch: 64}
           {dataset: trec, train: train, valid_fraction: 0.1, test: test}   (validation held out of train)
           {dataset: multi30k, train: train, valid: val, test: test_2016_flickr, reverse: false,
            tokenizer: {kind: bpe, vocab_size: 8000}, max_tokens: 4096}
           {files: {train: my.txt, valid: my_valid.txt}, ...}      (a user's own files; pairs: [src, tgt])
    model: {class: CausalLM, d_model: 384, ...}   (vocabulary sizes and special ids come from the tokenizer)
           {pretrained: runs/lm}                   (classify: the body, and its tokenizer, from a run folder)
    train: {steps: 5000, lr: 1e-3, ...}           (fastseq.train.TrainConfig)
    generate: {method: beam, beams: 5, max_new_tokens: 80}   (seq2seq evaluation: BLEU)
    out_dir: runs/name
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import atomic
from .. import data as D
from .. import models as M
from ..generation import generate
from ..models.base import init_output_bias
from ..models.losses import token_loss
from . import settings as S
from .metrics import bleu, bleu_signed, perplexity
from .trainer import TrainConfig

TASKS = ("causal_lm", "masked_lm", "seq2seq", "classify")
MODELS = {"causal_lm": ("CausalLM", "LSTMLM"), "masked_lm": ("MaskedLM",), "seq2seq": ("Transformer", "Seq2Seq"),
          "classify": ("SequenceClassifier",)}


@dataclass
class Run:
    """What a config builds: the model, tokenizer, data functions and settings of one training run."""

    task: str
    model: M.Model
    tokenizer: D.Tokenizer
    train: TrainConfig
    batches: Callable[[int], dict]
    loss: Callable
    evaluate: Callable
    config: dict


def yaml_load(text):
    """YAML as a config reads it: safe, and 1e-3 a number as in YAML 1.2 (PyYAML's 1.1 reads it as a string)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789."))
    return yaml.load(text, Loader=Loader)


def load_config(path: str) -> dict:
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"no config file at {path}")
    with open(path) as f:
        try:
            config = yaml_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a mapping with task, data, model, train")
    return config


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """key.sub=value strings (values parsed as YAML) into a copy of config."""
    import yaml

    config = json.loads(json.dumps(config))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set takes key=value (e.g. train.steps=100), got {item!r}")
        key, value = item.split("=", 1)
        node = config
        *parents, last = key.split(".")
        if not key or not all(key.split(".")):
            raise ValueError(f"--set {item}: the key must be dotted names, e.g. train.steps")
        for depth, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item}: {'.'.join(parents[:depth + 1])} is a setting ({node!r}), not a "
                                 f"section holding {last!r}")
        try:
            node[last] = yaml_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return config


def _section(config: dict, name: str, required: bool = True) -> dict:
    section = config.get(name)
    if section is None and not required:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"config: '{name}' must be a mapping, got {section!r}")
    return dict(section)


def build_run(config: dict, device: torch.device) -> Run:
    task = config.get("task")
    if task not in TASKS:
        raise ValueError(f"config: task must be one of {TASKS}, got {task!r}")
    S.known("the top level", config, S.SECTIONS)
    data, model_cfg = S.check_data(_section(config, "data")), _section(config, "model")
    S.check_generate(_section(config, "generate", required=False))
    train_cfg = _section(config, "train", required=False)
    S.known("train", train_cfg, [f.name for f in dataclasses.fields(TrainConfig)])
    if config.get("out_dir"):
        train_cfg.setdefault("out_dir", config["out_dir"])
    train = TrainConfig(**train_cfg)
    builder = {"causal_lm": _language_model, "masked_lm": _masked_lm, "seq2seq": _seq2seq, "classify": _classify}[task]
    torch.manual_seed(train.seed)  # before anything random: the model's initial weights too
    return builder(task, config, data, model_cfg, train, device)


# ------------------------------------------------------------------------------------------ pieces

def _records(data: dict, split: str):
    """The records of a split: a registry data set's, or the user's own file's."""
    if "dataset" in data:
        name = data.get(split)
        if name is None:
            raise ValueError(f"config: data.{split} must name a split of {data['dataset']!r}")
        return D.load(data["dataset"], name)
    files = data.get("files")
    if not isinstance(files, dict) or split not in files:
        raise ValueError(f"config: data needs 'dataset' or 'files' with a '{split}' entry")
    entry = files[split]
    if isinstance(entry, list):
        return D.read_parallel(*entry)
    return D.read_labelled(entry) if data.get("labelled") else D.read_text(entry)


def train_valid(data: dict):
    """The training and validation records: two splits, or with valid_fraction a held-out share of the
    training split (the last share of a text; a seeded random share of a list), for data sets without a
    validation split, so that choices are never made on the test split."""
    fraction = data.get("valid_fraction")
    if fraction is None:
        return _records(data, "train"), _records(data, "valid")
    if not 0 < float(fraction) < 1:
        raise ValueError(f"config: data.valid_fraction must lie in (0, 1), got {fraction!r}")
    records = _records(data, "train")
    cut = int(len(records) * (1 - float(fraction)))
    if isinstance(records, str):
        return records[:cut], records[cut:]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(0)).tolist()
    return [records[i] for i in order[:cut]], [records[i] for i in order[cut:]]


def _tokenizer(spec: dict, texts: list[str]) -> D.Tokenizer:
    if isinstance(spec, dict) and spec.get("kind") == "bpe":
        _needs("tokenizers", "data.tokenizer.kind bpe", "text")
    spec = dict(spec or {"kind": "char"})
    kind = spec.pop("kind", "char")
    if kind == "char":
        return D.CharTokenizer.fit(texts)
    if kind == "word":
        return D.WordTokenizer.fit(texts, **spec)
    if kind == "bpe":
        return D.BPETokenizer.fit(texts, **spec)
    raise ValueError(f"config: data.tokenizer.kind must be char, word or bpe, got {kind!r}")


def _model(task: str, model_cfg: dict, fill: dict) -> M.Model:
    cls_name = model_cfg.pop("class", MODELS[task][0])
    if cls_name not in MODELS[task]:
        raise ValueError(f"config: model.class for {task} must be one of {MODELS[task]}, got {cls_name!r}")
    cls = getattr(M, cls_name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(model_cfg) - fields)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(fields), n=1)
        raise ValueError(f"config: model: {cls_name} has no settings {unknown}"
                         + (f"; did you mean {near[0]!r}?" if near else ""))
    values = {**{k: v for k, v in fill.items() if k in fields}, **model_cfg}
    return cls(cls.config_class(**values))


def _check_stream_sizes(train_ids, valid_ids, window: int) -> None:
    """Both texts hold more tokens than one window of `window` + 1 (what data.block asks for)."""
    for split, ids in (("training", train_ids), ("validation", valid_ids)):
        if ids.numel() < window + 2:
            raise ValueError(f"config: data: the {split} text holds {ids.numel()} tokens, too few for one window of "
                             f"data.block + 1 = {window} tokens; lower data.block or give a longer text")


def _generator(seed: int, i: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + i)


def epoch_batches(lengths: list[int], max_tokens: int, seed: int, collate: Callable[[list[int]], dict]):
    """batches(i) over epochs of token-budget batches, reshuffled per epoch, deterministic in i."""
    cache: dict[int, list[list[int]]] = {}
    first = D.token_budget_batches(lengths, max_tokens, seed=seed)
    per_epoch = len(first)
    cache[0] = first

    def batches(i: int) -> dict:
        epoch = i // per_epoch
        if epoch not in cache:
            cache.clear()
            cache[epoch] = D.token_budget_batches(lengths, max_tokens, seed=seed + epoch)
        order = cache[epoch]
        return collate(order[i % len(order)])
    return batches


# ------------------------------------------------------------------------------------------ tasks

def _language_model(task, config, data, model_cfg, train, device) -> Run:
    train_text, valid_text = train_valid(data)
    tokenizer = _tokenizer(data.get("tokenizer"), [train_text])
    block, rows = int(data.get("block", 128)), int(data.get("batch", 32))
    train_ids, valid_ids = torch.tensor(tokenizer.encode(train_text)), torch.tensor(tokenizer.encode(valid_text))
    _check_stream_sizes(train_ids, valid_ids, block + 1)
    model = _model(task, model_cfg, {"vocab_size": tokenizer.vocab_size, "max_len": block,
                                     "pad_id": tokenizer.pad_id, "eos_id": tokenizer.eos_id})
    init_output_bias(model, train_ids)  # the frequency prior in the bias from step 0 (else the units saturate)

    def batches(i):
        return {"tokens": D.stream_windows(train_ids, rows, block, _generator(train.seed, i))}

    def loss(model, batch):
        return model.loss(batch["tokens"])

    def evaluate(model):
        g = torch.Generator().manual_seed(train.seed)
        n = int(data.get("eval_batches", 8))
        value = sum(model.loss(D.stream_windows(valid_ids, rows, block, g).to(device)).item() for _ in range(n)) / n
        return {"loss": value, "perplexity": perplexity(value)}
    return Run(task, model, tokenizer, train, batches, loss, evaluate, config)


def _masked_lm(task, config, data, model_cfg, train, device) -> Run:
    train_text, valid_text = train_valid(data)
    tokenizer = _tokenizer(data.get("tokenizer"), [train_text])
    block, rows = int(data.get("block", 128)), int(data.get("batch", 32))
    train_ids, valid_ids = torch.tensor(tokenizer.encode(train_text)), torch.tensor(tokenizer.encode(valid_text))
    _check_stream_sizes(train_ids, valid_ids, block)
    model = _model(task, model_cfg, {"vocab_size": tokenizer.vocab_size, "mask_id": tokenizer.mask_id,
                                     "max_len": block, "pad_id": tokenizer.pad_id})
    init_output_bias(model, train_ids)

    def masked(ids, g):
        tokens = D.stream_windows(ids, rows, block - 1, g)
        inputs, labels = D.mask_tokens(tokens, torch.ones_like(tokens, dtype=torch.bool), tokenizer.mask_id,
                                       tokenizer.vocab_size, model.config.mask_probability, g)
        return {"inputs": inputs, "labels": labels}

    def batches(i):
        return masked(train_ids, _generator(train.seed, i))

    def loss(model, batch):
        return token_loss(model(batch["inputs"]), batch["labels"])

    def evaluate(model):
        g = torch.Generator().manual_seed(train.seed)
        total = correct = 0
        nll = 0.0
        for _ in range(int(data.get("eval_batches", 8))):
            batch = {k: v.to(device) for k, v in masked(valid_ids, g).items()}
            logits = model(batch["inputs"])
            chosen = batch["labels"] != -100
            nll += torch.nn.functional.cross_entropy(logits[chosen].float(), batch["labels"][chosen],
                                                     reduction="sum").item()
            correct += (logits[chosen].argmax(-1) == batch["labels"][chosen]).sum().item()
            total += chosen.sum().item()
        return {"loss": nll / total, "perplexity": perplexity(nll / total), "masked_accuracy": correct / total}
    return Run(task, model, tokenizer, train, batches, loss, evaluate, config)


def _needs(module: str, what: str, extra: str) -> None:
    """An optional package a config needs, checked before any work: its absence named with the extra."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"config: {what} needs {module}, which is not installed: pip install 'fastseq[{extra}]' "
                         f"(or pip install {module})")


def _seq2seq(task, config, data, model_cfg, train, device) -> Run:
    _needs("sacrebleu", f"task {task} (its evaluation reports BLEU)", "text")

    def orient(records):
        return [(b, a) for a, b in records] if data.get("reverse") else records

    train_pairs, valid_pairs = (orient(r) for r in train_valid(data))
    tokenizer = _tokenizer(data.get("tokenizer", {"kind": "bpe", "vocab_size": 8000}),
                           [s for p in train_pairs for s in p])
    V = tokenizer.vocab_size
    model = _model(task, model_cfg, {"src_vocab_size": V, "tgt_vocab_size": V, "pad_id": tokenizer.pad_id,
                                     "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id})
    max_len = int(data.get("max_len", 100))

    def encode(records):
        return [(tokenizer.encode(s)[:max_len] or [tokenizer.unk_id],
                 tokenizer.encode(t)[:max_len - 1] + [tokenizer.eos_id]) for s, t in records]

    train_ids, valid_ids = encode(train_pairs), encode(valid_pairs)
    lengths = [max(len(s), len(t)) for s, t in train_ids]
    batches = epoch_batches(lengths, int(data.get("max_tokens", 4096)), train.seed,
                             lambda idx: D.collate_pairs([train_ids[i] for i in idx], tokenizer.pad_id))
    smoothing = float(data.get("label_smoothing", 0.1))
    gen = {"method": "beam", "beams": 5, "max_new_tokens": max_len, **_section(config, "generate", required=False)}

    def loss(model, batch):
        return model.loss(batch["src"], batch["tgt"], batch["src_lengths"], batch["tgt_lengths"], smoothing)

    def evaluate(model):
        n = int(data.get("eval_sentences", 200))
        batch = {k: v.to(device) for k, v in D.collate_pairs(valid_ids[:n], tokenizer.pad_id).items()}
        value = model.loss(batch["src"], batch["tgt"], batch["src_lengths"], batch["tgt_lengths"]).item()
        hyps = translate(model, tokenizer, [s for s, _ in valid_pairs[:n]], device, **gen)
        return {"loss": value, "perplexity": perplexity(value), "bleu": bleu(hyps, [t for _, t in valid_pairs[:n]])}
    return Run(task, model, tokenizer, train, batches, loss, evaluate, config)


def translate(model, tokenizer, sentences: list[str], device, batch: int = 64, **generate_args) -> list[str]:
    """Detokenized outputs of an encoder–decoder for source sentences."""
    out = []
    for start in range(0, len(sentences), batch):
        ids = [tokenizer.encode(s) or [tokenizer.unk_id] for s in sentences[start:start + batch]]
        src, lengths = D.pad(ids, tokenizer.pad_id)
        result = generate(model, src.to(device), lengths.to(device), **generate_args)
        out += [tokenizer.decode(row[:n]) for row, n in zip(result.tokens.tolist(), result.lengths.tolist())]
    return out


def _classify(task, config, data, model_cfg, train, device) -> Run:
    train_records, valid_records = train_valid(data)
    pretrained = model_cfg.pop("pretrained", None)
    counted = max(label for label, _ in train_records) + 1
    num_classes = S.number("config: model.num_classes", model_cfg.pop("num_classes", counted), int, 2)
    for split, records in (("training", train_records), ("validation", valid_records)):
        bad = [label for label, _ in records if not 0 <= label < num_classes]
        if bad:
            raise ValueError(f"config: data: the {split} examples hold label {bad[0]}, outside [0, num_classes = "
                             f"{num_classes})")
    if pretrained:
        lm = M.load(os.path.join(pretrained, "model.pt"))
        tokenizer = D.load_tokenizer(os.path.join(pretrained, "tokenizer.json"))
        vocab = getattr(lm.config, "vocab_size", None)
        if vocab is not None and tokenizer.vocab_size > vocab:
            raise ValueError(f"config: model.pretrained: {pretrained}/tokenizer.json has {tokenizer.vocab_size} "
                             f"tokens, "
                             f"more than the model's vocabulary ({vocab})")
        model = M.SequenceClassifier.from_language_model(lm, num_classes, **model_cfg)
    else:
        tokenizer = _tokenizer(data.get("tokenizer", {"kind": "word"}), [t for _, t in train_records])
        body = model_cfg.pop("body", {"class": "LSTMLM"})
        body_cls = body.pop("class", "LSTMLM")
        body_model = _model("causal_lm" if body_cls != "MaskedLM" else "masked_lm", {"class": body_cls, **body},
                            {"vocab_size": tokenizer.vocab_size, "mask_id": tokenizer.mask_id,
                             "pad_id": tokenizer.pad_id, "max_len": int(data.get("max_len", 128))})
        model = M.SequenceClassifier.from_language_model(body_model, num_classes, **model_cfg)
    max_len, bos = int(data.get("max_len", 128)), bool(data.get("bos", False))

    train_ids = encode_labelled(tokenizer, train_records, max_len, bos)
    valid_ids = encode_labelled(tokenizer, valid_records, max_len, bos)
    batches = epoch_batches([len(t) for _, t in train_ids], int(data.get("max_tokens", 2048)), train.seed,
                             lambda idx: D.collate_labelled([train_ids[i] for i in idx], tokenizer.pad_id))

    def loss(model, batch):
        return model.loss(batch["tokens"], batch["labels"], batch["lengths"])

    def evaluate(model):
        return classification_metrics(model, valid_ids, tokenizer.pad_id, device)
    return Run(task, model, tokenizer, train, batches, loss, evaluate, config)


def encode_labelled(tokenizer: D.Tokenizer, records, max_len: int, bos: bool = False) -> list:
    """(label, text) records -> (label, the text's first max_len token ids, after <bos> with bos); an empty
    text is one <unk>."""
    return [(label, ([tokenizer.bos_id] * bos + (tokenizer.encode(text) or [tokenizer.unk_id]))[:max_len])
            for label, text in records]


def classification_metrics(model, examples, pad_id: int, device, batch: int = 128) -> dict:
    correct, nll = 0, 0.0
    for start in range(0, len(examples), batch):
        b = {k: v.to(device) for k, v in D.collate_labelled(examples[start:start + batch], pad_id).items()}
        logits = model(b["tokens"], b["lengths"])
        nll += torch.nn.functional.cross_entropy(logits.float(), b["labels"], reduction="sum").item()
        correct += (logits.argmax(-1) == b["labels"]).sum().item()
    return {"loss": nll / len(examples), "accuracy": correct / len(examples), "error": 1 - correct / len(examples)}


def save_run(run: Run, out_dir: str) -> None:
    """The trained model, its tokenizer and the config, beside the trainer's log and checkpoint."""
    os.makedirs(out_dir, exist_ok=True)
    run.model.save(os.path.join(out_dir, "model.pt"))
    run.tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    atomic.write(os.path.join(out_dir, "config.json"), lambda f: json.dump(run.config, f, indent=1), mode="w")


def open_run(out_dir: str, device: Optional[torch.device] = None) -> tuple[M.Model, D.Tokenizer, dict]:
    """(model, tokenizer, config) of a finished run folder."""
    for name in ("model.pt", "tokenizer.json", "config.json"):
        if not os.path.exists(os.path.join(out_dir, name)):
            raise FileNotFoundError(f"{out_dir} is not a finished fastseq run: {name} is missing")
    model = M.load(os.path.join(out_dir, "model.pt"), map_location=device or "cpu")
    try:
        with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.path.join(out_dir, 'config.json')}: not a readable run config ({e})") from None
    tokenizer = D.load_tokenizer(os.path.join(out_dir, "tokenizer.json"))
    vocab = getattr(model.config, "vocab_size", None) or getattr(model.config, "tgt_vocab_size", None)
    if vocab is None and hasattr(model.config, "body_config"):  # a classifier: its body's vocabulary
        vocab = model.config.body_config.get("vocab_size")
    if vocab is not None and tokenizer.vocab_size != vocab:
        raise ValueError(f"{out_dir}: tokenizer.json has {tokenizer.vocab_size} tokens but model.pt a vocabulary of "
                         f"{vocab}: the two files are not from one run")
    return model, tokenizer, config


@torch.no_grad()
def evaluate_run(out_dir: str, split: str, device: torch.device, limit: Optional[int] = None,
                 generation: Optional[dict] = None, hypotheses: Optional[str] = None) -> dict:
    """Metrics of a finished run on a split of its data: language models, loss and perplexity over the
    whole split in consecutive windows; masked LMs, masked-token accuracy; seq2seq, BLEU of its
    generation settings (`generation` overrides them; `hypotheses`: a file for its outputs, one a line),
    with sacreBLEU's signature; classifiers, accuracy. limit: only the first examples (windows of 32 rows
    for language models, batches for masked LMs)."""
    model, tokenizer, config = open_run(out_dir, device)
    model.eval()
    task, data = config["task"], dict(config["data"])
    data[split] = data.get(split, split)
    records = _records(data, split)
    if limit is not None and isinstance(records, list):
        records = records[:limit]
    if task == "causal_lm":
        block = int(data.get("block", 128))
        ids = torch.tensor(tokenizer.encode(records if limit is None else records[:limit * 32 * block]))
        windows = ids[:(len(ids) - 1) // block * block + 1]
        total, count = 0.0, 0
        for start in range(0, len(windows) - 1, block * 32):
            starts = range(start, min(start + block * 32, len(windows) - 1), block)
            rows = torch.stack([windows[j:j + block + 1] for j in starts]).to(device)
            n = rows[:, 1:].numel()
            total += model.loss(rows).item() * n
            count += n
        return {"loss": total / count, "perplexity": perplexity(total / count), "tokens": count}
    if task == "masked_lm":
        train = TrainConfig(**{**config.get("train", {}), "out_dir": None})
        if limit is not None:
            data["eval_batches"] = min(int(data.get("eval_batches", 8)), limit)
        run = _masked_lm(task, {**config, "data": data}, {**data, "valid": data[split]}, {}, train, device)
        return run.evaluate(model)
    if task == "seq2seq":
        pairs = [(b, a) for a, b in records] if data.get("reverse") else records
        gen = {"method": "beam", "beams": 5, "max_new_tokens": int(data.get("max_len", 100)),
               **config.get("generate", {}), **(generation or {})}
        S.check_generate(gen)
        hyps = translate(model, tokenizer, [s for s, _ in pairs], device, **gen)
        if hypotheses:
            atomic.write(hypotheses, lambda f: f.writelines(h + "\n" for h in hyps), mode="w")
        score, signature = bleu_signed(hyps, [t for _, t in pairs])
        return {"bleu": score, "signature": signature, "sentences": len(pairs), "generation": gen}
    max_len = int(data.get("max_len", 128))
    examples = encode_labelled(tokenizer, records, max_len, bool(data.get("bos", False)))
    return classification_metrics(model, examples, tokenizer.pad_id, device)
