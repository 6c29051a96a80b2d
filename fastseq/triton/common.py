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


def padding_args(lengths, mask, ref):
    """(lengths, mask as uint8, HAS_LENGTHS, HAS_MASK); a one-element dummy stands in for an absent one."""
    dummy = ref.new_empty(1, dtype=torch.int32)
    return (dummy if lengths is None else lengths, (dummy if mask is None else mask).view(torch.uint8),
            lengths is not None, mask is not None)


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
