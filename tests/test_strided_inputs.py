"""Every op, on every backend present, takes any strided view of its tensors — transposed, sliced,
expanded along a dim, or with an odd stride on a size-1 dim — and gives the answer the float64 reference
gives on a contiguous copy of the same values: outputs and, for the differentiable ops, every gradient."""
import pytest
import torch

from fastseq import backends, ops

from _util import TOL, backend_params, rel_err

DTYPE = torch.float32


def _transposed(x):
    """The same values, laid out with the first and last dims swapped in memory."""
    return x.transpose(0, -1).contiguous().transpose(0, -1) if x.dim() > 1 else x


def _sliced(x):
    """The same values, every other element of a buffer twice as wide in the last dim."""
    buffer = x.new_zeros(*x.shape[:-1], 2 * x.shape[-1])
    buffer[..., ::2] = x
    return buffer[..., ::2]


def _expanded(x):
    """Row 0 repeated over the first dim with stride 0 (a cache or prompt shared by the batch)."""
    return x[:1].expand_as(x) if x.dim() > 1 else x


def _size1_strided(x):
    """The same values with an odd stride on every size-1 dim (what `(B, T, 1, D).transpose(1, 2)` gives)."""
    strides = [7 if n == 1 else s for n, s in zip(x.shape, x.stride())]
    return torch.as_strided(x.contiguous(), x.shape, strides)


VIEWS = {"transposed": _transposed, "sliced": _sliced, "expanded": _expanded, "size1-strided": _size1_strided}


def _inputs(shapes, device, view):
    """Fresh random tensors of `shapes`, each as the view; and their float64 contiguous copies."""
    made = [VIEWS[view](torch.randn(s, dtype=DTYPE, device=device)) for s in shapes]
    return [t.requires_grad_() for t in made], [t.detach().double().contiguous().requires_grad_() for t in made]


def _check(run, shapes, device, backend, view, terms=8):
    """run(*tensors) -> a tuple of outputs; compared with the reference on float64 copies, gradients too.
    `terms`: how many O(1) products a gradient element sums (rel_err's floor for cancelling sums)."""
    inputs, copies = _inputs(shapes, device, view)
    with backends.use("reference"):
        expected = run(*copies)
    with backends.use(backend):
        got = run(*inputs)
    grads = [torch.randn_like(e) for e in expected]
    for g, e in zip(got, expected):
        assert rel_err(g, e) < TOL[DTYPE], view
    want = torch.autograd.grad(expected, copies, grads, allow_unused=True)
    have = torch.autograd.grad(got, inputs, [g.to(DTYPE) for g in grads], allow_unused=True)
    for name, (h, w) in enumerate(zip(have, want)):
        if w is None:
            assert h is None or not h.any(), (view, name)
            continue
        assert rel_err(h, w, terms=terms) < TOL[DTYPE], (view, name)


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("device,backend", backend_params("lstm"))
@pytest.mark.parametrize("B", [3, 1])
def test_lstm_cell(device, backend, view, B):
    _check(lambda gates, c: ops.lstm_cell(gates, c), [(B, 4 * 5), (B, 5)], device, backend, view)


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("device,backend", backend_params("lstm"))
@pytest.mark.parametrize("B", [3, 1])
def test_lstm_layer(device, backend, view, B):
    T, I, H = 4, 3, 5
    shapes = [(T, B, I), (B, H), (B, H), (4 * H, I), (4 * H, H), (4 * H,)]
    # A gradient sums 4H gate terms per step over T steps; "expanded" makes every gate row and every step
    # equal, so those sums cancel and even fp32 torch math lands near 2e-5 of a terms=8 floor.
    _check(lambda *a: ops.lstm_layer(*a), shapes, device, backend, view, terms=T * 4 * H)


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("device,backend", backend_params("additive_attention"))
@pytest.mark.parametrize("B,Tq", [(3, 4), (1, 1)])
def test_additive_attention(device, backend, view, B, Tq):
    Tk, H, Dv = 6, 8, 5
    lengths = torch.tensor([6, 2, 5][:B], device=device)
    shapes = [(B, Tq, H), (B, Tk, H), (H,), (B, Tk, Dv)]
    _check(lambda *a: (ops.additive_attention(*a, lengths=lengths),), shapes, device, backend, view)


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("device,backend", backend_params("additive_attention"))
@pytest.mark.parametrize("B", [3, 1])
def test_additive_attention_step(device, backend, view, B):
    Tk, H, Dv = 6, 8, 5
    shapes = [(B, H), (B, Tk, H), (H,), (B, Tk, Dv)]
    with torch.no_grad():  # the step's own kernel runs without a gradient
        inputs, copies = _inputs(shapes, device, view)
        with backends.use("reference"):
            expected = ops.additive_attention_step(*copies)
        with backends.use(backend):
            got = ops.additive_attention_step(*inputs)
    assert rel_err(got, expected) < TOL[DTYPE], view
    _check(lambda *a: (ops.additive_attention_step(*a),), shapes, device, backend, view)  # through attention


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("device,backend", backend_params("attention"))
@pytest.mark.parametrize("B,Hq,Hkv,causal", [(2, 4, 2, True), (1, 2, 1, False), (3, 3, 1, True)])
def test_attention(device, backend, view, B, Hq, Hkv, causal):
    T, D = 5, 16
    shapes = [(B, Hq, T, D), (B, Hkv, T, D), (B, Hkv, T, D)]
    _check(lambda *a: (ops.attention(*a, causal=causal),), shapes, device, backend, view)


@pytest.mark.parametrize("view", [*VIEWS, "cache-transposed"])
@pytest.mark.parametrize("device,backend", backend_params("attention_decode"))
@pytest.mark.parametrize("B,Hq,Hkv", [(3, 4, 1), (2, 4, 2), (1, 2, 1)])
def test_attention_decode(device, backend, view, B, Hq, Hkv):
    """Decoding reads k and v in place where it can: every batch and head stride must be honoured,
    including a cache kept as (B, T, Hkv, D) and viewed as (B, Hkv, T, D)."""
    T, D = 37, 16
    q = torch.randn(B, Hq, D, device=device, dtype=DTYPE)
    if view == "cache-transposed":
        k, v = (torch.randn(B, T, Hkv, D, device=device, dtype=DTYPE).transpose(1, 2) for _ in range(2))
    else:
        q = VIEWS[view](q)
        k, v = (VIEWS[view](torch.randn(B, Hkv, T, D, device=device, dtype=DTYPE)) for _ in range(2))
    lengths = torch.tensor([37, 1, 20][:B], device=device)
    with backends.use("reference"):
        expected = ops.attention_decode(*(t.double().contiguous() for t in (q, k, v)), lengths=lengths)
    with backends.use(backend):
        got = ops.attention_decode(q, k, v, lengths=lengths)
    assert rel_err(got, expected) < TOL[DTYPE], view
