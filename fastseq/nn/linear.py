"""torch.nn.Linear, and the layout its weight is read in while a CPU decodes one row.

One row makes a linear layer a matrix-vector product, which streams the whole weight from memory for a
single output row. On the CPU measured (2 threads, MKL, fp32), that product reads a weight stored
(in, out) faster than nn.Linear's (out, in): GPT-2 small's 48 block linears 18.6 against 22.5 ms a token,
its 50257 x 768 output 5.6 against 11.3 ms; with several rows (out, in) is the faster. So generation runs its
decode steps within a `OneRowCopies` store when it decodes a single row on a CPU: there, the first one-row
call of each weight makes an (in, out) copy that later one-row calls read (remade if the weight is written
in place), and the copies are freed with the store. Outside it, or with autograd
recording, or with several rows, `linear` is F.linear.

Modules keep torch's names, arguments and state_dicts; forward hooks run as ever, and a layer replaced
by another module (an adapter) simply runs that module.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (address, shape, strides, dtype) of a weight -> (the weight, its version when copied, the (in, out) copy), while
# a OneRowCopies store is entered. Keyed by where the weight lies, not by the tensor object: a view taken afresh each
# call (a chunk of MultiheadAttention's in_proj_weight) finds its copy; holding the weight keeps its storage,
# so no other tensor can come to lie there.
_COPIES: ContextVar[Optional[dict]] = ContextVar("fastseq_one_row_copies", default=None)


class OneRowCopies:
    """A store of (in, out) weight copies: within `with store:`, one-row CPU calls of `linear` read from it
    (making each copy at its first such call). The store can be entered again and again (one decode step at a
    time); its copies live as long as it does."""

    def __init__(self) -> None:
        self.copies: dict = {}
        self._tokens: list = []

    def __enter__(self) -> "OneRowCopies":
        self._tokens.append(_COPIES.set(self.copies))
        return self

    def __exit__(self, *exc) -> None:
        _COPIES.reset(self._tokens.pop())


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(input, weight, bias); one row on a CPU within a OneRowCopies store: from
    the (in, out) copy."""
    copies = _COPIES.get()
    features = input.shape[-1] if input.dim() else 0
    if (copies is None or features == 0 or input.numel() != features or input.device.type != "cpu"
            or weight.dim() != 2 or not _is_parameter(weight) or torch.is_grad_enabled()):
        return F.linear(input, weight, bias)
    key = (weight.data_ptr(), weight.shape, weight.stride(), weight.dtype)
    held = copies.get(key)
    if held is None or held[1] != weight._version:
        held = copies[key] = (weight, weight._version, weight.t().contiguous())
    weight_t = held[2]
    row = input.reshape(1, features)
    out = row @ weight_t if bias is None else torch.addmm(bias, row, weight_t)
    return out.view(*input.shape[:-1], weight_t.shape[1])


def _is_parameter(weight: Tensor) -> bool:
    """A parameter or a view of one: what stays put between steps. A weight computed at each call (a
    parametrization) would be copied at each call, so it is read as it is."""
    return isinstance(weight if weight._base is None else weight._base, nn.Parameter) and weight.layout == torch.strided


class Linear(nn.Linear):
    """torch.nn.Linear (same arguments, parameters and state_dict), its forward through `linear`."""

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)
