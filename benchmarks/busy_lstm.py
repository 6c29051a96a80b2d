"""fastseq.nn.LSTM against torch.nn.LSTM on a CPU with another process spinning on one core.

For each shape, three passes, each from a fresh choice cache:
- "made quiet": the choices made on the quiet machine first (what a cache written earlier holds), then the
  spinner started, a few seconds of calls (the chooser's probes on every call once the first is due: a
  stalled call brings it forward), and both modules timed side by side (timing.measure_together);
- "empty": the choices made under load, then the same;
- "made busy": the choices made under load, then the spinner stopped, the probes made due at once (the
  probes' clock compressed: in a user's loop they come every few seconds), and both timed on the quiet
  machine.
Rows: both means and their ratio (a loop's total time: a busy core stalls some calls and not others, which
a median leaves out), both medians and quartiles, the ratio of medians, the ratio within each round (median
and quartiles: the two saw the same moment of the load), the backend and thread count serving at the end
(ops/lstm/threads.py).

    python benchmarks/busy_lstm.py [--out benchmarks/results] [--quick]
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastseq  # noqa: E402
from fastseq.bench import (
    sweep,  # noqa: E402
    timing,  # noqa: E402
)
from fastseq.ops import registry, tuning  # noqa: E402

SHAPES = [  # mode, batch, hidden, seq (one layer, input = hidden)
    ("inference", 1, 128, 64), ("inference", 8, 128, 64), ("inference", 8, 256, 64), ("inference", 64, 256, 64),
    ("inference", 8, 512, 64), ("training", 8, 256, 64), ("training", 64, 256, 32),
]


def _spin() -> None:
    while True:
        pass


def _modules(B, H, T, mode):
    torch.manual_seed(0)
    base = torch.nn.LSTM(H, H)
    ours = fastseq.nn.LSTM(H, H)
    ours.load_state_dict(base.state_dict())
    x = torch.randn(T, B, H, requires_grad=mode == "training")

    def run(m):
        if mode == "inference":
            def fn():
                with torch.inference_mode():
                    m(x)
        else:
            def fn():
                y, _ = m(x)
                y.sum().backward()
        return fn
    return run(base), run(ours)


def _served(fn) -> str:
    with registry.served() as seen:
        fn()
    return ",".join(sorted({backend for family, _, backend in seen if family == "lstm"})) or "?"


def _probe_until_settled(fn, seconds: float, at_once: bool = False) -> None:
    """Calls for `seconds` and at least a full window of probes and two more, probes on every call once the
    first is due (at once, with at_once): what a user's loop does over a longer time, compressed."""
    gap, least = tuning.PROBE_GAP, tuning.PROBE_MIN_S
    tuning.PROBE_GAP, tuning.PROBE_MIN_S = 0, 0.0
    if at_once:
        tuning.probe_now()
    try:
        end, calls = time.perf_counter() + seconds, 0
        while time.perf_counter() < end or calls < tuning.WINDOW + 2:
            fn()
            calls += 1
    finally:
        tuning.PROBE_GAP, tuning.PROBE_MIN_S = gap, least


def _threads() -> str:
    return ",".join(sorted({m.backend for k, m in tuning.choices().items() if k.startswith("lstm_threads|")})) or "-"


CACHES = ("made quiet", "empty", "made busy")  # the cache the timed pass starts from; "made busy" is timed quiet


def measure(shape, cache: str, spinner_start, spinner_stop, seconds: float = 2.0) -> dict:
    mode, B, H, T = shape
    base, ours = _modules(B, H, T, mode)
    os.environ["FASTSEQ_CACHE"] = os.path.join(tempfile.mkdtemp(prefix="fastseq-busy-"), "choices.json")
    tuning.forget()  # an empty cache: this shape's own choices only
    made = None
    if cache == "made quiet":
        ours()  # the choice made on the quiet machine
        made = f"{_served(ours)}/{_threads()}"
    elif cache == "made busy":  # chosen under load, probes and all, then the load goes
        spinner_start()
        try:
            ours()
            _probe_until_settled(ours, 2.0)
            made = f"{_served(ours)}/{_threads()}"
        finally:
            spinner_stop()
    busy = cache != "made busy"
    if busy:
        spinner_start()
    try:
        ours()  # an empty cache chooses now
        _probe_until_settled(ours, 2.0, at_once=not busy)  # quiet: the probes' clock compressed
        rounds: dict = {}
        timed = timing.measure_together({"torch": base, "fastseq": ours}, torch.device("cpu"), min_seconds=seconds,
                                        rounds_out=rounds)
        serving, threads = _served(ours), _threads()
    finally:
        if busy:
            spinner_stop()
    t, b = timed["fastseq"], timed["torch"]
    return {"mode": mode, "sizes": {"batch": B, "hidden": H, "seq": T, "layers": 1, "input": H},
            "cache": cache, "cache_choice": made, "timed": "busy" if busy else "quiet",
            "serving": serving, "threads": threads, **t, "baseline": "torch.nn.LSTM",
            "baseline_median_ms": b["median_ms"], "baseline_p25_ms": b["p25_ms"], "baseline_p75_ms": b["p75_ms"],
            "baseline_mean_ms": b["mean_ms"], "speedup_mean": b["mean_ms"] / t["mean_ms"],
            "speedup": b["median_ms"] / t["median_ms"],
            "paired_speedup": timing.paired_ratio(rounds, "torch", "fastseq")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--quick", action="store_true", help="the first three shapes only")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds each side is timed for, per shape")
    args = parser.parse_args(argv)
    os.environ["FASTSEQ_AUTOTUNE"] = "1"
    spinner = {}

    def start():
        spinner["p"] = multiprocessing.Process(target=_spin, daemon=True)
        spinner["p"].start()
        time.sleep(0.2)

    def stop():
        spinner.pop("p").terminate()
        time.sleep(0.2)

    rows = []
    for shape in SHAPES[:3] if args.quick else SHAPES:
        for cache in CACHES:
            r = measure(shape, cache, start, stop, args.seconds)
            rows.append(r)
            print(f"{r['mode']:<9} B{r['sizes']['batch']:<3} H{r['sizes']['hidden']:<4} T{r['sizes']['seq']:<3} "
                  f"cache {r['cache']:<10} ({r['cache_choice'] or '-':<9}) timed {r['timed']:<5} serving "
                  f"{r['serving']}/{r['threads']:<4} mean: fastseq {r['mean_ms']:8.2f} ms torch "
                  f"{r['baseline_mean_ms']:8.2f} ms x{r['speedup_mean']:.2f}; median: fastseq {r['median_ms']:8.2f} ms "
                  f"torch {r['baseline_median_ms']:8.2f} ms x{r['speedup']:.2f} "
                  f"(within rounds x{r['paired_speedup']['median']:.2f})", flush=True)
    meta = sweep.metadata(torch.device("cpu"), "busy", {})
    meta["load"] = "one process spinning on one of the machine's cores"
    meta["timing"] = (f"one call a block, the two taking turns for >= {args.seconds} s a side (wall clock), after the "
                      "probes; speedup_mean: the ratio of mean times (the loop's total time: a busy core stalls some "
                      "calls and not others); speedup: of medians; paired_speedup: torch's time over fastseq's within "
                      "each round, median and quartiles")
    stem = f"lstm-busy-cpu-{datetime.date.today().isoformat()}-{meta.get('commit', 'unknown')}"
    path = os.path.join(args.out, stem + ".json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sweep._write_json(path, {"meta": meta, "results": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
