"""fastseq.nn.TransformerEncoderLayer / TransformerDecoderLayer and the TransformerEncoder / TransformerDecoder /
Transformer containers against torch's, loaded with the same state_dict (float64: outputs and every
gradient), post-norm and pre-norm, relu and gelu, every mask (causal, general bool and float, key padding,
memory masks); cross-attention to a PrecomputedKV memory, with beams folded onto it; errors."""
import pytest
import torch

from fastseq import nn as fnn
from fastseq.ops import tuning

D, HEADS, FF = 16, 4, 24


def _pair(kind, **kwargs):
    ref_cls, our_cls = ((torch.nn.TransformerEncoderLayer, fnn.TransformerEncoderLayer) if kind == "encoder"
                        else (torch.nn.TransformerDecoderLayer, fnn.TransformerDecoderLayer))
    ref = ref_cls(D, HEADS, FF, dtype=torch.float64, **kwargs)
    ours = our_cls(D, HEADS, FF, dtype=torch.float64, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def _grads(out, module, inputs):
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * w).sum(), [*inputs, *module.parameters()])


def _check(a, b, ref, ours, inputs, mask=None):
    if mask is not None:  # compare real positions only
        a, b = a[~mask], b[~mask]
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    for x, y in zip(_grads(a, ref, inputs), _grads(b, ours, inputs)):
        torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-10)


CONFIGS = [dict(), dict(norm_first=True), dict(activation="gelu", batch_first=True), dict(bias=False, norm_first=True)]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
@pytest.mark.parametrize("mask", ["padding", "causal", "lengths"])
def test_encoder_layer_matches_torch(kwargs, mask):
    ref, ours = _pair("encoder", dropout=0.0, **kwargs)
    B, S = 3, 7
    bf = kwargs.get("batch_first", False)
    x = torch.randn(*((B, S, D) if bf else (S, B, D)), dtype=torch.float64, requires_grad=True)
    pad = torch.arange(S)[None, :] >= torch.tensor([7, 4, 2])[:, None]
    if mask == "causal":
        causal = torch.nn.Transformer.generate_square_subsequent_mask(S, dtype=torch.float64)
        a, b = ref(x, src_mask=causal, is_causal=True), ours(x, src_mask=causal, is_causal=True)
        _check(a, b, ref, ours, [x])
        return
    a = ref(x, src_key_padding_mask=pad)
    b = ours(x, lengths=torch.tensor([7, 4, 2])) if mask == "lengths" else ours(x, src_key_padding_mask=pad)
    real = pad if bf else pad.T
    _check(a, b, ref, ours, [x], mask=real)


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_decoder_layer_matches_torch(kwargs):
    ref, ours = _pair("decoder", dropout=0.0, **kwargs)
    B, T, S = 3, 5, 6
    bf = kwargs.get("batch_first", False)
    tgt = torch.randn(*((B, T, D) if bf else (T, B, D)), dtype=torch.float64, requires_grad=True)
    memory = torch.randn(*((B, S, D) if bf else (S, B, D)), dtype=torch.float64, requires_grad=True)
    pad = torch.arange(S)[None, :] >= torch.tensor([6, 3, 1])[:, None]
    causal = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
    args = dict(tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=pad)
    _check(ref(tgt, memory, **args), ours(tgt, memory, **args), ref, ours, [tgt, memory])
    b = ours(tgt, memory, tgt_mask=causal, tgt_is_causal=True, memory_lengths=[6, 3, 1])
    _check(ref(tgt, memory, **args), b, ref, ours, [tgt, memory])


def _mask(shape, kind):
    """A random bool (True = hidden) or float mask that leaves key 0 visible to every query."""
    if kind == "bool":
        mask = torch.rand(shape) < 0.4
        mask[..., 0] = False
        return mask
    mask = (torch.randn(shape, dtype=torch.float64) * 2).masked_fill(torch.rand(shape) < 0.3, float("-inf"))
    mask[..., 0] = 0.0
    return mask


