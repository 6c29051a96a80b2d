"""fastseq.nn.LSTM and LSTMCell against torch.nn.LSTM and LSTMCell: a torch state_dict loads as is and
gives the same outputs, final states and gradients, through every backend present."""
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_sequence

import fastseq.nn
from fastseq import backends
from fastseq.ops import registry

from _util import TOL, backend_params, cpu_backends, rel_err

CPU_BACKENDS = cpu_backends("lstm")  # those that train: forward and backward

# (num_layers, bidirectional, proj_size, batch_first, bias, input kind)
CONFIGS = [
    (1, False, 0, False, True, "padded"),
    (3, False, 0, False, True, "padded"),
    (2, True, 0, True, True, "padded"),
    (1, True, 4, False, False, "padded"),
    (3, True, 3, True, True, "padded"),
    (2, False, 5, False, True, "packed"),
    (2, True, 0, False, True, "packed-unsorted"),
    (3, True, 4, True, True, "packed-unsorted"),
    (2, True, 3, False, True, "unbatched"),
]


def _pair(num_layers, bidirectional, proj_size, batch_first, bias, device="cpu", dtype=torch.float64, I=6, H=9):
    ref = torch.nn.LSTM(I, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                        proj_size=proj_size).to(device, dtype)
    ours = fastseq.nn.LSTM(I, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                           proj_size=proj_size).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _inputs(kind, batch_first, I, device, dtype, lengths=(7, 5, 5, 2, 1)):
    T, B = max(lengths), len(lengths)
    if kind == "unbatched":
        return torch.randn(T, I, device=device, dtype=dtype)
    if kind == "padded":
        x = torch.randn(T, B, I, device=device, dtype=dtype)
        return x.transpose(0, 1).contiguous() if batch_first else x
    lengths = list(lengths)
    if kind == "packed-unsorted":
        lengths = [lengths[i] for i in (2, 0, 4, 1, 3)]
    seqs = [torch.randn(n, I, device=device, dtype=dtype) for n in lengths]
    padded = pad_sequence(seqs, batch_first=batch_first)
    return pack_padded_sequence(padded, torch.tensor(lengths), batch_first=batch_first,
                                enforce_sorted=kind == "packed")


def _forward_backward(module, x, hx):
    out, (h, c) = module(x, hx)
    data = out.data if isinstance(out, PackedSequence) else out
    loss = (data * torch.linspace(-1, 1, data.numel(), dtype=data.dtype, device=data.device).view_as(data)).sum()
    loss = loss + (h * 1.5).sum() - c.square().sum()
    params = list(module.parameters())
    leaves = [t for t in (x.data if isinstance(x, PackedSequence) else x, *(hx or ())) if t.requires_grad]
    grads = torch.autograd.grad(loss, leaves + params)
    return out, h, c, grads


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "L{}-bi{}-proj{}-bf{}-bias{}-{}".format(
    c[0], int(c[1]), c[2], int(c[3]), int(c[4]), c[5]))
@pytest.mark.parametrize("with_hx", [False, True])
def test_matches_torch_lstm_float64(backend, config, with_hx):
    *args, kind = config
    num_layers, bidirectional, proj_size, batch_first, bias = args
    ref, ours = _pair(*args)
    x = _inputs(kind, batch_first, 6, "cpu", torch.float64)
    x.data.requires_grad_() if isinstance(x, PackedSequence) else x.requires_grad_()
    hx = None
    if with_hx:
        d = (2 if bidirectional else 1) * num_layers
        batch = () if kind == "unbatched" else (5,)
        hx = (torch.randn(d, *batch, proj_size or 9, dtype=torch.float64, requires_grad=True),
              torch.randn(d, *batch, 9, dtype=torch.float64, requires_grad=True))
    expected = _forward_backward(ref, x, hx)
    with backends.use(backend):
        actual = _forward_backward(ours, x, hx)
    if isinstance(expected[0], PackedSequence):
        assert isinstance(actual[0], PackedSequence)
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            e, a = getattr(expected[0], field), getattr(actual[0], field)
            assert (e is None and a is None) or torch.equal(e, a), field
    for name, a, e in [("output", actual[0].data if kind.startswith("packed") else actual[0],
                        expected[0].data if kind.startswith("packed") else expected[0]),
                       ("h_n", actual[1], expected[1]), ("c_n", actual[2], expected[2])]:
        assert a.shape == e.shape, name
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10, msg=name)
    for i, (a, e) in enumerate(zip(actual[3], expected[3])):
        torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-10, msg=f"gradient {i}")


