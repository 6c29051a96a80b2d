"""Additive (Bahdanau) attention fused in Triton: scores, softmax and context without ever building the
(B, Tq, Tk, H) tensor. The math and the padding rule are in fastseq/ops/additive/reference.py.

Forward: one program per (block of queries, row). It streams the keys in blocks with an online softmax;
each score block s (BLOCK_Q × BLOCK_K) is summed over H in chunks of BLOCK_H as a 3-D tile
tanh(q[:, None, h] + k[None, :, h]) · v[h]; the context accumulates p @ values with `tl.dot`. Keys past
a row's length are not visited. It stores the context and the log-sum-exp.

Backward: one program per (block of keys, row), over every query block: it recomputes the scores
(first tanh pass) and p = exp(s − lse), accumulates dvalues = pᵀ dc and dS = p (dc valuesᵀ − D), then
recomputes tanh (second pass) for g = dS v (1 − t²). dk and dv are owned by the program's key block; dq
is summed over key blocks with float32 atomics into a workspace. The elementwise tanh bounds the
kernels (forward one tanh per (i, j, h), backward two): the arithmetic is a few adds around each.

Decode: one program per row, one query against the cached keys, no workspace; one launch per step.

tanh: float32 inputs use an exact form; float16/bfloat16 inputs on a GPU use the hardware's
`tanh.approx.f32` (one special-function instruction, relative error below 2^-10, well under their
rounding), which sets the kernels' floor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...backends import triton_interpret
from ...triton.activations import tanh
from ...triton.common import (acc_type, batch_slices, key_bound, key_valid, launch_options, on_gpu, padding_args,
                              precision)

# Tile sizes per kernel, for float64 apart: the 3-D tanh tile and the accumulators fit the registers
# without spilling (checked ahead of time for sm_90 and sm_80, under Triton 3.6 and 3.9, by
# tests/test_compile_checks.py).
FWD = {"BLOCK_Q": 16, "BLOCK_K": 32, "BLOCK_H": 16, "num_warps": 4}
BWD = {"BLOCK_Q": 16, "BLOCK_K": 16, "BLOCK_H": 16, "num_warps": 8, "maxnreg": 255}
BWD_FP64 = {"BLOCK_Q": 16, "BLOCK_K": 16, "BLOCK_H": 4, "num_warps": 8}
DECODE = {"BLOCK_K": 64, "BLOCK_H": 32, "num_warps": 4}


@triton.jit
def _tanh_chunk(q_ptr, k_ptr, v_ptr, queries, keys, q_ok, k_ok, h0, H, BLOCK_H: tl.constexpr, ACC: tl.constexpr,
                FAST: tl.constexpr):
    """t (BLOCK_Q, BLOCK_K, BLOCK_H) = tanh(q[queries, h] + k[keys, h]) and v[h] for h in [h0, h0 + BLOCK_H),
    zero past H; q_ptr, k_ptr at the row's start."""
    h = h0 + tl.arange(0, BLOCK_H)
    h_ok = h < H
    q = tl.load(q_ptr + queries[:, None] * H + h[None, :], mask=q_ok[:, None] & h_ok[None, :], other=0.0)
    k = tl.load(k_ptr + keys[:, None] * H + h[None, :], mask=k_ok[:, None] & h_ok[None, :], other=0.0)
    w = tl.load(v_ptr + h, mask=h_ok, other=0.0).to(ACC)
    return tanh(q.to(ACC)[:, None, :] + k.to(ACC)[None, :, :], FAST), w, h, h_ok


