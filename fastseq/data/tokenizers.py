"""Tokenizers: characters, words (a vocabulary with a minimum frequency and <unk>), and byte-pair encoding
trained with Hugging Face `tokenizers`. All share five special tokens at fixed ids and save to one JSON file.

    tok = CharTokenizer.fit(texts);  ids = tok.encode("To be", bos=True, eos=True);  tok.decode(ids)
    tok = BPETokenizer.fit(texts, vocab_size=8000);  tok.save("bpe.json");  load_tokenizer("bpe.json")
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Iterable, Sequence

from .. import atomic

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>")
PAD, BOS, EOS, UNK, MASK = range(len(SPECIALS))
_WORD = re.compile(r"\w+|[^\w\s]")
_WORD_UNK = re.compile(r"<unk>|\w+|[^\w\s]")  # "<unk>" in a text (WikiText's) is one unknown word


class Tokenizer:
    """Shared by every tokenizer: ids 0–4 are <pad>, <bos>, <eos>, <unk>, <mask>."""

    kind = ""
    pad_id, bos_id, eos_id, unk_id, mask_id = PAD, BOS, EOS, UNK, MASK

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"{type(self).__name__}.encode: text must be a str, got {type(text).__name__}")
        return [BOS] * bos + self._encode(text) + [EOS] * eos

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ids; stops at the first <eos> and drops the other special tokens when skip_special."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"{type(self).__name__}.decode: id {bad} is outside the vocabulary [0, {self.vocab_size})")
        if skip_special:
            if EOS in ids:
                ids = ids[:ids.index(EOS)]
            ids = [i for i in ids if i >= len(SPECIALS) or i == UNK]
        return self._decode(ids)

    def state(self) -> dict:
        """What save() writes: equal states are the same tokenizer."""
        return {"format": "fastseq-tokenizer/1", "kind": self.kind, **self._state()}

    def save(self, path: str | os.PathLike) -> None:
        """One JSON file, written atomically, with a checksum of its content (a damaged file is refused)."""
        state = {**self.state(), "sha256": _checksum(self.state())}
        atomic.write(path, lambda f: json.dump(state, f, ensure_ascii=False), mode="w")


class CharTokenizer(Tokenizer):
    """One id per character seen in training; others become <unk>."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self.index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}

    @classmethod
    def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen = set()
        for text in texts:
            seen.update(text)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def _encode(self, text):
        return [self.index.get(c, UNK) for c in text]

    def _decode(self, ids):
        return "".join(self.chars[i - len(SPECIALS)] if i >= len(SPECIALS) else "\ufffd" for i in ids)

    def _state(self):
        return {"chars": self.chars}


class WordTokenizer(Tokenizer):
    """Words and punctuation marks (regex \\w+|[^\\w\\s]); those seen fewer than min_freq times in
    training (or past max_size) become <unk>, and so does "<unk>" written in a text (WikiText marks its
    rare words so; unk_token=False, as tokenizers saved before it: three tokens). Decoding joins tokens
    with spaces."""

    kind = "word"

    def __init__(self, words: Sequence[str], lowercase: bool = False, unk_token: bool = True) -> None:
        self.words, self.lowercase, self.unk_token = list(words), lowercase, unk_token
        self.index = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}
        self._pattern = _WORD_UNK if unk_token else _WORD

    @classmethod
    def fit(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None, lowercase: bool = False,
            unk_token: bool = True) -> "WordTokenizer":
        if not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"WordTokenizer.fit: min_freq must be an int >= 1, got {min_freq!r}")
        pattern = _WORD_UNK if unk_token else _WORD
        counts = collections.Counter()
        for text in texts:
            counts.update(pattern.findall(text.lower() if lowercase else text))
        if unk_token:
            counts.pop(SPECIALS[UNK], None)
        words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_freq]
        return cls(words[:max_size] if max_size else words, lowercase, unk_token)

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.words)

    def tokens(self, text: str) -> list[str]:
        return self._pattern.findall(text.lower() if self.lowercase else text)

    def _encode(self, text):
        return [self.index.get(w, UNK) for w in self.tokens(text)]

    def _decode(self, ids):
        return " ".join(self.words[i - len(SPECIALS)] if i >= len(SPECIALS) else SPECIALS[i] for i in ids)

    def _state(self):
        return {"words": self.words, "lowercase": self.lowercase, "unk_token": self.unk_token}


class BPETokenizer(Tokenizer):
    """Byte-pair encoding (Sennrich et al. 2016) trained and run by Hugging Face `tokenizers`, with the
    Metaspace pre-tokenizer, so that decoding restores the text's spacing exactly."""

    kind = "bpe"

    def __init__(self, hf_tokenizer) -> None:
        self.hf = hf_tokenizer
        for i, special in enumerate(SPECIALS):
            if self.hf.token_to_id(special) != i:
                raise ValueError(f"BPETokenizer: {special} must have id {i}, got {self.hf.token_to_id(special)}")

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE(unk_token="<unk>"))
        hf.pre_tokenizer = pre_tokenizers.Metaspace()
        hf.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIALS), show_progress=False)
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def _encode(self, text):
        return self.hf.encode(text, add_special_tokens=False).ids

    def _decode(self, ids):
        return self.hf.decode(ids, skip_special_tokens=False)

    def _state(self):
        return {"hf": self.hf.to_str()}


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved at `path` by `save`."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no tokenizer file at {os.fspath(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)}: not a fastseq tokenizer file (bad JSON: {e})") from None
    if isinstance(state, dict) and "format" not in state and isinstance(state.get("model"), dict):
        from tokenizers import Tokenizer as HFTokenizer  # a tokenizer.json HF `tokenizers` wrote (save_pretrained)

        try:
            return BPETokenizer(HFTokenizer.from_str(json.dumps(state)))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{os.fspath(path)}: not a loadable Hugging Face tokenizer ({e})") from None
    if not isinstance(state, dict) or state.get("format") != "fastseq-tokenizer/1":
        raise ValueError(f"{os.fspath(path)}: not a fastseq tokenizer file")
    saved_sum = state.pop("sha256", None)
    if saved_sum is not None and saved_sum != _checksum(state):
        raise ValueError(f"{os.fspath(path)}: the tokenizer file is damaged (its content does not match its sha256)")
    kind = state.get("kind")
    fields = {"char": ("chars", list), "word": ("words", list), "bpe": ("hf", str)}
    if kind not in fields:
        raise ValueError(f"{os.fspath(path)}: unknown tokenizer kind {kind!r} (char, word, bpe)")
    name, expected = fields[kind]
    if not isinstance(state.get(name), expected):
        raise ValueError(f"{os.fspath(path)}: a {kind} tokenizer file needs {name!r} ({expected.__name__}), got "
                         f"{type(state.get(name)).__name__}")
    try:
        if kind == "char":
            return CharTokenizer(state["chars"])
        if kind == "word":
            return WordTokenizer(state["words"], state.get("lowercase", False), state.get("unk_token", False))
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(state["hf"]))
    except (TypeError, ValueError, Exception) as e:  # noqa: BLE001 - a malformed entry inside the file
        raise ValueError(f"{os.fspath(path)}: not a loadable {kind} tokenizer ({type(e).__name__}: {e})") from None


def _checksum(state: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(state, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
