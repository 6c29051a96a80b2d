"""Additive (Bahdanau) attention in Triton, as fastseq/ops/additive_attention/passes.py lays it out: the two passes
over (query, key, h) are kernels here, the softmax and the GEMMs between them torch's.

Scores pass (`_scores_kernel`): one program per (row, block of queries, block of keys) holds its
(BLOCK_Q, BLOCK_K) scores in registers and walks h: each step loads one column of q and of k, adds them as
an outer sum, and accumulates v_h tanh(.): no reduction inside the loop. The leading `h_fma` columns take
the FMA units' tanh, 1 - 2 / (1 + A B) from the exponentials A = e^{2q}, B = e^{2k} (a reciprocal by
Newton steps), the rest the tanh unit. Keys not kept score -inf, whatever they hold.

Gradient pass (`_gradient_kernel`): one one-warp program per (row, key split, block of h) walks every
block of queries over its keys: G = Σ_j dS t² of the query block in registers, F_j = Σ_i dS t² summed over
the block (within each lane, but for a few shuffles) and accumulated across query blocks in a buffer only
that program touches, W = Σ dS t reduced once at the end: no atomics, deterministic. Key splits give G
partial sums that the host adds.

Decode (`_decode_kernel`): one program per row, one query against the cached keys, no workspace.

tanh: float32 inputs take the exact form on the tanh path and three Newton steps on the FMA path; float16
and bfloat16 on a GPU the hardware's `tanh.approx.f32` and two Newton steps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backends import triton_interpret
from ...numerics import acc_dtype
from ...triton.activations import tanh
from ...triton.common import acc_type, key_bound, key_valid, on_gpu, padding_args
from . import passes

# Tiles: the scores pass holds BLOCK_Q x BLOCK_K accumulators, the gradient pass BLOCK_Q x BLOCK_H twice
# (G and the terms of W); checked for spills ahead of time for sm_90 and sm_80 (tests/test_compile_checks.py).
SCORES = {"BLOCK_Q": 64, "BLOCK_K": 64, "BLOCK_H": 4, "num_warps": 4}
GRADIENT = {"num_warps": 1}  # its tile: gradient_tile
DECODE = {"BLOCK_K": 64, "BLOCK_H": 32, "num_warps": 4}
# The share of H on the FMA units, by element size: float32 takes that path throughout (its exact tanh is
# slower); the 16-bit types the tanh unit until the GPU window measures the share that pays.
FMA_SHARE = {2: 0.0, 4: 1.0, 8: 0.0}


@triton.jit
def _reciprocal(d, STEPS: tl.constexpr):
    """1/d for d >= 1: a guess from d's bits (passes.MAGIC), then STEPS Newton steps."""
    r = (0x7EF311C3 - d.to(tl.int32, bitcast=True)).to(tl.float32, bitcast=True)
    for _ in tl.static_range(STEPS):
        r = r * (2.0 - d * r)
    return r


