"""Helpers shared by the Triton kernels: the matmul precision of float32 inputs, the key padding rule (a
row's key count from `lengths`, the keys a bool `key_padding_mask` pads) as the attention kernels read
it, and launches split by batch where a grid would pass CUDA's limits."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import struct
from typing import Optional

import torch
import triton
import triton.language as tl

from ..numerics import acc_dtype

MAX_GRID = (2**31 - 1, 65535, 65535)  # programs a launch may have along each grid axis (CUDA's limits)


@dataclasses.dataclass(frozen=True)
class Target:
    """What a launcher asks of the GPU it launches on: the architecture whose tiles it takes (90: Hopper,
    80: Ampere and the rest) and the multiprocessors a grid fills."""

    arch: int
    multiprocessors: int


TARGETS = {"sm_90": Target(90, 132), "sm_80": Target(80, 108)}  # an H100/H200 SXM, an A100
_compiling_for: contextvars.ContextVar[Optional[Target]] = contextvars.ContextVar("fastseq_aot_target", default=None)


@contextlib.contextmanager
def compiling_for(target: Target):
    """Launchers called inside the block choose as they would on `target` (fastseq.ops.aot's captures)."""
    token = _compiling_for.set(target)
    try:
        yield
    finally:
        _compiling_for.reset(token)


def target(device: torch.device) -> Target:
    """The GPU `device` is, read once per device (or the one fastseq.ops.aot compiles for)."""
    forced = _compiling_for.get()
    if forced is not None:
        return forced
    if device.type != "cuda":
        return Target(80, 4)
    return _cuda_target(device.index if device.index is not None else torch.cuda.current_device())


def on_gpu(t: torch.Tensor) -> bool:
    """Whether a launch on `t` runs on a GPU (or is compiled for one by fastseq.ops.aot)."""
    return t.is_cuda or _compiling_for.get() is not None


@functools.lru_cache(maxsize=None)
def _cuda_target(index: int) -> Target:
    properties = torch.cuda.get_device_properties(index)
    return Target(90 if properties.major >= 9 else 80, properties.multi_processor_count)


class BatchPart:
    """Batch rows [start, stop) of one launch: `part(a, b, ...)` slices tensors whose first dim is the
    batch; `lengths` and `mask` are the padding arguments sliced (or their one-element stand-ins)."""

    def __init__(self, start: int, stop: int, lengths, mask, has_lengths: bool, has_mask: bool):
        self.start, self.stop, self.rows = start, stop, stop - start
        self.lengths = lengths[start:stop] if has_lengths else lengths
        self.mask = mask[start:stop] if has_mask else mask

    def __call__(self, *tensors):
        return tuple(t[self.start:self.stop] for t in tensors)


def batch_slices(B: int, rows_per_batch: int, lengths, mask, flags: dict) -> list[BatchPart]:
    """The launches a kernel whose grid axis 1 holds batch rows × rows_per_batch programs needs: one
    while that stays within CUDA's 65,535, else one per slice of the batch that fits. A batch × heads
    that large is rare, and slicing keeps the kernels' program ids as the common case wants them (a
    program id derived by division costs registers the attention kernels do not have)."""
    if rows_per_batch > MAX_GRID[1]:
        raise ValueError(f"{rows_per_batch} heads per batch row exceed the {MAX_GRID[1]} programs grid axis 1 takes")
    step = MAX_GRID[1] // max(rows_per_batch, 1)
    return [BatchPart(b, min(b + step, B), lengths, mask, flags["HAS_LENGTHS"], flags["HAS_MASK"])
            for b in range(0, B, step)]


def wide_float(x: float) -> tuple[float, float]:
    """x as two float32 halves, hi + lo (48 significant bits): a kernel argument that float64 kernels
    need to full precision (Triton passes a float argument as float32), taken back by `wide`."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, x - hi


@triton.jit
def wide(hi, lo, ACC: tl.constexpr):
    """The float passed as `wide_float`'s halves, in the accumulation type ACC."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


def acc_type(dtype: torch.dtype):
    """The Triton type a kernel on `dtype` inputs accumulates in (fastseq.numerics.acc_dtype's rule)."""
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def precision(dtype: torch.dtype) -> str:
    """float32 products in IEEE float32 unless the user let torch's matmuls use TF32."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def launch_options(cfg: dict) -> dict:
    """The compile options in a tile configuration (num_warps, num_stages, maxnreg), for a launch or an AOT
    compile alike. maxnreg=255 lifts the register cap that ptxas 12.8 (Triton 3.6's) picks for some of
    these kernels, which spills, where ptxas 12.9 (Triton 3.9's) uses the registers it needs."""
    return {k: cfg[k] for k in ("num_warps", "num_stages", "maxnreg") if k in cfg}


def mask_dtype(dtype: torch.dtype) -> torch.dtype:
    """How a bool key_padding_mask reaches kernels whose inputs have `dtype`: as uint8 (its own bytes), or
    as int32 for float64, where Triton 3.6 cannot lower a float64 `tl.dot` whose operand an 8-bit load
    feeds ("fp64 don't support largeK MMA")."""
    return torch.int32 if dtype == torch.float64 else torch.uint8


def padding_args(lengths, mask, ref):
    """(lengths, mask as mask_dtype(ref.dtype), HAS_LENGTHS, HAS_MASK); a one-element dummy stands in for
    an absent one."""
    dummy = ref.new_empty(1, dtype=torch.int32)
    mask_arg = dummy if mask is None else mask
    mask_arg = mask_arg.to(torch.int32) if mask_dtype(ref.dtype) == torch.int32 else mask_arg.view(torch.uint8)
    return dummy if lengths is None else lengths, mask_arg, lengths is not None, mask is not None


@triton.jit
def key_bound(lengths_ptr, b, Tk, HAS_LENGTHS: tl.constexpr):
    """How many leading keys row b may see: lengths[b] clamped to [0, Tk], or Tk."""
    if HAS_LENGTHS:
        return tl.minimum(tl.maximum(tl.load(lengths_ptr + b), 0), Tk)
    else:
        return Tk


@triton.jit
def key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK: tl.constexpr):
    """True for the keys of row b below n_keys that the mask (True = padded) does not pad."""
    valid = keys < n_keys
    if HAS_MASK:
        padded = tl.load(mask_ptr + b * Tk + keys, mask=valid, other=1)
        valid = valid & (padded == 0)
    return valid
