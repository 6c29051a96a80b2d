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
from .common import ACC, key_bound, key_valid, padding_args, precision

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by the autotuner, per element size and largest head dim.
CONFIGS = {
    "fwd": {2: {128: [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)], 256: [(64, 64, 4, 2), (64, 32, 4, 2)]},
            4: {128: [(64, 32, 4, 2), (32, 64, 4, 2)], 256: [(32, 32, 4, 1)]}},
    "dkdv": {2: {128: [(64, 128, 8, 2), (32, 64, 4, 2)], 256: [(32, 64, 8, 1), (16, 32, 4, 1)]},
             4: {128: [(32, 32, 4, 1)], 256: [(16, 32, 4, 1)]}},
    "dq": {2: {128: [(128, 64, 8, 2), (64, 32, 4, 2)], 256: [(64, 32, 4, 1), (32, 32, 4, 1)]},
           4: {128: [(32, 32, 4, 1)], 256: [(16, 32, 4, 1)]}},
}
FIXED = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}  # float64, and the interpreter
DECODE = {"BLOCK_N": 64, "num_warps": 4}


# ------------------------------------------------------------------------------------------ kernels


@triton.jit
def _keep(seed, keys, queries, bh, p_drop):
    """Dropout's kept entries (BLOCK_M, BLOCK_N) for the queries × keys of batch-row-head bh."""
    shape = (queries.shape[0], keys.shape[0])
    c0 = tl.broadcast_to(keys[None, :], shape).to(tl.uint32)
    c1 = tl.broadcast_to(queries[:, None], shape).to(tl.uint32)
    c2 = tl.full(shape, 0, tl.uint32) + bh.to(tl.uint32)
    r, _, _, _ = tl.philox(seed, c0, c1, c2, tl.zeros(shape, tl.uint32))
    return tl.uint_to_uniform_float(r) >= p_drop


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
def _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, D, Dv, qk_scale, seed,
               p_drop, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr,
               PRECISION: tl.constexpr):
    keys = k0 + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    k_in = keys < n_keys
    kt = tl.load(k_row + keys[None, :] * D + d[:, None], mask=k_in[None, :] & (d < D)[:, None], other=0.0)
    s = tl.dot(q, kt, input_precision=PRECISION, out_dtype=ACC) * qk_scale
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
        p = tl.where(_keep(seed, keys, queries, bh, p_drop), p, 0.0)
    v = tl.load(v_row + keys[:, None] * Dv + dv[None, :], mask=k_in[:, None] & (dv < Dv)[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC)
    return acc, m_new, l


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, out_ptr, lse_ptr, Hq, GROUP, Tq, Tk, D, Dv, T_BUCKET,
                scales_ptr, seed, p_drop,
                CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                ACC: tl.constexpr, PRECISION: tl.constexpr):
    """q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> out (B, Hq, Tq, Dv), lse (B, Hq, Tq).
    scales: (scale · log2 e, scale, log2 e) in ACC; T_BUCKET only keys the autotuner's cache."""
    qk_scale, log2e = tl.load(scales_ptr), tl.load(scales_ptr + 2)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    kvh = b * (Hq // GROUP) + (bh % Hq) // GROUP
    m0 = tl.program_id(0) * BLOCK_M
    queries = m0 + tl.arange(0, BLOCK_M)
    q_ok = queries < Tq
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + bh * Tq * D + queries[:, None] * D + d[None, :], mask=q_ok[:, None] & (d < D)[None, :],
                other=0.0)
    k_row, v_row = k_ptr + kvh * Tk * D, v_ptr + kvh * Tk * Dv
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    full, end = _key_range(m0, n_keys, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)

    m = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    l = tl.zeros((BLOCK_M,), dtype=ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=ACC)
    for k0 in range(0, full, BLOCK_N):
        acc, m, l = _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, D, Dv,
                               qk_scale, seed, p_drop, False, CAUSAL, HAS_MASK, DROPOUT, BLOCK_N, BLOCK_D, BLOCK_DV,
                               ACC, PRECISION)
    for k0 in range(full, end, BLOCK_N):
        acc, m, l = _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, D, Dv,
                               qk_scale, seed, p_drop, True, CAUSAL, HAS_MASK, DROPOUT, BLOCK_N, BLOCK_D, BLOCK_DV,
                               ACC, PRECISION)

    empty = l == 0  # no visible key: zero output, lse = +inf
    if DROPOUT:
        acc = acc / (1 - p_drop)
    out = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, l)[:, None])
    lse = tl.where(empty, float("inf"), (m + tl.log2(tl.where(empty, 1.0, l))) / log2e)
    tl.store(out_ptr + bh * Tq * Dv + queries[:, None] * Dv + dv[None, :], out.to(out_ptr.dtype.element_ty),
             mask=q_ok[:, None] & (dv < Dv)[None, :])
    tl.store(lse_ptr + bh * Tq + queries, lse.to(lse_ptr.dtype.element_ty), mask=q_ok)


