"""Benchmark sweep: fastseq against the baseline a user would otherwise pick, side by side in one run.

    python benchmarks/sweep.py [--preset cpu|gpu|quick] [--out DIR]

LSTM layer: fastseq.nn.LSTM (each fused backend present on the device) against torch.nn.LSTM (cuDNN on
a GPU, ATen's CPU kernels on a CPU) with the same weights, inference forward and training
forward+backward. Writes one JSON (device, versions, dtypes, sizes, commit; median and quartiles;
ratio to the baseline; fraction of the measured matmul rate and copy bandwidth) to the output folder,
and a plot of the speed-up against batch size when matplotlib is installed.
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
import timing  # noqa: E402

import fastseq  # noqa: E402
import fastseq.nn  # noqa: E402
from fastseq import backends  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (mode, num_layers, hidden, seq, batch sizes, input size)
PRESETS = {
    "quick": [("inference", 1, 128, 32, (1, 8), 128), ("training", 2, 128, 16, (8,), 128)],
    "cpu": [("inference", 1, 256, 64, (1, 8, 32), 256), ("training", 2, 256, 32, (16,), 256)],
    "gpu": [("inference", 1, 512, 256, (1, 4, 8, 16, 32, 64, 128, 256), 512),
            ("training", 2, 512, 128, (64,), 512)],
}


def lstm_flops(mode: str, layers: int, hidden: int, seq: int, batch: int, input_size: int) -> float:
    """Matrix FLOPs of the layers (the pointwise work is negligible): the input and recurrent GEMMs,
    times 3 for training (forward, input gradients, weight gradients)."""
    total = 0.0
    for layer in range(layers):
        i = input_size if layer == 0 else hidden
        total += 2 * seq * batch * 4 * hidden * (i + hidden)
    return total * (3 if mode == "training" else 1)


def lstm_bytes(mode: str, layers: int, hidden: int, seq: int, batch: int, input_size: int, elt: int) -> float:
    """Fewest bytes through memory when the recurrence re-reads W_hh every step (it outlives no cache
    at these sizes) and every activation is read and written once."""
    per_step_weights = sum(4 * hidden * hidden for _ in range(layers)) * elt * seq
    activations = seq * batch * (input_size + 2 * layers * hidden) * elt
    return (per_step_weights + activations) * (3 if mode == "training" else 1)


def bench_lstm(device, dtype_name, mode, layers, hidden, seq, batch, input_size, fused_backends, ceilings):
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    base = torch.nn.LSTM(input_size, hidden, layers).to(device, dtype)
    ours = fastseq.nn.LSTM(input_size, hidden, layers).to(device, dtype)
    ours.load_state_dict(base.state_dict())
    x = torch.randn(seq, batch, input_size, device=device, dtype=dtype)

    def run(module):
        if mode == "inference":
            def fn():
                with torch.inference_mode():
                    module(x)
        else:
            xg = x.clone().requires_grad_()

            def fn():
                y, (h, c) = module(xg)
                (y.float().sum() + h.float().sum() + c.float().sum()).backward()
        return fn

    flops = lstm_flops(mode, layers, hidden, seq, batch, input_size)
    nbytes = lstm_bytes(mode, layers, hidden, seq, batch, input_size, x.element_size())
    baseline = timing.measure(run(base), device)
    rows = []
    for backend in fused_backends:
        with backends.use(backend):
            t = timing.measure(run(ours), device)
        seconds = t["median_ms"] * 1e-3
        rows.append({
            "op": "lstm", "mode": mode, "dtype": dtype_name, "backend": backend, "baseline": "torch.nn.LSTM",
            "sizes": {"layers": layers, "hidden": hidden, "seq": seq, "batch": batch, "input": input_size},
            **t,
            "baseline_median_ms": baseline["median_ms"], "baseline_p25_ms": baseline["p25_ms"],
            "baseline_p75_ms": baseline["p75_ms"],
            "speedup": baseline["median_ms"] / t["median_ms"],
            "flops": flops, "flop_rate": flops / seconds,
            "fraction_of_matmul_ceiling": flops / seconds / ceilings["matmul_flops"][dtype_name],
            "bytes_floor": nbytes, "fraction_of_bandwidth": nbytes / seconds / ceilings["copy_bandwidth"],
        })
    return rows


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {}
    for r in rows:
        if r["mode"] == "inference":
            series.setdefault((r["backend"], r["dtype"]), []).append((r["sizes"]["batch"], r["speedup"]))
    for (backend, dtype), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"fastseq[{backend}] {dtype}")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("speed-up over torch.nn.LSTM")
    ax.set_title("LSTM inference forward, 1 layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="sizes to run (default: gpu on a GPU, cpu otherwise)")
    parser.add_argument("--dtypes", nargs="+", default=None, help="fp32 bf16 fp16 (default: fp32 bf16 on a GPU)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the JSON and the plot")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    dtype_names = args.dtypes or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    fused = [b for b in ("cuda", "cpu", "triton") if backends.availability(b, device.type)[0]
             and not (b == "triton" and device.type == "cpu")]
    if not fused:
        print(f"no fused backend available on {device.type}; see `fastseq info`", file=sys.stderr)
        return 1
    ceilings = {"matmul_flops": {d: timing.matmul_ceiling(device, DTYPES[d]) for d in dtype_names},
                "copy_bandwidth": timing.copy_bandwidth(device)}
    rows = []
    for mode, layers, hidden, seq, batches, input_size in PRESETS[preset]:
        for dtype_name in dtype_names:
            for batch in batches:
                for r in bench_lstm(device, dtype_name, mode, layers, hidden, seq, batch, input_size, fused, ceilings):
                    rows.append(r)
                    print(f"{r['mode']:<9} {r['dtype']} L{layers} H{hidden} T{seq} B{batch:<4} "
                          f"{r['backend']:<6} {r['median_ms']:9.3f} ms  torch {r['baseline_median_ms']:9.3f} ms  "
                          f"x{r['speedup']:.2f}  {r['fraction_of_matmul_ceiling']:.1%} of matmul, "
                          f"{r['fraction_of_bandwidth']:.1%} of bandwidth", flush=True)
    info = fastseq.diagnostics.collect()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": timing.commit(), "preset": preset,
        "device": info["device"] or f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "capability": info["capability"], "torch": info["torch"], "torch_cuda": info["torch_cuda"],
        "triton": info["triton"], "python": info["python"], "fastseq": info["fastseq"],
        "extension": info["extension"], "torch_threads": torch.get_num_threads(),
        "ceilings": ceilings, "timing": "median of >= 10 runs after 3 warm-up runs"
                                        + (" (CUDA events)" if device.type == "cuda" else " (wall clock)"),
    }
    os.makedirs(args.out, exist_ok=True)
    stem = f"lstm-{device.type}-{preset}-{datetime.date.today().isoformat()}"
    path = os.path.join(args.out, stem + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
    os.replace(path + ".tmp", path)
    png = plot(rows, os.path.join(args.out, stem + ".png"))
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
