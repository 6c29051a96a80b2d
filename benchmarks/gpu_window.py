"""The GPU window: the first command on a lent GPU machine, at most seven minutes, every minute evidence.

    FASTSEQ_COMMIT=<sha> python benchmarks/gpu_window.py [--out DIR] [--sections ...] [--dry-run]
                                                                                        (or: make gpu-window)

The extension comes prebuilt (`make gpu-prebuild`, carried in build/prebuilt) when it matches the machine's
torch and CUDA, else it is built there. Then five sections in this order, each in a process of its own with
a time budget (one that fails, or leaves the device unusable, does not stop the next), under one deadline:
    0 rates        the machine's ceilings: bf16 matmul, copy bandwidth, MUFU.TANH on float32 and bfloat16
                   pairs, tanh on the FMA units (two forms), a thread-block cluster's barrier (four kinds,
                   2 to 16 blocks), a grid-wide barrier
    1 new kernels  each kernel new since the last GPU run (NEW_KERNELS): its error against float64 first,
                   then its speed beside its baseline, GPU time and per-call time (the persistent LSTM
                   against cuDNN; the Triton attention against SDPA)
    2 autograd     the precision of torch's own CUDA backward against float64 beside fastseq's: the LSTM
                   (cuDNN, float32 with TF32 off, bfloat16) and SDPA (each backend); the verdicts go to
                   autograd.json, the evidence `--adopt` turns into Family.autograd entries for CUDA
    3 tests        the `cuda`-marked tests of the ops, modules and decoding
    4 headline     fastseq.bench.sweep's headline preset (both times), parity.py, generate_hf.py,
                   hf_attention.py (a GPT-2 on fastseq's attention against sdpa)
Every row is written as it is measured, so a section cut short keeps what it finished. Files in --out
(default $OUT, the device tool's folder; at most eight): log, window.json (meta, the sections and the rows
of 0 and 1), autograd.json, tests.junit.xml, headline.json, parity.json, generate-hf.json,
hf-attention.json.

With --dry-run (or no GPU) every section runs on this machine's CPU at toy sizes: the plumbing checked,
nothing measured that counts (the rows say so). After a window, `--adopt DIR` copies its autograd.json into
benchmarks/results/h200/ and records the passed verdicts in fastseq/ops/autograd_evidence.json.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PREBUILT = os.path.join(ROOT, "build", "prebuilt")
PY = sys.executable
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

DEADLINE_S = 7 * 60 - 20  # the whole window, the start and the copy back aside
# seconds each step may take at most; a section starts only while the deadline leaves it its minimum
BUDGETS = {"build": 200, "0": 40, "1": 100, "2": 45, "3": 100, "4": 110}
MINIMUM = {"build": 20, "0": 10, "1": 15, "2": 15, "3": 30, "4": 30}
SECTIONS = {"0": "rates", "1": "new kernels", "2": "autograd", "3": "tests", "4": "headline"}
TEST_FILES = ["tests/test_lstm_persistent.py", "tests/test_lstm.py", "tests/test_additive_attention.py",
              "tests/test_additive_passes.py", "tests/test_attention_decode.py",
              "tests/test_attention.py", "tests/test_attention_mask.py", "tests/test_host_traffic.py",
              "tests/test_strided_inputs.py",
              "tests/test_padded_values.py", "tests/test_backends.py", "tests/test_nn_lstm.py",
              "tests/test_nn_multihead_attention.py", "tests/test_generation.py", "tests/test_cuda_graph_decoding.py"]
BUILD_ENV = {"TORCH_CUDA_ARCH_LIST": "9.0a", "MAX_JOBS": "16"}


# ------------------------------------------------------------------------------------------ records

class Record:
    """A JSON file rewritten whole after every change (a run cut short keeps what was written)."""

    def __init__(self, path: str, payload: dict):
        self.path, self.payload = path, payload
        self.write()

    def write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.payload, f, indent=1, default=str)
        os.replace(tmp, self.path)

    def row(self, key: str, row: dict) -> dict:
        self.payload.setdefault(key, []).append(row)
        self.write()
        print(json.dumps(row, default=str)[:300], flush=True)
        return row


def meta(dry_run: bool) -> dict:
    import torch

    import fastseq

    info = fastseq.diagnostics.collect()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": os.environ.get("FASTSEQ_COMMIT") or _commit(), "dry_run": dry_run,
            "device": info["device"] or "cpu", "capability": info["capability"], "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "triton": info["triton"], "python": info["python"],
            "extension": info["extension"], "clocks": _clocks()}


def _commit() -> str:
    from fastseq.bench import timing

    return timing.commit()


def _clocks() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,power.draw",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _device(dry_run: bool):
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")


def _left(deadline: float) -> float:
    return deadline - time.time()


# ------------------------------------------------------------------------------------------ 0: rates

CLUSTER_SIZES = (2, 4, 8, 16)
CLUSTER_KINDS = ("sync", "sync_exchange", "relaxed", "fenced_exchange")
TANH_KINDS = ("mufu_f32", "mufu_bf16x2", "fma_exp", "fma_product")


def section_rates(record: Record, device, deadline: float) -> None:
    """The ceilings every later figure is a fraction of, measured on this device now."""
    import torch

    from fastseq.bench import tanh_rate, timing

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    record.row("rates", {"name": f"matmul {dtype}", "flop_per_s": timing.matmul_ceiling(device, dtype)})
    record.row("rates", {"name": "copy", "bytes_per_s": timing.copy_bandwidth(device)})
    if device.type == "cuda":
        record.row("rates", {"name": "tanh (Triton, tanh.approx.f32)", "per_s": tanh_rate.tanh_rate(device, True)})
    from fastseq import backends

    ext = backends.extension()
    if device.type != "cuda" or ext is None or not hasattr(ext, "probe_tanh_rate"):
        record.row("rates", {"name": "probes", "skipped": "need the CUDA build of fastseq._C on a GPU"})
        return
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for kind in TANH_KINDS:
        rate = ext.probe_tanh_rate(kind, 2048, 4)
        record.row("rates", {"name": f"tanh {kind}", "per_s": rate, "per_sm_per_ns": rate / sms / 1e9})
    for kind in CLUSTER_KINDS:
        for size in CLUSTER_SIZES:
            if _left(deadline) < 3:
                return
            try:
                ns = ext.probe_cluster_barrier_ns(size, kind, 20000)
                record.row("rates", {"name": f"cluster barrier {kind}", "cluster": size, "ns": ns})
            except RuntimeError as e:
                record.row("rates", {"name": f"cluster barrier {kind}", "cluster": size, "error": str(e)[:200]})
    record.row("rates", {"name": "grid barrier", "blocks": sms, "ns": ext.probe_grid_barrier_ns(5000)})


# ------------------------------------------------------------------------------------------ 1: new kernels

def _rel(out, ref) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not bool(out.isfinite().all()):
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def new_attention_triton(record: Record, device, deadline: float) -> None:
    """The Triton attention since the last window: the scale passed as two float32 halves (no device tensor
    per call) and attn_mask tiles; forward and backward against float64, odd sizes, every mask form; then
    the headline shape beside SDPA."""
    import torch
    import torch.nn.functional as F

    from fastseq import backends, ops
    from fastseq.bench import timing

    backend = "triton" if device.type == "cuda" else "reference"
    bound = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}
    cases = [(2, 4, 2, 77, 131, 64, {"causal": True}), (2, 4, 4, 64, 200, 128, {"lengths": [200, 37]}),
             (1, 8, 2, 33, 33, 64, {"attn_mask": "bias"}), (2, 2, 2, 50, 70, 128, {"attn_mask": "bool"})]
    for dtype in ((torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32,)):
        for B, Hq, Hkv, Tq, Tk, D, kind in cases:
            if _left(deadline) < 5:
                return
            q = torch.randn(B, Hq, Tq, D, dtype=torch.float64)
            k, v = torch.randn(B, Hkv, Tk, D, dtype=torch.float64), torch.randn(B, Hkv, Tk, D, dtype=torch.float64)
            kwargs = dict(kind)
            if kind.get("attn_mask") == "bias":
                kwargs["attn_mask"] = torch.randn(Tq, Tk, dtype=torch.float64)
            elif kind.get("attn_mask") == "bool":
                kwargs["attn_mask"] = torch.rand(B, 1, Tq, Tk) < 0.2
            grad = torch.randn(B, Hq, Tq, D, dtype=torch.float64)
            ref = _attention_grads(ops.attention, (q, k, v), kwargs, grad, "reference")
            ours = _attention_grads(ops.attention, tuple(t.to(device, dtype) for t in (q, k, v)),
                                    {n: (t.to(device) if isinstance(t, torch.Tensor) and t.dtype == torch.bool else
                                         t.to(device, dtype) if isinstance(t, torch.Tensor) else t)
                                     for n, t in kwargs.items()}, grad.to(device, dtype), backend)
            errors = {name: _rel(o, r) for name, o, r in zip(("out", "dq", "dk", "dv"), ours, ref)}
            record.row("new_kernels", {"kernel": f"attention[{backend}]", "dtype": str(dtype),
                                       "sizes": [B, Hq, Hkv, Tq, Tk, D], "case": str({n: str(v)[:20] for n, v in
                                                                                      kind.items()}),
                                       "errors": errors, "bound": bound[dtype],
                                       "ok": all(e <= bound[dtype] for e in errors.values())})
    if device.type != "cuda" or _left(deadline) < 15:
        return
    B, H, T, D = 4, 16, 4096, 128
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16) for _ in range(3))
    with torch.no_grad():
        timed = timing.measure_together({
            "triton": lambda: _with(backends.use("triton"), lambda: ops.attention(q, k, v, causal=True)),
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)}, device, min_seconds=0.2)
    record.row("new_kernels", {"kernel": "attention[triton] speed", "sizes": [B, H, T, D], "dtype": "bf16",
                               "causal": True, **{f"{n}_{key}": t[key] for n, t in timed.items()
                                                  for key in ("gpu_median_ms", "call_median_ms")},
                               **timing.speedups(timed["triton"], {"sdpa": timed["sdpa"]})})


def _with(context, fn):
    with context:
        return fn()


def _attention_grads(attention, qkv, kwargs, grad, backend):
    from fastseq import backends

    q, k, v = (t.detach().requires_grad_() for t in qkv)
    with backends.use(backend):
        out = attention(q, k, v, **kwargs)
        out.backward(grad)
    return out, q.grad, k.grad, v.grad


def _lstm_run(layer_args, grads, backend):
    """ops.lstm_layer on `backend` -> (y, h_n, c_n, and the six gradients when grads are given)."""
    from fastseq import backends, ops

    x, h0, c0, w_ih, w_hh, bias, lengths, reverse = layer_args
    params = [t.detach().requires_grad_(grads is not None) for t in (x, h0, c0, w_ih, w_hh, bias)]
    with backends.use(cuda=backend, cpu=backend):
        outs = ops.lstm_layer(*params, lengths=lengths, reverse=reverse)
    if grads is None:
        return outs
    import torch

    return (*outs, *torch.autograd.grad(outs, params, grads))


def new_persistent_lstm(record: Record, device, deadline: float) -> None:
    """The persistent LSTM layer (kernels/lstm_persistent.cu, the `cuda` backend's layer): forward and every
    gradient against float64 in bfloat16 and float16, ragged lengths, reverse, both exchanges (a cluster's
    shared memory and, forced, global memory), hidden 128 to 1024; then its speed beside torch.nn.LSTM on
    cuDNN in bfloat16 and in float16 (where torch takes cuDNN's own persistent kernel), inference at batch
    1/8/32/64/256 for hidden 256/512/1024, and 2-layer training at B64 T128."""
    import torch

    import fastseq.nn
    from fastseq import backends
    from fastseq.bench import timing

    backend = "cuda" if device.type == "cuda" else "reference"
    bound = {torch.bfloat16: 3e-2, torch.float16: 1e-2, torch.float32: 1e-5}
    cases = [(37, 5, 96, 256, [37, 30, 30, 12, 1], False, None), (37, 5, 96, 256, [37, 30, 30, 12, 1], True, None),
             (20, 33, 64, 512, None, False, None), (20, 33, 64, 512, None, False, "grid"),
             (11, 70, 40, 128, None, True, None), (9, 3, 32, 1024, [9, 5, 2], False, None),
             (9, 3, 32, 1024, [9, 5, 2], True, None)]
    for dtype in ((torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32,)):
        for T, B, I, H, lengths, reverse, exchange in cases:
            if _left(deadline) < 20:
                return
            if device.type != "cuda" and H > 256:
                continue
            g = torch.Generator().manual_seed(T * B + H)
            full = [torch.randn(*shape, generator=g, dtype=torch.float64) * scale for shape, scale in
                    (((T, B, I), 1.0), ((B, H), 0.5), ((B, H), 0.5), ((4 * H, I), I ** -0.5), ((4 * H, H), H ** -0.5),
                     ((4 * H,), 0.1))]  # torch.nn.LSTM's scale: no chaos to amplify rounding
            lens = None if lengths is None else torch.tensor(lengths)
            grads = [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((T, B, H), (B, H), (B, H))]
            ref = _lstm_run((*full, lens, reverse), grads, "reference")
            os.environ.pop("FASTSEQ_LSTM_EXCHANGE", None)
            if exchange:
                os.environ["FASTSEQ_LSTM_EXCHANGE"] = exchange
            try:
                got = _lstm_run((*(t.to(device, dtype) for t in full), lens, reverse),
                                [t.to(device, dtype) for t in grads], backend)
            finally:
                os.environ.pop("FASTSEQ_LSTM_EXCHANGE", None)
            names = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "dbias")
            errors = {n: _rel(a, b) for n, a, b in zip(names, got, ref)}
            record.row("new_kernels", {"kernel": f"lstm_layer[{backend}] persistent", "dtype": str(dtype),
                                       "sizes": [T, B, I, H], "case": {"lengths": lengths, "reverse": reverse,
                                                                       "exchange": exchange or "planned"},
                                       "errors": errors, "bound": bound[dtype],
                                       "ok": all(e <= bound[dtype] for e in errors.values())})
    if device.type != "cuda":
        return
    for dtype in (torch.bfloat16, torch.float16):
        for H in (512, 256, 1024):
            for B in (1, 8, 32, 64, 256):
                if _left(deadline) < 6:
                    return
                _lstm_speed(record, device, dtype, "inference", 1, H, 256, B)
        if _left(deadline) > 8:
            _lstm_speed(record, device, dtype, "training", 2, 512, 128, 64)
    del backends, fastseq, timing


def _lstm_speed(record, device, dtype, mode, layers, H, T, B):
    """fastseq.nn.LSTM on its persistent `cuda` layer beside torch.nn.LSTM (cuDNN), taking turns."""
    import torch

    import fastseq.nn
    from fastseq import backends
    from fastseq.bench import timing

    base = torch.nn.LSTM(H, H, layers).to(device, dtype)
    ours = fastseq.nn.LSTM(H, H, layers).to(device, dtype)
    ours.load_state_dict(base.state_dict())
    x = torch.randn(T, B, H, device=device, dtype=dtype, requires_grad=mode == "training")

    def run(module, backend=None):
        def fn():
            with backends.use(cuda=backend) if backend else _nothing():
                if mode == "inference":
                    with torch.no_grad():
                        module(x)
                else:
                    y, (h, c) = module(x)
                    (y.float().sum() + h.float().sum() + c.float().sum()).backward()
        return fn
    timed = timing.measure_together({"persistent": run(ours, "cuda"), "cudnn": run(base)}, device, min_seconds=0.1,
                                    min_reps=5)
    record.row("new_kernels", {"kernel": "lstm_layer[cuda] persistent speed", "mode": mode, "dtype": str(dtype),
                               "sizes": {"layers": layers, "hidden": H, "seq": T, "batch": B},
                               **{f"{n}_{key}": t[key] for n, t in timed.items()
                                  for key in ("gpu_median_ms", "call_median_ms")},
                               "gpu_us_per_step": timed["persistent"]["gpu_median_ms"] * 1e3 / T / layers,
                               **timing.speedups(timed["persistent"], {"cudnn": timed["cudnn"]})})


# (module, its variants): the FMA share of H and the scores pass's tile, set on the backend module for a run
ADDITIVE_SHARES = (0.0, 0.25, 0.5)
ADDITIVE_TILES = {"reference": (None,), "cuda": (0, 1),
                  "triton": ({"BLOCK_Q": 64, "BLOCK_K": 64, "BLOCK_H": 4, "num_warps": 4},
                             {"BLOCK_Q": 32, "BLOCK_K": 128, "BLOCK_H": 4, "num_warps": 4})}


def _additive_variant(backend: str, share: float, tile):
    """A context in which `backend`'s additive attention takes FMA share `share` (16-bit inputs) and `tile`."""
    import contextlib

    from fastseq.ops.additive_attention import cuda as cuda_module
    from fastseq.ops.additive_attention import triton as triton_module

    @contextlib.contextmanager
    def run():
        module = cuda_module if backend == "cuda" else triton_module
        saved = dict(module.FMA_SHARE), (module.tile_for if backend == "cuda" else dict(module.SCORES))
        module.FMA_SHARE[2] = share
        if backend == "cuda":
            module.tile_for = lambda Tq: tile
        else:
            module.SCORES.update(tile)
        try:
            yield
        finally:
            module.FMA_SHARE.update(saved[0])
            if backend == "cuda":
                module.tile_for = saved[1]
            else:
                module.SCORES.clear()
                module.SCORES.update(saved[1])
    return run()


def _additive_grads(args, lengths, mask, grad, backend, variant=None):
    from fastseq import backends, ops

    params = [t.detach().requires_grad_() for t in args]
    with backends.use(cuda=backend, cpu=backend), (variant or _nothing()):
        out = ops.additive_attention(*params, lengths=lengths, key_padding_mask=mask)
        out.backward(grad)
    return (out, *(p.grad for p in params))


def new_additive_passes(record: Record, device, deadline: float) -> None:
    """Additive attention's two tanh passes (kernels/additive_passes.cu, the Triton ones): context and every
    gradient against float64, both backends, MUFU only and with a share of H on the FMA units, both tiles,
    odd sizes with lengths and a mask, in bfloat16 (float16: the default variant); then at the two headline
    shapes in bfloat16,
    forward+backward, each variant beside the naive form (B, Tq, Tk, H) in one run: GPU time, per-call time,
    peak memory, and the floor of two tanh an element at the rate measured now."""
    import torch

    from fastseq.bench import timing
    from fastseq.ops.additive_attention.reference import naive

    gpu = device.type == "cuda"
    names = ("context", "dq", "dk", "dv", "dvalues")
    bound = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}
    cases = [(3, 37, 70, 136, 24, [70, 41, 1], True), (2, 130, 300, 64, 40, None, False),
             (2, 5, 600, 512, 512, [600, 77], False)]
    for dtype in ((torch.bfloat16, torch.float16) if gpu else (torch.float32,)):
        for B, Tq, Tk, H, Dv, lengths, masked in cases:
            if _left(deadline) < 20:
                return
            g = torch.Generator().manual_seed(B * Tq + Tk)
            full = [torch.randn(*shape, generator=g, dtype=torch.float64) * sc for shape, sc in
                    (((B, Tq, H), 1.0), ((B, Tk, H), 1.0), ((H,), H ** -0.5), ((B, Tk, Dv), 1.0))]
            lens = None if lengths is None else torch.tensor(lengths, device=device)
            mask = (torch.rand(B, Tk, generator=g) < 0.2).to(device) if masked else None
            grad = torch.randn(B, Tq, Dv, generator=g, dtype=torch.float64)
            ref = _additive_grads([t.to(device) for t in full], lens, mask, grad.to(device), "reference")
            for backend in (("cuda", "triton") if gpu else ("reference",)):  # a dry run: the plumbing only
                full_sweep = gpu and dtype == torch.bfloat16  # float16: the default variant only
                for share in ADDITIVE_SHARES if full_sweep else (0.0,):
                    for tile in ADDITIVE_TILES[backend] if full_sweep else ADDITIVE_TILES[backend][:1]:
                        variant = _additive_variant(backend, share, tile) if gpu else None
                        got = _additive_grads([t.to(device, dtype) for t in full], lens, mask, grad.to(device, dtype),
                                              backend, variant)
                        errors = {n: _rel(a, b) for n, a, b in zip(names, got, ref)}
                        record.row("new_kernels", {"kernel": f"additive_attention[{backend}] passes",
                                                   "dtype": str(dtype), "sizes": [B, Tq, Tk, H, Dv],
                                                   "fma_share": share, "tile": tile, "errors": errors,
                                                   "bound": bound[dtype],
                                                   "ok": all(e <= bound[dtype] for e in errors.values())})
    if not gpu:
        return
    from fastseq import backends as fastseq_backends

    ext = fastseq_backends.extension()
    for B, Tq, Tk, H, Dv in ((64, 256, 256, 512, 512), (16, 64, 16384, 512, 256)):
        if _left(deadline) < 15:
            return
        args = [torch.randn(*shape, device=device, dtype=torch.bfloat16) for shape in
                ((B, Tq, H), (B, Tk, H), (H,), (B, Tk, Dv))]
        args[2] *= H ** -0.5
        grad = torch.randn(B, Tq, Dv, device=device, dtype=torch.bfloat16)
        params = [t.requires_grad_() for t in args]

        def naive_step():
            out, _ = naive(*params)
            out.backward(grad)

        def fused(backend, share, tile):
            def step():
                _additive_grads(params, None, None, grad, backend, _additive_variant(backend, share, tile))
            return step
        variants = {f"{b} share{share} tile{i}": fused(b, share, tile) for b in ("cuda", "triton")
                    for share in ADDITIVE_SHARES for i, tile in enumerate(ADDITIVE_TILES[b])}
        peak = {}
        for name, fn in {"naive": naive_step, **variants}.items():
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize(device)
            peak[name] = torch.cuda.max_memory_allocated(device) - base
        timed = timing.measure_together({"naive": naive_step, **variants}, device, min_reps=3, min_seconds=0.05)
        rate = ext.probe_tanh_rate("mufu_f32", 2048, 4) if ext is not None and hasattr(ext, "probe_tanh_rate") else None
        floor_ms = 2 * B * Tq * Tk * H / rate * 1e3 if rate else None
        for name in variants:
            t = timed[name]
            record.row("new_kernels", {"kernel": f"additive_attention[{name}] speed", "dtype": "bf16",
                                       "sizes": [B, Tq, Tk, H, Dv], "mode": "forward+backward",
                                       "gpu_median_ms": t["gpu_median_ms"], "call_median_ms": t["call_median_ms"],
                                       "naive_gpu_median_ms": timed["naive"]["gpu_median_ms"],
                                       "peak_bytes": peak[name], "naive_peak_bytes": peak["naive"],
                                       "memory_vs_naive": peak[name] / max(1, peak["naive"]),
                                       "two_tanh_floor_ms": floor_ms, "tanh_per_s": rate,
                                       "fraction_of_floor": floor_ms / t["gpu_median_ms"] if floor_ms else None,
                                       **timing.speedups(t, {"naive": timed["naive"]})})


DECODE_SPEED_CASES = ((1, 16384), (64, 2048), (8, 512))  # (B, Tk) at Hq32 Hkv8 D128 bf16, ragged lengths


def new_decode_balanced(record: Record, device, deadline: float) -> None:
    """Decoding attention on the balanced split-KV plan (triton_decode.py): the output against float64 at odd
    sizes (lengths 0, ragged, full, a mask, a batch past one plan block), a CUDA-graph replay against the
    eager call on a static cache; then GPU and per-call time at DECODE_SPEED_CASES beside SDPA's cuDNN and
    flash backends with and without a mask, and the fraction of the copy bandwidth its real keys' bytes take."""
    import torch
    import torch.nn.functional as F

    from fastseq import backends
    from fastseq.bench import timing
    from fastseq.ops.attention import attention_decode
    from fastseq.ops.attention.reference import attention_decode as reference_decode

    gpu = device.type == "cuda"
    backend = "triton" if gpu else "reference"
    bound = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-5}
    cases = [(3, 4, 2, 70, 64, "ragged"), (1, 32, 8, 5000, 128, "full"), (5, 6, 3, 333, 80, "zeros"),
             (2, 8, 8, 1000, 128, "mask"), (1100, 2, 1, 40, 64, "ragged")]
    for dtype in ((torch.bfloat16, torch.float16) if gpu else (torch.float32,)):
        for B, Hq, Hkv, T, D, kind in cases:
            if _left(deadline) < 10:
                return
            g = torch.Generator().manual_seed(B + T)
            q, k, v = (torch.randn(*s, generator=g, dtype=torch.float64) for s in
                       ((B, Hq, D), (B, Hkv, T, D), (B, Hkv, T, D)))
            lengths = {"ragged": torch.randint(0, T + 1, (B,), generator=g, dtype=torch.int32),
                       "zeros": torch.zeros(B, dtype=torch.int32)}.get(kind)
            mask = torch.rand(B, T, generator=g) < 0.3 if kind == "mask" else None
            ref = reference_decode(q, k, v, lengths, mask, D ** -0.5)
            with backends.use(backend), torch.no_grad():
                out = attention_decode(*(t.to(device, dtype) for t in (q, k, v)),
                                       lengths=None if lengths is None else lengths.to(device),
                                       key_padding_mask=None if mask is None else mask.to(device))
            error = _rel(out, ref)
            record.row("new_kernels", {"kernel": f"attention_decode[{backend}] balanced", "dtype": str(dtype),
                                       "sizes": [B, Hq, Hkv, T, D], "case": kind, "error": error,
                                       "bound": bound[dtype], "ok": error <= bound[dtype]})
    if not gpu:
        return
    from fastseq.nn import KVCache

    cache = KVCache(4, 8, 128, 1024, dtype=torch.bfloat16, device=device)
    cache.make_static()
    cache.k.normal_(), cache.v.normal_(), cache.lengths.copy_(torch.tensor([1024, 1, 500, 0], device=device))
    q = torch.randn(4, 32, 128, device=device, dtype=torch.bfloat16)
    with backends.use("triton"), torch.no_grad():
        eager = cache.attend(q)
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            cache.attend(q)
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.cuda.graph(graph):
            captured = cache.attend(q)
        graph.replay()
        torch.cuda.synchronize(device)
    record.row("new_kernels", {"kernel": "attention_decode[triton] graph replay", "sizes": [4, 32, 8, 1024, 128],
                               "max_diff": float((captured.float() - eager.float()).abs().max()),
                               "ok": bool(torch.equal(captured, eager))})
    bandwidth = timing.copy_bandwidth(device)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for B, T in DECODE_SPEED_CASES:
        if _left(deadline) < 15:
            return
        Hq, Hkv, D = 32, 8, 128
        k, v = (torch.randn(B, Hkv, T, D, device=device, dtype=torch.bfloat16) for _ in range(2))
        q = torch.randn(B, Hq, D, device=device, dtype=torch.bfloat16)
        lengths = torch.randint(T // 2, T + 1, (B,), device=device, dtype=torch.int32)
        lengths[0] = T
        blocked = torch.arange(T, device=device)[None, :] >= lengths[:, None]
        keep = (~blocked)[:, None, None, :]
        fns = {"triton": lambda: _with(backends.use("triton"), lambda: attention_decode(q, k, v, lengths=lengths))}
        for name, kernel in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            for masked in (False, True):
                def sdpa(kernel=kernel, masked=masked):
                    with sdpa_kernel(kernel):
                        return F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=keep if masked else None,
                                                              enable_gqa=True)
                try:
                    with torch.no_grad():
                        sdpa()
                    fns[f"sdpa_{name}{'_mask' if masked else ''}"] = sdpa
                except RuntimeError as e:
                    record.row("new_kernels", {"kernel": f"sdpa_{name} decode", "sizes": [B, T], "masked": masked,
                                               "unavailable": str(e)[:200]})
        with torch.no_grad():
            timed = timing.measure_together(fns, device, min_reps=5, min_seconds=0.05)
        real_bytes = int(lengths.sum()) * Hkv * D * 2 * 2  # the keys and values the lengths hold
        fastest = min((t["gpu_median_ms"], n) for n, t in timed.items() if n != "triton")
        for name, t in timed.items():
            record.row("new_kernels", {"kernel": f"attention_decode[{name}] speed", "dtype": "bf16",
                                       "sizes": [B, Hq, Hkv, T, D], "lengths": "ragged, T/2..T",
                                       "gpu_median_ms": t["gpu_median_ms"], "call_median_ms": t["call_median_ms"],
                                       "bandwidth_fraction": real_bytes / (t["gpu_median_ms"] * 1e-3) / bandwidth,
                                       "copy_bytes_per_s": bandwidth,
                                       "vs_fastest_sdpa": fastest[0] / t["gpu_median_ms"],
                                       "fastest_sdpa": fastest[1]})