@triton.jit
def _bwd_dkdv_kernel(do_ptr, q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                     Hq, GROUP, Tq, Tk, D, Dv, T_BUCKET, scales_ptr, seed, p_drop,
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
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    k_in = keys < n_keys
    dk_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC)
    dv_acc = tl.zeros((BLOCK_N, BLOCK_DV), dtype=ACC)
    if n0 < n_keys:
        k = tl.load(k_ptr + bkv * Tk * D + keys[:, None] * D + d[None, :], mask=k_in[:, None] & (d < D)[None, :],
                    other=0.0)
        v = tl.load(v_ptr + bkv * Tk * Dv + keys[:, None] * Dv + dv[None, :],
                    mask=k_in[:, None] & (dv < Dv)[None, :], other=0.0)
        k_ok = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)
        start = 0
        if CAUSAL:  # queries before the diagonal see none of these keys
            start = tl.maximum(n0 - (Tk - Tq), 0) // BLOCK_M * BLOCK_M
        for g in range(0, GROUP):
            bh = b * Hq + (bkv % Hkv) * GROUP + g
            for m0 in range(start, Tq, BLOCK_M):
                queries = m0 + tl.arange(0, BLOCK_M)
                q_ok = queries < Tq
                q = tl.load(q_ptr + bh * Tq * D + queries[:, None] * D + d[None, :],
                            mask=q_ok[:, None] & (d < D)[None, :], other=0.0)
                do = tl.load(do_ptr + bh * Tq * Dv + queries[:, None] * Dv + dv[None, :],
                             mask=q_ok[:, None] & (dv < Dv)[None, :], other=0.0)
                lse = tl.load(lse_ptr + bh * Tq + queries, mask=q_ok, other=float("inf")) * log2e
                delta = tl.load(delta_ptr + bh * Tq + queries, mask=q_ok, other=0.0)
                st = tl.dot(k, tl.trans(q), input_precision=PRECISION, out_dtype=ACC) * qk_scale
                seen = k_ok[:, None] & q_ok[None, :]
                if CAUSAL:
                    seen = seen & (keys[:, None] <= queries[None, :] + (Tk - Tq))
                pt = tl.where(seen, tl.exp2(st - lse[None, :]), 0.0)
                dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION, out_dtype=ACC)
                if DROPOUT:
                    keep = tl.trans(_keep(seed, keys, queries, bh, p_drop))
                    dv_acc += tl.dot(tl.where(keep, pt / (1 - p_drop), 0.0).to(do.dtype), do,
                                     input_precision=PRECISION, out_dtype=ACC)
                    dpt = tl.where(keep, dpt / (1 - p_drop), 0.0)
                else:
                    dv_acc += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION, out_dtype=ACC)
                dst = pt * (dpt - delta[None, :])
                dk_acc += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION, out_dtype=ACC)
    in_t = keys < Tk
    tl.store(dk_ptr + bkv * Tk * D + keys[:, None] * D + d[None, :], (dk_acc * scale).to(dk_ptr.dtype.element_ty),
             mask=in_t[:, None] & (d < D)[None, :])
    tl.store(dv_ptr + bkv * Tk * Dv + keys[:, None] * Dv + dv[None, :], dv_acc.to(dv_ptr.dtype.element_ty),
             mask=in_t[:, None] & (dv < Dv)[None, :])


