"""The attention ops (fastseq.ops.attention, attention_decode, attention_weights) against torch's
scaled_dot_product_attention in float64 (an independent oracle), forward and gradients: self and cross,
causal with Tq != Tk, padded keys, grouped heads, odd lengths (1, 17, 1000); every backend present
against the float64 reference in each dtype; rows that see no key; dropout; decoding against a cache
view; gradcheck; opcheck; torch.compile; bad input; at real sizes on a GPU (`cuda`)."""
import pytest
import torch
import torch.nn.functional as F

from fastseq import backends, ops
from fastseq.ops import registry

from _util import DTYPES, TOL, backend_params, interpreted_wide, rel_err

# (B, Hq, Hkv, Tq, Tk, D, Dv, causal, padding)
CASES = [
    (1, 1, 1, 1, 1, 8, 8, False, None),
    (2, 4, 4, 17, 17, 16, 16, True, None),
    (2, 4, 2, 5, 17, 32, 32, True, "lengths"),       # causal cross / decoding shape, grouped heads
    (3, 6, 1, 17, 9, 8, 12, False, "mask"),           # multi-query, Dv != D
    (2, 2, 2, 33, 40, 64, 64, True, "both"),
    (2, 4, 2, 17, 1000, 32, 32, True, "lengths"),    # a long cross-attention, causal with Tq != Tk
    (2, 3, 3, 5, 9, 8, 8, True, "nothing"),           # a mask and lengths that pad no key
    (3, 2, 1, 7, 7, 16, 16, False, "nothing"),
]


def _skip_interpreted_bf16(device, backend, dtype):
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes tl.dot wrongly on bf16 inputs; the cuda run covers bf16")


def _padding(kind, B, Tk):
    mask = lengths = None
    if kind in ("mask", "both"):
        mask = torch.rand(B, Tk) < 0.3
        mask[:, -1] = False
    if kind in ("lengths", "both"):
        lengths = torch.randint(1, Tk + 1, (B,))
        lengths[0] = Tk
    if kind == "nothing":
        mask, lengths = torch.zeros(B, Tk, dtype=torch.bool), torch.full((B,), Tk)
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
    _skip_interpreted_bf16(device, backend, dtype)
    B, Hq, Hkv, Tq, Tk, D, Dv, causal, kind = case
    interpreted_wide(device, backend, dtype, wide=Tk >= 1000)
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
        # dS = P (dP − D) cancels (exactly, for a query with one key): dq and dk are judged against the
        # size of the Dv products each of dP and D sums
        terms = Dv if name in ("grad_q", "grad_k") else 1
        err = rel_err(a, e, terms)
        assert err < TOL[dtype], f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("device,backend", backend_params("attention", needs=("attention",)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-Hq{}-Hkv{}-Tq{}-Tk{}-D{}-Dv{}-causal{}-{}".format(*c))
def test_inference_matches_float64_reference(device, backend, dtype, case):
    """Every backend that serves a forward without a gradient (the torch backend among them), with a row
    that sees no key (zeros, where SDPA alone gives NaN) and NaN in the padded keys' values."""
    _skip_interpreted_bf16(device, backend, dtype)
    B, Hq, Hkv, Tq, Tk, D, Dv, causal, kind = case
    mask, lengths = _padding(kind, B, Tk)
    if mask is not None:
        mask[-1] = True
        mask = mask.to(device)
    q, k, v = (t.to(dtype).double().to(device) for t in _inputs(B, Hq, Hkv, Tq, Tk, D, Dv))
    if lengths is not None and int(lengths.min()) < Tk:
        b = int(lengths.argmin())
        v[b, :, int(lengths[b]):] = float("nan")
    kwargs = dict(causal=causal, key_padding_mask=mask, lengths=lengths)
    with backends.use("reference"):
        expected = ops.attention(q, k, v, **kwargs)
    with torch.no_grad(), backends.use(backend):
        out = ops.attention(q.to(dtype), k.to(dtype), v.to(dtype), **kwargs)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out, expected) < TOL[dtype], f"relative error {rel_err(out, expected):.2e}"
    if mask is not None:
        assert torch.equal(out[-1], torch.zeros_like(out[-1]))


def test_torch_backend_trains_through_autograd_on_a_cpu_only():
    """SDPA's gradient is torch's autograd's, called outside the custom op (which it has no backward for)
    on a CPU; on CUDA its training awaits a GPU check, so it is passed over there."""
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 2, 3, 3, 4, 4))
    with backends.use("torch"):
        out = ops.attention(q, k, v)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
        assert "fastseq" not in type(out.grad_fn).__name__.lower()  # torch's own graph
    assert registry.chosen("attention", "cpu", ("attention", "attention_backward"), autograd=True) == "torch"
    assert not registry.declared()["attention"].provides("torch", ("attention", "attention_backward"), "cuda")
    with backends.use("torch"), pytest.raises(backends.BackendUnavailableError, match="torch"):
        torch.ops.fastseq.attention(q, k, v, None, None, None, False, 0.5, 0.0, 0, "")[0].sum().backward()


