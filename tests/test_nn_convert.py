"""fastseq.nn.convert / revert: a user's model holding torch's LSTM, LSTMCell, MultiheadAttention and a
TransformerEncoder, converted in one call, gives torch's outputs and gradients (float64), keeps its
state_dict, mode, flags and hooks, compiles, and reverts to torch's modules."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastseq


class UserModel(nn.Module):
    def __init__(self, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = nn.LSTM(8, 16, num_layers=2, batch_first=batch_first, bidirectional=True)
        self.cell = nn.LSTMCell(32, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32), enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=self.batch_first, enforce_sorted=False)
        y, _ = self.rnn(packed)
        y, _ = pad_packed_sequence(y, batch_first=self.batch_first)
        time = 1 if self.batch_first else 0
        pad = torch.arange(y.shape[time])[None, :] >= lengths[:, None]
        a, _ = self.attn(y, y, y, key_padding_mask=pad)
        z = self.encoder(a, src_key_padding_mask=pad)
        h, c = self.cell(z.select(time, 0))
        return self.head(h + z.mean(time))


def _run(model, x, lengths):
    model.zero_grad()
    out = model(x, lengths)
    out.backward(torch.arange(out.numel(), dtype=out.dtype).view_as(out))
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("batch_first", [True, False])
def test_converted_model_gives_torch_outputs_and_gradients(batch_first):
    torch.manual_seed(0)
    model = UserModel(batch_first).double()
    x = torch.randn(3, 7, 8, dtype=torch.float64) if batch_first else torch.randn(7, 3, 8, dtype=torch.float64)
    lengths = torch.tensor([7, 4, 2])
    expected, expected_grads = _run(model, x, lengths)
    keys = list(model.state_dict())
    converted = fastseq.nn.convert(copy.deepcopy(model))
    kinds = {type(m) for m in converted.modules()}
    assert {fastseq.nn.LSTM, fastseq.nn.LSTMCell, fastseq.nn.MultiheadAttention, fastseq.nn.TransformerEncoder,
            fastseq.nn.TransformerEncoderLayer} <= kinds
    assert not kinds & {nn.LSTM, nn.LSTMCell, nn.MultiheadAttention, nn.TransformerEncoder}
    assert list(converted.state_dict()) == keys
    out, grads = _run(converted, x, lengths)
    torch.testing.assert_close(out, expected)
    for name, g in expected_grads.items():
        torch.testing.assert_close(grads[name], g, msg=name)
    reverted = fastseq.nn.revert(converted)
    assert {type(m) for m in reverted.modules()} >= {nn.LSTM, nn.LSTMCell, nn.MultiheadAttention,
                                                     nn.TransformerEncoder, nn.TransformerEncoderLayer}
    torch.testing.assert_close(_run(reverted, x, lengths)[0], expected)


def test_conversion_keeps_state_dict_mode_flags_hooks_and_dtype():
    model = UserModel(True).eval()
    model.rnn.weight_ih_l0.requires_grad_(False)
    seen = []
    model.attn.register_forward_hook(lambda m, i, o: seen.append(type(m)))
    state = copy.deepcopy(model.state_dict())
    fastseq.nn.convert(model)
    assert not model.training and not model.rnn.training and not model.encoder.layers[0].training
    assert not model.rnn.weight_ih_l0.requires_grad and model.rnn.weight_hh_l0.requires_grad
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    model(torch.randn(2, 5, 8), torch.tensor([5, 3]))
    assert seen == [fastseq.nn.MultiheadAttention]
    restored = UserModel(True)
    restored.load_state_dict(model.state_dict())  # a converted model's checkpoint loads into the original


def test_only_the_chosen_modules_and_never_a_subclass():
    class MyLSTM(nn.LSTM):
        pass

    model = nn.Sequential(nn.LSTM(4, 4), MyLSTM(4, 4), nn.MultiheadAttention(8, 2))
    fastseq.nn.convert(model, modules=["LSTM"])
    assert type(model[0]) is fastseq.nn.LSTM and type(model[1]) is MyLSTM and type(model[2]) is nn.MultiheadAttention
    with pytest.raises(ValueError, match="modules names torch.nn classes"):
        fastseq.nn.convert(model, modules=["GRU"])
    assert type(fastseq.nn.convert(nn.LSTM(3, 5))) is fastseq.nn.LSTM  # the model itself


def test_wrapped_models_are_converted_inside_with_the_wrappers_settings(tmp_path):
    import torch.distributed as dist

    dp = nn.DataParallel(nn.Sequential(nn.LSTM(3, 4)))
    assert fastseq.nn.convert(dp) is dp and type(dp.module[0]) is fastseq.nn.LSTM
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = UserModel(batch_first=True).double()
        theirs = nn.parallel.DistributedDataParallel(copy.deepcopy(model), broadcast_buffers=False,
                                                     find_unused_parameters=True, bucket_cap_mb=1)
        ours = fastseq.nn.convert(nn.parallel.DistributedDataParallel(model, broadcast_buffers=False,
                                                                      find_unused_parameters=True, bucket_cap_mb=1))
        assert isinstance(ours, nn.parallel.DistributedDataParallel) and type(ours.module.rnn) is fastseq.nn.LSTM
        assert ours.find_unused_parameters and not ours.broadcast_buffers and ours.bucket_bytes_cap == 1024 * 1024
        x, lengths = torch.randn(3, 6, 8, dtype=torch.float64), torch.tensor([6, 2, 5])
        for m in (theirs, ours):
            m.zero_grad()
            m(x, lengths).pow(2).sum().backward()
        for (name, a), (_, b) in zip(theirs.module.named_parameters(), ours.module.named_parameters()):
            torch.testing.assert_close(b.grad, a.grad, msg=name)
    finally:
        dist.destroy_process_group()


def test_the_converted_model_compiles():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16))
    model.attn = nn.MultiheadAttention(16, 2, batch_first=True)
    fastseq.nn.convert(model)
    x = torch.randn(2, 5, 16)
    eager, _ = model.attn(x, x, x, need_weights=False)
    compiled = torch.compile(model.attn, backend="eager", fullgraph=False)
    out, _ = compiled(x, x, x, need_weights=False)
    torch.testing.assert_close(out, eager)


def test_type_checks_hold_where_they_can():
    """MultiheadAttention and LSTMCell stay instances of torch's classes (code that checks types keeps
    working); LSTM does not, since Dynamo refuses to trace any torch.nn.LSTM."""
    model = UserModel(batch_first=True)
    fastseq.nn.convert(model)
    assert isinstance(model.attn, nn.MultiheadAttention) and isinstance(model.cell, nn.LSTMCell)
    assert type(model.attn) is fastseq.nn.MultiheadAttention and type(model.cell) is fastseq.nn.LSTMCell
    assert not isinstance(model.rnn, nn.LSTM)
    assert type(fastseq.nn.convert(model.attn)) is fastseq.nn.MultiheadAttention  # not converted twice
    x = torch.randn(2, 3, 32)
    eager, _ = model.attn(x, x, x, need_weights=False)
    compiled, _ = torch.compile(model.attn, backend="eager")(x, x, x, need_weights=False)
    torch.testing.assert_close(compiled, eager)
