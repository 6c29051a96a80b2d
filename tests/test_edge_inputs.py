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


# ---------------------------------------------------- the second pass: each a clear error or torch's answer

def _tiny_lm():
    from fastseq.models import CausalLM, CausalLMConfig
    return CausalLM(CausalLMConfig(19, 16, 4, 2, dropout=0.0, max_len=40, pad_id=0, eos_id=2)).eval()


@pytest.mark.parametrize("option,value", [("length_penalty", float("inf")), ("length_penalty", float("nan")),
                                          ("temperature", float("inf"))])
def test_generation_options_must_be_finite(option, value):
    from fastseq.generation import generate
    with pytest.raises(ValueError, match=f"{option} must be"):
        generate(_tiny_lm(), torch.tensor([[3, 4]]), max_new_tokens=2, method="beam", **{option: value})


@pytest.mark.parametrize("value", ["sometimes", 1, 0.0, None])
def test_early_stopping_is_true_false_or_never(value):
    from fastseq.generation import generate
    with pytest.raises(ValueError, match="early_stopping must be True, False or 'never'"):
        generate(_tiny_lm(), torch.tensor([[3, 4]]), max_new_tokens=2, method="beam", early_stopping=value)


def test_generation_refuses_meta_float_and_misplaced_prompts():
    from fastseq.generation import generate
    model = _tiny_lm()
    with pytest.raises(ValueError, match="meta device"):
        generate(model, torch.empty(1, 3, dtype=torch.long, device="meta"), max_new_tokens=2)
    with pytest.raises(TypeError, match="integer token ids"):
        generate(model, torch.tensor([[3.0, 4.0]]), max_new_tokens=2)
    with pytest.raises(TypeError, match="lengths must be integers"):
        generate(model, torch.tensor([[3, 4]]), torch.tensor([1.0]), max_new_tokens=2)


def test_attention_scale_must_be_finite():
    q = torch.randn(1, 2, 3, 4)
    for scale in (float("inf"), float("nan"), 0.0, True):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            ops.attention(q, q, q, scale=scale)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_a_float_mask_hiding_a_whole_row_gives_zeros_and_torch_s_gradients(backend):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 4, dtype=torch.float64, requires_grad=True) for n in (3, 5, 5))
    mask = torch.randn(3, 5, dtype=torch.float64)
    mask[1] = float("-inf")
    mask.requires_grad_()
    grads = {}
    for name in ("torch", backend):
        for t in (q, k, v, mask):
            t.grad = None
        with backends.use(name):
            out = ops.attention(q, k, v, attn_mask=mask)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[name] = [out.detach()] + [t.grad.clone() for t in (q, k, v, mask)]
    assert grads[backend][0][:, :, 1].abs().max() == 0
    for ours, theirs in zip(grads[backend], grads["torch"]):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, theirs)


def test_lstm_cell_hidden_state_must_be_a_pair():
    cell = fastseq.nn.LSTMCell(4, 3)
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\) of two tensors, got tuple of 1"):
        cell(torch.randn(2, 4), (torch.randn(2, 3),))


def test_kv_cache_sizes_are_ints_not_bools():
    with pytest.raises(ValueError, match="batch must be a positive int, got True"):
        fastseq.nn.KVCache(batch=True, kv_heads=1, head_dim=4, capacity=3)


def test_a_static_cache_appended_past_its_capacity_names_it():
    cache = fastseq.nn.KVCache(2, 1, 4, 2)
    cache.make_static()
    for _ in range(2):
        cache.append(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4))
    with pytest.raises(ValueError, match="already holds its capacity of 2 positions"):
        cache.append(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4))


def test_mha_with_a_cache_checks_the_causal_mask_it_is_told_of():
    mha = fastseq.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 3, 8)
    causal = torch.ones(3, 3, dtype=torch.bool).triu(1)
    with torch.no_grad():
        out, _ = mha(x, x, x, kv_cache=fastseq.nn.KVCache(1, 2, 4, 8), is_causal=True, attn_mask=causal)
        expected, _ = mha(x, x, x, kv_cache=fastseq.nn.KVCache(1, 2, 4, 8))
        torch.testing.assert_close(out, expected)
        with pytest.raises(ValueError, match="this one is not"):
            mha(x, x, x, kv_cache=fastseq.nn.KVCache(1, 2, 4, 8), is_causal=True,
                attn_mask=torch.zeros(3, 3, dtype=torch.bool))


@pytest.mark.parametrize("ids", [[-1], [100], [3, 50]])
def test_decoding_an_id_outside_the_vocabulary_names_it(ids):
    from fastseq.data.tokenizers import CharTokenizer
    tok = CharTokenizer.fit(["abc"])
    with pytest.raises(ValueError, match=f"id {[i for i in ids if not 0 <= i < tok.vocab_size][0]} is outside"):
        tok.decode(ids)


def test_damaged_or_incomplete_tokenizer_files_are_refused(tmp_path):
    import json

    from fastseq.data.tokenizers import CharTokenizer, load_tokenizer
    tok = CharTokenizer.fit(["abcdef"])
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert load_tokenizer(path).decode(tok.encode("fed")) == "fed"
    damaged = path.read_text().replace('"a"', '"z"')  # the same size, another meaning
    assert len(damaged) == len(path.read_text())
    path.write_text(damaged)
    with pytest.raises(ValueError, match="damaged"):
        load_tokenizer(path)
    path.write_text(json.dumps({"format": "fastseq-tokenizer/1", "kind": "char"}))
    with pytest.raises(ValueError, match="needs 'chars'"):
        load_tokenizer(path)


def test_token_budget_batches_of_nothing_is_no_batch():
    from fastseq.data.batching import token_budget_batches
    assert token_budget_batches([], 100) == []


def test_a_malformed_choice_in_the_cache_file_is_remeasured_not_fatal(tmp_path, monkeypatch):
    import json

    from fastseq import diagnostics
    from fastseq.ops import tuning
    path = tmp_path / "choices.json"
    path.write_text(json.dumps({"versions": tuning._versions(), "choices": {
        "bad": {"backend": "torch", "times_ms": 3, "tuning_s": 0.1},
        "good": {"backend": "torch", "times_ms": {"torch": 1.0}, "tuning_s": 0.1}}}))
    monkeypatch.setenv("FASTSEQ_CACHE", str(path))
    tuning.forget()
    try:
        with pytest.warns(RuntimeWarning, match="the choice for bad is malformed"):
            assert set(tuning.choices()) == {"good"}
        diagnostics.info()
    finally:
        tuning.forget()


def test_cli_counts_must_be_positive():
    from test_cli import fastseq as run_cli
    out = run_cli("tune", "--config", "configs/char_transformer_shakespeare.yaml", "--batches", "-3")
    assert out.returncode == 2 and "expected a positive integer, got -3" in out.stderr, out.stderr
