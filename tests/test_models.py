"""The models on tiny sizes (CPU): each fits a few fixed batches, padding leaves real positions alone,
causal models do not look ahead, incremental decoding equals the full forward, save → load gives the
same outputs, and bad configs and inputs fail with errors that name what is wrong."""
import dataclasses

import pytest
import torch

from fastseq import models
from fastseq.models import (
    LSTMLM,
    CausalLM,
    CausalLMConfig,
    LSTMLMConfig,
    MaskedLM,
    MaskedLMConfig,
    Seq2Seq,
    Seq2SeqConfig,
    SequenceClassifier,
    SequenceClassifierConfig,
    Transformer,
    TransformerConfig,
)
from fastseq.models.losses import token_loss

from _util import KERNEL_RUNS, assert_proportion, kernel_run

V = 17  # vocabulary: 0 pad, 1 bos, 2 eos, 3 mask, 4.. words
WORDS = (4, V)


def lstm_lm(**kw):
    return LSTMLM(LSTMLMConfig(V, **{"embed_dim": 16, "hidden_size": 24, "num_layers": 2, "embed_dropout": 0.0,
                                     "hidden_dropout": 0.0, "output_dropout": 0.0, "pad_id": 0, "eos_id": 2, **kw}))


def causal_lm(**kw):
    return CausalLM(CausalLMConfig(V, **{"d_model": 16, "num_heads": 4, "num_layers": 2, "dropout": 0.0,
                                         "max_len": 32, "pad_id": 0, "eos_id": 2, **kw}))


def masked_lm(**kw):
    return MaskedLM(MaskedLMConfig(V, 3, **{"d_model": 16, "num_heads": 2, "num_layers": 2, "dropout": 0.0,
                                            "max_len": 32, **kw}))


def seq2seq(attention, **kw):
    return Seq2Seq(Seq2SeqConfig(V, V + 2, **{"embed_dim": 12, "hidden_size": 16, "num_layers": 2, "dropout": 0.0,
                                              "attention": attention, **kw}))


def transformer(**kw):
    return Transformer(TransformerConfig(V, V + 2, **{"d_model": 16, "num_heads": 4, "num_encoder_layers": 2,
                                                      "num_decoder_layers": 2, "dim_feedforward": 32,
                                                      "dropout": 0.0, "max_len": 32, **kw}))


def batch(B=4, T=7, low=WORDS[0], high=WORDS[1], lengths=True):
    tokens = torch.randint(low, high, (B, T))
    n = torch.randint(2, T + 1, (B,)) if lengths else torch.full((B,), T)
    n[0] = T
    tokens = tokens.masked_fill(torch.arange(T)[None, :] >= n[:, None], 0)
    return tokens, n


def with_eos(tokens, lengths):
    """Targets: the real tokens, EOS in the last real slot."""
    out = tokens.clone()
    out[torch.arange(len(lengths)), lengths - 1] = 2
    return out


SEQ2SEQ_KINDS = {"sutskever": dict(attention=None), "bahdanau": dict(attention="additive"),
                 "sutskever-bidirectional": dict(attention=None, bidirectional_encoder=True, reverse_source=False)}


# --------------------------------------------------------------------------------------- overfitting