def _seq(B, T, batch_first):
    return torch.randn(*((B, T, D) if batch_first else (T, B, D)), dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_decoder_layer_memory_mask_matches_torch(kind, batch_first):
    ref, ours = _pair("decoder", dropout=0.0, batch_first=batch_first)
    B, T, S = 2, 4, 6
    tgt, memory = _seq(B, T, batch_first), _seq(B, S, batch_first)
    args = dict(tgt_mask=_mask((T, T), kind), memory_mask=_mask((B * HEADS, T, S), kind),
                memory_key_padding_mask=_mask((B, S), kind))
    _check(ref(tgt, memory, **args), ours(tgt, memory, **args), ref, ours, [tgt, memory])


def _stacks(kind, batch_first, norm):
    layer = (torch.nn.TransformerEncoderLayer if kind == "encoder" else torch.nn.TransformerDecoderLayer)(
        D, HEADS, FF, dropout=0.0, batch_first=batch_first, dtype=torch.float64)
    ours_layer = (fnn.TransformerEncoderLayer if kind == "encoder" else fnn.TransformerDecoderLayer)(
        D, HEADS, FF, dropout=0.0, batch_first=batch_first, dtype=torch.float64)
    final = (lambda: torch.nn.LayerNorm(D, dtype=torch.float64)) if norm else (lambda: None)
    ref_cls, our_cls = ((torch.nn.TransformerEncoder, fnn.TransformerEncoder) if kind == "encoder"
                        else (torch.nn.TransformerDecoder, fnn.TransformerDecoder))
    extra = dict(enable_nested_tensor=False) if kind == "encoder" else {}
    ref, ours = ref_cls(layer, 3, final(), **extra), our_cls(ours_layer, 3, final(), **extra)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


@pytest.mark.parametrize("batch_first,norm", [(False, True), (True, False)])
@pytest.mark.parametrize("mask", ["causal-detected", "causal-hint", "bool", "float"])
def test_encoder_stack_matches_torch(batch_first, norm, mask):
    ref, ours = _stacks("encoder", batch_first, norm)
    B, S = 3, 6
    src = _seq(B, S, batch_first)
    causal = fnn.Transformer.generate_square_subsequent_mask(S, dtype=torch.float64)
    torch.testing.assert_close(causal, torch.nn.Transformer.generate_square_subsequent_mask(S, dtype=torch.float64))
    args = {"causal-detected": dict(mask=causal), "causal-hint": dict(mask=causal, is_causal=True),
            "bool": dict(mask=_mask((S, S), "bool")), "float": dict(mask=_mask((B * HEADS, S, S), "float"))}[mask]
    pad = torch.arange(S)[None, :] >= torch.tensor([6, 4, 2])[:, None]
    _check(ref(src, src_key_padding_mask=pad, **args), ours(src, src_key_padding_mask=pad, **args), ref, ours, [src])


@pytest.mark.parametrize("batch_first", [False, True])
def test_decoder_stack_matches_torch(batch_first):
    ref, ours = _stacks("decoder", batch_first, True)
    B, T, S = 2, 5, 4
    tgt, memory = _seq(B, T, batch_first), _seq(B, S, batch_first)
    args = dict(tgt_mask=fnn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64),
                memory_mask=_mask((T, S), "bool"), tgt_key_padding_mask=_mask((B, T), "float"),
                memory_key_padding_mask=_mask((B, S), "bool"))
    _check(ref(tgt, memory, **args), ours(tgt, memory, **args), ref, ours, [tgt, memory])