@triton.jit
def _scores(q_ptr, k_ptr, v_ptr, queries, keys, q_ok, k_ok, H,
            BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr, ACC: tl.constexpr,
            FAST: tl.constexpr):
    """s (BLOCK_Q, BLOCK_K) = Σ_h v_h tanh(q[queries, h] + k[keys, h]); q_ptr, k_ptr at the row's start."""
    s = tl.zeros((BLOCK_Q, BLOCK_K), dtype=ACC)
    for h0 in range(0, H, BLOCK_H):
        t, w, _, _ = _tanh_chunk(q_ptr, k_ptr, v_ptr, queries, keys, q_ok, k_ok, h0, H, BLOCK_H, ACC, FAST)
        s += tl.sum(t * w[None, None, :], axis=2)
    return s


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, values_ptr, lengths_ptr, mask_ptr, context_ptr, lse_ptr, Tq, Tk, H, Dv,
                HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr, FAST: tl.constexpr,
                PRECISION: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    queries = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = queries < Tq
    d = tl.arange(0, BLOCK_D)
    d_ok = d < Dv
    q_row, k_row, val_row = q_ptr + b * Tq * H, k_ptr + b * Tk * H, values_ptr + b * Tk * Dv
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)

    m = tl.full((BLOCK_Q,), float("-inf"), dtype=ACC)
    denom = tl.zeros((BLOCK_Q,), dtype=ACC)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=ACC)
    for k0 in range(0, n_keys, BLOCK_K):
        keys = k0 + tl.arange(0, BLOCK_K)
        k_ok = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)  # padded keys load as zeros: never NaN
        s = _scores(q_row, k_row, v_ptr, queries, keys, q_ok, k_ok, H, BLOCK_Q, BLOCK_K, BLOCK_H, ACC, FAST)
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep exp() finite
        alpha = tl.exp(m - shift)
        p = tl.exp(s - shift[:, None])
        denom = denom * alpha + tl.sum(p, axis=1)
        vals = tl.load(val_row + keys[:, None] * Dv + d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(vals.dtype), vals, input_precision=PRECISION, out_dtype=ACC)
        m = m_new

    empty = denom == 0  # every key padded: zero context, lse = +inf
    context = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, denom)[:, None])
    lse = tl.where(empty, float("inf"), m + tl.log(tl.where(empty, 1.0, denom)))
    out = context_ptr + b * Tq * Dv + queries[:, None] * Dv + d[None, :]
    tl.store(out, context.to(context_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + b * Tq + queries, lse.to(lse_ptr.dtype.element_ty), mask=q_ok)


@triton.jit
def _bwd_kernel(dc_ptr, q_ptr, k_ptr, v_ptr, values_ptr, lengths_ptr, mask_ptr, lse_ptr, delta_ptr,
                dq_ptr, dk_ptr, dv_ptr, dvalues_ptr, Tq, Tk, H, Dv,
                HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr, FAST: tl.constexpr,
                PRECISION: tl.constexpr):
    """dq (B, Tq, H), dk (B, Tk, H), dv (B, n_key_blocks, H) in ACC, zero-filled; dvalues (B, Tk, Dv)."""
    b = tl.program_id(1).to(tl.int64)
    kb = tl.program_id(0)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    if kb * BLOCK_K >= n_keys:  # keys past the row's length: their gradients stay zero
        return
    keys = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_in = keys < n_keys
    k_ok = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < Dv
    q_row, k_row = q_ptr + b * Tq * H, k_ptr + b * Tk * H
    vals = tl.load(values_ptr + b * Tk * Dv + keys[:, None] * Dv + d[None, :], mask=k_in[:, None] & d_ok[None, :],
                   other=0.0)
    dvals = tl.zeros((BLOCK_K, BLOCK_D), dtype=ACC)
    for q0 in range(0, Tq, BLOCK_Q):
        queries = q0 + tl.arange(0, BLOCK_Q)
        q_ok = queries < Tq
        s = _scores(q_row, k_row, v_ptr, queries, keys, q_ok, k_in, H, BLOCK_Q, BLOCK_K, BLOCK_H, ACC, FAST)
        lse = tl.load(lse_ptr + b * Tq + queries, mask=q_ok, other=float("inf"))
        p = tl.where(k_ok[None, :], tl.exp(s - lse[:, None]), 0.0)
        dc = tl.load(dc_ptr + b * Tq * Dv + queries[:, None] * Dv + d[None, :], mask=q_ok[:, None] & d_ok[None, :],
                     other=0.0)
        dvals += tl.dot(tl.trans(p.to(dc.dtype)), dc, input_precision=PRECISION, out_dtype=ACC)
        da = tl.dot(dc, tl.trans(vals), input_precision=PRECISION, out_dtype=ACC)
        delta = tl.load(delta_ptr + b * Tq + queries, mask=q_ok, other=0.0)
        ds = p * (da - delta[:, None])
        for h0 in range(0, H, BLOCK_H):
            t, w, h, h_ok = _tanh_chunk(q_row, k_row, v_ptr, queries, keys, q_ok, k_in, h0, H, BLOCK_H, ACC, FAST)
            dst = ds[:, :, None] * t
            g = (ds[:, :, None] - dst * t) * w[None, None, :]  # dS v (1 − t²)
            tl.atomic_add(dq_ptr + b * Tq * H + queries[:, None] * H + h[None, :], tl.sum(g, axis=1),
                          mask=q_ok[:, None] & h_ok[None, :])
            tl.atomic_add(dk_ptr + b * Tk * H + keys[:, None] * H + h[None, :], tl.sum(g, axis=0),
                          mask=k_in[:, None] & h_ok[None, :])
            tl.atomic_add(dv_ptr + (b * tl.num_programs(0) + kb) * H + h, tl.sum(tl.sum(dst, axis=1), axis=0),
                          mask=h_ok)
    out = dvalues_ptr + b * Tk * Dv + keys[:, None] * Dv + d[None, :]
    tl.store(out, dvals.to(dvalues_ptr.dtype.element_ty), mask=k_in[:, None] & d_ok[None, :])


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


def additive_attention(query_proj, key_proj, v, values, lengths, key_padding_mask):
    B, Tq, H = query_proj.shape
    Tk, Dv = values.shape[1], values.shape[2]
    acc = torch.float64 if query_proj.dtype == torch.float64 else torch.float32
    context = query_proj.new_empty(B, Tq, Dv)
    lse = query_proj.new_empty(B, Tq, dtype=acc)
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, query_proj)
    flags = {"HAS_LENGTHS": has_len, "HAS_MASK": has_mask}
    for part in batch_slices(B, 1, len_arg, mask_arg, flags):
        pq, pk, pvalues, pcontext, plse = part(query_proj, key_proj, values, context, lse)
        _fwd_kernel[(triton.cdiv(Tq, FWD["BLOCK_Q"]), part.rows)](
            pq, pk, v, pvalues, part.lengths, part.mask, pcontext, plse, Tq, Tk, H, Dv, **flags,
            BLOCK_Q=FWD["BLOCK_Q"], BLOCK_K=FWD["BLOCK_K"], BLOCK_H=FWD["BLOCK_H"], BLOCK_D=_block_d(Dv),
            ACC=acc_type(query_proj.dtype), FAST=_fast_tanh(query_proj),
            PRECISION=precision(query_proj.dtype), num_warps=FWD["num_warps"])
    return context, lse


