"""A user's own data: plain text, parallel text (two files, aligned lines) and labelled lines, with errors
that say which file and line is wrong."""
from __future__ import annotations

import gzip
import os


def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such data file: {path}")
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def read_text(path: str) -> str:
    """The whole file (.gz read transparently)."""
    with _open(path) as f:
        try:
            return f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_lines(path: str) -> list[str]:
    text = read_text(path)
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") or not text else lines


def read_parallel(source_path: str, target_path: str) -> list[tuple[str, str]]:
    """Aligned (source, target) lines of two files."""
    a, b = read_lines(source_path), read_lines(target_path)
    if len(a) != len(b):
        raise ValueError(f"{source_path} and {target_path} must hold as many lines (aligned pairs), got "
                         f"{len(a)} and {len(b)}")
    return list(zip(a, b))


def read_labelled(path: str, separator: str | None = None) -> list[tuple[int, str]]:
    """Lines 'LABEL text' (separator None: the first whitespace; or e.g. '\\t'), LABEL an integer."""
    out = []
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        label, _, text = line.strip().partition(separator or " ")
        try:
            out.append((int(label), text.strip()))
        except ValueError:
            raise ValueError(f"{path}:{number}: a labelled line must start with an integer label, got "
                             f"{line[:60]!r}") from None
    return out
