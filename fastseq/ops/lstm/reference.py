"""Reference LSTM in plain PyTorch: the CPU fallback and the oracle every fused backend is tested against.

Notation (Hochreiter & Schmidhuber 1997; Gers et al. 2000; Sak et al. 2014 for the projection), with
the gate pre-activations z laid out as torch.nn.LSTM lays them out, [i | f | g | o]:

    z_t = W_ih x_t + b + W_hh r_{t-1}
    i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)
    r_t = W_hr h_t           (with a projection; otherwise r_t = h_t)

Variable lengths: row b is *active* at step t when t < lengths[b]. An inactive row keeps its state and
outputs zeros, in both directions, so the reverse direction of a row starts at its own last token.

Everything is computed in the accumulation dtype (float64 for float64 inputs, float32 otherwise) and
cast back at the end, so the reference is float64-safe and fp32-accurate for half inputs.

The workspace contract shared by all backends (what the forward saves, what the backward reads):
    gates_ws (T, B, 4H), dtype of x:  the pre-activations z_t fed to the cell at each step;
    c_ws     (T, B, H), accumulation dtype: the cell state after step t (carried when inactive).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...numerics import acc_dtype


def _gates(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    zi, zf, zg, zo = z.chunk(4, dim=-1)
    return torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One cell update from pre-activations `gates` (..., 4H) and `c_prev` (..., H) -> (h, c)."""
    acc = acc_dtype(gates.dtype)
    if gates.dtype == acc and c_prev.dtype == acc:  # no casts to make (a small cell's time is its op calls)
        i, f, g, o = _gates(gates)
        c = torch.addcmul(i * g, f, c_prev)
        return o * torch.tanh(c), c
    i, f, g, o = _gates(gates.to(acc))
    c = f * c_prev.to(acc) + i * g
    h = o * torch.tanh(c)
    return h.to(gates.dtype), c.to(c_prev.dtype)


