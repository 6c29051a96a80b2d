"""The LSTM ops: `lstm_cell` (one fused cell update), `lstm_step` (one step with its projections: what
torch.nn.LSTMCell computes) and `lstm_layer` (one layer, one direction, a whole sequence). `lstm_cell`
and `lstm_layer` are torch custom ops with a fake implementation and an autograd formula, served by the
backend `fastseq.backends` chooses: "cpu"/"cuda" (fastseq._C), "triton", "reference", or "torch" (torch's
own fused LSTM and cell, torch_backend.py: without a gradient, or on a device where torch's autograd
differentiates it, `Family.autograd`). `lstm_step` runs the projections and then `lstm_cell`, or torch's
whole cell on the torch backend.

The math and the workspace contract shared by every backend are in reference.py beside this file.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ...numerics import acc_dtype, autocast
from .. import checks as C
from .. import evidence, tuning
from ..registry import EXTENSION, Family, chosen, declare, kept
from . import persistent

# (mode, layers, hidden, seq, batch sizes, input size): fastseq/bench/lstm.py against torch.nn.LSTM
CASES = {
    "quick": [("inference", 1, 128, 32, (1, 8), 128), ("training", 2, 128, 16, (8,), 128)],
    "cpu": [("inference", 1, 256, 64, (1, 8, 32, 64), 256), ("training", 2, 256, 32, (1, 16, 64), 256)],
    "gpu": [("inference", 1, 512, 256, (1, 4, 8, 16, 32, 64, 128, 256), 512),
            ("training", 2, 512, 128, (64,), 512)],
    "headline": [("inference", 1, 512, 256, (1, 8, 64, 256), 512), ("training", 2, 512, 128, (64,), 512)],
}

_LAYER_ARGS = ("Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias, Tensor? w_hr, "
               "Tensor? lengths, bool reverse")
FAMILY = Family(
    name="lstm",
    functions={
        "lstm_cell": "(Tensor gates, Tensor c_prev) -> (Tensor, Tensor)",
        "lstm_cell_backward": "(Tensor grad_h, Tensor grad_c, Tensor gates, Tensor c_prev) -> (Tensor, Tensor)",
        "lstm_layer": f"({_LAYER_ARGS}, bool training) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
        "lstm_layer_backward": f"(Tensor grad_y, Tensor grad_h_n, Tensor grad_c_n, {_LAYER_ARGS}, Tensor y, "
                               "Tensor gates_ws, Tensor c_ws) -> "
                               "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    },
    backends={"reference": "fastseq.ops.lstm.reference", "triton": "fastseq.ops.lstm.triton",
              "cpu": EXTENSION, "cuda": EXTENSION, "torch": "fastseq.ops.lstm.torch_backend"},
    direct={  # torch's: a whole step (torch.nn.LSTMCell's), every layer and direction (torch.nn.LSTM's call)
        "lstm_step": "(Tensor x, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> "
                     "(Tensor, Tensor)",
        "lstm": "(Tensor x, Tensor[] hx, Tensor[] weights, bool has_biases, int num_layers, float dropout, "
                "bool training, bool bidirectional, Tensor? batch_sizes=None) -> (Tensor, Tensor, Tensor)",
    },
    kernels=("fastseq.ops.lstm.triton_cell", "fastseq.ops.lstm.triton_step"),
    cases=CASES,
    autograd=evidence.autograd("lstm"),  # torch's fused LSTM under its autograd: a CPU, and where a window passed
    limits={"cuda": "a layer: the persistent kernel's, bfloat16 and float16, hidden 128/256/512/1024, no "
                    "proj_size (kernels/lstm_persistent_plan.h); the rest goes to the next backend"},
    refusal=lambda backend, function, args: _refusal(backend, function, args),
)
_OPS = declare(FAMILY)


# ---------------------------------------------------------------------------------------------- cell


@_OPS["lstm_cell"].register_fake
def _(gates, c_prev, backend=""):
    return gates.new_empty(c_prev.shape), torch.empty_like(c_prev)


@_OPS["lstm_cell_backward"].register_fake
def _(grad_h, grad_c, gates, c_prev, backend=""):
    return torch.empty_like(gates), torch.empty_like(c_prev)


def _cell_setup(ctx, inputs, output):
    gates, c_prev, ctx.backend = inputs  # the forward's backend runs the backward
    ctx.save_for_backward(gates, c_prev)


def _cell_backward(ctx, grad_h, grad_c):
    gates, c_prev = ctx.saved_tensors
    return (*_OPS["lstm_cell_backward"](grad_h.contiguous(), grad_c.contiguous(), gates, c_prev, ctx.backend), None)


_OPS["lstm_cell"].register_autograd(_cell_backward, setup_context=_cell_setup)


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Fused LSTM cell: pre-activations `gates` (B, 4H) laid out [i|f|g|o] and `c_prev` (B, H) -> (h, c).

    The activations and the cell update are computed in float32 (float64 for float64 inputs).
    """
    op = "lstm_cell"
    gates, c_prev = autocast(gates, c_prev)
    C.check_float(op, "gates", gates)
    C.check_ndim(op, "gates", gates, 2, "(B, 4H)")
    if gates.shape[1] % 4:
        C.fail(op, f"gates.shape[1] must be 4*H, a multiple of 4; got {gates.shape[1]}")
    C.check_shape(op, "c_prev", c_prev, (gates.shape[0], gates.shape[1] // 4), "(B, H)")
    C.check_like(op, "c_prev", c_prev, "gates", gates)
    grad = torch.is_grad_enabled() and (gates.requires_grad or c_prev.requires_grad)
    call = functools.partial(tuning.Call.rerun, lstm_cell, (gates, c_prev), grad, gates.shape)
    key = (gates.shape, gates.dtype, gates.device, grad)
    return _cell(gates, c_prev, chosen("lstm", gates.device.type, _cell_needs(grad), autograd=True, call=call, key=key))


def _cell_needs(grad: bool) -> tuple[str, ...]:
    return ("lstm_cell", "lstm_cell_backward") if grad else ("lstm_cell",)


def _cell(gates: Tensor, c_prev: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return FAMILY.call("lstm_cell", backend, gates, c_prev, contiguous=(0, 1))


def lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
              b_hh: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """One LSTM step with its projections, as torch.nn.LSTMCell computes it -> (h', c').

    x (B, I); h, c (B, H); w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or None. The gates
    x W_ih^T + b_ih + h W_hh^T + b_hh go through the fused cell (`lstm_cell`) of the chosen backend; on
    the `torch` backend torch's own cell runs the whole step in one call (torch.nn.LSTMCell's), which at
    small sizes is where the time goes: the step is chosen by timing it whole.
    """
    op = "lstm_step"
    x, h, c, w_ih, w_hh, b_ih, b_hh = autocast(x, h, c, w_ih, w_hh, b_ih, b_hh)
    for name, t in (("x", x), ("h", h), ("c", c), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
        if t is not None:
            C.check_float(op, name, t)
            C.check_like(op, name, t, "x", x)
    C.check_ndim(op, "x", x, 2, "(B, I)")
    C.check_ndim(op, "w_hh", w_hh, 2, "(4H, H)")
    B, I = x.shape
    H = w_hh.shape[1]
    C.check_shape(op, "w_hh", w_hh, (4 * H, H), "(4H, H)")
    C.check_shape(op, "w_ih", w_ih, (4 * H, I), "(4H, I)")
    C.check_shape(op, "h", h, (B, H), "(B, H)")
    C.check_shape(op, "c", c, (B, H), "(B, H)")
    for name, t in (("b_ih", b_ih), ("b_hh", b_hh)):
        if t is not None:
            C.check_shape(op, name, t, (4 * H,), "(4H,)")
    return checked_step(x, h, c, w_ih, w_hh, b_ih, b_hh)


def checked_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """`lstm_step` on arguments already checked (and cast under autocast): for fastseq.nn.LSTMCell, whose
    own checks give torch.nn.LSTMCell's errors, so a small step pays for its checks once."""
    args = (x, h, c, w_ih, w_hh, b_ih, b_hh)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args)
    call = functools.partial(tuning.Call.rerun, lstm_step, args, grad, (x.shape[0], x.shape[1], h.shape[1]),
                             ("step",))
    backend = chosen("lstm", x.device.type, _cell_needs(grad), autograd=True, call=call, key=_step_key(x, h, grad))
    if FAMILY.offers(backend, "lstm_step"):  # the whole step in one call (torch's cell)
        return FAMILY.call("lstm_step", backend, *args)
    gates = torch.nn.functional.linear(x, w_ih, b_ih) + torch.nn.functional.linear(h, w_hh, b_hh)
    return _cell(gates, c, backend)


def _step_key(x: Tensor, h: Tensor, grad: bool) -> tuple:
    return "step", x.shape, h.shape[1], x.dtype, x.device, grad


def kept_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], grad: bool) -> Optional[tuple[Tensor, Tensor]]:
    """The step on arguments not yet checked, where a step of the same question went through checked_step
    before and its kept answer is a backend with the whole step (torch's cell, whose kernel checks its
    arguments as torch.nn.LSTMCell's call has them checked) -> (h', c'); else None, and the caller takes the
    checked route. An error raised here is the caller's to answer by the checked route (its own message)."""
    backend = kept("lstm", x.device.type, _cell_needs(grad), True, _step_key(x, h, grad))
    if backend is None or not FAMILY.offers(backend, "lstm_step"):
        return None
    return FAMILY.call("lstm_step", backend, x, h, c, w_ih, w_hh, b_ih, b_hh)


# --------------------------------------------------------------------------------------------- layer


@_OPS["lstm_layer"].register_fake
def _(x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, reverse, training, backend=""):
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    acc = acc_dtype(x.dtype)
    y = x.new_empty(T, B, h0.shape[1])
    gates_ws = x.new_empty(T, B, 4 * H) if training else x.new_empty(0)
    c_ws = x.new_empty(T, B, H, dtype=acc) if training else x.new_empty(0, dtype=acc)
    return y, torch.empty_like(h0), torch.empty_like(c0), gates_ws, c_ws


@_OPS["lstm_layer_backward"].register_fake
def _(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, bias, w_hr, *_):
    def like(t):
        return x.new_empty(0) if t is None else torch.empty_like(t)

    return like(x), like(h0), like(c0), like(w_ih), like(w_hh), like(bias), like(w_hr)


def _layer_setup(ctx, inputs, output):
    *args, reverse, training, backend = inputs
    ctx.reverse, ctx.training, ctx.backend = reverse, training, backend  # the forward's backend runs the backward
    ctx.save_for_backward(*args, *output[0:1], *output[3:])


def _layer_backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_gates_ws, _grad_c_ws):
    if not ctx.training:
        raise RuntimeError("lstm_layer: backward through a call made with training=False (no workspace saved)")
    *args, y, gates_ws, c_ws = ctx.saved_tensors
    grads = _OPS["lstm_layer_backward"](grad_y.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(),
                                       *args, ctx.reverse, y, gates_ws, c_ws, ctx.backend)
    bias, w_hr = args[5], args[6]
    dx, dh0, dc0, dw_ih, dw_hh, dbias, dw_hr = grads
    return (dx, dh0, dc0, dw_ih, dw_hh, None if bias is None else dbias, None if w_hr is None else dw_hr,
            None, None, None, None)


