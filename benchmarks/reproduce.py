"""The reproduction table: each row of the field's results on real data trained from its config in configs/,
once on fastseq's layers and once on torch.nn's (benchmarks/torch_layers.py), the same steps, side by side;
quality on the test split, training time; JSON and a Markdown table under benchmarks/results/.

    python benchmarks/reproduce.py                       # every row at full scale (a GPU: about an hour)
    python benchmarks/reproduce.py --rows char_gpt mt_transformer --layers fastseq
    python benchmarks/reproduce.py --scale tiny          # a few steps of shrunken models: checks the runner
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_layers import torch_layers  # noqa: E402

import timing  # noqa: E402
from fastseq import data as D  # noqa: E402
from fastseq.models import NGramLM, Word2Vec, Word2VecConfig, Word2VecData  # noqa: E402
from fastseq.train import Trainer, ulmfit  # noqa: E402
from fastseq.train.tasks import apply_overrides, build_run, evaluate_run, load_config, save_run  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(os.path.dirname(HERE), "configs")

# name: (kind, config, test split, metric, target (comparison, value), published anchor)
ROWS = {
    "char_gpt": ("train", "char_transformer_shakespeare.yaml", "val", "loss", ("<=", 1.47),
                 "nanoGPT 1.4697 in about 3 min on an A100"),
    "char_lstm": ("train", "char_lstm_shakespeare.yaml", "val", "loss", ("<=", 1.50), "-"),
    "mt_transformer": ("train", "transformer_multi30k.yaml", "test_2016_flickr", "bleu", (">=", 36.0),
                       "36.5 (small Transformer, De-En, greedy); 41.0 (fairseq transformer_tiny, BPE, beam 5)"),
    "mt_attention": ("train", "seq2seq_attention_multi30k.yaml", "test_2016_flickr", "bleu", (">=", 30.0),
                     "28.3 (GRU + Bahdanau, De-En)"),
    "mt_seq2seq": ("train", "seq2seq_multi30k.yaml", "test_2016_flickr", "bleu", (">=", 18.0),
                   "13.8 (2-layer LSTM, De-En)"),
    "trec_scratch": ("train", "classify_trec.yaml", "test", "error", ("<=", 0.1067), "10.67% without pretraining"),
    "trec_ulmfit": ("ulmfit", "ulmfit_trec.yaml", "test", "error", ("<=", 0.06), "ULMFiT 3.6% (WikiText-103)"),
    "sst2_ulmfit": ("ulmfit", "ulmfit_sst2.yaml", "test", "accuracy", (">=", 0.85), "LSTM/CNN baselines 87-88%"),
    "sst2_scratch": ("train", "classify_sst2.yaml", "test", "accuracy", (">=", 0.80), "-"),
    "wikitext_mlm": ("train", "masked_lm_wikitext2.yaml", "test", "masked_accuracy", None, "-"),
    "wikitext_kn": ("ngram", None, "test", "perplexity", None, "-"),
    "wikitext_word2vec": ("word2vec", None, None, "neighbours", None, "-"),
}
TINY = {  # --scale tiny: settings that make every row run in seconds on a CPU
    "train": ["train.steps=3", "train.eval_every=0", "train.precision=fp32", "train.progress=false",
              "data.eval_sentences=4", "generate.max_new_tokens=6", "generate.beams=2"],
    "CausalLM": ["model.d_model=32", "model.num_heads=2", "model.num_layers=1", "data.block=32", "data.batch=4"],
    "LSTMLM": ["model.embed_dim=16", "model.hidden_size=32", "data.block=32", "data.batch=4"],
    "MaskedLM": ["model.d_model=32", "model.num_heads=2", "model.num_layers=1", "data.block=32", "data.batch=4"],
    "Transformer": ["model.d_model=32", "model.num_heads=2", "model.num_encoder_layers=1", "model.num_decoder_layers=1",
                    "model.dim_feedforward=64", "data.tokenizer.vocab_size=500", "data.max_tokens=512"],
    "Seq2Seq": ["model.embed_dim=16", "model.hidden_size=32", "data.tokenizer.vocab_size=500", "data.max_tokens=512"],
    "classify": ["model.body.embed_dim=16", "model.body.hidden_size=32", "data.max_tokens=512"],
    "ulmfit": ["model.embed_dim=16", "model.hidden_size=32", "pretrain.steps=3", "finetune.steps=3",
               "classify.steps_per_stage=2", "pretrain.precision=fp32", "finetune.precision=fp32", "progress=false",
               "general=[{dataset: multi30k, split: val, side: 0}]"],
}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _train_row(config_name, split, layers, scale, out, device, limit):
    config = load_config(os.path.join(CONFIGS, config_name))
    kind = "classify" if config["task"] == "classify" else config["model"].get("class")
    overrides = TINY["train"] + TINY.get(kind, []) if scale == "tiny" else []
    config = apply_overrides(config, overrides + ["train.resume=false"])
    config["out_dir"] = out
    run = build_run(config, device)
    model = torch_layers(run.model) if layers == "torch.nn" else run.model
    _sync()
    start = time.perf_counter()
    # no evaluation inside the timed loop: both layer kinds are evaluated after it, the same way
    Trainer(model.to(device), run.train, run.batches, run.loss, None, device=device).fit()
    _sync()
    seconds = time.perf_counter() - start
    if layers == "torch.nn":  # evaluate with fastseq's model class: same weights, the layers' state_dicts agree
        run.model.load_state_dict(model.state_dict())
    save_run(run, out)
    metrics = evaluate_run(out, split, device, limit)
    return {"train_seconds": seconds, "steps": run.train.steps, **metrics}


def _ulmfit_row(config_name, split, layers, scale, out, device, limit):
    config = load_config(os.path.join(CONFIGS, config_name))
    config = apply_overrides(config, TINY["ulmfit"] if scale == "tiny" else [])
    config["out_dir"] = out
    _sync()
    start = time.perf_counter()
    ulmfit.run(config, device, wrap=torch_layers if layers == "torch.nn" else None)
    _sync()
    seconds = time.perf_counter() - start
    return {"train_seconds": seconds, **evaluate_run(out, split, device, limit)}


def _ngram_row(scale):
    def sentences(text):
        return [line.split() for line in text.splitlines() if line.strip()]

    train, test = D.load("wikitext-2", "valid"), D.load("wikitext-2", "test")
    if scale == "tiny":
        train, test = train[:100_000], test[:20_000]
    results = {}
    for order in (1, 2, 3, 4):
        start = time.perf_counter()
        lm = NGramLM(order).fit(sentences(train))
        results[f"order{order}"] = {"perplexity": lm.perplexity(sentences(test)),
                                    "seconds": time.perf_counter() - start}
    trigram = results["order3"]  # the order reported, fixed in advance rather than chosen on test
    return {"perplexity": trigram["perplexity"], "train_seconds": trigram["seconds"], "orders": results}


def _word2vec_row(scale, device):
    text = D.load("wikitext-2", "valid")
    tok = D.WordTokenizer.fit([text], min_freq=5, lowercase=True)
    ids = torch.tensor(tok.encode(text))
    torch.manual_seed(0)
    model = Word2Vec(Word2VecConfig(tok.vocab_size, 100, "skipgram", 5, 5)).to(device)
    data, g = Word2VecData(ids, model.config), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 20 if scale == "tiny" else 3000
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(**{k: v.to(device) for k, v in data.batch(4096, g).items()}).backward()
        opt.step()
    seconds = time.perf_counter() - start
    words = {}
    for query in ("january", "he", "war", "city", "three"):
        near = model.most_similar(tok.index[query], 6)
        words[query] = [tok.words[i - len(D.SPECIALS)] for i, _ in near]
    return {"train_seconds": seconds, "steps": steps, "neighbours": words}


def _meets(value, target):
    if target is None or value is None:
        return None
    op, bound = target
    return value <= bound if op == "<=" else value >= bound


def markdown(rows: list[dict]) -> str:
    lines = ["| row | model / config | metric (test) | target | fastseq | torch.nn layers | train time fastseq | "
             "train time torch.nn | speed-up | anchor |", "| --- " * 10 + "|"]
    for r in rows:
        f, t = r["results"].get("fastseq", {}), r["results"].get("torch.nn", {})

        def fmt(x):
            if isinstance(x, float):
                return f"{x:.4g}"
            if isinstance(x, dict):  # word2vec neighbours: the first two queries, three words each
                return "; ".join(f"{q} → {', '.join(near[:3])}" for q, near in list(x.items())[:2])
            return "—" if x is None else str(x)

        def seconds(result):
            return f"{fmt(result['train_seconds'])} s" if "train_seconds" in result else "—"
        speed = (t["train_seconds"] / f["train_seconds"] if "train_seconds" in t and "train_seconds" in f else None)
        target = f"{r['target'][0]} {r['target'][1]}" if r["target"] else "reported"
        lines.append(f"| {r['row']} | {r['config'] or r['kind']} | {r['metric']} | {target} | "
                     f"{fmt(f.get(r['metric']))} | {fmt(t.get(r['metric']))} | {seconds(f)} | {seconds(t)} | "
                     f"{fmt(speed)}{'×' if speed else ''} | {r['anchor']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument("--layers", nargs="+", choices=("fastseq", "torch.nn"), default=["fastseq", "torch.nn"])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N test examples only")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    stamp = datetime.date.today().isoformat()
    runs = os.path.join(args.out, f"reproduce-runs-{args.scale}")
    rows = []
    for name in args.rows:
        kind, config, split, metric, target, anchor = ROWS[name]
        results = {}
        for layers in (args.layers if kind in ("train", "ulmfit") else ["fastseq"]):
            out = os.path.join(runs, f"{name}-{layers.replace('.', '')}")
            if kind == "train":
                results[layers] = _train_row(config, split, layers, args.scale, out, device, args.limit)
            elif kind == "ulmfit":
                results[layers] = _ulmfit_row(config, split, layers, args.scale, out, device, args.limit)
            elif kind == "ngram":
                results[layers] = _ngram_row(args.scale)
            else:
                results[layers] = _word2vec_row(args.scale, device)
            print(f"reproduce {name} [{layers}]: " + json.dumps(
                {k: v for k, v in results[layers].items() if not isinstance(v, dict)}), flush=True)
        value = results["fastseq"].get(metric)
        rows.append({"row": name, "kind": kind, "config": config, "split": split, "metric": metric, "target": target,
                     "anchor": anchor, "results": results,
                     "meets_target": _meets(value if isinstance(value, float) else None, target)})
    info = {"date": stamp, "commit": timing.commit(), "scale": args.scale, "device": torch.cuda.get_device_name()
            if device.type == "cuda" else "CPU", "torch": torch.__version__, "seeds": "fixed in each config (train.seed)"}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"reproduction-{device.type}-{args.scale}-{stamp}")
    with open(stem + ".json.tmp", "w") as f:
        json.dump({"meta": info, "rows": rows}, f, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    table = markdown(rows)
    with open(stem + ".md", "w") as f:
        f.write(f"Reproduction table ({info['device']}, {args.scale} scale, commit {info['commit']})\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