@pytest.mark.parametrize("batch_first,norm_first", [(False, False), (True, True)])
def test_transformer_matches_torch(batch_first, norm_first):
    kwargs = dict(d_model=D, nhead=HEADS, num_encoder_layers=2, num_decoder_layers=3, dim_feedforward=FF,
                  dropout=0.0, batch_first=batch_first, norm_first=norm_first, dtype=torch.float64)
    torch.manual_seed(0)
    ref = torch.nn.Transformer(**kwargs).eval()
    torch.manual_seed(0)
    ours = fnn.Transformer(**kwargs).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (name, a), b in zip(ref.state_dict().items(), ours.state_dict().values()):  # the same initialisation
        assert a.shape == b.shape and (a.std() - b.std()).abs() < 0.5 * a.std() + 1e-12, name
    ours.load_state_dict(ref.state_dict())
    B, S, T = 3, 6, 5
    src, tgt = _seq(B, S, batch_first), _seq(B, T, batch_first)
    args = dict(src_mask=_mask((S, S), "float"), tgt_mask=ref.generate_square_subsequent_mask(T, dtype=torch.float64),
                memory_mask=_mask((B * HEADS, T, S), "bool"),
                src_key_padding_mask=torch.arange(S)[None, :] >= torch.tensor([6, 3, 5])[:, None],
                memory_key_padding_mask=torch.arange(S)[None, :] >= torch.tensor([6, 3, 5])[:, None])
    _check(ref(src, tgt, **args), ours(src, tgt, **args), ref, ours, [src, tgt])


def test_transformer_takes_custom_stacks_and_checks_its_inputs():
    encoder = fnn.TransformerEncoder(fnn.TransformerEncoderLayer(D, HEADS, FF), 1)
    decoder = fnn.TransformerDecoder(fnn.TransformerDecoderLayer(D, HEADS, FF), 2)
    model = fnn.Transformer(D, HEADS, custom_encoder=encoder, custom_decoder=decoder)
    assert model.encoder is encoder and model.decoder is decoder and len(model.decoder.layers) == 2
    assert model(torch.randn(4, 2, D), torch.randn(3, 2, D)).shape == (3, 2, D)
    with pytest.raises(RuntimeError, match="the batch number of src and tgt must be equal"):
        model(torch.randn(4, 2, D), torch.randn(3, 1, D))
    with pytest.raises(RuntimeError, match="the feature number of src and tgt must be equal to d_model"):
        model(torch.randn(4, 2, D + 1), torch.randn(3, 2, D + 1))
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        fnn.TransformerEncoder(fnn.TransformerEncoderLayer(D, HEADS, FF), 0)


def test_static_memory_with_beams_equals_plain_cross_attention():
    _, ours = _pair("decoder", dropout=0.0, batch_first=True)
    B, K, T, S = 3, 4, 2, 6
    memory = torch.randn(B, S, D, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 1])
    tgt = torch.randn(B * K, T, D, dtype=torch.float64)
    static = ours.multihead_attn.precompute_kv(memory, memory, lengths=lengths)
    assert static.k.shape == (B, HEADS, S, D // HEADS)  # one copy per sentence, not per beam
    out = ours(tgt, static, tgt_is_causal=True, tgt_mask=None)
    expected = ours(tgt, memory.repeat_interleave(K, 0), tgt_is_causal=True,
                    memory_lengths=lengths.repeat_interleave(K))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the attention weights fold back to one row per beam
    q = tgt[:, :1]
    _, w = ours.multihead_attn(q, static, None, need_weights=True)
    _, w_ref = ours.multihead_attn(q, memory.repeat_interleave(K, 0), memory.repeat_interleave(K, 0),
                                   lengths=lengths.repeat_interleave(K))
    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-12)


