"""The attention op (fastseq.ops.attention) against torch's scaled_dot_product_attention in float64 (an
independent oracle), forward and gradients: self and cross, causal with Tq != Tk, padded keys, grouped
heads, odd lengths; every backend present against the float64 reference in each dtype; rows that see
no key; dropout; gradcheck; opcheck; torch.compile; bad input."""
import pytest
import torch
import torch.nn.functional as F
from _util import DTYPES, TOL, backend_params, rel_err

from fastseq import backends, ops

# (B, Hq, Hkv, Tq, Tk, D, Dv, causal, padding)
CASES = [
    (1, 1, 1, 1, 1, 8, 8, False, None),
    (2, 4, 4, 17, 17, 16, 16, True, None),
    (2, 4, 2, 5, 17, 32, 32, True, "lengths"),       # causal cross / decoding shape, grouped heads
    (3, 6, 1, 17, 9, 8, 12, False, "mask"),           # multi-query, Dv != D
    (2, 2, 2, 33, 40, 64, 64, True, "both"),
]


def _padding(kind, B, Tk):
    mask = lengths = None
    if kind in ("mask", "both"):
        mask = torch.rand(B, Tk) < 0.3
        mask[:, -1] = False
    if kind in ("lengths", "both"):
        lengths = torch.randint(1, Tk + 1, (B,))
        lengths[0] = Tk
    return mask, lengths


def _sdpa_mask(B, Tq, Tk, causal, mask, lengths):
    """The same visibility as a boolean attn_mask for torch's SDPA (True = may attend)."""
    seen = torch.ones(B, 1, Tq, Tk, dtype=torch.bool)
    if causal:
        seen &= torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
    if mask is not None:
        seen &= ~mask[:, None, None, :]
    if lengths is not None:
        seen &= (torch.arange(Tk)[None, :] < lengths[:, None])[:, None, None, :]
    return seen


def _inputs(B, Hq, Hkv, Tq, Tk, D, Dv):
    return [torch.randn(B, Hq, Tq, D, dtype=torch.float64), torch.randn(B, Hkv, Tk, D, dtype=torch.float64),
            torch.randn(B, Hkv, Tk, Dv, dtype=torch.float64)]


def _run(inputs, dtype, grad_out, **kwargs):
    args = [t.to(dtype).requires_grad_() for t in inputs]
    out = ops.attention(*args, **kwargs)
    return [out, *torch.autograd.grad((out * grad_out.to(dtype)).sum(), args)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-Hq{}-Hkv{}-Tq{}-Tk{}-D{}-Dv{}-causal{}-{}".format(*c))
def test_matches_torch_sdpa_float64(case):
    B, Hq, Hkv, Tq, Tk, D, Dv, causal, kind = case
    mask, lengths = _padding(kind, B, Tk)
    inputs = _inputs(B, Hq, Hkv, Tq, Tk, D, Dv)
    grad_out = torch.randn(B, Hq, Tq, Dv, dtype=torch.float64)
    actual = _run(inputs, torch.float64, grad_out, causal=causal, key_padding_mask=mask, lengths=lengths)
    args = [t.clone().requires_grad_() for t in inputs]
    groups = Hq // Hkv
    out = F.scaled_dot_product_attention(args[0], args[1].repeat_interleave(groups, 1),
                                         args[2].repeat_interleave(groups, 1),
                                         attn_mask=_sdpa_mask(B, Tq, Tk, causal, mask, lengths))
    expected = [out, *torch.autograd.grad((out * grad_out).sum(), args)]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device,backend", backend_params("attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-Hq{}-Hkv{}-Tq{}-Tk{}-D{}-Dv{}-causal{}-{}".format(*c))
def test_matches_float64_reference(device, backend, dtype, case):
    B, Hq, Hkv, Tq, Tk, D, Dv, causal, kind = case
    mask, lengths = _padding(kind, B, Tk)
    mask = None if mask is None else mask.to(device)
    inputs = [t.to(dtype).double().to(device) for t in _inputs(B, Hq, Hkv, Tq, Tk, D, Dv)]
    grad_out = torch.randn(B, Hq, Tq, Dv, dtype=torch.float64, device=device).to(dtype).double()
    kwargs = dict(causal=causal, key_padding_mask=mask, lengths=lengths)
    with backends.use("reference"):
        expected = _run(inputs, torch.float64, grad_out, **kwargs)
    with backends.use(backend):
        actual = _run(inputs, dtype, grad_out, **kwargs)
    for name, a, e in zip(("out", "grad_q", "grad_k", "grad_v"), actual, expected):
        assert a.dtype == dtype
        assert rel_err(a, e) < TOL[dtype], f"{name}: relative error {rel_err(a, e):.2e}"


def test_queries_that_see_no_key_get_zeros_and_no_gradient():
    q, k, v = (t.requires_grad_() for t in _inputs(2, 2, 2, 3, 4, 8, 8))
    mask = torch.tensor([[True] * 4, [False, True, False, False]])
    out = ops.attention(q, k, v, key_padding_mask=mask)
    out.sum().backward()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(q.grad[0], torch.zeros_like(q.grad[0]))
    assert torch.isfinite(out).all() and q.grad[1].abs().sum() > 0
    # causal with more queries than keys: the first Tq - Tk queries see nothing
    out = ops.attention(*_inputs(1, 1, 1, 5, 3, 4, 4), causal=True)
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 4, dtype=torch.float64))


