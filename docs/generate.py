"""The generated parts of the docs: tables from the results in benchmarks/results/*.json and from the op
families' declarations. Each lies between `<!-- generated: NAME -->` and `<!-- end: NAME -->` in a page whose
prose is written by hand; this rewrites every such block.

    python docs/generate.py            # rewrite the blocks
    python docs/generate.py --check    # exit 1 naming the blocks that differ (tests/test_docs.py runs it)

A family of results files is the name without its date, commit and "-dirty" (parity-cpu-cpu-converted,
generate-hf-cpu-b8, ...); a block shows the family's latest file (by the date inside it), naming the file,
its date, commit and device.
"""
from __future__ import annotations

import argparse
import glob
import html
import json
import os
import re
import sys
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PAGES = ("README.md", "docs/benchmarks.md", "docs/reproduction.md", "docs/backends.md")
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)
STAMP = re.compile(r"-(\d{4}-\d{2}-\d{2})(?:-([0-9a-f]{7,40}))?(?:-dirty)?")


# ------------------------------------------------------------------------------------------ files


def family_of(path: str) -> str:
    """The file's family: its name relative to results/, without the date, commit and "-dirty"."""
    name = os.path.relpath(path, RESULTS)[:-len(".json")]
    return STAMP.sub("", name)


def latest(family: str) -> tuple[str, dict]:
    """The family's latest file (by the date inside it, else in its name) and its content."""
    found = []
    for path in glob.glob(os.path.join(RESULTS, "**", "*.json"), recursive=True):
        if family_of(path) == family:
            with open(path) as f:
                data = json.load(f)
            meta = data.get("meta", {}) if isinstance(data, dict) else {}
            stamp = STAMP.search(os.path.basename(path))
            found.append((str(meta.get("date") or (stamp.group(1) if stamp else "")), path, data))
    if not found:
        raise FileNotFoundError(f"no results file of the family {family!r} in benchmarks/results")
    _, path, data = max(found)
    return path, data


def source(path: str, data: dict) -> str:
    meta = data.get("meta", {})
    parts = [f"`{os.path.relpath(path, ROOT)}`", str(meta.get("date", ""))[:10], str(meta.get("commit", ""))[:7],
             str(meta.get("device", "")), f"torch {meta['torch']}" if meta.get("torch") else "",
             str(meta.get("dtype", ""))]
    return "Source: " + ", ".join(p for p in parts if p) + "."


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return "—" if x is None else str(x)


def _sizes(sizes: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items())


def _x(ratio) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


# ------------------------------------------------------------------------------------------ blocks


def sweep(family: str, op: str) -> Callable[[], str]:
    """fastseq's rows of an op's sweep: time, the baselines', the ratio to the fastest baseline."""
    def render() -> str:
        path, data = latest(family)
        rows = data["results"][op] if isinstance(data["results"], dict) else data["results"]
        out = []
        for r in rows:
            if "median_ms" not in r:
                continue
            if "baselines" in r:
                bases = {k: v["median_ms"] for k, v in r["baselines"].items() if "median_ms" in v}
            else:
                bases = {r["baseline"]: r["baseline_median_ms"]}
            best = min(bases, key=bases.get) if bases else None
            ratio = r.get("speedup_vs_fastest_baseline", r.get("speedup")) if best else None
            if ratio is None and best:
                ratio = bases[best] / r["median_ms"]
            out.append([r.get("case", ""), r.get("model") or r.get("mode", ""), r.get("dtype", ""), _sizes(r["sizes"]),
                        r["backend"], f"{r['median_ms']:.3g} ms", f"{best} {bases[best]:.3g} ms" if best else "—",
                        _x(ratio)])
        header = ["case", "model or mode", "dtype", "sizes", "fastseq", "time", "fastest baseline", "ratio"]
        return source(path, data) + "\n\n" + table(header, out)
    return render


