"""Generation: beam search against exhaustive search on a toy decoder, beam size 1 against greedy,
cached against uncached decoding on real models, EOS and padding, n-gram blocking, the sampling filters
against their definitions, seeded sampling, and bad arguments."""
import itertools
import math
from unittest import mock

import pytest
import torch

from fastseq.generation import block_repeated_ngrams, generate, top_k_filter, top_p_filter
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

from _util import KERNEL_RUNS, HostReads, assert_proportion, kernel_run


class ToyDecoder:
    """A decoder whose next-token log-probabilities depend on (sentence, previous token) through a fixed
    random table: small enough to enumerate every output."""

    training = False

    def __init__(self, sentences, vocab, eos_id):
        self.table = torch.randn(sentences, vocab + 1, vocab, dtype=torch.float64) * 2
        self.vocab, self.eos_id = vocab, eos_id

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    class State:
        def __init__(self, sentence, last):
            self.sentence, self.last = sentence, last

        def reorder(self, index):
            self.sentence, self.last = self.sentence[index], self.last[index]

    def begin_decoding(self, inputs, lengths=None, max_new_tokens=0, use_cache=True):
        sentence = inputs[:, 0]
        state = self.State(sentence, torch.full_like(sentence, self.vocab))
        return self.table[sentence, self.vocab], state

    def decode_step(self, tokens, state):
        state.last = tokens
        return self.table[state.sentence, tokens]

    def logp(self, sentence, tokens):
        prev, total = self.vocab, 0.0
        for tok in tokens:
            total += torch.log_softmax(self.table[sentence, prev], -1)[tok].item()
            prev = tok
        return total