def test_errors_name_the_argument():
    _, ours = _pair("decoder", batch_first=True)
    memory = torch.randn(2, 5, D, dtype=torch.float64)
    tgt = torch.randn(3, 2, D, dtype=torch.float64)
    static = ours.multihead_attn.precompute_kv(memory, memory)
    with pytest.raises(ValueError, match=r"query batch \(3\) must be a multiple of the memory batch \(2\)"):
        ours(tgt, static)
    with pytest.raises(ValueError, match="attn_mask must have shape \\(L, S\\) = \\(2, 5\\)"):
        ours(tgt[:2], memory, memory_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="PrecomputedKV memory carries its own padding"):
        ours(tgt[:2], static, memory_lengths=[5, 5])
    with pytest.raises(ValueError, match="activation must be 'relu', 'gelu', 'gelu_tanh' or a callable"):
        fnn.TransformerEncoderLayer(D, HEADS, activation="tanh")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_inference_takes_torchs_fused_layer_where_torch_does(monkeypatch, activation, norm_first):
    """In inference with nothing padded, the layer is torch's fused C++ layer (torch's answer, one call); with
    a padded key, the chooser's pick of the two; with gradients, training, hooks or an activation torch's
    cannot fuse, fastseq's composition."""
    calls = []
    fused = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a: calls.append(1) or fused(*a))
    torch.manual_seed(1)
    ref, ours = (cls(D, HEADS, FF, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first)
                 for cls in (torch.nn.TransformerEncoderLayer, fnn.TransformerEncoderLayer))
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()
    x = torch.randn(3, 7, D)
    nothing = torch.zeros(3, 7, dtype=torch.bool)
    padded = nothing.clone()
    padded[1, 5:] = True

    def compare(mask, expect_fused, lengths=None):
        calls.clear()
        with torch.no_grad():
            b = ours(x, src_key_padding_mask=None if lengths else mask, lengths=lengths)
            used = len(calls)
            a = ref(x, src_key_padding_mask=mask)
        real = slice(None) if mask is None else ~mask
        torch.testing.assert_close(b[real], a[real], rtol=1e-5, atol=1e-5)
        assert used == int(expect_fused), (mask, lengths)

    compare(None, True)
    compare(nothing, True)
    for choice in ("fused", "composed"):  # under real padding the chooser picks (its measurement aside here)
        with monkeypatch.context() as m:
            m.setattr(tuning, "pick", lambda family, candidates, call: choice)
            compare(padded, choice == "fused")
            everything = padded.clone()  # a row that pads every key: fastseq's composition (torch's fused: NaN)
            everything[2] = True
            calls.clear()
            with torch.no_grad():
                out = ours(x, src_key_padding_mask=everything)
            assert not calls and torch.isfinite(out).all()
    compare(padded, False, lengths=[7, 5, 7])
    handle = ours.linear1.register_forward_hook(lambda *a: None)
    compare(None, False)
    handle.remove()
    calls.clear()
    ours(x.requires_grad_()).sum().backward()  # gradients: the composition, which autograd differentiates
    assert not calls
    ours.train()
    with torch.no_grad():
        ours(x)
    assert not calls
    tanh = fnn.TransformerEncoderLayer(D, HEADS, FF, activation="gelu_tanh", batch_first=True).eval()
    with torch.no_grad():
        tanh(x)
    assert not calls


def test_encoder_layer_under_padding_measures_fused_against_composed(monkeypatch, tmp_path):
    """The chooser times both ways for the padded shape's bucket (once) and keeps the faster: either way the
    real positions are torch's."""
    monkeypatch.setenv("FASTSEQ_CACHE", str(tmp_path / "choices.json"))
    monkeypatch.setattr(tuning, "_file", None)
    seen = []
    pick = tuning.pick
    monkeypatch.setattr(tuning, "pick", lambda family, candidates, call: seen.append(family) or pick(family,
                                                                                                    candidates, call))
    torch.manual_seed(2)
    ref = torch.nn.TransformerEncoderLayer(D, HEADS, FF, batch_first=True).eval()
    ours = fnn.TransformerEncoderLayer(D, HEADS, FF, batch_first=True).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 11, D)
    pad = torch.arange(11)[None, :] >= torch.tensor([11, 7, 3, 9])[:, None]
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(ours(x, src_key_padding_mask=pad)[~pad], ref(x, src_key_padding_mask=pad)[~pad],
                                       rtol=1e-5, atol=1e-5)
    assert "encoder_layer" in seen
    assert any(b.startswith("encoder_layer|") and m.backend in ("fused", "composed")
               for b, m in tuning.choices().items())
