"""Multi-head scaled dot-product attention fused in Triton (flash attention: Dao et al. 2022, 2023). The
math, the masking rules and the workspace are in fastseq/reference/attention.py.

Forward: one program per (block of BLOCK_M queries, batch row × query head). It streams the keys in
blocks of BLOCK_N with an online softmax in base 2 (the scale folded with log2 e), S = Q Kᵀ and the
output P V both on `tl.dot` (wgmma on sm_90, mma on sm_80). Key blocks that no query of the program may
see are never visited: those past the row's length and, when causal, those after the program's last
query. Blocks every query sees whole take a loop without masks; the rest (the causal diagonal, the
row's last block) take a masked one. It stores O and the log-sum-exp.

Backward, recomputing P from the log-sum-exp (no Tq × Tk tensor is ever stored):
    - dK, dV: one program per (block of keys, batch row × key/value head); it walks the query heads that
      share the key/value head and their query blocks (from the causal diagonal on), so grouped heads
      are summed in registers, with no atomics;
    - dQ: one program per (block of queries, batch row × query head), over the same key blocks as the
      forward.
Both are deterministic. D_i = dO_i · O_i is computed by torch beforehand.

Decode (one query per sequence against a KV cache, flash-decoding): the cache is split into chunks of
keys, one program per (chunk, batch row × key/value head), all the query heads of a group at once so
each key is read once; a second kernel merges the chunks' partial softmaxes.

Dropout draws its mask from Philox on (seed, key, query, batch row × head), so the backward redraws
exactly the forward's mask; the mask differs from the reference's (torch.Generator), its law does not.

Configurations: on a GPU the forward and backward are autotuned over a few tile shapes (CONFIGS),
pruned by the element size and the head dim so that every one fits the registers and shared memory
(checked ahead of time for sm_90 and sm_80 by tests/test_compile_checks.py); float64 and the
interpreter take one small fixed tile.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..backends import triton_interpret
from .common import ACC, batch_slices, key_bound, key_valid, mask_pointer, padding_args, precision

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by the autotuner, per kernel, architecture (90: Hopper,
# 80: Ampere and the rest), element size (2 or 4 bytes) and largest head dim (64, 128, 256): each
# compiles without spilling under Triton 3.6 and 3.9 (tests/test_compile_checks.py). With dropout only
# the last, smallest one runs (Philox's counters take registers).
CONFIGS = {
    ("fwd", 90, 2): {64: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2)],
                     128: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2)], 256: [(32, 32, 4, 2)]},
    ("fwd", 80, 2): {64: [(128, 64, 8, 3), (64, 64, 4, 2)], 128: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 2)],
                     256: [(32, 32, 4, 2)]},
    ("dkdv", 90, 2): {64: [(16, 64, 8, 2), (32, 32, 4, 2)], 128: [(16, 64, 8, 2), (32, 32, 4, 2)],
                      256: [(16, 16, 4, 1)]},
    ("dkdv", 80, 2): {64: [(16, 64, 8, 2), (32, 32, 4, 2)], 128: [(32, 32, 4, 2), (16, 32, 4, 2)],
                      256: [(16, 16, 4, 1)]},
    ("dq", 90, 2): {64: [(128, 64, 8, 2), (64, 32, 4, 2)], 128: [(128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2)],
                    256: [(32, 32, 8, 1), (32, 16, 4, 1)]},
    ("dq", 80, 2): {64: [(128, 64, 8, 2), (64, 32, 4, 2)], 128: [(64, 32, 8, 2), (32, 32, 4, 1)],
                    256: [(32, 32, 8, 1)]},
}
for _kernel in ("fwd", "dkdv", "dq"):  # float32: FMA products (or TF32) hold whole tiles in registers
    for _arch in (90, 80):
        CONFIGS[(_kernel, _arch, 4)] = {64: [(16, 16, 4, 1)], 128: [(16, 16, 4, 1)], 256: [(16, 16, 4, 1)]}
FIXED = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}  # float64, and the interpreter
DECODE = {"BLOCK_N": {2: 64, 4: 16, 8: 16}, "num_warps": 4}  # keys a step, by element size (registers)


# ------------------------------------------------------------------------------------------ kernels


@triton.jit
def _tile(ptr, rows, row_ok, W: tl.constexpr, BLOCK_W: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """Rows `rows` (len(rows), BLOCK_W) of a row-major matrix of width W, zeros past W and where not
    row_ok; only the masks that can be false are applied, so full tiles load as wide vectors."""
    cols = tl.arange(0, BLOCK_W)
    ptrs = ptr + rows[:, None] * W + cols[None, :]
    if CHECK_ROWS:
        if W == BLOCK_W:
            return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            return tl.load(ptrs, mask=row_ok[:, None] & (cols < W)[None, :], other=0.0)
    else:
        if W == BLOCK_W:
            return tl.load(ptrs)
        else:
            return tl.load(ptrs, mask=(cols < W)[None, :], other=0.0)


@triton.jit
def _store_tile(ptr, value, rows, row_ok, W: tl.constexpr, BLOCK_W: tl.constexpr):
    cols = tl.arange(0, BLOCK_W)
    ptrs = ptr + rows[:, None] * W + cols[None, :]
    if W == BLOCK_W:
        tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < W)[None, :])


@triton.jit
def _keep(seed, keys, queries, bh, p_drop, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Dropout's kept entries (BLOCK_M, BLOCK_N) for the queries × keys of batch-row-head bh."""
    c0 = tl.broadcast_to(keys[None, :], (BLOCK_M, BLOCK_N)).to(tl.uint32)
    c1 = tl.broadcast_to(queries[:, None], (BLOCK_M, BLOCK_N)).to(tl.uint32)
    c2 = tl.full((BLOCK_M, BLOCK_N), 0, tl.uint32) + bh.to(tl.uint32)
    r, _, _, _ = tl.philox(seed, c0, c1, c2, tl.zeros((BLOCK_M, BLOCK_N), tl.uint32))
    return tl.uint_to_uniform_float(r) >= p_drop


