"""Input checks shared by the ops: every error names the op, the argument and what was expected."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fail(op: str, message: str, kind: type[Exception] = ValueError) -> None:
    raise kind(f"{op}: {message}")


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a tensor, got {type(t).__name__}", TypeError)
    if t.dtype not in FLOAT_DTYPES:
        fail(op, f"{name} must be one of float16, bfloat16, float32, float64; got {t.dtype}", TypeError)


def check_ndim(op: str, name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        fail(op, f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")


def check_shape(op: str, name: str, t: torch.Tensor, shape: Sequence[int], layout: str) -> None:
    if tuple(t.shape) != tuple(shape):
        fail(op, f"{name} must have shape {layout} = {tuple(shape)}, got {tuple(t.shape)}")


def check_like(op: str, name: str, t: Optional[torch.Tensor], ref_name: str, ref: torch.Tensor) -> None:
    """Same dtype and device as the reference argument."""
    if t is None:
        return
    if t.dtype != ref.dtype:
        fail(op, f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}", TypeError)
    if t.device != ref.device:
        fail(op, f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def check_lengths(op: str, lengths: torch.Tensor, batch: int, max_len: int) -> None:
    """Per-sequence lengths: CPU int64 (B,), sorted non-increasing, each in [1, max_len]."""
    if not isinstance(lengths, torch.Tensor) or lengths.dtype != torch.int64 or lengths.device.type != "cpu":
        got = f"{lengths.dtype} on {lengths.device}" if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        fail(op, f"lengths must be an int64 CPU tensor (as PackedSequence keeps them), got {got}", TypeError)
    if tuple(lengths.shape) != (batch,):
        fail(op, f"lengths must have shape (B,) = ({batch},), got {tuple(lengths.shape)}")
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > max_len):
        fail(op, f"lengths must lie in [1, T={max_len}], got min {int(lengths.min())}, max {int(lengths.max())}")
    if batch > 1 and bool((lengths[1:] > lengths[:-1]).any()):
        fail(op, "lengths must be sorted in non-increasing order (sort the batch, or pack it with "
                 "torch.nn.utils.rnn.pack_padded_sequence(..., enforce_sorted=False))")
