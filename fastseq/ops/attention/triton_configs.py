"""The tile configurations of the attention forward and backward kernels, per architecture, element size
and head dim, and their autotuning: on a GPU each launch is autotuned over the tiles meant for its inputs
(pruned early, before any is compiled); float64 and the interpreter take one small fixed tile."""
from __future__ import annotations

import functools

import torch
import triton

from ...backends import triton_interpret
from ...triton.common import target

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by the autotuner, per kernel, architecture (90: Hopper,
# 80: Ampere and the rest), element size (2 or 4 bytes) and largest head dim (64, 128, 256): each
# compiles without spilling under Triton 3.6 and 3.9 (tests/test_compile_checks.py), except those of
# MEASURED_SPILLING. With dropout only the last, smallest one runs (Philox's counters take registers).
# Hopper's 16-bit tiles at head dim 128 are the fastest of benchmarks/tile_sweep.py's grid on an H200
# (benchmarks/results/h200/tiles-2026-11-30.json); the others are not measured on a GPU yet.
CONFIGS = {
    ("fwd", 90, 2): {64: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2)],
                     128: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2)], 256: [(32, 32, 4, 2)]},
    ("fwd", 80, 2): {64: [(128, 64, 8, 3), (64, 64, 4, 2)],
                     128: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2), (32, 32, 4, 2)],  # the last: a mask's
                     256: [(32, 32, 4, 2)]},
    ("dkdv", 90, 2): {64: [(16, 64, 8, 2), (32, 32, 4, 2)], 128: [(64, 64, 4, 2), (32, 64, 4, 3), (32, 32, 4, 2)],
                      256: [(16, 16, 4, 1)]},
    ("dkdv", 80, 2): {64: [(16, 64, 8, 2), (32, 32, 4, 2)], 128: [(32, 32, 4, 2), (16, 32, 4, 2)],
                      256: [(16, 16, 4, 1)]},
    ("dq", 90, 2): {64: [(128, 64, 8, 2), (64, 32, 4, 2)], 128: [(128, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 2)],
                    256: [(32, 32, 8, 1), (32, 16, 4, 1)]},
    ("dq", 80, 2): {64: [(128, 64, 8, 2), (64, 32, 4, 2)], 128: [(64, 32, 8, 2), (32, 32, 4, 1)],
                    256: [(32, 32, 8, 1)]},
}
for _kernel in ("fwd", "dkdv", "dq"):  # float32: FMA products (or TF32) hold whole tiles in registers
    for _target in (90, 80):
        CONFIGS[(_kernel, _target, 4)] = {64: [(16, 16, 4, 1)], 128: [(16, 16, 4, 1)], 256: [(16, 16, 4, 1)]}
# Tiles that spill registers yet ran faster on an H200 than every spill-free tile of the sweep (the same
# results file), by (kernel, architecture, element size, head dim). Each list that holds one also holds a
# spill-free tile, which the autotuner times beside it: a variant where the spills cost more takes that one.
MEASURED_SPILLING = {("dkdv", 90, 2, 128): {(64, 64, 4, 2), (32, 64, 4, 3)}}
# The largest tile (BLOCK_M x BLOCK_N) a kernel takes on an architecture where a key padding mask's loads
# share its registers: the sm_80 forward's 128 x 64 tiles spill then, compiled as the JIT compiles them.
KEY_MASK_TILE = {("fwd", 80): 64 * 32}
FIXED = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}  # float64, and the interpreter


def arch(device: torch.device) -> int:
    """The architecture whose tiles a device takes: 90 (Hopper) or 80 (Ampere and the rest)."""
    return target(device).arch


def _dim_bucket(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128 if head_dim <= 128 else 256


def configs_for(kernel: str, target: int, element_size: int, head_dim: int, dropout: bool = False,
                bias: bool = False, key_mask: bool = False) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries for these inputs: with dropout or an
    attn_mask only the smallest (the mask's tile takes registers: with it Triton 3.6 spills every larger
    tile of sm_90 at head dim 128 in bf16, 8 to 1,064 stores, and none of the smallest)."""
    tiles = CONFIGS[(kernel, target, 2 if element_size <= 2 else 4)][_dim_bucket(head_dim)]
    if key_mask and (kernel, target) in KEY_MASK_TILE:
        tiles = [t for t in tiles if t[0] * t[1] <= KEY_MASK_TILE[(kernel, target)]] or tiles[-1:]
    return tiles[-1:] if dropout or bias else tiles


def _config_list(kernel: str) -> list[triton.Config]:
    """Every distinct tile of a kernel, over architectures, element sizes and head dims."""
    tiles = sorted({tile for (name, _, _), by_dim in CONFIGS.items() if name == kernel
                    for dim_tiles in by_dim.values() for tile in dim_tiles})
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in tiles]


def tile_of(config: triton.Config) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a configuration: read from what Triton itself keeps,
    so a configuration Triton rebuilt (its autotune cache does) is recognized like the original."""
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages


def prune(kernel: str, configs, named_args, **kwargs) -> list[triton.Config]:
    """The autotuner's early pruning: the configurations among `configs` meant for these inputs (their
    device's architecture, element size, head dims and dropout; `configs_for`)."""
    args = {**named_args, **kwargs}
    q = args["q_ptr"]
    wanted = configs_for(kernel, arch(q.device), q.element_size(), max(args["D"], args["Dv"]), args["DROPOUT"],
                         bool(args["BIAS"]), bool(args["HAS_MASK"]))
    return [c for c in configs if tile_of(c) in wanted]


_KEY = ["D", "Dv", "T_BUCKET", "CAUSAL", "HAS_MASK", "DROPOUT", "BIAS"]


@functools.lru_cache(maxsize=None)
def tuned(kernel: str, fn):
    """`fn`, the jit kernel named `kernel` in CONFIGS, autotuned over its tiles."""
    return triton.autotune(configs=_config_list(kernel), key=_KEY,
                           prune_configs_by={"early_config_prune": functools.partial(prune, kernel)})(fn)


def launch(kernel: str, fn, grid, args: tuple, flags: dict, dtype: torch.dtype) -> None:
    """Launch `fn` (named `kernel` in CONFIGS) over grid(tile): autotuned on a GPU for 16- and 32-bit
    inputs; FIXED tiles for float64 and the interpreter."""
    if dtype == torch.float64 or triton_interpret():
        fn[grid(FIXED)](*args, **flags, BLOCK_M=FIXED["BLOCK_M"], BLOCK_N=FIXED["BLOCK_N"],
                        num_warps=FIXED["num_warps"], num_stages=FIXED["num_stages"])
    else:
        tuned(kernel, fn)[grid](*args, **flags)
