"""Learning-rate schedules as multipliers of the base rate, per optimizer step (torch LambdaLR):
constant (after warm-up), inverse square root (Vaswani et al. 2017), cosine to a floor, and ULMFiT's
slanted triangular rate (Howard & Ruder 2018)."""
from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("constant", "inverse_sqrt", "cosine", "slanted_triangular")


def schedule(name: str, total: int, warmup: int = 0, min_ratio: float = 0.0, cut_frac: float = 0.1,
             ratio: float = 32.0) -> Callable[[int], float]:
    """The multiplier at step s (0-based) of `total` steps."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    if warmup < 0 or total < 1:
        raise ValueError(f"schedule: need warmup >= 0 and total >= 1 steps, got warmup={warmup}, total={total}")

    def warm(s: int) -> float:
        return (s + 1) / warmup if s < warmup else 1.0

    if name == "constant":
        return warm
    if name == "inverse_sqrt":
        return lambda s: warm(s) if s < warmup else math.sqrt(max(warmup, 1) / (s + 1))
    if name == "cosine":
        def cosine(s: int) -> float:
            if s < warmup:
                return warm(s)
            progress = min(1.0, (s - warmup) / max(1, total - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return cosine
    cut = max(1, math.floor(total * cut_frac))

    def slanted(s: int) -> float:  # rises linearly for cut steps, then falls linearly to 1/ratio
        p = s / cut if s < cut else 1 - (s - cut) / max(1, cut * (1 / cut_frac - 1))
        return (1 + p * (ratio - 1)) / ratio
    return slanted
