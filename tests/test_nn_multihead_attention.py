"""fastseq.nn.MultiheadAttention against torch.nn.MultiheadAttention loaded with the same state_dict (the
independent oracle), outputs, weights and every gradient in float64: self and cross attention, kdim/vdim,
batch_first, unbatched, padding masks (bool, float, lengths), causal masks (bool, float, is_causal),
add_bias_kv, add_zero_attn, no bias; incremental decoding through a KVCache; the KVCache itself; errors."""
import pytest
import torch
import torch.nn.functional as F

from fastseq import backends
from fastseq import nn as fnn

from _util import backend_params, rel_err

E, HEADS = 16, 4
CONFIGS = [dict(), dict(batch_first=True), dict(kdim=12, vdim=20), dict(add_bias_kv=True, add_zero_attn=True),
           dict(bias=False, batch_first=True), dict(add_bias_kv=True)]


def _pair(dtype=torch.float64, **kwargs):
    ref = torch.nn.MultiheadAttention(E, HEADS, dtype=dtype, **kwargs)
    ours = fnn.MultiheadAttention(E, HEADS, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _seq(N, T, dim, batch_first, requires_grad=True):
    shape = (N, T, dim) if batch_first else (T, N, dim)
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def _compare(ref, ours, inputs, **kwargs):
    a, aw = ref(*inputs, **kwargs)
    b, bw = ours(*inputs, **kwargs)
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert (aw is None) == (bw is None)
    if aw is not None:
        torch.testing.assert_close(bw, aw, rtol=1e-10, atol=1e-10)
    leaves = [t for t in dict.fromkeys(inputs) if t.requires_grad]
    ga = torch.autograd.grad((a * torch.cos(a)).sum(), leaves + list(ref.parameters()))
    gb = torch.autograd.grad((b * torch.cos(b)).sum(), leaves + list(ours.parameters()))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-10)


def test_state_dict_keys_match_torch():
    for kwargs in CONFIGS:
        ref, ours = _pair(**kwargs)
        assert list(ours.state_dict()) == list(ref.state_dict())
        assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in ref.named_parameters()}


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
@pytest.mark.parametrize("call", ["padding", "no-weights", "per-head-weights", "lengths-as-mask"])
def test_cross_attention_matches_torch(kwargs, call):
    ref, ours = _pair(**kwargs)
    bf = kwargs.get("batch_first", False)
    N, L, S = 3, 5, 7
    q = _seq(N, L, E, bf)
    k, v = _seq(N, S, kwargs.get("kdim", E), bf), _seq(N, S, kwargs.get("vdim", E), bf)
    mask = torch.rand(N, S) < 0.3
    mask[:, 0] = False
    args = {"padding": dict(key_padding_mask=mask), "no-weights": dict(need_weights=False),
            "per-head-weights": dict(average_attn_weights=False, key_padding_mask=mask),
            "lengths-as-mask": dict(key_padding_mask=torch.arange(S)[None, :] >= torch.tensor([7, 3, 5])[:, None]),
            }[call]
    _compare(ref, ours, (q, k, v), **args)
    if call == "lengths-as-mask":  # the same padding given as lengths
        b, _ = ours(q, k, v, lengths=torch.tensor([7, 3, 5]))
        torch.testing.assert_close(b, ref(q, k, v, **args)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "is_causal", "float-3d"])
def test_causal_self_attention_matches_torch(mask_kind):
    ref, ours = _pair(batch_first=True)
    x = _seq(2, 9, E, True)
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)
    mask = {"bool": future, "is_causal": future,
            "float": torch.nn.Transformer.generate_square_subsequent_mask(9, dtype=torch.float64),
            "float-3d": torch.zeros(2 * HEADS, 9, 9, dtype=torch.float64).masked_fill(future, float("-inf"))}[mask_kind]
    a, aw = ref(x, x, x, attn_mask=mask, is_causal=mask_kind == "is_causal")
    b, bw = ours(x, x, x, attn_mask=mask, is_causal=mask_kind == "is_causal")
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(bw, aw, rtol=1e-10, atol=1e-10)
    _compare(ref, ours, (x, x, x), attn_mask=mask, need_weights=False)


def _visible_somewhere(mask: torch.Tensor) -> torch.Tensor:
    """A random mask with key 0 left visible to every query (torch gives NaN for a query that sees none)."""
    if mask.dtype == torch.bool:
        mask[..., 0] = False
    else:
        mask[..., 0] = mask[..., 0].clamp(min=-3.0)
    return mask


