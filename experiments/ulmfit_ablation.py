"""ULMFiT's recipe, each change measured on its own: TREC-6 validation error (the 10% of its training split
held out), over several seeds, for the whole recipe and for the recipe with one change undone.

Changes that shape the general LM (AWD-LSTM's dropouts, weight decay off for biases, norms and embeddings,
the <bos> token, "<unk>" kept whole) each pretrain an LM of their own; the others (the classifier's batch
norms, the embedding on top in LM fine-tuning, the falling rate ladder, the kept optimizer) fine-tune the
recipe's LM. Each LM's held-out loss (the general corpus' last 1%) is reported beside it.

    python experiments/ulmfit_ablation.py [--pretrain-steps 800] [--seeds 0 1 2] [--variants recipe ...]
    python experiments/ulmfit_ablation.py --merge a.json b.json   # variants run in separate processes (--json)

Writes JSON (every run, as it finishes) and a Markdown table under benchmarks/results/; LMs in --work.
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
from fastseq.bench import timing  # noqa: E402
from fastseq.train import ulmfit  # noqa: E402
from fastseq.train.tasks import apply_overrides, load_config, train_valid  # noqa: E402

import reproduce  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "benchmarks", "results")  # every results file, for docs/generate.py
# the undone change -> the overrides that undo it; LM changes pretrain an LM of their own
LM_VARIANTS = {
    "recipe": [],
    "element-wise dropout": ["model.variational=false"],
    "weight decay on all": ["pretrain.decay=all", "finetune.decay=all", "classify.decay=all"],
    "no <bos>": ["tokenizer.bos=false"],
    "<unk> split": ["tokenizer.unk_token=false"],
}
CLASSIFIER_VARIANTS = {
    "layer norms in the head": ["classify.norm=layer"],
    "embedding at the bottom (LM fine-tuning)": ["finetune.embedding=bottom"],
    "one rate for every stage": ["classify.ladder=[1]"],
    "a fresh optimizer each stage": ["classify.keep_optimizer=false"],
}

# the change each variant undoes, as the docs name it
CHANGES = {
    "element-wise dropout": "AWD-LSTM's dropouts (whole words from the embedding, one mask across time)",
    "weight decay on all": "no weight decay on biases, norms and embeddings",
    "no <bos>": "a `<bos>` token before every text",
    "<unk> split": "WikiText's `<unk>` kept one token",
    "layer norms in the head": "batch norms in the classifier head",
    "embedding at the bottom (LM fine-tuning)": "the tied embedding/decoder in LM fine-tuning's top rate group",
    "one rate for every stage": "the falling rate ladder across the unfreezing stages",
    "a fresh optimizer each stage": "one optimizer kept across the unfreezing stages",
}


def pretrain(config: dict, folder: str, device) -> dict:
    """The general LM of `config` into folder/pretrain (kept: a second call reuses it) -> its record."""
    record_path = os.path.join(folder, "record.json")
    if os.path.exists(record_path):
        with open(record_path) as f:
            return json.load(f)
    start = time.perf_counter()
    metrics = ulmfit.run({**config, "stages": ["pretrain"], "out_dir": folder}, device)
    record = {"held_out_loss": metrics.get("eval_loss"), "minutes": (time.perf_counter() - start) / 60,
              "steps": config["pretrain"]["steps"]}
    atomic.write(record_path, lambda f: json.dump(record, f), mode="w")
    return record


def classify(config: dict, lm_folder: str, seed: int, device) -> dict:
    """LM fine-tuning and the classifier from the LM in lm_folder, this seed -> validation metrics."""
    config = {**config, "pretrained": os.path.join(lm_folder, "pretrain")}
    train, valid = train_valid(config["target"])
    text = "\n".join(t for _, t in train)
    torch.manual_seed(seed)
    lm, tokenizer, bos = ulmfit._pretrained(config, text, device)
    start = time.perf_counter()
    ulmfit.finetune_lm(lm, tokenizer, text, None, {**config["finetune"], "seed": seed, "progress": False}, None,
                       device, bos=bos)
    _, metrics = ulmfit.train_classifier(lm, tokenizer, train, valid, {**config["classify"], "seed": seed}, None,
                                         device, max(label for label, _ in train) + 1, progress=False, bos=bos)
    return {"valid_error": metrics["eval_error"], "minutes": (time.perf_counter() - start) / 60}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(reproduce.CONFIGS, "ulmfit_trec.yaml"))
    parser.add_argument("--pretrain-steps", type=int, default=800)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(LM_VARIANTS) + list(CLASSIFIER_VARIANTS))
    parser.add_argument("--set", action="append", default=[], help="more overrides for every variant")
    parser.add_argument("--work", default=os.path.join(HERE, "runs", "ulmfit-ablation-lms"))
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--json", default=None, help="write here instead of OUT/ulmfit-ablation-<device>-<date>-"
                                                     "<commit>.json (runs split over processes, merged after)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="only merge these --json files (each variant once) into OUT's file")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = reproduce.CPU_ULMFIT + [f"pretrain.steps={args.pretrain_steps}", "progress=false"] + args.set
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": timing.commit(), "device": torch.cuda.get_device_name() if device.type == "cuda"
            else f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "config": os.path.basename(args.config), "overrides": base, "seeds": args.seeds,
            "metric": "TREC-6 validation error (10% of the training split held out)"}
    path = args.json or os.path.join(args.out, f"ulmfit-ablation-{device.type}-{meta['date'][:10]}-"
                                               f"{meta['commit'][:7]}.json")
    rows = []
    for variant in args.variants:
        if variant not in LM_VARIANTS and variant not in CLASSIFIER_VARIANTS:
            known = list(LM_VARIANTS) + list(CLASSIFIER_VARIANTS)
            raise SystemExit(f"--variants: unknown {variant!r} (known: {known})")
        sets = LM_VARIANTS.get(variant) or CLASSIFIER_VARIANTS.get(variant) or []
        lm_variant = variant if variant in LM_VARIANTS else "recipe"
        lm_sets = LM_VARIANTS[lm_variant]
        config = apply_overrides(load_config(args.config), base + sets)
        lm_config = apply_overrides(load_config(args.config), base + lm_sets)
        folder = os.path.join(args.work, f"{lm_variant.replace(' ', '-').strip('<>')}-{args.pretrain_steps}")
        lm = pretrain(lm_config, folder, device)
        runs = []
        for seed in args.seeds:
            runs.append({"seed": seed, **classify(config, folder, seed, device)})
            print(f"ulmfit-ablation {variant} seed {seed}: validation error {runs[-1]['valid_error']:.4f}", flush=True)
        errors = [r["valid_error"] for r in runs]
        rows.append({"variant": variant, "undone_by": sets, "lm": {"variant": lm_variant, **lm}, "runs": runs,
                     "mean": statistics.mean(errors), "std": statistics.pstdev(errors)})
        save(path, meta, rows)  # after every variant, so that a stopped run keeps the variants it finished
    return write(path, meta, rows)


def save(path: str, meta: dict, rows: list[dict]) -> list[dict]:
    """The results file, each row with the change it undoes -> the rows written."""
    rows = [{**r, "change": CHANGES[r["variant"]]} if r["variant"] in CHANGES else r for r in rows]
    atomic.write(path, lambda f: json.dump({"meta": meta, "rows": rows}, f, indent=1), mode="w")
    return rows


def write(path: str, meta: dict, rows: list[dict]) -> int:
    """The results file and its Markdown table beside it."""
    rows = save(path, meta, rows)
    lines = ["| recipe, with this undone | validation error, mean (std) | seeds | its LM's held-out loss |",
             "| --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {100 * r['mean']:.1f}% ({100 * r['std']:.1f}) | {len(r['runs'])} | "
                     f"{r['lm']['held_out_loss']:.3f} ({r['lm']['variant']}) |")
    atomic.write(path[:-5] + ".md", lambda f: f.write("\n".join(lines) + "\n"), mode="w")
    print("\n".join(lines))
    print(f"wrote {path}")
    return 0


def merge(parts: list[str], out: str) -> int:
    """Files of runs split over processes -> one results file (the variants in this script's order; each part's
    date and commit in its rows and in meta.parts). The parts must share the config, overrides and seeds."""
    loaded = []
    for part in parts:
        with open(part) as f:
            loaded.append(json.load(f))
    same = ("config", "overrides", "seeds", "device", "torch")
    for part, data in zip(parts[1:], loaded[1:]):
        differ = [k for k in same if data["meta"].get(k) != loaded[0]["meta"].get(k)]
        if differ:
            raise SystemExit(f"--merge: {part} differs from {parts[0]} in {', '.join(differ)}")
    rows, order = {}, list(LM_VARIANTS) + list(CLASSIFIER_VARIANTS)
    for part, data in zip(parts, loaded):
        for row in data["rows"]:
            if row["variant"] in rows:
                raise SystemExit(f"--merge: {row['variant']!r} is in more than one file ({part})")
            rows[row["variant"]] = {**row, "date": data["meta"]["date"], "commit": data["meta"]["commit"]}
    latest = max(loaded, key=lambda d: d["meta"]["date"])["meta"]
    meta = {**latest, "parts": [{"file": os.path.basename(p), "date": d["meta"]["date"],
                                 "commit": d["meta"]["commit"]} for p, d in zip(parts, loaded)]}
    device = "cuda" if "CPU" not in meta["device"] else "cpu"
    path = os.path.join(out, f"ulmfit-ablation-{device}-{meta['date'][:10]}-{meta['commit'][:7]}.json")
    return write(path, meta, sorted(rows.values(), key=lambda r: order.index(r["variant"])))


if __name__ == "__main__":
    sys.exit(main())