def _fit(model, loss_fn, steps, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    first = None
    for _ in range(steps):
        for args in loss_fn.batches:
            opt.zero_grad()
            loss = loss_fn(*args)
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
    model.eval()
    with torch.no_grad():
        final = max(loss_fn(*args).item() for args in loss_fn.batches)
    return first, final


class _Loss:
    def __init__(self, fn, batches):
        self.fn, self.batches = fn, batches

    def __call__(self, *args):
        return self.fn(*args)


@pytest.mark.parametrize("kind", ["lstm_lm", "causal_lm"])
def test_language_models_fit_fixed_batches(kind):
    model = lstm_lm(weight_drop=0.0) if kind == "lstm_lm" else causal_lm()
    batches = [batch(T=8) for _ in range(2)]
    starts = torch.randperm(WORDS[1] - WORDS[0])[:8] + WORDS[0]  # distinct first tokens: the rest is learnable
    for i, (tokens, _) in enumerate(batches):
        tokens[:, 0] = starts[4 * i:4 * i + 4]
    # 400 steps: at 200 about one seed in 30 stalled above 0.1 on every backend (seeds 0 and 1329275330:
    # 0.40 and 0.26), all 42 tried reach it at 400
    first, final = _fit(model, _Loss(model.loss, batches), steps=400 if kind == "lstm_lm" else 200, lr=2e-2)
    assert first > 2.0 and final < 0.1, (first, final)


def test_masked_lm_fits_fixed_batches():
    """Fixed corrupted batches (mask_tokens once): the model learns to reconstruct the chosen tokens."""
    model = masked_lm(mask_probability=0.3)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        tokens, n = batch(T=8)
        inputs, labels = model.mask_tokens(tokens, n, generator=g)
        assert bool((labels[labels != -100] == tokens[labels != -100]).all()) and bool((labels != -100).any())
        batches.append((inputs, labels, n))
    first, final = _fit(model, _Loss(lambda i, labels, n: token_loss(model(i, n), labels), batches), steps=150)
    assert first > 2.0 and final < 0.1, (first, final)


def test_mask_tokens_follows_bert():
    model = masked_lm(mask_probability=0.5)
    tokens, n = batch(B=64, T=32)
    inputs, labels = model.mask_tokens(tokens, n, generator=torch.Generator().manual_seed(1))
    real = torch.arange(32)[None, :] < n[:, None]
    chosen = labels != -100
    assert not bool((chosen & ~real).any()) and bool((inputs[~chosen] == tokens[~chosen]).all())
    assert_proportion(chosen.sum(), real.sum(), 0.5)
    assert_proportion((inputs[chosen] == 3).sum(), chosen.sum(), 0.8)
    # kept: the 10% left alone plus the 10% randomized that happen to draw their own token
    assert_proportion((inputs[chosen] == tokens[chosen]).sum(), chosen.sum(), 0.1 + 0.1 / model.config.vocab_size)


@pytest.mark.parametrize("kind", sorted(SEQ2SEQ_KINDS))
def test_seq2seq_fits_fixed_batches(kind):
    model = seq2seq(**SEQ2SEQ_KINDS[kind])
    batches = []
    for _ in range(2):
        src, n = batch(T=6)
        tgt = with_eos(torch.cat([src.flip(1), torch.zeros_like(src[:, :1])], 1), n + 1)  # some function of src
        batches.append((src, tgt, n, n + 1))
    first, final = _fit(model, _Loss(model.loss, batches), steps=150)
    assert first > 2.0 and final < 0.1, (first, final)


def test_transformer_fits_fixed_batches():
    model = transformer()
    batches = []
    for _ in range(2):
        src, n = batch(T=6)
        batches.append((src, with_eos(torch.cat([src, torch.zeros_like(src[:, :1])], 1), n + 1), n, n + 1))
    first, final = _fit(model, _Loss(model.loss, batches), steps=100)
    assert first > 2.0 and final < 0.1, (first, final)


def _distinct_batches(count, B, T):
    """`count` batches whose rows all differ: a sequence drawn twice with two labels cannot be fit (short
    rows of few words repeat: seed 21461228 drew [11, 12] twice, labelled 0 and 2)."""
    while True:
        made = [batch(B=B, T=T) for _ in range(count)]
        rows = {tuple(t[:int(k)].tolist()) for tokens, n in made for t, k in zip(tokens, n)}
        if len(rows) == count * B:
            return made


@pytest.mark.parametrize("body", ["lstm_lm", "masked_lm"])
def test_classifier_fits_fixed_batches(body):
    lm = lstm_lm() if body == "lstm_lm" else masked_lm()
    model = SequenceClassifier.from_language_model(lm, num_classes=3, dropout=0.0)
    # one batch: the head's batch norms then normalize in eval mode (running statistics) as in training (two
    # batches alternating would leave statistics between theirs, which eval mode applies to both)
    batches = [(tokens, torch.randint(0, 3, (16,)), n) for tokens, n in _distinct_batches(1, B=16, T=6)]
    first, final = _fit(model, _Loss(model.loss, batches), steps=200)
    assert final < 0.1, (first, final)


# ------------------------------------------------------------------------------ padding, causality

def _perturb_padding(tokens, lengths):
    junk = torch.randint(WORDS[0], WORDS[1], tokens.shape)
    return torch.where(torch.arange(tokens.shape[1])[None, :] >= lengths[:, None], junk, tokens)


def _real(x, lengths):
    return x[torch.arange(x.shape[1])[None, :].expand(x.shape[0], -1) < lengths[:, None]]


@pytest.mark.parametrize("kind", ["lstm_lm", "causal_lm", "masked_lm"])
def test_padding_leaves_real_positions_alone(kind):
    model = {"lstm_lm": lstm_lm, "causal_lm": causal_lm, "masked_lm": masked_lm}[kind]().double().eval()
    tokens, n = batch(B=5, T=9)
    run = (lambda t: model(t, n)[0]) if kind == "lstm_lm" else (lambda t: model(t, n))
    a, b = run(tokens), run(_perturb_padding(tokens, n))
    torch.testing.assert_close(_real(a, n), _real(b, n), rtol=0, atol=1e-12)
    # and each row alone, unpadded, gives the same
    for i in range(len(n)):
        alone = model(tokens[i:i + 1, :n[i]])
        alone = alone[0] if isinstance(alone, tuple) else alone
        torch.testing.assert_close(alone[0], a[i, :n[i]], rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(SEQ2SEQ_KINDS) + ["transformer"])
def test_source_padding_leaves_outputs_alone(kind):
    model = (transformer() if kind == "transformer" else seq2seq(**SEQ2SEQ_KINDS[kind])).double().eval()
    src, n = batch(B=5, T=7)
    tgt_in = torch.randint(WORDS[0], WORDS[1], (5, 4))
    a, b = model(src, tgt_in, n), model(_perturb_padding(src, n), tgt_in, n)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for i in range(len(n)):
        torch.testing.assert_close(model(src[i:i + 1, :n[i]], tgt_in[i:i + 1])[0], a[i], rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm_lm", "causal_lm", "causal_lm_sinusoidal_postnorm"] + sorted(SEQ2SEQ_KINDS)
                         + ["transformer", "transformer_prenorm"])
def test_logits_at_t_ignore_later_tokens(kind):
    T, t = 8, 4
    if kind.startswith("causal_lm"):
        extra = dict(positions="sinusoidal", norm_first=False) if kind.endswith("postnorm") else {}
        model, src = causal_lm(**extra), None
    elif kind == "lstm_lm":
        model, src = lstm_lm(), None
    elif kind.startswith("transformer"):
        model, src = transformer(norm_first=kind.endswith("prenorm")), batch(B=3, T=5, lengths=False)[0]
    else:
        model, src = seq2seq(**SEQ2SEQ_KINDS[kind]), batch(B=3, T=5, lengths=False)[0]
    model = model.double().eval()
    tokens = torch.randint(WORDS[0], WORDS[1], (3, T))
    changed = tokens.clone()
    changed[:, t + 1:] = torch.randint(WORDS[0], WORDS[1], (3, T - t - 1))

    def run(x):
        out = model(x) if src is None else model(src, x)
        return out[0] if isinstance(out, tuple) else out

    a, b = run(tokens), run(changed)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=1e-12)
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-6  # the later positions do see the change