def _nothing():
    import contextlib

    return contextlib.nullcontext()


# Each kernel new since the last GPU run: (name, function(record, device, deadline)) — correctness first.
NEW_KERNELS: list[tuple[str, Callable]] = [("LSTM layer (CUDA): persistent, W_hh in registers", new_persistent_lstm),
                                           ("additive attention: two tanh passes, FMA share", new_additive_passes),
                                           ("decoding attention (Triton): balanced split-KV", new_decode_balanced),
                                           ("attention (Triton): scale halves, attn_mask", new_attention_triton)]


def section_new_kernels(record: Record, device, deadline: float) -> None:
    for name, check in NEW_KERNELS:
        if _left(deadline) < 5:
            record.row("new_kernels", {"kernel": name, "skipped": "the section's time ran out"})
            continue
        try:
            check(record, device, deadline)
        except Exception as e:  # noqa: BLE001 - the next kernel still gets its check
            record.row("new_kernels", {"kernel": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})


# ------------------------------------------------------------------------------------------ 2: autograd

# The norm-relative error torch's CUDA backward may have against float64 for the chooser to let it train
# on CUDA: float32 with TF32 off, as float32 arithmetic; the 16-bit types, their rounding carried through a
# recurrence or a softmax. It must also stay within twice fastseq's own backward's error.
AUTOGRAD_BOUND = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}


