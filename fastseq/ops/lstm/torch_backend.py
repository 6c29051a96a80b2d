"""The `torch` backend of the LSTM ops: torch's own fused LSTM kernel (oneDNN/ATen on a CPU, cuDNN on a
GPU) for one layer and one direction, the cell as torch.nn.LSTMCell computes it, torch's whole
step (`lstm_step`: projections and cell in one call), and torch's whole multi-layer LSTM (`lstm`, which
fastseq.nn.LSTM calls with its own parameters where this backend is chosen). It keeps no workspace,
so it implements no backward: without a gradient the custom op runs it, and where the family lists it
under `autograd` (a CPU) the public op calls it directly and torch's autograd differentiates it, as in
torch.nn.LSTM.

The cell: torch has no fused LSTM cell kernel on a CPU; torch.nn.LSTMCell runs its gates' activations and
the state update as pointwise torch ops, which is what reference.lstm_cell is (in float32 for 16-bit
inputs, as the op's contract has it): the same function, differentiated by torch's autograd.

The contract is fastseq/ops/lstm/reference.py's: bias is b_ih + b_hh (torch's kernel adds a zero b_hh),
rows are sorted by non-increasing length and run as a packed sequence, and a reversed row runs from its
own last token (each row's time steps reversed within its length, then restored). Float32 runs in full
float32 as every backend's does: cuDNN's RNN would use TF32 by default (an error far above float32's), so its
precision is set to "ieee" for the call and the user's setting restored after.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ...numerics import acc_dtype
from .reference import lstm_cell  # noqa: F401  (the cell, as torch.nn.LSTMCell runs it: see above)

# cuDNN copies the four weights into one buffer every call (they are the caller's separate tensors, not a
# module's flat buffer) and warns about it once; the copy is part of this backend's measured time.
warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")


def lstm(x: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], has_biases: bool, num_layers: int,
         dropout: float, training: bool, bidirectional: bool,
         batch_sizes: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Every layer and direction of a time-major x in torch's one call, as torch.nn.LSTM makes it: weights
    per layer and direction w_ih, w_hh[, b_ih, b_hh][, w_hr] (its parameters themselves) -> (y, h_n, c_n).
    With batch_sizes, x is a PackedSequence's data and y is too."""
    args = (hx, weights, has_biases, num_layers, dropout, training, bidirectional)
    if x.device.type != "cuda":  # no precision to switch (and no context manager's cost per call)
        return torch._VF.lstm(x, batch_sizes, *args) if batch_sizes is not None else torch._VF.lstm(x, *args, False)
    with _ieee_float32(x):
        return torch._VF.lstm(x, batch_sizes, *args) if batch_sizes is not None else torch._VF.lstm(x, *args, False)


def lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """A whole LSTM step (both projections and the cell) in torch's one call, as torch.nn.LSTMCell runs it."""
    return torch._VF.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)


def _within_rows(T: int, lengths: Tensor, device: torch.device) -> Tensor:
    """(T, B) time index that reverses each row within its length (and leaves its padding in place)."""
    t = torch.arange(T)[:, None]
    n = lengths[None, :]
    return torch.where(t < n, n - 1 - t, t).to(device, non_blocking=True)


@contextlib.contextmanager
def _ieee_float32(x: Tensor) -> Iterator[None]:
    """cuDNN's RNN in IEEE float32 for a float32 input on a GPU (elsewhere nothing changes)."""
    rnn = torch.backends.cudnn.rnn
    if x.dtype != torch.float32 or x.device.type != "cuda" or rnn.fp32_precision == "ieee":
        yield
        return
    before = rnn.fp32_precision
    rnn.fp32_precision = "ieee"
    try:
        yield
    finally:
        rnn.fp32_precision = before


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
               w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
               training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    with _ieee_float32(x):
        return _run(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, reverse, training)


def _run(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
         w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool, training: bool) -> tuple[Tensor, ...]:
    T, B, _ = x.shape
    params = [w_ih, w_hh] + ([bias, torch.zeros_like(bias)] if bias is not None else [])
    params += [w_hr] if w_hr is not None else []
    hx = (h0[None].contiguous(), c0[None].contiguous())
    if lengths is None:
        xs = x.flip(0) if reverse else x
        y, h, c = torch._VF.lstm(xs, hx, params, bias is not None, 1, 0.0, training, False, False)
        y = y.flip(0) if reverse else y
    else:
        order = _within_rows(T, lengths, x.device)[..., None] if reverse else None
        xs = x.gather(0, order.expand_as(x)) if reverse else x
        packed = pack_padded_sequence(xs, lengths, enforce_sorted=True)
        data, h, c = torch._VF.lstm(packed.data, packed.batch_sizes, hx, params, bias is not None, 1, 0.0,
                                    training, False)
        y, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes), total_length=T)
        y = y.gather(0, order.expand_as(y)) if reverse else y
    return y, h[0], c[0], x.new_empty(0), x.new_empty(0, dtype=acc_dtype(x.dtype))
