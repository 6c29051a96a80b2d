"""A task's ULMFiT recipe chosen on validation: named variants of a reproduction row's settings, each
fine-tuned from one general LM (a folder the general_lm row or the pretrain stage wrote) over several seeds,
scored by the classifier's validation error at the weights it keeps. The test split is never read.

    python experiments/ulmfit_recipe.py --row sst2_ulmfit --pretrained DIR/pretrain --seeds 0 1 \
        --variant "recipe=" --variant "rate 1e-2=classify.lr=1.0e-2"

A variant is NAME=OVERRIDES (';' between overrides, added to the row's CPU settings). Variants that share the
LM fine-tuning settings share its fine-tuned LM (per seed). Writes JSON (after every run) and a Markdown table
under benchmarks/results/. Seeds or variants may run in separate processes (--json each), merged after (--merge).
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


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, sets = text.partition("=")
    if not sep or not name.strip():
        raise SystemExit(f"--variant: expected NAME=OVERRIDES (';' between them), got {text!r}")
    return name.strip(), [s.strip() for s in sets.split(";") if s.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", default="sst2_ulmfit", choices=[r for r, v in reproduce.ROWS.items()
                                                                 if v[0] == "ulmfit" and r != "general_lm"])
    parser.add_argument("--pretrained", help="the general LM's folder (model.pt, tokenizer.json)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--variant", action="append", type=parse_variant)
    parser.add_argument("--out", default=reproduce.RESULTS)
    parser.add_argument("--json", default=None, help="write here instead of OUT/ulmfit-recipe-<row>-<device>-<date>-"
                                                     "<commit>.json")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="only merge these --json files (other seeds or other variants) into OUT's file")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if not args.pretrained or not args.variant:
        parser.error("--pretrained and at least one --variant are needed (or --merge)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config_name = reproduce.ROWS[args.row][1]
    base = reproduce.CPU[args.row] + [f"pretrained={args.pretrained}", "progress=false"]
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": timing.commit(), "device": torch.cuda.get_device_name() if device.type == "cuda"
            else f"CPU ({os.cpu_count()} cores)", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "row": args.row, "config": config_name, "overrides": base, "seeds": args.seeds,
            "metric": "validation error at the weights the classifier keeps (the test split is not read)"}
    path = args.json or os.path.join(args.out, f"ulmfit-recipe-{args.row}-{device.type}-{meta['date'][:10]}-"
                                               f"{meta['commit'][:7]}.json")
    tuned, rows = {}, []  # (finetune settings, seed) -> the fine-tuned LM's state
    for name, sets in args.variant:
        config = apply_overrides(load_config(os.path.join(reproduce.CONFIGS, config_name)), base + sets)
        train, valid = train_valid(config["target"])
        text = "\n".join(t for _, t in train)
        runs = []
        for seed in args.seeds:
            start = time.perf_counter()
            torch.manual_seed(seed)
            lm, tokenizer, bos = ulmfit._pretrained(config, text, device)
            key = (json.dumps(config["finetune"], sort_keys=True), seed)
            if key not in tuned:
                ulmfit.finetune_lm(lm, tokenizer, text, None, {**config["finetune"], "seed": seed, "progress": False},
                                   None, device, bos=bos)
                tuned[key] = {k: v.detach().clone() for k, v in lm.state_dict().items()}
            lm.load_state_dict(tuned[key])
            torch.manual_seed(seed)
            _, metrics = ulmfit.train_classifier(lm, tokenizer, train, valid, {**config["classify"], "seed": seed},
                                                 None, device, max(label for label, _ in train) + 1,
                                                 progress=False, bos=bos)
            runs.append({"seed": seed, "valid_error": metrics["eval_error"],
                         "minutes": (time.perf_counter() - start) / 60})
            print(f"ulmfit-recipe {name} seed {seed}: validation error {metrics['eval_error']:.4f}", flush=True)
        rows.append(summary({"variant": name, "overrides": sets, "runs": runs}))
        atomic.write(path, lambda f: json.dump({"meta": meta, "rows": rows}, f, indent=1), mode="w")
    return write(path, rows)


def summary(row: dict) -> dict:
    errors = [r["valid_error"] for r in row["runs"]]
    return {**row, "mean": statistics.mean(errors), "std": statistics.pstdev(errors)}


def write(path: str, rows: list[dict]) -> int:
    """The Markdown table beside the results file."""
    lines = ["| variant | its overrides | validation error, mean (std) | seeds |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {'; '.join(r['overrides']) or '-'} | {100 * r['mean']:.1f}% "
              f"({100 * r['std']:.1f}) | {len(r['runs'])} |" for r in rows]
    atomic.write(path[:-5] + ".md", lambda f: f.write("\n".join(lines) + "\n"), mode="w")
    print("\n".join(lines) + f"\nwrote {path}")
    return 0


def merge(parts: list[str], out: str) -> int:
    """Files of one row's variants (other seeds, or other variants) -> one results file: each variant's runs
    gathered, in the order the files first name them (meta.parts: each file's date, commit and seeds)."""
    loaded = [json.load(open(p)) for p in parts]
    same = ("row", "config", "overrides", "device", "torch")
    for part, data in zip(parts[1:], loaded[1:]):
        differ = [k for k in same if data["meta"].get(k) != loaded[0]["meta"].get(k)]
        if differ:
            raise SystemExit(f"--merge: {part} differs from {parts[0]} in {', '.join(differ)}")
    rows: dict = {}
    for data in loaded:
        for row in data["rows"]:
            kept = rows.setdefault(row["variant"], {**row, "runs": []})
            if kept["overrides"] != row["overrides"]:
                raise SystemExit(f"--merge: variant {row['variant']!r} has other overrides in another file")
            if {r["seed"] for r in kept["runs"]} & {r["seed"] for r in row["runs"]}:
                raise SystemExit(f"--merge: variant {row['variant']!r} has a seed in more than one file")
            kept["runs"] += row["runs"]
    latest = max(loaded, key=lambda d: d["meta"]["date"])["meta"]
    meta = {**latest, "seeds": sorted({s for d in loaded for s in d["meta"]["seeds"]}),
            "parts": [{"file": os.path.basename(p), **{k: d["meta"][k] for k in ("date", "commit", "seeds", "threads")}}
                      for p, d in zip(parts, loaded)]}
    path = os.path.join(out, f"ulmfit-recipe-{meta['row']}-{'cpu' if 'CPU' in meta['device'] else 'cuda'}-"
                             f"{meta['date'][:10]}-{meta['commit'][:7]}.json")
    rows = [summary(r) for r in rows.values()]
    atomic.write(path, lambda f: json.dump({"meta": meta, "rows": rows}, f, indent=1), mode="w")
    return write(path, rows)

if __name__ == "__main__":
    sys.exit(main())