@pytest.mark.parametrize("device,backend", backend_params("attention"))
def test_queries_that_see_no_key_get_zeros_and_no_gradient(device, backend):
    q, k, v = (t.to(device).requires_grad_() for t in _inputs(2, 2, 2, 3, 4, 8, 8))
    mask = torch.tensor([[True] * 4, [False, True, False, False]], device=device)
    with backends.use(backend):
        out = ops.attention(q, k, v, key_padding_mask=mask)
        out.sum().backward()
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        assert torch.equal(q.grad[0], torch.zeros_like(q.grad[0]))
        assert torch.isfinite(out).all() and q.grad[1].abs().sum() > 0
        # causal with more queries than keys: the first Tq - Tk queries see nothing
        out = ops.attention(*(t.to(device) for t in _inputs(1, 1, 1, 5, 3, 4, 4)), causal=True)
        assert torch.equal(out[0, 0, :2], torch.zeros(2, 4, dtype=torch.float64, device=device))
        # lengths of zero: the whole row is padding
        out = ops.attention(*(t.to(device) for t in _inputs(2, 1, 1, 3, 5, 4, 4)), lengths=[0, 5])
        assert torch.equal(out[0], torch.zeros_like(out[0])) and out[1].abs().sum() > 0


@pytest.mark.parametrize("device,backend", backend_params("attention"))
def test_dropout_is_reproducible_and_differentiable(device, backend):
    q, k, v = (t.to(device) for t in _inputs(2, 2, 2, 6, 7, 8, 8))
    with backends.use(backend):
        torch.manual_seed(3)
        a = ops.attention(q, k, v, dropout_p=0.3)
        torch.manual_seed(3)
        b = ops.attention(q, k, v, dropout_p=0.3)
        assert torch.equal(a, b)
        assert not torch.allclose(a, ops.attention(q, k, v))
        # the op's backward redraws the forward's mask: its gradients are those of its own function
        args = [t[:1, :1, :3, :4].clone().requires_grad_() for t in (q, k, v)]
        assert torch.autograd.gradcheck(lambda *x: _seeded(x), args)


def _seeded(x):
    torch.manual_seed(11)  # the same seed each call, so gradcheck's perturbations see one mask
    return ops.attention(*x, dropout_p=0.4, causal=True)


