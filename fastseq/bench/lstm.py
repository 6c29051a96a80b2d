"""LSTM layer benchmark (run by fastseq.bench.sweep): fastseq.nn.LSTM on each fused backend present, and as a user gets
it without choosing (the default backend, named in the row), against
torch.nn.LSTM (cuDNN on a GPU, ATen's CPU kernels on a CPU) with the same weights, inference forward and
training forward+backward; each figure also as a fraction of the measured matmul rate and bandwidth."""
from __future__ import annotations

import contextlib

import torch

import fastseq.nn
from fastseq import backends
from fastseq.ops import registry
from fastseq.ops.registry import declared

from . import timing
from .timing import DTYPES

# (mode, num_layers, hidden, seq, batch sizes, input size) per preset, declared with the op
PRESETS = declared()["lstm"].cases


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


def bench_case(device, dtype_name, mode, layers, hidden, seq, batch, input_size, fused_backends, ceilings):
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
    rows = []
    needs = ("lstm_layer",) if mode == "inference" else ("lstm_layer", "lstm_layer_backward")
    default = registry.chosen("lstm", device.type, needs, autograd=True)  # what a user gets without choosing
    able = [b for b in fused_backends if registry.declared()["lstm"].provides(b, needs, device.type)]
    for backend in [*able, f"default ({default})"]:
        # the baseline beside each backend, taking turns with it (timing.measure_together)
        context = (lambda: backends.use(backend)) if backend in able else contextlib.nullcontext
        try:
            with context():
                run(ours)()
        except backends.BackendUnavailableError as e:  # a backend whose plan refuses the case says why
            rows.append({"op": "lstm", "mode": mode, "dtype": dtype_name, "backend": backend,
                         "sizes": {"layers": layers, "hidden": hidden, "seq": seq, "batch": batch, "input": input_size},
                         "refused": str(e)})
            continue

        def ours_fn(fn=run(ours), context=context):
            with context():
                fn()
        timed = timing.measure_together({"torch": run(base), "ours": ours_fn}, device)
        baseline, t = timed["torch"], timed["ours"]
        seconds = t["median_ms"] * 1e-3
        rows.append({
            "op": "lstm", "mode": mode, "dtype": dtype_name, "backend": backend, "baseline": "torch.nn.LSTM",
            "sizes": {"layers": layers, "hidden": hidden, "seq": seq, "batch": batch, "input": input_size},
            **t,
            "baseline_median_ms": baseline["median_ms"], "baseline_p25_ms": baseline["p25_ms"],
            "baseline_p75_ms": baseline["p75_ms"],
            "speedup": baseline["median_ms"] / t["median_ms"],
            "call_speedup": baseline["call_median_ms"] / t["call_median_ms"],
            "baseline_call_median_ms": baseline["call_median_ms"],
            "flops": flops, "flop_rate": flops / seconds,
            **timing.fraction_of(flops / seconds, ceilings["matmul_flops"][dtype_name], "fraction_of_matmul_ceiling"),
            "bytes_floor": nbytes,
            **timing.fraction_of(nbytes / seconds, ceilings["copy_bandwidth"], "fraction_of_bandwidth"),
        })
    return rows


def cases(device, preset, dtype_names, fused_backends):
    """The preset's cases as pytest-benchmark runs them (fastseq.bench.cases.Case): torch.nn.LSTM, then
    fastseq.nn.LSTM on each backend that serves the case and as a user gets it ("default")."""
    from .cases import Case

    for mode, layers, hidden, seq, batches, input_size in PRESETS[preset]:
        needs = ("lstm_layer",) if mode == "inference" else ("lstm_layer", "lstm_layer_backward")
        able = [b for b in fused_backends if registry.declared()["lstm"].provides(b, needs, device.type)]
        for dtype_name in dtype_names:
            for batch in batches:
                def make(mode=mode, layers=layers, hidden=hidden, seq=seq, batch=batch, input_size=input_size,
                         dtype_name=dtype_name, able=tuple(able)):
                    dtype = DTYPES[dtype_name]
                    torch.manual_seed(0)
                    base = torch.nn.LSTM(input_size, hidden, layers).to(device, dtype)
                    ours = fastseq.nn.LSTM(input_size, hidden, layers).to(device, dtype)
                    ours.load_state_dict(base.state_dict())
                    x = torch.randn(seq, batch, input_size, device=device, dtype=dtype)
                    xg = x.clone().requires_grad_()

                    def call(module, context=contextlib.nullcontext):
                        def fn():
                            with context():
                                if mode == "inference":
                                    with torch.inference_mode():
                                        module(x)
                                else:
                                    y, (h, c) = module(xg)
                                    (y.float().sum() + h.float().sum() + c.float().sum()).backward()
                        return fn
                    impls = {"torch.nn.LSTM": call(base), "default": call(ours)}
                    impls.update({b: call(ours, lambda b=b: backends.use(b)) for b in able})
                    return impls
                yield Case("lstm", f"{mode} {dtype_name} L{layers} H{hidden} T{seq} B{batch} I{input_size}",
                           {"mode": mode, "layers": layers, "hidden": hidden, "seq": seq, "batch": batch,
                            "input": input_size}, ("default", *able, "torch.nn.LSTM"), ("torch.nn.LSTM",), make,
                           dtype_name, lstm_flops(mode, layers, hidden, seq, batch, input_size), "matmul_flops")


def plot(rows, path):
    series = {}
    for r in rows:
        if r["mode"] == "inference" and "speedup" in r:
            low, high = timing.quartile_values(lambda t, r=r: r["baseline_median_ms"] / t["median_ms"], r)
            series.setdefault(f"fastseq[{r['backend']}] {r['dtype']}", {})[r["sizes"]["batch"]] = (r["speedup"], low,
                                                                                                   high)
    return timing.line_plot(series, path, "batch size", "speed-up over torch.nn.LSTM",
                            "LSTM inference forward, 1 layer",
                            hline=1.0)


def run(device, preset, dtype_names, fused_backends, ceilings):
    """Every case of the preset; prints a line per result and returns the rows."""
    rows = []
    for mode, layers, hidden, seq, batches, input_size in PRESETS[preset]:
        for dtype_name in dtype_names:
            for batch in batches:
                for r in bench_case(device, dtype_name, mode, layers, hidden, seq, batch, input_size,
                                    fused_backends, ceilings):
                    rows.append(r)
                    if "refused" in r:
                        print(f"lstm {r['mode']:<9} {r['dtype']} L{layers} H{hidden} T{seq} B{batch:<4} "
                              f"{r['backend']:<6} refused: {r['refused']}", flush=True)
                        continue
                    print(f"lstm {r['mode']:<9} {r['dtype']} L{layers} H{hidden} T{seq} B{batch:<4} "
                          f"{r['backend']:<6} {r['median_ms']:9.3f} ms  torch {r['baseline_median_ms']:9.3f} ms  "
                          f"x{r['speedup']:.2f} (per call x{r['call_speedup']:.2f})  "
                          f"{r['fraction_of_matmul_ceiling']:.1%} of matmul, "
                          f"{r['fraction_of_bandwidth']:.1%} of bandwidth", flush=True)
    return rows
