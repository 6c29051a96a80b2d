"""The LSTM ops (fastseq.ops.lstm_cell, fastseq.ops.lstm_layer): every backend present against the
float64 reference, forward and backward; gradcheck; opcheck; torch.compile; bad input."""
import re

import pytest
import torch

from fastseq import backends, ops
from fastseq.ops import registry

from _util import DTYPES, TOL, backend_params, cpu_backends, rel_err

# (T, B, I, H, P, lengths, reverse, bias): odd sizes, projection, mixed lengths, both directions.
LAYER_CASES = [
    (1, 1, 1, 1, 0, None, False, True),
    (5, 3, 7, 10, 0, None, True, True),
    (9, 4, 5, 13, 6, [9, 7, 7, 2], True, False),
    (6, 5, 3, 17, 0, [6, 6, 3, 2, 1], False, True),
    (7, 33, 9, 33, 5, None, False, True),
    (4, 6, 8, 12, 0, [3, 3, 2, 2, 1, 1], True, True),
    (3, 40, 6, 70, 0, None, True, True),  # several row, unit and reduction tiles in the fused step
    (3, 5, 6, 70, 0, [3, 3, 2, 2, 1], False, True),
]


def _layer_inputs(T, B, I, H, P, bias, device):
    """float64 inputs at a scale that keeps the gates out of saturation."""
    R = P or H

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(device)

    return [r(T, B, I), r(B, R), r(B, H), r(4 * H, I, scale=I**-0.5), r(4 * H, R, scale=R**-0.5),
            r(4 * H) if bias else None, r(P, H, scale=H**-0.5) if P else None]


def _rounded(t, dtype):
    return None if t is None else t.to(dtype).double()


def _refused_here(device, backend, dtype, inputs, training, lengths, reverse) -> bool:
    """Where the backend's plan refuses the call (the `cuda` layer: its persistent kernel), the call asked of
    it by name raises, naming why, before anything runs; the test then has nothing more to compare."""
    if (device, backend) != ("cuda", "cuda"):
        return False
    from fastseq.ops.lstm import persistent

    x, w_hh, w_hr = inputs[0].to(dtype), inputs[4], inputs[6]
    why = persistent.refusal(x, w_hh, w_hr, training)
    if why is None:
        return False
    args = [None if t is None else t.to(dtype) for t in inputs]
    with backends.use(backend), torch.set_grad_enabled(training), \
            pytest.raises(backends.BackendUnavailableError, match=re.escape(why)):
        ops.lstm_layer(*(a.requires_grad_(training) if a is not None else None for a in args), lengths=lengths,
                       reverse=reverse)
    return True


def _run_layer(inputs, dtype, lengths, reverse, grads_out):
    args = [None if t is None else t.to(dtype).requires_grad_() for t in inputs]
    y, h_n, c_n = ops.lstm_layer(*args, lengths=lengths, reverse=reverse)
    loss = sum((o * g.to(dtype)).sum() for o, g in zip((y, h_n, c_n), grads_out))
    grads = torch.autograd.grad(loss, [a for a in args if a is not None])
    return [y, h_n, c_n, *grads]


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: "T{}-B{}-I{}-H{}-P{}-len{}-rev{}-bias{}".format(
    c[0], c[1], c[2], c[3], c[4], int(c[5] is not None), int(c[6]), int(c[7])))
