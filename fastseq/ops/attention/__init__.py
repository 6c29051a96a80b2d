"""The multi-head scaled dot-product attention ops: `attention` (self or cross, causal, padded, any bool or
additive mask, grouped heads, dropout), forward and backward, and `attention_decode` (one new query per
sequence against a KV cache, as a decoder calls it once per generated token). Torch custom ops with fake
implementations (and an autograd formula for `attention`), served by the backend `fastseq.backends`
chooses: "triton", "torch" (SDPA; with a gradient where torch's autograd differentiates it, a CPU) or
"reference" for `attention`; "cuda" (fastseq._C), "triton", "torch" or "reference" for
`attention_decode`. A float `attn_mask` that needs its gradient is served by "torch" and "reference" (the
family's `features`).

The math, the masking rules and the workspace (the log-sum-exp) are in reference.py beside this file;
the Triton kernels in triton_forward.py, triton_backward.py and triton_decode.py; torch's SDPA in torch_backend.py.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ...numerics import acc_dtype, autocast
from .. import checks as C
from .. import evidence, tuning
from ..registry import EXTENSION, Family, chosen, declare
from .reference import attention_weights as reference_weights

# The attention benchmark's cases (fastseq/bench/attention.py) against torch's SDPA backends:
# "train" (B, H, T, D) self-attention, causal and not; "seq2seq" (B, E, heads, max_len) padded batches
# through MultiheadAttention.
CASES = {
    "quick": {"train": [(1, 2, 64, 32)], "seq2seq": [(4, 64, 4, 32)]},
    "cpu": {"train": [(2, 4, 256, 64)], "seq2seq": [(16, 256, 4, 128)]},
    "gpu": {"train": [(16, 16, 1024, 128), (8, 16, 2048, 128), (4, 16, 4096, 128), (2, 16, 8192, 128)],
            "seq2seq": [(64, 512, 8, 128)]},
    "headline": {"train": [(4, 16, 4096, 128)], "seq2seq": []},
}
# Decoding (B, Hq, Hkv, T, D): one query per row against a cache of T positions.
DECODE_CASES = {"quick": [(2, 4, 2, 64, 32)], "cpu": [(8, 8, 2, 512, 64)],
                "gpu": [(64, 32, 8, 2048, 128), (1, 32, 8, 16384, 128)],
                "headline": [(64, 32, 8, 2048, 128), (1, 32, 8, 16384, 128)]}

_ARGS = "Tensor q, Tensor k, Tensor v, Tensor? lengths, Tensor? key_padding_mask"
_MASK = "Tensor? attn_mask"
_FLAGS = "bool causal, float scale, float dropout_p, int seed"
_TRITON = "fastseq.ops.attention.triton_"
FAMILY = Family(
    name="attention",
    functions={"attention": f"({_ARGS}, {_MASK}, {_FLAGS}) -> (Tensor, Tensor)",
               "attention_backward": f"(Tensor grad_out, {_ARGS}, {_MASK}, {_FLAGS}, Tensor out, Tensor lse) "
                                     "-> (Tensor, Tensor, Tensor)"},
    backends={"reference": "fastseq.ops.attention.reference",
              "triton": (_TRITON + "forward", _TRITON + "backward"), "torch": "fastseq.ops.attention.torch_backend"},
    kernels=(_TRITON + "forward", _TRITON + "backward"),
    cases=CASES,
    autograd=evidence.autograd("attention"),  # SDPA under torch's autograd: a CPU, and where a GPU window passed
    # a general attn_mask: every attention backend takes one; its gradient (a float mask that requires grad)
    # comes from torch's autograd, through SDPA or through the reference's forward
    features={"attn_mask": ("reference", "torch", "triton"), "attn_mask_grad": ("reference", "torch")},
)
DECODE_FAMILY = Family(
    name="attention_decode",
    functions={"attention_decode": f"({_ARGS}, float scale) -> Tensor"},
    backends={"reference": "fastseq.ops.attention.reference", "triton": _TRITON + "decode", "cuda": EXTENSION,
              "torch": "fastseq.ops.attention.torch_backend"},
    kernels=(_TRITON + "decode",),
    cases=DECODE_CASES,
    # the Triton kernel decoded fastest of fastseq's on an H200 (benchmarks/results/h200/gpu-quick-*.json)
    order={"cuda": ("triton", "cuda", "torch", "reference")},
)
_OPS = {**declare(FAMILY), **declare(DECODE_FAMILY)}


@_OPS["attention"].register_fake
def _(q, k, v, lengths, key_padding_mask, attn_mask, causal, scale, dropout_p, seed, backend=""):
    B, Hq, Tq, _ = q.shape
    return q.new_empty(B, Hq, Tq, v.shape[3]), q.new_empty(B, Hq, Tq, dtype=acc_dtype(q.dtype))


@_OPS["attention_backward"].register_fake
def _(grad_out, q, k, v, *_):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, lengths, key_padding_mask, attn_mask, *flags, backend = inputs
    ctx.flags, ctx.backend = flags, backend  # the forward's backend runs the backward
    ctx.save_for_backward(q, k, v, lengths, key_padding_mask, attn_mask, *output)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, lengths, key_padding_mask, attn_mask, out, lse = ctx.saved_tensors
    grads = _OPS["attention_backward"](grad_out.contiguous(), q, k, v, lengths, key_padding_mask, attn_mask,
                                       *ctx.flags, out, lse, ctx.backend)
    return (*grads, None, None, None, None, None, None, None, None)


_OPS["attention"].register_autograd(_backward, setup_context=_setup)


@_OPS["attention_decode"].register_fake
def _(q, k, v, lengths, key_padding_mask, scale, backend=""):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[3])


def _check_heads(op: str, q: Tensor, k: Tensor, v: Tensor, q_dims: str) -> None:
    C.check_float(op, "q", q)
    C.check_ndim(op, "q", q, len(q_dims.split(",")), q_dims)
    for name, t in (("k", k), ("v", v)):
        C.check_float(op, name, t)
        C.check_like(op, name, t, "q", q)
    C.check_ndim(op, "k", k, 4, "(B, Hkv, Tk, D)")
    C.check_ndim(op, "v", v, 4, "(B, Hkv, Tk, Dv)")
    B, Hq, D = q.shape[0], q.shape[1], q.shape[-1]
    Hkv, Tk = k.shape[1], k.shape[2]
    C.check_shape(op, "k", k, (B, Hkv, Tk, D), "(B, Hkv, Tk, D) with the batch and head dim of q")
    C.check_shape(op, "v", v, (B, Hkv, Tk, v.shape[3]), "(B, Hkv, Tk, Dv) with the B, Hkv, Tk of k")
    if D < 1 or v.shape[3] < 1:
        C.fail(op, f"the head dims must be >= 1, got D = {D}, Dv = {v.shape[3]}")
    if Hkv < 1 or Hq % Hkv:
        C.fail(op, f"the key/value heads Hkv = {Hkv} must divide the query heads Hq = {Hq}")
    if Tk < 1:
        C.fail(op, f"k must hold at least one position, got Tk = {Tk}")


def _check_scale(op: str, scale) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not 0 < scale < math.inf):
        C.fail(op, f"scale must be a positive finite number or None, got {scale!r}")


def _attn_mask(op: str, attn_mask: Optional[Tensor], B: int, Hq: int, Tq: int, Tk: int,
               device: torch.device) -> Optional[Tensor]:
    """A general mask as a 4-D view broadcastable to (B, Hq, Tq, Tk) (never a copy): bool, True where a
    query may not attend, or float, added to the scores. (Tq, Tk) gains two leading dims."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, Tensor):
        C.fail(op, f"attn_mask must be a tensor, got {type(attn_mask).__name__}", TypeError)
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        C.fail(op, f"attn_mask must be bool (True = may not attend) or float (added to the scores), got "
                   f"{attn_mask.dtype}", TypeError)
    if attn_mask.device != device:
        C.fail(op, f"attn_mask must be on the device of the queries ({device}), got {attn_mask.device}")
    full = (B, Hq, Tq, Tk)
    mask = attn_mask[None, None] if attn_mask.dim() == 2 else attn_mask
    if mask.dim() != 4 or any(n not in (1, m) for n, m in zip(mask.shape, full)):
        C.fail(op, f"attn_mask must be (Tq, Tk) = {(Tq, Tk)} or 4-D broadcastable to (B, Hq, Tq, Tk) = {full} "
                   f"(each dim its size or 1), got shape {tuple(attn_mask.shape)}")
    return mask


