"""The linear layers of a decode step on a CPU: F.linear against fastseq.nn.linear's batched form
(batched_rows), on the weights of a model's decode step (GPT-2 small by default: 12 blocks of 2304x768,
768x768, 3072x768 and 768x3072, and the 50257x768 output), each weight distinct so that, as in decoding,
it is read from memory and not from cache. For each number of rows: the milliseconds the step's linears
take in each form (the two alternating, median of the runs), their ratio, and the bytes of weight read
per second as a fraction of the copy bandwidth measured in the same run (read + written bytes/s of a
large copy: what memory gives here).

    python benchmarks/bench_linear_rows.py --json benchmarks/results/linear-rows-cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import fastseq  # noqa: E402
from fastseq.bench import timing  # noqa: E402
from fastseq.nn.linear import MIN_WEIGHT, batched_rows, linear  # noqa: E402

# (d_model, layers, vocab): the step's weights are, per layer, the attention's in and out projections and
# the feed-forward network's two, then the output layer
SIZES = {"gpt2-small": (768, 12, 50257), "tiny": (32, 2, 101)}


def weights(size: str, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    d, layers, vocab = SIZES[size]
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * layers + [(vocab, d)]
    return [(torch.randn(o, i, dtype=dtype) / i ** 0.5, torch.zeros(o, dtype=dtype) if o != vocab else None)
            for o, i in shapes]


def step(ws, inputs: dict, batched: bool) -> None:
    """Every linear of the step once, on `rows` rows (inputs by in-features), in the form asked for."""
    with torch.no_grad(), batched_rows(batched):
        for w, b in ws:
            linear(inputs[w.shape[1]], w, b)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2-small")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 5, 8, 16, 64])
    parser.add_argument("--dtype", choices=sorted(timing.DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    dtype = timing.DTYPES[args.dtype]
    ws = weights(args.size, dtype)
    weight_bytes = sum(w.numel() * w.element_size() for w, _ in ws)
    bandwidth = timing.copy_bandwidth(torch.device("cpu"))
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": timing.commit(), "device": "cpu", "torch": torch.__version__, "fastseq": fastseq.__version__,
            "torch_threads": torch.get_num_threads(), "size": args.size, "dtype": args.dtype,
            "weights": len(ws), "weight_bytes": weight_bytes, "min_weight": MIN_WEIGHT,
            "copy_bandwidth_bytes_per_s": bandwidth,
            "timing": f"median of {args.repeats} steps after one warm-up each, the two forms taking turns"}
    rows = []
    for n in args.rows:
        inputs = {i: torch.randn(n, i, dtype=dtype) for i in {w.shape[1] for w, _ in ws}}
        forms = {name: (lambda batched=name == "batched": step(ws, inputs, batched))
                 for name in ("F.linear", "batched")}
        timed = timing.measure_together(forms, torch.device("cpu"), warmup=1, min_reps=args.repeats, min_seconds=0.0)
        ms = {name: t["median_ms"] for name, t in timed.items()}
        read = {name: weight_bytes / (t * 1e-3) / bandwidth for name, t in ms.items()}
        rows.append({"rows": n, "ms": ms, "ratio": ms["F.linear"] / ms["batched"], "of_copy_bandwidth": read})
        print(f"{n:3d} rows  F.linear {ms['F.linear']:7.2f} ms ({read['F.linear']:.0%} of copy bandwidth)  "
              f"batched {ms['batched']:7.2f} ms ({read['batched']:.0%})  x{rows[-1]['ratio']:.2f}", flush=True)
    timing.write_rows(args.json, meta, rows)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