@triton.jit
def _query_program(Hq, GROUP, BLOCK_M: tl.constexpr):
    """For a program over (block of queries, batch row × query head): (bh, b, kvh, m0, queries) — the
    flat query row, the batch row, the flat key/value row its head reads, and its queries."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    m0 = tl.program_id(0) * BLOCK_M
    return bh, b, b * (Hq // GROUP) + (bh % Hq) // GROUP, m0, m0 + tl.arange(0, BLOCK_M)


@triton.jit
def _visible(mask_ptr, b, queries, keys, n_keys, Tq, Tk, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """(BLOCK_M, BLOCK_N) True where a query may attend to a key (padding, causal aligned to the end)."""
    ok = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)[None, :] & (queries < Tq)[:, None]
    if CAUSAL:
        ok = ok & (keys[None, :] <= queries[:, None] + (Tk - Tq))
    return ok


@triton.jit
def _key_range(m0, n_keys, Tq, Tk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """(full, end): the keys queries [m0, m0 + BLOCK_M) may see end before `end`; keys below `full`
    (a multiple of BLOCK_N) are seen by every one of them, unpadded by lengths and causality."""
    end = n_keys
    full = n_keys
    if CAUSAL:
        end = tl.minimum(end, m0 + BLOCK_M + Tk - Tq)
        full = tl.minimum(full, m0 + 1 + Tk - Tq)
    end = tl.maximum(end, 0)
    full = tl.maximum(full, 0) // BLOCK_N * BLOCK_N
    return full, end


@triton.jit
def _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, qk_scale, seed, p_drop,
               D: tl.constexpr, Dv: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
               DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """One block of keys of the online softmax; MASKED for the blocks some query sees only in part (the
    unmasked ones lie below the row's length: their loads need no key mask)."""
    keys = k0 + tl.arange(0, BLOCK_N)
    k = _tile(k_row, keys, keys < n_keys, D, BLOCK_D, MASKED)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
    if MASKED:
        s = tl.where(_visible(mask_ptr, b, queries, keys, n_keys, Tq, Tk, CAUSAL, HAS_MASK), s, float("-inf"))
    elif HAS_MASK:
        s = tl.where(key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep exp2() finite
    alpha = tl.exp2(m - shift)
    p = tl.exp2(s - shift[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    if DROPOUT:
        p = tl.where(_keep(seed, keys, queries, bh, p_drop, BLOCK_M, BLOCK_N), p, 0.0)
    v = _tile(v_row, keys, keys < n_keys, Dv, BLOCK_DV, MASKED)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC)
    return acc, m_new, l


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, out_ptr, lse_ptr, Hq, GROUP, Tq, Tk, T_BUCKET, scales_ptr,
                seed, p_drop, D: tl.constexpr, Dv: tl.constexpr, CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> out (B, Hq, Tq, Dv), lse (B, Hq, Tq).
    scales: (scale · log2 e, scale, log2 e) in ACC; T_BUCKET only keys the autotuner's cache."""
    qk_scale, log2e = tl.load(scales_ptr), tl.load(scales_ptr + 2)
    bh, b, kvh, m0, queries = _query_program(Hq, GROUP, BLOCK_M)
    q_ok = queries < Tq
    q = _tile(q_ptr + bh * Tq * D, queries, q_ok, D, BLOCK_D, True)
    k_row, v_row = k_ptr + kvh * Tk * D, v_ptr + kvh * Tk * Dv
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    full, end = _key_range(m0, n_keys, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)

    m = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    l = tl.zeros((BLOCK_M,), dtype=ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=ACC)
    for k0 in range(0, full, BLOCK_N):
        acc, m, l = _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, qk_scale,
                               seed, p_drop, D, Dv, False, CAUSAL, HAS_MASK, DROPOUT, BLOCK_M, BLOCK_N, BLOCK_D,
                               BLOCK_DV, ACC, PRECISION)
    for k0 in range(full, end, BLOCK_N):
        acc, m, l = _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, qk_scale,
                               seed, p_drop, D, Dv, True, CAUSAL, HAS_MASK, DROPOUT, BLOCK_M, BLOCK_N, BLOCK_D,
                               BLOCK_DV, ACC, PRECISION)

    empty = l == 0  # no visible key: zero output, lse = +inf
    if DROPOUT:
        acc = acc / (1 - p_drop)
    out = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, l)[:, None])
    lse = tl.where(empty, float("inf"), (m + tl.log2(tl.where(empty, 1.0, l))) / log2e)
    _store_tile(out_ptr + bh * Tq * Dv, out, queries, q_ok, Dv, BLOCK_DV)
    tl.store(lse_ptr + bh * Tq + queries, lse.to(lse_ptr.dtype.element_ty), mask=q_ok)