def _verdict(torch_errors: dict, ours_errors: dict | None, dtype: str) -> bool:
    worst = max(torch_errors.values())
    limit = AUTOGRAD_BOUND[dtype] if ours_errors is None else max(AUTOGRAD_BOUND[dtype], 2 * max(ours_errors.values()))
    return worst == worst and worst <= limit  # NaN fails


def _lstm_grads(module, x, grad_y, device, dtype):

    m = module.to(device, dtype)
    xi = x.detach().to(device, dtype).requires_grad_()
    y, _ = m(xi)
    y.backward(grad_y.to(device, dtype))
    return {"y": y, "dx": xi.grad, **{f"d{name}": p.grad for name, p in m.named_parameters()}}


def autograd_lstm(record: Record, device, deadline: float) -> None:
    import copy

    import torch

    import fastseq.nn
    from fastseq import backends

    T, B, I, H, layers = 64, 8, 256, 256, 2
    base = torch.nn.LSTM(I, H, layers).double()
    x, grad_y = torch.randn(T, B, I, dtype=torch.float64), torch.randn(T, B, H, dtype=torch.float64)
    ref = _lstm_grads(copy.deepcopy(base), x, grad_y, torch.device("cpu"), torch.float64)
    for dtype in ((torch.float32, torch.bfloat16) if device.type == "cuda" else (torch.float32,)):
        if _left(deadline) < 5:
            return
        name = str(dtype).split(".")[1]
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            theirs = _lstm_grads(copy.deepcopy(base), x, grad_y, device, dtype)
            ours_module = fastseq.nn.LSTM(I, H, layers)
            ours_module.load_state_dict(base.state_dict())
            with backends.use(cuda="cuda", cpu="cpu"):
                ours = _lstm_grads(ours_module, x, grad_y, device, dtype) if backends.availability(
                    "cuda" if device.type == "cuda" else "cpu", device.type)[0] else None
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch_errors = {k: _rel(theirs[k], ref[k]) for k in ref}
        ours_errors = None if ours is None else {k: _rel(ours[k], ref[k]) for k in ref}
        record.row("autograd", {"family": "lstm", "torch": "cuDNN" if device.type == "cuda" else "ATen", "dtype": name,
                                "sizes": {"T": T, "B": B, "I": I, "H": H, "layers": layers},
                                "torch_errors": torch_errors, "fastseq_errors": ours_errors,
                                "bound": AUTOGRAD_BOUND[name], "ok": _verdict(torch_errors, ours_errors, name)})


