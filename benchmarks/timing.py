"""Timing and machine ceilings for the benchmarks: warm-up, then the median (and quartiles) of many runs,
with CUDA events on a GPU and the wall clock on a CPU; the matmul rate and copy bandwidth measured on
the same device, so every figure can be given as a fraction of what the machine does."""
from __future__ import annotations

import statistics
import subprocess
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, min_reps: int = 10,
            min_seconds: float = 0.5) -> dict:
    """Median and quartiles in milliseconds of `fn()` after `warmup` calls."""
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


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