_OPS["lstm_layer"].register_autograd(_layer_backward, setup_context=_layer_setup)


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor] = None,
               w_hr: Optional[Tensor] = None, lengths: Union[Tensor, Sequence[int], None] = None,
               reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer in one direction over a time-major sequence -> (y, h_n, c_n).

    x (T, B, I); h0 (B, P); c0 (B, H); w_ih (4H, I); w_hh (4H, P); bias (4H,) = b_ih + b_hh or None;
    w_hr (P, H) projection or None (then P = H); lengths (B,) int64 on the CPU, sorted non-increasing,
    or None for full-length rows; reverse runs the sequence backwards (each row from its own end).
    y (T, B, P) is zero where t >= lengths[b]; h_n, c_n are each row's state after its last token.
    """
    op = "lstm_layer"
    x, h0, c0, w_ih, w_hh, bias, w_hr = autocast(x, h0, c0, w_ih, w_hh, bias, w_hr)
    C.check_float(op, "x", x)
    C.check_ndim(op, "x", x, 3, "(T, B, I)")
    T, B, I = x.shape
    if T < 1:
        C.fail(op, "x must hold at least one time step, got T = 0")
    for name, t in (("w_ih", w_ih), ("w_hh", w_hh), ("h0", h0), ("c0", c0), ("bias", bias), ("w_hr", w_hr)):
        if t is not None:
            C.check_float(op, name, t)
            C.check_like(op, name, t, "x", x)
    C.check_ndim(op, "w_ih", w_ih, 2, "(4H, I)")
    if w_ih.shape[0] % 4:
        C.fail(op, f"w_ih.shape[0] must be 4*H, a multiple of 4; got {w_ih.shape[0]}")
    H = w_ih.shape[0] // 4
    C.check_shape(op, "w_ih", w_ih, (4 * H, I), "(4H, I)")
    if w_hr is not None:
        C.check_ndim(op, "w_hr", w_hr, 2, "(P, H)")
        P = w_hr.shape[0]
        C.check_shape(op, "w_hr", w_hr, (P, H), "(P, H)")
        if not 0 < P < H:
            C.fail(op, f"the projection size P = w_hr.shape[0] must be in [1, H={H}), got {P}")
    else:
        P = H
    C.check_shape(op, "w_hh", w_hh, (4 * H, P), "(4H, P)")
    C.check_shape(op, "h0", h0, (B, P), "(B, P)")
    C.check_shape(op, "c0", c0, (B, H), "(B, H)")
    if bias is not None:
        C.check_shape(op, "bias", bias, (4 * H,), "(4H,)")
    if lengths is not None:
        if not isinstance(lengths, Tensor):
            lengths = C.integers(op, "lengths", lengths).to(torch.int64)
        C.check_lengths(op, lengths, B, T)
        if B == 0 or (int(lengths[0]) == T and int(lengths[-1]) == T):
            lengths = None  # every row runs the whole sequence (or there is no row)
    params = (x, h0, c0, w_ih, w_hh, bias, w_hr)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)

    backend = _layer_choice(params, lengths, reverse, training)
    y, h_n, c_n, _, _ = FAMILY.call("lstm_layer", backend, *params, lengths, bool(reverse), training,
                                    contiguous=tuple(range(len(params))))
    return y, h_n, c_n


def _layer_choice(params: tuple, lengths: Optional[Tensor], reverse: bool, training: bool) -> str:
    x, w_ih, w_hr = params[0], params[3], params[6]
    T, B, I = x.shape
    H = w_ih.shape[0] // 4
    needs = ("lstm_layer", "lstm_layer_backward") if training else ("lstm_layer",)
    call = functools.partial(tuning.Call.rerun, lstm_layer, (*params, lengths, reverse), training,
                             (T, B, I, H, H if w_hr is None else w_hr.shape[0]), (lengths is not None, bool(reverse)))
    key = _layer_key(x, H, w_hr, lengths is not None, bool(reverse), training)
    return chosen("lstm", x.device.type, needs, autograd=True, call=call, args=(*params, lengths, reverse, training),
                  key=key)


def _layer_key(x: Tensor, H: int, w_hr: Optional[Tensor], lengths: bool, reverse: bool, training: bool) -> tuple:
    P = 0 if w_hr is None else w_hr.shape[0]  # 0: no projection
    return "layer", x.shape, H, P, lengths, reverse, x.dtype, x.device, training


def kept_stacked(x: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], first: tuple, has_biases: bool,
                 num_layers: int, dropout: float, training: bool, bidirectional: bool,
                 grad: bool) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """stacked() on a time-major, full-length x not yet checked, where a call of the same question went through
    stacked() before and its kept answer offers the whole LSTM (torch's kernel, which checks its arguments as
    torch.nn.LSTM's call has them checked) -> (y, h_n, c_n); else None, and the caller takes the checked route.
    An error raised here is the caller's to answer by the checked route (its own message)."""
    w_ih, w_hr = first[0], first[3]
    needs = ("lstm_layer", "lstm_layer_backward") if grad else ("lstm_layer",)
    backend = kept("lstm", x.device.type, needs, True, _layer_key(x, w_ih.shape[0] // 4, w_hr, False, False, grad))
    if backend is None or not FAMILY.offers(backend, "lstm"):
        return None
    return FAMILY.call("lstm", backend, x, list(hx), weights, has_biases, num_layers, dropout, training,
                       bidirectional, None)


def _refusal(backend: str, function: str, args: tuple) -> Optional[str]:
    """Why `backend` cannot serve this call of `function` (the `cuda` layer: the persistent kernel's plan)."""
    if backend != "cuda" or function not in ("lstm_layer", "lstm_layer_backward"):
        return None
    if function == "lstm_layer":
        x, w_hh, w_hr, training = args[0], args[4], args[6], args[9]
    else:
        x, w_hh, w_hr, training = args[3], args[7], args[9], True
    return persistent.refusal(x, w_hh, w_hr, training)


def stacked(x: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], first: tuple, has_biases: bool,
            num_layers: int, dropout: float, training: bool, bidirectional: bool, grad: bool,
            lengths: Optional[Tensor] = None, batch_sizes: Optional[Tensor] = None, shape: Optional[Tensor] = None):
    """Every layer and direction of an LSTM in one call, where the backend chosen for its first layer offers
    it (`lstm`: torch's kernel, as torch.nn.LSTM calls it) -> (y, h_n, c_n); else None, and the caller runs
    the layers one by one. x: time major, or a PackedSequence's data with its batch_sizes (then `shape`, a
    view of the padded input's shape, and lengths, sorted non-increasing, describe it to the chooser);
    weights: per layer and direction w_ih, w_hh[, b_ih, b_hh][, w_hr]; first: the first layer's (w_ih,
    w_hh, b_ih or None, w_hr or None)."""
    h0, c0 = hx
    padded = x if shape is None else shape
    backend = layer_backend(padded, h0[0], c0[0], *first, grad, lengths)
    if not FAMILY.offers(backend, "lstm"):
        return None
    args = (x, [h0, c0], weights, has_biases, num_layers, dropout, training, bidirectional, batch_sizes)
    return FAMILY.call("lstm", backend, *args)


def layer_backend(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor],
                  w_hr: Optional[Tensor], training: bool, lengths: Optional[Tensor] = None) -> str:
    """The backend `lstm_layer` serves a forward layer on (chosen as the op chooses, in the same shape bucket;
    lengths sorted non-increasing, or None: full length): fastseq.nn.LSTM asks it for its first layer and,
    when it is `torch`, runs every layer in torch's one call (`torch_backend.lstm`, a packed sequence's too), with
    its parameters themselves, as torch.nn.LSTM does (oneDNN keeps their prepared form between calls);
    "" while torch.compile traces."""
    return _layer_choice((x, h0, c0, w_ih, w_hh, bias, w_hr), lengths, False, training)