@pytest.mark.parametrize("device,backend", backend_params("attention"))
def test_dropout_keeps_the_expected_share_unbiased(device, backend):
    """The kept share is 1 − p and the output is unbiased: E[out] over the mask equals the output without
    dropout (values of ones: every output element is the kept share of its row, rescaled)."""
    B, H, T = 2, 2, 64
    q, k = (torch.randn(B, H, T, 16, device=device) for _ in range(2))
    ones = torch.ones(B, H, T, 16, device=device)
    with backends.use(backend):
        out = ops.attention(torch.zeros_like(q), k, ones, dropout_p=0.25)  # uniform P = 1/T
    kept = out[..., 0] * (1 - 0.25)  # the kept share of each row
    assert abs(kept.mean().item() - 0.75) < 0.02
    assert abs(out.mean().item() - 1.0) < 0.03


@pytest.mark.parametrize("device,backend", backend_params("attention"))
def test_long_self_attention_1000(device, backend):
    """Tq = Tk = 1000, causal and padded, float32, against torch's SDPA in float64."""
    B, H, T, D = 1, 2, 1000, 16
    q, k, v = _inputs(B, H, H, T, T, D, D)
    lengths = torch.tensor([937])
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(B, T, T, True, None, lengths))
    with backends.use(backend):
        out = ops.attention(*(t.float().to(device) for t in (q, k, v)), causal=True, lengths=lengths)
    assert rel_err(out, expected) < TOL[torch.float32]


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
        torch.library.opcheck(torch.ops.fastseq.attention.default, (*args, *pad, None, True, 0.35, 0.0, 0))


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
    (dict(scale=-1.0), r"scale must be a positive finite number"),
    (dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), r"key_padding_mask must have shape \(B, Tk\)"),
    (dict(lengths=[5, 6]), r"lengths must lie in \[0, Tk=5\]"),
])
def test_bad_input_names_the_argument(changes, message):
    args = dict(zip("qkv", _inputs(2, 4, 2, 3, 5, 8, 8)))
    args.update(changes)
    with pytest.raises((ValueError, TypeError), match=message):
        ops.attention(**args)


# ------------------------------------------------------------------------------------------ decode

DECODE_CASES = [  # (B, Hq, Hkv, D, Dv, capacity, Tk, padding)
    (1, 1, 1, 8, 8, 1, 1, None),
    (3, 6, 2, 32, 24, 200, 150, "both"),
    (2, 8, 1, 64, 64, 1100, 1000, "lengths"),
    (4, 4, 4, 16, 16, 17, 17, "mask"),
]


@pytest.mark.parametrize("device,backend", backend_params("attention_decode"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: "B{}-Hq{}-Hkv{}-D{}-Dv{}-cap{}-Tk{}-{}".format(*c))
def test_decode_matches_float64_reference(device, backend, dtype, case):
    """One query per row against a view of the first Tk positions of a longer cache, as KVCache hands it."""
    _skip_interpreted_bf16(device, backend, dtype)
    if backend == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA decode kernel serves float32, float16 and bfloat16")
    B, Hq, Hkv, D, Dv, capacity, Tk, kind = case
    k_cache = torch.randn(B, Hkv, capacity, D, dtype=torch.float64, device=device).to(dtype)
    v_cache = torch.randn(B, Hkv, capacity, Dv, dtype=torch.float64, device=device).to(dtype)
    q = torch.randn(B, Hq, D, dtype=torch.float64, device=device).to(dtype)
    mask, lengths = _padding(kind, B, Tk)
    if mask is not None:
        mask = mask.to(device)
        mask[-1] = True  # a row that sees no key gets zeros
    k, v = k_cache[:, :, :Tk], v_cache[:, :, :Tk]
    with backends.use("reference"):
        expected = ops.attention_decode(q.double(), k.double(), v.double(), lengths=lengths, key_padding_mask=mask)
    with backends.use(backend):
        out = ops.attention_decode(q, k, v, lengths=lengths, key_padding_mask=mask)
    assert out.dtype == dtype and out.shape == (B, Hq, Dv)
    assert rel_err(out, expected) < TOL[dtype]
    if mask is not None:
        assert torch.equal(out[-1], torch.zeros_like(out[-1]))


def test_decode_equals_the_last_row_of_attention():
    q, k, v = _inputs(2, 4, 2, 6, 9, 8, 8)
    lengths = torch.tensor([9, 4])
    full = ops.attention(q, k, v, lengths=lengths)
    torch.testing.assert_close(ops.attention_decode(q[:, :, -1], k, v, lengths=lengths), full[:, :, -1])


def test_decode_with_gradients_goes_through_the_differentiable_op():
    q, k, v = (t.requires_grad_() for t in _inputs(2, 4, 2, 1, 7, 8, 8))
    args = (q[:, :, 0], k, v)
    assert torch.autograd.gradcheck(lambda q, k, v: ops.attention_decode(q, k, v, lengths=[7, 3]),
                                    tuple(a.detach().clone().requires_grad_() for a in args))


def test_decode_opcheck():
    q = torch.randn(2, 4, 8)
    k, v = torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    torch.library.opcheck(torch.ops.fastseq.attention_decode.default,
                          (q, k, v, torch.tensor([7, 2], dtype=torch.int32), None, 0.3))


def test_decode_torch_compile_smoke():
    q = torch.randn(2, 4, 8)
    k, v = torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    lengths = torch.tensor([7, 3])

    def f(q, k, v):
        return ops.attention_decode(q * 2, k, v, lengths=lengths).sum(-1)

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v))