def parity(family: str) -> Callable[[], str]:
    def render() -> str:
        path, data = latest(family)
        out = [[r["module"], r["mode"], _sizes(r["sizes"]), f"{r['torch_ms']:.3g} ms", f"{r['fastseq_ms']:.3g} ms",
                _x(r["ratio"]), _x(r["paired_ratio"]["median"]) if "paired_ratio" in r else "—",
                _x(r.get("call_ratio")), ", ".join(r["served"]) or "torch ops"] for r in data["rows"]]
        ratios = sorted(r["ratio"] for r in data["rows"])
        summary = (f"{len(ratios)} rows: median {_x(ratios[len(ratios) // 2])}, lowest {_x(ratios[0])}, "
                   f"{sum(x >= 0.95 for x in ratios)} at ≥ 0.95×.")
        header = ["module", "mode", "sizes", "torch.nn", "fastseq", "ratio", "ratio within rounds", "per-call ratio",
                  "served by"]
        return source(path, data) + " " + summary + "\n\n" + table(header, out)
    return render


def parity_side_by_side() -> str:
    """The parity runs of one session side by side (benchmarks/results/side-by-side/, oldest first): per module
    and mode, the median of the rows' ratios to torch.nn in each run, and each run's commit."""
    runs = []
    for path in glob.glob(os.path.join(RESULTS, "side-by-side", "parity-*.json")):
        with open(path) as f:
            runs.append((json.load(f), path))
    if not runs:
        raise FileNotFoundError("no parity runs in benchmarks/results/side-by-side")
    runs.sort(key=lambda run: run[0]["meta"]["date"])
    keys = list(dict.fromkeys((r["module"], r["mode"]) for data, _ in runs for r in data["rows"]))
    out = []
    for module, mode in keys:
        cells = []
        for data, _ in runs:
            ratios = sorted(r["ratio"] for r in data["rows"] if (r["module"], r["mode"]) == (module, mode))
            cells.append(_x(ratios[len(ratios) // 2]) + f" ({len(ratios)})" if ratios else "—")
        out.append([module, mode, *cells])
    header = ["module", "mode", *(f"{d['meta']['commit'][:7]} ({d['meta']['date'][11:16]} UTC)" for d, _ in runs)]
    files = ", ".join(f"`{os.path.relpath(p, ROOT)}`" for _, p in runs)
    return (f"{runs[0][0]['meta']['date'][:10]}, {runs[0][0]['meta']['device']}, torch {runs[0][0]['meta']['torch']}; "
            f"median ratio to torch.nn (rows): {files}.\n\n" + table(header, out))


def busy() -> str:
    path, data = latest("lstm-busy-cpu")
    out = [[r["mode"], _sizes(r["sizes"]), r["cache"], r["timed"], f"{r['serving']}, {r['threads']}",
            f"{r['mean_ms']:.3g} ms", f"{r['baseline_mean_ms']:.3g} ms", _x(r["speedup_mean"]),
            f"{r['call_median_ms']:.3g} ms", f"{r['baseline_median_ms']:.3g} ms", _x(r["speedup"]),
            _x(r["paired_speedup"]["median"])] for r in data["results"]]
    header = ["mode", "sizes", "choice cache", "timed", "served by, threads", "fastseq.nn.LSTM mean",
              "torch.nn.LSTM mean", "ratio of means", "fastseq.nn.LSTM median", "torch.nn.LSTM median",
              "ratio of medians", "ratio within rounds"]
    return (source(path, data) + f" Load: {data['meta'].get('load', '')}. Timing: {data['meta'].get('timing', '')}."
            "\n\n" + table(header, out))


def generate_hf() -> str:
    parts = []
    for batch in ("b1", "b8", "b64"):
        path, data = latest(f"generate-hf-cpu-{batch}")
        out = [[r["batch"], r["beams"], r["prompt"], r["new"], f"{r['tokens_per_s']['fastseq']:.3g}",
                f"{r['tokens_per_s']['hf-generate']:.3g}", _x(r["ratio"])] for r in data["rows"]]
        parts.append(source(path, data) + "\n\n" + table(["batch", "beams", "prompt", "new tokens",
                                                           "fastseq tokens/s", "HF generate() tokens/s", "ratio"],
                                                          out))
    return "\n\n".join(parts)


def hf_attention() -> str:
    path, data = latest("hf-attention-cpu")
    out = []
    for r in data["rows"]:
        shape = (f"B{r['batch']} T{r['tokens']}" if r["kind"] == "forward"
                 else f"B{r['batch']}, prompt {r['prompt']}, {r['new']} new")
        agree = (f"max diff {r['max_abs_difference']:.1g}" if r["kind"] == "forward"
                 else "same tokens" if r["same_tokens"] else "tokens differ")
        out.append([r["kind"], shape, f"{r['timed']['sdpa']['median_ms']:.3g} ms",
                    f"{r['timed']['fastseq']['median_ms']:.3g} ms", _x(r["ratio"]), agree])
    return (source(path, data) + f" {data['meta']['size']}, random weights.\n\n" +
            table(["call", "shape", "attn_implementation='sdpa'", "'fastseq'", "ratio", "agreement"], out))


def gpu_quick() -> str:
    path, data = latest("h200/gpu-quick")
    out = []
    for op, rows in data["results"].items():
        for r in rows:
            if "median_ms" not in r:
                continue
            if "baselines" in r:
                bases = {k: v["median_ms"] for k, v in r["baselines"].items() if "median_ms" in v}
            else:
                bases = {r.get("baseline", "baseline"): r.get("baseline_median_ms")}
            best = min(bases, key=lambda k: bases[k] or float("inf"))
            out.append([op, r.get("mode", ""), _sizes(r["sizes"]), r["backend"], f"{r['median_ms']:.3g} ms",
                        f"{best} {bases[best]:.3g} ms" if bases[best] else "—",
                        _x(bases[best] / r["median_ms"] if bases[best] else None)])
    note = (" Per-call times with host time included (one call between two events): small calls show the "
            "host's floor, not the kernel's time.")
    return source(path, data) + note + "\n\n" + table(["op", "mode", "sizes", "fastseq", "time",
                                                       "fastest baseline", "ratio"], out)


def reproduction() -> str:
    with open(os.path.join(RESULTS, "reproduction-cpu-cpu.md")) as f:
        lines = f.read().strip().splitlines()
    return "\n".join(lines)


def ulmfit_curve() -> str:
    path, data = latest("ulmfit-curve-cpu")
    with open(path[:-5] + ".md") as f:
        return source(path, data) + "\n\n" + f.read().strip()


def ulmfit_ablation() -> str:
    path, data = latest("ulmfit-ablation-cpu")
    out = [[html.escape(r["variant"]), f"{100 * r['mean']:.1f}% ({100 * r['std']:.1f})", len(r["runs"]),
            f"{r['lm']['held_out_loss']:.3f}"] for r in data["rows"]]
    return source(path, data) + "\n\n" + table(["the recipe, with this undone", "TREC-6 validation error, mean (std)",
                                                 "seeds", "its LM's held-out loss"], out)


def ulmfit_recipe_sst2() -> str:
    path, data = latest("ulmfit-recipe-sst2_ulmfit-cpu")
    out = [[html.escape(r["variant"]), html.escape("; ".join(r["overrides"])) or "—",
            f"{100 * r['mean']:.1f}% ({100 * r['std']:.1f})", " / ".join(f"{100 * run['valid_error']:.1f}%"
                                                                        for run in r["runs"])]
           for r in data["rows"]]
    return source(path, data) + "\n\n" + table(["variant", "its overrides (on the row's settings before the choice)",
                                                 "SST-2 dev error, mean (std)", "per seed"], out)


def sst2_ulmfit_seeds() -> str:
    path, data = latest("sst2-ulmfit-seeds-cpu")
    out = [[r["seed"], f"{100 * r['dev_accuracy']:.1f}%", f"{100 * r['accuracy']:.1f}%", f"{r['minutes']:.1f}"]
           for r in data["rows"]]
    return source(path, data) + "\n\n" + table(["seed", "dev accuracy (kept weights)", "test accuracy",
                                                 "minutes (one thread)"], out)


def ulmfit_ablation_summary() -> str:
    """A line per change of the recipe: what undoing it did to TREC-6 validation error against the recipe's own
    in the same file, with two standard errors of the difference (the seeds' sample spread)."""
    path, data = latest("ulmfit-ablation-cpu")
    rows = {r["variant"]: r for r in data["rows"]}
    recipe = rows["recipe"]

    def spread(r):  # the sample variance of the mean (the files hold the population std)
        n = len(r["runs"])
        return r["std"] ** 2 / (n - 1) if n > 1 else float("nan")
    out = []
    for variant, r in rows.items():
        if variant == "recipe":
            continue
        effect, two_se = 100 * (r["mean"] - recipe["mean"]), 200 * (spread(r) + spread(recipe)) ** 0.5
        verdict = "helps" if effect > two_se else "hurts" if effect < -two_se else "within the noise"
        out.append([r.get("change", variant), f"{100 * r['mean']:.1f}%", f"{effect:+.1f} ± {two_se:.1f}", verdict])
    return (f"TREC-6 validation error of the whole recipe at CPU scale: {100 * recipe['mean']:.1f}% (mean of "
            f"{len(recipe['runs'])} seeds). Each change undone on its own:\n\n"
            + table(["change", "error without it", "what it is worth (points, ± 2 s.e.)", "verdict"], out)
            + "\n\n" + source(path, data))


def backends_table() -> str:
    from fastseq import backends

    return table(["backend", "code", "serves"], [[f"`{k.name}`", k.code, k.serves] for k in backends.KINDS])


def families_table() -> str:
    from fastseq import ops  # noqa: F401  (registers the families)
    from fastseq.backends import DEFAULT_ORDER
    from fastseq.ops.registry import declared

    out = []
    for name, f in sorted(declared().items()):
        order = "; ".join(f"{d}: {', '.join(o)}" for d, o in {**DEFAULT_ORDER, **f.order}.items())
        trains = "; ".join(f"{d}: {', '.join(b)}" for d, b in f.autograd.items()) or "—"
        features = "; ".join(f"{k}: {', '.join(v)}" for k, v in f.features.items()) or "—"
        out.append([f"`{name}`", ", ".join(f"`{x}`" for x in f.functions), ", ".join(f"`{x}`" for x in f.direct) or "—",
                    ", ".join(f.backends), order, trains, features, "; ".join(f"{k}: {v}" for k, v in f.limits.items())
                    or "—"])
    return table(["family", "functions", "direct functions", "backends", "order when nothing is measured",
                  "trained through torch's autograd", "features (backends serving them)", "limits"], out)


def _span(ratios: list[float]) -> str:
    ratios = sorted(ratios)
    return f"{_x(ratios[len(ratios) // 2])} ({_x(ratios[0])}–{_x(ratios[-1])})"


def headline_cpu() -> str:
    """A line per comparison: the median ratio to the baseline and its range, with each file's date and commit."""
    out = []
    path, data = latest("parity-cpu-cpu")
    stamp = f"{data['meta']['date'][:10]}, {data['meta']['commit'][:7]}"
    for module in dict.fromkeys(r["module"] for r in data["rows"]):
        for mode in ("inference", "training"):
            ratios = [r["ratio"] for r in data["rows"] if r["module"] == module and r["mode"] == mode]
            if ratios:
                out.append([f"fastseq.nn.{module}, {mode}", f"torch.nn.{module}", _span(ratios), len(ratios),
                            stamp])
    path, data = latest("parity-cpu-cpu-converted")
    for mode in ("inference", "training"):
        ratios = [r["ratio"] for r in data["rows"] if r["mode"] == mode]
        out.append([f"a torch.nn model after fastseq.nn.convert, {mode}", "the same model unconverted", _span(ratios),
                    len(ratios), f"{data['meta']['date'][:10]}, {data['meta']['commit'][:7]}"])
    for batch in ("b1", "b8", "b64"):
        path, data = latest(f"generate-hf-cpu-{batch}")
        out.append([f"GPT-2 small generation, batch {batch[1:]}", "Hugging Face generate()",
                    _span([r["ratio"] for r in data["rows"]]), len(data["rows"]),
                    f"{data['meta']['date'][:10]}, {data['meta']['commit'][:7]}"])
    return ("CPU: 2 cores, torch 2.13 (CPU build), fp32; time of the baseline / time of fastseq, taking turns in "
            "one run.\n\n" + table(["fastseq", "baseline", "ratio, median (range)", "cases", "measured"], out))


def headline_gpu() -> str:
    path, data = latest("h200/gpu-quick")
    results, out = data["results"], []
    stamp = f"{data['meta']['date'][:10]}, {data['meta']['commit'][:7]}"

    def best(r):
        bases = {k: v["median_ms"] for k, v in r.get("baselines", {}).items() if v.get("median_ms")}
        name = min(bases, key=bases.get)
        return name, bases[name] / r["median_ms"]
    for mode in ("inference", "training"):
        rows = [r for r in results["lstm"] if r["mode"] == mode and r["backend"].startswith("default")]
        out.append([f"LSTM layer, {mode} (the default backend)", "torch.nn.LSTM (cuDNN)",
                    _span([r["speedup"] for r in rows]), len(rows), stamp])
    for case, mode, who in (("train", "forward", "torch"), ("train", "forward+backward", "triton"),
                            ("decode", "forward", "triton")):
        rows = [r for r in results["attention"] if r["case"] == case and r["mode"] == mode and r["backend"] == who]
        out.append([f"attention {case} {mode} (`{who}`)", "the fastest SDPA backend",
                    _span([best(r)[1] for r in rows]), len(rows), stamp])
    rows = [r for r in results["additive_attention"] if r["backend"] == "cuda"]
    out.append(["additive attention forward+backward (`cuda`, before the two-pass rewrite)", "the naive PyTorch form",
                _span([best(r)[1] for r in rows]), len(rows), stamp])
    return (f"GPU: {data['meta']['device']}, torch {data['meta']['torch']}, bf16; per-call times with host time "
            "included (the GPU window, which times the device alone beside them, has not run yet).\n\n" +
            table(["fastseq", "baseline", "ratio, median (range)", "cases", "measured"], out))


BLOCKS: dict[str, Callable[[], str]] = {
    "headline-cpu": headline_cpu,
    "headline-gpu": headline_gpu,
    "parity-cpu": parity("parity-cpu-cpu"),
    "parity-converted-cpu": parity("parity-cpu-cpu-converted"),
    "parity-side-by-side-cpu": parity_side_by_side,
    "lstm-cpu": sweep("lstm-cpu-cpu-cpu-loop-after", "lstm"),
    "attention-cpu": sweep("attention-cpu-cpu", "attention"),
    "additive-attention-cpu": sweep("additive-attention-cpu-cpu", "additive_attention"),
    "models-cpu": sweep("models-cpu-cpu", "models"),
    "busy-lstm-cpu": busy,
    "generate-hf-cpu": generate_hf,
    "hf-attention-cpu": hf_attention,
    "gpu-quick-h200": gpu_quick,
    "reproduction-cpu": reproduction,
    "ulmfit-curve-cpu": ulmfit_curve,
    "ulmfit-ablation-cpu": ulmfit_ablation,
    "ulmfit-ablation-summary": ulmfit_ablation_summary,
    "ulmfit-recipe-sst2-cpu": ulmfit_recipe_sst2,
    "sst2-ulmfit-seeds-cpu": sst2_ulmfit_seeds,
    "backends": backends_table,
    "families": families_table,
}


def rewrite(check: bool) -> list[str]:
    """Rewrite every generated block of PAGES (or, with check, only compare) -> the blocks that differed."""
    stale = []
    for page in PAGES:
        path = os.path.join(ROOT, page)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            text = f.read()

        def fill(match: re.Match) -> str:
            name = match.group("name")
            if name not in BLOCKS:
                raise KeyError(f"{page}: no generator for the block {name!r} (known: {', '.join(BLOCKS)})")
            try:
                body = BLOCKS[name]().strip() + "\n"
            except FileNotFoundError as e:  # a table whose run has not been made yet says so
                body = f"No results yet: {e}.\n"
            if body != match.group("body"):
                stale.append(f"{page}: {name}")
            return match.group(1) + body + match.group(4)
        new = BLOCK.sub(fill, text)
        if new != text and not check:
            with open(path, "w") as f:
                f.write(new)
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which blocks are out of date")
    args = parser.parse_args(argv)
    stale = rewrite(args.check)
    if args.check and stale:
        print("out of date (python docs/generate.py rewrites them):\n  " + "\n  ".join(stale))
        return 1
    print("\n".join(f"rewrote {s}" for s in stale) if stale else "every generated block is up to date")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