def lstm_cell_backward(grad_h: Tensor, grad_c: Tensor, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of one cell update, recomputing the activations from `gates` and `c_prev`.

    grad_h, grad_c: gradients w.r.t. the cell's outputs h and c. Returns (grad_gates, grad_c_prev).
    """
    acc = acc_dtype(gates.dtype)
    i, f, g, o = _gates(gates.to(acc))
    c_prev_a = c_prev.to(acc)
    tanh_c = torch.tanh(f * c_prev_a + i * g)
    dh = grad_h.to(acc)
    dc = grad_c.to(acc) + dh * o * (1 - tanh_c * tanh_c)
    dz = torch.cat(
        [dc * g * i * (1 - i), dc * c_prev_a * f * (1 - f), dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)],
        dim=-1,
    )
    return dz.to(gates.dtype), (dc * f).to(c_prev.dtype)


def _active(lengths: Optional[Tensor], t: int, like: Tensor) -> Optional[Tensor]:
    """(B, 1) bool mask of rows active at step t, or None when every row is."""
    if lengths is None:
        return None
    return (t < lengths).to(like.device, non_blocking=True).unsqueeze(1)


def _where(mask: Optional[Tensor], a: Tensor, b: Tensor) -> Tensor:
    return a if mask is None else torch.where(mask, a, b)


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
               w_hr: Optional[Tensor], lengths: Optional[Tensor], reverse: bool,
               training: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over a time-major sequence.

    x (T, B, I), h0 (B, P), c0 (B, H), w_ih (4H, I), w_hh (4H, P), bias (4H,) or None,
    w_hr (P, H) or None (then P = H), lengths (B,) or None.
    Returns y (T, B, P), h_n (B, P), c_n (B, H) and, when `training`, the workspace
    (gates_ws, c_ws) described in the module docstring (empty tensors otherwise).
    """
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    acc = acc_dtype(x.dtype)
    xa, w_ih_a, w_hh_a = x.to(acc), w_ih.to(acc), w_hh.to(acc)
    w_hr_a = None if w_hr is None else w_hr.to(acc)
    h, c = h0.to(acc), c0.to(acc)

    zx = xa @ w_ih_a.T
    if bias is not None:
        zx = zx + bias.to(acc)
    y = xa.new_zeros(T, B, h.shape[1])
    gates_ws = x.new_empty(T, B, 4 * H) if training else x.new_empty(0)
    c_ws = xa.new_empty(T, B, H) if training else xa.new_empty(0)

    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        z = zx[t] + h @ w_hh_a.T
        h_new, c_new = lstm_cell(z, c)
        if w_hr_a is not None:
            h_new = h_new @ w_hr_a.T
        active = _active(lengths, t, x)
        h, c = _where(active, h_new, h), _where(active, c_new, c)
        y[t] = _where(active, h_new, torch.zeros_like(h_new))
        if training:
            gates_ws[t] = z.to(x.dtype)
            c_ws[t] = c
    return y.to(x.dtype), h.to(x.dtype), c.to(x.dtype), gates_ws, c_ws


def lstm_layer_backward(grad_y: Tensor, grad_h_n: Tensor, grad_c_n: Tensor, x: Tensor, h0: Tensor, c0: Tensor,
                        w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor], w_hr: Optional[Tensor],
                        lengths: Optional[Tensor], reverse: bool, y: Tensor, gates_ws: Tensor,
                        c_ws: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backpropagation through time for `lstm_layer`, from its outputs and workspace.

    Returns (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr); grad_bias and
    grad_w_hr are empty tensors when bias / w_hr are None.
    """
    T, B, _ = x.shape
    acc = acc_dtype(x.dtype)
    w_ih_a, w_hh_a = w_ih.to(acc), w_hh.to(acc)
    w_hr_a = None if w_hr is None else w_hr.to(acc)
    ya, c0_a, h0_a = y.to(acc), c0.to(acc), h0.to(acc)
    dh, dc = grad_h_n.to(acc), grad_c_n.to(acc)
    dz_all = torch.zeros(T, B, w_hh.shape[0], dtype=acc, device=x.device)
    dr_all = torch.zeros_like(ya) if w_hr is not None else None
    h_prev_all = torch.empty_like(ya)

    def prev(t: int) -> int:  # the step processed just before t in the forward pass
        return t + 1 if reverse else t - 1

    for t in (range(T) if reverse else range(T - 1, -1, -1)):
        active = _active(lengths, t, x)
        p = prev(t)
        first = p < 0 or p >= T
        c_prev = c0_a if first else c_ws[p]
        h_prev_all[t] = h0_a if first else _where(_active(lengths, p, x), ya[p], h0_a)

        dh_t = dh + grad_y[t].to(acc)
        if w_hr_a is not None:
            dr = _where(active, dh_t, torch.zeros_like(dh_t))
            dr_all[t] = dr
            dh_t = dr @ w_hr_a
        dz, dc_prev = lstm_cell_backward(dh_t, dc, gates_ws[t].to(acc), c_prev)
        dz = _where(active, dz, torch.zeros_like(dz))
        dz_all[t] = dz
        dh = _where(active, dz @ w_hh_a, dh)
        dc = _where(active, dc_prev, dc)

    dz_flat = dz_all.flatten(0, 1)
    grad_x = (dz_all @ w_ih_a).to(x.dtype)
    grad_w_ih = (dz_flat.T @ x.to(acc).flatten(0, 1)).to(w_ih.dtype)
    grad_w_hh = (dz_flat.T @ h_prev_all.flatten(0, 1)).to(w_hh.dtype)
    grad_bias = x.new_empty(0) if bias is None else dz_flat.sum(0).to(bias.dtype)
    if w_hr is None:
        grad_w_hr = x.new_empty(0)
    else:
        o = torch.sigmoid(gates_ws.to(acc).chunk(4, dim=-1)[3])
        h_raw = o * torch.tanh(c_ws)
        grad_w_hr = (dr_all.flatten(0, 1).T @ h_raw.flatten(0, 1)).to(w_hr.dtype)
    return grad_x, dh.to(h0.dtype), dc.to(c0.dtype), grad_w_ih, grad_w_hh, grad_bias, grad_w_hr