@triton.jit
def _bwd_dkdv_kernel(do_ptr, q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                     Hq, GROUP, Tq, Tk, T_BUCKET, scales_ptr, seed, p_drop, D: tl.constexpr, Dv: tl.constexpr,
                     CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr,
                     DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_DV: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """dk (B, Hkv, Tk, D), dv (B, Hkv, Tk, Dv), every element written (zeros where no query sees the key)."""
    qk_scale, scale, log2e = tl.load(scales_ptr), tl.load(scales_ptr + 1), tl.load(scales_ptr + 2)
    bkv = tl.program_id(1).to(tl.int64)
    Hkv = Hq // GROUP
    b = bkv // Hkv
    n0 = tl.program_id(0) * BLOCK_N
    keys = n0 + tl.arange(0, BLOCK_N)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    dk_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC)
    dv_acc = tl.zeros((BLOCK_N, BLOCK_DV), dtype=ACC)
    if n0 < n_keys:
        k = _tile(k_ptr + bkv * Tk * D, keys, keys < n_keys, D, BLOCK_D, True)
        v = _tile(v_ptr + bkv * Tk * Dv, keys, keys < n_keys, Dv, BLOCK_DV, True)
        k_ok = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)
        start = 0
        if CAUSAL:  # queries before the diagonal see none of these keys
            start = tl.maximum(n0 - (Tk - Tq), 0) // BLOCK_M * BLOCK_M
        for g in range(0, GROUP):
            bh = b * Hq + (bkv % Hkv) * GROUP + g
            for m0 in range(start, Tq, BLOCK_M):
                queries = m0 + tl.arange(0, BLOCK_M)
                q_ok = queries < Tq
                q = _tile(q_ptr + bh * Tq * D, queries, q_ok, D, BLOCK_D, True)
                do = _tile(do_ptr + bh * Tq * Dv, queries, q_ok, Dv, BLOCK_DV, True)
                lse = tl.load(lse_ptr + bh * Tq + queries, mask=q_ok, other=float("inf")) * log2e
                delta = tl.load(delta_ptr + bh * Tq + queries, mask=q_ok, other=0.0)
                st = tl.dot(k, tl.trans(q), input_precision=PRECISION, out_dtype=ACC) * qk_scale
                seen = k_ok[:, None] & q_ok[None, :]
                if CAUSAL:
                    seen = seen & (keys[:, None] <= queries[None, :] + (Tk - Tq))
                pt = tl.where(seen, tl.exp2(st - lse[None, :]), 0.0)
                dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION, out_dtype=ACC)
                if DROPOUT:
                    keep = tl.trans(_keep(seed, keys, queries, bh, p_drop, BLOCK_M, BLOCK_N))
                    dv_acc += tl.dot(tl.where(keep, pt / (1 - p_drop), 0.0).to(do.dtype), do,
                                     input_precision=PRECISION, out_dtype=ACC)
                    dpt = tl.where(keep, dpt / (1 - p_drop), 0.0)
                else:
                    dv_acc += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION, out_dtype=ACC)
                dst = pt * (dpt - delta[None, :])
                dk_acc += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION, out_dtype=ACC)
    _store_tile(dk_ptr + bkv * Tk * D, dk_acc * scale, keys, keys < Tk, D, BLOCK_D)
    _store_tile(dv_ptr + bkv * Tk * Dv, dv_acc, keys, keys < Tk, Dv, BLOCK_DV)


