"""Host time of a decode step: what fastseq's Python costs around the kernel, per call.

Two measurements, side by side in one run, each for a growing cache and a static one (make_static):
  wrapper   the Python of `KVCache.attend` and of `fastseq.ops.attention_decode` with the backend's function
            replaced by one that returns at once (checks, choosing, argument handling: no kernel)
  call      the whole call on the chosen backend (on a GPU: per-call time with the launch included)

    python benchmarks/decode_host.py [--device cuda] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fastseq.bench import (
    sweep,  # noqa: E402
    timing,  # noqa: E402
)
from fastseq.nn import KVCache  # noqa: E402
from fastseq.ops.attention import DECODE_FAMILY, attention_decode  # noqa: E402

CASES = {"cpu": [(1, 8, 2, 64, 64), (8, 8, 2, 256, 64)], "gpu": [(1, 32, 8, 16384, 128), (64, 32, 8, 2048, 128)]}


def _per_call_us(fn, calls: int = 2000, rounds: int = 7) -> float:
    """The fastest round's mean, µs a call (the host's own cost: the quietest round is the truest)."""
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def _cache(B, Hkv, T, D, dtype, device, static: bool) -> KVCache:
    cache = KVCache(B, Hkv, D, T, dtype=dtype, device=device)
    if static:
        cache.make_static()
        cache.lengths.fill_(T // 2)
    else:
        cache.append(torch.randn(B, Hkv, T // 2, D, dtype=dtype, device=device),
                     torch.randn(B, Hkv, T // 2, D, dtype=dtype, device=device),
                     counts=torch.randint(1, T // 2 + 1, (B,)))
    return cache


def rows(device: torch.device, dtype: torch.dtype, cases) -> list[dict]:
    out = []
    for B, Hq, Hkv, T, D in cases:
        for static in (False, True):
            cache = _cache(B, Hkv, T, D, dtype, device, static)
            q = torch.randn(B, Hq, D, dtype=dtype, device=device)
            lengths = None if cache.uniform else cache.lengths
            fns = {"attend": lambda: cache.attend(q),
                   "attention_decode": lambda: attention_decode(q, cache.keys(), cache.values(),
                                                                             lengths=lengths)}
            with torch.no_grad():
                calls = timing.measure_together(fns, device)
                function = DECODE_FAMILY.function
                object.__setattr__(DECODE_FAMILY, "function", lambda backend, name: lambda *a: a[0])
                try:
                    wrapper = {name: _per_call_us(fn) for name, fn in fns.items()}
                finally:
                    object.__setattr__(DECODE_FAMILY, "function", function)
            for name in fns:
                out.append({"case": f"B{B} Hq{Hq} Hkv{Hkv} T{T} D{D}", "cache": "static" if static else "growing",
                            "path": name, "wrapper_us": round(wrapper[name], 2),
                            "wrapper_ratio_to_public": round(wrapper["attention_decode"] / wrapper[name], 3),
                            **{k: v for k, v in calls[name].items() if k.endswith("ms") or k == "reps"}})
                print(out[-1])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 on a CPU, bfloat16 on a GPU by default")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    found = rows(device, dtype, CASES["gpu" if device.type == "cuda" else "cpu"])
    meta = {**sweep.metadata(device, "decode-host", {}), "dtype": str(dtype).replace("torch.", "")}
    stamp = datetime.date.today().isoformat()
    path = os.path.join(args.out, f"decode-host-{device.type}-{stamp}-{timing.commit()}.json")
    os.makedirs(args.out, exist_ok=True)
    timing.write_rows(path, meta, found)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
