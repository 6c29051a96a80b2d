"""The trainer: a resumed run equals an uninterrupted one bit for bit; two gloo processes under
DistributedDataParallel equal one process with the same global batch; mixed precision trains;
accumulation equals one big batch; schedules follow their formulas; checkpoints are atomic and a
corrupt one is refused clearly; metrics; the demo and the `fastseq` command run."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastseq.models import CausalLM, CausalLMConfig
from fastseq.train import TrainConfig, Trainer, bleu, perplexity, schedule

V = 23


def _model(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(V, 16, 4, 2, dropout=dropout, max_len=16))


def _batches(i, rows=8):
    g = torch.Generator().manual_seed(1000 + i)
    return {"tokens": torch.randint(0, V, (rows, 9), generator=g)}


def _loss(model, batch):
    return model.loss(batch["tokens"])


def _config(tmp_path, **kw):
    base = dict(steps=8, lr=1e-2, schedule="cosine", warmup=2, log_every=2, eval_every=4, out_dir=str(tmp_path),
                progress=False, seed=5)
    return TrainConfig(**{**base, **kw})


def _evaluate(model):
    return {"loss": model.loss(_batches(-1)["tokens"]).item()}


def test_resume_equals_uninterrupted(tmp_path):
    straight = _model()
    Trainer(straight, _config(tmp_path / "a"), _batches, _loss, _evaluate).fit()

    def crashing(i):
        if i == 5:
            raise KeyboardInterrupt  # killed between two checkpoints
        return _batches(i)

    first = _model()
    with pytest.raises(KeyboardInterrupt):
        Trainer(first, _config(tmp_path / "b", checkpoint_every=3), crashing, _loss, _evaluate).fit()
    assert sorted(os.listdir(tmp_path / "b")) == ["checkpoint.pt", "log.jsonl"]  # no temporary file left
    resumed = _model(seed=99)  # a fresh process: other initial weights, restored from the checkpoint
    trainer = Trainer(resumed, _config(tmp_path / "b", checkpoint_every=3), _batches, _loss, _evaluate)
    assert trainer.step == 3
    history = trainer.fit()
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    final = [r for r in history if "eval_loss" in r][-1]["eval_loss"]
    assert final == pytest.approx(_evaluate(straight.eval())["loss"])
    assert (tmp_path / "b" / "curves.png").exists()


def test_accumulation_equals_one_big_batch(tmp_path):
    big, small = _model(dropout=0.0), _model(dropout=0.0)
    common = dict(steps=3, optimizer="sgd", grad_clip=0.0, eval_every=0, out_dir=None)
    Trainer(big, _config(tmp_path, **common), lambda i: _batches(i, rows=8), _loss).fit()
    halves = lambda i: {"tokens": _batches(i // 2, rows=8)["tokens"][(i % 2) * 4:(i % 2) * 4 + 4]}  # noqa: E731
    Trainer(small, _config(tmp_path, accumulate=2, **common), halves, _loss).fit()
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _ddp_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _model(dropout=0.0)
    config = TrainConfig(steps=4, lr=0.05, optimizer="sgd", grad_clip=0.0, progress=False, out_dir=None)
    Trainer(model, config, _batches, _loss).fit()
    if rank == 0:
        torch.save(model.state_dict(), out_file)
    dist.destroy_process_group()


def test_ddp_two_processes_equal_one(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    single = _model(dropout=0.0)
    config = TrainConfig(steps=4, lr=0.05, optimizer="sgd", grad_clip=0.0, progress=False, out_dir=None)
    Trainer(single, config, _batches, _loss).fit()
    ddp = torch.load(tmp_path / "ddp.pt")
    for name, p in single.state_dict().items():
        torch.testing.assert_close(ddp[name], p, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, _model(dropout=0.0).state_dict()[n]) for n, p in single.state_dict().items())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_like_float32(precision, tmp_path):
    """The same run in fp32 and under autocast (fp16 with the gradient scaler) ends at nearly the same loss."""
    before = _evaluate(_model(dropout=0.0).eval())["loss"]
    finals = {}
    for p in ("fp32", precision):
        config = _config(tmp_path, precision=p, steps=30, eval_every=0, out_dir=None)
        history = Trainer(_model(dropout=0.0), config, lambda i: _batches(-1), _loss, _evaluate).fit()
        finals[p] = history[-1]["eval_loss"]
    assert finals["fp32"] < before - 1.0
    assert abs(finals[precision] - finals["fp32"]) < 0.1, (before, finals)


def test_schedules_follow_their_formulas():
    total = 100
    slanted = schedule("slanted_triangular", total, cut_frac=0.1, ratio=32)
    assert slanted(0) == pytest.approx(1 / 32) and slanted(10) == pytest.approx(1.0)
    assert slanted(55) == pytest.approx((1 + (1 - 45 / 90) * 31) / 32)  # ULMFiT eq. 3
    inv = schedule("inverse_sqrt", total, warmup=4)
    assert [inv(s) for s in (0, 3, 15)] == pytest.approx([0.25, 1.0, 0.5])
    cos = schedule("cosine", total, warmup=10, min_ratio=0.1)
    assert cos(10) == pytest.approx(1.0) and cos(total) == pytest.approx(0.1)
    assert cos(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ValueError, match="schedule must be one of"):
        schedule("linear", 10)


def test_bad_configs_and_checkpoints(tmp_path):
    for kwargs, match in [(dict(steps=0), "steps must be an int >= 1"), (dict(optimizer="adam"), "optimizer must be"),
                          (dict(precision="fp8"), "precision must be"), (dict(schedule="step"), "schedule must be")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kwargs)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00truncated")
    with pytest.raises(ValueError, match="not a readable fastseq checkpoint"):
        Trainer(_model(), _config(tmp_path), _batches, _loss)
    torch.save({"format": "fastseq-checkpoint/1", "model": {"nope": torch.zeros(1)}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="its model does not match this one"):
        Trainer(_model(), _config(tmp_path), _batches, _loss)


def test_nan_loss_stops_with_a_reason(tmp_path):
    with pytest.raises(FloatingPointError, match="the loss is nan at step 0"):
        Trainer(_model(), _config(tmp_path, out_dir=None), _batches,
                lambda m, b: m.loss(b["tokens"]) * float("nan")).fit()


def test_metrics():
    pytest.importorskip("sacrebleu")  # an optional dependency (fastseq[text]); installed by make test
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    refs = ["the cat sat on the mat .", "a dog runs in the park ."]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert 0 < bleu(["the cat sat on a mat .", "a dog runs in a park ."], refs) < 100
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        bleu(refs, refs[:1])


def test_demo_command_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastseq", "demo", "--steps", "4", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "validation loss" in out.stdout and "--- sample 1" in out.stdout
    assert {"model.pt", "tokenizer.json", "log.jsonl", "curves.png", "checkpoint.pt"} <= set(os.listdir(tmp_path))
    # a full run folder: the other commands take it
    out = subprocess.run([sys.executable, "-m", "fastseq", "generate", str(tmp_path), "ROMEO:", "--max-new-tokens", "5",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-2000:]
    before = open(tmp_path / "model.pt", "rb").read()
    out = subprocess.run([sys.executable, "-m", "fastseq", "demo", "--steps", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (aside,) = [p for p in os.listdir(tmp_path) if p.startswith("previous-")]  # the earlier demo kept
    assert open(tmp_path / aside / "model.pt", "rb").read() == before


def test_ulmfit_discriminative_rates_and_groups():
    from fastseq.models import LSTMLM, LSTMLMConfig, SequenceClassifier
    from fastseq.train.ulmfit import discriminative, layer_groups

    lm = LSTMLM(LSTMLMConfig(30, 8, 12, 3))
    groups = layer_groups(lm)  # fastai's split: the LSTM layers, then the tied embedding and output on top
    assert len(groups) == 4 and groups[-1] == [lm.embedding.weight, lm.output.bias]
    assert groups[0] == list(lm.layers[0].parameters())
    bottom = layer_groups(lm, "bottom")
    assert len(bottom) == 5 and bottom[0] == [lm.embedding.weight] and bottom[-1] == [lm.output.bias]
    for split in (groups, bottom):
        assert sum(p.numel() for g in split for p in g) == sum(p.numel() for p in lm.parameters())
    rates = [g["lr"] for g in discriminative(bottom, 1.0)]
    assert rates == pytest.approx([2.6 ** -4, 2.6 ** -3, 2.6 ** -2, 2.6 ** -1, 1.0])
    clf = SequenceClassifier.from_language_model(lm, 3)
    assert layer_groups(clf)[0] == [clf.body.embedding.weight] and layer_groups(clf)[-1] == list(clf.head.parameters())
    with pytest.raises(ValueError, match="embedding must be 'top' or 'bottom'"):
        layer_groups(lm, "middle")


def test_a_pretrained_lm_takes_new_words_with_the_mean_embedding():
    from fastseq import data
    from fastseq.models import LSTMLM, LSTMLMConfig
    from fastseq.train.ulmfit import extend_vocabulary

    old = data.WordTokenizer.fit(["the cat sat on the mat"])
    new = data.WordTokenizer(old.words + ["dog", "ran"])
    lm = LSTMLM(LSTMLMConfig(old.vocab_size, 8, 12, 2, pad_id=0)).eval()
    torch.nn.init.normal_(lm.output.bias)
    grown = extend_vocabulary(lm, old, new).eval()
    n = old.vocab_size
    assert grown.config.vocab_size == new.vocab_size and grown.output.weight is grown.embedding.weight
    torch.testing.assert_close(grown.embedding.weight[:n], lm.embedding.weight)
    torch.testing.assert_close(grown.embedding.weight[n:], lm.embedding.weight.mean(0).expand(2, -1))
    torch.testing.assert_close(grown.output.bias[n:], lm.output.bias.mean().expand(2))
    tokens = torch.tensor([old.encode("the cat sat")])
    torch.testing.assert_close(grown(tokens)[0][..., :n], lm(tokens)[0])  # the known words' logits unchanged
    with pytest.raises(ValueError, match="must extend the pretrained one"):
        extend_vocabulary(lm, old, data.WordTokenizer(["dog"] + old.words))


def test_ulmfit_classifier_keeps_its_best_validation_weights(tmp_path):
    """keep_best: the classifier ends with the weights of the lowest validation error among every
    evaluation the stages logged (each stage's end and every eval_every steps), recomputed here."""
    import json
    import random

    from fastseq import data
    from fastseq.models import LSTMLM, LSTMLMConfig
    from fastseq.train.tasks import classification_metrics, encode_labelled
    from fastseq.train.ulmfit import train_classifier

    rng = random.Random(3)
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]

    def records(n):  # the label: whether "cat" comes before "dog", with noise words around them
        out = []
        for _ in range(n):
            text = [rng.choice(words[5:]) for _ in range(rng.randint(2, 5))]
            pair = ["cat", "dog"] if rng.random() < 0.5 else ["dog", "cat"]
            text[rng.randint(0, len(text)):rng.randint(0, len(text))] = []
            text.insert(rng.randint(0, len(text)), pair[0])
            text.insert(rng.randint(0, len(text)), pair[1])
            out.append((int(text.index("cat") < text.index("dog")), " ".join(text)))
        return out

    train, valid = records(60), records(37)
    tok = data.WordTokenizer.fit([" ".join(t for _, t in train + valid)], min_freq=1)
    torch.manual_seed(0)
    lm = LSTMLM(LSTMLMConfig(tok.vocab_size, 8, 12, 2, pad_id=tok.pad_id))
    # the last stage's rate far too high: its weights get worse than an earlier stage's
    settings = {"steps_per_stage": 6, "lr": 3e-2, "ladder": [1, 1, 1, 100], "eval_every": 2, "keep_best": True,
                "max_tokens": 64, "hidden_dim": 8}
    model, metrics = train_classifier(lm, tok, train, valid, settings, str(tmp_path), "cpu", 2, progress=False)
    seen = []
    for stage in sorted(os.listdir(tmp_path / "classify")):
        with open(tmp_path / "classify" / stage / "log.jsonl") as f:
            seen += [r["eval_error"] for r in map(json.loads, f) if "eval_error" in r]
    assert len(seen) == 4 * 3  # 4 stages (head, 2 layers, embedding), evaluated at steps 2, 4, 6 of each
    assert metrics["eval_error"] == min(seen) < seen[-1]
    model.eval()
    with torch.no_grad():
        again = classification_metrics(model, encode_labelled(tok, valid, 128, False), tok.pad_id, "cpu")
    assert again["error"] == pytest.approx(min(seen))
    with pytest.raises(ValueError, match="keep_best chooses weights on validation"):
        train_classifier(lm, tok, train, None, settings, None, "cpu", 2, progress=False)
    with pytest.raises(ValueError, match="eval_every must be >= 0"):
        train_classifier(lm, tok, train, valid, {**settings, "eval_every": -1}, None, "cpu", 2, progress=False)


