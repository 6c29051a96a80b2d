"""The additive (Bahdanau) attention ops: `additive_attention` (a block of queries, forward and backward)
and `additive_attention_step` (one query per row against cached keys, as a recurrent decoder calls it
once per output token). Torch custom ops with fake implementations and an autograd formula, served by
the backend `fastseq.backends` chooses: "cuda" (fastseq._C's kernels), "triton" or "reference"; on a CPU,
calls small enough to build (B, Tq, Tk, H) at once go to "torch" (torch_backend.py), which torch's autograd
differentiates.

The math and the padding rule are in reference.py beside this file; the fused backends' two tanh passes
and the GEMMs between them in passes.py. The workspace a forward keeps for its backward: the log-sum-exp
and, when a gradient will be needed, the scores S (B, Tq, Tk) in the accumulation dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ...masking import keep_mask
from ...numerics import acc_dtype, autocast
from .. import checks as C
from ..registry import Family, chosen, declare
from . import torch_backend
from .reference import attention_weights

# (B, Tq, Tk, H, Dv): fastseq/bench/additive_attention.py against the naive PyTorch form
CASES = {
    "quick": [(2, 16, 16, 32, 32)],
    "cpu": [(4, 64, 64, 128, 128), (2, 32, 512, 128, 128)],
    "gpu": [(64, 256, 256, 512, 512), (16, 64, 1024, 512, 256), (16, 64, 4096, 512, 256),
            (16, 64, 16384, 512, 256)],
    "headline": [(64, 256, 256, 512, 512), (16, 64, 16384, 512, 256)],
}

_ARGS = "Tensor query_proj, Tensor key_proj, Tensor v, Tensor values, Tensor? lengths, Tensor? key_padding_mask"
_PACKAGE = "fastseq.ops.additive_attention."
FAMILY = Family(
    name="additive_attention",
    functions={
        # padding_zeroed: the caller zeroed the padded keys' rows (zero_padded_keys, once per sentence); a fused
        # backend skips padded keys at no cost and needs no telling
        "additive_attention": f"({_ARGS}, bool save_scores, bool padding_zeroed) -> (Tensor, Tensor, Tensor)",
        "additive_attention_backward": f"(Tensor grad_context, {_ARGS}, Tensor context, Tensor lse, "
                                       "Tensor scores) -> (Tensor, Tensor, Tensor, Tensor)",
        "additive_attention_decode": f"({_ARGS}, bool padding_zeroed) -> Tensor",
    },
    backends={"reference": _PACKAGE + "reference", "torch": _PACKAGE + "torch_backend", "triton": _PACKAGE + "triton",
              "cuda": _PACKAGE + "cuda"},
    extension_functions={"cuda": {  # the kernels the cuda backend composes (kernels/additive_passes.cu)
        "additive_scores": "(Tensor query_proj, Tensor key_proj, Tensor v, Tensor a, Tensor b, Tensor rows, "
                           "Tensor? lengths, Tensor? key_padding_mask, int h_fma, int tile) -> Tensor",
        "additive_gradient_pass": "(Tensor ds, Tensor query_proj, Tensor key_proj, Tensor v, Tensor a, Tensor b, "
                                  "Tensor rows, int h_fma) -> (Tensor, Tensor, Tensor)",
        "additive_attention_decode": f"({_ARGS}) -> Tensor",
    }},
    kernels=("fastseq.ops.additive_attention.triton",),
    cases=CASES,
    autograd={"cpu": ("torch",)},  # the built tensor, kept by autograd, trains faster on a CPU than recomputing
    # "blocked": never (B, Tq, Tk, H) at once, which calls past torch_backend.MATERIALIZED elements need
    features={"blocked": ("reference", "triton", "cuda")},
    order={"cuda": ("cuda", "triton", "reference")},  # the torch form on a GPU awaits a measurement there
)
_OPS = declare(FAMILY)


@_OPS["additive_attention"].register_fake
def _(query_proj, key_proj, v, values, lengths, key_padding_mask, save_scores, padding_zeroed, backend=""):
    B, Tq, _ = query_proj.shape
    acc = acc_dtype(query_proj.dtype)
    return (query_proj.new_empty(B, Tq, values.shape[2]), query_proj.new_empty(B, Tq, dtype=acc),
            query_proj.new_empty(*((B, Tq, key_proj.shape[1]) if save_scores else (0,)), dtype=acc))


@_OPS["additive_attention_backward"].register_fake
def _(grad_context, query_proj, key_proj, v, values, *_):
    return tuple(torch.empty_like(t) for t in (query_proj, key_proj, v, values))


def _setup(ctx, inputs, output):
    *tensors, _save_scores, _padding_zeroed, ctx.backend = inputs  # the forward's backend runs the backward
    ctx.save_for_backward(*tensors, *output)


def _backward(ctx, grad_context, _grad_lse, _grad_scores):
    grads = _OPS["additive_attention_backward"](grad_context.contiguous(), *ctx.saved_tensors, ctx.backend)
    return (*grads, None, None, None, None, None)


_OPS["additive_attention"].register_autograd(_backward, setup_context=_setup)


@_OPS["additive_attention_decode"].register_fake
def _(query_proj, key_proj, v, values, lengths, key_padding_mask, padding_zeroed, backend=""):
    return query_proj.new_empty(query_proj.shape[0], values.shape[2])


# ------------------------------------------------------------------------------------------ checks


def _prepare(op: str, query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
             key_padding_mask: Optional[Tensor], lengths: Union[Tensor, Sequence[int], None],
             query_layout: str) -> tuple[tuple[Tensor, ...], Optional[Tensor], Optional[Tensor]]:
    """Validate the arguments -> ((query_proj, key_proj, v, values) contiguous, lengths as int32 on the
    device of query_proj or None, key_padding_mask contiguous or None)."""
    query_proj, key_proj, v, values = autocast(query_proj, key_proj, v, values)
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


def needs(B: int, Tq: int, Tk: int, H: int, grad: bool) -> tuple[str, ...]:
    """What a call of these sizes asks of its backend: the forward, the backward when `grad`, and "blocked"
    when (B, Tq, Tk, H) is past torch_backend.MATERIALIZED elements."""
    asked = ("additive_attention", "additive_attention_backward") if grad else ("additive_attention",)
    return asked + (("blocked",) if B * Tq * Tk * H > torch_backend.MATERIALIZED else ())


def _context(args: tuple[Tensor, ...], lengths: Optional[Tensor], mask: Optional[Tensor],
             padding_zeroed: bool) -> Tensor:
    """The context (B, Tq, Dv) of query_proj (B, Tq, H) in args (query_proj, key_proj, v, values), from the
    chosen backend."""
    (B, Tq, _), (_, Tk, H) = args[0].shape, args[1].shape
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    backend = chosen("additive_attention", args[0].device.type, needs(B, Tq, Tk, H, grad), autograd=True)
    return FAMILY.call("additive_attention", backend, *args, lengths, mask, grad, padding_zeroed)[0]


def zero_padded_keys(key_proj: Tensor, values: Tensor, key_padding_mask: Optional[Tensor] = None,
                     lengths: Union[Tensor, Sequence[int], None] = None,
                     op: str = "zero_padded_keys") -> tuple[Tensor, Tensor]:
    """key_proj (B, Tk, H) and values (B, Tk, Dv) with the padded keys' rows zeroed (differentiably), for a
    decoder that attends to them at every step with padding_zeroed=True: done once per sequence, not per
    step. Padding as in `additive_attention`; errors name `op`."""
    C.check_ndim(op, "key_proj", key_proj, 3, "(B, Tk, H)")
    B, Tk, _ = key_proj.shape
    C.check_ndim(op, "values", values, 3, "(B, Tk, Dv)")
    C.check_shape(op, "values", values, (B, Tk, values.shape[2]), "(B, Tk, Dv)")
    lengths = C.check_key_padding(op, key_padding_mask, lengths, B, Tk, key_proj.device)
    if key_padding_mask is None and lengths is None:
        return key_proj, values
    return torch_backend.zero_padding(key_proj, values, keep_mask(B, Tk, lengths, key_padding_mask, key_proj.device))


# ------------------------------------------------------------------------------------------ public


def additive_attention(query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
                       key_padding_mask: Optional[Tensor] = None, lengths: Union[Tensor, Sequence[int], None] = None,
                       return_weights: bool = False,
                       padding_zeroed: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Additive attention of every query over the keys -> context (B, Tq, Dv) [, weights (B, Tq, Tk)].

    query_proj (B, Tq, H) = W_q query + b; key_proj (B, Tk, H) = W_k key; v (H,); values (B, Tk, Dv).
    Keys are padded where key_padding_mask (B, Tk, bool) is True, or at j >= lengths[b] (an integer
    tensor (B,) on any device, each in [0, Tk]); both may be given. A row with no key left gets a
    zero context and zero weights. The fused backends never build the (B, Tq, Tk, H) tensor; the
    weights, when asked for, come from the reference (differentiable, O(B·Tq·Tk) memory).
    padding_zeroed=True: the caller has zeroed the padded keys' rows of key_proj and values
    (`zero_padded_keys`), which the op otherwise does on every call where it is not fused.
    """
    op = "additive_attention"
    C.check_ndim(op, "query_proj", query_proj, 3, "(B, Tq, H)")
    args, lengths, mask = _prepare(op, query_proj, key_proj, v, values, key_padding_mask, lengths, "(B, Tq, H)")
    context = _context(args, lengths, mask, padding_zeroed)
    if not return_weights:
        return context
    return context, attention_weights(query_proj, key_proj, v, lengths, key_padding_mask)


def additive_attention_step(query_proj: Tensor, key_proj: Tensor, v: Tensor, values: Tensor,
                            key_padding_mask: Optional[Tensor] = None,
                            lengths: Union[Tensor, Sequence[int], None] = None, padding_zeroed: bool = False) -> Tensor:
    """One decoder step: query_proj (B, H) against cached key_proj (B, Tk, H) -> context (B, Dv).

    One kernel launch, no workspace, when no gradient is needed; otherwise the differentiable
    `additive_attention` with Tq = 1. Padding and padding_zeroed as in `additive_attention`.
    """
    op = "additive_attention_step"
    C.check_ndim(op, "query_proj", query_proj, 2, "(B, H)")
    args, lengths, mask = _prepare(op, query_proj, key_proj, v, values, key_padding_mask, lengths, "(B, H)")
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return _context((args[0][:, None], *args[1:]), lengths, mask, padding_zeroed)[:, 0]
    backend = chosen("additive_attention", args[0].device.type, ("additive_attention_decode",))
    # eager: the backend itself, not the custom op, whose dispatch costs as much as a decoder's step here
    return FAMILY.call("additive_attention_decode", backend, *args, lengths, mask, padding_zeroed, eager=True)
