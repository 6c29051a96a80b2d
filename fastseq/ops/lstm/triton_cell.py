"""Fused LSTM cell in Triton: one program per BLOCK of (row, unit) elements; gates [i|f|g|o] read once,
activations in float32 (float64 for float64), recomputed in the backward rather than stored.

Layouts are those of kernels/lstm_cell.h: gates (rows, 4H) contiguous; c_prev, c (rows, H) in the state
dtype (the element dtype for a lone cell, float32 where the layer carries state over time).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...triton.activations import tanh
from ...triton.common import acc_type

BLOCK = 1024
NUM_WARPS = 8  # 4 elements a thread: the float64 backward fits its registers without spilling


@triton.jit
def _activations(z, H, mask, ACC: tl.constexpr):
    """σ(z_i), σ(z_f), tanh(z_g), σ(z_o) of the units whose pre-activations z points at."""
    i = tl.sigmoid(tl.load(z, mask=mask).to(ACC))
    f = tl.sigmoid(tl.load(z + H, mask=mask).to(ACC))
    g = tanh(tl.load(z + 2 * H, mask=mask).to(ACC), False)
    o = tl.sigmoid(tl.load(z + 3 * H, mask=mask).to(ACC))
    return i, f, g, o


@triton.jit
def _lstm_cell_fwd_kernel(gates_ptr, c_prev_ptr, h_ptr, c_ptr, N, H, BLOCK: tl.constexpr, ACC: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    r = n // H
    # row r's gates start at r*4H and unit j = n - r*H, so unit n's i-gate is at r*3H + n
    i, f, g, o = _activations(gates_ptr + r * 3 * H + n, H, mask, ACC)
    c = f * tl.load(c_prev_ptr + n, mask=mask).to(ACC) + i * g
    tl.store(c_ptr + n, c.to(c_ptr.dtype.element_ty), mask=mask)
    tl.store(h_ptr + n, (o * tanh(c, False)).to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_cell_bwd_kernel(
    grad_h_ptr, grad_c_ptr, gates_ptr, c_prev_ptr, grad_gates_ptr, grad_c_prev_ptr, N, H,
    BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    r = n // H
    i, f, g, o = _activations(gates_ptr + r * 3 * H + n, H, mask, ACC)
    cp = tl.load(c_prev_ptr + n, mask=mask).to(ACC)
    tc = tanh(f * cp + i * g, False)
    dh = tl.load(grad_h_ptr + n, mask=mask).to(ACC)
    dc = tl.load(grad_c_ptr + n, mask=mask).to(ACC) + dh * o * (1 - tc * tc)
    dz = grad_gates_ptr + r * 3 * H + n
    ty = grad_gates_ptr.dtype.element_ty
    tl.store(dz, (dc * g * i * (1 - i)).to(ty), mask=mask)
    tl.store(dz + H, (dc * cp * f * (1 - f)).to(ty), mask=mask)
    tl.store(dz + 2 * H, (dc * i * (1 - g * g)).to(ty), mask=mask)
    tl.store(dz + 3 * H, (dh * tc * o * (1 - o)).to(ty), mask=mask)
    tl.store(grad_c_prev_ptr + n, (dc * f).to(grad_c_prev_ptr.dtype.element_ty), mask=mask)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def forward_out(gates: torch.Tensor, c_prev: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> None:
    """h, c <- cell(gates, c_prev); every tensor contiguous, rows leading."""
    n = c.numel()
    if n:
        acc = acc_type(gates.dtype)
        _lstm_cell_fwd_kernel[_grid(n)](gates, c_prev, h, c, n, c.shape[-1], BLOCK=BLOCK, ACC=acc,
                                        num_warps=NUM_WARPS)


def backward_out(grad_h, grad_c, gates, c_prev, grad_gates, grad_c_prev) -> None:
    """grad_gates, grad_c_prev <- cell backward; grad_c_prev may be grad_c itself."""
    n = c_prev.numel()
    if n:
        acc = acc_type(gates.dtype)
        _lstm_cell_bwd_kernel[_grid(n)](grad_h, grad_c, gates, c_prev, grad_gates, grad_c_prev, n,
                                        c_prev.shape[-1], BLOCK=BLOCK, ACC=acc, num_warps=NUM_WARPS)


# (element dtype, state dtype) pairs the launchers are called with: a lone cell keeps state in the
# element dtype, a layer carries it in the accumulation dtype.
DTYPE_PAIRS = (("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp16", "fp32"), ("bf16", "fp32"),
               ("fp64", "fp64"))


def aot_launches():
    """The cell forward and backward for each (element, state) dtype pair, at a batch of 64 rows of 512 units
    (fastseq.ops.aot)."""
    from ..aot import Launch

    types = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}

    def run(t, s, B=64, H=512):
        gates, c_prev = torch.empty(B, 4 * H, dtype=types[t]), torch.empty(B, H, dtype=types[s])
        h, c = torch.empty(B, H, dtype=types[t]), torch.empty_like(c_prev)
        forward_out(gates, c_prev, h, c)
        backward_out(torch.empty_like(h), torch.empty_like(c), gates, c_prev, torch.empty_like(gates),
                     torch.empty_like(c_prev))

    for t, s in DTYPE_PAIRS:
        yield Launch(f"lstm_cell {t} state {s}", lambda t=t, s=s: run(t, s))