def autograd_sdpa(record: Record, device, deadline: float) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fastseq import backends, ops

    B, H, T, D = 2, 8, 384, 64
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    grad = torch.randn(B, H, T, D, dtype=torch.float64)
    for causal in (False, True):
        ref = _attention_grads(ops.attention, (q, k, v), {"causal": causal}, grad, "reference")
        for dtype in ((torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32,)):
            name = str(dtype).split(".")[1]
            ours = None
            if device.type == "cuda":
                ours = _attention_grads(ops.attention, tuple(t.to(device, dtype) for t in (q, k, v)),
                                        {"causal": causal}, grad.to(device, dtype), "triton")
            ours_errors = None if ours is None else {n: _rel(o, r) for n, o, r in zip(("out", "dq", "dk", "dv"),
                                                                                      ours, ref)}
            kinds = (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                     ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH))
            for label, kind in kinds if device.type == "cuda" else kinds[-1:]:
                if _left(deadline) < 3:
                    return
                qi, ki, vi = (t.to(device, dtype).requires_grad_() for t in (q, k, v))
                try:
                    with sdpa_kernel(kind):
                        out = F.scaled_dot_product_attention(qi, ki, vi, is_causal=causal)
                    out.backward(grad.to(device, dtype))
                except RuntimeError as e:  # a backend that does not serve the dtype says so
                    record.row("autograd", {"family": "attention", "torch": f"sdpa-{label}", "dtype": name,
                                            "causal": causal, "unsupported": str(e).splitlines()[0][:160]})
                    continue
                torch_errors = {n: _rel(o, r) for n, o, r in zip(("out", "dq", "dk", "dv"),
                                                                 (out, qi.grad, ki.grad, vi.grad), ref)}
                record.row("autograd", {"family": "attention", "torch": f"sdpa-{label}", "dtype": name,
                                        "causal": causal, "sizes": [B, H, T, D], "torch_errors": torch_errors,
                                        "fastseq_errors": ours_errors, "bound": AUTOGRAD_BOUND[name],
                                        "ok": _verdict(torch_errors, ours_errors, name)})
    del backends


