"""The pre-2013 baselines: Kneser–Ney n-gram probabilities against a case computed by hand and summing to
one; word2vec (skip-gram and CBOW with negative sampling, and the full softmax) finding related words in
real text, its loss against a direct computation, and analogy arithmetic."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastseq import data
from fastseq.models import Word2Vec, Word2VecConfig, Word2VecData
from fastseq.models.ngram import EOS, NGramLM


def test_kneser_ney_matches_a_hand_computed_bigram_case():
    lm = NGramLM(order=2, discount=0.5).fit([["a", "b"], ["a", "c"]])
    # continuation counts: a (after <s>) 1, b 1, c 1, </s> (after b, after c) 2; 5 in all, 4 types; |V| = 5
    p1 = {w: max(n - 0.5, 0) / 5 + 0.5 * 4 / 5 / 5 for w, n in {"a": 1, "b": 1, "c": 1, EOS: 2, "<unk>": 0}.items()}
    assert p1["a"] == pytest.approx(0.18) and p1[EOS] == pytest.approx(0.38)
    assert lm.prob("b", ["a"]) == pytest.approx((1 - 0.5) / 2 + 0.5 * 2 / 2 * 0.18)  # 0.34
    assert lm.prob("a", []) == pytest.approx((2 - 0.5) / 2 + 0.5 * 1 / 2 * 0.18)  # after <s>: 0.795
    assert lm.prob(EOS, ["b"]) == pytest.approx(0.5 + 0.5 * 0.38)
    assert lm.prob("zebra", ["a"]) == pytest.approx(0.5 * 2 / 2 * p1["<unk>"])  # unknown word -> <unk>
    lp, n = lm.sentence_logprob(["a", "b"])
    assert n == 3 and lp == pytest.approx(math.log(0.795 * 0.34 * 0.69))


def test_kneser_ney_distributions_sum_to_one_on_real_text():
    text = data.load("trec", "train", download=False)
    sentences = [t.split() for _, t in text[:800]]
    lm = NGramLM(order=3).fit(sentences)
    vocab = sorted(lm.vocab - {"<s>"})
    for history in (["what", "is"], ["how"], [], ["zzz", "qqq"], sentences[3][:2]):
        assert sum(lm.prob(w, history) for w in vocab) == pytest.approx(1.0, abs=1e-9)
    held_out = [t.split() for _, t in text[800:900]]
    for s in held_out[:5]:  # a sentence's score is the chain rule over its words, each given its whole prefix
        words = s + [EOS]
        chain = sum(math.log(lm.prob(w, words[:i])) for i, w in enumerate(words))
        assert lm.sentence_logprob(s) == (pytest.approx(chain, abs=1e-9), len(words))
    unigram = NGramLM(order=1).fit(sentences)
    assert lm.perplexity(held_out) < 0.7 * unigram.perplexity(held_out)  # context helps a lot on questions
    with pytest.raises(ValueError, match="order must be an int >= 1"):
        NGramLM(order=0)


@pytest.fixture(scope="module")
def wikitext():
    text = data.load("wikitext-2", "valid", download=False)
    tok = data.WordTokenizer.fit([text], min_freq=5, lowercase=True)
    return tok, torch.tensor(tok.encode(text))


MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"}


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_word2vec_finds_related_words_in_real_text(mode, wikitext):
    tok, ids = wikitext
    torch.manual_seed(0)
    model = Word2Vec(Word2VecConfig(tok.vocab_size, 64, mode, window=5, negative=5))
    pairs = Word2VecData(ids, model.config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        opt.zero_grad()
        model.loss(**pairs.batch(2048, g)).backward()
        opt.step()

    def near(word, k=8):
        return {tok.words[i - len(data.SPECIALS)] for i, _ in model.most_similar(tok.index[word], k)}

    assert len(near("january") & MONTHS) >= 5, near("january")
    assert "she" in near("he"), near("he")
    numbers = {"two", "four", "five", "six", "seven", "eight", "nine", "one"}
    assert len(near("three", 10) & numbers) >= 2, near("three", 10)


def test_word2vec_losses_equal_their_definitions():
    torch.manual_seed(0)
    for mode in ("skipgram", "cbow"):
        model = Word2Vec(Word2VecConfig(30, 8, mode, window=2, negative=3)).double()
        torch.nn.init.normal_(model.output.weight)
        centers = torch.randint(0, 30, (5,))
        contexts = torch.randint(0, 30, (5, 4))
        mask = torch.rand(5, 4) < 0.7
        mask[:, 0] = True
        negatives = torch.randint(0, 30, (5, 3))
        win, wout = model.input.weight, model.output.weight
        total, count = 0.0, 0
        for b in range(5):
            real = contexts[b][mask[b]]
            if mode == "skipgram":
                for c in real:
                    h = win[centers[b]]
                    total += F.logsigmoid(h @ wout[c]) + F.logsigmoid(-(wout[negatives[b]] @ h)).sum()
                    count += 1
            else:
                h = win[real].mean(0)
                total += F.logsigmoid(h @ wout[centers[b]]) + F.logsigmoid(-(wout[negatives[b]] @ h)).sum()
                count += 1
        torch.testing.assert_close(model.loss(centers, contexts, mask, negatives), -total / count)
        softmax = Word2Vec(Word2VecConfig(30, 8, mode, window=2, negative=0)).double()
        softmax.load_state_dict(model.state_dict())
        if mode == "skipgram":
            expected = torch.stack([F.cross_entropy((win[centers[b]] @ wout.T)[None].expand(int(mask[b].sum()), -1),
                                                    contexts[b][mask[b]], reduction="sum") for b in range(5)]).sum()
            expected = expected / mask.sum()
        else:
            h = torch.stack([win[contexts[b][mask[b]]].mean(0) for b in range(5)])
            expected = F.cross_entropy(h @ wout.T, centers)
        torch.testing.assert_close(softmax.loss(centers, contexts, mask), expected)


def test_word2vec_analogy_arithmetic_and_errors():
    model = Word2Vec(Word2VecConfig(4, 2, negative=0))
    with torch.no_grad():  # king - man + woman = queen, by construction
        model.input.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.1, 2.0]]))
    # words: 0 king, 1 man, 2 woman, 3 queen... king - man + woman = (0, 2) -> nearest of the rest: queen
    assert model.analogy(1, 0, 2)[0][0] == 3
    with pytest.raises(ValueError, match="mode must be 'skipgram' or 'cbow'"):
        Word2VecConfig(10, mode="glove")
    with pytest.raises(ValueError, match="1-D tensor of at least 2 tokens"):
        Word2VecData(torch.zeros(1, 3, dtype=torch.long), Word2VecConfig(10))
