"""The checks a run config passes before any work starts: every key known (else the nearest known one is
suggested), every value of the right type and range, numbers written as strings (`lr: 3e-4`, which YAML
reads as text) taken as numbers. Each error is one line naming the key."""
from __future__ import annotations

import difflib
from typing import Any, Iterable

SECTIONS = ("task", "data", "model", "train", "generate", "out_dir")
DATA_KEYS = {
    "dataset": str, "train": str, "valid": str, "test": str, "files": dict, "labelled": bool, "reverse": bool,
    "tokenizer": dict, "valid_fraction": float, "block": int, "batch": int, "max_tokens": int, "max_len": int,
    "eval_batches": int, "eval_sentences": int, "label_smoothing": float, "bos": bool,
}
TOKENIZER_KEYS = {"char": (), "word": ("min_freq", "max_size", "lowercase", "unk_token"),
                  "bpe": ("vocab_size", "min_frequency")}
GENERATE_KEYS = ("method", "beams", "max_new_tokens", "length_penalty", "early_stopping", "no_repeat_ngram_size",
                 "temperature", "top_k", "top_p", "seed")
# data keys that must be positive ints, and those that are probabilities
POSITIVE = ("block", "batch", "max_tokens", "max_len", "eval_batches", "eval_sentences")


def known(where: str, given: Iterable[str], keys: Iterable[str]) -> None:
    """Every key of `given` is among `keys`; else a one-line error with the nearest known key."""
    keys = sorted(keys)
    for key in given:
        if key not in keys:
            near = difflib.get_close_matches(str(key), keys, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"config: {where}: unknown key {key!r}{hint} (known: {', '.join(keys)})")


def number(where: str, value: Any, kind: type, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> Any:
    """value as an int or float (a float also from a numeric string), within [low, high] (open ends where
    asked); else a one-line error that starts with `where` (e.g. "config: data.block")."""
    if isinstance(value, str) and kind is float:
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
    if ok and value == value:  # not NaN
        value = kind(value)
        ok = ((low is None or (value > low if low_open else value >= low))
              and (high is None or (value < high if high_open else value <= high)))
    if not ok:
        bounds = (f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}" if high is not None
                  else f" {'>' if low_open else '>='} {low}" if low is not None else "")
        raise ValueError(f"{where} must be {'an int' if kind is int else 'a number'}{bounds}, got {value!r}")
    return value


def check_data(data: dict) -> dict:
    """The data section with its numbers as numbers; errors name the key."""
    known("data", data, DATA_KEYS)
    out = dict(data)
    for key, value in data.items():
        kind = DATA_KEYS[key]
        if key in POSITIVE:
            out[key] = number(f"config: data.{key}", value, int, 1)
        elif key == "valid_fraction":
            out[key] = number("config: data.valid_fraction", value, float, 0, 1, low_open=True, high_open=True)
        elif key == "label_smoothing":
            out[key] = number("config: data.label_smoothing", value, float, 0, 1, high_open=True)
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"config: data.{key} must be a {kind.__name__}, got {value!r}")
    tokenizer = data.get("tokenizer")
    if tokenizer is not None:
        kind = tokenizer.get("kind", "char")
        if kind not in TOKENIZER_KEYS:
            raise ValueError(f"config: data.tokenizer.kind must be char, word or bpe, got {kind!r}")
        known(f"data.tokenizer ({kind})", [k for k in tokenizer if k != "kind"], TOKENIZER_KEYS[kind])
    return out


def check_generate(generate: dict) -> dict:
    """The generate section: known keys, valid values (as generate() checks them)."""
    from ..generation import check_options

    known("generate", generate, GENERATE_KEYS)
    options = {"method": "beam", "beams": 5, "max_new_tokens": 100, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
               "no_repeat_ngram_size": 0, "length_penalty": 1.0, **generate}
    try:
        check_options(**{k: v for k, v in options.items() if k != "seed"})
    except ValueError as e:
        raise ValueError(f"config: {str(e).replace('generate: ', 'generate.', 1)}") from None
    return generate
