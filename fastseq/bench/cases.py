"""One benchmark case as pytest-benchmark times it (benchmarks/test_bench.py): the implementations of a
case (fastseq's backends, as a user gets them, and the baselines), each a zero-argument call made by
`make()` only when the case runs, and the work that gives its figures a ceiling."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Case:
    """op and name (the case's group); sizes; impls: implementation names, fastseq's first; baselines: those
    of impls that are the baselines; make() -> {impl: call}; work: FLOPs, bytes or tanh evaluations per call,
    against the measured ceiling named by `ceiling` (a key of sweep.ceilings', "matmul_flops" per dtype)."""

    op: str
    name: str
    sizes: dict
    impls: tuple[str, ...]
    baselines: tuple[str, ...]
    make: Callable[[], dict[str, Callable[[], object]]] = field(repr=False)
    dtype: str = "fp32"
    work: float = 0.0
    ceiling: str = ""

    def ceiling_of(self, ceilings: dict) -> float | None:
        """The measured ceiling this case's work is held against, or None."""
        value = ceilings.get(self.ceiling)
        return value.get(self.dtype) if isinstance(value, dict) else value
