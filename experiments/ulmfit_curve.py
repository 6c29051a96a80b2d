"""ULMFiT's few-label claim as a curve (Howard & Ruder 2018, Fig. 3: "with only 100 labeled examples, it
matches the performance of training from scratch on 100x more data"), on TREC-6: test error against the
number of labeled training examples, for

- scratch: the same classifier (ULMFiT's LSTM body and head) from random weights, every layer trained;
- ulmfit-supervised: the general-domain LM fine-tuned on the labeled examples' text only, then the
  classifier with gradual unfreezing;
- ulmfit-semi-supervised: the LM fine-tuned on all of TREC's training text (labels unused), then the
  classifier, the same way;

over several seeds (the labeled subset, the classifier's initialisation and batches change with the
seed), mean and spread. Every classifier trains for the same number of steps. The general-domain LM comes
from a finished `ulmfit` run folder (its pretrain/ checkpoint, tokenizer and config), e.g. the
reproduction table's row:

    python experiments/reproduce.py --scale cpu --rows trec_ulmfit
    python experiments/ulmfit_curve.py --from benchmarks/results/reproduce-runs-cpu/trec_ulmfit-fastseq

JSON, a PNG and a Markdown table under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastseq import atomic  # noqa: E402
from fastseq import data as D
from fastseq.bench import timing  # noqa: E402
from fastseq.models import LSTMLM, LSTMLMConfig, SequenceClassifier  # noqa: E402
from fastseq.train import TrainConfig, Trainer, ulmfit  # noqa: E402
from fastseq.train.tasks import classification_metrics, encode_labelled, epoch_batches, open_run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "benchmarks", "results")  # every results file, for docs/generate.py
METHODS = ("scratch", "ulmfit-supervised", "ulmfit-semi-supervised")


def pretrained_lm(run_dir: str) -> tuple[dict, D.Tokenizer, dict]:
    """(the general-domain LM's state_dict, the tokenizer, the ulmfit config) of an ulmfit run folder."""
    _, tokenizer, config = open_run(run_dir)
    if "ulmfit" not in config:
        raise ValueError(f"--from {run_dir}: not an ulmfit run folder (its config.json has no 'ulmfit' section)")
    checkpoint = os.path.join(run_dir, "pretrain", "checkpoint.pt")
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"--from {run_dir}: no pretrain/checkpoint.pt (the general-domain LM)")
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["model"], tokenizer, config["ulmfit"]


def _lm(state: dict, tokenizer, model_cfg: dict, device) -> LSTMLM:
    lm = LSTMLM(LSTMLMConfig(tokenizer.vocab_size, **model_cfg, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id))
    lm.load_state_dict(state)
    return lm.to(device)