def test_the_classifier_takes_its_own_lm_dropouts():
    """classify.body: the LM's dropouts replaced for the classifier, weight_drop turned on and off, the weights
    (and so the outputs in eval mode) unchanged; unknown names refused."""
    from fastseq.models import LSTMLM, LSTMLMConfig
    from fastseq.train.ulmfit import with_dropouts

    torch.manual_seed(0)
    lm = LSTMLM(LSTMLMConfig(30, 8, 12, 2, hidden_dropout=0.1)).eval()
    tokens = torch.randint(0, 30, (2, 5))
    for dropouts in ({"hidden_dropout": 0.4, "weight_drop": 0.3}, {"weight_drop": 0.0, "output_dropout": 0.2}):
        other = with_dropouts(lm, dropouts).eval()
        assert all(getattr(other.config, k) == v for k, v in dropouts.items())
        torch.testing.assert_close(other(tokens)[0], lm(tokens)[0])
        lm = other
    with pytest.raises(ValueError, match="classify.body takes a mapping of embed_dropout"):
        with_dropouts(lm, {"dropout": 0.1})
    with pytest.raises(ValueError, match="hidden_dropout"):
        with_dropouts(lm, {"hidden_dropout": 1.5})


def test_weight_decay_falls_on_weight_matrices_only():
    """decay='matrices' (the default): biases, norms and embeddings (a tied output layer too) in groups
    without weight decay, each group's other settings kept; 'all' decays everything, as torch's AdamW."""
    from fastseq.models import LSTMLM, LSTMLMConfig, SequenceClassifier
    from fastseq.train.trainer import make_optimizer

    clf = SequenceClassifier.from_language_model(LSTMLM(LSTMLMConfig(30, 8, 12, 2)), 3)
    optimizer = make_optimizer(clf, TrainConfig(weight_decay=0.1))
    free = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    for name, p in clf.named_parameters():
        exempt = p.dim() < 2 or "embedding" in name
        assert (id(p) in free) == exempt and (id(p) in decayed) == (not exempt), name
    groups = [{"params": [clf.body.embedding.weight, *clf.head.parameters()], "lr": 0.5, "layer": 7}]
    split = make_optimizer(clf, TrainConfig(weight_decay=0.1), groups).param_groups
    assert all(g["lr"] == 0.5 and g["layer"] == 7 for g in split) and len(split) == 2
    everything = make_optimizer(clf, TrainConfig(weight_decay=0.1, decay="all")).param_groups
    assert len(everything) == 1 and everything[0]["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="decay must be one of"):
        TrainConfig(decay="some")


def test_validation_held_out_of_the_training_split():
    from fastseq.train.tasks import train_valid

    train, valid = train_valid({"dataset": "trec", "train": "train", "valid_fraction": 0.1})
    assert len(train) + len(valid) == 5452 and len(valid) == 546
    from fastseq import data
    assert sorted(train + valid) == sorted(data.load("trec", "train"))  # a partition of the split
    assert train_valid({"dataset": "trec", "train": "train", "valid_fraction": 0.1})[1] == valid  # seeded
    text, held = train_valid({"dataset": "tinyshakespeare", "train": "train", "valid_fraction": 0.05})
    assert len(held) == len("".join([text, held])) - int(0.95 * len(text + held)) and (text + held)[:20] == text[:20]
    with pytest.raises(ValueError, match="valid_fraction must lie in"):
        train_valid({"dataset": "trec", "train": "train", "valid_fraction": 1.5})


def test_progress_in_a_log_is_one_line_every_few_seconds(monkeypatch, capsys):
    """stdout not a terminal (a file, a pipe): plain lines, at most one per interval, and the last step's."""
    from fastseq.train import progress as P

    clock = iter(range(0, 1000, 2))  # each perf_counter call: 2 s later
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    bar = P.progress(total=10)
    assert isinstance(bar, P.LineProgress)
    for _ in range(10):
        bar.set_postfix(loss="1.2345", tok_s="100")
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert 3 <= len(lines) <= 5 and "\r" not in "".join(lines)
    assert lines[-1].startswith("train step 10/10 (100%)") and "loss 1.2345" in lines[-1] and "eta 0m00s" in lines[-1]
