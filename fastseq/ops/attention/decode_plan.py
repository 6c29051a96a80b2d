"""The balanced split-KV plan of decoding attention, as the kernels (triton_decode.py) compute it on the device.

The real keys of a batch (each row's lengths[b], whole chunks of `chunk` keys) are numbered as one list of
chunks, row after row; work unit u of n takes chunks [u·total // n, (u+1)·total // n), so units differ by at
most one chunk whatever the lengths. A unit may cross rows: each run of its chunks inside one row is a
segment, whose partial softmax (out, lse) goes to workspace slot = its first chunk's number. A slot starts
a segment when it is a row's first chunk or some unit's first chunk; the merge reads only those.

Nothing here reads lengths on the host for a launch: the kernels derive the plan from the lengths on the
device, with only (chunk, units) fixed by the shapes, so a decode step can be captured in a CUDA graph.
This module is that plan in PyTorch: the oracle for the kernels' partition and the sizes they launch with.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

UNITS_PER_SM = 2  # work units per multiprocessor, over all key/value heads
CHUNKS_PER_UNIT = 16  # at full lengths: the balance is within one chunk in this many
MIN_CHUNK = 64  # keys: the smallest chunk (one key block of the 16-bit kernels)


class Segment(NamedTuple):
    row: int
    lo: int  # keys [lo, hi) of `row`
    hi: int
    slot: int  # the workspace slot of its partial


def units(multiprocessors: int, kv_heads: int, max_chunks: int) -> int:
    """Work units per key/value head: UNITS_PER_SM per multiprocessor over all heads, no more than chunks."""
    return max(1, min(-(-UNITS_PER_SM * multiprocessors // kv_heads), max_chunks))


def chunk_size(B: int, Tk: int, multiprocessors: int, kv_heads: int) -> int:
    """Keys per chunk: a power of two from MIN_CHUNK such that full caches give each unit about
    CHUNKS_PER_UNIT chunks (the workspace then holds about that many slots per unit)."""
    n = max(1, -(-UNITS_PER_SM * multiprocessors // kv_heads))
    chunk = MIN_CHUNK
    while B * -(-Tk // chunk) > CHUNKS_PER_UNIT * n and chunk < max(Tk, 1):
        chunk *= 2
    return chunk


def chunks(lengths: Optional[torch.Tensor], B: int, Tk: int, chunk: int) -> torch.Tensor:
    """Chunks per row (int64, (B,)): ceil(min(max(lengths, 0), Tk) / chunk)."""
    n = torch.full((B,), Tk, dtype=torch.int64) if lengths is None else lengths.to(torch.int64).clamp(0, Tk).cpu()
    return (n + chunk - 1) // chunk


def plan(lengths: Optional[torch.Tensor], B: int, Tk: int, chunk: int, n_units: int) -> list[list[Segment]]:
    """Each unit's segments, as the split kernel walks them."""
    n = chunks(lengths, B, Tk, chunk)
    keys = torch.full((B,), Tk, dtype=torch.int64) if lengths is None else lengths.to(torch.int64).clamp(0, Tk).cpu()
    first = torch.cumsum(n, 0) - n
    total = int(n.sum())
    out = []
    for u in range(n_units):
        c, hi_c, segs = u * total // n_units, (u + 1) * total // n_units, []
        while c < hi_c:
            row = int(torch.searchsorted(first + n, torch.tensor(c), right=True))
            end = min(hi_c, int(first[row] + n[row]))
            lo = (c - int(first[row])) * chunk
            segs.append(Segment(row, lo, min((end - int(first[row])) * chunk, int(keys[row])), c))
            c = end
        out.append(segs)
    return out


def is_start(slot: torch.Tensor, row_first: torch.Tensor, total: int, n_units: int) -> torch.Tensor:
    """Whether chunk `slot` of a row whose first chunk is `row_first` begins a segment (the merge's rule)."""
    u = (slot * n_units + total - 1) // max(total, 1)
    return (slot == row_first) | ((u < n_units) & (u * total // n_units == slot))


def workspace_slots(B: int, Tk: int, chunk: int) -> int:
    """Slots the workspace holds: every chunk of full rows."""
    return max(1, B * -(-Tk // chunk))
