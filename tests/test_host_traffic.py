"""No per-call host<->device traffic on the hot paths: every op, module forward and backward and decoding
step, run after a warm-up call (which may choose a backend and compile), must neither read a value of a
device tensor on the host (a synchronization on a GPU, and no CUDA graph can hold it) nor build a tensor from
host data on the device (a blocking copy). Here `DeviceResidency` treats the inputs as GPU tensors and
follows what is computed from them; `tests/test_host_traffic.py::test_cuda_*` runs the same under
torch.cuda.set_sync_debug_mode("error") on a GPU."""
import pytest
import torch

from fastseq import backends, ops
from fastseq import nn as fnn
from fastseq.ops import checks

from _util import DeviceResidency, cpu_backends, interpreter_uncounted


def _backends(*family):
    """The CPU backends of the family, and Triton (its interpreter runs its launchers here)."""
    return list(dict.fromkeys(cpu_backends(*family) + ["triton"]))


# Functions whose host reads run on CPU tensors only (another device takes a path without them)
CPU_ONLY = {"_finite_padding": "reads k and v's sum only when they are CPU tensors (returns False elsewhere)",
            "check_host_lengths": "called for lengths on the CPU only (on a GPU an asynchronous device assert)",
            "keeps_all": "reads a keep mask only when it is a CPU tensor (returns False elsewhere)",
            "each_row_keeps_one": "reads a keep mask only when it is a CPU tensor (returns False elsewhere)"}


def _crossings(run, resident, warm: bool = True) -> list[str]:
    """What `run()` moves between host and device, the tensors of `resident` taken to live on the device."""
    if warm:
        run()
    guard = DeviceResidency(CPU_ONLY)
    guard.resident(resident)
    with interpreter_uncounted(guard), guard:
        run()
    return guard.crossings


def _attention_inputs(grad: bool, B=2, Hq=4, Hkv=2, Tq=5, Tk=7, D=8):
    q = torch.randn(B, Hq, Tq, D, requires_grad=grad)
    k, v = (torch.randn(B, Hkv, Tk, D, requires_grad=grad) for _ in range(2))
    lengths = torch.tensor([Tk, 3], dtype=torch.int32)
    mask = torch.zeros(B, Tk, dtype=torch.bool)
    mask[0, 1] = True
    return q, k, v, lengths, mask


def test_the_guard_sees_what_a_gpu_would_synchronize_on():
    """DeviceResidency itself: a host read of a resident tensor, or of one computed from it, a tensor built
    from host data on a named device and a host tensor copied over are crossings; host tensors are not."""
    x = torch.randn(4)
    host = torch.arange(3)
    checks_made = {
        "read": lambda: int(x.sum() > 0),
        "derived read": lambda: (x * 2).tolist(),
        "item": lambda: x[0].item(),
        "host data": lambda: torch.tensor([1.0, 2.0], device=x.device),
        "copy over": lambda: host.to(x.device),
        "copy to": lambda: host.to(device=x.device, dtype=torch.float32),
        "copy into": lambda: x[:3].copy_(host.float()),
        "to the host": lambda: x.to("cpu"),
    }
    for name, run in checks_made.items():
        assert _crossings(run, x, warm=False), name
    assert _crossings(lambda: (int(host.sum()), host.tolist(), torch.tensor([1, 2])), x, warm=False) == []


@pytest.mark.parametrize("backend", _backends("attention", ("attention", "attention_backward")))
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
def test_attention_crosses_nothing(backend, grad):
    if not backends.availability(backend, "cpu")[0]:
        pytest.skip(backends.availability(backend, "cpu")[1])
    q, k, v, lengths, mask = _attention_inputs(grad)
    bias = torch.randn(5, 7)

    def run():
        with backends.use(backend):
            for kwargs in ({"lengths": lengths, "causal": True}, {"key_padding_mask": mask},
                           {"attn_mask": bias, "lengths": lengths}):
                out = ops.attention(q, k, v, **kwargs)
                if grad:
                    out.sum().backward()
    assert _crossings(run, (q, k, v, lengths, mask, bias)) == []


