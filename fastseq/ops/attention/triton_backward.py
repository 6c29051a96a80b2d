"""Multi-head scaled dot-product attention's backward, fused in Triton, recomputing P from the forward's
log-sum-exp (no Tq × Tk tensor is ever stored), with D_i = dO_i · O_i computed by torch beforehand:
    - dK, dV: one program per (block of keys, batch row × key/value head); it walks the query heads that
      share the key/value head and their query blocks (from the causal diagonal on), so grouped heads
      are summed in registers, with no atomics;
    - dQ: one program per (block of queries, batch row × query head), over the same key blocks as the
      forward.
Both are deterministic; dropout redraws the forward's Philox mask, and an attn_mask adds its tile to the
recomputed scores as in the forward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...numerics import acc_dtype
from ...triton.common import batch_slices, key_bound, key_valid
from . import triton_common as common
from . import triton_configs as configs
from .triton_common import bias_tile, dropout_keep, key_range, load_tile, query_program, store_tile, visible


@triton.jit
def dkdv_kernel(do_ptr, q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                     Hq, GROUP, Tq, Tk, T_BUCKET, qk_hi, qk_lo, scale_hi, scale_lo, seed, p_drop, bias_ptr, bias_sb,
                     bias_sh, bias_sq,
                     bias_sk, D: tl.constexpr, Dv: tl.constexpr, CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                     HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                     BIAS: tl.constexpr):
    """dk (B, Hkv, Tk, D), dv (B, Hkv, Tk, Dv), every element written (zeros where no query sees the key)."""
    qk_scale, scale, log2e = common.kernel_scales(qk_hi, qk_lo, scale_hi, scale_lo, ACC)
    bkv = tl.program_id(1).to(tl.int64)
    Hkv = Hq // GROUP
    b = bkv // Hkv
    n0 = tl.program_id(0) * BLOCK_N
    keys = n0 + tl.arange(0, BLOCK_N)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    dk_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=ACC)
    dv_acc = tl.zeros((BLOCK_N, BLOCK_DV), dtype=ACC)
    if n0 < n_keys:
        k = load_tile(k_ptr + bkv * Tk * D, keys, keys < n_keys, D, BLOCK_D, True)
        v = load_tile(v_ptr + bkv * Tk * Dv, keys, keys < n_keys, Dv, BLOCK_DV, True)
        k_ok = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)
        start = 0
        if CAUSAL:  # queries before the diagonal see none of these keys
            start = tl.maximum(n0 - (Tk - Tq), 0) // BLOCK_M * BLOCK_M
        for g in range(0, GROUP):
            bh = b * Hq + (bkv % Hkv) * GROUP + g
            for m0 in range(start, Tq, BLOCK_M):
                queries = m0 + tl.arange(0, BLOCK_M)
                q_ok = queries < Tq
                q = load_tile(q_ptr + bh * Tq * D, queries, q_ok, D, BLOCK_D, True)
                do = load_tile(do_ptr + bh * Tq * Dv, queries, q_ok, Dv, BLOCK_DV, True)
                lse = tl.load(lse_ptr + bh * Tq + queries, mask=q_ok, other=float("inf")) * log2e
                delta = tl.load(delta_ptr + bh * Tq + queries, mask=q_ok, other=0.0)
                st = tl.dot(k, tl.trans(q), input_precision=PRECISION, out_dtype=ACC) * qk_scale
                if BIAS != 0:  # the mask's tile, keys x queries
                    st = st + bias_tile(bias_ptr, b * bias_sb + (bh % Hq) * bias_sh, keys, queries, bias_sk,
                                        bias_sq, keys < Tk, q_ok, log2e, BIAS)
                seen = k_ok[:, None] & q_ok[None, :]
                if CAUSAL:
                    seen = seen & (keys[:, None] <= queries[None, :] + (Tk - Tq))
                pt = tl.where(seen, tl.exp2(st - lse[None, :]), 0.0)
                dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION, out_dtype=ACC)
                if DROPOUT:
                    keep = tl.trans(dropout_keep(seed, keys, queries, bh, p_drop, BLOCK_M, BLOCK_N))
                    dv_acc += tl.dot(tl.where(keep, pt / (1 - p_drop), 0.0).to(do.dtype), do,
                                     input_precision=PRECISION, out_dtype=ACC)
                    dpt = tl.where(keep, dpt / (1 - p_drop), 0.0)
                else:
                    dv_acc += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION, out_dtype=ACC)
                dst = pt * (dpt - delta[None, :])
                dk_acc += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION, out_dtype=ACC)
    store_tile(dk_ptr + bkv * Tk * D, dk_acc * scale, keys, keys < Tk, D, BLOCK_D)
    store_tile(dv_ptr + bkv * Tk * Dv, dv_acc, keys, keys < Tk, Dv, BLOCK_DV)


@triton.jit
def dq_kernel(do_ptr, q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, lse_ptr, delta_ptr, dq_ptr,
                   Hq, GROUP, Tq, Tk, T_BUCKET, qk_hi, qk_lo, scale_hi, scale_lo, seed, p_drop, bias_ptr, bias_sb,
                   bias_sh, bias_sq, bias_sk,
                   D: tl.constexpr, Dv: tl.constexpr, CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                   HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                   BIAS: tl.constexpr):
    """dq (B, Hq, Tq, D)."""
    qk_scale, scale, log2e = common.kernel_scales(qk_hi, qk_lo, scale_hi, scale_lo, ACC)
    bh, b, kvh, m0, queries = query_program(Hq, GROUP, BLOCK_M)
    q_ok = queries < Tq
    q = load_tile(q_ptr + bh * Tq * D, queries, q_ok, D, BLOCK_D, True)
    do = load_tile(do_ptr + bh * Tq * Dv, queries, q_ok, Dv, BLOCK_DV, True)
    lse = tl.load(lse_ptr + bh * Tq + queries, mask=q_ok, other=float("inf")) * log2e
    delta = tl.load(delta_ptr + bh * Tq + queries, mask=q_ok, other=0.0)
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    _, end = key_range(m0, n_keys, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=ACC)
    for k0 in range(0, end, BLOCK_N):
        keys = k0 + tl.arange(0, BLOCK_N)
        k = load_tile(k_ptr + kvh * Tk * D, keys, keys < n_keys, D, BLOCK_D, True)
        v = load_tile(v_ptr + kvh * Tk * Dv, keys, keys < n_keys, Dv, BLOCK_DV, True)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        if BIAS != 0:
            s = s + bias_tile(bias_ptr, b * bias_sb + (bh % Hq) * bias_sh, queries, keys, bias_sq, bias_sk, q_ok,
                              keys < Tk, log2e, BIAS)
        p = tl.where(visible(mask_ptr, b, queries, keys, n_keys, Tq, Tk, CAUSAL, HAS_MASK),
                     tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
        if DROPOUT:
            dp = tl.where(dropout_keep(seed, keys, queries, bh, p_drop, BLOCK_M, BLOCK_N), dp / (1 - p_drop), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION, out_dtype=ACC)
    store_tile(dq_ptr + bh * Tq * D, dq * scale, queries, q_ok, D, BLOCK_D)


def attention_backward(grad_out, q, k, v, lengths, key_padding_mask, attn_mask, causal, scale, dropout_p, seed, out,
                       lse):
    common.check_head_dims(q, v)
    k, v = common.unpadded(k, key_padding_mask), common.unpadded(v, key_padding_mask)
    B, Hq, Hkv, Tq, Tk, D, Dv, bucket = common.sizes(q, k, v)
    delta = (grad_out.to(lse.dtype) * out.to(lse.dtype)).sum(-1)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    len_arg, mask_arg, flags = common.launch_flags(q, v, causal, lengths, key_padding_mask, dropout_p)
    bias, strides, flags["BIAS"] = common.bias_args(attn_mask, q)
    scales = common.scales(scale)
    for part in batch_slices(B, Hq, len_arg, mask_arg, flags):
        shared = (*part(grad_out, q, k, v), part.lengths, part.mask, *part(lse, delta))
        sizes = (Hq, Hq // Hkv, Tq, Tk, bucket, *scales, seed, dropout_p, common.bias_rows(bias, part), *strides, D, Dv)
        n_kv, n_q = part.rows * Hkv, part.rows * Hq
        configs.launch("dkdv", dkdv_kernel, lambda c, n=n_kv: (triton.cdiv(Tk, c["BLOCK_N"]), n),
                       (*shared, *part(dk, dv), *sizes), flags, q.dtype)
        configs.launch("dq", dq_kernel, lambda c, n=n_q: (triton.cdiv(Tq, c["BLOCK_M"]), n),
                       (*shared, *part(dq), *sizes), flags, q.dtype)
    return dq, dk, dv


def aot_launches():
    """The backward at each of triton_common.aot_cases (fastseq.ops.aot)."""
    from ..aot import Launch

    def run(case):
        args = common.aot_arguments(*case)
        q, v = args[0], args[2]
        out = q.new_empty(*q.shape[:3], v.shape[3])
        lse = q.new_empty(q.shape[:3], dtype=acc_dtype(q.dtype))
        return attention_backward(torch.empty_like(out), *args, out, lse)

    for label, *case in common.aot_cases():
        yield Launch(f"attention backward {label}", lambda case=case: run(case))
