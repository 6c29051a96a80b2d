"""Timing and machine ceilings for the benchmarks: warm-up, then the median (and quartiles) of many runs,
with CUDA events on a GPU and the wall clock on a CPU; the matmul rate, copy bandwidth and tanh rate
measured on the same device, so every figure can be given as a fraction of what the machine does."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from typing import Callable

import torch

from fastseq import atomic

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Seconds each measurement runs for at least (after its 10 runs): sweep.py shortens it for the headline preset.
MIN_SECONDS = 0.5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, min_reps: int = 10,
            min_seconds: float | None = None) -> dict:
    """Median and quartiles in milliseconds of `fn()` after `warmup` calls, over at least `min_reps` runs
    and `min_seconds` (default MIN_SECONDS)."""
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 1000:
            break
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[2], "reps": len(times)}


def measure_together(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 3, min_reps: int = 10,
                     min_seconds: float | None = None) -> dict[str, dict]:
    """measure() of several functions side by side: after `warmup` calls each, they take turns, one run
    each per round, for at least `min_reps` rounds and `min_seconds` in all, so that the machine's drift
    (on a shared CPU one phase runs slower than the next) falls on all of them alike."""
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or time.perf_counter() - start < min_seconds * len(fns):
        for name, fn in fns.items():
            times[name].append(measure(fn, device, warmup=0, min_reps=1, min_seconds=0.0)["median_ms"])
        rounds += 1
        if rounds >= 1000:
            break
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {"median_ms": statistics.median(ts), "p25_ms": q[0], "p75_ms": q[2], "reps": len(ts)}
    return out


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matrix product in `dtype` on `device`."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = measure(lambda: a @ b, device, warmup=3, min_reps=10, min_seconds=0.3)["median_ms"]
    return 2 * n**3 / (t * 1e-3)


def copy_bandwidth(device: torch.device) -> float:
    """Measured bytes/s (read + written) of a large device-to-device copy."""
    n = (1 << 30) if device.type == "cuda" else (1 << 26)
    src = torch.randn(n // 4, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, warmup=3, min_reps=10, min_seconds=0.3)["median_ms"]
    return 2 * src.numel() * 4 / (t * 1e-3)


def write_rows(path: str, meta: dict, rows: list) -> None:
    """A benchmark's file, {"meta": meta, "rows": rows}, written to a temporary file and renamed over `path`
    (a run killed mid-write leaves the last complete file)."""
    atomic.write(path, lambda f: json.dump({"meta": meta, "rows": rows}, f, indent=1), "w")


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes allocated by `fn()` at its peak beyond what was allocated before it (CUDA only; 0 on a CPU)."""
    if device.type != "cuda":
        fn()
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def series(rows, keep, tag, x, y) -> dict:
    """Plot lines from benchmark rows: for each row `keep(row)` accepts, a point (x(row), y(row, timing))
    for fastseq's backend and for every baseline measured, on the line "<implementation> <tag(row)>"."""
    lines: dict = {}
    for r in rows:
        if not keep(r):
            continue
        for name, t in [(f"fastseq[{r['backend']}]", r), *r["baselines"].items()]:
            if "median_ms" in t:
                lines.setdefault(f"{name} {tag(r)}", {})[x(r)] = y(r, t)
    return lines


def figure():
    """A (figure, axes) pair for a plot written to a file (no display needed); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def line_plot(series: dict, path: str, xlabel: str, ylabel: str, title: str, logy: bool = False,
              hline: float | None = None) -> str:
    """One line per label of `series` ({label: {x: y}}), x on a log2 axis, written to `path`."""
    fig, ax = figure()
    for label, pts in sorted(series.items()):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8 if len(series) < 8 else 6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def commit() -> str:
    """The short commit of the tree, "-dirty" if changed; FASTSEQ_COMMIT where there is no .git (the device
    machine's copy)."""
    if os.environ.get("FASTSEQ_COMMIT"):
        return os.environ["FASTSEQ_COMMIT"][:7]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