@pytest.mark.parametrize("backend", _backends("attention_decode"))
def test_attention_decode_crosses_nothing(backend):
    if not backends.availability(backend, "cpu")[0]:
        pytest.skip(backends.availability(backend, "cpu")[1])
    q = torch.randn(3, 4, 8)
    k, v = (torch.randn(3, 2, 9, 8) for _ in range(2))
    lengths = torch.tensor([9, 4, 1], dtype=torch.int32)

    def run():
        with backends.use(backend), torch.no_grad():
            ops.attention_decode(q, k, v, lengths=lengths)
    assert _crossings(run, (q, k, v, lengths)) == []


@pytest.mark.parametrize("backend", _backends("additive_attention"))
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
def test_additive_attention_crosses_nothing(backend, grad):
    if not backends.availability(backend, "cpu")[0]:
        pytest.skip(backends.availability(backend, "cpu")[1])
    qp, kp = torch.randn(2, 3, 6, requires_grad=grad), torch.randn(2, 5, 6, requires_grad=grad)
    v, values = torch.randn(6, requires_grad=grad), torch.randn(2, 5, 4, requires_grad=grad)
    lengths = torch.tensor([5, 2], dtype=torch.int32)

    def run():
        with backends.use(backend):
            out = ops.additive_attention(qp, kp, v, values, lengths=lengths)
            if grad:
                out.sum().backward()
            else:
                with torch.no_grad():
                    ops.additive_attention_step(qp[:, 0], kp, v, values, lengths=lengths)
    assert _crossings(run, (qp, kp, v, values, lengths)) == []


@pytest.mark.parametrize("backend", _backends("lstm"))
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
def test_lstm_layer_crosses_nothing(backend, grad):
    """lengths are host data by the op's contract (int64 on the CPU, as PackedSequence keeps them)."""
    if not backends.availability(backend, "cpu")[0]:
        pytest.skip(backends.availability(backend, "cpu")[1])
    T, B, I, H = 5, 3, 4, 6
    params = [torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, I),
              torch.randn(4 * H, H), torch.randn(4 * H)]
    for p in params:
        p.requires_grad_(grad)
    lengths = torch.tensor([5, 4, 2])

    def run():
        with backends.use(backend):
            for lens, reverse in ((None, False), (lengths, False), (lengths, True)):
                y, h, c = ops.lstm_layer(*params, lengths=lens, reverse=reverse)
                if grad:
                    (y.sum() + h.sum() + c.sum()).backward()
    assert _crossings(run, params) == []


def _module_cases():
    E = 8
    lstm = fnn.LSTM(4, 6, num_layers=2, batch_first=True)
    x = torch.randn(3, 5, 4)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3, 2]), batch_first=True)
    cell = fnn.LSTMCell(4, 6)
    mha = fnn.MultiheadAttention(E, 2, batch_first=True)
    seq = torch.randn(2, 6, E)
    lengths = torch.tensor([6, 4])
    encoder = fnn.TransformerEncoderLayer(E, 2, 16, dropout=0.0, batch_first=True)
    additive = fnn.AdditiveAttention(E, E, 6)
    return {
        "LSTM": (lambda: lstm(x), (x,)),
        "LSTM packed": (lambda: lstm(packed)[0].data, (packed.data,)),
        "LSTM lengths": (lambda: lstm(x, lengths=torch.tensor([3, 5, 2]))[0], (x,)),
        "LSTMCell": (lambda: cell(x[:, 0]), (x,)),
        "MultiheadAttention": (lambda: mha(seq, seq, seq, lengths=lengths, need_weights=False)[0], (seq, lengths)),
        "TransformerEncoderLayer": (lambda: encoder(seq, src_key_padding_mask=torch.arange(6) >= lengths[:, None]),
                                    (seq, lengths)),
        "AdditiveAttention": (lambda: additive(seq[:, :2], seq, lengths=lengths)[0], (seq, lengths)),
    }


