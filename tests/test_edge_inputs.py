"""Edge inputs get torch's answer or a clear error, on every path: lengths must be integers in range
(never truncated), a mask is served or refused (never ignored), an empty batch gives empty outputs, a
zero head dim and an out-of-range row index name the argument, the class and the method."""
import pytest
import torch

import fastseq
from fastseq import backends, ops

from _util import backend_params

FLOAT_LENGTHS = [2.7, 5.0, 3.9]


def _lstm_args(B, T=5, I=4, H=6):
    return torch.randn(T, B, I), torch.zeros(B, H), torch.zeros(B, H), torch.randn(4 * H, I), torch.randn(4 * H, H)


@pytest.mark.parametrize("lengths", [FLOAT_LENGTHS, torch.tensor(FLOAT_LENGTHS), [True, False, True]])
def test_float_or_bool_lengths_are_refused_not_truncated(lengths):
    x = torch.randn(3, 5, 4)
    with pytest.raises(TypeError, match="lengths must be"):
        ops.lstm_layer(*_lstm_args(3), lengths=lengths)
    with pytest.raises(TypeError, match="lengths must be"):
        fastseq.nn.LSTM(4, 6, batch_first=True)(x, lengths=lengths)
    mha = fastseq.nn.MultiheadAttention(8, 2, add_zero_attn=True, batch_first=True)
    q = torch.randn(3, 2, 8)
    with pytest.raises(TypeError, match="lengths must be"):
        mha(q, torch.randn(3, 5, 8), torch.randn(3, 5, 8), lengths=lengths)


@pytest.mark.parametrize("option", ["add_zero_attn", "add_bias_kv"])
@pytest.mark.parametrize("lengths,message", [([2, -1, 3], r"lengths must lie in \[0, Tk=5\]"),
                                             ([2, 6, 3], r"lengths must lie in \[0, Tk=5\]"),
                                             ([2, 3], r"lengths must have shape \(B,\) = \(3,\)")])
def test_extra_keys_check_lengths(option, lengths, message):
    mha = fastseq.nn.MultiheadAttention(8, 2, batch_first=True, **{option: True})
    with pytest.raises(ValueError, match=message):
        mha(torch.randn(3, 2, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8), lengths=lengths)


def test_a_kv_cache_refuses_an_attn_mask_it_cannot_serve():
    mha = fastseq.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    cache = fastseq.nn.KVCache(2, kv_heads=2, head_dim=4, capacity=16)
    x = torch.randn(2, 3, 8)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="with a kv_cache the attention is causal .* an attn_mask is not served"):
        mha(x, x, x, attn_mask=mask, kv_cache=cache)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(3)
    out, _ = mha(x, x, x, attn_mask=causal, is_causal=True, kv_cache=cache, need_weights=False)
    expected, _ = mha(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("device,backend", backend_params("lstm"))
def test_an_empty_batch_gives_empty_outputs(device, backend):
    args = [t.to(device).requires_grad_() for t in _lstm_args(0)]
    with backends.use(backend):
        y, h, c = ops.lstm_layer(*args, lengths=[])
        (y.sum() + h.sum() + c.sum()).backward()
    assert y.shape == (5, 0, 6) and h.shape == (0, 6) and args[3].grad.abs().sum() == 0
    out, (h_n, c_n) = fastseq.nn.LSTM(4, 6)(torch.randn(5, 0, 4))
    assert out.shape == (5, 0, 6) and h_n.shape == (1, 0, 6)


def test_a_zero_head_dim_is_refused():
    with pytest.raises(ValueError, match="attention: the head dims must be >= 1, got D = 0"):
        ops.attention(torch.randn(1, 2, 3, 0), torch.randn(1, 2, 3, 0), torch.randn(1, 2, 3, 4))


def test_out_of_range_rows_name_the_class_and_method():
    cache = fastseq.nn.KVCache(2, kv_heads=1, head_dim=4, capacity=8)
    with pytest.raises(IndexError, match=r"KVCache.reorder: index must lie in \[0, 2\)"):
        cache.reorder(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="KVCache.reorder: index must be a 1-D int32 or int64 tensor"):
        cache.reorder(torch.tensor([0.0, 1.0]))
    attention = fastseq.nn.AdditiveAttention(4, 5, 6)
    keys = attention.precompute_keys(torch.randn(2, 3, 5))
    with pytest.raises(IndexError, match=r"PrecomputedKeys.index_select: index must lie in \[0, 2\)"):
        keys.index_select(torch.tensor([-1, 0]))