def _random_mask(shape, kind):
    if kind == "bool":
        return _visible_somewhere(torch.rand(shape) < 0.4)
    mask = torch.randn(shape, dtype=torch.float64) * 2
    return _visible_somewhere(mask.masked_fill(torch.rand(shape) < 0.3, float("-inf")))


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
@pytest.mark.parametrize("form", ["2d-bool", "2d-float", "3d-bool", "3d-float"])
@pytest.mark.parametrize("padding", [None, "bool", "float"])
def test_any_attn_mask_matches_torch(kwargs, form, padding):
    """Every attn_mask torch takes ((L, S) or (N·heads, L, S), bool or float) with each key padding mask,
    outputs, averaged and per-head weights and every gradient in float64."""
    ref, ours = _pair(**kwargs)
    bf = kwargs.get("batch_first", False)
    N, L, S = 3, 5, 7
    q = _seq(N, L, E, bf)
    k, v = _seq(N, S, kwargs.get("kdim", E), bf), _seq(N, S, kwargs.get("vdim", E), bf)
    dims, kind = form.split("-")
    mask = _random_mask((L, S) if dims == "2d" else (N * HEADS, L, S), kind)
    call = dict(attn_mask=mask)
    if padding:
        call["key_padding_mask"] = _random_mask((N, S), padding)
    _compare(ref, ours, (q, k, v), **call)
    _compare(ref, ours, (q, k, v), average_attn_weights=False, **call)
    _compare(ref, ours, (q, k, v), need_weights=False, **call)


def test_float_mask_gradient_matches_torch():
    """A float attn_mask that requires grad (a learned bias, ALiBi-like) gets torch's gradient."""
    ref, ours = _pair(batch_first=True)
    x = _seq(2, 6, E, True)
    bias = torch.randn(2 * HEADS, 6, 6, dtype=torch.float64, requires_grad=True)
    a, _ = ref(x, x, x, attn_mask=bias, need_weights=False)
    b, _ = ours(x, x, x, attn_mask=bias, need_weights=False)
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    ga = torch.autograd.grad((a * torch.cos(a)).sum(), [x, bias])
    gb = torch.autograd.grad((b * torch.cos(b)).sum(), [x, bias])
    for g, e in zip(gb, ga):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_mask_with_lengths_and_is_causal_hint():
    """A general mask combined with fastseq's lengths, and is_causal with its causal mask."""
    ref, ours = _pair(batch_first=True)
    x = _seq(3, 6, E, True)
    mask = _random_mask((6, 6), "float")
    pad = torch.arange(6)[None, :] >= torch.tensor([6, 4, 2])[:, None]
    expected, _ = ref(x, x, x, attn_mask=mask, key_padding_mask=pad)
    out, _ = ours(x, x, x, attn_mask=mask, lengths=[6, 4, 2])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    _compare(ref, ours, (x, x, x), attn_mask=causal, is_causal=True, key_padding_mask=pad)


def test_unbatched_and_float_padding_match_torch():
    ref, ours = _pair()
    q, k = _seq(1, 4, E, True)[0], _seq(1, 6, E, True)[0]
    _compare(ref, ours, (q, k, k), key_padding_mask=torch.tensor([False, False, True, False, True, False]))
    q, k = _seq(2, 4, E, False), _seq(2, 6, E, False)
    pad = torch.zeros(2, 6, dtype=torch.float64)
    pad[0, 4:] = float("-inf")
    _compare(ref, ours, (q, k, k), key_padding_mask=pad)


@pytest.mark.parametrize("device,backend", backend_params("attention"))
def test_low_precision_matches_torch(device, backend):
    """float32 modules (the fused backends on their device) against torch's float64 module."""
    ref, ours = _pair(batch_first=True)
    ours = ours.float().to(device)
    x = _seq(3, 17, E, True, requires_grad=False)
    mask = torch.rand(3, 17) < 0.2
    mask[:, 0] = False
    expected, _ = ref(x, x, x, key_padding_mask=mask, need_weights=False)
    with backends.use(backend):
        out, _ = ours(x.float().to(device), x.float().to(device), x.float().to(device),
                      key_padding_mask=mask.to(device), need_weights=False)
    assert rel_err(out, expected) < 2e-5


