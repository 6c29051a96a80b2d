"""ULMFiT's few-label claim as a curve (Howard & Ruder 2018, Fig. 3: "with only 100 labeled examples, it
matches the performance of training from scratch on 100x more data"), on TREC-6: test error against the
number of labeled training examples, for

- scratch: the same classifier (ULMFiT's LSTM body and head) from random weights, every layer trained, for
  as many steps as TREC-6's validation questions say (the checkpoint with the lowest validation error of
  every --scratch-eval-every steps up to --scratch-steps, stopping after --scratch-patience validations
  without a lower one);
- ulmfit-supervised: the general LM fine-tuned on the labeled examples' text only, then the classifier with
  gradual unfreezing (the recipe of the config), ending with the weights of its lowest validation error
  (every --ulmfit-eval-every steps and each stage's end), as scratch;
- ulmfit-semi-supervised: the general LM fine-tuned on all of TREC-6's training text (labels unused), then
  the classifier, the same way;

over several seeds (the labeled subset, the classifier's initialisation and batches change with the seed),
mean and spread. The labeled subsets come from the training questions outside the validation split. The
general LM is pretrained once, e.g. by the reproduction table's general_lm row:

    python experiments/reproduce.py --scale cpu --rows general_lm
    python experiments/ulmfit_curve.py --from benchmarks/results/reproduce-runs-cpu/general_lm-fastseq/pretrain

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
from fastseq.models import LSTMLM, SequenceClassifier  # noqa: E402
from fastseq.train import TrainConfig, Trainer, ulmfit  # noqa: E402
from fastseq.train.tasks import (  # noqa: E402
    apply_overrides,
    classification_metrics,
    encode_labelled,
    epoch_batches,
    load_config,
    train_valid,
)

import reproduce  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "benchmarks", "results")  # every results file, for docs/generate.py
METHODS = ("scratch", "ulmfit-supervised", "ulmfit-semi-supervised")


class Curve:
    """The pieces every point shares: the config, the LM extended to TREC-6's words, its tokenizer, the
    splits (encoded), and the semi-supervised LM (fine-tuned once)."""

    def __init__(self, config: dict, lm_folder: str, device: torch.device, semi_steps: int):
        self.config, self.device = {**config, "pretrained": lm_folder}, device
        self.train, self.valid_records = train_valid(config["target"])
        self.text = "\n".join(t for _, t in self.train)
        self.general, self.tokenizer, self.bos = ulmfit._pretrained(self.config, self.text, device)
        self.num_classes = max(label for label, _ in self.train) + 1
        self.max_len = int(config["classify"].get("max_len", 128))
        self.valid = self.encode(self.valid_records)
        self.test = self.encode(D.load(config["target"]["dataset"], "test"))
        self.semi = self.finetuned(self.text, semi_steps, 0)

    def encode(self, records):
        return encode_labelled(self.tokenizer, records, self.max_len, self.bos)

    def lm(self, state=None) -> LSTMLM:
        lm = LSTMLM(self.general.config).to(self.device)
        lm.load_state_dict(state or self.general.state_dict())
        return lm

    def finetuned(self, text: str, steps: int, seed: int) -> dict:
        torch.manual_seed(seed)
        lm = self.lm()
        ulmfit.finetune_lm(lm, self.tokenizer, text, None, {**self.config["finetune"], "steps": steps, "seed": seed,
                                                            "eval_every": 0, "progress": False}, None, self.device,
                           bos=self.bos)
        return {k: v.detach().clone() for k, v in lm.state_dict().items()}

    def error(self, model, examples) -> float:
        model.eval()
        with torch.no_grad():
            return classification_metrics(model, examples, self.tokenizer.pad_id, self.device)["error"]

    def ulmfit(self, lm_state: dict, labeled, seed: int, every: int) -> float:
        """-> test error at the weights of lowest validation error (every `every` steps and each stage's end)."""
        torch.manual_seed(seed)
        model, _ = ulmfit.train_classifier(self.lm(lm_state), self.tokenizer, labeled, self.valid_records,
                                           {**self.config["classify"], "seed": seed, "eval_every": every,
                                            "keep_best": True}, None, self.device, self.num_classes,
                                           progress=False, bos=self.bos)
        return self.error(model, self.test)

    def scratch(self, labeled, seed: int, steps: int, every: int, lr: float, patience: int) -> tuple[float, int]:
        """-> (test error at the checkpoint of lowest validation error, its step); training stops once
        `patience` evaluations in a row found no lower validation error."""
        torch.manual_seed(seed)
        body = LSTMLM(self.general.config)
        c = self.config["classify"]
        model = SequenceClassifier.from_language_model(body, self.num_classes, hidden_dim=int(c.get("hidden_dim", 50)),
                                                       dropout=float(c.get("dropout", 0.1)),
                                                       norm=c.get("norm", "batch")).to(self.device)
        ids = self.encode(labeled)
        batches = epoch_batches([len(t) for _, t in ids], int(c.get("max_tokens", 2048)), seed,
                                lambda idx: D.collate_labelled([ids[i] for i in idx], self.tokenizer.pad_id))
        seen = []  # (validation error, step, test error) at every evaluation

        def evaluate(m):
            seen.append((self.error(m, self.valid), len(seen) * every + every, self.error(m, self.test)))
            return {"valid_error": seen[-1][0]}
        config = TrainConfig(steps=steps, lr=lr, schedule="cosine", warmup=steps // 10, progress=False, out_dir=None,
                             seed=seed, eval_every=every, log_every=every)

        class Patience:
            def on_eval(self, trainer, metrics):
                trainer.stop = len(seen) - 1 - seen.index(min(seen)) >= patience

        Trainer(model, config, batches, lambda m, b: m.loss(b["tokens"], b["labels"], b["lengths"]), evaluate,
                device=self.device, callbacks=[Patience()]).fit()
        best = min(seen)
        return best[2], best[1]


def _points(curve: Curve, args, sizes: list[int]) -> list[dict]:
    points = []
    for seed in args.seeds:
        order = torch.randperm(len(curve.train), generator=torch.Generator().manual_seed(seed)).tolist()
        for n in sizes:
            labeled = [curve.train[i] for i in order[:n]]
            for method in METHODS:
                t0, extra = time.perf_counter(), {}
                if method == "scratch":
                    error, extra["steps"] = curve.scratch(labeled, seed, args.scratch_steps, args.scratch_eval_every,
                                                          args.scratch_lr, args.scratch_patience)
                elif method == "ulmfit-semi-supervised" or n == len(curve.train):  # all text: the two are one
                    error = curve.ulmfit(curve.semi, labeled, seed, args.ulmfit_eval_every)
                else:
                    error = curve.ulmfit(curve.finetuned("\n".join(t for _, t in labeled), args.lm_steps, seed),
                                         labeled, seed, args.ulmfit_eval_every)
                points.append({"method": method, "examples": n, "seed": seed, "error": error,
                               "seconds": time.perf_counter() - t0, **extra})
                print(f"ulmfit-curve {method} n={n} seed={seed}: test error {error:.4f} "
                      f"({points[-1]['seconds']:.0f} s)", flush=True)
    return points


def _report(points, sizes, args, device, config, started) -> None:
    """The points' mean and spread per method and size: JSON, a Markdown table and a plot under args.out."""
    summary = {}
    for method in METHODS:
        for n in sizes:
            errors = [p["error"] for p in points if p["method"] == method and p["examples"] == n]
            summary.setdefault(method, {})[n] = {"mean": statistics.mean(errors), "min": min(errors),
                                                  "max": max(errors), "std": statistics.pstdev(errors)}
    meta = {"date": datetime.date.today().isoformat(), "commit": timing.commit(), "device": torch.cuda.get_device_name()
            if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "from": args.lm,
            "finetune": config["finetune"], "classify": config["classify"], "lm_steps": args.lm_steps,
            "semi_steps": args.semi_steps, "scratch_steps": args.scratch_steps,
            "scratch_eval_every": args.scratch_eval_every, "scratch_lr": args.scratch_lr,
            "scratch_patience": args.scratch_patience,
            "ulmfit_eval_every": args.ulmfit_eval_every, "seeds": args.seeds,
            "minutes": (time.perf_counter() - started) / 60}
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
    parser.add_argument("--from", dest="lm", required=True, help="the general LM's folder (model.pt, tokenizer.json)")
    parser.add_argument("--config", default=os.path.join(reproduce.CONFIGS, "ulmfit_trec.yaml"))
    parser.add_argument("--set", action="append", default=None,
                        help="overrides of the config (default: the reproduction table's CPU scale)")
    parser.add_argument("--sizes", nargs="+", default=["100", "300", "1000", "all"],
                        help="labeled training examples (numbers, or 'all')")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lm-steps", type=int, default=30, help="LM fine-tuning steps on the labeled text")
    parser.add_argument("--semi-steps", type=int, default=200, help="LM fine-tuning steps on all training text")
    parser.add_argument("--scratch-steps", type=int, default=1200, help="scratch's most steps")
    parser.add_argument("--scratch-eval-every", type=int, default=100, help="scratch's validation interval")
    parser.add_argument("--scratch-lr", type=float, default=2e-3)
    parser.add_argument("--scratch-patience", type=int, default=4,
                        help="scratch stops after this many validations in a row without a lower error")
    parser.add_argument("--ulmfit-eval-every", type=int, default=50,
                        help="ULMFiT's validation interval within each unfreezing stage (and each stage's end)")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    config = apply_overrides(load_config(args.config), reproduce.CPU["trec_ulmfit"] if args.set is None else args.set)
    curve = Curve(config, args.lm, device, args.semi_steps)
    sizes = [len(curve.train) if s == "all" else int(s) for s in args.sizes]
    if any(not 0 < n <= len(curve.train) for n in sizes):
        raise ValueError(f"--sizes: each must lie in 1..{len(curve.train)} or be 'all', got {args.sizes}")
    points = _points(curve, args, sizes)
    _report(points, sizes, args, device, config, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