def test_layer_matches_float64_reference(device, backend, dtype, case):
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes tl.dot wrongly on bf16 inputs; the cuda run covers bf16")
    T, B, I, H, P, lengths, reverse, bias = case
    # The oracle sees the same (rounded) inputs: what is measured is the computation's error alone.
    inputs = [_rounded(t, dtype) for t in _layer_inputs(T, B, I, H, P, bias, device)]
    lengths = None if lengths is None else torch.tensor(lengths)
    grads_out = [_rounded(torch.randn(*shape, dtype=torch.float64, device=device), dtype)
                 for shape in ((T, B, P or H), (B, P or H), (B, H))]
    if _refused_here(device, backend, dtype, inputs, training=True, lengths=lengths, reverse=reverse):
        return
    with backends.use("reference"):
        expected = _run_layer(inputs, torch.float64, lengths, reverse, grads_out)
    with backends.use(backend):
        actual = _run_layer(inputs, dtype, lengths, reverse, grads_out)
    names = ["y", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh"]
    names += ["grad_bias"] * bias + ["grad_w_hr"] * bool(P)
    for name, a, e in zip(names, actual, expected):
        assert a.dtype == dtype, f"{name} has dtype {a.dtype}"
        # a gradient element sums 4H gate terms per step over T steps (rel_err's floor for cancelling sums:
        # at T = H = 1 float32 torch math itself came within 1.4e-5 of the one-term floor)
        err = rel_err(a, e, terms=4 * H * T if name.startswith("grad_") else 1)
        assert err < TOL[dtype], f"{name}: relative error {err:.2e} >= {TOL[dtype]:.0e}"
    if lengths is not None:  # outputs past each row's length are exactly zero
        pad = torch.arange(T)[:, None] >= lengths[None, :]
        assert (actual[0].detach().cpu()[pad] == 0).all()


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,H", [(1, 1), (3, 20), (17, 129)])
def test_cell_matches_float64_reference(device, backend, dtype, B, H):
    gates, c_prev, gh, gc = (_rounded(torch.randn(*shape, dtype=torch.float64, device=device), dtype)
                             for shape in ((B, 4 * H), (B, H), (B, H), (B, H)))

    def run(dt):
        z, c = gates.to(dt).requires_grad_(), c_prev.to(dt).requires_grad_()
        h1, c1 = ops.lstm_cell(z, c)
        return [h1, c1, *torch.autograd.grad((h1 * gh.to(dt)).sum() + (c1 * gc.to(dt)).sum(), [z, c])]

    with backends.use("reference"):
        expected = run(torch.float64)
    with backends.use(backend):
        actual = run(dtype)
    for name, a, e in zip(["h", "c", "grad_gates", "grad_c_prev"], actual, expected):
        assert a.dtype == dtype
        assert rel_err(a, e) < TOL[dtype], f"{name}: relative error {rel_err(a, e):.2e}"


@pytest.mark.parametrize("device,backend", backend_params(needs=("lstm_cell", "lstm_cell_backward")))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,I,H,bias", [(1, 1, 1, True), (3, 7, 20, False), (17, 33, 129, True)])
def test_step_matches_float64_reference(device, backend, dtype, B, I, H, bias):
    """lstm_step (torch.nn.LSTMCell's computation): outputs and the gradient of every argument."""
    def r(*shape, scale=1.0):
        return _rounded(torch.randn(*shape, dtype=torch.float64, device=device) * scale, dtype)

    inputs = [r(B, I), r(B, H), r(B, H), r(4 * H, I, scale=I**-0.5), r(4 * H, H, scale=H**-0.5),
              r(4 * H) if bias else None, r(4 * H) if bias else None]
    gh, gc = r(B, H), r(B, H)

    def run(dt):
        args = [None if t is None else t.to(dt).requires_grad_() for t in inputs]
        with registry.served() as record:
            h1, c1 = ops.lstm_step(*args)
        grads = torch.autograd.grad((h1 * gh.to(dt)).sum() + (c1 * gc.to(dt)).sum(), [a for a in args if a is not None])
        return [h1, c1, *grads], record

    with backends.use("reference"):
        expected, _ = run(torch.float64)
    with backends.use(backend):
        actual, record = run(dtype)
    assert {served for _, _, served in record} == {backend}
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == dtype
        assert rel_err(a, e) < TOL[dtype], f"output {k}: relative error {rel_err(a, e):.2e}"


def test_step_bad_input():
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    w_ih, w_hh = torch.randn(16, 3), torch.randn(16, 4)
    with pytest.raises(ValueError, match=r"lstm_step: w_ih must have shape \(4H, I\) = \(16, 3\), got \(16, 5\)"):
        ops.lstm_step(x, h, c, torch.randn(16, 5), w_hh)
    with pytest.raises(ValueError, match=r"lstm_step: c must have shape \(B, H\) = \(2, 4\)"):
        ops.lstm_step(x, h, torch.randn(3, 4), w_ih, w_hh)
    with pytest.raises(ValueError, match=r"lstm_step: b_hh must have shape \(4H,\) = \(16,\)"):
        ops.lstm_step(x, h, c, w_ih, w_hh, torch.randn(16), torch.randn(15))
    with pytest.raises(TypeError, match="lstm_step: h must have the dtype of x"):
        ops.lstm_step(x, h.double(), c, w_ih, w_hh)


def test_reference_cell_formula_by_hand():
    """The reference cell against the equations written out once more, independently."""
    z = torch.randn(4, 12, dtype=torch.float64)
    c_prev = torch.randn(4, 3, dtype=torch.float64)
    h, c = ops.lstm_cell(z, c_prev)
    i, f, g, o = z[:, 0:3].sigmoid(), z[:, 3:6].sigmoid(), z[:, 6:9].tanh(), z[:, 9:12].sigmoid()
    torch.testing.assert_close(c, f * c_prev + i * g)
    torch.testing.assert_close(h, o * torch.tanh(f * c_prev + i * g))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("proj,lengths,reverse", [(0, None, False), (2, [3, 1], True), (0, [3, 2], True)])
def test_layer_gradcheck_float64(backend, proj, lengths, reverse):
    """torch's gradcheck; on the Triton interpreter (a launch per step, thousands of times slower) its fast
    mode, which checks the Jacobian along random directions instead of column by column."""
    T, B, I, H = 3, 2, 3, 3
    inputs = [t.requires_grad_() if t is not None else None for t in _layer_inputs(T, B, I, H, proj, True, "cpu")]
    lengths = None if lengths is None else torch.tensor(lengths)
    fast = backend == "triton"

    def f(*args):
        return ops.lstm_layer(*args, lengths=lengths, reverse=reverse)

    with backends.use(backend):
        assert torch.autograd.gradcheck(f, inputs, fast_mode=fast)
        assert torch.autograd.gradcheck(ops.lstm_cell, (torch.randn(2, 8, dtype=torch.float64, requires_grad=True),
                                                        torch.randn(2, 2, dtype=torch.float64, requires_grad=True)),
                                        fast_mode=fast)


@pytest.mark.parametrize("backend", cpu_backends(autograd=False))  # the custom op's own backward
def test_opcheck(backend):
    T, B, I, H, P = 4, 3, 5, 6, 4
    x, h0, c0, w_ih, w_hh, bias, w_hr = [t.float().requires_grad_() for t in _layer_inputs(T, B, I, H, P, True, "cpu")]
    lengths = torch.tensor([4, 3, 1])
    with backends.use(backend):
        torch.library.opcheck(torch.ops.fastseq.lstm_layer.default,
                              (x, h0, c0, w_ih, w_hh, bias, w_hr, lengths, True, True))
        # no projection, no bias, inference (nothing requires grad, no workspace)
        args = (x.detach(), torch.randn(B, H), c0.detach(), w_ih.detach(), torch.randn(4 * H, H))
        torch.library.opcheck(torch.ops.fastseq.lstm_layer.default, (*args, None, None, None, False, False))
        torch.library.opcheck(torch.ops.fastseq.lstm_cell.default,
                              (torch.randn(3, 8, requires_grad=True), torch.randn(3, 2, requires_grad=True)))


def test_torch_compile_smoke():
    import fastseq.nn

    lstm = fastseq.nn.LSTM(5, 8, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 5, requires_grad=True)

    def step(x):
        y, (h, c) = lstm(x)
        return y.sum() + h.sum() + c.sum()

    compiled = torch.compile(step, fullgraph=True)
    expected = step(x)
    (g_expected,) = torch.autograd.grad(expected, [x])
    actual = compiled(x)
    (g_actual,) = torch.autograd.grad(actual, [x])
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(g_actual, g_expected)


def test_inference_saves_no_workspace_and_refuses_backward():
    x, h0, c0, w_ih, w_hh, bias, _ = [t.float() if t is not None else None
                                      for t in _layer_inputs(3, 2, 4, 5, 0, True, "cpu")]
    out = torch.ops.fastseq.lstm_layer(x, h0, c0, w_ih, w_hh, bias, None, None, False, False)
    assert out[3].numel() == 0 and out[4].numel() == 0
    with torch.no_grad():
        y, _, _ = ops.lstm_layer(x, h0, c0, w_ih.requires_grad_(), w_hh, bias)
    assert not y.requires_grad


# ------------------------------------------------------------------------------------------ bad input


def _good():
    x, h0, c0, w_ih, w_hh, bias, w_hr = _layer_inputs(4, 3, 5, 6, 2, True, "cpu")
    return dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, bias=bias, w_hr=w_hr)