def test_incremental_decoding_equals_causal_self_attention():
    ref, ours = _pair(batch_first=True)
    x = _seq(2, 9, E, True, requires_grad=False)
    full, _ = ours(x, x, x, is_causal=True, need_weights=False)
    cache = fnn.KVCache(2, HEADS, E // HEADS, capacity=16, dtype=torch.float64)
    steps = [ours(x[:, :4], x[:, :4], x[:, :4], kv_cache=cache, need_weights=False)[0]]  # the prompt at once
    for t in range(4, 9):
        steps.append(ours(x[:, t:t + 1], x[:, t:t + 1], x[:, t:t + 1], kv_cache=cache, need_weights=False)[0])
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    assert cache.max_length == 9 and cache.lengths.tolist() == [9, 9]


def test_kv_cache_ragged_prompts_and_beam_reordering():
    B, H, D = 3, 2, 4
    cache = fnn.KVCache(B, H, D, capacity=10, dtype=torch.float64)
    prompt_k, prompt_v = torch.randn(B, H, 5, D, dtype=torch.float64), torch.randn(B, H, 5, D, dtype=torch.float64)
    cache.append(prompt_k, prompt_v, counts=[5, 2, 3])
    assert cache.lengths.tolist() == [5, 2, 3] and not cache.uniform
    step_k, step_v = torch.randn(B, H, 1, D, dtype=torch.float64), torch.randn(B, H, 1, D, dtype=torch.float64)
    cache.append(step_k, step_v)
    assert cache.lengths.tolist() == [6, 3, 4]
    for b, n in enumerate([5, 2, 3]):  # each row's new position follows its own prompt
        torch.testing.assert_close(cache.keys()[b, :, :n], prompt_k[b, :, :n])
        torch.testing.assert_close(cache.keys()[b, :, n], step_k[b, :, 0])
        torch.testing.assert_close(cache.values()[b, :, n], step_v[b, :, 0])
    before = cache.keys().clone()
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.lengths.tolist() == [4, 4, 6]
    torch.testing.assert_close(cache.keys(), before[[2, 2, 0]])
    with pytest.raises(ValueError, match="exceed the capacity 10"):
        cache.append(torch.randn(B, H, 5, D, dtype=torch.float64), torch.randn(B, H, 5, D, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"k must have shape \(B=3, Hkv=2, T, 4\)"):
        cache.append(torch.randn(B, 1, 1, D, dtype=torch.float64), step_v)
    with pytest.raises(ValueError, match=r"counts must be 3 integers in \[0, T=1\]"):
        cache.append(step_k, step_v, counts=[1, 2, 0])


def test_kv_cache_reorder_moves_the_used_positions_within_its_buffers():
    cache = fnn.KVCache(3, kv_heads=2, head_dim=4, capacity=50, dtype=torch.float64)
    cache.append(torch.randn(3, 2, 5, 4, dtype=torch.float64), torch.randn(3, 2, 5, 4, dtype=torch.float64),
                 counts=[5, 2, 4])
    keys, values, lengths = cache.keys().clone(), cache.values().clone(), cache.lengths.clone()
    buffers = (cache.k.data_ptr(), cache.v.data_ptr())
    index = torch.tensor([2, 0, 0])
    cache.reorder(index)
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == buffers  # in place: no new buffer per beam step
    torch.testing.assert_close(cache.keys(), keys[index], rtol=0, atol=0)
    torch.testing.assert_close(cache.values(), values[index], rtol=0, atol=0)
    assert torch.equal(cache.lengths, lengths[index])
    cache.reorder(torch.tensor([0, 1, 1, 2, 2]))  # a new batch size: new buffers
    assert cache.batch == 5 and torch.equal(cache.keys()[3], keys[0])


def test_decoding_with_ragged_cache_equals_padded_attention():
    """One decoder step per row over a ragged cache equals full attention of that query over its own row."""
    _, ours = _pair(batch_first=True)
    ours.eval()
    B, T = 3, 6
    x = _seq(B, T, E, True, requires_grad=False)
    counts = [6, 2, 4]
    cache = fnn.KVCache(B, HEADS, E // HEADS, capacity=8, dtype=torch.float64)
    _, wk, wv = ours.in_proj_weight.chunk(3)
    _, bk, bv = ours.in_proj_bias.chunk(3)
    with torch.no_grad():  # the prompts' keys and values, as the module projects them, in heads
        k, v = (F.linear(x, w, b).view(B, T, HEADS, E // HEADS).transpose(1, 2) for w, b in ((wk, bk), (wv, bv)))
    cache.append(k, v, counts=counts)
    new = _seq(B, 1, E, True, requires_grad=False)
    out, weights = ours(new, new, new, kv_cache=cache)
    for b, n in enumerate(counts):
        seq = torch.cat([x[b:b + 1, :n], new[b:b + 1]], 1)
        expected, _ = ours(seq[:, -1:], seq, seq, need_weights=False)
        torch.testing.assert_close(out[b:b + 1], expected, rtol=1e-10, atol=1e-10)
        assert torch.all(weights[b, 0, n + 1:] == 0) and abs(weights[b, 0].sum().item() - 1) < 1e-12


def test_inference_takes_torchs_fused_attention_where_torch_does(monkeypatch):
    """Batch-first self-attention in inference without weights: torch's fused C++ attention with nothing
    padded (torch's answer, one call), the chooser's pick of the two under padding, and fastseq's composition
    where a row pads every key (torch's fused path gives NaN there, fastseq zeros), with weights, gradients,
    training, cross-attention, an odd head count, a hook on out_proj, or sequence-first inputs."""
    from fastseq.ops import tuning

    calls = []
    native = torch._native_multi_head_attention
    monkeypatch.setattr(torch, "_native_multi_head_attention", lambda *a: calls.append(1) or native(*a))
    torch.manual_seed(3)
    ref = torch.nn.MultiheadAttention(E, 2, batch_first=True).eval()
    ours = fnn.MultiheadAttention(E, 2, batch_first=True).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 7, E)
    nothing = torch.zeros(3, 7, dtype=torch.bool)
    padded = nothing.clone()
    padded[1, 4:] = True

    def run(module, mask, **kw):
        with torch.no_grad():
            return module(x, x, x, key_padding_mask=mask, need_weights=False, **kw)[0]

    def compare(mask, expect_native, module=ours):
        calls.clear()
        b = run(module, mask)
        used = len(calls)
        torch.testing.assert_close(b, run(ref, mask), rtol=1e-5, atol=1e-5)
        assert used == int(expect_native), mask

    compare(None, True)
    compare(nothing, True)
    for choice in ("fused", "composed"):  # under real padding the chooser picks (its measurement aside here)
        with monkeypatch.context() as m:
            m.setattr(tuning, "pick", lambda family, candidates, call: choice)
            compare(padded, choice == "fused")
            everything = padded.clone()
            everything[2] = True
            calls.clear()
            out = run(ours, everything)
            assert not calls and torch.isfinite(out).all()
            torch.testing.assert_close(out[2], ours.out_proj.bias.expand(7, E))  # zeros attended, projected
    calls.clear()
    with torch.no_grad():
        ours(x, x, x, need_weights=True)
        ours(x, x, x.clone(), need_weights=False)
        ours(x, x, x, need_weights=False, lengths=[7, 5, 7])
    ours(x.requires_grad_(), x, x, need_weights=False)[0].sum().backward()
    x.requires_grad_(False)
    ours.train()
    run(ours, None)
    ours.eval()
    handle = ours.out_proj.register_forward_hook(lambda *a: None)
    run(ours, None)
    handle.remove()
    odd = fnn.MultiheadAttention(E, 1, batch_first=True).eval()
    run(odd, None)
    first = fnn.MultiheadAttention(E, 2).eval()
    with torch.no_grad():
        first(x, x, x, need_weights=False)
    assert not calls


def test_dropout_applies_in_training_only():
    _, ours = _pair(dropout=0.5, batch_first=True)
    x = _seq(2, 8, E, True, requires_grad=False)
    ours.train()
    a, _ = ours(x, x, x, need_weights=False)
    b, _ = ours(x, x, x, need_weights=False)
    assert not torch.allclose(a, b)
    ours.eval()
    torch.testing.assert_close(ours(x, x, x, need_weights=False)[0], ours(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("build,call,message", [
    (dict(embed_dim=10, num_heads=3), None, r"embed_dim \(10\) must be divisible by num_heads \(3\)"),
    (dict(embed_dim=16, num_heads=4, dropout=1.0), None, r"dropout must lie in \[0, 1\)"),
    (None, dict(attn_mask=torch.zeros(5, 5, dtype=torch.int64)), r"attn_mask must be a bool .* or float"),
    (None, dict(is_causal=True, key=(7,)), r"is_causal without an attn_mask needs as many queries as keys"),
    (None, dict(attn_mask=torch.ones(5, 5, dtype=torch.bool), key=(7,)),
     r"attn_mask must have shape \(L, S\) = \(5, 7\)"),
    (None, dict(attn_mask=torch.ones(4, 5, 5, dtype=torch.bool)), r"attn_mask must have shape \(L, S\)"),
    (None, dict(key_padding_mask=torch.zeros(2, 5, dtype=torch.int32)), r"key_padding_mask must be bool"),
    (None, dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)), r"key_padding_mask must have shape \(N, S\)"),
    (None, dict(query_dim=8), r"query must have 16 features"),
])
def test_bad_input_names_the_argument(build, call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        module = fnn.MultiheadAttention(**(build or dict(embed_dim=E, num_heads=HEADS)))
        call = dict(call)
        S = call.pop("key", (5,))[0]
        q = torch.randn(5, 2, call.pop("query_dim", E))
        k = torch.randn(S, 2, E)
        module(q, k, k, **call)