def exhaustive_best(toy, sentence, max_len, alpha):
    """The best sequence by logp / len^alpha among all that end in EOS or reach max_len."""
    best, best_seq = -math.inf, None
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(toy.vocab), repeat=n):
            if toy.eos_id in seq[:-1] or (n < max_len and seq[-1] != toy.eos_id):
                continue
            score = toy.logp(sentence, seq) / n ** alpha
            if score > best:
                best, best_seq = score, seq
    return best_seq, best


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5])
def test_beam_search_with_every_hypothesis_equals_exhaustive_search(alpha):
    vocab, max_len, sentences = 3, 4, 5
    toy = ToyDecoder(sentences, vocab, eos_id=0)
    inputs = torch.arange(sentences)[:, None]
    out = generate(toy, inputs, max_new_tokens=max_len, method="beam", beams=vocab ** max_len, length_penalty=alpha,
                   eos_id=0)
    for s in range(sentences):
        _, best = exhaustive_best(toy, s, max_len, alpha)
        found = out.tokens[s, :out.lengths[s]].tolist()
        # A first-order toy chain gives equal scores to sequences with the same transitions (1,2,1,1 and
        # 1,1,2,1): the found sequence must score the best, recomputed here, not be one particular tie.
        assert found[-1] == toy.eos_id or len(found) == max_len
        assert toy.eos_id not in found[:-1]
        assert toy.logp(s, found) / len(found) ** alpha == pytest.approx(best, rel=1e-6, abs=1e-6)
        assert out.scores[s].item() == pytest.approx(best, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_buffers_grow_as_needed_not_by_max_new_tokens(alpha):
    """max_new_tokens = 10**9 (buffers of that many columns would take terabytes): the hypotheses end early,
    equal to a run with room for 100 tokens; a run past the first columns grows them."""
    toy = ToyDecoder(4, 5, eos_id=0)
    toy.table.clamp_(max=1.0)[:, :, 0] = 4.0  # EOS likely: every other token costs a live beam >= 3 nats
    inputs = torch.arange(4)[:, None]
    small = generate(toy, inputs, max_new_tokens=100, method="beam", beams=3, length_penalty=alpha, eos_id=0)
    if alpha == 0.0:
        huge = generate(toy, inputs, max_new_tokens=10**9, method="beam", beams=3, length_penalty=alpha, eos_id=0)
        assert torch.equal(huge.tokens, small.tokens) and torch.equal(huge.lengths, small.lengths)
    toy.table[:, :, 0] = -1e9  # EOS never: every row runs to max_new_tokens, past the first 64 columns
    long = generate(toy, inputs, max_new_tokens=150, method="beam", beams=2, length_penalty=alpha, eos_id=0)
    assert long.tokens.shape == (4, 150) and (long.lengths == 150).all() and (long.tokens != 0).all()
    for s in range(4):  # each kept score is the sequence's own log-probability over its length
        assert long.scores[s].item() == pytest.approx(toy.logp(s, long.tokens[s].tolist()) / 150 ** alpha, rel=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_early_stopping_false_and_true_end_a_positive_length_penalty_early(alpha):
    """With length_penalty > 0 the exact rule ("never") bounds a live beam at max_new_tokens, so a huge limit
    keeps it running; Hugging Face's False and fairseq's True stop as soon as their rules allow: here within a
    few steps of max_new_tokens = 10**9, and with the hypotheses those rules give at a limit of 30."""
    toy = ToyDecoder(4, 5, eos_id=0)
    toy.table.clamp_(max=1.0)[:, :, 0] = 4.0  # EOS likely
    inputs = torch.arange(4)[:, None]
    for rule in (False, True):
        with mock.patch.object(ToyDecoder, "decode_step", side_effect=ToyDecoder.decode_step, autospec=True) as step:
            huge = generate(toy, inputs, max_new_tokens=10**9, method="beam", beams=3, length_penalty=alpha, eos_id=0,
                            early_stopping=rule)
        small = generate(toy, inputs, max_new_tokens=30, method="beam", beams=3, length_penalty=alpha, eos_id=0,
                         early_stopping=rule)
        assert step.call_count < 30 and torch.equal(huge.tokens, small.tokens), (rule, step.call_count)
    exact = generate(toy, inputs, max_new_tokens=30, method="beam", beams=3, length_penalty=alpha, eos_id=0)
    assert (exact.scores >= small.scores - 1e-6).all()  # exact search never scores below a rule that stops early


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_token_scores_are_each_tokens_log_probability(method):
    """token_scores[i, j]: the log-probability the decoder gave token j of row i (recomputed here from the toy's
    table), 0 past the row's length; they sum to the row's score (beam: over length ** length_penalty)."""
    toy = ToyDecoder(5, 4, eos_id=0)
    inputs = torch.arange(5)[:, None]
    n = 3 if method != "greedy" else 1
    out = generate(toy, inputs, max_new_tokens=6, method=method, beams=3, length_penalty=0.7, eos_id=0, seed=0,
                   num_return_sequences=n)
    assert out.tokens.shape[0] == out.token_scores.shape[0] == 5 * n and out.token_scores.shape == out.tokens.shape
    for row in range(5 * n):
        s, length = row // n, int(out.lengths[row])
        tokens, prev = out.tokens[row, :length].tolist(), toy.vocab
        for j, tok in enumerate(tokens):
            expected = torch.log_softmax(toy.table[s, prev], -1)[tok].item()
            assert out.token_scores[row, j].item() == pytest.approx(expected, abs=1e-5), (row, j)
            prev = tok
        assert (out.token_scores[row, length:] == 0).all()
        total = out.token_scores[row].sum().item() / (length ** 0.7 if method == "beam" else 1)
        assert out.scores[row].item() == pytest.approx(total, rel=1e-5, abs=1e-5)
    if method == "beam":  # each sentence's hypotheses best first, and different
        scores = out.scores.view(5, n)
        assert (scores[:, :-1] >= scores[:, 1:]).all()
        assert all(len({tuple(out.tokens[s * n + i, :out.lengths[s * n + i]].tolist()) for i in range(n)}) == n
                   for s in range(5))


@pytest.mark.parametrize("method,n,match", [("greedy", 2, "would repeat one answer"), ("beam", 4, "<= beams"),
                                            ("sample", 0, "int >= 1")])
def test_num_return_sequences_is_checked(method, n, match):
    with pytest.raises(ValueError, match=match):
        generate(ToyDecoder(2, 4, eos_id=0), torch.arange(2)[:, None], max_new_tokens=3, method=method, beams=3,
                 num_return_sequences=n)


def test_beam_search_is_bounded_by_the_optimum_and_beam_one_is_greedy():
    """Beam search is not monotone in the beam size (a wider beam can prune the prefix a narrower one
    kept), so the properties are: beam 1 is greedy, no beam beats exhaustive search, and a wide beam finds
    something better than greedy on some of 20 sentences."""
    sentences, vocab, max_len = 20, 4, 5
    toy = ToyDecoder(sentences, vocab, eos_id=0)
    inputs = torch.arange(sentences)[:, None]
    scores = {k: generate(toy, inputs, max_new_tokens=max_len, method="beam", beams=k, length_penalty=0.0,
                          eos_id=0).scores for k in (1, 2, 8)}
    greedy = generate(toy, inputs, max_new_tokens=max_len, eos_id=0)
    torch.testing.assert_close(scores[1], greedy.scores)
    optimum = torch.tensor([exhaustive_best(toy, s, max_len, 0.0)[1] for s in range(sentences)])
    for k, found in scores.items():
        assert bool((found.double() <= optimum + 1e-5).all()), k
    assert bool((scores[8] > scores[1] + 1e-5).any())


def tiny_models():
    return {
        "lstm_lm": LSTMLM(LSTMLMConfig(19, 12, 16, 2, pad_id=0, eos_id=2)),
        "causal_lm": CausalLM(CausalLMConfig(19, 16, 4, 2, dropout=0.0, max_len=40, pad_id=0, eos_id=2)),
        "seq2seq": Seq2Seq(Seq2SeqConfig(19, 21, 12, 16, 2)),
        "bahdanau": Seq2Seq(Seq2SeqConfig(19, 21, 12, 16, 2, attention="additive")),
        "transformer": Transformer(TransformerConfig(19, 21, 16, 4, 2, 2, 32, max_len=40)),
    }


def _inputs():
    tokens = torch.randint(3, 19, (4, 6))
    lengths = torch.tensor([6, 3, 5, 1])
    return tokens, lengths


def _sharpen(model):
    """Make an untrained model's distributions peaked, so that searches differ and EOS comes early."""
    with torch.no_grad():
        model.output.weight.mul_(8)
        if model.output.bias is not None:
            model.output.bias[2] += 2.0
    return model


@pytest.mark.parametrize("kind", sorted(tiny_models()))
def test_beam_size_one_equals_greedy(kind):
    model = _sharpen(tiny_models()[kind]).double()
    tokens, lengths = _inputs()
    greedy = generate(model, tokens, lengths, max_new_tokens=8)
    beam = generate(model, tokens, lengths, max_new_tokens=8, method="beam", beams=1, length_penalty=0.0)
    assert torch.equal(greedy.tokens, beam.tokens) and torch.equal(greedy.lengths, beam.lengths)
    torch.testing.assert_close(greedy.scores, beam.scores)


@pytest.mark.parametrize("kind", ["causal_lm", "transformer"])
@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_cached_decoding_equals_uncached(kind, method):
    model = _sharpen(tiny_models()[kind]).double()
    tokens, lengths = _inputs()
    args = dict(max_new_tokens=8, method=method, beams=3)
    a = generate(model, tokens, lengths, use_cache=True, **args)
    b = generate(model, tokens, lengths, use_cache=False, **args)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.scores, b.scores)


@pytest.mark.parametrize("kind", sorted(tiny_models()))
def test_generation_is_the_argmax_chain_and_stops_at_eos(kind):
    """Greedy tokens re-scored by the model's full forward: each is the argmax given the ones before;
    after EOS only padding follows; lengths count through EOS."""
    model = _sharpen(tiny_models()[kind]).double().eval()
    tokens, lengths = _inputs()
    out = generate(model, tokens, lengths, max_new_tokens=7)
    for b in range(4):
        n = out.lengths[b].item()
        gen = out.tokens[b, :n]
        assert (out.tokens[b, n:] == 0).all()
        assert 2 not in gen[:-1].tolist() and (n == 7 or gen[-1].item() == 2)
        if kind in ("seq2seq", "bahdanau", "transformer"):
            logits = model(tokens[b:b + 1, :lengths[b]], torch.cat([torch.tensor([1]), gen[:-1]])[None])[0]
        else:
            seq = torch.cat([tokens[b, :lengths[b]], gen])[None]
            logits = model(seq)
            logits = (logits[0] if isinstance(logits, tuple) else logits)[0, lengths[b] - 1:-1]
        assert torch.equal(logits.argmax(-1), gen)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("kind", ["causal_lm", "transformer", "bahdanau", "lstm_lm"])
@pytest.mark.parametrize("faster", ["batched", "F.linear"])
def test_cpu_decoding_keeps_the_linear_form_its_steps_timed_faster(kind, rows, faster):
    """On a CPU the search times its first decode steps with the linear layers as F.linear and as batched
    products (graphs.TimedForms, fastseq.nn.linear), alternating after one untimed step, and keeps the
    faster (here by a clock the steps advance): the same tokens and scores as F.linear throughout."""
    from fastseq.generation import graphs
    from fastseq.nn import linear as fl
    torch.manual_seed(0)
    model = tiny_models()[kind].double().eval()
    tokens, lengths = _inputs()
    forms, clock = [], [0.0]
    real_step = type(model).decode_step

    def step(self, t, state):
        batched = fl._BATCHED.get()
        forms.append(batched)
        clock[0] += 1.0 if batched == (faster == "batched") else 2.0
        return real_step(self, t, state)

    with mock.patch.object(fl, "MIN_WEIGHT", 1), mock.patch.object(type(model), "decode_step", step), \
            mock.patch.object(graphs, "perf_counter", lambda: clock[0]):
        timed = generate(model, tokens[:rows], lengths[:rows], max_new_tokens=12, method="greedy", eos_id=None)
    trials = [False] + [False, True] * graphs.TimedForms.TRIALS
    assert forms[-11:] == trials + [faster == "batched"] * (11 - len(trials))  # the search's 11 steps
    plain = generate(model, tokens[:rows], lengths[:rows], max_new_tokens=12, method="greedy", eos_id=None)
    torch.testing.assert_close(timed.tokens, plain.tokens, rtol=0, atol=0)
    torch.testing.assert_close(timed.scores, plain.scores)


def test_no_repeat_ngram_blocking():
    model = _sharpen(tiny_models()["causal_lm"]).double()
    tokens, lengths = _inputs()
    for n in (1, 2, 3):
        out = generate(model, tokens, lengths, max_new_tokens=12, eos_id=None, no_repeat_ngram_size=n,
                       method="beam" if n == 2 else "greedy", beams=3)
        for row in out.tokens.tolist():
            grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
            assert len(grams) == len(set(grams)), (n, row)


def test_block_repeated_ngrams_matches_its_definition():
    tokens = torch.randint(0, 4, (6, 9))
    logits = torch.randn(6, 4)
    for n in (1, 2, 3):
        out = block_repeated_ngrams(logits, tokens, n)
        for r in range(6):
            row = tokens[r].tolist()
            seen = {tuple(row[i:i + n]) for i in range(len(row) - n + 1)}
            for x in range(4):
                blocked = tuple(row[len(row) - n + 1:] + [x]) in seen
                assert (out[r, x].item() == -math.inf) == blocked


def test_top_k_and_top_p_filters_match_their_definitions():
    logits = torch.randn(5, 11, dtype=torch.float64)
    for k in (1, 3, 11):
        kept = torch.isfinite(top_k_filter(logits, k))
        for r in range(5):
            assert set(kept[r].nonzero().flatten().tolist()) == set(logits[r].topk(k).indices.tolist())
    for p in (0.05, 0.5, 0.9, 1.0):
        kept = torch.isfinite(top_p_filter(logits, p))
        probs = logits.softmax(-1)
        for r in range(5):
            order = probs[r].argsort(descending=True).tolist()
            need, total = [], 0.0
            for i in order:  # the smallest prefix of the ranking whose mass reaches p
                need.append(i)
                total += probs[r, i].item()
                if total >= p:
                    break
            assert set(kept[r].nonzero().flatten().tolist()) == set(need)


def test_sampling_is_seeded_and_draws_from_the_filtered_distribution():
    toy = ToyDecoder(1, 6, eos_id=0)
    inputs = torch.zeros(4000, 1, dtype=torch.long)
    a = generate(toy, inputs, max_new_tokens=1, method="sample", seed=7, eos_id=None, temperature=0.7, top_k=4)
    b = generate(toy, inputs, max_new_tokens=1, method="sample", seed=7, eos_id=None, temperature=0.7, top_k=4)
    assert torch.equal(a.tokens, b.tokens)
    expected = top_k_filter(toy.table[0, 6][None] / 0.7, 4).softmax(-1)[0]
    counts = torch.bincount(a.tokens[:, 0], minlength=6)
    assert counts[expected == 0].sum() == 0
    for token in (expected > 0).nonzero().flatten().tolist():  # each token's count is binomial
        assert_proportion(counts[token], 4000, expected[token].item())


def test_bad_arguments_fail_clearly():
    model = tiny_models()["causal_lm"]
    tokens, lengths = _inputs()
    for kwargs, match in [(dict(method="nucleus"), "method must be one of"),
                          (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
                          (dict(method="beam", beams=0), "beams must be an int >= 1"),
                          (dict(temperature=0.0), "temperature must be > 0"),
                          (dict(top_p=1.5), r"top_p must lie in \(0, 1\]"),
                          (dict(eos_id=19), r"eos_id must be a token id in \[0, 19\)")]:
        with pytest.raises(ValueError, match=match):
            generate(model, tokens, lengths, **{"max_new_tokens": 3, **kwargs})
    with pytest.raises(ValueError, match="exceed max_len=40"):
        generate(model, tokens, lengths, max_new_tokens=40)


@pytest.mark.parametrize("kind", ["causal_lm", "transformer", "bahdanau", "lstm_lm"])
def test_generation_under_autocast(kind):
    """Decoding under torch.autocast (as the trainer evaluates in bf16): caches take autocast's dtype; greedy
    search's first token is float32's wherever float32 gave it probability > 0.9 (a margin of over 2 nats,
    far beyond bfloat16's rounding; a closer call may go either way), and its log-probability is float32's
    best within 0.15 nats in every row (the best log-probability moves at most twice the logits' error)."""
    model = _sharpen(tiny_models()[kind])
    tokens, lengths = _inputs()
    exact = generate(model, tokens, lengths, max_new_tokens=6, eos_id=None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = generate(model, tokens, lengths, max_new_tokens=6, eos_id=None, method="beam", beams=2)
        greedy = generate(model, tokens, lengths, max_new_tokens=6, eos_id=None)
    assert low.tokens.shape == (4, 6) and greedy.tokens.shape == (4, 6)
    confident = exact.token_scores[:, 0] > math.log(0.9)
    assert (greedy.tokens[:, 0] == exact.tokens[:, 0])[confident].all(), (exact.token_scores[:, 0].exp(), greedy.tokens)
    assert (greedy.token_scores[:, 0] - exact.token_scores[:, 0]).abs().max() < 0.15


@pytest.mark.parametrize("device, backend", KERNEL_RUNS)
@pytest.mark.parametrize("kind", sorted(tiny_models()))
def test_generation_on_the_kernels_equals_float64(kind, device, backend):
    """The same peaked model generates the same tokens on the fused kernels (decoding kernels, KV caches;
    float32) as in float64 on the CPU: on a GPU with the default backends, here with Triton's interpreter."""
    model = _sharpen(tiny_models()[kind]).double()
    tokens, lengths = _inputs()
    expected = generate(model, tokens, lengths, max_new_tokens=6, method="beam", beams=3)
    fast = model.float().to(device)
    with kernel_run(device, backend):
        for use_cache in (True, False) if device == "cuda" else (True,):
            got = generate(fast, tokens.to(device), lengths.to(device), max_new_tokens=6, method="beam", beams=3,
                           use_cache=use_cache)
            assert torch.equal(got.tokens.cpu(), expected.tokens) and torch.equal(got.lengths.cpu(), expected.lengths)


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
@pytest.mark.parametrize("kind", sorted(tiny_models()))
def test_a_row_whose_every_token_is_banned_ends_with_eos(kind, method):
    """no_repeat_ngram_size=1 bans every token a row has emitted: past the vocabulary's size a row has
    nothing left but EOS, which ends it, with a finite score, for every method and model."""
    model = tiny_models()[kind]
    eos = model.config.eos_id
    V = getattr(model.config, "vocab_size", None) or model.config.tgt_vocab_size
    if model.output.bias is not None:  # make EOS unlikely, so rows end for want of any other token
        with torch.no_grad():
            model.output.bias[eos] = -30.0
    out = generate(model, *_inputs(), max_new_tokens=V + 5, method=method, beams=3, no_repeat_ngram_size=1,
                   eos_id=eos, seed=0)
    assert bool(torch.isfinite(out.scores).all()), out.scores
    for row, n in zip(out.tokens.tolist(), out.lengths.tolist()):
        assert row[n - 1] == eos and len(set(row[:n - 1])) == n - 1  # no token twice, then EOS
    with pytest.raises(ValueError, match="no_repeat_ngram_size=1 bans every token of a row and the model has no "
                                         "eos_id"):
        generate(model, *_inputs(), max_new_tokens=V + 5, method=method, beams=3, no_repeat_ngram_size=1,
                 eos_id=None, seed=0)


def _reads(model, method, steps, eos_id):
    tokens, lengths = _inputs()
    with HostReads() as reads:
        out = generate(model, tokens, lengths, max_new_tokens=steps, method=method, beams=3, eos_id=eos_id, seed=0)
    return reads.n, out


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
@pytest.mark.parametrize("kind", sorted(tiny_models()))
def test_at_most_one_host_read_per_generated_token(kind, method, monkeypatch):
    """Value checks happen once per generate call: without EOS a step reads nothing on the host, and with
    it one read a step (has every row ended?). On a GPU each read is a synchronization. The chooser's
    probes of a kept CPU choice (timed runs, which read values) are a CPU's alone: off here."""
    from fastseq.ops import tuning

    monkeypatch.setattr(tuning, "PROBE_MIN_S", float("inf"))
    tuning.forget()
    model = tiny_models()[kind]
    _reads(model, method, 2, None)  # the first call of each op chooses its backend (timed runs read values)
    short, _ = _reads(model, method, 10, None)
    long, _ = _reads(model, method, 30, None)
    assert long == short, f"{(long - short) / 20:.2f} host reads per step"
    with_eos, _ = _reads(model, method, 30, model.config.eos_id)
    assert long < with_eos <= long + 30, (with_eos, long)  # one read a step run, 30 steps at most


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["causal_lm", "transformer", "lstm_lm"])
def test_decoding_steps_never_synchronize_on_a_gpu(kind):
    """torch's sync debug mode turned to errors around every decoding step (the search's bookkeeping
    included): any host read of a device tensor in a step raises."""
    from fastseq.ops.checks import trusted

    model = _sharpen(tiny_models()[kind]).cuda().eval()
    tokens, lengths = (t.cuda() for t in _inputs())
    generate(model, tokens, lengths, max_new_tokens=4, method="beam", beams=3)  # choices made, kernels built
    with torch.no_grad():
        logits, state = model.begin_decoding(tokens, lengths, max_new_tokens=8, use_cache=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(6):
                token = logits.argmax(-1)
                with trusted():
                    state.reorder(torch.arange(token.shape[0], device="cuda").flip(0))
                    logits = model.decode_step(token, state)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_an_empty_batch_generates_nothing():
    for kind, model in tiny_models().items():
        for method in ("greedy", "sample", "beam"):
            out = generate(model, torch.zeros(0, 4, dtype=torch.long), max_new_tokens=3, method=method)
            assert out.tokens.shape == (0, 0) and out.lengths.shape == (0,) and out.scores.shape == (0,), kind
