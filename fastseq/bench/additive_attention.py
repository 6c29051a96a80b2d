"""Additive attention benchmark (run by fastseq.bench.sweep): fastseq's fused op on each backend present against the
naive PyTorch form (fastseq.ops.additive_attention.reference.naive, which builds (B, Tq, Tk, H)), eager and
torch.compile'd; forward and forward+backward; time and peak extra memory. The implementations of a case
are timed side by side, taking turns (timing.measure_together). Each time is also given against its floor:
the tanh count (one per (b, i, j, h) in the forward, three with the backward, which recomputes it twice)
over the tanh rate measured on the same device.
"""
from __future__ import annotations

import torch

from fastseq import backends, ops
from fastseq.ops.additive_attention import needs
from fastseq.ops.additive_attention.reference import naive
from fastseq.ops.registry import declared

from . import timing
from .timing import DTYPES

# (B, Tq, Tk, H, Dv)
PRESETS = declared()["additive_attention"].cases  # (B, Tq, Tk, H, Dv) per preset, declared with the op
MODES = {"headline": ("forward+backward",)}  # per preset; the others run both
BASELINES = {"headline": ("naive",)}  # per preset; the others add the torch.compile'd naive form on a GPU


def _inputs(device, dtype, B, Tq, Tk, H, Dv, grad):
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_(grad)

    return r(B, Tq, H), r(B, Tk, H), r(H, scale=H**-0.5), r(B, Tk, Dv)


def _callable(impl, mode, args):
    """A zero-argument function running one forward (or forward+backward) of `impl`."""
    if impl == "naive":
        def attend():
            return naive(*args)[0]
    elif impl == "naive-compiled":
        compiled = torch.compile(lambda *a: naive(*a)[0])

        def attend():
            return compiled(*args)
    else:
        def attend():
            with backends.use(impl):
                return ops.additive_attention(*args)
    if mode == "forward":
        def fn():
            with torch.no_grad():
                attend()
    else:
        def fn():
            attend().float().sum().backward()
    return fn


def _oom(e: Exception) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def bench_case(device, dtype_name, mode, B, Tq, Tk, H, Dv, fused_backends, ceilings,
               baselines=("naive", "naive-compiled")):
    dtype = DTYPES[dtype_name]
    args = _inputs(device, dtype, B, Tq, Tk, H, Dv, grad=mode != "forward")
    tanh_count = B * Tq * Tk * H * (1 if mode == "forward" else 3)
    rate = ceilings["tanh_rate_approx" if dtype != torch.float32 else "tanh_rate_exact"]
    sizes = {"B": B, "Tq": Tq, "Tk": Tk, "H": H, "Dv": Dv}
    measured, runs = {}, {}
    for impl in (*baselines, *fused_backends):
        if impl == "naive-compiled" and device.type != "cuda":
            continue  # inductor's CPU code needs a C++ toolchain at run time; the GPU run has it
        try:
            fn = _callable(impl, mode, args)
            measured[impl] = {"peak_extra_bytes": timing.peak_memory(fn, device)}
            runs[impl] = fn
        except Exception as e:  # the naive form runs out of memory at long Tk: record it, go on
            if not _oom(e):
                raise
            measured[impl] = {"oom": True}
        finally:
            _release(args, device)
    for impl, t in timing.measure_together(runs, device).items():  # side by side, taking turns
        measured[impl].update(t)
    _release(args, device)
    rows = []
    for impl in fused_backends:
        t = measured[impl]
        row = {"op": "additive_attention", "mode": mode, "dtype": dtype_name, "backend": impl, "sizes": sizes,
               **t, "baselines": {k: v for k, v in measured.items() if k not in fused_backends},
               "tanh_count": tanh_count, "floor_ms": tanh_count / rate * 1e3}
        if "median_ms" in t:
            row.update(timing.fraction_of(tanh_count / (t["median_ms"] * 1e-3), rate, "fraction_of_tanh_floor"))
            row.update(timing.speedups(t, row["baselines"]))
            for base, bt in row["baselines"].items():
                if "median_ms" in bt:
                    if bt.get("peak_extra_bytes") and t.get("peak_extra_bytes"):
                        row[f"memory_ratio_vs_{base}"] = t["peak_extra_bytes"] / bt["peak_extra_bytes"]
        rows.append(row)
    return rows


