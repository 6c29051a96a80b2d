"""The Triton backend of the LSTM ops: the fused Triton cell (`lstm_cell`), and one layer (`lstm_layer`)
as one GEMM for the input projection of all steps, then one fused Triton kernel per step (recurrent GEMM
+ gates + state update; backward: cell backward + recurrent-input GEMM), then the weight gradients in
one GEMM each after the loop.

Same algorithm, arguments and workspace as csrc/lstm_layer.cpp and fastseq/ops/lstm/reference.py: variable
lengths (sorted non-increasing) become per-step row counts.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...numerics import acc_dtype
from . import triton_cell as cell
from . import triton_step as step


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    h = torch.empty_like(c_prev, dtype=gates.dtype)
    c = torch.empty_like(c_prev)
    cell.forward_out(gates, c_prev, h, c)
    return h, c


def lstm_cell_backward(grad_h: Tensor, grad_c: Tensor, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    grad_gates = torch.empty_like(gates)
    grad_c_prev = torch.empty_like(c_prev)
    cell.backward_out(grad_h, grad_c, gates, c_prev, grad_gates, grad_c_prev)
    return grad_gates, grad_c_prev


def _active_rows(lengths: Optional[Tensor], T: int, B: int) -> list[int]:
    if lengths is None:
        return [B] * T
    return (lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)).sum(1).tolist()


def lstm_layer(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, reverse, training):
    T, B, I = x.shape
    H, P = w_hh.shape[0] // 4, h0.shape[1]
    rows = _active_rows(lengths, T, B)
    acc = acc_dtype(x.dtype)
    x2 = x.reshape(T * B, I)
    gates = (torch.addmm(bias, x2, w_ih.T) if bias is not None else x2 @ w_ih.T).view(T, B, 4 * H)
    y = x.new_zeros(T, B, P) if lengths is not None else x.new_empty(T, B, P)
    c_ws = x.new_empty(T if training else 2, B, H, dtype=acc)
    h_raw = x.new_empty(B, H) if w_hr is not None else None
    h = h0.clone()
    c_prev = c0.to(acc).contiguous()
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = rows[t]
        c = c_ws[t] if training else c_ws[s % 2]
        if n < B:
            c[n:].copy_(c_prev[n:])
        if n:
            z = gates[t, :n]  # in: the input projection; out: the full pre-activations (workspace)
            if w_hr is not None:
                step.forward_out(z, h[:n], w_hh, c_prev[:n], z, c[:n], h_raw[:n])
                torch.mm(h_raw[:n], w_hr.T, out=y[t, :n])
            else:
                step.forward_out(z, h[:n], w_hh, c_prev[:n], z, c[:n], y[t, :n])
            h[:n].copy_(y[t, :n])
        c_prev = c
    c_n = c_prev.to(x.dtype, copy=True)
    if not training:
        return y, h, c_n, x.new_empty(0), x.new_empty(0, dtype=acc)
    return y, h, c_n, gates, c_ws


def lstm_layer_backward(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, reverse, y,
                        gates_ws, c_ws):
    T, B, I = x.shape
    H, P = w_hh.shape[0] // 4, h0.shape[1]
    rows = _active_rows(lengths, T, B)
    acc = acc_dtype(x.dtype)
    dh = grad_h_n.clone()
    dc = grad_c_n.to(acc, copy=True)
    dh_next, dc_next = torch.empty_like(dh), torch.empty_like(dc)  # the step kernel reads dh, dc whole
    dz = x.new_zeros(T, B, 4 * H)
    dr = x.new_zeros(T, B, P) if w_hr is not None else None
    h_prev = torch.cat([y[1:], h0[None]]) if reverse else torch.cat([h0[None], y[:-1]])
    c0_acc = c0.to(acc)
    for s in range(T):
        t = s if reverse else T - 1 - s
        p = t + 1 if reverse else t - 1
        first = not 0 <= p < T
        n = rows[t]
        if n == 0:
            continue
        if not first and rows[p] < n:  # reverse direction: these rows start at t, from h0
            h_prev[t, rows[p]:n].copy_(h0[rows[p]:n])
        dh_t = dh[:n]
        dh_t.add_(grad_y[t, :n])
        dh_raw = dh_t
        if w_hr is not None:
            dr[t, :n].copy_(dh_t)
            dh_raw = dh_t @ w_hr
        c_prev = (c0_acc if first else c_ws[p])[:n]
        step.backward_out(dh_raw, dc[:n], gates_ws[t, :n], c_prev, w_hh, dz[t, :n], dc_next[:n], dh_next[:n])
        dh_t.copy_(dh_next[:n])
        dc[:n].copy_(dc_next[:n])
    dz2 = dz.view(T * B, 4 * H)
    grad_x = (dz2 @ w_ih).view(T, B, I)
    grad_w_ih = dz2.T @ x.reshape(T * B, I)
    grad_w_hh = dz2.T @ h_prev.view(T * B, P)
    grad_bias = dz2.sum(0, dtype=acc).to(bias.dtype) if bias is not None else x.new_empty(0)
    grad_w_hr = x.new_empty(0)
    if w_hr is not None:
        o = torch.sigmoid(gates_ws[..., 3 * H:].to(acc))
        h_raw = (o * torch.tanh(c_ws)).to(x.dtype)
        grad_w_hr = dr.view(T * B, P).T @ h_raw.view(T * B, H)
    return grad_x, dh, dc.to(c0.dtype), grad_w_ih, grad_w_hh, grad_bias, grad_w_hr
