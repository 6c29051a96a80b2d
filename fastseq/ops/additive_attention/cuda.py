"""Additive attention on fastseq._C's kernels (kernels/additive_passes.cu, additive_decode.cu), composed as
passes.py lays it out: the scores pass and the gradient pass are CUDA kernels, the softmax and the GEMMs
between them torch's (cuBLAS, on tensor cores).

The FMA share of H (FMA_SHARE, measured by the GPU window) takes the exponentials e^{2q}, e^{2k} computed
here once per pass.
"""
from __future__ import annotations

import torch

from . import passes

# (queries, keys) per block of the scores pass, by tile (kernels/additive_passes.h): the wide one serves
# few queries against many keys.
TILES = ((128, 128), (64, 256))
FMA_COLUMNS = 64  # the FMA share in whole h blocks of the gradient pass (kAdditiveFmaColumns)
# The share of H on the FMA units by element size: float32 takes that path throughout (its exact tanh costs
# more), the 16-bit types the tanh unit until the GPU window measures the share that pays.
FMA_SHARE = {2: 0.0, 4: 1.0, 8: 0.0}


def _ext():
    return torch.ops.fastseq_ext


def h_fma(H: int, dtype: torch.dtype, share: float | None = None) -> int:
    """The columns of H on the FMA path: `share` (FMA_SHARE by default) in whole blocks; none in float64."""
    if dtype == torch.float64:
        return 0
    share = FMA_SHARE[torch.empty((), dtype=dtype).element_size()] if share is None else share
    return min(H // FMA_COLUMNS * FMA_COLUMNS, int(round(share * H / FMA_COLUMNS)) * FMA_COLUMNS)


def tile_for(Tq: int) -> int:
    """The scores pass's tile: the wide one where a row has at most 64 queries."""
    return 1 if Tq <= TILES[1][0] else 0


def exponentials(query_proj, key_proj, fma: int):
    """(a, b): e^{2q}, e^{2k} of the leading `fma` columns (float32), empty where none."""
    if not fma:
        empty = query_proj.new_empty(0, dtype=torch.float32)
        return empty, empty
    return (passes.exponentials(query_proj[..., :fma]).contiguous(),
            passes.exponentials(key_proj[..., :fma]).contiguous())


def scores(query_proj, key_proj, v, lengths, key_padding_mask, h_fma_=None, tile=None):
    """The scores pass: S (B, Tq, Tk) in the accumulation dtype, -inf at keys not kept."""
    Tq, H = query_proj.shape[1], query_proj.shape[2]
    fma = h_fma(H, query_proj.dtype) if h_fma_ is None else h_fma_
    q, k = query_proj.contiguous(), key_proj.contiguous()
    rows = passes.fma_rows(q, k).to(torch.int32)
    return _ext().additive_scores(q, k, v.contiguous(), *exponentials(q, k, fma), rows, lengths, key_padding_mask,
                                  fma, tile_for(Tq) if tile is None else tile)


def gradient_pass(ds, query_proj, key_proj, v, h_fma_=None):
    """The gradient pass from dS (B, Tq, Tk, accumulation dtype) -> (dq, dk, dv) in their inputs' dtypes;
    key_proj's padded rows zeroed."""
    H = query_proj.shape[2]
    fma = h_fma(H, query_proj.dtype) if h_fma_ is None else h_fma_
    q, k = query_proj.contiguous(), key_proj.contiguous()
    rows = passes.fma_rows(q, k).to(torch.int32)
    return _ext().additive_gradient_pass(ds.contiguous(), q, k, v.contiguous(), *exponentials(q, k, fma), rows, fma)


additive_attention, additive_attention_backward = passes.entry_points(scores, gradient_pass)


def additive_attention_decode(query_proj, key_proj, v, values, lengths, key_padding_mask, padding_zeroed=False):
    return _ext().additive_attention_decode(query_proj, key_proj, v, values, lengths, key_padding_mask)
