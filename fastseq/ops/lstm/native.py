"""The `torch` backend of the LSTM layer: torch's own fused LSTM kernel (oneDNN/ATen on a CPU, cuDNN on a
GPU) for one layer and one direction, inference only. It keeps no workspace, so it provides no backward:
the choice takes it only for calls that need no gradient (fastseq.ops.registry.chosen), where it is what
torch.nn.LSTM itself runs, minus the module's overhead.

The contract is fastseq/ops/lstm/reference.py's: bias is b_ih + b_hh (torch's kernel adds a zero b_hh),
rows are sorted by non-increasing length and run as a packed sequence, and a reversed row runs from its
own last token (each row's time steps reversed within its length, then restored).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ...backends import BackendUnavailableError
from ...numerics import acc_dtype


def _within_rows(T: int, lengths: Tensor, device: torch.device) -> Tensor:
    """(T, B) time index that reverses each row within its length (and leaves its padding in place)."""
    t = torch.arange(T)[:, None]
    n = lengths[None, :]
    return torch.where(t < n, n - 1 - t, t).to(device)


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
               w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
               training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    if training:
        raise BackendUnavailableError("the torch backend serves the LSTM layer without a gradient only (it keeps no "
                                      "workspace for a backward)")
    T, B, _ = x.shape
    params = [w_ih, w_hh] + ([bias, torch.zeros_like(bias)] if bias is not None else [])
    params += [w_hr] if w_hr is not None else []
    hx = (h0[None].contiguous(), c0[None].contiguous())
    if lengths is None:
        xs = x.flip(0) if reverse else x
        y, h, c = torch._VF.lstm(xs, hx, params, bias is not None, 1, 0.0, False, False, False)
        y = y.flip(0) if reverse else y
    else:
        order = _within_rows(T, lengths, x.device)[..., None] if reverse else None
        xs = x.gather(0, order.expand_as(x)) if reverse else x
        packed = pack_padded_sequence(xs, lengths, enforce_sorted=True)
        data, h, c = torch._VF.lstm(packed.data, packed.batch_sizes, hx, params, bias is not None, 1, 0.0, False,
                                    False)
        y, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes), total_length=T)
        y = y.gather(0, order.expand_as(y)) if reverse else y
    return y, h[0], c[0], x.new_empty(0), x.new_empty(0, dtype=acc_dtype(x.dtype))