def autograd_verdicts(rows: list[dict], device_type: str) -> dict:
    """Per family, whether torch's backward passed on every dtype checked: for lstm, cuDNN's; for attention,
    SDPA as torch picks its backend — every backend that served the case must have passed."""
    out: dict = {}
    for family in ("lstm", "attention"):
        checked = [r for r in rows if r.get("family") == family and "ok" in r]
        if checked:
            out[family] = {device_type: {"ok": all(r["ok"] for r in checked),
                                         "dtypes": sorted({r["dtype"] for r in checked}),
                                         "failed": [f"{r['torch']} {r['dtype']}" for r in checked if not r["ok"]]}}
    return out


def section_autograd(record: Record, device, deadline: float) -> None:
    for check in (autograd_lstm, autograd_sdpa):
        try:
            check(record, device, deadline)
        except Exception as e:  # noqa: BLE001
            record.row("autograd", {"check": check.__name__, "error": f"{type(e).__name__}: {str(e)[:300]}"})
    record.payload["verdicts"] = autograd_verdicts(record.payload.get("autograd", []), device.type)
    record.write()


# ------------------------------------------------------------------------------------------ the window

def _section_main(args) -> int:
    """One section in this process: its rows go to --out/section-<n>.json (autograd: autograd.json)."""
    device = _device(args.dry_run)
    deadline = time.time() + float(args.budget)
    name = "autograd.json" if args.section == "2" else f"section-{args.section}.json"
    record = Record(os.path.join(args.out, name), {"meta": meta(args.dry_run), "section": SECTIONS[args.section]})
    {"0": section_rates, "1": section_new_kernels, "2": section_autograd}[args.section](record, device, deadline)
    return 0


