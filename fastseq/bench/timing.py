"""Timing and machine ceilings for the benchmarks: warm-up, then the median (and quartiles) of many runs,
and the matmul rate, copy bandwidth and tanh rate measured on the same device, so every figure can be given
as a fraction of what the machine does.

On a GPU each measurement gives two times, both per call:
    gpu_ms   the device's time: a block of calls queued behind a spin kernel (so the host runs ahead and
             the GPU never waits for it), timed between two events and divided by the count (`gpu_method`
             says how it was taken)
    call_ms  what a user's Python loop sees: the wall clock over a block of calls and one synchronize at
             its end, divided by the count (host time included: the larger of host and device time)
A call that synchronizes cannot be queued ahead: its gpu_ms is then an upper bound, or, with
`capture=True`, the replay of its CUDA graph.
`median_ms` is gpu_ms on a GPU and the wall clock on a CPU (where the two are one).
"""
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
BLOCK_MS = 2.0  # a GPU block of calls lasts about this long (at least one call, at most MAX_BLOCK)
MAX_BLOCK = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(times: list[float], prefix: str = "") -> dict:
    """Median and quartiles, and the mean (what a loop of these calls takes per call, stalls included)."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {f"{prefix}median_ms": statistics.median(times), f"{prefix}p25_ms": q[0], f"{prefix}p75_ms": q[2],
            f"{prefix}mean_ms": statistics.mean(times)}


class CudaClock:
    """What a Timer asks of a GPU: the host's clock, a spin kernel of a given length, events, a synchronize
    (a test stands in a simulated device)."""

    _cycles_per_ms: dict = {}

    def __init__(self, device: torch.device):
        self.device = device

    def host_ms(self) -> float:
        return time.perf_counter() * 1e3

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def event(self):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def elapsed_ms(self, begin, end) -> float:
        end.synchronize()
        return begin.elapsed_time(end)

    def spin(self, ms: float) -> None:
        """Holds the stream for about `ms` (torch.cuda._sleep's cycles per ms measured once per device)."""
        key = str(self.device)
        if key not in self._cycles_per_ms:
            torch.cuda._sleep(1_000_000)  # warm
            begin = self.event()
            torch.cuda._sleep(10_000_000)
            self._cycles_per_ms[key] = 10_000_000 / max(self.elapsed_ms(begin, self.event()), 1e-3)
        torch.cuda._sleep(int(self._cycles_per_ms[key] * ms))


class Timer:
    """Times one zero-argument function: `block()` runs a block of calls and returns its per-call times,
    {"call_ms": ...} on a CPU (one call), {"gpu_ms", "call_ms"} on a GPU (`calls` calls, chosen once)."""

    def __init__(self, fn: Callable[[], object], device: torch.device, capture: bool = False, clock=None):
        self.fn, self.device, self.capture = fn, device, capture
        self.calls, self.method, self._graph, self._spin_ms = 1, "wall clock", None, 0.0
        self.clock = clock or (CudaClock(device) if device.type == "cuda" else None)
        if self.clock is not None:
            self._calibrate()

    def _calibrate(self) -> None:
        clock = self.clock
        clock.sync()
        t0 = clock.host_ms()
        self.fn()
        clock.sync()
        one = clock.host_ms() - t0
        self.calls = max(1, min(MAX_BLOCK, int(BLOCK_MS / max(one, 1e-3))))
        self._spin_ms = 0.5 + 2.0 * self.calls * one  # longer than the host takes to queue the block
        self.method = "queued behind a spin"
        if self._queued()[1]:
            return
        self.method = "host waited for the device (the call synchronizes): gpu_ms is an upper bound"
        if not self.capture:
            return
        try:  # time the replay of the call captured in a CUDA graph instead
            self._graph = self._capture()
            self.method = "graph replay"
        except Exception as e:  # noqa: BLE001 - not capturable: the upper bound stands, the reason beside it
            self.method += f"; not capturable ({type(e).__name__})"

    def _capture(self):
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.fn()  # warm on the side stream, as torch's graph docs ask
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.fn()
        return graph

    def _queued(self) -> tuple[float, bool]:
        """(ms per call on the device, whether the host queued the whole block before the spin ended)."""
        clock, run = self.clock, (self._graph.replay if self._graph is not None else self.fn)
        clock.spin(self._spin_ms)
        begin = clock.event()
        t0 = clock.host_ms()
        for _ in range(self.calls):
            run()
        queued_ms = clock.host_ms() - t0
        end = clock.event()
        return clock.elapsed_ms(begin, end) / self.calls, queued_ms < self._spin_ms

    def block(self) -> dict:
        if self.clock is None:
            t0 = time.perf_counter()
            self.fn()
            return {"call_ms": (time.perf_counter() - t0) * 1e3}
        gpu_ms, _ = self._queued()
        self.clock.sync()
        t0 = self.clock.host_ms()
        for _ in range(self.calls):
            self.fn()
        self.clock.sync()
        return {"gpu_ms": gpu_ms, "call_ms": (self.clock.host_ms() - t0) / self.calls}


def _summary(blocks: list[dict], timer: Timer) -> dict:
    calls = [b["call_ms"] for b in blocks]
    out = {**_quartiles(calls, "call_"), "reps": len(blocks)}
    if "gpu_ms" in blocks[0]:
        gpu = [b["gpu_ms"] for b in blocks]
        out.update(_quartiles(gpu, "gpu_"), calls_per_block=timer.calls, gpu_method=timer.method)
        out.update(_quartiles(gpu))
    else:
        out.update(_quartiles(calls))
    return out


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, min_reps: int = 10,
            min_seconds: float | None = None, capture: bool = False) -> dict:
    """Median and quartiles in milliseconds of `fn()` after `warmup` calls, over at least `min_reps` runs
    (blocks of calls on a GPU) and `min_seconds` (default MIN_SECONDS): median_ms, p25_ms, p75_ms, and on a
    GPU gpu_* and call_* beside them (the module's docstring). capture: where a call synchronizes, time
    the replay of its CUDA graph (a call that reads device values cannot be captured)."""
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    for _ in range(warmup):
        fn()
    _sync(device)
    timer = Timer(fn, device, capture)
    blocks: list[dict] = []
    start = time.perf_counter()
    while len(blocks) < min_reps or time.perf_counter() - start < min_seconds:
        blocks.append(timer.block())
        if len(blocks) >= 1000:
            break
    return _summary(blocks, timer)