@pytest.mark.parametrize("change,error,match", [
    (lambda a: a.update(x=a["x"][0]), ValueError, r"x must be 3-D \(T, B, I\)"),
    (lambda a: a.update(x=a["x"].long()), TypeError, "x must be one of float16"),
    (lambda a: a.update(x=a["x"][:0]), ValueError, "at least one time step"),
    (lambda a: a.update(h0=a["h0"][:, :1]), ValueError, r"h0 must have shape \(B, P\) = \(3, 2\)"),
    (lambda a: a.update(c0=a["c0"][:2]), ValueError, r"c0 must have shape \(B, H\) = \(3, 6\)"),
    (lambda a: a.update(w_ih=a["w_ih"][:, :4]), ValueError, r"w_ih must have shape \(4H, I\)"),
    (lambda a: a.update(w_ih=a["w_ih"][:23]), ValueError, "w_ih.shape.0. must be 4.H"),
    (lambda a: a.update(w_hh=a["w_hh"].float()), TypeError, "w_hh must have the dtype of x"),
    (lambda a: a.update(bias=a["bias"][:5]), ValueError, r"bias must have shape \(4H,\)"),
    (lambda a: a.update(w_hr=torch.randn(6, 6, dtype=torch.float64)), ValueError, "projection size P"),
    (lambda a: a.update(h0=torch.empty(3, 2, dtype=torch.float64, device="meta")), ValueError,
     "h0 must be on the device of x"),
    (lambda a: a.update(lengths=torch.tensor([2, 3, 1])), ValueError, "lengths must be sorted"),
    (lambda a: a.update(lengths=torch.tensor([5, 3, 1])), ValueError, r"lengths must lie in \[1, T=4\]"),
    (lambda a: a.update(lengths=torch.tensor([4, 3, 0])), ValueError, r"lengths must lie in \[1, T=4\]"),
    (lambda a: a.update(lengths=torch.tensor([4, 3])), ValueError, r"lengths must have shape \(B,\)"),
    (lambda a: a.update(lengths=torch.tensor([4.0, 3, 1])), TypeError, "lengths must be an int64 CPU tensor"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_layer_bad_input(change, error, match):
    args = _good()
    change(args)
    with pytest.raises(error, match=match):
        ops.lstm_layer(**args)


def test_cell_bad_input():
    with pytest.raises(ValueError, match=r"gates must be 2-D"):
        ops.lstm_cell(torch.randn(8), torch.randn(2))
    with pytest.raises(ValueError, match="multiple of 4"):
        ops.lstm_cell(torch.randn(2, 7), torch.randn(2, 1))
    with pytest.raises(ValueError, match=r"c_prev must have shape \(B, H\) = \(2, 2\)"):
        ops.lstm_cell(torch.randn(2, 8), torch.randn(2, 3))
    with pytest.raises(TypeError, match="c_prev must have the dtype of gates"):
        ops.lstm_cell(torch.randn(2, 8), torch.randn(2, 2, dtype=torch.float64))


def test_unavailable_backend_is_an_error_naming_it():
    args = _good()
    with backends.use("cuda"), pytest.raises(backends.BackendUnavailableError, match="backend 'cuda'.*cpu tensors"):
        ops.lstm_layer(**args)


@pytest.mark.parametrize("device,backend", backend_params("lstm", needs=("lstm_layer",)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: "T{}-B{}-I{}-H{}-P{}-len{}-rev{}-bias{}".format(
    c[0], c[1], c[2], c[3], c[4], int(c[5] is not None), int(c[6]), int(c[7])))
def test_inference_matches_float64_reference(device, backend, dtype, case):
    """Every backend that serves the layer without a gradient, the `torch` one (torch's fused LSTM) too:
    lengths, reversed rows and the projection as the reference has them."""
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes tl.dot wrongly on bf16 inputs; the cuda run covers bf16")
    T, B, I, H, P, lengths, reverse, bias = case
    inputs = [_rounded(t, dtype) for t in _layer_inputs(T, B, I, H, P, bias, device)]
    lengths = None if lengths is None else torch.tensor(lengths)
    if _refused_here(device, backend, dtype, inputs, training=False, lengths=lengths, reverse=reverse):
        return
    with backends.use("reference"):
        expected = ops.lstm_layer(*inputs, lengths=lengths, reverse=reverse)
    with torch.no_grad(), backends.use(backend):
        actual = ops.lstm_layer(*(None if t is None else t.to(dtype) for t in inputs), lengths=lengths,
                                reverse=reverse)
    # cuDNN's float32 activations carry a few 1e-5 of relative error each: 2.8e-5 on one element (T = B =
    # I = H = 1) on an H200, as torch.nn.LSTM has it
    tol = 6e-5 if (device, backend, dtype) == ("cuda", "torch", torch.float32) else TOL[dtype]
    for name, a, e in zip(("y", "h_n", "c_n"), actual, expected):
        assert a.dtype == dtype and rel_err(a, e) < tol, f"{name}: relative error {rel_err(a, e):.2e}"


def test_the_torch_backend_trains_through_autograd_where_verified_and_only_there():
    """On a CPU torch's fused LSTM serves inference and training (its gradient torch's autograd's, called
    outside the custom op); a backend pinned into the custom op must have a backward of its own, which
    torch's kernel has not; on CUDA its training awaits a GPU check, so it is passed over there."""
    args = [t.float() for t in _layer_inputs(4, 2, 3, 5, 0, True, "cpu")[:6]]  # no projection
    training = ("lstm_layer", "lstm_layer_backward")
    assert registry.chosen("lstm", "cpu", ("lstm_layer",)) == "torch"  # the CPU's first choice without a gradient
    assert registry.chosen("lstm", "cpu", training, autograd=True) == "torch"
    assert registry.chosen("lstm", "cpu", training) != "torch"  # into the custom op: a backend with a backward
    assert registry.differentiated("lstm", "torch", "cpu") and not registry.differentiated("lstm", "torch", "cuda")
    assert not registry.declared()["lstm"].provides("torch", training, "cuda")
    trained = [t.detach().double().requires_grad_() for t in args]
    with backends.use("torch"):
        y, h, c = ops.lstm_layer(*trained, lengths=[4, 2])
    assert y.grad_fn is not None and "fastseq" not in type(y.grad_fn).__name__.lower()  # torch's own graph
    grads = torch.autograd.grad((y.sum() + h.sum() + c.sum()), trained)
    with backends.use("reference"):
        expected = torch.autograd.grad(sum(t.sum() for t in ops.lstm_layer(*trained, lengths=[4, 2])), trained)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    with backends.use("torch"), pytest.raises(backends.BackendUnavailableError,
                                              match=r"backend 'torch' .* does not implement lstm \(lstm_layer, "
                                                    r"lstm_layer_backward\)"):
        torch.ops.fastseq.lstm_layer(*trained, None, None, False, True, "")[0].sum().backward()
    with torch.no_grad(), backends.use("torch"):
        torch.library.opcheck(torch.ops.fastseq.lstm_layer.default,
                              (*(t.detach() for t in args), None, torch.tensor([4, 2]), True, False, "torch"))