def cache_layout(t: Tensor) -> Tensor:
    """t itself when each (batch row, head) holds its positions as contiguous rows, whatever its batch and
    head strides (a view of the first positions of a longer cache, a batch expanded from one row, a single
    head's odd stride): the decode kernels read those strides. Else a copy in the standard layout."""
    T, D = t.shape[2], t.shape[3]
    if (D == 1 or t.stride(3) == 1) and (T == 1 or t.stride(2) == D):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, key_padding_mask: Optional[Tensor] = None,
              lengths: Union[Tensor, Sequence[int], None] = None, scale: Optional[float] = None,
              dropout_p: float = 0.0, attn_mask: Optional[Tensor] = None) -> Tensor:
    """Attention with torch.nn.MultiheadAttention's mask convention (a bool attn_mask is True where a query may
    NOT attend; causal aligned to the end of the keys): for SDPA's, use `fastseq.ops.scaled_dot_product_attention`.

    Scaled dot-product attention of q (B, Hq, Tq, D) over k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, Hq, Tq, Dv).

    Hkv must divide Hq (grouped-query and multi-query attention). causal: query i sees keys
    j <= i + Tk − Tq (aligned to the end of the keys, as in KV-cache decoding). Keys are padded where
    key_padding_mask (B, Tk, bool) is True or at j >= lengths[b]. attn_mask, (Tq, Tk) or 4-D broadcastable
    to (B, Hq, Tq, Tk): bool, True where a query may not attend, or float, added to the scaled scores (a
    bias; -inf hides a key; its gradient is computed when it requires grad); combined with all of the
    above. A query that sees no key gets zeros (torch's attention gives NaN). scale defaults to 1/√D.
    dropout_p drops attention probabilities (pass 0.0 at evaluation).
    """
    op = "attention"
    q, k, v = autocast(q, k, v)
    _check_heads(op, q, k, v, "(B, Hq, Tq, D)")
    B, Hq, Tq, D = q.shape
    Tk = k.shape[2]
    if Tq < 1:
        C.fail(op, f"q must hold at least one position, got Tq = {Tq}")
    if not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        C.fail(op, f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    _check_scale(op, scale)
    lengths = C.check_key_padding(op, key_padding_mask, lengths, B, Tk, q.device)
    attn_mask = _attn_mask(op, attn_mask, B, Hq, Tq, Tk, q.device)
    mask = None if key_padding_mask is None else key_padding_mask.contiguous()
    seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0
    mask_grad = attn_mask is not None and attn_mask.requires_grad and torch.is_grad_enabled()
    grad = mask_grad or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
    needs = ("attention", "attention_backward") if grad else ("attention",)
    if attn_mask is not None:
        needs += ("attn_mask", "attn_mask_grad") if mask_grad else ("attn_mask",)
    kind = "none" if attn_mask is None else "bool" if attn_mask.dtype == torch.bool else "float"
    call = functools.partial(tuning.Call.rerun, attention,
                             (q, k, v, causal, key_padding_mask, lengths, scale, dropout_p, attn_mask),
                             grad, (B, Hq, k.shape[1], Tq, Tk, D, v.shape[3]),
                             (bool(causal), lengths is not None or mask is not None, dropout_p > 0, kind))
    backend = chosen("attention", q.device.type, needs, autograd=True, call=call)
    args = (lengths, mask, attn_mask, bool(causal), float(D**-0.5 if scale is None else scale), float(dropout_p), seed)
    # a float mask's gradient: its backends (torch, reference) run under torch's autograd
    return FAMILY.call("attention", backend, q, k, v, *args, autograd=mask_grad, contiguous=(0, 1, 2))[0]


def attention_decode(q: Tensor, k: Tensor, v: Tensor, lengths: Union[Tensor, Sequence[int], None] = None,
                     key_padding_mask: Optional[Tensor] = None, scale: Optional[float] = None,
                     attn_mask: Optional[Tensor] = None) -> Tensor:
    """One new query per sequence, q (B, Hq, D), against cached keys k (B, Hkv, Tk, D) and values
    v (B, Hkv, Tk, Dv) -> (B, Hq, Dv): a decoder's attention at one generation step.

    Row b sees its keys j < lengths[b] that key_padding_mask does not pad (a query at the end of its
    sequence sees every earlier position, so no causal flag is needed). k and v may be views of the
    first Tk positions of a longer cache (`fastseq.nn.KVCache.keys()`); they are read in place. When a
    gradient is needed, or an attn_mask is given ((1, Tk) or 4-D broadcastable to (B, Hq, 1, Tk), as in
    `attention`), the call goes through the `attention` op with Tq = 1, whose backends serve both.
    """
    op = "attention_decode"
    _check_heads(op, q, k, v, "(B, Hq, D)")
    _check_scale(op, scale)
    lengths = C.check_key_padding(op, key_padding_mask, lengths, q.shape[0], k.shape[2], q.device)
    if attn_mask is not None or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        return attention(q[:, :, None], k, v, key_padding_mask=key_padding_mask, lengths=lengths, scale=scale,
                         attn_mask=attn_mask)[:, :, 0]
    mask = None if key_padding_mask is None else key_padding_mask.contiguous()
    return _decode(q.contiguous(), cache_layout(k), cache_layout(v), lengths, mask, scale)


def _decode(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], mask: Optional[Tensor],
            scale: Optional[float]) -> Tensor:
    """The checked decode call on the chosen backend (timed per shape bucket)."""
    B, Hq, D = q.shape
    call = functools.partial(tuning.Call.rerun, attention_decode, (q, k, v, lengths, mask, scale), False,
                             (B, Hq, k.shape[1], k.shape[2], D, v.shape[3]), (lengths is not None or mask is not None,))
    backend = chosen("attention_decode", q.device.type, ("attention_decode",), call=call)
    args = (q, k, v, lengths, mask, float(D ** -0.5 if scale is None else scale))
    # eager, no gradient: the backend itself (the custom op's dispatch costs as much as a token's step)
    return DECODE_FAMILY.call("attention_decode", backend, *args, eager=True)


