"""What the Triton attention kernels share: the tile loads and stores, dropout's mask, the program's
queries, the keys a query sees, and on the host the flags, scales and sizes every launch passes. The math,
the masking rules and the workspace are in reference.py beside this file."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...numerics import acc_dtype
from ...triton.common import acc_type, key_valid, mask_dtype, padding_args, precision, wide, wide_float

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


@triton.jit
def load_tile(ptr, rows, row_ok, W: tl.constexpr, BLOCK_W: tl.constexpr, CHECK_ROWS: tl.constexpr):
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
def store_tile(ptr, value, rows, row_ok, W: tl.constexpr, BLOCK_W: tl.constexpr):
    cols = tl.arange(0, BLOCK_W)
    ptrs = ptr + rows[:, None] * W + cols[None, :]
    if W == BLOCK_W:
        tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < W)[None, :])


@triton.jit
def dropout_keep(seed, keys, queries, bh, p_drop, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Dropout's kept entries (BLOCK_M, BLOCK_N) for the queries × keys of batch-row-head bh."""
    c0 = tl.broadcast_to(keys[None, :], (BLOCK_M, BLOCK_N)).to(tl.uint32)
    c1 = tl.broadcast_to(queries[:, None], (BLOCK_M, BLOCK_N)).to(tl.uint32)
    c2 = tl.full((BLOCK_M, BLOCK_N), 0, tl.uint32) + bh.to(tl.uint32)
    r, _, _, _ = tl.philox(seed, c0, c1, c2, tl.zeros((BLOCK_M, BLOCK_N), tl.uint32))
    return tl.uint_to_uniform_float(r) >= p_drop