class Window:
    """The steps of one window: each one's command, status and time, its output in the log, the summary
    in window.json after every step."""

    def __init__(self, out: str, dry_run: bool, deadline_s: float = DEADLINE_S):
        self.out, self.dry_run, self.start = out, dry_run, time.time()
        self.deadline = self.start + deadline_s
        self.log = open(os.path.join(out, "log"), "a", buffering=1)
        self.summary = Record(os.path.join(out, "window.json"), {"meta": meta(dry_run), "steps": []})

    def step(self, name: str, command: list[str] | None, env: dict | None = None, note: str = "",
             budget: float | None = None) -> bool:
        """Runs `command` within `budget` seconds (default BUDGETS[its section]) and the window's deadline."""
        section = name.split(":")[0]
        left = _left(self.deadline)
        budget = min(BUDGETS.get(section, left) if budget is None else budget, left)
        minimum = MINIMUM.get(section, 10)
        header = f"== {name} ({SECTIONS.get(section, section)}): {note or ' '.join(command or [])}"
        print(header, flush=True)
        self.log.write(header + "\n")
        if command is None or left < minimum:
            status = "skipped" if command is None else f"skipped: {left:.0f} s left of the window"
            self.summary.payload["steps"].append({"step": name, "status": status, "seconds": 0.0, "note": note})
            self.summary.write()
            return command is None
        t0 = time.monotonic()
        try:
            proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1",
                                                          **(env or {})},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=budget)
            output, status = proc.stdout, "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired as e:
            output = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
            status = f"timeout {budget:.0f} s"
        seconds = time.monotonic() - t0
        self.log.write(output)
        print("\n".join(output.splitlines()[-12:]), flush=True)
        print(f"-- {name}: {status} in {seconds:.0f} s", flush=True)
        self.summary.payload["steps"].append({"step": name, "status": status, "seconds": round(seconds, 1),
                                              "note": note})
        self.summary.write()
        return status == "ok"

    def merge(self, section: str) -> None:
        """A section's rows into window.json (its own file removed: the folder stays within eight files)."""
        path = os.path.join(self.out, f"section-{section}.json")
        if os.path.exists(path):
            with open(path) as f:
                rows = json.load(f)
            for key, value in rows.items():
                if key not in ("meta", "section"):
                    self.summary.payload[key] = value
            self.summary.write()
            os.remove(path)


