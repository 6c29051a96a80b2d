"""Multi-head scaled dot-product attention's forward, fused in Triton (flash attention: Dao et al. 2022,
2023). One program per (block of BLOCK_M queries, batch row × query head). It streams the keys in blocks
of BLOCK_N with an online softmax in base 2 (the scale folded with log2 e), S = Q Kᵀ and the output P V
both on `tl.dot` (wgmma on sm_90, mma on sm_80). Key blocks that no query of the program may see are
never visited: those past the row's length and, when causal, those after the program's last query.
Blocks every query sees whole take a loop without masks; the rest (the causal diagonal, the row's last
block) take a masked one. A general attn_mask (bool or float, broadcast through zero strides) adds its
tile to the scores in both. It stores O and the log-sum-exp (the workspace of the backward).

Dropout draws its mask from Philox on (seed, key, query, batch row × head), so the backward redraws
exactly the forward's mask; the mask differs from the reference's (torch.Generator), its law does not.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...numerics import acc_dtype
from ...triton.common import batch_slices, key_bound, key_valid
from . import triton_common as common
from . import triton_configs as configs
from .triton_common import bias_tile, dropout_keep, key_range, load_tile, query_program, store_tile, visible


@triton.jit
def _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, qk_scale, seed, p_drop,
               bias_ptr, bias_offset, bias_sq, bias_sk, log2e, D: tl.constexpr, Dv: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               ACC: tl.constexpr, PRECISION: tl.constexpr, BIAS: tl.constexpr):
    """One block of keys of the online softmax; MASKED for the blocks some query sees only in part (the
    unmasked ones lie below the row's length: their loads need no key mask). An attn_mask (BIAS) adds its
    tile to the scores in either."""
    keys = k0 + tl.arange(0, BLOCK_N)
    k = load_tile(k_row, keys, keys < n_keys, D, BLOCK_D, MASKED)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
    if BIAS != 0:
        s = s + bias_tile(bias_ptr, bias_offset, queries, keys, bias_sq, bias_sk, queries < Tq, keys < Tk, log2e, BIAS)
    if MASKED:
        s = tl.where(visible(mask_ptr, b, queries, keys, n_keys, Tq, Tk, CAUSAL, HAS_MASK), s, float("-inf"))
    elif HAS_MASK:
        s = tl.where(key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep exp2() finite
    alpha = tl.exp2(m - shift)
    p = tl.exp2(s - shift[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    if DROPOUT:
        p = tl.where(dropout_keep(seed, keys, queries, bh, p_drop, BLOCK_M, BLOCK_N), p, 0.0)
    v = load_tile(v_row, keys, keys < n_keys, Dv, BLOCK_DV, MASKED)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC)
    return acc, m_new, l


@triton.jit
def fwd_kernel(q_ptr, k_ptr, v_ptr, lengths_ptr, mask_ptr, out_ptr, lse_ptr, Hq, GROUP, Tq, Tk, T_BUCKET, qk_hi, qk_lo,
               scale_hi, scale_lo, seed, p_drop, bias_ptr, bias_sb, bias_sh, bias_sq, bias_sk, D: tl.constexpr,
               Dv: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                ACC: tl.constexpr, PRECISION: tl.constexpr, BIAS: tl.constexpr):
    """q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> out (B, Hq, Tq, Dv), lse (B, Hq, Tq).
    qk_*, scale_*: scale · log2 e and scale in two float32 halves (triton_common.scales); T_BUCKET only keys the
    autotuner's cache; the attn_mask (BIAS 1 bool, 2 float) read through its strides (0 along a broadcast dim)."""
    qk_scale, _, log2e = common.kernel_scales(qk_hi, qk_lo, scale_hi, scale_lo, ACC)
    bh, b, kvh, m0, queries = query_program(Hq, GROUP, BLOCK_M)
    bias_offset = b * bias_sb + (bh % Hq) * bias_sh
    q_ok = queries < Tq
    q = load_tile(q_ptr + bh * Tq * D, queries, q_ok, D, BLOCK_D, True)
    k_row, v_row = k_ptr + kvh * Tk * D, v_ptr + kvh * Tk * Dv
    n_keys = key_bound(lengths_ptr, b, Tk, HAS_LENGTHS)
    full, end = key_range(m0, n_keys, Tq, Tk, BLOCK_M, BLOCK_N, CAUSAL)

    m = tl.full((BLOCK_M,), float("-inf"), dtype=ACC)
    l = tl.zeros((BLOCK_M,), dtype=ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=ACC)
    for k0 in range(0, full, BLOCK_N):
        acc, m, l = _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, qk_scale,
                               seed, p_drop, bias_ptr, bias_offset, bias_sq, bias_sk, log2e, D, Dv, False, CAUSAL,
                               HAS_MASK, DROPOUT, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, ACC, PRECISION, BIAS)
    for k0 in range(full, end, BLOCK_N):
        acc, m, l = _fwd_block(acc, m, l, q, k_row, v_row, mask_ptr, b, bh, queries, k0, n_keys, Tq, Tk, qk_scale,
                               seed, p_drop, bias_ptr, bias_offset, bias_sq, bias_sk, log2e, D, Dv, True, CAUSAL,
                               HAS_MASK, DROPOUT, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, ACC, PRECISION, BIAS)

    empty = l == 0  # no visible key: zero output, lse = +inf
    if DROPOUT:
        acc = acc / (1 - p_drop)
    out = tl.where(empty[:, None], 0.0, acc / tl.where(empty, 1.0, l)[:, None])
    lse = tl.where(empty, float("inf"), (m + tl.log2(tl.where(empty, 1.0, l))) / log2e)
    store_tile(out_ptr + bh * Tq * Dv, out, queries, q_ok, Dv, BLOCK_DV)
    tl.store(lse_ptr + bh * Tq + queries, lse.to(lse_ptr.dtype.element_ty), mask=q_ok)


def attention(q, k, v, lengths, key_padding_mask, attn_mask, causal, scale, dropout_p, seed):
    common.check_head_dims(q, v)
    k, v = common.unpadded(k, key_padding_mask), common.unpadded(v, key_padding_mask)
    B, Hq, Hkv, Tq, Tk, D, Dv, bucket = common.sizes(q, k, v)
    out = q.new_empty(B, Hq, Tq, Dv)
    lse = q.new_empty(B, Hq, Tq, dtype=acc_dtype(q.dtype))
    len_arg, mask_arg, flags = common.launch_flags(q, v, causal, lengths, key_padding_mask, dropout_p)
    bias, strides, flags["BIAS"] = common.bias_args(attn_mask, q)
    scales = common.scales(scale)
    for part in batch_slices(B, Hq, len_arg, mask_arg, flags):
        n = part.rows * Hq
        args = (*part(q, k, v), part.lengths, part.mask, *part(out, lse), Hq, Hq // Hkv, Tq, Tk, bucket, *scales, seed,
                dropout_p, common.bias_rows(bias, part), *strides, D, Dv)
        configs.launch("fwd", fwd_kernel, lambda c, n=n: (triton.cdiv(Tq, c["BLOCK_M"]), n), args, flags, q.dtype)
    return out, lse


def aot_launches():
    """The forward at each of triton_common.aot_cases (fastseq.ops.aot)."""
    from ..aot import Launch

    for label, *case in common.aot_cases():
        yield Launch(f"attention forward {label}", lambda case=case: attention(*common.aot_arguments(*case)))