def additive_attention_backward(grad_context, query_proj, key_proj, v, values, lengths, key_padding_mask,
                                context, lse):
    B, Tq, H = query_proj.shape
    Tk, Dv = values.shape[1], values.shape[2]
    acc = lse.dtype
    delta = (grad_context.to(acc) * context.to(acc)).sum(-1)
    cfg = BWD_FP64 if query_proj.dtype == torch.float64 else BWD
    n_blocks = triton.cdiv(Tk, cfg["BLOCK_K"])
    dq = query_proj.new_zeros(B, Tq, H, dtype=acc)
    dk = query_proj.new_zeros(B, Tk, H, dtype=acc)
    dv = query_proj.new_zeros(B, n_blocks, H, dtype=acc)
    dvalues = torch.zeros_like(values)
    if key_padding_mask is not None:
        # Padded keys may hold anything (NaN, Inf). Zeroed here, every product the kernel forms stays finite;
        # masking the kernel's loads instead takes registers the backward does not have (it spills).
        key_proj, values = (t.masked_fill(key_padding_mask[..., None], 0) for t in (key_proj, values))
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, query_proj)
    flags = {"HAS_LENGTHS": has_len, "HAS_MASK": has_mask}
    for part in batch_slices(B, 1, len_arg, mask_arg, flags):
        _bwd_kernel[(n_blocks, part.rows)](
            *part(grad_context, query_proj, key_proj), v, *part(values), part.lengths, part.mask,
            *part(lse, delta, dq, dk, dv, dvalues), Tq, Tk, H, Dv, **flags, BLOCK_Q=cfg["BLOCK_Q"],
            BLOCK_K=cfg["BLOCK_K"], BLOCK_H=cfg["BLOCK_H"], BLOCK_D=_block_d(Dv),
            ACC=acc_type(query_proj.dtype), FAST=_fast_tanh(query_proj),
            PRECISION=precision(query_proj.dtype), **launch_options(cfg))
    return (dq.to(query_proj.dtype), dk.to(key_proj.dtype), dv.sum((0, 1)).to(v.dtype), dvalues)


def additive_attention_decode(query_proj, key_proj, v, values, lengths, key_padding_mask):
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
    """Forward, backward and the decoder step at each case of the gpu and headline presets in bf16, padded by
    lengths; at the first also unpadded, with a key padding mask, and in fp16, fp32 and fp64
    (fastseq.ops.aot)."""
    from ..aot import Launch
    from . import CASES

    def run(B, Tq, Tk, H, Dv, dtype, lengths=True, mask=False):
        q, k = torch.empty(B, Tq, H, dtype=dtype), torch.empty(B, Tk, H, dtype=dtype)
        v, values = torch.empty(H, dtype=dtype), torch.empty(B, Tk, Dv, dtype=dtype)
        length = torch.full((B,), Tk, dtype=torch.int32) if lengths else None
        padded = torch.zeros(B, Tk, dtype=torch.bool) if mask else None
        context, lse = additive_attention(q, k, v, values, length, padded)
        additive_attention_backward(torch.empty_like(context), q, k, v, values, length, padded, context, lse)
        additive_attention_decode(q[:, 0], k, v, values, length, padded)

    cases = list(dict.fromkeys(tuple(c) for preset in ("gpu", "headline") for c in CASES[preset]))
    variants = [(case, torch.bfloat16, {}) for case in cases]
    variants += [(cases[0], torch.bfloat16, {"lengths": False}), (cases[0], torch.bfloat16, {"mask": True})]
    variants += [(cases[0], dtype, {}) for dtype in (torch.float16, torch.float32, torch.float64)]
    for case, dtype, options in variants:
        yield Launch("additive_attention B{} Tq{} Tk{} H{} Dv{} ".format(*case) + f"{dtype} {options or ''}",
                     lambda case=case, dtype=dtype, options=options: run(*case, dtype, **options))