@pytest.mark.parametrize("name", sorted(_module_cases()))
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
def test_module_crosses_nothing(name, grad):
    run, resident = _module_cases()[name]
    module_params = []

    def step():
        with torch.set_grad_enabled(grad):
            out = run()
            if isinstance(out, tuple):
                out = out[0]
            if grad:
                out.float().sum().backward()
    for t in resident:
        t.requires_grad_(grad and t.is_floating_point())
    assert _crossings(step, (*resident, *module_params)) == []


def _decoders():
    from fastseq.models import (
        LSTMLM,
        CausalLM,
        CausalLMConfig,
        LSTMLMConfig,
        Seq2Seq,
        Seq2SeqConfig,
        Transformer,
        TransformerConfig,
    )
    return {
        "lstm_lm": LSTMLM(LSTMLMConfig(19, 12, 16, 2, pad_id=0, eos_id=2)),
        "causal_lm": CausalLM(CausalLMConfig(19, 16, 4, 2, dropout=0.0, max_len=40, pad_id=0, eos_id=2)),
        "seq2seq": Seq2Seq(Seq2SeqConfig(19, 21, 12, 16, 2)),
        "bahdanau": Seq2Seq(Seq2SeqConfig(19, 21, 12, 16, 2, attention="additive")),
        "transformer": Transformer(TransformerConfig(19, 21, 16, 4, 2, 2, 32, max_len=40)),
    }


def _all_tensors(obj, seen=None) -> list[torch.Tensor]:
    """Every tensor a decoding state holds (in lists, tuples, dicts and objects' attributes)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, torch.nn.Module):
        return []
    items = (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple))
             else vars(obj).values() if hasattr(obj, "__dict__") else ())
    return [t for item in items for t in _all_tensors(item, seen)]


@pytest.mark.parametrize("name", ["bahdanau", "causal_lm", "lstm_lm", "seq2seq", "transformer"])
@pytest.mark.parametrize("beams", [1, 3])
def test_decode_step_crosses_nothing(name, beams):
    """A decoding step as generation runs it (checks.trusted: the state is the search's own, checked once), on
    its caches, after the beams' reorder."""
    model = _decoders()[name].eval()
    tokens, lengths = torch.randint(3, 19, (2, 4)), torch.tensor([4, 2])
    with torch.no_grad():
        _, state = model.begin_decoding(tokens, lengths, max_new_tokens=6, use_cache=True)
        state.reorder(torch.arange(2).repeat_interleave(beams))
        token = torch.randint(3, 19, (2 * beams,))
        parents = torch.arange(2 * beams).flip(0)

        def step():
            with checks.trusted():
                state.reorder(parents)
                return model.decode_step(token, state)
        step()
        guard = DeviceResidency(CPU_ONLY)
        guard.resident((token, parents, *_all_tensors(state)))
        with interpreter_uncounted(guard), guard:
            step()
    assert guard.crossings == []


@pytest.mark.cuda
def test_cuda_ops_and_modules_never_synchronize():
    """On a GPU: every hot path above under torch's sync debug mode, which raises on any synchronization."""
    device = torch.device("cuda")
    q, k, v, lengths, mask = (t.to(device) for t in _attention_inputs(True))
    qp, kp = torch.randn(2, 3, 6, device=device, requires_grad=True), torch.randn(2, 5, 6, device=device)
    av, values = torch.randn(6, device=device), torch.randn(2, 5, 4, device=device)
    mha = fnn.MultiheadAttention(8, 2, batch_first=True, device=device)
    seq = torch.randn(2, 6, 8, device=device, requires_grad=True)

    def run():
        ops.attention(q, k, v, lengths=lengths, causal=True).sum().backward()
        ops.attention(q, k, v, key_padding_mask=mask).sum().backward()
        with torch.no_grad():
            ops.attention_decode(q[:, :, 0], k, v, lengths=lengths)
            ops.additive_attention_step(qp[:, 0], kp, av, values, lengths=lengths)
        ops.additive_attention(qp, kp, av, values, lengths=lengths).sum().backward()
        mha(seq, seq, seq, lengths=lengths, need_weights=False)[0].sum().backward()
    run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