def test_masked_lm_sees_both_sides():
    model = masked_lm().double().eval()
    tokens = torch.randint(WORDS[0], WORDS[1], (2, 8))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] - WORDS[0] + 1) % (V - WORDS[0]) + WORDS[0]
    assert (model(tokens)[:, 0] - model(changed)[:, 0]).abs().max() > 1e-6


# ---------------------------------------------------------------------- incremental = full forward

@pytest.mark.parametrize("kind", sorted(SEQ2SEQ_KINDS) + ["transformer", "transformer_prenorm"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_encoder_decoder_steps_equal_teacher_forcing(kind, use_cache):
    if kind.startswith("transformer"):
        model = transformer(norm_first=kind.endswith("prenorm"))
    else:
        model = seq2seq(**SEQ2SEQ_KINDS[kind])
    model = model.double().eval()
    src, n = batch(B=4, T=6)
    tgt = torch.randint(WORDS[0], WORDS[1], (4, 5))
    full = model(src, torch.cat([torch.ones(4, 1, dtype=torch.long), tgt[:, :-1]], 1), n)
    logits, state = model.begin_decoding(src, n, max_new_tokens=5, use_cache=use_cache)
    steps = [logits] + [model.decode_step(tgt[:, i], state) for i in range(4)]
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=0, atol=1e-11)


@pytest.mark.parametrize("kind", ["lstm_lm", "causal_lm"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_language_model_steps_equal_full_forward(kind, use_cache):
    model = (lstm_lm() if kind == "lstm_lm" else causal_lm()).double().eval()
    B, T, extra = 4, 6, 5
    tokens = torch.randint(WORDS[0], WORDS[1], (B, T + extra))
    n = torch.tensor([6, 2, 5, 3])  # ragged prompts: row b's prompt is tokens[b, :n[b]]
    full = model(tokens)[0] if kind == "lstm_lm" else model(tokens)
    rows = torch.arange(B)
    logits, state = model.begin_decoding(tokens[:, :T], n, max_new_tokens=extra, use_cache=use_cache)
    torch.testing.assert_close(logits, full[rows, n - 1], rtol=0, atol=1e-11)
    for s in range(extra - 1):
        logits = model.decode_step(tokens[rows, n + s], state)
        torch.testing.assert_close(logits, full[rows, n + s], rtol=0, atol=1e-11)


def test_beams_share_the_encoder_memory():
    """K beams of a sentence attend to its memory without copies: state.memory keeps B rows, and
    the K rows of each sentence step exactly like the sentence alone."""
    for model in (transformer(), seq2seq(attention="additive")):
        model = model.double().eval()
        src, n = batch(B=3, T=6)
        logits, state = model.begin_decoding(src, n, max_new_tokens=4)
        state.reorder(torch.arange(3).repeat_interleave(2))
        memory = state.memory[0] if isinstance(state.memory, list) else state.memory
        assert (memory.k if hasattr(memory, "k") else memory.key_proj).shape[0] == 3
        tokens = torch.randint(WORDS[0], WORDS[1], (6,))
        beams = model.decode_step(tokens, state)
        for i in range(3):
            _, alone = model.begin_decoding(src[i:i + 1, :n[i]], None, max_new_tokens=4)
            for j in range(2):
                _, s = model.begin_decoding(src[i:i + 1, :n[i]], None, max_new_tokens=4)
                torch.testing.assert_close(model.decode_step(tokens[2 * i + j:2 * i + j + 1], s)[0], beams[2 * i + j],
                                           rtol=0, atol=1e-11)


# ---------------------------------------------------------------------------------- save and load

@pytest.mark.parametrize("kind", ["lstm_lm", "lstm_lm_weight_drop", "causal_lm", "masked_lm", "bahdanau",
                                  "transformer", "classifier"])
def test_save_load_gives_identical_outputs(kind, tmp_path):
    make = {"lstm_lm": lstm_lm, "lstm_lm_weight_drop": lambda: lstm_lm(weight_drop=0.5), "causal_lm": causal_lm,
            "masked_lm": masked_lm, "bahdanau": lambda: seq2seq("additive"), "transformer": transformer,
            "classifier": lambda: SequenceClassifier.from_language_model(causal_lm(), 4)}[kind]
    model = make().eval()
    tokens, n = batch(B=3, T=6)
    if kind in ("bahdanau", "transformer"):
        args = (tokens, torch.randint(WORDS[0], WORDS[1], (3, 4)), n)
    else:
        args = (tokens, n)
    path = tmp_path / "model.pt"
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left behind
    for loaded in (models.load(path), type(model).load(path)):
        assert type(loaded) is type(model) and loaded.config == model.config
        loaded.eval()
        a, b = model(*args), loaded(*args)
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="holds a"):
        (Transformer if kind != "transformer" else CausalLM).load(path)


def test_awd_lstm_dropouts():
    """Embedding dropout drops whole words (a word zero everywhere it occurs in the batch, or scaled by
    1/(1-p)); input, hidden and output dropouts keep one mask per sequence across time; the features a
    classifier pools come before the output dropout; variational=False drops elements independently."""
    torch.manual_seed(0)
    tokens = torch.tensor([[5, 6, 5, 7, 5, 6] * 4] * 3)
    lm = LSTMLM(LSTMLMConfig(V, 16, 24, 2, embed_dropout=0.5, input_dropout=0.0, hidden_dropout=0.0,
                             output_dropout=0.0)).train()
    emb = lm._embed(tokens)
    ref = lm.embedding(tokens)
    scale = emb / ref
    for word in (5, 6, 7):  # one factor per word for the whole batch: 0 or 2
        factors = scale[tokens == word]
        assert torch.allclose(factors, factors[0:1].expand_as(factors))
        assert factors[0, 0].item() in (0.0, pytest.approx(2.0))
    x = torch.randn(4, 9, 6)
    y = lm._dropout(x, 0.5)
    mask = (y != 0).float()
    assert torch.equal(mask, mask[:, :1].expand_as(mask))  # the same units dropped at every step of a row
    assert not torch.equal(mask[0], mask[1]) or not torch.equal(mask[1], mask[2])  # rows draw their own
    torch.testing.assert_close(y[mask.bool()], 2 * x[mask.bool()])
    lm.config.variational = False
    mask = (lm._dropout(x, 0.5) != 0).float()
    assert not torch.equal(mask, mask[:, :1].expand_as(mask))
    lm.config.variational = True
    heavy = LSTMLM(LSTMLMConfig(V, 16, 24, 2, embed_dropout=0.0, input_dropout=0.0, hidden_dropout=0.0,
                                output_dropout=0.9))
    heavy.load_state_dict(lm.state_dict())
    short = tokens[:, :5]
    torch.testing.assert_close(heavy.train().features(short), heavy.eval().features(short))  # undropped
    assert not torch.equal(heavy.train()(short)[0], heavy.eval()(short)[0])  # the output layer's input is dropped


def test_classifier_batch_norm_head_and_one_row_batches():
    """The head's norms are batch norms (ULMFiT's); a training batch of one row is normalized by the running
    statistics, which it leaves as they are; norm='layer' gives layer norms; a classifier saved before the
    norm setting (layer norms) loads as it was."""
    body = lstm_lm()
    clf = SequenceClassifier.from_language_model(body, 3, dropout=0.0).train()
    norms = [m for m in clf.head if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 2
    tokens = torch.randint(5, V, (4, 6))
    clf(tokens)  # a batch of four: batch statistics, running ones updated
    before = [n.running_mean.clone() for n in norms]
    one = clf(tokens[:1])
    assert torch.isfinite(one).all()
    assert all(torch.equal(n.running_mean, b) for n, b in zip(norms, before))
    clf.eval()
    torch.testing.assert_close(one, clf(tokens[:1]))  # as evaluation normalizes it (no dropout here)
    layer = SequenceClassifier.from_language_model(body, 3, norm="layer")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in layer.modules())
    with pytest.raises(ValueError, match="norm must be one of"):
        SequenceClassifier.from_language_model(body, 3, norm="group")


def test_models_saved_before_a_setting_load_as_they_were(tmp_path):
    """A classifier saved before `norm` had layer norms; an LSTMLM saved before `variational` dropped elements
    independently: both load so."""
    import dataclasses

    from fastseq.models.base import FORMAT

    body = lstm_lm()
    old = SequenceClassifier.from_language_model(body, 3, norm="layer")
    config = dataclasses.asdict(old.config)
    del config["norm"]
    for key in ("variational", "input_dropout"):
        del config["body_config"][key]
    torch.save({"format": FORMAT, "model": "SequenceClassifier", "config": config, "state_dict": old.state_dict()},
               tmp_path / "old.pt")
    loaded = models.Model.load(tmp_path / "old.pt")
    assert loaded.config.norm == "layer" and loaded.body.config.variational is False
    tokens = torch.randint(5, V, (2, 6))
    torch.testing.assert_close(loaded.eval()(tokens), old.eval()(tokens))


def test_a_setting_that_changes_nothing_says_so():
    with pytest.warns(UserWarning, match="hidden_size=99 changes nothing: with num_layers=1 and tie_weights"):
        LSTMLMConfig(V, 16, 99, 1)
    with pytest.warns(UserWarning, match="attention_dim=32 changes nothing without attention"):
        Seq2SeqConfig(V, V, attention_dim=32)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LSTMLMConfig(V, 16, 99, 2), LSTMLMConfig(V, 16, 99, 1, tie_weights=False), Seq2SeqConfig(V, V)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a fastseq model file"):
        models.load(path)


def test_classifier_loads_a_saved_body(tmp_path):
    lm = lstm_lm()
    lm.save(tmp_path / "lm.pt")
    clf = SequenceClassifier.from_language_model(tmp_path / "lm.pt", num_classes=2)
    for (name, a), b in zip(lm.state_dict().items(), clf.body.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="vocab_size"):
        clf.load_body(LSTMLM(dataclasses.replace(lm.config, vocab_size=V + 1)))


# ------------------------------------------------------------------------------------ bad configs

@pytest.mark.parametrize("make, match", [
    (lambda: CausalLMConfig(V, d_model=30, num_heads=4), r"d_model \(30\) must be divisible by num_heads \(4\)"),
    (lambda: TransformerConfig(V, V, d_model=16, num_heads=3), "divisible by num_heads"),
    (lambda: MaskedLMConfig(V, 3, d_model=10, num_heads=4), "divisible by num_heads"),
    (lambda: TransformerConfig(V, V + 1, share_embeddings=True), "share_embeddings needs one vocabulary"),
    (lambda: LSTMLMConfig(0), "vocab_size must be a positive int"),
    (lambda: LSTMLMConfig(V, pad_id=V), r"pad_id must be a token id in \[0, vocab_size=17\)"),
    (lambda: Seq2SeqConfig(V, 5, eos_id=7), "eos_id must be a token id"),
    (lambda: Seq2SeqConfig(V, V, attention="dot"), "attention must be None or 'additive'"),
    (lambda: LSTMLMConfig(V, hidden_dropout=1.5), "hidden_dropout must be a probability"),
    (lambda: MaskedLMConfig(V, mask_id=0, pad_id=0), "mask_id and pad_id must differ"),
    (lambda: SequenceClassifierConfig("GRU", {}), "body must be one of"),
    (lambda: CausalLMConfig(V, activation="tanh"), "activation must be 'relu', 'gelu' or 'gelu_tanh'"),
    (lambda: TransformerConfig(V, V, d_model=16, num_heads=4, max_len=0), "max_len must be a positive int"),
])
def test_bad_configs_fail_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_fail_clearly():
    model = causal_lm()
    with pytest.raises(ValueError, match=r"ids in \[0, vocab_size=17\)"):
        model(torch.tensor([[1, 2, V]]))
    with pytest.raises(ValueError, match="int64/int32 tensor"):
        model(torch.rand(2, 3))
    with pytest.raises(ValueError, match="exceed max_len=32"):
        model(torch.ones(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 3\]"):
        model(torch.ones(2, 3, dtype=torch.long), torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="share their batch size"):
        transformer()(torch.ones(2, 3, dtype=torch.long), torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be 2 class ids"):
        SequenceClassifier.from_language_model(lstm_lm(), 3).loss(torch.ones(2, 3, dtype=torch.long), torch.rand(2))
    with pytest.raises(TypeError, match="takes a CausalLMConfig"):
        CausalLM(LSTMLMConfig(V))


@pytest.mark.parametrize("kind", ["lstm_lm", "bahdanau", "transformer", "causal_lm"])
def test_autocast_bf16_matches_float32(kind):
    """Under torch.autocast the fastseq ops run in bf16 (they cast their inputs as torch's matmuls do):
    the loss is close to float32's and every parameter gets a float32 gradient."""
    model = {"lstm_lm": lstm_lm, "bahdanau": lambda: seq2seq("additive"), "transformer": transformer,
             "causal_lm": causal_lm}[kind]().eval()
    tokens, n = batch(B=4, T=7)
    args = (tokens, with_eos(tokens[:, :5], n.clamp(max=5)), n, n.clamp(max=5)) if kind in ("bahdanau", "transformer") \
        else (tokens, n)
    exact = model.loss(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.loss(*args)
    low.backward()
    assert abs(low.item() - exact.item()) < 0.03 * exact.item()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("device, backend", KERNEL_RUNS)
@pytest.mark.parametrize("kind", ["lstm_lm", "causal_lm", "masked_lm", "bahdanau", "sutskever", "transformer"])
def test_models_on_the_kernels_match_float64(kind, device, backend):
    """Every model on the fused kernels (float32) against the same weights in float64 on the CPU: the
    loss and every parameter's gradient. On a GPU the default backends; here Triton's interpreter, so the
    models' calls into the Triton kernels (layouts, padding, caches) are checked before a GPU sees them."""
    make = {"lstm_lm": lstm_lm, "causal_lm": causal_lm, "masked_lm": masked_lm, "bahdanau": lambda: seq2seq("additive"),
            "sutskever": lambda: seq2seq(None), "transformer": transformer}[kind]
    model = make().eval()
    tokens, n = batch(B=4, T=9)
    encdec = kind in ("bahdanau", "sutskever", "transformer")
    args = (tokens, with_eos(tokens[:, :6], n.clamp(max=6)), n, n.clamp(max=6)) if encdec else (tokens, n)

    def objective(m, *a):  # the masked LM reconstructs every token (its loss would draw random masks)
        return token_loss(m(a[0], a[1]), a[0]) if kind == "masked_lm" else m.loss(*a)

    exact = model.double()
    expected = objective(exact, *args)
    expected.backward()
    grads = {k: p.grad.clone() for k, p in exact.named_parameters()}
    fast = make().eval()
    fast.load_state_dict({k: v.float() for k, v in exact.state_dict().items()})
    fast = fast.to(device)
    with kernel_run(device, backend):
        got = objective(fast, *(a.to(device) for a in args))
        got.backward()
    assert abs(got.item() - expected.item()) < 1e-4 * max(1.0, expected.item())
    for k, p in fast.named_parameters():
        torch.testing.assert_close(p.grad.double().cpu(), grads[k], rtol=2e-3, atol=2e-4, msg=k)
