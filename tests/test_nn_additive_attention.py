"""fastseq.nn.AdditiveAttention against the same module written with torch.nn layers, float64; the
decoder path (precompute_keys, one step at a time, reordering rows for beam search); bad input."""
import pytest
import torch
from torch import nn

from fastseq import backends
from fastseq.nn import AdditiveAttention, PrecomputedKeys


def _torch_form(module, query, keys, values, key_padding_mask):
    """The module's math spelled out with its own torch.nn.Linear layers and autograd."""
    scores = torch.tanh(module.query_proj(query).unsqueeze(2) + module.key_proj(keys).unsqueeze(1)) @ module.v
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, weights


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("value_dim", [None, 11])
def test_matches_torch_form_with_gradients(bias, value_dim):
    B, Tq, Tk, Dq, Dk, A = 3, 5, 8, 7, 6, 9
    module = AdditiveAttention(Dq, Dk, A, value_dim=value_dim, bias=bias, dtype=torch.float64)
    query = torch.randn(B, Tq, Dq, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(B, Tk, Dk, dtype=torch.float64, requires_grad=True)
    values = None if value_dim is None else torch.randn(B, Tk, value_dim, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(B, Tk) < 0.3
    mask[:, 0] = False
    context, weights = module(query, keys, values, key_padding_mask=mask, need_weights=True)
    expected, expected_weights = _torch_form(module, query, keys, keys if values is None else values, mask)
    torch.testing.assert_close(context, expected)
    torch.testing.assert_close(weights, expected_weights)
    grad = torch.randn_like(context)
    inputs = [query, keys] + ([] if values is None else [values])
    params = list(module.parameters())
    got = torch.autograd.grad((context * grad).sum(), inputs + params)
    want = torch.autograd.grad((expected * grad).sum(), inputs + params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_parameters_and_state_dict_keys():
    module = AdditiveAttention(4, 5, 6, value_dim=3)
    assert sorted(module.state_dict()) == ["key_proj.weight", "query_proj.bias", "query_proj.weight", "v"]
    assert module.query_proj.weight.shape == (6, 4) and module.key_proj.weight.shape == (6, 5)
    assert module.v.shape == (6,) and module.key_proj.bias is None
    assert "attention_dim=6" in repr(module)


def test_decoder_steps_equal_one_call_over_all_queries():
    B, Tq, Tk, D = 4, 6, 9, 8
    module = AdditiveAttention(D, D, 10, dtype=torch.float64)
    queries = torch.randn(B, Tq, D, dtype=torch.float64)
    keys = torch.randn(B, Tk, D, dtype=torch.float64)
    lengths = torch.tensor([9, 2, 5, 7])
    full, _ = module(queries, keys, lengths=lengths)
    cache = module.precompute_keys(keys, lengths=lengths)
    with torch.no_grad():
        steps = torch.stack([module(queries[:, t], cache)[0] for t in range(Tq)], dim=1)
    torch.testing.assert_close(steps, full.detach())
    step_with_weights, weights = module(queries[:, 0], cache, need_weights=True)
    assert weights.shape == (B, Tk)
    assert torch.equal(weights[1, 2:], torch.zeros(Tk - 2, dtype=torch.float64))
    torch.testing.assert_close(step_with_weights, full[:, 0])


def test_step_with_gradients_matches_torch_form():
    B, Tk, D = 3, 7, 5
    module = AdditiveAttention(D, D, 6, dtype=torch.float64)
    query = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(B, Tk, D, dtype=torch.float64)
    context, _ = module(query, module.precompute_keys(keys))
    expected, _ = _torch_form(module, query[:, None], keys, keys, None)
    torch.testing.assert_close(context, expected[:, 0])
    g1 = torch.autograd.grad(context.sum(), query)
    g2 = torch.autograd.grad(expected.sum(), query)
    torch.testing.assert_close(g1, g2)


def test_precomputed_keys_reorder_rows():
    B, Tk, D = 3, 5, 4
    module = AdditiveAttention(D, D, 6, dtype=torch.float64)
    keys = torch.randn(B, Tk, D, dtype=torch.float64)
    mask = torch.rand(B, Tk) < 0.3
    mask[:, 0] = False
    cache = module.precompute_keys(keys, key_padding_mask=mask)
    index = torch.tensor([2, 2, 0, 1])
    query = torch.randn(4, D, dtype=torch.float64)
    with torch.no_grad():
        reordered, _ = module(query, cache.index_select(index))
        direct, _ = module(query, keys[index], key_padding_mask=mask[index])
    torch.testing.assert_close(reordered, direct)
    assert isinstance(cache.index_select(index), PrecomputedKeys)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_backends_agree_through_the_module(backend):
    if not backends.availability(backend, "cpu")[0]:
        pytest.skip(backends.availability(backend, "cpu")[1])
    module = AdditiveAttention(6, 5, 12)
    query, keys = torch.randn(2, 9, 6), torch.randn(2, 13, 5)
    expected, _ = _torch_form(module, query, keys, keys, None)
    with backends.use(backend):
        context, _ = module(query, keys)
    torch.testing.assert_close(context, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("call,message", [
    (lambda m: m(torch.randn(2, 3, 5), torch.randn(2, 4, 5)), r"query must have shape \(B, Tq, query_dim\)"),
    (lambda m: m(torch.randn(2, 3, 4), torch.randn(2, 4, 3)), r"keys must have shape \(B, Tk, key_dim\)"),
    (lambda m: m(torch.randn(2, 3, 4), torch.randn(2, 4, 5), torch.randn(2, 4, 9)), r"values must have shape"),
    (lambda m: m(torch.randn(2, 4), m.precompute_keys(torch.randn(2, 4, 5)), key_padding_mask=torch.zeros(2, 4)),
     r"give values, key_padding_mask and lengths to precompute_keys"),
    (lambda m: AdditiveAttention(4, 5, 0), r"attention_dim must be a positive int"),
])
def test_bad_input(call, message):
    module = AdditiveAttention(4, 5, 6)
    with pytest.raises(ValueError, match=message):
        call(module)


def test_is_an_nn_module_that_moves_and_casts():
    module = AdditiveAttention(4, 5, 6).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in module.parameters())
    assert isinstance(module.query_proj, nn.Linear)
