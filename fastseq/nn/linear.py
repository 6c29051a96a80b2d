"""torch.nn.Linear, with a second way to compute a few rows on a CPU, which decoding chooses by timing.

Decoding a few rows makes every linear layer a skinny product that streams its whole weight from memory for
a handful of output rows, which F.linear can do well below the speed of memory on a CPU. The same product
split into blocks of the weight's rows and run as one batched matrix product (`torch.bmm` over (blocks,
rows/blocks, in) against the input broadcast to every block, no copy of the weight) was faster on the CPU
measured (benchmarks/bench_linear_rows.py; benchmarks/results/linear-rows-cpu-*.json).

Other CPUs and BLAS builds may differ, so nothing takes this form unasked. Within `batched_rows()` (which
fastseq.generation opens for the decode steps it has timed faster that way), a call is computed in blocks
when it has at most MAX_ROWS rows, its weight at least MIN_WEIGHT elements, and it runs on a CPU without
autograd recording. Every other call is F.linear, and so is every call torch.compile traces (Dynamo cannot
trace a ContextVar).

Modules keep torch's names, arguments and state_dicts; forward hooks run as ever, and a layer replaced by
another module (an adapter) simply runs that module.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_ROWS = 64  # up to this many rows the blocks were the faster (the same results file)
MIN_WEIGHT = 1 << 18  # smaller weights stay in cache, where F.linear was the faster
_BATCHED: ContextVar[bool] = ContextVar("fastseq_linear_batched_rows", default=False)


@contextmanager
def batched_rows(enabled: bool = True) -> Iterator[None]:
    """Within the block, `linear` computes calls of few rows on a CPU as a batched product (when enabled)."""
    token = _BATCHED.set(enabled)
    try:
        yield
    finally:
        _BATCHED.reset(token)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """F.linear(input, weight, bias); within batched_rows(), few rows on a CPU as one batched product."""
    if torch.compiler.is_compiling() or not _BATCHED.get() or input.device.type != "cpu" or torch.is_grad_enabled():
        return F.linear(input, weight, bias)
    features = input.shape[-1] if input.dim() else 0
    rows = input.numel() // features if features else 0
    blocks = 2 * torch.get_num_threads()
    if (not 0 < rows <= MAX_ROWS or weight.dim() != 2 or weight.numel() < MIN_WEIGHT or weight.shape[0] < blocks
            or weight.stride() != (features, 1) or input.dtype != weight.dtype):
        return F.linear(input, weight, bias)
    out_features = weight.shape[0]
    block = out_features // blocks
    split = blocks * block
    x = input.reshape(rows, features)
    # (blocks, block, in) @ (blocks, in, rows): the input read as a transposed matrix, one copy for every block
    out = torch.bmm(weight[:split].view(blocks, block, features), x.t().expand(blocks, features, rows))
    out = out.permute(2, 0, 1).reshape(rows, split)
    if split < out_features:  # the last out_features % blocks rows
        out = torch.cat([out, F.linear(x, weight[split:])], dim=1)
    if bias is not None:
        out += bias
    return out.view(*input.shape[:-1], out_features)


class Linear(nn.Linear):
    """torch.nn.Linear (same arguments, parameters and state_dict), its forward through `linear`."""

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)