@triton.jit
def _bwd_dq_kernel(do_ptr, q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, lse_ptr, delta_ptr, dq_ptr,
                   Hq, GROUP, Tq, Tk, D, Dv, T_BUCKET, scales_ptr, seed, p_drop,
                   CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   ACC: tl.constexpr, PRECISION: tl.constexpr):
    """dq (B, Hq, Tq, D)."""
    qk_scale, scale, log2e = tl.load(scales_ptr), tl.load(scales_ptr + 1), tl.load(scales_ptr + 2)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    kvh = b * (Hq // GROUP) + (bh % Hq) // GROUP
    m0 = tl.program_id(0) * BLOCK_M
    queries = m0 + tl.arange(0, BLOCK_M)
    q_ok = queries < Tq
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + bh * Tq * D + queries[:, None] * D + d[None, :], mask=q_ok[:, None] & (d < D)[None, :],
                other=0.0)
    do = tl.load(do_ptr + bh * Tq * Dv + queries[:, None] * Dv + dv[None, :],
                 mask=q_ok[:, None] & (dv < Dv)[None, :], other=0.0)
    lse = tl.load(lse_ptr + bh * Tq + queries, mask=q_ok, other=float("inf")) * log2e
    delta = tl.load(delta_ptr + bh * Tq + queries, mask=q_ok, other=0.0)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    _, end = _key_range(m0, n_keys, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    for k0 in range(0, end, BLOCK_N):
        keys = k0 + tl.arange(0, BLOCK_N)
        k_in = keys < n_keys
        k = tl.load(k_ptr + kvh * Tk * D + keys[:, None] * D + d[None, :], mask=k_in[:, None] & (d < D)[None, :],
                    other=0.0)
        v = tl.load(v_ptr + kvh * Tk * Dv + keys[:, None] * Dv + dv[None, :],
                    mask=k_in[:, None] & (dv < Dv)[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        p = tl.where(_visible(mask_ptr, b, queries, keys, n_keys, Tq, Tk, CAUSAL, HAS_MASK),
                     tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
        if DROPOUT:
            dp = tl.where(_keep(seed, keys, queries, bh, p_drop), dp / (1 - p_drop), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION, out_dtype=ACC)
    tl.store(dq_ptr + bh * Tq * D + queries[:, None] * D + d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=q_ok[:, None] & (d < D)[None, :])


@triton.jit
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, part_out_ptr, part_lse_ptr, Hq, GROUP, Tk, D,
                         Dv, k_stride, v_stride, chunk, n_splits, scales_ptr,
                         HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_G: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr,
                         PRECISION: tl.constexpr):
    """The GROUP query heads sharing key/value head `bkv`, over keys [split · chunk, (split + 1) · chunk):
    part_out (B·Hq, n_splits, Dv) normalized within the chunk, part_lse (B·Hq, n_splits) in base 2.
    k_stride, v_stride: elements from one (batch row × key/value head) to the next (a cache's capacity
    times the head dim when k, v are views of the first Tk positions of a larger cache)."""
    qk_scale = tl.load(scales_ptr)
    split = tl.program_id(0)
    bkv = tl.program_id(1).to(tl.int64)
    Hkv = Hq // GROUP
    b = bkv // Hkv
    g = tl.arange(0, BLOCK_G)
    g_ok = g < GROUP
    rows = b * Hq + (bkv % Hkv) * GROUP + g  # the query heads' flat (batch row × head) index
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + rows[:, None] * D + d[None, :], mask=g_ok[:, None] & (d < D)[None, :], other=0.0)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n_keys)
    m = tl.full((BLOCK_G,), float("-inf"), dtype=ACC)
    l = tl.zeros((BLOCK_G,), dtype=ACC)
    acc = tl.zeros((BLOCK_G, BLOCK_DV), dtype=ACC)
    for k0 in range(lo, hi, BLOCK_N):
        keys = k0 + tl.arange(0, BLOCK_N)
        k_in = keys < hi
        kt = tl.load(k_ptr + bkv * k_stride + keys[None, :] * D + d[:, None], mask=k_in[None, :] & (d < D)[:, None],
                     other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION, out_dtype=ACC) * qk_scale
        s = tl.where(key_valid(mask_ptr, b, keys, hi, Tk, HAS_MASK)[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - shift)
        p = tl.exp2(s - shift[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + bkv * v_stride + keys[:, None] * Dv + dv[None, :], mask=k_in[:, None] & (dv < Dv)[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC)
        m = m_new
    empty = l == 0
    out = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, l)[:, None])
    lse = tl.where(empty, float("-inf"), m + tl.log2(tl.where(empty, 1.0, l)))
    tl.store(part_out_ptr + (rows[:, None] * n_splits + split) * Dv + dv[None, :], out,
             mask=g_ok[:, None] & (dv < Dv)[None, :])
    tl.store(part_lse_ptr + rows * n_splits + split, lse, mask=g_ok)


@triton.jit
def _decode_combine_kernel(part_out_ptr, part_lse_ptr, out_ptr, n_splits, Dv, BLOCK_S: tl.constexpr,
                           BLOCK_DV: tl.constexpr):
    """out (B·Hq, Dv): the chunks' outputs weighted by their share of the softmax; zeros if none saw a key."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_DV)
    lse = tl.load(part_lse_ptr + row * n_splits + s, mask=s < n_splits, other=float("-inf"))
    top = tl.max(lse, axis=0)
    w = tl.where(lse == float("-inf"), 0.0, tl.exp2(lse - tl.where(top == float("-inf"), 0.0, top)))
    total = tl.sum(w, axis=0)
    parts = tl.load(part_out_ptr + (row * n_splits + s[:, None]) * Dv + dv[None, :],
                    mask=(s < n_splits)[:, None] & (dv < Dv)[None, :], other=0.0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.where(total == 0, 1.0, total)
    tl.store(out_ptr + row * Dv + dv, out.to(out_ptr.dtype.element_ty), mask=dv < Dv)


# ------------------------------------------------------------------------------------------ tuning


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _config_list(kernel: str) -> list[triton.Config]:
    """Every configuration of a kernel, tagged with the element size and head dims it is meant for."""
    configs = []
    for size, by_dim in CONFIGS[kernel].items():
        for dim, tiles in by_dim.items():
            for m, n, warps, stages in tiles:
                config = triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)
                config.fastseq_for = (size, dim)
                configs.append(config)
    return configs


def configs_for(kernel: str, element_size: int, head_dim: int) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries for these inputs."""
    size = 2 if element_size <= 2 else 4
    return CONFIGS[kernel][size][128 if head_dim <= 128 else 256]


def _prune(configs, named_args, **kwargs):
    size = 2 if named_args["q_ptr"].element_size() <= 2 else 4
    dim = 128 if max(kwargs["BLOCK_D"], kwargs["BLOCK_DV"]) <= 128 else 256
    return [c for c in configs if c.fastseq_for == (size, dim)]


_KEY = ["BLOCK_D", "BLOCK_DV", "T_BUCKET", "CAUSAL", "HAS_MASK", "DROPOUT"]


@functools.lru_cache(maxsize=None)
def _tuned(kernel: str):
    fn = {"fwd": _fwd_kernel, "dkdv": _bwd_dkdv_kernel, "dq": _bwd_dq_kernel}[kernel]
    return triton.autotune(configs=_config_list(kernel), key=_KEY, prune_configs_by={"early_config_prune": _prune})(fn)


def _launch(kernel: str, grid, args: tuple, flags: dict, dtype: torch.dtype) -> None:
    """Autotuned on a GPU for 16- and 32-bit inputs; FIXED tiles for float64 and the interpreter."""
    if dtype == torch.float64 or triton_interpret():
        fn = {"fwd": _fwd_kernel, "dkdv": _bwd_dkdv_kernel, "dq": _bwd_dq_kernel}[kernel]
        fn[grid(FIXED)](*args, **flags, BLOCK_M=FIXED["BLOCK_M"], BLOCK_N=FIXED["BLOCK_N"],
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
    args = (q, k, v, len_arg, mask_arg, out, lse, Hq, Hq // Hkv, Tq, Tk, D, Dv, bucket, _scales(q, scale), seed,
            dropout_p)
    _launch("fwd", lambda c: (triton.cdiv(Tq, c["BLOCK_M"]), B * Hq), args, flags, q.dtype)
    return out, lse


def attention_backward(grad_out, q, k, v, causal, lengths, key_padding_mask, scale, dropout_p, seed, out, lse):
    _check_head_dims(q, v)
    B, Hq, Hkv, Tq, Tk, D, Dv, bucket = _sizes(q, k, v)
    delta = (grad_out.to(lse.dtype) * out.to(lse.dtype)).sum(-1)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    len_arg, mask_arg, flags = _flags(q, v, causal, lengths, key_padding_mask, dropout_p)
    common = (grad_out, q, k, v, len_arg, mask_arg, lse, delta)
    sizes = (Hq, Hq // Hkv, Tq, Tk, D, Dv, bucket, _scales(q, scale), seed, dropout_p)
    _launch("dkdv", lambda c: (triton.cdiv(Tk, c["BLOCK_N"]), B * Hkv), (*common, dk, dv, *sizes), flags, q.dtype)
    _launch("dq", lambda c: (triton.cdiv(Tq, c["BLOCK_M"]), B * Hq), (*common, dq, *sizes), flags, q.dtype)
    return dq, dk, dv


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def decode_splits(batch_heads: int, Tk: int, device: torch.device) -> int:
    """Chunks of the cache per (batch row, key/value head): enough programs for two waves of the GPU,
    each chunk at least one block of keys."""
    return max(1, min(triton.cdiv(2 * _multiprocessors(device), batch_heads), triton.cdiv(Tk, DECODE["BLOCK_N"])))


def attention_decode(q, k, v, lengths, key_padding_mask, scale):
    """q (B, Hq, D) against k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, Hq, Dv); k and v may be views of
    the first Tk positions of a longer cache (the layout `fastseq.ops.attention._decode_layout` checks)."""
    _check_head_dims(q[:, :, None], v)
    B, Hq, D = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    group = Hq // Hkv
    n_splits = decode_splits(B * Hkv, Tk, q.device)
    chunk = triton.cdiv(triton.cdiv(Tk, n_splits), DECODE["BLOCK_N"]) * DECODE["BLOCK_N"]
    n_splits = triton.cdiv(Tk, chunk)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    part_out = q.new_empty(B * Hq, n_splits, Dv, dtype=acc)
    part_lse = q.new_empty(B * Hq, n_splits, dtype=acc)
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, q)
    _decode_split_kernel[(n_splits, B * Hkv)](
        q, k, v, len_arg, mask_arg, part_out, part_lse, Hq, group, Tk, D, Dv, k.stride(1), v.stride(1), chunk, n_splits,
        _scales(q, scale),
        HAS_LENGTHS=has_len, HAS_MASK=has_mask, BLOCK_G=_block(group), BLOCK_N=DECODE["BLOCK_N"],
        BLOCK_D=_block(D), BLOCK_DV=_block(Dv), ACC=ACC.get(q.dtype, tl.float32), PRECISION=precision(q.dtype),
        num_warps=DECODE["num_warps"])
    out = q.new_empty(B, Hq, Dv)
    _decode_combine_kernel[(B * Hq,)](part_out, part_lse, out, n_splits, Dv, BLOCK_S=triton.next_power_of_2(n_splits),
                                      BLOCK_DV=_block(Dv), num_warps=4)
    return out


# ------------------------------------------------------------------------------------------ ahead of time


def aot_specs():
    """(name, kernel, signature, constexprs, options) of the variants the GPU path launches: every tuned
    configuration at head dims 64, 128 and 256 in bf16 with every masking feature on (the most registers),
    and the plain variant at head dim 128 in bf16, fp16 and fp32; the decode kernels at head dim 128."""
    def signature(kernel, t, a):
        pointers = {"fwd": ["q_ptr", "k_ptr", "v_ptr", "lengths_ptr", "mask_ptr", "out_ptr", "lse_ptr"],
                    "dkdv": ["do_ptr", "q_ptr", "k_ptr", "v_ptr", "lengths_ptr", "mask_ptr", "lse_ptr", "delta_ptr",
                             "dk_ptr", "dv_ptr"],
                    "dq": ["do_ptr", "q_ptr", "k_ptr", "v_ptr", "lengths_ptr", "mask_ptr", "lse_ptr", "delta_ptr",
                           "dq_ptr"]}[kernel]
        sig = {p: ("*i32" if p == "lengths_ptr" else "*u8" if p == "mask_ptr" else
                   f"*{a}" if p in ("lse_ptr", "delta_ptr") else f"*{t}") for p in pointers}
        sig.update({n: "i32" for n in ("Hq", "GROUP", "Tq", "Tk", "D", "Dv", "T_BUCKET")})
        sig["scales_ptr"] = f"*{a}"
        sig.update({"seed": "i64", "p_drop": "fp32"})
        sig.update({c: "constexpr" for c in ("CAUSAL", "HAS_LENGTHS", "HAS_MASK", "DROPOUT", "BLOCK_M", "BLOCK_N",
                                             "BLOCK_D", "BLOCK_DV", "ACC", "PRECISION")})
        return sig

    kernels = {"fwd": _fwd_kernel, "dkdv": _bwd_dkdv_kernel, "dq": _bwd_dq_kernel}
    variants = [("bf16", dim, True) for dim in (64, 128, 256)] + [(t, 128, False) for t in ("bf16", "fp16", "fp32")]
    for t, dim, masked in variants + [("fp64", 128, True)]:
        acc = "fp64" if t == "fp64" else "fp32"
        flags = {"CAUSAL": masked, "HAS_LENGTHS": masked, "HAS_MASK": masked, "DROPOUT": masked, "BLOCK_D": dim,
                 "BLOCK_DV": dim, "ACC": tl.float64 if t == "fp64" else tl.float32, "PRECISION": "ieee"}
        for name, fn in kernels.items():
            tiles = ([tuple(FIXED[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))] if t == "fp64" else
                     configs_for(name, 4 if t == "fp32" else 2, dim))
            for m, n, warps, stages in tiles:
                yield (f"attention_{name}[{t},d{dim},{'masked' if masked else 'plain'},{m}x{n}w{warps}s{stages}]", fn,
                       signature(name, t, acc), {**flags, "BLOCK_M": m, "BLOCK_N": n},
                       {"num_warps": warps, "num_stages": stages})
    for t in ("bf16", "fp32", "fp64"):
        a = "fp64" if t == "fp64" else "fp32"
        sig = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "lengths_ptr": "*i32", "mask_ptr": "*u8",
               "part_out_ptr": f"*{a}", "part_lse_ptr": f"*{a}",
               **{n: "i32" for n in ("Hq", "GROUP", "Tk", "D", "Dv", "k_stride", "v_stride", "chunk", "n_splits")},
               "scales_ptr": f"*{a}",
               **{c: "constexpr" for c in ("HAS_LENGTHS", "HAS_MASK", "BLOCK_G", "BLOCK_N", "BLOCK_D", "BLOCK_DV",
                                           "ACC", "PRECISION")}}
        yield (f"attention_decode_split[{t},d128]", _decode_split_kernel, sig,
               {"HAS_LENGTHS": True, "HAS_MASK": True, "BLOCK_G": 16, "BLOCK_N": DECODE["BLOCK_N"], "BLOCK_D": 128,
                "BLOCK_DV": 128, "ACC": tl.float64 if t == "fp64" else tl.float32, "PRECISION": "ieee"},
               {"num_warps": DECODE["num_warps"]})
        sig = {"part_out_ptr": f"*{a}", "part_lse_ptr": f"*{a}", "out_ptr": f"*{t}", "n_splits": "i32", "Dv": "i32",
               "BLOCK_S": "constexpr", "BLOCK_DV": "constexpr"}
        yield (f"attention_decode_combine[{t},d128]", _decode_combine_kernel, sig, {"BLOCK_S": 32, "BLOCK_DV": 128},
               {"num_warps": 4})
