"""The language-model recipe: the output bias starts at the log unigram frequencies of the training stream,
AWD-LSTM's dropouts, no weight decay on biases and embeddings. With a zero bias and a tied embedding the
hidden units store the frequency prior and saturate; measured here on WikiText-2 at a size that trains in
seconds against the old recipe: the held-out loss and the saturated share both fall."""
import torch

from fastseq import data as D
from fastseq.models import LSTMLM, LSTMLMConfig
from fastseq.models.base import init_output_bias
from fastseq.train import TrainConfig, Trainer


def _trained(ids, vocab, pad_id, recipe: bool, steps: int = 60):
    """The recipe: the output bias at the log unigram frequencies, AWD-LSTM's variational dropouts, no weight
    decay on biases and embeddings; the old one: a zero bias, element-wise dropouts, decay on everything."""
    torch.manual_seed(0)
    model = LSTMLM(LSTMLMConfig(vocab, 32, 64, 2, pad_id=pad_id, variational=recipe))
    if recipe:
        assert init_output_bias(model, ids)
    config = TrainConfig(steps=steps, lr=3e-3, log_every=1000, progress=False, eval_every=0, checkpoint_every=0,
                         decay="matrices" if recipe else "all")
    Trainer(model, config, lambda i: {"tokens": D.stream_windows(ids, 16, 32, torch.Generator().manual_seed(i))},
            lambda m, b: m.loss(b["tokens"])).fit()
    return model.eval()


def test_log_unigram_output_bias_keeps_units_unsaturated_and_the_loss_lower():
    text = D.load("wikitext-2", "valid")[:300_000]
    tokenizer = D.WordTokenizer.fit([text], min_freq=3, lowercase=True)
    ids = torch.tensor(tokenizer.encode(text))
    held_out = torch.tensor(tokenizer.encode(D.load("wikitext-2", "test")[:60_000]))
    windows = D.stream_windows(held_out, 32, 32, torch.Generator().manual_seed(7))
    found = {}
    for recipe in (False, True):
        model = _trained(ids, tokenizer.vocab_size, tokenizer.pad_id, recipe)
        with torch.no_grad():
            saturated = (model.features(windows[:, :-1]).abs() > 0.95).float().mean().item()
            found[recipe] = (model.loss(windows).item(), saturated)
    (old_loss, old_sat), (new_loss, new_sat) = found[False], found[True]
    assert new_loss < old_loss - 0.03, found  # measured here: 4.885 against 4.953 nats
    assert new_sat < 0.1 < old_sat, found


def test_the_bias_is_the_log_frequency():
    model = LSTMLM(LSTMLMConfig(6, 4, 8, 1))
    ids = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    init_output_bias(model, ids, smoothing=0.0)
    p = torch.softmax(model.output.bias.double(), 0)
    torch.testing.assert_close(p[:3], torch.tensor([1 / 7, 2 / 7, 4 / 7], dtype=torch.float64), rtol=1e-6, atol=1e-6)
