"""What the Triton attention kernels share: the tile loads and stores, dropout's mask, the program's
queries, the keys a query sees, and on the host the flags, scales and sizes every launch passes. The math,
the masking rules and the workspace are in reference.py beside this file."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...numerics import acc_dtype
from ...triton.common import acc_type, key_valid, mask_dtype, mask_pointer, padding_args, precision

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


def scales(q, scale):
    """(scale · log2 e, scale, log2 e) as a tensor in the accumulation dtype: a float argument would reach
    the kernel as float32, too coarse for float64."""
    return torch.tensor([scale * LOG2E, scale, LOG2E], dtype=acc_dtype(q.dtype), device=q.device)


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


AOT_VARIANTS = ([("bf16", dim, "masked") for dim in (64, 128, 256)]
                + [("fp16", 128, "plain"), ("fp32", 128, "plain"), ("bf16", 128, "dropout"), ("fp64", 128, "masked"),
                   ("bf16", 128, "bias")])


def aot_signature(pointers: list[str], t: str) -> dict:
    """The AOT signature of a forward or backward kernel whose pointer arguments are `pointers`, for
    inputs of Triton type t."""
    a = "fp64" if t == "fp64" else "fp32"
    sig = {p: ("*i32" if p == "lengths_ptr" else mask_pointer(t) if p == "mask_ptr" else
               f"*{a}" if p in ("lse_ptr", "delta_ptr") else f"*{t}") for p in pointers}
    sig.update({n: "i32" for n in ("Hq", "GROUP", "Tq", "Tk", "T_BUCKET")})
    sig.update({"scales_ptr": f"*{a}", "seed": "i64", "p_drop": "fp32"})
    sig.update({"bias_ptr": f"*{a}", **{n: "i32" for n in ("bias_sb", "bias_sh", "bias_sq", "bias_sk")}})
    sig.update({c: "constexpr" for c in ("D", "Dv", "CAUSAL", "HAS_LENGTHS", "HAS_MASK", "DROPOUT", "BLOCK_M",
                                         "BLOCK_N", "BLOCK_D", "BLOCK_DV", "ACC", "PRECISION", "BIAS")})
    return sig


def aot_flags(t: str, dim: int, kind: str) -> dict:
    """The constexprs of an AOT variant (kind: plain, masked = causal with both paddings, dropout, bias =
    masked with a float attn_mask)."""
    masked, dropout = kind != "plain", kind == "dropout"
    return {"D": dim, "Dv": dim, "CAUSAL": masked, "HAS_LENGTHS": masked, "HAS_MASK": masked, "DROPOUT": dropout,
            "BLOCK_D": dim, "BLOCK_DV": dim, "ACC": tl.float64 if t == "fp64" else tl.float32, "PRECISION": "ieee",
            "BIAS": 2 if kind == "bias" else 0}
