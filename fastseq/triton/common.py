"""Helpers shared by the Triton kernels: the matmul precision of float32 inputs, and the key padding
rule (a row's key count from `lengths`, the keys a bool `key_padding_mask` pads) as the attention
kernels read it."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

ACC = {torch.float64: tl.float64}  # accumulation dtype per input dtype; float32 otherwise


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


def mask_pointer(t: str) -> str:
    """The AOT signature of the mask pointer for inputs of Triton type `t` (see mask_dtype)."""
    return "*i32" if t == "fp64" else "*u8"


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