@triton.jit
def _bwd_dq_kernel(do_ptr, q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, lse_ptr, delta_ptr, dq_ptr,
                   Hq, GROUP, Tq, Tk, T_BUCKET, scales_ptr, seed, p_drop, D: tl.constexpr, Dv: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   ACC: tl.constexpr, PRECISION: tl.constexpr):
    """dq (B, Hq, Tq, D)."""
    qk_scale, scale, log2e = tl.load(scales_ptr), tl.load(scales_ptr + 1), tl.load(scales_ptr + 2)
    bh, b, kvh, m0, queries = _query_program(Hq, GROUP, BLOCK_M)
    q_ok = queries < Tq
    q = _tile(q_ptr + bh * Tq * D, queries, q_ok, D, BLOCK_D, True)
    do = _tile(do_ptr + bh * Tq * Dv, queries, q_ok, Dv, BLOCK_DV, True)
    lse = tl.load(lse_ptr + bh * Tq + queries, mask=q_ok, other=float("inf")) * log2e
    delta = tl.load(delta_ptr + bh * Tq + queries, mask=q_ok, other=0.0)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    _, end = _key_range(m0, n_keys, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    for k0 in range(0, end, BLOCK_N):
        keys = k0 + tl.arange(0, BLOCK_N)
        k = _tile(k_ptr + kvh * Tk * D, keys, keys < n_keys, D, BLOCK_D, True)
        v = _tile(v_ptr + kvh * Tk * Dv, keys, keys < n_keys, Dv, BLOCK_DV, True)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        p = tl.where(_visible(mask_ptr, b, queries, keys, n_keys, Tq, Tk, CAUSAL, HAS_MASK),
                     tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
        if DROPOUT:
            dp = tl.where(_keep(seed, keys, queries, bh, p_drop, BLOCK_M, BLOCK_N), dp / (1 - p_drop), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION, out_dtype=ACC)
    _store_tile(dq_ptr + bh * Tq * D, dq * scale, queries, q_ok, D, BLOCK_D)


@triton.jit
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, part_out_ptr, part_lse_ptr, Hq, GROUP, Tk,
                         k_batch, k_head, v_batch, v_head, chunk, n_splits, scales_ptr, D: tl.constexpr, Dv: tl.constexpr,
                         HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr,
                         PRECISION: tl.constexpr):
    """The GROUP query heads sharing key/value head `bkv`, over keys [split · chunk, (split + 1) · chunk):
    part_out (B·Hq, n_splits, Dv) normalized within the chunk, part_lse (B·Hq, n_splits) in base 2.
    k_batch, k_head, v_batch, v_head: elements from one batch row, and one key/value head, to the next
    (any: a view of a cache's first Tk positions, a batch expanded from one row, a single head's odd
    stride); each (row, head)'s positions are contiguous rows of D (Dv) elements."""
    qk_scale = tl.load(scales_ptr)
    split = tl.program_id(0)
    bkv = tl.program_id(1).to(tl.int64)
    Hkv = Hq // GROUP
    b = bkv // Hkv
    kv_head = bkv % Hkv
    g = tl.arange(0, BLOCK_G)
    g_ok = g < GROUP
    rows = b * Hq + kv_head * GROUP + g  # the query heads' flat (batch row × head) index
    q = _tile(q_ptr, rows, g_ok, D, BLOCK_D, True)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    m = tl.full((BLOCK_G,), float("-inf"), dtype=ACC)
    l = tl.zeros((BLOCK_G,), dtype=ACC)
    acc = tl.zeros((BLOCK_G, BLOCK_DV), dtype=ACC)
    for k0 in range(lo, hi, BLOCK_N):
        keys = k0 + tl.arange(0, BLOCK_N)
        k = _tile(k_ptr + b * k_batch + kv_head * k_head, keys, keys < hi, D, BLOCK_D, True)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        s = tl.where(key_valid(mask_ptr, b, keys, hi, Tk, HAS_MASK)[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - shift)
        p = tl.exp2(s - shift[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = _tile(v_ptr + b * v_batch + kv_head * v_head, keys, keys < hi, Dv, BLOCK_DV, True)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC)
        m = m_new
    empty = l == 0
    out = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, l)[:, None])
    lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
    _store_tile(part_out_ptr + split * Dv, out, rows * n_splits, g_ok, Dv, BLOCK_DV)
    tl.store(part_lse_ptr + rows * n_splits + split, lse, mask=g_ok)


@triton.jit
def _decode_combine_kernel(part_out_ptr, part_lse_ptr, out_ptr, n_splits, Dv: tl.constexpr, BLOCK_S: tl.constexpr,
                           BLOCK_DV: tl.constexpr):
    """out (B·Hq, Dv): the chunks' outputs weighted by their share of the softmax; zeros if none saw a key."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_DV)
    lse = tl.load(part_lse_ptr + row * n_splits + s, mask=s < n_splits, other=float("-inf"))
    top = tl.max(lse, axis=0)
    w = tl.where(lse == float("-inf"), 0.0, tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top)))
    total = tl.sum(w, axis=0)
    parts = _tile(part_out_ptr + row * n_splits * Dv, s, s < n_splits, Dv, BLOCK_DV, True)
    out = tl.sum(parts * w[:, None], axis=0) / tl.where(total == 0, 1.0, total)
    tl.store(out_ptr + row * Dv + dv, out.to(out_ptr.dtype.element_ty), mask=dv < Dv)


_KERNELS = {"fwd": _fwd_kernel, "dkdv": _bwd_dkdv_kernel, "dq": _bwd_dq_kernel}


# ------------------------------------------------------------------------------------------ tuning


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _arch(device: torch.device) -> int:
    return 90 if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9 else 80


def _dim_bucket(head_dim: int) -> int:
    return 64 if head_dim <= 64 else 128 if head_dim <= 128 else 256


def configs_for(kernel: str, arch: int, element_size: int, head_dim: int,
                dropout: bool = False) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries for these inputs."""
    tiles = CONFIGS[(kernel, arch, 2 if element_size <= 2 else 4)][_dim_bucket(head_dim)]
    return tiles[-1:] if dropout else tiles


def _config_list(kernel: str) -> list[triton.Config]:
    """Every distinct tile of a kernel, over architectures, element sizes and head dims."""
    tiles = sorted({tile for (name, _, _), by_dim in CONFIGS.items() if name == kernel
                    for dim_tiles in by_dim.values() for tile in dim_tiles})
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in tiles]