@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_matches_torch_lstm_in_low_precision(device, backend, dtype):
    """Against torch.nn.LSTM in float64 on the same (rounded) weights and inputs."""
    if device == "cpu" and backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes tl.dot wrongly on bf16 inputs; the cuda run covers bf16")
    ref, ours = _pair(2, True, 4, True, True, device=device, dtype=dtype, I=16, H=24)
    ref = ref.double()
    x = torch.randn(3, 11, 16, device=device, dtype=dtype)
    with backends.use(backend):
        out, (h, c) = ours(x)
    e_out, (e_h, e_c) = ref(x.double())
    for name, a, e in (("output", out, e_out), ("h_n", h, e_h), ("c_n", c, e_c)):
        assert a.dtype == dtype
        assert rel_err(a, e) < TOL[dtype], f"{name}: {rel_err(a, e):.2e}"


def test_dropout_between_layers():
    torch.manual_seed(0)
    ref, ours = _pair(3, True, 0, False, True)
    ref.dropout = ours.dropout = 0.5
    x = torch.randn(5, 2, 6, dtype=torch.float64)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0])  # no dropout in eval mode
    ours.train()
    a, b = ours(x)[0], ours(x)[0]
    assert not torch.allclose(a, b), "dropout must be active in training mode"
    single = fastseq.nn.LSTM(6, 9, num_layers=1)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        fastseq.nn.LSTM(6, 9, num_layers=1, dropout=0.3)
    single.train()
    x32 = torch.randn(5, 2, 6)
    torch.testing.assert_close(single(x32)[0], single(x32)[0])  # dropout never applies after the last layer


def test_state_dict_keys_and_init_match_torch():
    ref = torch.nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3)
    ours = fastseq.nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k
        assert ours.state_dict()[k].abs().max() <= 8**-0.5
    ref.load_state_dict(ours.state_dict())  # and back
    assert ours.extra_repr() == ref.extra_repr()
    assert [[p.shape for p in w] for w in ours.all_weights] == [[p.shape for p in w] for w in ref.all_weights]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bias,unbatched,with_hx", [(True, False, True), (False, False, False), (True, True, True)])
def test_lstm_cell_matches_torch(backend, bias, unbatched, with_hx):
    ref = torch.nn.LSTMCell(7, 11, bias=bias).double()
    ours = fastseq.nn.LSTMCell(7, 11, bias=bias).double()
    ours.load_state_dict(ref.state_dict())
    shape = () if unbatched else (4,)
    x = torch.randn(*shape, 7, dtype=torch.float64, requires_grad=True)
    hx = (torch.randn(*shape, 11, dtype=torch.float64, requires_grad=True),
          torch.randn(*shape, 11, dtype=torch.float64, requires_grad=True)) if with_hx else None

    def run(m):
        h, c = m(x, hx)
        loss = (h * torch.arange(h.numel(), dtype=h.dtype).view_as(h)).sum() + c.square().sum()
        return [h, c, *torch.autograd.grad(loss, [x, *(hx or ()), *m.parameters()])]

    expected = run(ref)
    with backends.use(backend):
        actual = run(ours)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------------------------------ bad input


def test_constructor_errors():
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        fastseq.nn.LSTM(4, 8, proj_size=8)
    with pytest.raises(ValueError, match="proj_size should be a positive integer"):
        fastseq.nn.LSTM(4, 8, proj_size=-1)
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        fastseq.nn.LSTM(4, 8, num_layers=2, dropout=1.5)
    with pytest.raises(TypeError, match="hidden_size should be of type int"):
        fastseq.nn.LSTM(4, 8.0)
    with pytest.raises(ValueError, match="num_layers must be greater than zero"):
        fastseq.nn.LSTM(4, 8, num_layers=0)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        fastseq.nn.LSTMCell(4, 0)