@triton.jit
def _scores_kernel(q_ptr, k_ptr, v_ptr, a_ptr, e_ptr, rows_ptr, lengths_ptr, mask_ptr, s_ptr, Tq, Tk, H, h_fma,
                   HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_H: tl.constexpr, ACC: tl.constexpr, FAST: tl.constexpr, STEPS: tl.constexpr):
    """s (B, Tq, Tk) = Σ_h v_h tanh(q_ih + k_jh), -inf at keys not kept, from q (B, Tq, H), k (B, Tk, H);
    a (B, Tq, h_fma), e (B, Tk, h_fma): e^{2q}, e^{2k} of the leading h_fma columns (float32), taken by the
    rows with rows[b] != 0. A column's loads are strided by H: a program's (block, H) tiles stay in L1."""
    n_kb = tl.cdiv(Tk, BLOCK_K)
    n_qb = tl.cdiv(Tq, BLOCK_Q)
    pid = tl.program_id(0)  # (row, query block, key block), keys fastest: neighbours share their q rows
    kb = pid % n_kb
    qb = (pid // n_kb) % n_qb
    b = (pid // (n_kb * n_qb)).to(tl.int64)
    queries = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    keys = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    q_ok, k_ok = queries < Tq, keys < Tk
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    s = tl.zeros((BLOCK_Q, BLOCK_K), dtype=ACC)
    if kb * BLOCK_K < n_keys:  # a block past the row's keys only scores -inf
        fma = tl.where(tl.load(rows_ptr + b) != 0, h_fma, 0)
        spent = tl.zeros((BLOCK_H,), dtype=ACC)  # Σ v_h over the FMA columns: tanh = 1 - 2 r
        # BLOCK_H columns a step as (BLOCK_H, BLOCK_Q, BLOCK_K): the column axis, slowest, lies within each
        # thread, so the sum over it needs no other lane
        for h0 in range(0, fma, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            a = tl.load(a_ptr + (b * Tq + queries[None, :]) * h_fma + hs[:, None], mask=q_ok[None, :], other=1.0)
            e = tl.load(e_ptr + (b * Tk + keys[None, :]) * h_fma + hs[:, None], mask=k_ok[None, :], other=1.0)
            w = tl.load(v_ptr + hs).to(ACC)
            r = _reciprocal(a[:, :, None] * e[:, None, :] + 1.0, STEPS).to(ACC)
            s += tl.sum((-2.0 * w)[:, None, None] * r, axis=0)
            spent += w
        for h0 in range(fma, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            h_ok = hs < H
            q = tl.load(q_ptr + (b * Tq + queries[None, :]) * H + hs[:, None], mask=h_ok[:, None] & q_ok[None, :],
                        other=0.0).to(ACC)
            k = tl.load(k_ptr + (b * Tk + keys[None, :]) * H + hs[:, None], mask=h_ok[:, None] & k_ok[None, :],
                        other=0.0).to(ACC)
            w = tl.load(v_ptr + hs, mask=h_ok, other=0.0).to(ACC)
            s += tl.sum(w[:, None, None] * tanh(q[:, :, None] + k[:, None, :], FAST), axis=0)
        s += tl.sum(spent, axis=0)
    kept = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)
    s = tl.where(kept[None, :], s, float("-inf"))
    out = s_ptr + (b * Tq + queries[:, None]) * Tk + keys[None, :]
    tl.store(out, s.to(s_ptr.dtype.element_ty), mask=q_ok[:, None] & k_ok[None, :])


@triton.jit
def _gradient_kernel(ds_ptr, q_ptr, k_ptr, v_ptr, a_ptr, e_ptr, rows_ptr, r_ptr, c_ptr, dq_ptr, dk_ptr, g_ptr, f_ptr,
                     w_ptr, Tq, Tk, H, h_fma, keys_per_split, n_splits, BLOCK_Q: tl.constexpr, BLOCK_H: tl.constexpr,
                     ACC: tl.constexpr, FAST: tl.constexpr, STEPS: tl.constexpr, DIRECT_Q: tl.constexpr):
    """From dS (B, Tq, Tk), t = tanh(q_ih + k_jh) (q (B, Tq, H), k (B, Tk, H), k's padded rows zeroed): a
    program owns a row's key split and h block and walks every query block over its keys. G = Σ_j dS t² of
    a query block in registers: dq = v (r − G) with one split (DIRECT_Q), else G into g (splits, B, Tq, H);
    F = Σ_i dS t² of a key accumulated over the query blocks in f (B, Tk, H), which only this program
    touches, and dk = v (c − F) at the last; W = Σ dS t into w (B, splits, H). The leading h_fma columns
    (whole h blocks) from a = e^{2q} (B, Tq, h_fma), e = e^{2k} (B, Tk, h_fma) where rows[b] != 0; r and c
    dS's row and column sums."""
    n_hb = tl.cdiv(H, BLOCK_H)
    n_qb = tl.cdiv(Tq, BLOCK_Q)
    pid = tl.program_id(0)  # (row, key split, h block), h fastest: neighbours share dS
    hb = pid % n_hb
    split = (pid // n_hb) % n_splits
    b = (pid // (n_hb * n_splits)).to(tl.int64)
    n_rows = tl.num_programs(0) // (n_hb * n_splits)
    hs = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = hs < H
    fma = (tl.load(rows_ptr + b) != 0) & (hb * BLOCK_H < h_fma)
    w_h = tl.load(v_ptr + hs, mask=h_ok, other=0.0).to(ACC)
    wt = tl.zeros((BLOCK_Q, BLOCK_H), dtype=ACC)
    start = split * keys_per_split
    stop = tl.minimum(start + keys_per_split, Tk)
    for qb in range(0, n_qb):
        tl.debug_barrier()  # the last block's F stores seen by every lane before they are read back
        queries = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_ok = queries < Tq
        tile = q_ok[:, None] & h_ok[None, :]
        if fma:
            x = tl.load(a_ptr + (b * Tq + queries[:, None]) * h_fma + hs[None, :], mask=tile, other=1.0).to(ACC)
        else:
            x = tl.load(q_ptr + (b * Tq + queries[:, None]) * H + hs[None, :], mask=tile, other=0.0).to(ACC)
        g = tl.zeros((BLOCK_Q, BLOCK_H), dtype=ACC)
        block = tl.full((BLOCK_H,), qb, tl.int32)
        last = block == n_qb - 1
        for j in range(start, stop):
            ds = tl.load(ds_ptr + (b * Tq + queries) * Tk + j, mask=q_ok, other=0.0).to(ACC)
            if fma:
                e = tl.load(e_ptr + (b * Tk + j) * h_fma + hs, mask=h_ok, other=1.0)
                t = (1.0 - 2.0 * _reciprocal((x * e[None, :] + 1.0).to(tl.float32), STEPS)).to(ACC)
            else:
                k = tl.load(k_ptr + (b * Tk + j) * H + hs, mask=h_ok, other=0.0).to(ACC)
                t = tanh(x + k[None, :], FAST)
            dt = ds[:, None] * t
            term = dt * t
            g += term
            wt += dt
            f_at = f_ptr + (b * Tk + j) * H + hs
            f = tl.sum(term, axis=0) + tl.load(f_at, mask=h_ok & (block > 0), other=0.0)
            tl.store(f_at, f, mask=h_ok & ~last)
            dk = w_h * (tl.load(c_ptr + b * Tk + j) - f)
            tl.store(dk_ptr + (b * Tk + j) * H + hs, dk.to(dk_ptr.dtype.element_ty), mask=h_ok & last)
        if DIRECT_Q:
            dq = w_h[None, :] * (tl.load(r_ptr + b * Tq + queries, mask=q_ok, other=0.0)[:, None] - g)
            tl.store(dq_ptr + (b * Tq + queries[:, None]) * H + hs[None, :], dq.to(dq_ptr.dtype.element_ty),
                     mask=tile)
        else:
            tl.store(g_ptr + ((split * n_rows + b) * Tq + queries[:, None]) * H + hs[None, :], g, mask=tile)
    tl.store(w_ptr + (b * n_splits + split) * H + hs, tl.sum(wt, axis=0), mask=h_ok)


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, values_ptr, lengths_ptr, mask_ptr, context_ptr, Tk, H, Dv,
                   HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_D: tl.constexpr, ACC: tl.constexpr, FAST: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < Dv
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    m = tl.full((), float("-inf"), dtype=ACC)
    denom = tl.zeros((), dtype=ACC)
    acc = tl.zeros((BLOCK_D,), dtype=ACC)
    for k0 in range(0, n_keys, BLOCK_K):
        keys = k0 + tl.arange(0, BLOCK_K)
        k_in = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)  # padded keys load as zeros: never NaN
        s = tl.zeros((BLOCK_K,), dtype=ACC)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            h_ok = h < H
            q = tl.load(q_ptr + b * H + h, mask=h_ok, other=0.0).to(ACC)
            k = tl.load(k_ptr + b * Tk * H + keys[:, None] * H + h[None, :], mask=k_in[:, None] & h_ok[None, :],
                        other=0.0).to(ACC)
            w = tl.load(v_ptr + h, mask=h_ok, other=0.0).to(ACC)
            s += tl.sum(tanh(q[None, :] + k, FAST) * w[None, :], axis=1)
        s = tl.where(k_in, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - shift)
        p = tl.exp(s - shift)
        denom = denom * alpha + tl.sum(p, axis=0)
        vals = tl.load(values_ptr + b * Tk * Dv + keys[:, None] * Dv + d[None, :], mask=k_in[:, None] & d_ok[None, :],
                       other=0.0).to(ACC)
        acc = acc * alpha + tl.sum(p[:, None] * vals, axis=0)
        m = m_new
    context = tl.where(denom == 0, 0.0, acc / tl.where(denom == 0, 1.0, denom))
    tl.store(context_ptr + b * Dv + d, context.to(context_ptr.dtype.element_ty), mask=d_ok)


# ------------------------------------------------------------------------------------------ launchers


def _fast_tanh(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float16, torch.bfloat16) and on_gpu(t) and not triton_interpret()


def _block_d(Dv: int) -> int:
    return max(16, triton.next_power_of_2(Dv))


def _h_fma(H: int, dtype: torch.dtype, block: int) -> int:
    """The FMA share of H in whole blocks of `block` columns (float64: none, its tanh is exact)."""
    if dtype == torch.float64:
        return 0
    share = FMA_SHARE[torch.empty((), dtype=dtype).element_size()]
    return min(H // block * block, int(round(share * H / block)) * block)


def _exponentials(query_proj, key_proj, fma: int):
    """(a, e): e^{2q}, e^{2k} of the leading `fma` columns (float32); one-element stand-ins where none."""
    if not fma:
        dummy = query_proj.new_empty(1, dtype=torch.float32)
        return dummy, dummy
    return (passes.exponentials(query_proj[..., :fma]).contiguous(),
            passes.exponentials(key_proj[..., :fma]).contiguous())


def scores(query_proj, key_proj, v, lengths, key_padding_mask, h_fma=None):
    """The scores pass: S (B, Tq, Tk) in the accumulation dtype, -inf at keys not kept."""
    B, Tq, H = query_proj.shape
    Tk = key_proj.shape[1]
    acc = acc_dtype(query_proj.dtype)
    bq, bk, bh = SCORES["BLOCK_Q"], SCORES["BLOCK_K"], SCORES["BLOCK_H"]
    h_fma = _h_fma(H, query_proj.dtype, bh) if h_fma is None else h_fma
    if h_fma % bh:
        raise ValueError(f"h_fma must be a multiple of the scores pass's BLOCK_H = {bh}, got {h_fma}")
    q, k = query_proj.contiguous(), key_proj.contiguous()
    rows = passes.fma_rows(q, k).to(torch.int32)
    s = q.new_empty(B, Tq, Tk, dtype=acc)
    if s.numel() == 0:
        return s
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, q)
    _scores_kernel[(B * triton.cdiv(Tq, bq) * triton.cdiv(Tk, bk),)](
        q, k, v, *_exponentials(q, k, h_fma), rows, len_arg, mask_arg, s, Tq, Tk, H, h_fma,
        HAS_LENGTHS=has_len, HAS_MASK=has_mask, BLOCK_Q=bq, BLOCK_K=bk, BLOCK_H=bh, ACC=acc_type(q.dtype),
        FAST=_fast_tanh(q), STEPS=passes.newton_steps(q.dtype), num_warps=SCORES["num_warps"])
    return s


def _key_splits(programs: int, Tk: int, device: torch.device) -> int:
    """Key ranges per (row, h block): enough one-warp programs to fill the GPU's SMs sixteen deep."""
    from ...triton.common import target

    return max(1, min(triton.cdiv(16 * target(device).multiprocessors, programs), triton.cdiv(Tk, 32)))


def gradient_tile(Tq: int) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_H) of the gradient pass: 64 queries where a row has no more (one query block, no F
    buffer), else 32 x 32; either way 32 elements a lane of one warp, F's sum over queries mostly in-thread."""
    return (64, 16) if Tq <= 64 else (32, 32)


def gradient_pass(ds, query_proj, key_proj, v, h_fma=None):
    """The gradient pass from dS (B, Tq, Tk, accumulation dtype) -> (dq, dk, dv) in their inputs' dtypes;
    key_proj's padded rows zeroed."""
    B, Tq, H = query_proj.shape
    Tk = key_proj.shape[1]
    acc = acc_dtype(query_proj.dtype)
    bq, bh = gradient_tile(Tq)
    h_fma = _h_fma(H, query_proj.dtype, bh) if h_fma is None else h_fma
    if h_fma % bh:
        raise ValueError(f"h_fma must be a multiple of the gradient pass's BLOCK_H = {bh}, got {h_fma}")
    n_q, n_h = triton.cdiv(Tq, bq), triton.cdiv(H, bh)
    splits = _key_splits(B * n_h, Tk, query_proj.device)
    per_split = max(1, triton.cdiv(Tk, splits))
    splits = max(1, triton.cdiv(Tk, per_split))
    q, k = query_proj.contiguous(), key_proj.contiguous()
    rows = passes.fma_rows(q, k).to(torch.int32)
    r, c = ds.sum(-1), ds.sum(1)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    g = ds.new_empty(splits if splits > 1 else 0, B, Tq, H)
    f = ds.new_empty(B, Tk, H) if n_q > 1 else ds.new_empty(1)
    w = ds.new_zeros(B, splits, H)
    if B * Tq * H and Tk:
        _gradient_kernel[(B * splits * n_h,)](
            ds.contiguous(), q, k, v, *_exponentials(q, k, h_fma), rows, r, c, dq, dk, g, f, w, Tq, Tk, H, h_fma,
            per_split, splits, BLOCK_Q=bq, BLOCK_H=bh, ACC=acc_type(q.dtype), FAST=_fast_tanh(q),
            STEPS=passes.newton_steps(q.dtype), DIRECT_Q=splits == 1, num_warps=GRADIENT["num_warps"])
    else:
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)
    if splits > 1:
        dq = (v.to(acc) * (r[..., None] - g.sum(0))).to(q.dtype)
    return dq, dk, w.sum((0, 1)).to(v.dtype)


additive_attention, additive_attention_backward = passes.entry_points(scores, gradient_pass)


def additive_attention_decode(query_proj, key_proj, v, values, lengths, key_padding_mask, padding_zeroed=False):
    B, H = query_proj.shape
    Tk, Dv = values.shape[1], values.shape[2]
    context = query_proj.new_empty(B, Dv)
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, query_proj)
    _decode_kernel[(B,)](query_proj, key_proj, v, values, len_arg, mask_arg, context, Tk, H, Dv,
                         HAS_LENGTHS=has_len, HAS_MASK=has_mask, BLOCK_K=DECODE["BLOCK_K"],
                         BLOCK_H=DECODE["BLOCK_H"], BLOCK_D=_block_d(Dv), ACC=acc_type(query_proj.dtype),
                         FAST=_fast_tanh(query_proj), num_warps=DECODE["num_warps"])
    return context


def aot_launches():
    """Both passes (the tanh unit and the FMA share) and the decoder step at each case of the gpu and
    headline presets in bf16, padded by lengths; at the first also with a key padding mask, and in fp16,
    fp32 and fp64 (fastseq.ops.aot)."""
    from ..aot import Launch
    from . import CASES

    def run(B, Tq, Tk, H, Dv, dtype, mask=False, share=None):
        q, k = torch.empty(B, Tq, H, dtype=dtype), torch.empty(B, Tk, H, dtype=dtype)
        v, values = torch.empty(H, dtype=dtype), torch.empty(B, Tk, Dv, dtype=dtype)
        length = torch.full((B,), Tk, dtype=torch.int32)
        padded = torch.zeros(B, Tk, dtype=torch.bool) if mask else None
        block = gradient_tile(Tq)[1]
        fma = None if share is None else int(share * H) // block * block
        s = scores(q, k, v, length, padded, fma)
        gradient_pass(s, q, k, v, fma)
        additive_attention_decode(q[:, 0], k, v, values, length, padded)

    cases = list(dict.fromkeys(tuple(c) for preset in ("gpu", "headline") for c in CASES[preset]))
    variants = [(case, torch.bfloat16, {}) for case in cases]
    variants += [(cases[0], torch.bfloat16, {"share": 0.25}), (cases[0], torch.bfloat16, {"mask": True})]
    variants += [(cases[0], dtype, {}) for dtype in (torch.float16, torch.float32, torch.float64)]
    for case, dtype, options in variants:
        yield Launch("additive_attention B{} Tq{} Tk{} H{} Dv{} ".format(*case) + f"{dtype} {options or ''}",
                     lambda case=case, dtype=dtype, options=options: run(*case, dtype, **options))
