"""The numerics rules every layer of fastseq shares: the dtype a computation accumulates and carries state
in, and how torch.autocast reaches fastseq's ops. One place, imported by the ops, their references and
kernels' launchers, the modules and the models alike."""
from __future__ import annotations

from typing import Optional

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a computation on `dtype` accumulates and carries state in: float64 for float64, float32
    for every other floating dtype (half-precision inputs, fp32 accuracy)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_dtype(device: torch.device | str) -> Optional[torch.dtype]:
    """The dtype torch.autocast casts matmul-bound ops to on `device`, or None when it is off there."""
    device = device if isinstance(device, str) else device.type  # torch.device(...) costs microseconds per call
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def autocast(*tensors: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
    """Under torch.autocast on the first tensor's device, the floating tensors in the autocast dtype, as
    torch's own matmul-bound ops take them (the custom ops then run in it, and gradients flow back to the
    original dtypes through the casts); float64 tensors and everything outside autocast as they are."""
    dtype = autocast_dtype(next(t for t in tensors if t is not None).device)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype not in (dtype, torch.float64)
                 else t for t in tensors)