def attention_decode_cached(q: Tensor, k: Tensor, v: Tensor, lengths: Optional[Tensor], scale: Optional[float] = None
                            ) -> Tensor:
    """`attention_decode` on a cache whose layout and lengths its owner guarantees (`fastseq.nn.KVCache.attend`:
    k, v views of its buffers, lengths int32 on their device within [0, Tk] or None): only q is checked, so a
    step costs a few microseconds of Python. No gradient, no mask."""
    op = "attention_decode"
    B, Hkv, Tk, D = k.shape
    if q.dim() != 3 or q.shape[0] != B or q.shape[2] != D or q.shape[1] % Hkv or q.dtype != k.dtype \
            or q.device != k.device:
        C.fail(op, f"q must be (B={B}, Hq (a multiple of Hkv={Hkv}), D={D}) {k.dtype} on {k.device}, got "
                   f"{tuple(q.shape)} {q.dtype} on {q.device}")
    if q.requires_grad and torch.is_grad_enabled():
        return attention_decode(q, k, v, lengths=lengths, scale=scale)
    if scale is not None:
        _check_scale(op, scale)
    return _decode(q if q.is_contiguous() else q.contiguous(), k, v, lengths, None, scale)


def attention_weights(q: Tensor, k: Tensor, causal: bool = False, key_padding_mask: Optional[Tensor] = None,
                      lengths: Union[Tensor, Sequence[int], None] = None, scale: Optional[float] = None,
                      attn_mask: Optional[Tensor] = None) -> Tensor:
    """The attention probabilities P (B, Hq, Tq, Tk) of `attention(q, k, v, ...)` before dropout,
    differentiable; zero rows for queries that see no key. They take O(B·Hq·Tq·Tk) memory: the fused
    op never builds them, so ask only when they are needed (the reference computes them)."""
    op = "attention_weights"
    _check_heads(op, q, k, k, "(B, Hq, Tq, D)")
    _check_scale(op, scale)
    lengths = C.check_key_padding(op, key_padding_mask, lengths, q.shape[0], k.shape[2], q.device)
    attn_mask = _attn_mask(op, attn_mask, q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.device)
    return reference_weights(q, k, bool(causal), lengths, key_padding_mask, scale, attn_mask)