@triton.jit
def query_program(Hq, GROUP, BLOCK_M: tl.constexpr):
    """For a program over (block of queries, batch row × query head): (bh, b, kvh, m0, queries) — the
    flat query row, the batch row, the flat key/value row its head reads, and its queries."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    m0 = tl.program_id(0) * BLOCK_M
    return bh, b, b * (Hq // GROUP) + (bh % Hq) // GROUP, m0, m0 + tl.arange(0, BLOCK_M)


@triton.jit
def visible(mask_ptr, b, queries, keys, n_keys, Tq, Tk, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """(BLOCK_M, BLOCK_N) True where a query may attend to a key (padding, causal aligned to the end)."""
    ok = key_valid(mask_ptr, b, keys, n_keys, Tk, HAS_MASK)[None, :] & (queries < Tq)[:, None]
    if CAUSAL:
        ok = ok & (keys[None, :] <= queries[:, None] + (Tk - Tq))
    return ok


@triton.jit
def bias_tile(bias_ptr, offset, rows, cols, row_stride, col_stride, row_ok, col_ok, log2e, BIAS: tl.constexpr):
    """The attn_mask's tile over `rows` x `cols` (queries x keys, or keys x queries) in the kernels' base-2
    score units, to add to the scores: a bool mask (BIAS 1, True = hidden) as -inf and 0, a float one
    (BIAS 2) times log2 e. `offset` selects the (batch row, head); a broadcast dim has stride 0."""
    ok = row_ok[:, None] & col_ok[None, :]
    ptrs = (bias_ptr + offset) + (rows[:, None] * row_stride + cols[None, :] * col_stride)  # 32-bit within a head
    if BIAS == 1:
        return tl.where(tl.load(ptrs, mask=ok, other=0) != 0, float("-inf"), 0.0)
    else:
        return tl.load(ptrs, mask=ok, other=0.0) * log2e


@triton.jit
def key_range(m0, n_keys, Tq, Tk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
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


def block(n: int) -> int:
    """The power-of-two tile width (at least 16, tl.dot's smallest) that holds n."""
    return max(16, triton.next_power_of_2(n))


def check_head_dims(q, v) -> None:
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(f"attention: the triton backend serves head dims up to {MAX_HEAD_DIM}, got D = "
                         f"{q.shape[-1]}, Dv = {v.shape[-1]}; use backend 'reference'")


def bias_args(attn_mask, q):
    """(the attn_mask as the kernels read it, its (batch, head, query, key) strides, BIAS): bool as
    mask_dtype(q.dtype) (1 = hidden), float in the accumulation dtype; a dim it broadcasts along has
    stride 0. Without a mask a one-element dummy and BIAS 0."""
    if attn_mask is None:
        return q.new_empty(1, dtype=acc_dtype(q.dtype)), (0, 0, 0, 0), 0
    if attn_mask.dtype == torch.bool:
        bias, kind = attn_mask.to(mask_dtype(q.dtype)), 1
    else:
        bias, kind = attn_mask.to(acc_dtype(q.dtype)), 2
    return bias, tuple(st if n > 1 else 0 for n, st in zip(bias.shape, bias.stride())), kind


def bias_rows(bias, part):
    """The mask's rows for one batch slice of a launch (all of it where it broadcasts over the batch)."""
    return bias if bias.dim() < 4 or bias.shape[0] == 1 else bias[part.start:part.stop]


def launch_flags(q, v, causal, lengths, key_padding_mask, dropout_p):
    """(lengths, mask, constexpr flags) of a forward or backward launch."""
    len_arg, mask_arg, has_len, has_mask = padding_args(lengths, key_padding_mask, q)
    flags = {"CAUSAL": causal, "HAS_LENGTHS": has_len, "HAS_MASK": has_mask, "DROPOUT": dropout_p > 0,
             "BLOCK_D": block(q.shape[3]), "BLOCK_DV": block(v.shape[3]), "ACC": acc_type(q.dtype),
             "PRECISION": precision(q.dtype), "BIAS": 0}
    return len_arg, mask_arg, flags


def scales(scale: float) -> tuple[float, float, float, float]:
    """The kernels' scale arguments: scale · log2 e and scale, each as `wide_float`'s two float32 halves
    (kernel arguments, no device tensor: nothing crosses to the device per call; `kernel_scales` takes
    them back at float64's precision where the kernel runs in float64)."""
    return (*wide_float(scale * LOG2E), *wide_float(scale))


@triton.jit
def kernel_scales(qk_hi, qk_lo, scale_hi, scale_lo, ACC: tl.constexpr):
    """(scale · log2 e, scale, log2 e) in ACC from the halves `scales` passed."""
    qk_scale = wide(qk_hi, qk_lo, ACC)
    scale = wide(scale_hi, scale_lo, ACC)
    return qk_scale, scale, qk_scale / scale


def unpadded(t, key_padding_mask):
    """k or v (B, Hkv, Tk, ·) with the keys `key_padding_mask` pads zeroed: a padded key's value may hold
    anything (NaN, Inf), and 0 · NaN must not reach an output or a gradient. Done here, once per call:
    masking the kernels' tiles instead costs registers they do not have (they spill on sm_80)."""
    return t if key_padding_mask is None else t.masked_fill(key_padding_mask[:, None, :, None], 0)


def sizes(q, k, v):
    """(B, Hq, Hkv, Tq, Tk, D, Dv, the length bucket that keys the autotuner's cache)."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk, Dv = k.shape[1], k.shape[2], v.shape[3]
    return B, Hq, Hkv, Tq, Tk, D, Dv, min(triton.next_power_of_2(max(Tq, Tk)), 16384)


def aot_cases():
    """(label, B, Hq, Hkv, Tq, Tk, D, dtype, options) of the calls the AOT check compiles: every training case
    of the gpu and headline presets in bf16, full and causal; at the headline shape fp16, fp32 and fp64,
    lengths with a key padding mask, grouped heads, dropout, a float bias and a bool block mask; the
    seq2seq preset's padded cross-attention."""
    from . import CASES

    shapes = dict.fromkeys(tuple(c) for preset in ("gpu", "headline") for c in CASES[preset]["train"])
    for B, H, T, D in shapes:
        for causal in (False, True):
            yield f"B{B} H{H} T{T} D{D}{' causal' if causal else ''} bf16", B, H, H, T, T, D, torch.bfloat16, \
                {"causal": causal}
    B, H, T, D = CASES["headline"]["train"][0]
    for dtype in (torch.float16, torch.float32, torch.float64):
        yield f"B{B} H{H} T{T} D{D} {dtype}", B, H, H, T, T, D, dtype, {}
    yield f"B{B} H{H} T{T} D{D} padded GQA bf16", B, H, H // 4, T, T, D, torch.bfloat16, \
        {"causal": True, "lengths": True, "key_padding_mask": True}
    yield f"B{B} H{H} T{T} D{D} dropout bf16", B, H, H, T, T, D, torch.bfloat16, {"dropout_p": 0.1}
    yield f"B{B} H{H} T{T} D{D} bias bf16", B, H, H, T, T, D, torch.bfloat16, {"attn_mask": (T, T), "causal": True}
    yield f"B{B} H{H} T{T} D{D} block mask bf16", B, H, H, T, T, D, torch.bfloat16, {"attn_mask": (B, 1, T, T)}
    for B, E, heads, max_len in dict.fromkeys(tuple(c) for p in ("gpu", "headline") for c in CASES[p]["seq2seq"]):
        yield (f"seq2seq B{B} E{E} heads{heads} Tk{max_len} bf16", B, heads, heads, max_len - 7, max_len, E // heads,
               torch.bfloat16, {"lengths": True})


def aot_arguments(B, Hq, Hkv, Tq, Tk, D, dtype, options):
    """The forward backend's arguments (q, k, v, lengths, key_padding_mask, attn_mask, causal, scale,
    dropout_p, seed) for one of aot_cases, as CPU tensors never read."""
    q = torch.empty(B, Hq, Tq, D, dtype=dtype)
    k, v = torch.empty(B, Hkv, Tk, D, dtype=dtype), torch.empty(B, Hkv, Tk, D, dtype=dtype)
    lengths = torch.full((B,), Tk, dtype=torch.int32) if options.get("lengths") else None
    mask = torch.zeros(B, Tk, dtype=torch.bool) if options.get("key_padding_mask") else None
    shape = options.get("attn_mask")
    attn_mask = None if shape is None else (torch.zeros(shape, dtype=torch.bool) if len(shape) == 4 else
                                            torch.zeros(shape, dtype=torch.float32))
    if attn_mask is not None and attn_mask.dim() == 2:
        attn_mask = attn_mask[None, None]
    return (q, k, v, lengths, mask, attn_mask, options.get("causal", False), D ** -0.5,
            options.get("dropout_p", 0.0), 1)
