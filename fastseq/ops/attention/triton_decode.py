"""Decoding attention fused in Triton (flash-decoding over a balanced split): one new query per sequence
against a KV cache. The real keys of the whole batch, in chunks, are cut into equal work units
(decode_plan.py); one program per (unit, key/value head) takes its unit's chunks for all the query heads of
that group, so each key is read once, and writes one partial softmax per row its unit crosses; a second
kernel merges each row's partials. The plan is derived from the lengths on the device (no host read, no
allocation that depends on them): a step can be captured in a CUDA graph. k and v are read in place with
any batch and head strides (`ops.attention.cache_layout`)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...numerics import acc_dtype
from ...triton.common import acc_type, key_bound, key_valid, padding_args, precision, target, wide
from . import decode_plan
from . import triton_common as common
from .triton_common import load_tile, store_tile

# Keys a step by element size (registers), the launch's warps and pipeline stages.
DECODE = {"BLOCK_N": {2: 64, 4: 16, 8: 16}, "num_warps": 4, "num_stages": 3}
MAX_BLOCK_B = 1024  # rows the plan reads at a time
COMBINE_SLOTS = 16  # slots the merge reads at a time (a row's segments are few)


@triton.jit
def _row_chunks(lengths_ptr, rows, B, Tk, chunk, HAS_LENGTHS: tl.constexpr):
    """Chunks of each of `rows` (0 past B)."""
    if HAS_LENGTHS:
        n = tl.minimum(tl.maximum(tl.load(lengths_ptr + rows, mask=rows < B, other=0), 0), Tk)
    else:
        n = tl.where(rows < B, Tk, 0)
    return (n + chunk - 1) // chunk


@triton.jit
def _block_plan(lengths_ptr, r0, c, row, first, before, B, Tk, chunk, HAS_LENGTHS: tl.constexpr,
                BLOCK_B: tl.constexpr):
    """One block of rows [r0, r0 + BLOCK_B) of the plan's scan: the chunks before it come in as `before`;
    chunk number c's row and that row's first chunk are added to (row, first) when c falls in the block."""
    rows = r0 + tl.arange(0, BLOCK_B)
    n = _row_chunks(lengths_ptr, rows, B, Tk, chunk, HAS_LENGTHS)
    end = before + tl.cumsum(n, axis=0)
    hit = (end > c) & (end - n <= c)
    return (row + tl.sum(tl.where(hit, rows, 0), axis=0), first + tl.sum(tl.where(hit, end - n, 0), axis=0),
            before + tl.sum(n, axis=0))


@triton.jit
def _scan(lengths_ptr, c, B, Tk, chunk, HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr,
          ONE_BLOCK: tl.constexpr):
    """(row of chunk number c, that row's first chunk, the total of chunks): c = -1 asks the total only.
    ONE_BLOCK: B fits one block of rows (straight-line code, the common case)."""
    if ONE_BLOCK:
        row, first, total = _block_plan(lengths_ptr, 0, c, 0, 0, 0, B, Tk, chunk, HAS_LENGTHS, BLOCK_B)
    else:
        row = 0
        first = 0
        total = 0
        for r0 in range(0, B, BLOCK_B):
            row, first, total = _block_plan(lengths_ptr, r0, c, row, first, total, B, Tk, chunk, HAS_LENGTHS,
                                            BLOCK_B)
    return row, first, total


@triton.jit
def _rows_before(lengths_ptr, b, B, Tk, chunk, HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr,
                 ONE_BLOCK: tl.constexpr):
    """The number of row b's first chunk: the chunks of the rows before it."""
    if ONE_BLOCK:
        rows = tl.arange(0, BLOCK_B)
        first = tl.sum(tl.where(rows < b, _row_chunks(lengths_ptr, rows, B, Tk, chunk, HAS_LENGTHS), 0), axis=0)
    else:
        first = 0
        for r0 in range(0, B, BLOCK_B):
            rows = r0 + tl.arange(0, BLOCK_B)
            first += tl.sum(tl.where(rows < b, _row_chunks(lengths_ptr, rows, B, Tk, chunk, HAS_LENGTHS), 0), axis=0)
    return first


@triton.jit
def split_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, part_out_ptr, part_lse_ptr, B, Hq, GROUP, Hkv, Tk,
                 k_batch, k_head, v_batch, v_head, chunk, n_units, qk_hi, qk_lo, D: tl.constexpr, Dv: tl.constexpr,
                 HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_B: tl.constexpr, ONE_BLOCK: tl.constexpr,
                 BLOCK_G: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr,
                 PRECISION: tl.constexpr):
    """Work unit `unit` for the GROUP query heads of key/value head `kv_head`: for each row its chunks cross,
    part_out (slot, Hq, Dv) normalized within the segment and part_lse (slot, Hq) in base 2, at the slot
    of the segment's first chunk. k_batch, k_head, v_batch, v_head: elements from one batch row, and one
    key/value head, to the next; each (row, head)'s positions are contiguous rows of D (Dv) elements."""
    qk_scale = wide(qk_hi, qk_lo, ACC)
    pid = tl.program_id(0)
    kv_head = pid % Hkv
    unit = pid // Hkv
    _, _, total = _scan(lengths_ptr, -1, B, Tk, chunk, HAS_LENGTHS, BLOCK_B, ONE_BLOCK)
    c = (unit.to(tl.int64) * total // n_units).to(tl.int32)
    last = ((unit + 1).to(tl.int64) * total // n_units).to(tl.int32)
    g = tl.arange(0, BLOCK_G)
    g_ok = g < GROUP
    heads = kv_head * GROUP + g
    while c < last:
        row, first, _ = _scan(lengths_ptr, c, B, Tk, chunk, HAS_LENGTHS, BLOCK_B, ONE_BLOCK)
        b = row.to(tl.int64)
        n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
        end = tl.minimum(last, first + (n_keys + chunk - 1) // chunk)
        lo = (c - first) * chunk
        hi = tl.minimum((end - first) * chunk, n_keys)
        q = load_tile(q_ptr, b * Hq + heads, g_ok, D, BLOCK_D, True)
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
        slot = c.to(tl.int64) * Hq + heads
        store_tile(part_out_ptr, out, slot, g_ok, Dv, BLOCK_DV)
        tl.store(part_lse_ptr + slot, lse, mask=g_ok)
        c = end


@triton.jit
def combine_kernel(lengths_ptr, part_out_ptr, part_lse_ptr, out_ptr, B, Hq, Tk, chunk, n_units, Dv: tl.constexpr,
                   HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
                   BLOCK_DV: tl.constexpr, ACC: tl.constexpr):
    """out (B·Hq, Dv): row b's segments (the slots decode_plan.is_start names) weighted by their share of
    the softmax; zeros if none saw a key."""
    pid = tl.program_id(0)
    b = pid // Hq
    head = pid % Hq
    _, _, total = _scan(lengths_ptr, -1, B, Tk, chunk, HAS_LENGTHS, BLOCK_B, ONE_BLOCK)  # slots × units: int32
    first = _rows_before(lengths_ptr, b, B, Tk, chunk, HAS_LENGTHS, BLOCK_B, ONE_BLOCK)
    n = (key_bound(lengths_ptr, b, Tk, HAS_LENGTHS) + chunk - 1) // chunk
    top = tl.full((), float("-inf"), dtype=ACC)
    weight = tl.zeros((), dtype=ACC)
    acc = tl.zeros((BLOCK_DV,), dtype=ACC)
    for s0 in range(0, n, BLOCK_S):
        slot = first + s0 + tl.arange(0, BLOCK_S)
        u = (slot * n_units + total - 1) // tl.maximum(total, 1)
        start = (slot == first) | ((u < n_units) & (u * total // n_units == slot))
        ok = (s0 + tl.arange(0, BLOCK_S) < n) & start
        at = slot.to(tl.int64) * Hq + head
        lse = tl.load(part_lse_ptr + at, mask=ok, other=float("-inf"))
        new_top = tl.maximum(top, tl.max(lse, axis=0))
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)
        w = tl.where(lse == float("-inf"), 0.0, tl.exp2(lse - shift))
        alpha = tl.where(top == float("-inf"), 0.0, tl.exp2(top - shift))
        parts = load_tile(part_out_ptr, at, ok, Dv, BLOCK_DV, True)
        acc = acc * alpha + tl.sum(parts * w[:, None], axis=0)
        weight = weight * alpha + tl.sum(w, axis=0)
        top = new_top
    dv = tl.arange(0, BLOCK_DV)
    out = acc / tl.where(weight == 0, 1.0, weight)
    tl.store(out_ptr + pid.to(tl.int64) * Dv + dv, out.to(out_ptr.dtype.element_ty), mask=dv < Dv)


def launch_plan(B: int, Hkv: int, Tk: int, device: torch.device) -> tuple[int, int]:
    """(keys per chunk, work units per key/value head) for a cache of B rows × Tk positions."""
    sms = target(device).multiprocessors
    chunk = decode_plan.chunk_size(B, Tk, sms, Hkv)
    return chunk, decode_plan.units(sms, Hkv, decode_plan.workspace_slots(B, Tk, chunk))


def attention_decode(q, k, v, lengths, key_padding_mask, scale):
    """q (B, Hq, D) against k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, Hq, Dv)."""
    common.check_head_dims(q, v)
    k, v = common.unpadded(k, key_padding_mask), common.unpadded(v, key_padding_mask)
    B, Hq, D = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    chunk, n_units = launch_plan(B, Hkv, Tk, q.device)
    slots = decode_plan.workspace_slots(B, Tk, chunk)
    if slots * n_units >= 2**31:
        raise ValueError(f"attention_decode: the triton backend plans caches of up to 2^31 / {n_units} chunks, got "
                         f"B = {B} rows of Tk = {Tk} ({slots} chunks of {chunk} keys); use backend 'torch'")
    part_out = q.new_empty(slots, Hq, Dv, dtype=acc_dtype(q.dtype))
    part_lse = q.new_empty(slots, Hq, dtype=part_out.dtype)
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, q)
    block_b = min(MAX_BLOCK_B, triton.next_power_of_2(B))
    qk_hi, qk_lo, _, _ = common.scales(scale)
    split_kernel[(n_units * Hkv,)](
        q, k, v, len_arg, mask_arg, part_out, part_lse, B, Hq, Hq // Hkv, Hkv, Tk, k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), chunk, n_units, qk_hi, qk_lo, D, Dv, HAS_LENGTHS=has_len, HAS_MASK=has_mask,
        BLOCK_B=block_b, ONE_BLOCK=B <= block_b, BLOCK_G=common.block(Hq // Hkv),
        BLOCK_N=DECODE["BLOCK_N"][q.element_size()],
        BLOCK_D=common.block(D), BLOCK_DV=common.block(Dv), ACC=acc_type(q.dtype), PRECISION=precision(q.dtype),
        num_warps=DECODE["num_warps"], num_stages=DECODE["num_stages"])
    out = q.new_empty(B, Hq, Dv)
    combine_kernel[(B * Hq,)](len_arg, part_out, part_lse, out, B, Hq, Tk, chunk, n_units, Dv, HAS_LENGTHS=has_len,
                              BLOCK_B=block_b, ONE_BLOCK=B <= block_b, BLOCK_S=COMBINE_SLOTS, BLOCK_DV=common.block(Dv),
                              ACC=acc_type(q.dtype),
                              num_warps=4)
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
