"""Which tiles the Triton attention kernels should take on this GPU: each candidate tile timed on a
headline shape beside SDPA, in one run, written to a JSON file after every measurement (a timeout keeps
what was measured).

    python benchmarks/tile_sweep.py --json tiles.json [--seconds 280]

The candidates of each kernel (forward, the backward's dK/dV and dQ kernels, decoding) are set one at a
time in fastseq.ops.attention.triton_configs.CONFIGS (or triton_decode.DECODE) and run through the
public op, so what is timed is what a user's call runs. The tiles found fastest go into those tables by
hand, after tests/test_compile_checks.py shows they compile without spilling under both Triton versions.
Shapes: bf16, head dim 128; B4 H16 T4096 for training (full, then the leaders causal), B64 Hq32 Hkv8
T2048 and B1 T16384 for decoding.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fastseq import atomic, backends  # noqa: E402
from fastseq.bench import timing  # noqa: E402
from fastseq.ops import attention, attention_decode  # noqa: E402
from fastseq.ops.attention import decode_plan, triton_configs, triton_decode  # noqa: E402

GRIDS = {
    "fwd": list(itertools.product((64, 128), (64, 128), (4, 8), (2, 3, 4))),
    "dkdv": list(itertools.product((16, 32, 64), (64, 128), (4, 8), (2, 3))),
    "dq": list(itertools.product((64, 128), (32, 64), (4, 8), (2, 3))),
}
DECODE_GRID = list(itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3)))
WAVES = (2, 4, 8)
LEADERS = 3  # tiles of each kernel also timed causal
TRAIN = (4, 16, 4096, 128)  # B, H, T, D
DECODING = ((64, 32, 8, 2048, 128), (1, 32, 8, 16384, 128))  # B, Hq, Hkv, T, D


class Sweep:
    """The rows measured so far, rewritten to `path` after each; stops taking new ones past `deadline`."""

    def __init__(self, path: str, seconds: float, meta: dict):
        self.path, self.deadline, self.meta, self.rows = path, time.monotonic() + seconds, meta, []

    def left(self) -> bool:
        return time.monotonic() < self.deadline

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        atomic.write(self.path, lambda f: json.dump({"meta": self.meta, "rows": self.rows}, f, indent=1), "w")


def _set_tile(kernel: str, tile) -> None:
    triton_configs.CONFIGS[(kernel, 90, 2)] = {**triton_configs.CONFIGS[(kernel, 90, 2)], 128: [tile]}
    triton_configs.tuned.cache_clear()


def _time(fn, device) -> dict:
    return timing.measure(fn, device, warmup=3, min_reps=10, min_seconds=0.05)


def train_tiles(sweep: Sweep, device) -> None:
    B, H, T, D = TRAIN
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    defaults = {name: triton_configs.CONFIGS[(name, 90, 2)][128][0] for name in GRIDS}

    def forward(causal):
        with torch.no_grad():
            attention(q, k, v, causal=causal)

    def both(causal):
        attention(q, k, v, causal=causal).backward(g)

    for causal in (False, True):
        for name, fn in (("sdpa fwd", lambda: F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(),
                                                                            is_causal=causal)),
                         ("sdpa fwd+bwd",
                          lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(g))):
            sweep.add({"kernel": "baseline", "what": name, "causal": causal, **_time(fn, device)})
    with backends.use("triton"):
        for kernel, grid in GRIDS.items():
            timed = []
            for tile in grid:
                if not sweep.left():
                    return
                for other, tile_ in defaults.items():
                    _set_tile(other, tile_)
                _set_tile(kernel, tile)
                fn = (lambda: forward(False)) if kernel == "fwd" else (lambda: both(False))
                try:
                    t = _time(fn, device)
                except Exception as error:  # noqa: BLE001 - out of shared memory and the like: recorded, skipped
                    sweep.add({"kernel": kernel, "tile": tile, "causal": False, "error": str(error)[:200]})
                    continue
                timed.append((t["median_ms"], tile))
                sweep.add({"kernel": kernel, "tile": tile, "causal": False, **t})
            for _, tile in sorted(timed)[:LEADERS]:
                if not sweep.left():
                    return
                _set_tile(kernel, tile)
                fn = (lambda: forward(True)) if kernel == "fwd" else (lambda: both(True))
                sweep.add({"kernel": kernel, "tile": tile, "causal": True, **_time(fn, device)})
            _set_tile(kernel, defaults[kernel])


def decode_tiles(sweep: Sweep, device) -> None:
    before, units_before = dict(triton_decode.DECODE), decode_plan.UNITS_PER_SM
    for B, Hq, Hkv, T, D in DECODING:
        q = torch.randn(B, Hq, D, device=device, dtype=torch.bfloat16)
        k, v = (torch.randn(B, Hkv, T, D, device=device, dtype=torch.bfloat16) for _ in range(2))
        sizes = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "D": D}
        sweep.add({"kernel": "baseline", "what": "sdpa decode", **sizes,
                   **_time(lambda: F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True), device)})
        with backends.use("triton"):
            for block_n, warps, stages in DECODE_GRID:
                for waves in WAVES:
                    if not sweep.left():
                        triton_decode.DECODE.update(before)
                        decode_plan.UNITS_PER_SM = units_before
                        return
                    triton_decode.DECODE.update({"BLOCK_N": {**before["BLOCK_N"], 2: block_n}, "num_warps": warps,
                                                 "num_stages": stages})
                    decode_plan.UNITS_PER_SM = waves  # work units per multiprocessor
                    tile = {"BLOCK_N": block_n, "num_warps": warps, "num_stages": stages, "waves": waves}
                    try:
                        t = _time(lambda: attention_decode(q, k, v), device)
                    except Exception as error:  # noqa: BLE001
                        sweep.add({"kernel": "decode", **sizes, **tile, "error": str(error)[:200]})
                        continue
                    sweep.add({"kernel": "decode", **sizes, **tile, **t,
                               "bytes": 2 * B * Hkv * T * D * 2})
    triton_decode.DECODE.update(before)
    decode_plan.UNITS_PER_SM = units_before


def run(path: str, seconds: float, device: torch.device) -> None:
    """Decoding first (the cheapest to compile, and the furthest from its ceiling), then training."""
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "triton": __import__("triton").__version__, "commit": os.environ.get("FASTSEQ_COMMIT") or timing.commit(),
            "copy_bandwidth": timing.copy_bandwidth(device),
            "matmul_flops_bf16": timing.matmul_ceiling(device, torch.bfloat16)}
    sweep = Sweep(path, seconds, meta)
    decode_tiles(sweep, device)
    train_tiles(sweep, device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--seconds", type=float, default=280.0, help="stop starting new measurements after this")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to sweep")
        return 0
    run(args.json, args.seconds, torch.device("cuda"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
