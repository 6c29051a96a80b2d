"""Benchmark sweep: fastseq against the baseline a user would otherwise pick, side by side in one run.

    python benchmarks/sweep.py [--ops lstm additive_attention attention models] [--preset cpu|gpu|quick] [--dtypes ...] [--out DIR]

One JSON per op (device, versions, dtypes, sizes, commit, the measured ceilings; median and quartiles;
ratios to the baselines; fractions of the ceilings) and one plot per op, in the output folder.
The ops' cases and baselines: bench_lstm.py, bench_additive_attention.py, bench_attention.py; whole models
(training and generation against the same models on torch.nn layers): bench_models.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_additive_attention  # noqa: E402
import bench_attention  # noqa: E402
import bench_lstm  # noqa: E402
import bench_models  # noqa: E402
import timing  # noqa: E402
from timing import DTYPES  # noqa: E402

import fastseq  # noqa: E402
from fastseq import backends  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = {"lstm": bench_lstm, "additive_attention": bench_additive_attention, "attention": bench_attention,
       "models": bench_models}


def fused_backends(op: str, device: torch.device) -> list[str]:
    """The compiled and Triton backends that run on this device (Triton on a GPU only) for the op, or for
    any op a benchmark lists in its FAMILIES (the models)."""
    families = getattr(OPS[op], "FAMILIES", (op,))
    implemented = {b for f in families for b in fastseq.ops._dispatch.families()[f]}
    return [b for b in ("cuda", "cpu", "triton") if b in implemented and backends.availability(b, device.type)[0]
            and not (b == "triton" and device.type == "cpu")]


def ceilings(device: torch.device, dtype_names: list[str]) -> dict:
    out = {"matmul_flops": {d: timing.matmul_ceiling(device, DTYPES[d]) for d in dtype_names},
           "copy_bandwidth": timing.copy_bandwidth(device),
           "tanh_rate_exact": timing.tanh_rate(device, approx=False)}
    out["tanh_rate_approx"] = timing.tanh_rate(device, approx=True) if device.type == "cuda" else out["tanh_rate_exact"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", choices=sorted(OPS), default=sorted(OPS))
    parser.add_argument("--preset", choices=("quick", "cpu", "gpu"), default=None,
                        help="sizes to run (default: gpu on a GPU, cpu otherwise)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None,
                        help="default: fp32 bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the JSON and the plots")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    dtype_names = args.dtypes or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    measured = ceilings(device, dtype_names)
    info = fastseq.diagnostics.collect()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": timing.commit(), "preset": preset,
        "device": info["device"] or f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "capability": info["capability"], "torch": info["torch"], "torch_cuda": info["torch_cuda"],
        "triton": info["triton"], "python": info["python"], "fastseq": info["fastseq"],
        "extension": info["extension"], "torch_threads": torch.get_num_threads(),
        "ceilings": measured, "timing": "median of >= 10 runs after 3 warm-up runs"
                                        + (" (CUDA events)" if device.type == "cuda" else " (wall clock)"),
    }
    os.makedirs(args.out, exist_ok=True)
    for op in args.ops:
        fused = fused_backends(op, device)
        if not fused:
            print(f"{op}: no fused backend runs on {device.type} here (see `fastseq info`); skipped")
            continue
        rows = OPS[op].run(device, preset, dtype_names, fused, measured)
        stem = f"{op.replace('_', '-')}-{device.type}-{preset}-{datetime.date.today().isoformat()}"
        path = os.path.join(args.out, stem + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
        os.replace(path + ".tmp", path)
        try:
            png = OPS[op].plot(rows, os.path.join(args.out, stem + ".png"))
        except ImportError:
            png = None
        print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