def prebuilt_library() -> str | None:
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    found = glob.glob(os.path.join(PREBUILT, f"_C.{tag}-*.so"))
    return found[0] if found else None


CHECK_BUILD = """
import json, torch, fastseq._C as C
info = C.build_info()
print(json.dumps(info))
cuda_major = int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None
assert info["torch_version"] == torch.__version__.split("+")[0], (info, torch.__version__)
assert info["with_cuda"] and info["cuda_runtime"] // 1000 == cuda_major, (info, torch.version.cuda)
"""


def build(window: Window, gpu: bool) -> None:
    """The prebuilt extension when it loads and names this torch and CUDA; else pip install, offline."""
    library = prebuilt_library()
    if library is not None and gpu:
        target = os.path.join(ROOT, "fastseq", os.path.basename(library))
        shutil.copy2(library, target)
        if window.step("build", [PY, "-c", CHECK_BUILD], note=f"prebuilt {os.path.relpath(library, ROOT)}"):
            return
        os.remove(target)
    pip = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "--no-deps", "-e", "."]
    window.step("build", pip if gpu else None, env=BUILD_ENV, note="" if gpu else "no GPU: the installed build")


def sections_plan(window: Window, sections: list[str], gpu: bool) -> None:
    out = window.out
    own = [PY, os.path.abspath(__file__), "--out", out] + ([] if gpu else ["--dry-run"])
    for section in sections:
        budget = min(BUDGETS[section], max(_left(window.deadline), 0))
        if section in ("0", "1", "2"):
            window.step(section, own + ["--section", section, "--budget", f"{max(budget - 5, 1):.0f}"])
            window.merge(section)
        elif section == "3":
            tests = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda or extension", "-rfE",
                     f"--junitxml={os.path.join(out, 'tests.junit.xml')}", *TEST_FILES]
            window.step("3", tests + (["-n", "8", "--timeout", "120"] if gpu else ["--collect-only"]),
                        env={"FASTSEQ_AUTOTUNE": "0"})
        elif section == "4":
            headline(window, gpu)