@pytest.mark.parametrize("changes,message", [
    (dict(q=torch.randn(2, 4, 1, 8, dtype=torch.float64)), r"q must be 3-D"),
    (dict(k=torch.randn(2, 3, 7, 8, dtype=torch.float64), v=torch.randn(2, 3, 7, 8, dtype=torch.float64)),
     r"Hkv = 3 must divide the query heads Hq = 4"),
    (dict(lengths=[8, 1]), r"lengths must lie in \[0, Tk=7\]"),
    (dict(scale=0), r"scale must be a positive finite number"),
])
def test_decode_bad_input_names_the_argument(changes, message):
    args = dict(q=torch.randn(2, 4, 8, dtype=torch.float64), k=torch.randn(2, 2, 7, 8, dtype=torch.float64),
                v=torch.randn(2, 2, 7, 8, dtype=torch.float64))
    args.update(changes)
    with pytest.raises((ValueError, TypeError), match=message):
        ops.attention_decode(**args)


def test_weights_match_torch_sdpa_probabilities():
    B, Hq, Hkv, Tq, Tk, D = 2, 4, 2, 5, 9, 8
    q, k, _ = _inputs(B, Hq, Hkv, Tq, Tk, D, D)
    mask, lengths = _padding("both", B, Tk)
    seen = _sdpa_mask(B, Tq, Tk, True, mask, lengths)
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / D**0.5
    expected = torch.softmax(s.masked_fill(~seen, float("-inf")), -1).nan_to_num(0.0)
    weights = ops.attention_weights(q, k, causal=True, key_padding_mask=mask, lengths=lengths)
    torch.testing.assert_close(weights, expected)