def test_forward_errors_name_the_argument():
    m = fastseq.nn.LSTM(4, 8, num_layers=2, bidirectional=True)
    with pytest.raises(RuntimeError, match="input.size.-1. must be equal to input_size. Expected 4, got 5"):
        m(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        m(torch.randn(3, 2, 4, 1))
    with pytest.raises(TypeError, match="input must have the dtype of the parameters"):
        m(torch.randn(3, 2, 4, dtype=torch.float64))
    good_h, good_c = torch.zeros(4, 2, 8), torch.zeros(4, 2, 8)
    with pytest.raises(RuntimeError, match=r"Expected hx\[0\] \(h_0\) size \(4, 2, 8\), got \(2, 2, 8\)"):
        m(torch.randn(3, 2, 4), (torch.zeros(2, 2, 8), good_c))
    with pytest.raises(RuntimeError, match=r"Expected hx\[1\] \(c_0\) size \(4, 2, 8\), got \(4, 3, 8\)"):
        m(torch.randn(3, 2, 4), (good_h, torch.zeros(4, 3, 8)))
    with pytest.raises(TypeError, match=r"hx\[1\] \(c_0\) must have the dtype of input"):
        m(torch.randn(3, 2, 4), (good_h, good_c.double()))
    with pytest.raises(RuntimeError, match="For unbatched 2-D input, hx and cx should also be 2-D"):
        m(torch.randn(3, 4), (good_h, good_c))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        m(torch.randn(3, 2, 4), good_h)
    cell = fastseq.nn.LSTMCell(4, 8)
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 3 expected 4"):
        cell(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=r"Expected hx\[0\] \(h_0\) size \(2, 8\)"):
        cell(torch.randn(2, 4), (torch.zeros(3, 8), torch.zeros(2, 8)))


def test_unsorted_packed_sequence_needs_enforce_sorted_false():
    padded = torch.randn(5, 3, 4)
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        pack_padded_sequence(padded, torch.tensor([2, 5, 3]))
    packed = pack_padded_sequence(padded, torch.tensor([2, 5, 3]), enforce_sorted=False)
    out, _ = fastseq.nn.LSTM(4, 6)(packed)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)


def test_unavailable_backend_names_it():
    m = fastseq.nn.LSTM(4, 8)
    with backends.use(cpu="cuda"), pytest.raises(backends.BackendUnavailableError, match="backend 'cuda'"):
        m(torch.randn(3, 2, 4))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("lengths", [(3, 7, 1, 5), (7, 5, 5, 2)], ids=["unsorted", "sorted"])
def test_lengths_equal_a_packed_sequence(batch_first, lengths):
    """forward(padded, lengths=...) equals torch.nn.LSTM on the PackedSequence of the same rows: outputs
    (zero past each length), final states and gradients."""
    ref, ours = _pair(2, True, 3, batch_first, True)
    T, B = max(lengths), len(lengths)
    x = torch.randn(B, T, 6, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(4, B, n, dtype=torch.float64, requires_grad=True) for n in (3, 9))
    xin = x if batch_first else x.transpose(0, 1)
    out, (h, c) = ours(xin, hx, lengths=torch.tensor(lengths))
    packed = pack_padded_sequence(xin, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    ref_out, (ref_h, ref_c) = ref(packed, hx)
    ref_out, _ = torch.nn.utils.rnn.pad_packed_sequence(ref_out, batch_first=batch_first, total_length=T)
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out)
    ga = torch.autograd.grad((out * weights).sum() + h.sum() - c.square().sum(), [x, *hx, *ours.parameters()])
    gb = torch.autograd.grad((ref_out * weights).sum() + ref_h.sum() - ref_c.square().sum(),
                             [x, *hx, *ref.parameters()])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["packed", "lengths"])