def tile_of(config: triton.Config) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a configuration: read from what Triton itself keeps,
    so a configuration Triton rebuilt (its autotune cache does) is recognized like the original."""
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages


def prune(kernel: str, configs, named_args, **kwargs) -> list[triton.Config]:
    """The autotuner's early pruning: the configurations among `configs` meant for these inputs (their
    device's architecture, element size, head dims and dropout; `configs_for`)."""
    args = {**named_args, **kwargs}
    q = args["q_ptr"]
    wanted = configs_for(kernel, _arch(q.device), q.element_size(), max(args["D"], args["Dv"]), args["DROPOUT"])
    return [c for c in configs if tile_of(c) in wanted]


_KEY = ["D", "Dv", "T_BUCKET", "CAUSAL", "HAS_MASK", "DROPOUT"]


@functools.lru_cache(maxsize=None)
def _tuned(kernel: str):
    return triton.autotune(configs=_config_list(kernel), key=_KEY,
                           prune_configs_by={"early_config_prune": functools.partial(prune, kernel)})(_KERNELS[kernel])


def _launch(kernel: str, grid, args: tuple, flags: dict, dtype: torch.dtype) -> None:
    """Autotuned on a GPU for 16- and 32-bit inputs; FIXED tiles for float64 and the interpreter."""
    if dtype == torch.float64 or triton_interpret():
        _KERNELS[kernel][grid(FIXED)](*args, **flags, BLOCK_M=FIXED["BLOCK_M"], BLOCK_N=FIXED["BLOCK_N"],
                                      num_warps=FIXED["num_warps"], num_stages=FIXED["num_stages"])
    else:
        _tuned(kernel)[grid](*args, **flags)


