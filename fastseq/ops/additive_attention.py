"""The additive (Bahdanau) attention ops: `additive_attention` (a block of queries, forward and backward)
and `additive_attention_step` (one query per row against cached keys, as a recurrent decoder calls it
once per output token). Torch custom ops with fake implementations and an autograd formula, served by
the backend `fastseq.backends` chooses: "cuda" (fastseq._C), "triton" or "reference".

The math, the padding rule and the workspace (the log-sum-exp) are in
fastseq/reference/additive_attention.py.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..reference.additive_attention import attention_weights
from ..reference.lstm import acc_dtype
from . import _checks as C
from ._dispatch import implementation, register

register("additive_attention",
         ("additive_attention_forward", "additive_attention_backward", "additive_attention_decode"),
         reference="fastseq.reference.additive_attention",
         triton="fastseq.triton.additive_attention", extension=("cuda",))


def _impl(function: str, t: Tensor):
    return implementation("additive_attention", function, t.device.type)


@torch.library.custom_op("fastseq::additive_attention", mutates_args=())
def _attention(query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor, lengths: Optional[Tensor],
               key_padding_mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return _impl("additive_attention_forward", query_proj)(query_proj, key_proj, v, values, lengths,
                                                          key_padding_mask)


@_attention.register_fake
def _(query_proj, key_proj, v, values, lengths, key_padding_mask):
    B, Tq, _ = query_proj.shape
    return (query_proj.new_empty(B, Tq, values.shape[2]),
            query_proj.new_empty(B, Tq, dtype=acc_dtype(query_proj.dtype)))


@torch.library.custom_op("fastseq::additive_attention_backward", mutates_args=())
def _attention_backward(grad_context: Tensor, query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
                        lengths: Optional[Tensor], key_padding_mask: Optional[Tensor], context: Tensor,
                        lse: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _impl("additive_attention_backward", query_proj)(grad_context, query_proj, key_proj, v, values,
                                                           lengths, key_padding_mask, context, lse)


@_attention_backward.register_fake
def _(grad_context, query_proj, key_proj, v, values, lengths, key_padding_mask, context, lse):
    return tuple(torch.empty_like(t) for t in (query_proj, key_proj, v, values))


def _setup(ctx, inputs, output):
    query_proj, key_proj, v, values, lengths, key_padding_mask = inputs
    context, lse = output
    ctx.save_for_backward(query_proj, key_proj, v, values, lengths, key_padding_mask, context, lse)


def _backward(ctx, grad_context, _grad_lse):
    grads = _attention_backward(grad_context.contiguous(), *ctx.saved_tensors)
    return (*grads, None, None)


_attention.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("fastseq::additive_attention_decode", mutates_args=())
def _decode(query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor, lengths: Optional[Tensor],
            key_padding_mask: Optional[Tensor]) -> Tensor:
    return _impl("additive_attention_decode", query_proj)(query_proj, key_proj, v, values, lengths,
                                                         key_padding_mask)


@_decode.register_fake
def _(query_proj, key_proj, v, values, lengths, key_padding_mask):
    return query_proj.new_empty(query_proj.shape[0], values.shape[2])


# ------------------------------------------------------------------------------------------ checks


def _prepare(op: str, query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
             key_padding_mask: Optional[Tensor], lengths: Union[Tensor, Sequence[int], None],
             query_layout: str) -> tuple[tuple[Tensor, ...], Optional[Tensor], Optional[Tensor]]:
    """Validate the arguments -> ((query_proj, key_proj, v, values) contiguous, lengths as int32 on the
    device of query_proj or None, key_padding_mask contiguous or None)."""
    query_proj, key_proj, v, values = C.autocast(query_proj, key_proj, v, values)
    for name, t in (("query_proj", query_proj), ("key_proj", key_proj), ("v", v), ("values", values)):
        C.check_float(op, name, t)
        C.check_like(op, name, t, "query_proj", query_proj)
    C.check_ndim(op, "key_proj", key_proj, 3, "(B, Tk, H)")
    B, Tk, H = key_proj.shape
    if Tk < 1:
        C.fail(op, "key_proj must hold at least one key, got Tk = 0")
    C.check_shape(op, "query_proj", query_proj, (B, *query_proj.shape[1:-1], H), query_layout)
    C.check_shape(op, "v", v, (H,), "(H,)")
    C.check_ndim(op, "values", values, 3, "(B, Tk, Dv)")
    C.check_shape(op, "values", values, (B, Tk, values.shape[2]), "(B, Tk, Dv)")
    lengths = C.check_key_padding(op, key_padding_mask, lengths, B, Tk, query_proj.device)
    args = (query_proj.contiguous(), key_proj.contiguous(), v.contiguous(), values.contiguous())
    return args, lengths, None if key_padding_mask is None else key_padding_mask.contiguous()


# ------------------------------------------------------------------------------------------ public


def additive_attention(
    query_proj: Tensor,
    key_proj: Tensor,
    v: Tensor,
    values: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    lengths: Union[Tensor, Sequence[int], None] = None,
    return_weights: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Additive attention of every query over the keys -> context (B, Tq, Dv) [, weights (B, Tq, Tk)].

    query_proj (B, Tq, H) = W_q query + b; key_proj (B, Tk, H) = W_k key; v (H,); values (B, Tk, Dv).
    Keys are padded where key_padding_mask (B, Tk, bool) is True, or at j >= lengths[b] (an integer
    tensor (B,) on any device, each in [0, Tk]); both may be given. A row with no key left gets a
    zero context and zero weights. The fused backends never build the (B, Tq, Tk, H) tensor; the
    weights, when asked for, come from the reference (differentiable, O(B·Tq·Tk) memory).
    """
    op = "additive_attention"
    C.check_ndim(op, "query_proj", query_proj, 3, "(B, Tq, H)")
    args, lengths, mask = _prepare(op, query_proj, key_proj, v, values, key_padding_mask, lengths, "(B, Tq, H)")
    context, _ = _attention(*args, lengths, mask)
    if not return_weights:
        return context
    return context, attention_weights(query_proj, key_proj, v, lengths, key_padding_mask)


def additive_attention_step(
    query_proj: Tensor,
    key_proj: Tensor,
    v: Tensor,
    values: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    lengths: Union[Tensor, Sequence[int], None] = None,
) -> Tensor:
    """One decoder step: query_proj (B, H) against cached key_proj (B, Tk, H) -> context (B, Dv).

    One kernel launch, no workspace, when no gradient is needed; otherwise the differentiable
    `additive_attention` with Tq = 1. Padding as in `additive_attention`.
    """
    op = "additive_attention_step"
    C.check_ndim(op, "query_proj", query_proj, 2, "(B, H)")
    args, lengths, mask = _prepare(op, query_proj, key_proj, v, values, key_padding_mask, lengths, "(B, H)")
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        context, _ = _attention(args[0][:, None], *args[1:], lengths, mask)
        return context[:, 0]
    return _decode(*args, lengths, mask)