def test_torch_serves_a_ragged_batch_in_one_call(form):
    """Where torch's kernel serves the layers, a packed (or lengths) batch runs in torch's one call over every
    layer and direction, as torch.nn.LSTM does, with torch.nn.LSTM's outputs and gradients."""
    ref, ours = _pair(2, True, 0, True, True)
    lengths = torch.tensor([2, 7, 4])
    x = torch.randn(3, 7, 6, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    with backends.use("torch"), registry.served() as record:
        out, (h, c) = ours(packed) if form == "packed" else ours(x, lengths=lengths)
    assert [(f, b) for _, f, b in record] == [("lstm", "torch")]
    ref_out, (ref_h, ref_c) = ref(packed)
    if form == "lengths":
        ref_out = torch.nn.utils.rnn.pad_packed_sequence(ref_out, batch_first=True, total_length=7)[0]
    else:
        assert torch.equal(out.batch_sizes, ref_out.batch_sizes) and torch.equal(out.unsorted_indices,
                                                                                 ref_out.unsorted_indices)
        out, ref_out = out.data, ref_out.data
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(out.square().sum() + h.sum(), [x, *ours.parameters()], retain_graph=True)
    gb = torch.autograd.grad(ref_out.square().sum() + ref_h.sum(), [x, *ref.parameters()])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_lengths_errors_name_the_argument():
    lstm = fastseq.nn.LSTM(4, 5, batch_first=True)
    with pytest.raises(ValueError, match=r"lengths must hold one int in \[1, L=3\] per sequence \(N=2\)"):
        lstm(torch.randn(2, 3, 4), lengths=torch.tensor([4, 1]))
    with pytest.raises(ValueError, match="lengths needs a batched, padded input"):
        lstm(torch.randn(3, 4), lengths=[3])


@pytest.mark.parametrize("config", [(1, False, 0, False, True), (3, True, 3, True, True), (2, True, 0, False, False)])
@pytest.mark.parametrize("train", [False, True])
def test_the_torch_backend_runs_every_layer_in_torch_s_one_call(config, train):
    """Where the chooser serves the first layer with torch's kernel, the module makes torch.nn.LSTM's own
    call on its parameters (one call for every layer; oneDNN keeps their prepared form): torch's outputs,
    states and gradients, and the record says so."""
    from fastseq.ops.registry import served

    ref, ours = _pair(*config)
    x = torch.randn(*((5, 7, 6) if config[3] else (7, 5, 6)), dtype=torch.float64, requires_grad=train)
    with torch.set_grad_enabled(train), backends.use("torch"), served() as record:
        out, (h, c) = ours(x)
    assert record == [("lstm", "lstm", "torch")]
    expected, (eh, ec) = ref(x)
    for a, e in ((out, expected), (h, eh), (c, ec)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    if train:
        w = torch.randn_like(out)
        got = torch.autograd.grad((out * w).sum() + h.sum() + c.sum(), [x, *ours.parameters()])
        want = torch.autograd.grad((expected * w).sum() + eh.sum() + ec.sum(), [x, *ref.parameters()])
        for g, e in zip(got, want):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("module", ["LSTM", "LSTMCell"])
def test_a_parametrized_weight_is_the_one_used(module):
    """A parametrization (weight drop, weight norm) computes the weight on each access: the modules, which read
    plain parameters from the parameter dict, use the computed one, as torch's do."""
    from torch.nn.utils import parametrize

    class Halve(torch.nn.Module):
        def forward(self, w):
            return w / 2

    torch.manual_seed(3)
    ref = getattr(torch.nn, module)(5, 7).double()
    ours = getattr(fastseq.nn, module)(5, 7).double()
    ours.load_state_dict(ref.state_dict())
    name = "weight_hh" if module == "LSTMCell" else "weight_hh_l0"
    for m in (ref, ours):
        parametrize.register_parametrization(m, name, Halve())
    x = torch.randn(3, 5, dtype=torch.float64)
    a, b = ref(x), ours(x)
    for u, v in zip(a if module == "LSTMCell" else (a[0], *a[1]), b if module == "LSTMCell" else (b[0], *b[1])):
        torch.testing.assert_close(v, u, rtol=1e-10, atol=1e-10)


def test_lstm_cell_steps_like_one_before_take_the_kept_route_with_torchs_answers_and_the_checked_errors(monkeypatch):
    """After a step went the checked route and torch's cell was chosen for its question, steps of the same
    sizes go straight to torch's cell (no module checks, no choosing): torch.nn.LSTMCell's outputs and
    gradients exactly; a malformed hx there still gets the checked route's error, naming the argument."""
    from fastseq.nn import lstm as nn_lstm
    taken = []
    original = nn_lstm.kept_step
    monkeypatch.setattr(nn_lstm, "kept_step", lambda *a: taken.append(original(*a)) or taken[-1])
    torch.manual_seed(0)
    base = torch.nn.LSTMCell(5, 7)
    ours = fastseq.nn.LSTMCell(5, 7)
    ours.load_state_dict(base.state_dict())
    x, h, c = torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 7)
    with backends.use(cpu="torch"):
        ours(x, (h, c))  # the checked route: its answer kept for the question
        for hx in ((h, c), None):
            taken.clear()
            got = ours(x, hx)
            assert taken and taken[-1] is not None  # the kept route served
            expected = base(x, hx)
            for g, e in zip(got, expected):
                torch.testing.assert_close(g, e, rtol=0, atol=0)
        xg = x.clone().requires_grad_()
        ours(xg, (h, c))  # a gradient: its own question, kept after this checked call
        taken.clear()
        got = ours(xg, (h, c))
        assert taken[-1] is not None
        (g_ours,) = torch.autograd.grad(got[0].sum() + got[1].sum(), xg)
        exp = base(xg, (h, c))
        (g_base,) = torch.autograd.grad(exp[0].sum() + exp[1].sum(), xg)
        torch.testing.assert_close(g_ours, g_base, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match=r"Expected hx\[0\] \(h_0\) size \(3, 7\), got \(3, 6\)"):
            ours(x, (torch.randn(3, 6), c))
        with pytest.raises(TypeError, match="hx must be a tuple"):
            ours(x, (h,))


@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_calls_like_one_before_take_the_kept_route_with_torchs_answers_and_the_checked_errors(monkeypatch,
                                                                                                batch_first):
    """After a call went the checked route and torch's whole LSTM was chosen for its question, calls of the
    same sizes go straight there: torch.nn.LSTM's outputs, states and gradients exactly, with or without
    (h0, c0); a malformed hx there still gets the checked route's error."""
    from fastseq.nn import lstm as nn_lstm
    taken = []
    original = nn_lstm.kept_stacked
    monkeypatch.setattr(nn_lstm, "kept_stacked", lambda *a: taken.append(original(*a)) or taken[-1])
    torch.manual_seed(0)
    base = torch.nn.LSTM(5, 7, num_layers=2, batch_first=batch_first, bidirectional=True)
    ours = fastseq.nn.LSTM(5, 7, num_layers=2, batch_first=batch_first, bidirectional=True)
    ours.load_state_dict(base.state_dict())
    x = torch.randn(3, 6, 5) if batch_first else torch.randn(6, 3, 5)
    hx = (torch.randn(4, 3, 7), torch.randn(4, 3, 7))
    with backends.use(cpu="torch"):
        for state in (hx, None):
            ours(x, state)  # the checked route: its answer kept for the question
            taken.clear()
            got = ours(x, state)
            assert taken and taken[-1] is not None  # the kept route served
            expected = base(x, state)
            torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
            for g, e in zip(got[1], expected[1]):
                torch.testing.assert_close(g, e, rtol=0, atol=0)
        xg = x.clone().requires_grad_()
        ours(xg)
        taken.clear()
        (g_ours,) = torch.autograd.grad(ours(xg)[0].square().sum(), xg)
        assert taken[-1] is not None
        (g_base,) = torch.autograd.grad(base(xg)[0].square().sum(), xg)
        torch.testing.assert_close(g_ours, g_base, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match=r"Expected hx\[0\] \(h_0\) size \(4, 3, 7\), got \(4, 3, 6\)"):
            ours(x, (torch.randn(4, 3, 6), hx[1]))