def test_dropout_is_reproducible_and_differentiable():
    q, k, v = _inputs(2, 2, 2, 6, 7, 8, 8)
    torch.manual_seed(3)
    a = ops.attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(3)
    b = ops.attention(q, k, v, dropout_p=0.3)
    assert torch.equal(a, b)
    assert not torch.allclose(a, ops.attention(q, k, v))
    # the op's backward redraws the forward's mask: its gradients are those of its own function
    args = [t[:1, :1, :3, :4].clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(5)
    assert torch.autograd.gradcheck(lambda *x: _seeded(x), args)


def _seeded(x):
    torch.manual_seed(11)  # the same seed each call, so gradcheck's perturbations see one mask
    return ops.attention(*x, dropout_p=0.4)


def test_scale_argument():
    q, k, v = _inputs(1, 2, 2, 4, 5, 8, 8)
    torch.testing.assert_close(ops.attention(q, k, v, scale=0.1),
                               F.scaled_dot_product_attention(q, k, v, scale=0.1))


def test_gradcheck_grouped_causal():
    args = [t.requires_grad_() for t in _inputs(1, 4, 2, 3, 5, 4, 3)]
    assert torch.autograd.gradcheck(lambda *a: ops.attention(*a, causal=True, lengths=[4]), args)


def test_opcheck():
    q, k, v = (t.float() for t in _inputs(2, 4, 2, 5, 7, 8, 8))
    lengths = torch.tensor([7, 3], dtype=torch.int32)
    mask = torch.rand(2, 7) < 0.2
    for pad in ((None, None), (lengths, mask)):
        args = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.library.opcheck(torch.ops.fastseq.attention.default, (*args, *pad, True, 0.35, 0.0, 0))


def test_torch_compile_smoke():
    q, k, v = _inputs(2, 2, 2, 5, 5, 8, 8)

    def f(q, k, v):
        return ops.attention(q * 2, k, v, causal=True).sum(-1)

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v))


@pytest.mark.parametrize("changes,message", [
    (dict(q=torch.randn(2, 3, 4)), r"q must be 4-D"),
    (dict(k=torch.randn(2, 2, 5, 6, dtype=torch.float64)), r"k must have shape \(B, Hkv, Tk, D\)"),
    (dict(v=torch.randn(2, 2, 4, 8, dtype=torch.float64)), r"v must have shape \(B, Hkv, Tk, Dv\)"),
    (dict(k=torch.randn(2, 3, 5, 8, dtype=torch.float64), v=torch.randn(2, 3, 5, 8, dtype=torch.float64)),
     r"Hkv = 3 must divide the query heads Hq = 4"),
    (dict(v=torch.randn(2, 2, 5, 8)), r"v must have the dtype of q"),
    (dict(dropout_p=1.0), r"dropout_p must be a number in \[0, 1\)"),
    (dict(scale=-1.0), r"scale must be a positive number"),
    (dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), r"key_padding_mask must have shape \(B, Tk\)"),
    (dict(lengths=[5, 6]), r"lengths must lie in \[0, Tk=5\]"),
])
def test_bad_input_names_the_argument(changes, message):
    args = dict(zip("qkv", _inputs(2, 4, 2, 3, 5, 8, 8)))
    args.update(changes)
    with pytest.raises((ValueError, TypeError), match=message):
        ops.attention(**args)