def headline(window: Window, gpu: bool) -> None:
    """The headline sweep, parity and generation, each a script of its own writing its JSON as it goes."""
    out = window.out
    preset = "headline" if gpu else "quick"
    commands = [
        ["sweep", PY, "-m", "fastseq.bench.sweep", "--preset", preset, "--dtypes", "bf16" if gpu else "fp32",
         "--ops", "lstm", "additive_attention", "attention", "--json", os.path.join(out, "headline.json")],
        ["parity", PY, "benchmarks/parity.py", "--preset", preset, "--json", os.path.join(out, "parity.json")],
        ["generate", PY, "benchmarks/generate_hf.py", "--batches", *(("1", "8", "64") if gpu else ("1",)),
         "--repeats", "1",
         "--json", os.path.join(out, "generate-hf.json")] + ([] if gpu else ["--size", "tiny", "--new", "4"]),
        ["hf-attention", PY, "benchmarks/hf_attention.py", "--repeats", "3",
         "--json", os.path.join(out, "hf-attention.json")] + ([] if gpu else ["--size", "tiny", "--new", "4"]),
    ]
    start, budget = time.monotonic(), min(BUDGETS["4"], _left(window.deadline))
    for share, (name, *command) in zip((0.4, 0.25, 0.2, 0.15), commands):
        left = budget - (time.monotonic() - start)
        window.step(f"4:{name}", command, budget=min(left, max(share * budget, MINIMUM["4"])))


def table(window: Window) -> str:
    """The summary printed last: each step, then the figures that answer the window's questions."""
    p = window.summary.payload
    lines = ["", f"{'step':<12} {'status':<34} {'seconds':>8}"]
    lines += [f"{s['step']:<12} {s['status'][:34]:<34} {s['seconds']:8.0f}" for s in p["steps"]]
    for r in p.get("rates", []):
        value = next((f"{k} {v:.4g}" for k, v in r.items() if k not in ("name",) and isinstance(v, (int, float))), "")
        lines.append(f"rate   {r['name']:<34} {value} {r.get('skipped', '') or r.get('error', '')}")
    for r in p.get("new_kernels", []):
        lines.append(f"new    {r['kernel']:<34} {r.get('dtype', '')} {r.get('sizes', '')} "
                     f"{'ok' if r.get('ok') else r.get('errors') or r.get('error') or ''}"[:160])
    path = os.path.join(window.out, "autograd.json")
    if os.path.exists(path):
        with open(path) as f:
            lines.append(f"autograd verdicts: {json.load(f).get('verdicts')}")
    return "\n".join(lines + headline_lines(os.path.join(window.out, "headline.json")))


def headline_lines(path: str) -> list[str]:
    """A line per headline row: the case, the device's time and the per-call time, each with its ratio to
    the fastest baseline (or to torch.nn.LSTM)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        results = json.load(f).get("results", {})
    lines = ["", f"{'case':<78} {'gpu ms':>9} {'x':>6} {'call ms':>9} {'x':>6}"]
    for op, rows in results.items():
        for r in rows:
            sizes = ",".join(f"{k}{v}" for k, v in r["sizes"].items() if not isinstance(v, list))
            case = f"{op} {r.get('case', '')} {r['mode']} {r['dtype']} {sizes} [{r['backend']}]"[:78]
            if "median_ms" not in r:
                lines.append(f"{case:<78} {'n/a':>9} {r.get('refused', '')[:60]}")
                continue
            ratio = r.get("speedup_vs_fastest_baseline", r.get("speedup", float("nan")))
            call = r.get("call_speedup_vs_fastest_baseline", r.get("call_speedup", float("nan")))
            lines.append(f"{case:<78} {r['median_ms']:9.3f} {ratio:6.2f} {r.get('call_median_ms', float('nan')):9.3f} "
                         f"{call:6.2f}")
    return lines


def adopt(folder: str) -> int:
    """Copy a window's autograd.json into benchmarks/results/h200/ and record its passed verdicts (CUDA, not
    a dry run) in fastseq/ops/autograd_evidence.json, naming the file."""
    with open(os.path.join(folder, "autograd.json")) as f:
        data = json.load(f)
    if data["meta"].get("dry_run") or data["meta"].get("device") in (None, "cpu"):
        print("adopt: this autograd.json comes from a dry run or a CPU; nothing adopted")
        return 1
    name = f"gpu-window-{data['meta']['date'][:10]}-{data['meta']['commit'][:7]}-autograd.json"
    target = os.path.join(HERE, "results", "h200", name)
    shutil.copy2(os.path.join(folder, "autograd.json"), target)
    from fastseq.ops import evidence

    recorded = evidence.record(data["verdicts"], os.path.relpath(target, ROOT))
    print(f"adopt: {target}; torch's autograd now verified for {recorded}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu-window"))
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=sorted(SECTIONS))
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at toy sizes")
    parser.add_argument("--section", choices=sorted(SECTIONS), help=argparse.SUPPRESS)  # one section, in-process
    parser.add_argument("--budget", default="30", help=argparse.SUPPRESS)
    parser.add_argument("--adopt", default=None, help="a window's output folder: adopt its autograd verdicts")
    args = parser.parse_args(argv)
    if args.adopt:
        return adopt(args.adopt)
    os.makedirs(args.out, exist_ok=True)
    if args.section is not None:
        return _section_main(args)
    import torch

    gpu = torch.cuda.is_available() and not args.dry_run
    window = Window(args.out, dry_run=not gpu)
    build(window, gpu)
    sections_plan(window, args.sections, gpu)
    summary = table(window)
    print(summary)
    window.log.write(summary + "\n")
    window.log.close()
    return 0 if all(s["status"].startswith(("ok", "skipped")) for s in window.summary.payload["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
