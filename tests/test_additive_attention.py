"""The additive attention ops (fastseq.ops.additive_attention, additive_attention_step): every backend
present against the float64 reference, forward and backward; the reference against autograd through the
naive form; the padding rule; gradcheck; opcheck; torch.compile; bad input; GPU sizes."""
import pytest
import torch

from fastseq import backends, ops
from fastseq.ops import registry
from fastseq.ops.additive_attention import torch_backend, zero_padded_keys
from fastseq.ops.additive_attention.reference import naive

from _util import DTYPES, TOL, backend_params, rel_err

# (B, Tq, Tk, H, Dv, padding): odd sizes, several query/key/H tiles, Dv past one 128 tile, both paddings.
CASES = [
    (1, 1, 1, 1, 1, None),
    (2, 5, 7, 6, 3, "mask"),
    (3, 17, 40, 20, 9, "lengths"),
    (2, 33, 19, 35, 17, "both"),
    (2, 3, 70, 24, 130, "mask"),
    (4, 20, 33, 16, 16, "empty"),  # rows whose keys are all padding
]


def _padding(kind, B, Tk):
    """(key_padding_mask, lengths) for a case, drawn at random."""
    mask = lengths = None
    if kind in ("mask", "both", "empty"):
        mask = torch.rand(B, Tk) < 0.3
    if kind in ("lengths", "both"):
        lengths = torch.randint(1, Tk + 1, (B,))
        lengths[0] = Tk
    if kind == "empty":
        mask[0] = True
        lengths = torch.randint(0, Tk + 1, (B,))
        lengths[1] = 0
    return mask, lengths


def _inputs(B, Tq, Tk, H, Dv, device):
    """float64 inputs at the scales a trained model sees: q, k of unit size, v of size H^-1/2."""
    return [torch.randn(B, Tq, H, dtype=torch.float64, device=device),
            torch.randn(B, Tk, H, dtype=torch.float64, device=device),
            torch.randn(H, dtype=torch.float64, device=device) * 2 * H**-0.5,
            torch.randn(B, Tk, Dv, dtype=torch.float64, device=device)]


def _run(inputs, dtype, mask, lengths, grad_out):
    args = [t.to(dtype).requires_grad_() for t in inputs]
    context = ops.additive_attention(*args, key_padding_mask=mask, lengths=lengths)
    grads = torch.autograd.grad((context * grad_out.to(dtype)).sum(), args)
    with torch.no_grad():
        step = ops.additive_attention_step(args[0][:, -1], *args[1:], key_padding_mask=mask, lengths=lengths)
    return [context, *grads, step]


def _skip_interpreted_bf16(device, backend, dtype):
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes tl.dot wrongly on bf16 inputs; the cuda run covers bf16")


