"""One LSTM time step fused in Triton: the recurrent GEMM, the gate nonlinearities and the state update in
one kernel, and its backward (cell backward and the recurrent-input gradient GEMM) in one kernel.

Forward, per step t over the n active rows:
    z = zx_t + r_{t-1} W_hhᵀ      (zx_t: the input projection of step t, bias included)
    c_t, h_t = cell(z, c_{t-1})   stored: z (the gates workspace), c_t (float32), h_t
Backward, per step, from dh (gradient at h_t, after the projection's backward) and dc:
    dz, dc_{t-1} = cell_backward(dh, dc, z, c_{t-1})
    dr_{t-1} = dz W_hh

Each forward program owns BLOCK_B rows × BLOCK_J units and computes the four gates of those units, so
the cell runs on the GEMM's accumulators without a round trip through memory. Each backward program
owns BLOCK_B rows × BLOCK_P columns of dr_{t-1} and walks the units, recomputing the cell backward for
its rows; the programs of the first column block also store dz and dc_{t-1}.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...triton.activations import tanh
from ...triton.common import acc_type, launch_options, precision


@triton.jit
def _gate_preact(zx_ptr, h_ptr, w_ptr, rows, units, row_mask, unit_mask, gate, H, P,
                 BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
                 PRECISION: tl.constexpr):
    """zx[rows, gate*H + units] + h[rows, :] @ W_hh[gate*H + units, :]ᵀ, accumulated in ACC."""
    mask = row_mask[:, None] & unit_mask[None, :]
    acc = tl.load(zx_ptr + rows[:, None] * 4 * H + gate * H + units[None, :], mask=mask, other=0.0).to(ACC)
    for k0 in range(0, P, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < P
        h = tl.load(h_ptr + rows[:, None] * P + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + (gate * H + units[None, :]) * P + k[:, None], mask=unit_mask[None, :] & k_mask[:, None],
                    other=0.0)
        acc += tl.dot(h, w, out_dtype=ACC, input_precision=PRECISION)
    return acc


@triton.jit
def _lstm_step_fwd_kernel(
    zx_ptr, h_prev_ptr, w_hh_ptr, c_prev_ptr, z_out_ptr, c_out_ptr, h_out_ptr, n, H, P,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    row_mask, unit_mask = rows < n, units < H
    mask = row_mask[:, None] & unit_mask[None, :]
    ty = z_out_ptr.dtype.element_ty
    z_at = z_out_ptr + rows[:, None] * 4 * H + units[None, :]
    # The pre-activations are rounded to the element type once, stored as the workspace, and the cell
    # reads the rounded values: the backward then recomputes exactly what the forward saw.
    zi = _gate_preact(zx_ptr, h_prev_ptr, w_hh_ptr, rows, units, row_mask, unit_mask, 0, H, P,
                      BLOCK_B, BLOCK_J, BLOCK_K, ACC, PRECISION).to(ty)
    tl.store(z_at, zi, mask=mask)
    zf = _gate_preact(zx_ptr, h_prev_ptr, w_hh_ptr, rows, units, row_mask, unit_mask, 1, H, P,
                      BLOCK_B, BLOCK_J, BLOCK_K, ACC, PRECISION).to(ty)
    tl.store(z_at + H, zf, mask=mask)
    zg = _gate_preact(zx_ptr, h_prev_ptr, w_hh_ptr, rows, units, row_mask, unit_mask, 2, H, P,
                      BLOCK_B, BLOCK_J, BLOCK_K, ACC, PRECISION).to(ty)
    tl.store(z_at + 2 * H, zg, mask=mask)
    zo = _gate_preact(zx_ptr, h_prev_ptr, w_hh_ptr, rows, units, row_mask, unit_mask, 3, H, P,
                      BLOCK_B, BLOCK_J, BLOCK_K, ACC, PRECISION).to(ty)
    tl.store(z_at + 3 * H, zo, mask=mask)
    i, f = tl.sigmoid(zi.to(ACC)), tl.sigmoid(zf.to(ACC))
    g, o = tanh(zg.to(ACC), False), tl.sigmoid(zo.to(ACC))
    state = rows[:, None] * H + units[None, :]
    c = f * tl.load(c_prev_ptr + state, mask=mask, other=0.0).to(ACC) + i * g
    tl.store(c_out_ptr + state, c.to(c_out_ptr.dtype.element_ty), mask=mask)
    tl.store(h_out_ptr + state, (o * tanh(c, False)).to(h_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_step_bwd_kernel(
    dh_ptr, dc_ptr, z_ptr, c_prev_ptr, w_hh_ptr, dz_out_ptr, dc_out_ptr, dr_out_ptr, n, H, P,
    BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_mask, col_mask = rows < n, cols < P
    first = tl.program_id(1) == 0
    ty = dz_out_ptr.dtype.element_ty
    dr = tl.zeros((BLOCK_B, BLOCK_P), dtype=ACC)
    for j0 in range(0, H, BLOCK_J):
        units = j0 + tl.arange(0, BLOCK_J)
        unit_mask = units < H
        mask = row_mask[:, None] & unit_mask[None, :]
        z = z_ptr + rows[:, None] * 4 * H + units[None, :]
        i = tl.sigmoid(tl.load(z, mask=mask, other=0.0).to(ACC))
        f = tl.sigmoid(tl.load(z + H, mask=mask, other=0.0).to(ACC))
        g = tanh(tl.load(z + 2 * H, mask=mask, other=0.0).to(ACC), False)
        o = tl.sigmoid(tl.load(z + 3 * H, mask=mask, other=0.0).to(ACC))
        state = rows[:, None] * H + units[None, :]
        cp = tl.load(c_prev_ptr + state, mask=mask, other=0.0).to(ACC)
        tc = tanh(f * cp + i * g, False)
        dh = tl.load(dh_ptr + state, mask=mask, other=0.0).to(ACC)
        dc = tl.load(dc_ptr + state, mask=mask, other=0.0).to(ACC) + dh * o * (1 - tc * tc)
        dzi = (dc * g * i * (1 - i)).to(ty)
        dzf = (dc * cp * f * (1 - f)).to(ty)
        dzg = (dc * i * (1 - g * g)).to(ty)
        dzo = (dh * tc * o * (1 - o)).to(ty)
        if first:
            dz = dz_out_ptr + rows[:, None] * 4 * H + units[None, :]
            tl.store(dz, dzi, mask=mask)
            tl.store(dz + H, dzf, mask=mask)
            tl.store(dz + 2 * H, dzg, mask=mask)
            tl.store(dz + 3 * H, dzo, mask=mask)
            tl.store(dc_out_ptr + state, (dc * f).to(dc_out_ptr.dtype.element_ty), mask=mask)
        w_mask = unit_mask[:, None] & col_mask[None, :]
        w = w_hh_ptr + units[:, None] * P + cols[None, :]
        dr += tl.dot(dzi, tl.load(w, mask=w_mask, other=0.0), out_dtype=ACC, input_precision=PRECISION)
        dr += tl.dot(dzf, tl.load(w + H * P, mask=w_mask, other=0.0), out_dtype=ACC, input_precision=PRECISION)
        dr += tl.dot(dzg, tl.load(w + 2 * H * P, mask=w_mask, other=0.0), out_dtype=ACC, input_precision=PRECISION)
        dr += tl.dot(dzo, tl.load(w + 3 * H * P, mask=w_mask, other=0.0), out_dtype=ACC, input_precision=PRECISION)
    tl.store(dr_out_ptr + rows[:, None] * P + cols[None, :], dr.to(dr_out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])


# Tiles: BLOCK_B rows (tl.dot needs at least 16) by BLOCK_J units (forward) or BLOCK_P columns
# (backward), reduced over BLOCK_K (forward) or BLOCK_J units (backward). The forward holds four gate
# tiles at once, the backward four dz tiles and its output: sized so that neither spills (checked for
# sm_90 and sm_80 by `python -m fastseq.ops.aot`, under Triton 3.6 and 3.9).
CONFIGS = {"small": dict(BLOCK_B=16, BLOCK_J=32, BLOCK_K=64, num_warps=8),
           "large": dict(BLOCK_B=32, BLOCK_J=32, BLOCK_K=32, num_warps=4),
           "fp64": dict(BLOCK_B=16, BLOCK_J=16, BLOCK_K=16, num_warps=4)}


def config(n: int, dtype: torch.dtype) -> dict:
    if dtype == torch.float64:
        return CONFIGS["fp64"]
    return CONFIGS["small" if n <= 16 else "large"]


def _launch(kernel, n: int, columns: int, dtype: torch.dtype, args: tuple, **blocks) -> None:
    """kernel over n active rows × `columns` output units, its tile chosen for n rows of `dtype`."""
    if n == 0:
        return
    cfg = config(n, dtype)
    grid = (triton.cdiv(n, cfg["BLOCK_B"]), triton.cdiv(columns, cfg["BLOCK_J"]))
    kernel[grid](*args, BLOCK_B=cfg["BLOCK_B"], BLOCK_J=cfg["BLOCK_J"], **{k: cfg[v] for k, v in blocks.items()},
                 ACC=acc_type(dtype), PRECISION=precision(dtype), **launch_options(cfg))


def forward_out(zx, h_prev, w_hh, c_prev, z_out, c_out, h_out) -> None:
    """One fused step over the n = h_prev.shape[0] active rows; every tensor contiguous."""
    n, P = h_prev.shape
    H = c_prev.shape[1]
    _launch(_lstm_step_fwd_kernel, n, H, zx.dtype, (zx, h_prev, w_hh, c_prev, z_out, c_out, h_out, n, H, P),
            BLOCK_K="BLOCK_K")


def backward_out(dh, dc, z, c_prev, w_hh, dz_out, dc_out, dr_out) -> None:
    """One fused backward step over the n = dh.shape[0] active rows; outputs must not alias inputs."""
    n, H = dh.shape
    P = w_hh.shape[1]
    _launch(_lstm_step_bwd_kernel, n, P, z.dtype, (dh, dc, z, c_prev, w_hh, dz_out, dc_out, dr_out, n, H, P),
            BLOCK_P="BLOCK_J")


STEPS = 3  # time steps each ahead-of-time launch runs


def aot_launches():
    """A layer's forward and backward at each case of the gpu and headline presets in bf16, every batch size
    (the step's tile follows the active rows), with ragged lengths at the largest; at one batch size fp16,
    fp32 and fp64 and a projection (fastseq.ops.aot)."""
    from ..aot import Launch
    from . import CASES
    from . import triton as layer

    def run(T, B, I, H, P, dtype, ragged=False, training=True):
        x, h0, c0 = torch.empty(T, B, I, dtype=dtype), torch.empty(B, P, dtype=dtype), torch.empty(B, H, dtype=dtype)
        w_ih, w_hh, bias = (torch.empty(4 * H, I, dtype=dtype), torch.empty(4 * H, P, dtype=dtype),
                            torch.empty(4 * H, dtype=dtype))
        w_hr = torch.empty(P, H, dtype=dtype) if P != H else None
        lengths = torch.linspace(T, 1, B).long() if ragged else None
        y, h, c, gates, c_ws = layer.lstm_layer(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, False, training)
        if training:
            layer.lstm_layer_backward(torch.empty_like(y), torch.empty_like(h), torch.empty_like(c), x, h0, c0, w_ih,
                                      w_hh, bias, w_hr, lengths, False, y, gates, c_ws)

    # the kernels' variants follow B, I, H and the dtype, not T: each case runs STEPS steps of its T (the host's
    # GEMMs at T steps would take minutes on a CPU)
    shapes = dict.fromkeys((mode, batch, size, hidden) for preset in ("gpu", "headline")
                           for mode, _, hidden, seq, batches, size in CASES[preset] for batch in batches)
    for mode, B, I, H in shapes:
        yield Launch(f"lstm_layer {mode} B{B} I{I} H{H} bf16 ({STEPS} steps)",
                     lambda B=B, I=I, H=H, mode=mode: run(STEPS, B, I, H, H, torch.bfloat16,
                                                          training=mode == "training"))
    T, B, I, H = STEPS, 64, 512, 512
    yield Launch(f"lstm_layer training T32 B{B} I{I} H{H} ragged bf16", lambda: run(32, B, I, H, H, torch.bfloat16,
                                                                                    ragged=True))  # every row count
    yield Launch(f"lstm_layer training T{T} B{B} I{I} H{H} P256 bf16", lambda: run(T, B, I, H, 256, torch.bfloat16))
    for dtype in (torch.float16, torch.float32, torch.float64):
        yield Launch(f"lstm_layer training T{T} B{B} I{I} H{H} {dtype}", lambda dtype=dtype: run(T, B, I, H, H, dtype))