# ------------------------------------------------------------------------------------------ launchers


def _flags(q, v, causal, lengths, key_padding_mask, dropout_p):
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, q)
    flags = {"CAUSAL": causal, "HAS_LENGTHS": has_len, "HAS_MASK": has_mask, "DROPOUT": dropout_p > 0,
             "BLOCK_D": _block(q.shape[3]), "BLOCK_DV": _block(v.shape[3]), "ACC": ACC.get(q.dtype, tl.float32),
             "PRECISION": precision(q.dtype)}
    return len_arg, mask_arg, flags


def _check_head_dims(q, v):
    if max(q.shape[3], v.shape[3]) > MAX_HEAD_DIM:
        raise ValueError(f"attention: the triton backend serves head dims up to {MAX_HEAD_DIM}, got D = "
                         f"{q.shape[3]}, Dv = {v.shape[3]}; use backend 'reference'")


def _scales(q, scale):
    """(scale · log2 e, scale, log2 e) as a tensor in the accumulation dtype: a float argument would reach
    the kernel as float32, too coarse for float64."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.tensor([scale * LOG2E, scale, LOG2E], dtype=acc, device=q.device)


def _sizes(q, k, v):
    B, Hq, Tq, D = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    return B, Hq, Hkv, Tq, Tk, D, Dv, min(triton.next_power_of_2(max(Tq, Tk)), 16384)


def attention_forward(q, k, v, causal, lengths, key_padding_mask, scale, dropout_p, seed):
    _check_head_dims(q, v)
    B, Hq, Hkv, Tq, Tk, D, Dv, bucket = _sizes(q, k, v)
    out = q.new_empty(B, Hq, Tq, Dv)
    lse = q.new_empty(B, Hq, Tq, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    len_arg, mask_arg, flags = _flags(q, v, causal, lengths, key_padding_mask, dropout_p)
    scales = _scales(q, scale)
    for part in batch_slices(B, Hq, len_arg, mask_arg, flags):
        n = part.rows * Hq
        args = (*part(q, k, v), part.lengths, part.mask, *part(out, lse), Hq, Hq // Hkv, Tq, Tk, bucket, scales, seed,
                dropout_p, D, Dv)
        _launch("fwd", lambda c, n=n: (triton.cdiv(Tq, c["BLOCK_M"]), n), args, flags, q.dtype)
    return out, lse


def attention_backward(grad_out, q, k, v, causal, lengths, key_padding_mask, scale, dropout_p, seed, out, lse):
    _check_head_dims(q, v)
    B, Hq, Hkv, Tq, Tk, D, Dv, bucket = _sizes(q, k, v)
    delta = (grad_out.to(lse.dtype) * out.to(lse.dtype)).sum(-1)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    len_arg, mask_arg, flags = _flags(q, v, causal, lengths, key_padding_mask, dropout_p)
    scales = _scales(q, scale)
    for part in batch_slices(B, Hq, len_arg, mask_arg, flags):
        common = (*part(grad_out, q, k, v), part.lengths, part.mask, *part(lse, delta))
        sizes = (Hq, Hq // Hkv, Tq, Tk, bucket, scales, seed, dropout_p, D, Dv)
        n_kv, n_q = part.rows * Hkv, part.rows * Hq
        _launch("dkdv", lambda c, n=n_kv: (triton.cdiv(Tk, c["BLOCK_N"]), n), (*common, *part(dk, dv), *sizes), flags,
                q.dtype)
        _launch("dq", lambda c, n=n_q: (triton.cdiv(Tq, c["BLOCK_M"]), n), (*common, *part(dq), *sizes), flags, q.dtype)
    return dq, dk, dv


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def decode_splits(batch_heads: int, Tk: int, device: torch.device) -> int:
    """Chunks of the cache per (batch row, key/value head): enough programs for two waves of the GPU,
    each chunk at least 64 keys."""
    return max(1, min(triton.cdiv(2 * _multiprocessors(device), batch_heads), triton.cdiv(Tk, 64)))


def attention_decode(q, k, v, lengths, key_padding_mask, scale):
    """q (B, Hq, D) against k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, Hq, Dv); k and v may be views of
    the first Tk positions of a longer cache (any batch and head strides: `fastseq.ops.attention._cache_layout`)."""
    _check_head_dims(q[:, :, None], v)
    B, Hq, D = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    group = Hq // Hkv
    n_splits = decode_splits(B * Hkv, Tk, q.device)
    block_n = DECODE["BLOCK_N"][q.element_size()]
    chunk = triton.cdiv(triton.cdiv(Tk, n_splits), block_n) * block_n
    n_splits = triton.cdiv(Tk, chunk)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    part_out = q.new_empty(B, Hq, n_splits, Dv, dtype=acc)
    part_lse = q.new_empty(B, Hq, n_splits, dtype=acc)
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, q)
    flags = {"HAS_LENGTHS": has_len, "HAS_MASK": has_mask}
    scales = _scales(q, scale)
    for part in batch_slices(B, Hkv, len_arg, mask_arg, flags):
        pk, pv = part(k, v)
        _decode_split_kernel[(n_splits, part.rows * Hkv)](
            *part(q), pk, pv, part.lengths, part.mask, *part(part_out, part_lse), Hq, group, Tk, pk.stride(0),
            pk.stride(1), pv.stride(0), pv.stride(1), chunk, n_splits, scales, D, Dv, **flags, BLOCK_G=_block(group),
            BLOCK_N=block_n, BLOCK_D=_block(D), BLOCK_DV=_block(Dv), ACC=ACC.get(q.dtype, tl.float32),
            PRECISION=precision(q.dtype), num_warps=DECODE["num_warps"])
    out = q.new_empty(B, Hq, Dv)
    _decode_combine_kernel[(B * Hq,)](part_out, part_lse, out, n_splits, Dv, BLOCK_S=triton.next_power_of_2(n_splits),
                                      BLOCK_DV=_block(Dv), num_warps=4)
    return out


# ------------------------------------------------------------------------------------------ ahead of time


def aot_specs():
    """(name, kernel, signature, constexprs, options, archs) of the variants the GPU path launches: every
    tuned configuration of each architecture at head dims 64, 128 and 256 in bf16 with causality and both
    paddings on (the most registers); at head dim 128 the plain variant in fp16 and fp32, the dropout
    variant in bf16 and the fixed float64 tiles; the decode kernels at head dim 128."""
    def signature(kernel, t, a):
        pointers = {"fwd": ["q_ptr", "k_ptr", "v_ptr", "lengths_ptr", "mask_ptr", "out_ptr", "lse_ptr"],
                    "dkdv": ["do_ptr", "q_ptr", "k_ptr", "v_ptr", "lengths_ptr", "mask_ptr", "lse_ptr", "delta_ptr",
                             "dk_ptr", "dv_ptr"],
                    "dq": ["do_ptr", "q_ptr", "k_ptr", "v_ptr", "lengths_ptr", "mask_ptr", "lse_ptr", "delta_ptr",
                           "dq_ptr"]}[kernel]
        sig = {p: ("*i32" if p == "lengths_ptr" else mask_pointer(t) if p == "mask_ptr" else
                   f"*{a}" if p in ("lse_ptr", "delta_ptr") else f"*{t}") for p in pointers}
        sig.update({n: "i32" for n in ("Hq", "GROUP", "Tq", "Tk", "T_BUCKET")})
        sig.update({"scales_ptr": f"*{a}", "seed": "i64", "p_drop": "fp32"})
        sig.update({c: "constexpr" for c in ("D", "Dv", "CAUSAL", "HAS_LENGTHS", "HAS_MASK", "DROPOUT", "BLOCK_M",
                                             "BLOCK_N", "BLOCK_D", "BLOCK_DV", "ACC", "PRECISION")})
        return sig

    variants = ([("bf16", dim, "masked") for dim in (64, 128, 256)] + [("fp16", 128, "plain"), ("fp32", 128, "plain"),
                ("bf16", 128, "dropout"), ("fp64", 128, "masked")])
    fixed = tuple(FIXED[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))
    for t, dim, kind in variants:
        masked, dropout = kind != "plain", kind == "dropout"
        a = "fp64" if t == "fp64" else "fp32"
        flags = {"D": dim, "Dv": dim, "CAUSAL": masked, "HAS_LENGTHS": masked, "HAS_MASK": masked,
                 "DROPOUT": dropout, "BLOCK_D": dim, "BLOCK_DV": dim, "ACC": tl.float64 if t == "fp64" else tl.float32,
                 "PRECISION": "ieee"}
        for name, fn in _KERNELS.items():
            for arch in (90, 80):
                tiles = [fixed] if t == "fp64" else configs_for(name, arch, 4 if t == "fp32" else 2, dim, dropout)
                for m, n, warps, stages in tiles:
                    yield (f"attention_{name}[{t},d{dim},{kind},{m}x{n}w{warps}s{stages}]", fn,
                           signature(name, t, a), {**flags, "BLOCK_M": m, "BLOCK_N": n},
                           {"num_warps": warps, "num_stages": stages}, (arch,))
    for t in ("bf16", "fp32", "fp64"):
        a = "fp64" if t == "fp64" else "fp32"
        sig = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "lengths_ptr": "*i32", "mask_ptr": mask_pointer(t),
               "part_out_ptr": f"*{a}", "part_lse_ptr": f"*{a}",
               **{n: "i32" for n in ("Hq", "GROUP", "Tk", "k_batch", "k_head", "v_batch", "v_head", "chunk",
                                     "n_splits")},
               "scales_ptr": f"*{a}",
               **{c: "constexpr" for c in ("D", "Dv", "HAS_LENGTHS", "HAS_MASK", "BLOCK_G", "BLOCK_N", "BLOCK_D",
                                           "BLOCK_DV", "ACC", "PRECISION")}}
        yield (f"attention_decode_split[{t},d128]", _decode_split_kernel, sig,
               {"D": 128, "Dv": 128, "HAS_LENGTHS": True, "HAS_MASK": True, "BLOCK_G": 16,
                "BLOCK_N": DECODE["BLOCK_N"][{"bf16": 2, "fp32": 4, "fp64": 8}[t]],
                "BLOCK_D": 128, "BLOCK_DV": 128, "ACC": tl.float64 if t == "fp64" else tl.float32,
                "PRECISION": "ieee"},
               {"num_warps": DECODE["num_warps"]}, (90, 80))
        sig = {"part_out_ptr": f"*{a}", "part_lse_ptr": f"*{a}", "out_ptr": f"*{t}", "n_splits": "i32",
               "Dv": "constexpr", "BLOCK_S": "constexpr", "BLOCK_DV": "constexpr"}
        yield (f"attention_decode_combine[{t},d128]", _decode_combine_kernel, sig,
               {"Dv": 128, "BLOCK_S": 32, "BLOCK_DV": 128}, {"num_warps": 4}, (90, 80))