@pytest.mark.parametrize("device,backend", backend_params("additive_attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-Tq{}-Tk{}-H{}-Dv{}-{}".format(*c))
def test_matches_float64_reference(device, backend, dtype, case):
    _skip_interpreted_bf16(device, backend, dtype)
    if backend == "cuda" and device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels serve float32, float16 and bfloat16")
    B, Tq, Tk, H, Dv, kind = case
    mask, lengths = _padding(kind, B, Tk)
    mask = None if mask is None else mask.to(device)
    # The oracle sees the same (rounded) inputs: what is measured is the computation's error alone.
    inputs = [t.to(dtype).double() for t in _inputs(B, Tq, Tk, H, Dv, device)]
    grad_out = torch.randn(B, Tq, Dv, dtype=torch.float64, device=device).to(dtype).double()
    with backends.use("reference"):
        expected = _run(inputs, torch.float64, mask, lengths, grad_out)
    with backends.use(backend):
        actual = _run(inputs, dtype, mask, lengths, grad_out)
    names = ("context", "grad_query_proj", "grad_key_proj", "grad_v", "grad_values", "step_context")
    for name, a, e in zip(names, actual, expected):
        assert a.dtype == dtype, name
        # The gradients sum products of either sign (over keys, queries, or both for grad_v), which can
        # cancel far below their terms (rows with a single visible key send none): judged against those.
        terms = {"grad_query_proj": Tk, "grad_key_proj": Tq, "grad_v": B * Tq * Tk}.get(name, 1)
        assert rel_err(a, e, terms) < TOL[dtype], f"{name}: relative error {rel_err(a, e, terms):.2e}"


@pytest.mark.parametrize("case", CASES[1:5], ids=lambda c: "B{}-Tq{}-Tk{}-H{}-Dv{}-{}".format(*c))
def test_reference_matches_autograd_through_naive_form(case):
    """The hand-written reference backward against autograd through the plain PyTorch form, float64."""
    B, Tq, Tk, H, Dv, kind = case
    mask, lengths = _padding(kind, B, Tk)
    if lengths is not None:  # the naive form takes a mask: fold the lengths into it
        by_length = torch.arange(Tk)[None, :] >= lengths[:, None]
        mask = by_length if mask is None else mask | by_length
    if mask is not None:  # every row keeps its first key: the naive form gives a row with none NaN
        mask[:, 0] = False
    inputs = _inputs(B, Tq, Tk, H, Dv, "cpu")
    grad_out = torch.randn(B, Tq, Dv, dtype=torch.float64)
    with backends.use("reference"):
        actual = _run(inputs, torch.float64, mask, None, grad_out)
    args = [t.clone().requires_grad_() for t in inputs]
    context, _ = naive(*args, key_padding_mask=mask)
    expected = [context, *torch.autograd.grad((context * grad_out).sum(), args)]
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device,backend", backend_params("additive_attention"))
def test_fully_padded_rows_give_zero_context_weights_and_gradients(device, backend):
    B, Tq, Tk, H, Dv = 3, 4, 6, 5, 7
    inputs = [t.to(device).float().requires_grad_() for t in _inputs(B, Tq, Tk, H, Dv, device)]
    mask = torch.zeros(B, Tk, dtype=torch.bool, device=device)
    mask[1] = True
    lengths = torch.tensor([Tk, Tk, 0])  # row 2 empty by length, row 1 by mask
    with backends.use(backend):
        context, weights = ops.additive_attention(*inputs, key_padding_mask=mask, lengths=lengths,
                                                  return_weights=True)
        context.sum().backward()
    for row in (1, 2):
        assert torch.equal(context[row], torch.zeros_like(context[row]))
        assert torch.equal(weights[row], torch.zeros_like(weights[row]))
        assert torch.equal(inputs[0].grad[row], torch.zeros_like(inputs[0].grad[row]))
        assert torch.equal(inputs[3].grad[row], torch.zeros_like(inputs[3].grad[row]))
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(Tq, device=device))
    assert inputs[0].grad[0].abs().sum() > 0


def test_lengths_equal_the_mask_they_stand_for():
    B, Tq, Tk, H, Dv = 4, 5, 9, 8, 6
    inputs = _inputs(B, Tq, Tk, H, Dv, "cpu")
    lengths = torch.tensor([9, 1, 4, 7])
    mask = torch.arange(Tk)[None, :] >= lengths[:, None]
    by_lengths = ops.additive_attention(*inputs, lengths=lengths)
    by_mask = ops.additive_attention(*inputs, key_padding_mask=mask)
    torch.testing.assert_close(by_lengths, by_mask, rtol=1e-12, atol=1e-12)


