"""Multi-head attention benchmark (run by fastseq.bench.sweep): fastseq's attention op on each backend present against
every torch scaled_dot_product_attention backend that runs the case (flash, memory-efficient, cuDNN,
math), forward and forward+backward, causal and not, in TFLOP/s and as a fraction of the measured matmul
ceiling; the same with a (T, T) float bias and a (B, 1, T, T) bool block mask, SDPA given the same mask;
padded seq2seq batches (fastseq.nn.MultiheadAttention with lengths against
torch.nn.MultiheadAttention with key_padding_mask); decoding one token against a KV cache
(fastseq.ops.attention_decode against SDPA on the same cache), in GB/s and as a fraction of the measured
copy bandwidth.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastseq import backends, ops
from fastseq import nn as fnn
from fastseq.ops.registry import declared

from . import timing
from .timing import DTYPES

# "sdpa": torch's own pick among its backends (what a user calling it gets); the rest forced one by one
SDPA = {"sdpa": None, "sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}
ON_CPU = ("sdpa", "sdpa-math")  # the SDPA baselines that run on a CPU


def _sdpa_backend(impl):
    """The context that makes SDPA run `impl`'s backend (none for torch's own pick)."""
    return contextlib.nullcontext() if SDPA[impl] is None else sdpa_kernel(SDPA[impl])
# training: (B, H, T, D), B·H filling the GPU at each T; seq2seq: (B, E, heads, max_len);
# decode: (B, Hq, Hkv, T, D), grouped heads as decoders use them
PRESETS = declared()["attention"].cases  # "train" and "seq2seq" cases per preset, declared with the op
DECODE = declared()["attention_decode"].cases  # (B, Hq, Hkv, T, D) per preset
MODES = ("forward", "forward+backward")


def _run_measure(fn, device):
    try:
        return timing.measure(fn, device)
    except RuntimeError as e:  # an SDPA backend that does not serve the case says so
        return {"unsupported": str(e).splitlines()[0][:200]}


def _train_callable(impl, mode, q, k, v, causal):
    def attend():
        if impl in SDPA:
            with _sdpa_backend(impl):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        with backends.use(impl):
            return ops.attention(q, k, v, causal=causal)
    return _step(attend, mode, q)


def _step(attend, mode, q):
    """A forward without a gradient, or a forward and backward."""
    if mode == "forward":
        def fn():
            with torch.no_grad():
                attend()
        return fn
    grad = torch.randn_like(q)

    def fn():
        attend().backward(grad)
    return fn


def _train(device, cases, dtype_name, fused, ceilings):
    dtype = DTYPES[dtype_name]
    rows = []
    for B, H, T, D in cases["train"]:
        q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        for causal in (False, True):
            for mode in MODES:
                flops = 4 * B * H * T * T * D * (0.5 if causal else 1.0) * (1.0 if mode == "forward" else 3.5)
                needs = ("attention",) if mode == "forward" else ("attention", "attention_backward")
                # torch: a forward, and on a CPU a backward through torch's autograd
                able = [b for b in fused if declared()["attention"].provides(b, needs, device.type)]
                measured = {impl: _run_measure(_train_callable(impl, mode, q, k, v, causal), device)
                            for impl in (*able, *SDPA) if device.type == "cuda" or impl in (*able, *ON_CPU)}
                ceiling = ceilings["matmul_flops"][dtype_name]
                for impl in able:
                    rows.append(_row("train", mode, dtype_name, impl, {"B": B, "H": H, "T": T, "D": D,
                                                                        "causal": causal}, measured, able,
                                     work=flops, ceiling=ceiling, unit="TFLOP/s"))
    return rows


def _masks(B, T, device, dtype):
    """The two masks users pass: a (T, T) float bias (ALiBi's distance penalty, causal) and a (B, 1, T, T)
    bool block mask (four packed sequences per row: a query sees the keys of its own, True = hidden)."""
    i, j = torch.arange(T, device=device)[:, None], torch.arange(T, device=device)[None, :]
    bias = (-(i - j).abs().to(dtype) * 2 ** -3).masked_fill(j > i, float("-inf"))
    blocks = (i // (T // 4)) != (j // (T // 4))
    return {"bias": bias, "block": blocks[None, None].expand(B, 1, T, T).contiguous()}


def _masked(device, cases, dtype_name, fused, ceilings):
    """The training cases with a general mask, against every SDPA backend given the same mask (for SDPA a
    bool mask says True where a query *may* attend: the block mask goes to it inverted)."""
    dtype = DTYPES[dtype_name]
    rows = []
    for B, H, T, D in cases["train"][:1]:
        q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        for name, mask in _masks(B, T, device, dtype).items():
            sdpa_mask = ~mask if mask.dtype == torch.bool else mask
            for mode in MODES:
                needs = ("attention", "attn_mask") + (("attention_backward",) if mode != "forward" else ())
                able = [b for b in fused if declared()["attention"].provides(b, needs, device.type)]
                measured = {}
                for impl in (*able, *SDPA):
                    if impl in SDPA and device.type != "cuda" and impl not in ON_CPU:
                        continue

                    def attend(impl=impl):
                        if impl in SDPA:
                            with _sdpa_backend(impl):
                                return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
                        with backends.use(impl):
                            return ops.attention(q, k, v, attn_mask=mask)
                    measured[impl] = _run_measure(_step(attend, mode, q), device)
                flops = 4 * B * H * T * T * D * (1.0 if mode == "forward" else 3.5)
                for impl in able:
                    rows.append(_row(f"mask-{name}", mode, dtype_name, impl, {"B": B, "H": H, "T": T, "D": D,
                                                                              "mask": tuple(mask.shape)},
                                     measured, able, work=flops, ceiling=ceilings["matmul_flops"][dtype_name],
                                     unit="TFLOP/s"))
    return rows


def _seq2seq(device, cases, dtype_name, fused, ceilings):
    """Cross-attention of a padded decoder batch over a padded encoder batch, lengths spread 10..max_len."""
    dtype = DTYPES[dtype_name]
    rows = []
    for B, E, heads, max_len in cases["seq2seq"]:
        g = torch.Generator().manual_seed(0)
        src_len = torch.randint(10, max_len + 1, (B,), generator=g)
        tgt = torch.randint(10, max_len + 1, (B,), generator=g).max().item()
        ref = torch.nn.MultiheadAttention(E, heads, batch_first=True, device=device, dtype=dtype)
        ours = fnn.MultiheadAttention(E, heads, batch_first=True, device=device, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(B, tgt, E, device=device, dtype=dtype, requires_grad=True)
        mem = torch.randn(B, max_len, E, device=device, dtype=dtype, requires_grad=True)
        mask = (torch.arange(max_len)[None, :] >= src_len[:, None]).to(device)
        lengths = src_len.to(device)

        def torch_mha():
            ref(x, mem, mem, key_padding_mask=mask, need_weights=False)[0].float().sum().backward()

        measured = {"torch-mha": _run_measure(torch_mha, device)}
        fused = [b for b in fused if declared()["attention"].provides(b, ("attention", "attention_backward"),
                                                                      device.type)]
        for impl in fused:
            def fused_mha(impl=impl):
                with backends.use(impl):
                    ours(x, mem, mem, lengths=lengths, need_weights=False)[0].float().sum().backward()
            measured[impl] = _run_measure(fused_mha, device)
        flops = 4 * B * heads * tgt * max_len * (E // heads) * 3.5
        for impl in fused:
            rows.append(_row("seq2seq", "forward+backward", dtype_name, impl,
                             {"B": B, "E": E, "heads": heads, "Tq": tgt, "Tk_max": max_len,
                              "src_lengths": src_len.tolist()}, measured, fused, work=flops,
                             ceiling=ceilings["matmul_flops"][dtype_name], unit="TFLOP/s"))
    return rows


def _decode(device, cases, dtype_name, fused_decode, ceilings):
    """One query per (row, query head) against a cache of T positions per key/value head, ragged lengths."""
    dtype = DTYPES[dtype_name]
    rows = []
    for B, Hq, Hkv, T, D in cases:
        k, v = (torch.randn(B, Hkv, T, D, device=device, dtype=dtype) for _ in range(2))
        q = torch.randn(B, Hq, D, device=device, dtype=dtype)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=torch.Generator().manual_seed(0)).to(device)
        seen = (torch.arange(T, device=device)[None, :] < lengths[:, None])[:, None, None, :]
        measured = {}
        for impl in (*fused_decode, *SDPA):
            if impl in SDPA:
                if device.type != "cuda" and impl not in ON_CPU:
                    continue

                def fn(impl=impl):
                    with torch.no_grad(), _sdpa_backend(impl):
                        F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=seen, enable_gqa=Hq != Hkv)
            else:
                def fn(impl=impl):
                    with backends.use(impl):
                        ops.attention_decode(q, k, v, lengths=lengths)
            measured[impl] = _run_measure(fn, device)
        read = int(lengths.sum()) * Hkv * D * 2 * k.element_size()  # the keys and values each row sees
        for impl in fused_decode:
            rows.append(_row("decode", "forward", dtype_name, impl, {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D},
                             measured, fused_decode, work=read, ceiling=ceilings["copy_bandwidth"], unit="GB/s"))
    return rows


def _row(case, mode, dtype_name, impl, sizes, measured, fused, work, ceiling, unit):
    t = measured[impl]
    row = {"op": "attention", "case": case, "mode": mode, "dtype": dtype_name, "backend": impl, "sizes": sizes, **t,
           "baselines": {k: val for k, val in measured.items() if k not in fused}, "unit": unit, "work": work}
    scale = 1e12 if unit == "TFLOP/s" else 1e9
    if "median_ms" in t:
        row["rate"] = work / (t["median_ms"] * 1e-3) / scale
        row.update(timing.fraction_of(work / (t["median_ms"] * 1e-3), ceiling))
        row.update(timing.speedups(t, row["baselines"]))
    return row


def cases(device, preset, dtype_names, fused_backends):
    """The preset's training cases as pytest-benchmark runs them (fastseq.bench.cases.Case): fastseq's attention
    op on each backend that serves the case, against each SDPA backend that runs here."""
    from .cases import Case

    sdpa = [impl for impl in SDPA if device.type == "cuda" or impl in ON_CPU]
    for B, H, T, D in PRESETS[preset]["train"]:
        for dtype_name in dtype_names:
            for causal in (False, True):
                for mode in MODES:
                    needs = ("attention",) if mode == "forward" else ("attention", "attention_backward")
                    able = [b for b in fused_backends if declared()["attention"].provides(b, needs, device.type)]

                    def make(B=B, H=H, T=T, D=D, dtype_name=dtype_name, causal=causal, mode=mode, able=tuple(able)):
                        q, k, v = (torch.randn(B, H, T, D, device=device, dtype=DTYPES[dtype_name],
                                               requires_grad=True) for _ in range(3))
                        return {impl: _train_callable(impl, mode, q, k, v, causal) for impl in (*able, *sdpa)}
                    flops = 4 * B * H * T * T * D * (0.5 if causal else 1.0) * (1.0 if mode == "forward" else 3.5)
                    yield Case("attention", f"{mode} {dtype_name} B{B} H{H} T{T} D{D}{' causal' if causal else ''}",
                               {"mode": mode, "B": B, "H": H, "T": T, "D": D, "causal": causal},
                               (*able, *sdpa), tuple(sdpa), make, dtype_name, flops, "matmul_flops")


def run(device, preset, dtype_names, fused_backends, ceilings):
    cases = PRESETS[preset]
    decode_fused = [b for b in backends.listed(device.type, fused_only=True)
                    if b in declared()["attention_decode"].backends and backends.availability(b, device.type)[0]
                    and not (b == "triton" and device.type == "cpu")]
    rows = []
    for dtype_name in dtype_names:
        for part in (_train(device, cases, dtype_name, fused_backends, ceilings),
                     _masked(device, cases, dtype_name, fused_backends, ceilings),
                     _seq2seq(device, cases, dtype_name, fused_backends, ceilings),
                     _decode(device, DECODE[preset], dtype_name, decode_fused, ceilings)):
            for r in part:
                rows.append(r)
                rate = f"{r['rate']:8.1f} {r['unit']} ({r['fraction_of_ceiling']:.0%})" if "rate" in r else "n/a"
                best, call = r.get("speedup_vs_fastest_baseline"), r.get("call_speedup_vs_fastest_baseline")
                vs = f"  x{best:.2f} (per call x{call:.2f}) vs the fastest baseline" if best else ""
                print(f"attention {r['case']:<8} {r['mode']:<16} {dtype_name} {r['sizes']}  {r['backend']} {rate}{vs}",
                      flush=True)
    return rows


def plot(rows, path):
    """TFLOP/s against sequence length, training cases; one line per (implementation, mode, causal)."""
    series = timing.series(
        rows, lambda r: r["case"] == "train",
        lambda r: f"{r['mode']} {'causal' if r['sizes']['causal'] else 'full'} {r['dtype']}",
        lambda r: r["sizes"]["T"], lambda r, t: r["work"] / (t["median_ms"] * 1e-3) / 1e12)
    return timing.line_plot(series, path, "sequence length T", "TFLOP/s", "Multi-head attention, head dim 128")
