"""Decoding attention fused in Triton (flash-decoding): one new query per sequence against a KV cache. The
cache is split into chunks of keys, one program per (chunk, batch row × key/value head), all the query
heads of a group at once so each key is read once; a second kernel merges the chunks' partial softmaxes.
k and v are read in place with any batch and head strides (`ops.dot_product.cache_layout`)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...numerics import acc_dtype
from ...triton.common import (acc_type, batch_slices, key_bound, key_valid, padding_args, precision, target,
                              wide)
from . import triton_common as common
from .triton_common import load_tile, store_tile

# Keys a step by element size (registers), the launch's warps and pipeline stages, and the waves of
# programs over the GPU's multiprocessors the cache is split for (benchmarks/tile_sweep.py measures them).
# On an H200 the sweep (no lengths) ranked other launches first, but with ragged lengths (the headline
# benchmark) its pick, 4 warps, 2 stages and 4 waves, took 0.53 ms at B64 Hq32 Hkv8 T2048 against these 0.30.
DECODE = {"BLOCK_N": {2: 64, 4: 16, 8: 16}, "num_warps": 4, "num_stages": 3, "waves": 2}


@triton.jit
def split_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, part_out_ptr, part_lse_ptr, Hq, GROUP, Tk,
                         k_batch, k_head, v_batch, v_head, chunk, n_splits, qk_hi, qk_lo, D: tl.constexpr, Dv: tl.constexpr,
                         HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr,
                         PRECISION: tl.constexpr):
    """The GROUP query heads sharing key/value head `bkv`, over keys [split · chunk, (split + 1) · chunk):
    part_out (B·Hq, n_splits, Dv) normalized within the chunk, part_lse (B·Hq, n_splits) in base 2.
    k_batch, k_head, v_batch, v_head: elements from one batch row, and one key/value head, to the next
    (any: a view of a cache's first Tk positions, a batch expanded from one row, a single head's odd
    stride); each (row, head)'s positions are contiguous rows of D (Dv) elements."""
    qk_scale = wide(qk_hi, qk_lo, ACC)
    split = tl.program_id(0)
    bkv = tl.program_id(1).to(tl.int64)
    Hkv = Hq // GROUP
    b = bkv // Hkv
    kv_head = bkv % Hkv
    g = tl.arange(0, BLOCK_G)
    g_ok = g < GROUP
    rows = b * Hq + kv_head * GROUP + g  # the query heads' flat (batch row × head) index
    q = load_tile(q_ptr, rows, g_ok, D, BLOCK_D, True)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    m = tl.full((BLOCK_G,), float("-inf"), dtype=ACC)
    l = tl.zeros((BLOCK_G,), dtype=ACC)
    acc = tl.zeros((BLOCK_G, BLOCK_DV), dtype=ACC)
    for k0 in range(lo, hi, BLOCK_N):
        keys = k0 + tl.arange(0, BLOCK_N)
        k = load_tile(k_ptr + b * k_batch + kv_head * k_head, keys, keys < hi, D, BLOCK_D, True)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        s = tl.where(key_valid(mask_ptr, b, keys, hi, Tk, HAS_MASK)[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - shift)
        p = tl.exp2(s - shift[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = load_tile(v_ptr + b * v_batch + kv_head * v_head, keys, keys < hi, Dv, BLOCK_DV, True)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC)
        m = m_new
    empty = l == 0
    out = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, l)[:, None])
    lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
    store_tile(part_out_ptr + split * Dv, out, rows * n_splits, g_ok, Dv, BLOCK_DV)
    tl.store(part_lse_ptr + rows * n_splits + split, lse, mask=g_ok)