def _scratch(tokenizer, model_cfg, records, num_classes, settings, steps, lr, device, seed) -> SequenceClassifier:
    """The classifier from random weights, every layer trained for `steps` (cosine schedule, 10% warm-up)."""
    torch.manual_seed(seed)
    body = LSTMLM(LSTMLMConfig(tokenizer.vocab_size, **model_cfg, pad_id=tokenizer.pad_id))
    model = SequenceClassifier.from_language_model(body, num_classes, hidden_dim=int(settings.get("hidden_dim", 50)),
                                               dropout=float(settings.get("dropout", 0.1))).to(device)
    max_len = int(settings.get("max_len", 128))
    ids = encode_labelled(tokenizer, records, max_len)
    batches = epoch_batches([len(t) for _, t in ids], int(settings.get("max_tokens", 2048)), seed,
                            lambda idx: D.collate_labelled([ids[i] for i in idx], tokenizer.pad_id))
    config = TrainConfig(steps=steps, lr=lr, schedule="cosine", warmup=steps // 10, progress=False, out_dir=None,
                         seed=seed, log_every=max(1, steps // 4))
    Trainer(model, config, batches, lambda m, b: m.loss(b["tokens"], b["labels"], b["lengths"]), None,
            device=device).fit()
    return model


def _report(points, sizes, args, device, config, model_cfg, finetune, settings, stages, started) -> None:
    """The points' mean and spread per method and size: JSON, a Markdown table and a plot under args.out."""
    summary = {}
    for method in METHODS:
        for n in sizes:
            errors = [p["error"] for p in points if p["method"] == method and p["examples"] == n]
            summary.setdefault(method, {})[n] = {"mean": statistics.mean(errors), "min": min(errors),
                                                  "max": max(errors), "std": statistics.pstdev(errors)}
    meta = {"date": datetime.date.today().isoformat(), "commit": timing.commit(), "device": torch.cuda.get_device_name()
            if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "from": args.run,
            "model": model_cfg, "pretrain": config["pretrain"], "finetune": finetune, "classify": settings,
            "lm_steps": args.lm_steps, "semi_steps": args.semi_steps, "scratch_steps": stages * args.steps_per_stage,
            "scratch_lr": args.scratch_lr, "seeds": args.seeds, "minutes": (time.perf_counter() - started) / 60}
    stem = os.path.join(args.out, f"ulmfit-curve-{device.type}-{meta['date']}-{meta['commit']}")
    atomic.write(stem + ".json", lambda f: json.dump({"meta": meta, "summary": summary, "points": points}, f,
                                                     indent=1), mode="w")
    lines = ["| labeled examples | " + " | ".join(METHODS) + " |", "| --- " * (len(METHODS) + 1) + "|"]
    for n in sizes:
        lines.append(f"| {n} | " + " | ".join(f"{100 * summary[m][n]['mean']:.1f}% "
                                              f"({100 * summary[m][n]['min']:.1f}–{100 * summary[m][n]['max']:.1f})"
                                              for m in METHODS) + " |")
    atomic.write(stem + ".md", lambda f: f.write("\n".join(lines) + "\n"), mode="w")
    fig, ax = timing.figure()
    for method in METHODS:
        means = [100 * summary[method][n]["mean"] for n in sizes]
        spread = [[m - 100 * summary[method][n]["min"] for m, n in zip(means, sizes)],
                  [100 * summary[method][n]["max"] - m for m, n in zip(means, sizes)]]
        ax.errorbar(sizes, means, yerr=spread, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("labeled training examples (TREC-6)")
    ax.set_ylabel("test error (%), mean and min-max over seeds")
    ax.set_title(f"ULMFiT against training from scratch ({meta['device']}, {len(args.seeds)} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="run", required=True, help="a finished ulmfit run folder on TREC")
    parser.add_argument("--sizes", nargs="+", default=["100", "300", "1000", "all"],
                        help="labeled training examples (numbers, or 'all')")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps-per-stage", type=int, default=40,
                        help="classifier steps per unfreezing stage; scratch trains stages x this many steps")
    parser.add_argument("--lm-steps", type=int, default=30, help="LM fine-tuning steps on the labeled text")
    parser.add_argument("--semi-steps", type=int, default=150, help="LM fine-tuning steps on all training text")
    parser.add_argument("--scratch-lr", type=float, default=2e-3)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    state, tokenizer, config = pretrained_lm(args.run)
    target, model_cfg = config["target"], config["model"]
    train = D.load(target["dataset"], target.get("train", "train"))
    test = D.load(target["dataset"], "test")
    num_classes = max(label for label, _ in train) + 1
    sizes = [len(train) if s == "all" else int(s) for s in args.sizes]
    if any(not 0 < n <= len(train) for n in sizes):
        raise ValueError(f"--sizes: each must lie in 1..{len(train)} or be 'all', got {args.sizes}")
    finetune = {**config["finetune"], "eval_every": 0, "progress": False}
    settings = {**config["classify"], "steps_per_stage": args.steps_per_stage}
    stages = 2 + LSTMLMConfig(1, **model_cfg).num_layers  # embedding, each LSTM layer, head
    max_len = int(settings.get("max_len", 128))
    test_ids = encode_labelled(tokenizer, test, max_len)

    def error(model) -> float:
        model.eval()
        with torch.no_grad():
            return classification_metrics(model, test_ids, tokenizer.pad_id, device)["error"]

    # the semi-supervised LM: once, on all of TREC's training text (no labels)
    semi = _lm(state, tokenizer, model_cfg, device)
    torch.manual_seed(0)
    ulmfit.finetune_lm(semi, tokenizer, "\n".join(t for _, t in train), None, {**finetune, "steps": args.semi_steps},
                       None, device, name="semi")
    semi_state = {k: v.detach().clone() for k, v in semi.state_dict().items()}
    points = []
    for seed in args.seeds:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        for n in sizes:
            labeled = [train[i] for i in order[:n]]
            lms = {"ulmfit-semi-supervised": lambda: _lm(semi_state, tokenizer, model_cfg, device)}
            if n == len(train):  # every example labeled: the two ULMFiT variants see the same text
                lms["ulmfit-supervised"] = lms["ulmfit-semi-supervised"]
            else:
                def supervised():
                    lm = _lm(state, tokenizer, model_cfg, device)
                    torch.manual_seed(seed)
                    ulmfit.finetune_lm(lm, tokenizer, "\n".join(t for _, t in labeled), None,
                                       {**finetune, "steps": args.lm_steps, "seed": seed}, None, device, name="sup")
                    return lm
                lms["ulmfit-supervised"] = supervised
            for method in METHODS:
                t0 = time.perf_counter()
                if method == "scratch":
                    model = _scratch(tokenizer, model_cfg, labeled, num_classes, settings,
                                     stages * args.steps_per_stage, args.scratch_lr, device, seed)
                else:
                    torch.manual_seed(seed)
                    model, _ = ulmfit.train_classifier(lms[method](), tokenizer, labeled, None,
                                                       {**settings, "seed": seed}, None, device, num_classes,
                                                       progress=False)
                points.append({"method": method, "examples": n, "seed": seed, "error": error(model),
                               "seconds": time.perf_counter() - t0})
                print(f"ulmfit-curve {method} n={n} seed={seed}: test error {points[-1]['error']:.4f} "
                      f"({points[-1]['seconds']:.0f} s)", flush=True)
    _report(points, sizes, args, device, config, model_cfg, finetune, settings, stages, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