def measure_together(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 3, min_reps: int = 10,
                     min_seconds: float | None = None, rounds_out: dict | None = None) -> dict[str, dict]:
    """measure() of several functions side by side: after `warmup` calls each, they take turns, one block
    each per round, for at least `min_reps` rounds and `min_seconds` in all, so that the machine's drift
    (on a shared CPU one phase runs slower than the next) falls on all of them alike. rounds_out: filled
    with each function's time (median_ms's kind) round by round, for ratios taken within a round."""
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    timers = {name: Timer(fn, device) for name, fn in fns.items()}
    blocks: dict[str, list[dict]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or time.perf_counter() - start < min_seconds * len(fns):
        for name, timer in timers.items():
            blocks[name].append(timer.block())
        rounds += 1
        if rounds >= 1000:
            break
    if rounds_out is not None:
        rounds_out.update({name: [b.get("gpu_ms", b["call_ms"]) for b in bs] for name, bs in blocks.items()})
    return {name: _summary(bs, timers[name]) for name, bs in blocks.items()}


def paired_ratio(rounds: dict[str, list[float]], baseline: str, name: str) -> dict:
    """The baseline's time over `name`'s within each round of measure_together (both saw the same moment of
    the machine), as median and quartiles: steadier than the ratio of two medians where the load drifts."""
    ratios = [b / t for b, t in zip(rounds[baseline], rounds[name])]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "p25": q[0], "p75": q[2], "rounds": len(ratios)}


def speedups(t: dict, baselines: dict[str, dict]) -> dict:
    """Ratios of each baseline's time to `t`'s: speedup_vs_<name> (the device's time, median_ms) and, on a
    GPU, call_speedup_vs_<name> (per call, host included), and both against the fastest baseline."""
    out: dict = {}
    if "median_ms" not in t:
        return out
    for key, prefix in (("median_ms", "speedup"), ("call_median_ms", "call_speedup")):
        if key not in t:
            continue
        times = {name: bt[key] for name, bt in baselines.items() if key in bt}
        for name, base in times.items():
            out[f"{prefix}_vs_{name}"] = base / t[key]
        if times:
            out[f"{prefix}_vs_fastest_baseline"] = min(times.values()) / t[key]
    return out


def fraction_of(rate: float, ceiling: float, key: str = "fraction_of_ceiling") -> dict:
    """{key: rate / ceiling}; above 1, the ceiling (measured in the same run by a benchmark of its own) fell
    short of what this case reached, and the row says so rather than claim more than the device's rate."""
    fraction = rate / ceiling
    if fraction <= 1.0:
        return {key: fraction}
    return {key: fraction, f"{key}_note": f"above the measured ceiling ({ceiling:.4g}/s): that measurement reached "
                                          f"less than this case's {rate:.4g}/s, so it understates the device"}


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
    for fastseq's backend and for every baseline measured, on the line "<implementation> <tag(row)>", with
    its quartile bar (y at the time's first and third quartiles)."""
    lines: dict = {}
    for r in rows:
        if not keep(r):
            continue
        for name, t in [(f"fastseq[{r['backend']}]", r), *r["baselines"].items()]:
            if "median_ms" in t:
                lines.setdefault(f"{name} {tag(r)}", {})[x(r)] = (y(r, t), *quartile_values(lambda t: y(r, t), t))
    return lines


def quartile_values(y, t: dict) -> tuple[float, float]:
    """(low, high) of y(timing) at the timing's first and third quartile times (its median's where absent)."""
    ends = [y({**t, "median_ms": t.get(q, t["median_ms"])}) for q in ("p25_ms", "p75_ms")]
    return min(ends), max(ends)


def figure():
    """A (figure, axes) pair for a plot written to a file (no display needed); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def line_plot(series: dict, path: str, xlabel: str, ylabel: str, title: str, logy: bool = False,
              hline: float | None = None) -> str:
    """One line per label of `series` ({label: {x: y or (y, low, high)}}: a quartile bar from low to high), x on
    a log2 axis, written to `path`."""
    fig, ax = figure()
    for label, pts in sorted(series.items()):
        xs = sorted(pts)
        ys = [pts[x] if isinstance(pts[x], tuple) else (pts[x], pts[x], pts[x]) for x in xs]
        mid = [y[0] for y in ys]
        ax.errorbar(xs, mid, yerr=[[m - y[1] for m, y in zip(mid, ys)], [y[2] - m for m, y in zip(mid, ys)]],
                    marker="o", capsize=3, label=label)
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
    """The short commit of the fastseq checkout this package runs from (wherever the command runs), "-dirty"
    if changed; FASTSEQ_COMMIT where there is no .git (the device machine's copy); an installed package's
    version ("v0.1.0") outside a checkout."""
    if os.environ.get("FASTSEQ_COMMIT"):
        return os.environ["FASTSEQ_COMMIT"][:7]
    from .. import __version__

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return f"v{__version__}"