@triton.jit
def combine_kernel(part_out_ptr, part_lse_ptr, out_ptr, n_splits, Dv: tl.constexpr, BLOCK_S: tl.constexpr,
                           BLOCK_DV: tl.constexpr):
    """out (B·Hq, Dv): the chunks' outputs weighted by their share of the softmax; zeros if none saw a key."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_DV)
    lse = tl.load(part_lse_ptr + row * n_splits + s, mask=s < n_splits, other=float("-inf"))
    top = tl.max(lse, axis=0)
    w = tl.where(lse == float("-inf"), 0.0, tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top)))
    total = tl.sum(w, axis=0)
    parts = load_tile(part_out_ptr + row * n_splits * Dv, s, s < n_splits, Dv, BLOCK_DV, True)
    out = tl.sum(parts * w[:, None], axis=0) / tl.where(total == 0, 1.0, total)
    tl.store(out_ptr + row * Dv + dv, out.to(out_ptr.dtype.element_ty), mask=dv < Dv)


def _multiprocessors(device: torch.device) -> int:
    return target(device).multiprocessors


def decode_splits(batch_heads: int, Tk: int, device: torch.device) -> int:
    """Chunks of the cache per (batch row, key/value head): enough programs for DECODE["waves"] waves of
    the GPU, each chunk at least 64 keys."""
    return max(1, min(triton.cdiv(DECODE["waves"] * _multiprocessors(device), batch_heads), triton.cdiv(Tk, 64)))


def attention_decode(q, k, v, lengths, key_padding_mask, scale):
    """q (B, Hq, D) against k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, Hq, Dv)."""
    common.check_head_dims(q, v)
    k, v = common.unpadded(k, key_padding_mask), common.unpadded(v, key_padding_mask)
    B, Hq, D = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    group = Hq // Hkv
    n_splits = decode_splits(B * Hkv, Tk, q.device)
    block_n = DECODE["BLOCK_N"][q.element_size()]
    chunk = triton.cdiv(triton.cdiv(Tk, n_splits), block_n) * block_n
    n_splits = triton.cdiv(Tk, chunk)
    acc = acc_dtype(q.dtype)
    part_out = q.new_empty(B, Hq, n_splits, Dv, dtype=acc)
    part_lse = q.new_empty(B, Hq, n_splits, dtype=acc)
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, q)
    flags = {"HAS_LENGTHS": has_len, "HAS_MASK": has_mask}
    qk_hi, qk_lo, _, _ = common.scales(scale)
    for part in batch_slices(B, Hkv, len_arg, mask_arg, flags):
        pk, pv = part(k, v)
        split_kernel[(n_splits, part.rows * Hkv)](
            *part(q), pk, pv, part.lengths, part.mask, *part(part_out, part_lse), Hq, group, Tk, pk.stride(0),
            pk.stride(1), pv.stride(0), pv.stride(1), chunk, n_splits, qk_hi, qk_lo, D, Dv, **flags,
            BLOCK_G=common.block(group), BLOCK_N=block_n, BLOCK_D=common.block(D), BLOCK_DV=common.block(Dv),
            ACC=acc_type(q.dtype), PRECISION=precision(q.dtype), num_warps=DECODE["num_warps"],
            num_stages=DECODE["num_stages"])
    out = q.new_empty(B, Hq, Dv)
    combine_kernel[(B * Hq,)](part_out, part_lse, out, n_splits, Dv, BLOCK_S=triton.next_power_of_2(n_splits),
                              BLOCK_DV=common.block(Dv), num_warps=4)
    return out


def aot_launches():
    """Decoding at each case of the gpu and headline presets, in bf16 (ragged lengths, as a KVCache passes
    them) and at the first in fp32 and fp64 (fastseq.ops.aot)."""
    from ..aot import Launch
    from . import DECODE_CASES

    def run(B, Hq, Hkv, T, D, dtype):
        q = torch.empty(B, Hq, D, dtype=dtype)
        k, v = (torch.empty(B, Hkv, T, D, dtype=dtype) for _ in range(2))
        return attention_decode(q, k, v, torch.full((B,), T, dtype=torch.int32), None, D ** -0.5)

    cases = list(dict.fromkeys(tuple(c) for preset in ("gpu", "headline") for c in DECODE_CASES[preset]))
    for case in cases:
        yield Launch("attention_decode B{} Hq{} Hkv{} T{} D{} bf16".format(*case),
                     lambda case=case: run(*case, torch.bfloat16))
    for dtype in (torch.float32, torch.float64):
        yield Launch("attention_decode B{} Hq{} Hkv{} T{} D{} ".format(*cases[0]) + str(dtype),
                     lambda dtype=dtype: run(*cases[0], dtype))
