"""Input checks shared by the ops: every error names the op, the argument and what was expected."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("fastseq_trusted_values", default=False)


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """Inside the block the value checks of tensors are skipped (shapes, dtypes and devices are still
    checked): generation runs each decoding step in it, its inputs checked once per call, since the
    tensors a step passes on (a KVCache's lengths, the chosen tokens, the beams' parents) are fastseq's own,
    and reading a tensor's values on the host is a synchronization a step on a GPU.

    >>> with trusted(): logits = model.decode_step(token, state)
    """
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def trusting() -> bool:
    """Whether a `trusted` block is open (not to be asked while torch.compile traces)."""
    return _trusted.get()


def read_values() -> bool:
    """Whether a check may read tensor values on the host now: not inside `trusted`, nor while
    torch.compile traces (a graph cannot branch on values)."""
    return not torch.compiler.is_compiling() and not trusting()  # asked first: Dynamo cannot trace a ContextVar


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


def integers(op: str, name: str, values) -> torch.Tensor:
    """`values` (a tensor or a sequence) as an integer tensor: floats and bools are refused, never
    truncated ([2.7, 5.0] is an error, not [2, 5])."""
    if not isinstance(values, torch.Tensor):
        try:
            values = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError):
            fail(op, f"{name} must be an integer tensor or a sequence of ints, got {type(values).__name__}",
                 TypeError)
        if values.numel() == 0:  # [] has no element type: an empty batch's lengths
            values = values.long()
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        shown = values.tolist() if values.numel() <= 8 else f"a {values.dtype} tensor"
        fail(op, f"{name} must be an integer tensor or a sequence of ints (never truncated), got {values.dtype} "
                 f"{shown}", TypeError)
    return values


def check_index(owner: str, index: torch.Tensor, rows: int) -> None:
    """A 1-D integer index of rows in [0, rows) (beam search reorders and repeats rows). The range is
    checked on CPU tensors only: reading a GPU tensor's values would sync every decoding step, and
    index_select there stops on a device-side assert instead of reading out of bounds."""
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"{owner}: index must be a 1-D int32 or int64 tensor, got {got}")
    if (index.numel() and index.device.type == "cpu" and read_values()
            and (int(index.min()) < 0 or int(index.max()) >= rows)):
        raise IndexError(f"{owner}: index must lie in [0, {rows}) (the rows held), got min {int(index.min())}, "
                         f"max {int(index.max())}")


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


def check_key_padding(op: str, key_padding_mask: Optional[torch.Tensor], lengths, B: int, Tk: int,
                      device: torch.device) -> Optional[torch.Tensor]:
    """Validate a key padding given as a bool mask (B, Tk), True = padded, and/or per-row lengths (any
    integer tensor or sequence, each in [0, Tk]); returns the lengths as int32 on `device` (or None)."""
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            got = (key_padding_mask.dtype if isinstance(key_padding_mask, torch.Tensor)
                   else type(key_padding_mask).__name__)
            fail(op, f"key_padding_mask must be a bool tensor (True = padded key), got {got}", TypeError)
        check_shape(op, "key_padding_mask", key_padding_mask, (B, Tk), "(B, Tk)")
        if key_padding_mask.device != device:
            fail(op, f"key_padding_mask must be on the device of the queries ({device}), "
                       f"got {key_padding_mask.device}")
    if lengths is None:
        return None
    lengths = integers(op, "lengths", lengths)
    if tuple(lengths.shape) != (B,):
        fail(op, f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
    # Host lengths are checked on the host; lengths on a GPU by the device itself (an asynchronous assert:
    # reading them here would synchronize every call). A compiled graph cannot branch on the values, and
    # the kernels clamp each length to [0, Tk], so no value can read out of bounds.
    if B and read_values():
        if lengths.device.type == "cpu":
            check_host_lengths(op, lengths, Tk)
        else:
            torch._assert_async(((lengths >= 0) & (lengths <= Tk)).all(), f"{op}: lengths must lie in [0, Tk={Tk}]")
    return lengths.to(device=device, dtype=torch.int32, non_blocking=True)


def check_host_lengths(op: str, lengths: torch.Tensor, Tk: int) -> None:
    """Lengths held on the host (the caller's data), each in [0, Tk]."""
    if int(lengths.min()) < 0 or int(lengths.max()) > Tk:
        fail(op, f"lengths must lie in [0, Tk={Tk}], got min {int(lengths.min())}, max {int(lengths.max())}")