# ------------------------------------------------------------------------------------------ real sizes


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_real_size_matches_torch_sdpa(backend, causal, dtype):
    """B2 H16 T2048 D128 (and Hkv 4), forward and gradients, against torch's SDPA on float32 inputs."""
    B, Hq, Hkv, T, D = 2, 16, 4, 2048, 128
    inputs = [t.cuda().to(dtype) for t in (torch.randn(B, Hq, T, D), torch.randn(B, Hkv, T, D),
                                           torch.randn(B, Hkv, T, D))]
    grad_out = torch.randn(B, Hq, T, D, device="cuda").to(dtype)
    args = [t.float().requires_grad_() for t in inputs]
    out = F.scaled_dot_product_attention(args[0], args[1].repeat_interleave(4, 1), args[2].repeat_interleave(4, 1),
                                         is_causal=causal)
    expected = [out, *torch.autograd.grad((out * grad_out.float()).sum(), args)]
    args = [t.clone().requires_grad_() for t in inputs]
    with backends.use(backend):
        out = ops.attention(*args, causal=causal)
        actual = [out, *torch.autograd.grad((out * grad_out).sum(), args)]
    for name, a, e in zip(("out", "grad_q", "grad_k", "grad_v"), actual, expected):
        assert rel_err(a, e) < TOL[dtype], f"{name}: {rel_err(a, e):.2e}"


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_real_size_decode_matches_torch_sdpa(backend, dtype):
    """Batch 64, 32 heads (and 8 key/value heads), a cache of 2,048 with ragged lengths."""
    B, Hq, Hkv, T, D = 64, 32, 8, 2048, 128
    k, v = (torch.randn(B, Hkv, T, D, device="cuda").to(dtype) for _ in range(2))
    q = torch.randn(B, Hq, D, device="cuda").to(dtype)
    lengths = torch.randint(1, T + 1, (B,), device="cuda")
    seen = (torch.arange(T, device="cuda")[None, :] < lengths[:, None])[:, None, None, :]
    expected = F.scaled_dot_product_attention(q.float()[:, :, None], k.float().repeat_interleave(4, 1),
                                              v.float().repeat_interleave(4, 1), attn_mask=seen)[:, :, 0]
    with backends.use(backend):
        out = ops.attention_decode(q, k, v, lengths=lengths)
    assert rel_err(out, expected) < TOL[dtype]


@pytest.mark.cuda
def test_real_size_padded_batch_memory_is_linear():
    """T = 16,384 in bf16: the fused op's extra memory stays within a few times its inputs (no T×T)."""
    B, H, T, D = 1, 8, 16384, 128
    args = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with backends.use("triton"):
        ops.attention(*args, causal=True, lengths=torch.tensor([12000], device="cuda")).sum().backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 8 * 3 * args[0].numel() * 2


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("dtype,head_dim,dropout,bias", [(torch.bfloat16, 128, False, 0), (torch.float16, 64, True, 0),
                                                         (torch.float32, 256, False, 0), (torch.bfloat16, 200, True, 0),
                                                         (torch.bfloat16, 128, False, 2),
                                                         (torch.float16, 64, False, 1)])
def test_autotune_pruning_keeps_the_tiles_meant_for_the_inputs(monkeypatch, arch, dtype, head_dim, dropout, bias):
    """Triton's own pruning call keeps exactly `configs_for`'s tiles, and recognizes configurations Triton
    rebuilt from their values (its autotune cache does), whatever attributes it keeps on a Config."""
    triton = pytest.importorskip("triton")
    from fastseq.ops.attention import triton_backward, triton_configs, triton_forward

    fns = {"fwd": triton_forward.fwd_kernel, "dkdv": triton_backward.dkdv_kernel, "dq": triton_backward.dq_kernel}
    monkeypatch.setattr(triton_configs, "arch", lambda device: arch)
    q = torch.empty(1, 1, 1, head_dim, dtype=dtype)
    for kernel in ("fwd", "dkdv", "dq"):
        for key_mask in (False, True):
            wanted = sorted(triton_configs.configs_for(kernel, arch, q.element_size(), head_dim, dropout, bool(bias),
                                                       key_mask))
            tuner = triton_configs.tuned(kernel, fns[kernel])
            tuner.nargs = {"q_ptr": q, "D": head_dim, "Dv": head_dim}
            flags = {"DROPOUT": dropout, "BIAS": bias, "HAS_MASK": key_mask}
            assert sorted(triton_configs.tile_of(c) for c in tuner.prune_configs(flags)) == wanted
            rebuilt = [triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages)
                       for c in tuner.configs]
            kept = tuner.early_config_prune(rebuilt, tuner.nargs, **flags)
            assert sorted(triton_configs.tile_of(c) for c in kept) == wanted, kernel
            tuner.nargs = None