def test_cpu_builds_the_tensor_only_within_its_bound(monkeypatch):
    """On a CPU the default is the torch form (autograd keeps the tanh tensor) while (B, Tq, Tk, H) fits in
    torch_backend.MATERIALIZED elements, the blocked reference past it; both give the float64 reference's answer."""
    B, Tq, Tk, H, Dv = 3, 4, 9, 5, 6
    inputs = _inputs(B, Tq, Tk, H, Dv, "cpu")
    mask, _ = _padding("empty", B, Tk)
    grad_out = torch.randn(B, Tq, Dv, dtype=torch.float64)
    with backends.use("reference"):
        expected = _run(inputs, torch.float64, mask, None, grad_out)
    for bound, served in ((B * Tq * Tk * H, "torch"), (B * Tq * Tk * H - 1, "reference")):
        monkeypatch.setattr(torch_backend, "MATERIALIZED", bound)
        with registry.served() as record:
            actual = _run(inputs, torch.float64, mask, None, grad_out)
        assert ("additive_attention", "additive_attention", served) in record, record
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_padding_zeroed_once_gives_the_same_answer_without_nan():
    """zero_padded_keys once, then padding_zeroed=True per call: NaN and Inf in the padded keys' rows reach
    neither the context nor a gradient, and the answer is the op's own."""
    B, Tq, Tk, H, Dv = 3, 5, 8, 6, 4
    inputs = _inputs(B, Tq, Tk, H, Dv, "cpu")
    lengths = torch.tensor([8, 3, 0])
    for t in (inputs[1], inputs[3]):
        t[1, 3:] = float("nan")
        t[2, :] = float("inf")
    grad_out = torch.randn(B, Tq, Dv, dtype=torch.float64)

    def run(zero_once):
        args = [t.clone().requires_grad_() for t in inputs]
        k, vals = args[1], args[3]
        if zero_once:
            k, vals = zero_padded_keys(k, vals, lengths=lengths)
        context = ops.additive_attention(args[0], k, args[2], vals, lengths=lengths, padding_zeroed=zero_once)
        return [context, *torch.autograd.grad((context * grad_out).sum(), args)]

    once, every_call = run(True), run(False)
    for a, b in zip(once, every_call):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"zero_padded_keys: lengths must have shape"):
        zero_padded_keys(inputs[1], inputs[3], lengths=torch.tensor([1, 2]))


def test_weights_match_the_naive_form():
    B, Tq, Tk, H, Dv = 2, 6, 11, 7, 5
    inputs = _inputs(B, Tq, Tk, H, Dv, "cpu")
    mask = torch.rand(B, Tk) < 0.3
    mask[:, 0] = False
    context, weights = ops.additive_attention(*inputs, key_padding_mask=mask, return_weights=True)
    naive_context, naive_weights = naive(*inputs, key_padding_mask=mask)
    torch.testing.assert_close(weights, naive_weights)
    torch.testing.assert_close(context, naive_context)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.slow)])
def test_gradcheck(backend):
    if not backends.availability(backend, "cpu")[0]:
        pytest.skip(backends.availability(backend, "cpu")[1])
    args = [t.requires_grad_() for t in _inputs(2, 3, 5, 4, 3, "cpu")]
    mask = torch.tensor([[False, False, True, False, True], [False] * 5])
    with backends.use(backend):
        assert torch.autograd.gradcheck(lambda *a: ops.additive_attention(*a, key_padding_mask=mask), args)


@pytest.mark.parametrize("device,backend", backend_params("additive_attention", autograd=False))
def test_opcheck(device, backend):
    inputs = [t.float().to(device) for t in _inputs(2, 5, 7, 6, 3, device)]
    mask = (torch.rand(2, 7, device=device) < 0.3)
    lengths = torch.tensor([7, 4], dtype=torch.int32, device=device)
    with backends.use(backend):
        for pad in ((None, None), (lengths, mask)):
            args = [t.clone().requires_grad_() for t in inputs]
            torch.library.opcheck(torch.ops.fastseq.additive_attention.default, (*args, *pad, True, False))
            torch.library.opcheck(torch.ops.fastseq.additive_attention_decode.default,
                                  (inputs[0][:, 0].contiguous(), *inputs[1:], *pad, False))


def test_torch_compile_smoke():
    inputs = _inputs(2, 5, 7, 6, 3, "cpu")
    lengths = torch.tensor([7, 3])

    def f(q, k, v, values):
        return ops.additive_attention(torch.relu(q), k * 2, v, values, lengths=lengths).square().sum(-1)

    expected = f(*inputs)
    actual = torch.compile(f, fullgraph=True)(*inputs)
    torch.testing.assert_close(actual, expected)


def _bad(**changes):
    args = dict(zip(("query_proj", "key_proj", "v", "values"), _inputs(2, 3, 4, 5, 6, "cpu")))
    args.update(changes)
    return args


