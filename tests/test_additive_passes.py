"""Additive attention as the fused backends run it (fastseq.ops.additive_attention.passes): the scores pass, softmax and
GEMMs, and the one-tanh gradient pass with its identities, against the float64 reference and autograd
through the naive form; the FMA-unit tanh emulated as the kernels compute it, against float64 over the whole
input range, with the large-|x| fallback."""
import pytest
import torch

from fastseq.ops.additive_attention import passes, reference

from _util import rel_err


def _inputs(B, Tq, Tk, H, Dv, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * sc).to(dtype)  # noqa: E731
    return r(B, Tq, H, sc=scale), r(B, Tk, H, sc=scale), r(H, sc=H ** -0.5), r(B, Tk, Dv)


CASES = [(2, 5, 7, 6, 3, None, None), (3, 1, 9, 16, 8, [9, 4, 1], None), (2, 4, 6, 5, 4, None, "mask"),
         (2, 3, 5, 8, 2, [5, 0], "mask")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}Tq{c[1]}Tk{c[2]}H{c[3]}")
def test_forward_and_backward_match_the_float64_reference(case):
    """float64 throughout (no FMA path): the decomposition and the gradient identities are exact."""
    B, Tq, Tk, H, Dv, lengths, mask = case
    q, k, v, values = _inputs(B, Tq, Tk, H, Dv)
    lengths = None if lengths is None else torch.tensor(lengths)
    mask = None if mask is None else torch.rand(B, Tk) < 0.3
    context, lse, s = passes.model_forward(q, k, v, values, lengths, mask)
    ref_c, ref_lse, _ = reference.additive_attention(q, k, v, values, lengths, mask)
    assert rel_err(context, ref_c) < 1e-12
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite) and rel_err(lse[finite], ref_lse[finite]) < 1e-12
    grad = torch.randn_like(context)
    got = passes.model_backward(grad, q, k, v, values, lengths, mask, context, lse, s)
    want = reference.additive_attention_backward(grad, q, k, v, values, lengths, mask, ref_c, ref_lse)
    for name, a, b in zip(("dq", "dk", "dv", "dvalues"), got, want):
        assert rel_err(a, b) < 1e-11, name


def test_gradients_match_autograd_through_the_naive_form():
    """An oracle that shares no code: autograd through (B, Tq, Tk, H) built at once."""
    q, k, v, values = (t.requires_grad_() for t in _inputs(2, 6, 5, 7, 4, seed=3))
    c, _ = reference.naive(q, k, v, values)
    grad = torch.randn_like(c)
    want = torch.autograd.grad(c, (q, k, v, values), grad)
    q, k, v, values = (t.detach() for t in (q, k, v, values))
    context, lse, s = passes.model_forward(q, k, v, values, None, None)
    got = passes.model_backward(grad, q, k, v, values, None, None, context, lse, s)
    for name, a, b in zip(("dq", "dk", "dv", "dvalues"), got, want):
        assert rel_err(a, b) < 1e-11, name


@pytest.mark.parametrize("steps,bound", [(3, 4e-7), (2, 5e-4)])
def test_fma_tanh_over_the_whole_range(steps, bound):
    """1 - 2/(1 + e^{2a} e^{2b}) with the Newton reciprocal, as the kernels take it, against float64 tanh over
    a, b in [-RANGE, RANGE] (and the tails of the sum): the absolute error stays within `bound`; 3 steps
    (float32 inputs) reach float32 rounding, 2 (16-bit inputs) stay under the tanh unit's own 2^-11."""
    a = torch.linspace(-passes.RANGE, passes.RANGE, 1201)
    b = torch.cat([torch.linspace(-passes.RANGE, passes.RANGE, 601), torch.randn(200) * 0.3])
    t = passes.fma_tanh(passes.exponentials(a)[:, None], passes.exponentials(b)[None, :], steps)
    exact = torch.tanh(a.double()[:, None] + b.double()[None, :])
    assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert (t.double() - exact).abs().max() < bound


def test_rows_past_the_range_take_the_tanh_unit():
    """A row with one |q| past RANGE: e^{2q} would overflow float32 in the product; fma_rows turns the row
    to the tanh unit, and the scores stay those of tanh itself."""
    q, k, v, _ = _inputs(3, 4, 5, 8, 2, dtype=torch.float32)
    q[1, 2, 3] = 40.0
    rows = passes.fma_rows(q, k)
    assert rows.tolist() == [True, False, True]
    s = passes.scores_model(q, k, v, None, h_fma=8)
    exact = passes.scores_model(q.double(), k.double(), v.double(), None)
    assert rel_err(s.double(), exact) < 1e-5