def _release(args, device) -> None:
    for a in args:
        a.grad = None
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fmt(t):
    return "OOM" if t.get("oom") else f"{t['median_ms']:9.3f} ms {t.get('peak_extra_bytes', 0) / 2**20:8.1f} MiB"


def _able(fused_backends, device, mode, B, Tq, Tk, H) -> list[str]:
    """The backends that serve the case as the op would choose them: torch's form only within its size bound,
    and with a backward only where torch's autograd trains it (a CPU)."""
    asked = needs(B, Tq, Tk, H, grad=mode != "forward")
    return [b for b in fused_backends if declared()["additive_attention"].provides(b, asked, device.type)]


def run(device, preset, dtype_names, fused_backends, ceilings):
    rows = []
    for B, Tq, Tk, H, Dv in PRESETS[preset]:
        for dtype_name in dtype_names:
            for mode in MODES.get(preset, ("forward", "forward+backward")):
                able = _able(fused_backends, device, mode, B, Tq, Tk, H)
                if not able:
                    continue
                for r in bench_case(device, dtype_name, mode, B, Tq, Tk, H, Dv, able, ceilings,
                                    BASELINES.get(preset, ("naive", "naive-compiled"))):
                    rows.append(r)
                    base = "  ".join(f"{k} {_fmt(v)}" for k, v in r["baselines"].items())
                    floor = f"  {r['fraction_of_tanh_floor']:.0%} of tanh floor" if "median_ms" in r else ""
                    print(f"additive_attention {mode:<16} {dtype_name} B{B} Tq{Tq} Tk{Tk} H{H} Dv{Dv}  "
                          f"{r['backend']} {_fmt(r)}{floor}  |  {base}", flush=True)
    return rows


def cases(device, preset, dtype_names, fused_backends):
    """The preset's cases as pytest-benchmark runs them (fastseq.bench.cases.Case): fastseq's op on each backend
    that serves the case against the naive form (and, on a GPU, the naive form compiled); the work is the
    tanh count, against the measured tanh rate."""
    from .cases import Case

    for B, Tq, Tk, H, Dv in PRESETS[preset]:
        for dtype_name in dtype_names:
            for mode in MODES.get(preset, ("forward", "forward+backward")):
                able = _able(fused_backends, device, mode, B, Tq, Tk, H)
                if not able:
                    continue
                baselines = tuple(b for b in BASELINES.get(preset, ("naive", "naive-compiled"))
                                  if b != "naive-compiled" or device.type == "cuda")

                def make(B=B, Tq=Tq, Tk=Tk, H=H, Dv=Dv, dtype_name=dtype_name, mode=mode, impls=(*able, *baselines)):
                    args = _inputs(device, DTYPES[dtype_name], B, Tq, Tk, H, Dv, grad=mode != "forward")
                    return {impl: _callable(impl, mode, args) for impl in impls}
                exact = DTYPES[dtype_name] == torch.float32
                yield Case("additive_attention", f"{mode} {dtype_name} B{B} Tq{Tq} Tk{Tk} H{H} Dv{Dv}",
                           {"mode": mode, "B": B, "Tq": Tq, "Tk": Tk, "H": H, "Dv": Dv}, (*able, *baselines),
                           baselines, make, dtype_name, B * Tq * Tk * H * (1 if mode == "forward" else 3),
                           "tanh_rate_exact" if exact else "tanh_rate_approx")


def plot(rows, path):
    """Time against Tk, forward+backward, each implementation; one line per (implementation, dtype)."""
    series = timing.series(
        rows, lambda r: r["mode"] == "forward+backward",
        lambda r: f"{r['dtype']} B{r['sizes']['B']} Tq{r['sizes']['Tq']} H{r['sizes']['H']} Dv{r['sizes']['Dv']}",
        lambda r: r["sizes"]["Tk"], lambda r, t: t["median_ms"])
    return timing.line_plot(series, path, "keys Tk", "forward+backward, ms",
                            "Additive attention (missing points: out of memory)", logy=True)