@pytest.mark.parametrize("changes,message", [
    (dict(query_proj=torch.randn(2, 3)), r"query_proj must be 3-D \(B, Tq, H\)"),
    (dict(key_proj=torch.randn(2, 4, 7, dtype=torch.float64)), r"query_proj must have shape \(B, Tq, H\)"),
    (dict(key_proj=torch.randn(3, 4, 5, dtype=torch.float64)), r"query_proj must have shape"),
    (dict(key_proj=torch.randn(2, 0, 5, dtype=torch.float64)), r"at least one key"),
    (dict(v=torch.randn(4, dtype=torch.float64)), r"v must have shape \(H,\)"),
    (dict(values=torch.randn(2, 5, 6, dtype=torch.float64)), r"values must have shape \(B, Tk, Dv\)"),
    (dict(values=torch.randn(2, 4, 6)), r"values must have the dtype of query_proj"),
    (dict(v=torch.randint(0, 3, (5,))), r"v must be one of float16"),
    (dict(key_padding_mask=torch.zeros(2, 4)), r"key_padding_mask must be a bool tensor"),
    (dict(key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)), r"key_padding_mask must have shape \(B, Tk\)"),
    (dict(lengths=torch.tensor([4.0, 2.0])), r"lengths must be an integer tensor"),
    (dict(lengths=torch.tensor([4, 2, 1])), r"lengths must have shape \(B,\)"),
    (dict(lengths=torch.tensor([5, 2])), r"lengths must lie in \[0, Tk=4\]"),
    (dict(lengths=torch.tensor([-1, 2])), r"lengths must lie in \[0, Tk=4\]"),
])
def test_bad_input_names_the_argument(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ops.additive_attention(**_bad(**changes))


def test_bad_step_query():
    args = _bad()
    with pytest.raises(ValueError, match=r"additive_attention_step: query_proj must be 2-D \(B, H\)"):
        ops.additive_attention_step(**args)


# ------------------------------------------------------------------------------------------ GPU sizes


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_real_sizes_on_gpu(backend, dtype):
    """B=8, Tq=Tk=256, H=512, Dv=256 with ragged lengths, against the float64 reference on the GPU."""
    B, Tq, Tk, H, Dv = 8, 256, 256, 512, 256
    inputs = [t.to(dtype).double() for t in _inputs(B, Tq, Tk, H, Dv, "cuda")]
    lengths = torch.randint(1, Tk + 1, (B,))
    grad_out = torch.randn(B, Tq, Dv, dtype=torch.float64, device="cuda").to(dtype).double()
    with backends.use("reference"):
        expected = _run(inputs, torch.float64, None, lengths, grad_out)
    with backends.use(backend):
        actual = _run(inputs, dtype, None, lengths, grad_out)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert rel_err(a, e) < TOL[dtype], f"output {i}: relative error {rel_err(a, e):.2e}"


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_long_keys_run_in_memory_linear_in_tk(backend):
    """Tk = 16,384, B=16, Tq=64, H=512 bf16: the naive form would need B·Tq·Tk·H·2 bytes = 17 GB for the
    tanh tensor alone; the fused forward+backward stays within a small multiple of its inputs."""
    B, Tq, Tk, H, Dv = 16, 64, 16384, 512, 256
    args = [t.to(torch.bfloat16).requires_grad_() for t in _inputs(B, Tq, Tk, H, Dv, "cuda")]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with backends.use(backend):
        ops.additive_attention(*args).float().sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    inputs_bytes = sum(t.numel() * t.element_size() for t in args)
    assert extra < 6 * inputs_bytes, (f"peak extra memory {extra / 2**20:.0f} MiB for "
                                      f"{inputs_bytes / 2**20:.0f} MiB of inputs")
    assert all(torch.isfinite(a.grad).all() for a in args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,H,message", [
    (torch.float64, 16, r"serve float32, float16 and bfloat16"),
    (torch.float32, 600, r"H and Dv up to 512"),
])
def test_cuda_backend_names_what_it_does_not_serve(dtype, H, message):
    args = [t.to(dtype) for t in _inputs(2, 3, 4, H, 8, "cuda")]
    with backends.use("cuda"), pytest.raises(RuntimeError, match=message):
        ops.additive_attention(*args)