@pytest.mark.parametrize("h_fma", [0, 3, 8])
def test_the_fma_share_keeps_float32_accuracy(h_fma):
    """Scores and gradients with any share of the columns on the FMA path stay within float32 rounding."""
    q, k, v, values = _inputs(2, 5, 6, 8, 4, dtype=torch.float32, seed=5)
    context, lse, s = passes.model_forward(q, k, v, values, None, None, h_fma=h_fma)
    exact_c, exact_lse, exact_s = passes.model_forward(*(t.double() for t in (q, k, v, values)), None, None)
    assert rel_err(s.double(), exact_s) < 2e-6 and rel_err(context.double(), exact_c) < 2e-6
    grad = torch.randn_like(context)
    got = passes.model_backward(grad, q, k, v, values, None, None, context, lse, s, h_fma=h_fma)
    want = passes.model_backward(grad.double(), *(t.double() for t in (q, k, v, values)), None, None, exact_c,
                                 exact_lse, exact_s)
    for name, a, b in zip(("dq", "dk", "dv", "dvalues"), got, want):
        assert rel_err(a.double(), b) < 2e-5, name


# ------------------------------------------------------------------------------------------ the kernels

PASS_RUNS = [pytest.param("cpu", "triton", id="triton-interpreter"),
             pytest.param("cuda", "triton", id="cuda-triton", marks=pytest.mark.cuda),
             pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.cuda)]
# (B, Tq, Tk, H, lengths, mask): one and several query blocks and key splits, H off every block size
PASS_CASES = [(2, 5, 7, 40, [7, 3], None), (3, 70, 9, 33, None, "mask"), (1, 3, 150, 72, [90], "mask")]


def _pass_module(device, backend):
    from fastseq import backends

    ok, why = backends.availability(backend, device)
    if not ok:
        pytest.skip(f"{backend} on {device}: {why}")
    if backend == "triton":
        from fastseq.ops.additive_attention import triton as module
        return module, None
    from fastseq.ops.additive_attention import cuda as module
    return module, module.FMA_COLUMNS


def _pass_inputs(case, dtype, device, seed):
    B, Tq, Tk, H, lengths, mask = case
    q, k, v, _ = _inputs(B, Tq, Tk, H, 1, dtype=dtype, seed=seed)
    q, k, v = (t.to(device) for t in (q, k, v))
    lengths = None if lengths is None else torch.tensor(lengths, dtype=torch.int32, device=device)
    g = torch.Generator().manual_seed(seed + 1)
    mask = None if mask is None else (torch.rand(B, Tk, generator=g) < 0.3).to(device)
    return q, k, v, lengths, mask


@pytest.mark.parametrize("device,backend", PASS_RUNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("fma_blocks", [0, 1])
@pytest.mark.parametrize("case", PASS_CASES, ids=lambda c: f"B{c[0]}Tq{c[1]}Tk{c[2]}H{c[3]}")
def test_pass_kernels_match_their_model(device, backend, dtype, fma_blocks, case):
    """Each backend's scores pass and gradient pass against passes.py's model on the same inputs, with no
    column and with one block of columns on the FMA path (a row past RANGE taking the tanh unit throughout),
    lengths and a key padding mask: the kernels compute what the model (checked against float64) computes."""
    if dtype == torch.float64 and fma_blocks:
        pytest.skip("float64 takes no FMA columns: its tanh is exact")
    module, block = _pass_module(device, backend)
    q, k, v, lengths, mask = _pass_inputs(case, dtype, device, seed=sum(case[:4]))
    q[0, -1, 0] = 20.0  # row 0 past RANGE: the tanh unit for every column
    H = case[3]
    block = block or module.gradient_tile(case[1])[1]
    h_fma = min(block, H // block * block) * fma_blocks
    if backend == "cuda":
        tiles = range(len(module.TILES))
        got_s = [module.scores(q, k, v, lengths, mask, h_fma, tile) for tile in tiles]
    else:
        got_s = [module.scores(q, k, v, lengths, mask, h_fma)]
    keep = passes.keep_mask(q.shape[0], k.shape[1], lengths, mask, q.device)
    want_s = passes.scores_model(q.cpu(), k.cpu(), v.cpu(), None if keep is None else keep.cpu(), h_fma)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for s in got_s:
        assert torch.equal(torch.isinf(s).cpu(), torch.isinf(want_s))
        finite = torch.isfinite(want_s)
        assert rel_err(s.cpu()[finite].double(), want_s[finite].double()) < tol

    k0 = k if keep is None else k.masked_fill(~keep[..., None], 0.0)
    g = torch.Generator().manual_seed(7)
    ds = torch.randn(want_s.shape, generator=g, dtype=want_s.dtype).masked_fill(~torch.isfinite(want_s), 0.0)
    got = module.gradient_pass(ds.to(device), q, k0, v, h_fma)
    want = passes.from_sums(ds, *passes.gradient_pass_model(ds, q.cpu(), k0.cpu(), v.cpu(), h_fma), q.cpu(),
                            k0.cpu(), v.cpu())
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert rel_err(a.cpu().double(), b.double()) < (tol if dtype != torch.float16 else 2e-3), name
