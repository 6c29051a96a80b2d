"""Benchmark sweep: fastseq against the baseline a user would otherwise pick, side by side in one run.

    fastseq bench [--ops lstm additive_attention attention models] [--preset cpu|gpu|quick|headline]
                  [--dtypes ...] [--out DIR | --json FILE]          (or python -m fastseq.bench.sweep)

One JSON per op (device, versions, dtypes, sizes, commit, the measured ceilings; median and quartiles;
ratios to the baselines; fractions of the ceilings) and one plot per op (median and quartile bars), named
<op>-<device>-<preset>-<date>-<commit>, in the output folder (default: the current one); or, with --json,
every op's rows in one file and no plots (what `make gpu-window` keeps). The `headline` preset is
the GPU check's: the cases the project reports, each measured for about 0.1 s, no torch.compile baseline.
The ops' cases and baselines: lstm.py, additive_attention.py, attention.py beside this file; whole models
(training and generation against the same models on torch.nn layers): models.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

import fastseq
from fastseq import backends
from fastseq.ops.registry import declared

from . import additive_attention as bench_additive_attention
from . import attention as bench_attention
from . import lstm as bench_lstm
from . import models as bench_models
from . import tanh_rate, timing
from .timing import DTYPES

OPS = {"lstm": bench_lstm, "additive_attention": bench_additive_attention, "attention": bench_attention,
       "models": bench_models}


def fused_backends(op: str, device: torch.device) -> list[str]:
    """The compiled, Triton and torch backends that run on this device (Triton on a GPU only) for the op, or
    for any op a benchmark lists in its FAMILIES (the models); a benchmark skips a backend for the cases
    it cannot serve (torch's kernels train through autograd on a CPU only)."""
    families = getattr(OPS[op], "FAMILIES", (op,))
    implemented = {b for f in families for b in declared()[f].backends}
    return [b for b in backends.listed(device.type, fused_only=True)
            if b in implemented and backends.availability(b, device.type)[0]
            and not (b == "triton" and device.type == "cpu")]


def ceilings(device: torch.device, dtype_names: list[str]) -> dict:
    out = {"matmul_flops": {d: timing.matmul_ceiling(device, DTYPES[d]) for d in dtype_names},
           "copy_bandwidth": timing.copy_bandwidth(device),
           "tanh_rate_exact": tanh_rate.tanh_rate(device, approx=False)}
    out["tanh_rate_approx"] = (tanh_rate.tanh_rate(device, approx=True) if device.type == "cuda"
                               else out["tanh_rate_exact"])
    return out


PRESETS = ("quick", "cpu", "gpu", "headline")
SECONDS = {"headline": 0.1}  # seconds per measurement, by preset (else timing.MIN_SECONDS)


def metadata(device: torch.device, preset: str, measured: dict) -> dict:
    """Device, versions, commit and the measured ceilings: what every results file carries."""
    info = fastseq.diagnostics.collect()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": timing.commit(), "preset": preset,
        "device": info["device"] or f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "capability": info["capability"], "torch": info["torch"], "torch_cuda": info["torch_cuda"],
        "triton": info["triton"], "python": info["python"], "fastseq": info["fastseq"],
        "extension": info["extension"], "torch_threads": torch.get_num_threads(),
        "ceilings": measured, "timing": f"median of >= 10 runs and >= {timing.MIN_SECONDS} s after 3 warm-up runs"
                                        + (" (CUDA events)" if device.type == "cuda" else " (wall clock)"),
    }


def _write_json(path: str, payload: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", choices=sorted(OPS), default=sorted(OPS))
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="sizes to run (default: gpu on a GPU, cpu otherwise)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None,
                        help="default: fp32 bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--out", default=".", help="folder for the JSON and the plots (default: the current one)")
    parser.add_argument("--json", default=None, help="write every op's rows to this one file, no plots")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    dtype_names = args.dtypes or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    timing.MIN_SECONDS = SECONDS.get(preset, timing.MIN_SECONDS)
    measured = ceilings(device, dtype_names)
    meta = metadata(device, preset, measured)
    combined = {}
    if args.json is None:
        os.makedirs(args.out, exist_ok=True)
    for op in args.ops:
        fused = fused_backends(op, device)
        if not fused:
            print(f"{op}: no fused backend runs on {device.type} here (see `fastseq info`); skipped")
            continue
        rows = OPS[op].run(device, preset, dtype_names, fused, measured)
        if args.json is not None:
            combined[op] = rows
            _write_json(args.json, {"meta": meta, "results": combined})  # after each op: a timeout keeps the rest
            continue
        stem = f"{op.replace('_', '-')}-{device.type}-{preset}-{datetime.date.today().isoformat()}-{meta['commit']}"
        path = os.path.join(args.out, stem + ".json")
        _write_json(path, {"meta": meta, "results": rows})
        try:
            png = OPS[op].plot(rows, os.path.join(args.out, stem + ".png"))
        except ImportError:
            png = None
        print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
